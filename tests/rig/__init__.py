"""Test rig: throwaway PostgreSQL clusters and OpenSSH servers on loopback.

Modules: ``tests.rig.postgres`` (PgCluster), ``tests.rig.sshd`` (SshServer), ``tests.rig.ports``
(free_port). This package holds the helpers they share.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence

_USER_LOCK = "/tmp/gw-rig-useradd.lock"


class RigUnavailable(RuntimeError):
    """A binary the rig needs is not installed (the fixtures turn this into a clear failure)."""


class RigStartError(RuntimeError):
    """A throwaway server failed to start; the message carries its log."""


def is_root() -> bool:
    """Whether this process runs as root (and so must drop privileges for servers)."""
    return os.geteuid() == 0


@contextlib.contextmanager
def _user_lock() -> Iterator[None]:
    """Serialize useradd/usermod across concurrent test sessions on this machine."""
    with open(_USER_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_user(name: str, useradd_args: Sequence[str], usermod_args: Sequence[str] = ()) -> pwd.struct_passwd:
    """Create local user ``name`` once (idempotent, root only), apply ``usermod_args``, return its entry."""
    with _user_lock():
        if not _user_exists(name):
            proc = subprocess.run(["useradd", *useradd_args, name], capture_output=True, text=True)
            if proc.returncode not in (0, 9):  # 9: already exists (created by someone else meanwhile)
                raise RigStartError(f"useradd {name} failed ({proc.returncode}): {proc.stderr.strip()}")
        if usermod_args:
            proc = subprocess.run(["usermod", *usermod_args, name], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RigStartError(f"usermod {name} failed ({proc.returncode}): {proc.stderr.strip()}")
        return pwd.getpwnam(name)


def _user_exists(name: str) -> bool:
    """Whether a local user ``name`` exists."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _children_map() -> dict[int, list[int]]:
    """Map each pid to its direct children, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name (field 2) may contain spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children first, then theirs)."""
    children = _children_map()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def kill_pids(pids: Sequence[int], timeout: float = 5.0) -> None:
    """SIGTERM ``pids``, wait up to ``timeout`` seconds, then SIGKILL the survivors."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.02)
        pids = [p for p in pids if pid_alive(p)]
        if not pids:
            return
