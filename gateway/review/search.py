"""Search recordings for statements and commands: which session ran what, and when.

Looked at, per recording kind:

* ``statements`` (SQL JSON lines): the ``sql`` of every ``statement`` event.
* ``asciicast`` (SSH terminal): markers labelled ``command: ...`` (the SSH front end's command lines)
  and the lines typed on input, rebuilt from keystrokes (backspace, Ctrl-U/W/C, arrows, paste).
* ``binary`` (exec without a terminal): its ``command: ...`` markers and the lines of its stdin
  (``ssh host sh -s < script`` carries the commands there).

Hit texts are neutralised: they are printed to a reviewer's terminal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.recording import RecordingError
from gateway.review.replay import iter_events
from gateway.review.sanitize import neutralise

COMMAND_PREFIX = "command: "

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
    kind: str  # statement | command | input


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


def _matcher(pattern: str, regex: bool, ignore_case: bool) -> Callable[[str], bool]:
    """A predicate for one search pattern."""
    if regex:
        compiled = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        return lambda text: compiled.search(text) is not None
    if ignore_case:
        folded = pattern.casefold()
        return lambda text: folded in text.casefold()
    return lambda text: pattern in text


def _statements(session_id: str, path: Path) -> Iterator[Hit]:
    """Statement texts of a SQL recording (lines that do not parse are skipped)."""
    with open(path, "rb") as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and ev.get("type", "statement") == "statement" and isinstance(ev.get("sql"), str):
                t = ev.get("t")
                yield Hit(session_id, float(t) if isinstance(t, int | float) else 0.0, str(ev["sql"]), "statement")


def _commands(session_id: str, path: Path) -> Iterator[Hit]:
    """Command markers and input lines of a terminal or exec recording."""
    keys = InputLines()
    for t, code, data in iter_events(path, []):
        if code == "m" and data.startswith(COMMAND_PREFIX):
            yield Hit(session_id, t, data[len(COMMAND_PREFIX) :], "command")
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
    matches = _matcher(pattern, regex, ignore_case)
    for session_id, path, kind in recordings:
        fmt = _KINDS.get(kind.lower())
        if fmt is None:
            raise ValueError(f"unknown recording kind {kind!r}")
        source = _statements(session_id, path) if fmt == "statements" else _commands(session_id, path)
        try:
            for hit in source:
                if matches(hit.text):
                    yield Hit(hit.session_id, hit.t, neutralise(hit.text), hit.kind)
        except (OSError, RecordingError):
            continue
