"""Which functions a statement calls, as PostgreSQL will resolve them, and whether a scope may call them.

sql.inspector.decide asks `function_floor` about every statement below admin. Calls come from sql.parse
(`name (` calls, and the `x.name`, conversions and operators that may be calls); the target's
catalogue (gateway.pg.sql.catalog) says which of those the server will read as calls, and which names have
a user overload. Without a catalogue, PostgreSQL 15's built-in names stand in (pgcatalog15), and a
`(expr).name` that may call an unknown function is refused: nobody can tell.
"""

from __future__ import annotations

from typing import Protocol

from gateway.pg.sql import functions as fn
from gateway.pg.sql.catalog import Catalog
from gateway.pg.sql.lex import LexError, tokenize
from gateway.pg.sql.parse import EXPRESSION
from gateway.pg.sql.pgcatalog15 import UNARY_BUILTINS
from gateway.pg.sql.settings import harmless_set_config
from gateway.policy import Decision

__all__ = ["CallFacts", "calls", "function_floor", "split_name"]


class CallFacts(Protocol):
    """What a statement (sql.inspector.Statement) says about its calls."""

    @property
    def text(self) -> str: ...
    @property
    def functions(self) -> frozenset[str]: ...
    @property
    def attributes(self) -> frozenset[tuple[str, str]]: ...
    @property
    def types(self) -> frozenset[str]: ...
    @property
    def operators(self) -> frozenset[str]: ...


def function_floor(s: CallFacts, mode: str, extra: frozenset[str], catalog: Catalog | None) -> Decision | None:
    """Why a read or write scope may not make one of the statement's calls, or None."""
    called, unknown = calls(s, catalog)
    for name in unknown:
        if not _extra(name, extra):
            where = "" if catalog is not None else " (the target's catalogue could not be read)"
            return Decision.deny("ambiguous-call", f"cannot tell whether .{name} is a column or a call of {name}()"
                                 f" (attribute notation){where}")  # fmt: skip
    for name in called:
        if mode == "read" and not _read_function(name, extra, catalog):
            if split_name(name) in (("", "set_config"), ("pg_catalog", "set_config")) and _harmless_set_config(s.text):
                continue  # the literal setting name is part of the fingerprint, so this stays cache-safe
            if catalog is not None and split_name(name)[1] in catalog.user_functions and "." not in name:
                return Decision.deny("function-not-allowed", f"{name}() is not allowed in read scope: the target"
                                     f" has a {name}() outside pg_catalog, which the call may run")  # fmt: skip
            return Decision.deny("function-not-allowed", f"{name}() is not allowed in read scope")
        if mode == "write" and _write_denied(name, extra):
            return Decision.deny("function-not-allowed", f"{name}() is not allowed in write scope")
    return None


def calls(s: CallFacts, catalog: Catalog | None) -> tuple[list[str], list[str]]:
    """Every function the statement may call, and `.name`s that may be calls of functions nobody knows.

    Beyond `name (`: attribute notation the catalogue reads as a call, and with a catalogue the user
    functions behind operators and type conversions (qualified: "public.to_money").
    """
    names = set(s.functions)
    unknown: list[str] = []
    for rel, name in s.attributes:
        verdict = _attribute(rel, name, catalog)
        if verdict is _CALL:
            names.add(name)
        elif verdict is _UNKNOWN:
            unknown.append(name)
    if catalog is not None:
        for ty in s.types:
            names.update(catalog.user_types.get(ty, ()))
        for op in s.operators:
            names.update(catalog.user_operators.get(op, ()))
        for name in [n for n in names if "." not in n and n in catalog.user_types]:
            names.update(catalog.user_types[name])  # mytype(x) and (x).mytype convert too
    return sorted(names), sorted(unknown)


_CALL, _COLUMN, _UNKNOWN = "call", "column", "unknown"


def _attribute(rel: str, name: str, catalog: Catalog | None) -> str:
    """How the server reads `x.name` (rel: see sql.parse.attribute_refs): a column, a call, or who knows.

    PostgreSQL: if x is a relation or row with a column `name`, the column; else name(x) if a function
    (or type) `name` takes one argument; else an error. Without a catalogue, a name that is no built-in
    is taken for a column of a FROM relation, and for an unknown call on any other expression.
    """
    if catalog is None:
        if name in UNARY_BUILTINS:
            return _CALL
        return _UNKNOWN if rel == EXPRESSION else _COLUMN
    cols = catalog.columns.get(rel) if rel and rel != EXPRESSION else None
    if cols is not None and name in cols:
        return _COLUMN
    if name in catalog.unary:
        return _CALL
    if name in catalog.all_columns or (rel != EXPRESSION and cols is None):
        return _COLUMN  # a column of some relation, or of a CTE or subquery (whose columns are not catalogued)
    return _UNKNOWN  # neither a column nor a function the snapshot knows: a function newer than it?


def _harmless_set_config(text: str) -> bool:
    try:
        return harmless_set_config(tokenize(text))
    except LexError:
        return False


def split_name(name: str) -> tuple[str, str]:
    """(schema, name) of a possibly qualified name; schema "" when unqualified."""
    schema, _, base = name.rpartition(".")
    return schema, base


def _extra(name: str, extra: frozenset[str]) -> bool:
    """extra_functions: a qualified entry matches exactly, an unqualified one in any schema."""
    return name in extra or split_name(name)[1] in extra


def _read_function(name: str, extra: frozenset[str], catalog: Catalog | None) -> bool:
    if _extra(name, extra):
        return True
    schema, base = split_name(name)
    if schema not in ("", "pg_catalog"):
        return False  # someone's function that shares a built-in's name
    builtin = base in fn.READ_FUNCTIONS or base.startswith(fn.READ_FUNCTION_PREFIXES)
    user = catalog.user_functions.get(base) if not schema and catalog is not None else None
    if user:
        # `lower(1)` may resolve to public.lower(integer): PostgreSQL picks, not the name. Allowed only when
        # the policy names every overload outside pg_catalog (`public.lower`) and the built-in is a read.
        return builtin and all(f"{s}.{base}" in extra for s in user)
    return builtin


def _write_denied(name: str, extra: frozenset[str]) -> bool:
    base = split_name(name)[1]
    denied = base in fn.WRITE_DENIED_FUNCTIONS or base.startswith(fn.WRITE_DENIED_PREFIXES)
    return denied and not _extra(name, extra)
