"""The [detection] section: rules turned off, thresholds, warm-up; parsed from plain TOML values."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gateway.detect.model import RULES

KEYS = {"off", "warmup_sessions", "rubber_stamp_seconds", "same_approver_count", "same_approver_days", "ticket_pattern"}


class SettingsError(ValueError):
    """A bad [detection] value: `key` names it, the message says what is wrong."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class DetectionSettings:
    """What the detector flags and when."""

    off: frozenset[str] = frozenset()
    warmup_sessions: int = 5  # a (user, target) needs this many sessions before its first uses are flagged
    rubber_stamp_seconds: float = 10.0
    same_approver_count: int = 3  # this many earlier approvals of one requester by one approver in the window
    same_approver_days: float = 30.0
    ticket_pattern: re.Pattern[str] | None = field(default=None, compare=False)

    def on(self, rule: str) -> bool:
        """Whether a rule is enabled."""
        return rule not in self.off


def parse_settings(doc: dict[str, Any]) -> DetectionSettings:
    """Validate a [detection] table (unknown keys are refused by the caller's schema)."""
    d = DetectionSettings()
    off = doc.get("off", [])
    if not isinstance(off, list) or not all(isinstance(x, str) for x in off):
        raise SettingsError("off", "must be a list of rule ids")
    unknown = sorted(set(off) - set(RULES))
    if unknown:
        raise SettingsError("off", f"unknown rule {unknown[0]!r}; rules are {', '.join(RULES)}")
    pattern = doc.get("ticket_pattern", "")
    if not isinstance(pattern, str):
        raise SettingsError("ticket_pattern", "must be a regular expression string")
    try:
        compiled = re.compile(pattern) if pattern else None
    except re.error as exc:
        raise SettingsError("ticket_pattern", f"is not a valid regular expression: {exc}") from None
    return DetectionSettings(
        off=frozenset(off),
        warmup_sessions=_number(doc, "warmup_sessions", d.warmup_sessions, 0, 10_000, integer=True),
        rubber_stamp_seconds=_number(doc, "rubber_stamp_seconds", d.rubber_stamp_seconds, 0, 86_400),
        same_approver_count=_number(doc, "same_approver_count", d.same_approver_count, 1, 10_000, integer=True),
        same_approver_days=_number(doc, "same_approver_days", d.same_approver_days, 1, 3650),
        ticket_pattern=compiled,
    )


def _number(doc: dict[str, Any], key: str, default: float, lo: float, hi: float, *, integer: bool = False) -> Any:
    value = doc.get(key, default)
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        raise SettingsError(key, f"must be {'an integer' if integer else 'a number'} from {lo:g} to {hi:g}")
    return value
