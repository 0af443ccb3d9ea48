"""`max_sessions` under 20 concurrent stock OpenSSH clients: exactly the limit get a shell on the real sshd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import subprocess
import time
from typing import Any

import asyncssh

from gateway.grants import issue_grant
from tests.ssh.conftest import SSH_OPTS, TARGET, USER, Gateway
from tests.ssh.test_end_paths import until

CLIENTS = 20
LIMIT = 2
# The admitted clients' upstream command, found on the rig's sshd side by pgrep; unique per run, so another
# run of this test on the same machine is not counted. It runs until the test ends it: an admitted session
# that ended by itself would free its slot for a client still connecting (on a loaded machine the last of
# 20 clients can authenticate seconds after the first).
CANARY = f"sleep 300.{secrets.randbelow(10**6):06d}"
ANSWERED = 60.0
"""Seconds for every client to be admitted or refused."""


def canary_pids() -> list[int]:
    """Processes whose whole command line is the canary: the upstream's, not the local clients' argv."""
    out = subprocess.run(["pgrep", "-f", "-x", CANARY], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def upstream_canaries() -> int:
    """How many canaries run upstream."""
    return len(canary_pids())


def end_canaries() -> None:
    """End the admitted sessions' commands (each session then prints "admitted" and ends)."""
    for pid in canary_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


async def until_answered(tasks: list[asyncio.Task[Any]], refused: int) -> None:
    """Wait until `refused` of the clients are done (the admitted ones run on), or ANSWERED seconds."""
    deadline = time.monotonic() + ANSWERED
    while sum(t.done() for t in tasks) < refused and time.monotonic() < deadline:
        await asyncio.wait([t for t in tasks if not t.done()], timeout=deadline - time.monotonic(),
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip


async def test_concurrent_ssh_connects_admit_exactly_max_sessions(gateway: Gateway) -> None:
    svc = gateway.services
    issued = await gateway.run(
        issue_grant(gateway.config, svc.ring, svc.store, svc.policies, user=USER, target=TARGET, scope="ops",
                    ttl=600, reason="TEST-limit", approvers=("bob",), now=time.time(), max_sessions=LIMIT)
    )  # fmt: skip
    argv = ["sshpass", "-P", "Approval token", "-p", issued.token, "ssh", *SSH_OPTS,
            "-o", "PreferredAuthentications=keyboard-interactive", "-p", str(gateway.port),
            f"{TARGET}@{gateway.host}", f"{CANARY}; echo admitted"]  # fmt: skip
    peak = 0
    done = asyncio.Event()

    async def watch_upstream() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, await asyncio.to_thread(upstream_canaries))
            await asyncio.sleep(0.02)

    async def client() -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    watcher = asyncio.create_task(watch_upstream())
    tasks = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    try:
        await until_answered(tasks, CLIENTS - LIMIT)
        with contextlib.suppress(AssertionError):  # too few admitted: the results below say why
            await until(lambda: upstream_canaries() >= LIMIT, 10, "")
        running = upstream_canaries()
    finally:
        end_canaries()
    results = await asyncio.gather(*tasks)
    done.set()
    await watcher
    admitted = [r for r in results if r[1].strip() == "admitted"]
    refused = [r for r in results if r[1].strip() != "admitted"]
    assert len(admitted) == LIMIT, results
    for code, _, err in refused:
        assert code != 0 and f"this grant allows {LIMIT} concurrent session(s)" in err, err
    assert running == LIMIT and peak <= LIMIT, f"upstream ran the canary {max(running, peak)} times at once"
    sessions = await gateway.run(svc.store.list_sessions(grant_id=issued.grant.id))
    assert len(sessions) == LIMIT


async def test_concurrent_asyncssh_connects_admit_exactly_max_sessions(gateway: Gateway) -> None:
    """In-process clients authenticate within a few ms of each other: the race the old check lost (20 of 20)."""
    svc = gateway.services
    issued = await gateway.run(
        issue_grant(gateway.config, svc.ring, svc.store, svc.policies, user=USER, target=TARGET, scope="ops",
                    ttl=600, reason="TEST-limit", approvers=("bob",), now=time.time(), max_sessions=LIMIT)
    )  # fmt: skip

    async def client() -> asyncssh.SSHClientConnection | BaseException:
        try:
            return await gateway.connect(issued.token)
        except Exception as exc:
            return exc

    results = await asyncio.gather(*(client() for _ in range(CLIENTS)))
    admitted = [r for r in results if isinstance(r, asyncssh.SSHClientConnection)]
    refused = [r for r in results if not isinstance(r, asyncssh.SSHClientConnection)]
    try:
        assert len(admitted) == LIMIT, f"{len(admitted)} of {CLIENTS} admitted with max_sessions={LIMIT}"
        assert all(isinstance(r, asyncssh.PermissionDenied) for r in refused), refused
        runs = [asyncio.create_task(c.run(f"{CANARY}; echo admitted", check=True)) for c in admitted]
        try:
            await until(lambda: upstream_canaries() == LIMIT, 30, "the admitted sessions' commands did not start")
        finally:
            end_canaries()
        assert [r.stdout for r in await asyncio.gather(*runs)] == ["admitted\n"] * LIMIT
    finally:
        for c in admitted:
            c.close()
    assert len(await gateway.run(svc.store.list_sessions(grant_id=issued.grant.id))) == LIMIT


def _sshd_log_since(gateway: Gateway, offset: int) -> str:
    return gateway.sshd.log_path.read_bytes()[offset:].decode(errors="replace")


def _ended(log: str, port: str) -> bool:
    """sshd logged the end of the connection from `port` (closed, disconnected or aborted mid-handshake)."""
    return bool(re.search(rf"(closed by|disconnect from|Disconnected from|Broken pipe|reset by).* port {port}\b"
                          rf"|port {port}\b.*(Broken pipe|reset by peer|closed)", log))  # fmt: skip


async def test_refused_admission_closes_the_upstream_login_started_for_it(gateway: Gateway) -> None:
    """The upstream login starts once the grant checks out, beside the session's registration: when that
    registration refuses the connection (max_sessions), the target sees the login end with no channel."""
    svc = gateway.services
    issued = await gateway.run(
        issue_grant(gateway.config, svc.ring, svc.store, svc.policies, user=USER, target=TARGET, scope="ops",
                    ttl=600, reason="TEST-limit", approvers=("bob",), now=time.time(), max_sessions=1)
    )  # fmt: skip
    held = await gateway.connect(issued.token)
    try:
        assert (await held.run("echo held", check=True)).stdout == "held\n"
        offset = gateway.sshd.log_path.stat().st_size
        try:
            await gateway.connect(issued.token)
        except asyncssh.PermissionDenied:
            pass
        else:
            raise AssertionError("a second session was admitted with max_sessions=1")
        log = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            log = _sshd_log_since(gateway, offset)
            ports = re.findall(r"^Connection from 127\.0\.0\.1 port (\d+) ", log, re.M)
            if ports and all(_ended(log, p) for p in ports):
                break
            await asyncio.sleep(0.05)
        ports = re.findall(r"^Connection from 127\.0\.0\.1 port (\d+) ", log, re.M)
        # One login, or none when the refusal came before its TCP connect (then it was cancelled before it
        # reached the target: on a loaded machine the admission check can be the quicker of the two).
        assert len(ports) <= 1, f"expected at most the refused connection's one upstream login:\n{log}"
        assert all(_ended(log, p) for p in ports), log
        assert "Starting session" not in log, log
        # The admitted session is untouched.
        assert (await held.run("echo still", check=True)).stdout == "still\n"
    finally:
        held.close()
    denied = await gateway.events(types=("token.rejected",))
    assert any(e.data.get("code") == "max-sessions" and e.grant == issued.grant.id for e in denied)
