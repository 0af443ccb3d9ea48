"""The Detection value every rule produces, and the stable rule ids."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

FIRST_TARGET = "first_use.target"
FIRST_TABLE = "first_use.table"
FIRST_SCHEMA = "first_use.schema"
FIRST_SHAPE = "first_use.shape"
FIRST_COMMAND = "first_use.command"
RUBBER_STAMP = "approval.rubber_stamp"
SAME_APPROVER = "approval.same_approver"
NO_TICKET = "approval.no_ticket"

RULES = (FIRST_TARGET, FIRST_TABLE, FIRST_SCHEMA, FIRST_SHAPE, FIRST_COMMAND, RUBBER_STAMP, SAME_APPROVER, NO_TICKET)


@dataclass(frozen=True, slots=True)
class Detection:
    """One finding: which rule, how bad, why (one sentence), and where to look (session and offset in seconds)."""

    rule: str
    severity: str
    explanation: str
    user: str
    target: str
    session: str = ""
    offset: float | None = None
    request: str = ""

    def data(self) -> dict[str, Any]:
        """The audit event's data."""
        return {k: v for k, v in asdict(self).items() if v not in ("", None)}
