"""Workers' process-local metrics, shared through the supervisor's private folder so any worker answers for all.

Each worker writes its `metrics.Local` as JSON to `<run_dir>/metrics-w<i>.json` every second (write to a
temporary name, then rename: a reader never sees half a file); /metrics adds its own live figures to its
siblings' files. A file older than STALE seconds is a dead worker's and is left out (its sessions ended with
it, and the restarted worker publishes afresh).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from gateway.config import WorkerSlot
from gateway.metrics import Local, Metric

PUBLISH_EVERY = 1.0
STALE = 5.0


def _path(slot: WorkerSlot, index: int) -> Path:
    return slot.run_dir / f"metrics-w{index}.json"


def encode(here: Local) -> str:
    """A Local as JSON."""
    return json.dumps({
        "live": [[t, p, n] for (t, p), n in here.live.items()],
        "stats": {t: list(row) for t, row in here.stats.items()},
        "extra": [{"name": m.name, "kind": m.kind, "help": m.help, "samples": [[dict(lb), v] for lb, v in m.samples]}
                  for m in here.extra],
    })  # fmt: skip


def decode(text: str) -> Local:
    """A Local from encode()'s JSON; ValueError (KeyError, TypeError) if it is not one."""
    doc: dict[str, Any] = json.loads(text)
    live = {(str(t), str(p)): float(n) for t, p, n in doc["live"]}
    stats = {str(t): (float(a), float(b), float(c)) for t, (a, b, c) in doc["stats"].items()}
    extra = tuple(Metric(str(m["name"]), str(m["kind"]), str(m["help"]),
                         tuple(({str(k): str(v) for k, v in lb.items()}, float(v)) for lb, v in m["samples"]))
                  for m in doc["extra"])  # fmt: skip
    return Local(live, stats, extra)


def publish(slot: WorkerSlot, here: Local) -> None:
    """Write this worker's file (atomically)."""
    final = _path(slot, slot.index)
    tmp = final.with_name(f".{final.name}.{os.getpid()}")
    tmp.write_text(encode(here), encoding="utf-8")
    os.replace(tmp, final)


def withdraw(slot: WorkerSlot) -> None:
    """Remove this worker's file (it is stopping)."""
    _path(slot, slot.index).unlink(missing_ok=True)


def siblings(slot: WorkerSlot, now: float | None = None) -> list[Local]:
    """The other workers' fresh Locals (missing, stale or unreadable files are left out)."""
    now = time.time() if now is None else now
    out: list[Local] = []
    for i in range(slot.count):
        if i == slot.index:
            continue
        path = _path(slot, i)
        try:
            if now - path.stat().st_mtime > STALE:
                continue
            out.append(decode(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
