"""What an SSH scope lets a channel do: pure decisions on shell, exec, scp, sftp, env and command lines."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping

from gateway.policy import Decision, SshPolicy, Verdict
from gateway.ssh.cmdmatch import rule_matches
from gateway.ssh.shellparse import Analysis, ShellState, analyse
from gateway.ssh.shellwords import SHELLS, option_script, reads_stdin, unwrap

ENV_ALLOWED = ("TERM", "LANG")
ENV_ALLOWED_PREFIXES = ("LC_",)
MAX_ENV_VALUE = 256

# In an exec-only scope the allowlist is matched against the command text, but the upstream runs it
# with `$SHELL -c`: `allowed-cmd; rm -rf /` would match a glob `allowed-cmd*`. So no shell syntax at all.
# Glob characters too: the shell would expand `systemctl status *` into file names, and a file named
# `-H` would become an option the allowlist never saw.
_SHELL_META = re.compile(r"[;&|`$<>()\n\r\\{}*?\[\]]")
# Flags an scp server-side process (`scp -f` / `scp -t`) is started with by a client.
_SCP_FLAGS = frozenset("frtpdvq")
UNRESOLVED = "unresolved"
"""The rule name of the `unresolved` condition (a line whose commands only run time can tell)."""
_RANK = {Verdict.ALLOW: 0, Verdict.ALERT: 1, Verdict.DENY: 2, Verdict.KILL: 3}


def filter_env(env: Mapping[bytes, bytes]) -> tuple[dict[str, str], list[str]]:
    """Split client env requests into those passed upstream (TERM, LANG, LC_*) and refused names.

    LD_PRELOAD, BASH_ENV and friends run code in the upstream login before any shell prompt.
    """
    keep: dict[str, str] = {}
    refused: list[str] = []
    for raw_key, raw_value in env.items():
        key = raw_key.decode("ascii", "replace")
        ok = key in ENV_ALLOWED or (key.startswith(ENV_ALLOWED_PREFIXES) and key[3:].replace("_", "").isalpha())
        try:
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            ok = False
            value = ""
        if ok and len(value) <= MAX_ENV_VALUE and "\n" not in value:
            keep[key] = value
        else:
            refused.append(key)
    return keep, sorted(refused)


def reads_stdin_commands(command: str) -> bool:
    """Whether an exec command is a shell that reads its commands from stdin (`bash`, `sh -s`, `sudo -i`).

    Such a channel is a shell prompt without a terminal: its stdin gets the same line policy as a shell.
    Every command the line runs counts (`sh -c bash`, `env bash`); an unparsable line counts as one.
    """
    analysis = analyse(command)
    if analysis.incomplete:
        return True
    for c in analysis.commands:
        args = list(c.args)
        if c.name in SHELLS and reads_stdin(c.name, args):
            return True
        if c.name == "su" and option_script("su", args) is None:
            return True  # su [-] [user]: the user's login shell, reading the channel
        if c.name in ("sudo", "doas") and not unwrap(c.name, args):
            if any(a in ("-i", "-s", "--login", "--shell") for a in args):
                return True
    return False


def check_shell(policy: SshPolicy) -> Decision:
    """An interactive shell."""
    if not policy.shell:
        return Decision.deny("no-shell", "this scope does not allow an interactive shell")
    return Decision.allow()


def scp_direction(command: str) -> str | None:
    """'download' (scp -f), 'upload' (scp -t), 'invalid' (scp with anything else), None (not scp)."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return "invalid" if command.lstrip().startswith("scp") else None
    if not argv or argv[0] != "scp":
        return None
    if _SHELL_META.search(command):
        return "invalid"
    flags: set[str] = set()
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.startswith("-"):
            if not set(arg[1:]) <= _SCP_FLAGS:
                return "invalid"
            flags.update(arg[1:])
    if ("f" in flags) == ("t" in flags):
        return "invalid"
    return "download" if "f" in flags else "upload"


def check_exec(policy: SshPolicy, command: str) -> Decision:
    """A command run without a shell prompt (`ssh host cmd`, scp's server side)."""
    direction = scp_direction(command)
    if direction is not None:
        return _check_scp(policy, command, direction)
    if not policy.exec:
        return Decision.deny("no-exec", "this scope does not allow running commands")
    if policy.allowed_commands is not None:
        if _SHELL_META.search(command):
            why = "shell syntax (; & | $ ` < > ( ) { } \\ * ? [ ]) is not allowed in this scope"
            return Decision.deny("allowed-commands", why)
        if not policy.command_allowed(command):
            return Decision.deny("allowed-commands", f"command not in this scope's allowed list: {command.strip()}")
    return check_line(policy, [command])


def _check_scp(policy: SshPolicy, command: str, direction: str) -> Decision:
    """scp's server side: downloads need scp, uploads also a read-write sftp mode."""
    if direction == "invalid":
        return Decision.deny("scp", "unrecognised scp invocation")
    if not policy.scp:
        return Decision.deny("scp", "this scope does not allow scp")
    if direction == "upload" and policy.sftp != "read-write":
        return Decision.deny("read-only", "this scope is read-only: scp uploads are refused")
    return check_line(policy, [command])


def check_subsystem(policy: SshPolicy, name: str) -> Decision:
    """A subsystem: only sftp exists, and only when the scope's sftp mode is not off."""
    if name != "sftp":
        return Decision.deny("subsystem", f"subsystem {name!r} is not supported")
    if policy.sftp == "off":
        return Decision.deny("no-sftp", "this scope does not allow sftp")
    return Decision.allow()


def check_line(policy: SshPolicy, candidates: Iterable[str], *, truncated: bool = False,
               state: ShellState | None = None) -> Decision:  # fmt: skip
    """Command rules on a line's parsed commands; the strongest verdict over every candidate wins.

    `state` is the shell's memory (variables, aliases, an unfinished construct): it is read to resolve
    the line, and updated only when the line is allowed to run.
    """
    rules = policy.command_rules
    if truncated and any(r.action in (Verdict.DENY, Verdict.KILL) for r in rules):
        return Decision.deny("line-too-long", "command line too long to check against this scope's rules")
    unresolved = policy.unresolved or (Verdict.ALERT if rules else None)
    shell = state if state is not None else ShellState()
    best = Decision.allow()
    alerts: list[str] = []
    first: Analysis | None = None
    for text in candidates:
        if not text.strip():
            continue
        readings = shell.readings(text)
        analysis = readings[0]
        first = first or analysis
        shown = text.strip()
        for rule in rules:
            if not any(rule_matches(rule, a, text) for a in readings):
                continue
            if rule.action is Verdict.ALERT:
                alerts.append(rule.name)
            elif _RANK[rule.action] > _RANK[best.verdict]:
                best = Decision(rule.action, rule.name, f"{shown!r} matches rule {rule.name!r}")
        if analysis.unresolved and unresolved is not None:
            if unresolved is Verdict.ALERT:
                alerts.append(UNRESOLVED)
            elif _RANK[unresolved] > _RANK[best.verdict]:
                why = analysis.unresolved[0]
                best = Decision(unresolved, UNRESOLVED, f"cannot tell what {shown!r} runs ({why})")
    if best.allowed and first is not None and state is not None:
        state.commit(first)
    if best.allowed and alerts:
        return Decision.allow(*dict.fromkeys(alerts))
    return best if not alerts else Decision(best.verdict, best.rule, best.reason, tuple(dict.fromkeys(alerts)))
