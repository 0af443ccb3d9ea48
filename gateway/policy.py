"""Policies as code: load `policies/*.yaml` into plain values; decisions are plain values too."""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from gateway import linearre
from gateway.detect.settings import NO_OVERRIDES, Overrides, SettingsError, parse_overrides
from gateway.durations import parse_duration
from gateway.linearre import LinearPattern
from gateway.workload.rules import RuleError, WorkloadRule, load_rules


class PolicyError(ValueError):
    """A policy file is invalid; the message names the file, the key and the fix."""


class Verdict(StrEnum):
    """What happens to a statement, command line or channel."""

    ALLOW = "allow"
    ALERT = "alert"  # allowed, but raises an alert event
    DENY = "deny"  # refused, the session continues
    KILL = "kill"  # refused, the session ends


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a policy check; `rule` names what decided it, `reason` is shown to the user."""

    verdict: Verdict
    rule: str = ""
    reason: str = ""
    alerts: tuple[str, ...] = ()

    @classmethod
    def allow(cls, *alerts: str) -> Decision:
        """Allowed, optionally with detections to alert on."""
        return cls(Verdict.ALERT if alerts else Verdict.ALLOW, alerts=tuple(alerts))

    @classmethod
    def deny(cls, rule: str, reason: str) -> Decision:
        """Refused; the session goes on."""
        return cls(Verdict.DENY, rule, reason)

    @classmethod
    def kill(cls, rule: str, reason: str) -> Decision:
        """Refused; the session ends."""
        return cls(Verdict.KILL, rule, reason)

    @property
    def allowed(self) -> bool:
        """True when the statement or command may proceed."""
        return self.verdict in (Verdict.ALLOW, Verdict.ALERT)


# --- SQL -------------------------------------------------------------------------------------------

SQL_MODES = ("read", "write", "admin")


@dataclass(frozen=True, slots=True)
class SqlRule:
    """A policy rule on statements: matches by kind, table, function or regex on the statement text."""

    name: str
    action: Verdict
    kinds: frozenset[str] = frozenset()
    tables: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    pattern: LinearPattern | None = None  # RE2, case-insensitive (gateway/linearre)


@dataclass(frozen=True, slots=True)
class SqlPolicy:
    """What a Postgres scope may do: the mode sets the floor, rules and detections refine it."""

    mode: str = "read"
    extra_functions: frozenset[str] = frozenset()
    rules: tuple[SqlRule, ...] = ()
    max_rows: int | None = None
    sensitive_tables: frozenset[str] = frozenset()
    alert_write_without_where: bool = True


# --- SSH -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandRule:
    """A rule on commands (exec commands, lines typed in a shell, a shell's stdin lines).

    Matched against each simple command the line runs, as parsed (gateway.ssh.cmdmatch), not its text.
    """

    name: str
    action: Verdict
    pattern: str


# Characters that chain, substitute, redirect, background or glob-expand commands in a POSIX shell.
_SHELL_CONTROL = re.compile(r"[;&|`$<>\n\r()\\{}*?\[\]]")


@dataclass(frozen=True, slots=True)
class AllowedCommand:
    """One exec allowlist entry: a word pattern (or `regex:`), and the options it lets through.

    Glob entries are matched word by word (README, "Exec allowlists"): an argument glob never matches
    an option (a word starting with `-` before any `--`); options are allowed only when written in the
    pattern itself or listed in `options` (`"--no-pager"`, `"-n *"` for an option with a value).
    """

    pattern: str
    options: tuple[str, ...] = ()

    def matches(self, line: str) -> bool:
        """Whether the whole exec command line is this entry."""
        if self.pattern.startswith("regex:"):
            return linearre.cached(self.pattern[len("regex:") :]).fullmatch(line) is not None
        try:
            words, pwords = shlex.split(line), shlex.split(self.pattern)
        except ValueError:
            return False
        return bool(words and pwords) and _words_allowed(pwords, self.options, words)


def _is_option(word: str) -> bool:
    return word.startswith("-") and word != "-"


def _words_allowed(pattern: list[str], options: tuple[str, ...], words: list[str]) -> bool:
    """Word-by-word allowlist match; see AllowedCommand."""
    if not fnmatch.fnmatchcase(words[0], pattern[0]):
        return False
    rest: list[tuple[str, bool]] = []  # (word, may a glob match it: an operand, not an option)
    i, ended = 1, False
    while i < len(words):
        w = words[i]
        if ended or not _is_option(w):
            rest.append((w, True))
        elif w == "--":
            ended = True  # the program reads every later word as an operand, even `-H`
        else:
            used = _option_words(options, w, words[i + 1] if i + 1 < len(words) else None)
            if not used:
                rest.append((w, False))
            i += max(used, 1)
            continue
        i += 1
    pat = [p for p in pattern[1:] if p != "--"]
    star = bool(pat) and pat[-1] == "*"
    fixed = pat[:-1] if star else pat
    if len(rest) < len(fixed) or (not star and len(rest) != len(fixed)):
        return False
    for p, (w, operand) in zip(fixed, rest, strict=False):
        # An option in the command only matches the same option written in the pattern.
        if not fnmatch.fnmatchcase(w, p) or (not operand and not _is_option(p)):
            return False
    return all(operand for _, operand in rest[len(fixed) :])


def _option_words(options: tuple[str, ...], word: str, nxt: str | None) -> int:
    """How many words an allowed option uses at `word` (1, or 2 with its value); 0 when not allowed."""
    for entry in options:
        name, _, value = entry.partition(" ")
        if not fnmatch.fnmatchcase(word, name):
            continue
        if not value:
            return 1
        if nxt is not None and not _is_option(nxt) and fnmatch.fnmatchcase(nxt, value):
            return 2
    return 0


SFTP_MODES = ("off", "read-only", "read-write")
DETACHED_MODES = ("kill", "alert", "off")


@dataclass(frozen=True, slots=True)
class SshPolicy:
    """What an SSH scope may do."""

    shell: bool = True
    exec: bool = True
    allowed_commands: tuple[AllowedCommand | str, ...] | None = None  # None: any command (str: a bare pattern)
    command_rules: tuple[CommandRule, ...] = ()
    # A line whose commands cannot be known statically (eval "$x", base64 -d | sh, $unknown, !!):
    # None means alert when the scope has command rules (there is something to evade), else nothing.
    unresolved: Verdict | None = None
    # Processes of the login left running by an ended session and in no live one: end them (kill),
    # only report them (alert: a login shared with other users or services), or do not look (off).
    detached: str = "kill"
    sftp: str = "read-write"
    scp: bool = True
    local_forwarding: bool = False

    def command_allowed(self, line: str) -> bool:
        """Whether an exec command is in the scope's allowlist (always true with no allowlist).

        The upstream runs the command through a shell, so a glob like `systemctl status *` would also
        match `systemctl status x; rm -rf /`: a line with shell control characters never matches an
        allowlist, and `regex:` entries must match the whole line. Globs never match options
        (`systemctl status -H user@host` would run it on another host): see AllowedCommand.
        """
        if self.allowed_commands is None:
            return True
        stripped = line.strip()
        if _SHELL_CONTROL.search(stripped):
            return False
        entries = (AllowedCommand(e) if isinstance(e, str) else e for e in self.allowed_commands)
        return any(e.matches(stripped) for e in entries)


# --- Scopes and targets ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """How many approvals a request needs, and from whom."""

    count: int = 1
    from_users: frozenset[str] = frozenset()
    from_groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ScopePolicy:
    """One scope of one target."""

    name: str
    max_ttl: float = 3600.0
    requesters_users: frozenset[str] = frozenset()
    requesters_groups: frozenset[str] = frozenset()
    approvals: ApprovalRule = field(default_factory=ApprovalRule)
    auto_approve: bool = False
    sql: SqlPolicy | None = None
    ssh: SshPolicy | None = None
    detection: Overrides = NO_OVERRIDES  # this scope's own rules off, actions, working hours

    def may_request(self, user: str, groups: Iterable[str]) -> bool:
        """Anyone may request when no requesters are listed."""
        if not self.requesters_users and not self.requesters_groups:
            return True
        return user in self.requesters_users or bool(self.requesters_groups.intersection(groups))


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """All scopes of one target; `source` is the file it came from (or 'built-in default')."""

    target: str
    scopes: Mapping[str, ScopePolicy]
    source: str = "built-in default"
    workloads: tuple[WorkloadRule, ...] = ()  # pipelines: which claims may get which scope (gateway.workload)


DEFAULT_MAX_TTL = 3600.0


def default_policy(target: str, kind: str, scopes: Iterable[str]) -> TargetPolicy:
    """A target with no policy file: each login scope may be requested, 1 h max, one approval by another."""
    out: dict[str, ScopePolicy] = {}
    for name in scopes:
        out[name] = _scope_defaults(name, kind)
    return TargetPolicy(target, out)


def _scope_defaults(name: str, kind: str) -> ScopePolicy:
    if kind == "postgres":
        mode = name if name in SQL_MODES else "read"
        return ScopePolicy(name, DEFAULT_MAX_TTL, sql=SqlPolicy(mode=mode))
    return ScopePolicy(name, DEFAULT_MAX_TTL, ssh=SshPolicy())


# --- Loading ---------------------------------------------------------------------------------------

_SCOPE_KEYS = {"max_ttl", "requesters", "approvals", "auto_approve", "sql", "ssh", "detection"}
_SQL_KEYS = {"mode", "allow_functions", "rules", "max_rows", "sensitive_tables", "alert_write_without_where"}
_SQL_RULE_KEYS = {"name", "action", "kinds", "tables", "functions", "pattern"}
_SSH_KEYS = {
    "shell",
    "exec",
    "allowed_commands",
    "commands",
    "unresolved",
    "detached",
    "sftp",
    "scp",
    "local_forwarding",
    "remote_forwarding",
    "agent_forwarding",
    "x11_forwarding",
}
_CMD_RULE_KEYS = {"name", "action", "pattern"}


class _Ctx:
    """Where we are in a file, for error messages that name the file and the key."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, msg: str) -> PolicyError:
        return PolicyError(f"{self.path}: {key}: {msg}")

    def mapping(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {type(value).__name__}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}", f"unknown key; expected one of {', '.join(sorted(allowed))}")
        return value

    def strings(self, value: Any, key: str) -> frozenset[str]:
        if value is None:
            return frozenset()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of strings")
        return frozenset(value)

    def boolean(self, value: Any, key: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def action(self, value: Any, key: str) -> Verdict:
        try:
            verdict = Verdict(value)
        except ValueError:
            raise self.fail(key, "must be one of alert, deny, kill") from None
        if verdict is Verdict.ALLOW:
            raise self.fail(key, "must be one of alert, deny, kill")
        return verdict


def load_policy_file(
    path: Path, kind_of: Mapping[str, str], workload_issuers: Iterable[str] | None = None
) -> TargetPolicy:
    """Parse one policy file; `kind_of` maps configured target names to 'postgres' or 'ssh'."""
    ctx = _Ctx(str(path))
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc}") from None
    doc = ctx.mapping(doc, "(top)", {"target", "scopes", "workloads"})
    target = doc.get("target")
    if not isinstance(target, str) or not target:
        raise ctx.fail("target", "must name a target from the config's [targets] table")
    if target not in kind_of:
        raise ctx.fail("target", f"{target!r} is not a configured target; add [targets.{target}] to the config")
    kind = kind_of[target]
    scopes_doc = doc.get("scopes")
    if not isinstance(scopes_doc, dict) or not scopes_doc:
        raise ctx.fail("scopes", "must be a mapping of scope name -> settings")
    scopes = {str(name): _load_scope(ctx, str(name), kind, body, f"scopes.{name}") for name, body in scopes_doc.items()}
    try:
        workloads = load_rules(doc.get("workloads"), scopes, workload_issuers)
    except RuleError as exc:
        raise PolicyError(f"{path}: {exc}") from None
    return TargetPolicy(target, scopes, source=str(path), workloads=workloads)


def _load_scope(ctx: _Ctx, name: str, kind: str, body: Any, key: str) -> ScopePolicy:
    body = ctx.mapping(body, key, _SCOPE_KEYS)
    base = _scope_defaults(name, kind)
    max_ttl = base.max_ttl
    if "max_ttl" in body:
        try:
            max_ttl = parse_duration(str(body["max_ttl"]))
        except ValueError as exc:
            raise ctx.fail(f"{key}.max_ttl", str(exc)) from None
    req = ctx.mapping(body.get("requesters"), f"{key}.requesters", {"users", "groups"})
    appr = ctx.mapping(body.get("approvals"), f"{key}.approvals", {"count", "users", "groups"})
    count = appr.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ctx.fail(f"{key}.approvals.count", "must be a whole number >= 0")
    approvals = ApprovalRule(
        count,
        ctx.strings(appr.get("users"), f"{key}.approvals.users"),
        ctx.strings(appr.get("groups"), f"{key}.approvals.groups"),
    )
    sql = ssh = None
    if kind == "postgres":
        if "ssh" in body:
            raise ctx.fail(f"{key}.ssh", "a postgres target's scopes take `sql`, not `ssh`")
        sql = _load_sql(ctx, body.get("sql"), f"{key}.sql", base.sql or SqlPolicy())
    else:
        if "sql" in body:
            raise ctx.fail(f"{key}.sql", "an ssh target's scopes take `ssh`, not `sql`")
        ssh = _load_ssh(ctx, body.get("ssh"), f"{key}.ssh")
    try:
        detection = parse_overrides(body.get("detection"))
    except SettingsError as exc:
        raise ctx.fail(f"{key}.detection" + (f".{exc.key}" if exc.key else ""), str(exc)) from None
    return ScopePolicy(
        name,
        max_ttl,
        ctx.strings(req.get("users"), f"{key}.requesters.users"),
        ctx.strings(req.get("groups"), f"{key}.requesters.groups"),
        approvals,
        ctx.boolean(body.get("auto_approve"), f"{key}.auto_approve", False),
        sql,
        ssh,
        detection,
    )


def _load_sql(ctx: _Ctx, body: Any, key: str, base: SqlPolicy) -> SqlPolicy:
    body = ctx.mapping(body, key, _SQL_KEYS)
    mode = body.get("mode", base.mode)
    if mode not in SQL_MODES:
        raise ctx.fail(f"{key}.mode", f"must be one of {', '.join(SQL_MODES)}")
    rules = []
    for i, rule in enumerate(body.get("rules") or []):
        rkey = f"{key}.rules[{i}]"
        rule = ctx.mapping(rule, rkey, _SQL_RULE_KEYS)
        pattern = None
        if "pattern" in rule:
            try:
                pattern = linearre.compile_linear(str(rule["pattern"]), ignore_case=True)
            except ValueError as exc:
                raise ctx.fail(f"{rkey}.pattern", f"invalid regular expression: {exc} ({linearre.SYNTAX})") from None
        rules.append(
            SqlRule(
                str(rule.get("name") or f"rule-{i}"),
                ctx.action(rule.get("action", "deny"), f"{rkey}.action"),
                frozenset(k.lower() for k in ctx.strings(rule.get("kinds"), f"{rkey}.kinds")),
                frozenset(t.lower() for t in ctx.strings(rule.get("tables"), f"{rkey}.tables")),
                frozenset(f.lower() for f in ctx.strings(rule.get("functions"), f"{rkey}.functions")),
                pattern,
            )
        )
    max_rows = body.get("max_rows")
    if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1):
        raise ctx.fail(f"{key}.max_rows", "must be a whole number >= 1")
    return SqlPolicy(
        mode,
        frozenset(f.lower() for f in ctx.strings(body.get("allow_functions"), f"{key}.allow_functions")),
        tuple(rules),
        max_rows,
        frozenset(t.lower() for t in ctx.strings(body.get("sensitive_tables"), f"{key}.sensitive_tables")),
        ctx.boolean(body.get("alert_write_without_where"), f"{key}.alert_write_without_where", True),
    )


def _load_ssh(ctx: _Ctx, body: Any, key: str) -> SshPolicy:
    body = ctx.mapping(body, key, _SSH_KEYS)
    allowed_t = _load_allowed(ctx, body.get("allowed_commands"), f"{key}.allowed_commands")
    rules = []
    for i, rule in enumerate(body.get("commands") or []):
        rkey = f"{key}.commands[{i}]"
        rule = ctx.mapping(rule, rkey, _CMD_RULE_KEYS)
        pattern = rule.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ctx.fail(f"{rkey}.pattern", "must be a glob, or regex:<expression>")
        _check_pattern(ctx, pattern, f"{rkey}.pattern")
        rules.append(
            CommandRule(
                str(rule.get("name") or pattern), ctx.action(rule.get("action", "alert"), f"{rkey}.action"), pattern
            )
        )
    for unsupported in ("remote_forwarding", "agent_forwarding", "x11_forwarding"):
        if ctx.boolean(body.get(unsupported), f"{key}.{unsupported}", False):
            # Saying yes here and refusing at run time would be a policy that lies; say so at load.
            raise ctx.fail(f"{key}.{unsupported}", "is not supported yet: the gateway refuses it (and audits it)")
    sftp = body.get("sftp", "read-write")
    if sftp not in SFTP_MODES:
        raise ctx.fail(f"{key}.sftp", f"must be one of {', '.join(SFTP_MODES)}")
    detached = body.get("detached", "kill")
    if detached is False:  # YAML 1.1 reads a bare `off` as false
        detached = "off"
    if detached not in DETACHED_MODES:
        raise ctx.fail(f"{key}.detached", f"must be one of {', '.join(DETACHED_MODES)}")
    unresolved = None
    if body.get("unresolved") is not None:
        unresolved = ctx.action(body["unresolved"], f"{key}.unresolved")
    flag = ctx.boolean
    return SshPolicy(
        shell=flag(body.get("shell"), f"{key}.shell", allowed_t is None),
        exec=flag(body.get("exec"), f"{key}.exec", True),
        allowed_commands=allowed_t,
        command_rules=tuple(rules),
        unresolved=unresolved,
        detached=detached,
        sftp=sftp,
        scp=flag(body.get("scp"), f"{key}.scp", True),
        local_forwarding=flag(body.get("local_forwarding"), f"{key}.local_forwarding", False),
    )


def _load_allowed(ctx: _Ctx, value: Any, key: str) -> tuple[AllowedCommand, ...] | None:
    """`allowed_commands`: patterns, or `{pattern, options}` mappings."""
    if value is None:
        return None
    if isinstance(value, str | dict):
        value = [value]
    if not isinstance(value, list):
        raise ctx.fail(key, "must be a list of patterns or {pattern, options} mappings")
    out = []
    for i, entry in enumerate(value):
        ekey = f"{key}[{i}]"
        if isinstance(entry, str):
            entry = {"pattern": entry}
        entry = ctx.mapping(entry, ekey, {"pattern", "options"})
        pattern = entry.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ctx.fail(f"{ekey}.pattern", "must be a glob, or regex:<expression>")
        _check_pattern(ctx, pattern, key)
        options = tuple(sorted(ctx.strings(entry.get("options"), f"{ekey}.options")))
        for o in options:
            if not o.startswith("-"):
                raise ctx.fail(f"{ekey}.options", f"{o!r} is not an option (options start with '-')")
        out.append(AllowedCommand(pattern, options))
    return tuple(out)


def _check_pattern(ctx: _Ctx, pattern: str, key: str) -> None:
    if pattern.startswith("regex:"):
        try:
            linearre.compile_linear(pattern[len("regex:") :])
        except ValueError as exc:
            raise ctx.fail(key, f"invalid regular expression: {exc} ({linearre.SYNTAX})") from None
        return
    # Glob patterns are split into words like a command line: quotes must balance.
    try:
        words = shlex.split(pattern)
    except ValueError as exc:
        raise ctx.fail(key, f"cannot split {pattern!r} into words: {exc}") from None
    if not words:
        raise ctx.fail(key, "must name a command")


class Policies:
    """Every target's policy; targets without a file get the built-in default."""

    def __init__(self, by_target: Mapping[str, TargetPolicy]) -> None:
        self._by_target = dict(by_target)

    @classmethod
    def load(
        cls,
        folder: Path | None,
        targets: Mapping[str, tuple[str, Iterable[str]]],
        workload_issuers: Iterable[str] | None = None,
    ) -> Policies:
        """Load every `*.yaml`/`*.yml` in `folder`; `targets` maps name -> (kind, login scopes)."""
        kind_of = {name: kind for name, (kind, _) in targets.items()}
        found: dict[str, TargetPolicy] = {}
        if folder is not None and folder.is_dir():
            for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
                tp = load_policy_file(path, kind_of, workload_issuers)
                if tp.target in found:
                    raise PolicyError(
                        f"{path}: target: {tp.target!r} already has a policy in {found[tp.target].source}"
                    )
                found[tp.target] = tp
        for name, (kind, scopes) in targets.items():
            if name not in found:
                found[name] = default_policy(name, kind, scopes)
        return cls(found)

    def replace(self, other: Policies) -> None:
        """Take another set's contents in place (SIGHUP reload: holders of this object see the new rules)."""
        self._by_target = dict(other._by_target)

    def target(self, name: str) -> TargetPolicy | None:
        """The policy of a target, or None for an unknown target."""
        return self._by_target.get(name)

    def scope(self, target: str, scope: str) -> ScopePolicy | None:
        """The policy of one scope of one target, or None when that scope does not exist."""
        tp = self._by_target.get(target)
        return None if tp is None else tp.scopes.get(scope)

    def targets(self) -> list[TargetPolicy]:
        """Every target's policy, sorted by name."""
        return [self._by_target[k] for k in sorted(self._by_target)]
