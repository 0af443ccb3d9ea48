"""Make recorded terminal output safe to show on a reviewer's terminal.

A recording holds whatever the server (or an attacker controlling it) printed. Shown raw, escape
sequences act on the *reviewer's* terminal: OSC 52 writes the reviewer's clipboard, OSC 0/1/2 set the
window title (and title reports can type into the reviewer's shell), DCS/APC/PM/SOS strings reach
terminal extensions, device-status and window reports (CSI 6n, CSI c, CSI 21t) make the terminal
*type* a reply into the reviewer's input, and C1 8-bit controls are the same sequences in one byte.
So this module parses output as a VT parser would and lets through only a short allowlist:

* ``keep_sgr=True`` (real-time replay): printable text, TAB/LF/CR/BS, SGR colours (``CSI ... m``),
  cursor movement and erase in line/display, insert/delete characters and lines, scroll region,
  cursor show/hide, ESC 7/8/D/E/M. Everything else -- strings, reports, mode changes, charset
  switches, resets, 8-bit controls, BEL -- is removed.
* ``keep_sgr=False``: printable text, LF and TAB only (a lone CR becomes LF, so text cannot be
  hidden by overwriting it).

The parser is streaming (``Neutraliser.feed``) because a sequence can be split across two recorded
events: a trailing partial sequence is held back, never emitted half-way.

Stored *fields* (reasons, comments, end reasons, user and target names, alert texts) are another matter:
they are one value in a table cell or a line, so `printable` shows every control, escape and invisible
formatting character as a visible marker (``\x1b``, ``\u202e``) instead of running or dropping it: the
reviewer sees that someone tried, and a reason can no longer move the cursor over the real scope. The same
character class is what `free_text_problem` refuses at the API and the CLI, so new text is clean at the door.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

# Token kinds produced by the parser.
TEXT, CTL, CSI, ESC = "text", "ctl", "csi", "esc"
Token = tuple[str, str, str, str]  # (kind, params or text, intermediates, final)

# C0, DEL, C1, and the bidi embedding/override/isolate controls (they reorder what follows on terminals
# that implement bidi, so "nimda" can show as "admin"): never text.
_SPECIAL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_STRING_END = re.compile(r"[\x07\x18\x1a\x1b\x9c]")
_MAX_CSI = 64  # a longer control sequence is malformed or hostile: it is dropped whole

_GROUND, _ESCAPE, _ESC_INTER, _CSI, _STRING = range(5)
_STRING_INTRODUCERS = {"]", "P", "X", "^", "_"}  # OSC, DCS, SOS, PM, APC
_C1_STRINGS = {"\x90", "\x98", "\x9d", "\x9e", "\x9f"}  # the same, as 8-bit controls

_SAFE_CSI_FINALS = set("ABCDEFGHJKSTdefmrXP@LM`a")  # not REP (b): a huge count stalls a terminal
_SAFE_ESC_FINALS = set("78DEM")
_SGR_PARAMS = re.compile(r"[0-9;:]*")
_DIGIT_PARAMS = re.compile(r"[0-9;]*")

RESTORE = "\x1b[0m\x1b[?25h\x1b[r"
"""Undo what an allowed sequence may have left set: colours, hidden cursor, scroll region."""


class VTParser:
    """Streaming tokenizer: text, C0 controls, CSI and ESC sequences; strings and C1 are dropped."""

    def __init__(self) -> None:
        self._state = _GROUND
        self._buf = ""  # the partial CSI / ESC sequence collected so far

    def feed(self, data: str) -> list[Token]:
        """Tokenize `data`; an unfinished sequence is kept for the next call."""
        tokens: list[Token] = []
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == _GROUND:
                m = _SPECIAL.search(data, i)
                end = m.start() if m else n
                if end > i:
                    tokens.append((TEXT, data[i:end], "", ""))
                if m is None:
                    break
                i = end + 1
                self._ground_control(data[end], tokens)
            elif state == _STRING:
                m = _STRING_END.search(data, i)
                if m is None:
                    break  # the rest of this chunk is inside the string: discard it
                i = m.end()
                self._state = _GROUND
                if m.group() == "\x1b":  # ESC ends the string and starts a new sequence (xterm)
                    self._state, self._buf = _ESCAPE, ""
            else:
                i = self._sequence_char(data[i], tokens, i)
        return tokens

    def _ground_control(self, ch: str, tokens: list[Token]) -> None:
        """Handle one control character met in ground state."""
        if ch == "\x1b":
            self._state, self._buf = _ESCAPE, ""
        elif ch == "\x9b":
            self._state, self._buf = _CSI, ""
        elif ch in _C1_STRINGS:
            self._state = _STRING
        elif ch in "\n\r\t\b":
            tokens.append((CTL, ch, "", ""))
        # every other C0/C1 control (BEL, SO/SI, NUL, DEL, 8-bit ones) is dropped

    def _sequence_char(self, ch: str, tokens: list[Token], i: int) -> int:
        """Advance an ESC or CSI sequence by one character; returns the next index to read."""
        code = ord(ch)
        state = self._state
        if ch == "\x1b" or code < 0x20 or code > 0x7E:
            # A control or non-ASCII character aborts the sequence; it is then read in ground state.
            self._state, self._buf = _GROUND, ""
            return i
        if state == _ESCAPE:
            if ch == "[":
                self._state, self._buf = _CSI, ""
            elif ch in _STRING_INTRODUCERS:
                self._state = _STRING
            elif 0x20 <= code <= 0x2F:
                self._state, self._buf = _ESC_INTER, ch
            else:
                tokens.append((ESC, "", "", ch))
                self._state = _GROUND
        elif state == _ESC_INTER:
            if 0x20 <= code <= 0x2F:
                self._buf += ch
            else:
                tokens.append((ESC, "", self._buf, ch))
                self._state, self._buf = _GROUND, ""
        else:  # _CSI
            if 0x40 <= code <= 0x7E:
                buf = self._buf
                if len(buf) <= _MAX_CSI:
                    split = len(buf.rstrip(" !\"#$%&'()*+,-./"))
                    tokens.append((CSI, buf[:split], buf[split:], ch))
                self._state, self._buf = _GROUND, ""
            else:
                self._buf = self._buf + ch if len(self._buf) <= _MAX_CSI else self._buf
        return i + 1


def _csi_allowed(params: str, inter: str, final: str) -> bool:
    """The allowlist of CSI sequences replay may pass to the reviewer's terminal."""
    if inter:
        return False
    if final == "m":
        return _SGR_PARAMS.fullmatch(params) is not None
    if params in ("?25", "?25;") and final in "hl":
        return True
    if final not in _SAFE_CSI_FINALS or _DIGIT_PARAMS.fullmatch(params) is None:
        return False
    # CSI 3 J erases the reviewer's scrollback: not something a recording gets to do.
    return not (final == "J" and "3" in params.split(";"))


class Neutraliser:
    """Streaming `neutralise`: feed recorded output chunk by chunk, get safe text back."""

    def __init__(self, keep_sgr: bool = False) -> None:
        self._parser = VTParser()
        self._keep_sgr = keep_sgr
        self._pending_cr = False

    def feed(self, text: str) -> str:
        """Return the safe part of `text` (a trailing partial sequence waits for more)."""
        out: list[str] = []
        for kind, value, inter, final in self._parser.feed(text):
            if self._keep_sgr:
                if kind in (TEXT, CTL):
                    out.append(value)
                elif kind == CSI and _csi_allowed(value, inter, final):
                    out.append(f"\x1b[{value}{final}")
                elif kind == ESC and not inter and final in _SAFE_ESC_FINALS:
                    out.append("\x1b" + final)
                continue
            if kind not in (TEXT, CTL) or value == "\b":
                continue
            if self._pending_cr:
                self._pending_cr = False
                out.append("\n")
                if value == "\n":
                    continue
            if value == "\r":
                self._pending_cr = True
            else:
                out.append(value)
        return "".join(out)

    def flush(self) -> str:
        """End of stream: emit a held-back CR (as LF); a partial sequence is dropped."""
        self._parser = VTParser()
        if self._pending_cr:
            self._pending_cr = False
            return "\n"
        return ""


def neutralise(text: str, keep_sgr: bool = False) -> str:
    """Remove every escape sequence and control that could act on a reviewer's terminal."""
    n = Neutraliser(keep_sgr)
    return n.feed(text) + n.flush()


def _count(params: str) -> int:
    """The first numeric parameter of a CSI sequence, defaulting to 1."""
    first = params.split(";", 1)[0]
    return int(first) if first.isdigit() and int(first) > 0 else 1


class LineScreen:
    """A line-based model of a terminal: enough of CR, BS, TAB, erase and cursor left/right.

    Not an emulator: cursor up/down and absolute positioning are ignored, so full-screen programs
    come out as a transcript rather than a picture. Everything that is not text is dropped.
    """

    def __init__(self) -> None:
        self._parser = VTParser()
        self._lines: list[str] = []
        self._line: list[str] = []
        self._col = 0

    def feed(self, text: str) -> None:
        """Apply a chunk of terminal output."""
        for kind, value, inter, final in self._parser.feed(text):
            if kind == TEXT:
                self._put(value)
            elif kind == CTL:
                self._control(value)
            elif kind == CSI and not inter and _DIGIT_PARAMS.fullmatch(value):
                self._csi(value, final)

    def _put(self, text: str) -> None:
        """Write text at the cursor, overwriting what is there."""
        line, col = self._line, self._col
        if col > len(line):
            line.extend(" " * (col - len(line)))
        line[col : col + len(text)] = text
        self._col = col + len(text)

    def _control(self, ch: str) -> None:
        """LF, CR, BS, TAB."""
        if ch == "\n":
            self._lines.append("".join(self._line).rstrip())
            self._line, self._col = [], 0
        elif ch == "\r":
            self._col = 0
        elif ch == "\b":
            self._col = max(0, self._col - 1)
        elif ch == "\t":
            self._col = (self._col // 8 + 1) * 8

    def _csi(self, params: str, final: str) -> None:
        """Erase in line, cursor left/right/column, insert/delete/erase characters."""
        line, col, n = self._line, self._col, _count(params)
        if final == "K":
            mode = params or "0"
            if mode == "0":
                del line[col:]
            elif mode == "1":
                line[: col + 1] = " " * min(col + 1, len(line))
            elif mode == "2":
                line.clear()
        elif final == "C":
            self._col = col + n
        elif final == "D":
            self._col = max(0, col - n)
        elif final == "G":
            self._col = n - 1
        elif final == "P":
            del line[col : col + n]
        elif final == "@":
            if col < len(line):
                line[col:col] = " " * n
        elif final == "X":
            end = min(col + n, len(line))
            line[col:end] = " " * max(0, end - col)

    def text(self) -> str:
        """The text so far: completed lines, then the current one if not empty."""
        lines = [*self._lines, "".join(self._line).rstrip()] if self._line else list(self._lines)
        return "\n".join(lines)


def render_final_text(events: Iterable[Sequence[object]]) -> str:
    """Plain, grep-friendly text of what the terminal showed, from asciicast ``[t, "o", text]`` events."""
    screen = LineScreen()
    for ev in events:
        if len(ev) >= 3 and ev[1] == "o" and isinstance(ev[2], str):
            screen.feed(ev[2])
    return screen.text()


# --- single stored values: visible markers; and the input check that keeps new ones clean ---------------

# Controls (C0, DEL, C1), formatting characters (bidi marks and overrides, zero-width characters, BOM),
# surrogates, and line/paragraph separators: nothing a reason or a name needs, all of it able to change
# what a terminal shows.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
MAX_FREE_TEXT = 500
"""The longest reason or comment accepted (characters)."""


def unsafe_char(ch: str) -> bool:
    """True for a character that may act on a terminal or hide text instead of being shown."""
    return unicodedata.category(ch) in _UNSAFE_CATEGORIES


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def marker(ch: str) -> str:
    """The visible stand-in for an unsafe character: ``\x1b``, ``\x9b``, ``\u202e``."""
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: object) -> str:
    """One stored value as inert single-line text: every unsafe character replaced by its visible marker."""
    text = "-" if value is None else str(value)
    if not any(unsafe_char(ch) for ch in text):
        return text
    return "".join(marker(ch) if unsafe_char(ch) else ch for ch in text)


def free_text_problem(value: str, *, limit: int = MAX_FREE_TEXT) -> str | None:
    """Why `value` is refused as a reason or comment (too long, or an unsafe character), or None."""
    if len(value) > limit:
        return f"is too long ({len(value)} characters; at most {limit})"
    for i, ch in enumerate(value):
        if unsafe_char(ch):
            return (
                f"contains a control or invisible formatting character ({marker(ch)} at position {i + 1}); "
                "only printable text on one line is accepted"
            )
    return None
