"""Sans-IO command-line reconstruction for interactive terminals: keystrokes and echo in, command lines out.

The relay feeds every client byte to ``CommandTracker.feed_input`` and every server byte to
``feed_output``. Input comes back as a list of byte chunks to forward as they are, interleaved with
``Enter`` events: the key that would run the line is *not* in the chunks, so the relay can hold it
back until the policy has looked at the line (forward ``Enter.key`` to let it run).

Two models of the line are kept:

* ``InputLine``: a readline-like editor driven by the keystrokes alone (insert, backspace, ^U, ^W,
  ^K, ^A/^E, arrows, Delete, bracketed paste, ^V). Exact as long as only those keys are used.
* ``EchoLine``: the terminal row the cursor is on, driven by the server's echo (enough of VT100 to
  follow readline's redraws). History recall, tab completion and ^R change the line in ways only
  the echo shows; after such a key the line is taken from the echo, minus the prompt.

``stty -echo`` does not hide a line from the input model, so deny rules still apply; the line is
flagged ``echoed=False`` (it is probably a password) so the caller can keep it out of the audit log.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass

MAX_LINE = 64 * 1024
"""Characters kept per line; a longer line is flagged truncated (and treated as unknown by policy)."""

ENTER_KEYS = frozenset(b"\r\n\x0f")  # CR, LF and ^O: bash's operate-and-get-next runs the line too
PASTE_START, PASTE_END = "200", "201"


@dataclass(frozen=True, slots=True)
class Enter:
    """A key that runs the line was typed: decide, then forward `key` (or do not)."""

    line: str  # the best reconstruction (typed line when exact, else the echoed one)
    typed: str  # what the keystroke model alone says
    key: bytes
    exact: bool  # no history/completion/unknown editing key was used
    echoed: bool  # the terminal echoed the line (False: probably typed with echo off)
    truncated: bool = False


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


class EchoLine:
    """The terminal row under the cursor, following the server's output (enough VT100 for readline)."""

    def __init__(self) -> None:
        self.row: list[str] = []
        self.cursor = 0
        self.rows = 0  # line feeds seen: tells whether the cursor left the prompt's row
        self._state = ""  # "", "esc", "csi", "osc", "osc-esc", "charset"
        self._params = ""
        self._dec = _decoder()

    @property
    def text(self) -> str:
        """The row's text."""
        return "".join(self.row)

    def feed(self, data: bytes) -> None:
        """Apply server output."""
        for b in data:
            state = self._state
            if state:
                self._escape(state, b)
            elif b >= 0x20 and b != 0x7F:
                ch = chr(b) if b < 0x80 else self._dec.decode(bytes([b]))
                if ch:
                    self._put(ch)
            elif b == 0x1B:
                self._state = "esc"
            elif b == 0x0D:
                self.cursor = 0
            elif b == 0x0A:
                self.row, self.cursor = [], 0
                self.rows += 1
            elif b == 0x08:
                self.cursor = max(0, self.cursor - 1)
            elif b == 0x09:
                self._move_to((self.cursor // 8 + 1) * 8)

    def _put(self, ch: str) -> None:
        """Write one character at the cursor (overwrite, as a terminal does)."""
        if self.cursor >= MAX_LINE:
            return
        self._move_to(self.cursor)
        if self.cursor < len(self.row):
            self.row[self.cursor] = ch
        else:
            self.row.append(ch)
        self.cursor += 1

    def _move_to(self, col: int) -> None:
        """Move the cursor, padding the row with blanks."""
        col = max(0, min(col, MAX_LINE))
        if col > len(self.row):
            self.row.extend(" " * (col - len(self.row)))
        self.cursor = col

    def _escape(self, state: str, b: int) -> None:
        """Escape-sequence state machine of the output (CSI, OSC, charset)."""
        if state == "esc":
            if b == 0x5B:
                self._state, self._params = "csi", ""
            elif b == 0x5D:
                self._state = "osc"
            elif b in (0x28, 0x29, 0x23):  # charset designation / DEC tests take one more byte
                self._state = "charset"
            else:
                self._state = ""
        elif state == "csi":
            if 0x20 <= b <= 0x3F:
                if len(self._params) < 32:
                    self._params += chr(b)
            else:
                self._state = ""
                self._csi(chr(b), self._params)
        elif state == "osc":  # window titles and the like end with BEL or ESC \
            if b == 0x07:
                self._state = ""
            elif b == 0x1B:
                self._state = "osc-esc"
        elif state == "osc-esc":
            self._state = "" if b == 0x5C else "osc"
        else:
            self._state = ""

    def _csi(self, final: str, params: str) -> None:
        """Apply one CSI command to the row."""
        if params.startswith("?") or params.startswith(">"):
            return  # private modes (bracketed paste, alternate screen...): no effect on the row
        nums = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else []
        n = max(1, nums[0]) if nums else 1
        row, cur = self.row, self.cursor
        if final == "K":
            mode = nums[0] if nums else 0
            if mode == 0:
                del row[cur:]
            elif mode == 1:
                row[: min(cur + 1, len(row))] = " " * min(cur + 1, len(row))
            else:
                row.clear()
        elif final == "C":
            self._move_to(cur + n)
        elif final == "D":
            self.cursor = max(0, cur - n)
        elif final == "G":
            self._move_to(n - 1)
        elif final == "P":
            del row[cur : cur + n]
        elif final == "@":
            if cur < len(row):
                row[cur:cur] = " " * n
        elif final == "X":
            end = min(len(row), cur + n)
            row[cur:end] = " " * (end - cur)
        elif final in ("J", "H", "f"):
            if final != "J" or (nums and nums[0] == 2):
                self.row, self.cursor = [], 0
                self.rows += 1
                if final in ("H", "f") and len(nums) > 1:
                    self._move_to(nums[1] - 1)


class CommandTracker:
    """Keystrokes and echo in; bytes to forward and ``Enter`` decisions out (sans-IO)."""

    def __init__(self) -> None:
        self.input = InputLine()
        self.echo = EchoLine()
        self._start: tuple[int, int] | None = None  # (echo row count, column) where the line began
        self._chunks = 0  # input chunks that carried part of this line
        self._echo_seen = False  # output arrived since the line began
        self.cancels = 0  # lines abandoned with ^C (the shell drops an unfinished construct with them)

    def feed_output(self, data: bytes) -> None:
        """Server output (echo, prompts, program output)."""
        self.echo.feed(data)
        if self._start is not None:
            self._echo_seen = True

    def feed_input(self, data: bytes) -> list[bytes | Enter]:
        """Client keystrokes; returns chunks to forward and the Enter events between them, in order."""
        out: list[bytes | Enter] = []
        start = 0
        line = self.input
        began_chunk = False
        for i, b in enumerate(data):
            if line.is_enter(b):
                if i > start:
                    out.append(data[start:i])
                out.append(self._enter(bytes([b])))
                start = i + 1
                began_chunk = False
                continue
            if self._start is None:
                self._start = (self.echo.rows, self.echo.cursor)
                self._chunks, self._echo_seen = 0, False
            if not began_chunk:
                self._chunks += 1
                began_chunk = True
            if line.feed(b):  # ^C abandoned the line
                self._start = None
                self.cancels += 1
        if start < len(data):
            out.append(data[start:])
        return out

    def _enter(self, key: bytes) -> Enter:
        """Close the current line into an Enter event and start a new one."""
        line = self.input
        typed = line.text
        best = typed
        if not line.exact:
            echoed = self._echoed_line()
            if echoed is not None:
                best = echoed
        # A line typed key by key with no output in between was not echoed (stty -echo, a password).
        echoed_flag = self._echo_seen or self._chunks <= 1 or not typed
        ev = Enter(best, typed, key, line.exact, echoed_flag, line.truncated)
        line.reset()
        self._start = None
        return ev

    def _echoed_line(self) -> str | None:
        """The echoed line after the prompt, or None when the cursor is no longer on the prompt's row."""
        if self._start is None:
            return None
        rows, col = self._start
        if self.echo.rows != rows:
            return None
        return self.echo.text[col:].rstrip()


@dataclass(frozen=True, slots=True)
class Line:
    """A complete line of a shell's stdin (no terminal), to be decided before it is forwarded."""

    text: str
    raw: bytes  # the line's bytes with its newline (none for a last line cut by EOF or MAX_LINE)
    truncated: bool = False


class StdinLines:
    """Commands fed to a shell on stdin without a terminal (`ssh -T host`, `ssh host bash`): bytes in, bytes out.

    Nothing echoes and no line editor runs: the shell reads its stdin up to each newline, so each line
    is held here whole until `decide` has seen it, and only lines it allows are returned for forwarding.
    `decide` may also answer None: the line opens a construct the next lines complete (a quote, a loop,
    a backslash continuation), so it is held until the construct is decided as a whole, then forwarded
    or dropped with it. A line longer than MAX_LINE is decided on its first MAX_LINE bytes (flagged
    truncated); the rest of it, up to its newline, follows that verdict.
    """

    def __init__(self, decide: Callable[[Line], bool | None]) -> None:
        self._decide = decide
        self._held = bytearray()  # lines of an unfinished construct, waiting for its verdict
        self._buf = bytearray()
        self._rest: bool | None = None  # inside an over-long line: forward (True) or drop (False) until \n

    def feed(self, data: bytes) -> bytes:
        """Stdin bytes; returns the bytes of the allowed lines (held partial lines are not in it yet)."""
        out = bytearray()
        start, n = 0, len(data)
        while start < n:
            nl = data.find(b"\n", start)
            end = n if nl < 0 else nl + 1
            if self._rest is not None:
                if self._rest:
                    out += data[start:end]
                if nl >= 0:
                    self._rest = None
            else:
                self._buf += data[start:end]
                if nl >= 0:
                    out += self._take()
                elif len(self._buf) > MAX_LINE:
                    out += self._take(truncated=True)
            start = end
        return bytes(out)

    def finish(self) -> bytes:
        """EOF: a last line without a newline still runs in the shell, so it is decided too."""
        self._rest = None
        out = self._take(last=True) if self._buf else b""
        held, self._held = bytes(self._held), bytearray()
        return held + out  # an unfinished construct at EOF: the shell gets it (and reports the error)

    def _take(self, *, truncated: bool = False, last: bool = False) -> bytes:
        """Decide the buffered line; returns the bytes to forward now."""
        raw = bytes(self._buf)
        self._buf.clear()
        text = raw.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
        verdict = self._decide(Line(text, raw, truncated))
        if truncated:
            self._rest = verdict is not False
        if verdict is None and not last and not truncated:
            self._held += raw
            return b""
        held, self._held = bytes(self._held), bytearray()
        return held + raw if verdict is not False else b""
