"""What one statement is: kind, command, the least scope that may run it, tables and functions.

The statement's leading keywords pick a handler (ours, on sql.lex tokens: never a raw-text prefix).
Queries and DML go through sql.parse (sqlglot, on a literal-free rendering) for tables, calls,
data-modifying CTEs, SELECT INTO and row locks. Utility statements, which sqlglot would read as an
opaque Command, are handled here keyword by keyword; whatever is neither is "unknown" and needs
admin (fail closed).

`needs` is the least mode that may run the statement: "read", "write", "admin", or "never" (a
setting that would make the server and our lexer disagree about where strings end).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from gateway.pg.sql.facts import IN_WITH, UNPARSEABLE, Context, Facts, failed, has_pair, unparseable
from gateway.pg.sql.lex import (
    IDENT,
    OTHER,
    QIDENT,
    STRING,
    UIDENT,
    Token,
    close_paren,
    find_kw,
    kw,
    name_at,
    punct,
)
from gateway.pg.sql.parse import WRITE_NODES, Analysis, Budget, analyze, dangerous_calls, guess_names
from gateway.pg.sql.settings import lexing_calls, reset, set_

__all__ = [
    "IN_WITH",
    "UNPARSEABLE",
    "Budget",
    "Facts",
    "classify",
    "dangerous_calls",
    "failed",
    "lexing_calls",
    "unparseable",
]


def _calls(f: Facts, a: Analysis) -> Facts:
    """`f` with the analysis' functions and its calls that are not `name (`."""
    return f._replace(functions=a.functions, attributes=a.attributes, types=a.types, operators=a.operators)


_MAX_DEPTH = 4  # EXPLAIN / PREPARE / DECLARE nest at most a couple of levels in real use


def classify(t: list[Token], budget: Budget) -> Facts:
    """Classify one statement's tokens (non-empty, no `;`)."""
    return _classify(t, Context(0, budget))


def _classify(t: list[Token], cx: Context) -> Facts:
    if cx.depth > _MAX_DEPTH:
        return unparseable("statements nested too deeply")
    stray = next((tok[1] for tok in t if tok[0] in (OTHER, UIDENT)), None)
    if stray is not None:
        # The grammar accepts no stray character (sqlglot might skip one), and U&"..." names would
        # need decoding we do not trust ourselves to match.
        return unparseable(f"unexpected {stray[:20]!r}")
    first = kw(t, 0) or ("(" if punct(t, 0, "(") else "")
    handler = _HANDLERS.get(first)
    if handler is None:
        word = t[0][1] if t[0][0] == IDENT else t[0][1][:20]
        return unparseable(f"unknown statement {word.upper()!r}", word.upper())
    return handler(t, cx)


def _join(*reasons: str) -> str:
    return "; ".join(r for r in reasons if r)


# --- queries and DML -------------------------------------------------------------------------------

_QUERY_ROOTS = (exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Values, exp.Subquery)
_DML_ROOTS = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_ROOTS: dict[str, tuple[type, ...]] = {
    "select": _QUERY_ROOTS,
    "values": _QUERY_ROOTS,
    "table": _QUERY_ROOTS,
    "(": _QUERY_ROOTS,
    "with": _QUERY_ROOTS + _DML_ROOTS,
    "insert": (exp.Insert,),
    "update": (exp.Update,),
    "delete": (exp.Delete,),
    "merge": (exp.Merge,),
}
# Words that have no business in a read: if sqlglot called the statement a pure read but the tokens
# still hold one of these, trust the tokens (a column named "update" is the price).
_WRITE_WORDS = frozenset({"insert", "update", "delete", "merge", "truncate", "into"})
_LOCK_WORDS = frozenset({"update", "share", "no", "key"})


def _query(t: list[Token], cx: Context) -> Facts:
    a = analyze(t, cx.budget)
    first = kw(t, 0) or "("
    if isinstance(a, str) or not isinstance(a.root, _ROOTS[first]):
        why = a if isinstance(a, str) else f"read as {type(a.root).__name__}"
        # Admin rules still need a kind and names: guess generously (every name, keyword kind).
        tables, functions = guess_names(t)
        kind = "write" if first in ("insert", "update", "delete", "merge") else "unknown"
        command = "SELECT" if first == "(" else first.upper()
        return unparseable(why, command)._replace(kind=kind, tables=tables, functions=functions)
    command = WRITE_NODES.get(type(a.root)) or ("VALUES" if isinstance(a.root, exp.Values) else "SELECT")
    base = _calls(Facts("read", command, "read", "", a.tables, has_where=not a.unguarded), a)
    if a.select_into:
        return base._replace(kind="ddl", needs="admin", reason="SELECT INTO creates a table")
    if command not in ("SELECT", "VALUES"):
        return base._replace(kind="write", needs="write")
    if a.writes:
        return base._replace(kind="write", needs="write", reason=f"{'/'.join(sorted(a.writes))} {IN_WITH}")
    words = {tok[1] for tok in t if tok[0] == IDENT}
    if a.locks or ("for" in words and any(kw(t, i) == "for" and kw(t, i + 1) in _LOCK_WORDS for i in range(len(t)))):
        return base._replace(kind="write", needs="write", reason="FOR UPDATE/SHARE takes row locks")
    odd = sorted(words & _WRITE_WORDS)
    if "into" in odd:
        return base._replace(kind="ddl", needs="admin", reason="mentions INTO")
    if odd:
        return base._replace(kind="write", needs="write", reason=f"mentions {odd[0].upper()}")
    return base


def _expr(t: list[Token], command: str, cx: Context) -> Facts | Analysis:
    """Analyse an expression list (EXECUTE params, CALL, COPY ... WHERE) as `SELECT <list>`."""
    a = analyze([(IDENT, "select", -1, -1), *t], cx.budget)
    return unparseable(a, command) if isinstance(a, str) else a


# --- EXPLAIN, PREPARE, DECLARE, EXECUTE: statements around statements -----------------------------


def _explain(t: list[Token], cx: Context) -> Facts:
    i, analyze = 1, False
    if punct(t, 1, "("):
        close = close_paren(t, 1)
        if close < 0:
            return unparseable("unbalanced EXPLAIN options", "EXPLAIN")
        # Any ANALYZE option counts, even ANALYZE false: we do not evaluate option values.
        analyze = any(kw(t, j) in ("analyze", "analyse") for j in range(2, close))
        i = close + 1
    else:
        while kw(t, i) in ("analyze", "analyse", "verbose"):
            analyze = analyze or kw(t, i) != "verbose"
            i += 1
    if i >= len(t):
        return unparseable("EXPLAIN of nothing", "EXPLAIN")
    inner = _classify(t[i:], cx.deeper())
    if inner.kind == "unknown" or failed(inner):
        return inner._replace(command="EXPLAIN")
    if analyze:
        return inner._replace(command="EXPLAIN", reason=_join("EXPLAIN ANALYZE runs the statement", inner.reason))
    if inner.kind == "write" and inner.command in _EXPLAINABLE:
        # Planned, not run. Functions still meet the allowlist: the planner evaluates immutable and
        # stable calls while estimating.
        return inner._replace(command="EXPLAIN", kind="read", needs="read", reason="", has_where=True)
    return inner._replace(command="EXPLAIN")


_EXPLAINABLE = frozenset({"SELECT", "VALUES", "INSERT", "UPDATE", "DELETE", "MERGE"})


def _prepare(t: list[Token], cx: Context) -> Facts:
    if len(t) < 2:
        return unparseable("expected PREPARE name AS statement", "PREPARE")
    if kw(t, 1) == "transaction" and len(t) == 3 and t[2][0] == STRING:
        return Facts("transaction", "PREPARE TRANSACTION", "write", "leaves a prepared transaction holding locks")
    i = 2
    if punct(t, i, "("):
        i = close_paren(t, i) + 1
        if i == 0:
            return unparseable("unbalanced PREPARE parameter types", "PREPARE")
    if t[1][0] not in (IDENT, QIDENT) or kw(t, i) != "as" or i + 1 >= len(t):
        return unparseable("expected PREPARE name AS statement", "PREPARE")
    inner = _classify(t[i + 1 :], cx.deeper())
    if failed(inner):
        return inner._replace(command="PREPARE")
    # Not run yet: no write-without-where alert here; EXECUTE brings the statement to the rules.
    return inner._replace(command="PREPARE", reason=_join(f"prepares {inner.command}", inner.reason), has_where=True)


def _declare(t: list[Token], cx: Context) -> Facts:
    cursor = find_kw(t, 1, "cursor")
    at = find_kw(t, cursor + 1, "for") if cursor > 0 else -1
    if at < 0 or at + 1 >= len(t):
        return unparseable("expected DECLARE name CURSOR FOR query", "DECLARE")
    inner = _classify(t[at + 1 :], cx.deeper())
    if failed(inner):
        return inner._replace(command="DECLARE")
    return inner._replace(command="DECLARE", reason=_join(f"cursor over {inner.command}", inner.reason))


def _execute(t: list[Token], cx: Context) -> Facts:
    """EXECUTE runs a statement checked when it was prepared: decide() looks it up by name."""
    if len(t) < 2 or t[1][0] not in (IDENT, QIDENT):
        return unparseable("expected EXECUTE name", "EXECUTE")
    facts = Facts("unknown", "EXECUTE", "admin", f"runs prepared statement {t[1][1]}")
    if len(t) > 2:
        close = close_paren(t, 2)
        if not punct(t, 2, "(") or close != len(t) - 1:
            return unparseable("expected EXECUTE name (parameters)", "EXECUTE")
        a = _expr(t[3:close], "EXECUTE", cx)  # parameters are expressions and may call functions
        if isinstance(a, Facts):
            return a
        facts = _calls(facts, a)
    return facts


# --- session, transaction and cursor statements ----------------------------------------------------


def _constant(kind: str, command: str, needs: str, reason: str = "") -> Callable[[list[Token], Context], Facts]:
    def handler(t: list[Token], cx: Context) -> Facts:
        return Facts(kind, command, needs, reason)

    return handler


def _begin(t: list[Token], cx: Context) -> Facts:
    if kw(t, 0) == "start" and kw(t, 1) != "transaction":
        return unparseable("expected START TRANSACTION", "START")
    command = "BEGIN" if kw(t, 0) == "begin" else "START TRANSACTION"
    if has_pair(t, "read", "write"):
        return Facts("transaction", command, "write", "READ WRITE transaction")
    return Facts("transaction", command, "read")


def _end(t: list[Token], cx: Context) -> Facts:
    command = {"end": "COMMIT", "abort": "ROLLBACK"}.get(kw(t, 0), kw(t, 0).upper())
    if kw(t, 1) == "prepared":
        # Finishes a two-phase transaction, possibly another session's.
        return Facts("transaction", f"{command} PREPARED", "admin", "ends a prepared transaction")
    return Facts("transaction", command, "read")


def _discard(t: list[Token], cx: Context) -> Facts:
    if kw(t, 1) == "all":
        # DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT and RESET ALL.
        return Facts("session", "DISCARD ALL", "admin", "resets the session's identity")
    return Facts("session", "DISCARD", "read")


# --- COPY, LOCK, CALL ------------------------------------------------------------------------------


def _copy(t: list[Token], cx: Context) -> Facts:
    i = 2 if kw(t, 1) == "binary" else 1
    inner: Facts | None = None
    tables: frozenset[str] = frozenset()
    if punct(t, i, "("):
        close = close_paren(t, i)
        if close < 0:
            return unparseable("unbalanced COPY query", "COPY")
        inner = _classify(t[i + 1 : close], cx.deeper())
        if inner.kind == "unknown" or failed(inner):
            return inner._replace(command="COPY")
        i = close + 1
    else:
        name, i = name_at(t, i)
        if not name:
            return unparseable("expected COPY table", "COPY")
        tables = frozenset({name})
        if punct(t, i, "("):
            i = close_paren(t, i) + 1
    direction, target = kw(t, i), kw(t, i + 1)
    file = i + 1 < len(t) and t[i + 1][0] == STRING
    if direction == "to" and target == "stdout":
        if inner is not None:
            return inner._replace(command="COPY")
        return Facts("read", "COPY", "read", "", tables)
    if direction == "from" and target == "stdin" and inner is None:
        return _copy_from(t, i + 2, tables, cx)
    if direction in ("to", "from") and (target == "program" or file):
        what = "runs a shell command on the database server" if target == "program" else "uses a server file"
        base = inner or Facts("admin", "COPY", "admin", "", tables)
        return base._replace(kind="admin", command="COPY", needs="admin", reason=f"COPY {direction.upper()} {what}")
    return unparseable("expected COPY ... TO STDOUT or FROM STDIN", "COPY")


def _copy_from(t: list[Token], i: int, tables: frozenset[str], cx: Context) -> Facts:
    facts = Facts("write", "COPY", "write", "COPY FROM STDIN", tables)
    where = find_kw(t, i, "where")
    if where > 0:
        a = _expr(t[where + 1 :], "COPY", cx)  # COPY ... FROM STDIN WHERE <condition> may call functions
        if isinstance(a, Facts):
            return a
        facts = _calls(facts, a)
    return facts


def _lock(t: list[Token], cx: Context) -> Facts:
    i = 1
    names: set[str] = set()
    while i < len(t) and kw(t, i) not in ("in", "nowait"):
        if kw(t, i) in ("table", "only") or punct(t, i, ",") or punct(t, i, "*"):
            i += 1
            continue
        name, nxt = name_at(t, i)
        if not name:
            return unparseable("expected LOCK table", "LOCK")
        names.add(name)
        i = nxt
    return Facts("write", "LOCK", "write", "blocks other sessions", frozenset(names))


def _call(t: list[Token], cx: Context) -> Facts:
    a = _expr(t[1:], "CALL", cx)
    if isinstance(a, Facts):
        return a
    return _calls(Facts("write", "CALL", "write", "runs a procedure", a.tables), a)


# --- DDL, DCL, maintenance -------------------------------------------------------------------------

_MODIFIERS = frozenset(
    "or replace temp temporary unlogged global local unique trusted procedural default recursive if not exists "
    "constraint".split()
)
_ROLE_WORDS = frozenset({"role", "user", "group"})
_PAIRS = frozenset(
    {
        ("materialized", "view"),
        ("foreign", "table"),
        ("foreign", "data"),
        ("event", "trigger"),
        ("access", "method"),
        ("text", "search"),
        ("user", "mapping"),
        ("default", "privileges"),
    }
)


def _object_command(t: list[Token], verb: str) -> tuple[str, str]:
    """("CREATE TABLE", "table") from CREATE OR REPLACE TEMP TABLE ..."""
    i = 1
    while kw(t, i) in _MODIFIERS:
        i += 1
    obj = kw(t, i)
    if (obj, kw(t, i + 1)) in _PAIRS:
        obj = f"{obj} {kw(t, i + 1)}"
    return f"{verb} {obj.upper()}".strip(), obj


def _ddl(t: list[Token], cx: Context) -> Facts:
    verb = kw(t, 0)
    command, obj = _object_command(t, verb.upper())
    kind, needs, reason = "ddl", "admin", ""
    if verb in ("grant", "revoke", "reassign") or obj in _ROLE_WORDS or obj in ("privileges", "default privileges"):
        kind = "dcl"
    elif verb == "drop" and obj == "owned":
        kind = "dcl"
    elif verb == "alter" and obj == "system":
        kind, reason = "admin", "changes the server's configuration"
    elif verb in ("comment", "security", "import"):
        command = {"comment": "COMMENT", "security": "SECURITY LABEL", "import": "IMPORT FOREIGN SCHEMA"}[verb]
    elif verb == "truncate":
        command, reason = "TRUNCATE", "removes all rows without MVCC or DELETE triggers"
    if verb in ("grant", "revoke", "reassign"):
        command = verb.upper()
    tables, functions = _names(t, cx)
    return Facts(kind, command, needs, reason, tables, functions)


def _maintenance(t: list[Token], cx: Context) -> Facts:
    word = kw(t, 0)
    command = {"analyse": "ANALYZE", "refresh": "REFRESH MATERIALIZED VIEW"}.get(word, word.upper())
    reasons = {"do": "runs arbitrary code", "load": "loads a shared library into the server"}
    tables, functions = _names(t, cx) if word not in ("do", "checkpoint") else (frozenset(), frozenset())
    return Facts("admin", command, "admin", reasons.get(word, "server maintenance"), tables, functions)


def _names(t: list[Token], cx: Context) -> tuple[frozenset[str], frozenset[str]]:
    """Tables and functions of an admin-only statement: sqlglot's if it understands it, else every name.

    These only feed policy rules in admin scope, so guessing too many names is the safe error.
    """
    a = analyze(t, cx.budget)
    if not isinstance(a, str):
        return a.tables, a.functions | frozenset(dangerous_calls(t))
    return guess_names(t)


_HANDLERS: dict[str, Callable[[list[Token], Context], Facts]] = {
    **dict.fromkeys(("select", "with", "values", "table", "(", "insert", "update", "delete", "merge"), _query),
    "explain": _explain,
    "prepare": _prepare,
    "declare": _declare,
    "execute": _execute,
    "set": set_,
    "reset": reset,
    "show": _constant("read", "SHOW", "read"),
    "begin": _begin,
    "start": _begin,
    **dict.fromkeys(("commit", "end", "rollback", "abort"), _end),
    "savepoint": _constant("transaction", "SAVEPOINT", "read"),
    "release": _constant("transaction", "RELEASE", "read"),
    "fetch": _constant("read", "FETCH", "read"),
    "move": _constant("read", "MOVE", "read"),
    "close": _constant("session", "CLOSE", "read"),
    "deallocate": _constant("session", "DEALLOCATE", "read"),
    "discard": _discard,
    # LISTEN only subscribes this session to notifications; NOTIFY reaches other sessions' code.
    "listen": _constant("session", "LISTEN", "read"),
    "unlisten": _constant("session", "UNLISTEN", "read"),
    "notify": _constant("write", "NOTIFY", "write", "signals other sessions"),
    "copy": _copy,
    "lock": _lock,
    "call": _call,
    **dict.fromkeys(
        ("create", "alter", "drop", "grant", "revoke", "reassign", "comment", "security", "import", "truncate"), _ddl
    ),
    **dict.fromkeys(
        ("do", "load", "vacuum", "analyze", "analyse", "cluster", "reindex", "checkpoint", "refresh"), _maintenance
    ),
}
