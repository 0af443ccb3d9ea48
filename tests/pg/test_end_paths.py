"""Every way a Postgres session ends goes through its block's exit: exactly one `session.end` with the reason,
the recording sealed and its hash verified, and the upstream backend gone from pg_stat_activity."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.recording.check import check_recording
from tests.pg import rawclient as raw
from tests.pg.conftest import Gateway

REASONS = {
    "kill": "suspicious activity",
    "revoke": "grant revoked: incident closed",
    "expiry": "access window expired",
    "client-exit": "client disconnected",
    "client-vanished": "client connection lost",
    "upstream-failure": "upstream closed the connection",
}


async def _until(pred: object, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not await pred():  # type: ignore[operator]
        if time.monotonic() - t0 > timeout:
            pytest.fail(what)
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


@pytest.mark.parametrize("how", sorted(REASONS))
async def test_every_end_path(gateway: Gateway, how: str) -> None:
    issued = await gateway.grant(ttl=4 if how == "expiry" else 600)
    before = set(gateway.live_session_ids())
    c = await raw.RawClient.login(gateway.port, issued.token)
    (sid,) = set(gateway.live_session_ids()) - before
    c.send(raw.query("SELECT pg_sleep(60)"))

    async def running() -> bool:
        out = await asyncio.to_thread(gateway.superuser, "SELECT count(*) FROM pg_stat_activity WHERE application_name"
                                      f" LIKE '%:{sid}' AND query LIKE '%pg_sleep%' AND state = 'active'")  # fmt: skip
        return out == "1"

    await _until(running, 15, "pg_sleep never started upstream")
    t_asked = issued.grant.expires_at if how == "expiry" else time.time()
    if how == "kill":
        await gateway.run(gateway.services.registry.kill(sid, REASONS[how], by="carol"))
    elif how == "revoke":
        await gateway.run(gateway.services.store.revoke_grant(issued.grant.id, by="carol", reason="incident closed",
                                                              now=time.time()))  # fmt: skip
        await gateway.run(gateway.services.registry.sweep())
    elif how == "client-exit":
        c.send(raw.TERMINATE)
        await c.close()
    elif how == "client-vanished":
        await c.close()
    elif how == "upstream-failure":
        gateway.superuser(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE '%:{sid}'"
        )

    async def gone() -> bool:
        return await gateway.backends(sid) == 0 and sid not in gateway.live_session_ids()

    await _until(gone, 8 if how == "expiry" else 2, f"session {sid} or its backend still there")
    took = time.time() - t_asked

    async def end_events() -> list[Any]:
        return [e for e in await gateway.run(gateway.services.store.events(types=["session.end"])) if e.session == sid]

    async def recorded() -> bool:  # the registry forgets the session just before its end is stored
        return bool(await end_events())

    await _until(recorded, 30, f"the end of session {sid} was not recorded")
    events = await end_events()
    assert [e.data["reason"] for e in events] == [REASONS[how]]
    rec = await gateway.run(gateway.services.store.get_session(sid))
    assert rec is not None and rec.recording_sha256 and rec.recording_sha256 == events[0].data["recording_sha256"]
    assert check_recording(Path(str(rec.recording_path)), rec.recording_sha256) is None  # sealed, hash matches
    kills = [e for e in await gateway.run(gateway.services.store.events(types=["session.kill"])) if e.session == sid]
    assert len(kills) == (1 if how in ("kill", "revoke", "expiry") else 0)
    await c.close()
    print(f"{how}: session and backend gone {took:.2f} s after the {how}")
