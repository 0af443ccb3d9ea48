"""Show recordings to a reviewer: real-time terminal replay, final text, SQL statement transcripts.

Recordings are read with ``gateway.recording.reader`` (the schema is ``gateway.recording.schema``). Output
always goes through ``gateway.review.sanitize``: a recording is attacker-controlled text and the reviewer's
terminal is the target.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from gateway.recording import schema
from gateway.recording.reader import TerminalReader, sql_lines, terminal_events
from gateway.recording.schema import SqlEvent, SqlHeader, Statement, TermEvent
from gateway.review.sanitize import Neutraliser, neutralise
from gateway.terminal.screen import LineScreen

END_MARKER = schema.END
"""Label prefix of the marker a front end writes just before closing a terminal recording."""

LEAVE_TERMINAL = "\x1b[0m\x1b[?25h\x1b7\x1b[r\x1b8"
"""After a replay: reset colours, show the cursor, reset the scroll region, and leave the cursor where the replay
left it. Resetting the scroll region (DECSTBM) also homes the cursor, and the shell prompt would then overwrite the
replay from the top-left: so it runs between a cursor save (DECSC) and restore (DECRC)."""

PLAYBACK_KEYS = "space pause/resume, . one step while paused, + faster, - slower, q quit"
"""The keys `play` obeys, for help texts."""


@dataclass
class ReplayResult:
    """What happened while showing a recording."""

    events: int = 0
    warnings: list[str] = field(default_factory=list)
    quit: bool = False
    ended_by: str = "eof"  # eof | end-marker | closed | quit


class _Controls:
    """Playback state driven by keys: pause, step, speed, quit."""

    def __init__(self, speed: float, sleep: Callable[[float], Awaitable[None]], clock: Callable[[], float]) -> None:
        self.speed = speed
        self.paused = False
        self.steps = 0
        self.quit = False
        self.interactive = False
        self.polled = 0.0  # real seconds spent waiting for a live file since the last event played
        self._changed = asyncio.Event()
        self._sleep = sleep
        self._clock = clock

    async def consume(self, keys: AsyncIterator[str]) -> None:
        """Apply keys as they come; when keys run out, a paused playback resumes rather than hangs."""
        self.interactive = True
        async for key in keys:
            for k in key:
                if k == " ":
                    self.paused = not self.paused
                elif k == "." and self.paused:
                    self.steps += 1
                elif k == "+":
                    self.speed = min(self.speed * 2, 64.0)
                elif k == "-":
                    self.speed = max(self.speed / 2, 1 / 64)
                elif k in "qQ":
                    self.quit = True
            self._changed.set()
            if self.quit:
                return
        self.interactive = False
        self.paused = False
        self._changed.set()

    async def _interruptible(self, seconds: float) -> bool:
        """Sleep; returns True if a key changed the state first."""
        if not self.interactive:
            await self._sleep(seconds)
            return False
        self._changed.clear()
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waiter = asyncio.ensure_future(self._changed.wait())
        done, pending = await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return sleeper not in done

    async def delay(self, recorded_seconds: float) -> None:
        """Wait out a gap of recording time at the current speed, honouring pause and step."""
        remaining = recorded_seconds
        while not self.quit:
            if self.paused:
                if self.steps:
                    self.steps -= 1
                    return
                self._changed.clear()
                await self._changed.wait()
                continue
            if remaining <= 0:
                return
            speed, start = self.speed, self._clock()
            if not await self._interruptible(remaining / speed):
                return
            remaining -= (self._clock() - start) * speed

    async def poll(self, seconds: float) -> None:
        """Wait for a live file to grow (real time, not scaled); a quit key cuts it short."""
        start = self._clock()
        await self._interruptible(seconds)
        self.polled += self._clock() - start


async def play(
    cast_path: Path,
    out: TextIO,
    *,
    speed: float = 1.0,
    idle_limit: float | None = None,
    keys: AsyncIterator[str] | None = None,
    follow: bool = False,
    is_live: Callable[[], bool] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] | None = None,
    poll_interval: float = 0.25,
    settle: float = 2.0,
) -> ReplayResult:
    """Play a terminal recording's output in real time (scaled by `speed`, gaps capped at `idle_limit`).

    Keys: space pauses/resumes, ``.`` steps one event while paused, ``+``/``-`` double/halve the
    speed, ``q`` quits. With `follow`, a recording still being written is played as it grows until
    an ``END_MARKER`` marker, or until `is_live()` is false and the file has not grown for `settle`
    seconds. `sleep` and `clock` are injectable so that tests need no real time.
    """
    if speed <= 0:
        raise ValueError("speed must be positive")
    result = ReplayResult()
    controls = _Controls(speed, sleep, clock or asyncio.get_running_loop().time)
    key_task = asyncio.ensure_future(controls.consume(keys)) if keys is not None else None
    if key_task is not None:
        await asyncio.sleep(0)  # let keys already waiting apply before the first event
    screen = Neutraliser(keep_sgr=True)
    events = _live_events(cast_path, follow, is_live, controls, poll_interval, settle, result)
    try:
        prev_t = 0.0
        async for t, code, data in events:
            if code == "m" and schema.parse_marker(data).kind == schema.END:
                result.ended_by = "end-marker"
                break
            if code != "o":
                continue
            gap = max(0.0, t - prev_t)
            gap = min(gap, idle_limit) if idle_limit is not None else gap
            # Time already spent waiting for a live file counts: replay must not lag behind it.
            await controls.delay(gap - controls.polled * controls.speed)
            controls.polled = 0.0
            if controls.quit:
                break
            out.write(screen.feed(data))
            out.flush()
            prev_t = t
            result.events += 1
        if controls.quit:
            result.quit, result.ended_by = True, "quit"
    finally:
        await events.aclose()  # closes the file now, not whenever the generator is collected
        if key_task is not None:
            key_task.cancel()
        out.write(screen.flush() + LEAVE_TERMINAL)
        out.flush()
    return result


async def _live_events(
    path: Path,
    follow: bool,
    is_live: Callable[[], bool] | None,
    controls: _Controls,
    poll_interval: float,
    settle: float,
    result: ReplayResult,
) -> AsyncGenerator[TermEvent, None]:
    """Events of a recording; with `follow`, keep reading while the file grows."""
    with TerminalReader(path, result.warnings) as reader:
        if follow and reader.binary:
            result.warnings.append("binary stream recordings are not followed live: played as they are")
        stalled = 0.0
        while True:
            batch = reader.read()
            for ev in batch:
                yield ev
            if controls.quit:
                return
            if batch:
                stalled = 0.0
                continue
            if not follow or reader.binary:
                break
            if stalled >= settle and not (is_live() if is_live is not None else False):
                result.ended_by = "closed"
                break
            await controls.poll(poll_interval)
            stalled += poll_interval
        for ev in reader.finish():
            yield ev


def print_cast(cast_path: Path, out: TextIO, *, show_markers: bool = False) -> ReplayResult:
    """Print the final text of a terminal recording: plain, sanitised, grep-friendly."""
    result = ReplayResult()
    screen = LineScreen()
    for _t, code, data in terminal_events(cast_path, result.warnings):
        if code == "o":
            screen.feed(data)
            result.events += 1
        elif code == "m" and show_markers:
            screen.feed(f"\r\n# {neutralise(data)}\r\n")
    text = screen.text()
    out.write(text + "\n" if text else "")
    return result


_COLORS = {"allowed": "32", "denied": "31;1", "killed": "35;1", "error": "33", "tx": "36", "dim": "2"}


def print_statements(jsonl_path: Path, out: TextIO, color: bool = False) -> ReplayResult:
    """Print a SQL session's statement transcript (time, verdict, statement, outcome)."""
    result = ReplayResult()

    def paint(style: str, text: str) -> str:
        return f"\x1b[{_COLORS[style]}m{text}\x1b[0m" if color else text

    for ev in sql_lines(jsonl_path, result.warnings):
        out.write(_statement_line(ev, paint) + "\n")
        result.events += 1
    return result


def _clean(value: object) -> str:
    """A recorded value made safe and single-line-ish for the transcript."""
    return neutralise(str(value)).replace("\n", "\n           ")


_VERDICTS = {"allow": "allowed", "alert": "alert", "deny": "denied", "kill": "killed"}


def _format_time(value: object) -> str:
    """A unix time as ISO 8601 UTC; anything else as given."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return _clean(value)


def _as_text(p: str) -> str | None:
    """A hex-shown (binary format) value as text when it is printable UTF-8: asyncpg sends text binary."""
    if not p.startswith("\\x"):
        return None
    try:
        text = "\u2026".join(bytes.fromhex(part).decode() for part in p[2:].split("\u2026"))
    except ValueError:
        return None
    printable = all(c.isprintable() or c in " \t\r\n" for c in text)
    return text if printable and text.strip(" \t\r\n\u2026") else None


def _params_shown(st: Statement) -> list[str]:
    """Each bind parameter short enough to read, never cut so that its payload is hidden.

    A value padded with blanks is shown trimmed; a long one as its head and its (longer) tail, with its
    full length: the whole value is in the recording's sidecar (``gateway search`` looks there). A
    hex one (binary format) that is printable UTF-8 is shown as that text too.
    """
    sizes = {e.index: e.size for e in st.long_params}
    out: list[str] = []
    for i, p in enumerate(st.params or ()):
        text = _as_text(p)
        shown = p if text is None else text
        size = sizes.get(i) or len(shown)
        note = "" if text is None else " (hex shown as text)"
        if len(p) <= 240 and size == len(shown):
            out.append(p if text is None else f"{p} = {text!r}")
            continue
        core = "\u2026".join(part.strip() for part in shown.split("\u2026"))  # head and tail trimmed apart
        trimmed = ", blanks trimmed" if len(core) < len(shown) else ""
        note += f" ({size} {'bytes' if i in sizes else 'chars'}{trimmed})"
        out.append((core if len(core) <= 240 else core[:80] + "\u2026" + core[-160:]) + note)
    return out


def _stamp(t: float | None, paint: Callable[[str, str], str]) -> str:
    return paint("dim", f"[{t:9.3f}s]" if t is not None else "[        ?]")


def _statement_line(ev: SqlHeader | Statement | SqlEvent, paint: Callable[[str, str], str]) -> str:
    """Format one recording event for the transcript."""
    if isinstance(ev, SqlHeader):
        fields = "  ".join(
            f"{k} {_format_time(v) if k == 'started_at' else _clean(v)}"
            for k, v in ev.fields.items()
            if k not in ("type", schema.VERSION_KEY)
        )
        return paint("dim", f"# {fields}")
    if isinstance(ev, SqlEvent):
        return _event_line(ev, paint)
    stamp = _stamp(ev.t, paint)
    verdict = _VERDICTS.get(ev.verdict, "allowed")
    rule = f" [{_clean(ev.rule)}]" if ev.rule else ""
    details: list[str] = []
    # The gateway's own refusals carry SQLSTATE 42501 too: the verdict says more than the error does.
    if verdict == "denied":
        label = paint("denied", "DENIED" + rule)
    elif verdict == "killed":
        label = paint("killed", "KILLED" + rule)
    elif ev.sqlstate or ev.error:
        label = paint("error", f"ERROR {_clean(ev.sqlstate)}".rstrip())
        details.append(_clean(ev.error))
    elif verdict == "alert":
        label = paint("error", "ALERT" + rule)
    else:
        label = paint("allowed", "ALLOWED")
    if verdict != "allowed" and ev.reason:
        details.append(_clean(ev.reason))
    if ev.rows is not None:
        details.append(f"{ev.rows} row{'s' if ev.rows != 1 else ''}")
    if ev.duration_ms is not None:
        details.append(f"{ev.duration_ms:.1f} ms")
    if ev.params:
        details.append(_clean("params " + ", ".join(_params_shown(ev))))
    line = f"{stamp} {label}  {_clean(ev.sql)}"
    if any(details):
        line += paint("dim", "  -- " + ", ".join(d for d in details if d))
    return line


def _event_line(ev: SqlEvent, paint: Callable[[str, str], str]) -> str:
    """A transaction, kill, end or other event for the transcript."""
    stamp = _stamp(ev.t, paint)
    if ev.type == schema.TRANSACTION:
        outcome = str(ev.fields.get("outcome", "?")).lower()
        word = {"commit": "committed", "rollback": "rolled back"}.get(outcome, _clean(outcome))
        return f"{stamp} {paint('tx', 'transaction ' + word)}"
    if ev.type in (schema.KILL_EVENT, schema.END_EVENT):
        killed = ev.type == schema.KILL_EVENT
        reason = f"  {_clean(ev.reason)}" if "reason" in ev.fields else ""
        return f"{stamp} {paint('killed' if killed else 'dim', 'KILLED' if killed else 'END')}{reason}"
    rest = "  ".join(f"{k}={_clean(v)}" for k, v in ev.fields.items())
    return f"{stamp} {_clean(ev.type or '?').upper()}  {rest}"
