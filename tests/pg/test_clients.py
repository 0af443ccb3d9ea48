"""Real clients through the gateway: asyncpg, psycopg, psql; queries, prepared statements, pipelines, COPY."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pg.conftest import Gateway


async def test_asyncpg_query_and_prepared(gateway: Gateway) -> None:
    conn = await gateway.connect(await gateway.token())
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders") == 150
        assert await conn.fetchval("SELECT current_user") == "app_ro"
        stmt = await conn.prepare("SELECT id, status FROM orders WHERE id = $1")
        for i in (1, 2, 3):
            row = await stmt.fetchrow(i)
            assert row["id"] == i
        rows = await conn.fetch("SELECT id FROM customers WHERE id IN ($1, $2, $3) ORDER BY id", 3, 1, 2)
        assert [r["id"] for r in rows] == [1, 2, 3]
    finally:
        await conn.close()


async def test_asyncpg_array_and_custom_type_parameters_in_read_scope(gateway: Gateway) -> None:
    # Array and composite parameters make asyncpg introspect types, which starts with
    # set_config('jit', 'off', false): read scope must let that harmless setting through.
    conn = await gateway.connect(await gateway.token())
    try:
        rows = await conn.fetch("SELECT id FROM customers WHERE id = ANY($1::int[]) ORDER BY id", [2, 4])
        assert [r["id"] for r in rows] == [2, 4]
        assert await conn.fetchval("SELECT $1::text[]", ["a", "b"]) == ["a", "b"]
        assert await conn.fetchval("SELECT current_setting('default_transaction_read_only')") == "on"
    finally:
        await conn.close()


def test_psql_over_tls(gateway: Gateway, read_token: str) -> None:
    proc = gateway.psql(read_token, sql="SELECT count(*) FROM order_items")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "300"
    proc = gateway.psql(read_token, sql="SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert proc.returncode == 0, proc.stderr


def test_psql_plaintext_refused(gateway: Gateway, read_token: str) -> None:
    proc = gateway.psql(read_token, sql="SELECT 1", sslmode="disable")
    assert proc.returncode != 0
    assert "requires TLS" in proc.stderr


def test_psql_copy_out(gateway: Gateway, read_token: str) -> None:
    proc = gateway.psql(read_token, sql="\\copy (SELECT id, status FROM orders ORDER BY id) TO STDOUT WITH CSV")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 150 and lines[0].startswith("1,")


async def test_copy_in_admin_scope(gateway: Gateway) -> None:
    token = await gateway.token("admin")
    conn = await gateway.connect(token)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS gw_copy_test (id int, name text)")
        await conn.execute("TRUNCATE gw_copy_test")
        n = await conn.copy_records_to_table("gw_copy_test", records=[(i, f"n{i}") for i in range(1000)])
        assert n == "COPY 1000"
        proc = gateway.psql(token, "-c", "\\copy gw_copy_test FROM STDIN WITH CSV", stdin="2000,a\n2001,b\n")
        # psql with -c reads \copy data from its stdin
        assert proc.returncode == 0, proc.stderr
        assert gateway.superuser("SELECT count(*) FROM gw_copy_test") == "1002"
        out: list[bytes] = []

        async def sink(chunk: bytes) -> None:
            out.append(chunk)

        await conn.copy_from_query("SELECT * FROM gw_copy_test ORDER BY id", output=sink)
        assert b"".join(out).count(b"\n") == 1002
    finally:
        await conn.execute("DROP TABLE IF EXISTS gw_copy_test")
        await conn.close()


async def test_asyncpg_copy_out_read_scope(gateway: Gateway, read_token: str) -> None:
    conn = await gateway.connect(read_token)
    try:
        out: list[bytes] = []

        async def sink(chunk: bytes) -> None:
            out.append(chunk)

        await conn.copy_from_table("order_items", output=sink, format="csv")
        assert b"".join(out).count(b"\n") == 300
    finally:
        await conn.close()


async def test_listen_notify(gateway: Gateway, read_token: str) -> None:
    conn = await gateway.connect(read_token)
    got: asyncio.Queue[str] = asyncio.Queue()
    try:
        await conn.add_listener("gw_channel", lambda _c, _pid, _ch, payload: got.put_nowait(payload))
        await asyncio.to_thread(gateway.superuser, "NOTIFY gw_channel, 'hello'")
        assert await asyncio.wait_for(got.get(), 5) == "hello"
    finally:
        await conn.close()


async def value(cur: psycopg.AsyncCursor[tuple[Any, ...]]) -> Any:
    """The first column of the cursor's next row (there must be one)."""
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def test_psycopg_async_and_pipeline(gateway: Gateway, read_token: str) -> None:

    async with await psycopg.AsyncConnection.connect(gateway.conninfo(read_token)) as conn:
        async with conn.pipeline():
            curs = [await conn.execute("SELECT %s::int * 2", (i,)) for i in range(20)]
        assert [await value(c) for c in curs] == [i * 2 for i in range(20)]
        cur = await conn.execute("SELECT name FROM customers WHERE id = %s", (7,), prepare=True)
        assert await value(cur) == "Customer 7"
        for i in range(6):  # psycopg prepares server-side after a few executions
            cur = await conn.execute("SELECT id FROM orders WHERE id = %s", (i + 1,))
            assert await value(cur) == i + 1


async def test_many_concurrent_sessions(gateway: Gateway) -> None:
    async def one(i: int) -> int:
        conn = await gateway.connect(await gateway.token())
        try:
            total = 0
            for _ in range(20):
                total += await conn.fetchval("SELECT $1::int", i)
            return total
        finally:
            await conn.close()

    assert await asyncio.gather(*(one(i) for i in range(10))) == [i * 20 for i in range(10)]


async def test_big_result_and_big_query(gateway: Gateway, read_token: str) -> None:
    conn = await gateway.connect(read_token)
    try:
        rows = await conn.fetch("SELECT g, repeat('x', 1000) FROM generate_series(1, 5000) g")
        assert len(rows) == 5000
        big = "SELECT " + " + ".join(["1"] * 2000)
        assert await conn.fetchval(big) == 2000
        blob = await conn.fetchval("SELECT $1::text", "y" * 3_000_000)
        assert len(blob) == 3_000_000
    finally:
        await conn.close()


@pytest.fixture
async def read_token(gateway: Gateway) -> str:
    return await gateway.token()


async def test_pg_dump_through_the_admin_scope(gateway: Gateway) -> None:
    # pg_dump 15.8+ runs set_config(name, 'view, foreign-table', false) FROM pg_settings (CVE-2024-7348):
    # a computed setting name, which the encoding wall must let through when the value cannot be unsafe.
    token = await gateway.token("admin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGPASSWORD": token}
    pg_dump = str(Path(gateway.cluster.psql_bin).with_name("pg_dump"))
    got = await asyncio.to_thread(
        subprocess.run, [pg_dump, "--no-password", gateway.conninfo(token).replace(f"password={token} ", "")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert "CREATE TABLE public.orders" in got.stdout and "COPY public.orders" in got.stdout
    assert token not in got.stdout + got.stderr
