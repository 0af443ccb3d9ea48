"""A grant's `max_sessions` holds under a storm of concurrent connections through the real front end.

The limit used to be checked, then the session inserted later: 20 clients connecting at once all passed a
limit of 1 and opened 8-12 upstream backends. Admission is now one check-and-insert.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from gateway.grants import issue_grant
from tests.pg.conftest import TARGET, USER, Gateway

CLIENTS = 20
HOLD = 1.5  # seconds the admitted clients stay connected, so the upstream is watched with them open


async def _upstream_names(gateway: Gateway) -> list[str]:
    out = await asyncio.to_thread(
        gateway.superuser, "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'gateway:%'"
    )
    return [line for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("limit", [1, 3])
async def test_concurrent_connects_admit_exactly_max_sessions(gateway: Gateway, limit: int) -> None:
    svc = gateway.services
    issued = await gateway.run(
        issue_grant(gateway.config, svc.ring, svc.store, svc.policies, user=USER, target=TARGET, scope="read",
                    ttl=600, reason="TEST-limit", approvers=("bob",), now=time.time(), max_sessions=limit)
    )  # fmt: skip
    polls: list[list[str]] = []
    done = asyncio.Event()

    async def watch_upstream() -> None:
        while not done.is_set():
            polls.append(await _upstream_names(gateway))

    async def client() -> asyncpg.Connection | BaseException:
        try:
            conn = await gateway.connect(issued.token)
            assert await conn.fetchval("SELECT 1") == 1
            await asyncio.sleep(HOLD)
            return conn
        except Exception as exc:
            return exc

    watcher = asyncio.create_task(watch_upstream())
    results = await asyncio.gather(*(client() for _ in range(CLIENTS)))
    done.set()
    await watcher
    admitted = [r for r in results if isinstance(r, asyncpg.Connection)]
    refused = [r for r in results if not isinstance(r, asyncpg.Connection)]
    try:
        assert len(admitted) == limit, f"{len(admitted)} of {CLIENTS} admitted with max_sessions={limit}"
        for exc in refused:
            assert isinstance(exc, asyncpg.InvalidPasswordError), repr(exc)
            assert f"this grant allows {limit} concurrent session(s)" in str(exc), str(exc)
    finally:
        for conn in admitted:
            await conn.close()
    # the upstream never carried more backends of this grant than the limit
    sessions = await gateway.run(svc.store.list_sessions(grant_id=issued.grant.id))
    names = {f"gateway:{USER}:{s.id}" for s in sessions}
    assert len(sessions) == limit
    peak = max((sum(1 for n in poll if n in names) for poll in polls), default=0)
    assert 1 <= peak <= limit, f"upstream peak {peak} backends for max_sessions={limit}"
    refusals = await gateway.run(svc.store.events(types=["token.rejected"]))
    mine = [e for e in refusals if e.grant == issued.grant.id]
    assert len(mine) == CLIENTS - limit and {e.data["code"] for e in mine} == {"max-sessions"}
