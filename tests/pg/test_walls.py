"""The relay's own walls: a tripwire on what the server reports, and a kill verdict that stops the stream at once.

Each test breaches (or tries to breach) for real against the rig's PostgreSQL and checks the effect as the
superuser: the session is killed, the client sees an error, a critical alert is recorded and audited, the
backend is gone, and nothing sent after a killing statement was executed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from gateway.config import Login
from gateway.pg.listener import PostgresListener
from gateway.pg.messages import ParameterStatus
from gateway.pg.tripwire import Tripwires
from gateway.secret import Secret
from tests.pg import rawclient as raw
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
      allow_functions: [set_config, gw_walls.open_the_wall]
  write:
    max_ttl: 1h
    sql:
      mode: write
      allow_functions: [set_config]
      rules:
        - {name: no-drop, kinds: [ddl], action: kill}
  support:
    max_ttl: 1h
    sql:
      mode: write
      allow_functions: [set_config]
  admin:
    max_ttl: 1h
    sql:
      mode: admin
"""

SETUP = """
CREATE SCHEMA gw_walls;
CREATE TABLE gw_walls.sink (n int);
GRANT USAGE ON SCHEMA gw_walls TO app_ro, app_rw;
GRANT SELECT, INSERT ON gw_walls.sink TO app_rw;
-- Made by a superuser: the kind of function that breaches the read-only wall from a read-only role.
CREATE FUNCTION gw_walls.open_the_wall() RETURNS text LANGUAGE sql SECURITY DEFINER
    AS $$ SELECT set_config('default_transaction_read_only', 'off', false) $$;
GRANT EXECUTE ON FUNCTION gw_walls.open_the_wall() TO app_ro;
CREATE ROLE gw_walls_super SUPERUSER NOLOGIN;
GRANT gw_walls_super TO app_rw;
CREATE ROLE gw_walls_su SUPERUSER LOGIN PASSWORD 'walls-su-pw';
"""
TEARDOWN = """
DROP SCHEMA IF EXISTS gw_walls CASCADE;
DROP ROLE IF EXISTS gw_walls_super;
DROP ROLE IF EXISTS gw_walls_su;
"""


@pytest.fixture(scope="module")
def walls(pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose policy names set_config (so the tripwire, not the parser, must catch the breach)."""
    pg_cluster.psql(TEARDOWN)
    pg_cluster.psql(SETUP)
    base = tmp_path_factory.mktemp("gw-walls")
    config = make_config(base, pg_cluster)
    (config.policies_dir / "orders.yaml").write_text(POLICY)
    target = config.targets["orders"]
    logins = dict(target.logins)
    logins["support"] = Login(scope="support", user="gw_walls_su", password=Secret("walls-su-pw"))
    targets = dict(config.targets)
    targets["orders"] = dataclasses.replace(target, logins=logins)
    config = dataclasses.replace(config, targets=targets, alerts_file=base / "alerts.jsonl")
    try:
        with serve_in_thread(config, PostgresListener, "gateway-walls") as (services, listener, loop):
            yield Gateway(config, services, listener, pg_cluster, loop)
    finally:
        pg_cluster.psql(TEARDOWN)


def _alerts(gw: Gateway, type_: str) -> list[dict[str, Any]]:
    path = gw.config.alerts_file
    assert path is not None
    if not path.exists():
        return []
    return [a for a in map(json.loads, path.read_text().splitlines()) if a["type"] == type_]


async def _wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _assert_tripped(gw: Gateway, session_id: str, parameter: str) -> None:
    """Killed with a tripwire reason, a critical alert raised and audited, the backend gone."""

    async def ended() -> bool:
        return session_id not in gw.live_session_ids()

    await _wait_for(ended)

    async def alerted() -> bool:
        return any(a["session"] == session_id for a in _alerts(gw, "sql.tripwire"))

    await _wait_for(alerted)
    (alert,) = [a for a in _alerts(gw, "sql.tripwire") if a["session"] == session_id]
    assert alert["severity"] == "critical" and alert["data"]["parameter"] == parameter
    events = await gw.run(gw.services.store.events(session=session_id))
    types = {(e.type, e.severity) for e in events}
    assert ("session.tripwire", "critical") in types and ("alert.sql.tripwire", "critical") in types
    assert "session.kill" in {e.type for e in events}
    assert await gw.backends(session_id) == 0, "the upstream backend must be gone"
    rec = gw.recording(session_id)
    assert any(ev.get("type") == "tripwire" and ev["parameter"] == parameter for ev in rec)


def _new_session(gw: Gateway, before: set[str]) -> str:
    (sid,) = set(gw.live_session_ids()) - before
    return sid


async def test_read_only_wall_breached_by_set_config_kills_the_session(walls: Gateway) -> None:
    token = await walls.token("read")
    before = set(walls.live_session_ids())
    with psycopg.connect(walls.conninfo(token), autocommit=True) as conn:
        sid = _new_session(walls, before)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.OperationalError, match="tripwire"):
            conn.execute("SELECT set_config('default_transaction_read_only', 'off', false)")
            conn.execute("SELECT 1")  # if the kill's FATAL raced the first reply, this one meets it
    await _assert_tripped(walls, sid, "default_transaction_read_only")


async def test_read_only_wall_breached_by_security_definer_function_with_psql(walls: Gateway) -> None:
    token = await walls.token("read")
    before = await _session_ids(walls)
    # Statement by statement (psql sends each line as its own Query): the server reports the change at the
    # end of the Query message that made it, so the tripwire fires before the next one is read.
    proc = await asyncio.to_thread(walls.psql, token, stdin="SELECT gw_walls.open_the_wall();\nSELECT 'still here';\n")
    assert proc.returncode != 0 and "still here" not in proc.stdout
    assert "tripwire" in proc.stderr and "default_transaction_read_only" in proc.stderr
    (sid,) = await _session_ids(walls) - before
    await _assert_tripped(walls, sid, "default_transaction_read_only")


async def _session_ids(gw: Gateway) -> set[str]:
    return {e.session for e in await gw.run(gw.services.store.events(types=["session.start"]))}


async def test_is_superuser_turning_on_kills_a_write_session(walls: Gateway) -> None:
    token = await walls.token("write")
    before = set(walls.live_session_ids())
    with psycopg.connect(walls.conninfo(token), autocommit=True) as conn:
        sid = _new_session(walls, before)
        with pytest.raises(psycopg.OperationalError, match="tripwire"):
            conn.execute("SELECT set_config('role', 'gw_walls_super', false)")
            conn.execute("SELECT 1")
    await _assert_tripped(walls, sid, "is_superuser")


async def test_session_authorization_change_kills_the_session(walls: Gateway) -> None:
    token = await walls.token("support")
    before = set(walls.live_session_ids())
    with psycopg.connect(walls.conninfo(token), autocommit=True) as conn:
        sid = _new_session(walls, before)
        with pytest.raises(psycopg.OperationalError, match="tripwire"):
            conn.execute("SELECT set_config('session_authorization', 'app_ro', false)")
            conn.execute("SELECT 1")
    await _assert_tripped(walls, sid, "session_authorization")


def test_pg15_reports_the_parameters_the_tripwire_watches(walls: Gateway) -> None:
    """What the server reports at login (GUC_REPORT); the relay sees later changes of the same names."""
    with psycopg.connect(walls.cluster.superuser_dsn()) as conn:
        reported = {n for n in ("default_transaction_read_only", "in_hot_standby", "is_superuser",
                                "session_authorization") if conn.info.parameter_status(n) is not None}  # fmt: skip
        version = conn.info.server_version
    if version >= 140000:
        assert reported == {"default_transaction_read_only", "in_hot_standby", "is_superuser", "session_authorization"}


def test_tripwire_decisions() -> None:
    login = [ParameterStatus("session_authorization", "app_ro"), ParameterStatus("is_superuser", "off")]
    read = Tripwires(login, read_only=True, admin=False)
    assert read.check("default_transaction_read_only", "off")
    assert read.check("default_transaction_read_only", "on") is None
    assert read.check("session_authorization", "postgres")
    assert read.check("session_authorization", "app_ro") is None
    assert read.check("is_superuser", "on")
    assert read.check("TimeZone", "UTC") is None
    write = Tripwires(login, read_only=False, admin=False)
    assert write.check("default_transaction_read_only", "off") is None
    admin = Tripwires(login, read_only=False, admin=True)
    assert admin.check("is_superuser", "on") is None and admin.check("session_authorization", "x") is None


# --- a kill verdict stops the stream at once -----------------------------------------------------------


def _sink_rows(gw: Gateway) -> int:
    return int(gw.superuser("SELECT count(*) FROM gw_walls.sink"))


async def _killed_after_drop(gw: Gateway, c: raw.RawClient) -> None:
    """The client gets the 42501 of the killing statement, then the FATAL, then the end of the stream."""
    rest = await c.closed(timeout=10)
    assert b"42501" in rest and b"57P01" in rest
    assert b"INSERT 0 1" not in rest


async def test_kill_verdict_stops_a_simple_protocol_pipeline(walls: Gateway) -> None:
    walls.superuser("TRUNCATE gw_walls.sink")
    c = await raw.RawClient.login(walls.port, await walls.token("write"))
    burst = raw.query("DROP TABLE gw_walls.sink") + b"".join(
        raw.query(f"INSERT INTO gw_walls.sink VALUES ({i})") for i in range(50)
    )
    c.send(burst)  # one TCP write
    await _killed_after_drop(walls, c)
    await c.close()
    await asyncio.sleep(0.3)
    assert _sink_rows(walls) == 0, "nothing sent after the killing statement may reach upstream"


async def test_kill_verdict_stops_an_extended_protocol_pipeline(walls: Gateway) -> None:
    walls.superuser("TRUNCATE gw_walls.sink")
    c = await raw.RawClient.login(walls.port, await walls.token("write"))
    burst = raw.parse("DROP TABLE gw_walls.sink") + raw.bind() + raw.execute() + raw.SYNC
    for i in range(50):
        burst += raw.parse("INSERT INTO gw_walls.sink VALUES ($1)") + raw.bind(params=(str(i).encode(),))
        burst += raw.execute() + raw.SYNC
    c.send(burst)
    await _killed_after_drop(walls, c)
    await c.close()
    await asyncio.sleep(0.3)
    assert _sink_rows(walls) == 0


async def test_only_what_came_before_the_killing_statement_is_forwarded(walls: Gateway) -> None:
    walls.superuser("TRUNCATE gw_walls.sink")
    c = await raw.RawClient.login(walls.port, await walls.token("write"))
    c.send(raw.query("INSERT INTO gw_walls.sink VALUES (1)") + raw.query("DROP TABLE gw_walls.sink")
           + raw.query("INSERT INTO gw_walls.sink VALUES (2)"))  # fmt: skip
    rest = await c.closed(timeout=10)
    assert b"57P01" in rest
    await c.close()
    await asyncio.sleep(0.3)
    # The first INSERT was forwarded (the kill may cancel it while it runs); the one after the DROP never was.
    assert walls.superuser("SELECT count(*) FROM gw_walls.sink WHERE n = 2") == "0"
    assert walls.superuser("SELECT to_regclass('gw_walls.sink') IS NOT NULL") == "t"
