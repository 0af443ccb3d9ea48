"""The relay: two asyncio.Protocols around one state machine; inspects Q/P/B/E/F, forwards the rest as slices."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway.pg import encodings
from gateway.pg.codec import DEFAULT_FRONTEND_CAP, FRONTEND_CAPS, Framer, ProtocolError
from gateway.pg.fastdecode import decode_bind, decode_execute
from gateway.pg.journal import SUSPENDED, Journal, describe_params
from gateway.pg.messages import (
    SYNC,
    TERMINATE,
    Close,
    ErrorResponse,
    ParameterStatus,
    error_response,
    notice_response,
    ready_for_query,
)
from gateway.pg.sqlinspect import Inspection, Inspector, Statement, decide_function_call, statement_name
from gateway.pg.tripwire import Tripwires
from gateway.pg.upstream import Upstream, send_cancel
from gateway.policy import Decision, Verdict
from gateway.sessions import LiveSession

log = logging.getLogger(__name__)

# What waits for a ReadyForQuery from the upstream, in order (see _on_ready_for_query).
UPSTREAM = 0  # an upstream Z: forward it
SWALLOW = 1  # a Z answering a Sync the gateway injected after a denial mid-batch: replace it with the error
SYNTHETIC = 2  # bytes the gateway answers itself, sent once everything before them has been answered
SYNTHETIC_RFQ = 3  # the same, followed by a ReadyForQuery carrying the upstream's current status

_Q, _P, _B, _E, _C, _S, _X, _F = (ord(c) for c in "QPBECSXF")
_PASSTHROUGH = frozenset(ord(c) for c in "DHdcf")  # Describe, Flush, CopyData, CopyDone, CopyFail
_EMPTY_DECISION = Decision(Verdict.ALLOW)
_ALLOW = Verdict.ALLOW


_NO_PORTAL: tuple[str, None, None] = ("", None, None)
_PREPARE_COMMANDS = frozenset({"PREPARE", "DEALLOCATE"})
_WATCHED = frozenset(b"CEISZs")  # the upstream messages from_server looks at; the rest go by untouched


def _kind(st: Statement | None) -> str:
    """What the recording calls a statement: its command, lowercased ('select', 'update', 'set')."""
    return st.command.lower() if st is not None else "empty"


def denial_message(d: Decision) -> str:
    """The text of the 42501 error a denied statement gets."""
    return f"blocked by gateway policy: {d.rule}: {d.reason}"


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
    """One session's byte relay with enforcement. Deliberately single-use: shutdown() ends both sides for good."""

    def __init__(self, session: LiveSession, client: asyncio.Transport, upstream: Upstream, inspector: Inspector,
                 journal: Journal) -> None:  # fmt: skip
        self.session = session
        self.client = client
        assert upstream.pipe.transport is not None
        self.server: asyncio.Transport = upstream.pipe.transport
        self.upstream_key = upstream.key
        self.inspector = inspector
        self.journal = journal
        sql = session.policy.sql
        # What the policy says, never the scope's name: a scope called "admin" may well be mode write.
        self.admin = sql is not None and sql.mode == "admin"
        self._function_call = decide_function_call(sql)
        # As the listener decides (no sql policy: read mode), which pins default_transaction_read_only upstream.
        self.read_only = sql is None or sql.mode == "read"
        self.status = upstream.status
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.bytes_in = 0
        self.bytes_out = 0
        self._cf = Framer(FRONTEND_CAPS, DEFAULT_FRONTEND_CAP, "message")
        self._sf = Framer(name="upstream message")
        self._tickets: deque[tuple[int, bytes]] = deque()
        self._special = 0  # tickets that are not plain UPSTREAM (the server side's fast path checks this)
        self._z_sent = 0  # ReadyForQuery-producing messages sent upstream
        self._z_seen = 0
        self._discarding = False  # after a denial in an extended batch, until the client's Sync
        self._batch_forwarded = False  # extended messages of the current batch reached the upstream
        self._server_erred = False
        self._inject: list[bytes] = []
        self._closing = False
        # Set by a kill verdict (client side) or a tripwire (both sides): from then on nothing more is
        # forwarded that way, even what is already buffered in the same read. One attribute each, checked
        # where _closing was checked, so the common path does no more work than before.
        self._stop_client = False
        self._stop_server = False
        self._client_gone = False
        self._alerted: set[str] = set()
        # Per-session statement state: the inspector resolves EXECUTE / protocol statements through `prepared`.
        self.prepared: dict[str, Inspection] = {}
        self._statements: dict[str, tuple[str, Inspection, Decision]] = {}
        self._denied: dict[str, Decision] = {}
        self._portals: dict[str, tuple[str, list[str] | None, list[dict[str, Any]] | None]] = {}
        self._tripwires = Tripwires(upstream.parameters, read_only=self.read_only, admin=self.admin)
        # Statement text is decoded in the session's client encoding (pg/encodings), as the server reports it.
        encoding = next((p.value for p in upstream.parameters if p.name == "client_encoding"), "UTF8")
        self._decode_query = encodings.query_decoder(encoding)
        self._decode_parse = encodings.parse_decoder(encoding)
        self._handlers: dict[int, Callable[[bytes, int, int], bool]] = {
            _Q: self._on_query, _P: self._on_parse, _B: self._on_bind, _E: self._on_execute, _C: self._on_close,
            _S: self._on_sync, _X: self._on_terminate, _F: self._on_function_call,
        }  # fmt: skip

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
        return self._z_seen < self._z_sent or self._batch_forwarded

    # --- client -> upstream ----------------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        """Bytes from the client: frame, inspect what carries SQL, forward the rest untouched."""
        if self._stop_client:
            return
        self.bytes_in += len(data)
        try:
            chunk, frames = self._cf.feed(data)
            if not frames:
                return
            pieces: list[bytes] = []
            fwd_from = 0
            handlers = self._handlers
            for tag, start, end in frames:
                if self._discarding:
                    keep = self._discard(tag)
                elif tag in _PASSTHROUGH:
                    keep = True
                    if tag == 68:  # Describe is part of the batch
                        self._batch_forwarded = True
                else:
                    handler = handlers.get(tag)
                    if handler is None:
                        raise ProtocolError(f"invalid frontend message type {tag}")
                    keep = handler(chunk, start, end)
                if not keep:
                    if fwd_from < start:
                        pieces.append(chunk[fwd_from:start])
                    fwd_from = end
                    if self._inject:
                        pieces.extend(self._inject)
                        self._inject.clear()
                if self._stop_client:
                    # A kill verdict: what came before the killing message goes (it was decided and is
                    # owed its answers); nothing from it on, not even the rest of this read.
                    if pieces:
                        self.server.write(b"".join(pieces))
                    return
            if fwd_from == 0:
                self.server.write(chunk)
            else:
                if fwd_from < len(chunk):
                    pieces.append(chunk[fwd_from:])
                if pieces:
                    self.server.write(b"".join(pieces))
        except ProtocolError as exc:
            self._fatal(exc)

    def _check(self, sql: str) -> tuple[Inspection, Decision]:
        insp, decision = self.inspector.check(sql, self.prepared)
        if decision.verdict is _ALLOW and not decision.alerts:
            return insp, decision
        if decision.alerts:
            self._raise_alerts(insp, decision)
        if decision.verdict is Verdict.KILL:
            self._stop_client = True
            self._kill_soon(f"{denial_message(decision)}")
        return insp, decision

    def _on_query(self, chunk: bytes, start: int, end: int) -> bool:
        sql = self._decode_query(chunk, start, end)
        insp, decision = self._check(sql)
        if not decision.allowed:
            self._refuse(sql, None, insp, decision)
            self._synthetic(error_response("ERROR", "42501", denial_message(decision)), rfq=True)
            return False
        stmts = insp.statements
        if len(stmts) == 1:
            if stmts[0].command in _PREPARE_COMMANDS:
                self._remember_sql_prepares(insp)
        elif any(st.command in _PREPARE_COMMANDS for st in stmts):
            self._remember_sql_prepares(insp)
        batch = self._z_sent + 1
        if len(stmts) <= 1:
            st = stmts[0] if stmts else None
            self.journal.started(sql, None, insp.fingerprint, _kind(st), st.tables if st else (), decision, batch,
                                 self.status)  # fmt: skip
        else:
            for st in stmts:
                self.journal.started(st.text, None, insp.fingerprint, _kind(st), st.tables, decision, batch,
                                     self.status)  # fmt: skip
        self._expect_ready()
        return True

    def _on_parse(self, chunk: bytes, start: int, end: int) -> bool:
        msg = self._decode_parse(chunk[start + 5 : end])
        insp, decision = self._check(msg.sql)
        if not decision.allowed:
            self._refuse(msg.sql, None, insp, decision)
            self._denied[msg.name] = decision
            self._deny_in_batch(decision)
            return False
        self._denied.pop(msg.name, None)
        self._statements[msg.name] = (msg.sql, insp, decision)
        if msg.name:
            self.prepared[msg.name] = insp
        self._batch_forwarded = True
        return True

    def _on_bind(self, chunk: bytes, start: int, end: int) -> bool:
        portal, statement, formats, params = decode_bind(chunk[start + 5 : end])
        denied = self._denied.get(statement)
        if denied is not None:
            # The statement never reached the upstream; a Bind to it must not reach an older one of that name.
            self._deny_in_batch(denied)
            return False
        if params:
            shown, long = describe_params(params, formats, self.journal.attach)
            self._portals[portal] = (statement, shown, long)
        else:
            self._portals[portal] = (statement, None, None)
        self._batch_forwarded = True
        return True

    def _on_execute(self, chunk: bytes, start: int, end: int) -> bool:
        portal, max_rows = decode_execute(chunk[start + 5 : end])
        stmt_name, params, long = self._portals.get(portal, _NO_PORTAL)
        known = self._statements.get(stmt_name)
        if known is None:
            self.journal.started(f"<portal {portal!r}>", params, "", "unknown", (), _EMPTY_DECISION,
                                 self._z_sent + 1, self.status, 0, long)  # fmt: skip
        else:
            sql, insp, decision = known
            st = insp.statements[0] if insp.statements else None
            self.journal.started(sql, params, insp.fingerprint, _kind(st), st.tables if st else (), decision,
                                 self._z_sent + 1, self.status, max_rows, long)  # fmt: skip
        self._batch_forwarded = True
        return True

    def _on_close(self, chunk: bytes, start: int, end: int) -> bool:
        msg = Close.decode(chunk[start + 5 : end])
        if msg.kind == "S":
            self._statements.pop(msg.name, None)
            self.prepared.pop(msg.name, None)
            self._denied.pop(msg.name, None)
        else:
            self._portals.pop(msg.name, None)
        self._batch_forwarded = True
        return True

    def _on_sync(self, chunk: bytes, start: int, end: int) -> bool:
        self._batch_forwarded = False
        self._expect_ready()
        return True

    def _on_terminate(self, chunk: bytes, start: int, end: int) -> bool:
        self._client_gone = True
        return True

    def _on_function_call(self, chunk: bytes, start: int, end: int) -> bool:
        d = self._function_call
        if not d.allowed:
            self._refuse("<FunctionCall>", None, None, d)
            self._synthetic(error_response("ERROR", "42501", denial_message(d)), rfq=True)
            return False
        self.journal.started("<FunctionCall>", None, "", "function_call", (), _EMPTY_DECISION, self._z_sent + 1,
                             self.status)  # fmt: skip
        self._expect_ready()
        return True

    def _discard(self, tag: int) -> bool:
        """After an error in an extended batch the server ignores everything until Sync; so do we."""
        if tag == _S:
            self._discarding = False
            self._synthetic(b"", rfq=True)
        elif tag == _X:
            self._client_gone = True
            return True
        return False

    def _deny_in_batch(self, decision: Decision) -> None:
        err = error_response("ERROR", "42501", denial_message(decision))
        if self._batch_forwarded:
            # Earlier messages of this batch are upstream: close their batch with a Sync of our own so their
            # replies come back now, and put our error where that Sync's ReadyForQuery would have been.
            self._inject.append(SYNC)
            self._z_sent += 1
            self._tickets.append((SWALLOW, err))
            self._special += 1
            self._batch_forwarded = False
        else:
            self._synthetic(err, rfq=False)
        self._discarding = True

    def _refuse(self, sql: str, params: list[str] | None, insp: Inspection | None, d: Decision) -> None:
        st = insp.statements[0] if insp is not None and insp.statements else None
        self.journal.refused(sql, params, insp.fingerprint if insp else "", _kind(st) if insp else "unknown",
                             st.tables if st else (), d, self.status)  # fmt: skip
        self.session.audit_soon("statement.denied", severity="warning", sql=sql[:2000], rule=d.rule, reason=d.reason)

    def _remember_sql_prepares(self, insp: Inspection) -> None:
        """SQL-level PREPARE name AS ...: EXECUTE name is then checked against what was prepared."""
        for st in insp.statements:
            if st.command == "DEALLOCATE":
                name = statement_name(st)
                if name is not None:
                    self.prepared.pop(name, None)
        self.prepared.update(insp.prepares)

    def _expect_ready(self) -> None:
        self._z_sent += 1
        self._tickets.append((UPSTREAM, b""))

    def _synthetic(self, payload: bytes, *, rfq: bool) -> None:
        """Answer the client ourselves, after every reply still owed by the upstream."""
        if not self._tickets:
            self._write_client(payload + ready_for_query(self.status) if rfq else payload)
        else:
            self._tickets.append((SYNTHETIC_RFQ if rfq else SYNTHETIC, payload))
            self._special += 1

    def _raise_alerts(self, insp: Inspection, d: Decision) -> None:
        for a in d.alerts:
            key = f"{a}|{insp.fingerprint}"
            if key not in self._alerted:  # once per detection and statement shape, not per execution
                self._alerted.add(key)
                self.session.alert("sql.detection", a, fingerprint=insp.fingerprint)

    # --- upstream -> client ------------------------------------------------------------------------------

    def from_server(self, data: bytes) -> None:
        """Bytes from the upstream: forward whole messages; look only at C, E, I, s, S and Z."""
        if self._stop_server:
            return
        self.bytes_out += len(data)
        try:
            chunk, frames = self._sf.feed(data)
        except ProtocolError as exc:
            self._fatal(exc, upstream=True)
            return
        if not frames:
            return
        pieces: list[bytes] | None = None
        fwd_from = 0
        journal = self.journal
        for tag, start, end in frames:
            if tag not in _WATCHED:  # DataRow, RowDescription, BindComplete...: forwarded as they are
                continue
            if tag == 90:  # Z ReadyForQuery
                cut = self._on_ready_for_query(chr(chunk[start + 5]))
                if cut is not None:
                    if pieces is None:
                        pieces = []
                    swallow, extra = cut
                    pieces.append(chunk[fwd_from : start if swallow else end])
                    pieces.extend(extra)
                    fwd_from = end
            elif tag == 67:  # C CommandComplete: 'SELECT 1', 'INSERT 0 5'; the last word is the row count
                cc = chunk[start + 5 : end - 1]
                last = cc[cc.rfind(b" ") + 1 :]
                journal.completed(int(last) if last.isdigit() else None, cc.decode("utf-8", "replace"))
            elif tag == 69:  # E ErrorResponse
                err = ErrorResponse.decode(chunk[start + 5 : end])
                self._server_erred = True
                journal.failed(err.sqlstate, err.message, self._z_seen + 1)
            elif tag == 73:  # I EmptyQueryResponse
                journal.completed(None, "")
            elif tag == 115:  # s PortalSuspended
                journal.completed(None, SUSPENDED)
            elif tag == 83:  # S ParameterStatus
                if self._on_parameter_status(ParameterStatus.decode(chunk[start + 5 : end])):
                    # The wall was breached: nothing from this message on reaches the client.
                    head = chunk[fwd_from:start]
                    if pieces:
                        head = b"".join(pieces) + head
                    if head:
                        self.client.write(head)
                    return
        if pieces is None:
            self.client.write(chunk)
        else:
            if fwd_from < len(chunk):
                pieces.append(chunk[fwd_from:])
            self.client.write(b"".join(pieces))

    def _on_ready_for_query(self, status: str) -> tuple[bool, list[bytes]] | None:
        """Pair the Z with its ticket; returns (swallow this Z, bytes to send after) when not a plain forward."""
        before, self.status = self.status, status
        self._z_seen += 1
        self.journal.batch_end(self._z_seen, before, status)
        erred, self._server_erred = self._server_erred, False
        if not self._special:
            if self._tickets:
                self._tickets.popleft()
            return None
        kind, payload = self._tickets.popleft() if self._tickets else (UPSTREAM, b"")
        extra: list[bytes] = []
        swallow = kind == SWALLOW
        if swallow:
            self._special -= 1
            if not erred:  # the upstream already reported an error for this batch: one is enough
                extra.append(payload)
        while self._tickets and self._tickets[0][0] >= SYNTHETIC:
            k, p = self._tickets.popleft()
            self._special -= 1
            extra.append(p + ready_for_query(status) if k == SYNTHETIC_RFQ else p)
        return swallow, extra

    def _on_parameter_status(self, ps: ParameterStatus) -> bool:
        """Watch what the server reports; True when a tripwire fired and the session is being killed."""
        breach = self._tripwires.check(ps.name, ps.value)
        if breach is not None:
            self._trip(ps, breach)
            return True
        if ps.name == "client_encoding":
            why = encodings.refusal(ps.value)
            if why is not None:
                # SJIS, GBK, BIG5... can hide a quote inside a character: the parser would be fooled.
                self._kill_soon(f"client_encoding changed to {ps.value}: {why}")
            else:
                # Until this report, later messages of the same batch were read in the old encoding: both are
                # ASCII-safe, so the statements and ASCII names were the same (pg/encodings); only a non-ASCII
                # name could read differently, or fail to decode (a protocol error: the session ends).
                self._decode_query = encodings.query_decoder(ps.value)
                self._decode_parse = encodings.parse_decoder(ps.value)
        elif ps.name == "standard_conforming_strings" and ps.value != "on":
            # With it off, a backslash escapes a quote in '...': the server and the parser would split strings apart.
            self._kill_soon("standard_conforming_strings turned off: not allowed through the gateway")
        return False

    def _trip(self, ps: ParameterStatus, breach: str) -> None:
        """A wall was breached upstream: stop both directions now, raise a critical alert, kill the session."""
        self._stop_client = self._stop_server = True
        s = self.session
        detail = {"parameter": ps.name, "value": ps.value[:200], "login": s.login.user, "scope": s.scope}
        self.journal.recorder.record({"type": "tripwire", "reason": breach, **detail})
        s.audit_soon("session.tripwire", severity="critical", reason=breach, **detail)
        s.alert("sql.tripwire", f"session {s.id} of {s.user} on {s.target.name}: {breach}", severity="critical",
                reason=breach, **detail)  # fmt: skip
        self._kill_soon(f"tripwire: {breach}")

    # --- ending ------------------------------------------------------------------------------------------

    def _write_client(self, data: bytes) -> None:
        if not self.client.is_closing():
            self.client.write(data)

    def warn(self, message: str) -> None:
        """A NoticeResponse (allowed between any two messages, even during COPY)."""
        self._write_client(notice_response(message))

    def _kill_soon(self, reason: str) -> None:
        self.session._spawn(self.session.kill(reason))

    def _fatal(self, exc: ProtocolError, *, upstream: bool = False) -> None:
        if upstream:
            self._write_client(error_response("FATAL", "08P01", "the upstream server broke the protocol"))
        else:
            self._write_client(error_response("FATAL", exc.sqlstate, str(exc)))
        self.session._spawn(self.shutdown(f"protocol error from {'upstream' if upstream else 'client'}: {exc}"))

    async def kill(self, reason: str) -> None:
        """The session's kill handle: FATAL 57P01 to the client, cancel and terminate the backend, close both."""
        self._write_client(error_response("FATAL", "57P01", f"terminating connection: {reason}"))
        self.journal.recorder.record({"type": "kill", "reason": reason})
        await self.shutdown(reason)
        # Return only once the handler has closed the session with the recording's hash: the caller
        # (LiveSession.kill) would otherwise close it first, without the hash. A kill running as one of the
        # session's own tasks waits only for the start of that close, which itself waits for those tasks.
        own = asyncio.current_task() in self.session._tasks
        try:
            await asyncio.wait_for(asyncio.shield(self._finished if own else self._closed), 10.0)
        except TimeoutError:
            log.warning("session %s: handler did not finish after kill", self.session.id)

    def finished(self) -> None:
        """The handler is about to close the session (called synchronously before session.close())."""
        if not self._finished.done():
            self._finished.set_result(None)

    def closed(self) -> None:
        """The handler has closed the session."""
        if not self._closed.done():
            self._closed.set_result(None)

    def client_lost(self) -> None:
        """The client's connection closed (Terminate, or gone)."""
        if not self._closing:
            reason = "client disconnected" if self._client_gone else "client connection lost"
            self.session._spawn(self.shutdown(reason))

    def server_lost(self) -> None:
        """The upstream's connection closed."""
        if not self._closing:
            if not self._client_gone:
                self._write_client(error_response("FATAL", "08006", "the upstream server closed the connection"))
            # After a client's Terminate the upstream closes too; whichever close arrives first, the
            # session ended because the client left.
            self.session._spawn(
                self.shutdown("client disconnected" if self._client_gone else "upstream closed the connection")
            )

    async def shutdown(self, reason: str) -> None:
        """Close both sides once; a busy backend is cancelled first, since a closed socket does not stop a query."""
        if self._closing:
            await asyncio.shield(self.done)
            return
        self._closing = self._stop_client = self._stop_server = True
        self.client.close()
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
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}  # fmt: skip
