"""The issue's "done when", in a real browser: a new user runs `gateway demo`, opens the printed console link as
bob, approves alice's request, watches her session, revokes it and replays it, using only what the demo printed."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.demo import READY_LINE
from tests.rig import needs
from tests.test_demo import RunningDemo, _client_env, _flow, _paste_in_order, demo
from tests.web.browser import Browser, chrome
from tests.web.test_browser import Pty, _player_shows, until

pytestmark = pytest.mark.slow
__all__ = ["demo"]


@pytest.mark.timeout(300)
async def test_the_demo_in_a_browser(demo: RunningDemo, tmp_path: Path) -> None:
    await asyncio.to_thread(demo.read_until, READY_LINE, 90)
    needs(os.access("/usr/sbin/sshd", os.X_OK), "the demo's SSH target needs OpenSSH's server")
    link = demo.line(r"^http://127\.0\.0\.1:\d+/signin\?t=\S+$")
    assert link is not None, demo.text
    origin = link.split("/signin", 1)[0]
    lines = _flow(demo.text)
    # alice and bob log in (step 1) and alice asks for a shell on web-1: the printed lines, pasted
    step1 = [x for x in lines if x.startswith(("gateway()", "A=")) or " login --server " in x]
    ask = next(x for x in lines if x.startswith("REQ2=$("))
    results = _paste_in_order([*step1, ask, 'echo "$REQ2"'], tmp_path)
    assert all(code == 0 for _, code, _, _ in results), results
    rid = results[-1][2].strip()
    creds = dict(kv.split("=", 1) for kv in shlex.split(next(x for x in lines if x.startswith("A="))))

    b = Browser(await asyncio.to_thread(chrome), tmp_path / "screenshots")
    shell: Pty | None = None
    try:
        await b.get(link)  # bob, signed in by the link (a meta refresh takes him home)
        await b.wait_text("Hello bob")
        await b.get(origin + "/requests")
        await b.type(f"#request-{rid} input[name=comment]", "ok for the demo")
        await b.click(f"#request-{rid} button[value=approve]")
        await b.wait_text("Nothing is waiting")

        # alice's interactive shell, as `$A gateway ssh web-1` (the printed line without -- ...)
        env = {k: v for k, v in _client_env().items() if not k.startswith("GATEWAY_")}
        env |= {"HOME": str(tmp_path), "GATEWAY_CREDENTIALS": creds["A"], "TERM": "xterm"}
        master, slave = os.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "ssh", "web-1"], env=env, stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        shell = Pty(proc, master)
        await shell.wait_for(b"$ ", timeout=30)
        shell.type("echo DEMO-$((3*4))\n")
        await shell.wait_for(b"DEMO-12")

        # bob watches it live
        await b.get(origin + "/live")
        await b.click("tr[id^=live-] a.watch")
        await until(lambda: _player_shows(b, "#live-player", "DEMO-12"), timeout=15, what="the live terminal")
        sid = b.driver.current_url.rsplit("/", 1)[1]
        shell.type("echo WATCHED-$((5*5))\n")
        await until(lambda: _player_shows(b, "#live-player", "WATCHED-25"), timeout=15, what="a live update")
        await b.shot("demo-watch")

        # bob revokes her grant: her shell ends within a second of the click
        await b.get(origin + "/grants")
        await b.type("tr[id^=grant-] input[name=reason]", "demo: done")
        t0 = time.monotonic()
        await b.click("tr[id^=grant-] button[type=submit]")
        await until(lambda: _gone(shell), timeout=5, what="alice's shell ends")
        cut = time.monotonic() - t0
        await b.wait_text("No active grants")

        # and replays it
        await b.get(f"{origin}/sessions/{sid}")
        await b.wait_text("revoked")
        await b.find("#player .ap-player, #player .ap-wrapper", timeout=15)
        await b.click("#player .ap-player")
        await until(lambda: _player_shows(b, "#player", "WATCHED-25"), timeout=20, what="the replay")
        await b.shot("demo-replay")
        print(f"demo: revoke click -> alice's shell gone in {cut:.2f} s")
        assert cut < 1.5  # the click returns when the next page has loaded; the cut itself is sooner
        assert re.fullmatch(r"[0-9a-f]{16}", sid), sid
    finally:
        if shell is not None:
            shell.close()
        await asyncio.to_thread(b.driver.quit)


async def _gone(p: Pty) -> bool:
    return p.proc.poll() is not None
