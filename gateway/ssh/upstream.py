"""The gateway's own SSH login to a target: its key for the scope's login, the target's pinned host key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import asyncssh

from gateway.config import Login, Target

# AES-GCM only first: asyncssh runs it through OpenSSL's AEAD in one call per packet (~4.9 GB/s here);
# chacha20-poly1305 takes two ChaCha20 passes plus Poly1305 in Python glue (~1.4 GB/s) and cost the
# relay ~30 % of its bulk throughput (bench/ssh.py). The client's preference order decides, and
# OpenSSH's is chacha20, aes-ctr (+ a separate MAC), then aes-gcm: so the listener offers AES-GCM only
# (every OpenSSH since 6.2, PuTTY since 0.76). As a client the gateway chooses, so CTR may stay last.
SERVER_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
CLIENT_CIPHERS = (*SERVER_CIPHERS, "aes128-ctr", "aes256-ctr")
WINDOW = 8 * 1024 * 1024
MAX_PACKET = 256 * 1024
CONNECT_TIMEOUT = 10.0


class Destination(Protocol):
    """Where the gateway logs in: a live session, or the lingering-access sweep's (target, login)."""

    @property
    def target(self) -> Target: ...
    @property
    def login(self) -> Login: ...


class UpstreamError(Exception):
    """The upstream login failed; str() is safe to show the engineer."""


def tuning(*, server: bool) -> dict[str, Any]:
    """Connection options of either side of the relay: fast ciphers, big windows, raw bytes."""
    return {"encryption_algs": SERVER_CIPHERS if server else CLIENT_CIPHERS, "window": WINDOW,
            "max_pktsize": MAX_PACKET, "encoding": None, "compression_algs": None}  # fmt: skip


async def connect_upstream(session: Destination, *, client_factory: Callable[[], asyncssh.SSHClient] | None = None,
                           limit: float = CONNECT_TIMEOUT) -> asyncssh.SSHClientConnection:  # fmt: skip
    """Log in to the session's target as the scope's login (credential injection), host key pinned."""
    target, login = session.target, session.login
    try:
        pinned = asyncssh.import_public_key(target.host_key)
    except (asyncssh.KeyImportError, ValueError):
        raise UpstreamError(f"target {target.name} has an unreadable host_key in the configuration") from None
    if login.key_file is None:
        raise UpstreamError(f"target {target.name} has no key for login {login.user}")
    options = tuning(server=False)
    options.pop("encoding")
    try:
        return await asyncio.wait_for(
            asyncssh.connect(
                target.address.host,
                target.address.port,
                username=login.user,
                client_factory=client_factory,
                client_keys=[str(login.key_file)],
                # Pinned, never trust-on-first-use and never known_hosts=None (which disables checking).
                known_hosts=([pinned], [], []),
                server_host_key_algs=pinned.sig_algorithms and [a.decode() for a in pinned.sig_algorithms],
                config=[],  # never read ~/.ssh/config of the account the gateway runs as
                agent_path=None,
                agent_forwarding=False,
                password_auth=False,
                kbdint_auth=False,
                gss_auth=False,
                x509_trusted_certs=None,
                connect_timeout=limit,
                login_timeout=limit,
                keepalive_interval=30,
                **options,
            ),
            limit,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise UpstreamError(f"host key of {target.name} does not match the pinned key; refusing to log in") from None
    except asyncssh.PermissionDenied:
        raise UpstreamError(f"{target.name} refused the gateway's login as {login.user}") from None
    except TimeoutError:
        raise UpstreamError(f"{target.name} did not answer within {limit:.0f} s") from None
    except asyncssh.Error as exc:
        raise UpstreamError(f"{target.name}: {exc.reason}") from None
    except OSError as exc:
        raise UpstreamError(f"cannot reach {target.name}: {exc.strerror or type(exc).__name__}") from None
