"""A Postgres lexer: statement boundaries, comments and literals exactly as the server sees them.

Why not sqlglot's tokenizer: sql.inspector's security rests on finding the same statements the server
will run. Every construct that can hide a `;` or a keyword follows scan.l (PostgreSQL 16) here:
nested /* */ comments, -- comments (also when they cut an operator short), '' and E'' strings
(backslash escapes only in E''), quote continuation across newlines, B''/X''/N''/U&'' strings,
$tag$ dollar quotes, "" identifiers, U&"" identifiers and U&'' strings with their UESCAPE clause
(decoded here as the server's parser.c does, so every later check sees the real name), and
identifiers that may contain `$` and any non-ASCII character (so U+00A0 is part of a word, not a
space). Only ASCII letters are case-folded, as the
server does. It assumes standard_conforming_strings=on and an ASCII-safe client encoding (text
already decoded from it: pg/encodings), which sql.inspector refuses to let a session change.

Tokens are plain tuples (kind, value, start, end) for speed: the fingerprint is computed on every
statement of every query.
"""

from __future__ import annotations

import re
from collections.abc import Callable

IDENT = "i"  # value: ASCII-lowercased
QIDENT = "q"  # value: the name, quotes removed and "" undone
UIDENT = "u"  # no longer produced: U&"..." is decoded into a QIDENT (kept for the classifier's stray check)
STRING = "s"  # value as written, prefix and quotes included
NUMBER = "n"
PARAM = "p"  # $1
OP = "o"
PUNCT = "c"  # , ( ) [ ] ; : . :: := ..
OTHER = "x"  # a character the server's grammar rejects

Token = tuple[str, str, int, int]

_ID = "A-Za-z_\x80-\U0010ffff"
_DIGITS = r"[0-9](?:_?[0-9])*+"
_NUMBER = (
    r"0[xX](?:_?[0-9A-Fa-f])++|0[oO](?:_?[0-7])++|0[bB](?:_?[01])++"
    rf"|(?:{_DIGITS}(?:\.(?!\.)(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][-+]?{_DIGITS})?"
)
# Leading whitespace is absorbed into every token's match (one regex call per token on the hot path);
# each alternative is exactly one capturing group, so m.lastindex is the token's group. Order matters
# only where alternatives overlap, and is otherwise by frequency: names first (but E'', B'', X'',
# N'', U&'' and U&"" start like names), "--" and "/*" before operators, "." after numbers (.5).
_TOKEN = re.compile(
    r"[ \t\n\r\f\v]*+(?:"
    rf"(?P<id>(?![eEbBxXnN]')(?![uU]&['\"])[{_ID}][{_ID}0-9$]*+)"
    r"|(?P<ws>--[^\n\r]*+)"
    r"|(?P<bc>/\*)"
    r"|(?P<pc2>::|:=|\.\.)"
    rf"|(?P<num>{_NUMBER})"
    r"|(?P<pc>[,()\[\];:.])"
    r"|(?P<op>[~!@#^&|`?+\-*/%<>=]++)"
    r"|(?P<xq>(?:[nN]|[uU]&)?')"
    r"|(?P<xe>[eE]')"
    r"|(?P<xb>[bBxX]')"
    r'|(?P<xui>[uU]&"[^"]*+(?:""[^"]*+)*+")'
    rf"|(?P<dq>\$(?:[{_ID}][{_ID}0-9]*+)?\$)"
    r"|(?P<param>\$[0-9]++)"
    r'|(?P<qi>"[^"]*+(?:""[^"]*+)*+")'
    r"|(?P<other>.))",
    re.DOTALL,
)
_BODY = {
    "xq": re.compile(r"[^']*+(?:''[^']*+)*+'"),
    "xe": re.compile(r"(?:[^'\\]++|\\.|'')*+'", re.DOTALL),
    "xb": re.compile(r"[^']*+'"),
}
# scan.l's quotecontinue: 'a'<newline>'b' is the one literal 'ab'; -- comments may sit in between.
_QUOTE_CONTINUE = re.compile(r"(?:[ \t\f\v]|--[^\n\r]*+)*+[\n\r](?:[ \t\n\r\f\v]|--[^\n\r]*+[\n\r])*+'")
_COMMENT_EDGE = re.compile(r"/\*|\*/")
_NON_SQL_OP = frozenset("~!@#^&|`?%")
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class LexError(ValueError):
    """The server would reject the text before running any of it (unterminated quote or comment)."""


def fold(word: str) -> str:
    """Lowercase ASCII letters only, as the server folds unquoted identifiers in UTF8."""
    return word.lower() if word.isascii() else word.translate(_LOWER)


def _name(word: str) -> str:
    """An identifier as the server keeps it: at most NAMEDATALEN-1 = 63 bytes, whole characters."""
    if len(word) <= 15 or len(word.encode()) <= 63:
        return word
    return word.encode()[:63].decode(errors="ignore")


def tokenize(sql: str) -> list[Token]:
    """All tokens of `sql`, comments and whitespace dropped; raises LexError where the server would."""
    toks: list[Token] = []
    append = toks.append
    match = _TOKEN.match
    pos, n = 0, len(sql)
    unicode = False  # some U&"" or U&'' needs decoding: a pass of its own, off the hot path
    while pos < n:
        m = match(sql, pos)
        if m is None:  # only whitespace left: every other character matches some alternative
            break
        kind, end = m.lastgroup, m.end()
        pos = m.start(m.lastindex or 0)
        if kind == "id":  # the hot path: fold() and _name() inlined
            word = sql[pos:end]
            word = word.lower() if word.isascii() else word.translate(_LOWER)
            append((IDENT, word if end - pos <= 15 else _name(word), pos, end))
        elif kind == "ws":
            pass
        elif kind == "num":
            append((NUMBER, sql[pos:end], pos, end))
        elif kind == "pc" or kind == "pc2":
            append((PUNCT, sql[pos:end], pos, end))
        elif kind == "op":
            if end - pos > _SHORT_RUN:
                end = _long_operator_run(sql, pos, end, append)
            else:
                end = pos + _operator_length(sql[pos:end])
                append((OP, sql[pos:end], pos, end))
        elif kind == "xq" or kind == "xe" or kind == "xb":
            end = _string_end(sql, end, kind)
            append((STRING, sql[pos:end], pos, end))
            unicode = unicode or sql[pos] in "uU"
        elif kind == "bc":
            end = _comment_end(sql, end)
        else:
            tok = _rare(sql, pos, end, kind)
            end = tok[3]
            append(tok)
            unicode = unicode or kind == "xui"
        pos = end
    return _decode_unicode(toks) if unicode else toks


def _rare(sql: str, pos: int, end: int, kind: str | None) -> Token:
    """Dollar quotes, parameters, quoted identifiers and stray characters."""
    if kind == "dq":
        close = sql.find(sql[pos:end], end)
        if close < 0:
            raise LexError("unterminated dollar-quoted string")
        end = close + (end - pos)
        return (STRING, sql[pos:end], pos, end)
    if kind == "qi":
        if end - pos == 2:
            raise LexError("zero-length delimited identifier")
        return (QIDENT, _name(sql[pos + 1 : end - 1].replace('""', '"')), pos, end)
    if kind == "param":
        return (PARAM, sql[pos:end], pos, end)
    if kind == "xui":
        if end - pos == 4:
            raise LexError("zero-length delimited identifier")
        return (UIDENT, sql[pos:end], pos, end)  # decoded by _decode_unicode, with its UESCAPE
    if sql[pos] == '"':
        raise LexError("unterminated quoted identifier")
    return (OTHER, sql[pos:end], pos, end)


def _comment_end(sql: str, pos: int) -> int:
    """End of a /* comment whose opener ends at `pos`; comments nest, as in the server."""
    depth = 1
    for m in _COMMENT_EDGE.finditer(sql, pos):
        depth += 1 if m.group() == "/*" else -1
        if depth == 0:
            return m.end()
    raise LexError("unterminated /* comment")


def _string_end(sql: str, pos: int, kind: str) -> int:
    """End of a string literal whose opening quote ends at `pos`, following quote continuations."""
    body = _BODY[kind]
    while True:
        m = body.match(sql, pos)
        if m is None:
            raise LexError("unterminated quoted string")
        cont = _QUOTE_CONTINUE.match(sql, m.end())
        if cont is None:
            return m.end()
        pos = cont.end()


def _operator_length(op: str) -> int:
    """How much of a run of operator characters the server takes as one operator (scan.l rules)."""
    n = len(op)
    for cut in (op.find("/*", 1), op.find("--", 1)):
        if 0 < cut < n:
            n = cut
    # "=-" is "=" then "-" unless the operator holds a character SQL operators never use.
    if n > 1 and op[n - 1] in "+-" and not _NON_SQL_OP.intersection(op[: n - 1]):
        while n > 1 and op[n - 1] in "+-":
            n -= 1
    return n


_SHORT_RUN = 64


def _long_operator_run(sql: str, pos: int, end: int, append: Callable[[Token], None]) -> int:
    """Split a long run of operator characters in one pass (re-matching it per token is quadratic).

    Same result as applying _operator_length token after token; stops where a comment starts.
    """
    run = sql[pos:end]
    n = len(run)
    cut = [n] * (n + 1)  # cut[i]: first index >= i where "/*" or "--" starts
    non_sql = [n] * (n + 1)  # non_sql[i]: first index >= i holding a character of _NON_SQL_OP
    for i in range(n - 1, -1, -1):
        cut[i] = i if run.startswith(("/*", "--"), i) else cut[i + 1]
        non_sql[i] = i if run[i] in _NON_SQL_OP else non_sql[i + 1]
    keep = [-1] * (n + 1)  # keep[i]: last index < i not holding "+" or "-"
    for i in range(1, n + 1):
        keep[i] = i - 1 if run[i - 1] not in "+-" else keep[i - 1]
    s = 0
    while s < n and cut[s] != s:
        e = cut[s + 1]
        if e - s > 1 and run[e - 1] in "+-" and non_sql[s] >= e - 1:
            e = max(keep[e] + 1, s + 1)
        append((OP, run[s:e], pos + s, pos + e))
        s = e
    return pos + s


def split(toks: list[Token]) -> list[tuple[int, int]]:
    """Token index ranges of the statements, `;` excluded and empty statements dropped."""
    out: list[tuple[int, int]] = []
    first = 0
    for i, tok in enumerate(toks):
        if tok[0] == PUNCT and tok[1] == ";":
            if i > first:
                out.append((first, i))
            first = i + 1
    if first < len(toks):
        out.append((first, len(toks)))
    return out


def keeps_literals(toks: list[Token], lo: int, hi: int, maybe_set_config: bool = True) -> bool:
    """Whether a statement's decision may depend on its literals: SET x = '...' and set_config(...).

    `maybe_set_config=False` says the text cannot name set_config at all (a cheap substring test).
    """
    if toks[lo][0] == IDENT and toks[lo][1] == "set":
        return True
    return maybe_set_config and any(t[1] == "set_config" and t[0] in (IDENT, QIDENT) for t in toks[lo:hi])


def render(toks: list[Token], lo: int, hi: int, keep: bool) -> str:
    """One statement's fingerprint: tokens joined by spaces, literals `'?'` and `?` unless `keep`.

    The form is injective on token sequences (a lone `?` is a number; operator `?`s are doubled),
    so two texts with the same fingerprint differ only in literal values.
    """
    parts: list[str] = []
    add = parts.append
    for kind, value, _, _ in toks[lo:hi]:
        if kind == IDENT or kind == PUNCT:
            add(value)
        elif kind == STRING:
            add(value if keep else "'?'")
        elif kind == NUMBER:
            add(value if keep else "?")
        elif kind == QIDENT:
            add('"' + value.replace('"', '""') + '"')
        elif kind == OP and "?" in value:
            add(value.replace("?", "??"))
        else:
            add(value)
    return " ".join(parts)


def parse_text(toks: list[Token], lo: int, hi: int) -> tuple[str, dict[int, int]]:
    """Text for sqlglot with every literal replaced by a fixed one, and char offset -> token index.

    sqlglot never sees the user's literals, comments or quoting tricks, so what it parses is a
    function of the fingerprint alone, and its tokenizer's differences from the server's cannot matter.
    """
    parts: list[str] = []
    where: dict[int, int] = {}
    at = 0
    for i in range(lo, hi):
        kind, value, _, _ = toks[i]
        if kind == STRING:
            piece = "'x'"
        elif kind == NUMBER:
            piece = "1"
        elif kind == QIDENT:
            piece = '"' + value.replace('"', '""') + '"'
        elif kind == IDENT and _array_type_at(toks, i, lo, hi):
            # `::oid[]`: sqlglot reads an array of a type it does not know (oid, regclass, name...) as
            # a subscript and fails. Which type it is decides no table, function or kind, so any known
            # one stands in (asyncpg's type introspection casts `$1::oid[]`).
            piece = "int"
        else:
            piece = value
        where[at] = i
        parts.append(piece)
        at += len(piece) + 1
    return " ".join(parts), where


def _array_type_at(toks: list[Token], i: int, lo: int, hi: int) -> bool:
    """Whether token i is the element type in `::type[]` or `CAST(... AS type[])`."""
    if i + 2 >= hi or i - 1 < lo:
        return False
    before = toks[i - 1]
    cast = (before[0] == PUNCT and before[1] == "::") or (before[0] == IDENT and before[1] == "as")
    return cast and toks[i + 1][:2] == (PUNCT, "[") and toks[i + 2][:2] == (PUNCT, "]")


def string_value(raw: str) -> str | None:
    """The value of a string literal token: '', N'', E'' (escapes decoded), $tag$; None for B''/X''.

    U&'' tokens reach here already decoded (tokenize rewrites them as plain ''). None too where the
    server would reject the value (an E'' whose bytes are not UTF-8): the caller then fails closed.
    """
    first = raw[:1]
    if first == "$":
        tag = raw.index("$", 1) + 1
        return raw[tag:-tag]
    if first == "'" or first in "nN":
        return "".join(_segments(raw[raw.index("'") :], "xq")).replace("''", "'")
    if first in "eE":
        return unescape_e("".join(_segments(raw[1:], "xe")))
    return None


def _segments(quoted: str, kind: str) -> list[str]:
    """The bodies of a string and its quote continuations ('a'<newline>'b'), quotes removed."""
    body = _BODY[kind]
    out: list[str] = []
    pos = 1
    while True:
        m = body.match(quoted, pos)
        if m is None:  # tokenize made the token, so it is whole
            raise LexError("unterminated quoted string")
        out.append(quoted[pos : m.end() - 1])
        cont = _QUOTE_CONTINUE.match(quoted, m.end())
        if cont is None:
            return out
        pos = cont.end()


_E_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))|''", re.DOTALL)
_E_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def unescape_e(body: str) -> str | None:
    """An E'' string's body decoded as scan.l does (octal/hex bytes, \\u/\\U code points); None if invalid."""
    out = bytearray()
    pos = 0
    high = 0  # a pending UTF-16 high surrogate
    for m in _E_ESCAPE.finditer(body):
        if high and (m.start() != pos or m.group(3) is None):
            return None  # a high surrogate must be followed at once by a low one
        out += body[pos : m.start()].encode()
        pos = m.end()
        octal, hexa, u4, u8, other = m.groups()
        if m.group() == "''":
            out += b"'"
        elif octal is not None:
            out.append(int(octal, 8) & 0xFF)
        elif hexa is not None:
            out.append(int(hexa, 16))
        elif u4 is not None or u8 is not None:
            cp = int(u4 or u8, 16)
            if high:
                if not 0xDC00 <= cp <= 0xDFFF:
                    return None
                cp, high = 0x10000 + ((high - 0xD800) << 10) + (cp - 0xDC00), 0
            elif 0xD800 <= cp <= 0xDBFF:
                high = cp
                continue
            if not 0 < cp <= 0x10FFFF or 0xDC00 <= cp <= 0xDFFF:
                return None
            out += chr(cp).encode()
        elif other in "uU":
            return None  # scan.l's xeunicodefail: \u without four hex digits is an error
        else:
            out += _E_SIMPLE.get(other, other).encode()
    if high:
        return None
    out += body[pos:].encode()
    try:
        text = out.decode()
    except UnicodeDecodeError:  # the server refuses invalid bytes in the server encoding
        return None
    return None if "\x00" in text else text


# --- U&"..." and U&'...' (PostgreSQL 16 parser.c: base_yylex and str_udeescape) -------------------

_HEX = frozenset("0123456789abcdefABCDEF")


def _decode_unicode(toks: list[Token]) -> list[Token]:
    """Decode every U&"" / U&'' token, folding a following `UESCAPE 'c'` into it.

    U&"" becomes a QIDENT holding the name (not case-folded, cut to 63 bytes: the server's rules),
    U&'' a plain '' STRING of its value; so names and values are judged as the server reads them.
    """
    out: list[Token] = []
    i, n = 0, len(toks)
    while i < n:
        kind, raw, start, end = toks[i]
        if not (kind == UIDENT or (kind == STRING and raw[:1] in "uU")):
            out.append(toks[i])
            i += 1
            continue
        escape = "\\"
        if i + 1 < n and toks[i + 1][0] == IDENT and toks[i + 1][1] == "uescape":
            given = string_value(toks[i + 2][1]) if i + 2 < n and toks[i + 2][0] == STRING else None
            if given is None or toks[i + 2][1][:1] in "uUbBxXnN":
                raise LexError("UESCAPE must be followed by a simple string literal")
            if len(given) != 1 or given in _HEX or given in "+'\" \t\n\r\f\v":
                raise LexError("invalid Unicode escape character")
            escape, end = given, toks[i + 2][3]
            i += 2
        i += 1
        if kind == UIDENT:
            name = _udeescape(raw[3:-1].replace('""', '"'), escape)
            out.append((QIDENT, _name(name), start, end))
        else:
            value = _udeescape("".join(_segments(raw[2:], "xq")).replace("''", "'"), escape)
            out.append((STRING, "'" + value.replace("'", "''") + "'", start, end))
    return out


def _udeescape(body: str, escape: str) -> str:
    """`\\XXXX`, `\\+XXXXXX` and `\\\\` (with `escape` for the backslash) decoded; LexError as the server."""
    if escape not in body:
        return body
    out: list[str] = []
    pos, n = 0, len(body)
    high = 0
    while pos < n:
        c = body[pos]
        if c != escape:
            if high:
                raise LexError("invalid Unicode surrogate pair")
            out.append(c)
            pos += 1
            continue
        if body.startswith(escape, pos + 1):
            if high:
                raise LexError("invalid Unicode surrogate pair")
            out.append(escape)
            pos += 2
            continue
        if all(ch in _HEX for ch in body[pos + 1 : pos + 5]) and pos + 5 <= n:
            cp, pos = int(body[pos + 1 : pos + 5], 16), pos + 5
        elif body[pos + 1 : pos + 2] == "+" and pos + 8 <= n and all(ch in _HEX for ch in body[pos + 2 : pos + 8]):
            cp, pos = int(body[pos + 2 : pos + 8], 16), pos + 8
        else:
            raise LexError("invalid Unicode escape")
        if high:
            if not 0xDC00 <= cp <= 0xDFFF:
                raise LexError("invalid Unicode surrogate pair")
            cp, high = 0x10000 + ((high - 0xD800) << 10) + (cp - 0xDC00), 0
        elif 0xD800 <= cp <= 0xDBFF:
            high = cp
            continue
        elif 0xDC00 <= cp <= 0xDFFF:
            raise LexError("invalid Unicode surrogate pair")
        if not 0 < cp <= 0x10FFFF:
            raise LexError("invalid Unicode escape value")
        out.append(chr(cp))
    if high:
        raise LexError("invalid Unicode surrogate pair")
    return "".join(out)


# --- helpers over a statement's tokens ----------------------------------------------------------


def kw(t: list[Token], i: int) -> str:
    """The keyword at i (unquoted identifiers only: "select" in quotes is a name), or ""."""
    return t[i][1] if i < len(t) and t[i][0] == IDENT else ""


def punct(t: list[Token], i: int, text: str) -> bool:
    """Whether token i is the punctuation or operator `text`."""
    return i < len(t) and t[i][0] in (PUNCT, OP) and t[i][1] == text


def close_paren(t: list[Token], i: int) -> int:
    """Index of the ")" matching the "(" at i, or -1."""
    depth = 0
    for j in range(i, len(t)):
        kind, value = t[j][0], t[j][1]
        if kind == PUNCT and value in ("(", ")"):
            depth += 1 if value == "(" else -1
            if depth == 0:
                return j
    return -1


def find_kw(t: list[Token], start: int, word: str) -> int:
    """First index >= start, outside parentheses, holding keyword `word`; -1 if none."""
    depth = 0
    for j in range(start, len(t)):
        if t[j][0] == PUNCT and t[j][1] in ("(", ")"):
            depth += 1 if t[j][1] == "(" else -1
        elif depth == 0 and t[j][0] == IDENT and t[j][1] == word:
            return j
    return -1


def qualified_name(t: list[Token], i: int) -> str:
    """The dotted name ending at token i (`pg_catalog.set_config`)."""
    parts = [t[i][1]]
    while i >= 2 and punct(t, i - 1, ".") and t[i - 2][0] in (IDENT, QIDENT, UIDENT):
        i -= 2
        parts.append(t[i][1])
    return ".".join(reversed(parts))


def name_at(t: list[Token], i: int) -> tuple[str, int]:
    """The dotted name starting at i and the index after it; ("", i) if there is none."""
    if i >= len(t) or t[i][0] not in (IDENT, QIDENT, UIDENT):
        return "", i
    parts = [t[i][1]]
    i += 1
    while punct(t, i, ".") and i + 1 < len(t) and t[i + 1][0] in (IDENT, QIDENT, UIDENT):
        parts.append(t[i + 1][1])
        i += 2
    return ".".join(parts), i
