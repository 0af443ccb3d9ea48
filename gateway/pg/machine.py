"""The session's sans-IO state machine: bytes in, (to_server, to_client, events) out; inspects Q/P/B/E/F.

The asyncio side (pg/relay.py) only moves bytes and carries the events out. What the machine needs of the
world is passed in: the inspector (a pure decision with its cache), the journal (the statement recording)
and `observe` (detection's per-statement hook). Anything else it wants done (kill the session, audit,
alert, end it on a protocol error) comes back as an event, in the order it was decided.
"""

from __future__ import annotations

import secrets
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.pg import encodings
from gateway.pg.codec import BACKEND_CAP, DEFAULT_FRONTEND_CAP, FRONTEND_CAPS, Framer, ProtocolError
from gateway.pg.fastdecode import WATCHED_TAGS, decode_bind, decode_execute, skip_unwatched
from gateway.pg.journal import SUSPENDED, Journal, describe_params
from gateway.pg.messages import Close, ErrorResponse, ParameterStatus, Query, error_response
from gateway.pg.sql.inspector import Inspection, Inspector, Statement, statement_name
from gateway.pg.sql.lex import IDENT, QIDENT, LexError, Token, tokenize
from gateway.pg.sql.settings import bound, lexing_calls
from gateway.pg.tripwire import Tripwires
from gateway.policy import Decision, Verdict

# A denied statement is not dropped: in its place the machine sends the upstream a message that fails at
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
_LEN = struct.Struct("!I")
_WATCHED = frozenset(WATCHED_TAGS)  # the upstream messages server_data looks at; the rest go by untouched
# Parameter types whose text value set_config() receives unchanged: unspecified (the server infers text), text,
# varchar. Not name (cut to 63 bytes) or char(n) (trailing spaces dropped): the value checked would not be the
# value set.
_TEXT_OIDS = frozenset({0, 25, 1043})


# --- events: what the machine asks the world to do ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kill:
    """Kill the session (a kill verdict, a tripwire, a refused encoding); forwarding has already stopped."""

    reason: str


@dataclass(frozen=True, slots=True)
class Audit:
    """Write an audit event."""

    type: str
    severity: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alert:
    """Raise an alert."""

    type: str
    summary: str
    severity: str = "warning"
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Observe:
    """Hand a statement to detection later than usual (after a Kill, so the kill is not queued behind it)."""

    inspection: Inspection
    decision: Decision


@dataclass(frozen=True, slots=True)
class Broken:
    """A side broke the protocol: the FATAL is in to_client, nothing more is forwarded; end the session."""

    reason: str


Event = Kill | Audit | Alert | Observe | Broken
Actions = tuple[bytes, bytes, Sequence[Event]]
"""(to_server, to_client, events): bytes to write each way (b"" for none), then what to do, in order."""

_NO_EVENTS: tuple[Event, ...] = ()


def _kind(st: Statement | None) -> str:
    """What the recording calls a statement: its command, lowercased ('select', 'update', 'set')."""
    return st.command.lower() if st is not None else "empty"


def denial_message(d: Decision) -> str:
    """The text of the 42501 error a denied statement gets."""
    return f"blocked by gateway policy: {d.rule}: {d.reason}"


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the machine knows of its session at the start: who it is, the scope's SQL mode, the upstream's login."""

    session_id: str
    user: str
    login: str
    scope: str
    target: str
    admin: bool
    read_only: bool
    function_call: Decision
    parameters: tuple[ParameterStatus, ...]
    status: str


class SessionMachine:
    """One session's protocol state: frames both directions, enforces the policy, keeps the journal."""

    def __init__(self, facts: SessionFacts, inspector: Inspector, journal: Journal,
                 observe: Callable[[Inspection, Decision], Decision]) -> None:  # fmt: skip
        self.facts = facts
        self.inspector = inspector
        self.journal = journal
        self._observe = observe
        self.admin = facts.admin
        self.read_only = facts.read_only
        self._function_call = facts.function_call
        self.status = facts.status
        self.bytes_in = 0
        self.bytes_out = 0
        self._cf = Framer(FRONTEND_CAPS, DEFAULT_FRONTEND_CAP, "message")
        self._held = b""  # upstream bytes held back: a header cut by the read, or a watched message not yet whole
        self._skip = 0  # bytes still to come of an unwatched upstream message, passed on as they arrive
        # Denials standing in for a server error still to come: (the batch's number, the 42501 to send).
        self._denials: deque[tuple[int, bytes]] = deque()
        self.marker = f"gateway_denied_{secrets.token_hex(8)}"  # never shown: its error is replaced
        marker = self.marker.encode() + b"\0"
        body = marker + marker + b"\0\0"
        self._marked_parse = _MARKED_PARSE + (len(body) + 4).to_bytes(4, "big") + body + _FLUSH
        self._marked_query = Query(self.marker).encode()
        self._z_sent = 0  # ReadyForQuery-producing messages sent upstream
        self._z_seen = 0
        self._discarding = False  # after a denial in an extended batch, until the client's Sync
        self._batch_forwarded = False  # extended messages of the current batch reached the upstream
        self._inject: list[bytes] = []
        self._events: list[Event] = []  # of the call in progress; handed out and replaced when not empty
        # Set by a kill verdict (client side) or a tripwire (both sides): from then on nothing more is
        # forwarded that way, even what is already buffered in the same read.
        self.stop_client = False
        self.stop_server = False
        self.client_gone = False  # the client sent Terminate
        self._alerted: set[str] = set()
        # Per-session statement state: the inspector resolves EXECUTE / protocol statements through `prepared`.
        self.prepared: dict[str, Inspection] = {}
        self._statements: dict[str, tuple[str, Inspection, Decision]] = {}
        self._denied: dict[str, Decision] = {}
        self._portals: dict[str, tuple[str, list[str] | None, list[dict[str, Any]] | None]] = {}
        # Statements whose set_config() takes a value from a parameter (Inspection.bind), decided at each Bind:
        # name -> (tokens, the Parse's parameter types).
        self._bound: dict[str, tuple[list[Token], tuple[int, ...]]] = {}
        self._tripwires = Tripwires(facts.parameters, read_only=self.read_only, admin=self.admin)
        # Statement text is decoded in the session's client encoding (pg/encodings), as the server reports it.
        encoding = next((p.value for p in facts.parameters if p.name == "client_encoding"), "UTF8")
        self._decode_query = encodings.query_decoder(encoding)
        self._decode_parse = encodings.parse_decoder(encoding)
        self._codec = encodings.codec(encoding) or "utf-8"  # of Bind values (text format)
        self._handlers: dict[int, Callable[[bytes, int, int], bool]] = {
            _Q: self._on_query, _P: self._on_parse, _B: self._on_bind, _E: self._on_execute, _C: self._on_close,
            _S: self._on_sync, _X: self._on_terminate, _F: self._on_function_call,
        }  # fmt: skip

    def busy(self) -> bool:
        """True while the upstream owes us a ReadyForQuery (a query may be running)."""
        return self._z_seen < self._z_sent or self._batch_forwarded

    def mid_message(self) -> bool:
        """True when part of an upstream message has been passed on and the rest not (a FATAL now would garble)."""
        return self._skip > 0

    def stop(self) -> None:
        """Forward nothing more either way (the session is ending)."""
        self.stop_client = self.stop_server = True

    def owed_denials(self) -> bytes:
        """The denials whose stand-in error the server has not answered yet (a killed session owes them)."""
        out = b"".join(d for _, d in self._denials)
        self._denials.clear()
        return out

    def _take_events(self) -> Sequence[Event]:
        events = self._events
        if not events:
            return _NO_EVENTS
        self._events = []
        return events

    # --- client -> upstream ----------------------------------------------------------------------------

    def client_data(self, data: bytes) -> Actions:
        """Bytes from the client: frame, inspect what carries SQL, pass the rest on untouched."""
        if self.stop_client:
            return b"", b"", _NO_EVENTS
        self.bytes_in += len(data)
        try:
            chunk, frames = self._cf.feed(data)
            if not frames:
                return b"", b"", _NO_EVENTS
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
                if self.stop_client:
                    # A kill verdict: what came before the killing message goes (it was decided and is
                    # owed its answers); nothing from it on, not even the rest of this read.
                    return b"".join(pieces), b"", self._take_events()
            if fwd_from == 0:
                return chunk, b"", self._take_events()
            if fwd_from < len(chunk):
                pieces.append(chunk[fwd_from:])
            return b"".join(pieces), b"", self._take_events()
        except ProtocolError as exc:
            return b"", self._broken(exc, upstream=False), self._take_events()

    def _check(self, sql: str) -> tuple[Inspection, Decision]:
        insp, decision = self.inspector.check(sql, self.prepared)
        if self._bound and decision.allowed and (name := _executes(sql, self._bound)) is not None:
            # EXECUTE passes its values as SQL, past the Bind check that statement relies on.
            decision = Decision.deny("encoding", f"EXECUTE {name}: its set_config() is checked only when bound"
                                     " through the extended protocol")  # fmt: skip
        if decision.verdict is not Verdict.KILL:
            # Detection sees every statement; a rule whose action is deny or kill replaces an allowing decision.
            decision = self._observe(insp, decision)
            if decision.verdict is _ALLOW and not decision.alerts:
                return insp, decision
            observed = True
        else:
            observed = False
        if decision.alerts:
            self._raise_alerts(insp, decision)
        if decision.verdict is Verdict.KILL:
            self.stop_client = True
            self._events.append(Kill(denial_message(decision)))
            if not observed:  # after the kill: its teardown is not queued behind baseline writes
                self._events.append(Observe(insp, decision))
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
        self._z_sent += 1
        return True

    def _on_parse(self, chunk: bytes, start: int, end: int) -> bool:
        msg = self._decode_parse(chunk[start + 5 : end])
        insp, decision = self._check(msg.sql)
        if not decision.allowed:
            self._refuse(msg.sql, None, insp, decision)
            self._denied[msg.name] = decision
            self._bound.pop(msg.name, None)
            self._deny_in_batch(decision)
            return False
        self._denied.pop(msg.name, None)
        self._statements[msg.name] = (msg.sql, insp, decision)
        if msg.name:
            self.prepared[msg.name] = insp
        if insp.bind:
            self._bound[msg.name] = (tokenize(msg.sql), msg.param_types)  # lexed before: it cannot fail
        elif self._bound:
            self._bound.pop(msg.name, None)
        self._batch_forwarded = True
        return True

    def _on_bind(self, chunk: bytes, start: int, end: int) -> bool:
        portal, statement, formats, params = decode_bind(chunk[start + 5 : end])
        denied = self._denied.get(statement)
        if denied is not None:
            # The statement never reached the upstream; a Bind to it must not reach an older one of that name.
            self._deny_in_batch(denied)
            return False
        checked = self._bound.get(statement) if self._bound else None
        if checked is not None and (why := self._bind_refusal(checked, formats, params)) is not None:
            d = Decision.deny("encoding", why)
            sql, insp, _ = self._statements[statement]
            self._refuse(sql, describe_params(params, formats)[0], insp, d)
            self._deny_in_batch(d)
            return False
        if params:
            shown, long = describe_params(params, formats, self.journal.attach)
            self._portals[portal] = (statement, shown, long)
        else:
            self._portals[portal] = (statement, None, None)
        self._batch_forwarded = True
        return True

    def _bind_refusal(self, checked: tuple[list[Token], tuple[int, ...]], formats: Sequence[int],
                      params: Sequence[bytes | None]) -> str | None:  # fmt: skip
        """The encoding wall with this Bind's values in place of their parameters; a value not known as text stays
        a parameter, and refused if set_config() takes it."""
        toks, types = checked
        values: dict[int, str | None] = {}
        nf = len(formats)
        for i, v in enumerate(params):
            if v is None:
                values[i + 1] = None
                continue
            fmt = formats[0] if nf == 1 else formats[i] if i < nf else 0
            if fmt != 0 or (types[i] if i < len(types) else 0) not in _TEXT_OIDS:
                continue
            try:
                values[i + 1] = v.decode(self._codec)
            except UnicodeDecodeError:
                continue
        return lexing_calls(bound(toks, values))

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
            self._bound.pop(msg.name, None)
        else:
            self._portals.pop(msg.name, None)
        self._batch_forwarded = True
        return True

    def _on_sync(self, chunk: bytes, start: int, end: int) -> bool:
        self._batch_forwarded = False
        self._z_sent += 1
        return True

    def _on_terminate(self, chunk: bytes, start: int, end: int) -> bool:
        self.client_gone = True
        return True

    def _on_function_call(self, chunk: bytes, start: int, end: int) -> bool:
        d = self._function_call
        if not d.allowed:
            self._refuse("<FunctionCall>", None, None, d)
            self._deny_query(d)
            return False
        self.journal.started("<FunctionCall>", None, "", "function_call", (), _EMPTY_DECISION, self._z_sent + 1,
                             self.status)  # fmt: skip
        self._z_sent += 1
        return True

    def _discard(self, tag: int) -> bool:
        """After an error in an extended batch the server ignores everything until Sync; so do we.

        The server is failing too (see _deny_in_batch), so the client's Sync goes up and its Z comes back.
        """
        if tag == _S:
            self._discarding = False
            return self._on_sync(b"", 0, 0)
        if tag == _X:
            self.client_gone = True
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
        self._events.append(Audit("statement.denied", "warning", {"sql": sql[:2000], "rule": d.rule,
                                                                  "reason": d.reason}))  # fmt: skip

    def _remember_sql_prepares(self, insp: Inspection) -> None:
        """SQL-level PREPARE name AS ...: EXECUTE name is then checked against what was prepared."""
        for st in insp.statements:
            if st.command == "DEALLOCATE":
                name = statement_name(st)
                if name is not None:
                    self.prepared.pop(name, None)
        self.prepared.update(insp.prepares)

    def _raise_alerts(self, insp: Inspection, d: Decision) -> None:
        for a in d.alerts:
            key = f"{a}|{insp.fingerprint}"
            if key not in self._alerted:  # once per detection and statement shape, not per execution
                self._alerted.add(key)
                self._events.append(Alert("sql.detection", a, data={"fingerprint": insp.fingerprint}))

    # --- upstream -> client ------------------------------------------------------------------------------

    def server_data(self, data: bytes) -> Actions:
        """Bytes from the upstream: pass them on as they come; look only at C, E, I, s, S and Z.

        The scan walks message headers only. A message it does not watch (DataRow, CopyData, RowDescription...)
        is passed on as far as it has arrived, so a run of them goes out as the very bytes read, in one write,
        with nothing copied or allocated per message; only a watched message (small) or a header cut by the
        read is held back until whole.
        """
        if self.stop_server:
            return b"", b"", _NO_EVENTS
        self.bytes_out += len(data)
        if self._held:
            data = self._held + data
            self._held = b""
        n = len(data)
        pos = self._skip  # the rest of an unwatched message begun in an earlier read
        if pos:
            if pos >= n:
                self._skip = pos - n
                return b"", data, _NO_EVENTS
            self._skip = 0
        pieces: list[bytes] | None = None
        fwd_from = 0
        unpack = _LEN.unpack_from
        watched = _WATCHED
        while n - pos >= 5:
            tag = data[pos]
            if tag not in watched:
                pos = skip_unwatched(data, pos, BACKEND_CAP)  # the run of whole unwatched messages, by headers
                if n - pos < 5:
                    break
                tag = data[pos]
            length = unpack(data, pos + 1)[0]
            if length < 4 or length > BACKEND_CAP:
                return b"", self._broken(ProtocolError(f"invalid upstream message length {length}"), upstream=True), \
                    self._take_events()  # fmt: skip
            end = pos + 1 + length
            if tag not in watched:  # the walk stopped at it: only part of it is here; passed on as it comes
                self._skip = end - n
                pos = n
                break
            if end > n:
                break  # a watched message is read whole before any of it is passed on
            if tag == 90:  # Z ReadyForQuery; it and CommandComplete, once a statement, are handled without a call
                if length != 5:
                    return b"", self._broken(ProtocolError(f"invalid ReadyForQuery length {length}"), upstream=True), \
                        self._take_events()  # fmt: skip
                self._on_ready_for_query(chr(data[pos + 5]))
            elif tag == 67:  # C CommandComplete: 'SELECT 1', 'INSERT 0 5'; the last word is the row count
                cc = data[pos + 5 : end - 1]
                last = cc[cc.rfind(b" ") + 1 :]
                self.journal.completed(int(last) if last.isdigit() else None, cc.decode("utf-8", "replace"))
            elif self._watched(data, tag, pos, end):
                # The message replaced: the denial in place of its stand-in error.
                if pieces is None:
                    pieces = []
                pieces.append(data[fwd_from:pos])
                pieces.append(self._denials.popleft()[1])
                fwd_from = end
                pos = end
                continue
            if self.stop_server:
                # A tripwire: nothing from this message on reaches the client.
                head = data[fwd_from:pos]
                if pieces:
                    head = b"".join(pieces) + head
                return b"", head, self._take_events()
            pos = end
        if pos < n:
            self._held = data[pos:]
        if pieces is None:
            out = data if pos == n and fwd_from == 0 else data[fwd_from:pos]
        else:
            pieces.append(data[fwd_from:pos])
            out = b"".join(pieces)
        events = self._events
        return b"", out, self._take_events() if events else _NO_EVENTS

    def _watched(self, data: bytes, tag: int, start: int, end: int) -> bool:
        """A watched upstream message other than Z and C (server_data handles those); True when it is the
        stand-in error of a denial (the caller swaps it)."""
        if tag == 69:  # E ErrorResponse
            err = ErrorResponse.decode(data[start + 5 : end])
            if self._denials and self.marker in err.message:
                return True  # recorded as refused already: the client gets our denial instead
            self.journal.failed(err.sqlstate, err.message, self._z_seen + 1)
        elif tag == 73:  # I EmptyQueryResponse
            self.journal.completed(None, "")
        elif tag == 115:  # s PortalSuspended
            self.journal.completed(None, SUSPENDED)
        else:  # S ParameterStatus
            self._on_parameter_status(ParameterStatus.decode(data[start + 5 : end]))
        return False

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
                self._events.append(Kill(f"client_encoding changed to {ps.value}: {why}"))
            else:
                # Until this report, later messages of the same batch were read in the old encoding: both are
                # ASCII-safe, so the statements and ASCII names were the same (pg/encodings); only a non-ASCII
                # name could read differently, or fail to decode (a protocol error: the session ends).
                self._decode_query = encodings.query_decoder(ps.value)
                self._decode_parse = encodings.parse_decoder(ps.value)
                self._codec = encodings.codec(ps.value) or "utf-8"
        elif ps.name == "standard_conforming_strings" and ps.value != "on":
            # With it off, a backslash escapes a quote in '...': the server and the parser would split strings apart.
            self._events.append(Kill("standard_conforming_strings turned off: not allowed through the gateway"))
        return False

    def _trip(self, ps: ParameterStatus, breach: str) -> None:
        """A wall was breached upstream: stop both directions now, raise a critical alert, kill the session."""
        self.stop()
        f = self.facts
        detail = {"parameter": ps.name, "value": ps.value[:200], "login": f.login, "scope": f.scope}
        self.journal.tripwire(breach, **detail)
        self._events.append(Audit("session.tripwire", "critical", {"reason": breach, **detail}))
        self._events.append(Alert("sql.tripwire", f"session {f.session_id} of {f.user} on {f.target}: {breach}",
                                  "critical", {"reason": breach, **detail}))  # fmt: skip
        self._events.append(Kill(f"tripwire: {breach}"))

    def _broken(self, exc: ProtocolError, *, upstream: bool) -> bytes:
        """A protocol error: stop both ways; the FATAL for the client (returned) and a Broken event."""
        self.stop()
        self._events.append(Broken(f"protocol error from {'upstream' if upstream else 'client'}: {exc}"))
        if upstream:
            return error_response("FATAL", "08P01", "the upstream server broke the protocol")
        return error_response("FATAL", exc.sqlstate, str(exc))


def _executes(sql: str, names: Iterable[str]) -> str | None:
    """A name among `names` that `sql` runs by SQL: EXECUTE name, EXPLAIN ... EXECUTE name, CREATE TABLE AS EXECUTE."""
    if "execute" not in sql.lower():  # a keyword is never quoted or escaped
        return None
    try:
        toks = tokenize(sql)
    except LexError:
        return None  # the server runs none of it either
    wanted = set(names)
    for i in range(len(toks) - 1):
        if toks[i][0] == IDENT and toks[i][1] == "execute" and toks[i + 1][0] in (IDENT, QIDENT):
            if toks[i + 1][1] in wanted:
                return toks[i + 1][1]
    return None


def facts_of(session_id: str, user: str, login: str, scope: str, target: str, sql_mode: str | None,
             function_call: Decision, parameters: Iterable[ParameterStatus], status: str) -> SessionFacts:  # fmt: skip
    """The facts from the policy's SQL mode (None: no sql policy, read mode, as the listener decides)."""
    # What the policy says, never the scope's name: a scope called "admin" may well be mode write.
    return SessionFacts(session_id, user, login, scope, target, admin=sql_mode == "admin",
                        read_only=sql_mode is None or sql_mode == "read", function_call=function_call,
                        parameters=tuple(parameters), status=status)  # fmt: skip
