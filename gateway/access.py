"""The one door both front ends call: verify the token, load the grant, decide the scope, open the session block."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import Config, Login, Target
from gateway.policy import Policies, ScopePolicy
from gateway.sessions import LiveSession, SessionRegistry, new_session_record
from gateway.store import Store
from gateway.tokens import Claims, KeyRing, TokenError, unverified_claims, verify_token

log = logging.getLogger(__name__)

STORE_DOWN = "store-unavailable"
"""The code of a connection refused because the store did not answer (fail closed: no grant check, no session)."""

RECORDING_SUFFIX = {"postgres": ".sql.jsonl", "ssh": ".cast"}

Granted = Callable[[Target, Login, ScopePolicy], None]
"""Told the target, login and scope once the token and its grant check out, before the session is registered."""


class AccessDenied(Exception):
    """A connection was refused; `code` is stable, str() is safe to show the client (it never echoes the token)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Access:
    """Everything a front end needs to admit a connection."""

    config: Config
    ring: KeyRing
    store: Store
    policies: Policies
    registry: SessionRegistry
    clock: Callable[[], float] = time.time

    def session(
        self,
        *,
        token: str,
        target: str,
        protocol: str,
        client_addr: str,
        user: str | None = None,
        login: str | None = None,
        on_granted: Granted | None = None,
    ) -> Admission:
        """`async with access.session(...) as s:` admits a connection (or raises AccessDenied, audited either way).

        The task that enters the block owns the session: a kill, revocation or expiry cancels it, and
        leaving the block ends the session once (LiveSession.__aexit__). `user` is what the client claimed
        to be (Postgres `user`), checked against the token's subject; `login` is an explicit upstream login
        name (SSH `login@target`), checked against the grant's login. `on_granted` lets a front end start
        its upstream login while the session is registered (the store writes); the block is not entered
        when that registration fails, and the front end must then drop what it started.
        """
        return Admission(self, dict(token=token, target=target, protocol=protocol, client_addr=client_addr,
                                    user=user, login=login, on_granted=on_granted))  # fmt: skip

    async def _open(
        self,
        *,
        token: str,
        target: str,
        protocol: str,
        client_addr: str,
        user: str | None,
        login: str | None,
        on_granted: Granted | None,
    ) -> LiveSession:
        """Check the token and grant and register the session (not yet started)."""
        try:
            claims = self._verify(token)
            tgt = self._target(claims, target, protocol)
            if user is not None and user != claims.sub:
                raise AccessDenied("wrong-user", f"this token is for {claims.sub!r}, not {user!r}")
            await self._stored(self._check_grant(claims))
            upstream = self._login(tgt, claims, login)
            policy = self.policies.scope(tgt.name, claims.scope)
            if policy is None:
                raise AccessDenied("unknown-scope", f"scope {claims.scope!r} is not defined for {tgt.name}")
            if on_granted is not None:
                on_granted(tgt, upstream, policy)
            now = self.clock()
            sid = secrets.token_hex(8)
            session = LiveSession(
                id=sid,
                claims=claims,
                target=tgt,
                login=upstream,
                policy=policy,
                protocol=protocol,
                client_addr=client_addr,
                started_at=now,
                recording_path=self._recording_path(sid, protocol, now),
                store=self.store,
                registry=self.registry,
            )
            await self._stored(self._admit(session))
        except AccessDenied as denied:
            try:
                await self._audit_rejection(token, target, protocol, client_addr, denied)
            except Exception as exc:
                if denied.code != STORE_DOWN:
                    raise
                log.error("refused connection: audit not written now (the store is down): %s", type(exc).__name__)
            raise
        return session

    @staticmethod
    async def _stored(step: Coroutine[Any, Any, None]) -> None:
        """A step that needs the store: one that fails refuses the connection, saying why (never the store URL)."""
        try:
            await step
        except AccessDenied:
            raise
        except Exception as exc:
            log.error("store unavailable while admitting a connection: %s", type(exc).__name__)
            raise AccessDenied(
                STORE_DOWN, "the gateway cannot reach its store: new sessions are refused until it is back"
            ) from None

    @staticmethod
    async def _started(s: LiveSession) -> None:
        """Audit the start (and alert on a sensitive target), inside the session's block."""
        await s.audit(
            "session.start",
            protocol=s.protocol,
            client=s.client_addr,
            scope=s.scope,
            login=s.login.user,
            reason=s.claims.reason,
            approvers=list(s.claims.approvers),
            deadline=s.claims.exp,
            recording=str(s.recording_path),
        )
        if s.target.sensitive:
            s.alert("session.sensitive", f"{s.user} started a session on sensitive target {s.target.name}")

    def _verify(self, token: str) -> Claims:
        try:
            return verify_token(
                token,
                self.ring,
                issuer=self.config.issuer,
                audience=self.config.audience,
                leeway=self.config.leeway,
                now=self.clock(),
            )
        except TokenError as exc:
            raise AccessDenied(exc.code, exc.reason) from None

    def _target(self, claims: Claims, name: str, protocol: str) -> Target:
        tgt = self.config.targets.get(name)
        if tgt is None or tgt.kind != protocol:
            raise AccessDenied("unknown-target", f"no {protocol} target named {name!r}")
        if claims.target != name:
            raise AccessDenied("wrong-target", f"this token is for target {claims.target!r}, not {name!r}")
        return tgt

    async def _check_grant(self, claims: Claims) -> None:
        grant = await self.store.get_grant(claims.jti)
        if grant is None:
            raise AccessDenied("unknown-grant", "this token's grant is not known to the gateway")
        if grant.state == "revoked":
            raise AccessDenied("revoked", f"this grant was revoked: {grant.revoke_reason or 'no reason given'}")
        if grant.state != "active" or grant.expires_at <= self.clock():
            raise AccessDenied("expired", "this grant has expired")
        if (grant.user, grant.target, grant.scope) != (claims.sub, claims.target, claims.scope):
            # The token and the stored grant disagree: a forged or mixed-up token. Never trust the token alone.
            raise AccessDenied("grant-mismatch", "this token does not match its grant")

    def _login(self, tgt: Target, claims: Claims, login: str | None) -> Login:
        upstream = tgt.logins.get(claims.scope)
        if upstream is None:
            raise AccessDenied("no-login", f"target {tgt.name} has no login for scope {claims.scope!r}")
        if login is not None and login != upstream.user:
            raise AccessDenied("wrong-login", f"scope {claims.scope!r} logs in as {upstream.user!r}, not {login!r}")
        return upstream

    async def _admit(self, session: LiveSession) -> None:
        """Check the grant's session limit and register the session as one indivisible step.

        Checking first and inserting later let 8-12 concurrent connections all pass a limit of 1. Now the
        in-process guard holds one lock per grant around count-and-insert, and the store counts and inserts
        in one transaction, so other processes and replicas on the same store cannot slip in between either.
        """
        claims = session.claims
        limit = claims.max_sessions
        if limit is None:
            await self.store.add_session(new_session_record(session))
            self.registry.add(session)
            return
        full = AccessDenied(
            "max-sessions", f"this grant allows {limit} concurrent session(s) and that many are live; close one first"
        )
        async with self.registry.admitting(claims.jti):
            if self.registry.live_count(claims.jti) >= limit:
                raise full
            if not await self.store.admit_session(new_session_record(session), max_live=limit):
                raise full
            self.registry.add(session)

    def _recording_path(self, sid: str, protocol: str, now: float) -> Path:
        day = time.strftime("%Y/%m/%d", time.gmtime(now))
        return self.config.recordings_dir / day / f"{sid}{RECORDING_SUFFIX[protocol]}"

    async def _audit_rejection(self, token: str, target: str, protocol: str, client: str, denied: AccessDenied) -> None:
        # Who it claimed to be, from the unverified payload, helps an investigation; the token itself is never stored.
        hint = unverified_claims(token) if token else {}
        sub, jti = hint.get("sub"), hint.get("jti")
        await self.store.append(
            "token.rejected",
            actor=sub if isinstance(sub, str) else "unknown",
            grant=jti if isinstance(jti, str) else "",
            target=target,
            severity="warning",
            data={"code": denied.code, "reason": denied.reason, "protocol": protocol, "client": client},
        )


class Admission:
    """The async context manager `Access.session` returns: admission on entry, the session's end on exit."""

    def __init__(self, access: Access, request: dict[str, Any]) -> None:
        self._access = access
        self._request = request
        self._session: LiveSession | None = None

    async def __aenter__(self) -> LiveSession:
        s = await self._access._open(**self._request)
        self._session = await s.__aenter__()  # no await since registering: a kill always finds the block
        try:
            await self._access._started(s)
            if s.registry.detector is not None:  # its start judged (usual hours, bursts): a kill lands below
                s.registry.detector.watch(s)
            await asyncio.sleep(0)  # a kill during the start audit is delivered here, before the body runs
        except BaseException as exc:
            if not await s._exit(exc):
                raise
            raise AccessDenied("ended", f"the session ended as it started: {s.end_reason}") from None
        return s

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        assert self._session is not None
        return await self._session._exit(exc)
