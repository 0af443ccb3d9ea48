"""Every way an SSH session ends goes through its block's exit: one `session.end` with the reason, the recording
sealed, nothing left running upstream (pgrep on the rig's sshd, which runs here), for the stock client.

Which commands are ended upstream (PTY or not, pipelines, TERM-ignoring) is test_upstream_end.py's subject."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.ssh import SshListener
from gateway.store import SqliteStore
from gateway.tokens import KeyRing
from tests.rig.sshd import SshServer
from tests.ssh.conftest import SSH_OPTS, TARGET, Gateway, make_config
from tests.threaded import serve_in_thread

COMMANDS: dict[str, tuple[list[str], str]] = {
    "exec": ([], "sleep {n}"),
    "pipeline": ([], "sleep {n} | cat - /nonexistent/{n}"),
}


def stock_ssh(gateway: Gateway, token: str, *args: str) -> subprocess.Popen[bytes]:
    """The stock OpenSSH client through the gateway, sshpass answering the token prompt."""
    cmd = ["sshpass", "-P", "Approval token", "-p", token, "ssh", *SSH_OPTS,
           "-o", "PreferredAuthentications=keyboard-interactive", "-p", str(gateway.port), f"{TARGET}@{gateway.host}",
           *args]  # fmt: skip
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def upstream_pids(gateway: Gateway, pattern: str) -> list[int]:
    """The target login's processes matching `pattern` (not the local client's, whose argv has it too)."""
    out = subprocess.run(["pgrep", "-u", gateway.sshd.user, "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def until(pred: Any, timeout: float, what: str) -> float:
    """Wait for `pred()`; returns how long it took."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(what)
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def live_session(gateway: Gateway, before: set[str]) -> str:
    await until(lambda: set(gateway.live()) - before, 10, "the session did not start")
    (sid,) = set(gateway.live()) - before
    return sid


@pytest.mark.parametrize("how", ["kill", "revoke", "expiry"])
async def test_ending_a_session_ends_its_remote_command(gateway: Gateway, how: str) -> None:
    mode = "pipeline"
    n = random.randrange(10**7, 10**8)
    flags, command = COMMANDS[mode]
    issued = await gateway.grant(ttl=4 if how == "expiry" else 600)
    before = set(gateway.live())
    client = stock_ssh(gateway, issued.token, *flags, command.format(n=n))
    try:
        sid = await live_session(gateway, before)
        await until(lambda: upstream_pids(gateway, f"sleep {n}"), 5, "the command did not start upstream")
        reasons = {"kill": "enough", "revoke": "grant revoked: over", "expiry": "access window expired"}
        t_asked = issued.grant.expires_at if how == "expiry" else time.time()
        if how == "kill":
            await gateway.run(gateway.services.registry.kill(sid, "enough", by="carol"))
        elif how == "revoke":
            await gateway.run(gateway.services.store.revoke_grant(issued.grant.id, by="carol", reason="over",
                                                                  now=time.time()))  # fmt: skip
            await gateway.run(gateway.services.registry.sweep())
        else:
            await until(lambda: sid not in gateway.live(), 8, "the session outlived its grant")
        await until(lambda: not upstream_pids(gateway, str(n)), 2, f"{command} still runs upstream 2 s after the end")
        took = time.time() - t_asked
        rec = await gateway.wait_closed(sid)
        ends = await gateway.events(sid, types=("session.end",))
        assert [e.data["reason"] for e in ends] == [reasons[how]]
        assert rec.end_reason == reasons[how] and rec.recording_sha256
        assert ends[0].data["recording_sha256"] == rec.recording_sha256
        assert await asyncio.to_thread(client.wait, 10) != 0
        print(f"{how}/{mode}: remote command gone {took:.2f} s after the {how}")
    finally:
        if client.poll() is None:
            client.kill()


async def test_client_leaving_ends_its_remote_command(gateway: Gateway) -> None:
    mode = "exec"
    n = random.randrange(10**7, 10**8)
    flags, command = COMMANDS[mode]
    before = set(gateway.live())
    client = stock_ssh(gateway, await gateway.token(), *flags, command.format(n=n))
    sid = await live_session(gateway, before)
    await until(lambda: upstream_pids(gateway, f"sleep {n}"), 5, "the command did not start upstream")
    client.kill()  # the engineer's ssh is gone (laptop closed)
    await asyncio.to_thread(client.wait, 10)
    await until(lambda: not upstream_pids(gateway, str(n)), 3, f"{command} still runs upstream after the client left")
    rec = await gateway.wait_closed(sid)
    ends = await gateway.events(sid, types=("session.end",))
    assert len(ends) == 1 and "client" in ends[0].data["reason"] and rec.recording_sha256


async def test_gateway_shutdown_ends_sessions_through_their_blocks(sshd_server: SshServer, tmp_path: Path) -> None:
    config = make_config(tmp_path, sshd_server)
    n = random.randrange(10**7, 10**8)
    with serve_in_thread(config, SshListener, "gateway-ssh-shutdown") as (services, listener, loop):
        gw = Gateway(config, services, listener, sshd_server, loop)
        client = stock_ssh(gw, await gw.token(), f"sleep {n}")
        sid = await live_session(gw, set())
        await until(lambda: upstream_pids(gw, f"sleep {n}"), 5, "the command did not start upstream")
    try:
        assert not upstream_pids(gw, str(n)), "the command outlived the gateway's shutdown"
        store = await SqliteStore(config.store_path, KeyRing.load_or_create(config.keys_dir)).open()
        try:
            ends = await store.events(types=["session.end"], session=sid)
            rec = await store.get_session(sid)
        finally:
            await store.close(checkpoint=False)
        assert [e.data["reason"] for e in ends] == ["gateway shutting down"]
        assert rec is not None and rec.recording_sha256
        assert await asyncio.to_thread(client.wait, 10) != 0
    finally:
        if client.poll() is None:
            client.kill()
