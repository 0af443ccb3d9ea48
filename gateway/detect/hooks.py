"""The one-line calls the front ends and the workflow make into detection."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.alerts import Alerts
from gateway.detect.engine import Detector, Watch
from gateway.detect.settings import DetectionSettings
from gateway.detect.workflow import approval_findings
from gateway.store import RequestRecord, Store

if TYPE_CHECKING:
    from gateway.pg.sql.inspector import Inspection
    from gateway.sessions import LiveSession

log = logging.getLogger(__name__)


class _Off:
    """The watch of a session no detector looks at (a registry built without services)."""

    __slots__ = ()

    def sql(self, insp: Inspection) -> None:
        """Nothing to learn."""

    def command(self, line: str) -> None:
        """Nothing to learn."""


_OFF = _Off()


def watch(s: LiveSession) -> Watch | _Off:
    """The session's watch (created, and the session counted, on the first call)."""
    d = s.registry.detector
    return _OFF if d is None else d.watch(s)


async def check_approval(
    settings: DetectionSettings, store: Store, alerts: Alerts, req: RequestRecord, approver: str, now: float
) -> None:
    """Flag what is unusual about this approval; never raises (detection does not hold an approval up)."""
    try:
        earlier = await store.list_requests(requester=req.requester)
        findings = approval_findings(settings, req, approver, now, earlier)
        if findings:
            d = Detector(settings, store, alerts)
            for f in findings:
                await d.emit(f)
    except Exception:
        log.exception("approval detections for %s failed", req.id)
