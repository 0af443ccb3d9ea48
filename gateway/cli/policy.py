"""Policies as code: `gateway policy check` (text or JSON for CI) and `gateway policy diff OLD_DIR NEW_DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.cli.common import CliError, Commands, config_from, print_json, say
from gateway.config import Config
from gateway.durations import format_duration
from gateway.policy import Policies, PolicyError
from gateway.policydiff import describe_approvals, diff, rights


def register(sub: Commands) -> None:
    """Add `gateway policy check|diff`."""
    pol = sub.add_parser("policy", help="policies as code").add_subparsers(dest="policy_cmd", required=True)
    p = pol.add_parser("check", help="validate policy files; print what each configured user may request")
    p.add_argument("--dir", help="policy folder (default: paths.policies from the config)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="json: one document for CI")
    p.set_defaults(func=cmd_policy_check)
    p = pol.add_parser("diff", help="per user and group: which access a policy change adds or removes")
    p.add_argument("old", help="the policy folder before the change (e.g. a checkout of the main branch)")
    p.add_argument("new", help="the policy folder after the change")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--exit-code", action="store_true", help="exit 1 when access changes (like git diff)")
    p.set_defaults(func=cmd_policy_diff)


def _load(config: Config, folder: Path) -> Policies:
    if not folder.is_dir():
        raise CliError(f"{folder}: no such policy folder", 2)
    targets = {n: (t.kind, list(t.logins)) for n, t in config.targets.items()}
    try:
        return Policies.load(folder, targets, list(config.workloads))
    except PolicyError as exc:
        raise CliError(f"policy error: {exc}", 2) from None


def cmd_policy_check(args: argparse.Namespace) -> int:
    """Validate policies against the config; print scopes and who may request them."""
    config = config_from(args)
    folder = config.policies_dir if args.dir is None else Path(args.dir).resolve()
    policies = _load(config, folder)
    problems, warnings = check_policies(config, policies)
    if args.format == "json":
        print_json(_check_json(config, policies, problems, warnings))
        return 2 if problems else 0
    for tp in policies.targets():
        say(f"{tp.target} ({tp.source})")
        for name, sp in sorted(tp.scopes.items()):
            say(f"  {name:<10} max {format_duration(sp.max_ttl):<6} {describe_approvals(sp)}")
        for rule in tp.workloads:
            claims = ", ".join(f"{k}={v}" for k, v in sorted(rule.claims.items()))
            say(f"  pipeline {rule.name}: {rule.issuer} {{{claims}}} -> {', '.join(sorted(rule.scopes))} "
                f"max {format_duration(rule.max_ttl)}, {rule.approval}")  # fmt: skip
    if config.users:
        print("who may request what:")
        for user in sorted(config.users.values(), key=lambda u: u.name):
            groups = f" ({', '.join(sorted(user.groups))})" if user.groups else ""
            say(f"  {user.name}{groups}: {', '.join(_requestable(policies, user.name, user.groups)) or 'nothing'}")
    for w in warnings:
        say(f"warning: {w}", err=True)
    for p in problems:
        say(f"error: {p}", err=True)
    return 2 if problems else 0


def _requestable(policies: Policies, name: str, groups: frozenset[str]) -> list[str]:
    return [
        f"{tp.target}/{s}"
        for tp in policies.targets()
        for s, sp in sorted(tp.scopes.items())
        if sp.may_request(name, groups)
    ]


def _check_json(config: Config, policies: Policies, problems: list[str], warnings: list[str]) -> dict[str, Any]:
    return {
        "ok": not problems,
        "problems": problems,
        "warnings": warnings,
        "targets": [
            {
                "target": tp.target,
                "source": tp.source,
                "scopes": {
                    name: {
                        "max_ttl": sp.max_ttl,
                        "approvals": {
                            "count": 0 if sp.auto_approve else sp.approvals.count,
                            "users": sorted(sp.approvals.from_users),
                            "groups": sorted(sp.approvals.from_groups),
                        },
                        "auto_approve": sp.auto_approve,
                        "requesters": {"users": sorted(sp.requesters_users), "groups": sorted(sp.requesters_groups)},
                        "mode": sp.sql.mode if sp.sql is not None else None,
                    }
                    for name, sp in sorted(tp.scopes.items())
                },
                "workloads": [
                    {
                        "name": r.name,
                        "issuer": r.issuer,
                        "claims": dict(sorted(r.claims.items())),
                        "scopes": sorted(r.scopes),
                        "max_ttl": r.max_ttl,
                        "approval": r.approval,
                    }
                    for r in tp.workloads
                ],
            }
            for tp in policies.targets()
        ],
        "may_request": {
            u.name: _requestable(policies, u.name, u.groups)
            for u in sorted(config.users.values(), key=lambda u: u.name)
        },
    }


def cmd_policy_diff(args: argparse.Namespace) -> int:
    """Load both folders against the config's targets; print each principal's added, removed, changed rights."""
    config = config_from(args)
    old = rights(_load(config, Path(args.old).resolve()), config.users)
    new = rights(_load(config, Path(args.new).resolve()), config.users)
    changes = diff(old, new)
    if args.format == "json":
        print_json(
            {
                "changes": [
                    {
                        "principal": c.principal,
                        "change": c.kind,
                        "right": c.right.verb,
                        "target": c.right.target,
                        "scope": c.right.scope,
                        "terms": c.right.detail,
                        "before": c.before or None,
                    }
                    for c in changes
                ]
            }
        )
    elif not changes:
        say("no access changes")
    else:
        say(f"{len(changes)} access change(s):")
        principal = None
        for c in changes:
            if c.principal != principal:
                principal = c.principal
                say(principal)
            say(f"  {c.describe()}")
    return 1 if args.exit_code and changes else 0


def check_policies(config: Config, policies: Policies) -> tuple[list[str], list[str]]:
    """Problems (scopes without an upstream login) and warnings (approvals no configured user can give)."""
    problems: list[str] = []
    warnings: list[str] = []
    users = config.users
    for tp in policies.targets():
        target = config.targets.get(tp.target)
        for name, sp in sorted(tp.scopes.items()):
            where = f"{tp.source}: {tp.target}/{name}"
            if target is not None and name not in target.logins:
                problems.append(f"{where}: no login for this scope in [targets.{tp.target}.logins]")
            rule = sp.approvals
            if users and (rule.from_users or rule.from_groups) and not sp.auto_approve and rule.count > 0:
                able = {u.name for u in users.values() if u.name in rule.from_users or rule.from_groups & u.groups}
                if len(able) < rule.count:
                    warnings.append(
                        f"{where}: needs {rule.count} approval(s) but only {len(able)} configured user(s) may give "
                        f"them ({', '.join(sorted(able)) or 'none'}); OIDC users may still qualify"
                    )
    return problems, warnings
