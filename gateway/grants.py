"""Issue grants: the token for one user, target, scope and time window, stored and audited."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from gateway.config import Config
from gateway.durations import format_duration
from gateway.policy import Policies
from gateway.store import GrantRecord, Store
from gateway.tokens import Claims, KeyRing


class GrantRefused(ValueError):
    """A grant cannot be issued as asked; the message says why and what would work."""


@dataclass(frozen=True, slots=True)
class Issued:
    """A freshly issued grant and its signed token."""

    grant: GrantRecord
    token: str


async def issue_grant(
    config: Config,
    ring: KeyRing,
    store: Store,
    policies: Policies,
    *,
    user: str,
    target: str,
    scope: str,
    ttl: float,
    reason: str,
    approvers: tuple[str, ...],
    now: float,
    break_glass: bool = False,
    request_id: str | None = None,
    actor: str | None = None,
    max_sessions: int | None = None,
) -> Issued:
    """Check target, scope and TTL cap against policy, sign the token, store and audit the grant."""
    if not user:
        raise GrantRefused("a grant needs a user")
    if not reason.strip():
        raise GrantRefused("a grant needs a reason (a ticket or incident id)")
    tgt = config.targets.get(target)
    if tgt is None:
        known = ", ".join(sorted(config.targets)) or "none configured"
        raise GrantRefused(f"unknown target {target!r} (known: {known})")
    sp = policies.scope(target, scope)
    if sp is None or scope not in tgt.logins:
        scopes = ", ".join(sorted(s for s in tgt.logins if policies.scope(target, s))) or "none"
        raise GrantRefused(f"target {target} has no scope {scope!r} (scopes: {scopes})")
    if ttl <= 0:
        raise GrantRefused("ttl must be more than zero")
    if ttl > sp.max_ttl:
        raise GrantRefused(
            f"ttl {format_duration(ttl)} exceeds the policy's max_ttl {format_duration(sp.max_ttl)} "
            f"for {target}/{scope}; ask for {format_duration(sp.max_ttl)} or less"
        )
    jti = "g_" + secrets.token_hex(10)
    iat = int(now)
    exp = int(now + ttl)
    claims = Claims(
        sub=user,
        jti=jti,
        target=target,
        scope=scope,
        iat=iat,
        nbf=iat,
        exp=exp,
        reason=reason,
        approvers=approvers,
        iss=config.issuer,
        aud=config.audience,
        max_sessions=max_sessions,
    )
    token = ring.issue(claims)
    grant = GrantRecord(
        jti, user, target, scope, reason, approvers, iat, iat, exp, "active", break_glass, request_id, max_sessions
    )
    await store.add_grant(grant)
    data = {
        "user": user,
        "scope": scope,
        "ttl": ttl,
        "expires_at": exp,
        "reason": reason,
        "approvers": list(approvers),
        "break_glass": break_glass,
        "request": request_id,
        "kid": ring.active_kid,
    }
    await store.append(
        "grant.issued",
        actor=actor or user,
        grant=jti,
        target=target,
        severity="warning" if break_glass else "info",
        data=data,
    )
    return Issued(grant, token)
