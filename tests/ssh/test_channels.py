"""Session channels through the gateway: exec, exit codes and signals, stdin, env filtering, forwarding refusals."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import asyncssh
import pytest

from gateway.recording import read_binary_stream
from tests.ssh.conftest import Gateway


async def test_exec_exit_status_and_stderr(gateway: Gateway) -> None:
    async with await gateway.connect(await gateway.token()) as conn:
        r = await conn.run("echo out; echo err >&2; exit 7")
    assert (r.stdout, r.stderr, r.exit_status) == ("out\n", "err\n", 7)


async def test_exit_signal_passed_back(gateway: Gateway) -> None:
    async with await gateway.connect(await gateway.token()) as conn:
        r = await conn.run("kill -TERM $$")
    assert r.exit_signal is not None and r.exit_signal[0] == "TERM"


async def test_signal_request_reaches_the_process(gateway: Gateway) -> None:
    async with await gateway.connect(await gateway.token()) as conn:
        proc = await conn.create_process("trap 'echo got-usr1; exit 0' USR1; echo ready; while :; do sleep 0.1; done")
        assert (await asyncio.wait_for(proc.stdout.readline(), 10)) == "ready\n"
        proc.send_signal("USR1")
        assert (await asyncio.wait_for(proc.stdout.readline(), 10)) == "got-usr1\n"
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.exit_status == 0


async def test_stdin_bulk_round_trip(gateway: Gateway) -> None:
    data = os.urandom(3 * 1024 * 1024)
    async with await gateway.connect(await gateway.token()) as conn:
        r = await conn.run("md5sum", input=data, encoding=None)
    assert isinstance(r.stdout, bytes)
    assert r.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


async def test_openssh_stdin_and_exit_code(gateway: Gateway) -> None:
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "tr a-z A-Z; exit 4", input="shout\n")
    assert r.returncode == 4
    assert r.stdout == "SHOUT\n"


async def test_env_allowlist(gateway: Gateway) -> None:
    env = {"LANG": "C.UTF-8", "LC_TIME": "C", "LD_PRELOAD": "/tmp/evil.so", "BASH_ENV": "/tmp/evil.sh",
           "GW_TEST_X": "1"}  # fmt: skip
    async with await gateway.connect(await gateway.token()) as conn:
        r = await conn.run("env", env=env)
    await gateway.settle()
    lines = set(str(r.stdout).splitlines())
    assert "LANG=C.UTF-8" in lines and "LC_TIME=C" in lines
    assert not any(line.startswith(("LD_PRELOAD=", "BASH_ENV=", "GW_TEST_X=")) for line in lines)
    refused = (await gateway.events(types=("ssh.env.refused",)))[-1]
    assert refused.data["names"] == ["BASH_ENV", "GW_TEST_X", "LD_PRELOAD"]


async def test_openssh_sendenv_filtered(gateway: Gateway) -> None:
    os.environ["GW_TEST_Y"] = "1"
    try:
        r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "-o", "SendEnv=GW_TEST_Y LANG", "env")
    finally:
        del os.environ["GW_TEST_Y"]
    assert r.returncode == 0, r.stderr
    assert "GW_TEST_Y" not in r.stdout


async def test_local_forwarding_refused_and_audited(gateway: Gateway) -> None:
    async with await gateway.connect(await gateway.token()) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection(gateway.sshd.host, gateway.sshd.port)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 22)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_unix_connection("/run/sshd.sock")
        r = await conn.run("echo still-fine")
        assert r.stdout == "still-fine\n"
    await gateway.settle()
    kinds = {e.data["kind"] for e in await gateway.events(types=("ssh.forward",)) if not e.data["allowed"]}
    assert {"direct-tcpip", "tcpip-forward", "direct-streamlocal"} <= kinds


async def test_local_forwarding_allowed_goes_through_the_target(gateway: Gateway) -> None:
    async with await gateway.connect(await gateway.token("tunnel")) as conn:
        reader, writer = await conn.open_connection(gateway.sshd.host, gateway.sshd.port)
        banner = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    assert banner.startswith(b"SSH-2.0-OpenSSH")


async def test_agent_and_x11_refused_and_audited(gateway: Gateway) -> None:
    async with await gateway.connect(await gateway.token(), agent_forwarding=True, agent_path="/nonexistent") as conn:
        r = await conn.run("echo ${SSH_AUTH_SOCK:-no-agent}", x11_forwarding="ignore_failure", x11_display=":0")
    assert r.stdout == "no-agent\n"
    await gateway.settle()
    kinds = {e.data["kind"] for e in await gateway.events(types=("ssh.forward",))}
    assert {"agent", "x11"} <= kinds


async def test_openssh_forward_agent_and_tunnel_refused(gateway: Gateway) -> None:
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "-o", "ExitOnForwardFailure=yes", "-L",
                                "0:127.0.0.1:22", "true")  # fmt: skip
    assert r.returncode != 0


async def test_exec_only_scope(gateway: Gateway) -> None:
    token = await gateway.token("readonly")
    async with await gateway.connect(token) as conn:
        ok = await conn.run("echo allowed")
        assert ok.stdout == "allowed\n"
        shell = await conn.run(term_type="xterm")
        assert shell.exit_status == 126 and "does not allow an interactive shell" in str(shell.stdout)
        refused = await conn.run("whoami")
        assert refused.exit_status == 126
        assert "[gateway] refused: command not in this scope's allowed list: whoami" in str(refused.stderr)
        sneaky = await conn.run("echo ok; touch /tmp/gw-should-not-exist")
        assert sneaky.exit_status == 126 and sneaky.stdout == ""
    assert not os.path.exists("/tmp/gw-should-not-exist")
    r = await asyncio.to_thread(gateway.ssh, await gateway.token("readonly"), "whoami")
    assert r.returncode != 0
    assert "[gateway] refused: command not in this scope's allowed list: whoami" in r.stderr
    r = await asyncio.to_thread(gateway.ssh, await gateway.token("readonly"), "echo ok; id")
    assert "shell syntax" in r.stderr and "ok" not in r.stdout
    r = await asyncio.to_thread(gateway.ssh, await gateway.token("readonly"))
    assert "this scope does not allow an interactive shell" in r.stderr


async def test_exec_command_rules(gateway: Gateway, tmp_path: os.PathLike[str]) -> None:
    victim = gateway.sshd.scratch_dir / "victim-exec"
    victim.mkdir(exist_ok=True)
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), f"rm -rf {victim}")
    assert r.returncode != 0 and "matches rule 'no-rm-rf'" in r.stderr
    assert victim.exists()
    conn = await gateway.connect(await gateway.token())
    done = await conn.run("reboot now")
    assert done.exit_status == 126
    await asyncio.wait_for(conn.wait_closed(), 30)  # the kill is quick; a loaded machine is not
    s = await gateway.last_session()
    rec = await gateway.wait_closed(s.id)
    assert "kill rule no-shutdown" in rec.end_reason


async def test_multiple_channels_share_one_session(gateway: Gateway) -> None:
    async with await gateway.connect(await gateway.token()) as conn:
        a, b = await asyncio.gather(conn.run("echo one"), conn.run("echo two"))
    assert (a.stdout, b.stdout) == ("one\n", "two\n")
    s = await gateway.last_session()
    rec = await gateway.wait_closed(s.id)
    assert rec.stats["channels"] == 2
    side = rec.recording_path.replace(".cast", ".2.cast")
    assert os.path.exists(side)
    parts = [e for e in await gateway.events(s.id, types=("recording.part",))]
    assert parts and parts[0].data["recording_sha256"]


async def test_bulk_output_slows_down_for_the_recorder_instead_of_failing(gateway: Gateway) -> None:
    async with await gateway.connect(await gateway.token()) as conn:
        r = await conn.run("head -c 150000000 /dev/urandom | md5sum >&2; head -c 150000000 /dev/zero", encoding=None)
    assert isinstance(r.stdout, bytes) and len(r.stdout) == 150_000_000
    rec = await gateway.settle()
    assert rec.end_reason == "client disconnected"
    # Plain or compressed (blocks.py decides by the disk's speed), every byte reads back.
    _, frames = read_binary_stream(Path(rec.recording_path))
    assert sum(len(f.data) for f in frames if f.stream == "o") == 150_000_000


async def test_ciphers_aes_gcm_or_chacha20_no_client_locked_out(gateway: Gateway) -> None:
    """Stock OpenSSH (chacha20 first) gets chacha20; a client asking for AES-GCM gets it; CTR is not offered."""
    token = await gateway.token()

    def ciphers(*opts: str) -> tuple[int, set[str]]:
        r = gateway.ssh(token, *opts, "-v", "true")
        return r.returncode, {
            line.split("cipher: ")[1].split()[0] for line in r.stderr.splitlines() if "cipher:" in line
        }

    assert await asyncio.to_thread(ciphers) == (0, {"chacha20-poly1305@openssh.com"})
    assert await asyncio.to_thread(ciphers, "-c", "aes128-gcm@openssh.com") == (0, {"aes128-gcm@openssh.com"})
    assert await asyncio.to_thread(ciphers, "-c", "aes256-gcm@openssh.com,aes128-ctr") == (
        0, {"aes256-gcm@openssh.com"})  # fmt: skip
    code, _ = await asyncio.to_thread(ciphers, "-c", "aes128-ctr")
    assert code == 255
    # A bulk read on chacha20 (the gateway's own shim, gateway/ssh/chacha.py) arrives whole.
    r = await asyncio.to_thread(gateway.ssh, token, "-c", "chacha20-poly1305@openssh.com", "seq 1 300000")
    assert r.returncode == 0 and r.stdout == "".join(f"{i}\n" for i in range(1, 300001)), r.stderr


async def test_exec_allowlist_globs_do_not_match_options(gateway: Gateway) -> None:
    """`head *` with only `-c N` allowed: an option the rule does not name is refused, through real ssh."""
    token = await gateway.token("readonly")
    hello = str(gateway.sshd.hello_path)
    ok = await asyncio.to_thread(gateway.ssh, token, f"head -c 5 {hello}")
    assert ok.returncode == 0 and ok.stdout == "hello", ok.stderr
    plain = await asyncio.to_thread(gateway.ssh, token, f"head {hello}")
    assert plain.returncode == 0 and plain.stdout.startswith("hello")
    for sneaky in (f"head -n 1 {hello}", f"head --lines=1 {hello}", f"cat -A {hello}", "echo -e hi"):
        r = await asyncio.to_thread(gateway.ssh, token, sneaky)
        assert r.returncode == 126 and r.stdout == "", (sneaky, r.stdout)
        assert "not in this scope's allowed list" in r.stderr
    # A glob the target's shell would expand: a file named `-n` in the directory becomes an option.
    d = gateway.sshd.scratch_dir / "glob-into-option"
    d.mkdir(exist_ok=True)
    (d / "-n").write_text("")
    (d / "x").write_text("x\n")
    r = await asyncio.to_thread(gateway.ssh, token, f"head {d}/*")
    assert r.returncode == 126 and r.stdout == "" and "shell syntax" in r.stderr
