"""Postgres wire messages the gateway reads or writes, named as in the protocol docs (sans-IO)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.pg.codec import ProtocolError

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")


class _Reader:
    """Cursor over one message body; every overrun is a ProtocolError, never an IndexError."""

    __slots__ = ("body", "pos")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def cstr(self) -> str:
        end = self.body.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError("unterminated string in message")
        raw = self.body[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("invalid UTF-8 in message", "22021") from None

    def i16(self) -> int:
        if self.pos + 2 > len(self.body):
            raise ProtocolError("message too short")
        v: int = _I16.unpack_from(self.body, self.pos)[0]
        self.pos += 2
        return v

    def i32(self) -> int:
        if self.pos + 4 > len(self.body):
            raise ProtocolError("message too short")
        v: int = _I32.unpack_from(self.body, self.pos)[0]
        self.pos += 4
        return v

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.body):
            raise ProtocolError("message too short")
        v = self.body[self.pos : self.pos + n]
        self.pos += n
        return v

    def count(self) -> int:
        n = self.i16()
        if n < 0:
            raise ProtocolError("negative count in message")
        return n

    def end(self) -> None:
        if self.pos != len(self.body):
            raise ProtocolError("trailing bytes in message")


def _msg(tag: bytes, body: bytes) -> bytes:
    return tag + _U32.pack(len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\0"


# --- Startup phase (untagged) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The first real packet: protocol version and parameters (user, database, options, GUCs)."""

    protocol: int
    parameters: Mapping[str, str]

    def encode(self) -> bytes:
        """The packet with its length word."""
        body = _U32.pack(self.protocol) + b"".join(_cstr(k) + _cstr(v) for k, v in self.parameters.items()) + b"\0"
        return _U32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks for TLS before the StartupMessage."""

    def encode(self) -> bytes:
        """The 8-byte packet."""
        return _U32.pack(8) + _U32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption (the gateway always answers 'N')."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Sent on a fresh connection: cancel the query of the backend with this key."""

    process_id: int
    secret_key: int

    def encode(self) -> bytes:
        """The 16-byte packet."""
        return _U32.pack(16) + _U32.pack(CANCEL_REQUEST_CODE) + _I32.pack(self.process_id) + _I32.pack(self.secret_key)


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def decode_startup(packet: bytes) -> StartupPacket:
    """Decode one startup-phase packet (without its length word)."""
    r = _Reader(packet)
    code = r.i32() & 0xFFFFFFFF
    if code == SSL_REQUEST_CODE:
        r.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        msg = CancelRequest(r.i32(), r.i32())
        r.end()
        return msg
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: only 3.x is served", "0A000")
    params: dict[str, str] = {}
    while True:
        key = r.cstr()
        if not key:
            break
        if key in params:
            raise ProtocolError(f"startup parameter {key!r} given twice")
        params[key] = r.cstr()
    r.end()
    return StartupMessage(code, params)


# --- Frontend messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """Simple query: one string, possibly several statements."""

    TAG = ord("Q")
    sql: str

    @classmethod
    def decode(cls, body: bytes) -> Query:
        """From the body."""
        r = _Reader(body)
        msg = cls(r.cstr())
        r.end()
        return msg

    def encode(self) -> bytes:
        """With tag and length."""
        return _msg(b"Q", _cstr(self.sql))


@dataclass(frozen=True, slots=True)
class Parse:
    """Extended protocol: prepare `sql` as statement `name` ('' is the unnamed statement)."""

    TAG = ord("P")
    name: str
    sql: str
    param_types: tuple[int, ...]

    @classmethod
    def decode(cls, body: bytes) -> Parse:
        """From the body."""
        r = _Reader(body)
        name, sql = r.cstr(), r.cstr()
        types = tuple(r.i32() for _ in range(r.count()))
        r.end()
        return cls(name, sql, types)


@dataclass(frozen=True, slots=True)
class Bind:
    """Extended protocol: bind parameters to a prepared statement, making portal `portal`."""

    TAG = ord("B")
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    @classmethod
    def decode(cls, body: bytes) -> Bind:
        """From the body."""
        r = _Reader(body)
        portal, statement = r.cstr(), r.cstr()
        formats = tuple(r.i16() for _ in range(r.count()))
        params: list[bytes | None] = []
        for _ in range(r.count()):
            n = r.i32()
            params.append(None if n == -1 else r.raw(n))
        results = tuple(r.i16() for _ in range(r.count()))
        r.end()
        return cls(portal, statement, formats, tuple(params), results)

    def param_format(self, i: int) -> int:
        """0 text, 1 binary (one format code applies to all parameters)."""
        f = self.param_formats
        return 0 if not f else f[0] if len(f) == 1 else f[i] if i < len(f) else 0


@dataclass(frozen=True, slots=True)
class Execute:
    """Extended protocol: run a portal (0 rows = all)."""

    TAG = ord("E")
    portal: str
    max_rows: int

    @classmethod
    def decode(cls, body: bytes) -> Execute:
        """From the body."""
        r = _Reader(body)
        msg = cls(r.cstr(), r.i32())
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class Close:
    """Extended protocol: close statement ('S') or portal ('P') `name`."""

    TAG = ord("C")
    kind: str
    name: str

    @classmethod
    def decode(cls, body: bytes) -> Close:
        """From the body."""
        r = _Reader(body)
        kind = r.raw(1).decode("latin-1")
        msg = cls(kind, r.cstr())
        r.end()
        if kind not in "SP":
            raise ProtocolError(f"invalid Close target {kind!r}")
        return msg


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """Password (here: the approval token) or SASL response; raw bytes, never logged."""

    TAG = ord("p")
    data: bytes

    @classmethod
    def decode(cls, body: bytes) -> PasswordMessage:
        """From the body."""
        return cls(body)

    def password(self) -> str:
        """The cleartext password: one NUL-terminated string."""
        r = _Reader(self.data)
        value = r.cstr()
        r.end()
        return value


# --- Backend messages -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """An error (or, with TAG 'N', a notice): the field codes of the protocol docs ('S', 'C', 'M', ...)."""

    TAG = ord("E")
    fields: Mapping[str, str]

    @classmethod
    def decode(cls, body: bytes) -> ErrorResponse:
        """From the body."""
        fields: dict[str, str] = {}
        pos = 0
        while pos < len(body) and body[pos] != 0:
            end = body.find(b"\0", pos + 1)
            if end < 0:
                raise ProtocolError("unterminated error field")
            fields[chr(body[pos])] = body[pos + 1 : end].decode("utf-8", "replace")
            pos = end + 1
        return cls(fields)

    @property
    def sqlstate(self) -> str:
        """The SQLSTATE code."""
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        """The primary message."""
        return self.fields.get("M", "")


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    """A run-time parameter's current value (sent at startup and whenever a reported GUC changes)."""

    TAG = ord("S")
    name: str
    value: str

    @classmethod
    def decode(cls, body: bytes) -> ParameterStatus:
        """From the body."""
        r = _Reader(body)
        msg = cls(r.cstr(), r.cstr())
        r.end()
        return msg

    def encode(self) -> bytes:
        """With tag and length."""
        return _msg(b"S", _cstr(self.name) + _cstr(self.value))


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    """The process id and secret a client needs to cancel its query."""

    TAG = ord("K")
    process_id: int
    secret_key: int

    @classmethod
    def decode(cls, body: bytes) -> BackendKeyData:
        """From the body (protocol 3.0: a 4-byte key)."""
        r = _Reader(body)
        msg = cls(r.i32(), r.i32())
        r.end()
        return msg

    def encode(self) -> bytes:
        """With tag and length."""
        return _msg(b"K", _I32.pack(self.process_id) + _I32.pack(self.secret_key))


@dataclass(frozen=True, slots=True)
class Authentication:
    """An Authentication* request; `code` 0 Ok, 3 cleartext, 5 md5, 10 SASL, 11 SASLContinue, 12 SASLFinal."""

    TAG = ord("R")
    code: int
    data: bytes

    @classmethod
    def decode(cls, body: bytes) -> Authentication:
        """From the body."""
        r = _Reader(body)
        return cls(r.i32(), body[4:])

    def encode(self) -> bytes:
        """With tag and length."""
        return _msg(b"R", _I32.pack(self.code) + self.data)

    def mechanisms(self) -> list[str]:
        """The SASL mechanisms offered (code 10)."""
        return [m.decode("utf-8", "replace") for m in self.data.split(b"\0") if m]


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    """The backend is idle; status 'I' idle, 'T' in a transaction block, 'E' in a failed one."""

    TAG = ord("Z")
    status: str

    @classmethod
    def decode(cls, body: bytes) -> ReadyForQuery:
        """From the body."""
        if len(body) != 1:
            raise ProtocolError("bad ReadyForQuery")
        return cls(chr(body[0]))

    def encode(self) -> bytes:
        """With tag and length."""
        return _msg(b"Z", self.status.encode("ascii"))


@dataclass(frozen=True, slots=True)
class CommandComplete:
    """A statement finished; the tag carries the row count ('SELECT 3', 'INSERT 0 1', 'COPY 10')."""

    TAG = ord("C")
    tag: str

    @classmethod
    def decode(cls, body: bytes) -> CommandComplete:
        """From the body."""
        return cls(body.rstrip(b"\0").decode("utf-8", "replace"))

    @property
    def rows(self) -> int | None:
        """The row count of the tag, if it has one."""
        last = self.tag.rpartition(" ")[2]
        return int(last) if last.isdigit() else None


# --- Encoders for what the gateway itself says ------------------------------------------------------


def error_response(severity: str, sqlstate: str, message: str, *, detail: str = "", notice: bool = False) -> bytes:
    """An ErrorResponse (or NoticeResponse) with severity, SQLSTATE and message; text is UTF-8."""
    body = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(sqlstate) + b"M" + _cstr(message)
    if detail:
        body += b"D" + _cstr(detail)
    return _msg(b"N" if notice else b"E", body + b"\0")


def notice_response(message: str, *, sqlstate: str = "01000", severity: str = "WARNING") -> bytes:
    """A NoticeResponse (may be sent at any time, even during COPY)."""
    return error_response(severity, sqlstate, message, notice=True)


def ready_for_query(status: str) -> bytes:
    """ReadyForQuery with a transaction status."""
    return _msg(b"Z", status.encode("ascii"))


AUTHENTICATION_OK = Authentication(0, b"").encode()
AUTHENTICATION_CLEARTEXT_PASSWORD = Authentication(3, b"").encode()
SSL_ACCEPTED = b"S"
SSL_REFUSED = b"N"
SYNC = _msg(b"S", b"")
TERMINATE = _msg(b"X", b"")


def password_message(password: str) -> bytes:
    """PasswordMessage with a cleartext (or md5-hashed) password."""
    return _msg(b"p", _cstr(password))


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    """SASLInitialResponse."""
    return _msg(b"p", _cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    """SASLResponse."""
    return _msg(b"p", data)


def negotiate_protocol_version(minor: int, unsupported: list[str]) -> bytes:
    """NegotiateProtocolVersion: the newest 3.x minor we speak and the `_pq_.` options we ignore."""
    return _msg(b"v", _I32.pack(PROTOCOL_3_0 | minor) + _I32.pack(len(unsupported)) + b"".join(map(_cstr, unsupported)))


FRONTEND_DECODERS: Mapping[int, Callable[[bytes], object]] = {
    Query.TAG: Query.decode,
    Parse.TAG: Parse.decode,
    Bind.TAG: Bind.decode,
    Execute.TAG: Execute.decode,
    Close.TAG: Close.decode,
    PasswordMessage.TAG: PasswordMessage.decode,
}
BACKEND_DECODERS: Mapping[int, Callable[[bytes], object]] = {
    ErrorResponse.TAG: ErrorResponse.decode,
    ParameterStatus.TAG: ParameterStatus.decode,
    BackendKeyData.TAG: BackendKeyData.decode,
    Authentication.TAG: Authentication.decode,
    ReadyForQuery.TAG: ReadyForQuery.decode,
    CommandComplete.TAG: CommandComplete.decode,
}
