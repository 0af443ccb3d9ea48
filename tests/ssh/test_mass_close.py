"""Many real SSH sessions ended at once (one revocation, or the gateway's shutdown): every end is recorded, no
session's close runs out of its budget ("closing its connections failed"), and none is left upstream."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator

import asyncssh
import pytest

from gateway.ssh import SshListener
from tests.rig.sshd import SshServer
from tests.ssh.conftest import Gateway, make_config
from tests.threaded import serve_in_thread

pytestmark = pytest.mark.slow
SESSIONS = int(os.environ.get("GW_TEST_MASS_SESSIONS", "200"))


@pytest.fixture
def own_gateway(sshd_server: SshServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own: the shutdown case stops it."""
    config = make_config(tmp_path_factory.mktemp("gw-mass"), sshd_server)
    with serve_in_thread(config, SshListener, "gateway-mass") as (services, listener, loop):
        yield Gateway(config, services, listener, sshd_server, loop)


async def _open(
    gw: Gateway, token: str, n: int
) -> list[tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess[str]]]:
    """n sessions, each an interactive shell-like PTY `cat`, opened in batches (sshd's MaxStartups)."""
    out: list[tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess[str]]] = []
    for start in range(0, n, 20):
        conns = await asyncio.gather(*(gw.connect(token) for _ in range(start, min(n, start + 20))))
        procs = await asyncio.gather(*(c.create_process("cat", term_type="xterm") for c in conns))
        out += list(zip(conns, procs, strict=True))
    for _, proc in out[-20:]:  # the last ones relay: every session is up end to end
        proc.stdin.write("ping\n")
        await asyncio.wait_for(proc.stdout.readuntil("ping"), 30)
    return out


@pytest.mark.parametrize("how", ["revoke", "shutdown", "clients"])
async def test_ending_many_sessions_at_once(own_gateway: Gateway, how: str, caplog: pytest.LogCaptureFixture) -> None:
    gw = own_gateway
    issued = await gw.grant(ttl=3600)
    t0 = time.monotonic()
    sessions = await _open(gw, issued.token, SESSIONS)
    opened = time.monotonic() - t0
    ids = set(gw.live())
    assert len(ids) == SESSIONS
    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    if how == "revoke":
        await gw.run(gw.services.store.revoke_grant(issued.grant.id, by="carol", reason="mass", now=time.time()))
        await gw.run(gw.services.registry.sweep())
    elif how == "shutdown":
        await gw.run(gw.services.registry.close_all("gateway stopped"))
    else:  # every engineer's connection closes at once
        for conn, _ in sessions:
            conn.close()
    deadline = time.monotonic() + 120  # a hang is still a failure
    while len(ended := {e.session for e in await gw.events(types=("session.end",))} & ids) < len(ids):
        assert time.monotonic() < deadline, f"{len(ids) - len(ended)} of {len(ids)} ends not recorded"
        await asyncio.sleep(0.1)
    took = time.monotonic() - t0
    print(f"{how}: {SESSIONS} sessions opened in {opened:.1f} s, ended in {took:.2f} s")
    failed = [r.getMessage() for r in caplog.records if "closing its connections failed" in r.getMessage()]
    assert not failed, f"{len(failed)} of {SESSIONS}: {failed[:3]}"
    slow = [r.getMessage() for r in caplog.records if "did not end within" in r.getMessage()]
    assert not slow, slow[:3]
    assert gw.live() == []
    ends = await gw.events(types=("session.end",))
    assert sorted(e.session for e in ends if e.session in ids) == sorted(ids)  # each exactly once
    reason = {"revoke": "grant revoked: mass", "shutdown": "gateway stopped", "clients": "client disconnected"}[how]
    assert {e.data["reason"] for e in ends if e.session in ids} == {reason}
    for sid in ids:
        rec = await gw.session_record(sid)
        assert rec.ended_at is not None and rec.recording_sha256, sid
    # every client saw its session end
    for conn, _ in sessions:
        await asyncio.wait_for(conn.wait_closed(), 30)
