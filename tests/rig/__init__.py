"""Test rig: throwaway PostgreSQL clusters and OpenSSH servers on loopback.

The servers are product code (``gateway.sandbox``, also used by `gateway demo`); this package keeps the
names the tests use. Modules: ``tests.rig.postgres`` (PgCluster), ``tests.rig.sshd`` (SshServer),
``tests.rig.ports`` (free_port).
"""

from __future__ import annotations

import os

import pytest

from gateway.sandbox.procs import SandboxStartError as RigStartError
from gateway.sandbox.procs import SandboxUnavailable as RigUnavailable
from gateway.sandbox.procs import descendants, ensure_user, is_root, kill_pids, pid_alive

__all__ = [
    "RigStartError", "RigUnavailable", "descendants", "ensure_user", "is_root", "kill_pids", "needs", "pid_alive",
]  # fmt: skip


def needs(ok: bool, why: str) -> None:
    """Skip a test whose machine lacks what it needs, on a developer's machine; in CI (CI set), fail instead.

    CI runs as root with everything scripts/test installs: a missing piece there is a broken run, and a
    silent skip would pass a test that never ran.
    """
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: this must run here)")
    pytest.skip(why)
