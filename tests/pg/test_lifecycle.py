"""Ending sessions: deadline, kill, revocation. The client gets FATAL and the backend is gone within 2 s."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from gateway.pg.messages import ErrorResponse
from tests.pg import rawclient as raw
from tests.pg.conftest import Gateway


async def _open_with_sleep(gateway: Gateway, token: str) -> tuple[asyncpg.Connection, str, asyncio.Task[object]]:
    before = set(gateway.live_session_ids())
    conn = await gateway.connect(token)
    (sid,) = set(gateway.live_session_ids()) - before
    task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(60)"))
    await _query_running(gateway, sid)
    return conn, sid, task


async def _query_running(gateway: Gateway, sid: str) -> None:
    for _ in range(50):
        if (
            gateway.superuser(
                f"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%:{sid}'"
                " AND query LIKE '%pg_sleep%' AND state = 'active'"
            )
            == "1"
        ):
            return
        await asyncio.sleep(0.1)
    pytest.fail("pg_sleep never started upstream")


async def _backend_gone(gateway: Gateway, sid: str, within: float = 2.0) -> float:
    t0 = time.monotonic()
    while await gateway.backends(sid):
        if time.monotonic() - t0 > within:
            pytest.fail(f"upstream backend of session {sid} still there after {within} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def _session_event(gateway: Gateway, sid: str, type_: str) -> dict[str, object]:
    for _ in range(50):
        events = [e for e in await gateway.run(gateway.services.store.events(types=[type_])) if e.session == sid]
        if events:
            return dict(events[-1].data)
        await asyncio.sleep(0.05)
    pytest.fail(f"no {type_} event for {sid}")


async def test_kill_ends_running_query(gateway: Gateway, bystander: asyncpg.Connection) -> None:
    before = set(gateway.live_session_ids())
    c = await raw.RawClient.login(gateway.port, await gateway.token())
    (sid,) = set(gateway.live_session_ids()) - before
    c.send(raw.query("SELECT pg_sleep(60)"))
    await _query_running(gateway, sid)
    assert await gateway.run(gateway.services.registry.kill(sid, "suspicious activity", by="carol"))
    tag, body = await c.recv()
    err = ErrorResponse.decode(body)
    assert (tag, err.fields["S"], err.sqlstate) == ("E", "FATAL", "57P01")
    assert "suspicious activity" in err.message
    assert await c.closed() == b""
    await _backend_gone(gateway, sid)
    end = await _session_event(gateway, sid, "session.end")
    assert end["reason"] == "suspicious activity" and end["recording_sha256"]
    await c.close()


async def test_deadline_kills(gateway: Gateway, bystander: asyncpg.Connection) -> None:
    registry = gateway.services.registry
    old = registry.warn_before
    registry.warn_before = 1.5
    notices: list[str] = []
    try:
        conn, sid, task = await _open_with_sleep(gateway, await gateway.token(ttl=4))
        conn.add_log_listener(lambda _c, msg: notices.append(msg.message))
        with pytest.raises(asyncpg.PostgresError, match="access window expired"):
            await asyncio.wait_for(task, 10)
        await _backend_gone(gateway, sid)
        conn.terminate()
    finally:
        registry.warn_before = old
    assert any("access window closes" in n for n in notices), notices


async def test_revocation_kills(gateway: Gateway, bystander: asyncpg.Connection) -> None:
    issued = await gateway.grant()
    conn, sid, task = await _open_with_sleep(gateway, issued.token)
    await gateway.run(
        gateway.services.store.revoke_grant(issued.grant.id, by="carol", reason="incident closed", now=time.time())
    )
    await gateway.run(gateway.services.registry.sweep())
    with pytest.raises(asyncpg.PostgresError, match="revoked"):
        await asyncio.wait_for(task, 5)
    await _backend_gone(gateway, sid)
    conn.terminate()
    with pytest.raises(asyncpg.InvalidPasswordError, match="revoked"):
        await gateway.connect(issued.token)


async def test_client_vanishing_cancels_the_query(gateway: Gateway, bystander: asyncpg.Connection) -> None:
    """Closing the client socket alone does not stop a running query: the gateway must cancel it."""
    conn, sid, task = await _open_with_sleep(gateway, await gateway.token())
    conn.terminate()
    task.cancel()
    await _backend_gone(gateway, sid)
    end = await _session_event(gateway, sid, "session.end")
    assert "client" in str(end["reason"])


async def test_cancel_request_through_gateway(gateway: Gateway, bystander: asyncpg.Connection) -> None:
    conn = await gateway.connect(await gateway.token())
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT pg_sleep(20)", timeout=0.5)
        assert await conn.fetchval("SELECT 41 + 1") == 42
        assert time.monotonic() - t0 < 5
    finally:
        await conn.close()


def test_psycopg_cancel(gateway: Gateway, read_token: str) -> None:
    import threading

    import psycopg

    with psycopg.connect(gateway.conninfo(read_token)) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - t0 < 5
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.fixture
async def read_token(gateway: Gateway) -> str:
    return await gateway.token()
