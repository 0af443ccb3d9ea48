"""The session machine byte for byte, without sockets: what goes each way, what it asks for, what it records."""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.pg.journal import Journal
from gateway.pg.machine import Alert, Audit, Broken, Event, Kill, Observe, SessionMachine, facts_of
from gateway.pg.messages import ErrorResponse, ParameterStatus, Query, error_response
from gateway.pg.sql.inspector import Inspection, Inspector, decide_function_call
from gateway.policy import Decision, SqlPolicy, SqlRule, Verdict

FUZZ = settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
READ = SqlPolicy("read")
WRITE_KILLS_DDL = SqlPolicy("write", rules=(SqlRule("no-drop", Verdict.KILL, kinds=frozenset({"ddl"})),))
_INSPECTORS: dict[SqlPolicy, Inspector] = {}


def msg(tag: bytes, body: bytes = b"") -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def q(sql: str) -> bytes:
    return Query(sql).encode()


def parse(sql: str, name: str = "") -> bytes:
    return msg(b"P", cstr(name) + cstr(sql) + b"\0\0")


def bind(stmt: str = "", *params: bytes, portal: str = "") -> bytes:
    body = cstr(portal) + cstr(stmt) + b"\0\0" + struct.pack("!h", len(params))
    body += b"".join(struct.pack("!i", len(p)) + p for p in params)
    return msg(b"B", body + b"\0\0")


def execute(portal: str = "", rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + struct.pack("!i", rows))


SYNC, DESCRIBE, FLUSH = msg(b"S"), msg(b"D", b"P\0"), msg(b"H")


def row(*values: bytes) -> bytes:
    return msg(b"D", struct.pack("!h", len(values)) + b"".join(struct.pack("!i", len(v)) + v for v in values))


def complete(tag: str) -> bytes:
    return msg(b"C", cstr(tag))


def ready(status: str = "I") -> bytes:
    return msg(b"Z", status.encode())


def param(name: str, value: str) -> bytes:
    return ParameterStatus(name, value).encode()


def server_error(message: str, sqlstate: str = "42601") -> bytes:
    return error_response("ERROR", sqlstate, message)


class Lines:
    """A recorder that keeps the statement lines (times dropped: they are not the machine's to decide)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def record(self, event: dict[str, Any]) -> None:
        self.lines.append(event)

    def record_line(self, line: str) -> None:
        obj = json.loads(line)
        obj.pop("t", None)
        obj.pop("duration_ms", None)
        self.lines.append(obj)

    def elapsed(self) -> float:
        return 0.0


class Rig:
    """One machine with its recorder and what detection was handed."""

    def __init__(self, policy: SqlPolicy = READ) -> None:
        self.lines = Lines()
        self.observed: list[str] = []
        inspector = _INSPECTORS.get(policy)
        if inspector is None:
            inspector = _INSPECTORS[policy] = Inspector(policy)
        params = [
            ParameterStatus("client_encoding", "UTF8"),
            ParameterStatus("session_authorization", "app_ro"),
            ParameterStatus("is_superuser", "off"),
            ParameterStatus("standard_conforming_strings", "on"),
        ]
        facts = facts_of("s1", "alice", "app_ro", "read", "orders", policy.mode, decide_function_call(policy),
                         params, "I")  # fmt: skip
        journal = Journal(self.lines, max_rows=None, alert=lambda *a, **k: None)
        self.m = SessionMachine(facts, inspector, journal, self._observe)

    def _observe(self, insp: Inspection, decision: Decision) -> Decision:
        self.observed.append(insp.fingerprint)
        return decision

    def client(self, *data: bytes) -> tuple[bytes, bytes, list[Event]]:
        to_server, to_client, events = self.m.client_data(b"".join(data))
        return to_server, to_client, list(events)

    def server(self, *data: bytes) -> tuple[bytes, bytes, list[Event]]:
        to_server, to_client, events = self.m.server_data(b"".join(data))
        assert to_server == b""
        return to_server, to_client, list(events)

    def marked(self) -> bytes:
        """The stand-in error the upstream sends for a denial (a syntax error naming the marker)."""
        return server_error(f'syntax error at or near "{self.m.marker}"')


def denial_of(data: bytes) -> str:
    assert data[:1] == b"E"
    return ErrorResponse.decode(data[5:]).message


# --- byte-level behaviour -------------------------------------------------------------------------------


def test_an_allowed_prepared_round_trip_goes_through_untouched_and_is_recorded() -> None:
    r = Rig()
    batch = parse("SELECT abalance FROM pgbench_accounts WHERE aid = $1") + bind("", b"42") + DESCRIBE
    batch += execute() + SYNC
    assert r.client(batch) == (batch, b"", [])
    assert r.m.busy()
    reply = msg(b"1") + msg(b"2") + msg(b"T", b"\0\0") + row(b"7") + complete("SELECT 1") + ready()
    assert r.server(reply) == (b"", reply, [])
    assert not r.m.busy()
    [line] = r.lines.lines
    assert line["sql"] == "SELECT abalance FROM pgbench_accounts WHERE aid = $1" and line["params"] == ["42"]
    assert line["rows"] == 1 and line["verdict"] == "allow" and line["tx"] == "idle"
    assert len(r.observed) == 1


def test_a_denied_query_is_replaced_upstream_and_its_error_swapped_back() -> None:
    r = Rig()
    to_server, to_client, events = r.client(q("DELETE FROM orders"))
    assert b"DELETE" not in to_server and r.m.marker.encode() in to_server and to_client == b""
    assert [type(e) for e in events] == [Audit] and events[0].type == "statement.denied"  # type: ignore[union-attr]
    _, to_client, _ = r.server(r.marked(), ready())
    assert "blocked by gateway policy" in denial_of(to_client) and to_client.endswith(ready())
    assert r.m.marker not in to_client.decode("utf-8", "replace")
    [line] = r.lines.lines
    assert line["sql"] == "DELETE FROM orders" and line["sqlstate"] == "42501"


def test_a_denied_parse_fails_the_batch_upstream_and_the_rest_up_to_sync_is_dropped() -> None:
    r = Rig()
    allowed = parse("SELECT 1", "ok") + bind("ok") + execute()
    denied = parse("DELETE FROM orders", "bad") + bind("bad") + execute()
    to_server, _, events = r.client(allowed, denied, SYNC)
    assert to_server.startswith(allowed) and to_server.endswith(SYNC)
    assert b"DELETE" not in to_server and r.m.marker.encode() in to_server
    assert [type(e) for e in events] == [Audit]
    # a later Bind to the denied name never reaches an older statement of that name upstream
    to_server, _, _ = r.client(bind("bad"), execute(), SYNC)
    assert to_server.startswith(b"P") and r.m.marker.encode() in to_server and to_server.endswith(SYNC)


def test_a_kill_verdict_stops_forwarding_in_the_same_read() -> None:
    r = Rig(WRITE_KILLS_DDL)
    first = q("SELECT 1")
    to_server, _, events = r.client(first, q("DROP TABLE orders"), q("SELECT 2"))
    # the killing statement's stand-in goes (its 42501 is owed to the client), nothing after it
    assert to_server == first + Query(r.m.marker).encode()
    assert [type(e) for e in events] == [Kill, Observe, Audit]
    assert "no-drop" in events[0].reason  # type: ignore[union-attr]
    assert r.client(q("SELECT 3")) == (b"", b"", [])


def test_a_tripwire_stops_both_directions_at_the_reporting_message() -> None:
    r = Rig()
    r.client(q("SELECT gw_walls.open_the_wall()"))
    head = msg(b"T", b"\0\0") + row(b"off") + complete("SELECT 1")
    _, to_client, events = r.server(head, param("default_transaction_read_only", "off"), ready())
    assert to_client == head
    assert [type(e) for e in events] == [Audit, Alert, Kill]
    assert events[1].severity == "critical"  # type: ignore[union-attr]
    assert r.server(ready()) == (b"", b"", [])
    assert r.client(q("SELECT 1")) == (b"", b"", [])
    assert any(line.get("event") == "tripwire" or "tripwire" in json.dumps(line) for line in r.lines.lines)


def test_a_refused_encoding_or_standard_conforming_strings_off_kills() -> None:
    r = Rig()
    _, to_client, events = r.server(param("client_encoding", "SJIS"))
    assert [type(e) for e in events] == [Kill] and to_client == param("client_encoding", "SJIS")
    _, _, events = Rig().server(param("standard_conforming_strings", "off"))
    assert [type(e) for e in events] == [Kill]


def test_protocol_errors_end_the_session_with_a_fatal() -> None:
    r = Rig()
    to_server, to_client, events = r.client(msg(b"?"))
    assert to_server == b"" and to_client[:1] == b"E" and [type(e) for e in events] == [Broken]
    assert r.client(q("SELECT 1")) == (b"", b"", [])
    r = Rig()
    _, to_client, events = r.server(b"D\x00\x00\x00\x02")
    assert "upstream server broke the protocol" in denial_of(to_client) and [type(e) for e in events] == [Broken]
    for bad_ready in (b"Z\x00\x00\x00\x04", b"Z\x00\x00\x00\x06II"):  # ReadyForQuery carries one byte
        _, to_client, events = Rig().server(bad_ready + ready())
        assert "upstream server broke the protocol" in denial_of(to_client) and [type(e) for e in events] == [Broken]


def test_terminate_is_forwarded_and_remembered() -> None:
    r = Rig()
    assert r.client(msg(b"X")) == (msg(b"X"), b"", [])
    assert r.m.client_gone


def test_owed_denials_are_handed_out_once() -> None:
    r = Rig()
    r.client(q("DELETE FROM orders"))
    owed = r.m.owed_denials()
    assert "blocked by gateway policy" in denial_of(owed)
    assert r.m.owed_denials() == b""


# --- split invariance -----------------------------------------------------------------------------------

CLIENT_PIECES = [
    q("SELECT 1"),
    q("SELECT aid FROM pgbench_accounts WHERE aid = 5"),
    q("DELETE FROM orders"),
    q("SELECT 1; SELECT 2"),
    q(""),
    parse("SELECT $1::int", "s1") + bind("s1", b"9") + DESCRIBE + execute() + SYNC,
    parse("DELETE FROM orders", "d1") + bind("d1") + execute() + SYNC,
    bind("d1") + execute() + SYNC,
    parse("SELECT 2") + bind() + execute(rows=1) + FLUSH,
    msg(b"d", b"copy data"),
    q("DROP TABLE orders"),
    SYNC,
]
SERVER_PIECES = [
    msg(b"T", b"\0\0"),
    row(b"1"),
    row(b"x" * 300),
    complete("SELECT 3"),
    complete("INSERT 0 2"),
    msg(b"1") + msg(b"2"),
    msg(b"s"),
    msg(b"I"),
    msg(b"n"),
    ready("I"),
    ready("T"),
    ready("E"),
    server_error("relation does not exist", "42P01"),
    b"MARKED",  # the stand-in error of a denial, with this machine's marker
    param("application_name", "x"),
    param("TimeZone", "UTC"),
    param("is_superuser", "on"),
    msg(b"N", b"Mnotice\0\0"),
    msg(b"d", b"row\n" * 20),
]


def _normal(events: list[Event]) -> list[str]:
    return [f"{type(e).__name__}:{e.inspection.fingerprint if isinstance(e, Observe) else e}" for e in events]


def _run(policy: SqlPolicy, client: bytes, server_tpl: list[bytes], client_cuts: list[int],
         server_cuts: list[int]) -> tuple[bytes, bytes, list[str], list[dict[str, Any]], list[str]]:  # fmt: skip
    r = Rig(policy)
    marker = r.m.marker
    server = b"".join(r.marked() if p == b"MARKED" else p for p in server_tpl)
    up, down, events = b"", b"", list[Event]()
    for chunk in _cuts(client, client_cuts):
        to_server, to_client, ev = r.client(chunk)
        up, down, events = up + to_server, down + to_client, events + ev
    for chunk in _cuts(server, server_cuts):
        _, to_client, ev = r.server(chunk)
        down, events = down + to_client, events + ev
    # the marker is random per machine: compare with it named alike
    norm = marker.encode()
    lines = json.loads(json.dumps(r.lines.lines).replace(marker, "MARKER"))
    return up.replace(norm, b"MARKER"), down.replace(norm, b"MARKER"), _normal(events), lines, r.observed


def _cuts(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


@FUZZ
@given(
    st.sampled_from([READ, WRITE_KILLS_DDL]),
    st.lists(st.sampled_from(CLIENT_PIECES), max_size=12),
    st.lists(st.sampled_from(SERVER_PIECES), max_size=24),
    st.lists(st.integers(min_value=0), max_size=12),
    st.lists(st.integers(min_value=0), max_size=24),
)
def test_any_split_of_the_same_streams_gives_the_same_actions(policy: SqlPolicy, client: list[bytes],
                                                              server: list[bytes], ccuts: list[int],
                                                              scuts: list[int]) -> None:  # fmt: skip
    data = b"".join(client)
    whole = _run(policy, data, server, [], [])
    assert _run(policy, data, server, ccuts, scuts) == whole
    # byte by byte too: every message boundary falls inside a read
    if len(data) + sum(map(len, server)) < 3000:
        assert _run(policy, data, server, list(range(len(data))), list(range(5000))) == whole


@FUZZ
@given(st.lists(st.sampled_from([p for p in SERVER_PIECES if p[:1] not in b"CEISZs" and p != b"MARKED"]),
                max_size=30), st.lists(st.integers(min_value=0), max_size=10))  # fmt: skip
def test_untouched_server_traffic_comes_out_byte_for_byte(server: list[bytes], cuts: list[int]) -> None:
    r = Rig()
    data = b"".join(server)
    out = b"".join(r.server(c)[1] for c in _cuts(data, cuts))
    assert out == data and r.lines.lines == []


def test_an_unwatched_message_is_passed_on_as_it_arrives_and_a_watched_one_only_whole() -> None:
    r = Rig()
    big = row(b"x" * 100_000)
    assert r.server(big[:3]) == (b"", b"", [])  # a header cut by the read is held
    assert r.server(big[3:50_000]) == (b"", big[:50_000], [])  # then the row goes out as far as it came
    assert r.m.mid_message()
    assert r.server(big[50_000:]) == (b"", big[50_000:], [])
    assert not r.m.mid_message()
    wall = param("default_transaction_read_only", "off")
    assert r.server(wall[:-1]) == (b"", b"", [])  # a watched message waits until whole: it may not go at all
    _, to_client, events = r.server(wall[-1:], ready())
    assert to_client == b"" and Kill in [type(e) for e in events]


# --- set_config() with a Bind parameter: decided at each Bind ------------------------------------------------

ADMIN = SqlPolicy("admin")
SET_CONFIG = "SELECT set_config($1, $2, false)"


def typed_parse(sql: str, name: str = "", types: tuple[int, ...] = ()) -> bytes:
    return msg(
        b"P", cstr(name) + cstr(sql) + struct.pack("!h", len(types)) + b"".join(struct.pack("!i", t) for t in types)
    )


def formatted_bind(stmt: str, params: tuple[bytes | None, ...], formats: tuple[int, ...] = ()) -> bytes:
    body = cstr("") + cstr(stmt) + struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(params))
    body += b"".join(struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p for p in params)
    return msg(b"B", body + b"\0\0")


def _bound(r: Rig, *messages: bytes) -> tuple[bytes, str | None]:
    """What reaches the upstream of one batch, and the denial the client will get (None: allowed)."""
    to_server, _, events = r.client(*messages, SYNC)
    if r.m.marker.encode() not in to_server:
        assert events == []
        return to_server, None
    assert [type(e) for e in events] == [Audit]
    _, to_client, _ = r.server(r.marked(), ready())
    return to_server, denial_of(to_client)


def test_set_config_parameters_are_checked_at_each_bind() -> None:
    r = Rig(ADMIN)
    assert r.client(parse(SET_CONFIG, "sc"), SYNC)[0].startswith(b"P")  # not refused at Parse: the values decide
    for name, value in (("jit", "off"), ("client_encoding", "LATIN1"), ("standard_conforming_strings", "on"),
                        ("search_path", "it's, fine")):  # fmt: skip
        batch = formatted_bind("sc", (name.encode(), value.encode())) + execute()
        assert _bound(r, batch) == (batch + SYNC, None)
    unsafe: list[tuple[str, bytes | None, str]] = [
        ("client_encoding", b"SJIS", "client_encoding SJIS is not allowed"),
        ("Client_Encoding", b"sjis", "client_encoding SJIS is not allowed"),
        ("standard_conforming_strings", b"off", "standard_conforming_strings must stay on"),
        ("client_encoding", None, "client_encoding 'null' is not an encoding"),  # NULL: as the literal NULL
    ]
    for name, raw, why in unsafe:
        to_server, denial = _bound(r, formatted_bind("sc", (name.encode(), raw)), execute())
        assert b"client_encoding" not in to_server.lower() and denial is not None and why in denial, denial
        assert "blocked by gateway policy: encoding" in denial
    refused = [line for line in r.lines.lines if line.get("verdict") == "deny"]
    assert len(refused) == 4 and refused[0]["params"] == ["client_encoding", "SJIS"]


def test_a_value_not_known_as_text_stays_refused() -> None:
    r = Rig(ADMIN)
    r.client(typed_parse(SET_CONFIG, "bin"), typed_parse(SET_CONFIG, "named", (19, 19)), SYNC)
    # binary format, or a type the server would change the value in (name: cut to 63 bytes)
    for batch in (formatted_bind("bin", (b"jit", b"off"), (1,)),
                  formatted_bind("bin", (b"client_encoding", b"UTF8"), (0, 1)),
                  formatted_bind("named", (b"jit", b"off"))):  # fmt: skip
        _, denial = _bound(r, batch, execute())
        assert denial is not None and "only a text value" in denial, denial
    # a name sent in binary leaves a computed name: a value that no setting could take unsafely still passes
    assert _bound(r, formatted_bind("bin", (b"jit", b"on"), (1, 0)), execute())[1] is None
    # a value that is not text in the session's encoding (the server would refuse it too)
    _, denial = _bound(r, formatted_bind("bin", (b"client_encoding", b"\xff\xfe"), (0, 0)), execute())
    assert denial is not None and "only a text value" in denial


def test_a_bound_statement_cannot_be_run_by_sql_execute() -> None:
    r = Rig(ADMIN)
    r.client(parse(SET_CONFIG, "sc"), SYNC)
    for sql in ("EXECUTE sc('client_encoding', 'SJIS')", 'EXPLAIN ANALYZE EXECUTE "sc"(\'a\', \'b\')',
                "CREATE TABLE t AS EXECUTE sc('jit', 'off')"):  # fmt: skip
        to_server, _, _ = r.client(q(sql))
        assert b"EXECUTE" not in to_server, sql
        _, to_client, _ = r.server(r.marked(), ready())
        assert "EXECUTE sc: its set_config() is checked only when bound" in denial_of(to_client)
    r.client(msg(b"C", b"S" + cstr("sc")), SYNC)  # once closed, the name is anyone's again
    assert r.client(q("EXECUTE sc('x', 'y')"))[0] == q("EXECUTE sc('x', 'y')")


def test_set_config_from_a_parameter_stays_refused_where_no_bind_decides() -> None:
    r = Rig(ADMIN)
    for sql in ("PREPARE p AS SELECT set_config($1, $2, false)", "SELECT set_config($1, 'off', false)",
                "SELECT set_config('client_encoding', $1 || '', false)"):  # fmt: skip
        _, denial = _bound(r, parse(sql), formatted_bind("", (b"jit", b"on")), execute())
        assert denial is not None and "encoding" in denial, sql
