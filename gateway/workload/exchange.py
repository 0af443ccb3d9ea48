"""Token exchange: a pipeline's OIDC token in, a gateway grant out, by policy rule; every refusal audited."""

from __future__ import annotations

import collections
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.alerts import Alerts
from gateway.config import Config
from gateway.control.errors import GrantRefused
from gateway.control.grants import claims_of, issue_grant
from gateway.control.rules import APPROVED, PENDING, approvals_needed, check_access, is_stale
from gateway.durations import format_duration
from gateway.policy import Policies
from gateway.store import GrantRecord, RequestRecord, Store
from gateway.tokens import KeyRing
from gateway.workload.rules import first_match
from gateway.workload.verify import MAX_TOKEN, WorkloadIdentity, WorkloadRefused, WorkloadVerifier, unverified_issuer

REFUSAL_WINDOW = 300.0
REFUSAL_ALERT_AT = 3  # refusals of one workload (or one client) within the window that raise an alert
MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class Exchanged:
    """The outcome: a grant and its token, or a request waiting for an approver."""

    grant: GrantRecord | None = None
    token: str | None = None
    request: RequestRecord | None = None
    needs: int = 0


def _printable(text: str) -> str:
    """Claims are the CI system's free text (a workflow's name): one printable line for a reason."""
    return "".join(c if c.isprintable() else "?" for c in text)[:MAX_REASON]


class Exchanger:
    """Verify workload tokens, match policy rules, issue grants or requests; refusals audited and alerted."""

    def __init__(
        self,
        config: Config,
        ring: KeyRing,
        store: Store,
        policies: Policies,
        alerts: Alerts,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.ring = ring
        self.store = store
        self.policies = policies
        self.alerts = alerts
        self.verifiers = {cfg.issuer: WorkloadVerifier(cfg, clock=clock) for cfg in config.workloads.values()}
        self._refusals: dict[str, collections.deque[float]] = {}

    def __repr__(self) -> str:
        return f"Exchanger(issuers={sorted(self.verifiers)})"

    async def close(self) -> None:
        """Close the JWKS clients."""
        for v in self.verifiers.values():
            await v.close()

    async def exchange(
        self,
        token: str,
        *,
        target: str,
        scope: str,
        ttl: float | None,
        request_id: str | None,
        client: str,
        now: float,
    ) -> Exchanged:
        """Exchange (or, with `request_id`, collect an approved exchange); WorkloadRefused says why not."""
        identity: WorkloadIdentity | None = None
        try:
            identity = await self._verify(token)
            if request_id is not None:
                return await self._collect(identity, request_id, now)
            return await self._exchange(identity, target, scope, ttl, now)
        except WorkloadRefused as refused:
            await self._refused(refused, identity, token, target, scope, client, now)
            raise

    async def _verify(self, token: str) -> WorkloadIdentity:
        token = token.strip()
        if not token or len(token) > MAX_TOKEN:
            raise WorkloadRefused("malformed", "no usable workload token was given")
        iss = unverified_issuer(token)
        verifier = self.verifiers.get(iss)
        if verifier is None:
            shown = _printable(iss)[:120] or "(none)"
            raise WorkloadRefused("unknown-issuer", f"issuer {shown!r} is not a configured workload issuer")
        return await verifier.verify(token)

    async def _exchange(
        self, ident: WorkloadIdentity, target: str, scope: str, ttl: float | None, now: float
    ) -> Exchanged:
        tp = self.policies.target(target)
        rule = None if tp is None else first_match(tp.workloads, ident.issuer, ident.claims, scope)
        if rule is None:
            raise WorkloadRefused(
                "no-rule", f"no workload rule of target {target!r} lets {ident.subject} have scope {scope!r}"
            )
        ttl = rule.max_ttl if ttl is None else ttl
        if not ttl > 0 or ttl > rule.max_ttl:
            cap = format_duration(rule.max_ttl)
            raise WorkloadRefused("ttl", f"rule {rule.name!r} allows at most {cap}; ask for {cap} or less")
        try:
            policy = check_access(self.config, self.policies, target, scope, ttl)
        except GrantRefused as exc:
            raise WorkloadRefused("policy", exc.message) from None
        kept = ident.kept()
        reason = _printable(
            f"pipeline {kept.get('repository', ident.subject)} {kept.get('workflow', '')} run {kept.get('run_id', '?')}"
            f" (rule {rule.name})"
        )
        used_for = f"{target}/{scope}"
        # One use per token, decided by one insert in the store: two replicas cannot both accept a replay.
        if not await self.store.use_workload_token(
            ident.token_key, expires_at=ident.expires_at, now=now, used_for=used_for
        ):
            raise WorkloadRefused("replayed", "this workload token was already used; ask the CI system for a new one")
        data = {"workload": kept, "rule": rule.name, "scope": scope, "ttl": ttl}
        if rule.approval == "auto":
            issued = await issue_grant(
                self.config,
                self.ring,
                self.store,
                self.policies,
                user=ident.subject,
                target=target,
                scope=scope,
                ttl=ttl,
                reason=reason,
                approvers=(),
                now=now,
                actor=ident.subject,
                workload=kept,
            )
            await self.store.append(
                "workload.exchanged", actor=ident.subject, grant=issued.grant.id, target=target, data=data
            )
            return Exchanged(grant=issued.grant, token=issued.token)
        needs = max(1, approvals_needed(policy))
        req = RequestRecord(
            id="r_" + secrets.token_hex(8),
            requester=ident.subject,
            target=target,
            scope=scope,
            reason=reason,
            ttl=ttl,
            created_at=now,
            expires_at=now + self.config.api.request_timeout,
            workload=kept,
        )
        await self.store.add_request(req)
        await self.store.append(
            "request.created",
            actor=ident.subject,
            target=target,
            data={"request": req.id, "reason": reason, "needs": needs, **data},
        )
        await self.alerts.emit(
            "request.pending",
            f"{ident.subject} (pipeline run {kept.get('run_id', '?')}) requests {target}/{scope} for "
            f"{format_duration(ttl)} by rule {rule.name} (gateway approve {req.id})",
            severity="info",
            actor=ident.subject,
            target=target,
            data={"request": req.id, **data},
        )
        return Exchanged(request=req, needs=needs)

    async def _collect(self, ident: WorkloadIdentity, request_id: str, now: float) -> Exchanged:
        """A pipeline waiting for its approver asks again, with a token of the same run."""
        req = await self.store.get_request(request_id)
        wl = req.workload if req is not None else None
        same_run = wl is not None and wl.get("run_id") == ident.kept().get("run_id")
        if req is None or not same_run or req.requester != ident.subject:
            raise WorkloadRefused("not-yours", f"no exchange {request_id!r} of this pipeline run")
        if req.state == PENDING and not is_stale(req, now):
            policy = self.policies.scope(req.target, req.scope)
            return Exchanged(request=req, needs=max(1, approvals_needed(policy)) if policy else 1)
        grant = await self.store.get_grant(req.grant_id) if req.state == APPROVED and req.grant_id else None
        if grant is None:
            state = "expired" if is_stale(req, now) else req.state
            raise WorkloadRefused("not-approved", f"request {req.id} was {state}: {req.comment or 'no comment'}")
        if not grant.live(now):
            raise WorkloadRefused("grant-ended", f"grant {grant.id} is {grant.state}; exchange a new token")
        token = self.ring.issue(claims_of(grant, self.config))
        await self.store.append(
            "grant.token_fetched", actor=ident.subject, grant=grant.id, target=grant.target, data={"via": "exchange"}
        )
        return Exchanged(grant=grant, token=token, request=req)

    async def _refused(
        self,
        refused: WorkloadRefused,
        ident: WorkloadIdentity | None,
        token: str,
        target: str,
        scope: str,
        client: str,
        now: float,
    ) -> None:
        who = ident.subject if ident is not None else "unknown"
        data: dict[str, Any] = {"code": refused.code, "reason": refused.reason, "scope": scope, "client": client}
        if ident is not None:
            data["workload"] = ident.kept()
        else:
            data["issuer"] = _printable(unverified_issuer(token))[:200]
        await self.store.append("workload.refused", actor=who, target=target, severity="warning", data=data)
        # Repeated refusals: a misconfigured pipeline, or someone trying stolen or forged tokens.
        key = who if ident is not None else f"client {client}"
        times = self._refusals.setdefault(key, collections.deque())
        times.append(now)
        while times and times[0] < now - REFUSAL_WINDOW:
            times.popleft()
        if len(times) == REFUSAL_ALERT_AT:
            await self.alerts.emit(
                "workload.refusals",
                f"{len(times)} workload token exchanges by {key} refused in {format_duration(REFUSAL_WINDOW)} "
                f"(last: {refused.reason})",
                severity="critical",
                actor=who,
                target=target,
                data=data,
            )
        if len(self._refusals) > 10000:  # bounded memory under a flood of distinct clients
            self._refusals.clear()
