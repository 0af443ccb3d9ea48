"""Compressed blocks in binary stream recordings: byte-exact, smaller, hashed as written, old files still read."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import time
from pathlib import Path

import pytest

from gateway.recording import BinaryStreamRecorder, RecordingError, binary_to_asciicast, blocks, read_binary_stream
from gateway.recording.reader import FRAME, TerminalReader, commands
from gateway.recording.schema import BINARY_FORMAT, RECORDING_VERSION
from gateway.review.replay import print_cast
from gateway.review.search import search


def log_text(size: int, seed: int = 3) -> bytes:
    """Log-like text with enough entropy that it compresses ~3x, not 1000x."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        line = f"{rng.random():.6f} web{rng.randrange(40)} GET /api/{rng.getrandbits(48):x} {rng.randrange(999)}\n"
        out += line.encode()
    return bytes(out[:size])


def failed(reason: str) -> None:
    raise AssertionError(f"recording failed: {reason}")


def open_rec(path: Path, compression: str = "always") -> BinaryStreamRecorder:
    return BinaryStreamRecorder.open(path, title="cat", env={}, started_at=time.time(), on_failure=failed,
                                     compression=compression)  # fmt: skip


def outer_frames(path: Path) -> list[tuple[bytes, int]]:
    """(stream byte, offset) of every top-level frame (blocks not opened)."""
    raw = path.read_bytes()
    pos = raw.index(b"\n") + 1
    found = []
    while pos < len(raw):
        stream, _, length = FRAME.unpack_from(raw, pos)
        found.append((stream, pos))
        pos += FRAME.size + length
    return found


def outer_streams(path: Path) -> list[bytes]:
    return [stream for stream, _ in outer_frames(path)]


async def test_bulk_text_is_compressed_byte_exact_and_hashed_as_written(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = open_rec(path)
    data = log_text(6 << 20)
    rec.marker("command: cat /var/log/app.log")
    for off in range(0, len(data), 32768):
        rec.stdout(data[off : off + 32768])
        if rec.needs_drain:
            await rec.drain()
    rec.stderr(b"cat: done\n")
    sha = await rec.close()
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()  # the audit chain seals the compressed file
    assert path.stat().st_size < len(data) / 2
    header, frames = read_binary_stream(path)
    assert header["format"] == BINARY_FORMAT and header["compression"] == "zstd"
    assert header["recording_version"] == RECORDING_VERSION and header["version"] == 2
    got = list(frames)
    assert b"".join(f.data for f in got if f.stream == "o") == data
    assert [f.data for f in got if f.stream == "e"] == [b"cat: done\n"]
    assert [t for t in (f.t for f in got)] == sorted(f.t for f in got)
    assert blocks.STREAM in outer_streams(path)
    assert list(commands(path)) == [(got[0].t, "cat /var/log/app.log")]  # search and replay read through blocks
    assert [h.text for h in search([("s", path, "binary")], "app.log")] == ["cat /var/log/app.log"]
    out = io.StringIO()
    print_cast(path, out)
    assert out.getvalue().startswith(data[:1000].decode())


async def test_small_runs_and_random_bytes_stay_plain_frames(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = open_rec(path)
    rec.stdin(b"ls\n")
    rec.stdout(b"a b c\n")
    noise = os.urandom(12 << 20)
    for off in range(0, len(noise), 32768):
        rec.stdout(noise[off : off + 32768])
        if rec.needs_drain:
            await rec.drain()
    await rec.close()
    kinds = outer_streams(path)
    # One attempt at the first slice of noise, then SKIP_AFTER_INCOMPRESSIBLE slices plain, then another try.
    assert kinds.count(blocks.STREAM) <= 2 and kinds.count(b"o") >= 8
    _, frames = read_binary_stream(path)
    assert b"".join(f.data for f in frames if f.stream == "o") == b"a b c\n" + noise


def test_plain_version_2_files_are_still_read(tmp_path: Path) -> None:
    """A binary stream written before compression existed: no ``compression`` key, frame version 1."""
    head = {"format": BINARY_FORMAT, "version": 1, "recording_version": 2, "width": 80, "height": 24,
            "timestamp": 1764720000, "title": "old", "env": {}, "streams": {"o": "stdout"}}  # fmt: skip
    body = FRAME.pack(b"m", 0, 12) + b"command: tar" + FRAME.pack(b"o", 5, 3) + b"abc"
    path = tmp_path / "old.cast"
    path.write_bytes(json.dumps(head).encode() + b"\n" + body)
    header, frames = read_binary_stream(path)
    assert header["title"] == "old"
    assert [(f.stream, f.t, f.data) for f in frames] == [("m", 0.0, b"command: tar"), ("o", 0.005, b"abc")]
    warnings: list[str] = []
    with TerminalReader(path, warnings) as reader:
        assert [e.data for e in reader.read()] == ["command: tar", "abc"]
    assert warnings == []


async def test_a_damaged_block_stops_reading_there_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = open_rec(path)
    rec.stdout(b"before\n")
    await rec.drain()
    await _settle(rec)
    rec.stdout(log_text(1 << 20))
    await rec.close()
    found = outer_frames(path)
    assert [s for s, _ in found] == [b"o", blocks.STREAM]
    raw = bytearray(path.read_bytes())
    raw[found[1][1] + FRAME.size + 40] ^= 0xFF  # a flipped byte inside the zstd frame
    path.write_bytes(bytes(raw))
    buf = io.StringIO()
    assert binary_to_asciicast(path, buf) is False
    assert "before" in buf.getvalue()
    _, frames = read_binary_stream(path)
    with pytest.raises(RecordingError, match="damaged compressed block"):
        list(frames)


def test_unpack_refuses_implausible_and_foreign_blocks() -> None:
    with pytest.raises(ValueError, match="not a zstd frame"):
        blocks.unpack(b"hello world, not zstd")
    import zstandard

    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100)
    with pytest.raises(ValueError, match="size missing"):
        blocks.unpack(no_size)


async def _settle(rec: BinaryStreamRecorder) -> None:
    """Wait until the writer has written what was queued (so the next run is a block of its own)."""
    import asyncio

    deadline = time.monotonic() + 5
    while rec._backlog and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)


async def test_auto_compresses_only_while_the_disk_is_slow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that keeps up gets plain frames (cheaper in CPU); a slow one compressed blocks (fewer bytes)."""
    data = log_text(3 << 20)
    for rate, expect_blocks in ((1e9, False), (50e6, True)):
        disk = blocks.DiskRate()
        disk.rate = rate
        monkeypatch.setattr(blocks, "DISK", disk)
        monkeypatch.setattr(blocks.DiskRate, "observe", lambda self, n, s: None)  # keep the simulated rate
        path = tmp_path / f"{rate:.0f}.cast"
        rec = open_rec(path, compression="auto")
        for off in range(0, len(data), 32768):
            rec.stdout(data[off : off + 32768])
        await rec.close()
        assert (blocks.STREAM in outer_streams(path)) is expect_blocks
        _, frames = read_binary_stream(path)
        assert b"".join(f.data for f in frames) == data


async def test_never_writes_version_2_style_plain_files(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    rec = open_rec(path, compression="never")
    rec.stdout(log_text(2 << 20))
    await rec.close()
    header, _ = read_binary_stream(path)
    assert "compression" not in header and set(outer_streams(path)) == {b"o"}


def test_disk_rate_ignores_small_writes_and_averages() -> None:
    d = blocks.DiskRate()
    d.observe(100, 1.0)
    assert d.rate == float("inf")
    d.observe(1 << 20, 0.01)
    assert d.rate == pytest.approx((1 << 20) / 0.01)
    d.observe(1 << 20, 0.1)
    assert d.rate == pytest.approx(0.8 * (1 << 20) / 0.01 + 0.2 * (1 << 20) / 0.1)
    with pytest.raises(ValueError, match="compression policy"):
        blocks.BlockPacker("sometimes")


def test_runqueue_wait_is_read_or_zero() -> None:
    from gateway.recording.writer import _runqueue_ns

    first = _runqueue_ns()
    assert first >= 0 and _runqueue_ns() >= first
