"""The relay: two asyncio.Protocols around one state machine; inspects Q/P/B/E/F, forwards the rest as slices."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway.detect.hooks import watch
from gateway.pg import encodings
from gateway.pg.codec import DEFAULT_FRONTEND_CAP, FRONTEND_CAPS, Framer, ProtocolError
from gateway.pg.fastdecode import decode_bind, decode_execute
from gateway.pg.journal import SUSPENDED, Journal, describe_params
from gateway.pg.messages import (
    TERMINATE,
    Close,
    ErrorResponse,
    ParameterStatus,
    Query,
    error_response,
    notice_response,
)
from gateway.pg.sql.inspector import Inspection, Inspector, Statement, decide_function_call, statement_name
from gateway.pg.tripwire import Tripwires
from gateway.pg.upstream import Upstream, send_cancel
from gateway.policy import Decision, Verdict
from gateway.sessions import LiveSession

log = logging.getLogger(__name__)

# A denied statement is not dropped: in its place the relay sends the upstream a message that fails at
# once (a syntax error naming a per-session secret marker, so nothing is parsed, planned or run), and puts
# its denial where the server's error comes back. The server thus fails at exactly the point of the denial
# and does what PostgreSQL does after any error there: it skips the rest of an extended batch up to the
# client's Sync, rolls back the implicit transaction of that batch (what was allowed before the denial
# included), and marks an explicit transaction block failed. A multi-statement Query is one implicit
# transaction: a denial anywhere in it refuses all of it, so none of it runs, as if its first
# statement had failed (decide() judges the whole text before anything is sent). One case is stricter
# than PostgreSQL: a Query holding its own COMMIT before the denial would have kept what that COMMIT
# committed; here none of it runs.
_MARKED_PARSE = b"P"  # Parse of a named statement, so the unnamed one survives, as it would the denied Parse
_FLUSH = b"H\x00\x00\x00\x04"

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
    """One session's byte relay with enforcement; the session's sides. Single-use: close() ends both for good."""

    def __init__(self, session: LiveSession, client: asyncio.Transport, upstream: Upstream, inspector: Inspector,
                 journal: Journal) -> None:  # fmt: skip
        self.session = session
        self.client = client
        assert upstream.pipe.transport is not None
        self.server: asyncio.Transport = upstream.pipe.transport
        self.upstream_key = upstream.key
        self.inspector = inspector
        self.journal = journal
        self._watch = journal.watch = watch(session)  # the journal reports large results and failures to it
        sql = session.policy.sql
        # What the policy says, never the scope's name: a scope called "admin" may well be mode write.
        self.admin = sql is not None and sql.mode == "admin"
        self._function_call = decide_function_call(sql)
        # As the listener decides (no sql policy: read mode), which pins default_transaction_read_only upstream.
        self.read_only = sql is None or sql.mode == "read"
        self.status = upstream.status
        # Resolved with the reason when a side leaves or breaks the protocol: the session's block returns then.
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.on_closed: Callable[[], None] | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self._cf = Framer(FRONTEND_CAPS, DEFAULT_FRONTEND_CAP, "message")
        self._sf = Framer(name="upstream message")
        # Denials standing in for a server error still to come: (the batch's number, the 42501 to send).
        self._denials: deque[tuple[int, bytes]] = deque()
        self._marker = f"gateway_denied_{secrets.token_hex(8)}"  # never shown: its error is replaced
        marker = self._marker.encode() + b"\0"
        body = marker + marker + b"\0\0"
        self._marked_parse = _MARKED_PARSE + (len(body) + 4).to_bytes(4, "big") + body + _FLUSH
        self._marked_query = Query(self._marker).encode()
        self._z_sent = 0  # ReadyForQuery-producing messages sent upstream
        self._z_seen = 0
        self._discarding = False  # after a denial in an extended batch, until the client's Sync
        self._batch_forwarded = False  # extended messages of the current batch reached the upstream
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
        decision = self._watch.sql(insp, decision)  # a detection whose action is deny or kill replaces an allow
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
            self._deny_query(decision)
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
            self._deny_query(d)
            return False
        self.journal.started("<FunctionCall>", None, "", "function_call", (), _EMPTY_DECISION, self._z_sent + 1,
                             self.status)  # fmt: skip
        self._expect_ready()
        return True

    def _discard(self, tag: int) -> bool:
        """After an error in an extended batch the server ignores everything until Sync; so do we.

        The server is failing too (see _deny_in_batch), so the client's Sync goes up and its Z comes back.
        """
        if tag == _S:
            self._discarding = False
            return self._on_sync(b"", 0, 0)
        if tag == _X:
            self._client_gone = True
            return True
        return False

    def _deny_in_batch(self, decision: Decision) -> None:
        """A denied Parse, or a Bind to a denied statement: the server fails in its place (see the top)."""
        self._inject.append(self._marked_parse)
        self._denials.append((self._z_sent + 1, error_response("ERROR", "42501", denial_message(decision))))
        self._batch_forwarded = True
        self._discarding = True

    def _deny_query(self, decision: Decision) -> None:
        """A denied Query or FunctionCall: a failing Query in its place, answered with E and Z by the server."""
        self._inject.append(self._marked_query)
        self._denials.append((self._z_sent + 1, error_response("ERROR", "42501", denial_message(decision))))
        self._z_sent += 1

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
                self._on_ready_for_query(chr(chunk[start + 5]))
            elif tag == 67:  # C CommandComplete: 'SELECT 1', 'INSERT 0 5'; the last word is the row count
                cc = chunk[start + 5 : end - 1]
                last = cc[cc.rfind(b" ") + 1 :]
                journal.completed(int(last) if last.isdigit() else None, cc.decode("utf-8", "replace"))
            elif tag == 69:  # E ErrorResponse
                err = ErrorResponse.decode(chunk[start + 5 : end])
                if self._denials and self._marker in err.message:
                    # The failure standing in for a denial (recorded as refused already): the client gets ours.
                    if pieces is None:
                        pieces = []
                    pieces.append(chunk[fwd_from:start])
                    pieces.append(self._denials.popleft()[1])
                    fwd_from = end
                else:
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

    def _on_ready_for_query(self, status: str) -> None:
        """A batch ended upstream: its status, and its denial if an earlier error in it made the server skip ours."""
        before, self.status = self.status, status
        self._z_seen += 1
        self.journal.batch_end(self._z_seen, before, status)
        denials = self._denials
        while denials and denials[0][0] <= self._z_seen:
            denials.popleft()  # the client saw the server's earlier error for that batch: one is enough

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
        self.journal.tripwire(breach, **detail)
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
        self.session.kill_soon(reason)

    def _fatal(self, exc: ProtocolError, *, upstream: bool = False) -> None:
        if upstream:
            self._write_client(error_response("FATAL", "08P01", "the upstream server broke the protocol"))
        else:
            self._write_client(error_response("FATAL", exc.sqlstate, str(exc)))
        self._stop_client = self._stop_server = True
        self._finish(f"protocol error from {'upstream' if upstream else 'client'}: {exc}")

    def client_lost(self) -> None:
        """The client's connection closed (Terminate, or gone)."""
        self._finish("client disconnected" if self._client_gone else "client connection lost")

    def server_lost(self) -> None:
        """The upstream's connection closed."""
        if not self._closing and not self.done.done():
            if not self._client_gone:
                self._write_client(error_response("FATAL", "08006", "the upstream server closed the connection"))
            # After a client's Terminate the upstream closes too; whichever close arrives first, the
            # session ended because the client left.
        self._finish("client disconnected" if self._client_gone else "upstream closed the connection")

    async def close(self, reason: str) -> None:
        """The session's end: FATAL 57P01 to a killed client; a busy backend is cancelled (a closed socket
        does not stop a query), then told to Terminate; both connections closed."""
        if self._closing:
            return
        self._closing = self._stop_client = self._stop_server = True
        if self.session.killed:
            # Nothing more from upstream reaches the client; a denial whose stand-in error the server has not
            # sent yet (a kill verdict's own 42501, racing the terminate) is owed to the client before the FATAL.
            while self._denials:
                self._write_client(self._denials.popleft()[1])
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
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}  # fmt: skip
