"""Fixtures for the Postgres front end: a running gateway in front of the rig's cluster, tokens, clients."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from gateway.config import Address, Config, Login, Target
from gateway.grants import Issued, issue_grant
from gateway.pg.listener import PostgresListener
from gateway.secret import Secret
from gateway.services import Services
from tests.pg.rawclient import tls_context
from tests.rig.postgres import PgCluster
from tests.threaded import OnLoop, serve_in_thread

T = TypeVar("T")
TARGET = "orders"
OTHER_TARGET = "orders-replica"
USER = "alice"

POLICY = """
target: orders
scopes:
  read:
    max_ttl: 1h
    sql:
      mode: read
      sensitive_tables: [customers]
      max_rows: 100
  write:
    max_ttl: 1h
    sql:
      mode: write
  admin:
    max_ttl: 1h
    sql:
      mode: admin
"""


@dataclass
class Gateway(OnLoop):
    """A gateway running in its own thread and event loop (as in production), so blocking clients work too."""

    config: Config
    services: Services
    listener: PostgresListener
    cluster: PgCluster
    loop: asyncio.AbstractEventLoop
    host: str = "127.0.0.1"

    async def grant(self, scope: str = "read", *, ttl: float = 600, user: str = USER, target: str = TARGET) -> Issued:
        """Issue a grant and its token."""
        svc = self.services
        return await self.run(issue_grant(self.config, svc.ring, svc.store, svc.policies, user=user, target=target,
                                          scope=scope, ttl=ttl, reason="TEST-1", approvers=("bob",),
                                          now=time.time()))  # fmt: skip

    async def token(self, scope: str = "read", **kw: Any) -> str:
        """A fresh token for `scope`."""
        return (await self.grant(scope, **kw)).token

    async def connect(self, token: str, *, user: str = USER, database: str = TARGET, **kw: Any) -> asyncpg.Connection:
        """asyncpg through the gateway, TLS without verification (self-signed)."""
        return await asyncpg.connect(host=self.host, port=self.port, user=user, password=token, database=database,
                                     ssl=tls_context(), **kw)  # fmt: skip

    def conninfo(self, token: str, *, user: str = USER, database: str = TARGET, sslmode: str = "require") -> str:
        """libpq conninfo (psql, psycopg)."""
        return (f"host={self.host} port={self.port} user={user} dbname={database} password={token} "
                f"sslmode={sslmode} connect_timeout=10")  # fmt: skip

    def psql(self, token: str, *args: str, sql: str | None = None, stdin: str | None = None,
             sslmode: str = "require") -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run the real psql through the gateway."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = token
        conninfo = f"host={self.host} port={self.port} user={USER} dbname={TARGET} sslmode={sslmode}"
        cmd = [self.cluster.psql_bin, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", *args]
        if sql is not None:
            cmd += ["-c", sql]
        return subprocess.run([*cmd, conninfo], input=stdin, capture_output=True, text=True, env=env, timeout=60)

    def superuser(self, sql: str) -> str:
        """Run SQL as the superuser, directly on the cluster (to check effects)."""
        return self.cluster.psql(sql).strip()

    async def backends(self, session_id: str) -> int:
        """How many upstream backends a gateway session still has (by application_name)."""
        out = await asyncio.to_thread(
            self.superuser, f"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%:{session_id}'"
        )
        return int(out)

    def live_session_ids(self) -> list[str]:
        return [s.id for s in self.services.registry.live()]

    def recording(self, session_id: str) -> list[dict[str, Any]]:
        """The statement recording of a session, parsed."""
        (path,) = self.config.recordings_dir.rglob(f"{session_id}.sql.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines()]


def make_config(base: Path, cluster: PgCluster, *, require_tls: bool = True) -> Config:
    """A Config pointing at the rig's cluster; upstream passwords in files the engineer never sees."""
    logins = {}
    for scope, role in (("read", "app_ro"), ("write", "app_rw"), ("admin", "app_admin")):
        logins[scope] = Login(scope=scope, user=role, password=Secret(cluster.passwords[role]))
    policies = base / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "orders.yaml").write_text(POLICY)
    target = Target(name=TARGET, kind="postgres", address=Address(cluster.host, cluster.port), logins=logins,
                    database="orders")  # fmt: skip
    # A second target on the same database: its tokens must not open `orders`.
    other = Target(name=OTHER_TARGET, kind="postgres", address=Address(cluster.host, cluster.port),
                   logins={"read": logins["read"]}, database="orders")  # fmt: skip
    return Config(
        path=None, base_dir=base, listen_postgres=Address("127.0.0.1", 0), store_url=f"sqlite:///{base}/gateway.db",
        keys_dir=base / "keys", policies_dir=policies, recordings_dir=base / "recordings",
        tls_cert=base / "keys" / "tls.crt", tls_key=base / "keys" / "tls.key", pg_require_tls=require_tls,
        preauth_timeout=3.0, targets={TARGET: target, OTHER_TARGET: other},
    )  # fmt: skip


@pytest.fixture(scope="session")
def gateway(pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway for the whole session (TLS required), on uvloop in a thread of its own."""
    config = make_config(tmp_path_factory.mktemp("gw"), pg_cluster)
    with serve_in_thread(config, PostgresListener, "gateway") as (services, listener, loop):
        yield Gateway(config, services, listener, pg_cluster, loop)


@pytest.fixture
async def bystander(gateway: Gateway) -> AsyncIterator[asyncpg.Connection]:
    """A second session kept open through a test: whatever the test does must not disturb it."""
    conn = await gateway.connect(await gateway.token())
    assert await conn.fetchval("SELECT 1") == 1
    yield conn
    assert await conn.fetchval("SELECT count(*) FROM orders") == 150, "the bystander session was disturbed"
    await conn.close()
