"""docker/compose.replicas.yml's topology with real processes and no container engine: Debian's HAProxy, run
with the shipped docker/haproxy.cfg (addresses rewritten to loopback), balancing real psql and ssh clients
over two real `gateway run` replicas on one PostgreSQL store; a revocation on one replica ends the sessions
that landed on the other. Also: the shipped compose file and replica config hang together."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import yaml

from gateway.config import load_config
from tests.replicas import ReplicaSet, exited, stop_client, wait_until
from tests.rig.ports import free_ports
from tests.rig.postgres import PgCluster
from tests.rig.sshd import SshServer
from tests.storekit import Backend

DOCKER = Path(__file__).resolve().parents[1] / "docker"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_config(replicas: ReplicaSet, ports: dict[str, int]) -> str:
    """docker/haproxy.cfg with the compose service names and ports replaced by this test's loopback ones."""
    text = (DOCKER / "haproxy.cfg").read_text()
    for kind, container_port in (("ssh", 2222), ("pg", 6432), ("http", 8080)):
        text = text.replace(f"bind :{container_port}", f"bind 127.0.0.1:{ports[kind]}")
        for name, r in replicas.replicas.items():
            text = text.replace(f"{name}:{container_port}", f"127.0.0.1:{getattr(r, kind)}")
    assert not re.search(r"gw-[ab]:\d", text) and "bind :" not in text, text
    return text.replace("log stdout format raw local0", "log stderr format raw local0")


@pytest.fixture
def balanced(
    pg_cluster: PgCluster, sshd_server: SshServer, tmp_path: Path
) -> Iterator[tuple[ReplicaSet, dict[str, int]]]:
    """gw-a and gw-b (one store, one SSH host key and TLS certificate) behind a running HAProxy."""
    if not Path(HAPROXY).exists():
        pytest.fail("haproxy not found: apt-get install haproxy (scripts/test installs it)", pytrace=False)
    backend = Backend("postgresql", tmp_path, pg_cluster)
    rs = ReplicaSet(tmp_path, backend.url, pg_cluster, sshd_server, shared_identity=True)
    rs.add("gw-a")
    rs.add("gw-b")
    ssh, pg, http = free_ports(3)
    ports = {"ssh": ssh, "pg": pg, "http": http}
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(rs, ports))
    check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proxy = None
    try:
        rs.start("gw-a")  # first: it makes the shared keys
        rs.start("gw-b")
        proxy = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                 stderr=(tmp_path / "haproxy.log").open("w"))  # fmt: skip
        for port in ports.values():
            wait_until(lambda p=port: _listening(p), 10, f"haproxy is not listening on {port}")
        time.sleep(2.5)  # the health checks have seen both replicas up
        yield rs, ports
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=10)
        rs.stop_all()
    rs.verify("gw-a")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def nodes_of(rs: ReplicaSet, grant: str, n: int) -> Counter[str]:
    """Which replicas hold the grant's live sessions (waits until there are `n`)."""
    db = await asyncpg.connect(rs.store_url)
    try:
        for _ in range(300):
            rows = await db.fetch("SELECT node FROM sessions WHERE grant_id=$1 AND ended_at IS NULL", grant)
            if len(rows) == n:
                return Counter(str(r["node"]) for r in rows)
            time.sleep(0.05)
    finally:
        await db.close()
    pytest.fail(f"{n} sessions of {grant} did not come up through HAProxy")


async def test_haproxy_balances_psql_and_ssh_and_a_revocation_on_one_replica_ends_the_other(
    balanced: tuple[ReplicaSet, dict[str, int]],
) -> None:
    rs, ports = balanced
    pg_token, pg_grant = rs.grant("gw-a", "orders", "read")
    ssh_token, ssh_grant = rs.grant("gw-b", "rig", "ops")
    clients = []
    try:
        for _ in range(4):  # one at a time, so round robin alternates
            clients.append(rs.psql("gw-a", pg_token, "SELECT pg_sleep(60)", port=ports["pg"]))
            await nodes_of(rs, pg_grant, len(clients))
        psqls = list(clients)
        pg_nodes = await nodes_of(rs, pg_grant, 4)
        for _ in range(2):
            clients.append(rs.ssh("gw-a", ssh_token, "sleep 60", port=ports["ssh"]))
            await nodes_of(rs, ssh_grant, len(clients) - 4)
        sshs = clients[4:]
        ssh_nodes = await nodes_of(rs, ssh_grant, 2)
        print(f"through HAProxy: psql sessions per replica {dict(pg_nodes)}, ssh {dict(ssh_nodes)}")
        assert pg_nodes == Counter({"gw-a": 2, "gw-b": 2}) and ssh_nodes == Counter({"gw-a": 1, "gw-b": 1})
        time.sleep(0.3)
        # Revoked through A's API (not the balancer's): B's sessions end as well as A's.
        t0 = time.monotonic()
        rs.api("gw-a", "POST", f"/v1/grants/{pg_grant}/revoke", {"reason": "haproxy e2e"})
        wait_until(lambda: all(exited(p) for p in psqls), 5, "a psql behind HAProxy did not end")
        t_pg = time.monotonic() - t0
        t0 = time.monotonic()
        rs.api("gw-b", "POST", f"/v1/grants/{ssh_grant}/revoke", {"reason": "haproxy e2e"})
        wait_until(lambda: all(exited(p) for p in sshs), 5, "an ssh behind HAProxy did not end")
        t_ssh = time.monotonic() - t0
        print(f"revoke on one replica -> every balanced session ended: psql {t_pg:.3f} s, ssh {t_ssh:.3f} s")
        assert t_pg < 1.0 and t_ssh < 1.0
        assert all(p.returncode != 0 for p in clients)
        # The API through the balancer reaches either replica and answers the same.
        seen = {rs.api_at(ports["http"], "GET", "/v1/grants/" + pg_grant)["state"] for _ in range(4)}
        assert seen == {"revoked"}
    finally:
        for p in clients:
            stop_client(p)


def test_compose_file_and_replica_config_hang_together(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((DOCKER / "compose.replicas.yml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "gw-a", "gw-b", "haproxy"}
    assert services["haproxy"]["ports"] == ["2222:2222", "6432:6432", "8080:8080"]
    for name in ("gw-a", "gw-b"):
        gw = services[name]
        assert gw["hostname"] == name and "shared:/shared" in gw["volumes"] and f"{name}:/data" in gw["volumes"]
    assert set(compose["volumes"]) == {"pgdata", "shared", "gw-a", "gw-b"}
    monkeypatch.setenv("PGPASSWORD", "x")
    cfg = load_config(DOCKER / "replica.toml", need_secrets=False)
    assert (
        cfg.shared_store and cfg.keys_dir == Path("/shared/keys") and cfg.recordings_dir == Path("/shared/recordings")
    )
    assert cfg.tls_cert.parent == cfg.ssh_host_key.parent == cfg.keys_dir  # one identity behind the balancer
    # nothing is written next to the read-only config file (/etc/gateway): every path is in a volume
    written = [cfg.keys_dir, cfg.recordings_dir, cfg.alerts_file, cfg.anchors.folder]
    assert all(p is not None and p.parts[1] in ("shared", "data") for p in written), written
    assert (cfg.listen_ssh.port, cfg.listen_postgres.port, cfg.listen_http.port) == (2222, 6432, 8080)
    proxy = (DOCKER / "haproxy.cfg").read_text()
    for port in (2222, 6432, 8080):
        assert f"bind :{port}" in proxy and f"gw-a:{port}" in proxy and f"gw-b:{port}" in proxy
