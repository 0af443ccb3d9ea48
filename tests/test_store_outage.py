"""The shared store goes away (its real PostgreSQL server stopped) under a running replica, then comes back:
new connections are refused with a clear error, live sessions keep their deadlines, a session whose audit
cannot be written ends, and what could not be written is spooled and lands in the chain once the store is
back (nothing silently dropped). The store's password shows nowhere. Also: TLS to the store."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from gateway.keyfiles import ensure_tls_cert
from gateway.store import StoreError
from gateway.store.postgres import PgStore
from gateway.tokens import KeyRing
from tests.replicas import ReplicaSet, enable_tls, exited, server_start, server_stop, stop_client, wait_until
from tests.rig.postgres import PgCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL server for the store alone (the upstream stays up while this one is stopped), TLS on."""
    with PgCluster() as cluster:
        cluster.tls_root = enable_tls(cluster)  # type: ignore[attr-defined]
        yield cluster


def store_url(cluster: PgCluster, db: str, query: str = "") -> str:
    cluster.psql(f"CREATE DATABASE {db}", db="postgres")
    return cluster.superuser_dsn(db) + query


async def test_store_outage_fails_closed_and_drops_nothing(
    store_cluster: PgCluster, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    password = store_cluster.passwords["postgres"]
    rs = ReplicaSet(tmp_path, store_url(store_cluster, "outage", "?sslmode=require"), pg_cluster)
    rs.add("gw-a")
    denied_con: asyncpg.Connection | None = None
    procs = []
    try:
        rs.start("gw-a")
        short, short_grant = rs.grant("gw-a", "orders", "read", ttl="12s")
        live, live_grant = rs.grant("gw-a", "orders", "read")
        audited, audited_grant = rs.grant("gw-a", "orders", "read")
        later, _ = rs.grant("gw-a", "orders", "read")
        psql_short = rs.psql("gw-a", short, "SELECT pg_sleep(60)")
        psql_live = rs.psql("gw-a", live, "SELECT pg_sleep(60)")
        procs += [psql_short, psql_live]
        denied_con = await asyncpg.connect(host="127.0.0.1", port=rs.replicas["gw-a"].pg, user="alice",
                                           database="orders", password=audited, ssl=_no_verify())  # fmt: skip
        db = await asyncpg.connect(rs.store_url.split("?")[0])
        for _ in range(200):
            if int(await db.fetchval("SELECT count(*) FROM sessions WHERE ended_at IS NULL")) == 3:
                break
            await asyncio.sleep(0.05)
        sids = {str(r["grant_id"]): str(r["id"]) for r in await db.fetch("SELECT grant_id, id FROM sessions")}
        deadline = float(await db.fetchval("SELECT expires_at FROM grants WHERE id=$1", short_grant))
        await db.close()

        server_stop(store_cluster)  # ---- the outage ----
        t_down = time.monotonic()

        refused = rs.psql("gw-a", later, "SELECT 1")
        refused.wait(timeout=15)
        out = stop_client(refused)
        print(f"store down: a new psql was refused {time.monotonic() - t_down:.2f} s after the stop: {out.strip()}")
        assert refused.returncode != 0 and "cannot reach its store" in out, out

        # A statement the read scope denies: its statement.denied cannot be written, so the session ends.
        t0 = time.monotonic()
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await denied_con.execute("UPDATE orders SET status = 'x'")
            await denied_con.execute("SELECT pg_sleep(5)")
        print(f"a session whose audit could not be written ended {time.monotonic() - t0:.2f} s after its statement")

        # The short grant's session ends at its deadline although the store is down; the other keeps running.
        wait_until(lambda: exited(psql_short), 20, "the session did not end at its deadline during the outage")
        late = time.time() - deadline
        print(f"deadline kept during the outage: the session ended {late:+.2f} s from its grant's end")
        assert -1.0 < late < 3.0 and not exited(psql_live)

        server_start(store_cluster)  # ---- back ----
        t_up = time.monotonic()
        db = await asyncpg.connect(rs.store_url.split("?")[0])

        async def landed() -> bool:
            n = await db.fetchval("SELECT count(*) FROM audit WHERE type='session.end' AND session = ANY($1)",
                                  [sids[short_grant], sids[audited_grant]])  # fmt: skip
            return int(n) == 2

        while not await landed():
            assert time.monotonic() - t_up < 15, "spooled writes did not reach the store"
            await asyncio.sleep(0.1)
        print(f"store back: the spooled writes were in the chain {time.monotonic() - t_up:.2f} s later")
        rows = await db.fetch(
            "SELECT type, session, data FROM audit WHERE data LIKE '%\"spooled\": true%' ORDER BY seq"
        )
        spooled = [(r["type"], r["session"]) for r in rows]
        assert ("statement.denied", sids[audited_grant]) in spooled
        assert ("session.end", sids[audited_grant]) in spooled and ("session.end", sids[short_grant]) in spooled
        reasons = {str(r["id"]): str(r["end_reason"]) for r in await db.fetch(
            "SELECT id, end_reason FROM sessions WHERE ended_at IS NOT NULL")}  # fmt: skip
        assert "audit log unavailable" in reasons[sids[audited_grant]]
        assert sids[short_grant] in reasons and sids[live_grant] not in reasons
        for sid in (sids[short_grant], sids[audited_grant]):  # once each, nothing twice
            n = await db.fetchval("SELECT count(*) FROM audit WHERE type='session.end' AND session=$1", sid)
            assert n == 1
        rejected = [json.loads(r["data"]) for r in await db.fetch("SELECT data FROM audit WHERE type='token.rejected'")]
        assert [(d["code"], d["spooled"]) for d in rejected] == [("store-unavailable", True)]  # the refusal too
        await db.close()
        left = [p for p in tmp_path.glob("shared/audit.spool.jsonl*") if p.stat().st_size]
        assert left == [], "the spool was not emptied"

        rs.api("gw-a", "POST", f"/v1/grants/{live_grant}/revoke", {"reason": "after the outage"})
        wait_until(lambda: exited(psql_live), 5, "the live session did not end on revocation after the outage")
    finally:
        if denied_con is not None:
            denied_con.terminate()
        for proc in procs:
            stop_client(proc)
        server_start_if_stopped(store_cluster)
        rs.stop_all()
    rs.verify("gw-a")
    log = (tmp_path / "gw-a" / "run.log").read_text()
    assert password not in log and "store" in log
    nodes = rs.cli("gw-a", "nodes")
    assert password not in nodes.stdout + nodes.stderr


def server_start_if_stopped(cluster: PgCluster) -> None:
    if not (cluster.data_dir / "postmaster.pid").exists():
        server_start(cluster)


def _no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def test_store_over_tls_and_a_refused_store_names_no_password(store_cluster: PgCluster, tmp_path: Path) -> None:
    root = store_cluster.tls_root  # type: ignore[attr-defined]
    url = store_url(store_cluster, "tlsstore", f"?sslmode=verify-full&sslrootcert={root}")
    store = await PgStore(url, KeyRing.load_or_create(tmp_path / "keys"), node="gw-t").open()
    try:
        await store.append("tls.check")
        assert (await store.verify()).ok
        con = await asyncpg.connect(url)
        try:  # the store's own connections are TLS: the server says so
            assert await con.fetchval("SELECT bool_and(ssl) FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        finally:
            await con.close()
    finally:
        await store.close()
    password = store_cluster.passwords["postgres"]
    other = tmp_path / "other.crt"
    ensure_tls_cert(other, tmp_path / "other.key")  # a root that did not sign the server's certificate
    for bad in (url.replace(str(root), str(other)), url.replace(password, "not-the-password")):
        with pytest.raises(StoreError) as info:
            await PgStore(bad, None).open()
        assert password not in str(info.value) and "***" in str(info.value), str(info.value)
    assert password not in repr(PgStore(url, None))
