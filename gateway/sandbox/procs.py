"""Process plumbing shared by the sandbox servers: errors, unprivileged users, free ports, killing process trees."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence

USER_LOCK = "/tmp/gw-sandbox-useradd.lock"
"""Serialises useradd between concurrent sandboxes (demos, test runs); it stays: others may hold it."""


class SandboxUnavailable(RuntimeError):
    """A binary the sandbox needs is not installed; the message says which package provides it."""


class SandboxStartError(RuntimeError):
    """A throwaway server failed to start; the message carries its log."""


def is_root() -> bool:
    """Whether this process runs as root (and so must drop privileges for servers)."""
    return os.geteuid() == 0


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host``: all held open until all are picked, so none repeats."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (e.g. 'Address already in use'), or None when it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Same option asyncio's servers set: a port in TIME_WAIT is free for them, so it is free here too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


@contextlib.contextmanager
def _user_lock() -> Iterator[None]:
    """Serialize useradd/usermod across concurrent processes on this machine."""
    with open(USER_LOCK, "a") as fh:
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
                raise SandboxStartError(f"useradd {name} failed ({proc.returncode}): {proc.stderr.strip()}")
        if usermod_args:
            proc = subprocess.run(["usermod", *usermod_args, name], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SandboxStartError(f"usermod {name} failed ({proc.returncode}): {proc.stderr.strip()}")
        return pwd.getpwnam(name)


def _user_exists(name: str) -> bool:
    """Whether a local user ``name`` exists."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    return stat[stat.rfind(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    """Map each pid to its direct children, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is not None:
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
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


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
