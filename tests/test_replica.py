"""Replicas on one real PostgreSQL store: heartbeats, `gateway nodes`, a silent replica reaped by a survivor."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from gateway.cli import main
from gateway.config import load_config
from gateway.replica import Replica
from gateway.services import build_services
from gateway.store import REPLICA_LOST
from tests.rig.postgres import PgCluster
from tests.storekit import Backend
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
