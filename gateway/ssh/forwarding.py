"""Local port forwarding (direct-tcpip), when a scope allows it: opened from the target, not from the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncssh

from gateway.ssh.upstream import MAX_PACKET, WINDOW

if TYPE_CHECKING:
    from gateway.ssh.connection import SshConnection


class TcpRelay(asyncssh.SSHTCPSession[bytes]):
    """The engineer's end of a forwarded TCP connection; the other end is a direct-tcpip channel upstream.

    Connecting from the gateway itself would reach the gateway's network, not the target's: the
    destination is always dialled by the target's sshd through the gateway's own login.
    """

    def __init__(self, conn: SshConnection, host: str, port: int) -> None:
        self.conn = conn
        self.host = host
        self.port = port
        self.up: asyncssh.SSHTCPChannel[bytes] | None = None

    chan: asyncssh.SSHTCPChannel[bytes]  # set by asyncssh before any other callback

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        """Hold data until the upstream channel is open."""
        self.chan = chan
        chan.pause_reading()
        self.conn.spawn(self._open())

    async def _open(self) -> None:
        """Open the direct-tcpip channel on the target's side, then let data flow."""
        try:
            up, _ = await self.conn.upstream.create_connection(
                lambda: _UpstreamTcp(self), self.host, self.port, encoding=None, window=WINDOW, max_pktsize=MAX_PACKET
            )
        except (asyncssh.Error, OSError):
            self.chan.close()
            return
        self.up = up
        self.chan.resume_reading()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        """Engineer -> target."""
        if self.up is not None:
            self.up.write(data)

    def eof_received(self) -> bool:
        """Half-close towards the target."""
        if self.up is not None:
            self.up.write_eof()
        return True

    def pause_writing(self) -> None:
        """Engineer is slow: stop reading the target."""
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        """Engineer reads again."""
        if self.up is not None:
            self.up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """Close the target's end."""
        if self.up is not None:
            self.up.close()


class _UpstreamTcp(asyncssh.SSHTCPSession[bytes]):
    """The target's end of a forwarded connection."""

    def __init__(self, relay: TcpRelay) -> None:
        self.relay = relay

    def data_received(self, data: bytes, datatype: int | None) -> None:
        """Target -> engineer."""
        self.relay.chan.write(data)

    def eof_received(self) -> bool:
        """Half-close towards the engineer."""
        self.relay.chan.write_eof()
        return True

    def pause_writing(self) -> None:
        """Target is slow: stop reading the engineer."""
        self.relay.chan.pause_reading()

    def resume_writing(self) -> None:
        """Target reads again."""
        self.relay.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """Close the engineer's end."""
        self.relay.chan.close()
