"""Sans-IO parts byte for byte: framing, startup phase, SCRAM; fuzzed with hypothesis."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.pg.codec import FRONTEND_CAPS, MAX_STARTUP_PACKET, Framer, ProtocolError, StartupFramer
from gateway.pg.messages import (
    BACKEND_DECODERS,
    FRONTEND_DECODERS,
    Bind,
    CancelRequest,
    CommandComplete,
    ErrorResponse,
    Parse,
    Query,
    SSLRequest,
    StartupMessage,
    decode_startup,
    error_response,
)
from gateway.pg.scram import AuthFailed, ScramClient, md5_password
from gateway.pg.startup import Cancel, ClientStartup, NeedTLS, Password, RefuseGSSENC, Startup

FUZZ = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)


def msg(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


def startup(**params: str) -> bytes:
    return StartupMessage(196608, params).encode()


def password(token: str) -> bytes:
    return msg(b"p", token.encode() + b"\0")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def frame_all(chunks: list[bytes], caps: dict[int, int] | None = None) -> tuple[list[tuple[int, bytes]], str | None]:
    f = Framer(caps, default_cap=1 << 20)
    out: list[tuple[int, bytes]] = []
    try:
        for c in chunks:
            chunk, frames = f.feed(c)
            out.extend((tag, chunk[s + 5 : e]) for tag, s, e in frames)
    except ProtocolError as exc:
        return out, str(exc)
    return out, None


# --- framing --------------------------------------------------------------------------------------


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from(b"QPBESHXdC"), st.binary(max_size=40)), max_size=8),
    st.lists(st.integers(0, 10_000)),
)
def test_framer_split_invariance(messages: list[tuple[int, bytes]], cuts: list[int]) -> None:
    data = b"".join(msg(bytes([t]), b) for t, b in messages)
    whole = frame_all([data])
    assert whole == (messages, None)
    assert frame_all(split(data, cuts)) == whole


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(0, 10_000)))
def test_framer_garbage_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    whole = frame_all([data], dict(FRONTEND_CAPS))
    assert frame_all(split(data, cuts), dict(FRONTEND_CAPS)) == whole
    for tag, body in whole[0]:
        decoder = FRONTEND_DECODERS.get(tag) or BACKEND_DECODERS.get(tag)
        if decoder is not None:
            try:
                decoder(body)
            except ProtocolError:
                pass


@pytest.mark.parametrize("length", [0, 3])
def test_framer_rejects_short_length(length: int) -> None:
    with pytest.raises(ProtocolError, match="invalid message length"):
        Framer().feed(b"Q" + struct.pack("!I", length))


def test_framer_rejects_oversized_before_buffering() -> None:
    f = Framer(FRONTEND_CAPS)
    with pytest.raises(ProtocolError, match="over the limit") as err:
        f.feed(b"S" + struct.pack("!I", 1 << 30))
    assert err.value.sqlstate == "54000"


def test_startup_framer_limits() -> None:
    f = StartupFramer()
    f.feed(struct.pack("!I", MAX_STARTUP_PACKET + 1))
    with pytest.raises(ProtocolError, match="10000"):
        f.packet()
    f = StartupFramer()
    f.feed(struct.pack("!I", 4))
    with pytest.raises(ProtocolError, match="invalid startup packet length"):
        f.packet()


# --- messages -------------------------------------------------------------------------------------


def test_decoders_roundtrip() -> None:
    assert Query.decode(b"SELECT 1\0") == Query("SELECT 1")
    assert Parse.decode(b"s1\0SELECT $1\0\x00\x01\x00\x00\x00\x17") == Parse("s1", "SELECT $1", (23,))
    body = b"\0s1\0" + b"\x00\x01\x00\x00" + b"\x00\x02" + b"\x00\x00\x00\x011" + b"\xff\xff\xff\xff" + b"\x00\x00"
    assert Bind.decode(body) == Bind("", "s1", (0,), (b"1", None), ())
    assert CommandComplete.decode(b"SELECT 42\0").rows == 42
    assert CommandComplete.decode(b"BEGIN\0").rows is None
    err = ErrorResponse.decode(error_response("ERROR", "42501", "nope")[5:])
    assert (err.sqlstate, err.message, err.fields["S"]) == ("42501", "nope", "ERROR")
    assert decode_startup(CancelRequest(7, -3).encode()[4:]) == CancelRequest(7, -3)
    assert decode_startup(startup(user="a", database="b")[4:]) == StartupMessage(196608, {"user": "a", "database": "b"})


@pytest.mark.parametrize("body", [b"", b"SELECT 1", b"\xff\xfe\0", b"SELECT 1\0x"])
def test_query_decode_refuses_malformed(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        Query.decode(body)


# --- startup phase --------------------------------------------------------------------------------


def run_startup(chunks: list[bytes], require_tls: bool = False) -> tuple[list[object], str | None]:
    m = ClientStartup(require_tls=require_tls)
    events: list[object] = []
    try:
        for c in chunks:
            for ev in m.receive_data(c):
                events.append(ev)
                if isinstance(ev, NeedTLS):
                    m.tls_started()
    except ProtocolError as exc:
        return events, str(exc)
    return events, None


def test_startup_happy_path() -> None:
    data = startup(user="alice", database="orders", application_name="psql") + password("tok") + msg(b"Q", b"x\0")
    m = ClientStartup(require_tls=False)
    events = m.receive_data(data)
    assert isinstance(events[0], Startup) and events[0].user == "alice" and events[0].database == "orders"
    assert events[1] == Password("tok")
    assert m.rest() == msg(b"Q", b"x\0")
    assert "tok" not in repr(events[1])


def test_startup_tls_then_startup() -> None:
    m = ClientStartup(require_tls=True)
    assert m.receive_data(SSLRequest().encode()) == [NeedTLS()]
    m.tls_started()
    assert isinstance(m.receive_data(startup(user="a"))[0], Startup)


def test_bytes_after_sslrequest_refused() -> None:
    """CVE-2021-23222 class: plaintext buffered behind an SSLRequest would be read as if it came over TLS."""
    m = ClientStartup(require_tls=True)
    with pytest.raises(ProtocolError, match="after SSLRequest"):
        m.receive_data(SSLRequest().encode() + startup(user="a"))


def test_plaintext_refused_when_tls_required() -> None:
    with pytest.raises(ProtocolError, match="requires TLS"):
        ClientStartup(require_tls=True).receive_data(startup(user="a"))


def test_gssenc_refused_then_startup() -> None:
    gss = struct.pack("!II", 8, 80877104)
    events, err = run_startup([gss, startup(user="a")])
    assert err is None and isinstance(events[0], RefuseGSSENC) and isinstance(events[1], Startup)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (startup(user="a", replication="database"), "replication"),
        (startup(database="x"), "no user name"),
        (startup(user="a") + startup(user="b"), "expected a password"),
        (b"GET / HTTP/1.1\r\n\r\n", "startup packet|unsupported"),
        (struct.pack("!II", 8, 1234 << 16), "unsupported frontend protocol"),
    ],
)
def test_startup_refusals(data: bytes, match: str) -> None:
    _, err = run_startup([data])
    assert err is not None and __import__("re").search(match, err)


def test_cancel_request_event() -> None:
    events, err = run_startup([CancelRequest(11, 22).encode()])
    assert events == [Cancel(11, 22)] and err is None


@FUZZ
@given(st.lists(st.integers(0, 10_000)))
def test_startup_split_invariance(cuts: list[int]) -> None:
    data = SSLRequest().encode()
    rest = startup(user="alice", database="orders") + password("t" * 50) + msg(b"Q", b"SELECT 1\0")
    # The SSLRequest must arrive alone (anything behind it is refused), so only the rest is split.
    whole = run_startup([data, rest])
    assert whole[1] is None
    assert run_startup([data, *split(rest, cuts)]) == whole


@FUZZ
@given(st.binary(max_size=200), st.lists(st.integers(0, 1000)))
def test_startup_garbage_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    whole = run_startup([data])
    chunks = split(data, cuts)
    got = run_startup(chunks)
    # TLS_PENDING refuses any later chunk, so only compare when no SSLRequest was seen.
    if not any(isinstance(e, NeedTLS) for e in whole[0]):
        assert got == whole


# --- SCRAM ----------------------------------------------------------------------------------------


def _server_side(password: str, client_first: bytes, salt: bytes, iters: int, snonce: str) -> tuple[bytes, ...]:
    bare = client_first[3:]
    cnonce = bare.split(b"r=")[1].decode()
    server_first = f"r={cnonce}{snonce},s={base64.b64encode(salt).decode()},i={iters}".encode()
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return bare, server_first, server_key


def test_scram_against_reference() -> None:
    c = ScramClient("pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    first = c.client_first()
    assert first == b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"
    bare, server_first, server_key = _server_side("pencil", first, b"salty", 4096, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    final = c.client_final(server_first)
    without_proof = final.rsplit(b",p=", 1)[0]
    auth = bare + b"," + server_first + b"," + without_proof
    # the server checks the proof: ClientKey = proof XOR HMAC(StoredKey, auth)
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", b"salty", 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    sig = hmac.new(hashlib.sha256(client_key).digest(), auth, "sha256").digest()
    proof = base64.b64decode(final.rsplit(b",p=", 1)[1])
    assert bytes(a ^ b for a, b in zip(proof, sig, strict=True)) == client_key
    c.verify(b"v=" + base64.b64encode(hmac.new(server_key, auth, "sha256").digest()))


def test_scram_keys_are_derived_once_per_password_and_salt() -> None:
    from gateway.pg import scram

    scram._SALTED.clear()
    for _ in range(2):  # the second login reuses the derived key, and still proves and verifies
        test_scram_against_reference()
    assert len(scram._SALTED) == 1
    assert scram.salted_password(b"pencil", b"other salt", 4096) != scram.salted_password(b"pencil", b"salty", 4096)
    assert scram.salted_password(b"pen", b"salty", 4096) == hashlib.pbkdf2_hmac("sha256", b"pen", b"salty", 4096)


def test_scram_rejects_forged_server() -> None:
    c = ScramClient("pencil")
    _, server_first, _ = _server_side("pencil", c.client_first(), b"salt", 4096, "x")
    c.client_final(server_first)
    with pytest.raises(AuthFailed, match="signature"):
        c.verify(b"v=" + base64.b64encode(b"\0" * 32))
    with pytest.raises(AuthFailed, match="nonce"):
        ScramClient("p", nonce="abc").client_final(b"r=zzz,s=c2FsdA==,i=4096")


@FUZZ
@given(st.binary(max_size=120))
def test_scram_garbage(data: bytes) -> None:
    c = ScramClient("pw", nonce="abc")
    try:
        c.client_final(data)
    except (ProtocolError, AuthFailed):
        pass


def test_md5_password() -> None:
    # echo -n "md5$(echo -n 'secretalice' | md5sum | cut -c1-32)SALT" style reference
    inner = hashlib.md5(b"secretalice").hexdigest()
    assert md5_password("alice", "secret", b"salt") == "md5" + hashlib.md5(inner.encode() + b"salt").hexdigest()


# --- the relay's own decoders of Bind, Execute and Query must agree with messages.py, errors included --------


def _outcome(fn: object, body: bytes) -> object:
    try:
        return ("ok", fn(body))  # type: ignore[operator]
    except ProtocolError as exc:
        return ("error", str(exc), exc.sqlstate)


def _reference_bind(body: bytes) -> tuple[str, str, tuple[int, ...], list[bytes | None]]:
    m = Bind.decode(body)
    return m.portal, m.statement, m.param_formats, list(m.params)


def _bind_body(portal: bytes, stmt: bytes, formats: list[int], params: list[bytes | None], results: list[int]) -> bytes:
    out = portal + b"\0" + stmt + b"\0" + struct.pack(f"!h{len(formats)}h", len(formats), *formats)
    out += struct.pack("!h", len(params))
    for p in params:
        out += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return out + struct.pack(f"!h{len(results)}h", len(results), *results)


NAMES = st.sampled_from([b"", b"P0_1", b"p\xc3\xa9", b"\xff", b"a"])


@FUZZ
@given(NAMES, NAMES, st.lists(st.integers(-2, 2), max_size=3), st.lists(st.none() | st.binary(max_size=6), max_size=4),
       st.lists(st.integers(0, 1), max_size=3), st.integers(0, 40), st.binary(max_size=3), st.booleans())  # fmt: skip
def test_relay_bind_decoder_matches_messages(portal: bytes, stmt: bytes, formats: list[int],
                                             params: list[bytes | None], results: list[int], cut: int,
                                             junk: bytes, mangle: bool) -> None:  # fmt: skip
    from gateway.pg.fastdecode import decode_bind

    body = _bind_body(portal, stmt, formats, params, results)
    if mangle:  # truncated, extended, or a count/length overwritten
        body = body[: len(body) - cut % (len(body) + 1)] + junk if cut % 2 else body[:cut] + b"\xff\xfe" + body[cut:]
    assert _outcome(decode_bind, body) == _outcome(_reference_bind, body), body


@FUZZ
@given(NAMES, st.integers(-(2**31), 2**31 - 1), st.binary(max_size=6), st.booleans())
def test_relay_execute_decoder_matches_messages(portal: bytes, rows: int, junk: bytes, mangle: bool) -> None:
    from gateway.pg.fastdecode import decode_execute
    from gateway.pg.messages import Execute

    body = portal + b"\0" + struct.pack("!i", rows)
    if mangle:
        body = (body + junk)[: len(body) + len(junk) - (rows % 7)]

    def reference(b: bytes) -> tuple[str, int]:
        m = Execute.decode(b)
        return m.portal, m.max_rows

    assert _outcome(decode_execute, body) == _outcome(reference, body), body


@FUZZ
@given(st.binary(max_size=3), st.text(max_size=8).map(str.encode) | st.binary(max_size=8), st.binary(max_size=3))
def test_relay_query_decoder_matches_messages(before: bytes, body: bytes, after: bytes) -> None:
    from gateway.pg.fastdecode import decode_query

    def relay_decode(b: bytes) -> str:
        return decode_query(before + msg(b"Q", b) + after, len(before), len(before) + 5 + len(b))

    for b in (body + b"\0", body + b"\0" + after, body):
        assert _outcome(relay_decode, b) == _outcome(lambda x: Query.decode(x).sql, b)


def _reference_skip(data: bytes, pos: int, cap: int) -> int:
    """What skip_unwatched must answer, written the obvious way."""
    while len(data) - pos >= 5 and data[pos] not in b"CEISZs":
        length = struct.unpack("!I", data[pos + 1 : pos + 5])[0]
        if not 4 <= length <= cap or pos + 1 + length > len(data):
            break
        pos += 1 + length
    return pos


_SERVER_TAGS = st.sampled_from(b"DdT2n1CEISZsAN")


@FUZZ
@given(st.lists(st.tuples(_SERVER_TAGS, st.binary(max_size=12)), max_size=12), st.integers(0, 20),
       st.integers(0, 30), st.sampled_from([4, 8, 2**32 - 1]), st.booleans())  # fmt: skip
def test_header_walk_both_builds_agree(messages: list[tuple[int, bytes]], start: int, trim: int, cap: int,
                                       corrupt: bool) -> None:  # fmt: skip
    from gateway.pg.fastdecode import _skip_native, _skip_python

    data = b"".join(msg(bytes([t]), b) for t, b in messages)
    data = data[: max(0, len(data) - trim)]  # a read that ends mid-message
    if corrupt and len(data) > 6:
        data = data[:1] + b"\xff\xff" + data[3:]  # a length past any cap
    pos = min(start, len(data))
    want = _reference_skip(data, pos, cap)
    assert _skip_native(data, pos, cap) == want
    assert _skip_python(data, pos, cap) == want


def test_header_walk_runs_to_the_first_watched_message() -> None:
    from gateway.pg.fastdecode import skip_unwatched

    rows = msg(b"2", b"") + msg(b"D", b"\0\1\0\0\0\1x") * 3
    tail = msg(b"C", b"SELECT 3\0") + msg(b"Z", b"I")
    assert skip_unwatched(rows + tail, 0, 1 << 30) == len(rows)
    assert skip_unwatched(rows, 0, 1 << 30) == len(rows)
    assert skip_unwatched(rows[:-2], 0, 1 << 30) == len(rows) - len(msg(b"D", b"\0\1\0\0\0\1x"))
    assert skip_unwatched(rows, 0, 8) == 5  # a DataRow over the cap stops the walk there
