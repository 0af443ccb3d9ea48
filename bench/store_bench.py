"""The store and replicas: audit appends/s, session set-up per store, revocation-to-disconnect across replicas.

    .venv/bin/python bench/store_bench.py [--events 2000] [--setups 200] [--revokes 50] [--only appends|setup|revoke]

Starts a throwaway PostgreSQL (gateway.sandbox: fsync and synchronous_commit are off, so PostgreSQL figures are
an upper bound for a durable server) that is both the upstream target and the shared store, and real
`gateway run` processes (tests/replicas.py configs: loopback, free ports):
- appends: every writer (its own store object / pool) appends `--events` events, SQLite file vs PostgreSQL,
  1 and 2 writers; the chain is verified afterwards.
- setup: one gateway on SQLite and one on PostgreSQL, run at the same time; asyncpg connects through each
  (TLS, token, grant check, admission, upstream login, `SELECT 1`), in alternating rounds of 20 so a noisy
  machine hurts both alike; p50/p99 of connect + first answer per store, and their ratio.
- revoke: replicas A and B on PostgreSQL; a client holds `SELECT pg_sleep(60)` through B; the grant is
  revoked through A's API; the time from the call to the client's error, `--revokes` times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from gateway.config import load_config
from gateway.grants import issue_grant
from gateway.sandbox.postgres import PgCluster
from gateway.services import build_services
from gateway.store import Store, store_for
from tests.replicas import ReplicaSet


async def rate(make: list[Store], events: int) -> float:
    """Events per second over all writers; the chain must verify."""
    stores = [await s.open() for s in make]
    try:

        async def writer(s: Store) -> None:
            for i in range(events):
                await s.append("bench.event", data={"i": i, "node": s.node})

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(s) for s in stores))
        took = time.perf_counter() - t0
        verdict = await stores[0].verify()
        assert verdict.ok and verdict.checked == events * len(stores), verdict.describe()
        return events * len(stores) / took
    finally:
        for s in stores:
            await s.close(checkpoint=False)


async def appends(cluster: PgCluster, tmp: Path, events: int) -> None:
    for writers in (1, 2):
        db = f"bench_{writers}"
        cluster.psql(f"CREATE DATABASE {db}", db="postgres")
        sqlite = tmp / f"w{writers}.db"
        results = {}
        for kind, url in (("sqlite", f"sqlite:///{sqlite}"), ("postgresql", cluster.superuser_dsn(db))):
            stores = [store_for(url, None, sqlite_path=sqlite, node=f"n{i}") for i in range(writers)]
            results[kind] = await rate(stores, events)
        print(
            f"appends writers={writers} events/writer={events}: sqlite {results['sqlite']:.0f}/s, "
            f"postgresql {results['postgresql']:.0f}/s"
        )


async def token_for(rs: ReplicaSet, name: str) -> tuple[str, str]:
    """A fresh read grant on `orders`, issued the way `gateway grant` does: (token, grant id)."""
    svc = await build_services(load_config(rs.replicas[name].config, need_secrets=False))
    try:
        issued = await issue_grant(
            svc.config, svc.ring, svc.store, svc.policies, user="alice", target="orders", scope="read", ttl=3600,
            reason="BENCH-1", approvers=("bob",), now=time.time(),
        )  # fmt: skip
    finally:
        await svc.close()
    return issued.token, issued.grant.id


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the gateway's own self-signed certificate, on loopback
    return ctx


async def connect(port: int, token: str) -> asyncpg.Connection:
    return await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="orders", password=token,
                                 ssl=_tls(), timeout=30)  # fmt: skip


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def setup(cluster: PgCluster, tmp: Path, setups: int) -> None:
    cluster.psql("CREATE DATABASE bench_setup", db="postgres")
    stores = {"sqlite": f"sqlite:///{tmp / 'setup' / 'gateway.db'}", "postgresql": cluster.superuser_dsn("bench_setup")}
    sets = {kind: ReplicaSet(tmp / f"setup-{kind}", url, cluster) for kind, url in stores.items()}
    times: dict[str, list[float]] = {kind: [] for kind in stores}
    try:
        for kind, rs in sets.items():
            rs.add(f"gw-{kind}")
            rs.start(f"gw-{kind}")
        tokens = {kind: (await token_for(rs, f"gw-{kind}"))[0] for kind, rs in sets.items()}
        for kind, rs in sets.items():  # warm: first catalogue load, TLS session, pools
            con = await connect(rs.replicas[f"gw-{kind}"].pg, tokens[kind])
            await con.fetchval("SELECT 1")
            await con.close()
        rounds = max(1, setups // 20)
        for r in range(rounds):
            for kind in ("sqlite", "postgresql") if r % 2 == 0 else ("postgresql", "sqlite"):
                port = sets[kind].replicas[f"gw-{kind}"].pg
                for _ in range(20):
                    t0 = time.perf_counter()
                    con = await connect(port, tokens[kind])
                    await con.fetchval("SELECT 1")
                    times[kind].append(time.perf_counter() - t0)
                    await con.close()
    finally:
        for rs in sets.values():
            rs.stop_all()
    for kind, ts in times.items():
        print(f"setup {kind}: n={len(ts)} p50 {statistics.median(ts) * 1000:.1f} ms, p99 {pct(ts, 0.99) * 1000:.1f} ms")
    ratio = statistics.median(times["postgresql"]) / statistics.median(times["sqlite"])
    ratio99 = pct(times["postgresql"], 0.99) / pct(times["sqlite"], 0.99)
    print(f"setup postgresql/sqlite: p50 {ratio:.2f}x, p99 {ratio99:.2f}x (target <= 2x)")


async def revoke(cluster: PgCluster, tmp: Path, tries: int) -> None:
    cluster.psql("CREATE DATABASE bench_revoke", db="postgres")
    rs = ReplicaSet(tmp / "revoke", cluster.superuser_dsn("bench_revoke"), cluster)
    rs.add("gw-a")
    rs.add("gw-b")
    took: list[float] = []
    try:
        rs.start("gw-a")
        rs.start("gw-b")
        for _ in range(tries):
            token, gid = await token_for(rs, "gw-a")
            con = await connect(rs.replicas["gw-b"].pg, token)
            busy = asyncio.create_task(con.execute("SELECT pg_sleep(60)"))
            await asyncio.sleep(0.2)  # the statement runs upstream
            req = urllib.request.Request(
                f"http://127.0.0.1:{rs.replicas['gw-a'].http}/v1/grants/{gid}/revoke", method="POST",
                data=json.dumps({"reason": "bench"}).encode(),
                headers={"Authorization": f"Bearer {rs.keys['admin']}", "Content-Type": "application/json"},
            )  # fmt: skip
            t0 = time.perf_counter()
            await asyncio.to_thread(urllib.request.urlopen, req, timeout=10)
            try:
                await asyncio.wait_for(busy, 10)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError, OSError):
                pass
            took.append(time.perf_counter() - t0)
            con.terminate()
    finally:
        rs.stop_all()
    print(f"revoke via A -> client on B disconnected: n={len(took)} p50 {statistics.median(took) * 1000:.1f} ms, "
          f"p99 {pct(took, 0.99) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms")  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, PgCluster() as cluster:
        if args.only in (None, "appends"):
            await appends(cluster, Path(tmp), args.events)
        if args.only in (None, "setup"):
            await setup(cluster, Path(tmp), args.setups)
        if args.only in (None, "revoke"):
            await revoke(cluster, Path(tmp), args.revokes)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--setups", type=int, default=200, help="connects per store (rounds of 20, alternating)")
    ap.add_argument("--revokes", type=int, default=50)
    ap.add_argument("--only", choices=["appends", "setup", "revoke"])
    asyncio.run(main(ap.parse_args()))
