"""The one line editor: the line being typed, rebuilt from keystrokes alone (a subset of readline's emacs mode).

Insert, backspace, ^U, ^W, ^K, ^A/^E, ^B/^F, ^D, arrows, Home/End, Delete, bracketed paste and ^V are
followed exactly; any other editing key (history, completion, ^R, Meta keys) makes the line inexact: its
result is only visible in the echo (`gateway.terminal.screen.EchoLine`).
"""

from __future__ import annotations

import codecs

from gateway.terminal.screen import MAX_LINE

ENTER_KEYS = frozenset(b"\r\n\x0f")  # CR, LF and ^O: bash's operate-and-get-next runs the line too
PASTE_START, PASTE_END = "200", "201"


def _decoder() -> codecs.IncrementalDecoder:
    """A UTF-8 decoder that replaces bad bytes (keystrokes are not trusted to be valid)."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


class InputLine:
    """The line being typed, rebuilt from keystrokes (a subset of readline's emacs mode)."""

    def __init__(self) -> None:
        self.chars: list[str] = []
        self.cursor = 0
        self.exact = True
        self.truncated = False
        self.paste = False
        self._state = ""  # "", "esc", "csi", "ss3", "quoted"
        self._params = ""
        self._dec = _decoder()

    @property
    def text(self) -> str:
        """The line as typed so far."""
        return "".join(self.chars)

    def reset(self) -> None:
        """Start a new line (after Enter or ^C); a paste in progress is over too."""
        self.chars.clear()
        self.cursor = 0
        self.exact = True
        self.truncated = False
        self.paste = False

    def is_enter(self, b: int) -> bool:
        """Whether byte `b` (seen in the current state) runs the line."""
        return b in ENTER_KEYS and self._state == "" and not self.paste

    def feed(self, b: int) -> bool:
        """Apply one byte; returns True when it cancelled the line (^C)."""
        state = self._state
        if state == "esc":
            self._escape(b)
        elif state == "csi":
            self._csi(b)
        elif state == "ss3":
            self._state = ""
            self._key(chr(b))
        elif state == "quoted":
            self._state = ""
            self._insert(chr(b) if b < 0x80 else self._dec.decode(bytes([b])))
        elif b == 0x1B:
            self._state = "esc"
        elif self.paste:
            # Inside a bracketed paste every byte is text, newlines included (bash inserts them).
            self._insert("\n" if b in (0x0D, 0x0A) else (chr(b) if b < 0x80 else self._dec.decode(bytes([b]))))
        elif b >= 0x20 and b != 0x7F:
            self._insert(chr(b) if b < 0x80 else self._dec.decode(bytes([b])))
        else:
            return self._control(b)
        return False

    def _insert(self, text: str) -> None:
        """Insert at the cursor; past MAX_LINE the line is only flagged truncated."""
        if not text:
            return
        if len(self.chars) + len(text) > MAX_LINE:
            self.truncated = True
            return
        self.chars[self.cursor : self.cursor] = list(text)
        self.cursor += len(text)

    def _control(self, b: int) -> bool:
        """A C0 control key; returns True for ^C."""
        chars, cur = self.chars, self.cursor
        if b in (0x7F, 0x08):  # backspace
            if cur:
                del chars[cur - 1]
                self.cursor -= 1
        elif b == 0x15:  # ^U: unix-line-discard
            del chars[:cur]
            self.cursor = 0
        elif b == 0x17:  # ^W: unix-word-rubout (whitespace-delimited)
            i = cur
            while i and chars[i - 1].isspace():
                i -= 1
            while i and not chars[i - 1].isspace():
                i -= 1
            del chars[i:cur]
            self.cursor = i
        elif b == 0x0B:  # ^K
            del chars[cur:]
        elif b == 0x01:
            self.cursor = 0
        elif b == 0x05:
            self.cursor = len(chars)
        elif b == 0x02:
            self.cursor = max(0, cur - 1)
        elif b == 0x06:
            self.cursor = min(len(chars), cur + 1)
        elif b == 0x04:  # ^D: delete-char (EOF on an empty line)
            if cur < len(chars):
                del chars[cur]
        elif b == 0x03:  # ^C: the line is abandoned
            self.reset()
            return True
        elif b == 0x16:  # ^V: quoted-insert
            self._state = "quoted"
        elif b in (0x0C, 0x07, 0x00):  # ^L redraws, BEL and NUL change nothing
            pass
        else:  # tab, ^P/^N, ^R/^S, ^Y, ^T, ^X...: the result is only visible in the echo
            self.exact = False
        return False

    def _escape(self, b: int) -> None:
        """The byte after ESC: CSI, SS3, or a Meta key."""
        if b == 0x5B:  # '['
            self._state, self._params = "csi", ""
        elif b == 0x4F:  # 'O'
            self._state = "ss3"
        else:  # Meta-key (word moves, yank-last-arg...): only the echo knows
            self._state = ""
            self.exact = False

    def _csi(self, b: int) -> None:
        """A CSI key sequence (arrows, Home/End, Delete, paste brackets)."""
        if 0x20 <= b <= 0x3F:
            if len(self._params) < 32:
                self._params += chr(b)
            return
        self._state = ""
        params = self._params
        if b == 0x7E:  # '~'
            if params == PASTE_START:
                self.paste = True
            elif params == PASTE_END:
                self.paste = False
            elif params == "3":
                if self.cursor < len(self.chars):
                    del self.chars[self.cursor]
            elif params in ("1", "7"):
                self.cursor = 0
            elif params in ("4", "8"):
                self.cursor = len(self.chars)
            elif params != "2":
                self.exact = False
        elif params:  # modified arrows (ctrl-right...): word moves
            self.exact = False
        else:
            self._key(chr(b))

    def _key(self, final: str) -> None:
        """An arrow/Home/End key (CSI or SS3 final byte)."""
        if final == "C":
            self.cursor = min(len(self.chars), self.cursor + 1)
        elif final == "D":
            self.cursor = max(0, self.cursor - 1)
        elif final == "H":
            self.cursor = 0
        elif final == "F":
            self.cursor = len(self.chars)
        else:  # up/down: history
            self.exact = False
