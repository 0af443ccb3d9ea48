"""Calls that are not `name (`: attribute notation, user overloads, operators and conversions (issue 9).

Pure tests of the inspector with and without a target catalogue (gateway.pg.sql.catalog), and hypothesis
fuzzing of every call form of denied functions in every clause. tests/pg/test_bypass_functions.py does
the same through the real gateway against PostgreSQL.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.pg.sql import functions as fn
from gateway.pg.sql.catalog import Catalog, build
from gateway.pg.sql.inspector import Inspector, decide, inspect
from gateway.pg.sql.pgcatalog15 import UNARY_BUILTINS
from gateway.policy import SqlPolicy
from tests.test_sqlinspect import FUZZ

READ, WRITE, ADMIN = SqlPolicy("read"), SqlPolicy("write"), SqlPolicy("admin")
COLUMNS = {
    "orders": ("id", "customer_id", "amount", "status", "created_at", "ctid", "xmin"),
    "customers": ("id", "name", "email", "phone"),
    "pg_stat_activity": ("pid", "state", "query"),
}


def catalog(*extra: tuple[str, str, str, str, str]) -> Catalog:
    """The built-ins of PostgreSQL 15 (as pgcatalog15 lists them), the rig's tables, and `extra` rows."""
    rows = [("f", name, "true", "pg_catalog", "") for name in UNARY_BUILTINS]
    for oid, (rel, cols) in enumerate(COLUMNS.items()):
        rows += [("c", rel, col, str(oid), "") for col in cols]
    return build([*rows, *extra])


CAT = catalog()
SHADOWED = catalog(
    ("f", "lower", "true", "public", ""),  # public.lower(integer)
    ("f", "similarity", "false", "public", "pg_trgm"),  # contrib: still the allowlisted built-in
    ("f", "evil", "true", "public", ""),
    ("o", "@>", "public.evil_contains", "public", ""),  # @> for a user type
    ("t", "money2", "", "public", ""),
    ("t", "tenant_id", "", "public", ""),
    ("x", "money2", "public.to_money2", "public", ""),
    ("x", "tenant_id", "public.check_tenant", "public", ""),  # a domain whose CHECK calls a user function
)


def allowed(sql: str, policy: SqlPolicy, cat: Catalog | None) -> bool:
    return decide(inspect(sql), policy, catalog=cat).allowed


def rule(sql: str, policy: SqlPolicy, cat: Catalog | None) -> str:
    return decide(inspect(sql), policy, catalog=cat).rule


@pytest.mark.parametrize("cat", [None, CAT], ids=["no-catalogue", "catalogue"])
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT t.id FROM t",
        "SELECT o.amount FROM orders o",
        "SELECT (o).id FROM orders o",
        "SELECT (o).* FROM orders o",
        "SELECT o.* FROM orders o",
        "SELECT c.name, c.email FROM customers c",  # name() is also a function: allowlisted anyway
        "SELECT public.orders.id FROM public.orders",
        "SELECT orders.status FROM orders",
        "SELECT t.ctid FROM orders t",
        "WITH c AS (SELECT 1 AS x) SELECT c.x FROM c",
        "SELECT s.n FROM generate_series(1, 2) AS s(n)",
        "SELECT u.a FROM unnest(ARRAY[1]) WITH ORDINALITY u(a, n)",
        "SELECT l.x FROM orders o, LATERAL (SELECT o.id AS x) l",
        "SELECT (c.name).length FROM customers c",
        "SELECT ('x').text",
        "SELECT x::pg_catalog.int4 FROM t",
        "SELECT a.pid FROM pg_stat_activity a",
        "SELECT 1 FROM orders o WHERE o.id = 1 ORDER BY o.created_at",
    ],
)
def test_plain_columns_are_not_calls(sql: str, cat: Catalog | None) -> None:
    assert allowed(sql, READ, cat), sql
    assert allowed(sql, WRITE, cat), sql


def test_upsert_excluded_is_a_row_not_a_call() -> None:
    sql = "INSERT INTO orders (id, status) VALUES (1, 'paid') ON CONFLICT (id) DO UPDATE SET status = excluded.status"
    for cat in (None, CAT):
        assert allowed(sql, WRITE, cat)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT (1).pg_terminate_backend",
        "SELECT o.pg_terminate_backend FROM orders o",  # no such column: pg_terminate_backend(o)
        "SELECT (o.id).pg_cancel_backend FROM orders o",
        "SELECT ((1)).pg_terminate_backend",
        "SELECT (SELECT 1).pg_terminate_backend",
        "SELECT (ARRAY[1])[1].pg_terminate_backend",
        "SELECT ('q'::text).ts_stat",
        'SELECT (1) . "pg_terminate_backend"',
        "SELECT (1)/**/.pg_terminate_backend",
    ],
)
def test_attribute_notation_reaches_the_allowlist(sql: str) -> None:
    for cat in (None, CAT):
        for policy in (READ, WRITE):
            d = decide(inspect(sql), policy, catalog=cat)
            assert not d.allowed and d.rule == "function-not-allowed", (sql, policy.mode, d)
        assert allowed(sql, ADMIN, cat)


def test_read_scope_denies_side_effects_called_as_attributes() -> None:
    for name in ("pg_advisory_lock", "lo_create", "lo_unlink", "txid_current", "pg_current_xact_id", "nextval"):
        for cat in (None, CAT):
            # txid_current takes no argument: `(1).txid_current` is no call, but nobody can tell: denied too
            assert not allowed(f"SELECT (1).{name}", READ, cat), name
            assert rule(f"SELECT {name}(1)", READ, cat) == "function-not-allowed", name


def test_unknown_attribute_on_an_expression_fails_closed() -> None:
    # Without a catalogue, `(x).evil` may be a user function: denied below admin.
    assert rule("SELECT (1).evil", READ, None) == "ambiguous-call"
    assert rule("SELECT (1).evil", WRITE, None) == "ambiguous-call"
    assert allowed("SELECT (1).evil", ADMIN, None)
    # With one: a known function is a call; a name that is neither a function nor any column, too new?
    assert rule("SELECT (1).evil", READ, SHADOWED) == "function-not-allowed"
    assert allowed("SELECT (1).evil", WRITE, SHADOWED)  # a user function: write scope may call it
    assert rule("SELECT (1).brand_new", READ, CAT) == "ambiguous-call"
    # A field of a composite column is a column when some relation or type has such a field.
    with_addr = catalog(("c", "customers", "addr", "1", ""), ("c", "address", "city", "7", ""))
    assert allowed("SELECT (c.addr).city FROM customers c", READ, with_addr)
    assert rule("SELECT c.address FROM customers c", READ, with_addr) == "ambiguous-call"  # no such column
    assert rule("SELECT (c.addr).city FROM customers c", READ, None) == "ambiguous-call"
    # The policy may name it.
    assert allowed("SELECT (1).evil", SqlPolicy("read", extra_functions=frozenset({"evil"})), None)


def test_a_relation_with_the_column_wins_over_the_function() -> None:
    cat = catalog(("c", "jobs", "pg_advisory_lock", "99", ""))  # a column with a function's name
    assert allowed("SELECT j.pg_advisory_lock FROM jobs j", READ, cat)
    assert not allowed("SELECT j.pg_advisory_lock FROM jobs j", READ, None)  # without one: fail closed
    # Names denied even in write scope are denied as `.name` whatever the catalogue says (a backstop).
    cat = catalog(("c", "jobs", "pg_terminate_backend", "99", ""))
    assert not allowed("SELECT j.pg_terminate_backend FROM jobs j", READ, cat)
    # A relation of the catalogue without the column: the server calls pg_terminate_backend(j).
    assert not allowed("SELECT o.pg_terminate_backend FROM orders o", READ, cat)


def test_user_overload_of_a_builtin_is_a_user_function() -> None:
    for sql in ("SELECT lower(1)", "SELECT lower(name) FROM customers", 'SELECT "lower"(1)', "SELECT (1).lower"):
        d = decide(inspect(sql), READ, catalog=SHADOWED)
        assert not d.allowed and "outside pg_catalog" in d.reason, sql
        assert allowed(sql, READ, CAT), sql  # without the overload: the built-in
        assert allowed(sql, WRITE, SHADOWED), sql
    assert allowed("SELECT pg_catalog.lower('A')", READ, SHADOWED)
    assert allowed("SELECT lower(1)", SqlPolicy("read", extra_functions=frozenset({"lower"})), SHADOWED)
    assert allowed("SELECT lower(1)", SqlPolicy("read", extra_functions=frozenset({"public.lower"})), SHADOWED)
    assert not allowed("SELECT lower(1)", SqlPolicy("read", extra_functions=frozenset({"other.lower"})), SHADOWED)
    assert allowed("SELECT similarity('a', 'b')", READ, SHADOWED)  # contrib's own


def test_operators_and_conversions_backed_by_user_functions() -> None:
    for sql in (
        "SELECT a @> b FROM t",
        "SELECT '1'::money2",
        "SELECT '1'::public.money2",
        "SELECT CAST('1' AS money2)",
        "SELECT CAST('1' AS public.money2[])",
        "SELECT money2 '1'",
        "SELECT ('1').money2",
        "SELECT money2('1')",
        "SELECT x::tenant_id FROM t",
    ):
        d = decide(inspect(sql), READ, catalog=SHADOWED)
        # `money2 '1'` is beyond sqlglot (unparseable: denied too)
        assert not d.allowed and d.rule in ("unparseable", "function-not-allowed"), (sql, d)
        assert allowed(sql, WRITE, SHADOWED) or d.rule == "unparseable", sql
    assert allowed("SELECT 1 + 2, '1'::int, * FROM orders", READ, SHADOWED)
    named = SqlPolicy("read", extra_functions=frozenset({"public.evil_contains"}))
    assert allowed("SELECT a @> b FROM t", named, SHADOWED)
    # Operators of our own making (and OPERATOR(schema.op)) are beyond sqlglot: unparseable, denied.
    assert not allowed("SELECT 1 === 2", READ, SHADOWED)
    assert not allowed("SELECT 1 OPERATOR(public.+) 2", READ, CAT)


def test_inspector_takes_a_new_catalogue() -> None:
    insp = Inspector(READ, catalog=CAT)
    assert insp.check("SELECT lower(1)")[1].allowed
    insp.use(SHADOWED)
    assert not insp.check("SELECT lower(1)")[1].allowed
    insp.use(None)
    assert insp.check("SELECT lower(1)")[1].allowed


def test_inspector_tells_of_ddl() -> None:
    heard: list[int] = []
    insp = Inspector(ADMIN, catalog=CAT)
    insp.on_ddl = lambda: heard.append(1)
    insp.check("SELECT 1")
    insp.check("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    insp.check("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'")  # also when repeated
    insp.check("DO $$ BEGIN END $$")
    assert heard == [1, 1, 1]
    read = Inspector(READ)
    read.on_ddl = lambda: heard.append(2)
    read.check("DROP TABLE orders")  # denied: nothing changed
    assert heard == [1, 1, 1]


def test_sql_text_functions_are_denied_in_write_scope() -> None:
    for name in ("query_to_xml", "cursor_to_xml", "cursor_to_xmlschema", "ts_stat", "ts_rewrite", "table_to_xml",
                 "database_to_xml", "schema_to_xmlschema", "crosstab", "crosstab3", "connectby", "dblink"):  # fmt: skip
        assert rule(f"SELECT {name}('x')", WRITE, None) == "function-not-allowed", name
        assert rule(f"SELECT {name}('x')", READ, None) == "function-not-allowed", name


# --- fuzzing: every form of a denied call, in every clause -----------------------------------------

READ_DENIED = [
    "pg_terminate_backend", "pg_cancel_backend", "pg_advisory_lock", "pg_try_advisory_lock", "pg_advisory_xact_lock",
    "lo_create", "lo_creat", "lo_unlink", "lo_from_bytea", "ts_stat", "txid_current", "pg_current_xact_id", "nextval",
    "setval", "pg_notify", "pg_reload_conf", "pg_rotate_logfile", "set_config", "query_to_xml", "cursor_to_xml",
    "dblink", "crosstab", "connectby", "pg_read_file",
]  # fmt: skip
WRITE_DENIED = [n for n in READ_DENIED if n in fn.WRITE_DENIED_FUNCTIONS or n.startswith(fn.WRITE_DENIED_PREFIXES)]
ARGS = ["1", "pid", "'x'", "$1", "(SELECT 1)", "o.id", "1::int"]
CALLS = [
    "{f}({a})",
    '"{f}"({a})',
    "pg_catalog.{f}({a})",
    '"pg_catalog"."{f}"({a})',
    "public.{f}({a})",
    "({a}).{f}",
    '({a})."{f}"',
    "(({a})).{f}",
    "({a}) . {f}",
    "(({a})::int).{f}",
    "(SELECT {a}).{f}",
    "(ARRAY[{a}])[1].{f}",
    "o.{f}",
    "(o).{f}",
    "(o.id).{f}",
]
CLAUSES = [
    "SELECT {c}",
    "SELECT {c} FROM orders o",
    "SELECT 1 FROM orders o WHERE {c} IS NULL",
    "SELECT 1 FROM orders o ORDER BY {c}",
    "SELECT 1 FROM orders o GROUP BY {c}",
    "SELECT 1 FROM orders o GROUP BY 1 HAVING count({c}) > 0",
    "SELECT 1 LIMIT {c}",
    "SELECT 1 OFFSET {c}",
    "VALUES ({c})",
    "SELECT * FROM orders o, LATERAL (SELECT {c}) l",
    "SELECT * FROM orders o JOIN orders p ON p.id = {c}",
    "WITH w AS (SELECT {c} FROM orders o) SELECT * FROM w",
    "SELECT (SELECT {c} FROM orders o LIMIT 1)",
    "SELECT (ARRAY[1, 2])[{c}]",
    "SELECT CASE WHEN {c} THEN 1 ELSE {c} END FROM orders o",
    "SELECT count(*) OVER (PARTITION BY {c}) FROM orders o",
    "SELECT 1 WHERE EXISTS (SELECT 1 FROM orders o WHERE {c})",
    "UPDATE orders o SET status = {c} WHERE o.id = 1",
    "INSERT INTO orders (id) SELECT {c} FROM orders o RETURNING {c}",
    "DELETE FROM orders o WHERE o.id = {c} RETURNING {c}",
    "SELECT * FROM ROWS FROM (generate_series(1, 2), {c}) AS x",
    "DECLARE cur CURSOR FOR SELECT {c} FROM orders o",
    "EXPLAIN ANALYZE SELECT {c} FROM orders o",
    "PREPARE p AS SELECT {c} FROM orders o",
    "COPY (SELECT {c} FROM orders o) TO STDOUT",
]


def _mixed_case(word: str, flips: list[bool]) -> str:
    return "".join(c.upper() if f else c for c, f in zip(word, flips + [False] * len(word), strict=False))


@FUZZ
@given(
    st.sampled_from(READ_DENIED),
    st.sampled_from(CALLS),
    st.sampled_from(ARGS),
    st.sampled_from(CLAUSES),
    st.lists(st.booleans(), max_size=20),
    st.sampled_from([None, CAT]),
)
def test_every_form_of_a_denied_call_is_denied(
    name: str, call: str, arg: str, clause: str, flips: list[bool], cat: Catalog | None
) -> None:
    # `o.f` with f taking two arguments is no call: the server looks for a column f and fails.
    assume(not (call in ("o.{f}", "(o).{f}") and name not in UNARY_BUILTINS))
    assume(not (call == "o.{f}" and "ROWS FROM" in clause))  # ROWS FROM (o.f): a table name, not SQL
    if '"' not in call:
        name = _mixed_case(name, flips)  # unquoted names fold; quoted ones are exact (and lowercase here)
    text = clause.format(c=call.format(f=name, a=arg))
    policies = [READ] + ([WRITE] if name.lower() in WRITE_DENIED else [])
    for policy in policies:
        d = decide(inspect(text), policy, catalog=cat)
        assert not d.allowed, (policy.mode, text, d)
        assert not Inspector(policy, catalog=cat).check(text)[1].allowed, (policy.mode, text)


def test_same_named_relations_in_two_schemas() -> None:
    """public.users and auth.users with different columns: a column of either is no call (nor unknown)."""
    cat = catalog(("c", "users", "username", "10", ""), ("c", "users", "email", "11", ""))
    assert cat.columns["users"] == frozenset()
    assert allowed("SELECT u.username, u.email FROM users u", READ, cat)
    assert not allowed("SELECT u.pg_advisory_lock FROM users u", READ, cat)  # a call where the column is missing


def test_a_name_for_two_relations_stands_for_neither() -> None:
    cat = catalog(("f", "email", "true", "public", ""))  # a user email(orders)
    sql = "SELECT customers.email FROM orders customers WHERE EXISTS (SELECT 1 FROM customers)"
    assert not allowed(sql, READ, cat)  # in the outer query `customers` is orders, which has no email
    assert allowed("SELECT customers.email FROM customers", READ, cat)
