"""A session ended while its command streams output: the stock client prints every byte the recording holds
(the end flushes channel data, sends the notice and the channels' close, and waits briefly for the client's
close before it disconnects), and the wait for a client that does not read stays bounded."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gateway.recording import read_binary_stream
from gateway.ssh import SshListener
from gateway.ssh.connection import CLOSE_GRACE
from gateway.ssh.relay import SIGNAL_GRACE
from gateway.store import SqliteStore
from gateway.tokens import KeyRing
from tests.rig.sshd import SshServer
from tests.ssh.conftest import SSH_OPTS, TARGET, Gateway, make_config
from tests.ssh.test_end_paths import live_session, until, upstream_pids
from tests.threaded import serve_in_thread

STREAM = "seq 1 1000000000"  # ~10 GB of numbered lines: it is still streaming whenever the end comes


def streaming_ssh(gateway: Gateway, token: str, out: Path, err: Path, *,
                  command: str = STREAM) -> subprocess.Popen[bytes]:  # fmt: skip
    """The stock OpenSSH client running `command` through the gateway, its stdout and stderr in files."""
    cmd = ["sshpass", "-P", "Approval token", "-p", token, "ssh", *SSH_OPTS,
           "-o", "PreferredAuthentications=keyboard-interactive", "-p", str(gateway.port), f"{TARGET}@{gateway.host}",
           command]  # fmt: skip
    with out.open("wb") as o, err.open("wb") as e:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=o, stderr=e)


def recorded_output(path: str | None) -> bytes:
    """The stdout bytes a channel's recording holds."""
    assert path is not None
    _, frames = read_binary_stream(Path(path))
    return b"".join(f.data for f in frames if f.stream == "o")


def assert_printed_all(out: Path, err: Path, recorded: bytes, notice: str) -> None:
    """The client printed exactly what was recorded (nothing dropped at the end), and was told why."""
    printed = out.read_bytes()
    assert len(recorded) > 1_000_000, "the command was not streaming when the session ended"
    assert len(printed) == len(recorded), f"client printed {len(printed)} of {len(recorded)} recorded bytes"
    assert printed == recorded
    assert notice in err.read_text()


async def wait_streaming(out: Path) -> None:
    await until(lambda: out.stat().st_size > 2_000_000, 30, "no output streamed")


async def test_gateway_shutdown_while_streaming_loses_no_recorded_output(sshd_server: SshServer,
                                                                         tmp_path: Path) -> None:  # fmt: skip
    config = make_config(tmp_path, sshd_server)
    out, err = tmp_path / "out", tmp_path / "err"
    with serve_in_thread(config, SshListener, "gateway-ssh-end-output") as (services, listener, loop):
        gw = Gateway(config, services, listener, sshd_server, loop)
        client = streaming_ssh(gw, await gw.token(), out, err)
        try:
            sid = await live_session(gw, set())
            await wait_streaming(out)
        except BaseException:
            client.kill()
            raise
    try:
        assert await asyncio.to_thread(client.wait, 30) != 0
        store = await SqliteStore(config.store_path, KeyRing.load_or_create(config.keys_dir)).open()
        try:
            rec = await store.get_session(sid)
        finally:
            await store.close(checkpoint=False)
        assert rec is not None and rec.end_reason == "gateway shutting down"
        assert_printed_all(out, err, recorded_output(rec.recording_path), "gateway shutting down")
    finally:
        if client.poll() is None:
            client.kill()


@pytest.mark.parametrize("how", ["kill", "revoke"])
async def test_kill_or_revoke_while_streaming_loses_no_recorded_output(gateway: Gateway, tmp_path: Path,
                                                                       how: str) -> None:  # fmt: skip
    out, err = tmp_path / "out", tmp_path / "err"
    issued = await gateway.grant()
    before = set(gateway.live())
    client = streaming_ssh(gateway, issued.token, out, err)
    try:
        sid = await live_session(gateway, before)
        await wait_streaming(out)
        if how == "kill":
            await gateway.run(gateway.services.registry.kill(sid, "enough", by="carol"))
        else:
            await gateway.run(gateway.services.store.revoke_grant(issued.grant.id, by="carol", reason="over",
                                                                  now=time.time()))  # fmt: skip
            await gateway.run(gateway.services.registry.sweep())
        assert await asyncio.to_thread(client.wait, 30) != 0
        rec = await gateway.wait_closed(sid)
        assert_printed_all(out, err, recorded_output(rec.recording_path), "session closed")
    finally:
        if client.poll() is None:
            client.kill()


def ssh_pid(client: subprocess.Popen[bytes]) -> int:
    """The ssh process under sshpass."""
    out = subprocess.run(["pgrep", "-P", str(client.pid), "-x", "ssh"], capture_output=True, text=True).stdout
    return int(out.split()[0])


@pytest.mark.parametrize("how", ["kill", "shutdown"])
async def test_a_client_not_scheduled_during_the_end_still_prints_the_output_and_the_notice(
    sshd_server: SshServer, tmp_path: Path, how: str
) -> None:
    """On a loaded machine the client may not run while the end is sent: it then reads the output, the notice
    and the end of the connection at once, after the gateway stopped waiting for it (OpenSSH dropped all of
    it when the end was a DISCONNECT)."""
    config = make_config(tmp_path, sshd_server)
    out, err = tmp_path / "out", tmp_path / "err"
    n = random.randrange(10**7, 10**8)
    with serve_in_thread(config, SshListener, "gateway-ssh-stopped-client") as (services, listener, loop):
        gw = Gateway(config, services, listener, sshd_server, loop)
        client = streaming_ssh(gw, await gw.token(), out, err, command=f"sleep 1; echo marker-77; sleep {n}")
        try:
            sid = await live_session(gw, set())
            # The command has started upstream (the client has sent everything it will send) before it stops.
            await until(lambda: upstream_pids(gw, f"marker-77; sleep {n}"), 10, "the command did not start")
            pid = ssh_pid(client)
            os.kill(pid, signal.SIGSTOP)  # from here on the client reads nothing until SIGCONT
            # The echo has run once the sleep after it has started (its output then reaches the gateway, which
            # reads the target's side until the command has ended).
            await until(lambda: upstream_pids(gw, f"^sleep {n}$"), 10, "the command did not get to its sleep")
            if how == "kill":
                await gw.run(services.registry.kill(sid, "enough", by="carol"))
                assert sid not in gw.live()
        except BaseException:
            client.kill()
            raise
    try:
        await asyncio.sleep(CLOSE_GRACE)  # the client is still stopped when the gateway has given up waiting for it
        os.kill(pid, signal.SIGCONT)
        assert await asyncio.to_thread(client.wait, 30) != 0
        recorded = recorded_output(str(next((tmp_path / "recordings").rglob("*.cast"))))
        assert recorded == b"marker-77\n"
        assert out.read_bytes() == recorded
        reason = "enough" if how == "kill" else "gateway shutting down"
        assert f"{reason} - session closed" in err.read_text()
    finally:
        if client.poll() is None:
            os.kill(client.pid, signal.SIGCONT)
            client.kill()


async def test_the_end_does_not_wait_long_for_a_client_that_does_not_read(gateway: Gateway, tmp_path: Path) -> None:
    out, err = tmp_path / "out", tmp_path / "err"
    before = set(gateway.live())
    client = streaming_ssh(gateway, await gateway.token(), out, err)
    pid = 0
    try:
        sid = await live_session(gateway, before)
        await wait_streaming(out)
        pid = ssh_pid(client)
        os.kill(pid, signal.SIGSTOP)  # the engineer's ssh reads nothing more (a frozen laptop)
        await asyncio.sleep(0.5)  # its window fills
        t0 = time.monotonic()
        await gateway.run(gateway.services.registry.kill(sid, "enough", by="carol"))
        took = time.monotonic() - t0
        print(f"kill with a client that does not read: {took:.2f} s")
        # The command's output stalls with the client: its TERM and KILL rounds take SIGNAL_GRACE each; then
        # the client gets one CLOSE_GRACE (its channels' close, then the hang-up) before it is cut off.
        assert took < 2 * SIGNAL_GRACE + 1.1 * CLOSE_GRACE + 0.5, f"the kill took {took:.2f} s"
        assert sid not in gateway.live()
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)
        client.kill()
        client.wait(10)
