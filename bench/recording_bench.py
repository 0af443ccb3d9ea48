"""Recording throughput and per-call cost (a benchmark, not a test).

    .venv/bin/python bench/recording_bench.py [--mb 128] [--rounds 5] [--dir /tmp]

For each case the same bytes go through a recorder in 32 KiB chunks (awaiting drain() when the
writer is behind, so the number is the writer's sustained speed) and, in the same round, straight to
a file with os.write (the disk's limit here). Rounds alternate; medians are printed, with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.recording import AsciicastRecorder, BinaryStreamRecorder, Recorder, StatementRecorder

CHUNK = 32 * 1024


def make_text(size: int) -> bytes:
    """Terminal-like output: mostly ASCII log lines with some UTF-8 and colour codes."""
    line = "2026-11-27T02:22:16Z \x1b[32mINFO\x1b[0m request id=%06d path=/api/v1/orders user=jürgen ok\r\n"
    out = bytearray()
    i = 0
    while len(out) < size:
        out += (line % i).encode()
        i += 1
    return bytes(out[:size])


def failed(reason: str) -> None:
    """A benchmark recorder must not fail."""
    raise SystemExit(f"recording failed: {reason}")


def open_cast(path: Path) -> AsciicastRecorder:
    """An asciicast recorder as the SSH front end opens one."""
    return AsciicastRecorder.open(
        path, width=120, height=40, title="bench", env={"TERM": "xterm"}, started_at=time.time(), on_failure=failed
    )


def open_binary(path: Path) -> BinaryStreamRecorder:
    """A binary stream recorder as the SSH front end opens one for exec without a PTY."""
    return BinaryStreamRecorder.open(path, title="bench", env={}, started_at=time.time(), on_failure=failed)


async def through_recorder(opener: Callable[[Path], Recorder], data: bytes, path: Path) -> float:
    """Seconds to push `data` through a recorder in CHUNK pieces until close() returns."""
    start = time.perf_counter()
    rec = opener(path)
    write = rec.output  # type: ignore[attr-defined]
    view = memoryview(data)
    for off in range(0, len(data), CHUNK):
        write(bytes(view[off : off + CHUNK]))
        if rec.needs_drain:
            await rec.drain()
    await rec.close()
    return time.perf_counter() - start


def through_os_write(data: bytes, path: Path) -> float:
    """Seconds to write the same bytes straight to a file, plus fsync (the baseline)."""
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    view = memoryview(data)
    for off in range(0, len(data), CHUNK):
        os.write(fd, view[off : off + CHUNK])
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - start


async def per_call_ns(opener: Callable[[Path], Recorder], path: Path, chunk: bytes) -> float:
    """Median nanoseconds one output() call costs the relay (time spent in the call only)."""
    rec = opener(path)
    write = rec.output  # type: ignore[attr-defined]
    calls = max(10, min(20_000, (8 << 20) // len(chunk)))  # stay well inside the backlog bound
    samples = []
    for _ in range(7):
        start = time.perf_counter_ns()
        for _ in range(calls):
            write(chunk)
        samples.append((time.perf_counter_ns() - start) / calls)
        await rec.drain()
        await asyncio.sleep(0.06)
    await rec.close()
    return statistics.median(samples)


async def interactive_sessions(root: Path, sessions: int, seconds: float) -> None:
    """CPU the recording costs for many interactive sessions (64 B of output every 10 ms each)."""
    recs = [open_cast(root / f"tty{i}.cast") for i in range(sessions)]
    chunk = b"\x1b[32muser@host\x1b[0m:~$ ls -la /var/log  # some typical terminal output....\r\n"
    ticks = int(seconds / 0.01)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(ticks):
        for rec in recs:
            rec.output(chunk)
        await asyncio.sleep(0.01)
    await asyncio.gather(*(rec.close() for rec in recs))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    mb = sessions * ticks * len(chunk) / 1e6
    print(
        f"  {sessions} interactive sessions, {mb:.1f} MB in {wall:.1f}s: process CPU {cpu / wall * 100:.0f}%"
        f" of one core (includes this driver loop), threads alive: {threading.active_count()}"
    )


async def statements_per_second(path: Path, n: int) -> float:
    """Statement events a second through a StatementRecorder until close()."""
    rec = StatementRecorder.open(path, header={"session": "bench"}, on_failure=failed)
    event = {
        "type": "statement",
        "sql": "SELECT id, total FROM orders WHERE customer_id = $1 LIMIT 50",
        "verdict": "allowed",
        "rows": 50,
        "duration_ms": 0.8,
    }
    start = time.perf_counter()
    for _ in range(n):
        rec.record(event)
    call_s = time.perf_counter() - start
    await rec.close()
    total = time.perf_counter() - start
    print(f"  statement record(): {call_s / n * 1e9:.0f} ns/call, {n / total:,.0f} events/s to disk")
    return n / total


async def main() -> None:
    """Run every case, alternating with the baseline, and print medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    size = args.mb << 20
    datasets = {"text": make_text(size), "random": os.urandom(size)}
    cases: list[tuple[str, str, Callable[[Path], Recorder]]] = [
        ("asciicast", "text", open_cast),
        ("asciicast", "random", open_cast),
        ("binary", "text", open_binary),
        ("binary", "random", open_binary),
    ]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        n = 0
        for _ in range(args.rounds):
            for fmt, kind, opener in cases:
                data = datasets[kind]
                n += 1
                base = through_os_write(data, root / f"base{n}")
                rec = await through_recorder(opener, data, root / f"rec{n}")
                results.setdefault((fmt, kind), []).append((base, rec))
                for p in (root / f"base{n}", root / f"rec{n}"):
                    p.unlink()
        print(f"{args.mb} MB per case, {args.rounds} rounds, {CHUNK // 1024} KiB chunks, medians:")
        for (fmt, kind), runs in results.items():
            base_mbs = statistics.median(size / b / 1e6 for b, _ in runs)
            rec_mbs = statistics.median(size / r / 1e6 for _, r in runs)
            ratio = statistics.median(b / r for b, r in runs)
            print(
                f"  {fmt:9s} {kind:6s}: {rec_mbs:7.1f} MB/s recorded   (os.write baseline {base_mbs:7.1f} MB/s,"
                f" recorder/baseline speed {ratio:.2f})"
            )
        for fmt, opener in (("asciicast", open_cast), ("binary", open_binary)):
            for chunk in (b"x", b"y" * 64, b"z" * CHUNK):
                ns = await per_call_ns(opener, root / f"call-{fmt}-{len(chunk)}", chunk)
                print(f"  {fmt:9s} output({len(chunk):5d} B): {ns:6.0f} ns/call on the relay")
        await statements_per_second(root / "stmts.jsonl", 200_000)
        await interactive_sessions(root, 200, 3.0)


if __name__ == "__main__":
    asyncio.run(main())
