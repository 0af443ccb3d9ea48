"""The request workflow over the store: create, approve, deny, cancel, expire, fetch a token; audited, CAS."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import Any

from gateway.alerts import Alerts
from gateway.config import Config
from gateway.control.caller import Caller
from gateway.control.errors import GrantRefused, conflict, forbidden, not_found
from gateway.control.grants import claims_of, issue_grant
from gateway.control.rules import (
    APPROVED,
    AUTO_APPROVER,
    CANCELLED,
    DEFAULT_REQUEST_TIMEOUT,
    DENIED,
    EXPIRED,
    MAX_COMMENT,
    PENDING,
    approvals_needed,
    approver_refusal,
    check_create,
    check_text,
    check_transition,
    is_stale,
    may_manage_grant,
    may_view_request,
    with_approval,
)
from gateway.detect.hooks import check_approval
from gateway.detect.workflow import scope_rank
from gateway.durations import format_duration
from gateway.policy import Policies, ScopePolicy
from gateway.store import GrantRecord, RequestRecord, Store
from gateway.tokens import KeyRing


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
                new = await self._grant(
                    req, new, actor=caller.name, approvers=approvers, now=now, comment=comment, approval=approval
                )
            else:
                if not await self._cas(new, req):
                    raise conflict(f"request {req.id} changed while approving; try again")
                await self.store.append("request.approval", actor=caller.name, target=req.target, data=approval)
            # Only an approval that was saved is judged: one that lost the compare-and-set above flags nothing.
            await check_approval(self.config.detection, self.store, self.alerts, new, caller.name, now,
                                 rank=self._rank)  # fmt: skip
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

    def _rank(self, target: str, scope: str) -> int | None:
        """How wide a scope of a target is (None: not in the policy)."""
        p = self.policies.scope(target, scope)
        if p is None:
            return None
        ssh = p.ssh
        allowlist = ssh is not None and ssh.allowed_commands is not None
        return scope_rank(p.sql.mode if p.sql else None, allowlist, len(ssh.command_rules) if ssh else 0)

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
                workload=old.workload,
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
