"""Detections over the real API and a real psql: rubber stamps, missing tickets, first reads; kept across restarts."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import load_config
from gateway.detect.engine import Detector
from gateway.store import RequestRecord, SessionRecord
from tests.control.conftest import Running, start_gateway, write_config, write_rig_config
from tests.rig.postgres import PgCluster
from tests.rig.sshd import SshServer

DETECTION = '[detection]\nticket_pattern = "[A-Z]+-[0-9]+"\nwarmup_sessions = 2\n'


async def _detections(gw: Running) -> list[dict[str, Any]]:
    detector = gw.services.registry.detector
    assert detector is not None
    await detector.drain()
    return [e.data for e in await gw.services.store.events(types=["detection"])]


@pytest.fixture
async def detect_gw(tmp_path: Path, api_keys: dict[str, str]) -> AsyncIterator[Running]:
    """A gateway (API only) with a ticket pattern configured."""
    config = load_config(write_config(tmp_path, api_keys, extra=DETECTION), need_secrets=False)
    svc, port, stop = await start_gateway(config)
    async with aiohttp.ClientSession() as session:
        yield Running(svc, port, api_keys, session, stop)
    await stop()


async def test_rubber_stamp_and_missing_ticket_over_the_api(detect_gw: Running) -> None:
    gw = detect_gw
    body = {"target": "orders-db", "scope": "read", "ttl": "15m", "reason": "just looking"}
    req = await gw.ok("alice", "POST", "/v1/requests", body)
    await gw.ok("bob", "POST", f"/v1/requests/{req['id']}/approve", {"comment": "ok"})
    found = {d["rule"]: d for d in await _detections(gw)}
    assert set(found) == {"approval.rubber_stamp", "approval.no_ticket"}
    stamp = found["approval.rubber_stamp"]
    assert stamp["user"] == "alice" and stamp["request"] == req["id"] and stamp["severity"] == "warning"
    assert stamp["explanation"].startswith(f"bob approved alice's request {req['id']} for orders-db/read ")
    # each one is also an alert: audited as such and written to the alert file
    alerts = await gw.services.store.events(types=["alert.detection"])
    assert sorted(a.data["rule"] for a in alerts) == ["approval.no_ticket", "approval.rubber_stamp"]
    assert gw.services.config.alerts_file is not None
    lines = [json.loads(x) for x in gw.services.config.alerts_file.read_text().splitlines()]
    assert {x["data"]["rule"] for x in lines if x["type"] == "detection"} == set(found)

    # a ticketed reason raises only the rubber stamp
    req2 = await gw.ok("alice", "POST", "/v1/requests", {**body, "reason": "INC-42: refund stuck"})
    await gw.ok("bob", "POST", f"/v1/requests/{req2['id']}/approve", {"comment": "ok"})
    rules = [d["rule"] for d in await _detections(gw) if d.get("request") == req2["id"]]
    assert rules == ["approval.rubber_stamp"]


async def test_rules_turned_off(tmp_path: Path, api_keys: dict[str, str]) -> None:
    extra = '[detection]\noff = ["approval.rubber_stamp"]\n'
    config = load_config(write_config(tmp_path, api_keys, extra=extra), need_secrets=False)
    svc, port, stop = await start_gateway(config)
    try:
        async with aiohttp.ClientSession() as session:
            gw = Running(svc, port, api_keys, session, stop)
            await gw.approved_grant()
            assert await _detections(gw) == []
    finally:
        await stop()


@pytest.mark.slow
async def test_psql_reading_a_table_alice_never_read(
    tmp_path: Path,
    api_keys: dict[str, str],
    pg_cluster: PgCluster,
    sshd_server: SshServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GW_TEST_RO_PASSWORD", pg_cluster.passwords["app_ro"])
    monkeypatch.setenv("GW_TEST_RW_PASSWORD", pg_cluster.passwords["app_rw"])
    path = write_rig_config(tmp_path, api_keys, pg_cluster, sshd_server)
    path.write_text(path.read_text().replace("[alerts]", DETECTION + "\n[alerts]"))
    config = load_config(path, need_secrets=True)
    svc, port, stop = await start_gateway(config, enable=("postgres", "http"))
    try:
        async with aiohttp.ClientSession() as session:
            gw = Running(svc, port, api_keys, session, stop)
            await gw.approved_grant("alice", "bob", "orders-db", "read")
            env = {
                **os.environ,
                "GATEWAY_URL": gw.url,
                "GATEWAY_API_KEY": api_keys["alice"],
                "GATEWAY_CREDENTIALS": "/nonexistent/credentials",
                "PATH": f"{pg_cluster.bin_dir}:{os.environ.get('PATH', '')}",
            }

            async def psql(sql: str) -> str:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway", "psql", "orders-db", "--", "-At",
                    "-c", sql, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, err = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode == 0, err.decode()
                return out.decode().strip()

            for _ in range(2):  # the warm-up: alice's normal
                assert await psql("select count(*) from customers") == "50"
            firsts = [d for d in await _detections(gw) if d["rule"].startswith("first_use.")]
            assert firsts == []
            await psql("select count(*) from customers")  # known: nothing new
            await psql("select count(*) from orders")
            found = [d for d in await _detections(gw) if d["rule"] == "first_use.table"]
            assert len(found) == 1
            d = found[0]
            assert d["user"] == "alice" and d["target"] == "orders-db" and d["offset"] >= 0
            last = max(await svc.store.list_sessions(user="alice"), key=lambda r: r.started_at)
            assert d["session"] == last.id
            assert d["explanation"].startswith(
                "first time alice read or wrote table 'orders' on orders-db in 3 sessions"
            )
            # persisted: a restarted gateway's detector knows alice has read orders now
            again = await Detector(config.detection, svc.store, svc.alerts).load()
            assert ("alice", "orders-db", "table", "orders") in again.baselines.seen
            assert again.baselines.of("alice", "orders-db").sessions == 4
    finally:
        await stop()


async def test_cli_lists_detections(detect_gw: Running) -> None:
    gw = detect_gw
    await gw.approved_grant()  # its reason names INC-1234: a rubber stamp only
    body = {"target": "orders-db", "scope": "read", "ttl": "15m", "reason": "just looking"}
    req = await gw.ok("carol", "POST", "/v1/requests", body)
    await gw.ok("bob", "POST", f"/v1/requests/{req['id']}/approve", {"comment": "ok"})
    await _detections(gw)
    config = gw.services.config.path
    assert config is not None

    async def cli(*argv: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "detections", "--config", str(config), *argv,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    rows = [json.loads(x) for x in (await cli("--json")).splitlines()]
    assert sorted((r["user"], r["rule"]) for r in rows) == [
        ("alice", "approval.rubber_stamp"),
        ("carol", "approval.no_ticket"),
        ("carol", "approval.rubber_stamp"),
    ]
    rows = [
        json.loads(x) for x in (await cli("--json", "--user", "carol", "--rule", "approval.no_ticket")).splitlines()
    ]
    assert [(r["user"], r["rule"], r["request"]) for r in rows] == [("carol", "approval.no_ticket", req["id"])]
    text = await cli("--since", "1h", "--user", "alice")
    assert len(text.splitlines()) == 1
    assert "warning  approval.rubber_stamp  r_" in text and "bob approved alice's request" in text
    assert await cli("--since", "1h", "--rule", "first_use.table") == ""


async def test_an_approval_that_loses_its_race_flags_nothing(detect_gw: Running) -> None:
    """Another replica changes the request between this approval's read and its compare-and-set: no detection."""
    gw = detect_gw
    body = {"target": "orders-db", "scope": "read", "ttl": "15m", "reason": "just looking"}  # a rubber stamp, no ticket
    req = await gw.ok("alice", "POST", "/v1/requests", body)
    store = gw.services.store
    real = store.update_request

    async def racing(new: RequestRecord, **expect: Any) -> bool:
        # the other replica's approval lands first (the same store, written as that replica would)
        other = await store.get_request(req["id"])
        assert other is not None
        await real(replace(other, approvals=({"by": "dave", "at": time.time(), "comment": "x"},)),
                   expect_state="pending", expect_approvals=0)  # fmt: skip
        return await real(new, **expect)

    store.update_request = racing  # type: ignore[method-assign,assignment]
    try:
        status, _ = await gw.call("bob", "POST", f"/v1/requests/{req['id']}/approve", {"comment": "ok"})
    finally:
        store.update_request = real  # type: ignore[method-assign]
    assert status == 409
    assert await _detections(gw) == []


async def test_approval_outside_the_approvers_hours_and_a_wider_scope(detect_gw: Running) -> None:
    gw = detect_gw
    store = gw.services.store
    now = time.time()
    away = now - 86_400 + 12 * 3600  # bob has always approved half a day away from this hour
    for i in range(12):
        at = away - i * 86_400
        approval = {"by": "bob", "at": at + 60}
        await store.add_request(RequestRecord(f"r_old{i}", "carol", "orders-db", "read", "INC-1", 900.0, at, "approved",
                                              (approval,)))  # fmt: skip
    # alice's last session on orders-db was under `stats` (read-only); she now asks for `write`
    await store.add_session(SessionRecord("s_last", "g_x", "alice", "orders-db", "stats", "postgres", "127.0.0.1:1",
                                          now - 3600))  # fmt: skip
    body = {"target": "orders-db", "scope": "write", "ttl": "15m", "reason": "INC-9: fix a refund"}
    req = await gw.ok("alice", "POST", "/v1/requests", body)
    await asyncio.sleep(0.1)
    await gw.ok("carol", "POST", f"/v1/requests/{req['id']}/approve", {"comment": "ok"})  # 1 of 2: saved, judged
    found = {d["rule"]: d for d in await _detections(gw) if d.get("request") == req["id"]}
    assert "approval.wider_scope" in found
    assert found["approval.wider_scope"]["explanation"].endswith(
        "wider than 'stats', the scope of their last session there"
    )
    await gw.ok("dave", "POST", f"/v1/requests/{req['id']}/approve", {"comment": "ok"})
    before = {d["rule"] for d in await _detections(gw) if d.get("request") == req["id"]}
    assert "approval.outside_hours" not in before  # dave has no history: nothing to compare with
    req2 = await gw.ok("carol", "POST", "/v1/requests", {**body, "scope": "read"})
    await gw.ok("bob", "POST", f"/v1/requests/{req2['id']}/approve", {"comment": "ok"})
    (late,) = [d for d in await _detections(gw) if d["rule"] == "approval.outside_hours"]
    assert late["request"] == req2["id"] and late["link"] == f"/requests/{req2['id']}"
    assert "of bob's 12 approvals were within an hour of that" in late["explanation"]


async def test_a_grant_approved_and_never_used(detect_gw: Running) -> None:
    gw = detect_gw
    req_id, grant_id, _ = await gw.approved_grant()
    store, detector = gw.services.store, gw.services.registry.detector
    assert detector is not None
    later = time.time() + 3600
    assert grant_id in await store.expire_grants(later)  # what the grant-expiry job does, an hour on
    grant = await store.get_grant(grant_id)
    assert grant is not None
    await detector.grant_expired(grant)
    (unused,) = [d for d in await _detections(gw) if d["rule"] == "grant.never_used"]
    assert unused["request"] == req_id and unused["severity"] == "info"
    assert (
        unused["explanation"]
        == f"alice's grant approved by bob {grant_id} for orders-db/read expired after 0.2 h without being used"
    )


async def test_sweep_every_schedules_the_sweeps(tmp_path: Path, api_keys: dict[str, str]) -> None:
    config = load_config(write_config(tmp_path, api_keys, extra="[detection]\nsweep_every = 7\n"), need_secrets=False)
    svc, _, stop = await start_gateway(config, enable=("http", "postgres"))
    try:
        assert svc.scheduler.jobs["lingering-sweep"].every == 7
    finally:
        await stop()
