"""The target catalogue: read from the rig's PostgreSQL with the scope's own login, kept, and failed closed."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from gateway.config import Address, Login, Target
from gateway.pg.catalogload import CatalogError, Catalogs, _Entry, load_catalog
from gateway.pg.sql.catalog import Catalog, build
from gateway.pg.sql.inspector import Inspector
from gateway.policy import SqlPolicy
from gateway.secret import Secret
from tests.pg.conftest import OTHER_TARGET, TARGET, Gateway


def _target(gateway: Gateway) -> Target:
    return gateway.config.targets[TARGET]


async def test_the_read_login_reads_the_whole_catalogue(gateway: Gateway) -> None:
    target = _target(gateway)
    start = time.monotonic()
    cat = await load_catalog(target, target.logins["read"], now=time.time())
    took = time.monotonic() - start
    assert took < 5, took
    assert {"lower", "pg_terminate_backend", "pg_advisory_lock", "lo_create", "ts_stat", "text"} <= cat.unary
    assert {"id", "customer_id", "amount", "status", "ctid"} <= cat.columns["orders"]
    assert {"pid", "query"} <= cat.columns["pg_stat_activity"]
    assert "lower" not in cat.user_functions and not cat.user_operators
    # The same rows a superuser sees: the catalogue tables are granted to PUBLIC.
    admin = await load_catalog(target, target.logins["admin"])
    assert admin.unary == cat.unary and admin.columns == cat.columns


async def test_a_login_that_fails_gives_no_catalogue(gateway: Gateway) -> None:
    target = _target(gateway)
    bad = Login(scope="read", user="app_ro", password=Secret("not-the-password"))
    with pytest.raises(CatalogError) as err:
        await load_catalog(target, bad)
    assert "not-the-password" not in str(err.value)
    catalogs = Catalogs(retry=60)
    assert await catalogs.get(target, bad) is None
    assert await catalogs.get(target, bad) is None  # no second attempt before `retry`


async def test_catalogs_load_once_keep_the_last_and_reload_after_ddl() -> None:
    calls: list[str] = []
    snapshots = [build([("f", "a", "true", "pg_catalog", "")]), build([("f", "b", "true", "public", "")])]
    fail = False

    async def loader(target: Target, login: Login) -> Catalog:
        calls.append(target.name)
        await asyncio.sleep(0.01)
        if fail:
            raise CatalogError("down")
        return snapshots[min(len(calls) - 1, 1)]

    now = [0.0]
    catalogs = Catalogs(max_age=100, retry=0, loader=loader, clock=lambda: now[0])
    changed: list[Catalog] = []
    catalogs.listeners.append(lambda name, cat: changed.append(cat))
    target = Target(name="t", kind="postgres", address=Address("127.0.0.1", 1), logins={})
    login = Login(scope="read", user="r")
    first = await asyncio.gather(*(catalogs.get(target, login) for _ in range(5)))
    assert calls == ["t"] and all(c is snapshots[0] for c in first)  # one load for concurrent sessions
    assert await catalogs.get(target, login) is snapshots[0]
    now[0] = 200.0  # old: the next session gets the old one while the new one loads
    assert await catalogs.get(target, login) is snapshots[0]
    await asyncio.sleep(0.05)
    assert catalogs.current("t") is snapshots[1] and changed == [snapshots[0], snapshots[1]]
    fail = True
    now[0] = 400.0
    await catalogs.get(target, login)
    await asyncio.sleep(0.05)
    assert catalogs.current("t") is snapshots[1], "a failed reload keeps the last snapshot"
    catalogs.close()


async def test_no_catalogue_fails_closed_on_ambiguous_names() -> None:
    insp = Inspector(SqlPolicy("read"), catalog=None)
    assert insp.check("SELECT o.id FROM orders o")[1].allowed
    d = insp.check("SELECT (1).my_function")[1]
    assert not d.allowed and d.rule == "ambiguous-call" and "catalogue" in d.reason


@pytest.mark.parametrize("scope", ["read", "write"])
async def test_every_session_of_a_target_shares_one_catalogue(gateway: Gateway, scope: str) -> None:
    conn = await gateway.connect(await gateway.token(scope))
    try:
        assert await conn.fetchval("SELECT (o).id FROM orders o ORDER BY 1 LIMIT 1") == 1
    finally:
        await conn.close()
    cat = gateway.listener.catalogs.current(TARGET)
    assert cat is not None and "orders" in cat.columns
    active = gateway.superuser("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'gateway:catalog'")
    assert active == "0", "the catalogue connection is closed once read"


# C functions of PostgreSQL 15 that hand a text argument (or a name they build a query from) to SPI:
# src/backend/utils/adt/xml.c, tsvector_op.c (ts_stat) and tsquery_rewrite.c (ts_rewrite(tsquery, text)).
SPI_WITH_TEXT = (
    "query_to_xml query_to_xmlschema query_to_xml_and_xmlschema cursor_to_xml cursor_to_xmlschema table_to_xml "
    "table_to_xmlschema table_to_xml_and_xmlschema schema_to_xml schema_to_xmlschema schema_to_xml_and_xmlschema "
    "database_to_xml database_to_xmlschema database_to_xml_and_xmlschema ts_stat1 ts_stat2 tsquery_rewrite_query"
).split()


def test_every_builtin_that_runs_sql_text_is_denied_in_read_and_write(gateway: Gateway) -> None:
    quoted = ", ".join(f"'{s}'" for s in SPI_WITH_TEXT)
    names = gateway.superuser(
        f"SELECT string_agg(DISTINCT proname, ' ') FROM pg_proc WHERE prolang = 12 AND prosrc IN ({quoted})"
    ).split()
    assert len(names) >= 15, names
    for name in names:
        for mode in ("read", "write"):
            d = Inspector(SqlPolicy(mode)).check(f"SELECT {name}('SELECT 1')")[1]
            assert not d.allowed and d.rule == "function-not-allowed", (mode, name)


async def test_a_target_without_catalogue_fails_closed_through_the_gateway(gateway: Gateway) -> None:
    """orders-replica (same database) whose catalogue cannot be read: ambiguous names are refused, columns run."""
    catalogs = gateway.listener.catalogs
    saved = catalogs._entries.get(OTHER_TARGET)
    catalogs._entries[OTHER_TARGET] = _Entry(failed=time.monotonic() + 3600)  # as if the load just failed
    try:
        token = await gateway.token("read", target=OTHER_TARGET)
        with psycopg.connect(gateway.conninfo(token, database=OTHER_TARGET), autocommit=True) as conn:
            assert conn.execute("SELECT o.id FROM orders o ORDER BY 1 LIMIT 1").fetchone() == (1,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"ambiguous-call.*catalogue"):
                conn.execute("SELECT (1).gw_not_a_builtin")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_advisory_lock"):
                conn.execute("SELECT (1).pg_advisory_lock")
    finally:
        if saved is None:
            catalogs._entries.pop(OTHER_TARGET, None)
        else:
            catalogs._entries[OTHER_TARGET] = saved
