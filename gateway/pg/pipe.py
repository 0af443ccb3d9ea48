"""A tiny asyncio.Protocol with an awaitable read(), used only during handshakes (the relay has its own)."""

from __future__ import annotations

import asyncio
import ssl
from typing import cast


class Pipe(asyncio.Protocol):
    """Buffers what arrives; `read()` waits for some. The relay takes the transport over with set_protocol()."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, though they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet."""
        return len(self._buf)

    async def read(self) -> bytes:
        """Whatever has arrived (at least one byte); ConnectionError at end of stream."""
        while not self._buf:
            if self._eof:
                raise ConnectionError("connection closed by peer")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data, self._buf = self._buf, b""
        return data

    def take(self) -> bytes:
        """Everything buffered, without waiting (at hand-over to the relay)."""
        data, self._buf = self._buf, b""
        return data

    def write(self, data: bytes) -> None:
        """Write to the current transport."""
        assert self.transport is not None
        self.transport.write(data)

    async def start_tls(self, ctx: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None) -> None:
        """Upgrade the connection in place; this protocol keeps receiving the decrypted bytes."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        tr = await loop.start_tls(self.transport, self, ctx, server_side=server_side, server_hostname=server_hostname)
        if tr is None:
            raise ConnectionError("TLS handshake failed")
        self.transport = tr

    def close(self) -> None:
        """Close the transport."""
        if self.transport is not None:
            self.transport.close()
