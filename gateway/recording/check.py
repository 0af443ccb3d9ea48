"""Check a closed recording against the SHA-256 recorded in the audit log at its close (and its sidecar)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """SHA-256 hex of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check_recording(path: Path, expected_sha256: str) -> str | None:
    """None when intact; otherwise what is wrong (deleted, unreadable, edited or truncated)."""
    try:
        actual = file_sha256(path)
    except FileNotFoundError:
        return f"{path} is missing (deleted)"
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror}"
    if actual != expected_sha256:
        return f"{path} does not match the hash recorded at close (edited or truncated)"
    # The recording is intact, so its sidecar line (if any) is what the gateway wrote: check the sidecar by it.
    from gateway.recording.sidecar import check_sidecar  # sidecar imports file_sha256 from here

    return check_sidecar(path)
