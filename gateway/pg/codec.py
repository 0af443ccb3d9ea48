"""Sans-IO framing of the Postgres wire protocol: bytes in, whole messages out, hostile lengths refused."""

from __future__ import annotations

import struct
from collections.abc import Mapping

_LEN = struct.Struct("!I")

# Startup-phase packets carry no tag. Postgres itself refuses anything over 10000 bytes
# (MAX_STARTUP_PACKET_LENGTH); a bigger claim is an attack on the proxy's memory.
MAX_STARTUP_PACKET = 10000
KIB = 1024
MIB = 1024 * KIB

# Per-type caps on frontend messages: a length field is attacker-controlled, so a client that
# announces 1 GB for a Sync must be cut off before we buffer a byte of it (pgbouncer CVE-2021-3935
# class and Odyssey's unbounded-length bugs). Generous where real clients send bulk data.
FRONTEND_CAPS: Mapping[int, int] = {
    ord("Q"): 64 * MIB,  # simple query (bulk INSERT scripts)
    ord("P"): 64 * MIB,  # Parse
    ord("B"): 256 * MIB,  # Bind (large bytea parameters)
    ord("E"): 64 * KIB,  # Execute: portal name + row limit
    ord("D"): 64 * KIB,  # Describe
    ord("C"): 64 * KIB,  # Close
    ord("S"): 4,  # Sync
    ord("H"): 4,  # Flush
    ord("X"): 4,  # Terminate
    ord("c"): 4,  # CopyDone
    ord("d"): 256 * MIB,  # CopyData
    ord("f"): 1 * MIB,  # CopyFail
    ord("F"): 256 * MIB,  # FunctionCall
    ord("p"): 64 * KIB,  # Password / SASL messages
}
DEFAULT_FRONTEND_CAP = 64 * KIB
# The upstream is trusted, but a runaway length still must not exhaust memory (Postgres' own limit is 1 GB).
BACKEND_CAP = 1024 * MIB


class ProtocolError(Exception):
    """The peer broke the protocol; str() is safe to show the client, `sqlstate` goes in the ErrorResponse."""

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


Frame = tuple[int, int, int]
"""(tag, start, end) of one whole message inside a chunk; the body is chunk[start + 5:end]."""


class Framer:
    """Splits a stream of tagged messages into whole messages; keeps partial ones for the next feed."""

    __slots__ = ("_buf", "_caps", "_default_cap", "_name")

    def __init__(self, caps: Mapping[int, int] | None = None, default_cap: int = BACKEND_CAP,
                 name: str = "message") -> None:  # fmt: skip
        self._buf = b""
        self._caps = dict(caps or {})
        self._default_cap = default_cap
        self._name = name

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held back."""
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[bytes, list[Frame]]:
        """Add bytes; return the chunk of whole messages (possibly empty) and where each message sits in it."""
        if self._buf:
            data = self._buf + data
        frames: list[Frame] = []
        pos = 0
        n = len(data)
        caps = self._caps
        default = self._default_cap
        unpack = _LEN.unpack_from
        while n - pos >= 5:
            tag = data[pos]
            length = unpack(data, pos + 1)[0]
            if length < 4:
                raise ProtocolError(f"invalid {self._name} length {length}")
            if length > caps.get(tag, default):
                raise ProtocolError(f"{self._name} {_tag_name(tag)} of {length} bytes is over the limit", "54000")
            end = pos + 1 + length
            if end > n:
                break
            frames.append((tag, pos, end))
            pos = end
        if pos == n:
            self._buf = b""
            return data, frames
        self._buf = data[pos:]
        return data[:pos], frames

    def peek_tag(self) -> int | None:
        """The tag of the held-back partial message, if any."""
        return self._buf[0] if self._buf else None

    def take_rest(self) -> bytes:
        """Hand over the held-back bytes (when the stream changes owner) and forget them."""
        rest, self._buf = self._buf, b""
        return rest


def _tag_name(tag: int) -> str:
    ch = chr(tag)
    return repr(ch) if ch.isprintable() else f"0x{tag:02x}"


class StartupFramer:
    """Splits the untagged startup-phase packets (length includes itself) with the 10000-byte cap."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    @property
    def pending(self) -> int:
        """Bytes of an incomplete packet held back."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Add bytes."""
        self._buf += data

    def packet(self) -> bytes | None:
        """The next whole packet (without its length word), or None; one at a time, because what follows
        a packet may be another framing altogether (TLS after SSLRequest, tagged messages after startup)."""
        buf = self._buf
        if len(buf) < 4:
            return None
        length = _LEN.unpack_from(buf, 0)[0]
        if length < 8:
            raise ProtocolError(f"invalid startup packet length {length}")
        if length > MAX_STARTUP_PACKET:
            raise ProtocolError(f"startup packet of {length} bytes is over the {MAX_STARTUP_PACKET}-byte limit",
                                "54000")  # fmt: skip
        if len(buf) < length:
            return None
        self._buf = buf[length:]
        return buf[4:length]

    def take_rest(self) -> bytes:
        """Hand over the held-back bytes and forget them."""
        rest, self._buf = self._buf, b""
        return rest
