"""Session recorders: streaming, append-only, fail-closed writers of one session's recording file.

Three formats, one writer:

* ``AsciicastRecorder`` -- asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/) for SSH
  sessions with a terminal: a JSON header line, then one ``[t, code, data]`` line per event,
  codes ``o`` (output), ``i`` (input), ``r`` (resize, ``"WxH"``) and ``m`` (marker).
* ``StatementRecorder`` -- JSON lines for SQL sessions: ``{"type": "header", ...}`` first, then one
  JSON object per event, each with ``t`` (seconds since the start). The event schema the Postgres
  front end writes is documented in ``gateway/review/replay.py``.
* ``BinaryStreamRecorder`` -- raw bytes for exec sessions without a terminal (tar, scp, pg_dump):
  JSON-escaping random bytes runs at ~50 MB/s and would throttle the relay, and text decoding
  would lose bytes. The file is one JSON header line (``"format": "gateway-binary-stream"``),
  then frames, all integers big-endian::

      stream: 1 byte  b"o" stdout, b"e" stderr, b"i" stdin, b"m" marker (UTF-8), b"r" resize ("WxH")
      t_ms:   u32     milliseconds since the start
      length: u32     bytes of data that follow
      data:   length bytes

  ``binary_to_asciicast`` converts such a file for replay (stdout and stderr both become ``o``).

How writing works (the relay must never block on a disk):

* ``output()``/``input()``/``record()``... only append to an in-memory list under a short lock.
  Chunks of one stream less than ``COALESCE_WINDOW`` (10 ms) apart are merged into one event that
  keeps the first chunk's time, so a bulk transfer makes ~100 events a second, not one per chunk.
* One shared daemon thread (``_Writer``) encodes and writes every dirty recorder ~``FLUSH_DELAY``
  after it became dirty (sooner when its backlog grows past ``URGENT_BACKLOG``), so data reaches
  the file within ~100 ms. One thread rather than one per recorder: idle sessions cost no thread
  and no wake-ups, and Python cannot encode in parallel anyway (GIL).
* A UTF-8 incremental decoder per stream (errors="replace") keeps a character split across two
  chunks whole.
* Every write appends whole lines (or whole frames): a crash leaves at most one torn last line,
  detectable because it does not parse or lacks its newline. The SHA-256 is updated with exactly the
  bytes written, so ``close()`` never re-reads the file.
* Fail closed: an ``OSError`` (disk full, file removed, permission...), an encoder error, or a
  backlog above ``max_backlog`` (the writer fell behind) calls ``on_failure(reason)`` once, on the
  event loop thread; every later call is a no-op and ``close()`` raises ``RecordingError``.
  A front end that prefers slowing the client to ending the session awaits ``drain()`` when
  ``needs_drain`` is true.

Recorders never see secrets: the front ends keep tokens out of what they pass in, and nothing here
logs recorded data.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import errno
import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO, Any

FLUSH_DELAY = 0.05
COALESCE_WINDOW = 0.010
MAX_EVENT_BYTES = 1 << 20
URGENT_BACKLOG = 4 << 20
DRAIN_LOW_WATER = 1 << 20
DEFAULT_MAX_BACKLOG = 64 << 20

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_FRAME = struct.Struct(">cII")
_BINARY_FORMAT = "gateway-binary-stream"


class RecordingError(Exception):
    """A recording could not be created or completed; the message is safe to show and says why."""


def _reason(prefix: str, exc: OSError) -> str:
    """Describe an OSError without its file name (paths are not for the session's client)."""
    return f"{prefix}: {exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)}"


def _make_dirs(directory: Path) -> None:
    """Create missing parent directories with mode 0700 (recordings are not for other users)."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass


class _Pending:
    """One queued event; chunks of the same stream within the coalescing window share one."""

    __slots__ = ("kind", "parts", "size", "t")

    def __init__(self, t: float, kind: str, part: Any, size: int) -> None:
        self.t = t
        self.kind = kind
        self.parts: list[Any] = [part]
        self.size = size


class _Writer:
    """The shared background thread that encodes and writes every dirty recorder."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._dirty: dict[Recorder, None] = {}
        self._urgent = False
        self._thread: threading.Thread | None = None

    def wake(self, rec: Recorder, urgent: bool = False) -> None:
        """Queue `rec` for the next flush (now rather than after FLUSH_DELAY if `urgent`)."""
        with self._cond:
            self._dirty[rec] = None
            self._urgent = self._urgent or urgent
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="gateway-recording-writer", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _take(self) -> list[Recorder]:
        """Wait for dirty recorders, then up to FLUSH_DELAY more so that writes are batched."""
        with self._cond:
            while not self._dirty:
                self._cond.wait()
            deadline = time.monotonic() + FLUSH_DELAY
            while not self._urgent:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = list(self._dirty)
            self._dirty.clear()
            self._urgent = False
            return batch

    def _run(self) -> None:
        """Thread body: flush forever (each recorder's _flush catches its own errors)."""
        while True:
            for rec in self._take():
                rec._flush()

    def flush_all(self) -> None:
        """Write whatever is queued now (at interpreter exit, for recorders nobody closed)."""
        with self._cond:
            batch = list(self._dirty)
            self._dirty.clear()
        for rec in batch:
            rec._flush()


_WRITER = _Writer()
atexit.register(_WRITER.flush_all)


class Recorder:
    """A streaming, append-only, fail-closed writer of one session's recording file."""

    def __init__(
        self,
        path: Path,
        *,
        on_failure: Callable[[str], None],
        started_at: float | None = None,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._on_failure = on_failure
        self._clock = clock
        behind = max(0.0, time.time() - started_at) if started_at is not None else 0.0
        self._t0 = clock() - behind
        self._max_backlog = max_backlog
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._lock = threading.Lock()  # guards the fields the relay touches: _pending.._drain_waiter
        self._pending: list[_Pending] = []
        self._backlog = 0
        self._failed: str | None = None
        self._closing = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._io_lock = threading.Lock()  # serialises file I/O: writer thread vs close()
        self._sha = hashlib.sha256()
        self._bytes_written = 0
        self._digest: str | None = None
        self._close_future: asyncio.Future[None] | None = None
        try:
            _make_dirs(self.path.parent)
            self._fd: int | None = os.open(self.path, _OPEN_FLAGS, 0o600)
        except OSError as exc:
            raise RecordingError(_reason("cannot create recording", exc)) from None

    @property
    def bytes_written(self) -> int:
        """Bytes written to the file so far (header included)."""
        return self._bytes_written

    @property
    def failure(self) -> str | None:
        """Why the recording failed, or None."""
        return self._failed

    @property
    def needs_drain(self) -> bool:
        """True when the writer is behind enough that a front end may want to await drain()."""
        return self._backlog > URGENT_BACKLOG

    def elapsed(self) -> float:
        """Seconds since the recording started (the ``t`` of an event recorded now)."""
        return self._clock() - self._t0

    # -- relay side: never blocks ------------------------------------------------------------

    def _append(self, kind: str, part: Any, size: int, coalesce: bool) -> None:
        """Queue one event for the writer; merge with the previous one when close enough in time."""
        t = self._clock() - self._t0
        with self._lock:
            if self._failed is not None or self._closing:
                return
            pending = self._pending
            was_empty = not pending
            last = pending[-1] if pending else None
            if (
                coalesce
                and last is not None
                and last.kind == kind
                and t - last.t <= COALESCE_WINDOW
                and last.size + size <= MAX_EVENT_BYTES
            ):
                last.parts.append(part)
                last.size += size
            else:
                pending.append(_Pending(t, kind, part, size))
            before = self._backlog
            self._backlog = backlog = before + size
        if backlog > self._max_backlog:
            self._fail("recording backlog exceeded")
        elif was_empty or (before <= URGENT_BACKLOG < backlog):
            _WRITER.wake(self, urgent=backlog > URGENT_BACKLOG)

    async def drain(self) -> None:
        """Wait until the writer's backlog is below DRAIN_LOW_WATER (optional backpressure)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._failed is not None or self._backlog <= DRAIN_LOW_WATER:
                return
            if self._drain_waiter is None:
                self._drain_waiter = loop.create_future()
            waiter = self._drain_waiter
        _WRITER.wake(self, urgent=True)
        await asyncio.shield(waiter)

    # -- failure ---------------------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        """Mark the recording failed (first reason wins), drop queued data, tell the front end once."""
        with self._lock:
            if self._failed is not None:
                return
            self._failed = reason
            self._pending = []
            self._backlog = 0
            waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None:
            _resolve_threadsafe(waiter)
        loop = self._loop
        if loop is None:
            self._on_failure(reason)
            return
        try:
            loop.call_soon_threadsafe(self._on_failure, reason)
        except RuntimeError:  # the loop is closed: nobody is left to end the session
            pass

    # -- writer side -------------------------------------------------------------------------

    def _encode(self, batch: list[_Pending], final: bool) -> bytes:
        """Turn queued events into whole lines (or frames); `final` flushes decoder state."""
        raise NotImplementedError

    def _write_all(self, data: bytes) -> None:
        """Append `data` (looping over short writes) and hash exactly what reached the file."""
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            self._sha.update(view[:n])
            self._bytes_written += n
            view = view[n:]

    def _write_header(self, line: str) -> None:
        """Write the header synchronously at open; a failure here is the caller's exception."""
        with self._io_lock:
            try:
                self._write_all(line.encode("utf-8"))
            except OSError as exc:
                self._close_fd()
                raise RecordingError(_reason("cannot write recording", exc)) from None

    def _close_fd(self) -> None:
        """Close the file descriptor once (call with _io_lock held)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def _flush(self, final: bool = False) -> None:
        """Write everything queued (writer thread, or close() in an executor)."""
        with self._io_lock:
            if self._fd is None:
                return
            with self._lock:
                batch, self._pending = self._pending, []
                failed = self._failed
            if failed is not None:
                self._close_fd()
                return
            try:
                data = self._encode(batch, final)
                if data:
                    self._write_all(data)
                    # Writes to an unlinked file succeed and vanish: removal is a failure too.
                    if os.fstat(self._fd).st_nlink == 0:
                        raise OSError(errno.ENOENT, "recording file was removed")
                if final:
                    os.fsync(self._fd)
            except OSError as exc:
                self._fail(_reason("recording write failed", exc))
                self._close_fd()
                return
            except Exception as exc:  # an encoder bug must end the session, not the writer thread
                self._fail(f"recording encoder error: {type(exc).__name__}")
                self._close_fd()
                return
            written = sum(p.size for p in batch)
            with self._lock:
                self._backlog = max(0, self._backlog - written)
                waiter = None
                if self._drain_waiter is not None and self._backlog <= DRAIN_LOW_WATER:
                    waiter, self._drain_waiter = self._drain_waiter, None
            if waiter is not None:
                _resolve_threadsafe(waiter)

    def _finish(self) -> None:
        """Final flush, fsync file and directory, close (runs in an executor)."""
        self._flush(final=True)
        with self._io_lock:
            ok = self._fd is not None and self._failed is None
            self._close_fd()
        if ok:
            self._digest = self._sha.hexdigest()
            try:
                dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError:
                pass  # the file itself is synced; a directory fsync is best effort on some filesystems

    async def close(self) -> str:
        """Flush everything, fsync, close; return the SHA-256 hex of the whole file as written."""
        with self._lock:
            self._closing = True
        if self._close_future is None:
            self._close_future = asyncio.get_running_loop().run_in_executor(None, self._finish)
        await asyncio.shield(self._close_future)
        if self._failed is not None:
            raise RecordingError(self._failed)
        if self._digest is None:
            raise RecordingError("recording was not completed")
        return self._digest


def _resolve_threadsafe(fut: asyncio.Future[None]) -> None:
    """Complete a drain waiter from any thread."""

    def done() -> None:
        if not fut.done():
            fut.set_result(None)

    try:
        fut.get_loop().call_soon_threadsafe(done)
    except RuntimeError:
        pass


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

    def _encode(self, batch: list[_Pending], final: bool) -> bytes:
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
    """JSON-lines recording of a SQL session: a header line, then one object per event."""

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

    def record(self, event: dict[str, Any]) -> None:
        """Queue one event (shallow-copied); ``t`` (seconds since start) is added if missing."""
        ev = dict(event) if "t" in event else {"t": round(self.elapsed(), 6), **event}
        size = 256 + sum(len(v) for v in ev.values() if isinstance(v, str | bytes))
        self._append("s", ev, size, False)

    def _encode(self, batch: list[_Pending], final: bool) -> bytes:
        """One JSON object per line."""
        return "".join(_dump_event(ev.parts[0]) + "\n" for ev in batch).encode("ascii")


def _dump_event(ev: dict[str, Any]) -> str:
    """Compact ASCII JSON; values JSON cannot carry are written as str() rather than failing."""
    return json.dumps(ev, separators=(",", ":"), default=str)


class BinaryStreamRecorder(Recorder):
    """Raw-bytes recording of an exec session without a terminal (see the module docstring)."""

    STREAMS = {"o": "stdout", "e": "stderr", "i": "stdin", "m": "marker", "r": "resize"}

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

    def _encode(self, batch: list[_Pending], final: bool) -> bytes:
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
