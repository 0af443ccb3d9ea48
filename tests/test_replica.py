"""Replicas on one store (real PostgreSQL, and SQLite): heartbeats, `gateway nodes`, a silent replica reaped by a
survivor, a restarted replica ending what its previous process left open, one node id per running replica."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.replica import Replica, ReplicaError
from gateway.services import build_services
from gateway.store import REPLICA_LOST
from tests.rig.postgres import PgCluster
from tests.storekit import KINDS, Backend, backend_for
from tests.test_store import grant, session


def _home(tmp_path: Path, name: str, url: str) -> Path:
    home = tmp_path / name
    assert main(["init", "--dir", str(home)]) == 0
    cfg = home / "gateway.toml"
    text = cfg.read_text().replace('url = "sqlite:///var/gateway.db"', f'url = "{url}"\nnode = "{name}"')
    cfg.write_text(text)
    return home


async def test_heartbeats_nodes_and_reaping(pg_cluster: PgCluster, tmp_path: Path) -> None:
    backend = Backend("postgresql", tmp_path, pg_cluster)
    home_a, home_b = _home(tmp_path, "gw-a", backend.url), _home(tmp_path, "gw-b", backend.url)
    a = await build_services(load_config(home_a / "gateway.toml", need_secrets=False))
    b = await build_services(load_config(home_b / "gateway.toml", need_secrets=False))
    try:
        ra, rb = Replica(a), Replica(b)
        now = time.time()
        await ra.beat(now - 60)  # A last spoke a minute ago, then died
        await rb.beat(now)
        await a.store.add_grant(grant())
        await a.store.add_session(session("s_held_by_a"))
        out = subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(home_b / "gateway.toml"), "nodes"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["NODE", "STATE", "HEARTBEAT"]
        assert lines[1].split()[:2] == ["gw-b", "up"] and lines[2].split()[:2] == ["gw-a", "up"]
        assert float(lines[2].split()[2].rstrip("s")) >= 59
        assert await rb.reap(now) == 1
        assert await rb.reap(now) == 0  # claimed once
        await rb.upstreams_done()
        ended = await b.store.get_session("s_held_by_a")
        assert ended is not None and ended.end_reason == REPLICA_LOST
        ends = await b.store.events(types=["session.end"], session="s_held_by_a")
        assert [(e.data["reason"], e.node) for e in ends] == [(REPLICA_LOST, "gw-b")]
        alerts = await b.store.events(types=["alert.replica.lost"])
        assert [(e.severity, e.data["node"], e.data["sessions"]) for e in alerts] == [
            ("critical", "gw-a", ["s_held_by_a"])
        ]
        await rb.stopped()
        assert {n.id: n.state for n in await b.store.list_nodes()} == {"gw-a": "lost", "gw-b": "stopped"}
        assert (await b.store.verify()).ok
    finally:
        await a.close()
        await b.close()


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend_for(request, tmp_path)


def _fast(home: Path) -> Path:
    """Heartbeat every 0.2 s (a silent replica is lost after 1 s)."""
    cfg = home / "gateway.toml"
    cfg.write_text(cfg.read_text().replace("[store]\n", "[store]\nheartbeat = 0.2\nlost_after = 1\n", 1))
    return cfg


async def test_a_restarted_replica_ends_what_its_previous_process_left(backend: Backend, tmp_path: Path) -> None:
    """kill -9 and a restart before any survivor reaped it (or a single node on SQLite): nothing stays live."""
    cfg = _fast(_home(tmp_path, "gw-a", backend.url))
    first = await build_services(load_config(cfg, need_secrets=False))
    try:
        await Replica(first).beat(time.time())
        await first.store.add_grant(grant())
        await first.store.add_session(session("s_left_open"))
    finally:
        await first.close()  # no stop recorded: as if killed
    again = await build_services(load_config(cfg, need_secrets=False))
    try:
        restarted = Replica(again)
        await restarted.start()
        await restarted.upstreams_done()
        rec = await again.store.get_session("s_left_open")
        assert rec is not None and rec.end_reason == REPLICA_LOST
        ends = await again.store.events(types=["session.end"], session="s_left_open")
        assert [(e.data["reason"], e.node) for e in ends] == [(REPLICA_LOST, "gw-a")]
        assert [n.id for n in await again.store.list_nodes()] == ["gw-a"]  # SQLite heartbeats too
        assert (await again.store.verify()).ok
    finally:
        await again.close()


async def test_a_node_id_a_running_replica_holds_is_refused(backend: Backend, tmp_path: Path) -> None:
    cfg = _fast(_home(tmp_path, "gw-a", backend.url))
    running = await build_services(load_config(cfg, need_secrets=False))
    twin = await build_services(load_config(cfg, need_secrets=False))
    beating = Replica(running)
    stop = asyncio.Event()

    async def beat() -> None:
        while not stop.is_set():
            await beating.beat(time.time())
            await asyncio.sleep(0.1)

    task = asyncio.create_task(beat())
    try:
        await asyncio.sleep(0.2)
        with pytest.raises(ReplicaError, match="in use by a running replica"):
            await Replica(twin).start()
        # Stopped, not cancelled: a cancelled beat's write still lands (the store finishes it in its thread),
        # and one landing during the twin's check below looked like a live twin.
        stop.set()
        await task
        await Replica(twin).start()  # the same id after its process stopped beating: taken over
    finally:
        task.cancel()
        await running.close()
        await twin.close()
