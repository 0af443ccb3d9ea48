"""`gateway policy check --format json` and `gateway policy diff OLD NEW` on the control tests' config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.cli import main
from tests.control.conftest import ORDERS_POLICY


def _gw(config_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--config", str(config_path), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_policy_check_json(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _gw(config_path, capsys, "policy", "check", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and doc["problems"] == []
    orders = next(t for t in doc["targets"] if t["target"] == "orders-db")
    assert orders["scopes"]["write"]["approvals"] == {"count": 2, "users": [], "groups": ["dba"]}
    assert orders["scopes"]["stats"]["auto_approve"] is True and orders["scopes"]["read"]["mode"] == "read"
    assert doc["may_request"]["mallory"] == ["orders-db/stats"]
    assert "orders-db/write" in doc["may_request"]["alice"]
    # a scope without an upstream login is a problem: exit 2, ok false, still one JSON document
    bad = config_path.parent / "bad"
    bad.mkdir()
    (bad / "orders-db.yaml").write_text(ORDERS_POLICY + "  ghost:\n    max_ttl: 5m\n")
    code, out, _ = _gw(config_path, capsys, "policy", "check", "--dir", str(bad), "--format", "json")
    assert code == 2
    doc = json.loads(out)
    assert doc["ok"] is False and "orders-db/ghost: no login" in doc["problems"][0]


def test_policy_diff_per_user_and_group(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = config_path.parent / "policies"
    new = config_path.parent / "proposed"
    shutil.copytree(old, new)
    changed = (
        ORDERS_POLICY.replace("requesters: {groups: [engineers, dba]}\n    approvals: {count: 2",
                              "requesters: {groups: [engineers, dba, contractors]}\n    approvals: {count: 2}")
        .replace("approvals: {count: 2}, groups: [dba]}", "approvals: {count: 2}")
        .replace("max_ttl: 1h", "max_ttl: 4h")
        .replace("  stats:\n    max_ttl: 10m\n    auto_approve: true\n    sql: {mode: read}\n", "")
    )  # fmt: skip
    assert changed != ORDERS_POLICY
    (new / "orders-db.yaml").write_text(changed)
    code, out, err = _gw(config_path, capsys, "policy", "diff", str(old), str(new))
    assert code == 0, err
    lines = out.splitlines()
    assert "user mallory (contractors)" in lines
    block = lines[lines.index("user mallory (contractors)") :]
    assert any(line.startswith("  + may request orders-db/write (max 30m") for line in block)
    assert any(line.startswith("  - may request orders-db/stats") for line in block)
    assert "group contractors" in lines
    assert (
        "  ~ may request orders-db/read: max 1h, 1 approval(s) from anyone but the requester -> max 4h,"
        in "\n".join(lines)
    )
    # the approvers of write widened from group dba to anyone: alice may now approve it
    alice = lines[lines.index("user alice (engineers)") :]
    assert "  + may approve orders-db/write (2 needed)" in alice
    assert "everyone" in lines
    code, out, _ = _gw(config_path, capsys, "policy", "diff", str(old), str(new), "--format", "json", "--exit-code")
    assert code == 1
    changes = json.loads(out)["changes"]
    assert {"principal": "group contractors", "change": "added", "right": "request", "target": "orders-db",
            "scope": "write", "terms": "max 30m, 2 approval(s) from anyone but the requester",
            "before": None} in changes  # fmt: skip
    code, out, _ = _gw(config_path, capsys, "policy", "diff", str(old), str(old), "--exit-code")
    assert code == 0 and out.strip() == "no access changes"
    code, _, err = _gw(config_path, capsys, "policy", "diff", str(old), str(config_path.parent / "nowhere"))
    assert code == 2 and "no such policy folder" in err
