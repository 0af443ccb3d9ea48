"""The test rig works with real clients: psql, asyncpg, psycopg, ssh and asyncssh."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import asyncpg
import asyncssh
import psycopg
import pytest

from tests.rig import descendants, pid_alive
from tests.rig.postgres import SAMPLE_COUNTS, PgCluster, PsqlError
from tests.rig.sshd import HELLO_TEXT, SshServer


def _asyncssh_options(server: SshServer, known_hosts: asyncssh.SSHKnownHosts) -> dict[str, Any]:
    """asyncssh.connect arguments that use only the rig's key and pin, never ~/.ssh or an agent."""
    return {
        "host": server.host,
        "port": server.port,
        "username": server.user,
        "client_keys": [str(server.client_key_path)],
        "known_hosts": known_hosts,
        "config": None,
        "agent_path": None,
    }


# ---- PostgreSQL --------------------------------------------------------------------------------------


def test_psql_app_ro_can_select_but_not_insert(pg_cluster: PgCluster) -> None:
    """app_ro reads every table; its INSERT is refused by the server."""
    counts = pg_cluster.psql(
        "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders), (SELECT count(*) FROM order_items)",
        user="app_ro",
    )
    assert counts.strip() == "|".join(str(SAMPLE_COUNTS[t]) for t in ("customers", "orders", "order_items"))
    with pytest.raises(PsqlError) as err:
        pg_cluster.psql("INSERT INTO orders (customer_id, amount, status) VALUES (1, 1, 'paid')", user="app_ro")
    assert "permission denied for table orders" in err.value.stderr


def test_passwords_are_scram_and_checked(pg_cluster: PgCluster) -> None:
    """Every role has a SCRAM verifier, and a wrong password is refused."""
    rows = pg_cluster.psql(
        "SELECT rolname, rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolcanlogin ORDER BY 1",
        db="postgres",
    )
    assert rows.split() == ["app_admin|t", "app_ro|t", "app_rw|t", "postgres|t"]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=pg_cluster.host, port=pg_cluster.port, user="app_ro", password="wrong", dbname="orders"
        ).close()


async def test_asyncpg_app_rw_can_insert(pg_cluster: PgCluster) -> None:
    """app_rw inserts through asyncpg (identity sequence included); rolled back to keep data stable."""
    conn = await asyncpg.connect(pg_cluster.dsn("app_rw"))
    try:
        tx = conn.transaction()
        await tx.start()
        new_id = await conn.fetchval(
            "INSERT INTO orders (customer_id, amount, status) VALUES ($1, $2, 'pending') RETURNING id", 1, 9
        )
        assert new_id > SAMPLE_COUNTS["orders"]
        assert await conn.fetchval("SELECT count(*) FROM orders") == SAMPLE_COUNTS["orders"] + 1
        await tx.rollback()
        assert await conn.fetchval("SELECT current_user") == "app_rw"
    finally:
        await conn.close()


async def test_asyncpg_connect_kwargs_app_ro_is_read_only(pg_cluster: PgCluster) -> None:
    """connect_kwargs() works with asyncpg; app_ro's write is refused with SQLSTATE 42501."""
    conn = await asyncpg.connect(**pg_cluster.connect_kwargs("app_ro"))
    try:
        assert await conn.fetchval("SELECT count(*) FROM customers") == SAMPLE_COUNTS["customers"]
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM customers")
    finally:
        await conn.close()


def test_psycopg_connects_as_admin(pg_cluster: PgCluster) -> None:
    """psycopg connects with the DSN; app_admin owns the sample tables."""
    with psycopg.connect(pg_cluster.dsn("app_admin")) as conn:
        owners = conn.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()
        assert owners == [("app_admin",)]
        row = conn.execute("SELECT current_user, current_database()").fetchone()
        assert row == ("app_admin", "orders")
    with psycopg.connect(pg_cluster.superuser_dsn()) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)


def test_pg_cluster_stop_leaves_nothing() -> None:
    """stop() ends the postmaster and its backends and removes the temp dir."""
    cluster = PgCluster().start()
    base = cluster.base_dir
    assert base is not None
    pid = int((base / "data" / "postmaster.pid").read_text().split()[0])
    children = descendants(pid)
    assert children  # checkpointer, walwriter, ...
    cluster.stop()
    assert not base.exists()
    for p in (pid, *children):
        assert not pid_alive(p), f"postgres pid {p} survived stop()"
    with pytest.raises(OSError):
        socket.create_connection((cluster.host, cluster.port), timeout=1).close()


# ---- OpenSSH -----------------------------------------------------------------------------------------


def test_ssh_cli_runs_command(sshd_server: SshServer) -> None:
    """The stock ssh client logs in with the rig's client key and runs a command."""
    proc = subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-i", str(sshd_server.client_key_path), "-p", str(sshd_server.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            f"{sshd_server.user}@{sshd_server.host}", "echo hi",
        ],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"


async def test_asyncssh_with_pinned_host_key(sshd_server: SshServer) -> None:
    """asyncssh verifies the pinned host key, runs a command with accepted env, and reads via SFTP."""
    pinned = asyncssh.import_known_hosts(sshd_server.known_hosts_line)
    async with asyncssh.connect(**_asyncssh_options(sshd_server, pinned)) as conn:
        result = await conn.run(
            'cat hello.txt; printf "%s" "$GW_TEST_PROBE"', env={"GW_TEST_PROBE": "accepted"}, check=True
        )
        assert result.stdout == HELLO_TEXT + "accepted"
        async with conn.start_sftp_client() as sftp, sftp.open(str(sshd_server.hello_path)) as fh:
            assert await fh.read() == HELLO_TEXT


async def test_asyncssh_rejects_wrong_host_key(sshd_server: SshServer) -> None:
    """A pin on another key fails the handshake: the pin is what is checked."""
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    wrong = asyncssh.import_known_hosts(f"[{sshd_server.host}]:{sshd_server.port} {other}\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with asyncssh.connect(**_asyncssh_options(sshd_server, wrong)):
            pass


async def test_sshd_stop_kills_open_sessions() -> None:
    """stop() also ends session processes that outlive the listener, and removes the temp dir."""
    server = SshServer().start()
    base, pid = server.base_dir, server.pid
    assert base is not None and pid is not None
    pinned = asyncssh.import_known_hosts(server.known_hosts_line)
    conn = await asyncssh.connect(**_asyncssh_options(server, pinned))
    try:
        process = await conn.create_process("echo started; exec sleep 300")
        assert await process.stdout.readline() == "started\n"
        session_pids = descendants(pid)
        assert len(session_pids) >= 2  # privileged monitor, user's sshd, sleep
        server.stop()
        assert not base.exists()
        for p in (pid, *session_pids):
            assert not pid_alive(p), f"sshd pid {p} survived stop()"
    finally:
        server.stop()
        conn.abort()
        await conn.wait_closed()
