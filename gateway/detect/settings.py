"""The [detection] section and a scope's `detection` overrides: rules off, thresholds, actions (plain values)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gateway.detect import bursts, exfil, model, sweep, usual
from gateway.linearre import SYNTAX, LinearPattern, compile_linear

KEYS = {
    "off", "warmup_sessions", "rubber_stamp_seconds", "same_approver_count", "same_approver_days", "ticket_pattern",
    "sweep_every", "actions", "volume_factor", "burst_window", "burst_denials", "burst_errors", "burst_sessions",
    "large_rows",
}  # fmt: skip
SCOPE_KEYS = {"disabled", "actions", "hours"}  # not `off`: YAML reads a bare off as false
ALL_RULES = (*model.RULES, *usual.RULES, *bursts.RULES, *exfil.RULES, *sweep.RULES)

ALERT, DENY, KILL = "alert", "deny", "kill"
# Judged before a statement runs: it can be refused (deny) or end the session (kill).
STATEMENT_RULES = frozenset({exfil.SENSITIVE_WHOLE, exfil.COPY_SENSITIVE})
# Judged while a session runs (its start, a result, a burst): it can end the session.
SESSION_RULES = frozenset({usual.UNUSUAL_HOUR, usual.UNUSUAL_DAY, exfil.SELECT_STAR_LARGE, *bursts.RULES})
# First uses only alert: a refused first use would either be learned (and pass when retried) or never be
# learnable; a baseline is not an allowlist (a scope's allowed_commands and SQL rules are).


class SettingsError(ValueError):
    """A bad [detection] value: `key` names it, the message says what is wrong."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def actions_allowed(rule: str) -> tuple[str, ...]:
    """The actions a rule may take (every rule alerts; the rest only where something can still be stopped)."""
    if rule in STATEMENT_RULES:
        return (ALERT, DENY, KILL)
    if rule in SESSION_RULES:
        return (ALERT, KILL)
    return (ALERT,)


_NO_ACTIONS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Overrides:
    """A scope's own `detection:` entries: more rules off, other actions, fixed working hours (UTC)."""

    off: frozenset[str] = frozenset()
    actions: Mapping[str, str] = field(default_factory=lambda: _NO_ACTIONS)
    hours: tuple[int, int] | None = None


NO_OVERRIDES = Overrides()


@dataclass(frozen=True, slots=True)
class DetectionSettings:
    """What the detector flags, when, and what it does about it."""

    off: frozenset[str] = frozenset()
    warmup_sessions: int = 5  # a (user, target) needs this many sessions before its first uses are flagged
    rubber_stamp_seconds: float = 10.0
    same_approver_count: int = 3  # this many earlier approvals of one requester by one approver in the window
    same_approver_days: float = 30.0
    ticket_pattern: LinearPattern | None = field(default=None, compare=False)
    sweep_every: float = 30.0  # seconds between lingering-access sweeps
    actions: Mapping[str, str] = field(default_factory=lambda: _NO_ACTIONS)
    volume_factor: float = 3.0  # a session's volume over this many times the p95 is unusual
    burst_window: float = 60.0
    burst_denials: int = 5
    burst_errors: int = 20
    burst_sessions: int = 10
    large_rows: int = exfil.LARGE_ROWS  # SELECT * without WHERE returning this many rows

    def on(self, rule: str) -> bool:
        """Whether a rule is enabled."""
        return rule not in self.off

    def rules(self, scope: Overrides = NO_OVERRIDES) -> Rules:
        """The rules of a session of a scope: the scope's overrides over these settings."""
        actions = {**self.actions, **scope.actions} if scope.actions else self.actions
        return Rules(self.off | scope.off, actions, scope.hours)


@dataclass(frozen=True, slots=True)
class Rules:
    """What one session is judged by: rules off, each rule's action (alert by default), fixed hours."""

    off: frozenset[str]
    actions: Mapping[str, str]
    hours: tuple[int, int] | None = None

    def on(self, rule: str) -> bool:
        """Whether a rule is enabled."""
        return rule not in self.off

    def action(self, rule: str) -> str:
        """alert, deny or kill."""
        return self.actions.get(rule, ALERT)


def parse_settings(doc: dict[str, Any]) -> DetectionSettings:
    """Validate a [detection] table (unknown keys are refused by the caller's schema)."""
    d = DetectionSettings()
    pattern = doc.get("ticket_pattern", "")
    if not isinstance(pattern, str):
        raise SettingsError("ticket_pattern", "must be a regular expression string")
    try:
        compiled = compile_linear(pattern) if pattern else None  # matched against what requesters write
    except ValueError as exc:
        raise SettingsError("ticket_pattern", f"is not a valid regular expression: {exc} ({SYNTAX})") from None
    return DetectionSettings(
        off=_off(doc),
        warmup_sessions=_number(doc, "warmup_sessions", d.warmup_sessions, 0, 10_000, integer=True),
        rubber_stamp_seconds=_number(doc, "rubber_stamp_seconds", d.rubber_stamp_seconds, 0, 86_400),
        same_approver_count=_number(doc, "same_approver_count", d.same_approver_count, 1, 10_000, integer=True),
        same_approver_days=_number(doc, "same_approver_days", d.same_approver_days, 1, 3650),
        ticket_pattern=compiled,
        sweep_every=_number(doc, "sweep_every", d.sweep_every, 1, 86_400),
        actions=_actions(doc),
        volume_factor=_number(doc, "volume_factor", d.volume_factor, 1, 1000),
        burst_window=_number(doc, "burst_window", d.burst_window, 1, 86_400),
        burst_denials=_number(doc, "burst_denials", d.burst_denials, 2, 100_000, integer=True),
        burst_errors=_number(doc, "burst_errors", d.burst_errors, 2, 100_000, integer=True),
        burst_sessions=_number(doc, "burst_sessions", d.burst_sessions, 2, 100_000, integer=True),
        large_rows=_number(doc, "large_rows", d.large_rows, 1, 10**12, integer=True),
    )


def parse_overrides(doc: Any) -> Overrides:
    """Validate a scope's `detection:` mapping (None: no overrides)."""
    if doc is None:
        return NO_OVERRIDES
    if not isinstance(doc, dict):
        raise SettingsError("", "must be a mapping with disabled, actions, hours")
    unknown = sorted(set(doc) - SCOPE_KEYS)
    if unknown:
        raise SettingsError(unknown[0], f"unknown key; expected one of {', '.join(sorted(SCOPE_KEYS))}")
    hours = doc.get("hours")
    fixed: tuple[int, int] | None = None
    if hours is not None:
        m = re.fullmatch(r"(\d{1,2})-(\d{1,2})", str(hours).strip())
        if m is None or not (0 <= int(m[1]) <= 23 and 0 <= int(m[2]) <= 24) or int(m[1]) == int(m[2]) % 24:
            raise SettingsError("hours", "must be working hours in UTC like '8-19' (from 8:00 to 19:00)")
        fixed = (int(m[1]), int(m[2]) % 24)
    return Overrides(_off(doc, "disabled"), _actions(doc), fixed)


def _off(doc: dict[str, Any], key: str = "off") -> frozenset[str]:
    off = doc.get(key, [])
    if off is None:
        return frozenset()
    if not isinstance(off, list) or not all(isinstance(x, str) for x in off):
        raise SettingsError(key, "must be a list of rule ids")
    unknown = sorted(set(off) - set(ALL_RULES))
    if unknown:
        raise SettingsError(key, f"unknown rule {unknown[0]!r}; rules are {', '.join(ALL_RULES)}")
    return frozenset(off)


def _actions(doc: dict[str, Any]) -> Mapping[str, str]:
    actions = doc.get("actions")
    if actions is None:
        return _NO_ACTIONS
    if not isinstance(actions, dict):
        raise SettingsError("actions", "must map rule ids to alert, deny or kill")
    for rule, action in actions.items():
        if rule not in ALL_RULES:
            raise SettingsError(f"actions.{rule}", f"unknown rule; rules are {', '.join(ALL_RULES)}")
        allowed = actions_allowed(rule)
        if action not in allowed:
            raise SettingsError(f"actions.{rule}", f"must be one of {', '.join(allowed)} for this rule")
    return MappingProxyType(dict(actions))


def _number(doc: dict[str, Any], key: str, default: float, lo: float, hi: float, *, integer: bool = False) -> Any:
    value = doc.get(key, default)
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        raise SettingsError(key, f"must be {'an integer' if integer else 'a number'} from {lo:g} to {hi:g}")
    return value
