"""When the gateway ends an SSH session, the command it ran upstream ends too (real sshd, stock ssh client)."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time

import pytest

from tests.ssh.conftest import SSH_OPTS, TARGET, Gateway, remote_pids

GONE_WITHIN = 2.0
"""Seconds after the session's end by which the upstream process must be gone."""

# (ssh options, command, typed on stdin): the `''` keeps the marker out of the local client's own command
# line (pgrep -f). -n sends EOF at once (as `ssh host cmd < /dev/null` does); otherwise stdin stays open.
SHAPES: dict[str, tuple[list[str], str, str]] = {
    "exec": (["-n"], "sleep 1007''{n}", ""),
    "exec-stdin-open": ([], "sleep 1007''{n}", ""),
    "pty": (["-tt"], "sleep 1007''{n}", ""),
    "pipeline": (["-n"], "sleep 1007''{n} | cat", ""),
    "ignores-term": (["-n"], "trap '' HUP TERM INT; sleep 1007''{n}; true", ""),
    "shell": (["-tt"], "", "sleep 1007''{n}\n"),
}


async def wait_until(pred: object, timeout: float, what: str) -> float:
    """Poll `pred` (a callable) until true; returns when it became true (time.time())."""
    assert callable(pred)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return time.time()
        await asyncio.sleep(0.05)
    raise AssertionError(what)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("how", ["expiry", "revoke", "kill", "client-gone"])
async def test_upstream_process_ends_with_the_session(gateway: Gateway, how: str, shape: str) -> None:
    """Expiry, revocation, a kill and the engineer's client dying all end the command upstream within 2 s."""
    opts, template, typed = SHAPES[shape]
    n = random.randrange(10**6, 10**7)
    marker = f"sleep 1007{n}"
    # expiry: long enough for a login and a shell to start the command on a loaded machine (checked below)
    issued = await gateway.grant(ttl=7 if how == "expiry" else 600)
    argv = ["sshpass", "-P", "Approval token", "-p", issued.token, "ssh", *SSH_OPTS, *opts,
            "-o", "PreferredAuthentications=keyboard-interactive", "-p", str(gateway.port),
            f"{TARGET}@{gateway.host}", *([template.format(n=n)] if template else [])]  # fmt: skip
    client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if typed:
            assert client.stdin is not None
            client.stdin.write(typed.format(n=n).encode())
            client.stdin.flush()
        await wait_until(lambda: remote_pids(marker), 15, f"{marker} did not start upstream")
        if how == "expiry":
            assert time.time() < issued.grant.expires_at, "the command started only after the grant expired"
        sid = str((await gateway.last_session()).id)
        ended = issued.grant.expires_at if how == "expiry" else time.time()
        if how == "kill":
            await gateway.run(gateway.services.registry.kill(sid, "enough", by="carol"))
        elif how == "client-gone":
            client.kill()
        elif how == "revoke":
            await gateway.run(gateway.services.store.revoke_grant(issued.grant.id, by="carol", reason="over",
                                                                  now=time.time()))  # fmt: skip
            await gateway.run(gateway.services.registry.sweep())
        gone = await wait_until(lambda: not remote_pids(marker), 15, f"{marker} outlived its session ({how})")
        assert gone - ended < GONE_WITHIN, f"{marker} ended {gone - ended:.1f} s after the session ({how})"
        await gateway.wait_closed(sid, timeout=15)
        assert client.wait(10) is not None  # the engineer's client was disconnected too
        if how != "client-gone":
            [end] = await gateway.events(sid, types=("session.end",))
            assert end.data["recording_sha256"]
    finally:
        client.kill()
        client.wait()
        for pid in remote_pids(marker):  # never leave this test's process behind, whatever failed
            subprocess.run(["kill", "-KILL", str(pid)], check=False)
