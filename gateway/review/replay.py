"""Show recordings to a reviewer: real-time terminal replay, final text, SQL statement transcripts.

Terminal recordings are asciicast v2 (``gateway.recording.AsciicastRecorder``) or binary streams
(``BinaryStreamRecorder``, exec sessions without a PTY). Output always goes through
``gateway.review.sanitize``: a recording is attacker-controlled text and the reviewer's terminal is
the target.

SQL statement recordings (``StatementRecorder``) are JSON lines, as ``gateway/pg/journal.py`` writes
them. ``t`` is seconds since the session started; every other key is optional, ``null`` means absent
and unknown keys are ignored::

    {"type": "header", "session": "s-1", "user": "alice", "target": "orders-db", "database": "shop",
     "login": "ro_alice", "scope": ..., "grant": "jti", "client": "10.0.0.7:50112",
     "application_name": "psql", "started_at": 1764210136.2, "protocol": "postgres"}     first line
    {"type": "statement", "t": 1.5,
     "sql": "SELECT ...",                               the statement text as the client sent it
     "params": ["42", "\\x00ff"] | null,               bind parameters (extended protocol), each whole
                                                        up to 2048 bytes, longer ones as head + U+2026 + tail
     "long_params": [{"index": 0, "bytes": 3100, "sha256": "...", "offset": 0, "format": "text"}],
                                                        the long ones, whole in the sidecar <session>.sql.blobs
                                                        at `offset` (see gateway/recording/sidecar.py)
     "fingerprint": "...", "kind": "select", "tables": ["orders"],
     "verdict": "allow" | "alert" | "deny" | "kill",    the policy decision
     "rule": "read-only", "reason": "UPDATE on orders", why (deny / kill / alert)
     "rows": 50, "duration_ms": 0.8,                    when it ran
     "sqlstate": "42P01", "error": "relation ... does not exist",   when the server refused it
     "tx": "idle" | "transaction" | "failed"}           transaction state (ReadyForQuery I / T / E)
    {"type": "transaction", "t": 9.1, "outcome": "commit" | "rollback"}   a transaction block ended
    {"type": "kill", "t": 12.0, "reason": "grant revoked"}                the session was killed
    {"type": "end", "t": 12.1, "reason": "client closed"}                 the session ended
    {"type": "tripwire", "t": 3.0, "parameter": "is_superuser", "value": "on", "reason": ...}  a wall fell
    {"type": "sidecar", "file": "s-1.sql.blobs", "bytes": 3100, "sha256": "..."}   last line, when there is one

Any other ``type`` is printed generically. Also read: verdicts ``allowed``/``denied``/``killed``.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.recording import RecordingError, read_binary_stream
from gateway.review.sanitize import LineScreen, Neutraliser, neutralise

END_MARKER = "session end"
"""Label prefix of the marker a front end writes just before closing a terminal recording."""

LEAVE_TERMINAL = "\x1b[0m\x1b[?25h\x1b7\x1b[r\x1b8"
"""After a replay: reset colours, show the cursor, reset the scroll region, and leave the cursor where the replay
left it. Resetting the scroll region (DECSTBM) also homes the cursor, and the shell prompt would then overwrite the
replay from the top-left: so it runs between a cursor save (DECSC) and restore (DECRC)."""

PLAYBACK_KEYS = "space pause/resume, . one step while paused, + faster, - slower, q quit"
"""The keys `play` obeys, for help texts."""

Event = tuple[float, str, str]
_READ_CHUNK = 1 << 20


@dataclass
class ReplayResult:
    """What happened while showing a recording."""

    events: int = 0
    warnings: list[str] = field(default_factory=list)
    quit: bool = False
    ended_by: str = "eof"  # eof | end-marker | closed | quit


def _parse_event(line: bytes, lineno: int, warnings: list[str]) -> Event | None:
    """One ``[t, code, data]`` line, or None with a warning."""
    try:
        ev = json.loads(line)
    except ValueError:
        ev = None
    if (
        isinstance(ev, list)
        and len(ev) == 3
        and isinstance(ev[0], int | float)
        and isinstance(ev[1], str)
        and isinstance(ev[2], str)
    ):
        return float(ev[0]), ev[1], ev[2]
    warnings.append(f"line {lineno} does not parse as an asciicast event: skipped")
    return None


class _LineReader:
    """Reads complete lines from a file that may still be growing."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "rb")  # closed by close()
        self._partial = b""
        self.lineno = 0

    def read_lines(self) -> list[tuple[int, bytes]]:
        """Every complete line appended since the last call, numbered from 1."""
        lines: list[tuple[int, bytes]] = []
        while chunk := self._f.read(_READ_CHUNK):
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            for line in complete:
                self.lineno += 1
                lines.append((self.lineno, line))
            if len(lines) > 1000:
                break
        return lines

    def close(self) -> None:
        """Close the file."""
        self._f.close()

    def tail_event(self, warnings: list[str]) -> Event | None:
        """The last line if it lacks its newline: kept if it parses, else reported as torn."""
        tail, lineno = self._partial, self.lineno + 1
        if not tail:
            return None
        ev = _parse_event(tail, lineno, [])
        if ev is None:
            warnings.append(f"line {lineno} is torn (recording cut off): skipped")
        else:
            warnings.append(f"line {lineno} lacks its newline (recording cut off)")
        return ev


def _read_header(line: bytes, warnings: list[str]) -> dict[str, Any] | None:
    """The asciicast v2 header, or None if this is not an asciicast file."""
    try:
        header = json.loads(line)
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    if header.get("version") != 2:
        warnings.append(f"asciicast version {header.get('version')!r}, expected 2")
    return header


def _is_binary(path: Path) -> bool:
    """True for a binary stream recording (JSON header line with its format name)."""
    try:
        read_binary_stream(path)
    except (RecordingError, OSError):
        return False
    return True


def iter_events(path: Path, warnings: list[str]) -> Iterator[Event]:
    """All events of a complete terminal recording (asciicast or binary stream), with warnings."""
    if _is_binary(path):
        yield from _binary_events(path, warnings)
        return
    reader = _LineReader(path)
    try:
        header_seen = False
        while batch := reader.read_lines():
            for lineno, line in batch:
                if not header_seen:
                    header_seen = True
                    if _read_header(line, warnings) is None:
                        raise RecordingError("not an asciicast recording (first line is not a JSON header)")
                    continue
                ev = _parse_event(line, lineno, warnings)
                if ev is not None:
                    yield ev
        if not header_seen:
            raise RecordingError("not an asciicast recording (no complete header line)")
        ev = reader.tail_event(warnings)
        if ev is not None:
            yield ev
    finally:
        reader.close()


def _binary_events(path: Path, warnings: list[str]) -> Iterator[Event]:
    """Binary stream frames as asciicast-like events (stdout and stderr both become "o")."""
    _, frames = read_binary_stream(path)
    decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in "oei"}
    try:
        for frame in frames:
            if frame.stream in decoders:
                text = decoders[frame.stream].decode(frame.data)
                if text:
                    yield frame.t, "i" if frame.stream == "i" else "o", text
            elif frame.stream in ("m", "r"):
                yield frame.t, frame.stream, frame.data.decode("utf-8", "replace")
    except RecordingError as exc:
        warnings.append(f"{exc} (recording cut off): the rest is skipped")


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
            if code == "m" and data.startswith(END_MARKER):
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
) -> AsyncGenerator[Event, None]:
    """Events of a recording; with `follow`, keep reading while the file grows."""
    if _is_binary(path):
        if follow:
            result.warnings.append("binary stream recordings are not followed live: played as they are")
        for frame_event in _binary_events(path, result.warnings):
            yield frame_event
        return
    reader = _LineReader(path)
    try:
        header_seen = False
        stalled = 0.0
        while True:
            batch = reader.read_lines()
            for lineno, line in batch:
                if not header_seen:
                    header_seen = True
                    if _read_header(line, result.warnings) is None:
                        raise RecordingError("not an asciicast recording (first line is not a JSON header)")
                    continue
                ev = _parse_event(line, lineno, result.warnings)
                if ev is not None:
                    yield ev
            if controls.quit:
                return
            if batch:
                stalled = 0.0
                continue
            if not follow:
                break
            if stalled >= settle and not (is_live() if is_live is not None else False):
                result.ended_by = "closed"
                break
            await controls.poll(poll_interval)
            stalled += poll_interval
        ev = reader.tail_event(result.warnings) if header_seen else None
        if ev is not None:
            yield ev
    finally:
        reader.close()


def print_cast(cast_path: Path, out: TextIO, *, show_markers: bool = False) -> ReplayResult:
    """Print the final text of a terminal recording: plain, sanitised, grep-friendly."""
    result = ReplayResult()
    screen = LineScreen()
    for _t, code, data in iter_events(cast_path, result.warnings):
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

    with open(jsonl_path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            torn = not line.endswith(b"\n")
            try:
                ev = json.loads(line)
            except ValueError:
                ev = None
            if not isinstance(ev, dict):
                what = "is torn (recording cut off)" if torn else "does not parse as a JSON object"
                result.warnings.append(f"line {lineno} {what}: skipped")
                continue
            if torn:
                result.warnings.append(f"line {lineno} lacks its newline (recording cut off)")
            out.write(_statement_line(ev, paint) + "\n")
            result.events += 1
    return result


def _clean(value: object) -> str:
    """A recorded value made safe and single-line-ish for the transcript."""
    return neutralise(str(value)).replace("\n", "\n           ")


_VERDICTS = {
    "allow": "allowed", "allowed": "allowed", "alert": "alert", "deny": "denied", "denied": "denied",
    "kill": "killed", "killed": "killed",
}  # fmt: skip


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


def _params_shown(ev: dict[str, Any]) -> list[str]:
    """Each bind parameter short enough to read, never cut so that its payload is hidden.

    A value padded with blanks is shown trimmed; a long one as its head and its (longer) tail, with its
    full length: the whole value is in the recording's sidecar (``gateway search`` looks there). A
    hex one (binary format) that is printable UTF-8 is shown as that text too.
    """
    sizes = {e.get("index"): e.get("bytes") for e in ev.get("long_params") or () if isinstance(e, dict)}
    out: list[str] = []
    for i, p in enumerate(map(str, ev["params"])):
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


def _statement_line(ev: dict[str, Any], paint: Callable[[str, str], str]) -> str:
    """Format one JSONL event for the transcript."""
    ev = {k: v for k, v in ev.items() if v is not None}
    kind = ev.get("type", "statement")
    if kind == "header":
        fields = "  ".join(
            f"{k} {_format_time(v) if k == 'started_at' else _clean(v)}" for k, v in ev.items() if k != "type"
        )
        return paint("dim", f"# {fields}")
    t = ev.get("t")
    stamp = paint("dim", f"[{t:9.3f}s]" if isinstance(t, int | float) else "[        ?]")
    if kind in ("transaction", "tx"):
        outcome = str(ev.get("outcome", ev.get("tx", "?"))).lower()
        word = {"commit": "committed", "rollback": "rolled back"}.get(outcome, _clean(outcome))
        return f"{stamp} {paint('tx', 'transaction ' + word)}"
    if kind in ("kill", "end"):
        label = "KILLED" if kind == "kill" else "END"
        reason = f"  {_clean(ev['reason'])}" if "reason" in ev else ""
        return f"{stamp} {paint('killed' if kind == 'kill' else 'dim', label)}{reason}"
    if kind != "statement":
        rest = "  ".join(f"{k}={_clean(v)}" for k, v in ev.items() if k not in ("type", "t"))
        return f"{stamp} {_clean(kind).upper()}  {rest}"
    verdict = _VERDICTS.get(str(ev.get("verdict", "allow")).lower(), "allowed")
    rule = f" [{_clean(ev['rule'])}]" if "rule" in ev else ""
    details: list[str] = []
    # The gateway's own refusals carry SQLSTATE 42501 too: the verdict says more than the error does.
    if verdict == "denied":
        label = paint("denied", "DENIED" + rule)
    elif verdict == "killed":
        label = paint("killed", "KILLED" + rule)
    elif "sqlstate" in ev or "error" in ev:
        label = paint("error", f"ERROR {_clean(ev.get('sqlstate', ''))}".rstrip())
        details.append(_clean(ev.get("error", "")))
    elif verdict == "alert":
        label = paint("error", "ALERT" + rule)
    else:
        label = paint("allowed", "ALLOWED")
    if verdict != "allowed" and "reason" in ev:
        details.append(_clean(ev["reason"]))
    if isinstance(ev.get("rows"), int):
        details.append(f"{ev['rows']} row{'s' if ev['rows'] != 1 else ''}")
    if isinstance(ev.get("duration_ms"), int | float):
        details.append(f"{ev['duration_ms']:.1f} ms")
    if isinstance(ev.get("params"), list) and ev["params"]:
        details.append(_clean("params " + ", ".join(_params_shown(ev))))
    line = f"{stamp} {label}  {_clean(ev.get('sql', ''))}"
    if any(details):
        line += paint("dim", "  -- " + ", ".join(d for d in details if d))
    return line
