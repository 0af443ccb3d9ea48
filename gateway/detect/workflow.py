"""Workflow rules on an approval: rubber stamps, one approver waving one requester through, no ticket,
an approver at an hour they never approve at, a scope much wider than the one the requester used last time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from gateway.detect.model import (
    NO_TICKET,
    OUTSIDE_HOURS,
    RUBBER_STAMP,
    SAME_APPROVER,
    WIDER_SCOPE,
    Detection,
)
from gateway.detect.settings import DetectionSettings
from gateway.store import RequestRecord

HOURS_WARMUP = 10  # approvals an approver needs before their usual hours mean anything
RARE = 0.02  # an hour (with the hour either side) holding less than this share of their approvals


def approver_hours(requests: Iterable[RequestRecord], approver: str, *, before: float) -> list[int]:
    """How many approvals `approver` gave in each UTC hour of the day, before `before`."""
    hours = [0] * 24
    for r in requests:
        for a in r.approvals:
            at = a.get("at")
            if a.get("by") == approver and isinstance(at, int | float) and at < before:
                hours[time.gmtime(at).tm_hour] += 1
    return hours


def approval_findings(
    settings: DetectionSettings,
    req: RequestRecord,
    approver: str,
    now: float,
    earlier: Iterable[RequestRecord],
    *,
    hours: list[int] | None = None,
    last_scope: str | None = None,
    rank: Callable[[str, str], int | None] | None = None,
) -> list[Detection]:
    """What is unusual about `approver` approving `req` at `now`.

    `earlier`: the requester's other requests; `hours`: the approver's approvals per UTC hour so far;
    `last_scope`: the scope of the requester's last session on the target, `rank` how wide a scope is.
    """
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
    total = sum(hours or ())
    if settings.on(OUTSIDE_HOURS) and hours is not None and total >= HOURS_WARMUP:
        h = time.gmtime(now).tm_hour
        near = hours[h] + hours[(h - 1) % 24] + hours[(h + 1) % 24]
        if near / total < RARE:
            sentence = f"{who} at {h:02d}:00 UTC; {near} of {approver}'s {total} approvals were within an hour of that"
            out.append(_found(OUTSIDE_HOURS, "warning", sentence, req))
    if settings.on(WIDER_SCOPE) and rank is not None and last_scope is not None and last_scope != req.scope:
        was, now_rank = rank(req.target, last_scope), rank(req.target, req.scope)
        if was is not None and now_rank is not None and now_rank > was:
            sentence = f"{who}, wider than {last_scope!r}, the scope of their last session there"
            out.append(_found(WIDER_SCOPE, "warning", sentence, req))
    return out


def _found(rule: str, severity: str, explanation: str, req: RequestRecord) -> Detection:
    return Detection(rule, severity, explanation, req.requester, req.target, request=req.id)


def scope_rank(sql_mode: str | None, allowlist: bool, command_rules: int) -> int:
    """How wide a scope is: read < write < admin for SQL; an allowlist < a shell with rules < one without."""
    if sql_mode is not None:
        return {"read": 0, "write": 1, "admin": 2}.get(sql_mode, 0)
    if allowlist:
        return 0
    return 1 if command_rules else 2
