"""Line-based models of what a terminal shows, on the one escape parser: a row's edits, the echo row, a transcript.

Not an emulator: cursor up/down and absolute rows are not followed, so a full-screen program comes out
as a transcript rather than a picture. That is what both users need: the SSH front end follows the row
the user is typing on (readline's redraws), a reviewer reads what was printed.
"""

from __future__ import annotations

import codecs

from gateway.terminal.vt import CSI, CTL, DIGIT_PARAMS, TEXT, VTParser

MAX_LINE = 64 * 1024
"""Characters kept per line; a longer line is flagged truncated (and treated as unknown by policy)."""


def _count(params: str) -> int:
    """The first numeric parameter of a CSI sequence, defaulting to 1."""
    first = params.split(";", 1)[0]
    return int(first) if first.isdigit() and int(first) > 0 else 1


class Row:
    """One row of text and the cursor on it: what text, CR, BS, TAB and the in-line CSI commands do."""

    __slots__ = ("chars", "cursor")

    def __init__(self) -> None:
        self.chars: list[str] = []
        self.cursor = 0

    @property
    def text(self) -> str:
        """The row's text, trailing blanks removed."""
        return "".join(self.chars).rstrip()

    def clear(self) -> None:
        """An empty row, cursor at column 0."""
        self.chars, self.cursor = [], 0

    def put(self, text: str) -> None:
        """Write text at the cursor, overwriting what is there (as a terminal does)."""
        col = self.cursor
        if col + len(text) > MAX_LINE:
            text = text[: max(0, MAX_LINE - col)]
        chars = self.chars
        if col > len(chars):
            chars.extend(" " * (col - len(chars)))
        chars[col : col + len(text)] = text
        self.cursor = col + len(text)

    def control(self, ch: str) -> None:
        """CR, BS, TAB (LF is the caller's: it ends the row)."""
        if ch == "\r":
            self.cursor = 0
        elif ch == "\b":
            self.cursor = max(0, self.cursor - 1)
        elif ch == "\t":
            self.cursor = min(MAX_LINE, (self.cursor // 8 + 1) * 8)

    def csi(self, params: str, final: str) -> None:
        """Erase in line, cursor left/right/column, insert/delete/erase characters."""
        chars, col, n = self.chars, self.cursor, _count(params)
        if final == "K":
            mode = params or "0"
            if mode == "0":
                del chars[col:]
            elif mode == "1":
                chars[: col + 1] = " " * min(col + 1, len(chars))
            elif mode == "2":
                chars.clear()
        elif final == "C":
            self.cursor = min(MAX_LINE, col + n)
        elif final == "D":
            self.cursor = max(0, col - n)
        elif final == "G":
            self.cursor = min(MAX_LINE, n - 1)
        elif final == "P":
            del chars[col : col + n]
        elif final == "@":
            if col < len(chars):
                chars[col:col] = " " * min(n, MAX_LINE)
        elif final == "X":
            end = min(col + n, len(chars))
            chars[col:end] = " " * max(0, end - col)


class LineScreen:
    """A transcript of terminal output: completed lines and the current one (everything not text dropped)."""

    def __init__(self) -> None:
        self._parser = VTParser()
        self._lines: list[str] = []
        self._row = Row()

    def feed(self, text: str) -> None:
        """Apply a chunk of terminal output."""
        row = self._row
        for kind, value, inter, final in self._parser.feed(text):
            if kind == TEXT:
                row.put(value)
            elif kind == CTL:
                if value == "\n":
                    self._lines.append(row.text)
                    row.clear()
                else:
                    row.control(value)
            elif kind == CSI and not inter and DIGIT_PARAMS.fullmatch(value):
                row.csi(value, final)

    def text(self) -> str:
        """The text so far: completed lines, then the current one if not empty."""
        lines = [*self._lines, self._row.text] if self._row.chars else list(self._lines)
        return "\n".join(lines)


class EchoLine:
    """The terminal row under the cursor, following the server's output (enough VT100 for readline)."""

    def __init__(self) -> None:
        self._parser = VTParser()
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._row = Row()
        self.rows = 0  # rows left (line feeds, screen clears): tells whether the cursor left the prompt's row

    @property
    def text(self) -> str:
        """The row's text."""
        return self._row.text

    @property
    def cursor(self) -> int:
        """The cursor's column."""
        return self._row.cursor

    def feed(self, data: bytes) -> None:
        """Apply server output."""
        row = self._row
        for kind, value, inter, final in self._parser.feed(self._dec.decode(data)):
            if kind == TEXT:
                row.put(value)
            elif kind == CTL:
                if value == "\n":
                    row.clear()
                    self.rows += 1
                else:
                    row.control(value)
            elif kind == CSI and not inter and DIGIT_PARAMS.fullmatch(value):
                if final in ("J", "H", "f"):
                    self._screen(value, final)
                else:
                    row.csi(value, final)

    def _screen(self, params: str, final: str) -> None:
        """A screen clear or cursor placement: the cursor is on another row now."""
        nums = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else []
        if final == "J" and not (nums and nums[0] == 2):
            return
        self._row.clear()
        self.rows += 1
        if final != "J" and len(nums) > 1:
            self._row.cursor = min(MAX_LINE, max(0, nums[1] - 1))
