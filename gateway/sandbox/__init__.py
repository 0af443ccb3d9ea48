"""Throwaway servers on loopback: a PostgreSQL cluster with sample data and an OpenSSH sshd.

`gateway demo` runs the gateway in front of them; the test suite (``tests/rig``) uses them as real upstreams.
Modules: ``gateway.sandbox.postgres`` (PgCluster), ``gateway.sandbox.sshd`` (SshServer) and
``gateway.sandbox.procs`` (users, ports, process trees).
"""

from __future__ import annotations

from gateway.sandbox.procs import (
    SandboxStartError,
    SandboxUnavailable,
    descendants,
    ensure_user,
    free_port,
    free_ports,
    is_root,
    kill_pids,
    pid_alive,
    port_in_use,
)

__all__ = [
    "SandboxStartError",
    "SandboxUnavailable",
    "descendants",
    "ensure_user",
    "free_port",
    "free_ports",
    "is_root",
    "kill_pids",
    "pid_alive",
    "port_in_use",
]
