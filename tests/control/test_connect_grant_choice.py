"""`gateway ssh` / `gateway psql` connect with the caller's newest live grant (not the longest-lived one), say which
grant before connecting, and take `--grant ID` (a grant or request id); with real ssh through a real gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.config import load_config
from tests.control.conftest import Running, start_gateway, write_rig_config
from tests.control.test_e2e_clients import _cli, _done, _live
from tests.rig.postgres import PgCluster
from tests.rig.sshd import SshServer

pytestmark = pytest.mark.slow


@pytest.fixture
async def gw(
    tmp_path: Path, api_keys: dict[str, str], pg_cluster: PgCluster, sshd_server: SshServer
) -> AsyncIterator[Running]:
    """The gateway with every listener in front of the rig's PostgreSQL and sshd."""
    config = load_config(write_rig_config(tmp_path, api_keys, pg_cluster, sshd_server), need_secrets=False)
    svc, port, stop = await start_gateway(config, enable=("postgres", "ssh", "http"))
    async with aiohttp.ClientSession() as session:
        yield Running(svc, port, api_keys, session, stop, {"pg": pg_cluster, "sshd": sshd_server})
    await stop()


async def _approved(gw: Running, ttl: str) -> tuple[str, str]:
    """alice asks for web-1/shell for `ttl`, bob approves: (request id, grant id)."""
    body = {"target": "web-1", "scope": "shell", "ttl": ttl, "reason": "INC-9: disk"}
    req = await gw.ok("alice", "POST", "/v1/requests", body)
    approved = await gw.ok("bob", "POST", f"/v1/requests/{req['id']}/approve", {"comment": "ok"})
    return req["id"], approved["grant"]


async def test_newest_grant_is_used_and_named_and_its_revocation_ends_the_session(gw: Running) -> None:
    """An older grant that runs longer must not win: the one just approved is used, named on stderr, and
    revoking it ends the session (it used to pick the older grant, so the revocation ended nothing)."""
    _, old = await _approved(gw, "1h")
    await asyncio.sleep(0.01)  # issued strictly later
    _, new = await _approved(gw, "15m")
    ssh = await _cli(gw, "alice", "ssh", "web-1", "--", "sleep", "60")
    try:
        deadline = time.monotonic() + 30
        while await _live(gw, new) != 1:
            assert ssh.returncode is None, await _done(ssh)
            assert time.monotonic() < deadline, "the session did not start on the new grant"
            await asyncio.sleep(0.1)
        assert await _live(gw, old) == 0
        await gw.ok("erin", "POST", f"/v1/grants/{new}/revoke", {"reason": "done"})
        code, _, err = await _done(ssh, 15)
    finally:
        if ssh.returncode is None:
            ssh.kill()
            await ssh.wait()
    assert code != 0
    first = err.splitlines()[0]
    assert first.startswith(f"gateway: using grant {new} (web-1/shell, 1")  # 15m (or 14m59s) left
    assert "left; newest of 2 live grants, --grant ID picks another)" in first, err


async def test_grant_option_picks_a_grant_by_grant_or_request_id(gw: Running) -> None:
    """`--grant g_...` or `--grant r_...` (what `gateway request` printed) connects with that grant."""
    old_req, old = await _approved(gw, "1h")
    await asyncio.sleep(0.01)
    await _approved(gw, "15m")
    for pick in (old, old_req):
        code, out, err = await _done(await _cli(gw, "alice", "ssh", "web-1", "--grant", pick, "--", "echo", "hi"))
        assert code == 0 and out == "hi\n", err
        assert err.startswith(f"gateway: using grant {old} (web-1/shell, ") and "newest" not in err, err
    sessions = await gw.ok("erin", "GET", "/v1/sessions", params={"grant": old})
    assert len(sessions["sessions"]) == 2
    code, _, err = await _done(await _cli(gw, "alice", "ssh", "web-1", "--grant", "g_nope", "--", "true"))
    assert code == 1 and "g_nope is not a live grant of yours on web-1" in err
