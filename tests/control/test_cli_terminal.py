"""What approvers and reviewers see in their terminal: CLI output rendered by a VT emulator (pyte).

A reason with cursor movement once made a request for scope `write`/`admin` render as `read` in
`gateway requests`; OSC 52 (clipboard) and OSC 0 (title) reached the terminal too. The hostile text here
is written straight into the store (older rows, or someone with the file): the API refuses it now.
"""

from __future__ import annotations

import asyncio
import json
import time
import unicodedata
from pathlib import Path

import pyte
import pytest

from gateway.cli import main
from gateway.store import GrantRecord, RequestRecord, SessionRecord
from tests.control.conftest import Running

RID, GID, SID = "r_evil0000000001", "g_evil0000000001", "s_evil0000000001"

# One of each: CSI cursor up/left/home, erase line, OSC 52 clipboard, OSC 0 title, DCS, C1 CSI and OSC
# (U+009B, U+009D) in UTF-8, a bidi override, backspaces, a carriage return.
HOSTILE = (
    "\x1b[1A\x1b[10D\x1b[H\x1b[2K\x1b]52;c;ZXZpbA==\x07\x1b]0;pwned\x07\x1bP1$qm\x1b\\"
    "\u009b2K\u009d0;c1-title\u009c\u202enimda\b\b\b\b\rX"
)
MARKERS = ("\\x1b[1A", "\\x1b[2K", "\\x1b]52;c;ZXZpbA==\\x07", "\\x1b]0;pwned", "\\x9b2K", "\\u202e", "\\x08", "\\r")


def spoof(row: str) -> str:
    """A reason that rubs out its own line and prints `row` in its place (the old attack)."""
    return f"\r\x1b[2K{row}\x1b]52;c;ZXZpbA==\x07\x1b]0;approve me\x07"


def render(out: str, columns: int = 400) -> pyte.Screen:
    """The screen after a terminal shows `out` (the tty turns LF into CR LF)."""
    screen = pyte.Screen(columns, max(24, out.count("\n") + 2))
    pyte.Stream(screen).feed(out.replace("\n", "\r\n"))
    return screen


def assert_inert(out: str) -> pyte.Screen:
    """Nothing in the output can act on a terminal: only printable characters and newlines; no title set."""
    bad = [c for c in out if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]
    assert bad == [], f"terminal controls reached the output: {bad[:8]!r}"
    screen = render(out)
    assert screen.title == "", f"the window title was set to {screen.title!r}"
    return screen


def row(screen: pyte.Screen, first: str) -> list[str]:
    """The columns of the rendered line that starts with `first`."""
    lines = [line for line in screen.display if line.startswith(first)]
    assert len(lines) == 1, (first, screen.display)
    return lines[0].split()


@pytest.fixture
async def hostile(gw: Running) -> Running:
    """A request, grant and ended session whose every text field is hostile."""
    store = gw.services.store
    now = time.time()
    await store.add_request(
        RequestRecord(
            RID, "alice", "orders-db", "write", spoof(f"{RID}  alice      orders-db  read"), 900, now,
            approvals=({"by": "carol", "at": now, "comment": HOSTILE},), expires_at=now + 3600,
        )
    )  # fmt: skip
    await store.add_grant(
        GrantRecord(
            GID, "alice", "orders-db", "write", spoof(f"{GID}  alice  orders-db  read"), ("carol" + HOSTILE,),
            now, now, now + 600, request_id=RID,
        )
    )  # fmt: skip
    await store.add_session(
        SessionRecord(SID, GID, "eve" + HOSTILE, "orders-db" + HOSTILE, "write", "postgres", "127.0.0.1:1", now)
    )
    await store.end_session(SID, ended_at=now + 5, reason="ended " + HOSTILE, recording_sha256=None, stats={})
    await store.append("session.end", actor="eve", session=SID, grant=GID, data={"reason": "bye " + HOSTILE})
    return gw


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def as_admin(monkeypatch: pytest.MonkeyPatch, gw: Running, config_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_URL", gw.url)
    monkeypatch.setenv("GATEWAY_API_KEY", gw.keys["erin"])
    monkeypatch.setenv("GATEWAY_CREDENTIALS", "/nonexistent")
    monkeypatch.setenv("GATEWAY_CONFIG", str(config_path))


async def test_requests_show_the_real_scope(
    hostile: Running, as_admin: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run(capsys, "requests")
    assert code == 0, err
    cols = row(render(out), RID)
    assert cols[1:4] == ["alice", "orders-db", "write"], cols  # not the `read` the reason tried to paint
    screen = assert_inert(out)
    text = "\n".join(screen.display)
    assert "\\r\\x1b[2K" in text and "\\x1b]52;c;ZXZpbA==\\x07" in text and "\\x1b]0;approve me" in text


async def test_grants_show_the_real_scope(hostile: Running, as_admin: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, "grants")
    assert code == 0, err
    screen = assert_inert(out)
    cols = row(screen, GID)
    assert cols[1:4] == ["alice", "orders-db", "write"], cols
    text = "\n".join(screen.display)
    for m in MARKERS:  # the approver's name carries every kind of escape: each shows as a marker
        assert m in text, (m, text)


async def test_sessions_table(hostile: Running, as_admin: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, "sessions")
    assert code == 0, err
    screen = assert_inert(out)
    cols = row(screen, SID)
    assert cols[1].startswith("eve\\x1b[1A") and cols[2].startswith("orders-db\\x1b[1A") and cols[3] == "write"
    line = next(line for line in screen.display if line.startswith(SID))
    assert "ended \\x1b[1A" in line and all(m in line for m in MARKERS)


async def test_show_timeline(hostile: Running, as_admin: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, "show", SID)
    assert code == 0, err
    screen = assert_inert(out)
    text = "\n".join(screen.display)
    assert screen.display[0].startswith(f"session {SID}: eve\\x1b[1A")
    assert "scope write" in screen.display[0]
    assert f"grant {GID}: reason " in text and "\\r\\x1b[2K" in text
    assert any("session.end" in line and "bye \\x1b[1A" in line for line in screen.display), text
    # one line per item: a CR or LF in stored text cannot forge a timeline entry
    assert len([line for line in out.splitlines() if line.strip()]) == len(out.strip().splitlines())


async def test_json_and_export_stay_ascii(hostile: Running, as_admin: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, "sessions", "--json")
    assert code == 0, err
    assert_inert(out)
    assert {r["id"]: r for r in json.loads(out)}[SID]["end_reason"] == "ended " + HOSTILE  # nothing lost
    code, out, err = await run(capsys, "audit", "export")
    assert code == 0, err
    assert_inert(out)
    events = [json.loads(line) for line in out.splitlines()]
    assert any(e["data"].get("reason") == "bye " + HOSTILE for e in events)


async def test_errors_echoing_input_are_inert(as_admin: None, gw: Running, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, "show", "zz" + HOSTILE)
    assert code == 1 and "no session" in err
    assert_inert(out + err)
    code, out, err = await run(capsys, "approve", "r_missing", "--comment", HOSTILE)
    assert code == 1 and "'comment'" in err and "\\x1b" in err, err  # the API's 422 names the field
    assert_inert(out + err)


async def test_policy_check_with_hostile_user_and_group_names(
    as_admin: None, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = json.dumps("mal" + HOSTILE)  # a TOML basic string is a JSON string for these characters
    with config_path.open("a") as f:
        f.write(f'[users.{evil}]\napi_key_sha256 = "{"0" * 64}"\ngroups = ["engineers", {evil}]\n')
    code, out, err = await run(capsys, "policy", "check")
    assert code == 0, err
    screen = assert_inert(out + err)
    assert any(line.startswith("  mal\\x1b[1A") and "orders-db/read" in line for line in screen.display), out
