"""Interactive shells with a terminal: command lines, policy on lines, resize, recording, kill and expiry."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import random
import subprocess
import termios
import time
from pathlib import Path

import asyncssh
import pytest

from tests.ssh.conftest import Gateway, remote_pids

# Unique per run: a process left over from an earlier run must not satisfy (or fail) a check.
SLEEP = {i: f"sleep {random.randrange(10**6, 10**7)}" for i in range(1, 5)}


class Shell:
    """An interactive shell through the gateway (asyncssh with a PTY), read as one growing text."""

    def __init__(self, conn: asyncssh.SSHClientConnection, proc: asyncssh.SSHClientProcess[str]) -> None:
        self.conn = conn
        self.proc = proc
        self.text = ""
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, gateway: Gateway, token: str, **kw: object) -> Shell:
        conn = await gateway.connect(token)
        proc = await conn.create_process(term_type="xterm", term_size=(80, 24), encoding="utf-8", errors="replace",
                                         **kw)  # fmt: skip
        shell = cls(conn, proc)
        shell.send("PS1='$ '\r")
        await shell.expect("$ ")
        return shell

    async def _read(self) -> None:
        while True:
            chunk = await self.proc.stdout.read(4096)
            if not chunk:
                return
            self.text += chunk

    def send(self, keys: str) -> None:
        self.proc.stdin.write(keys)

    async def expect(self, needle: str, timeout: float = 30, *, after: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            i = self.text.find(needle, after)
            if i >= 0:
                return i + len(needle)
            if self._reader.done():
                break
            await asyncio.sleep(0.02)
        raise AssertionError(f"{needle!r} not seen; got {self.text[-500:]!r}")

    async def run(self, line: str, marker: str) -> None:
        mark = len(self.text)
        self.send(line + "\r")
        await self.expect(marker, after=mark)

    async def closed(self, timeout: float = 10) -> None:
        """Wait for the shell's channel to end (asyncssh keeps the connection itself open), then close."""
        await asyncio.wait_for(self.proc.wait_closed(), timeout)
        await asyncio.wait_for(self._reader, timeout)
        self.conn.close()

    def close(self) -> None:
        self.conn.close()


def asciinema_cat(path: Path) -> subprocess.CompletedProcess[bytes]:
    """The real `asciinema cat` (it opens /dev/tty: give it a pty as controlling terminal)."""
    master, slave = os.openpty()

    def take_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        return subprocess.run(["asciinema", "cat", str(path)], stdin=slave, capture_output=True,
                              preexec_fn=take_tty, timeout=60, check=False)  # fmt: skip
    finally:
        os.close(master)
        os.close(slave)


async def session_of(gateway: Gateway) -> str:
    return str((await gateway.last_session()).id)


async def wait_started(pattern: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if remote_pids(pattern):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pattern!r} did not start")


async def wait_gone(pattern: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not remote_pids(pattern):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pattern!r} still running on the server after {timeout} s")


async def test_command_is_audited_and_recorded(gateway: Gateway) -> None:
    sh = await Shell.open(gateway, await gateway.token())
    sid = await session_of(gateway)
    await sh.run("echo hello-$((6*7))", "hello-42")
    sh.send("exit\r")
    await sh.closed()
    rec = await gateway.wait_closed(sid)
    lines = [e.data["line"] for e in await gateway.events(sid, types=("command",))]
    assert "echo hello-$((6*7))" in lines
    cast = Path(rec.recording_path)
    header, *events = gateway.recording_lines(cast)
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    assert header["env"]["TERM"] == "xterm" and "alice@rig" in header["title"] and sid in header["title"]
    assert ["m", "command: echo hello-$((6*7))"] in [e[1:] for e in events]
    assert "hello-42" in "".join(e[2] for e in events if e[1] == "o")
    assert "echo hello" in "".join(e[2] for e in events if e[1] == "i")
    assert all(isinstance(e[0], float) for e in events)
    assert events[-1][1:] == ["m", "session end: client disconnected"]
    assert rec.recording_sha256 == hashlib.sha256(cast.read_bytes()).hexdigest()
    played = asciinema_cat(cast)
    assert played.returncode == 0, played.stderr
    assert "hello-42" in played.stdout.decode("utf-8", "replace")


async def test_denied_line_is_not_run(gateway: Gateway) -> None:
    victim = gateway.sshd.scratch_dir / "victim-shell"
    victim.mkdir(exist_ok=True)
    sh = await Shell.open(gateway, await gateway.token())
    sid = await session_of(gateway)
    mark = len(sh.text)
    sh.send(f"rm -rf {victim}\r")
    await sh.expect("[gateway] blocked by policy: no-rm-rf", after=mark)
    await sh.run("echo after-$((1+1))", "after-2")  # the shell is still usable, its line buffer was cleared
    await sh.run(f"ls -d {victim}", str(victim))
    assert victim.exists()
    sh.close()
    await gateway.wait_closed(sid)
    cmds = {e.data["line"]: e.data["verdict"] for e in await gateway.events(sid, types=("command",))}
    assert cmds[f"rm -rf {victim}"] == "deny"
    assert cmds["echo after-$((1+1))"] == "allow"


async def test_alert_rule_raises_an_alert(gateway: Gateway) -> None:
    sh = await Shell.open(gateway, await gateway.token())
    sid = await session_of(gateway)
    await sh.run("grep -c root /etc/passwd", "\r1\r\n")
    sh.close()
    await gateway.wait_closed(sid)
    alerts = await gateway.events(sid, types=("alert.ssh.command",))
    assert alerts and alerts[0].data["rule"] == "passwd-touch"


async def test_kill_rule_ends_the_session(gateway: Gateway) -> None:
    sh = await Shell.open(gateway, await gateway.token())
    sid = await session_of(gateway)
    sh.send("shutdown -h now\r")
    await sh.expect("session closed")
    await sh.closed()
    rec = await gateway.wait_closed(sid)
    assert "kill rule no-shutdown" in rec.end_reason


async def test_history_and_completion_lines_come_from_the_echo(gateway: Gateway) -> None:
    sh = await Shell.open(gateway, await gateway.token())
    sid = await session_of(gateway)

    # Each key is sent at the next prompt: keys typed while the command still runs meet the terminal's own
    # echo (cooked mode: "^[[A"), not readline's.
    async def ran(after: int) -> None:
        """The command's own output line ("\r" before it, not "echo "), then the prompt after it."""
        await sh.expect("$ ", after=await sh.expect("\rhist-one\r\n", after=after))

    mark = len(sh.text)
    sh.send("echo hist-one\r")
    await ran(mark)
    mark = len(sh.text)
    sh.send("\x1b[A")
    await sh.expect("echo hist-one", after=mark)
    mark = len(sh.text)
    sh.send("\r")
    await ran(mark)
    (gateway.sshd.scratch_dir / "completion-target-file").write_text("x")
    mark = len(sh.text)
    sh.send(f"ls {gateway.sshd.scratch_dir}/completion-ta\t")
    await sh.expect("completion-target-file", after=mark)
    mark = len(sh.text)
    sh.send("\r")
    await sh.expect("$ ", after=mark)  # ls ran and the prompt is back
    sh.close()
    await gateway.wait_closed(sid)
    lines = [e.data["line"] for e in await gateway.events(sid, types=("command",))]
    assert lines.count("echo hist-one") == 2
    assert f"ls {gateway.sshd.scratch_dir}/completion-target-file" in lines


async def test_resize_reaches_the_terminal_and_the_recording(gateway: Gateway) -> None:
    sh = await Shell.open(gateway, await gateway.token())
    sid = await session_of(gateway)
    sh.proc.change_terminal_size(100, 40)
    await asyncio.sleep(0.2)
    await sh.run("stty size", "40 100")
    sh.close()
    rec = await gateway.wait_closed(sid)
    assert ["r", "100x40"] in [e[1:] for e in gateway.recording_lines(rec.recording_path)[1:]]


async def test_stock_client_with_forced_tty(gateway: Gateway) -> None:
    token = await gateway.token()
    r = await asyncio.to_thread(gateway.ssh, token, "-tt", input="echo tty-$((2+3))\nexit\n")
    assert "tty-5" in r.stdout, r.stderr


async def test_kill_hangs_up_the_remote_shell(gateway: Gateway) -> None:
    sh = await Shell.open(gateway, await gateway.token())
    sid = await session_of(gateway)
    sh.send(f"{SLEEP[1]}\r")
    await wait_started(SLEEP[1])
    assert await gateway.run(gateway.services.registry.kill(sid, "killed by carol: test", by="carol"))
    await sh.expect("[gateway] killed by carol: test - session closed")
    await wait_gone(SLEEP[1])
    await sh.closed()
    rec = await gateway.wait_closed(sid)
    assert rec.end_reason == "killed by carol: test"
    assert ["m", "kill: killed by carol: test"] in [e[1:] for e in gateway.recording_lines(rec.recording_path)[1:]]


async def test_kill_ends_a_command_without_terminal(gateway: Gateway) -> None:
    conn = await gateway.connect(await gateway.token())
    proc = await conn.create_process(SLEEP[2])
    sid = await session_of(gateway)
    await wait_started(SLEEP[2])
    await gateway.run(gateway.services.registry.kill(sid, "enough", by="carol"))
    await wait_gone(SLEEP[2])
    err = await asyncio.wait_for(proc.stderr.read(), 10)
    assert "[gateway] enough - session closed" in err
    await asyncio.wait_for(conn.wait_closed(), 10)


async def test_expiry_warns_then_closes(gateway: Gateway) -> None:
    sh = await Shell.open(gateway, await gateway.token(ttl=4))
    sid = await session_of(gateway)
    sh.send(f"{SLEEP[3]}\r")
    await sh.expect("[gateway] access window closes in", timeout=6)
    await sh.expect("[gateway] access window expired - session closed", timeout=6)
    await wait_gone(SLEEP[3])
    await sh.closed()
    rec = await gateway.wait_closed(sid)
    assert rec.end_reason == "access window expired"


async def test_revocation_ends_live_sessions(gateway: Gateway) -> None:
    issued = await gateway.grant()
    sh = await Shell.open(gateway, issued.token)
    sid = await session_of(gateway)
    sh.send(f"{SLEEP[4]}\r")
    await wait_started(SLEEP[4])
    await gateway.run(gateway.services.store.revoke_grant(issued.grant.id, by="carol", reason="incident over",
                                                          now=time.time()))  # fmt: skip
    await gateway.run(gateway.services.registry.sweep())
    await sh.expect("grant revoked: incident over - session closed")
    await wait_gone(SLEEP[4])
    rec = await gateway.wait_closed(sid)
    assert "grant revoked" in rec.end_reason


async def test_recording_failure_ends_the_session(gateway: Gateway) -> None:
    sh = await Shell.open(gateway, await gateway.token())
    sid = await session_of(gateway)
    rec = await gateway.session_record(sid)
    Path(rec.recording_path).unlink()
    sh.send("echo more output\r")
    await sh.expect("recording failed", timeout=10)
    await sh.closed()
    rec = await gateway.wait_closed(sid)
    assert rec.end_reason.startswith("recording failed")
    assert rec.recording_sha256 is None


async def test_exec_without_terminal_is_recorded_binary_safe(gateway: Gateway) -> None:
    async with await gateway.connect(await gateway.token()) as conn:
        r = await conn.run("head -c 100000 /dev/urandom | od -An -tx1 | head -3; echo err >&2", input="stdin-data")
    rec = await gateway.settle()
    from gateway.recording import read_binary_stream

    header, frames = read_binary_stream(Path(rec.recording_path))
    assert header["format"] == "gateway-binary-stream"
    got = list(frames)
    streams = {f.stream for f in got}
    assert {"o", "e", "i", "m"} <= streams
    assert b"".join(f.data for f in got if f.stream == "o").decode() == r.stdout
    assert any(f.data.startswith(b"command: head -c") for f in got if f.stream == "m")


@pytest.mark.parametrize("lines", [("echo a", "echo b")])
async def test_pasted_lines_each_recorded(gateway: Gateway, lines: tuple[str, ...]) -> None:
    sh = await Shell.open(gateway, await gateway.token())
    sid = await session_of(gateway)
    mark = len(sh.text)
    sh.send("".join(line + "\r" for line in lines))
    await sh.expect("b\r\n", after=mark)
    sh.close()
    await gateway.wait_closed(sid)
    got = [e.data["line"] for e in await gateway.events(sid, types=("command",))]
    assert [g for g in got if g in lines] == list(lines)
    assert json.dumps(got)
