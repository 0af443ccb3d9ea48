"""What an unreachable shared store could not take (audit events, session ends), kept on local disk until it can.

The caller still gets its error (a session whose audit cannot be written ends: fail closed); the spool is
how nothing is silently dropped. Each line is fsync'd before the error is raised. When the store answers
again the lines are written in order (each event as a new link in the chain, its own time kept and
`spooled: true` in its data). Several processes may share one spool file (replicas with one keys folder, a
CLI command beside `gateway run`): a drain first renames the file to one of its own, so exactly one
process takes each batch; a batch left by a process that died mid-drain is taken by the next drain (its
writes are then at least once: a crash between a write and the file's removal repeats that write).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


class Spool:
    """An append-only JSON-lines file of pending writes; `keep` is durable before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r})"

    def keep(self, kind: str, fields: dict[str, Any]) -> None:
        """Add one pending write (`append` or `end_session`) and fsync it; OSError if the disk refuses."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = json.dumps({"kind": kind, **fields}, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())  # one write with O_APPEND: lines of several processes never interleave
            os.fsync(fd)
        finally:
            os.close(fd)

    @property
    def pending(self) -> bool:
        """Whether anything waits (a stat: asked before every append)."""
        try:
            if self.path.stat().st_size > 0:
                return True
        except FileNotFoundError:
            pass
        return bool(self._orphans(adopt=False))

    def take(self) -> list[tuple[Path, list[dict[str, Any]]]]:
        """Batches to write, oldest first: batches whose drainer died, then the current file (renamed: ours)."""
        batches = self._orphans()
        mine = self._mine()
        try:
            os.rename(self.path, mine)
            batches.append(mine)
        except FileNotFoundError:
            pass
        out = []
        for path in batches:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:  # another process adopted it first
                continue
            out.append((path, [json.loads(line) for line in lines if line.strip()]))
        return out

    def put_back(self, entries: list[dict[str, Any]]) -> None:
        """Writes a drain could not finish go back into the spool."""
        for e in entries:
            self.keep(str(e["kind"]), {k: v for k, v in e.items() if k != "kind"})

    def _orphans(self, *, adopt: bool = True) -> list[Path]:
        """Batches renamed by a process that is gone (it died mid-drain), adopted under this process's name."""
        found = []
        for path in sorted(self.path.parent.glob(f"{self.path.name}.draining.*")):
            parts = path.name.rsplit(".", 2)
            if len(parts) == 3 and parts[1].isdigit() and not _alive(int(parts[1])):
                if not adopt:
                    found.append(path)
                    continue
                mine = self._mine()  # adopted under our own name, so no other process takes it too
                try:
                    os.rename(path, mine)
                except FileNotFoundError:
                    continue
                found.append(mine)
        return found

    def _mine(self) -> Path:
        """A batch name of this process (random: several store objects of one process never collide)."""
        return self.path.with_name(f"{self.path.name}.draining.{os.getpid()}.{secrets.token_hex(6)}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["Spool"]
