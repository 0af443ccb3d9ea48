"""The spool of writes an unreachable store could not take: durable lines, one drainer per batch, a batch left
by a drainer that died is adopted, what a drain could not finish goes back (the real outage is
tests/test_store_outage.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.store.spool import Spool


def test_keep_take_and_put_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "audit.spool.jsonl")
    assert not spool.pending and spool.take() == []
    spool.keep("append", {"type": "a", "ts": 1.0})
    spool.keep("end_session", {"id": "s1"})
    assert spool.pending
    [(path, entries)] = spool.take()
    assert [e["kind"] for e in entries] == ["append", "end_session"] and not (tmp_path / "audit.spool.jsonl").exists()
    spool.keep("append", {"type": "b", "ts": 2.0})  # written while draining: the next batch
    spool.put_back(entries[1:])  # the drain wrote the first, not the second
    path.unlink()
    [(_, again)] = spool.take()
    assert [(e["kind"], e.get("type")) for e in again] == [("append", "b"), ("end_session", None)]


def test_a_batch_left_by_a_dead_drainer_is_adopted_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "audit.spool.jsonl")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f"audit.spool.jsonl.draining.{int(dead.stdout)}.1"
    left.write_text('{"kind": "append", "type": "orphan"}\n')
    mine = tmp_path / f"audit.spool.jsonl.draining.{os.getpid()}.99"  # a live drainer's batch (ours): not taken
    mine.write_text('{"kind": "append", "type": "in-flight"}\n')
    assert spool.pending
    [(path, entries)] = spool.take()
    assert [e["type"] for e in entries] == ["orphan"] and not left.exists() and mine.exists()
    assert Spool(tmp_path / "audit.spool.jsonl").take() == []  # adopted by us: nobody else takes it too
    path.unlink()
