"""Authentication by approval token with stock OpenSSH and asyncssh; every refusal says why."""

from __future__ import annotations

import asyncio
import socket
import stat
import subprocess
import time
from pathlib import Path

import asyncssh
import pytest
from asyncssh.constants import MSG_CHANNEL_OPEN
from asyncssh.packet import String, UInt32

from tests.ssh.conftest import BAD_KEY_TARGET, OTHER_TARGET, TARGET, Gateway


async def test_keyboard_interactive_prompt(gateway: Gateway) -> None:
    r = gateway.ssh(await gateway.token(), "id", "-un")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == gateway.sshd.user  # the gateway's injected login, not the engineer


async def test_password_method(gateway: Gateway) -> None:
    r = gateway.ssh(await gateway.token(), "echo", "pw-ok", method="password")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "pw-ok\n"


async def test_ssh_askpass(gateway: Gateway, tmp_path: Path, clean_env: dict[str, str]) -> None:
    token = await gateway.token()
    askpass = tmp_path / "askpass.sh"
    token_file = tmp_path / "token"
    token_file.write_text(token)
    askpass.write_text(f"#!/bin/sh\ncat {token_file}\n")
    askpass.chmod(stat.S_IRWXU)
    env = {**clean_env, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    r = subprocess.run(["setsid", "-w", *gateway.ssh_argv("echo", "askpass-ok")], env=env, capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "askpass-ok\n"


async def test_login_at_target(gateway: Gateway) -> None:
    token = await gateway.token()
    r = gateway.ssh(token, "id", "-un", user=f"{gateway.sshd.user}@{TARGET}")
    assert r.returncode == 0, r.stderr
    r = gateway.ssh(await gateway.token(), "true", user=f"root@{TARGET}")
    assert r.returncode != 0
    assert "gateway: scope 'ops' logs in as" in r.stderr


@pytest.mark.parametrize("method", ["keyboard-interactive", "password"])
async def test_expired_token_says_so(gateway: Gateway, method: str) -> None:
    token = await gateway.token(ttl=60, now=time.time() - 3600)
    r = gateway.ssh(token, "true", method=method)
    assert r.returncode != 0
    assert "gateway: approval token expired" in r.stderr


async def test_refusals_each_with_their_reason(gateway: Gateway) -> None:
    revoked = await gateway.grant()
    await gateway.run(gateway.services.store.revoke_grant(revoked.grant.id, by="carol", reason="wrong ticket",
                                                          now=time.time()))  # fmt: skip
    cases = {
        "garbage": ("not-a-token", "approval token is malformed"),
        "empty": ("", "no approval token was given"),
        "revoked": (revoked.token, "this grant was revoked: wrong ticket"),
        "other target": (await gateway.token(target=OTHER_TARGET), "this token is for target 'rig-2', not 'rig'"),
    }
    for name, (token, message) in cases.items():
        r = gateway.ssh(token, "true")
        assert r.returncode != 0, name
        assert f"gateway: {message}" in r.stderr, (name, r.stderr)
    rejected = await gateway.events(types=("token.rejected",))
    assert {"malformed", "empty", "revoked", "wrong-target"} <= {e.data["code"] for e in rejected}


async def test_unknown_target(gateway: Gateway) -> None:
    r = gateway.ssh(await gateway.token(), "true", user="nonexistent")
    assert "gateway: no ssh target named 'nonexistent'" in r.stderr


async def test_asyncssh_wrong_token_is_permission_denied(gateway: Gateway) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        await gateway.connect("nope")


async def test_upstream_host_key_mismatch_is_refused(gateway: Gateway) -> None:
    token = await gateway.token(target=BAD_KEY_TARGET)
    r = gateway.ssh(token, "true", user=BAD_KEY_TARGET)
    assert r.returncode != 0
    assert "does not match the pinned key" in r.stderr
    ev = [e for e in await gateway.events(types=("ssh.upstream.failed",)) if e.target == BAD_KEY_TARGET]
    assert ev, "the failed upstream login is audited"
    rec = await gateway.wait_closed(ev[-1].session)
    assert rec.end_reason.startswith("upstream login failed")


async def test_idle_preauth_sockets_do_not_block_and_time_out(gateway: Gateway) -> None:
    idle = []
    for _ in range(60):
        s = socket.create_connection((gateway.host, gateway.port))
        idle.append(s)
    try:
        started = time.monotonic()
        r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "echo", "still-served")
        assert r.stdout == "still-served\n", r.stderr
        assert time.monotonic() - started < 10
        # preauth_timeout is 3 s in the test config: the idle sockets are closed by the gateway.
        idle[0].settimeout(10)
        banner = idle[0].recv(100)
        assert banner.startswith(b"SSH-2.0-")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if idle[0].recv(4096) == b"":
                break
        else:
            pytest.fail("idle pre-auth connection was not closed")
        assert time.monotonic() - started < 9
    finally:
        for s in idle:
            s.close()


async def test_no_channel_before_auth(gateway: Gateway) -> None:
    """A CHANNEL_OPEN sent before authentication ends the connection, even with a valid token after it."""
    issued = await gateway.grant()

    class Sneaky(asyncssh.SSHClient):
        def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
            self.conn = conn

        def password_auth_requested(self) -> str:
            # asyncssh's client holds channel opens back until auth completes; pretend it has.
            self.conn._auth_complete = True
            self.conn.send_packet(MSG_CHANNEL_OPEN, String(b"session"), UInt32(0), UInt32(65536), UInt32(32768))
            self.conn._auth_complete = False
            return issued.token

    with pytest.raises((asyncssh.Error, OSError)):
        conn, _ = await asyncssh.create_connection(
            Sneaky, gateway.host, gateway.port, username=TARGET, known_hosts=None, preferred_auth="password",
            client_keys=None, agent_path=None, config=None,
        )  # fmt: skip
        conn.close()
    started = [e for e in await gateway.events(types=("session.start",)) if e.grant == issued.grant.id]
    assert started == []
