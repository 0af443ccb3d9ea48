"""First light: exec through the gateway with the stock client and with asyncssh."""

from __future__ import annotations

from tests.ssh.conftest import Gateway


async def test_openssh_exec(gateway: Gateway) -> None:
    token = await gateway.token()
    r = gateway.ssh(token, "echo", "hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\n"


async def test_asyncssh_exec(gateway: Gateway) -> None:
    async with await gateway.connect(await gateway.token()) as conn:
        r = await conn.run("echo hi; exit 3")
    assert r.stdout == "hi\n"
    assert r.exit_status == 3
