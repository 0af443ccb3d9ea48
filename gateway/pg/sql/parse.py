"""What sqlglot can tell about a query or DML statement: tables, calls, hidden writes, locks.

sqlglot parses a literal-free rendering of our tokens (sql.lex.parse_text), never the user's text, and
its findings are mapped back to our tokens by position: a call's name is read from the token sqlglot
says it started at, so `pg_catalog.set_config`, `"Upper"` and `myschema.upper` keep what makes them
different from the built-ins. Whatever `name (` sqlglot did not explain is counted as a call.

Calls without `name (` are collected from the tokens, for sql.inspector to resolve against the target's
catalogue: attribute notation (`(x).f` and `t.f` mean f(x) and f(t) when there is no such column),
conversions to a named type (`x::t`, `CAST(x AS t)`, `t 'literal'`) and every operator used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres

from gateway.pg.sql import functions as fn
from gateway.pg.sql.lex import (
    IDENT,
    OP,
    PARAM,
    PUNCT,
    QIDENT,
    STRING,
    UIDENT,
    Token,
    name_at,
    parse_text,
    punct,
    qualified_name,
)

_DIALECT = Postgres()


class _QuietCommandFallback(logging.Filter):
    """sqlglot warns when it falls back to exp.Command; we treat that as "unknown", so drop the noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


_sqlglot_log = logging.getLogger("sqlglot")
if not any(isinstance(f, _QuietCommandFallback) for f in _sqlglot_log.filters):
    _sqlglot_log.addFilter(_QuietCommandFallback())


class Budget:
    """How many more tokens sqlglot may parse for one text: a huge text must not stall the event loop."""

    __slots__ = ("left",)

    def __init__(self, tokens: int) -> None:
        self.left = tokens


class Analysis(NamedTuple):
    """What sqlglot found in one statement."""

    root: exp.Expr
    tables: frozenset[str]
    functions: frozenset[str]
    writes: frozenset[str]  # INSERT/UPDATE/DELETE/MERGE anywhere in the tree
    unguarded: bool  # an UPDATE or DELETE without WHERE
    select_into: bool
    locks: bool
    attributes: frozenset[tuple[str, str]]  # (relation, name) for `x.name`; see attribute_refs
    types: frozenset[str]  # type names converted to
    operators: frozenset[str]  # every operator, OPERATOR(schema.op) as `op`


WRITE_NODES: dict[type, str] = {exp.Insert: "INSERT", exp.Update: "UPDATE", exp.Delete: "DELETE", exp.Merge: "MERGE"}


def analyze(t: list[Token], budget: Budget) -> Analysis | str:
    """Parse tokens with sqlglot and collect what matters; a string is the parse error."""
    cost = len(t) + 8  # a parse costs a few tokens' worth even for "SELECT 1"
    if cost > budget.left:
        return "too long to inspect"
    budget.left -= cost
    text, where = parse_text(t, 0, len(t))
    try:
        trees = _DIALECT.parse(text)
    except Exception as exc:  # ParseError, TokenError, RecursionError...: all mean "cannot tell"
        return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    if len(trees) != 1 or trees[0] is None:
        return "not a single statement"
    root = trees[0]
    if isinstance(root, exp.Command):
        return "not understood"
    return _collect(root, t, where)


# x = ALL (...), ANY (...), SOME (...), EXISTS (...): sqlglot makes calls of them, the server never does
# (reserved words). Only these excuse a call sqlglot recognised: an unreserved word such as skip or
# filter can name a real function.
_RESERVED_PAREN_SYNTAX = frozenset({"all", "any", "some", "exists"})
_FUNC, _NAME, _TABLE, _LOCK, _SELECT, _ALIAS, _OTHER = range(7)
_ROLES: dict[type, int | str] = {}  # node class -> role, or the write command it is


def _role(cls: type) -> int | str:
    """What a sqlglot node class means to us (memoised: isinstance per node is the slow part)."""
    role = _ROLES.get(cls)
    if role is None:
        write = next((name for base, name in WRITE_NODES.items() if issubclass(cls, base)), None)
        kinds = (
            (exp.Func, _FUNC),
            (exp.Identifier, _NAME),
            (exp.Table, _TABLE),
            (exp.Lock, _LOCK),
            (exp.TableAlias, _ALIAS),
        )
        role = write or next((r for base, r in kinds if issubclass(cls, base)), _OTHER)
        if role == _OTHER and issubclass(cls, exp.Select):
            role = _SELECT
        _ROLES[cls] = role
    return role


def _start(node: exp.Expr) -> object:
    """Where sqlglot saw the node's first token (function names and identifiers have one)."""
    return node.meta_get("start") if _HAS_META_GET else node.meta.get("start")


_HAS_META_GET = hasattr(exp.Expr, "meta_get")


def _collect(root: exp.Expr, t: list[Token], where: dict[int, int]) -> Analysis:
    tables: set[str] = set()
    functions: set[str] = set()
    writes: set[str] = set()
    explained: set[int] = set()
    relations: dict[str, str] = dict(_PSEUDO_RELATIONS)  # how `x` in `x.name` may be written -> relation name
    aliases: set[str] = set()  # names of CTEs, subqueries and table functions: no catalogue relation
    unguarded = select_into = locks = False
    for node in root.walk():
        role = _role(type(node))
        if role == _OTHER:
            continue
        if role == _FUNC or role == _NAME:
            start = _start(node)
            at = where.get(start) if isinstance(start, int) else None
            if at is not None:
                explained.add(at)
                if role == _FUNC and not _keyword_call(t, at, _RESERVED_PAREN_SYNTAX):
                    functions.add(qualified_name(t, at))
        elif role == _TABLE:
            name = _table_name(node)
            if name:
                tables.add(name)
                for key in (name, node.name, node.alias):
                    if key:
                        # One name for two relations (`FROM orders customers ... (SELECT FROM customers)`):
                        # which one a reference means depends on scope, so it stands for neither.
                        relations[key] = node.name if relations.get(key, node.name) == node.name else ""
            elif node.alias:
                aliases.add(node.alias)
        elif role == _ALIAS:
            parent = node.parent
            if not (isinstance(parent, exp.Table) and isinstance(parent.this, exp.Identifier)):
                aliases.add(node.name)
        elif role == _LOCK:
            locks = True
        elif role == _SELECT:
            select_into = select_into or bool(node.args.get("into"))
        elif isinstance(role, str):
            writes.add(role)
            unguarded = unguarded or (role in ("UPDATE", "DELETE") and not node.args.get("where"))
    functions.update(_unexplained_calls(t, explained))
    relations.update(dict.fromkeys(aliases, ""))  # a CTE named like a table hides the table
    attributes, types = attribute_refs(t, relations)
    return Analysis(
        root,
        frozenset(tables),
        frozenset(functions),
        frozenset(writes),
        unguarded,
        select_into,
        locks,
        frozenset(attributes),
        frozenset(types),
        operators(t),
    )


def _table_name(node: exp.Expr) -> str:
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
        return ""  # a table function: its call is collected as a function
    return ".".join(p for p in (node.catalog, node.db, node.name) if p)


def _unexplained_calls(t: list[Token], explained: set[int]) -> set[str]:
    """`name (` that sqlglot made neither a call nor a name: a call it parsed specially, or one it missed.

    sqlglot's special function parsers (CAST, TRIM, DECODE, STRING_AGG...) record no position, and a
    call it swallowed into something else would have none either: both are counted as calls, so they
    meet the allowlist like any other (fail closed).
    """
    out: set[str] = set()
    for i in range(len(t) - 1):
        if t[i][0] in (IDENT, QIDENT, UIDENT) and punct(t, i + 1, "(") and i not in explained:
            if _keyword_call(t, i, fn.SYNTAX_WORDS) or _keyword_call(t, i, fn.TYPE_NAMES):
                continue
            if i >= 1 and punct(t, i - 1, "::"):
                continue  # a type modifier: x::varchar(10)
            out.add(qualified_name(t, i))
    return out


def _keyword_call(t: list[Token], i: int, words: frozenset[str]) -> bool:
    """An unqualified keyword before "(": syntax, not a call. After a dot any word names a function."""
    return t[i][0] == IDENT and t[i][1] in words and not (i >= 1 and punct(t, i - 1, "."))


def dangerous_calls(t: Iterable[Token]) -> set[str]:
    """Denied functions called anywhere in the tokens, whatever sqlglot made of them (a backstop).

    `name (` and `. name` (attribute notation: `(pid).pg_terminate_backend` is a call too).
    """
    out: set[str] = set()
    prev: Token | None = None
    for tok in t:
        if prev is not None:
            if tok[0] == PUNCT and tok[1] == "(" and prev[0] in (IDENT, QIDENT):
                name = prev[1]
                if name in fn.WRITE_DENIED_FUNCTIONS or name.startswith(fn.WRITE_DENIED_PREFIXES):
                    out.add(name)
            elif tok[0] in (IDENT, QIDENT) and prev[0] == PUNCT and prev[1] == ".":
                name = tok[1]
                if name in fn.WRITE_DENIED_FUNCTIONS or name.startswith(fn.WRITE_DENIED_PREFIXES):
                    out.add(name)
        prev = tok
    return out


# --- calls that are not `name (` -------------------------------------------------------------------

EXPRESSION = "("  # attribute_refs: the name follows an expression (a column, `(...)`, `[...]`, `$1`)
# Rows PostgreSQL provides without a FROM entry: INSERT ... ON CONFLICT's excluded, rules' new and old.
_PSEUDO_RELATIONS = {"excluded": "", "new": "", "old": ""}
_NAMES = (IDENT, QIDENT)


def attribute_refs(t: list[Token], relations: dict[str, str]) -> tuple[set[tuple[str, str]], set[str]]:
    """Every `x.name` that may call name(x), as (relation, name); and type names converted to.

    relation is the catalogue relation x names (`orders` for `o` in `FROM orders o`), "" when x is a
    CTE, subquery or function alias, or EXPRESSION when x is an expression or unknown. The server reads
    `x.name` as the column `name` when x has one, else as name(x): sql.inspector decides which with the
    target's catalogue. A dotted name followed by `(` is an ordinary qualified call (sqlglot's), one
    after `::` or CAST's AS, or before a string literal, is a type.
    """
    attrs: set[tuple[str, str]] = set()
    types: set[str] = set()
    n = len(t)
    i = 0
    while i < n:
        kind, value = t[i][0], t[i][1]
        if kind in _NAMES and not (i and punct(t, i - 1, ".")):
            parts, j = _chain(t, i, [value])
            if punct(t, j + 1, "(") or (i >= 1 and t[i - 1][0] == IDENT and t[i - 1][1] == "as"):
                pass  # schema.function(...): collected as a call; AS name: an alias, or CAST's type (below)
            elif _type_position(t, i, j):
                types.add(parts[-1])
            elif len(parts) > 1:
                attrs.update(_resolve(parts, relations))
            i = j + 1
            continue
        if (kind == PUNCT and value in (")", "]")) or kind == PARAM:
            parts, j = _chain(t, i, [])
            if parts:
                rel = _paren_relation(t, i, relations)
                attrs.update(((EXPRESSION if k or rel is None else rel), p) for k, p in enumerate(parts))
            i = j + 1
            continue
        i += 1
    types.update(_cast_types(t))
    return attrs, types


def _chain(t: list[Token], i: int, parts: list[str]) -> tuple[list[str], int]:
    """The names of `.a.b...` after token i, and the index of the chain's last token."""
    j = i
    while punct(t, j + 1, ".") and j + 2 < len(t) and t[j + 2][0] in _NAMES:
        parts.append(t[j + 2][1])
        j += 2
    return parts, j


def _resolve(parts: list[str], relations: dict[str, str]) -> Iterable[tuple[str, str]]:
    """`a.b.c.d`: the longest prefix naming a relation, its column, then fields (or calls) of that."""
    if ".".join(parts) in relations:
        return  # the relation itself: FROM public.orders
    for k in (3, 2, 1):
        if k < len(parts):
            rel = relations.get(".".join(parts[:k]))
            if rel is not None:
                yield rel, parts[k]
                for p in parts[k + 1 :]:
                    yield EXPRESSION, p
                return
    for p in parts[1:]:  # no relation of this name: the server may still read a column of another
        yield EXPRESSION, p


def _paren_relation(t: list[Token], i: int, relations: dict[str, str]) -> str | None:
    """`(o).name` with o a relation of the statement: the relation, like `o.name`; else None."""
    if i >= 2 and t[i][1] == ")" and t[i - 1][0] in _NAMES and punct(t, i - 2, "("):
        before = t[i - 3] if i >= 3 else None  # f(o).name: the field of a call's result; SELECT (o).name
        called = before is not None and before[0] in _NAMES and not (before[0] == IDENT and before[1] in _KEYWORDS)
        if not called:
            return relations.get(t[i - 1][1])
    return None


def _type_position(t: list[Token], i: int, j: int) -> bool:
    """Whether the name t[i..j] is a type: after `::`, or before a string (`date '...'`)."""
    if i >= 1 and punct(t, i - 1, "::"):
        return True
    return j + 1 < len(t) and t[j + 1][0] == STRING


def _cast_types(t: list[Token]) -> set[str]:
    """Type names of CAST(x AS t) and TREAT(x AS t): the AS at the call's own depth (one pass: no nesting cost)."""
    out: set[str] = set()
    opened: list[int] = []  # paren depths at which a CAST( or TREAT( is open
    depth = 0
    for j, tok in enumerate(t):
        kind, value = tok[0], tok[1]
        if kind == PUNCT and value == "(":
            depth += 1
            if j >= 1 and t[j - 1][0] == IDENT and t[j - 1][1] in ("cast", "treat"):
                opened.append(depth)
        elif kind == PUNCT and value == ")":
            if opened and opened[-1] == depth:
                opened.pop()
            depth -= 1
        elif kind == IDENT and value == "as" and opened and opened[-1] == depth:
            name = name_at(t, j + 1)[0]
            if name:
                out.add(name.rpartition(".")[2])
    return out


_KEYWORDS = fn.SYNTAX_WORDS | frozenset({"select", "distinct", "returning"})
# `*` after these is `SELECT *` or `count(*)`, not multiplication.
_STAR_AFTER = frozenset({"select", ",", "(", ".", "distinct", "all", "returning"})


def operators(t: list[Token]) -> frozenset[str]:
    """Every operator of the statement (OPERATOR(schema.op) as op): some may be backed by user functions."""
    out: set[str] = set()
    for i, tok in enumerate(t):
        if tok[0] == OP:
            if tok[1] == "*" and (i == 0 or (t[i - 1][0] in (IDENT, PUNCT) and t[i - 1][1] in _STAR_AFTER)):
                continue
            out.add(tok[1])
    return frozenset(out)


def guess_names(t: list[Token]) -> tuple[frozenset[str], frozenset[str]]:
    """Every dotted name: followed by "(" a function, else a table unless it is a keyword."""
    tables: set[str] = set()
    functions: set[str] = set()
    i = 0
    while i < len(t):
        name, nxt = name_at(t, i)
        if not name:
            i += 1
            continue
        if punct(t, nxt, "("):
            functions.add(name)
        elif "." in name or t[i][0] != IDENT or t[i][1] not in _NOT_NAMES:
            tables.add(name)
        i = nxt
    return frozenset(tables), frozenset(functions)


_NOT_NAMES = (
    fn.SYNTAX_WORDS
    | fn.TYPE_NAMES
    | frozenset(
        "or replace temp temporary unlogged global local unique trusted procedural recursive if exists constraint "
        "create alter drop grant revoke vacuum analyze analyse cluster reindex refresh materialized view index "
        "schema sequence function procedure trigger role user system database tablespace extension type domain "
        "cascade restrict concurrently verbose full freeze add column rename owner to privileges public usage "
        "all execute language comment security label import foreign server mapping policy rule publication "
        "subscription statistics operator collation conversion aggregate cast transform event access method "
        "text search configuration dictionary parser template data wrapper no force nowait load lock mode".split()
    )
)
