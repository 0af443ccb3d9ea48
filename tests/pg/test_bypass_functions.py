"""Function calls the inspector once missed (issue 9), through the real gateway, psycopg and PostgreSQL 15.

Each attempt must be refused with 42501, and a superuser then checks that nothing happened: the other
backend is alive, no advisory lock or large object exists, no NOTIFY arrived, the session's settings
are what they were, no row was written by a user function that shadows a built-in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

import psycopg
import pytest

from gateway.pg.sql.catalog import Catalog
from gateway.pg.sql.inspector import Inspector
from gateway.pg.sql.pgcatalog15 import UNARY_BUILTINS
from gateway.policy import SqlPolicy
from tests.pg.conftest import TARGET, Gateway


def _session(gateway: Gateway, token: str) -> psycopg.Connection:
    return psycopg.connect(gateway.conninfo(token), autocommit=True)


def _refused(conn: psycopg.Connection, sql: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="blocked by gateway policy"):
        conn.execute(sql)
    assert conn.execute("SELECT 1").fetchone() == (1,), "the session must go on"


@pytest.fixture
def victim(gateway: Gateway) -> Iterator[tuple[psycopg.Connection, int]]:
    """Another backend (the superuser's, straight to the cluster): nothing through the gateway may end it."""
    conn = psycopg.connect(gateway.cluster.superuser_dsn(), autocommit=True)
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    pid = row[0]
    yield conn, pid
    conn.close()


SIGNALS = [
    "SELECT ({pid}).pg_terminate_backend",
    'SELECT ({pid})."pg_terminate_backend"',
    "SELECT (pid).pg_terminate_backend FROM pg_stat_activity WHERE pid = {pid}",
    "SELECT a.pid FROM pg_stat_activity a WHERE (a.pid).pg_terminate_backend AND a.pid = {pid}",
    "SELECT 1 ORDER BY ({pid}).pg_terminate_backend",
    "SELECT count(*) FROM (SELECT ({pid}).pg_cancel_backend) s",
    "WITH x AS (SELECT ({pid})::int AS p) SELECT (x.p).pg_terminate_backend FROM x",
    "SELECT pg_catalog.pg_terminate_backend({pid})",
    'SELECT "pg_catalog"."pg_terminate_backend"({pid})',
    "VALUES ((({pid})).pg_terminate_backend)",
]


@pytest.mark.parametrize("scope", ["read", "write"])
@pytest.mark.parametrize("sql", SIGNALS)
async def test_other_backends_cannot_be_signalled(
    gateway: Gateway, victim: tuple[psycopg.Connection, int], scope: str, sql: str
) -> None:
    other, pid = victim
    with _session(gateway, await gateway.token(scope)) as conn:
        _refused(conn, sql.format(pid=pid))
    assert other.execute("SELECT 1").fetchone() == (1,), "the other backend was signalled"
    assert gateway.superuser(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == "1"


LOCKS = [
    "SELECT (91001).pg_advisory_lock",
    "SELECT (91001::bigint).pg_try_advisory_lock",
    "SELECT x.k.pg_advisory_lock FROM (SELECT 91001 AS k) x",
    "SELECT 1 FROM orders o WHERE (o.id + 91000).pg_advisory_lock IS NULL",
    "SELECT pg_advisory_lock(91001)",
]


@pytest.mark.parametrize("sql", LOCKS)
async def test_read_scope_takes_no_advisory_lock(gateway: Gateway, sql: str) -> None:
    with _session(gateway, await gateway.token("read")) as conn:
        _refused(conn, sql)
        assert gateway.superuser("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"


LARGE_OBJECTS = [
    "SELECT (0).lo_create",
    'SELECT (0)."lo_create"',
    "SELECT id FROM orders WHERE id = (0).lo_creat",
    "SELECT lo_from_bytea(0, 'x')",
]


@pytest.mark.parametrize("sql", LARGE_OBJECTS)
async def test_read_scope_creates_no_large_object(gateway: Gateway, sql: str) -> None:
    before = gateway.superuser("SELECT count(*) FROM pg_largeobject_metadata")
    with _session(gateway, await gateway.token("read")) as conn:
        _refused(conn, sql)
    assert gateway.superuser("SELECT count(*) FROM pg_largeobject_metadata") == before


def _sql_text(inner: str) -> str:
    """A string literal of `inner` as ts_stat wants it: a query returning one tsvector column."""
    return "'SELECT to_tsvector(" + inner.replace("'", "''") + ")'"


SETTERS = [
    ("default_transaction_read_only", "off"),
    ("statement_timeout", "4242"),
    ("app.tenant", "2"),  # a row-level-security tenant setting
]
FORMS = [
    "SELECT ({q}::text).ts_stat",
    'SELECT ({q}::text)."ts_stat"',
    "SELECT * FROM ts_stat({q})",
    "SELECT pg_catalog.ts_stat({q})",
    "SELECT (q).ts_stat FROM (SELECT {q}::text AS q) s",
    "SELECT 1 WHERE EXISTS (SELECT ({q}::text).ts_stat)",
    "SELECT query_to_xml({q}, true, true, '')",
    "SELECT * FROM orders o JOIN LATERAL ts_stat({q}) t ON true LIMIT 1",
]


@pytest.mark.parametrize("scope", ["read", "write"])
@pytest.mark.parametrize("form", FORMS)
async def test_sql_text_functions_run_nothing(gateway: Gateway, scope: str, form: str) -> None:
    with _session(gateway, await gateway.token(scope)) as conn:
        before = {name: conn.execute(f"SELECT current_setting('{name}', true)").fetchone() for name, _ in SETTERS}
        for name, value in SETTERS:
            _refused(conn, form.format(q=_sql_text(f"set_config('{name}', '{value}', false)")))
        after = {name: conn.execute(f"SELECT current_setting('{name}', true)").fetchone() for name, _ in SETTERS}
        assert after == before
        if scope == "read":
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


async def test_sql_text_functions_send_no_notify(gateway: Gateway) -> None:
    listener = psycopg.connect(gateway.cluster.superuser_dsn(), autocommit=True)
    try:
        listener.execute("LISTEN gw_canary")
        with _session(gateway, await gateway.token("read")) as conn:
            q = _sql_text("(SELECT 'a' FROM pg_notify('gw_canary', 'pwned'))")
            for form in FORMS:
                _refused(conn, form.format(q=q))
            _refused(conn, "SELECT ('gw_canary').pg_notify")  # not one argument: still never a read
        conn.close()
        listener.execute("SELECT 1")
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
    finally:
        listener.close()


ORDINARY = [
    ("SELECT o.id, o.amount FROM orders o ORDER BY o.id LIMIT 1", (1,)),
    ("SELECT orders.status FROM orders ORDER BY orders.id LIMIT 1", None),
    ("SELECT (o).id FROM orders o ORDER BY 1 LIMIT 1", (1,)),
    ("SELECT (o).* FROM orders o ORDER BY 1 LIMIT 1", (1,)),
    ("SELECT c.name, c.email FROM customers c ORDER BY c.id LIMIT 1", None),
    ("SELECT public.orders.id FROM public.orders ORDER BY 1 LIMIT 1", (1,)),
    ("SELECT t.ctid IS NOT NULL FROM orders t LIMIT 1", (True,)),
    ("SELECT i.sku FROM order_items i JOIN orders o ON o.id = i.order_id ORDER BY i.id LIMIT 1", None),
    ("WITH c AS (SELECT 1 AS x) SELECT c.x FROM c", (1,)),
    ("SELECT s.n FROM generate_series(1, 2) AS s(n) ORDER BY 1 LIMIT 1", (1,)),
    ("SELECT (c.name).length FROM customers c ORDER BY c.id LIMIT 1", None),  # length(name): allowlisted
    ("SELECT a.pid IS NOT NULL FROM pg_stat_activity a LIMIT 1", (True,)),
]


@pytest.mark.parametrize(("sql", "first"), ORDINARY)
async def test_ordinary_dotted_names_still_run(gateway: Gateway, sql: str, first: tuple[object, ...] | None) -> None:
    with _session(gateway, await gateway.token("read")) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        if first is not None:
            assert row[: len(first)] == first


def test_builtin_unary_names_cover_the_server(gateway: Gateway) -> None:
    """The fallback list (no catalogue) names every one-argument built-in of the running server."""
    live = set(
        gateway.superuser(
            "SELECT string_agg(DISTINCT proname, ' ') FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace"
            " AND ((pronargs >= 1 AND pronargs - pronargdefaults <= 1) OR provariadic <> 0)"
        ).split()
    )
    assert live - UNARY_BUILTINS == set()


# --- a user function that shadows a built-in -------------------------------------------------------

SHADOW = """
CREATE TABLE gw_canary (id int);
CREATE FUNCTION public.lower(integer) RETURNS text LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    PERFORM pg_advisory_lock(91009);  -- held even when the INSERT below fails in a read-only transaction
    INSERT INTO gw_canary VALUES ($1);
    RETURN 'pwned';
END $$;
"""


async def _wait(gateway: Gateway, ready: Callable[[Catalog], bool]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        cat = gateway.listener.catalogs.current(TARGET)
        if cat is not None and ready(cat):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the catalogue was not reloaded after DDL through the gateway")


@pytest.fixture
async def shadowed_lower(gateway: Gateway) -> object:
    """public.lower(integer), created and dropped through the gateway in admin scope (the DDL path)."""
    admin = _session(gateway, await gateway.token("admin"))
    try:
        admin.execute(SHADOW)
        await _wait(gateway, lambda c: "lower" in c.user_functions)
        yield admin
    finally:
        admin.execute("DROP FUNCTION IF EXISTS public.lower(integer); DROP TABLE IF EXISTS gw_canary")
        admin.close()
        await _wait(gateway, lambda c: "lower" not in c.user_functions)


@pytest.mark.parametrize(
    "sql", ["SELECT lower(1)", "SELECT (1).lower", 'SELECT "lower"(1)', "SELECT lower(id::int) FROM orders"]
)
async def test_user_overload_of_a_builtin_is_a_user_function(gateway: Gateway, shadowed_lower: object,
                                                             sql: str) -> None:  # fmt: skip
    with _session(gateway, await gateway.token("read")) as conn:
        _refused(conn, sql)
        # The built-in is still there, qualified: pg_catalog.lower cannot resolve to public.lower.
        assert conn.execute("SELECT pg_catalog.lower('ABC')").fetchone() == ("abc",)
        assert gateway.superuser("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"
    assert gateway.superuser("SELECT count(*) FROM gw_canary") == "0"


USER_CONVERSIONS = """
CREATE FUNCTION public.gw_check(integer) RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN PERFORM pg_advisory_lock(91010); RETURN true; END $$;
CREATE DOMAIN gw_positive AS integer CHECK (public.gw_check(VALUE));
CREATE TYPE gw_pair AS (a integer, b integer);
CREATE FUNCTION public.gw_pair_plus(gw_pair, gw_pair) RETURNS integer LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN PERFORM pg_advisory_lock(91011); RETURN 1; END $$;
CREATE OPERATOR + (LEFTARG = gw_pair, RIGHTARG = gw_pair, FUNCTION = public.gw_pair_plus);
"""
DROP_CONVERSIONS = """
DROP OPERATOR IF EXISTS + (gw_pair, gw_pair); DROP FUNCTION IF EXISTS public.gw_pair_plus(gw_pair, gw_pair);
DROP TYPE IF EXISTS gw_pair; DROP DOMAIN IF EXISTS gw_positive; DROP FUNCTION IF EXISTS public.gw_check(integer)
"""


@pytest.fixture
async def user_conversions(gateway: Gateway) -> AsyncIterator[None]:
    """A domain whose CHECK calls a user function, and `+` on a composite type backed by one."""
    admin = _session(gateway, await gateway.token("admin"))
    try:
        admin.execute(USER_CONVERSIONS)
        await _wait(gateway, lambda c: "gw_positive" in c.user_types and "+" in c.user_operators)
        yield
    finally:
        admin.execute(DROP_CONVERSIONS)
        admin.close()
        await _wait(gateway, lambda c: "gw_positive" not in c.user_types and "+" not in c.user_operators)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 5::gw_positive",
        "SELECT CAST(5 AS gw_positive)",
        "SELECT (5).gw_positive",
        "SELECT id FROM orders WHERE id::gw_positive = 1",
        "SELECT ROW(1, 2)::gw_pair + ROW(3, 4)::gw_pair",
    ],
)
async def test_conversions_and_operators_backed_by_user_functions(
    gateway: Gateway, user_conversions: None, sql: str
) -> None:
    with _session(gateway, await gateway.token("read")) as conn:
        _refused(conn, sql)
        assert gateway.superuser("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"
    # Operators resolve by operand types, which the inspector cannot see: while a user `+` exists, every `+`
    # in read scope is a call of its function (fail closed) until the policy names it.
    named = SqlPolicy("read", extra_functions=frozenset({"public.gw_pair_plus"}))
    cat = gateway.listener.catalogs.current(TARGET)
    assert not Inspector(SqlPolicy("read"), catalog=cat).check("SELECT 1 + 2")[1].allowed
    assert Inspector(named, catalog=cat).check("SELECT 1 + 2")[1].allowed


async def test_psql_attribute_notation_is_refused(gateway: Gateway, victim: tuple[psycopg.Connection, int]) -> None:
    """The stock psql client, as the issue's attacker used it."""
    other, pid = victim
    sql = f"SELECT (pid).pg_terminate_backend FROM pg_stat_activity WHERE pid = {pid}"
    out = await asyncio.to_thread(gateway.psql, await gateway.token("read"), sql=sql)
    assert out.returncode != 0 and "blocked by gateway policy" in out.stderr, out
    assert other.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("sql", ["SELECT txid_current()", "SELECT pg_current_xact_id()", "SELECT (1).txid_current"])
async def test_read_scope_assigns_no_transaction_id(gateway: Gateway, sql: str) -> None:
    with _session(gateway, await gateway.token("read")) as conn:
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="blocked by gateway policy"):
            conn.execute(sql)
        # Still inside the transaction: its backend holds no transaction id.
        held = "SELECT count(backend_xid) FROM pg_stat_activity WHERE application_name LIKE 'gateway:%'"
        assert gateway.superuser(held) == "0"
        conn.execute("ROLLBACK")
