"""SET, RESET and set_config(): which settings a scope may change, and the two that decide where strings end.

client_encoding and standard_conforming_strings are checked in every scope (admin too): with SJIS or
GBK a quote can hide inside a multibyte character (pg/encodings says which encodings are safe); with
standard_conforming_strings off, 'a\\' stops being a whole string. Either makes sql.lex and the server
disagree about the statement.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.pg import encodings
from gateway.pg.sql import functions as fn
from gateway.pg.sql.facts import Context, Facts, has_pair, unparseable
from gateway.pg.sql.lex import (
    IDENT,
    NUMBER,
    PARAM,
    PUNCT,
    QIDENT,
    STRING,
    Token,
    fold,
    kw,
    name_at,
    punct,
    string_value,
)

__all__ = ["BIND_COMMANDS", "bound", "harmless_set_config", "lexing_calls", "reset", "set_"]


def set_(t: list[Token], cx: Context) -> Facts:
    """SET ..."""
    i = 1
    if kw(t, i) in ("session", "local") and kw(t, i + 1) not in ("authorization", "characteristics"):
        i += 1
    word, nxt = kw(t, i), kw(t, i + 1)
    if word == "session" and nxt == "authorization":
        return Facts("session", "SET SESSION AUTHORIZATION", "admin", "changes the session's identity")
    if word == "session" and nxt == "characteristics":
        return Facts("session", "SET SESSION CHARACTERISTICS", "write", "changes every later transaction")
    if word == "role":
        return Facts("session", "SET ROLE", "admin", "changes the session's identity")
    if word == "transaction":
        if nxt != "snapshot" and has_pair(t, "read", "write"):
            return Facts("transaction", "SET TRANSACTION", "write", "READ WRITE transaction")
        return Facts("transaction", "SET TRANSACTION", "read")
    if word == "constraints":
        return Facts("transaction", "SET CONSTRAINTS", "read")
    special = {"time": ("timezone", i + 2), "names": ("client_encoding", i + 1), "schema": ("search_path", i + 1)}
    if word in special and (word != "time" or nxt == "zone"):
        var, at = special[word]
        return _setting("SET", var, t[at:])
    if word == "xml" and nxt == "option":
        return _setting("SET", "xmloption", t[i + 2 :])
    var, at = name_at(t, i)
    if not var or not (kw(t, at) == "to" or punct(t, at, "=")):
        return unparseable("expected SET name TO value", "SET")
    return _setting("SET", var, t[at + 1 :])


def reset(t: list[Token], cx: Context) -> Facts:
    """RESET ..."""
    word, nxt = kw(t, 1), kw(t, 2)
    if word == "all":
        # Back to the session-start values; denied in read because a read-only default set after
        # login would be undone.
        return Facts("session", "RESET ALL", "write", "resets every setting")
    if word == "role" or (word == "session" and nxt == "authorization"):
        return Facts("session", f"RESET {'ROLE' if word == 'role' else 'SESSION AUTHORIZATION'}", "admin",
                     "changes the session's identity")  # fmt: skip
    if word == "time" and nxt == "zone":
        return _setting("RESET", "timezone", [])
    if word == "transaction":
        return Facts("transaction", "RESET", "read")
    var, at = name_at(t, 1)
    if not var or at != len(t):
        return unparseable("expected RESET name", "RESET")
    return _setting("RESET", var, [])


_ON = frozenset({"on", "true", "yes", "1", "t", "tr", "tru", "y", "ye"})


def _setting(command: str, var: str, values: list[Token]) -> Facts:
    """SET var = values / RESET var (values empty); `var` compared case-insensitively, as the server does."""
    var = fold(var)
    default = not values or (len(values) == 1 and kw(values, 0) == "default")
    if var in ("client_encoding", "standard_conforming_strings"):
        return _lexing_setting(command, var, values, default)
    if var in ("default_transaction_read_only", "transaction_read_only"):
        return Facts("session", command, "write", f"changes {var}")
    if var in fn.ADMIN_SETTINGS or var.startswith(fn.ADMIN_SETTING_PREFIXES):
        return Facts("session", command, "admin", f"changes {var}")
    if "." in var:
        return Facts("session", command, "admin", f"changes custom setting {var} (row-level security may trust it)")
    if var == "search_path" and _demotes_pg_catalog(values):
        return Facts("session", command, "write", "lists pg_catalog after another schema")
    if var in fn.READ_SETTINGS:
        return Facts("session", command, "read")
    return Facts("session", command, "write", f"changes {var}")


def _demotes_pg_catalog(values: list[Token]) -> bool:
    """Whether a search_path names pg_catalog after another schema, or cannot be read.

    pg_catalog is searched first unless listed; listed later, an unqualified upper() could resolve to
    some other schema's upper(), and the read allowlist trusts unqualified built-in names.
    """
    names: list[str | None] = []
    for tok in values:
        if tok[0] == PUNCT and tok[1] == ",":
            continue
        if tok[0] == STRING:
            names.append(string_value(tok[1]))
        else:
            names.append(tok[1] if tok[0] in (IDENT, QIDENT) else None)
    return None in names or "pg_catalog" in names[1:]


def _lexing_setting(command: str, var: str, values: list[Token], default: bool) -> Facts:
    """client_encoding and standard_conforming_strings decide where strings end: a safe encoding / on.

    With SJIS or GBK a quote can hide inside a multibyte character; with standard_conforming_strings
    off, 'a\\' stops being a whole string. Either makes this lexer and the server disagree.
    DEFAULT/RESET return to the session-start value, which the front end pins (needs write).
    """
    if default:
        return Facts("session", command, "write", f"resets {var} to the session-start value")
    value = _single_value(values)
    if var == "client_encoding":
        why = encodings.refusal(value) if value is not None else "client_encoding must be a plain literal"
        if why is None:
            return Facts("session", command, "read")
        return Facts("session", command, "never", why)
    if value in _ON:
        return Facts("session", command, "read")
    return Facts("session", command, "never", f"{var} must stay on: other values let a quote hide from the parser")


def _single_value(values: list[Token]) -> str | None:
    """The ASCII-lowercased text of a one-token value (word, number or plain string), else None."""
    if len(values) != 1:
        return None
    kind, raw = values[0][0], values[0][1]
    if kind == STRING:
        text = string_value(raw)
        return None if text is None else fold(text)
    return raw if kind in (IDENT, NUMBER) else None


# --- set_config() ---------------------------------------------------------------------------------


def harmless_set_config(t: list[Token]) -> bool:
    """Whether every set_config() call names, as a plain literal, a setting that read scope may SET.

    Drivers do this on their own: asyncpg's type introspection runs `set_config('jit', 'off', false)`.
    Anything else (a computed name, role, session_authorization, ...) stays denied.
    """
    found = False
    for i in range(len(t) - 2):
        if t[i][0] in (IDENT, QIDENT) and t[i][1] == "set_config" and punct(t, i + 1, "("):
            raw = string_value(t[i + 2][1]) if t[i + 2][0] == STRING else None
            name = fold(raw) if raw is not None else ""
            # search_path is safe only for some values (pg_catalog first), which SET checks; not here.
            if raw is None or not punct(t, i + 3, ",") or name not in fn.READ_SETTINGS or name == "search_path":
                return False
            found = True
    return found


def lexing_calls(t: list[Token], *, at_bind: bool = False) -> str | None:
    """Why a set_config() call could change client_encoding or standard_conforming_strings, or None.

    Checked in every scope (admin too), like SET: the name and value must be plain literals. With `at_bind`,
    a value that is a parameter (`$2`) is left for the Bind message, where `bound` puts its value in its place
    and this runs again (a parameter whose value is not known then stays refused).
    """
    for i in range(len(t) - 2):
        if t[i][0] in (IDENT, QIDENT) and t[i][1] == "set_config" and punct(t, i + 1, "("):
            raw = string_value(t[i + 2][1]) if t[i + 2][0] == STRING else None
            if raw is None:
                if (why := _unknown_name_value(t, i + 2, at_bind)) is not None:
                    return why
                continue
            if not punct(t, i + 3, ","):
                return "set_config() with a setting name that is not a plain literal might change client_encoding"
            var = fold(raw)
            if var in ("client_encoding", "standard_conforming_strings"):
                value = t[i + 4 : i + 5] if punct(t, i + 5, ",") else []
                if value and value[0][0] == PARAM:
                    if at_bind:
                        continue
                    return _unknown_param(f"set_config('{var}', {value[0][1]}, ...)")
                facts = _lexing_setting("set_config", var, value, False)
                if facts.needs == "never":
                    return facts.reason
    return None


def _unknown_param(call: str) -> str:
    return (f"{call}: the parameter's value is not known here (only a text value of type unknown, text or varchar"
            " in a Bind message is checked), and it might make client_encoding or standard_conforming_strings"
            " unsafe")  # fmt: skip


# Statements in which every `$n` is a parameter of the Bind message: no function body, PREPARE or rule of their
# own that could give `$n` another meaning (CREATE FUNCTION ... BEGIN ATOMIC, PREPARE p AS ...).
BIND_COMMANDS = frozenset({"SELECT", "VALUES", "INSERT", "UPDATE", "DELETE", "MERGE", "DECLARE", "EXPLAIN"})


def bound(t: list[Token], values: Mapping[int, str | None]) -> list[Token]:
    """The statement as bound: each `$n` with a known value (None for NULL) as the literal that stands for it.

    The server hands set_config() a text parameter's value unchanged, as it would the same string literal,
    so lexing_calls() of the result judges the call that runs. A `$n` not in `values` stays a parameter.
    """
    out: list[Token] = []
    for tok in t:
        if tok[0] == PARAM and (n := int(tok[1][1:])) in values:
            value = values[n]
            if value is None:
                tok = (IDENT, "null", tok[2], tok[3])
            else:
                tok = (STRING, "'" + value.replace("'", "''") + "'", tok[2], tok[3])
        out.append(tok)
    return out


# Every spelling PostgreSQL's parse_bool reads as false: "off", "false", "no", "0" and their prefixes.
_OFF = frozenset({"0", "o", "of", "off", "n", "no"} | {"false"[:n] for n in range(1, 6)})


def _unknown_name_value(t: list[Token], at: int, at_bind: bool) -> str | None:
    """Why set_config(<computed name>, value, ...) could break the lexer, or None when no setting it names could.

    pg_dump 15.8+ runs `set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = ...`: the
    name is a column. Whatever it turns out to be, a literal value that is neither an encoding the lexer
    cannot follow nor a false boolean cannot make client_encoding or standard_conforming_strings unsafe (the
    server refuses the value for either), and a ParameterStatus turning either unsafe still ends the session.
    """
    j, depth = at, 0
    while j < len(t) and not (depth == 0 and punct(t, j, ",")):  # skip the name expression, nested calls too
        depth += punct(t, j, "(") - punct(t, j, ")")
        if depth < 0:
            break
        j += 1
    ends = punct(t, j + 2, ",") or punct(t, j + 2, ")")
    if ends and punct(t, j, ",") and t[j + 1][0] == PARAM:
        return None if at_bind else _unknown_param(f"set_config(<computed name>, {t[j + 1][1]}, ...)")
    value = string_value(t[j + 1][1]) if j + 1 < len(t) and t[j + 1][0] == STRING and punct(t, j, ",") else None
    if value is None or not ends:
        return "set_config() with a computed setting name and a computed value might change client_encoding"
    if (encodings.canonical(value) is not None and encodings.codec(value) is None) or fold(value.strip()) in _OFF:
        return (f"set_config() with a computed setting name and the value {value[:40]!r} might make client_encoding"
                " or standard_conforming_strings unsafe")  # fmt: skip
    return None
