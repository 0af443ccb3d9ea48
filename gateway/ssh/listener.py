"""The SSH front end: asyncssh server, token authentication, and the per-connection session flow.

Flow of one connection, top to bottom (``_Gate``):

    username "TARGET" or "LOGIN@TARGET"                       begin_auth
    token by keyboard-interactive ("Approval token:") or password
      -> a session task: async with access.session(...)    _live (identity = token sub)
      -> once the token and grant check out, the upstream login with the gateway's key, host key pinned,
         runs while the session is registered; a connection not admitted closes it before any channel
      -> SshConnection: the session's sides and recordings
    session channels -> ChannelRelay (checked, relayed, recorded)   session_requested
    forwarding / agent / X11 / tun requests: refused unless the scope allows, audited either way
    connection lost, kill, revoke, expiry -> the block's exit: SshConnection.close (TERM/KILL the remote
      commands, close channels and connections, detached sweep), seal recordings, session.end
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import asyncssh

from gateway.access import AccessDenied
from gateway.config import Login, Target
from gateway.keyfiles import ensure_ssh_host_key
from gateway.policy import ScopePolicy
from gateway.recording import schema
from gateway.services import Services
from gateway.sessions import SessionEnded
from gateway.ssh import chacha, packets
from gateway.ssh.asyncssh_compat import AuditedChannel, check_internals, cork, install_fast_saslprep
from gateway.ssh.connection import SshConnection
from gateway.ssh.forwarding import TcpRelay
from gateway.ssh.relay import ChannelRelay
from gateway.ssh.upstream import MAX_PACKET, WINDOW, UpstreamError, connect_upstream, tuning

log = logging.getLogger(__name__)

TOKEN_PROMPT = "Approval token: "  # noqa: S105 - a prompt, not a password
MAX_TOKEN_CHARS = 16384


def parse_username(username: str) -> tuple[str, str | None]:
    """'TARGET' -> (TARGET, None); 'LOGIN@TARGET' -> (TARGET, LOGIN) (the last @ separates)."""
    login, sep, target = username.rpartition("@")
    return (target, login) if sep else (username, None)


def _refused(kind: str) -> asyncssh.ChannelOpenError:
    """The channel-open error for a refused forwarding request."""
    return asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"{kind} is not allowed in this scope")


class _Gate(asyncssh.SSHServer):
    """Authentication and connection-level requests of one client connection."""

    conn: asyncssh.SSHServerConnection  # set in connection_made, before anything else

    def __init__(self, listener: SshListener) -> None:
        self.listener = listener
        self.services = listener.services
        self.client_addr = ""
        self.username = ""
        self.connection: SshConnection | None = None
        self._refusal: str | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Remember the peer; nothing is served before authentication completes (asyncssh enforces it)."""
        self.conn = conn
        cork(conn)
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.client_addr = f"{peer[0]}:{peer[1]}"
        self.listener._gates.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Tear the session down with the connection."""
        self.listener._gates.discard(self)
        if self.connection is not None:
            self.connection.client_lost(exc)

    # -- authentication ---------------------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        """Every user name needs a token."""
        self.username = username
        return True

    def password_auth_supported(self) -> bool:
        """The token as password: sshpass and SSH_ASKPASS answer "password:" prompts."""
        return True

    def kbdint_auth_supported(self) -> bool:
        """The token at an "Approval token:" prompt."""
        return True

    def public_key_auth_supported(self) -> bool:
        """Identity comes from the approval token only."""
        return False

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> Any:
        """One hidden prompt."""
        return "", "", "", ((TOKEN_PROMPT, False),)

    async def validate_kbdint_response(self, username: str, responses: Any) -> Any:
        """Admit with the token; a refusal is shown as a prompt-less round (OpenSSH prints its text)."""
        if self._refusal is not None:  # the answer to the round that showed the reason
            self._refusal = None
            return False
        token = responses[0] if len(responses) == 1 else ""
        refusal = await self._admit(token)
        if refusal is None:
            return True
        self._refusal = refusal
        return "", refusal, "", ()

    async def validate_password(self, username: str, password: str) -> bool:
        """Admit with the token; a refusal is shown as an auth banner (printed by OpenSSH on stderr)."""
        refusal = await self._admit(password)
        if refusal is None:
            return True
        if not self.conn.is_closed():
            self.conn.send_auth_banner(refusal + "\r\n")
        return False

    async def _admit(self, token: str) -> str | None:
        """Start the connection's session task; returns the refusal to show the engineer, or None once admitted."""
        if self.connection is not None:
            return None
        admitted: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.listener._spawn(self._live(token, admitted))
        return await admitted

    async def _live(self, token: str, admitted: asyncio.Future[str | None]) -> None:
        """The session's task: admission and the upstream login side by side, then wait for either side to go."""
        target, login = parse_username(self.username)
        refusal = "gateway: connection closed"
        watch = _UpstreamWatch()
        early: asyncio.Task[asyncssh.SSHClientConnection] | None = None

        def granted(tgt: Target, upstream_login: Login, policy: ScopePolicy) -> None:
            # The token and its grant check out: the login to the target (most of the set-up time) runs while
            # the session is registered and its start audited. Never earlier: an unauthenticated client or a
            # revoked grant must not cause logins on the target.
            nonlocal early
            if policy.ssh is not None:
                early = asyncio.ensure_future(connect_upstream(_Login(tgt, upstream_login), client_factory=watch))

        try:
            async with self.services.access.session(
                token=token.strip()[:MAX_TOKEN_CHARS], target=target, protocol="ssh", client_addr=self.client_addr,
                login=login, on_granted=granted,
            ) as session:  # fmt: skip
                if session.policy.ssh is None or early is None:
                    refusal = f"gateway: scope {session.scope!r} has no ssh settings"
                    raise SessionEnded("scope has no ssh policy")
                try:
                    upstream = await early
                except UpstreamError as exc:
                    await session.audit("ssh.upstream.failed", severity="warning", error=str(exc))
                    refusal = f"gateway: {exc}"
                    raise SessionEnded(f"upstream login failed: {exc}") from None
                early = None  # from here on the session's end closes the upstream (SshConnection.close)
                conn = SshConnection(session, self.conn, upstream)
                watch.owner = conn
                if self.conn.is_closed():  # the engineer gave up while we were logging in upstream
                    raise SessionEnded("client disconnected during login")
                self.connection = conn
                admitted.set_result(None)
                session.ending(await conn.lost)
        except AccessDenied as denied:
            refusal = f"gateway: {denied.reason}"
        finally:
            if early is not None:  # admitted no session: the login started for it goes, before any channel
                await _drop_upstream(early)
            if not admitted.done():
                admitted.set_result(refusal)

    # -- channels ---------------------------------------------------------------------------------

    def session_requested(self) -> Any:
        """A session channel with its own relay; agent and X11 requests on it are refused and audited."""
        if self.connection is None:
            return False
        chan = self.conn.create_server_channel(encoding=None, window=WINDOW, max_pktsize=MAX_PACKET)
        AuditedChannel.adopt(chan, self.connection.session)
        return chan, self.connection.new_channel()

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        """Local forwarding (-L, -D, -W): opened from the target's side when the scope allows it."""
        conn = self.connection
        if conn is None:
            raise _refused("port forwarding")
        policy = conn.session.policy.ssh
        ok = policy is not None and policy.local_forwarding
        self._audit_forward("direct-tcpip", ok, dest=f"{dest_host}:{dest_port}", origin=f"{orig_host}:{orig_port}")
        if not ok:
            raise _refused("local port forwarding")
        return TcpRelay(conn, dest_host, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        """Remote forwarding (-R): refused (listening on a production host is not relayed)."""
        self._audit_forward("tcpip-forward", False, listen=f"{listen_host}:{listen_port}")
        return False

    def unix_connection_requested(self, dest_path: str) -> Any:
        """Streamlocal forwarding: refused."""
        self._audit_forward("direct-streamlocal", False, path=dest_path)
        raise _refused("unix socket forwarding")

    def unix_server_requested(self, listen_path: str) -> bool:
        """Remote streamlocal forwarding: refused."""
        self._audit_forward("streamlocal-forward", False, path=listen_path)
        return False

    def tun_requested(self, unit: int | None) -> Any:
        """Layer-3 tunnels: refused."""
        self._audit_forward("tun", False, unit=unit)
        raise _refused("tunnelling")

    def tap_requested(self, unit: int | None) -> Any:
        """Layer-2 tunnels: refused."""
        self._audit_forward("tap", False, unit=unit)
        raise _refused("tunnelling")

    def _audit_forward(self, kind: str, allowed: bool, **data: Any) -> None:
        """Audit a forwarding request (and mark refusals in the recording)."""
        if self.connection is None:
            return
        s = self.connection.session
        s.audit_soon("ssh.forward", severity="info" if allowed else "warning", kind=kind, allowed=allowed, **data)
        if not allowed:
            what = f"{kind} {' '.join(str(v) for v in data.values())}"
            self.connection.recordings.marker(schema.blocked_marker(what))


@dataclass(frozen=True, slots=True)
class _Login:
    """The upstream login of a granted connection whose session is still being registered."""

    target: Target
    login: Login


async def _drop_upstream(early: asyncio.Task[asyncssh.SSHClientConnection]) -> None:
    """Stop a login started for a session that was not admitted, or close the connection it made."""
    early.cancel()  # still logging in: asyncssh aborts the half-open connection
    await asyncio.wait([early])
    if early.cancelled() or early.exception() is not None:
        return
    upstream = early.result()
    upstream.close()
    await upstream.wait_closed()


class _UpstreamWatch(asyncssh.SSHClient):
    """Tells the connection when the target drops the gateway's login."""

    def __init__(self) -> None:
        self.owner: SshConnection | None = None

    def __call__(self) -> _UpstreamWatch:
        """asyncssh's client_factory: this watcher is the one client object."""
        return self

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        """The gateway's login writes packets in batches too."""
        cork(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        """The target's side is gone."""
        if self.owner is not None:
            self.owner.upstream_lost(exc)


class SshListener:
    """The SSH front end: listens, authenticates by approval token, relays to targets."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._gates: set[_Gate] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # one per admitted (or admitting) connection

    async def start(self) -> None:
        """Listen on config.listen_ssh (port 0: any free port); make the host key on first start."""
        cfg = self.services.config
        ensure_ssh_host_key(cfg.ssh_host_key)
        for problem in check_internals():  # asyncssh still refuses (options below); only the audit record is lost
            log.error("asyncssh internals changed, agent/X11 requests may go unaudited: %s", problem)
        if not chacha.install():
            log.warning("asyncssh's cipher table changed: chacha20-poly1305 runs on asyncssh's own, slower shim")
        if not packets.install():
            log.warning("asyncssh's packet layer changed: it runs as asyncssh's own (slower): %s", packets.problems())
        if not install_fast_saslprep():
            log.warning("asyncssh's password handling changed: tokens go through its own (slower) SASLprep")
        self._acceptor = await asyncssh.create_server(
            lambda: _Gate(self), cfg.listen_ssh.host, cfg.listen_ssh.port,
            reuse_port=cfg.worker is not None,  # the workers of one gateway share the port
            server_host_keys=[str(cfg.ssh_host_key)],
            login_timeout=cfg.preauth_timeout,
            agent_forwarding=False,  # asyncssh's server default is True
            x11_forwarding=False,
            allow_pty=True,
            line_editor=False,
            keepalive_interval=60,
            **tuning(server=True),
        )  # fmt: skip

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._acceptor is None:
            raise RuntimeError("SshListener is not started")
        return int(self._acceptor.get_port())

    @property
    def connections(self) -> int:
        """Open client connections (authenticated or not)."""
        return len(self._gates)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop listening, end live sessions ('gateway shutting down') and drop every connection."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        # Live sessions end as shut down (through their blocks' exits), not as clients that left.
        await asyncio.gather(*(g.connection.session.kill("gateway shutting down") for g in list(self._gates)
                               if g.connection is not None), return_exceptions=True)  # fmt: skip
        for gate in list(self._gates):
            gate.conn.close()
        # Including sessions whose client just left: their end must be stored before the composition
        # root closes the store.
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


__all__ = ["ChannelRelay", "SshListener", "parse_username"]
