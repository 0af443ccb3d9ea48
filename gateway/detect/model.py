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
OUTSIDE_HOURS = "approval.outside_hours"
WIDER_SCOPE = "approval.wider_scope"
NEVER_USED = "grant.never_used"
BREAK_GLASS = "grant.break_glass"

RULES = (
    FIRST_TARGET, FIRST_TABLE, FIRST_SCHEMA, FIRST_SHAPE, FIRST_COMMAND, RUBBER_STAMP, SAME_APPROVER, NO_TICKET,
    OUTSIDE_HOURS, WIDER_SCOPE, NEVER_USED, BREAK_GLASS,
)  # fmt: skip


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
        """The audit event's data, with the link to where to look (the console's session or request page)."""
        out = {k: v for k, v in asdict(self).items() if v not in ("", None)}
        link = self.link()
        if link:
            out["link"] = link
        return out

    def link(self) -> str:
        """The console path of the session at the offset (`#t=` seconds), or of the request; "" for neither."""
        if self.session:
            return f"/sessions/{self.session}" + (f"#t={self.offset:g}" if self.offset is not None else "")
        return f"/requests/{self.request}" if self.request else ""
