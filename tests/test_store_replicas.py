"""Several replicas on one store: compare-and-set approvals, push of revocations and kills, lost replicas."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.store import REPLICA_LOST, NodeRecord, RequestRecord
from tests.storekit import KINDS, Backend, backend_for
from tests.test_store import NOW, grant, session


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend_for(request, tmp_path)


async def test_two_replicas_approving_one_request_at_once_one_wins(backend: Backend) -> None:
    a, b = await backend.make(node="a").open(), await backend.make(node="b").open()
    try:
        for i in range(20):
            r = RequestRecord(f"r_{i}", "alice", "orders-db", "read", "INC-1", 600, NOW)
            await a.add_request(r)
            wins = await asyncio.gather(
                *(
                    s.update_request(
                        replace(r, state="approved", approvals=({"by": who},), grant_id=f"g_{who}"),
                        expect_state="pending",
                        expect_approvals=0,
                    )
                    for s, who in ((a, "bob"), (b, "carol"))
                )
            )
            assert sorted(wins) == [False, True]
            stored = await b.get_request(r.id)
            assert stored is not None and stored.grant_id == ("g_bob" if wins[0] else "g_carol")
    finally:
        await a.close()
        await b.close()


async def test_a_lost_replica_is_claimed_once_and_its_sessions_end(backend: Backend) -> None:
    a, b, c = [await backend.make(node=n).open() for n in "abc"]
    try:
        now = time.time()
        for s in (a, b, c):
            await s.heartbeat(NodeRecord(s.node, "0.1.0", now - 100, now - (60 if s is a else 0), 1))
        await a.add_grant(grant())
        await a.add_session(session("s_on_a"))
        await b.add_session(session("s_on_b"))
        claims = await asyncio.gather(*(s.claim_lost_nodes(older_than=now - 10, now=now) for s in (b, c)))
        merged = [(nid, [x.id for x in ss]) for claim in claims for nid, ss in claim.items()]
        assert merged == [("a", ["s_on_a"])]
        ended = await c.get_session("s_on_a")
        assert ended is not None and ended.end_reason == REPLICA_LOST and ended.node == "a"
        # the replica coming back is told to end what it still holds: its watcher sees a kill request
        assert await a.kill_requests(["s_on_a"]) == {"s_on_a": REPLICA_LOST}
        live = await c.get_session("s_on_b")
        assert live is not None and live.ended_at is None
        assert {n.id: n.state for n in await c.list_nodes()} == {"a": "lost", "b": "up", "c": "up"}
    finally:
        for s in (a, b, c):
            await s.close()


async def test_revoke_and_kill_are_pushed_to_other_replicas(pg_cluster: object, tmp_path: Path) -> None:
    """LISTEN/NOTIFY: replica B hears A's revocation and kill well within a second, also after its listen
    connection was cut (the reconnect wakes once, so the reconcile poll runs at once)."""
    backend = Backend("postgresql", tmp_path, pg_cluster)  # type: ignore[arg-type]
    a, b = await backend.make(node="a").open(), await backend.make(node="b").open()
    heard: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    try:
        await b.listen(lambda payload: heard.put_nowait((payload, time.monotonic())))
        assert (await asyncio.wait_for(heard.get(), 5))[0] == "reconnect"
        await a.add_grant(grant())
        await a.add_session(session("s_1"))
        t0 = time.monotonic()
        await a.revoke_grant("g_1", by="carol", reason="done", now=NOW + 5)
        payload, at = await asyncio.wait_for(heard.get(), 1)
        assert payload == "grant:g_1" and at - t0 < 1
        await a.request_kill("s_1", "security")
        assert (await asyncio.wait_for(heard.get(), 1))[0] == "session:s_1"
        # cut B's listen connection: it comes back and says so
        await backend.raw(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        )
        assert (await asyncio.wait_for(heard.get(), 10))[0] == "reconnect"
    finally:
        await a.close()
        await b.close()
