"""The binary stream recorder as the SSH relay drives it in bulk: sliced writes, drain hysteresis, every byte."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from gateway.recording import BinaryStreamRecorder, read_binary_stream


async def test_bulk_stream_is_written_in_slices_byte_exact(tmp_path: Path) -> None:
    reasons: list[str] = []
    path = tmp_path / "s.cast"
    rec = BinaryStreamRecorder.open(path, title="t", env={}, started_at=0.0, on_failure=reasons.append)
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        if fd == rec._fd:
            writes.append(len(data))
        return real_write(fd, data)

    chunks = [os.urandom(32768) for _ in range(20 * 32)]  # 20 MiB, one coalesced event per ~1 MiB
    os.write = counting_write  # type: ignore[assignment]
    try:
        drained = 0
        for chunk in chunks:
            rec.output(chunk)
            if rec.needs_drain:  # what the relay does: stop reading until the writer catches up
                await asyncio.wait_for(rec.drain(), 10)
                drained += 1
                assert rec._backlog <= rec.drain_low_water
        sha = await rec.close()
    finally:
        os.write = real_write
    assert reasons == []
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    _, frames = read_binary_stream(path)
    assert b"".join(f.data for f in frames if f.stream == "o") == b"".join(chunks)
    assert writes and max(writes) <= rec.write_slice + 64  # frame headers on top of one ~1 MiB event
    assert drained <= 3  # paused at 16 MiB behind, resumed at 8 MiB: a handful of pauses, not one per MiB
