"""/search, the session page opened at a moment (?t=), keystrokes and timeline links, and a request's
background, over HTTP against real recordings (a real psql and a real SSH shell through the gateway)."""

from __future__ import annotations

import html
import re

import pytest

from gateway.config import load_config
from gateway.detect.model import FIRST_COMMAND, FIRST_TABLE, NO_TICKET, Detection
from tests.test_review_e2e import Recorded, recorded
from tests.web.test_console_http import browser, csrf_of

pytestmark = pytest.mark.slow
__all__ = ["recorded"]


def hits(page: str) -> list[tuple[str, str]]:
    """(link, text) of every hit row."""
    rows = re.findall(r'<a class="moment-link" href="([^"]+)">.*?<td><code>(.*?)</code></td>', page, re.S)
    return [(html.unescape(link), html.unescape(text)) for link, text in rows]


async def test_search_links_to_the_moment(recorded: Recorded) -> None:
    gw, config = recorded.gw, load_config(recorded.config_path, need_secrets=False)
    erin, alice, bob = [await browser(gw, config, u) for u in ("erin", "alice", "bob")]
    async with erin, alice, bob:
        # the same search as `gateway search`: a command of the SSH session, a statement of the Postgres one
        async with erin.get(gw.url + "/search", params={"q": "hello-review"}) as resp:
            page = await resp.text()
            assert resp.status == 200 and "script-src 'self'" in resp.headers["Content-Security-Policy"]
        [(link, text)] = [h for h in hits(page) if h[1] == "echo hello-review"]
        m = re.fullmatch(rf"/sessions/{recorded.ssh_sid}\?t=(\d+\.\d+)#at", link)
        assert m, link
        at = float(m.group(1))
        async with erin.get(gw.url + link) as resp:
            session = await resp.text()
        # the player starts at the hit; the timeline's command links to the same moment
        assert f'data-start="{at:.6f}"' in session
        assert f'class="seek" href="/sessions/{recorded.ssh_sid}?t={at:.6f}#at"' in session
        timeline = session.split('<ol id="timeline">', 1)[1].split("</ol>", 1)[0]
        assert timeline.count("echo hello-review") == 1  # from the recording, not again from the audit log
        assert 'id="next-violation"' in session and 'id="player-controls" hidden' in session  # JS shows them
        # keystrokes: a closed <details> (hidden until opened), each line linking into the recording
        keys = session.split('<details id="keystrokes">', 1)[1].split("</details>", 1)[0]
        assert "echo hello-review⏎" in keys and 'class="seek"' in keys

        async with erin.get(gw.url + "/search", params={"q": "delete from ORDERS"}) as resp:
            [(link, text)] = hits(await resp.text())
        assert text == "DELETE FROM orders;" and link.startswith(f"/sessions/{recorded.pg_sid}?t=")
        async with erin.get(gw.url + link) as resp:
            transcript = await resp.text()
        row = re.search(r'<tr class="statement target" id="at"[^>]*>(.*?)</tr>', transcript, re.S)
        assert row and "DELETE FROM orders" in row.group(1) and "DENIED" in row.group(1)
        assert re.search(r'<li class="moment violation" data-t=', transcript)  # 'next violation' jumps here
        timeline = transcript.split('<ol id="timeline">', 1)[1].split("</ol>", 1)[0]
        assert timeline.count("DELETE FROM orders") == 1

        # case, regex (admins only: Python's re has no time bound), and what a non-admin may see
        async with erin.get(gw.url + "/search", params={"q": "delete from ORDERS", "case": "on"}) as resp:
            assert hits(await resp.text()) == []
        async with erin.get(gw.url + "/search", params={"q": "hel+o-rev", "regex": "on"}) as resp:
            assert [t for _, t in hits(await resp.text())] == ["echo hello-review"]
        async with alice.get(gw.url + "/search", params={"q": "hel+o-rev", "regex": "on"}) as resp:
            page = await resp.text()
            assert hits(page) == [] and 'name="regex"' not in page
        async with alice.get(gw.url + "/search", params={"q": "hello-review"}) as resp:
            assert len(hits(await resp.text())) == 1  # her own session
        async with bob.get(gw.url + "/search", params={"q": "hello-review"}) as resp:
            assert hits(await resp.text()) == []  # not his, not an admin
        async with erin.get(gw.url + "/search", params={"q": "(", "regex": "on"}) as resp:
            assert resp.status == 422
        async with erin.get(gw.url + "/search", params={"q": "x", "since": "soon"}) as resp:
            assert resp.status == 422
        async with erin.get(gw.url + f"/sessions/{recorded.pg_sid}", params={"t": "nan-ish"}) as resp:
            assert resp.status == 422
        # a detection about the SSH session (as the detector writes it) is on its timeline, at its offset
        d = Detection(FIRST_COMMAND, "warning", "first <b>echo</b> by alice", "alice", "web-1", recorded.ssh_sid, 0.5)
        await gw.services.store.append("detection", actor="alice", session=recorded.ssh_sid, target="web-1",
                                       severity="warning", data=d.data())  # fmt: skip
        async with erin.get(f"{gw.url}/sessions/{recorded.ssh_sid}") as resp:
            page = await resp.text()
        m = re.search(r'<li class="moment detection" data-t="0\.500000">(.*?)</li>', page, re.S)
        assert m and "first &lt;b&gt;echo&lt;/b&gt; by alice" in m.group(1) and "?t=0.500000#at" in m.group(1)
        searched = await gw.services.store.events(types=["console.search"])
        assert [e.data["pattern"] for e in searched if e.actor == "erin"][:1] == ["hello-review"]


async def test_request_shows_the_requesters_background(recorded: Recorded) -> None:
    gw, config = recorded.gw, load_config(recorded.config_path, need_secrets=False)
    ask = {"target": "web-1", "scope": "shell", "ttl": "15m", "reason": "INC-78 <script>alert(1)</script>"}
    rid = (await gw.ok("alice", "POST", "/v1/requests", ask))["id"]
    erin, bob = await browser(gw, config, "erin"), await browser(gw, config, "bob")
    async with erin, bob:
        async with erin.get(gw.url + "/requests") as resp:
            page = await resp.text()
        section = page.split(f'id="request-{rid}"', 1)[1].split("</section>", 1)[0]
        assert "<script>alert(1)</script>" not in section and "&lt;script&gt;" in section
        # her earlier request (approved, with its grant) and, for an admin, her last sessions
        assert "INC-77" in section and "approved" in section and recorded.ssh_grant in section
        assert f'href="/sessions/{recorded.ssh_sid}"' in section and f'href="/sessions/{recorded.pg_sid}"' in section
        # detections: one about this request (as the detector writes it), one about an earlier session of hers
        about = Detection(NO_TICKET, "info", "no <i>ticket</i> in the reason", "alice", "web-1", request=rid)
        older = Detection(FIRST_TABLE, "warning", "first read of customers", "alice", "orders-db", recorded.pg_sid, 1.0)
        for d in (about, older):
            await gw.services.store.append("detection", actor="alice", session=d.session, target=d.target,
                                           severity=d.severity, data=d.data())  # fmt: skip
        async with erin.get(gw.url + "/requests") as resp:
            section = (await resp.text()).split(f'id="request-{rid}"', 1)[1].split("</section>", 1)[0]
        assert "no &lt;i&gt;ticket&lt;/i&gt; in the reason" in section and "first read of customers" in section
        assert f'href="/sessions/{recorded.pg_sid}?t=1.0#at"' in section
        # bob may approve web-1 but is no admin: the requests he may see and this request's detections, not
        # her sessions or her other detections (the API's rule)
        async with bob.get(gw.url + "/requests") as resp:
            page = await resp.text()
        section = page.split(f'id="request-{rid}"', 1)[1].split("</section>", 1)[0]
        assert 'button type="submit" name="do" value="approve"' in section and "INC-77" in section
        assert "no &lt;i&gt;ticket&lt;/i&gt;" in section and "first read of customers" not in section
        assert "last sessions" not in section and "/sessions/" not in section
        await erin.post(f"{gw.url}/requests/{rid}/deny", data={"csrf": csrf_of(page), "comment": "no"})
