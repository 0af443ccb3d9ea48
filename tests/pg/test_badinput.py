"""Hostile or broken input: a clear error, no crash, and the session next door keeps working."""

from __future__ import annotations

import asyncio
import struct

import asyncpg
import pytest

from gateway.pg.messages import CancelRequest, ErrorResponse, SSLRequest, StartupMessage
from tests.pg import rawclient as raw
from tests.pg.conftest import OTHER_TARGET, Gateway


async def _refusal(reader: asyncio.StreamReader) -> ErrorResponse | None:
    """The FATAL the gateway sent before closing (None when it just closed)."""
    data = await asyncio.wait_for(reader.read(), 5)
    if not data:
        return None
    assert data[:1] == b"E", data[:40]
    return ErrorResponse.decode(data[5 : 1 + struct.unpack("!I", data[1:5])[0]])


async def _plain(gateway: Gateway, data: bytes) -> ErrorResponse | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(data)
    try:
        return await _refusal(reader)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "startup packet|unsupported"),
        (struct.pack("!I", 2), "invalid startup packet length 2"),
        (struct.pack("!I", 3) + b"\0\0\0\0", "invalid startup packet length"),
        (struct.pack("!I", 1_000_000) + b"\0" * 64, "over the 10000-byte limit"),
        (SSLRequest().encode() + StartupMessage(196608, {"user": "alice"}).encode(), "after SSLRequest"),
        (StartupMessage(196608, {"user": "alice", "database": "orders"}).encode(), "requires TLS"),
    ],
)
async def test_garbage_before_auth(gateway: Gateway, bystander: asyncpg.Connection, data: bytes,
                                   expect: str | None) -> None:  # fmt: skip
    err = await _plain(gateway, data)
    if expect is None:
        assert err is None or "timed out" in err.message
    else:
        assert err is not None and __import__("re").search(expect, err.message), err


async def test_sslrequest_then_startup_in_one_write_never_gets_tls(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(SSLRequest().encode() + StartupMessage(196608, {"user": "alice"}).encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert not data.startswith(b"S")


async def test_preauth_timeout(gateway: Gateway, bystander: asyncpg.Connection) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    t0 = asyncio.get_running_loop().time()
    err = await asyncio.wait_for(_refusal(reader), gateway.config.preauth_timeout + 5)
    writer.close()
    assert err is not None and "timed out" in err.message
    assert asyncio.get_running_loop().time() - t0 >= gateway.config.preauth_timeout - 0.5


async def _login_error(gateway: Gateway, token: str, *, user: str = "alice", database: str = "orders",
                       params: dict[str, str] | None = None) -> ErrorResponse:  # fmt: skip
    c = await raw.RawClient.open(gateway.port)
    c.send(StartupMessage(196608, {"user": user, "database": database, **(params or {})}).encode())
    msgs: list[raw.Msg] = []
    tag, body = await c.recv()
    if tag == "R":
        c.send(raw.msg("p", raw.cstr(token)))
        tag, body = await c.recv()
    msgs.append((tag, body))
    assert tag == "E", msgs
    err = ErrorResponse.decode(body)
    assert err.fields["S"] == "FATAL"
    assert await c.closed() == b""
    await c.close()
    return err


async def test_bad_tokens(gateway: Gateway, bystander: asyncpg.Connection) -> None:
    good = await gateway.token()
    cases = {
        "": "no approval token",
        "not-a-jwt": "malformed",
        good[:-4] + "AAAA": "signature",
    }
    for token, why in cases.items():
        err = await _login_error(gateway, token)
        assert err.sqlstate == "28P01" and why in err.message, (token, err.message)
    err = await _login_error(gateway, good, user="mallory")
    assert err.sqlstate == "28P01" and "not 'mallory'" in err.message
    other = await gateway.token(target=OTHER_TARGET)
    err = await _login_error(gateway, other)
    assert "for target 'orders-replica'" in err.message
    err = await _login_error(gateway, good, database="postgres")
    assert "no postgres target named 'postgres'" in err.message
    short = await gateway.token(ttl=1)
    await asyncio.sleep(1.5)
    err = await _login_error(gateway, short)
    assert "expired" in err.message
    err = await _login_error(gateway, good, params={"replication": "database"})
    assert "replication" in err.message
    err = await _login_error(gateway, good, params={"client_encoding": "SJIS"})
    assert "SJIS is not allowed" in err.message
    rejected = await gateway.run(gateway.services.store.events(types=["token.rejected"]))
    assert len(rejected) >= 6


async def test_bad_messages_after_login(gateway: Gateway, bystander: asyncpg.Connection) -> None:
    for bad, why in [
        (b"Q" + struct.pack("!I", 3), "invalid message length"),
        (b"S" + struct.pack("!I", 1 << 30), "over the limit"),
        (b"Q" + struct.pack("!I", 1 << 30), "over the limit"),
        (raw.msg("\x00", b"abc"), "invalid frontend message type"),
        (raw.msg("p", b"again\0"), "invalid frontend message type"),
        (raw.msg("Q", b"SELECT 1"), "unterminated"),
        (raw.msg("Q", b"SELECT '\xff\xfe'\0"), "UTF-8"),
    ]:
        c = await raw.RawClient.login(gateway.port, await gateway.token())
        c.send(bad)
        tag, body = await c.recv()
        assert tag == "E"
        err = ErrorResponse.decode(body)
        assert err.fields["S"] == "FATAL" and why in err.message, (bad, err.message)
        assert await c.closed() == b""
        await c.close()


async def test_unknown_cancel_key_cancels_nothing(gateway: Gateway, bystander: asyncpg.Connection) -> None:
    task = asyncio.ensure_future(bystander.fetchval("SELECT pg_sleep(1.5)"))
    await asyncio.sleep(0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(CancelRequest(12345, 67890).encode())
    assert await asyncio.wait_for(reader.read(), 5) == b""  # never an answer on the cancel socket
    writer.close()
    assert await task is None  # pg_sleep returns void: it ran to the end, uncancelled
