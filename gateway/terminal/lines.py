"""Sans-IO command-line reconstruction for interactive terminals: keystrokes and echo in, command lines out.

The SSH relay feeds every client byte to ``CommandTracker.feed_input`` and every server byte to
``feed_output``. Input comes back as a list of byte chunks to forward as they are, interleaved with
``Enter`` events: the key that would run the line is *not* in the chunks, so the relay can hold it
back until the policy has looked at the line (forward ``Enter.key`` to let it run).

Two models of the line are kept: ``InputLine`` (the keystrokes alone, `gateway.terminal.keys`), exact as
long as only the keys it knows are used, and ``EchoLine`` (the row under the cursor, from the server's echo,
`gateway.terminal.screen`). After history recall, tab completion or ^R the line is taken from the echo,
minus the prompt.

``stty -echo`` does not hide a line from the input model, so deny rules still apply; the line is
flagged ``echoed=False`` (it is probably a password) so the caller can keep it out of the audit log.

The reviewer side uses the same tracker on a recording's input and output events (`rebuild`), so a line
rebuilt from a recording is the line enforcement judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gateway.terminal.keys import InputLine
from gateway.terminal.screen import EchoLine


@dataclass(frozen=True, slots=True)
class Enter:
    """A key that runs the line was typed: decide, then forward `key` (or do not)."""

    line: str  # the best reconstruction (typed line when exact, else the echoed one)
    typed: str  # what the keystroke model alone says
    key: bytes
    exact: bool  # no history/completion/unknown editing key was used
    echoed: bool  # the terminal echoed the line (False: probably typed with echo off)
    truncated: bool = False


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


def rebuild(events: Iterable[tuple[float, str, str]]) -> Iterator[tuple[float, Enter]]:
    """The lines of a terminal recording's ``i``/``o`` events, as the live tracker saw them (t of the Enter)."""
    tracker = CommandTracker()
    for t, code, data in events:
        if code == "o":
            tracker.feed_output(data.encode("utf-8", "surrogatepass"))
        elif code == "i":
            for item in tracker.feed_input(data.encode("utf-8", "surrogatepass")):
                if isinstance(item, Enter):
                    yield t, item
