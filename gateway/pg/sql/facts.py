"""A statement's classification as plain data (Facts), shared by sql.classify and sql.settings."""

from __future__ import annotations

from typing import NamedTuple

from gateway.pg.sql.lex import Token, kw
from gateway.pg.sql.parse import Budget

__all__ = ["UNPARSEABLE", "Context", "Facts", "failed", "has_pair", "unparseable"]


class Facts(NamedTuple):
    """A statement's classification, before its text is attached."""

    kind: str
    command: str
    needs: str
    reason: str = ""
    tables: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    has_where: bool = True
    attributes: frozenset[tuple[str, str]] = frozenset()  # `x.name` that may call name(x): sql.parse
    types: frozenset[str] = frozenset()  # types converted to
    operators: frozenset[str] = frozenset()


UNPARSEABLE = "could not be parsed safely"
IN_WITH = "in a WITH clause"  # ends the reason of a data-modifying CTE; the refusal headline leads with it


def unparseable(why: str, command: str = "?") -> Facts:
    """Fail closed: unknown kind, admin only."""
    return Facts("unknown", command, "admin", f"{UNPARSEABLE}: {why}")


def failed(f: Facts) -> bool:
    """Whether the statement could not be parsed (its kind may still be a keyword guess)."""
    return f.reason.startswith(UNPARSEABLE)


class Context(NamedTuple):
    """Where a handler runs: how deep in EXPLAIN/PREPARE/DECLARE nesting, and the parse budget."""

    depth: int
    budget: Budget

    def deeper(self) -> Context:
        return Context(self.depth + 1, self.budget)


def has_pair(t: list[Token], a: str, b: str) -> bool:
    """Whether keywords a then b appear next to each other."""
    return any(kw(t, i) == a and kw(t, i + 1) == b for i in range(len(t) - 1))
