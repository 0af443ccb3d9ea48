"""Who may do what under a set of policies, and what a change to them adds or removes (pure; for code review)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config import ApiUser
from gateway.durations import format_duration
from gateway.policy import Policies, ScopePolicy

EVERYONE = "everyone"


@dataclass(frozen=True, slots=True, order=True)
class Right:
    """One thing a principal may do: request or approve a target's scope, or (a pipeline) exchange for it."""

    target: str
    scope: str
    verb: str  # request | approve | exchange
    detail: str  # the terms: max TTL, how it is approved

    @property
    def key(self) -> tuple[str, str, str]:
        """What the right is about, without its terms (a change of terms is a change, not add + remove)."""
        return (self.target, self.scope, self.verb)

    def describe(self) -> str:
        """`may request orders-db/write`."""
        return f"may {self.verb} {self.target}/{self.scope}"


@dataclass(frozen=True, slots=True)
class Change:
    """One right added, removed or changed for one principal."""

    principal: str
    kind: str  # added | removed | changed
    right: Right
    before: str = ""  # the old terms of a changed right

    def describe(self) -> str:
        """One line: `+ may request orders-db/write (max 30m, ...)`."""
        if self.kind == "changed":
            return f"~ {self.right.describe()}: {self.before} -> {self.right.detail}"
        return f"{'+' if self.kind == 'added' else '-'} {self.right.describe()} ({self.right.detail})"


def describe_approvals(sp: ScopePolicy) -> str:
    """How a scope gets approved, in words."""
    if sp.auto_approve or sp.approvals.count == 0:
        return "auto-approved (audited)"
    who = [*(f"user {u}" for u in sorted(sp.approvals.from_users))]
    who += [f"group {g}" for g in sorted(sp.approvals.from_groups)]
    return f"{sp.approvals.count} approval(s) from {', '.join(who) or 'anyone but the requester'}"


def rights(policies: Policies, users: Mapping[str, ApiUser]) -> dict[str, set[Right]]:
    """Every principal's rights: each configured user (through their groups too), each group a policy names,
    `everyone` for what nobody is excluded from, and each pipeline rule's claims."""
    out: dict[str, set[Right]] = {}

    def give(principal: str, right: Right) -> None:
        out.setdefault(principal, set()).add(right)

    for tp in policies.targets():
        for name, sp in tp.scopes.items():
            req = Right(tp.target, name, "request", f"max {format_duration(sp.max_ttl)}, {describe_approvals(sp)}")
            needs_approval = not sp.auto_approve and sp.approvals.count > 0
            appr = Right(tp.target, name, "approve", f"{sp.approvals.count} needed")
            open_request = not sp.requesters_users and not sp.requesters_groups
            open_approval = not sp.approvals.from_users and not sp.approvals.from_groups
            if open_request:
                give(EVERYONE, req)
            if needs_approval and open_approval:
                give(EVERYONE, appr)
            for g in sp.requesters_groups:
                give(f"group {g}", req)
            if needs_approval:
                for g in sp.approvals.from_groups:
                    give(f"group {g}", appr)
            for user in users.values():
                label = _user_label(user)
                if sp.may_request(user.name, user.groups):
                    give(label, req)
                if needs_approval and (
                    open_approval or user.name in sp.approvals.from_users or sp.approvals.from_groups & user.groups
                ):
                    give(label, appr)
        for rule in tp.workloads:
            claims = ", ".join(f"{k}={v}" for k, v in sorted(rule.claims.items()))
            terms = f"max {format_duration(rule.max_ttl)}, {'auto' if rule.approval == 'auto' else 'needs an approver'}"
            for scope in sorted(rule.scopes):
                give(f"workload {rule.issuer} {{{claims}}}", Right(tp.target, scope, "exchange", terms))
    return out


def _user_label(user: ApiUser) -> str:
    groups = f" ({', '.join(sorted(user.groups))})" if user.groups else ""
    return f"user {user.name}{groups}"


def diff(old: Mapping[str, Iterable[Right]], new: Mapping[str, Iterable[Right]]) -> list[Change]:
    """Per principal, what the new rights add, remove or change, in a stable order."""
    changes: list[Change] = []
    for principal in sorted(set(old) | set(new)):
        before = {r.key: r for r in old.get(principal, ())}
        after = {r.key: r for r in new.get(principal, ())}
        for key in sorted(set(before) | set(after)):
            b, a = before.get(key), after.get(key)
            if b is None and a is not None:
                changes.append(Change(principal, "added", a))
            elif a is None and b is not None:
                changes.append(Change(principal, "removed", b))
            elif a is not None and b is not None and a.detail != b.detail:
                changes.append(Change(principal, "changed", a, b.detail))
    return changes
