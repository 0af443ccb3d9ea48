"""End to end with the real clients: request, approve, `gateway psql` and `gateway ssh` through every listener,
then revoke: both sessions end within 1 s and the old token is refused.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.control.conftest import Running, cli_env, rig_gateway, rig_passwords, write_rig_config
from tests.rig.postgres import PgCluster
from tests.rig.sshd import HELLO_TEXT, SshServer

pytestmark = pytest.mark.slow


@pytest.fixture
async def full_gw(
    tmp_path: Path,
    api_keys: dict[str, str],
    pg_cluster: PgCluster,
    sshd_server: SshServer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Running]:
    """App(config) with every listener, its targets the rig's PostgreSQL and sshd."""
    rig_passwords(monkeypatch, pg_cluster)
    path = write_rig_config(tmp_path, api_keys, pg_cluster, sshd_server)
    async with rig_gateway(path, api_keys, pg_cluster, sshd_server) as gw:
        yield gw


_env = cli_env  # the name test_receipts imports


async def _cli(gw: Running, user: str, *argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *argv,
        env=_env(gw, user),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _done(proc: asyncio.subprocess.Process, timeout: float = 60) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def _live(gw: Running, grant: str) -> int:
    rows = await gw.ok("erin", "GET", "/v1/sessions", params={"grant": grant, "live": "true"})
    return len(rows["sessions"])


async def test_psql_and_ssh_then_revoke(full_gw: Running) -> None:
    gw = full_gw
    sshd: SshServer = gw.extra["sshd"]
    _, pg_grant, pg_token = await gw.approved_grant("alice", "bob", "orders-db", "read")
    _, ssh_grant, _ = await gw.approved_grant("alice", "bob", "web-1", "shell")

    code, out, err = await _done(
        await _cli(gw, "alice", "psql", "orders-db", "--", "-At", "-c", "select count(*) from customers")
    )
    assert code == 0, err
    assert out.strip() == "50"
    code, out, err = await _done(await _cli(gw, "alice", "ssh", "web-1", "--", "cat", str(sshd.hello_path)))
    assert code == 0, err
    assert out == HELLO_TEXT

    # two long sessions, then revoke both grants: each ends within 1 s
    psql = await _cli(gw, "alice", "psql", "orders-db", "--", "-At", "-c", "select pg_sleep(60)")
    ssh = await _cli(gw, "alice", "ssh", "web-1", "--", "sleep", "60")
    try:
        deadline = time.monotonic() + 30
        while (await _live(gw, pg_grant), await _live(gw, ssh_grant)) != (1, 1):
            assert time.monotonic() < deadline, "sessions did not start"
            await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await gw.ok("alice", "POST", f"/v1/grants/{pg_grant}/revoke", {"reason": "done"})
        await gw.ok("erin", "POST", f"/v1/grants/{ssh_grant}/revoke", {"reason": "incident over"})
        while (await _live(gw, pg_grant), await _live(gw, ssh_grant)) != (0, 0):
            assert time.monotonic() - t0 < 1.0, "revocation did not end the sessions within 1 s"
            await asyncio.sleep(0.05)
        for name, proc in (("psql", psql), ("ssh", ssh)):
            try:
                code, _, _ = await _done(proc, 10)
            except TimeoutError:
                raise AssertionError(f"{name} still running 10 s after its session was revoked") from None
            assert code != 0
    finally:
        for proc in (psql, ssh):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    ended = await gw.ok("erin", "GET", "/v1/sessions", params={"grant": pg_grant})
    assert "grant revoked: done" in ended["sessions"][0]["end_reason"]

    # new attempts are refused: by the CLI (no live grant) and by the gateway (the old token)
    code, _, err = await _done(await _cli(gw, "alice", "psql", "orders-db", "--", "-c", "select 1"))
    assert code != 0 and "no live grant" in err
    pg: PgCluster = gw.extra["pg"]
    port = gw.services.config.listen_postgres.port
    proc = await asyncio.create_subprocess_exec(
        "psql",
        f"host=127.0.0.1 port={port} user=alice dbname=orders-db sslmode=require",
        "-c",
        "select 1",
        env={**_env(gw, "alice"), "PGPASSWORD": pg_token, "PATH": f"{pg.bin_dir}:{os.environ['PATH']}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    code, _, err = await _done(proc, 30)
    assert code != 0 and "revoked" in err
