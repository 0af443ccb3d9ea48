"""set_config() with its name or value as a Bind parameter, through the gateway with real drivers.

The encoding wall decides such a statement at each Bind, from the values the Bind message carries: a pair
that cannot make client_encoding unsafe or standard_conforming_strings off runs (and takes effect), an unsafe
one is refused with the server left as it was, and a value not sent as text stays refused. Checked in write
scope (set_config allowed by the policy) and admin scope, unnamed and prepared, psycopg (text values) and
asyncpg (binary values).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from gateway.pg.listener import PostgresListener
from tests.pg.conftest import Gateway, make_config
from tests.rig.postgres import PgCluster
from tests.threaded import serve_in_thread

POLICY = """
target: orders
scopes:
  read:
    max_ttl: 1h
    sql:
      mode: read
  write:
    max_ttl: 1h
    sql:
      mode: write
      allow_functions: [set_config]
  admin:
    max_ttl: 1h
    sql:
      mode: admin
"""
SET_CONFIG = "SELECT set_config(%s, %s, false)"
SAFE = [("jit", "off"), ("client_encoding", "LATIN1"), ("client_encoding", "utf-8"),
        ("standard_conforming_strings", "on"), ("application_name", "it's off")]  # fmt: skip
UNSAFE = [("client_encoding", "SJIS", "client_encoding SJIS is not allowed"),
          ("CLIENT_ENCODING", "Shift_JIS", "client_encoding SJIS is not allowed"),
          ("client_encoding", "big5", "client_encoding BIG5 is not allowed"),
          ("standard_conforming_strings", "off", "standard_conforming_strings must stay on"),
          ("standard_conforming_strings", "0", "standard_conforming_strings must stay on")]  # fmt: skip


@pytest.fixture(scope="module")
def bindgw(pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = make_config(tmp_path_factory.mktemp("gw-bind"), pg_cluster)
    (config.policies_dir / "orders.yaml").write_text(POLICY)
    with serve_in_thread(config, PostgresListener, "gateway-bind") as (services, listener, loop):
        yield Gateway(config, services, listener, pg_cluster, loop)


def _show(conn: psycopg.Connection, name: str) -> str:
    row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("scope", ["write", "admin"])
@pytest.mark.parametrize("prepare", [False, True], ids=["unnamed", "prepared"])
async def test_psycopg_set_config_with_parameters(bindgw: Gateway, scope: str, prepare: bool) -> None:
    token = await bindgw.token(scope)
    with psycopg.connect(bindgw.conninfo(token), autocommit=True) as conn:
        for name, value in SAFE:
            conn.execute(SET_CONFIG, (name, value), prepare=prepare)
            assert _show(conn, name).lower() in (value.lower(), "utf8")  # it ran: utf-8 is reported as UTF8
            conn.execute(SET_CONFIG, ("client_encoding", "UTF8"), prepare=prepare)
        for name, value, why in UNSAFE:
            with pytest.raises(
                psycopg.errors.InsufficientPrivilege, match=f"blocked by gateway policy: encoding: {why}"
            ):
                conn.execute(SET_CONFIG, (name, value), prepare=prepare)
            # refused before it ran: the session goes on, in its own encoding, strings as the parser reads them
            assert _show(conn, "client_encoding") == "UTF8" and _show(conn, "standard_conforming_strings") == "on"
        # a literal name and a parameter value, the shape psycopg's own type lookups use
        conn.execute("SELECT set_config('client_encoding', %s, false)", ("LATIN9",), prepare=prepare)
        assert _show(conn, "client_encoding") == "LATIN9"
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="GBK is not allowed"):
            conn.execute("SELECT set_config('client_encoding', %s, false)", ("gbk",), prepare=prepare)
        assert _show(conn, "client_encoding") == "LATIN9"


async def test_the_refusal_is_recorded_with_its_values(bindgw: Gateway) -> None:
    token = await bindgw.token("admin")
    before = set(bindgw.live_session_ids())
    with psycopg.connect(bindgw.conninfo(token), autocommit=True) as conn:
        (sid,) = set(bindgw.live_session_ids()) - before
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(SET_CONFIG, ("client_encoding", "SJIS"))
    deadline = time.monotonic() + 20
    while not any(r.get("type") == "end" for r in bindgw.recording(sid)):  # written once the session has ended
        assert time.monotonic() < deadline, "the recording was not closed"
        await asyncio.sleep(0.05)
    [line] = [r for r in bindgw.recording(sid) if r.get("verdict") == "deny"]
    assert line["params"] == ["client_encoding", "SJIS"] and line["rule"] == "encoding"
    assert line["sql"] == "SELECT set_config($1, $2, false)"


async def test_a_prepared_set_config_cannot_be_run_by_sql_execute(bindgw: Gateway) -> None:
    """A statement decided at Bind, run by name from SQL (EXECUTE passes values the Bind check never sees)."""
    token = await bindgw.token("admin")
    with psycopg.connect(bindgw.conninfo(token), autocommit=True) as conn:
        conn.execute(SET_CONFIG, ("jit", "off"), prepare=True)
        row = conn.execute("SELECT name FROM pg_prepared_statements WHERE statement LIKE '%set_config($1%'").fetchone()
        assert row is not None
        for sql in (f"EXECUTE {row[0]}('client_encoding', 'SJIS')",
                    f"EXPLAIN (ANALYZE) EXECUTE \"{row[0]}\"('standard_conforming_strings', 'off')"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="checked only when bound"):
                conn.execute(sql)
        assert _show(conn, "client_encoding") == "UTF8" and _show(conn, "standard_conforming_strings") == "on"


async def test_read_scope_still_refuses_set_config_with_parameters(bindgw: Gateway) -> None:
    token = await bindgw.token("read")
    with psycopg.connect(bindgw.conninfo(token), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="set_config"):
            conn.execute(SET_CONFIG, ("jit", "off"))


@pytest.mark.parametrize("scope", ["write", "admin"])
async def test_asyncpg_binary_values_stay_refused(bindgw: Gateway, scope: str) -> None:
    """asyncpg sends text in binary format: the gateway does not read binary values, so a lexing setting is refused."""
    conn = await bindgw.connect(await bindgw.token(scope))
    try:
        for name, value in (("client_encoding", "SJIS"), ("client_encoding", "UTF8"), ("jit", "off")):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only a text value"):
                await conn.fetchval("SELECT set_config($1, $2, false)", name, value)
        # a literal name that is not one of the two: its value cannot matter, whatever its format
        assert await conn.fetchval("SELECT set_config('jit', $1, false)", "off") == "off"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only a text value"):
            await conn.fetchval("SELECT set_config('client_encoding', $1, false)", "UTF8")
        assert await conn.fetchval("SHOW client_encoding") == "UTF8"
    finally:
        await conn.close()
