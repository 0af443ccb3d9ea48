"""Reasons and comments are printable text on one line, at most 500 characters: at the API (422 naming the
field, nothing changed) and in the CLI paths that write the store directly (grant, revoke, kill)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import Config
from gateway.control.actions import default_kill_reason
from gateway.control.caller import Caller
from gateway.control.errors import WorkflowError
from gateway.control.rules import check_create, check_text
from gateway.review.sanitize import free_text_problem
from gateway.services import load_policies
from tests.control.conftest import Running
from tests.held import hold, release

BAD = [
    "INC-1 \x1b[2K read",  # CSI
    "INC-1 \x1b]52;c;ZXZpbA==\x07",  # OSC 52
    "INC-1\nline two",  # newline: a reason is one line
    "INC-1\rX",
    "INC-1\tX",
    "INC-1\bX",
    "INC-1\x00",
    "INC-1\x7f",
    "INC-1 \u009b2K",  # C1 CSI in UTF-8
    "INC-1 \u0085",  # C1 NEL
    "INC-1 \u202enimda",  # bidi override
    "INC-1 \u2066x\u2069",  # bidi isolate
    "INC-1 \u200bx",  # zero-width space
    "INC-1 \ufeff",
    "INC-1 \u2028x",  # line separator
]
GOOD = ["INC-1: refund stuck", "INC-1 \u2013 ünïcødé 日本語 ✓ «ok»", "x" * 500, "tab-free\u00a0nbsp"]
IDS = [repr(b)[1:-1][:24] for b in BAD]


def ask(reason: str) -> dict[str, str]:
    return {"target": "orders-db", "scope": "read", "ttl": "15m", "reason": reason}


@pytest.mark.parametrize("reason", [*BAD, "x" * 501], ids=[*IDS, "501 chars"])
async def test_request_reason_refused_with_422_naming_the_field(gw: Running, reason: str) -> None:
    before = len(await gw.services.store.list_requests())
    status, out = await gw.call("alice", "POST", "/v1/requests", ask(reason))
    assert status == 422, out
    msg = out["error"]["message"]
    assert out["error"]["code"] == "invalid" and msg.startswith("field 'reason' ")
    assert ("too long" in msg) if len(reason) > 500 else ("control or invisible formatting character" in msg)
    assert msg.isprintable()  # the message names the character with a marker, never echoes it
    assert len(await gw.services.store.list_requests()) == before


@pytest.mark.parametrize("reason", GOOD)
async def test_printable_reasons_are_accepted(gw: Running, reason: str) -> None:
    status, out = await gw.call("alice", "POST", "/v1/requests", ask(reason))
    assert status == 201, out
    assert out["reason"] == reason


@pytest.mark.parametrize("verb", ["approve", "deny", "cancel"])
async def test_comment_refused(gw: Running, verb: str) -> None:
    req = await gw.ok("alice", "POST", "/v1/requests", ask("INC-2"))
    who = "alice" if verb == "cancel" else "bob"
    status, out = await gw.call(who, "POST", f"/v1/requests/{req['id']}/{verb}", {"comment": "ok\x1b[1A\x1b[2K"})
    assert status == 422 and out["error"]["message"].startswith("field 'comment' "), out
    assert (await gw.services.store.get_request(req["id"])).state == "pending"  # type: ignore[union-attr]


async def test_revoke_and_kill_reasons_refused(gw: Running) -> None:
    _, grant, token = await gw.approved_grant()
    status, out = await gw.call("erin", "POST", f"/v1/grants/{grant}/revoke", {"reason": "done\u202e"})
    assert status == 422 and "'reason'" in out["error"]["message"], out
    assert (await gw.services.store.get_grant(grant)).state == "active"  # type: ignore[union-attr]
    s = await hold(gw.services.access, token=token, target="orders-db", protocol="postgres", client_addr="x")
    status, out = await gw.call("erin", "POST", f"/v1/sessions/{s.id}/kill", {"reason": "bye\x1b]0;t\x07"})
    assert status == 422 and "'reason'" in out["error"]["message"], out
    assert not s.closed
    await release(s, "test over")


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch, config_path: Path) -> None:
    """The CLI on the embedded store (no server)."""
    monkeypatch.setenv("GATEWAY_CONFIG", str(config_path))
    monkeypatch.setenv("GATEWAY_CREDENTIALS", "/nonexistent")
    monkeypatch.delenv("GATEWAY_URL", raising=False)
    monkeypatch.delenv("GATEWAY_API_KEY", raising=False)


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("reason", BAD[:3] + BAD[8:11], ids=IDS[:3] + IDS[8:11])
async def test_break_glass_grant_reason_refused(
    gw: Running, local: None, capsys: pytest.CaptureFixture[str], reason: str
) -> None:
    before = len(await gw.services.store.list_grants())
    argv = ("grant", "--user", "alice", "--target", "orders-db", "--scope", "read", "--reason", reason)
    code, out, err = await run(capsys, *argv)
    assert code == 2 and out == "" and "--reason contains a control or invisible formatting character" in err, err
    assert err.replace("\n", "").isprintable()
    assert len(await gw.services.store.list_grants()) == before
    code, out, err = await run(capsys, "grant", "--user", "al\x1b[2Kice", "--target", "orders-db", "--scope", "read",
                               "--reason", "INC-9")  # fmt: skip
    assert code == 2 and "--user contains" in err


async def test_local_revoke_and_kill_reasons_refused(
    gw: Running, local: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _, grant, token = await gw.approved_grant()
    code, _, err = await run(capsys, "revoke", grant, "--reason", "done\x1b[2K")
    assert code == 1 and "reason contains a control" in err and "(\\x1b at position 5)" in err, err
    assert (await gw.services.store.get_grant(grant)).state == "active"  # type: ignore[union-attr]
    s = await hold(gw.services.access, token=token, target="orders-db", protocol="postgres", client_addr="x")
    code, _, err = await run(capsys, "kill", s.id, "--reason", "x\u009b2K")
    assert code == 1 and "reason contains a control" in err and "(\\x9b at position 2)" in err, err
    assert (await gw.services.store.get_session(s.id)).kill_requested is None  # type: ignore[union-attr]
    await release(s, "test over")


async def test_the_workflow_itself_refuses(config: Config) -> None:
    """Behind the API: any other caller of the workflow (a console page, a script) gets the same check."""
    policies = load_policies(config)
    alice = Caller("alice", frozenset({"engineers"}))
    with pytest.raises(WorkflowError) as exc:
        check_create(config, policies, alice, "orders-db", "read", 900, "INC\x1b[2K")
    assert exc.value.code == "invalid" and exc.value.message.startswith("reason contains a control")
    with pytest.raises(WorkflowError) as exc:
        check_text("ok\u202e", "comment", 500)
    assert exc.value.message.startswith("comment contains a control")


def test_default_kill_reason_passes_the_check_whatever_the_callers_name() -> None:
    """A kill without a reason must not fail because an identity provider's user name carries a control."""
    reason = default_kill_reason(Caller("eve\x1b[2K\u202e" + "x" * 600))
    assert reason.startswith("killed by eve\\x1b[2K\\u202e") and free_text_problem(reason) is None
