"""Log in to the upstream Postgres as the grant's login: allowlisted startup packet, TLS, SCRAM/md5/trust."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import Login, Target
from gateway.pg import encodings
from gateway.pg.codec import Framer, ProtocolError
from gateway.pg.messages import (
    PROTOCOL_3_0,
    Authentication,
    BackendKeyData,
    CancelRequest,
    ErrorResponse,
    ParameterStatus,
    ReadyForQuery,
    SSLRequest,
    StartupMessage,
    password_message,
    sasl_initial_response,
    sasl_response,
)
from gateway.pg.pipe import Pipe
from gateway.pg.scram import MECHANISM, AuthFailed, ScramClient, md5_password
from gateway.pg.tls import upstream_context

# Client settings that only change how values are formatted, each with a shape it must have to pass through.
# Everything else the client sends (options, search_path, role, session_authorization, ...) is dropped:
# `options=-c role=...` in a startup packet is a privilege change the parser would never see.
_PASSTHROUGH: Mapping[str, re.Pattern[str]] = {
    "DateStyle": re.compile(r"[A-Za-z, ]{1,32}"),
    "TimeZone": re.compile(r"[A-Za-z0-9_/+\-:.]{1,64}"),
    "extra_float_digits": re.compile(r"-?[0-3]"),
    "IntervalStyle": re.compile(r"[a-z_]{1,32}"),
}


class UpstreamError(Exception):
    """The upstream could not be reached or refused the login; str() is safe to show the client."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """A logged-in upstream connection, ready for queries; the relay takes over `pipe.transport`."""

    pipe: Pipe
    parameters: tuple[ParameterStatus, ...]
    key: BackendKeyData | None
    status: str
    leftover: bytes


def startup_parameters(target: Target, login: Login, *, application_name: str, read_only: bool,
                       client: Mapping[str, str]) -> dict[str, str]:  # fmt: skip
    """The upstream startup packet, rebuilt from scratch: nothing from the client but sane formatting GUCs."""
    # client_encoding and standard_conforming_strings decide where a string literal ends; pinned here (so a
    # RESET returns to them), they keep the server's idea of the statement the same as the inspector's. The
    # client's encoding is kept when the gateway allows it (the listener refused the others), spelled as
    # PostgreSQL names it; UTF8 when it names none.
    wanted = _get_ci(client, "client_encoding")
    encoding = (encodings.canonical(wanted) if wanted is not None and encodings.codec(wanted) else None) or "UTF8"
    params = {"user": login.user, "database": target.database, "application_name": application_name,
              "client_encoding": encoding, "standard_conforming_strings": "on"}  # fmt: skip
    for name, shape in _PASSTHROUGH.items():
        value = _get_ci(client, name)
        if value is not None and shape.fullmatch(value):
            params[name] = value
    if read_only:
        # Built here, never from the client. The SELECT-only role is the real wall; this makes writes fail early.
        params["options"] = "-c default_transaction_read_only=on"
    return params


def _get_ci(params: Mapping[str, str], name: str) -> str | None:
    low = name.lower()
    for k, v in params.items():
        if k.lower() == low:
            return v
    return None


async def connect(target: Target, login: Login, params: Mapping[str, str], *, connect_timeout: float) -> Upstream:
    """Connect, negotiate TLS per `target.tls`, authenticate; UpstreamError on any failure."""
    try:
        async with asyncio.timeout(connect_timeout):
            return await _connect(target, login, params)
    except TimeoutError:
        raise UpstreamError(f"upstream {target.name} did not answer within {connect_timeout:g} s") from None
    except (OSError, ConnectionError) as exc:
        raise UpstreamError(f"cannot reach upstream {target.name}: {exc.__class__.__name__}") from None
    except ProtocolError as exc:
        raise UpstreamError(f"upstream {target.name} broke the protocol: {exc}") from None
    except AuthFailed as exc:
        raise UpstreamError(f"upstream {target.name} login failed: {exc}") from None


async def _connect(target: Target, login: Login, params: Mapping[str, str]) -> Upstream:
    loop = asyncio.get_running_loop()
    _, pipe = await loop.create_connection(Pipe, target.address.host, target.address.port)
    try:
        return await _handshake(pipe, target, login, params)
    except BaseException:
        pipe.close()
        raise


async def _handshake(pipe: Pipe, target: Target, login: Login, params: Mapping[str, str]) -> Upstream:
    ctx = upstream_context(target)
    if ctx is not None:
        pipe.write(SSLRequest().encode())
        answer = await pipe.read()
        if answer[:1] != b"S":
            raise UpstreamError(f"upstream {target.name} refused TLS (target.tls = {target.tls})")
        if len(answer) > 1 or pipe.buffered:
            # Bytes after 'S' were not protected by TLS: a man in the middle injected them (CVE-2021-23214).
            raise UpstreamError(f"upstream {target.name} sent unencrypted data after accepting TLS")
        hostname = target.address.host if target.tls == "verify-full" else None
        await pipe.start_tls(ctx, server_side=False, server_hostname=hostname)
    pipe.write(StartupMessage(PROTOCOL_3_0, dict(params)).encode())
    auth = _Auth(login, tls=ctx is not None)
    framer = Framer(name="upstream message")
    parameters: list[ParameterStatus] = []
    key: BackendKeyData | None = None
    while True:
        chunk, frames = framer.feed(await pipe.read())
        for tag, start, end in frames:
            body = chunk[start + 5 : end]
            if tag == Authentication.TAG:
                reply = auth.on_request(Authentication.decode(body))
                if reply:
                    pipe.write(reply)
            elif tag == ErrorResponse.TAG:
                err = ErrorResponse.decode(body)
                raise UpstreamError(f"upstream {target.name} refused the login: {err.message} ({err.sqlstate})")
            elif tag == ParameterStatus.TAG:
                parameters.append(ParameterStatus.decode(body))
            elif tag == BackendKeyData.TAG:
                key = BackendKeyData.decode(body)
            elif tag == ReadyForQuery.TAG:
                if not auth.done:
                    raise UpstreamError(f"upstream {target.name} skipped authentication")
                leftover = chunk[end:] + framer.take_rest()
                return Upstream(pipe, tuple(parameters), key, ReadyForQuery.decode(body).status, leftover)
            # NoticeResponse and NegotiateProtocolVersion during startup: nothing to do.


class _Auth:
    """Answers the upstream's Authentication requests with the login's secret (revealed only here)."""

    def __init__(self, login: Login, *, tls: bool) -> None:
        self.login = login
        self.tls = tls
        self.done = False
        self._scram: ScramClient | None = None
        self._scram_verified = False

    def _password(self) -> str:
        if self.login.password is None:
            raise AuthFailed(f"the upstream asks for a password and login {self.login.user!r} has none configured")
        return self.login.password.reveal()

    def on_request(self, req: Authentication) -> bytes | None:
        """The reply to one Authentication message (None when there is nothing to send)."""
        if req.code == 0:
            if self._scram is not None and not self._scram_verified:
                # AuthenticationOk before SASLFinal: a fake server trying to skip mutual authentication.
                raise AuthFailed("the server ended SCRAM without proving it knows the password")
            self.done = True
            return None
        if req.code == 3:
            return password_message(self._password())
        if req.code == 5:
            return password_message(md5_password(self.login.user, self._password(), req.data[:4]))
        if req.code == 10:
            if MECHANISM not in req.mechanisms():
                raise AuthFailed(f"the server offers {req.mechanisms()}, not {MECHANISM}")
            self._scram = ScramClient(self._password())
            return sasl_initial_response(MECHANISM, self._scram.client_first())
        if req.code == 11 and self._scram is not None:
            return sasl_response(self._scram.client_final(req.data))
        if req.code == 12 and self._scram is not None:
            self._scram.verify(req.data)
            self._scram_verified = True
            return None
        raise AuthFailed(f"unsupported authentication request {req.code}")


async def send_cancel(target: Target, key: BackendKeyData, *, limit: float = 5.0) -> None:
    """Cancel the running query of the upstream backend `key` (a fresh connection; the server never answers)."""
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_connection(target.address.host, target.address.port)
            try:
                writer.write(CancelRequest(key.process_id, key.secret_key).encode())
                # The server closes once it has signalled the backend: waiting orders the cancel before what follows.
                await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        pass
