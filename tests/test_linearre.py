"""Patterns matched against what users send are RE2's: linear time, refused at load when RE2 cannot take them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.detect.settings import SettingsError, parse_settings
from gateway.pg.sql.inspector import Inspector
from gateway.policy import PolicyError, Verdict, load_policy_file
from gateway.ssh.scope import check_line

KINDS = {"web-1": "ssh", "orders-db": "postgres"}
CATASTROPHIC = "(a+)+b"  # Python's re backtracks for ever (2^n) on a run of n a's with no b after it
EVIL = "a" * 40 + "c"


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return load_policy_file(path, KINDS)


def test_a_catastrophic_ssh_rule_decides_a_hostile_line_at_once(tmp_path: Path) -> None:
    policy = _load(tmp_path, "target: web-1\nscopes: {shell: {ssh: {commands: [\n"
                   f"  {{name: evil, pattern: 'regex:{CATASTROPHIC}', action: deny}},\n"
                   "  {name: no-reboot, pattern: 'regex:^reboot\\b', action: deny}]}}}\n")  # fmt: skip
    ssh = policy.scopes["shell"].ssh  # type: ignore[attr-defined]
    t0 = time.monotonic()
    assert check_line(ssh, [f"echo {EVIL}"]).verdict is Verdict.ALLOW
    assert check_line(ssh, ["echo " + "a" * 40 + "b"]).rule == "evil"
    assert check_line(ssh, ["reboot now"]).rule == "no-reboot"
    assert time.monotonic() - t0 < 2  # under `re` the first line alone never finishes


def test_a_catastrophic_allowlist_entry_and_sql_rule_decide_at_once(tmp_path: Path) -> None:
    ssh = _load(tmp_path, f"target: web-1\nscopes: {{ops: {{ssh: {{allowed_commands: ['regex:{CATASTROPHIC}']}}}}}}\n")
    sql = _load(tmp_path, f"target: orders-db\nscopes: {{read: {{sql: {{mode: read, rules: [\n"
                f"  {{name: evil, pattern: '{CATASTROPHIC}', action: deny}}]}}}}}}\n")  # fmt: skip
    allow = ssh.scopes["ops"].ssh  # type: ignore[attr-defined]
    inspector = Inspector(sql.scopes["read"].sql)  # type: ignore[attr-defined]
    t0 = time.monotonic()
    assert not allow.command_allowed(EVIL) and allow.command_allowed("a" * 40 + "b")
    _, decision = inspector.check(f"SELECT '{EVIL}'")
    assert decision.allowed
    _, decision = inspector.check("SELECT 'A" + "a" * 50_000 + "B'")  # case-insensitive, as before
    assert not decision.allowed and decision.rule == "evil"
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("target: web-1\nscopes: {shell: {ssh: {commands: [{pattern: 'regex:(a)\\1', action: deny}]}}}\n",
         "scopes.shell.ssh.commands[0].pattern"),
        ("target: web-1\nscopes: {ops: {ssh: {allowed_commands: ['regex:ls(?=x)']}}}\n",
         "scopes.ops.ssh.allowed_commands"),
        ("target: orders-db\nscopes: {read: {sql: {rules: [{pattern: '(?<!x)drop', action: deny}]}}}\n",
         "scopes.read.sql.rules[0].pattern"),
    ],
)  # fmt: skip
def test_backreferences_and_lookaround_are_refused_at_load_saying_why(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(PolicyError) as info:
        _load(tmp_path, text)
    assert f": {key}: invalid regular expression" in str(info.value)
    assert "RE2 syntax" in str(info.value) and "no backreferences or lookaround" in str(info.value)


def test_the_ticket_pattern_is_linear_too() -> None:
    s = parse_settings({"ticket_pattern": CATASTROPHIC})
    assert s.ticket_pattern is not None
    t0 = time.monotonic()
    assert s.ticket_pattern.search(EVIL) is None
    assert time.monotonic() - t0 < 2
    with pytest.raises(SettingsError, match="RE2 syntax"):
        parse_settings({"ticket_pattern": "(?=INC)"})
