"""A minimal hand-driven Postgres client for tests that need exact messages (pipelines, FunctionCall, garbage)."""

from __future__ import annotations

import asyncio
import functools
import ssl
import struct

from gateway.pg.messages import ErrorResponse, SSLRequest, StartupMessage

Msg = tuple[str, bytes]


def msg(tag: str, body: bytes = b"") -> bytes:
    return tag.encode() + struct.pack("!I", len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def parse(sql: str, name: str = "") -> bytes:
    return msg("P", cstr(name) + cstr(sql) + b"\0\0")


def bind(stmt: str = "", portal: str = "", params: tuple[bytes, ...] = ()) -> bytes:
    body = cstr(portal) + cstr(stmt) + b"\0\0" + struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", len(p)) + p
    return msg("B", body + b"\0\0")


def execute(portal: str = "") -> bytes:
    return msg("E", cstr(portal) + b"\0\0\0\0")


def describe_portal(portal: str = "") -> bytes:
    return msg("D", b"P" + cstr(portal))


SYNC = msg("S")
FLUSH = msg("H")
TERMINATE = msg("X")


def query(sql: str) -> bytes:
    return msg("Q", cstr(sql))


@functools.cache
def tls_context() -> ssl.SSLContext:
    """TLS for test clients, unverified (the gateway's certificate is self-signed); one context for all.

    Not ``ssl.create_default_context``: it loads the system's CA store, ~25 ms (seconds on a loaded machine),
    and 20 clients started together made theirs back to back on the test's loop while the gateway's pre-auth
    timer ran for the connections it had already accepted (refused as "timed out before authentication").
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawClient:
    """Speaks the wire protocol by hand over TLS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, tls: bool = True) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if tls:
            writer.write(SSLRequest().encode())
            assert await reader.readexactly(1) == b"S"
            await writer.start_tls(tls_context())
        return cls(reader, writer)

    @classmethod
    async def login(cls, port: int, token: str, *, user: str = "alice", database: str = "orders") -> RawClient:
        c = await cls.open(port)
        c.send(StartupMessage(196608, {"user": user, "database": database}).encode())
        tag, _ = await c.recv()
        assert tag == "R"
        c.send(msg("p", cstr(token)))
        msgs = await c.until_ready()
        errors = [ErrorResponse.decode(b).message for t, b in msgs if t == "E"]
        assert not errors, errors
        return c

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = 10.0) -> Msg:
        head = await asyncio.wait_for(self.reader.readexactly(5), timeout)
        tag, length = chr(head[0]), struct.unpack("!I", head[1:])[0]
        return tag, await asyncio.wait_for(self.reader.readexactly(length - 4), timeout)

    async def until_ready(self, timeout: float = 10.0) -> list[Msg]:
        out: list[Msg] = []
        while True:
            m = await self.recv(timeout)
            out.append(m)
            if m[0] == "Z":
                return out

    async def closed(self, timeout: float = 5.0) -> bytes:
        """Read to end of stream; returns everything that came."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def tags(msgs: list[Msg]) -> str:
    return "".join(t for t, _ in msgs)


def errors(msgs: list[Msg]) -> list[ErrorResponse]:
    return [ErrorResponse.decode(b) for t, b in msgs if t == "E"]
