"""Both stores, on a real SQLite file and a real PostgreSQL cluster: grants, sessions, requests, the audit chain,
several processes. Every test taking `store` or `backend` runs once per backend."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.store import (
    GrantRecord,
    RequestRecord,
    SessionRecord,
    SqliteStore,
    Store,
    StoreConflict,
    StoreError,
    pgschema,
)
from gateway.store.chain import GENESIS, chain_hash, checkpoint_message, event_body
from gateway.store.schema import MIGRATIONS
from gateway.tokens import KeyRing
from tests.storekit import KINDS, Backend, backend_for

NOW = 1_700_000_000.0


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing.load_or_create(tmp_path / "keys")


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend_for(request, tmp_path)


@pytest.fixture
async def store(backend: Backend, ring: KeyRing) -> AsyncIterator[Store]:
    s = await backend.make(ring, checkpoint_every=10).open()
    yield s
    await s.close()


def grant(gid: str = "g_1", **over: object) -> GrantRecord:
    g = GrantRecord(gid, "alice", "orders-db", "read", "INC-1", ("bob", "carol"), NOW, NOW, NOW + 600)
    return replace(g, **over)  # type: ignore[arg-type]


def session(sid: str = "s_000001", gid: str = "g_1", **over: object) -> SessionRecord:
    s = SessionRecord(
        sid, gid, "alice", "orders-db", "read", "postgres", "10.0.0.9:5555", NOW + 1, recording_path="/rec/x.sql.jsonl"
    )
    return replace(s, **over)  # type: ignore[arg-type]


# --- schema ------------------------------------------------------------------------------------------


async def test_open_creates_folder_file_and_schema(tmp_path: Path, ring: KeyRing) -> None:
    store = await SqliteStore(tmp_path / "db" / "gateway.db", ring).open()
    await store.close()
    assert store.path.exists()
    con = sqlite3.connect(store.path)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"grants", "sessions", "requests", "audit", "checkpoints", "nodes"} <= tables
        triggers = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
        assert triggers == {"audit_no_update", "audit_no_delete", "checkpoints_no_update", "checkpoints_no_delete"}
    finally:
        con.close()


async def test_postgresql_schema_is_versioned_and_append_only(pg_cluster: object, tmp_path: Path) -> None:
    backend = Backend("postgresql", tmp_path, pg_cluster)  # type: ignore[arg-type]
    a, b = backend.make(), backend.make()
    await asyncio.gather(a.open(), b.open())  # two replicas starting together migrate once
    await a.close()
    await b.close()
    assert await backend.raw("SELECT max(version) FROM gateway_schema") == [(len(pgschema.MIGRATIONS),)]
    tables = {r[0] for r in await backend.raw("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert {"grants", "sessions", "requests", "audit", "checkpoints", "nodes", "gateway_schema"} <= tables
    triggers = {r[0] for r in await backend.raw("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
    assert triggers == {"audit_no_change", "audit_no_truncate", "checkpoints_no_change", "checkpoints_no_truncate"}


async def test_sqlite_schema_migrates_from_version_1(tmp_path: Path, ring: KeyRing) -> None:
    """A store written before replicas existed (schema 1) upgrades in place and its chain still verifies."""
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    from gateway.store.schema import split_script

    for stmt in split_script(MIGRATIONS[0]):
        con.execute(stmt)
    body = event_body(1, NOW, "old.event", "cli", "", "", "", "info", {"k": 1})
    con.execute(
        "INSERT INTO audit VALUES (1,?,?,?,?,?,?,?,?,?,?)",
        (NOW, "old.event", "cli", "", "", "", "info", json.dumps({"k": 1}), GENESIS, chain_hash(GENESIS, body)),
    )
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    s = await SqliteStore(path, ring, node="a").open()
    try:
        await s.append("new.event")
        [old, new] = await s.events()
        assert (old.node, new.node) == ("", "a")
        assert (await s.verify()).ok
    finally:
        await s.close(checkpoint=False)


async def test_reopen_keeps_data_and_does_not_remigrate(backend: Backend, ring: KeyRing) -> None:
    s = await backend.make(ring).open()
    await s.add_grant(grant())
    await s.append("test.one")
    await s.close()
    s2 = await backend.make(ring).open()
    try:
        assert await s2.get_grant("g_1") == grant()
        assert [e.type for e in await s2.events()] == ["test.one"]
        assert (await s2.verify()).ok
    finally:
        await s2.close()


async def test_closed_store_raises_store_error(backend: Backend) -> None:
    s = backend.make()
    with pytest.raises(StoreError, match="not open"):
        await s.append("x")
    await s.close()  # closing a never-opened store is harmless


# --- audit ---------------------------------------------------------------------------------------------


async def test_append_builds_a_hash_chain(store: Store) -> None:
    a = await store.append("grant.issued", actor="cli", grant="g_1", target="orders-db", data={"k": [1, "é"]}, ts=NOW)
    b = await store.append("session.start", actor="alice", session="s1", severity="warning", ts=NOW + 1)
    assert (a.seq, b.seq) == (1, 2)
    assert a.prev_hash == GENESIS and b.prev_hash == a.hash
    body = event_body(1, NOW, "grant.issued", "cli", "", "g_1", "orders-db", "info", {"k": [1, "é"]})
    assert a.hash == chain_hash(GENESIS, body)
    assert await store.events() == [a, b]


@pytest.mark.parametrize(
    ("ts", "data"),
    [
        (1_700_000_000, {"i": 1}),  # an int timestamp is read back as REAL
        (NOW, {"approvers": ("bob", "carol")}),  # a tuple is read back as a list
        (NOW, {"by_port": {5432: "pg"}}),  # a non-string key is read back as a string
        (NOW, {"stats": {"bytes": 10, "ratio": 0.5, "nested": [{"a": (1, 2)}]}}),
    ],
    ids=["int-ts", "tuple", "int-key", "nested"],
)
async def test_what_is_hashed_is_what_is_read_back(store: Store, ts: float, data: dict[str, object]) -> None:
    """An intact chain must verify whatever JSON-able values the caller passed (no false 'edited')."""
    ev = await store.append("e", ts=ts, data=data)
    await store.append("after")
    v = await store.verify()
    assert v.ok, v.describe()
    [back, _] = await store.events()
    assert back.hash == ev.hash


async def test_bad_severity_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="severity"):
        await store.append("x", severity="fatal")
    assert await store.events() == []


async def test_checkpoints_every_n_events_in_db_and_side_file(store: Store, backend: Backend, ring: KeyRing) -> None:
    for i in range(25):
        await store.append("e", data={"i": i})
    rows = [(c.seq, c.head, c.kid, c.signature) for c in await store.checkpoints()]
    assert [r[0] for r in rows] == [10, 20]
    events = await store.events()
    for seq, head, kid, sig in rows:
        assert head == events[seq - 1].hash
        assert ring.verify_bytes(kid, sig, checkpoint_message(seq, head))
    side = [json.loads(line) for line in backend.side_file(store).read_text().splitlines()]
    assert [(c["seq"], c["head"]) for c in side] == [(r[0], r[1]) for r in rows]
    v = await store.verify()
    assert v.ok and v.checked == 25 and v.last_checkpoint == 20


async def test_close_signs_the_head(backend: Backend, ring: KeyRing) -> None:
    s = await backend.make(ring, checkpoint_every=100).open()
    for _ in range(3):
        await s.append("e")
    await s.close()
    side = [json.loads(line) for line in backend.side_file(s).read_text().splitlines()]
    assert [c["seq"] for c in side] == [3]
    s = await backend.make(ring).open()
    try:
        assert (await s.verify()).last_checkpoint == 3
    finally:
        await s.close(checkpoint=False)


async def test_read_only_close_adds_no_checkpoint(backend: Backend, ring: KeyRing) -> None:
    s = await backend.make(ring).open()
    await s.append("e")
    await s.close(checkpoint=False)
    assert not backend.side_file(s).exists()


async def test_store_without_ring_keeps_a_chain_but_no_checkpoints(backend: Backend) -> None:
    s = await backend.make(None, checkpoint_every=1).open()
    try:
        await s.append("e")
        assert await s.checkpoint() is None
        assert (await s.verify()).ok
        assert not backend.side_file(s).exists()
    finally:
        await s.close()


async def test_events_filters(store: Store) -> None:
    await store.append("grant.issued", ts=NOW, session="")
    await store.append("session.start", ts=NOW + 10, session="s1")
    await store.append("session.end", ts=NOW + 20, session="s1")
    await store.append("session.start", ts=NOW + 30, session="s2")
    assert [e.seq for e in await store.events(since=NOW + 10)] == [2, 3, 4]
    assert [e.seq for e in await store.events(until=NOW + 20)] == [1, 2]
    assert [e.seq for e in await store.events(types=["session.start"])] == [2, 4]
    assert [e.seq for e in await store.events(types=["session.start", "session.end"], session="s1")] == [2, 3]
    assert [e.seq for e in await store.events(limit=2)] == [1, 2]
    assert await store.events(types=["nope"]) == []


async def test_audit_rows_refuse_update_and_delete(store: Store, backend: Backend) -> None:
    for i in range(3):
        await store.append("e", data={"i": i})
    await store.checkpoint()
    statements = [
        "UPDATE audit SET data='{}' WHERE seq=2",
        "DELETE FROM audit WHERE seq=2",
        "DELETE FROM audit",
        "UPDATE checkpoints SET signature='x'",
        "DELETE FROM checkpoints",
    ]
    if backend.kind == "postgresql":
        statements += ["TRUNCATE audit", "TRUNCATE checkpoints"]
    for sql in statements:
        with pytest.raises(backend.db_error, match="append-only"):
            await backend.raw(sql)
    assert [e.data["i"] for e in await store.events()] == [0, 1, 2]
    assert (await store.verify()).ok


async def test_concurrent_appends_from_two_processes_keep_one_chain(backend: Backend, ring: KeyRing) -> None:
    """Two store objects (two connections or pools, like two replicas) interleave appends."""
    a = await backend.make(ring, checkpoint_every=7, node="a").open()
    b = await backend.make(ring, checkpoint_every=7, node="b").open()
    try:

        async def writer(s: Store, name: str) -> None:
            for i in range(40):
                await s.append(f"{name}.e", data={"i": i})

        await asyncio.gather(writer(a, "a"), writer(b, "b"))
        events = await a.events()
        assert [e.seq for e in events] == list(range(1, 81))
        assert sum(e.type == "a.e" for e in events) == 40
        assert {e.node for e in events if e.type == "a.e"} == {"a"}
        assert {e.node for e in events if e.type == "b.e"} == {"b"}
        v = await b.verify()
        assert v.ok and v.checked == 80, v.describe()
    finally:
        await a.close()
        await b.close()


async def test_concurrent_appends_on_one_store(store: Store) -> None:
    """One gateway process shares one store between all its sessions: appends from concurrent tasks (two
    sessions killed at once, an alert while a statement is audited) must all land, in one valid chain."""
    results = await asyncio.gather(*(store.append("e", data={"i": i}) for i in range(20)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == [], f"{len(errors)} of 20 concurrent appends failed: {errors[0]!r}"
    assert sorted(e.data["i"] for e in await store.events()) == list(range(20))
    assert (await store.verify()).ok


async def test_a_write_during_an_append_is_not_lost(store: Store) -> None:
    """A grant or session written while another task is inside append's transaction must not be rolled back
    with it (or committed by it)."""
    await store.add_grant(grant())
    results = await asyncio.gather(
        store.append("a"),
        store.add_session(session()),
        store.append("b"),
        store.request_kill("s_000001", "x"),
        return_exceptions=True,
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert await store.get_session("s_000001") is not None
    assert len(await store.events()) == 2


# --- grants --------------------------------------------------------------------------------------------


async def test_grant_round_trip_and_listing(store: Store) -> None:
    g1 = grant("g_1", break_glass=True, request_id="r_1", max_sessions=2)
    g2 = grant("g_2", user="bob", issued_at=NOW + 5)
    await store.add_grant(g1)
    await store.add_grant(g2)
    assert await store.get_grant("g_1") == g1
    assert await store.get_grant("nope") is None
    assert [g.id for g in await store.list_grants()] == ["g_2", "g_1"]
    assert [g.id for g in await store.list_grants(user="alice")] == ["g_1"]
    with pytest.raises(StoreConflict):
        await store.add_grant(g1)


async def test_revoke_grant(store: Store) -> None:
    await store.add_grant(grant())
    r = await store.revoke_grant("g_1", by="carol", reason="INC over", now=NOW + 60)
    assert (r.state, r.revoked_by, r.revoke_reason, r.revoked_at) == ("revoked", "carol", "INC over", NOW + 60)
    assert await store.get_grant("g_1") == r
    assert not r.live(NOW + 61)
    with pytest.raises(StoreError, match="already revoked"):
        await store.revoke_grant("g_1", by="carol", reason="again", now=NOW + 70)
    with pytest.raises(StoreError, match="no grant"):
        await store.revoke_grant("g_404", by="carol", reason="x", now=NOW)
    assert [g.id for g in await store.list_grants(state="revoked")] == ["g_1"]


async def test_expire_grants(store: Store) -> None:
    await store.add_grant(grant("g_old", expires_at=NOW + 10))
    await store.add_grant(grant("g_new", expires_at=NOW + 1000))
    assert await store.expire_grants(NOW + 10) == ["g_old"]
    assert await store.expire_grants(NOW + 10) == []
    assert (await store.get_grant("g_old")).state == "expired"  # type: ignore[union-attr]
    assert await store.revoked_grant_ids(["g_old", "g_new", "g_404"]) == {"g_old"}
    assert await store.revoked_grant_ids([]) == set()
    with pytest.raises(StoreError, match="already expired"):
        await store.revoke_grant("g_old", by="x", reason="y", now=NOW)


def test_grant_live_window() -> None:
    g = grant()
    assert not g.live(NOW - 1) and g.live(NOW) and g.live(NOW + 599) and not g.live(NOW + 600)
    assert not replace(g, state="revoked").live(NOW + 1)


# --- sessions ------------------------------------------------------------------------------------------


async def test_session_lifecycle(store: Store) -> None:
    s = session()
    await store.add_session(s)
    assert await store.get_session("s_000001") == s
    assert (await store.get_session("s_000")) is None  # prefixes shorter than 6 characters are not looked up
    assert (await store.get_session("s_0000")) == s  # a unique prefix of >= 6 characters
    assert [x.id for x in await store.list_sessions(live=True)] == ["s_000001"]
    assert await store.end_session(
        "s_000001", ended_at=NOW + 50, reason="client closed", recording_sha256="ab" * 32, stats={"statements": 3}
    )
    ended = await store.get_session("s_000001")
    assert ended is not None
    assert (ended.ended_at, ended.end_reason, ended.recording_sha256, ended.stats) == (
        NOW + 50,
        "client closed",
        "ab" * 32,
        {"statements": 3},
    )
    # a second end does not overwrite the first, and says so
    assert not await store.end_session("s_000001", ended_at=NOW + 99, reason="other", recording_sha256=None, stats={})
    assert (await store.get_session("s_000001")).end_reason == "client closed"  # type: ignore[union-attr]
    assert await store.list_sessions(live=True) == []
    assert [x.id for x in await store.list_sessions(live=False)] == ["s_000001"]


async def test_ambiguous_session_prefix(store: Store) -> None:
    await store.add_session(session("abcdef01"))
    await store.add_session(session("abcdef02"))
    assert await store.get_session("abcdef") is None
    assert (await store.get_session("abcdef02")).id == "abcdef02"  # type: ignore[union-attr]


async def test_list_sessions_filters(store: Store) -> None:
    await store.add_session(session("s1", "g_1", started_at=NOW))
    await store.add_session(session("s2", "g_2", user="bob", target="web-1", protocol="ssh", started_at=NOW + 10))
    await store.add_session(session("s3", "g_1", started_at=NOW + 20))
    assert [s.id for s in await store.list_sessions()] == ["s3", "s2", "s1"]
    assert [s.id for s in await store.list_sessions(grant_id="g_1")] == ["s3", "s1"]
    assert [s.id for s in await store.list_sessions(user="bob")] == ["s2"]
    assert [s.id for s in await store.list_sessions(target="orders-db", since=NOW + 5)] == ["s3"]


async def test_kill_requests(store: Store) -> None:
    await store.add_session(session("s1"))
    await store.add_session(session("s2"))
    await store.request_kill("s1", "security: suspicious")
    assert await store.kill_requests(["s1", "s2"]) == {"s1": "security: suspicious"}
    assert await store.kill_requests([]) == {}
    await store.end_session("s2", ended_at=NOW, reason="done", recording_sha256=None, stats={})
    await store.request_kill("s2", "too late")  # an ended session is not asked again
    assert await store.kill_requests(["s2"]) == {}


# --- requests ------------------------------------------------------------------------------------------


async def test_request_optimistic_update(store: Store) -> None:
    r = RequestRecord("r_1", "alice", "orders-db", "read", "INC-9", 600, NOW, expires_at=NOW + 3600)
    await store.add_request(r)
    assert await store.get_request("r_1") == r
    approved = replace(
        r,
        state="approved",
        approvals=({"by": "bob", "at": NOW + 1},),
        decided_at=NOW + 1,
        decided_by="bob",
        grant_id="g_9",
    )
    assert await store.update_request(approved, expect_state="pending")
    assert await store.get_request("r_1") == approved
    # a second approver racing on the old state loses
    assert not await store.update_request(replace(r, state="denied"), expect_state="pending")
    assert (await store.get_request("r_1")).state == "approved"  # type: ignore[union-attr]
    await store.add_request(replace(r, id="r_2", requester="bob", created_at=NOW + 5))
    assert [x.id for x in await store.list_requests()] == ["r_2", "r_1"]
    assert [x.id for x in await store.list_requests(state="pending")] == ["r_2"]
    assert [x.id for x in await store.list_requests(requester="alice", target="orders-db")] == ["r_1"]
    assert await store.get_request("r_404") is None


async def test_sql_injection_in_filters_is_inert(store: Store) -> None:
    await store.add_grant(grant())
    await store.append("e", session="s1")
    evil = "x' OR '1'='1"
    assert await store.list_grants(user=evil) == []
    assert await store.events(types=[evil]) == []
    assert await store.events(session=evil) == []
    assert await store.list_sessions(user=evil) == []
    assert await store.get_session(evil + "zzzzzz") is None


# --- admission against a session limit ----------------------------------------------------------------


async def test_admit_session_counts_and_inserts_as_one_step(store: Store) -> None:
    await store.add_grant(grant())
    results = await asyncio.gather(*(store.admit_session(session(f"s_{i:06}"), max_live=2) for i in range(20)))
    assert sum(results) == 2
    assert len(await store.list_sessions(grant_id="g_1", live=True)) == 2
    # an ended session frees its place; no limit means no count
    first = (await store.list_sessions(grant_id="g_1", live=True))[0]
    await store.end_session(first.id, ended_at=NOW + 5, reason="done", recording_sha256=None, stats={})
    assert await store.admit_session(session("s_again"), max_live=2)
    assert not await store.admit_session(session("s_full"), max_live=2)
    assert await store.admit_session(session("s_nolimit"), max_live=None)


async def test_admissions_from_two_store_instances_respect_the_limit(backend: Backend) -> None:
    """Two connections to one store (two replicas): together never above the limit."""
    a = await backend.make(node="a").open()
    b = await backend.make(node="b").open()
    try:
        await a.add_grant(grant())
        tries = [
            s.admit_session(session(f"s_{n}{i:05}"), max_live=3) for i in range(15) for n, s in (("a", a), ("b", b))
        ]
        assert sum(await asyncio.gather(*tries)) == 3
        assert len(await b.list_sessions(grant_id="g_1", live=True)) == 3
    finally:
        await a.close()
        await b.close()


_ADMITTER = """
import asyncio, sys, time
from pathlib import Path
from gateway.store import SessionRecord, store_for

async def main(url: str, path: str, name: str, go: str) -> None:
    store = await store_for(url, None, sqlite_path=Path(path), node=name).open()
    Path(go + "." + name).touch()  # ready
    while not Path(go).exists():
        await asyncio.sleep(0.001)
    recs = [SessionRecord(f"s_{name}{i:04}", "g_1", "alice", "orders-db", "read", "postgres", "x", time.time())
            for i in range(25)]
    won = await asyncio.gather(*(store.admit_session(r, max_live=3) for r in recs))
    await store.close()
    print(sum(won))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_admissions_from_two_processes_respect_the_limit(backend: Backend, tmp_path: Path) -> None:
    """Two OS processes (two replicas on one store) race 25 admissions each against max_sessions 3."""
    import sys

    s = await backend.make().open()
    await s.add_grant(grant())
    go = tmp_path / "go"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _ADMITTER,
            backend.url,
            str(backend.path),
            name,
            str(go),
            stdout=asyncio.subprocess.PIPE,
        )
        for name in ("a", "b")
    ]
    for _ in range(1000):  # until both have opened the store and wait for the start
        if all((tmp_path / f"go.{n}").exists() for n in ("a", "b")):
            break
        await asyncio.sleep(0.01)
    go.touch()
    outs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum(int(out.strip()) for out, _ in outs) == 3
    assert len(await s.list_sessions(grant_id="g_1", live=True)) == 3
    await s.close()


async def test_writers_cancelled_mid_transaction_leave_the_store_writable(store: Store) -> None:
    # A kill cancels the session's task wherever it is, also between BEGIN and COMMIT (a cancelled await
    # does not stop aiosqlite's thread from running the BEGIN): the store must not be left inside a
    # transaction that every later write then fails on ("cannot start a transaction within a transaction").
    await store.add_grant(grant("g_c"))
    for i in range(40):
        tasks = [
            asyncio.ensure_future(store.append("x.cancelled", data={"i": i})),
            asyncio.ensure_future(store.admit_session(session(f"s_c{i:05d}", "g_c"), max_live=1000)),
        ]
        for _ in range(i % 7):
            await asyncio.sleep(0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    last = await store.append("x.after")
    assert last.type == "x.after"
    assert await store.admit_session(session("s_after", "g_c"), max_live=1000)
    verdict = await store.verify()
    assert verdict.ok, verdict.problem


async def test_sqlite_reads_and_writes_of_one_process_interleave_with_another_process_writing(tmp_path: Path) -> None:
    """Two processes on one SQLite file (workers, a replica and the CLI): an open read cursor of A pins A's WAL
    snapshot, so a write A starts meanwhile fails at once with "database is locked" once B has committed
    (busy_timeout does not apply). Reads therefore hold A's write lock until their cursor closes."""
    path = tmp_path / "db" / "gateway.db"
    a = await SqliteStore(path, node="a").open()
    b = await SqliteStore(path, node="b").open()
    try:
        for i in range(20):
            await a.append("seed", data={"i": i})
        stop = asyncio.Event()

        async def reads() -> int:
            n = 0
            while not stop.is_set():
                assert await a.head() is not None
                await a.list_sessions()
                n += 1
            return n

        async def writes(store: SqliteStore, who: str) -> None:
            for i in range(150):
                await store.append("w", data={"who": who, "i": i})

        readers = [asyncio.ensure_future(reads()) for _ in range(3)]
        await asyncio.gather(writes(a, "a"), writes(b, "b"))
        stop.set()
        assert all(n > 0 for n in await asyncio.gather(*readers))
        assert (await a.verify()).ok
        head = await b.head()
        assert head is not None and head[0] == 20 + 300
    finally:
        await a.close(checkpoint=False)
        await b.close(checkpoint=False)
