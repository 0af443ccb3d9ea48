"""A shell's stdin without a terminal: each command line held whole until the policy has decided it.

Terminals (keystrokes and echo) are `gateway.terminal`; this is the other case, where nothing echoes and
no line editor runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.terminal.screen import MAX_LINE


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
