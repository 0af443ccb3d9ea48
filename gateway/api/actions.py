"""Revoke a grant and kill a session: shared by the API and by the CLI acting on the embedded store."""

from __future__ import annotations

from gateway.alerts import Alerts
from gateway.approvals import Caller, conflict, invalid, may_manage_grant, not_found
from gateway.review.sanitize import MAX_FREE_TEXT, free_text_problem, printable
from gateway.sessions import SessionRegistry
from gateway.store import GrantRecord, SessionRecord, Store, StoreError

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
    await store.append(
        "grant.revoked",
        actor=caller.name,
        grant=grant.id,
        target=grant.target,
        severity="warning",
        data={"reason": reason, "user": grant.user, "own": caller.name == grant.user},
    )
    killed = 0
    if registry is not None:
        killed = await registry.revoke(grant.id, f"grant revoked: {reason}", by=caller.name)
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
