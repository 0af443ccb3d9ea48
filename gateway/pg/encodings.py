"""Client encodings: which ones the gateway lets a session use, and how it reads statement bytes in each.

The inspector's lexer looks only at ASCII characters for structure (quotes, `;`, comments, `$`,
backslashes, keywords); every non-ASCII character is part of a name or literal. That is sound exactly
when a byte below 0x80 is always that ASCII character, never part of a multi-byte one. It is not in
SJIS, SHIFT_JIS_2004, BIG5, GBK, GB18030, UHC and JOHAB, where the second byte of a character may be an
ASCII byte such as 0x5C (a backslash, in E'' it escapes the quote after it): the server and the parser
would then end a string in different places. Those are refused (and any name PostgreSQL does not know).
In every other server-supported client encoding (single-byte ones, EUC_*, UTF8) bytes >= 0x80 only ever
form non-ASCII characters, so any of them splits a text into the same statements with the same ASCII
names whichever of them is used to decode it; the session's own encoding is used so that non-ASCII names
(a sensitive table, a policy rule) are the real ones. EUC_TW and MULE_INTERNAL are safe in that sense
but Python has no codec for them: refused.

Names (portal, prepared statement) in protocol messages stay UTF-8 in every encoding: they are keys the
relay matches between Parse, Bind, Execute and Close, and must be decoded one way everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from gateway.pg.codec import ProtocolError
from gateway.pg.fastdecode import decode_query as decode_query_utf8
from gateway.pg.messages import Parse

__all__ = ["UNSAFE", "canonical", "codec", "parse_decoder", "query_decoder", "refusal"]

# PostgreSQL's canonical name -> the Python codec that decodes it. SQL_ASCII: the server does no
# conversion and no validation, bytes >= 0x80 are opaque; latin-1 maps each byte to one character, so
# every ASCII byte stays itself and every other byte becomes a non-ASCII character, which is all the
# lexer needs (the server, too, only gives meaning to the ASCII bytes).
_CODECS = {
    "UTF8": "utf-8", "SQL_ASCII": "latin-1",
    "LATIN1": "latin-1", "LATIN2": "iso8859-2", "LATIN3": "iso8859-3", "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9", "LATIN6": "iso8859-10", "LATIN7": "iso8859-13", "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15", "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6", "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866", "WIN874": "cp874", "WIN1250": "cp1250", "WIN1251": "cp1251", "WIN1252": "cp1252",
    "WIN1253": "cp1253", "WIN1254": "cp1254", "WIN1255": "cp1255", "WIN1256": "cp1256", "WIN1257": "cp1257",
    "WIN1258": "cp1258", "KOI8R": "koi8-r", "KOI8U": "koi8-u",
    "EUC_JP": "euc_jp", "EUC_JIS_2004": "euc_jis_2004", "EUC_CN": "gb2312", "EUC_KR": "euc_kr",
}  # fmt: skip
UNSAFE = frozenset({"SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "GB18030", "UHC", "JOHAB"})
_NO_CODEC = frozenset({"EUC_TW", "MULE_INTERNAL"})

# PostgreSQL's encoding names and aliases (encnames.c), as clean_encoding_name leaves them.
_ALIASES = {
    "abc": "WIN1258", "alt": "WIN866", "big5": "BIG5", "euccn": "EUC_CN", "eucjis2004": "EUC_JIS_2004",
    "eucjp": "EUC_JP", "euckr": "EUC_KR", "euctw": "EUC_TW", "gb18030": "GB18030", "gbk": "GBK",
    "iso88591": "LATIN1", "iso885910": "LATIN6", "iso885913": "LATIN7", "iso885914": "LATIN8",
    "iso885915": "LATIN9", "iso885916": "LATIN10", "iso88592": "LATIN2", "iso88593": "LATIN3",
    "iso88594": "LATIN4", "iso88595": "ISO_8859_5", "iso88596": "ISO_8859_6", "iso88597": "ISO_8859_7",
    "iso88598": "ISO_8859_8", "iso88599": "LATIN5", "johab": "JOHAB", "koi8": "KOI8R", "koi8r": "KOI8R",
    "koi8u": "KOI8U", "latin1": "LATIN1", "latin2": "LATIN2", "latin3": "LATIN3", "latin4": "LATIN4",
    "latin5": "LATIN5", "latin6": "LATIN6", "latin7": "LATIN7", "latin8": "LATIN8", "latin9": "LATIN9",
    "latin10": "LATIN10", "mskanji": "SJIS", "muleinternal": "MULE_INTERNAL", "shiftjis": "SJIS",
    "shiftjis2004": "SHIFT_JIS_2004", "sjis": "SJIS", "sqlascii": "SQL_ASCII", "tcvn": "WIN1258",
    "tcvn5712": "WIN1258", "uhc": "UHC", "unicode": "UTF8", "utf8": "UTF8", "vscii": "WIN1258",
    "win": "WIN1251", "win1250": "WIN1250", "win1251": "WIN1251", "win1252": "WIN1252", "win1253": "WIN1253",
    "win1254": "WIN1254", "win1255": "WIN1255", "win1256": "WIN1256", "win1257": "WIN1257",
    "win1258": "WIN1258", "win866": "WIN866", "win874": "WIN874", "win932": "SJIS", "win936": "GBK",
    "win949": "UHC", "win950": "BIG5", "windows1250": "WIN1250", "windows1251": "WIN1251",
    "windows1252": "WIN1252", "windows1253": "WIN1253", "windows1254": "WIN1254", "windows1255": "WIN1255",
    "windows1256": "WIN1256", "windows1257": "WIN1257", "windows1258": "WIN1258", "windows866": "WIN866",
    "windows874": "WIN874", "windows932": "SJIS", "windows936": "GBK", "windows949": "UHC", "windows950": "BIG5",
}  # fmt: skip
_CLEAN = re.compile(r"[^A-Za-z0-9]")


def canonical(name: str) -> str | None:
    """PostgreSQL's name for an encoding as a client may spell it ('utf-8', "'Latin1'"), or None if unknown."""
    return _ALIASES.get(_CLEAN.sub("", name).lower())


def codec(name: str) -> str | None:
    """The Python codec for a client encoding the gateway allows, or None if it refuses that encoding."""
    pg = canonical(name)
    return _CODECS.get(pg) if pg is not None else None


def refusal(name: str) -> str | None:
    """Why a client encoding is refused (None: allowed)."""
    pg = canonical(name)
    if pg in _CODECS:
        return None
    if pg in UNSAFE:
        return f"client_encoding {pg} is not allowed: in it a quote can hide inside a multi-byte character"
    if pg in _NO_CODEC:
        return f"client_encoding {pg} is not allowed: the gateway cannot decode it"
    return f"client_encoding {name[:40]!r} is not an encoding the gateway knows"


def _invalid(pg: str) -> ProtocolError:
    return ProtocolError(f"invalid byte sequence for encoding {pg}", "22021")


def query_decoder(name: str) -> Callable[[bytes, int, int], str]:
    """A decoder for the SQL of the Query message at chunk[start:end] in encoding `name` (allowed)."""
    py = codec(name)
    if py is None or py == "utf-8":
        return decode_query_utf8
    pg = canonical(name) or name

    def decode(chunk: bytes, start: int, end: int) -> str:
        nul = chunk.find(0, start + 5, end)
        if nul != end - 1:
            raise ProtocolError("malformed Query message")
        try:
            return chunk[start + 5 : nul].decode(py)
        except UnicodeDecodeError:
            raise _invalid(pg) from None

    return decode


def parse_decoder(name: str) -> Callable[[bytes], Parse]:
    """A decoder for Parse bodies in encoding `name` (allowed): the SQL in it, the name as UTF-8 (see above)."""
    py = codec(name)
    if py is None or py == "utf-8":
        return Parse.decode
    pg = canonical(name) or name

    def decode(body: bytes) -> Parse:
        i = body.find(0)
        j = body.find(0, i + 1) if i >= 0 else -1
        if j < 0:
            raise ProtocolError("unterminated string in message")
        shape = Parse.decode(body[: i + 1] + b"\0" + body[j + 1 :])  # the name and types, checked as ever
        try:
            sql = body[i + 1 : j].decode(py)
        except UnicodeDecodeError:
            raise _invalid(pg) from None
        return Parse(shape.name, sql, shape.param_types)

    return decode
