"""Break-glass grant, revoke a grant, kill a session: shared by the API and by the CLI on the embedded store."""

from __future__ import annotations

import asyncio

from gateway.alerts import Alerts
from gateway.config import Config
from gateway.control.caller import Caller
from gateway.control.errors import conflict, invalid, not_found
from gateway.control.grants import Issued, issue_grant
from gateway.control.rules import may_manage_grant
from gateway.detect.engine import Detector
from gateway.detect.model import BREAK_GLASS, Detection
from gateway.durations import format_duration
from gateway.policy import Policies
from gateway.review.sanitize import MAX_FREE_TEXT, free_text_problem, printable
from gateway.sessions import SessionRegistry
from gateway.store import GrantRecord, SessionRecord, Store, StoreError
from gateway.tokens import KeyRing

MAX_REASON = MAX_FREE_TEXT


def default_kill_reason(caller: Caller) -> str:
    """The reason of a kill given none: the caller's name, made printable (an IdP name may carry anything)."""
    return f"killed by {printable(caller.name)}"[:MAX_REASON]


def _reason(reason: str) -> str:
    """The one check every revoke/kill reason passes, from the API and from the CLI on the embedded store."""
    if not reason.strip():
        raise invalid("a reason is required")
    problem = free_text_problem(reason, limit=MAX_REASON)
    if problem is not None:
        raise invalid(f"reason {problem}")
    return reason


async def break_glass(
    config: Config,
    ring: KeyRing,
    store: Store,
    policies: Policies,
    alerts: Alerts,
    caller: Caller,
    *,
    user: str,
    target: str,
    scope: str,
    ttl: float,
    reason: str,
    now: float,
    max_sessions: int | None = None,
) -> Issued:
    """Issue a grant now, without approval: audited as a warning and alerted as critical."""
    # The same check the API applies: this text is shown to every reviewer and in the critical alert.
    for what, value, limit in (("reason", reason, MAX_REASON), ("user", user, 100)):
        problem = free_text_problem(value, limit=limit)
        if problem is not None:
            raise invalid(f"{what} {problem}")
    issued = await issue_grant(
        config,
        ring,
        store,
        policies,
        user=user,
        target=target,
        scope=scope,
        ttl=ttl,
        reason=reason,
        approvers=(),
        now=now,
        break_glass=True,
        actor=caller.name,
        max_sessions=max_sessions,
    )
    g = issued.grant
    # A detection like any other (audited, listed by `gateway detections`); its alert keeps the type break_glass.
    why = f"break-glass grant {g.id}: {g.user} on {g.target}/{g.scope} for {format_duration(ttl)}: {g.reason}"
    data = {"user": g.user, "scope": g.scope, "expires_at": g.expires_at, "reason": g.reason}
    if config.detection.on(BREAK_GLASS):
        found = Detection(BREAK_GLASS, "critical", why, g.user, g.target)
        detector = Detector(config.detection, store, alerts)
        await detector.emit(found, grant=g.id, alert="break_glass", actor=caller.name, data=data)
    else:
        await alerts.emit("break_glass", why, severity="critical", actor=caller.name, grant=g.id, target=g.target,
                          data=data)  # fmt: skip
    return issued


async def _none() -> int:
    return 0


async def revoke_grant(
    store: Store,
    registry: SessionRegistry | None,
    alerts: Alerts,
    caller: Caller,
    grant_id: str,
    *,
    reason: str,
    now: float,
) -> tuple[GrantRecord, int]:
    """Mark the grant revoked (other replicas' watchers see it), end its live sessions here; (grant, killed here)."""
    reason = _reason(reason)
    grant = await store.get_grant(grant_id)
    if grant is None or not may_manage_grant(grant, caller):
        raise not_found(f"no grant {grant_id!r}")
    if grant.state != "active":
        raise conflict(f"grant {grant.id} is already {grant.state}")
    try:
        revoked = await store.revoke_grant(grant.id, by=caller.name, reason=reason, now=now)
    except StoreError as exc:
        raise conflict(str(exc)) from None
    # The sessions here are cut while the revocation is written: the cut never queues behind the audit chain.
    killing = asyncio.ensure_future(
        registry.revoke(grant.id, f"grant revoked: {reason}", by=caller.name) if registry is not None else _none()
    )
    try:
        await store.append(
            "grant.revoked",
            actor=caller.name,
            grant=grant.id,
            target=grant.target,
            severity="warning",
            data={"reason": reason, "user": grant.user, "own": caller.name == grant.user},
        )
    finally:
        killed = await killing
    await alerts.emit(
        "revocation",
        f"{caller.name} revoked grant {grant.id} of {grant.user} on {grant.target}/{grant.scope}: {reason}",
        severity="warning",
        actor=caller.name,
        grant=grant.id,
        target=grant.target,
        data={"user": grant.user, "scope": grant.scope, "reason": reason},
    )
    return revoked, killed


async def kill_session(
    store: Store,
    registry: SessionRegistry | None,
    caller: Caller,
    session_id: str,
    *,
    reason: str,
) -> tuple[SessionRecord, bool]:
    """End one live session: here at once, elsewhere through the kill mark its process's watcher reads."""
    reason = _reason(reason)
    session = await store.get_session(session_id)
    if session is None or not (caller.admin or caller.name == session.user):
        raise not_found(f"no session {session_id!r}")
    if session.ended_at is not None:
        raise conflict(f"session {session.id} already ended ({session.end_reason or 'no reason recorded'})")
    await store.append(
        "session.kill_requested",
        actor=caller.name,
        session=session.id,
        grant=session.grant_id,
        target=session.target,
        severity="warning",
        data={"reason": reason, "user": session.user},
    )
    await store.request_kill(session.id, reason)
    here = registry is not None and await registry.kill(session.id, reason, by=caller.name)
    return session, here
