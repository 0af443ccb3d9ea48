"""`gateway target check`: against the rig's real PostgreSQL, in a database of its own (dropped afterwards).

A stock read role has rights its scope says it must not (PUBLIC may EXECUTE lo_create, pg_advisory_lock,
set_config..., and TEMP on every new database); after a superuser runs the suggested statements the check
is clean for that role.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import Address, Login, Target
from gateway.pg.targetcheck import check_target, count_findings, render
from gateway.secret import Secret
from tests.rig.postgres import PgCluster

DB = "gw_tcheck"
SETUP = """
CREATE TABLE t (id int);
CREATE TABLE u (id int, note text);
GRANT SELECT, INSERT ON t TO app_ro;
GRANT SELECT, UPDATE (note) ON u TO app_ro;
GRANT SELECT, INSERT, UPDATE, DELETE ON t TO app_rw;
"""


@pytest.fixture(scope="module")
def tcheck(pg_cluster: PgCluster) -> Iterator[Target]:
    """A fresh database (stock PUBLIC rights) and a target with the rig's three logins on it."""
    pg_cluster.psql(f"DROP DATABASE IF EXISTS {DB}")
    pg_cluster.psql(f"CREATE DATABASE {DB}")
    pg_cluster.psql(SETUP, db=DB)
    logins = {scope: Login(scope=scope, user=role, password=Secret(pg_cluster.passwords[role]))
              for scope, role in (("read", "app_ro"), ("write", "app_rw"), ("admin", "app_admin"))}  # fmt: skip
    try:
        yield Target(name="tcheck", kind="postgres", address=Address(pg_cluster.host, pg_cluster.port),
                     logins=logins, database=DB)  # fmt: skip
    finally:
        pg_cluster.psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def test_cli_exit_code_and_table(tcheck: Target, pg_cluster: PgCluster, tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[store]
url = "sqlite:///{tmp_path}/gw.db"
[paths]
keys = "{tmp_path}/keys"
policies = "{tmp_path}/policies"
recordings = "{tmp_path}/recordings"
[targets.tcheck]
kind = "postgres"
address = "{pg_cluster.host}:{pg_cluster.port}"
database = "{DB}"
[targets.tcheck.logins]
write = {{ user = "app_rw", password_env = "GW_TC_RW" }}
""")
    env = {**os.environ, "GW_TC_RW": pg_cluster.passwords["app_rw"]}
    run = [sys.executable, "-m", "gateway", "--config", str(cfg), "target", "check", "tcheck"]
    proc = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    # No policy file: the built-in default gives scope `write` write mode, as the listener applies it.
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "app_rw (write, write)" in proc.stdout and "INSERT on table" not in proc.stdout
    assert "REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM PUBLIC;" in proc.stdout
    proc = subprocess.run([*run[:-1], "nope"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "not a configured postgres target" in proc.stderr


MODES = {"read": "read", "write": "write", "admin": "admin"}


async def test_stock_read_role_has_findings_and_the_fixes_clear_them(tcheck: Target, pg_cluster: PgCluster) -> None:
    reports = {r.scope: r for r in await check_target(tcheck, MODES)}
    read = reports["read"]
    assert read.error is None and read.login == "app_ro"
    what = {f.what: f.fix for f in read.findings}
    lo_fix = "REVOKE EXECUTE ON FUNCTION pg_catalog.lo_create(oid) FROM PUBLIC;"
    assert what["EXECUTE pg_catalog.lo_create(oid)"] == lo_fix
    assert "EXECUTE pg_catalog.pg_advisory_lock(bigint)" in what
    assert "EXECUTE pg_catalog.set_config(text, text, boolean)" in what
    assert "EXECUTE pg_catalog.pg_notify(text, text)" in what
    assert "EXECUTE pg_catalog.pg_terminate_backend(integer, bigint)" in what
    assert "EXECUTE pg_catalog.query_to_xml(text, boolean, boolean, text)" in what
    assert what["TEMP on database (temporary tables)"] == f"REVOKE TEMP ON DATABASE {DB} FROM PUBLIC;"
    assert what["INSERT on table public.t"] == "REVOKE INSERT ON TABLE public.t FROM app_ro;"
    assert "SELECT on table public.t" not in what  # reading is what the scope is for
    assert what["UPDATE on table public.u (some columns)"] == "REVOKE UPDATE ON TABLE public.u FROM PUBLIC, app_ro;"
    assert what["default_transaction_read_only is off for the role (the gateway pins it per session)"] == (
        f"ALTER ROLE app_ro IN DATABASE {DB} SET default_transaction_read_only = on;"
    )
    # Write scope: DML is its job; the write-denied functions and TEMP are not.
    write = {f.what for f in reports["write"].findings}
    assert "EXECUTE pg_catalog.set_config(text, text, boolean)" in write
    assert "EXECUTE pg_catalog.lo_create(oid)" not in write and not any(w.startswith("INSERT") for w in write)
    assert reports["admin"].findings == () and reports["admin"].error is None
    table = render("tcheck", list(reports.values()))
    assert "REVOKE EXECUTE ON FUNCTION pg_catalog.lo_create(oid) FROM PUBLIC;" in table
    assert count_findings(list(reports.values())) == len(read.findings) + len(reports["write"].findings)

    # A DBA runs the suggested statements; the read login is then clean.
    pg_cluster.psql("\n".join(f.fix for f in read.findings), db=DB)
    after = {r.scope: r for r in await check_target(tcheck, MODES)}
    assert after["read"].findings == (), render("tcheck", [after["read"]])
    assert pg_cluster.psql("SELECT has_function_privilege('app_ro', 'lo_create(oid)', 'EXECUTE')", db=DB).strip() == "f"


async def test_cannot_log_in_is_a_finding(tcheck: Target) -> None:
    bad = Target(name="tcheck", kind="postgres", address=tcheck.address, database=DB,
                 logins={"read": Login(scope="read", user="app_ro", password=Secret("wrong"))})  # fmt: skip
    (report,) = await check_target(bad, {"read": "read"})
    assert report.error is not None and "cannot log in" in report.error and "wrong" not in report.error
    assert count_findings([report]) == 1
