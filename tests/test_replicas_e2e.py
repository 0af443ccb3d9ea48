"""Two real `gateway run` processes on one real PostgreSQL store: a psql session held by replica B ends when
its grant is revoked through replica A's API; the time from the API call to psql's exit is measured."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from gateway.api.auth import hash_api_key, new_api_key
from tests.pg.conftest import POLICY
from tests.rig.ports import free_ports
from tests.rig.postgres import PgCluster
from tests.storekit import Backend

pytestmark = pytest.mark.slow
TRIES = 10


def _config(home: Path, shared: Path, url: str, node: str, cluster: PgCluster, key: str) -> tuple[Path, int, int]:
    ssh, pg, http = free_ports(3)
    home.mkdir(parents=True)
    text = f"""
[listen]
ssh = "127.0.0.1:{ssh}"
postgres = "127.0.0.1:{pg}"
http = "127.0.0.1:{http}"
[store]
url = "{url}"
node = "{node}"
heartbeat = 0.5
lost_after = 3
[paths]
keys = "{shared}/keys"
policies = "{shared}/policies"
recordings = "{shared}/recordings"
[postgres]
tls_cert = "{home}/tls.crt"
tls_key = "{home}/tls.key"
[ssh]
host_key = "{home}/ssh_host_ed25519"
[targets.orders]
kind = "postgres"
address = "{cluster.host}:{cluster.port}"
database = "orders"
[targets.orders.logins]
read = {{ user = "app_ro", password_env = "GW_E2E_RO" }}
[users.admin]
api_key_sha256 = "{hash_api_key(key)}"
groups = ["admins"]
"""
    (home / "gateway.toml").write_text(text)
    return home / "gateway.toml", pg, http


def _wait_healthy(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gateway run exited {proc.returncode}: {proc.communicate()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail("gateway run did not come up")


async def test_revoke_on_a_ends_psql_on_b(pg_cluster: PgCluster, tmp_path: Path) -> None:
    backend = Backend("postgresql", tmp_path, pg_cluster)
    shared = tmp_path / "shared"
    (shared / "policies").mkdir(parents=True)
    (shared / "policies" / "orders.yaml").write_text(POLICY)
    key = new_api_key()
    cfg_a, _, http_a = _config(tmp_path / "a", shared, backend.url, "gw-a", pg_cluster, key)
    cfg_b, pg_b, http_b = _config(tmp_path / "b", shared, backend.url, "gw-b", pg_cluster, key)
    env = {**os.environ, "GW_E2E_RO": pg_cluster.passwords["app_ro"]}
    gateway = [sys.executable, "-m", "gateway"]
    # A first: it makes the shared signing key; B starts on the same key
    procs = [subprocess.Popen([*gateway, "--config", str(cfg_a), "run"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)]  # fmt: skip
    latencies: list[float] = []
    try:
        _wait_healthy(http_a, procs[0])
        procs.append(subprocess.Popen([*gateway, "--config", str(cfg_b), "run"], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
        _wait_healthy(http_b, procs[1])
        db = await asyncpg.connect(backend.url)
        for i in range(TRIES):
            out = subprocess.run(
                [*gateway, "--config", str(cfg_a), "grant", "--user", "alice", "--target", "orders", "--scope",
                 "read", "--ttl", "10m", "--reason", f"INC-{i}", "--json"],
                env=env, capture_output=True, text=True, timeout=30, check=True,
            ).stdout  # fmt: skip
            issued = json.loads(out)
            token, gid = issued["token"], issued["grant"]
            penv = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGPASSWORD": token}
            conninfo = f"host=127.0.0.1 port={pg_b} user=alice dbname=orders sslmode=require"
            psql = subprocess.Popen([pg_cluster.psql_bin, "-X", "-c", "SELECT pg_sleep(60)", conninfo], env=penv,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
            for _ in range(300):
                n = await db.fetchval("SELECT count(*) FROM sessions WHERE grant_id=$1 AND ended_at IS NULL", gid)
                if n == 1:
                    break
                time.sleep(0.05)
            else:
                psql.kill()
                pytest.fail(f"psql did not get a session through B: {psql.communicate()}")
            assert await db.fetchval("SELECT node FROM sessions WHERE grant_id=$1", gid) == "gw-b"
            time.sleep(0.3)  # the statement is running upstream
            req = urllib.request.Request(
                f"http://127.0.0.1:{http_a}/v1/grants/{gid}/revoke", method="POST",
                data=json.dumps({"reason": "e2e"}).encode(),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )  # fmt: skip
            t0 = time.monotonic()
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
            psql.wait(timeout=10)
            latencies.append(time.monotonic() - t0)
            assert psql.returncode != 0
        nodes = {r[0] for r in await db.fetch("SELECT DISTINCT node FROM audit")}
        assert {"gw-a", "gw-b"} <= nodes  # one chain, both replicas writing
        await db.close()
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    verify = subprocess.run([*gateway, "--config", str(cfg_b), "audit", "verify"], env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert verify.returncode == 0 and "audit chain intact" in verify.stdout, verify.stdout + verify.stderr
    print(f"cross-replica revoke -> psql exit: p50 {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s")
    assert max(latencies) < 1.0, latencies
