"""Processes a session detaches (`setsid nohup ... &`) do not outlive it: the end-of-session sweep, on real sshd."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.detect.sshsweep import SshSweeper
from gateway.detect.sweep import ENDED_SESSION_PROCESS, UNOWNED_PROCESS
from gateway.sandbox.procs import ensure_user, is_root
from gateway.ssh import SshListener
from gateway.ssh.reaper import _is_loopback, parse_output
from tests.rig import needs
from tests.rig.sshd import SshServer
from tests.ssh.conftest import POLICY, USER, Gateway, make_config, remote_pids
from tests.threaded import serve_in_thread


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose target login is dedicated to it (the sweep ends that login's detached processes).

    Not the shared rig's `gwops`: every test run on this machine logs in as that one, and a sweep there
    would end other runs' processes. The user name is fixed per worktree, so reruns reuse it.
    """
    needs(is_root(), "a dedicated login user can only be created as root")
    user = "gwr" + hashlib.sha256(str(Path(__file__).resolve()).encode()).hexdigest()[:8]
    ensure_user(user, ["--create-home", "--user-group", "--shell", "/bin/bash"], ["--password", "*"])
    with SshServer(user) as sshd:
        config = make_config(tmp_path_factory.mktemp("gw-reap"), sshd)
        policy = POLICY.replace(
            '    ssh:\n      detached: "off"\n      local_forwarding',
            "    ssh:\n      detached: alert\n      local_forwarding",
        )
        (config.policies_dir / "rig.yaml").write_text(policy.replace('detached: "off"', "detached: kill"))
        with serve_in_thread(config, SshListener, "gateway-reap") as (services, listener, loop):
            yield Gateway(config, services, listener, sshd, loop)


def unique_sleep() -> str:
    return f"sleep {random.randrange(10**7, 10**8)}"


async def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(what)


SWEPT = ("ssh.detached", "ssh.detached.none", "ssh.detached.unchecked")
"""One of these follows every swept session's `session.end`: its sweep is over."""


async def swept(gateway: Gateway, sid: str, timeout: float = 20) -> Any:
    """Wait until the session's sweep (which runs after its end is recorded) has finished; its outcome event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await gateway.events(sid, types=SWEPT)
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"the sweep of session {sid} did not finish")


async def sweeps_done(gateway: Gateway, own: str, timeout: float = 15) -> None:
    """Wait until every other session has ended and its sweep has finished (no sweep is still running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(gateway.live()) <= {own}:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("a session did not end")
    ends = await gateway.events(types=("session.end",))
    for sid in {str(e.session) for e in ends} - {own}:
        await swept(gateway, sid, timeout)


async def detach(gateway: Gateway, conn: Any, sleep: str, *, strip_marker: bool = False) -> None:
    await sweeps_done(gateway, str((await gateway.last_session()).id))
    prefix = "env -u LC_GATEWAY_SESSION " if strip_marker else ""
    await conn.run(f"{prefix}setsid nohup {sleep} >/dev/null 2>&1 < /dev/null &")
    await wait_for(lambda: remote_pids(sleep), 5, f"{sleep} did not start")


async def end_one_session(gateway: Gateway) -> str:
    """Open and close another session (its end runs a sweep); returns its id."""
    async with await gateway.connect(await gateway.token()) as conn:
        await conn.run("true")
        sid = str((await gateway.last_session()).id)
    t0 = time.monotonic()
    await gateway.wait_closed(sid)
    ended_in = time.monotonic() - t0
    outcome = await swept(gateway, sid)
    assert outcome.type in ("ssh.detached", "ssh.detached.none"), outcome
    assert ended_in < 1.0, f"the end was recorded {ended_in:.2f} s after the client left: the sweep held it"
    return sid


async def sweep_events(gateway: Gateway, sid: str, type_: str) -> list[Any]:
    return await gateway.events(sid, types=(type_,))


async def detached_event(gateway: Gateway, sleep: str, timeout: float = 8) -> Any:
    """The `ssh.detached` event that reports `sleep` (written once its sweep is done), whichever session's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in await gateway.events(types=("ssh.detached",)):
            if any(p["args"] == sleep for p in event.data["processes"]):
                return event
        await asyncio.sleep(0.1)
    raise AssertionError(f"no ssh.detached event reports {sleep}")


@pytest.mark.parametrize("how", ["kill", "revoke", "expiry"])
async def test_detached_process_ends_with_its_session(gateway: Gateway, how: str) -> None:
    sleep = unique_sleep()
    issued = await gateway.grant(ttl=5 if how == "expiry" else 600)
    conn = await gateway.connect(issued.token)
    sid = str((await gateway.last_session()).id)
    try:
        await detach(gateway, conn, sleep)
        # Another session ending while this one is live leaves this one's process alone (its marker).
        other = await end_one_session(gateway)
        assert remote_pids(sleep), "the sweep of another session ended a live session's process"
        assert [e.data["processes"] for e in await sweep_events(gateway, other, "ssh.detached")] == []
        t0 = time.monotonic()
        if how == "kill":
            await gateway.run(gateway.services.registry.kill(sid, "enough", by="carol"))
        elif how == "revoke":
            await gateway.run(gateway.services.store.revoke_grant(issued.grant.id, by="carol", reason="over",
                                                                  now=time.time()))  # fmt: skip
            await gateway.run(gateway.services.registry.sweep())
        await gateway.wait_closed(sid, timeout=15)
        if how != "expiry":  # the end is recorded at once; the sweep follows it
            assert time.monotonic() - t0 < 1.0, f"{how}: the end was recorded {time.monotonic() - t0:.2f} s later"
        await wait_for(lambda: not remote_pids(sleep), 8, f"{sleep} outlived its session ({how})")
        event = await detached_event(gateway, sleep)
        assert event.session == sid
        assert event.severity == "critical"
        assert [p["session"] for p in event.data["processes"] if p["args"] == sleep] == [sid]
        assert event.data["killed"] or event.data["forced"]
        alerts = await sweep_events(gateway, sid, "alert.ssh.detached")
        assert alerts and alerts[0].severity == "critical"
    finally:
        conn.close()


async def test_attached_processes_of_live_sessions_survive_a_sweep(gateway: Gateway) -> None:
    sleep = unique_sleep()
    async with await gateway.connect(await gateway.token()) as conn:
        proc = await conn.create_process(sleep)  # attached: a child of the live connection's sshd
        await wait_for(lambda: remote_pids(sleep), 5, f"{sleep} did not start")
        await end_one_session(gateway)
        assert remote_pids(sleep)
        proc.close()


async def test_a_process_hiding_its_marker_is_ended_by_the_next_sweep(gateway: Gateway) -> None:
    """Stripping the marker and detaching gets no protection: any session's end ends it (documented)."""
    sleep = unique_sleep()
    async with await gateway.connect(await gateway.token()) as conn:
        await detach(gateway, conn, sleep, strip_marker=True)
        await end_one_session(gateway)
        await wait_for(lambda: not remote_pids(sleep), 8, f"{sleep} survived")
        event = await detached_event(gateway, sleep)
        assert [p["session"] for p in event.data["processes"] if p["args"] == sleep] == [None]


async def test_alert_mode_reports_without_ending(gateway: Gateway) -> None:
    """`detached: alert` (a login shared with others): the process is reported, critically, and left alone."""
    sleep = unique_sleep()
    try:
        async with await gateway.connect(await gateway.token("tunnel")) as conn:
            await detach(gateway, conn, sleep)
            sid = str((await gateway.last_session()).id)
        await gateway.wait_closed(sid, timeout=15)
        event = await detached_event(gateway, sleep)
        assert event.session == sid and event.severity == "critical" and event.data["mode"] == "alert"
        assert event.data["killed"] == [] and remote_pids(sleep)
        [alert] = await sweep_events(gateway, sid, "alert.ssh.detached")
        assert alert.severity == "critical" and "NOT ended" in json.dumps(alert.data)
    finally:
        for pid in remote_pids(sleep):  # the process this test started, by its pid
            os.kill(pid, signal.SIGKILL)


async def test_the_periodic_sweep_ends_what_outlived_its_session_or_never_had_one(gateway: Gateway) -> None:
    """`[detection] sweep_every`: processes of the injected login found between sessions' ends, flagged, ended.

    Started outside the gateway as the login (what a session's end could not reach: a replica that died,
    a target down at the end): one carrying the marker of a session that has ended, one with no marker.
    """
    ended = await end_one_session(gateway)
    lingering, outsider = unique_sleep(), unique_sleep()
    user = gateway.sshd.user
    for sleep, env in ((lingering, [f"LC_GATEWAY_SESSION={ended}"]), (outsider, [])):
        subprocess.run(["runuser", "-u", user, "--", "env", *env, "setsid", "-f", *sleep.split()], check=True)
        await wait_for(lambda s=sleep: remote_pids(s), 5, f"{sleep} did not start")
    detector = gateway.services.registry.detector
    assert detector is not None
    sweeper = SshSweeper(gateway.config, gateway.services.policies, detector)
    found = await gateway.run(sweeper.once())
    by_args = {d.explanation.split("'")[1]: d for d in found if "'" in d.explanation}
    late, stray = by_args[lingering], by_args[outsider]
    assert (late.rule, late.severity, late.session, late.user) == (ENDED_SESSION_PROCESS, "critical", ended, USER)
    assert late.explanation.startswith(f"session {ended} of {USER} on rig ended (client disconnected) but process ")
    assert late.explanation.endswith(("was still running; terminated", "was still running; killed (SIGKILL)"))
    assert (stray.rule, stray.severity) == (UNOWNED_PROCESS, "critical")
    await wait_for(lambda: not remote_pids(lingering) and not remote_pids(outsider), 8, "the sweep left them")
    events = [e for e in await gateway.events(types=("detection",)) if e.data.get("rule") == ENDED_SESSION_PROCESS]
    assert events and events[-1].session == ended and events[-1].data["terminated"] is True
    assert events[-1].data["link"].startswith(f"/sessions/{ended}")


def test_sweep_output_parsing() -> None:
    out = "banner line\nfound 12 - sleep 100\nfound 13 abc sh -c x y\nkilled 12\nsurvived 13\nfound x - y\n"
    r = parse_output(out)
    assert [(d.pid, d.marker, d.args) for d in r.found] == [(12, "", "sleep 100"), (13, "abc", "sh -c x y")]
    assert r.killed == (12,) and r.forced == (13,)


async def test_a_sweep_that_cannot_log_in_is_an_alert(gateway: Gateway) -> None:
    """The target refuses the gateway's second login at the end: the session still ends, with a warning alert."""
    keys = gateway.sshd.authorized_keys_path
    saved = keys.read_text()
    conn = await gateway.connect(await gateway.token())
    try:
        await conn.run("true")
        sid = str((await gateway.last_session()).id)
        keys.write_text("")  # from now on sshd refuses the gateway's key
        await gateway.run(gateway.services.registry.kill(sid, "enough", by="carol"))
        rec = await gateway.wait_closed(sid, timeout=20)
        assert rec.end_reason == "enough"
        await swept(gateway, sid)  # the sweep runs after the end: keep the key refused until it is over
    finally:
        keys.write_text(saved)
        conn.close()
    [event] = await sweep_events(gateway, sid, "ssh.detached.unchecked")
    assert "refused" in event.data["reason"]
    assert await sweep_events(gateway, sid, "alert.ssh.detached.unchecked")


def test_loopback_detection() -> None:
    """The guard for the gateway's own account applies to targets on this machine only."""
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("10.0.0.5") and not _is_loopback("web-1.example.com")
