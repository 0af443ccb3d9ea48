"""The statement recording: one line per statement with its verdict, rows, timing, errors and transactions."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.pg.conftest import Gateway

# Always there; params, tables, rows, rule, reason, sqlstate and error only when they have a value.
FIELDS = {"type", "sql", "fingerprint", "kind", "verdict", "duration_ms", "tx", "t"}


async def _ended(gateway: Gateway, sid: str) -> None:
    for _ in range(100):
        if sid not in gateway.live_session_ids():
            await asyncio.sleep(0.1)
            return
        await asyncio.sleep(0.05)
    pytest.fail("session did not end")


async def test_recording_lines(gateway: Gateway) -> None:
    before = set(gateway.live_session_ids())
    conn = await gateway.connect(await gateway.token())
    (sid,) = set(gateway.live_session_ids()) - before
    await conn.execute("SELECT id FROM orders ORDER BY id LIMIT 7")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("DELETE FROM orders")
    with pytest.raises(asyncpg.UndefinedTableError):
        await conn.execute("SELECT * FROM no_such_table")
    assert await conn.fetchval("SELECT status FROM orders WHERE id = $1 AND status <> $2", 3, "x") == "cancelled"
    async with conn.transaction():
        await conn.execute("SELECT count(*) FROM customers")
    await conn.execute("SELECT 1; SELECT 2")
    await conn.close()
    await _ended(gateway, sid)

    lines = gateway.recording(sid)
    header, *events = lines
    assert header["type"] == "header" and header["session"] == sid and header["user"] == "alice"
    assert header["login"] == "app_ro" and header["scope"] == "read"
    assert events[-1]["type"] == "end"
    stmts = [e for e in events if e["type"] == "statement"]
    for s in stmts:
        assert FIELDS <= set(s), set(s) ^ FIELDS
    by_sql = {s["sql"]: s for s in stmts}

    first = by_sql["SELECT id FROM orders ORDER BY id LIMIT 7"]
    assert (first["verdict"], first["rows"], first["kind"], first["tables"]) == ("allow", 7, "select", ["orders"])
    assert first["duration_ms"] >= 0 and first["tx"] == "idle" and first["fingerprint"]

    denied = by_sql["DELETE FROM orders"]
    assert denied["verdict"] == "deny" and denied["sqlstate"] == "42501" and denied["rule"]

    failed = by_sql["SELECT * FROM no_such_table"]
    assert failed["sqlstate"] == "42P01" and "no_such_table" in failed["error"]

    bound = by_sql["SELECT status FROM orders WHERE id = $1 AND status <> $2"]
    # asyncpg binds in binary: recorded as hex (a text-format parameter is recorded as text)
    assert bound["params"] == ["\\x0000000000000003", "\\x78"] and bound["rows"] == 1

    in_tx = by_sql["SELECT count(*) FROM customers"]
    assert in_tx["tx"] == "transaction"
    assert {"type": "transaction", "outcome": "commit"}.items() <= next(
        e for e in events if e["type"] == "transaction"
    ).items()
    assert "SELECT 1" in by_sql and "SELECT 2" in by_sql  # one line per statement of a multi-statement Query


async def test_sensitive_table_and_max_rows_alerts(gateway: Gateway) -> None:
    conn = await gateway.connect(await gateway.token())
    before = len(await gateway.run(gateway.services.store.events()))
    try:
        await conn.fetch("SELECT email FROM customers")
        await conn.fetch("SELECT * FROM order_items")  # 300 rows > max_rows 100
    finally:
        await conn.close()
    for _ in range(50):
        events = (await gateway.run(gateway.services.store.events()))[before:]
        alerts = [e for e in events if e.type.startswith("alert.")]
        summaries = " | ".join(str(a.data) for a in alerts)
        if "customers" in summaries and "300 rows" in summaries:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"alerts missing: {summaries}")
