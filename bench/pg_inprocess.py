"""The Postgres session machine in-process, without sockets: CPU per prepared transaction and per MB of COPY.

    .venv/bin/python bench/pg_inprocess.py [--tx 100000] [--copy-mb 50]
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        .venv/bin/python bench/pg_inprocess.py --tx 7000 --copy-mb 0     # and --tx 2000: instructions per tx
                                                                         # = the difference of the I refs / 5000

One prepared transaction is what pgbench -S -M prepared sends and gets (Bind/Execute/Sync; BindComplete,
DataRow, CommandComplete, ReadyForQuery) fed to a real SessionMachine with the read policy's inspector cache,
its Journal in the relay's deferred mode and a real StatementRecorder (its writer thread included in the CPU
figure). COPY is ~100-byte CopyData messages in 64 KiB reads, an admin session. Whichever build of
gateway/pg is importable runs (scripts/build-mypyc; BENCH_PACKAGE=DIR for a copy made with --into DIR); the
output says which. Numbers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

# This tree, or a compiled copy of the package (BENCH_PACKAGE=DIR, made by `scripts/build-mypyc --into DIR`).
sys.path.insert(0, os.environ.get("BENCH_PACKAGE") or str(Path(__file__).resolve().parents[1]))

from gateway.pg.journal import Journal
from gateway.pg.machine import SessionMachine, facts_of
from gateway.pg.messages import ParameterStatus
from gateway.pg.sql.inspector import Inspector, decide_function_call
from gateway.policy import SqlPolicy
from gateway.recording import StatementRecorder


def msg(tag: bytes, body: bytes = b"") -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


def machine(mode: str, directory: Path, loop: asyncio.AbstractEventLoop) -> tuple[SessionMachine, Journal]:
    """A session machine as the relay builds it (deferred journal, recorder opened inside the loop)."""
    policy = SqlPolicy(mode)
    params = [ParameterStatus("client_encoding", "UTF8"), ParameterStatus("standard_conforming_strings", "on"),
              ParameterStatus("is_superuser", "off"), ParameterStatus("session_authorization", "app")]  # fmt: skip
    facts = facts_of("s1", "alice", "app", mode, "orders", policy.mode, decide_function_call(policy), params, "I")

    async def open_recorder() -> StatementRecorder:
        return StatementRecorder.open(directory / f"{mode}.sql.jsonl", header={"session": "s1"}, on_failure=print)

    journal = Journal(loop.run_until_complete(open_recorder()), max_rows=None, alert=lambda *a, **k: None)
    journal.defer = True
    return SessionMachine(facts, Inspector(policy), journal, lambda i, d: d), journal


def prepared_tx(m: SessionMachine, j: Journal, n: int) -> float:
    """CPU seconds (all threads) of `n` prepared transactions."""
    sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0"
    m.client_data(msg(b"P", b"P0_1\0" + sql + b"\0\0") + msg(b"S"))
    m.server_data(msg(b"1") + msg(b"Z", b"I"))
    bind = msg(b"B", b"\0P0_1\0" + struct.pack("!hhi", 0, 1, 5) + b"12345" + struct.pack("!h", 0))
    client = bind + msg(b"E", b"\0" + struct.pack("!i", 0)) + msg(b"S")
    server = msg(b"2") + msg(b"D", struct.pack("!hi", 1, 1) + b"0") + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")
    t0 = time.process_time()
    for _ in range(n):
        m.client_data(client)
        m.server_data(server)
        j.write_later()
    return time.process_time() - t0


def copy_out(m: SessionMachine, mb: int) -> float:
    """CPU seconds of scanning a COPY of `mb` MB of ~100-byte rows, in 64 KiB reads."""
    rows = b"".join(msg(b"d", b"%9d\t1\t0\t%s\n" % (i, b" " * 84)) for i in range(10_000))
    stream = rows * mb
    chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
    m.client_data(msg(b"Q", b"COPY (SELECT * FROM pgbench_accounts) TO STDOUT\0"))
    t0 = time.process_time()
    m.server_data(msg(b"H", b"\0\0\0"))
    for c in chunks:
        m.server_data(c)
    m.server_data(msg(b"c") + msg(b"C", b"COPY %d\0" % (10_000 * mb)) + msg(b"Z", b"I"))
    return time.process_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tx", type=int, default=100_000, help="prepared transactions (0: none)")
    ap.add_argument("--copy-mb", type=int, default=50, help="MB of COPY output (0: none)")
    args = ap.parse_args()
    import gateway.pg.machine as compiled

    build = "pure-python" if (compiled.__file__ or "").endswith(".py") else "mypyc"
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    with tempfile.TemporaryDirectory(prefix="gw-bench-inproc-") as d:
        if args.tx:
            m, j = machine("read", Path(d), loop)
            prepared_tx(m, j, min(1000, args.tx))  # warm the caches (inspector, line shapes)
            cpu = prepared_tx(m, j, args.tx)
            print(f"{build}: {cpu / args.tx * 1e6:.2f} us of CPU per prepared transaction ({args.tx})")
        if args.copy_mb:
            m, _ = machine("admin", Path(d), loop)
            cpu = copy_out(m, args.copy_mb)
            print(f"{build}: {cpu / (args.copy_mb * 1.04) * 1e3:.3f} ms of CPU per MB of COPY (~100-byte rows)")
    loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
