"""Recorders on real files: formats, crash safety, fail-closed behaviour, non-blocking calls."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.recording import (
    AsciicastRecorder,
    BinaryStreamRecorder,
    RecordingError,
    StatementRecorder,
    binary_to_asciicast,
    read_binary_stream,
    schema,
)


class Failures:
    """Collects on_failure calls and the thread they ran on."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.threads: list[int] = []
        self.event = asyncio.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.threads.append(threading.get_ident())
        self.event.set()

    async def wait(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.event.wait(), timeout)
        await asyncio.sleep(0.2)  # give a (wrong) second call the chance to arrive


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cast(path: Path, failures: Callable[[str], None], **kw: object) -> AsciicastRecorder:
    """Open an asciicast recorder with test defaults."""
    args: dict[str, object] = dict(
        width=80,
        height=24,
        title="alice@db1",
        env={"TERM": "xterm-256color", "SHELL": "/bin/bash"},
        started_at=time.time(),
        on_failure=failures,
    )
    args.update(kw)
    return AsciicastRecorder.open(path, **args)  # type: ignore[arg-type]


def lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a file as JSON; each must be newline-terminated."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def output_text(path: Path, code: str = "o") -> str:
    """Concatenated data of all events with this code."""
    return "".join(ev[2] for ev in lines(path)[1:] if ev[1] == code)  # type: ignore[index]


def asciinema_cat(path: Path) -> subprocess.CompletedProcess[bytes]:
    """Run the real `asciinema cat` (it opens /dev/tty, so give it a pty as controlling terminal)."""
    exe = shutil.which("asciinema")
    if exe is None:
        pytest.fail("asciinema CLI not installed: scripts/test installs it (apt-get install asciinema)")
    master, slave = os.openpty()

    def take_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        return subprocess.run(
            [exe, "cat", str(path)],
            stdin=slave,
            capture_output=True,
            preexec_fn=take_tty,
            timeout=60,
            check=False,
        )
    finally:
        os.close(slave)
        os.close(master)


def only_fd(fd_getter: Callable[[], int | None], fake: Callable[[int, bytes], int]) -> Callable[..., int]:
    """An os.write replacement that misbehaves only for one recorder's file."""
    real = os.write

    def write(fd: int, data: bytes) -> int:
        if fd == fd_getter():
            return fake(fd, data)
        return real(fd, data)

    return write


async def test_asciicast_header_and_events(tmp_path: Path) -> None:
    failures = Failures()
    started = time.time()
    path = tmp_path / "rec" / "s1.cast"
    rec = cast(path, failures, started_at=started)
    rec.output(b"$ ")
    rec.input(b"ls\r")
    rec.resize(100, 30)
    rec.marker("command: ls")
    rec.output(b"file-a  file-b\r\n")
    digest = await rec.close()
    header, *events = lines(path)
    assert isinstance(header, dict)
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    assert header["timestamp"] == int(started) and header["title"] == "alice@db1"
    assert header["env"] == {"TERM": "xterm-256color", "SHELL": "/bin/bash"}
    assert [e[1] for e in events] == ["o", "i", "r", "m", "o"]  # type: ignore[index]
    assert events[2][2] == "100x30" and events[3][2] == "command: ls"  # type: ignore[index]
    times = [e[0] for e in events]  # type: ignore[index]
    assert times == sorted(times) and all(isinstance(t, float) and t >= 0 for t in times)
    assert output_text(path) == "$ file-a  file-b\r\n"
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rec.bytes_written == path.stat().st_size
    assert failures.reasons == []


async def test_file_and_directory_modes(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "s.cast"
    rec = cast(path, Failures())
    await rec.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


async def test_open_refuses_existing_file_and_bad_parent(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    path.write_text("already here")
    with pytest.raises(RecordingError, match="cannot create recording"):
        cast(path, Failures())
    assert path.read_text() == "already here"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RecordingError):
        cast(tmp_path / "afile" / "s.cast", Failures())
    os.symlink(tmp_path / "target", tmp_path / "link.cast")
    with pytest.raises(RecordingError):
        cast(tmp_path / "link.cast", Failures())
    assert not (tmp_path / "target").exists()


async def test_split_multibyte_characters_survive(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "s.cast"
    rec = cast(path, Failures(), clock=clock)
    text = "héllo € 日本語 😀 done"
    data = text.encode()
    for i in range(len(data)):  # one byte per event, 20 ms apart: no coalescing can hide a bug
        rec.output(data[i : i + 1])
        clock.now += 0.02
    rec.input("ü".encode()[:1])
    clock.now += 0.02
    rec.input("ü".encode()[1:])
    await rec.close()
    assert output_text(path) == text
    assert output_text(path, "i") == "ü"
    assert "\ufffd" not in path.read_text()


async def test_invalid_and_truncated_utf8_become_replacement_chars(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = cast(path, Failures())
    rec.output(b"ok \xff\xfe then \xe2\x82")  # ends in the first two bytes of a 3-byte character
    await rec.close()
    out = output_text(path)
    assert out.startswith("ok ") and " then " in out and out.endswith("\ufffd")


async def test_coalescing_keeps_timing_within_window(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "s.cast"
    rec = cast(path, Failures(), clock=clock)
    for _ in range(5):
        rec.output(b"a")
        clock.now += 0.001
    clock.now += 0.5
    rec.output(b"b")
    rec.input(b"x")
    rec.output(b"c")
    await rec.close()
    events = lines(path)[1:]
    assert [(e[1], e[2]) for e in events] == [("o", "aaaaa"), ("o", "b"), ("i", "x"), ("o", "c")]  # type: ignore[index]
    assert events[0][0] == pytest.approx(0.0, abs=1e-3)  # type: ignore[index]
    assert events[1][0] == pytest.approx(0.505, abs=1e-3)  # type: ignore[index]


async def test_plays_with_real_asciinema(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = cast(path, Failures())
    rec.output(b"\x1b[1m$\x1b[0m ")
    rec.input(b"echo hi\r")
    rec.marker("command: echo hi")
    rec.output("echo hi\r\nhi from the server \xe2\x82\xac\r\n".encode("latin-1"))
    rec.output("tschüß\r\n".encode())
    await rec.close()
    proc = asciinema_cat(path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode("utf-8", "replace")
    assert "hi from the server" in out and "tschüß" in out


async def test_sha256_is_of_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = cast(path, Failures())
    for i in range(500):
        rec.output(f"line {i} \u00e9\r\n".encode())
        if i % 100 == 0:
            await asyncio.sleep(0.06)  # let several flushes happen
    digest = await rec.close()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert await rec.close() == digest  # idempotent


async def test_many_calls_do_not_block_and_all_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = cast(path, Failures())
    chunk = b"0123456789abcdef" * 4 + b"\r\n"
    start = time.perf_counter()
    for _ in range(10_000):
        rec.output(chunk)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"10,000 output() calls took {elapsed:.3f}s"
    await rec.close()
    assert output_text(path) == (chunk * 10_000).decode()


async def test_data_reaches_the_file_without_close(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = cast(path, Failures())
    size = path.stat().st_size
    rec.output(b"live\r\n")
    for _ in range(50):
        await asyncio.sleep(0.02)
        if path.stat().st_size > size:
            break
    assert path.read_bytes().endswith(b'"live\\r\\n"]\n')
    await rec.close()


async def test_removed_directory_fails_closed_once(tmp_path: Path) -> None:
    failures = Failures()
    loop_thread = threading.get_ident()
    path = tmp_path / "doomed" / "s.cast"
    rec = cast(path, failures)
    rec.output(b"before\r\n")
    await asyncio.sleep(0.2)
    shutil.rmtree(path.parent)
    rec.output(b"after\r\n")
    await failures.wait()
    rec.output(b"ignored")  # no exception into the relay
    rec.input(b"ignored")
    rec.marker("ignored")
    await asyncio.sleep(0.15)
    assert len(failures.reasons) == 1 and "removed" in failures.reasons[0]
    assert failures.threads == [loop_thread]
    with pytest.raises(RecordingError, match="removed"):
        await rec.close()


async def test_full_filesystem_fails_closed_once(tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, check=False
    )
    # The suite runs as root (scripts/test installs packages with apt-get), so mounting must work.
    assert mounted.returncode == 0, f"cannot mount a tmpfs (the suite runs as root): {mounted.stderr!r}"
    try:
        failures = Failures()
        rec = cast(mnt / "sessions" / "s.cast", failures)
        for _ in range(40):
            rec.output(b"x" * 4096)
            await asyncio.sleep(0.01)
        await failures.wait()
        rec.output(b"more")
        assert failures.reasons == ["recording write failed: No space left on device"]
        with pytest.raises(RecordingError, match="No space left"):
            await rec.close()
        # Whatever reached the disk is whole lines plus at most one torn last line.
        raw = (mnt / "sessions" / "s.cast").read_bytes()
        complete = raw.split(b"\n")[:-1]
        for line in complete:
            json.loads(line)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


async def test_enospc_from_write_fails_closed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = Failures()
    path = tmp_path / "s.cast"
    rec = cast(path, failures)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", only_fd(lambda: rec._fd, full))
    rec.output(b"lost")
    await failures.wait()
    rec.output(b"more")
    await asyncio.sleep(0.15)
    assert failures.reasons == ["recording write failed: No space left on device"]
    monkeypatch.undo()
    with pytest.raises(RecordingError, match="No space left"):
        await rec.close()


async def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.cast"
    rec = cast(path, Failures())
    real = os.write
    monkeypatch.setattr(
        os,
        "write",
        only_fd(lambda: rec._fd, lambda fd, data: real(fd, bytes(data)[:7])),
    )
    rec.output(b"a fairly long line of output\r\n" * 20)
    digest = await rec.close()
    assert output_text(path) == "a fairly long line of output\r\n" * 20
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


async def test_backlog_bound_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = Failures()
    path = tmp_path / "s.cast"
    rec = cast(path, failures, max_backlog=2 << 20)
    release = threading.Event()
    real = os.write

    def stuck(fd: int, data: object) -> int:
        release.wait(10)
        return real(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", only_fd(lambda: rec._fd, stuck))
    start = time.perf_counter()
    for _ in range(100):
        rec.output(b"y" * 65536)  # 6.4 MB against a 2 MB bound, with the disk stuck
    assert time.perf_counter() - start < 1.0  # the relay never waited for the disk
    await failures.wait()
    release.set()
    assert failures.reasons == ["recording backlog exceeded"]
    with pytest.raises(RecordingError, match="backlog"):
        await rec.close()


async def test_drain_waits_for_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = cast(path, Failures())
    for _ in range(100):
        rec.output(b"z" * 65536)
    assert rec.needs_drain
    await asyncio.wait_for(rec.drain(), 10)
    assert not rec.needs_drain
    await rec.close()
    assert len(output_text(path)) == 100 * 65536


async def test_failure_without_running_loop_is_reported_directly(tmp_path: Path) -> None:
    reasons: list[str] = []

    def open_outside_loop() -> AsciicastRecorder:
        return cast(tmp_path / "s.cast", reasons.append, max_backlog=10)

    rec = await asyncio.to_thread(open_outside_loop)
    rec.output(b"more than ten bytes")
    assert reasons == ["recording backlog exceeded"]


async def test_statement_recorder_lines(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "pg" / "s.jsonl"
    rec = StatementRecorder.open(
        path,
        header={"session": "s1", "user": "alice", "target": "orders-db", "type": "x"},
        on_failure=Failures(),
        clock=clock,
    )
    clock.now += 1.5
    rec.record({"type": "statement", "sql": "SELECT 'é', 1", "verdict": "allowed", "rows": 1})
    rec.record({"type": "statement", "t": 9.0, "sql": "DROP TABLE x", "verdict": "denied", "rule": "read-only"})
    rec.record({"type": "end", "odd": {1, 2} and b"bytes"})
    digest = await rec.close()
    header, first, second, third = lines(path)
    assert header == {"type": "header", "recording_version": schema.RECORDING_VERSION, "session": "s1",
                      "user": "alice", "target": "orders-db"}  # fmt: skip
    assert first == {"t": 1.5, "type": "statement", "sql": "SELECT 'é', 1", "verdict": "allowed", "rows": 1}
    assert second["t"] == 9.0 and second["rule"] == "read-only"
    assert third["type"] == "end" and third["odd"] == "b'bytes'"
    assert path.read_bytes().isascii()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


async def test_binary_roundtrip(tmp_path: Path) -> None:
    rng = __import__("random").Random(7)
    path = tmp_path / "exec.bin"
    rec = BinaryStreamRecorder.open(path, title="tar", env={}, started_at=time.time(), on_failure=Failures())
    sent: dict[str, bytearray] = {"o": bytearray(), "e": bytearray(), "i": bytearray()}
    calls = {"o": rec.stdout, "e": rec.stderr, "i": rec.stdin}
    for _ in range(400):
        stream = rng.choice("oei")
        data = os.urandom(rng.randint(1, 20000))
        sent[stream] += data
        calls[stream](data)
    rec.marker("command: tar cf - /etc")
    digest = await rec.close()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    header, frames = read_binary_stream(path)
    assert header["format"] == "gateway-binary-stream" and header["title"] == "tar"
    got: dict[str, bytearray] = {"o": bytearray(), "e": bytearray(), "i": bytearray(), "m": bytearray()}
    last_t = 0.0
    for frame in frames:
        got[frame.stream] += frame.data
        assert frame.t >= last_t
        last_t = frame.t
    assert got["o"] == sent["o"] and got["e"] == sent["e"] and got["i"] == sent["i"]
    assert got["m"] == b"command: tar cf - /etc"


async def test_binary_to_asciicast(tmp_path: Path) -> None:
    path = tmp_path / "exec.bin"
    rec = BinaryStreamRecorder.open(
        path, title="t", env={"TERM": "dumb"}, started_at=time.time(), on_failure=Failures()
    )
    rec.stdin(b"uname -a\n")
    rec.stdout("Linux host \u20ac".encode()[:-1])
    await asyncio.sleep(0.03)
    rec.stdout("Linux host \u20ac".encode()[-1:] + b"\n")
    rec.stderr(b"warning: \xff\n")
    await rec.close()
    buf = io.StringIO()
    assert BinaryStreamRecorder.to_asciicast(path, buf) is True
    cast_path = tmp_path / "exec.cast"
    cast_path.write_text(buf.getvalue())
    assert lines(cast_path)[0]["version"] == 2
    assert output_text(cast_path) == "Linux host \u20ac\nwarning: \ufffd\n"
    assert output_text(cast_path, "i") == "uname -a\n"
    if shutil.which("asciinema"):
        proc = asciinema_cat(cast_path)
        assert proc.returncode == 0 and "Linux host" in proc.stdout.decode("utf-8", "replace")
    # A torn last frame: everything before it is converted, and the caller is told.
    raw = path.read_bytes()
    path.write_bytes(raw[:-3])
    buf = io.StringIO()
    assert binary_to_asciicast(path, buf) is False
    assert "uname -a" in buf.getvalue()


async def test_binary_reader_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = cast(path, Failures())
    await rec.close()
    with pytest.raises(RecordingError, match="not a binary stream"):
        read_binary_stream(path)


# --- long values: head and tail in the line, whole in a sidecar covered by the recording's hash -----------


async def test_sidecar_is_covered_by_the_recording_hash(tmp_path: Path) -> None:
    from gateway.pg.journal import Journal, describe_params
    from gateway.policy import Decision
    from gateway.recording.check import check_recording
    from gateway.recording.sidecar import read_value, sidecar_path

    path = tmp_path / "s.sql.jsonl"
    failures = Failures()
    rec = StatementRecorder.open(path, header={"session": "s"}, on_failure=failures)
    value = b" " * 3000 + b"DELETE FROM secrets"
    shown, long = describe_params([b"42", value, None, b"\x00" * 3000], [0, 0, 0, 1], rec.attach)
    assert shown is not None and long is not None
    assert shown[0] == "42" and shown[2] == "NULL"
    assert shown[1].endswith("DELETE FROM secrets") and len(shown[1]) <= 2049
    assert [e["index"] for e in long] == [1, 3] and long[0]["bytes"] == 3019
    assert long[0]["sha256"] == hashlib.sha256(value).hexdigest()
    j = Journal(rec, max_rows=None, alert=lambda *a, **k: None)
    j.started("SELECT $1, $2, $3, $4", shown, "fp", "select", (), Decision.allow(), 1, "I", 0, long)
    j.completed(1, "SELECT 1")
    j.batch_end(1, "I", "I")
    rec.record({"type": "end", "reason": "done"})
    digest = await rec.close()
    assert not failures.reasons
    events = lines(path)
    stmt = next(e for e in events if e.get("type") == "statement")
    assert stmt["long_params"] == long
    last = events[-1]
    blobs = sidecar_path(path)
    assert last == {"t": last["t"], "type": "sidecar", "file": blobs.name, "bytes": 6019,
                    "sha256": hashlib.sha256(blobs.read_bytes()).hexdigest()}  # fmt: skip
    assert read_value(path, long[0]["offset"], long[0]["bytes"]) == value
    assert read_value(path, long[1]["offset"], long[1]["bytes"]) == b"\x00" * 3000
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert check_recording(path, digest) is None
    # An edited sidecar (same length) is found; so is a deleted one.
    blobs.write_bytes(blobs.read_bytes().replace(b"DELETE FROM secrets", b"SELECT 1 -- nothing"))
    problem = check_recording(path, digest)
    assert problem is not None and "edited or truncated" in problem
    blobs.unlink()
    problem = check_recording(path, digest)
    assert problem is not None and "missing" in problem


async def test_no_sidecar_without_long_values(tmp_path: Path) -> None:
    from gateway.pg.journal import describe_params
    from gateway.recording.check import check_recording
    from gateway.recording.sidecar import sidecar_path

    path = tmp_path / "s.sql.jsonl"
    rec = StatementRecorder.open(path, header={"session": "s"}, on_failure=Failures())
    shown, long = describe_params([b"x" * 2048] + [b"%d" % i for i in range(100)], [0], rec.attach)
    assert shown is not None and len(shown) == 101 and shown[100] == "99", "no parameter is dropped"
    assert long is None
    digest = await rec.close()
    assert not sidecar_path(path).exists() and check_recording(path, digest) is None


async def test_sidecar_write_failure_fails_the_recording(tmp_path: Path) -> None:
    from gateway.recording.sidecar import sidecar_path

    path = tmp_path / "s.sql.jsonl"
    failures = Failures()
    rec = StatementRecorder.open(path, header={"session": "s"}, on_failure=failures)
    sidecar_path(path).write_bytes(b"in the way")  # O_EXCL: the sidecar cannot be created
    rec.attach(b"x" * 5000)
    await failures.wait()
    assert failures.reasons and "sidecar" in failures.reasons[0]
    with pytest.raises(RecordingError):
        await rec.close()
