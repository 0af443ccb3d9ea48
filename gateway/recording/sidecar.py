"""The sidecar of a SQL recording: values too long for a line (bind parameters), whole, as raw bytes.

A statement line keeps a bounded head and tail of such a value with its length, SHA-256 and offset here;
the sidecar itself is covered by the recording's hash: at close its SHA-256 and size go into the
recording's last line (``{"type": "sidecar", "file": ..., "bytes": ..., "sha256": ...}``), and that file's
hash goes into the audit chain. ``check_sidecar`` verifies it against that line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gateway.recording.check import file_sha256
from gateway.recording.schema import SIDECAR
from gateway.recording.writer import PendingEvent, Recorder

SIDECAR_SUFFIX = ".blobs"
_TAIL_READ = 64 << 10


def sidecar_path(recording: Path) -> Path:
    """Where the sidecar of `recording` lives: ``<session>.sql.jsonl`` -> ``<session>.sql.blobs``."""
    name = recording.name
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    return recording.with_name(stem + SIDECAR_SUFFIX)


class Sidecar(Recorder):
    """Append-only raw bytes, written by the shared writer thread like any recording (no header)."""

    urgent_backlog = 1 << 20
    write_slice = 1 << 20

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.size = 0  # bytes attached so far (the offset of the next value)

    def attach(self, data: bytes) -> int:
        """Queue `data`; returns its offset in the file."""
        offset = self.size
        self.size += len(data)
        self._append("b", data, len(data), False)
        return offset

    def _encode(self, batch: list[PendingEvent], final: bool) -> bytes:
        return b"".join(ev.parts[0] for ev in batch)


def read_value(recording: Path, offset: int, size: int) -> bytes | None:
    """One value from the sidecar of `recording` (None when it cannot be read whole)."""
    try:
        with open(sidecar_path(recording), "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError:
        return None
    return data if len(data) == size else None


def sidecar_line(recording: Path) -> dict[str, Any] | None:
    """The recording's closing sidecar line, if its last line is one."""
    try:
        with open(recording, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(0, end - _TAIL_READ))
            tail = f.read()
    except OSError:
        return None
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    try:
        ev = json.loads(lines[-1])
    except ValueError:
        return None
    return ev if isinstance(ev, dict) and ev.get("type") == SIDECAR else None


def check_sidecar(recording: Path) -> str | None:
    """None when the recording has no sidecar or it matches the recording's sidecar line; else what is wrong."""
    line = sidecar_line(recording)
    if line is None:
        return None
    path = sidecar_path(recording)  # never a name read from the file: that could point anywhere
    try:
        actual = file_sha256(path)
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path} is missing (deleted)"
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror}"
    if actual != line.get("sha256") or size != line.get("bytes"):
        return f"{path} does not match the hash its recording holds (edited or truncated)"
    return None
