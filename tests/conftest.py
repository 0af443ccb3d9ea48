"""Shared pytest fixtures for the gateway test suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from tests.rig import RigUnavailable
from tests.rig.postgres import PgCluster
from tests.rig.sshd import SshServer

# =====================================================================================================
# Rig fixtures (tests/rig): real PostgreSQL and OpenSSH servers on 127.0.0.1, one of each per session,
# started only when a test asks for them and stopped at session end. Missing binaries FAIL the test
# (run scripts/test, which installs them); nothing here skips.
# =====================================================================================================

_Rig = TypeVar("_Rig", PgCluster, SshServer)


def _rig_or_fail(name: str, factory: Callable[[], _Rig]) -> _Rig:
    """Build a rig object; a missing binary fails the requesting test with the install hint."""
    try:
        return factory()
    except RigUnavailable as exc:
        error = str(exc)
    pytest.fail(f"{name}: {error}", pytrace=False)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """Session-wide throwaway PostgreSQL cluster with the ``orders`` database and app_ro/app_rw/app_admin."""
    cluster = _rig_or_fail("pg_cluster", PgCluster).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[SshServer]:
    """Session-wide throwaway OpenSSH server logging in ``gwops`` with ``client_key_path``."""
    server = _rig_or_fail("sshd_server", SshServer).start()
    try:
        yield server
    finally:
        server.stop()


# ======================================= end of rig fixtures =========================================
