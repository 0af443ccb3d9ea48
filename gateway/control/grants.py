"""Grants and their tokens: issue one (stored and audited), and rebuild a stored grant's claims."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from gateway.config import Config
from gateway.control.errors import GrantRefused
from gateway.control.rules import check_access
from gateway.policy import Policies
from gateway.store import GrantRecord, Store
from gateway.tokens import Claims, KeyRing


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
    workload: dict[str, str] | None = None,
) -> Issued:
    """Check target, scope and TTL cap against policy, sign the token, store and audit the grant."""
    if not user:
        raise GrantRefused("a grant needs a user")
    if not reason.strip():
        raise GrantRefused("a grant needs a reason (a ticket or incident id)")
    check_access(config, policies, target, scope, ttl)
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
        workload=workload,
    )
    token = ring.issue(claims)
    grant = GrantRecord(
        jti,
        user,
        target,
        scope,
        reason,
        approvers,
        iat,
        iat,
        exp,
        "active",
        break_glass,
        request_id,
        max_sessions,
        workload=workload,
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
    if workload is not None:
        data["workload"] = workload
    await store.append(
        "grant.issued",
        actor=actor or user,
        grant=jti,
        target=target,
        severity="warning" if break_glass else "info",
        data=data,
    )
    return Issued(grant, token)


def claims_of(grant: GrantRecord, config: Config) -> Claims:
    """The claims of a grant's token, rebuilt from the stored grant (never from today's policy)."""
    return Claims(
        sub=grant.user,
        jti=grant.id,
        target=grant.target,
        scope=grant.scope,
        iat=int(grant.issued_at),
        nbf=int(grant.not_before),
        exp=int(grant.expires_at),
        reason=grant.reason,
        approvers=grant.approvers,
        iss=config.issuer,
        aud=config.audience,
        max_sessions=grant.max_sessions,
        workload=grant.workload,
    )
