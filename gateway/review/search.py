"""Search recordings for statements and commands: which session ran what, and when.

Looked at, per recording kind:

* ``statements`` (SQL JSON lines): the ``sql`` of every ``statement`` event and each of its bind
  parameters, whole: a parameter too long for its line is read from the recording's sidecar.
* ``asciicast`` (SSH terminal): markers labelled ``command: ...`` (the SSH front end's command lines)
  and the lines typed on input, rebuilt from keystrokes (backspace, Ctrl-U/W/C, arrows, paste).
* ``binary`` (exec without a terminal): its ``command: ...`` markers and the lines of its stdin
  (``ssh host sh -s < script`` carries the commands there).

Hit texts are neutralised: they are printed to a reviewer's terminal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.recording import RecordingError, schema
from gateway.recording.reader import statements, terminal_events
from gateway.recording.schema import Statement
from gateway.recording.sidecar import read_value
from gateway.review.sanitize import neutralise

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


class InputLines:
    """Rebuild typed lines from a terminal's input stream (a readline-like model, not a shell)."""

    def __init__(self) -> None:
        self._chars: list[str] = []
        self._cursor = 0
        self._esc = ""  # an escape sequence being read (arrow keys, paste brackets)

    def feed(self, text: str) -> list[str]:
        """Apply keystrokes; returns the lines completed by Enter in this chunk."""
        done: list[str] = []
        for ch in text:
            if self._esc:
                self._escape(ch)
            elif ch in "\r\n":
                line = "".join(self._chars).strip()
                if line:
                    done.append(line)
                self._chars, self._cursor = [], 0
            elif ch == "\x1b":
                self._esc = ch
            else:
                self._key(ch)
        return done

    def _key(self, ch: str) -> None:
        """A printable character or a line-editing control."""
        chars, cur = self._chars, self._cursor
        if ch in "\x7f\b":
            if cur:
                del chars[cur - 1]
                self._cursor -= 1
        elif ch == "\x15":  # Ctrl-U: kill to start of line
            del chars[:cur]
            self._cursor = 0
        elif ch == "\x17":  # Ctrl-W: kill the word before the cursor
            start = cur
            while start and chars[start - 1] == " ":
                start -= 1
            while start and chars[start - 1] != " ":
                start -= 1
            del chars[start:cur]
            self._cursor = start
        elif ch == "\x03":  # Ctrl-C: the line is abandoned
            self._chars, self._cursor = [], 0
        elif ch == "\x01":
            self._cursor = 0
        elif ch == "\x05":
            self._cursor = len(chars)
        elif ch >= " " and not ("\x7f" <= ch <= "\x9f"):
            chars.insert(cur, ch)
            self._cursor += 1

    def _escape(self, ch: str) -> None:
        """Collect ESC [ ... final or ESC O x, then apply the cursor keys among them."""
        self._esc += ch
        seq = self._esc
        if len(seq) == 2 and ch not in "[O":
            self._esc = ""  # Alt+key: ignored
            return
        if len(seq) > 2 and ("@" <= ch <= "~" or len(seq) > 16):
            self._esc = ""
            key = seq[2:]
            if key in ("C", "1;5C") and self._cursor < len(self._chars):
                self._cursor += 1
            elif key in ("D", "1;5D") and self._cursor:
                self._cursor -= 1
            elif key in ("H", "1~", "7~"):
                self._cursor = 0
            elif key in ("F", "4~", "8~"):
                self._cursor = len(self._chars)
            elif key == "3~" and self._cursor < len(self._chars):
                del self._chars[self._cursor]


Span = tuple[int, int]
_CONTEXT = 120  # characters shown either side of a match inside a long value


def _matcher(pattern: str, regex: bool, ignore_case: bool) -> Callable[[str], Span | None]:
    """A function giving where one search pattern first matches a text (None: nowhere)."""
    if regex:
        compiled = re.compile(pattern, re.IGNORECASE if ignore_case else 0)

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
    """Command markers and input lines of a terminal or exec recording."""
    keys = InputLines()
    for t, code, data in terminal_events(path, []):
        marker = schema.parse_marker(data) if code == "m" else None
        if marker is not None and marker.kind == schema.COMMAND:
            yield Hit(session_id, t, marker.text, "command")
        elif code == "i":
            for line in keys.feed(data):
                yield Hit(session_id, t, line, "input")


def search(
    recordings: Iterable[tuple[str, Path, str]],
    pattern: str,
    *,
    regex: bool = False,
    ignore_case: bool = False,
) -> Iterator[Hit]:
    """Statements and commands matching `pattern` in (session_id, path, kind) recordings, in order.

    A recording that is missing or unreadable is skipped (the audit check reports those).
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
