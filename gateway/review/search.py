"""Search recordings for statements and commands: which session ran what, and when.

Looked at, per recording kind:

* ``statements`` (SQL JSON lines): the ``sql`` of every ``statement`` event and each of its bind
  parameters, whole: a parameter too long for its line is read from the recording's sidecar.
* ``asciicast`` (SSH terminal) and ``binary`` (exec without a terminal): the command lines enforcement
  judged, exactly as judged (``command:`` markers: typed lines, stdin lines of a shell, exec commands).
  Only a recording without any such marker has its typed lines rebuilt from its input and output, with
  the front end's own terminal model (`gateway.terminal`).

Hit texts are neutralised: they are printed to a reviewer's terminal.

Regular expressions are RE2's (gateway/linearre.py), not Python's `re`: RE2 matches in time linear in the text and
holds no lock meanwhile, where `re` backtracks (`(a+)+$` over a long run of a's takes longer than the age
of the universe) holding the interpreter's lock, so every session of the process would stall with the
search. RE2 has no backreferences or lookaround; a pattern with them is refused, saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.linearre import SYNTAX, compile_linear
from gateway.recording import RecordingError
from gateway.recording.reader import commands, statements, terminal_events
from gateway.recording.schema import Statement
from gateway.recording.sidecar import read_value
from gateway.review.sanitize import neutralise
from gateway.terminal import rebuild

_KINDS = {
    "statements": "statements", "sql": "statements", "pg": "statements", "postgres": "statements",
    "jsonl": "statements",
    "asciicast": "asciicast", "ssh": "asciicast", "cast": "asciicast", "tty": "asciicast",
    "binary": "binary", "exec": "binary", "bin": "binary",
}  # fmt: skip


@dataclass(frozen=True)
class Hit:
    """One match: the session, seconds since its start, what matched, and where it came from."""

    session_id: str
    t: float
    text: str
    kind: str  # statement | parameter | command | input


Span = tuple[int, int]
_CONTEXT = 120  # characters shown either side of a match inside a long value


def compile_regex(pattern: str, ignore_case: bool = False) -> Any:
    """`pattern` as an RE2 expression; ValueError saying why when RE2 does not take it."""
    try:
        return compile_linear(pattern, ignore_case=ignore_case)
    except ValueError as exc:
        raise ValueError(f"not a regular expression the search takes: {exc} ({SYNTAX})") from None


def _matcher(pattern: str, regex: bool, ignore_case: bool) -> Callable[[str], Span | None]:
    """A function giving where one search pattern first matches a text (None: nowhere)."""
    if regex:
        compiled = compile_regex(pattern, ignore_case)

        def find_re(text: str) -> Span | None:
            m = compiled.search(text)
            return m.span() if m is not None else None

        return find_re
    folded = pattern.casefold() if ignore_case else pattern

    def find(text: str) -> Span | None:
        hay = text.casefold() if ignore_case else text
        i = hay.find(folded)
        # casefold can change lengths (ß -> ss): the span is then approximate, good enough to cut a window.
        return (i, i + len(folded)) if i >= 0 else None

    return find


def _window(text: str, span: Span) -> str:
    """The match with some context, elisions marked (a long parameter is not printed whole)."""
    start, end = max(0, span[0] - _CONTEXT), min(len(text), span[1] + _CONTEXT)
    return ("\u2026" if start else "") + text[start:end] + ("\u2026" if end < len(text) else "")


def _param_values(path: Path, st: Statement) -> Iterator[tuple[int, str]]:
    """(index, whole value) of a statement's bind parameters; long ones from the sidecar."""
    long = {e.index: e for e in st.long_params}
    for i, shown in enumerate(st.params or ()):
        entry = long.get(i)
        raw: bytes | None = None
        if entry is not None and entry.offset is not None:
            raw = read_value(path, entry.offset, entry.size)
        if raw is not None and entry is not None and not entry.binary:
            yield i, raw.decode("utf-8", "replace")
            continue
        if raw is None:
            if not shown.startswith("\\x") or "\u2026" in shown:
                yield i, shown
                continue
            try:
                raw = bytes.fromhex(shown[2:])
            except ValueError:
                yield i, shown
                continue
        # Binary format (asyncpg sends even text binary): searched as hex and as the text it may be.
        yield i, "\\x" + raw.hex()
        yield i, raw.decode("utf-8", "replace")


def _statement_hits(session_id: str, path: Path, find: Callable[[str], Span | None]) -> Iterator[Hit]:
    """Matching statement texts and bind parameters of a SQL recording (lines that do not parse are skipped)."""
    for st in statements(path):
        sql = st.sql
        span = find(sql)
        if span is not None:
            yield Hit(session_id, st.t, sql if len(sql) <= 4 * _CONTEXT else _window(sql, span), "statement")
        for i, value in _param_values(path, st):
            span = find(value)
            if span is not None:
                yield Hit(session_id, st.t, f"${i + 1} = {_window(value, span)}  -- in: {sql[:200]}", "parameter")


def _commands(session_id: str, path: Path) -> Iterator[Hit]:
    """The command lines enforcement judged in a terminal or exec recording: its ``command:`` markers.

    A recording with no such marker (not made by this gateway's SSH front end) has its typed lines rebuilt
    from its input and output by the same terminal model the front end judges with.
    """
    judged = [Hit(session_id, t, line, "command") for t, line in commands(path)]
    if judged:
        yield from judged
        return
    for t, enter in rebuild(terminal_events(path, [])):
        if enter.line.strip():
            yield Hit(session_id, t, enter.line, "input")


def search(
    recordings: Iterable[tuple[str, Path, str]],
    pattern: str,
    *,
    regex: bool = False,
    ignore_case: bool = False,
) -> Iterator[Hit]:
    """Statements and commands matching `pattern` in (session_id, path, kind) recordings, in order.

    A recording that is missing or unreadable is skipped (the audit check reports those). A regular
    expression RE2 does not take raises ValueError (see compile_regex) before any recording is read.
    """
    find = _matcher(pattern, regex, ignore_case)
    for session_id, path, kind in recordings:
        fmt = _KINDS.get(kind.lower())
        if fmt is None:
            raise ValueError(f"unknown recording kind {kind!r}")
        source = (
            _statement_hits(session_id, path, find)
            if fmt == "statements"
            else (h for h in _commands(session_id, path) if find(h.text) is not None)
        )
        try:
            for hit in source:
                yield Hit(hit.session_id, hit.t, neutralise(hit.text), hit.kind)
        except (OSError, RecordingError):
            continue
