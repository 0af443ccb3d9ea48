"""The three recording formats: asciicast v2, SQL statement JSON lines, framed binary streams."""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from gateway.recording import blocks, schema
from gateway.recording.blocks import BlockPacker
from gateway.recording.reader import FRAME, binary_to_asciicast
from gateway.recording.sidecar import Sidecar, sidecar_path
from gateway.recording.writer import DEFAULT_MAX_BACKLOG, FLUSH_DELAY, PendingEvent, Recorder, RecordingError

# The sidecar takes whole Bind parameters (up to 256 MiB each): they are in memory already when attached.
SIDECAR_MAX_BACKLOG = 512 << 20


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
        rec._write_header(schema.cast_header(width=width, height=height, timestamp=started_at, title=title, env=env))
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
            lines.append(schema.cast_event(ev.t, ev.kind, text))
            self._last_t = ev.t
        if final:
            for kind, decoder in self._decoders.items():
                tail = decoder.decode(b"", final=True)
                if tail:
                    lines.append(schema.cast_event(self._last_t, kind, tail))
        return "".join(lines).encode("ascii")


class StatementRecorder(Recorder):
    """JSON-lines recording of a SQL session: a header line, then one object per event.

    Events are encoded on the calling thread (the event loop), when recorded, and the lines handed to the
    shared writer thread in one bytes object per ~FLUSH_DELAY (``loop.call_later``): the writer only does
    ``os.write``/hashing, which release the GIL, so it never holds the GIL the relay's loop is waiting for.
    A recorder opened inside a running loop must be fed from that loop's thread; one opened outside a loop
    hands every line over at once. ``record_line`` takes a line the caller has already encoded (the Postgres
    journal renders its statement lines with `schema.StatementEncoder`); ``record`` encodes a dict
    (`schema.encode_event`); ``end`` writes the last event.
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
        """Create the file and write its header line (`schema.sql_header_line`); raises RecordingError on failure."""
        rec = cls(path, on_failure=on_failure, started_at=started_at, max_backlog=max_backlog, clock=clock)
        rec._write_header(schema.sql_header_line(header))
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
        self.record_line(schema.encode_event(ev))

    def end(self, reason: str) -> None:
        """The session ended (the last event before the sidecar's)."""
        self.record_line(schema.event_line(self.elapsed(), schema.END_EVENT, reason=reason))

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
                self.record_line(schema.event_line(self.elapsed(), schema.SIDECAR, file=side.path.name, bytes=side.size,
                                                   sha256=digest))  # fmt: skip
        self._handoff()
        return await super().close()

    def _encode(self, batch: list[PendingEvent], final: bool) -> bytes:
        """The lines were encoded on the loop: join the handed-over chunks."""
        if len(batch) == 1:
            data: bytes = batch[0].parts[0]
            return data
        return b"".join(ev.parts[0] for ev in batch)


class BinaryStreamRecorder(Recorder):
    """Raw-bytes recording of an exec session without a terminal (see the module docstring)."""

    STREAMS = {"o": "stdout", "e": "stderr", "i": "stdin", "m": "marker", "r": "resize"}

    # Bulk streams (scp, tar over exec): the writer is woken at 1 MiB behind and writes in ~1 MiB slices,
    # releasing backlog after each, so the writer's join, SHA-256 and write stay in cache and the relay
    # may go on; it is asked to pause only at 16 MiB behind (down to 8 MiB), which rides out the kernel's
    # dirty-page throttling of the writer (bench/ssh.py; see docs/benchmarks.md, SSH front end).
    urgent_backlog = 1 << 20
    measure_writes = True  # the "auto" compression policy follows the disk's speed
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
        compression: str = "auto",
    ) -> BinaryStreamRecorder:
        """Create the file and write the JSON header line; raises RecordingError on failure.

        `compression`: "auto" (compressed blocks while the disk is slow, `gateway.recording.blocks`), "always"
        or "never"; the header says ``"compression": "zstd"`` unless "never" (a reader handles both either way).
        """
        rec = cls(path, on_failure=on_failure, started_at=started_at, max_backlog=max_backlog, clock=clock,
                  compression=compression)  # fmt: skip
        codec = None if compression == "never" else blocks.CODEC
        rec._write_header(schema.binary_header(width=width, height=height, timestamp=started_at, title=title, env=env,
                                               streams=cls.STREAMS, compression=codec))  # fmt: skip
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

    def __init__(self, path: Path, *, compression: str = "auto", **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._packer = BlockPacker(compression)

    def _wrote(self, nbytes: int, seconds: float) -> None:
        """Feed the shared disk-rate estimate that "auto" compression follows."""
        blocks.DISK.observe(nbytes, seconds)

    def _encode(self, batch: list[PendingEvent], final: bool) -> bytes:
        """One frame per event; a run of them (one write slice) as one compressed block when it pays."""
        out: list[bytes] = []
        size = 0
        for ev in batch:
            n = ev.size if ev.kind in "oei" else sum(map(len, ev.parts))  # markers count 16 more in ev.size
            out.append(FRAME.pack(ev.kind.encode(), _ms(ev.t), n))
            out += ev.parts
            size += FRAME.size + n
        if not self._packer.wants(size):
            return b"".join(out)
        packed = self._packer.pack(out, size)
        return FRAME.pack(blocks.STREAM, _ms(batch[0].t), len(packed)) + packed

    @staticmethod
    def to_asciicast(src: Path, out: IO[str]) -> bool:
        """Convert a binary stream recording to asciicast v2; see ``binary_to_asciicast``."""
        return binary_to_asciicast(src, out)


def _ms(t: float) -> int:
    """A frame's time field: milliseconds since the start, saturating."""
    return min(int(t * 1000), 0xFFFFFFFF)
