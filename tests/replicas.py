"""Several real `gateway run` processes on one PostgreSQL store, for the replica tests: configs, start, stop,
kill -9, grants issued the way `gateway grant` does, the HTTP API, and a look into the shared database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from gateway.api.auth import hash_api_key, new_api_key
from tests.pg.conftest import POLICY as PG_POLICY
from tests.rig.ports import free_ports
from tests.rig.postgres import PgCluster
from tests.rig.sshd import SshServer

GATEWAY = [sys.executable, "-m", "gateway"]
RO_ENV = "GW_E2E_RO"

SSH_POLICY = """
target: rig
scopes:
  ops:
    max_ttl: 1h
    ssh:
      detached: "{detached}"
"""


@dataclass
class Replica:
    """One replica's config and, while it runs, its process."""

    name: str
    config: Path
    ssh: int
    pg: int
    http: int
    proc: subprocess.Popen[str] | None = None
    log: Path = field(default_factory=Path)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class ReplicaSet:
    """Replicas sharing a keys folder, policies, recordings and one store; the upstreams are the rig's."""

    def __init__(
        self,
        tmp: Path,
        store_url: str,
        cluster: PgCluster,
        sshd: SshServer | None = None,
        *,
        detached: str = "off",
        lost_after: float = 3.0,
        shared_identity: bool = False,
    ) -> None:
        self.tmp = tmp
        self.store_url = store_url
        self.cluster = cluster
        self.sshd = sshd
        self.lost_after = lost_after
        # Behind a load balancer every replica shows the same SSH host key and TLS certificate.
        self.shared_identity = shared_identity
        self.keys = {who: new_api_key() for who in ("admin", "alice", "bob")}
        self.shared = tmp / "shared"
        (self.shared / "policies").mkdir(parents=True)
        (self.shared / "policies" / "orders.yaml").write_text(PG_POLICY)
        if sshd is not None:
            (self.shared / "policies" / "rig.yaml").write_text(SSH_POLICY.format(detached=detached))
        self.env = {**os.environ, RO_ENV: cluster.passwords["app_ro"]}
        self.replicas: dict[str, Replica] = {}

    def add(self, name: str) -> Replica:
        """Write replica `name`'s gateway.toml (free ports, its own node id and TLS/host key files)."""
        home = self.tmp / name
        home.mkdir(parents=True)
        ssh, pg, http = free_ports(3)
        ident = self.shared / "keys" if self.shared_identity else home
        text = f"""
[listen]
ssh = "127.0.0.1:{ssh}"
postgres = "127.0.0.1:{pg}"
http = "127.0.0.1:{http}"
[store]
url = "{self.store_url}"
node = "{name}"
heartbeat = {self.lost_after / 6:g}
lost_after = {self.lost_after:g}
[paths]
keys = "{self.shared}/keys"
policies = "{self.shared}/policies"
recordings = "{self.shared}/recordings"
[postgres]
tls_cert = "{ident}/tls.crt"
tls_key = "{ident}/tls.key"
[ssh]
host_key = "{ident}/ssh_host_ed25519"
[alerts]
file = "{home}/alerts.jsonl"
[targets.orders]
kind = "postgres"
address = "{self.cluster.host}:{self.cluster.port}"
database = "orders"
[targets.orders.logins]
read = {{ user = "app_ro", password_env = "{RO_ENV}" }}
[users.admin]
api_key_sha256 = "{hash_api_key(self.keys["admin"])}"
groups = ["admins"]
[users.alice]
api_key_sha256 = "{hash_api_key(self.keys["alice"])}"
groups = ["engineers"]
[users.bob]
api_key_sha256 = "{hash_api_key(self.keys["bob"])}"
groups = ["engineers"]
"""
        if self.sshd is not None:
            text += f"""
[targets.rig]
kind = "ssh"
address = "{self.sshd.host}:{self.sshd.port}"
host_key = "{self.sshd.host_key_line}"
[targets.rig.logins]
ops = {{ user = "{self.sshd.user}", key_file = "{self.sshd.client_key_path}" }}
"""
        (home / "gateway.toml").write_text(text)
        r = self.replicas[name] = Replica(name, home / "gateway.toml", ssh, pg, http, log=home / "run.log")
        return r

    def start(self, name: str) -> Replica:
        """Start `gateway run` for a replica and wait until its /healthz answers."""
        r = self.replicas[name]
        out = r.log.open("a")
        r.proc = subprocess.Popen([*GATEWAY, "--config", str(r.config), "run"], env=self.env, text=True,
                                  stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        out.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if r.proc.poll() is not None:
                pytest.fail(f"gateway run {name} exited {r.proc.returncode}: {r.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{r.http}/healthz", timeout=1):
                    return r
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"gateway run {name} did not come up: {r.log.read_text()[-3000:]}")

    def kill9(self, name: str) -> None:
        """SIGKILL a replica: no stop, no last heartbeat, no session end written."""
        r = self.replicas[name]
        assert r.proc is not None
        r.proc.send_signal(signal.SIGKILL)
        r.proc.wait(timeout=10)

    def stop_all(self) -> None:
        """SIGTERM every running replica (SIGKILL one that does not stop)."""
        running = [r.proc for r in self.replicas.values() if r.proc is not None and r.proc.poll() is None]
        for p in running:
            p.terminate()
        for p in running:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def cli(self, name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A `gateway` command against replica `name`'s config."""
        cmd = [*GATEWAY, "--config", str(self.replicas[name].config), *args]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def grant(self, name: str, target: str, scope: str, user: str = "alice", ttl: str = "10m") -> tuple[str, str]:
        """`gateway grant` through replica `name`'s config: (token, grant id)."""
        p = self.cli(name, "grant", "--user", user, "--target", target, "--scope", scope, "--ttl", ttl,
                     "--reason", "INC-1", "--json")  # fmt: skip
        assert p.returncode == 0, p.stderr
        issued = json.loads(p.stdout)
        return str(issued["token"]), str(issued["grant"])

    def api(self, name: str, method: str, path: str, body: dict[str, Any] | None = None, *, who: str = "admin") -> Any:
        """One API call to replica `name` as `who` (admin, alice or bob); the decoded JSON answer."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.replicas[name].http}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.keys[who]}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def api_at(self, port: int, method: str, path: str, who: str = "admin") -> Any:
        """One API call to any HTTP port (a load balancer's)."""
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     headers={"Authorization": f"Bearer {self.keys[who]}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def request_approved(self, asked: str, approved: str, target: str, scope: str) -> tuple[str, str]:
        """alice requests on one replica, bob approves on another, alice fetches the token: (token, grant id)."""
        req = self.api(asked, "POST", "/v1/requests", {"target": target, "scope": scope, "ttl": "10m",
                                                       "reason": "INC-7 replicas"}, who="alice")  # fmt: skip
        self.api(approved, "POST", f"/v1/requests/{req['id']}/approve", {"comment": "ok"}, who="bob")
        got = self.api(asked, "GET", f"/v1/requests/{req['id']}/token", who="alice")
        return str(got["token"]), str(got["grant"])

    def psql(self, name: str, token: str, sql: str, *, port: int | None = None) -> subprocess.Popen[str]:
        """A real psql through replica `name` (or any port: a load balancer) running `sql`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGPASSWORD": token}
        conninfo = f"host=127.0.0.1 port={port or self.replicas[name].pg} user=alice dbname=orders sslmode=require"
        return subprocess.Popen([self.cluster.psql_bin, "-X", "-c", sql, conninfo], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

    def ssh(self, name: str, token: str, command: str, *, port: int | None = None,
            stdout: IO[str] | int = subprocess.PIPE) -> subprocess.Popen[str]:  # fmt: skip
        """The stock OpenSSH client through replica `name` (or any port), sshpass answering the token prompt."""
        from tests.ssh.conftest import SSH_OPTS

        env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
        cmd = ["sshpass", "-P", "Approval token", "-p", token, "ssh", *SSH_OPTS,
               "-o", "PreferredAuthentications=keyboard-interactive", "-p", str(port or self.replicas[name].ssh),
               "rig@127.0.0.1", command]  # fmt: skip
        return subprocess.Popen(cmd, env=env, text=True, stdout=stdout, stderr=subprocess.PIPE)

    def verify(self, name: str) -> None:
        """`gateway audit verify` passes on the shared store."""
        p = self.cli(name, "audit", "verify")
        assert p.returncode == 0 and "audit chain intact" in p.stdout, p.stdout + p.stderr


def server_stop(cluster: PgCluster) -> None:
    """Stop a cluster's server, keeping its data (a store outage)."""
    cluster._run_server_cmd("pg_ctl", "-D", str(cluster.data_dir), "-m", "fast", "-w", "-t", "30", "stop")


def server_start(cluster: PgCluster) -> None:
    """Start a stopped cluster again on the same port."""
    cluster._run_server_cmd("pg_ctl", "-D", str(cluster.data_dir), "-l", str(cluster.log_path), "-w", "-t", "60",
                            "start")  # fmt: skip


def server_setting(cluster: PgCluster, **settings: str | int) -> None:
    """ALTER SYSTEM for each setting, then restart the server so every one applies."""
    for key, value in settings.items():
        cluster.psql(f"ALTER SYSTEM SET {key} = '{value}'", db="postgres")
    server_stop(cluster)
    server_start(cluster)


def enable_tls(cluster: PgCluster) -> Path:
    """Turn TLS on with a self-signed certificate for 127.0.0.1 and localhost; returns the certificate (the root
    a client pins with sslrootcert)."""
    import shutil

    from gateway.keyfiles import ensure_tls_cert

    ensure_tls_cert(cluster._base / "store.crt", cluster._base / "store.key")
    for name in ("store.crt", "store.key"):
        shutil.copy(cluster._base / name, cluster.data_dir / name)
        owner = (cluster.data_dir / "PG_VERSION").stat()
        os.chown(cluster.data_dir / name, owner.st_uid, owner.st_gid)
        os.chmod(cluster.data_dir / name, 0o600)
    server_setting(cluster, ssl="on", ssl_cert_file="store.crt", ssl_key_file="store.key")
    return cluster._base / "store.crt"


def wait_until(pred: Any, timeout: float, what: str, *, every: float = 0.02) -> float:
    """Poll `pred` until true; the seconds it took (fails the test after `timeout`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(every)
    pytest.fail(f"{what} (after {timeout:g} s)")


def exited(proc: subprocess.Popen[str]) -> bool:
    """Whether a client process has exited."""
    return proc.poll() is not None


def stop_client(proc: subprocess.Popen[str]) -> str:
    """End a client that is still running; its output."""
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate(timeout=10)
    return (out or "") + (err or "")


__all__ = ["ReplicaSet", "exited", "stop_client", "wait_until"]
