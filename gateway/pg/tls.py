"""TLS contexts: the listener's server context (self-signed cert made when missing) and upstream client contexts."""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.config import Target
from gateway.keyfiles import ensure_tls_cert


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context for the Postgres listener; makes a self-signed pair first when none exists."""
    ensure_tls_cert(cert, key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    # Postgres needs no ALPN for the SSLRequest flow; session tickets would outlive a revoked grant's socket.
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def upstream_context(target: Target) -> ssl.SSLContext | None:
    """The client context for `target.tls`: None (disable), encryption only (require), or verified (verify-full)."""
    if target.tls == "disable":
        return None
    if target.tls == "require":
        # libpq's sslmode=require: encrypted, not authenticated. verify-full is the mode to use in production.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file else None)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
