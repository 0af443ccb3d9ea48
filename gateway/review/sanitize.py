"""Make recorded terminal output safe to show on a reviewer's terminal.

A recording holds whatever the server (or an attacker controlling it) printed. Shown raw, escape
sequences act on the *reviewer's* terminal: OSC 52 writes the reviewer's clipboard, OSC 0/1/2 set the
window title (and title reports can type into the reviewer's shell), DCS/APC/PM/SOS strings reach
terminal extensions, device-status and window reports (CSI 6n, CSI c, CSI 21t) make the terminal
*type* a reply into the reviewer's input, and C1 8-bit controls are the same sequences in one byte.
So this module parses output with the terminal parser (``gateway.terminal.vt``) and lets through only a short allowlist:

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

from gateway.terminal.screen import LineScreen
from gateway.terminal.vt import CSI, CTL, DIGIT_PARAMS, ESC, TEXT, VTParser

_SAFE_CSI_FINALS = set("ABCDEFGHJKSTdefmrXP@LM`a")  # not REP (b): a huge count stalls a terminal
_SAFE_ESC_FINALS = set("78DEM")
_SGR_PARAMS = re.compile(r"[0-9;:]*")


def _csi_allowed(params: str, inter: str, final: str) -> bool:
    """The allowlist of CSI sequences replay may pass to the reviewer's terminal."""
    if inter:
        return False
    if final == "m":
        return _SGR_PARAMS.fullmatch(params) is not None
    if params in ("?25", "?25;") and final in "hl":
        return True
    if final not in _SAFE_CSI_FINALS or DIGIT_PARAMS.fullmatch(params) is None:
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
