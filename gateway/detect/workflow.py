"""Workflow rules on an approval: rubber stamps, one approver waving one requester through, no ticket."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.detect.model import NO_TICKET, RUBBER_STAMP, SAME_APPROVER, Detection
from gateway.detect.settings import DetectionSettings
from gateway.store import RequestRecord


def approval_findings(
    settings: DetectionSettings, req: RequestRecord, approver: str, now: float, earlier: Iterable[RequestRecord]
) -> list[Detection]:
    """What is unusual about `approver` approving `req` at `now`; `earlier`: the requester's other requests."""
    out: list[Detection] = []
    who = f"{approver} approved {req.requester}'s request {req.id} for {req.target}/{req.scope}"
    waited = now - req.created_at
    if settings.on(RUBBER_STAMP) and waited < settings.rubber_stamp_seconds:
        out.append(_found(RUBBER_STAMP, "warning", f"{who} {waited:.1f} s after it was filed", req))
    if settings.on(SAME_APPROVER):
        window = now - settings.same_approver_days * 86_400
        times = sum(
            1
            for r in earlier
            if r.id != req.id and r.created_at >= window and any(a.get("by") == approver for a in r.approvals)
        )
        if times >= settings.same_approver_count:
            days = f"{settings.same_approver_days:g} days"
            out.append(_found(SAME_APPROVER, "warning", f"{who}, after approving {times} of theirs in {days}", req))
    pattern = settings.ticket_pattern
    if settings.on(NO_TICKET) and pattern is not None and pattern.search(req.reason) is None:
        sentence = f"{who} whose reason names no ticket (pattern {pattern.pattern}): {req.reason!r}"
        out.append(_found(NO_TICKET, "warning", sentence, req))
    return out


def _found(rule: str, severity: str, explanation: str, req: RequestRecord) -> Detection:
    return Detection(rule, severity, explanation, req.requester, req.target, request=req.id)
