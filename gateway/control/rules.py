"""The control plane's rules: plain values in, plain values or a refusal out (no store, no clock)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from gateway.config import Config
from gateway.control.caller import Caller
from gateway.control.errors import GrantRefused, conflict, forbidden, invalid
from gateway.durations import format_duration
from gateway.policy import Policies, ScopePolicy
from gateway.review.sanitize import free_text_problem
from gateway.store import GrantRecord, RequestRecord

PENDING, APPROVED, DENIED, CANCELLED, EXPIRED = "pending", "approved", "denied", "cancelled", "expired"
REQUEST_STATES = (PENDING, APPROVED, DENIED, CANCELLED, EXPIRED)
DEFAULT_REQUEST_TIMEOUT = 4 * 3600.0  # a request nobody looked at for 4 h is stale: ask again
MAX_REASON = 500
MAX_COMMENT = 500
AUTO_APPROVER = "policy:auto-approve"


def approvals_needed(policy: ScopePolicy) -> int:
    """How many approvals a request for this scope needs (0: granted on request)."""
    return 0 if policy.auto_approve else policy.approvals.count


def scope_policy(config: Config, policies: Policies, target: str, scope: str) -> ScopePolicy:
    """The policy of a configured target's scope that has an upstream login, or GrantRefused naming what exists."""
    tgt = config.targets.get(target)
    if tgt is None or policies.target(target) is None:
        known = ", ".join(sorted(config.targets)) or "none configured"
        raise GrantRefused(f"unknown target {target!r} (known: {known})")
    policy = policies.scope(target, scope)
    if policy is None or scope not in tgt.logins:
        scopes = ", ".join(sorted(s for s in tgt.logins if policies.scope(target, s))) or "none"
        raise GrantRefused(f"target {target} has no scope {scope!r} (scopes: {scopes})")
    return policy


def check_ttl(policy: ScopePolicy, target: str, scope: str, ttl: float) -> float:
    """A lifetime above zero and within the scope's max_ttl (NaN is refused: `not ttl > 0`)."""
    if not ttl > 0:
        raise GrantRefused("ttl must be more than zero seconds")
    if ttl > policy.max_ttl:
        cap = format_duration(policy.max_ttl)
        asked = format_duration(ttl) if math.isfinite(ttl) else "without end"  # inf cannot be rounded for display
        raise GrantRefused(
            f"ttl {asked} exceeds the policy's max_ttl {cap} for {target}/{scope}; ask for {cap} or less"
        )
    return ttl


def check_access(config: Config, policies: Policies, target: str, scope: str, ttl: float) -> ScopePolicy:
    """Target, scope and TTL as one rule, the same for a request and a grant; returns the scope's policy."""
    policy = scope_policy(config, policies, target, scope)
    check_ttl(policy, target, scope, ttl)
    return policy


def check_create(
    config: Config, policies: Policies, caller: Caller, target: str, scope: str, ttl: float, reason: str
) -> ScopePolicy:
    """Whether `caller` may ask for this; returns the scope's policy or raises WorkflowError."""
    policy = scope_policy(config, policies, target, scope)
    if not policy.may_request(caller.name, caller.groups):
        raise forbidden(f"policy for {target}/{scope} does not let {caller.name} request it ({_requesters(policy)})")
    if not reason.strip():
        raise invalid("a reason is required (a ticket or incident id and why)")
    check_text(reason, "reason", MAX_REASON)
    check_ttl(policy, target, scope, ttl)
    return policy


def _requesters(policy: ScopePolicy) -> str:
    who = [*(f"user {u}" for u in sorted(policy.requesters_users))]
    who += [f"group {g}" for g in sorted(policy.requesters_groups)]
    return "requesters: " + ", ".join(who)


def approver_refusal(req: RequestRecord, policy: ScopePolicy, caller: Caller) -> str | None:
    """Why `caller` may not approve or deny `req` under `policy`, or None when they may."""
    if caller.name == req.requester:
        return "nobody approves their own request"
    rule = policy.approvals
    if not rule.from_users and not rule.from_groups:
        return None  # empty list: anyone but the requester
    if caller.name in rule.from_users or rule.from_groups & caller.groups:
        return None
    who = [*(f"user {u}" for u in sorted(rule.from_users)), *(f"group {g}" for g in sorted(rule.from_groups))]
    return f"approvals for {req.target}/{req.scope} must come from {', '.join(who)}"


def may_view_request(req: RequestRecord, policy: ScopePolicy | None, caller: Caller) -> bool:
    """Requesters see their own; approvers see what they could act on; admins see all."""
    if caller.admin or caller.name == req.requester:
        return True
    return policy is not None and approver_refusal(req, policy, caller) is None


def is_stale(req: RequestRecord, now: float) -> bool:
    """A pending request past its expiry."""
    return req.state == PENDING and req.expires_at is not None and now >= req.expires_at


def check_transition(req: RequestRecord, to: str) -> None:
    """Only pending requests move; every other transition is refused with the current state named."""
    if req.state != PENDING:
        raise conflict(f"request {req.id} is already {req.state}; it cannot be {to}")


def with_approval(req: RequestRecord, caller: Caller, comment: str, now: float) -> RequestRecord:
    """`req` with one more approval; raises when this caller already approved it."""
    if any(a.get("by") == caller.name for a in req.approvals):
        raise conflict(f"{caller.name} already approved request {req.id}; another approver is needed")
    entry: dict[str, Any] = {"by": caller.name, "at": now, "comment": comment}
    return replace(req, approvals=(*req.approvals, entry))


def may_manage_grant(grant: GrantRecord, caller: Caller) -> bool:
    """Owners give grants back; admins revoke any."""
    return caller.admin or caller.name == grant.user


def check_text(value: str, what: str, limit: int) -> str:
    """A free-text field: within its length limit, printable, one line (the check the API and CLI share)."""
    problem = free_text_problem(value, limit=limit)
    if problem is not None:
        raise invalid(f"{what} {problem}")
    return value
