"""The request workflow: who may request, approve, deny, cancel; the rules are pure, `Workflow` applies them."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

from gateway.alerts import Alerts
from gateway.config import Config
from gateway.durations import format_duration
from gateway.grants import GrantRefused, issue_grant
from gateway.policy import Policies, ScopePolicy
from gateway.review.sanitize import free_text_problem
from gateway.store import GrantRecord, RequestRecord, Store
from gateway.tokens import Claims, KeyRing

PENDING, APPROVED, DENIED, CANCELLED, EXPIRED = "pending", "approved", "denied", "cancelled", "expired"
REQUEST_STATES = (PENDING, APPROVED, DENIED, CANCELLED, EXPIRED)
DEFAULT_REQUEST_TIMEOUT = 4 * 3600.0  # a request nobody looked at for 4 h is stale: ask again
MAX_REASON = 500
MAX_COMMENT = 500
AUTO_APPROVER = "policy:auto-approve"


class WorkflowError(Exception):
    """A refused action; `code` maps to an HTTP status, str() is safe to show the caller."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # invalid | forbidden | not-found | conflict
        self.message = message


def invalid(message: str) -> WorkflowError:
    """Bad input (422)."""
    return WorkflowError("invalid", message)


def forbidden(message: str) -> WorkflowError:
    """Authenticated but not allowed (403)."""
    return WorkflowError("forbidden", message)


def not_found(message: str) -> WorkflowError:
    """Unknown id, or one the caller may not see (404: existence is not leaked)."""
    return WorkflowError("not-found", message)


def conflict(message: str) -> WorkflowError:
    """Illegal state transition (409)."""
    return WorkflowError("conflict", message)


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated API caller."""

    name: str
    groups: frozenset[str] = frozenset()
    admin: bool = False
    via: str = "api-key"  # api-key | oidc | local (CLI acting on the embedded store)


# --- pure decisions (plain values in, plain values or WorkflowError out) ----------------------------


def approvals_needed(policy: ScopePolicy) -> int:
    """How many approvals a request for this scope needs (0: granted on request)."""
    return 0 if policy.auto_approve else policy.approvals.count


def check_create(
    config: Config, policies: Policies, caller: Caller, target: str, scope: str, ttl: float, reason: str
) -> ScopePolicy:
    """Whether `caller` may ask for this; returns the scope's policy or raises WorkflowError."""
    if target not in config.targets or policies.target(target) is None:
        raise invalid(f"unknown target {target!r} (known: {', '.join(sorted(config.targets)) or 'none'})")
    policy = policies.scope(target, scope)
    if policy is None or scope not in config.targets[target].logins:
        tp = policies.target(target)
        known = ", ".join(sorted(tp.scopes)) if tp else "none"
        raise invalid(f"target {target} has no scope {scope!r} (scopes: {known})")
    if not policy.may_request(caller.name, caller.groups):
        raise forbidden(f"policy for {target}/{scope} does not let {caller.name} request it ({_requesters(policy)})")
    if not reason.strip():
        raise invalid("a reason is required (a ticket or incident id and why)")
    check_text(reason, "reason", MAX_REASON)
    if not ttl > 0:
        raise invalid("ttl must be more than zero seconds")
    if ttl > policy.max_ttl:
        raise invalid(
            f"ttl {format_duration(ttl)} exceeds max_ttl {format_duration(policy.max_ttl)} for {target}/{scope}"
        )
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
    )


# --- the workflow over the store -------------------------------------------------------------------


class Workflow:
    """Create, approve, deny, cancel and expire requests; every change is audited and compare-and-set."""

    def __init__(
        self,
        config: Config,
        ring: KeyRing,
        store: Store,
        policies: Policies,
        alerts: Alerts,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.config = config
        self.ring = ring
        self.store = store
        self.policies = policies
        self.alerts = alerts
        self.request_timeout = request_timeout
        # In-process serialisation; the compare-and-set below guards against other replicas.
        self._lock = asyncio.Lock()

    async def create(
        self, caller: Caller, *, target: str, scope: str, ttl: float, reason: str, now: float
    ) -> RequestRecord:
        """Record a request; auto-approved scopes get their grant at once (still audited)."""
        policy = check_create(self.config, self.policies, caller, target, scope, ttl, reason)
        req = RequestRecord(
            id="r_" + secrets.token_hex(8),
            requester=caller.name,
            target=target,
            scope=scope,
            reason=reason,
            ttl=ttl,
            created_at=now,
            expires_at=now + self.request_timeout,
        )
        await self.store.add_request(req)
        data = {"scope": scope, "ttl": ttl, "reason": reason, "needs": approvals_needed(policy)}
        await self.store.append("request.created", actor=caller.name, target=target, data={"request": req.id, **data})
        if approvals_needed(policy) == 0:
            async with self._lock:
                return await self._grant(req, req, actor=AUTO_APPROVER, approvers=(), now=now, auto=True)
        await self.alerts.emit(
            "request.pending",
            f"{caller.name} requests {target}/{scope} for {format_duration(ttl)}: {reason} (gateway approve {req.id})",
            severity="info",
            actor=caller.name,
            target=target,
            data={"request": req.id, **data},
        )
        return req

    async def load(self, request_id: str, caller: Caller, now: float, *, acting: bool = False) -> RequestRecord:
        """A request the caller may see (expiring it first when stale), or not-found.

        `acting`: the caller names the request to approve or deny it; a refusal then says why (403) instead
        of hiding the request, so that the attempt is a recorded policy refusal.
        """
        req = await self.store.get_request(request_id)
        visible = req is not None and (
            acting or may_view_request(req, self.policies.scope(req.target, req.scope), caller)
        )
        if req is None or not visible:
            raise not_found(f"no request {request_id!r}")
        if is_stale(req, now):
            req = await self._expire(req, now)
        return req

    async def visible(
        self,
        caller: Caller,
        *,
        now: float,
        state: str | None = None,
        target: str | None = None,
        requester: str | None = None,
    ) -> list[RequestRecord]:
        """Requests visible to the caller, newest first."""
        await self.expire_stale(now)
        rows = await self.store.list_requests(state=state, target=target, requester=requester)
        return [r for r in rows if may_view_request(r, self.policies.scope(r.target, r.scope), caller)]

    async def approve(self, caller: Caller, request_id: str, *, comment: str, now: float) -> RequestRecord:
        """Add the caller's approval; the last one needed issues the grant."""
        check_text(comment, "comment", MAX_COMMENT)
        async with self._lock:
            req = await self.load(request_id, caller, now, acting=True)
            check_transition(req, "approved")
            policy = self._policy_of(req)
            refusal = approver_refusal(req, policy, caller)
            if refusal is not None:
                raise forbidden(refusal)
            new = with_approval(req, caller, comment, now)
            needed = approvals_needed(policy)
            approval = {"request": req.id, "comment": comment, "approvals": len(new.approvals), "needs": needed}
            if len(new.approvals) >= needed:
                approvers = tuple(str(a["by"]) for a in new.approvals)
                return await self._grant(
                    req, new, actor=caller.name, approvers=approvers, now=now, comment=comment, approval=approval
                )
            if not await self._cas(new, req):
                raise conflict(f"request {req.id} changed while approving; try again")
            await self.store.append("request.approval", actor=caller.name, target=req.target, data=approval)
            return new

    async def deny(self, caller: Caller, request_id: str, *, comment: str, now: float) -> RequestRecord:
        """One eligible approver's denial ends the request."""
        check_text(comment, "comment", MAX_COMMENT)
        async with self._lock:
            req = await self.load(request_id, caller, now, acting=True)
            check_transition(req, "denied")
            refusal = approver_refusal(req, self._policy_of(req), caller)
            if refusal is not None:
                raise forbidden(refusal)
            new = replace(req, state=DENIED, decided_at=now, decided_by=caller.name, comment=comment)
            return await self._finish(req, new, "request.denied", caller.name)

    async def cancel(self, caller: Caller, request_id: str, *, comment: str, now: float) -> RequestRecord:
        """The requester (or an admin) withdraws a pending request."""
        check_text(comment, "comment", MAX_COMMENT)
        async with self._lock:
            req = await self.load(request_id, caller, now)
            if caller.name != req.requester and not caller.admin:
                raise forbidden(f"only {req.requester} or an admin may cancel request {req.id}")
            check_transition(req, "cancelled")
            new = replace(req, state=CANCELLED, decided_at=now, decided_by=caller.name, comment=comment)
            return await self._finish(req, new, "request.cancelled", caller.name)

    async def expire_stale(self, now: float) -> list[str]:
        """Expire every pending request past its expiry; returns their ids."""
        out = []
        for req in await self.store.list_requests(state=PENDING):
            if is_stale(req, now):
                await self._expire(req, now)
                out.append(req.id)
        return out

    async def token(self, caller: Caller, grant_id: str, *, now: float) -> tuple[GrantRecord, str]:
        """Sign the token of the caller's own live grant; nobody else, admins included, may fetch it."""
        grant = await self.store.get_grant(grant_id)
        if grant is None or not may_manage_grant(grant, caller):
            raise not_found(f"no grant {grant_id!r}")
        if grant.user != caller.name:
            # A token is the user's identity at the target: handing it to an admin would let them impersonate.
            raise forbidden(f"grant {grant.id} belongs to {grant.user}; only they may fetch its token")
        if grant.state != "active" or not grant.live(now):
            state = grant.state if grant.state != "active" else "expired"
            raise conflict(f"grant {grant.id} is {state}; request access again")
        token = self.ring.issue(claims_of(grant, self.config))
        async with self._lock:  # the workflow's own writes go one at a time
            await self.store.append(
                "grant.token_fetched", actor=caller.name, grant=grant.id, target=grant.target, data={"via": caller.via}
            )
        return grant, token

    def _policy_of(self, req: RequestRecord) -> ScopePolicy:
        policy = self.policies.scope(req.target, req.scope)
        if policy is None:
            raise conflict(f"{req.target}/{req.scope} is no longer in the policy; the request cannot be approved")
        return policy

    async def _grant(
        self,
        old: RequestRecord,
        new: RequestRecord,
        *,
        actor: str,
        approvers: tuple[str, ...],
        now: float,
        comment: str = "",
        auto: bool = False,
        approval: dict[str, Any] | None = None,
    ) -> RequestRecord:
        # Issue first, then claim the request; a lost race revokes the grant, whose token was never handed out.
        try:
            issued = await issue_grant(
                self.config,
                self.ring,
                self.store,
                self.policies,
                user=old.requester,
                target=old.target,
                scope=old.scope,
                ttl=old.ttl,
                reason=old.reason,
                approvers=approvers,
                now=now,
                request_id=old.id,
                actor=actor,
            )
        except GrantRefused as exc:
            raise conflict(f"request {old.id} cannot be granted now: {exc}") from None
        done = replace(
            new, state=APPROVED, decided_at=now, decided_by=actor, comment=comment or None, grant_id=issued.grant.id
        )
        if not await self._cas(done, old):
            await self.store.revoke_grant(issued.grant.id, by="gateway", reason="request changed concurrently", now=now)
            raise conflict(f"request {old.id} changed while approving; try again")
        if approval is not None:  # audited only once it counts: a lost race above records nothing
            await self.store.append("request.approval", actor=actor, target=old.target, data=approval)
        event = "request.auto_approved" if auto else "request.approved"
        await self.store.append(
            event,
            actor=actor,
            grant=issued.grant.id,
            target=old.target,
            data={"request": old.id, "requester": old.requester, "approvers": list(approvers)},
        )
        return done

    async def _finish(self, old: RequestRecord, new: RequestRecord, event: str, actor: str) -> RequestRecord:
        if not await self._cas(new, old):
            raise conflict(f"request {old.id} changed meanwhile; look at it again")
        data = {"request": old.id, "requester": old.requester, "comment": new.comment}
        await self.store.append(event, actor=actor, target=old.target, data=data)
        return new

    async def _expire(self, req: RequestRecord, now: float) -> RequestRecord:
        new = replace(req, state=EXPIRED, decided_at=now, decided_by="gateway")
        if await self._cas(new, req):
            await self.store.append(
                "request.expired", target=req.target, data={"request": req.id, "requester": req.requester}
            )
            return new
        return await self.store.get_request(req.id) or new

    async def _cas(self, new: RequestRecord, old: RequestRecord) -> bool:
        """Write `new` only if the row still has `old`'s state and approval count (approvals only grow)."""
        return await self.store.update_request(new, expect_state=old.state, expect_approvals=len(old.approvals))


def request_json(req: RequestRecord, *, needs: int | None = None, now: float | None = None) -> dict[str, Any]:
    """The API view of a request."""
    now = time.time() if now is None else now
    return {
        "id": req.id,
        "requester": req.requester,
        "target": req.target,
        "scope": req.scope,
        "reason": req.reason,
        "ttl": req.ttl,
        "state": EXPIRED if is_stale(req, now) else req.state,
        "created_at": req.created_at,
        "expires_at": req.expires_at,
        "approvals": [dict(a) for a in req.approvals],
        "approvals_needed": needs,
        "decided_at": req.decided_at,
        "decided_by": req.decided_by,
        "comment": req.comment,
        "grant": req.grant_id,
    }


def grant_json(g: GrantRecord) -> dict[str, Any]:
    """The API view of a grant (never its token)."""
    return {
        "id": g.id,
        "user": g.user,
        "target": g.target,
        "scope": g.scope,
        "reason": g.reason,
        "approvers": list(g.approvers),
        "issued_at": g.issued_at,
        "not_before": g.not_before,
        "expires_at": g.expires_at,
        "state": g.state,
        "break_glass": g.break_glass,
        "request": g.request_id,
        "max_sessions": g.max_sessions,
        "revoked_at": g.revoked_at,
        "revoked_by": g.revoked_by,
        "revoke_reason": g.revoke_reason,
    }
