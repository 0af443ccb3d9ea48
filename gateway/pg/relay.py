"""The relay: two asyncio.Protocols around the session machine (pg/machine.py); it only moves bytes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from gateway.detect.hooks import watch
from gateway.pg.journal import Journal
from gateway.pg.machine import Alert, Audit, Broken, Event, Kill, Observe, SessionMachine, facts_of
from gateway.pg.messages import TERMINATE, error_response, notice_response
from gateway.pg.sql.inspector import Inspector, decide_function_call
from gateway.pg.upstream import Upstream, send_cancel
from gateway.sessions import LiveSession

log = logging.getLogger(__name__)


class _Side(asyncio.Protocol):
    """One connection of the relay; flow control is wired across: a slow reader pauses the other side."""

    def __init__(self, relay: Relay, client: bool) -> None:
        self.relay = relay
        # The transport looks data_received up on the instance: bind it straight to the relay (one call less).
        self.data_received = relay.from_client if client else relay.from_server  # type: ignore[method-assign]
        self._lost = relay.client_lost if client else relay.server_lost
        self._other: Callable[[], asyncio.Transport] = (lambda: relay.server) if client else (lambda: relay.client)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def pause_writing(self) -> None:
        self._other().pause_reading()

    def resume_writing(self) -> None:
        self._other().resume_reading()


class Relay:
    """One session's byte relay around its machine; the session's sides. Single-use: close() ends both for good."""

    def __init__(self, session: LiveSession, client: asyncio.Transport, upstream: Upstream, inspector: Inspector,
                 journal: Journal) -> None:  # fmt: skip
        self.session = session
        self.client = client
        assert upstream.pipe.transport is not None
        self.server: asyncio.Transport = upstream.pipe.transport
        self.upstream_key = upstream.key
        self.journal = journal
        journal.defer = True
        self._write_later = journal.write_later
        sql = session.policy.sql
        facts = facts_of(session.id, session.user, session.login.user, session.scope, session.target.name,
                         sql.mode if sql is not None else None, decide_function_call(sql), upstream.parameters,
                         upstream.status)  # fmt: skip
        w = journal.watch = watch(session)  # the journal reports large results and failures to it
        self._observe = w.sql
        self.machine = SessionMachine(facts, inspector, journal, self._observe)
        # Resolved with the reason when a side leaves or breaks the protocol: the session's block returns then.
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.on_closed: Callable[[], None] | None = None
        self._closing = False

    # --- wiring --------------------------------------------------------------------------------------

    def start(self, client_leftover: bytes, server_leftover: bytes) -> None:
        """Take both transports over; bytes already read during the handshakes are fed first."""
        self.client.set_protocol(_Side(self, True))
        self.server.set_protocol(_Side(self, False))
        if server_leftover:
            self.from_server(server_leftover)
        if client_leftover:
            self.from_client(client_leftover)

    def busy(self) -> bool:
        """True while the upstream owes us a ReadyForQuery (a query may be running)."""
        return self.machine.busy()

    def from_client(self, data: bytes) -> None:
        """Bytes from the client, through the machine."""
        to_server, to_client, events = self.machine.client_data(data)
        if to_server:
            self.server.write(to_server)
        if to_client:
            self._write_client(to_client)
        if events:
            self._carry_out(events)

    def from_server(self, data: bytes) -> None:
        """Bytes from the upstream, through the machine."""
        _, to_client, events = self.machine.server_data(data)
        if to_client:
            self._write_client(to_client)
        self._write_later()  # the statement lines of batches that ended, once the client has its answer
        if events:
            self._carry_out(events)

    def _carry_out(self, events: Sequence[Event]) -> None:
        s = self.session
        for e in events:
            if isinstance(e, Kill):
                s.kill_soon(e.reason)
            elif isinstance(e, Observe):
                self._observe(e.inspection, e.decision)
            elif isinstance(e, Audit):
                s.audit_soon(e.type, severity=e.severity, **e.data)
            elif isinstance(e, Alert):
                s.alert(e.type, e.summary, severity=e.severity, **e.data)
            elif isinstance(e, Broken):
                self._finish(e.reason)

    # --- ending ------------------------------------------------------------------------------------------

    def _write_client(self, data: bytes) -> None:
        if not self.client.is_closing():
            self.client.write(data)

    def warn(self, message: str) -> None:
        """A NoticeResponse (allowed between any two messages, even during COPY)."""
        self._write_client(notice_response(message))

    def client_lost(self) -> None:
        """The client's connection closed (Terminate, or gone)."""
        self._finish("client disconnected" if self.machine.client_gone else "client connection lost")

    def server_lost(self) -> None:
        """The upstream's connection closed."""
        if not self._closing and not self.done.done():
            if not self.machine.client_gone and not self.machine.mid_message():
                self._write_client(error_response("FATAL", "08006", "the upstream server closed the connection"))
            # After a client's Terminate the upstream closes too; whichever close arrives first, the
            # session ended because the client left.
        self._finish("client disconnected" if self.machine.client_gone else "upstream closed the connection")

    async def close(self, reason: str) -> None:
        """The session's end: FATAL 57P01 to a killed client; a busy backend is cancelled (a closed socket
        does not stop a query), then told to Terminate; both connections closed."""
        if self._closing:
            return
        self._closing = True
        self.machine.stop()
        if self.session.killed:
            # Nothing more from upstream reaches the client; a denial whose stand-in error the server has not
            # sent yet (a kill verdict's own 42501, racing the terminate) is owed to the client before the FATAL.
            owed = self.machine.owed_denials()
            if owed:
                self._write_client(owed)
            self._write_client(error_response("FATAL", "57P01", f"terminating connection: {reason}"))
            self.journal.killed(reason)
        self.session.stats.update(self.stats())
        self.client.close()
        if self.on_closed is not None:
            self.on_closed()
        try:
            if self.busy() and self.upstream_key is not None and not self.server.is_closing():
                await send_cancel(self.session.target, self.upstream_key)
        finally:
            if not self.server.is_closing():
                self.server.write(TERMINATE)
            self.server.close()
            self._finish(reason)

    def _finish(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)

    def stats(self) -> dict[str, Any]:
        """Counters for the session's end record."""
        j = self.journal
        return {"statements": j.statements, "denied": j.denied, "errors": j.errors, "rows": j.rows,
                "bytes_in": self.machine.bytes_in, "bytes_out": self.machine.bytes_out}  # fmt: skip
