"""Read scope bypass attempts: each is refused with 42501, the session goes on, and the data is untouched."""

from __future__ import annotations

import asyncpg
import psycopg
import pytest

from gateway.pg.messages import ErrorResponse
from tests.pg import rawclient as raw
from tests.pg.conftest import Gateway

SNAPSHOT = """SELECT (SELECT count(*) FROM orders) || ',' || (SELECT count(*) FROM order_items) || ','
    || (SELECT count(*) FROM customers) || ',' || (SELECT sum(amount) FROM orders) || ','
    || (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'app_%') || ',' || (SELECT count(*) FROM pg_class
    WHERE relnamespace = 'public'::regnamespace) || ',' || (SELECT count(*) FROM pg_proc
    WHERE pronamespace = 'public'::regnamespace)"""

READ_BYPASSES = [
    "SELECT 1; DELETE FROM order_items",
    "WITH gone AS (DELETE FROM order_items RETURNING id) SELECT count(*) FROM gone",
    "SET ROLE app_admin",
    "SET SESSION AUTHORIZATION app_admin",
    "BEGIN READ WRITE",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "COPY orders TO '/tmp/gateway-exfil.csv'",
    "DO $$ BEGIN DELETE FROM order_items; END $$",
    "CALL pg_catalog.some_procedure()",
    "PREPARE wipe AS DELETE FROM order_items",
    "EXECUTE wipe",
    "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE",
    "TRUNCATE order_items",
    "SELEC * FRM orders WHERE",
    "UPDATE orders SET amount = 0",
    "INSERT INTO customers (name, email) VALUES ('x', 'x@example.com')",
    "ALTER ROLE app_ro SET default_transaction_read_only = off",
    "SET client_encoding TO 'SJIS'",
    "CREATE TABLE leak AS SELECT * FROM customers",
    "RESET ROLE; UPDATE orders SET status = 'paid'",
]


@pytest.fixture(scope="module")
def snapshot(gateway: Gateway) -> str:
    return gateway.superuser(SNAPSHOT)


@pytest.mark.parametrize("sql", READ_BYPASSES)
async def test_read_bypass_denied(gateway: Gateway, snapshot: str, sql: str) -> None:
    conn = await gateway.connect(await gateway.token("read"))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="blocked by gateway policy"):
            await conn.execute(sql)  # no arguments: simple Query protocol
        assert await conn.fetchval("SELECT count(*) FROM orders") == 150, "the session must go on"
    finally:
        await conn.close()
    assert gateway.superuser(SNAPSHOT) == snapshot


async def test_extended_parse_of_delete_denied(gateway: Gateway, snapshot: str) -> None:
    conn = await gateway.connect(await gateway.token("read"))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="blocked by gateway policy"):
            await conn.execute("DELETE FROM order_items WHERE id > $1", 0)  # arguments: Parse/Bind/Execute
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.prepare("UPDATE orders SET amount = $1")
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    finally:
        await conn.close()
    assert gateway.superuser(SNAPSHOT) == snapshot


async def test_function_call_refused_outside_admin(gateway: Gateway, snapshot: str) -> None:
    c = await raw.RawClient.login(gateway.port, await gateway.token("read"))
    try:
        # FunctionCall of pg_catalog.pg_terminate_backend (oid 2096) with one int4 argument.
        oid, formats, nargs = b"\x00\x00\x08\x30", b"\x00\x01\x00\x01", b"\x00\x01"
        body = oid + formats + nargs + b"\x00\x00\x00\x04\x00\x00\x00\x01" + b"\x00\x01"
        c.send(raw.msg("F", body))
        msgs = await c.until_ready()
        assert raw.tags(msgs) == "EZ"
        assert raw.errors(msgs)[0].sqlstate == "42501"
        c.send(raw.query("SELECT 1"))
        assert raw.tags(await c.until_ready()) == "TDCZ"
    finally:
        await c.close()
    assert gateway.superuser(SNAPSHOT) == snapshot


async def test_denial_mid_pipeline(gateway: Gateway, snapshot: str) -> None:
    """The allowed part's replies, then our error where the server's would be, then ReadyForQuery."""
    c = await raw.RawClient.login(gateway.port, await gateway.token("read"))
    try:
        c.send(raw.parse("SELECT 1") + raw.bind() + raw.execute()
               + raw.parse("DELETE FROM order_items") + raw.bind() + raw.execute() + raw.SYNC
               + raw.parse("SELECT 2") + raw.bind() + raw.execute() + raw.SYNC)  # fmt: skip
        first = await c.until_ready()
        assert raw.tags(first) == "12DCEZ"
        err = raw.errors(first)[0]
        assert err.sqlstate == "42501" and "blocked by gateway policy" in err.message
        assert first[-1][1] == b"I"
        second = await c.until_ready()
        assert raw.tags(second) == "12DCZ" and second[2][1].endswith(b"2")
        # A denial at the very start of a batch, with a Flush: the error comes at once, the Sync gets Z.
        c.send(raw.parse("TRUNCATE orders") + raw.FLUSH)
        tag, body = await c.recv()
        assert tag == "E" and ErrorResponse.decode(body).sqlstate == "42501"
        c.send(raw.bind() + raw.execute() + raw.SYNC)
        assert raw.tags(await c.until_ready()) == "Z"
        # Inside a transaction block a denial fails the block, as any error there does in PostgreSQL:
        # the status is the upstream's real one, and COMMIT rolls back.
        c.send(raw.query("BEGIN"))
        assert (await c.until_ready())[-1] == ("Z", b"T")
        c.send(raw.parse("DELETE FROM orders") + raw.bind() + raw.execute() + raw.SYNC)
        msgs = await c.until_ready()
        assert raw.tags(msgs) == "EZ" and msgs[-1] == ("Z", b"E")
        c.send(raw.query("COMMIT"))
        msgs = await c.until_ready()
        assert msgs[0] == ("C", b"ROLLBACK\0") and msgs[-1] == ("Z", b"I")
    finally:
        await c.close()
    assert gateway.superuser(SNAPSHOT) == snapshot


def test_psycopg_pipeline_with_denial(gateway: Gateway, snapshot: str, anyio_token: str) -> None:
    with psycopg.connect(gateway.conninfo(anyio_token)) as conn:
        with conn.pipeline():
            a = conn.execute("SELECT %s::int", (1,))
            b = conn.execute("SELECT %s::int", (2,))
        assert a.fetchone() == (1,) and b.fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
            conn.execute("SELECT %s::int", (3,))
            conn.execute("DELETE FROM orders WHERE id = %s", (1,))
        conn.rollback()
        with conn.pipeline():
            c = conn.execute("SELECT count(*) FROM orders")
        assert c.fetchone() == (150,)
    assert gateway.superuser(SNAPSHOT) == snapshot


@pytest.fixture
async def anyio_token(gateway: Gateway) -> str:
    return await gateway.token("read")


async def test_write_scope_writes_and_rolls_back(gateway: Gateway, snapshot: str) -> None:
    conn = await gateway.connect(await gateway.token("write"))
    try:
        assert await conn.fetchval("SELECT current_user") == "app_rw"
        tx = conn.transaction()
        await tx.start()
        assert await conn.execute("UPDATE orders SET status = 'paid' WHERE id = $1", 1) == "UPDATE 1"
        await tx.rollback()
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SET ROLE app_admin")
    finally:
        await conn.close()
    assert gateway.superuser(SNAPSHOT) == snapshot
