"""Test rig: throwaway PostgreSQL clusters and OpenSSH servers on loopback.

The servers are product code (``gateway.sandbox``, also used by `gateway demo`); this package keeps the
names the tests use. Modules: ``tests.rig.postgres`` (PgCluster), ``tests.rig.sshd`` (SshServer),
``tests.rig.ports`` (free_port).
"""

from __future__ import annotations

from gateway.sandbox.procs import SandboxStartError as RigStartError
from gateway.sandbox.procs import SandboxUnavailable as RigUnavailable
from gateway.sandbox.procs import descendants, ensure_user, is_root, kill_pids, pid_alive

__all__ = ["RigStartError", "RigUnavailable", "descendants", "ensure_user", "is_root", "kill_pids", "pid_alive"]
