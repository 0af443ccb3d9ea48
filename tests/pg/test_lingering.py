"""The lingering-access sweep on a real cluster: backends of the injected login that no live session owns."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from gateway.detect.pgsweep import PgSweeper
from gateway.detect.sweep import ENDED_SESSION_BACKEND, UNTAGGED_BACKEND
from tests.pg.conftest import Gateway


async def _direct(gateway: Gateway, application_name: str) -> asyncpg.Connection:
    c = gateway.cluster
    return await asyncpg.connect(
        host=c.host,
        port=c.port,
        user="app_ro",
        password=c.passwords["app_ro"],
        database="orders",
        ssl=False,
        server_settings={"application_name": application_name},
    )


async def _ended_session(gateway: Gateway) -> str:
    before = set(gateway.live_session_ids())
    conn = await gateway.connect(await gateway.token())
    (sid,) = set(gateway.live_session_ids()) - before
    await conn.close()
    for _ in range(100):
        rec = await gateway.run(gateway.services.store.get_session(sid))
        if rec is not None and rec.ended_at is not None:
            return sid
        await asyncio.sleep(0.05)
    raise AssertionError("the session did not end")


@pytest.mark.usefixtures("bystander")
async def test_sweep_terminates_backends_no_live_session_owns(gateway: Gateway) -> None:
    sid = await _ended_session(gateway)
    outsider = await _direct(gateway, "left-behind")
    lingering = await _direct(gateway, f"gateway:alice:{sid}")  # a teardown that did not happen
    pids = {
        await outsider.fetchval("SELECT pg_backend_pid()"): UNTAGGED_BACKEND,
        await lingering.fetchval("SELECT pg_backend_pid()"): ENDED_SESSION_BACKEND,
    }
    svc = gateway.services
    sweeper = PgSweeper(gateway.config, svc.store, svc.alerts, clock=time.time)
    strays = await gateway.run(sweeper.once())
    found = {s.backend.pid: s.detection for s in strays}
    for pid, rule in pids.items():
        assert found[pid].rule == rule and found[pid].severity == "critical"
    assert found[next(p for p, r in pids.items() if r == ENDED_SESSION_BACKEND)].session == sid
    left = gateway.superuser(f"SELECT count(*) FROM pg_stat_activity WHERE pid IN ({','.join(map(str, pids))})")
    assert left == "0"
    for conn in (outsider, lingering):
        with pytest.raises((asyncpg.PostgresError, ConnectionError, asyncpg.InterfaceError)):
            await conn.fetchval("SELECT 1")
        conn.terminate()
    events = await gateway.run(svc.store.events(types=["detection"]))
    assert {e.data["rule"] for e in events if e.data.get("pid") in pids} == set(pids.values())
    assert all(e.data["terminated"] for e in events if e.data.get("pid") in pids)
