"""The three recording formats: asciicast v2, SQL statement JSON lines, framed binary streams."""

from __future__ import annotations

import asyncio
import codecs
import json
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO, Any

from gateway.recording.sidecar import Sidecar, sidecar_path
from gateway.recording.writer import DEFAULT_MAX_BACKLOG, FLUSH_DELAY, PendingEvent, Recorder, RecordingError

_FRAME = struct.Struct(">cII")
# The sidecar takes whole Bind parameters (up to 256 MiB each): they are in memory already when attached.
SIDECAR_MAX_BACKLOG = 512 << 20
_BINARY_FORMAT = "gateway-binary-stream"


def _utf8_decoder() -> codecs.IncrementalDecoder:
    """A per-stream decoder: a character split across chunks is joined, bad bytes become U+FFFD."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


class AsciicastRecorder(Recorder):
    """asciicast v2 recording of a terminal session (output, input, resizes, markers)."""

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        width: int,
        height: int,
        title: str,
        env: dict[str, str],
        started_at: float,
        on_failure: Callable[[str], None],
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        clock: Callable[[], float] = time.monotonic,
    ) -> AsciicastRecorder:
        """Create the file and write the header line; raises RecordingError if that fails."""
        rec = cls(path, on_failure=on_failure, started_at=started_at, max_backlog=max_backlog, clock=clock)
        header = {
            "version": 2,
            "width": int(width),
            "height": int(height),
            "timestamp": int(started_at),
            "title": title,
            "env": dict(env),
        }
        rec._write_header(json.dumps(header) + "\n")
        return rec

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._decoders = {"o": _utf8_decoder(), "i": _utf8_decoder()}
        self._last_t = 0.0

    def output(self, data: bytes) -> None:
        """Record terminal output: ``[t, "o", text]``."""
        if data:
            self._append("o", data, len(data), True)

    def input(self, data: bytes) -> None:
        """Record keystrokes / pasted input: ``[t, "i", text]``."""
        if data:
            self._append("i", data, len(data), True)

    def resize(self, width: int, height: int) -> None:
        """Record a terminal resize: ``[t, "r", "WxH"]``."""
        self._append("r", f"{int(width)}x{int(height)}", 16, False)

    def marker(self, label: str) -> None:
        """Record a marker: ``[t, "m", label]`` (the SSH front end marks command lines with these)."""
        self._append("m", label, len(label) + 16, False)

    def _encode(self, batch: list[PendingEvent], final: bool) -> bytes:
        """One ``[t, code, data]`` line per event, ASCII-only JSON."""
        lines: list[str] = []
        for ev in batch:
            if ev.kind in self._decoders:
                raw = ev.parts[0] if len(ev.parts) == 1 else b"".join(ev.parts)
                text = self._decoders[ev.kind].decode(raw)
                if not text:  # only the first bytes of a split character: they go out with the rest
                    continue
            else:
                text = ev.parts[0]
            lines.append(f'[{ev.t:.6f}, "{ev.kind}", {encode_basestring_ascii(text)}]\n')
            self._last_t = ev.t
        if final:
            for kind, decoder in self._decoders.items():
                tail = decoder.decode(b"", final=True)
                if tail:
                    lines.append(f'[{self._last_t:.6f}, "{kind}", {encode_basestring_ascii(tail)}]\n')
        return "".join(lines).encode("ascii")


class StatementRecorder(Recorder):
    """JSON-lines recording of a SQL session: a header line, then one object per event.

    Events are encoded on the calling thread (the event loop), when recorded, and the lines handed to the
    shared writer thread in one bytes object per ~FLUSH_DELAY (``loop.call_later``): the writer only does
    ``os.write``/hashing, which release the GIL, so it never holds the GIL the relay's loop is waiting for.
    A recorder opened inside a running loop must be fed from that loop's thread; one opened outside a loop
    hands every line over at once. ``record_line`` takes a line the caller has already encoded (the Postgres
    journal renders its statement lines from cached fragments); ``record`` encodes a dict with ``json``.
    """

    MAX_BUFFERED_LINES = 4096  # hand over early past this many lines (a burst of tiny statements)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        header: dict[str, Any],
        on_failure: Callable[[str], None],
        started_at: float | None = None,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        clock: Callable[[], float] = time.monotonic,
    ) -> StatementRecorder:
        """Create the file and write ``{"type": "header", ...header}``; raises RecordingError on failure."""
        rec = cls(path, on_failure=on_failure, started_at=started_at, max_backlog=max_backlog, clock=clock)
        line = {"type": "header", **{k: v for k, v in header.items() if k != "type"}}
        rec._write_header(_dump_event(line) + "\n")
        return rec

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._lines: list[str] = []
        self._handoff_timer: asyncio.TimerHandle | None = None
        self._sidecar: Sidecar | None = None
        self._sidecar_kwargs = {k: v for k, v in kwargs.items() if k in ("clock", "started_at")}

    def attach(self, data: bytes) -> int:
        """Keep a value too long for a line in the sidecar file (created on first use); its offset there."""
        if self._sidecar is None:
            try:
                self._sidecar = Sidecar(sidecar_path(self.path), on_failure=lambda why: self._fail(f"sidecar: {why}"),
                                        max_backlog=max(self._max_backlog, SIDECAR_MAX_BACKLOG),
                                        **self._sidecar_kwargs)  # fmt: skip
            except RecordingError as exc:
                self._fail(f"sidecar: {exc}")
                return 0
        return self._sidecar.attach(data)

    def record(self, event: dict[str, Any]) -> None:
        """Queue one event (encoded now); ``t`` (seconds since start) is added if missing."""
        ev = dict(event) if "t" in event else {"t": round(self.elapsed(), 6), **event}
        self.record_line(_dump_event(ev) + "\n")

    def record_line(self, line: str) -> None:
        """Queue one already-encoded event: a single JSON object, ASCII only, ending in a newline."""
        if self._failed is not None or self._closing:
            return
        lines = self._lines
        lines.append(line)
        if len(lines) == 1:
            if self._loop is None:
                self._handoff()
            else:
                self._handoff_timer = self._loop.call_later(FLUSH_DELAY, self._handoff)
        elif len(lines) >= self.MAX_BUFFERED_LINES:
            self._handoff()

    def _handoff(self) -> None:
        """Give the buffered lines to the writer thread as one bytes object."""
        if self._handoff_timer is not None:
            self._handoff_timer.cancel()
            self._handoff_timer = None
        lines, self._lines = self._lines, []
        if not lines:
            return
        try:
            data = "".join(lines).encode("ascii")
        except UnicodeEncodeError:  # a caller broke record_line's contract: fail closed, like an encoder error
            self._fail("recording encoder error: UnicodeEncodeError")
            return
        self._append("s", data, len(data), False)

    async def close(self) -> str:
        """Close the sidecar and record its hash in the last line, then flush, fsync and close (see Recorder.close)."""
        side = self._sidecar
        if side is not None and not self._closing:
            try:
                digest = await side.close()
            except RecordingError as exc:
                self._fail(f"sidecar: {exc}")
            else:
                self.record({"type": "sidecar", "file": side.path.name, "bytes": side.size, "sha256": digest})
        self._handoff()
        return await super().close()

    def _encode(self, batch: list[PendingEvent], final: bool) -> bytes:
        """The lines were encoded on the loop: join the handed-over chunks."""
        if len(batch) == 1:
            data: bytes = batch[0].parts[0]
            return data
        return b"".join(ev.parts[0] for ev in batch)


def _dump_event(ev: dict[str, Any]) -> str:
    """Compact ASCII JSON; values JSON cannot carry are written as str() rather than failing."""
    return json.dumps(ev, separators=(",", ":"), default=str)


class BinaryStreamRecorder(Recorder):
    """Raw-bytes recording of an exec session without a terminal (see the module docstring)."""

    STREAMS = {"o": "stdout", "e": "stderr", "i": "stdin", "m": "marker", "r": "resize"}

    # Bulk streams (scp, tar over exec): the writer is woken at 1 MiB behind and writes in ~1 MiB slices,
    # releasing backlog after each, so the writer's join, SHA-256 and write stay in cache and the relay
    # may go on; it is asked to pause only at 16 MiB behind (down to 8 MiB), which rides out the kernel's
    # dirty-page throttling of the writer (bench/ssh.py; see docs/benchmarks.md, SSH front end).
    urgent_backlog = 1 << 20
    drain_high_water = 16 << 20
    drain_low_water = 8 << 20
    write_slice = 1 << 20

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        title: str,
        env: dict[str, str],
        started_at: float,
        on_failure: Callable[[str], None],
        width: int = 80,
        height: int = 24,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        clock: Callable[[], float] = time.monotonic,
    ) -> BinaryStreamRecorder:
        """Create the file and write the JSON header line; raises RecordingError on failure."""
        rec = cls(path, on_failure=on_failure, started_at=started_at, max_backlog=max_backlog, clock=clock)
        header = {
            "format": _BINARY_FORMAT,
            "version": 1,
            "width": int(width),
            "height": int(height),
            "timestamp": int(started_at),
            "title": title,
            "env": dict(env),
            "streams": cls.STREAMS,
        }
        rec._write_header(json.dumps(header) + "\n")
        return rec

    def stdout(self, data: bytes) -> None:
        """Record bytes the server sent on stdout."""
        if data:
            self._append("o", data, len(data), True)

    def stderr(self, data: bytes) -> None:
        """Record bytes the server sent on stderr."""
        if data:
            self._append("e", data, len(data), True)

    def stdin(self, data: bytes) -> None:
        """Record bytes the client sent."""
        if data:
            self._append("i", data, len(data), True)

    output = stdout  # same calls as AsciicastRecorder, so a front end can hold either
    input = stdin

    def resize(self, width: int, height: int) -> None:
        """Record a window change (rare without a terminal, kept for the same interface)."""
        self._append("r", f"{int(width)}x{int(height)}".encode(), 16, False)

    def marker(self, label: str) -> None:
        """Record a marker (UTF-8 label)."""
        data = label.encode("utf-8", "replace")
        self._append("m", data, len(data) + 16, False)

    def _encode(self, batch: list[PendingEvent], final: bool) -> bytes:
        """One frame per event."""
        out: list[bytes] = []
        for ev in batch:
            data = ev.parts[0] if len(ev.parts) == 1 else b"".join(ev.parts)
            t_ms = min(int(ev.t * 1000), 0xFFFFFFFF)
            out.append(_FRAME.pack(ev.kind.encode(), t_ms, len(data)))
            out.append(data)
        return b"".join(out)

    @staticmethod
    def to_asciicast(src: Path, out: IO[str]) -> bool:
        """Convert a binary stream recording to asciicast v2; see ``binary_to_asciicast``."""
        return binary_to_asciicast(src, out)


@dataclass(frozen=True)
class Frame:
    """One frame of a binary stream recording."""

    stream: str
    t: float
    data: bytes


def read_binary_stream(src: Path) -> tuple[dict[str, Any], Iterator[Frame]]:
    """Open a binary stream recording: its header and an iterator of frames.

    The iterator raises RecordingError after the last whole frame if the file ends in a torn one.
    """
    with open(src, "rb") as f:
        line = f.readline(1 << 20)
    try:
        header = json.loads(line) if line.endswith(b"\n") else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != _BINARY_FORMAT:
        raise RecordingError("not a binary stream recording")

    def frames() -> Iterator[Frame]:
        with open(src, "rb") as f:
            offset = f.seek(len(line))
            while True:
                head = f.read(_FRAME.size)
                if not head:
                    return
                if len(head) < _FRAME.size:
                    raise RecordingError(f"torn frame header at offset {offset}")
                stream, t_ms, length = _FRAME.unpack(head)
                data = f.read(length)
                if len(data) < length:
                    raise RecordingError(f"torn frame at offset {offset}")
                offset += _FRAME.size + length
                yield Frame(stream.decode("latin-1"), t_ms / 1000, data)

    return header, frames()


def binary_to_asciicast(src: Path, out: IO[str]) -> bool:
    """Write an asciicast v2 version of a binary stream recording to `out`.

    Returns False if the recording ends in a torn frame (everything before it is converted).
    """
    header, frames = read_binary_stream(src)
    cast_header = {k: header[k] for k in ("width", "height", "timestamp", "title", "env") if k in header}
    out.write(json.dumps({"version": 2, **cast_header}) + "\n")
    decoders = {"o": _utf8_decoder(), "e": _utf8_decoder(), "i": _utf8_decoder()}
    code = {"o": "o", "e": "o", "i": "i"}
    t = 0.0
    complete = True
    try:
        for frame in frames:
            t = frame.t
            if frame.stream in decoders:
                kind, text = code[frame.stream], decoders[frame.stream].decode(frame.data)
            elif frame.stream in ("m", "r"):
                kind, text = frame.stream, frame.data.decode("utf-8", "replace")
            else:
                continue
            if text:
                out.write(f"[{t:.6f}, {json.dumps(kind)}, {encode_basestring_ascii(text)}]\n")
    except RecordingError:
        complete = False
    for stream, decoder in decoders.items():
        tail = decoder.decode(b"", final=True)
        if tail:
            out.write(f'[{t:.6f}, "{code[stream]}", {encode_basestring_ascii(tail)}]\n')
    return complete
