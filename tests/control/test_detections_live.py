"""The live rules through the real gateway with real psql and ssh: exfiltration shapes, bursts, policy hours,
volumes and a grant used from a new address, each a `detection` event and alert with its session and offset;
actions from the config and the policy (a denied COPY, a session killed by a burst or at an unusual hour)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.control.conftest import ORDERS_POLICY, Running, cli_env, rig_gateway, rig_passwords, write_rig_config
from tests.rig.postgres import PgCluster
from tests.rig.sshd import SshServer

pytestmark = pytest.mark.slow

DETECTION = """[detection]
warmup_sessions = 2
burst_denials = 3
burst_errors = 3
burst_sessions = 4
large_rows = 100
actions = { "exfil.copy_sensitive" = "deny", "burst.denials" = "kill" }
"""
WEB = """\
target: web-1
scopes:
  shell:
    max_ttl: 1h
    requesters: {groups: [engineers]}
    approvals: {count: 1}
    ssh:
      commands:
        - {name: no-shadow, pattern: "*shadow*", action: deny}
"""


def orders_policy() -> str:
    """The test policy with customers sensitive, and working hours on `stats` that exclude this hour."""
    h = time.gmtime().tm_hour
    away = f"{(h + 3) % 24}-{(h + 5) % 24}"
    sensitive = "    sql: {mode: read, sensitive_tables: [customers]}\n  write:"
    text = ORDERS_POLICY.replace("    sql: {mode: read}\n  write:", sensitive)
    stats = "    auto_approve: true\n    sql: {mode: read}\n"
    hours = f"    detection: {{hours: '{away}', actions: {{usual.hour: kill}}}}\n"
    return text.replace(stats, stats + hours)


@pytest.fixture
async def gw(
    tmp_path: Path,
    api_keys: dict[str, str],
    pg_cluster: PgCluster,
    sshd_server: SshServer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Running]:
    """Every listener, the rig's PostgreSQL and sshd as targets, the detection settings above."""
    rig_passwords(monkeypatch, pg_cluster)
    path = write_rig_config(tmp_path, api_keys, pg_cluster, sshd_server)
    path.write_text(path.read_text().replace("[alerts]", DETECTION + "\n[alerts]"))
    (tmp_path / "policies" / "orders-db.yaml").write_text(orders_policy())
    (tmp_path / "policies" / "web-1.yaml").write_text(WEB)
    async with rig_gateway(path, api_keys, pg_cluster, sshd_server) as running:
        yield running


async def cli(gw: Running, *argv: str, user: str = "alice") -> tuple[int, str, str]:
    env = cli_env(gw, user)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode(), err.decode()


async def psql(gw: Running, *sql: str) -> tuple[int, str, str]:
    args = [a for s in sql for a in ("-c", s)]
    return await cli(gw, "psql", "orders-db", "--", "-At", *args)


async def found(gw: Running, rule: str, timeout: float = 10) -> list[dict[str, Any]]:
    """The detections of `rule` (waiting for the audit writes and session ends that raise them)."""
    deadline = time.monotonic() + timeout
    detector = gw.services.registry.detector
    assert detector is not None
    while True:
        await detector.drain()
        rows = [e.data | {"severity": e.severity} for e in await gw.services.store.events(types=["detection"])]
        hits = [d for d in rows if d["rule"] == rule]
        if hits or time.monotonic() > deadline:
            return hits
        await asyncio.sleep(0.2)


async def last_session(gw: Running) -> Any:
    return max(await gw.services.store.list_sessions(user="alice"), key=lambda r: r.started_at)


def located(d: dict[str, Any], session: str) -> None:
    """Where to look: the session, the offset into it, the console link."""
    assert d["session"] == session and d["offset"] >= 0
    assert d["link"] == f"/sessions/{session}#t={d['offset']:g}"


async def test_exfiltration_shapes(gw: Running) -> None:
    await gw.approved_grant("alice", "bob", "orders-db", "read")
    code, out, err = await psql(gw, "select * from customers")
    assert code == 0, err
    assert len(out.splitlines()) == 50  # alerted, not refused
    (whole,) = await found(gw, "exfil.sensitive_whole")
    located(whole, (await last_session(gw)).id)
    assert whole["explanation"] == "alice read the whole of sensitive table customers on orders-db (no WHERE or LIMIT)"

    code, out, err = await psql(gw, "copy customers to stdout")
    assert code != 0 and "exfil.copy_sensitive" in err and "unusual activity" in err  # the config's action: deny
    copies = await found(gw, "exfil.copy_sensitive")
    assert len(copies) == 1, copies
    copy = copies[0]
    assert copy["severity"] == "critical"
    located(copy, (await last_session(gw)).id)
    denied = await gw.services.store.events(types=["statement.denied"])
    assert [e.data["rule"] for e in denied] == ["exfil.copy_sensitive"]

    code, out, err = await psql(gw, "select * from orders")
    assert code == 0 and len(out.splitlines()) == 150, err
    (star,) = await found(gw, "exfil.select_star_large")
    assert star["explanation"] == "alice read all 150 rows of orders on orders-db with SELECT * and no WHERE"
    alerts = await gw.services.store.events(types=["alert.detection"])
    assert {"exfil.sensitive_whole", "exfil.copy_sensitive", "exfil.select_star_large"} <= {
        a.data["rule"] for a in alerts
    }


async def test_bursts_of_denials_errors_and_sessions(gw: Running) -> None:
    await gw.approved_grant("alice", "bob", "orders-db", "read")
    code, _, _ = await psql(gw, "delete from orders", "delete from orders", "delete from orders", "select pg_sleep(5)")
    assert code != 0
    (burst,) = await found(gw, "burst.denials")
    sid = (await last_session(gw)).id
    located(burst, sid)
    assert burst["explanation"].startswith("alice had 3 statements or commands denied on orders-db within ")
    rec = await gw.services.store.get_session(sid)
    assert rec is not None and rec.end_reason is not None and rec.end_reason.startswith("detection burst.denials")

    await psql(gw, "select 1/0", "select 1/0", "select 1/0")
    (errors,) = await found(gw, "burst.errors")
    located(errors, (await last_session(gw)).id)
    for _ in range(2):
        await psql(gw, "select 1")
    (opened,) = await found(gw, "burst.sessions")
    assert opened["explanation"].startswith("alice had 4 sessions opened on orders-db within ")


async def test_a_session_outside_the_policys_hours_is_killed(gw: Running) -> None:
    await gw.ok("alice", "POST", "/v1/requests", {"target": "orders-db", "scope": "stats", "ttl": "5m",
                                                  "reason": "INC-7: stats"})  # fmt: skip
    code, out, _ = await psql(gw, "select pg_sleep(5)")
    assert code != 0, out
    (late,) = await found(gw, "usual.hour")
    sid = (await last_session(gw)).id
    located(late, sid)
    assert "outside the policy's hours" in late["explanation"]
    rec = await gw.services.store.get_session(sid)
    assert rec is not None and rec.end_reason is not None and rec.end_reason.startswith("detection usual.hour")


async def test_volume_over_p95_and_a_grant_from_a_new_address(gw: Running) -> None:
    _, grant, _ = await gw.approved_grant("alice", "bob", "orders-db", "read")
    detector = gw.services.registry.detector
    assert detector is not None
    for i in range(12):  # alice's usual sessions there: ten rows, a few statements
        detector.usual.ended("alice", "orders-db", f"old{i}", {"rows": 10.0, "rate": 2.0})
    detector.bursts.grant_addresses[grant] = "203.0.113.5"  # the grant's first use was from another host
    code, out, err = await psql(gw, "select generate_series(1, 5000)")
    assert code == 0 and len(out.splitlines()) == 5000, err
    sid = (await last_session(gw)).id
    (addr,) = await found(gw, "burst.new_address")
    located(addr, sid)
    assert addr["explanation"].endswith("was used from 127.0.0.1, first used from 203.0.113.5")
    (rows,) = await found(gw, "usual.volume.rows")
    located(rows, sid)
    assert rows["explanation"].startswith(f"session {sid} of alice on orders-db was 5000 rows, over 1000 (3x")


async def test_ssh_first_command_and_a_denial_burst_that_kills(gw: Running) -> None:
    await gw.approved_grant("alice", "bob", "web-1", "shell")
    for _ in range(2):  # the warm-up: alice's normal on web-1
        code, _, err = await cli(gw, "ssh", "web-1", "--", "uptime")
        assert code == 0, err
    code, _, err = await cli(gw, "ssh", "web-1", "--", "id")
    assert code == 0, err
    firsts = await found(gw, "first_use.command")
    assert len(firsts) == 1, [e.data for e in await gw.services.store.events(types=["detection", "command"])]
    first = firsts[0]
    located(first, (await last_session(gw)).id)
    assert first["explanation"].startswith("first time alice ran 'id' on web-1 in 2 sessions over 0 days")

    for _ in range(3):
        code, _, _ = await cli(gw, "ssh", "web-1", "--", "cat", "/etc/shadow")
        assert code != 0
    (burst,) = await found(gw, "burst.denials")
    sid = (await last_session(gw)).id
    located(burst, sid)
    kills = [e for e in await gw.services.store.events(types=["session.kill"]) if e.session == sid]
    assert kills and kills[0].data["reason"].startswith("detection burst.denials: alice had 3 statements")
