"""Postgres semantics through the gateway: names as the server reads them, client encodings, FunctionCall,
and what a denial mid-pipeline leaves in the database (each compared with the server's own behaviour)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator

import psycopg
import pytest

from gateway.pg.listener import PostgresListener
from tests.pg import rawclient as raw
from tests.pg.conftest import TARGET, USER, Gateway, make_config
from tests.rig.postgres import PgCluster
from tests.threaded import serve_in_thread

# --- 1. Unicode-escaped names and every string form ------------------------------------------------


async def test_unicode_escaped_names_through_psql(gateway: Gateway) -> None:
    """A U&-escaped table name is read in read scope; a U&-escaped denied function is denied."""
    token = await gateway.token("read")
    out = gateway.psql(token, sql='SELECT count(*) FROM U&"\\006Frders"')
    assert out.returncode == 0 and out.stdout.strip() == "150", out.stderr
    out = gateway.psql(
        token,
        sql="SELECT count(*) FROM U&\"!006Frders\" UESCAPE '!' "
        "WHERE status <> E'\\x6E\\157pe' AND status <> U&'n\\006Fpe' AND status <> $t$x$t$",
    )
    assert out.returncode == 0 and out.stdout.strip() == "150", out.stderr
    out = gateway.psql(token, sql='SELECT U&"\\0070g_terminate_backend"(pg_backend_pid())')
    assert out.returncode != 0 and "blocked by gateway policy" in out.stderr
    assert "pg_terminate_backend" in out.stderr
    out = gateway.psql(await gateway.token("write"), sql='SELECT U&"\\0070g_terminate_backend"(pg_backend_pid())')
    assert out.returncode != 0 and "blocked by gateway policy" in out.stderr


# --- 2. client encodings ------------------------------------------------------------------------------


def _psql_bytes(gateway: Gateway, token: str, script: bytes, **env: str) -> subprocess.CompletedProcess[bytes]:
    """psql through the gateway reading `script` (raw bytes, in whatever encoding the test speaks)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    environ.update(PGPASSWORD=token, **env)
    conninfo = f"host={gateway.host} port={gateway.port} user={USER} dbname={TARGET} sslmode=require"
    cmd = [gateway.cluster.psql_bin, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", conninfo]
    return subprocess.run(cmd, input=script, capture_output=True, env=environ, timeout=60)


NAME = "Zoë Ångström"  # in LATIN1


@pytest.mark.parametrize("how", ["PGCLIENTENCODING", "SET", "SET NAMES", "set_config"])
async def test_latin1_session_writes_and_reads_non_ascii(gateway: Gateway, how: str) -> None:
    """A LATIN1 client's text reaches the table as the characters it meant, and reads back in LATIN1."""
    email = f"latin1-{how.replace(' ', '')}@example.com"
    env: dict[str, str] = {}
    head = b""
    if how == "PGCLIENTENCODING":
        env["PGCLIENTENCODING"] = "LATIN1"
    elif how == "SET":
        head = b"SET client_encoding TO 'LATIN1';\n"
    elif how == "SET NAMES":
        head = b"SET NAMES 'latin1';\n"
    else:  # set_config is an admin-scope function; the encoding check holds there too
        head = b"SELECT set_config('client_encoding', 'ISO-8859-1', false) \\g /dev/null\n"
    body = (
        f"INSERT INTO customers (name, email) VALUES ('{NAME}', '{email}');\n"
        f"SELECT name FROM customers WHERE email = '{email}' AND name LIKE 'Zo_ Å%';\n"
    ).encode("latin-1")
    try:
        scope = "admin" if how == "set_config" else "write"
        out = _psql_bytes(gateway, await gateway.token(scope), head + body, **env)
        assert out.returncode == 0, out.stderr.decode("latin-1")
        assert out.stdout.decode("latin-1").strip() == NAME
        assert gateway.superuser(f"SELECT name FROM customers WHERE email = '{email}'") == NAME
    finally:
        gateway.superuser(f"DELETE FROM customers WHERE email = '{email}'")


async def test_win1252_and_euc_jp_sessions_read_non_ascii(gateway: Gateway) -> None:
    token = await gateway.token("read")
    for encoding, python in (("WIN1252", "cp1252"), ("EUC_JP", "euc_jp"), ("SQL_ASCII", "latin-1")):
        text = "€uro" if encoding == "WIN1252" else ("日本" if encoding == "EUC_JP" else "plain")
        out = _psql_bytes(gateway, token, f"SELECT '{text}' AS \"{text}\", count(*) FROM orders;\n".encode(python),
                          PGCLIENTENCODING=encoding)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.decode(python).strip() == f"{text}|150"


@pytest.mark.parametrize("encoding", ["SJIS", "GBK", "BIG5", "GB18030", "UHC", "JOHAB", "SHIFT_JIS_2004", "EUC_TW"])
async def test_unsafe_encodings_still_refused(gateway: Gateway, encoding: str) -> None:
    token = await gateway.token("write")
    out = _psql_bytes(gateway, token, b"SELECT 1;\n", PGCLIENTENCODING=encoding)
    assert out.returncode != 0 and b"client_encoding" in out.stderr, out.stderr
    for sql in (f"SET client_encoding TO '{encoding}';", f"SET NAMES '{encoding}';",
                f"SELECT set_config('client_encoding', '{encoding}', false);"):  # fmt: skip
        out = _psql_bytes(gateway, token, sql.encode())
        assert out.returncode != 0 and b"blocked by gateway policy" in out.stderr, (sql, out.stderr)
    # After a safe change, an unsafe one is still refused.
    out = _psql_bytes(gateway, token, f"SET client_encoding TO latin1; SET client_encoding TO {encoding};".encode())
    assert out.returncode != 0 and b"blocked by gateway policy" in out.stderr


# --- 3. FunctionCall follows the policy's mode, not the scope's name ---------------------------------

# Scope names that say the opposite of their modes.
MISNAMED = """
target: orders
scopes:
  read:
    max_ttl: 1h
    sql:
      mode: read
  write:
    max_ttl: 1h
    sql:
      mode: admin
  admin:
    max_ttl: 1h
    sql:
      mode: write
"""


@pytest.fixture(scope="module")
def misnamed(pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = make_config(tmp_path_factory.mktemp("gw-misnamed"), pg_cluster)
    (config.policies_dir / "orders.yaml").write_text(MISNAMED)
    with serve_in_thread(config, PostgresListener, "gateway-misnamed") as (services, listener, loop):
        yield Gateway(config, services, listener, pg_cluster, loop)


def _function_call(oid: int, *args: int) -> bytes:
    """A FunctionCall message: int4 arguments in binary, a binary result."""
    body = oid.to_bytes(4, "big") + b"\x00\x01\x00\x01" + len(args).to_bytes(2, "big")
    for a in args:
        body += b"\x00\x00\x00\x04" + a.to_bytes(4, "big", signed=True)
    return raw.msg("F", body + b"\x00\x01")


@pytest.mark.parametrize(("scope", "allowed"), [("admin", False), ("write", True), ("read", False)])
async def test_function_call_follows_the_mode(misnamed: Gateway, scope: str, allowed: bool) -> None:
    c = await raw.RawClient.login(misnamed.port, await misnamed.token(scope))
    try:
        c.send(_function_call(2026))  # pg_backend_pid(): harmless, so the answer shows whether it ran
        msgs = await c.until_ready()
        if allowed:
            assert raw.tags(msgs) == "VZ", msgs
        else:
            assert raw.tags(msgs) == "EZ"
            err = raw.errors(msgs)[0]
            assert err.sqlstate == "42501" and "function-call" in err.message, err.message
        c.send(raw.query("SELECT 1"))
        assert raw.tags(await c.until_ready()) == "TDCZ"
    finally:
        await c.close()


# --- 4. a denial mid-pipeline leaves the database as a failing statement there would -----------------

DENIED = "SELECT pg_terminate_backend(%s)"  # denied in write scope
FAILING = "SELECT 1 / (%s - 1)"  # fails on the server itself with 1 (division by zero)


def _emails(gateway: Gateway, tag: str) -> list[str]:
    out = gateway.superuser(f"SELECT string_agg(email, ',' ORDER BY email) FROM customers WHERE email LIKE '{tag}-%'")
    return out.split(",") if out else []


def _insert(conn: psycopg.Connection, tag: str, n: str) -> None:
    conn.execute("INSERT INTO customers (name, email) VALUES (%s, %s)", ("pipeline", f"{tag}-{n}@example.com"))


def _implicit_pipeline(conn: psycopg.Connection, tag: str, bad: str) -> None:
    """Autocommit: a, b, <bad>, c before one Sync (one implicit transaction), then d in a batch of its own."""
    with pytest.raises(psycopg.Error), conn.pipeline() as p:
        _insert(conn, tag, "a")
        _insert(conn, tag, "b")
        conn.execute(bad, (1,))
        _insert(conn, tag, "c")
        p.sync()
    with conn.pipeline():
        _insert(conn, tag, "d")


def _block_pipeline(conn: psycopg.Connection, tag: str, bad: str) -> None:
    """BEGIN, a, <bad>, b in one batch, then the client says COMMIT (which the server turns into ROLLBACK)."""
    with pytest.raises(psycopg.Error), conn.pipeline() as p:
        conn.execute("BEGIN")
        _insert(conn, tag, "a")
        conn.execute(bad, (1,))
        _insert(conn, tag, "b")
        p.sync()
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.INERROR
    conn.execute("COMMIT")


def _allowed_then_later_batch(conn: psycopg.Connection, tag: str, bad: str) -> None:
    """a; Sync; then b, <bad> in the next batch: the first batch stands, the second rolls back."""
    with pytest.raises(psycopg.Error), conn.pipeline() as p:
        _insert(conn, tag, "a")
        p.sync()
        _insert(conn, tag, "b")
        conn.execute(bad, (1,))
        p.sync()


@pytest.mark.parametrize("sequence", [_implicit_pipeline, _block_pipeline, _allowed_then_later_batch])
async def test_pipeline_denial_leaves_what_postgres_would(gateway: Gateway, sequence: Callable[..., None]) -> None:
    token = await gateway.token("write")
    name = sequence.__name__.strip("_").replace("_", "")
    direct, through = f"direct{name}", f"gw{name}"
    try:
        with psycopg.connect(gateway.cluster.dsn("app_rw"), autocommit=True) as conn:
            sequence(conn, direct, FAILING)
        with psycopg.connect(gateway.conninfo(token), autocommit=True) as conn:
            sequence(conn, through, DENIED)
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (150,), "the session goes on"
        expected = [e.replace(direct, through) for e in _emails(gateway, direct)]
        assert _emails(gateway, through) == expected
    finally:
        gateway.superuser(f"DELETE FROM customers WHERE email LIKE '{direct}-%' OR email LIKE '{through}-%'")


@pytest.mark.parametrize("explicit", [False, True])
async def test_multi_statement_query_denial_runs_none_of_it(gateway: Gateway, explicit: bool) -> None:
    """A multi-statement Query is one implicit transaction: refused as a whole, as PostgreSQL rolls it back."""
    token = await gateway.token("write")
    tag = f"multi{int(explicit)}"

    def text(who: str, bad: str) -> str:
        ins = "INSERT INTO customers (name, email) VALUES ('multi', '{}-{}-{}@example.com')"
        parts = [ins.format(who, tag, n) for n in "ab"] + [bad] + [ins.format(who, tag, "c")]
        return ("BEGIN; " if explicit else "") + "; ".join(parts)

    try:
        with pytest.raises(Exception, match="division by zero"):
            gateway.superuser(text("direct", "SELECT 1 / 0"))
        out = gateway.psql(token, sql=text("gw", "SELECT pg_terminate_backend(1)"))
        assert out.returncode != 0 and "blocked by gateway policy" in out.stderr
        assert _emails(gateway, f"direct-{tag}") == _emails(gateway, f"gw-{tag}") == []
    finally:
        gateway.superuser(f"DELETE FROM customers WHERE email LIKE '%-{tag}-%'")
