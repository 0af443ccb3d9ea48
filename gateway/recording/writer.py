"""The writer behind every recorder: in-memory queue, shared background thread, fail-closed file I/O."""

from __future__ import annotations

import asyncio
import atexit
import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLUSH_DELAY = 0.05
COALESCE_WINDOW = 0.010
MAX_EVENT_BYTES = 1 << 20
URGENT_BACKLOG = 4 << 20
DRAIN_LOW_WATER = 1 << 20
DEFAULT_MAX_BACKLOG = 64 << 20

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


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


class PendingEvent:
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
            idle = not self._dirty
            self._dirty[rec] = None
            if urgent and not self._urgent:
                self._urgent = idle = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="gateway-recording-writer", daemon=True)
                self._thread.start()
            # Only a writer waiting for its first dirty recorder, or an urgent flush, needs waking: one already
            # batching takes this recorder at its deadline. Every needless wake-up makes the thread take the GIL
            # from the relay's loop (measured: ~400-800 forced GIL switches a second under pgbench).
            if idle:
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

    urgent_backlog = URGENT_BACKLOG
    """Backlog (bytes) past which the writer is woken at once."""
    drain_high_water = URGENT_BACKLOG
    """Backlog (bytes) past which ``needs_drain`` turns true."""
    write_slice: int | None = None
    """Write a flush's events in slices of about this many bytes, releasing backlog after each (None: one write)."""
    drain_low_water = DRAIN_LOW_WATER
    """Backlog (bytes) at or below which ``drain()`` returns."""
    measure_writes = False
    """Time each write and report it to ``_wrote`` (a recorder that adapts to the disk's speed)."""

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
        self._pending: list[PendingEvent] = []
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
        return self._backlog > self.drain_high_water

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
                pending.append(PendingEvent(t, kind, part, size))
            before = self._backlog
            self._backlog = backlog = before + size
        if backlog > self._max_backlog:
            self._fail("recording backlog exceeded")
        elif was_empty or (before <= self.urgent_backlog < backlog):
            _WRITER.wake(self, urgent=backlog > self.urgent_backlog)

    async def drain(self) -> None:
        """Wait until the writer's backlog is below DRAIN_LOW_WATER (optional backpressure)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._failed is not None or self._backlog <= self.drain_low_water:
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

    def _encode(self, batch: list[PendingEvent], final: bool) -> bytes:
        """Turn queued events into whole lines (or frames); `final` flushes decoder state."""
        raise NotImplementedError

    def _wrote(self, nbytes: int, seconds: float) -> None:
        """How long a write took, not counting waits for a CPU (writer thread; when ``measure_writes``)."""

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
            limit = self.write_slice
            while True:
                part = batch
                if limit is not None and len(batch) > 1:
                    n, size = 0, 0
                    while n < len(batch) and (n == 0 or size + batch[n].size <= limit):
                        size += batch[n].size
                        n += 1
                    part, batch = batch[:n], batch[n:]
                else:
                    batch = []
                if not self._write_events(part, final and not batch) or not batch:
                    return

    def _write_events(self, batch: list[PendingEvent], final: bool) -> bool:
        """Encode and write taken events, then release their backlog; False once the recording failed."""
        assert self._fd is not None
        try:
            data = self._encode(batch, final)
            if data:
                if self.measure_writes:
                    started, waited = time.monotonic(), _runqueue_ns()
                    self._write_all(data)
                    # Time waiting for a CPU is the host's load, not the disk's speed.
                    self._wrote(len(data), time.monotonic() - started - (_runqueue_ns() - waited) / 1e9)
                else:
                    self._write_all(data)
                # Writes to an unlinked file succeed and vanish: removal is a failure too.
                if os.fstat(self._fd).st_nlink == 0:
                    raise OSError(errno.ENOENT, "recording file was removed")
            if final:
                os.fsync(self._fd)
        except OSError as exc:
            self._fail(_reason("recording write failed", exc))
            self._close_fd()
            return False
        except Exception as exc:  # an encoder bug must end the session, not the writer thread
            self._fail(f"recording encoder error: {type(exc).__name__}")
            self._close_fd()
            return False
        written = sum(p.size for p in batch)
        with self._lock:
            self._backlog = max(0, self._backlog - written)
            waiter = None
            if self._drain_waiter is not None and self._backlog <= self.drain_low_water:
                waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None:
            _resolve_threadsafe(waiter)
        return True

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


def _runqueue_ns() -> int:
    """Nanoseconds this thread has spent runnable but waiting for a CPU (Linux schedstat; 0 elsewhere)."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _resolve_threadsafe(fut: asyncio.Future[None]) -> None:
    """Complete a drain waiter from any thread."""

    def done() -> None:
        if not fut.done():
            fut.set_result(None)

    try:
        fut.get_loop().call_soon_threadsafe(done)
    except RuntimeError:
        pass
