"""The gateway's own SSH login to a target: its key for the scope's login, the target's pinned host key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from gateway.config import Login, Target

# AES-GCM first: asyncssh runs it through OpenSSL's AEAD in one call per packet (~4.9 GB/s here).
# chacha20-poly1305 takes ChaCha20 and Poly1305 passes plus Python glue per packet (~1.4 GB/s), but a
# client without AES-GCM (or one configured for chacha20 only) must not be locked out, so the listener
# offers it too. The client's order decides, and stock OpenSSH puts chacha20 first: it gets chacha20
# (its cost, measured: docs/benchmarks.md, SSH). A client that prefers AES-GCM (`-c aes128-gcm@openssh.com`,
# PuTTY, most libraries) gets AES-GCM. No CTR/CBC on the listener: they need a separate MAC pass.
# As a client, to the target, the gateway chooses: AES-GCM first, then chacha20, CTR last.
SERVER_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com")
CLIENT_CIPHERS = (*SERVER_CIPHERS, "aes128-ctr", "aes256-ctr")
WINDOW = 8 * 1024 * 1024
MAX_PACKET = 256 * 1024
CONNECT_TIMEOUT = 10.0


class UpstreamLogin(Protocol):
    """What a login to a target needs: a live session, or a surviving replica ending a lost one's leftovers."""

    @property
    def target(self) -> Target: ...

    @property
    def login(self) -> Login: ...


_KEYS: dict[Path, tuple[tuple[int, int, int], Sequence[asyncssh.SSHKeyPair]]] = {}


def login_keys(path: Path) -> Sequence[asyncssh.SSHKeyPair]:
    """The login's key, parsed once per file version (not once per session: set-up time and ~1.5 KiB each)."""
    st = path.stat()
    version = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _KEYS.get(path)
    if cached is None or cached[0] != version:
        cached = _KEYS[path] = (version, asyncssh.load_keypairs([str(path)]))
    return cached[1]


class UpstreamError(Exception):
    """The upstream login failed; str() is safe to show the engineer."""


def tuning(*, server: bool) -> dict[str, Any]:
    """Connection options of either side of the relay: fast ciphers, big windows, raw bytes."""
    return {"encryption_algs": SERVER_CIPHERS if server else CLIENT_CIPHERS, "window": WINDOW,
            "max_pktsize": MAX_PACKET, "encoding": None, "compression_algs": None}  # fmt: skip


async def connect_upstream(session: UpstreamLogin, *, client_factory: Callable[[], asyncssh.SSHClient] | None = None,
                           limit: float = CONNECT_TIMEOUT) -> asyncssh.SSHClientConnection:  # fmt: skip
    """Log in to the session's target as the scope's login (credential injection), host key pinned."""
    target, login = session.target, session.login
    try:
        pinned = asyncssh.import_public_key(target.host_key)
    except (asyncssh.KeyImportError, ValueError):
        raise UpstreamError(f"target {target.name} has an unreadable host_key in the configuration") from None
    if login.key_file is None:
        raise UpstreamError(f"target {target.name} has no key for login {login.user}")
    try:
        keys = login_keys(login.key_file)
    except (OSError, asyncssh.KeyImportError, ValueError):
        raise UpstreamError(f"target {target.name}: the key for login {login.user} cannot be read") from None
    options = tuning(server=False)
    options.pop("encoding")
    try:
        return await asyncio.wait_for(
            asyncssh.connect(
                target.address.host,
                target.address.port,
                username=login.user,
                client_factory=client_factory,
                client_keys=keys,
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
