"""Sans-IO state machine of the client's startup phase: TLS negotiation, StartupMessage, password (the token)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from gateway.pg.codec import KIB, Framer, ProtocolError, StartupFramer
from gateway.pg.messages import (
    PROTOCOL_3_0,
    CancelRequest,
    GSSENCRequest,
    PasswordMessage,
    SSLRequest,
    StartupMessage,
    decode_startup,
)

# A JWT approval token is ~1 KB; tokens.MAX_TOKEN_BYTES is 8 KB. Nothing bigger is a password of ours.
_AUTH_CAPS: Final = {PasswordMessage.TAG: 16 * KIB}
_MAX_PARAM = 1024


class Phase(Enum):
    """Where the startup phase is."""

    INITIAL = "initial"  # SSLRequest, GSSENCRequest, CancelRequest or StartupMessage may come
    TLS_PENDING = "tls-pending"  # we said 'S'; nothing may arrive until the TLS handshake starts
    AWAIT_PASSWORD = "await-password"  # noqa: S105 (a phase name, not a secret)  # StartupMessage seen; AuthenticationCleartextPassword sent
    DONE = "done"  # password received: the rest belongs to the relay
    CLOSED = "closed"  # a cancel request or an error ends the connection


@dataclass(frozen=True, slots=True)
class NeedTLS:
    """Answer 'S' and start the TLS handshake."""


@dataclass(frozen=True, slots=True)
class RefuseGSSENC:
    """Answer 'N': the gateway does not do GSSAPI encryption."""


@dataclass(frozen=True, slots=True)
class Cancel:
    """A CancelRequest arrived: look up the key, never answer on this socket, close."""

    process_id: int
    secret_key: int


@dataclass(frozen=True, slots=True)
class Startup:
    """A valid StartupMessage; `negotiate` lists the protocol options we ignore (send NegotiateProtocolVersion)."""

    user: str
    database: str
    parameters: dict[str, str]
    minor: int
    unsupported: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Password:
    """The cleartext password: the approval token."""

    token: str

    def __repr__(self) -> str:
        return "Password('***')"


Event = NeedTLS | RefuseGSSENC | Cancel | Startup | Password


class ClientStartup:
    """Feed client bytes, get events; raises ProtocolError (safe to show) on anything out of order."""

    def __init__(self, *, require_tls: bool) -> None:
        self.phase = Phase.INITIAL
        self.require_tls = require_tls
        self.tls = False
        self._gss_refused = False
        self._startup = StartupFramer()
        self._tagged = Framer(_AUTH_CAPS, default_cap=16 * KIB, name="message")
        self._rest = b""

    def receive_data(self, data: bytes) -> list[Event]:
        """Consume bytes; return what happened, in order."""
        try:
            return self._receive(data)
        except ProtocolError:
            self.phase = Phase.CLOSED
            raise

    def _receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self.phase is Phase.CLOSED:
            raise ProtocolError("connection is closing")
        if self.phase is Phase.TLS_PENDING:
            if data:
                # Bytes that arrive before our 'S' was acted on were sent in plaintext and would be read as if
                # they came through TLS: a man in the middle injects commands (CVE-2021-23222, CVE-2021-3935).
                raise ProtocolError("unexpected data after SSLRequest")
            return events
        if self.phase is Phase.DONE:
            self._rest += data
            return events
        if self.phase is Phase.INITIAL:
            self._startup.feed(data)
            while self.phase is Phase.INITIAL:
                packet = self._startup.packet()
                if packet is None:
                    return events
                event = self._on_packet(decode_startup(packet))
                events.append(event)
                if isinstance(event, NeedTLS) and self._startup.pending:
                    raise ProtocolError("unexpected data after SSLRequest")
                if isinstance(event, Cancel):
                    return events
            data = self._startup.take_rest()
        if self.phase is Phase.AWAIT_PASSWORD:
            chunk, frames = self._tagged.feed(data)
            for tag, start, end in frames:
                if self.phase is Phase.DONE:
                    self._rest += chunk[start:end]
                    continue
                if tag != PasswordMessage.TAG:
                    raise ProtocolError("expected a password message (the approval token)", "28000")
                token = PasswordMessage.decode(chunk[start + 5 : end]).password()
                self.phase = Phase.DONE
                events.append(Password(token))
            if self.phase is Phase.DONE:
                self._rest += self._tagged.take_rest()
            elif self._tagged.peek_tag() not in (None, PasswordMessage.TAG):
                # A second StartupMessage (or anything else) instead of the password: refuse it now, unbuffered.
                raise ProtocolError("expected a password message (the approval token)", "28000")
        return events

    def _on_packet(self, packet: object) -> Event:
        if isinstance(packet, SSLRequest):
            if self.tls:
                raise ProtocolError("SSLRequest inside TLS")
            self.phase = Phase.TLS_PENDING
            return NeedTLS()
        if isinstance(packet, GSSENCRequest):
            if self.tls or self._gss_refused:
                raise ProtocolError("unexpected GSSENCRequest")
            self._gss_refused = True
            return RefuseGSSENC()
        if isinstance(packet, CancelRequest):
            self.phase = Phase.CLOSED
            return Cancel(packet.process_id, packet.secret_key)
        assert isinstance(packet, StartupMessage)
        return self._on_startup(packet)

    def _on_startup(self, msg: StartupMessage) -> Startup:
        if self.require_tls and not self.tls:
            raise ProtocolError("this gateway requires TLS: connect with sslmode=require", "28000")
        params = dict(msg.parameters)
        unsupported = tuple(sorted(k for k in params if k.startswith("_pq_.")))
        for k in unsupported:
            del params[k]
        if "replication" in params:
            # A walsender connection speaks another protocol the inspector cannot see into.
            raise ProtocolError("replication connections are not allowed through the gateway", "28000")
        for k, v in params.items():
            if len(k) > _MAX_PARAM or len(v) > _MAX_PARAM:
                raise ProtocolError(f"startup parameter {k[:64]!r} is too long")
        user = params.get("user", "")
        if not user:
            # Postgres would fall back to defaults; we need the engineer's name to check it against the token.
            raise ProtocolError("no user name given: connect as the user named in your approval token", "28000")
        database = params.get("database") or user
        self.phase = Phase.AWAIT_PASSWORD
        return Startup(user, database, params, msg.protocol - PROTOCOL_3_0, unsupported)

    def tls_started(self) -> None:
        """The TLS handshake completed; plaintext is over."""
        if self.phase is not Phase.TLS_PENDING:
            raise ProtocolError("TLS started out of order")
        self.tls = True
        self.phase = Phase.INITIAL

    def rest(self) -> bytes:
        """Bytes that followed the password message (they belong to the relay)."""
        rest, self._rest = self._rest, b""
        return rest
