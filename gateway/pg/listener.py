"""The Postgres front end: accept, TLS, token as password, then the session block (upstream login, relay)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from dataclasses import dataclass
from typing import Any

from gateway.access import AccessDenied
from gateway.pg import encodings, workercancel
from gateway.pg.catalogload import Catalogs
from gateway.pg.codec import ProtocolError
from gateway.pg.journal import Journal
from gateway.pg.messages import (
    AUTHENTICATION_CLEARTEXT_PASSWORD,
    AUTHENTICATION_OK,
    SSL_ACCEPTED,
    SSL_REFUSED,
    BackendKeyData,
    error_response,
    negotiate_protocol_version,
    ready_for_query,
)
from gateway.pg.pipe import Pipe
from gateway.pg.relay import Relay
from gateway.pg.sql.catalog import Catalog
from gateway.pg.sql.inspector import Inspector
from gateway.pg.startup import Cancel, ClientStartup, NeedTLS, Password, RefuseGSSENC, Startup
from gateway.pg.tls import server_context
from gateway.pg.upstream import Upstream, UpstreamError, connect, send_cancel, startup_parameters
from gateway.policy import SqlPolicy
from gateway.recording import RecordingError, StatementRecorder
from gateway.services import Services
from gateway.sessions import LiveSession, SessionEnded

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Hello:
    """What the startup phase produced: the client's StartupMessage, its token, and any bytes that followed."""

    startup: Startup
    token: str
    leftover: bytes

    def __repr__(self) -> str:
        return f"Hello({self.startup.user}@{self.startup.database})"


class _Accepted(Pipe):
    """A fresh client connection: starts its handler."""

    def __init__(self, listener: PostgresListener) -> None:
        super().__init__()
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.listener._spawn(self.listener._handle(self))


class PostgresListener:
    """Listens on config.listen_postgres; every connection runs `_handle` top to bottom."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.config = services.config
        self._server: asyncio.Server | None = None
        self._inbox: asyncio.Server | None = None  # forwarded cancels, when one of several workers
        self._ssl: ssl.SSLContext | None = None
        self._keys: dict[tuple[int, int], Relay] = {}
        self._inspectors: dict[tuple[str, SqlPolicy], Inspector] = {}
        # Each target's catalogue, for what PostgreSQL resolves names to (attribute notation, user overloads).
        self.catalogs = Catalogs()
        self.catalogs.listeners.append(self._catalog_changed)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handshaking: set[asyncio.Task[Any]] = set()  # not yet admitted: close() drops these

    async def start(self) -> None:
        """Load (or make) the TLS certificate and start listening."""
        self._ssl = server_context(self.config.tls_cert, self.config.tls_key)
        addr = self.config.listen_postgres
        loop = asyncio.get_running_loop()
        # Workers of one gateway each listen on the same port; the kernel spreads connections over them.
        self._server = await loop.create_server(lambda: _Accepted(self), addr.host, addr.port,
                                                reuse_port=self.config.worker is not None)  # fmt: skip
        if (w := self.config.worker) is not None and w.count > 1:
            path = workercancel.inbox_path(w.run_dir, w.index)
            path.unlink(missing_ok=True)  # a previous process of this worker
            self._inbox = await loop.create_unix_server(
                lambda: workercancel.Inbox(lambda cancel: self._spawn(self._cancel(cancel))), str(path)
            )

    @property
    def port(self) -> int:
        """The port actually listened on (config port 0 picks a free one)."""
        assert self._server is not None and self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop accepting; connections still in their handshake are dropped (live sessions end in services.close())."""
        if self._server is not None:
            self._server.close()
        if self._inbox is not None:
            self._inbox.close()
        self.catalogs.close()
        for t in list(self._handshaking):
            t.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        self._handshaking.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._handshaking.discard)

    # --- one connection, top to bottom ------------------------------------------------------------

    async def _handle(self, pipe: _Accepted) -> None:
        """accept -> startup (TLS, token) -> session block (upstream login, relay) -> the block's exit ends it."""
        client_addr = _peer(pipe)
        try:
            async with asyncio.timeout(self.config.preauth_timeout):
                hello = await self._startup(pipe)
        except TimeoutError:
            self._refuse(pipe, "08P01", "timed out before authentication completed")
            return
        except ProtocolError as exc:
            self._refuse(pipe, exc.sqlstate, str(exc))
            return
        except (ConnectionError, ssl.SSLError, OSError):
            pipe.close()
            return
        except Exception:
            log.exception("postgres connection from %s failed", client_addr)
            self._refuse(pipe, "XX000", "internal gateway error")
            return
        if hello is None:
            return
        self._handshaking.discard(asyncio.current_task())  # from here on, only the session's end stops it
        try:
            async with self.services.access.session(
                token=hello.token, target=hello.startup.database, protocol="postgres", client_addr=client_addr,
                user=hello.startup.user,
            ) as session:  # fmt: skip
                session.attach(sides=_ClientOnly(pipe))
                await self._serve(pipe, hello, session)
        except AccessDenied as denied:
            self._refuse(pipe, "28P01", f"access denied: {denied.reason}")

    async def _startup(self, pipe: Pipe) -> Hello | None:
        """TLS negotiation, StartupMessage, cleartext password: the approval token. None after a CancelRequest."""
        machine = ClientStartup(require_tls=self.config.pg_require_tls)
        startup: Startup | None = None
        while True:
            for event in machine.receive_data(await pipe.read()):
                if isinstance(event, NeedTLS):
                    if pipe.buffered:
                        raise ProtocolError("unexpected data after SSLRequest")
                    assert self._ssl is not None
                    pipe.write(SSL_ACCEPTED)
                    await pipe.start_tls(self._ssl, server_side=True)
                    machine.tls_started()
                elif isinstance(event, RefuseGSSENC):
                    pipe.write(SSL_REFUSED)
                elif isinstance(event, Cancel):
                    # Never answer on a cancel connection: the reply would tell a prober whether a key exists.
                    pipe.close()
                    await self._cancel(event)
                    return None
                elif isinstance(event, Startup):
                    _check_client_encoding(event.parameters)
                    if event.minor > 0 or event.unsupported:
                        pipe.write(negotiate_protocol_version(0, list(event.unsupported)))
                    pipe.write(AUTHENTICATION_CLEARTEXT_PASSWORD)
                    startup = event
                elif isinstance(event, Password):
                    assert startup is not None
                    return Hello(startup, event.token, machine.rest())

    async def _serve(self, pipe: Pipe, hello: Hello, session: LiveSession) -> None:
        """Upstream login, recording, relay; returns when either side leaves (kills cancel it)."""
        sql_policy = session.policy.sql or SqlPolicy()
        # What the target resolves names to (loaded once per target, on a connection of its own; None: fail closed).
        catalog = await self.catalogs.get(session.target, session.login)
        upstream = await self._connect_upstream(pipe, hello, session, sql_policy)
        session.attach(sides=_ClientOnly(pipe, upstream))
        recorder = self._open_recording(pipe, session, hello)
        journal = Journal(recorder, max_rows=sql_policy.max_rows,
                          alert=lambda type_, summary, **data: session.alert(type_, summary, **data))  # fmt: skip
        session.attach(recording=_Recording(journal, recorder))
        assert pipe.transport is not None
        relay = Relay(session, pipe.transport, upstream, self._inspector(session, sql_policy, catalog), journal)
        key = self._new_key(relay)
        relay.on_closed = lambda: self._forget_key(key)
        session.attach(sides=relay, warn=relay.warn)
        pipe.write(AUTHENTICATION_OK + b"".join(p.encode() for p in upstream.parameters)
                   + BackendKeyData(*key).encode() + ready_for_query(upstream.status))  # fmt: skip
        relay.start(hello.leftover + pipe.take(), upstream.leftover)
        session.ending(await asyncio.shield(relay.done))

    async def _connect_upstream(self, pipe: Pipe, hello: Hello, session: LiveSession,
                                sql_policy: SqlPolicy) -> Upstream:  # fmt: skip
        app_name = f"gateway:{session.user}:{session.id}"
        params = startup_parameters(session.target, session.login, application_name=app_name,
                                    read_only=sql_policy.mode == "read", client=hello.startup.parameters)  # fmt: skip
        try:
            return await connect(session.target, session.login, params, connect_timeout=UPSTREAM_TIMEOUT)
        except UpstreamError as exc:
            log.warning("session %s: %s", session.id, exc)
            self._refuse(pipe, "08006", f"the gateway could not open the upstream connection to {session.target.name}")
            raise SessionEnded(f"upstream connection failed: {exc}") from None

    def _open_recording(self, pipe: Pipe, session: LiveSession, hello: Hello) -> StatementRecorder:
        header: dict[str, Any] = {
            "session": session.id, "user": session.user, "target": session.target.name, "scope": session.scope,
            "grant": session.claims.jti, "login": session.login.user, "database": session.target.database,
            "client": session.client_addr, "application_name": hello.startup.parameters.get("application_name", ""),
            "started_at": session.started_at, "protocol": "postgres",
        }  # fmt: skip
        if session.claims.workload is not None:
            header["workload"] = dict(session.claims.workload)  # the pipeline run and workflow

        def on_failure(why: str) -> None:
            session.kill_soon(f"recording failed: {why}")

        try:
            return StatementRecorder.open(session.recording_path, header=header, on_failure=on_failure,
                                          started_at=session.started_at)  # fmt: skip
        except RecordingError as exc:
            self._refuse(pipe, "58030", "the gateway cannot record this session, so it cannot be opened")
            raise SessionEnded(f"recording failed: {exc}") from None

    # --- helpers -----------------------------------------------------------------------------------

    def _inspector(self, session: LiveSession, policy: SqlPolicy, catalog: Catalog | None) -> Inspector:
        # One per target and policy, shared by its sessions, so the decision cache (by fingerprint) is shared too.
        target = session.target
        insp = self._inspectors.get((target.name, policy))
        if insp is None:
            insp = self._inspectors[(target.name, policy)] = Inspector(policy, catalog=catalog)
            insp.on_ddl = lambda: self.catalogs.ddl(target)
        insp.use(catalog)
        return insp

    def _catalog_changed(self, target: str, catalog: Catalog) -> None:
        # Live sessions judge by the new snapshot from their next statement on.
        for (name, _), insp in self._inspectors.items():
            if name == target:
                insp.use(catalog)

    def _new_key(self, relay: Relay) -> tuple[int, int]:
        # Our own random key: the upstream's pid and key never reach the client, so a cancel can only come
        # through us and only for this client's own backend.
        while True:
            key = (workercancel.new_process_id(self.config.worker), secrets.randbits(32) - 2**31)
            if key not in self._keys:
                self._keys[key] = relay
                return key

    def _forget_key(self, key: tuple[int, int]) -> None:
        self._keys.pop(key, None)

    async def _cancel(self, event: Cancel) -> None:
        relay = self._keys.get((event.process_id, event.secret_key))
        if relay is None and (index := workercancel.owner(self.config.worker, event.process_id)) is not None:
            assert self.config.worker is not None
            await workercancel.forward(self.config.worker, index, event)  # the key is another worker's
            return
        if relay is None or not relay.busy() or relay.upstream_key is None:
            return  # an unknown key cancels nothing
        await send_cancel(relay.session.target, relay.upstream_key)

    @staticmethod
    def _refuse(pipe: Pipe, sqlstate: str, message: str) -> None:
        if pipe.transport is not None and not pipe.transport.is_closing():
            pipe.write(error_response("FATAL", sqlstate, message))
        pipe.close()


def _check_client_encoding(params: dict[str, str]) -> None:
    for k, v in params.items():
        if k.lower() == "client_encoding" and (why := encodings.refusal(v)) is not None:
            # SJIS, GBK and the like let a quote hide inside a character and fool any parser (pg/encodings).
            raise ProtocolError(why, "22023")


def _peer(pipe: Pipe) -> str:
    peer = pipe.transport.get_extra_info("peername") if pipe.transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "unknown")


class _ClientOnly:
    """The sides before the relay exists: the client's connection and, once logged in, the upstream's."""

    def __init__(self, pipe: Pipe, upstream: Upstream | None = None) -> None:
        self.pipe = pipe
        self.upstream = upstream

    async def close(self, reason: str) -> None:
        """Tell the client why unless a refusal already closed it, then close what is open."""
        PostgresListener._refuse(self.pipe, "57P01", f"terminating connection: {reason}")
        if self.upstream is not None:
            self.upstream.pipe.close()


class _Recording:
    """A session's statement recording, sealed at its end (pending statements first)."""

    def __init__(self, journal: Journal, recorder: StatementRecorder) -> None:
        self.journal = journal
        self.recorder = recorder

    async def seal(self, reason: str) -> str | None:
        """Flush, write the end line, close; the recording's SHA-256."""
        self.journal.flush()
        self.recorder.end(reason)
        return await self.recorder.close()
