"""`gateway store migrate --to postgresql://...` on a real cluster: every record and the chain arrive intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.services import build_services, config_store
from gateway.store import RequestRecord
from tests.rig.postgres import PgCluster
from tests.storekit import Backend
from tests.test_audit import arun
from tests.test_store import NOW, grant, session


async def _populate(cfg: Path) -> None:
    svc = await build_services(load_config(cfg, need_secrets=False))
    try:
        store = svc.store
        await store.add_grant(grant("g_1", max_sessions=2))
        await store.add_grant(grant("g_2"))
        await store.revoke_grant("g_2", by="carol", reason="done", now=NOW + 9)
        await store.add_request(RequestRecord("r_1", "alice", "orders-db", "read", "INC-9", 600, NOW, grant_id="g_1"))
        await store.add_session(session("s_live"))
        await store.add_session(session("s_done"))
        await store.end_session("s_done", ended_at=NOW + 5, reason="client closed", recording_sha256="ab" * 32,
                                stats={"statements": 3})  # fmt: skip
        for i in range(250):
            await store.append("test.event", session="s_done", data={"i": i}, ts=NOW + i)
    finally:
        await svc.close()  # signs the head


async def _read(cfg: Path, url: str | None) -> tuple[object, ...]:
    config = load_config(cfg, need_secrets=False)
    svc = await build_services(config)
    store = config_store(config, svc.ring, url) if url else svc.store
    if url:
        await store.open()
    try:
        verdict = await store.verify()
        return (
            await store.list_grants(),
            await store.list_requests(),
            await store.list_sessions(),
            await store.events(),
            await store.checkpoints(),
            verdict.ok,
            verdict.last_checkpoint,
        )
    finally:
        if url:
            await store.close(checkpoint=False)
        await svc.store.close(checkpoint=False)


def test_migrate_moves_everything_and_the_chain_verifies(
    pg_cluster: PgCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    assert main(["init", "--dir", str(home)]) == 0
    cfg = home / "gateway.toml"
    arun(_populate(cfg))
    url = Backend("postgresql", tmp_path, pg_cluster).url
    capsys.readouterr()
    assert main(["--config", str(cfg), "store", "migrate", "--to", url]) == 0
    out = capsys.readouterr().out
    assert "2 grants, 1 requests, 2 sessions, 250 audit events" in out and "audit chain intact" in out
    assert pg_cluster.passwords["postgres"] not in out
    before, after = arun(_read(cfg, None)), arun(_read(cfg, url))
    assert after == before
    assert after[5] is True and after[6] == 250
    # a second run refuses: the target is no longer empty
    assert main(["--config", str(cfg), "store", "migrate", "--to", url]) == 1
    assert "already holds gateway records" in capsys.readouterr().err


def test_migrate_wants_a_postgresql_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    assert main(["init", "--dir", str(home)]) == 0
    assert main(["--config", str(home / "gateway.toml"), "store", "migrate", "--to", "sqlite:///x.db"]) == 2
    assert "--to must be a postgresql:// URL" in capsys.readouterr().err
