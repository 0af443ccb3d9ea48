"""Postgres semantics through the gateway: names as the server reads them, client encodings, FunctionCall,
and what a denial mid-pipeline leaves in the database (each compared with the server's own behaviour)."""

from __future__ import annotations

from tests.pg.conftest import Gateway

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
