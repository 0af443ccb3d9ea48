"""What sqlglot can tell about a query or DML statement: tables, calls, hidden writes, locks.

sqlglot parses a literal-free rendering of our tokens (sqllex.parse_text), never the user's text, and
its findings are mapped back to our tokens by position: a call's name is read from the token sqlglot
says it started at, so `pg_catalog.set_config`, `"Upper"` and `myschema.upper` keep what makes them
different from the built-ins. Whatever `name (` sqlglot did not explain is counted as a call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres

from gateway.pg import sqlfunctions as fn
from gateway.pg.sqllex import IDENT, PUNCT, QIDENT, UIDENT, Token, name_at, parse_text, punct, qualified_name

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
_FUNC, _NAME, _TABLE, _LOCK, _SELECT, _OTHER = range(6)
_ROLES: dict[type, int | str] = {}  # node class -> role, or the write command it is


def _role(cls: type) -> int | str:
    """What a sqlglot node class means to us (memoised: isinstance per node is the slow part)."""
    role = _ROLES.get(cls)
    if role is None:
        write = next((name for base, name in WRITE_NODES.items() if issubclass(cls, base)), None)
        kinds = ((exp.Func, _FUNC), (exp.Identifier, _NAME), (exp.Table, _TABLE), (exp.Lock, _LOCK))
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
        elif role == _LOCK:
            locks = True
        elif role == _SELECT:
            select_into = select_into or bool(node.args.get("into"))
        elif isinstance(role, str):
            writes.add(role)
            unguarded = unguarded or (role in ("UPDATE", "DELETE") and not node.args.get("where"))
    functions.update(_unexplained_calls(t, explained))
    return Analysis(root, frozenset(tables), frozenset(functions), frozenset(writes), unguarded, select_into, locks)


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
    """Denied functions called anywhere in the tokens, whatever sqlglot made of them (a backstop)."""
    out: set[str] = set()
    prev: Token | None = None
    for tok in t:
        if prev is not None and tok[0] == PUNCT and tok[1] == "(" and prev[0] in (IDENT, QIDENT):
            name = prev[1]
            if name in fn.WRITE_DENIED_FUNCTIONS or name.startswith(fn.WRITE_DENIED_PREFIXES):
                out.add(name)
        prev = tok
    return out


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
