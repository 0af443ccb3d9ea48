"""Policy workload rules as plain values: which pipeline claims may get which scope, for how long, how approved."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.durations import parse_duration

APPROVALS = ("auto", "required")
_RULE_KEYS = {"name", "issuer", "claims", "scopes", "max_ttl", "approval"}


class RuleError(ValueError):
    """A workload rule is invalid; the message names the key (the policy loader adds the file)."""


@dataclass(frozen=True, slots=True)
class WorkloadRule:
    """Tokens of `issuer` whose claims match every glob in `claims` may get one of `scopes` for up to `max_ttl`."""

    name: str
    issuer: str  # a [workloads.NAME] of the config
    claims: Mapping[str, str]
    scopes: frozenset[str]
    max_ttl: float
    approval: str = "required"  # auto: granted at once; required: a request an approver decides

    def matches(self, issuer: str, claims: Mapping[str, Any], scope: str) -> bool:
        """Same issuer, the scope listed, and every claim present as a string matching its glob (case-sensitive)."""
        if issuer != self.issuer or scope not in self.scopes:
            return False
        for name, pattern in self.claims.items():
            value = claims.get(name)
            # A missing or non-string claim never matches, not even `*`: absence is not a wildcard.
            if not isinstance(value, str) or not fnmatch.fnmatchcase(value, pattern):
                return False
        return True


def first_match(
    rules: Iterable[WorkloadRule], issuer: str, claims: Mapping[str, Any], scope: str
) -> WorkloadRule | None:
    """The first rule, in file order, that lets these claims have this scope."""
    return next((r for r in rules if r.matches(issuer, claims, scope)), None)


def load_rules(doc: Any, scopes: Iterable[str], issuers: Iterable[str] | None) -> tuple[WorkloadRule, ...]:
    """The `workloads:` list of a policy file; `issuers` are the configured names (None: not checked)."""
    if doc is None:
        return ()
    if not isinstance(doc, list):
        raise RuleError("workloads: must be a list of rules")
    known_scopes = set(scopes)
    out = []
    for i, body in enumerate(doc):
        key = f"workloads[{i}]"
        if not isinstance(body, dict):
            raise RuleError(f"{key}: must be a mapping")
        unknown = sorted(set(body) - _RULE_KEYS)
        if unknown:
            raise RuleError(f"{key}.{unknown[0]}: unknown key; expected one of {', '.join(sorted(_RULE_KEYS))}")
        issuer = body.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise RuleError(f"{key}.issuer: must name a [workloads.NAME] of the config")
        if issuers is not None and issuer not in set(issuers):
            raise RuleError(f"{key}.issuer: {issuer!r} is not configured; add [workloads.{issuer}] to the config")
        claims = body.get("claims")
        if not isinstance(claims, dict) or not claims:
            raise RuleError(f"{key}.claims: must map claim names to values or globs (at least one)")
        if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in claims.items()):
            raise RuleError(f"{key}.claims: every claim needs a non-empty string value or glob")
        rule_scopes = body.get("scopes")
        if isinstance(rule_scopes, str):
            rule_scopes = [rule_scopes]
        if not isinstance(rule_scopes, list) or not rule_scopes or not all(isinstance(s, str) for s in rule_scopes):
            raise RuleError(f"{key}.scopes: must list the scopes this rule allows")
        missing = sorted(set(rule_scopes) - known_scopes)
        if missing:
            raise RuleError(f"{key}.scopes: {missing[0]!r} is not a scope of this target")
        if "max_ttl" not in body:
            raise RuleError(f'{key}.max_ttl: is required (how long a pipeline may hold it, like "10m")')
        try:
            max_ttl = parse_duration(str(body["max_ttl"]))
        except ValueError as exc:
            raise RuleError(f"{key}.max_ttl: {exc}") from None
        approval = body.get("approval", "required")
        if approval not in APPROVALS:
            raise RuleError(f"{key}.approval: must be auto or required")
        name = body.get("name", f"rule-{i}")
        if not isinstance(name, str) or not name:
            raise RuleError(f"{key}.name: must be a string")
        out.append(WorkloadRule(name, issuer, dict(claims), frozenset(rule_scopes), max_ttl, approval))
    return tuple(out)
