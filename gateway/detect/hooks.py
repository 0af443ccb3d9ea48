"""The one-line calls the front ends and the workflow make into detection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.alerts import Alerts
from gateway.detect.engine import Detector
from gateway.detect.settings import DetectionSettings
from gateway.detect.watch import NEVER, Watch
from gateway.detect.workflow import approval_findings, approver_hours
from gateway.policy import Decision
from gateway.store import RequestRecord, Store

if TYPE_CHECKING:
    from gateway.pg.sql.inspector import Inspection
    from gateway.sessions import LiveSession

log = logging.getLogger(__name__)


class _Off:
    """The watch of a session no detector looks at (a registry built without services)."""

    __slots__ = ()
    large_rows = NEVER

    def sql(self, insp: Inspection, decision: Decision) -> Decision:
        """Nothing to learn."""
        return decision

    def command(self, line: str, decision: Decision) -> Decision:
        """Nothing to learn."""
        return decision

    def large_result(self, fingerprint: str, tables: tuple[str, ...] | list[str], rows: int) -> None:
        """Nothing to judge."""

    def failed(self) -> None:
        """Nothing to count."""


OFF = _Off()


def watch(s: LiveSession) -> Watch | _Off:
    """The session's watch (created, and the session's start judged, on the first call)."""
    d = s.registry.detector
    return OFF if d is None else d.watch(s)


async def check_approval(
    settings: DetectionSettings,
    store: Store,
    alerts: Alerts,
    req: RequestRecord,
    approver: str,
    now: float,
    *,
    rank: Callable[[str, str], int | None] | None = None,
) -> None:
    """Flag what is unusual about an approval that was saved; never raises (detection holds nothing up).

    `rank(target, scope)`: how wide a scope is (None: unknown), to compare with the scope used last time.
    """
    try:
        everyone = await store.list_requests()
        earlier = [r for r in everyone if r.requester == req.requester]
        last_scope = None
        if rank is not None:
            used = await store.list_sessions(user=req.requester, target=req.target)  # newest first
            last_scope = next((s.scope for s in used), None)
        findings = approval_findings(
            settings, req, approver, now, earlier, hours=approver_hours(everyone, approver, before=now),
            last_scope=last_scope, rank=rank,
        )  # fmt: skip
        if findings:
            d = Detector(settings, store, alerts)
            for f in findings:
                await d.emit(f, grant=req.grant_id or "")
    except Exception:
        log.exception("approval detections for %s failed", req.id)
