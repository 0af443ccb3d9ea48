"""`[listen] workers = N`: N gateway processes on the same ports and one store, under a small supervisor.

One Python process relays on one core; a second process doubles what a host can relay (docs/benchmarks.md).
Each worker is a whole gateway (`App`) with its own node id (`<node>/w<i>`): they share the listen ports
through SO_REUSEPORT (the kernel spreads new connections over them), and the store, keys, policies and
recordings folder, exactly as replicas do (gateway/replica.py): a revocation or kill made through any worker
reaches sessions on the others through the store (pushed on PostgreSQL, the 0.25 s sweep on SQLite), and a
worker that dies is reaped by the others and restarted here. Cancel requests find their worker through
gateway/pg/workercancel.py.

The supervisor does the first-start work once (keys, certificates, the store's schema) so that workers do not
race for it, holds each port with a bound, non-listening SO_REUSEPORT socket (port 0 becomes a real port, and
it stays this gateway's while a worker restarts), passes SIGTERM/SIGINT/SIGHUP on, and fails a start as one
process would: if a worker exits before it is serving, every worker is stopped and the exit code returned.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from gateway.config import Address, Config, WorkerSlot

log = logging.getLogger(__name__)

READY_WAIT = 60.0
"""Seconds a worker may take to start serving."""
STOP_WAIT = 20.0
"""Seconds workers get to stop after SIGTERM before they are killed (their own stop is bounded at 10 s)."""
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0)
STABLE_AFTER = 30.0
"""A worker that ran this long before it died restarts without backoff."""


def worker_config(config: Config, spec: str) -> Config:
    """The config of one worker, from the supervisor's --worker argument."""
    w = json.loads(spec)
    ports = w["ports"]
    return dataclasses.replace(
        config,
        listen_ssh=Address(config.listen_ssh.host, int(ports["ssh"])),
        listen_postgres=Address(config.listen_postgres.host, int(ports["postgres"])),
        listen_http=Address(config.listen_http.host, int(ports["http"])),
        worker=WorkerSlot(int(w["index"]), int(w["count"]), Path(w["run_dir"])),
    )


def die_with_parent() -> None:
    """Linux: SIGTERM this worker when the supervisor dies (even by SIGKILL), so no orphan keeps a port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _hold(addr: Address) -> socket.socket:
    """A bound SO_REUSEPORT socket that never listens: it keeps the port and receives no connections."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((addr.host.strip("[]"), addr.port))
    return s


async def _prepare(config: Config) -> None:
    """First-start work, once: signing keys, TLS certificate, SSH host key, the store's schema."""
    from gateway.keyfiles import ensure_ssh_host_key, ensure_tls_cert
    from gateway.services import config_store
    from gateway.tokens import KeyRing

    ensure_tls_cert(config.tls_cert, config.tls_key)
    ensure_ssh_host_key(config.ssh_host_key)
    ring = KeyRing.load_or_create(config.keys_dir)
    store = config_store(config, ring)
    try:
        await store.open()
    finally:
        await store.close(checkpoint=False)


class Supervisor:
    """Starts the workers, restarts one that dies, stops them all on SIGTERM/SIGINT."""

    def __init__(self, config: Config, argv: list[str]) -> None:
        self.config = config
        self.argv = argv  # the worker's command line before `--worker SPEC`
        self.count = config.workers
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()
        self.run_dir = Path(tempfile.mkdtemp(prefix="gateway-workers-"))  # 0700: only this user reaches it
        self.ports: dict[str, int] = {}

    async def run(self) -> int:
        """Serve until a signal; the exit code (a worker's, when the start failed)."""
        held = []
        try:
            for name in ("ssh", "postgres", "http"):
                s = _hold(getattr(self.config, f"listen_{name}"))
                held.append(s)
                self.ports[name] = s.getsockname()[1]
            await _prepare(self.config)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stopping.set)
            loop.add_signal_handler(signal.SIGHUP, self._signal_all, signal.SIGHUP)
            code = await self._start_all()
            if code is not None:
                return code
            print(f"gateway: serving with {self.count} workers on ssh {self.ports['ssh']}, postgres "
                  f"{self.ports['postgres']}, http {self.ports['http']}", flush=True)  # fmt: skip
            await asyncio.gather(*(self._keep(i) for i in range(self.count)))
            return 0
        finally:
            await self._stop_all()
            for s in held:
                s.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        spec = {"index": index, "count": self.count, "run_dir": str(self.run_dir), "ports": self.ports,
                "ready": str(self._ready_file(index))}  # fmt: skip
        self._ready_file(index).unlink(missing_ok=True)
        # Its own session: a terminal's Ctrl-C reaches the supervisor only (a worker would take the SIGTERM that
        # follows for a second signal and skip its graceful stop).
        proc = await asyncio.create_subprocess_exec(*self.argv, "--worker", json.dumps(spec), start_new_session=True)
        self.procs[index] = proc
        return proc

    def _ready_file(self, index: int) -> Path:
        return self.run_dir / f"ready-{index}"

    async def _start_all(self) -> int | None:
        """Start every worker and wait until each serves; the exit code of one that failed first."""
        for i in range(self.count):
            await self._spawn(i)
        deadline = time.monotonic() + READY_WAIT
        while not all(self._ready_file(i).exists() for i in range(self.count)):
            for i, p in self.procs.items():
                if p.returncode is not None:
                    log.error("worker %d exited with %d while starting: stopping the others", i, p.returncode)
                    return p.returncode or 1
            if self.stopping.is_set():
                return 0
            if time.monotonic() > deadline:
                log.error("the workers did not start within %.0f s", READY_WAIT)
                return 1
            await asyncio.sleep(0.05)
        return None

    async def _keep(self, index: int) -> None:
        """Restart worker `index` whenever it dies, until the supervisor stops."""
        failures = 0
        started = time.monotonic()
        while True:
            proc = self.procs[index]
            ended = asyncio.ensure_future(proc.wait())
            stop = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait({ended, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if self.stopping.is_set():
                ended.cancel()
                return
            failures = 0 if time.monotonic() - started > STABLE_AFTER else failures + 1
            delay = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)]
            log.error("worker %d exited with %s; restarting it in %.1f s (the others reap its sessions)",
                      index, proc.returncode, delay)  # fmt: skip
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
                return
            except TimeoutError:
                pass
            started = time.monotonic()
            await self._spawn(index)

    def _signal_all(self, sig: int) -> None:
        for p in self.procs.values():
            if p.returncode is None:
                p.send_signal(sig)

    async def _stop_all(self) -> None:
        self._signal_all(signal.SIGTERM)
        running = [p for p in self.procs.values() if p.returncode is None]
        if not running:
            return
        _, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running], timeout=STOP_WAIT)
        if late:
            log.error("%d workers still running %.0f s after SIGTERM: killing them", len(late), STOP_WAIT)
            self._signal_all(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in running))


def worker_argv(config: Config, only: list[str] | None) -> list[str]:
    """The command line that starts one worker of this `gateway run`."""
    argv = [sys.executable, "-m", "gateway", "--config", str(config.path), "run"]
    for name in only or ():
        argv += ["--only", name]
    return argv
