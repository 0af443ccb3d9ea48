"""Composition root: build services, start the front ends, the API and the scheduled jobs; shut down cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn, Protocol

from gateway.config import Config
from gateway.keyfiles import ensure_ssh_host_key, ensure_tls_cert
from gateway.policy import PolicyError
from gateway.replica import Replica
from gateway.services import Services, build_services, load_policies
from gateway.webhooks import WebhookSink, install_webhooks

log = logging.getLogger(__name__)

STOP_GRACE = 10.0
"""Seconds a graceful stop may take before the process ends regardless."""


class Listener(Protocol):
    """What every front end offers the composition root."""

    @property
    def port(self) -> int: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class App:
    """One gateway process: SSH and Postgres front ends, the HTTP API, the scheduled jobs (revocation sweep, expiry)."""

    def __init__(self, config: Config, *, enable: tuple[str, ...] = ("postgres", "ssh", "http")) -> None:
        self.config = config
        self.enable = enable
        self.services: Services | None = None
        self.listeners: dict[str, Listener] = {}
        self._webhooks: WebhookSink | None = None
        self._replica: Replica | None = None

    async def start(self) -> Services:
        """Make missing key material, open services, start listeners and background tasks."""
        ensure_tls_cert(self.config.tls_cert, self.config.tls_key)
        ensure_ssh_host_key(self.config.ssh_host_key)
        svc = self.services = await build_services(self.config)
        await svc.store.append("gateway.start", data={"listen": self._addresses(), "kid": svc.ring.active_kid})
        self._webhooks = install_webhooks(svc)
        # Every store, SQLite too: heartbeats for `gateway nodes`, what a previous process left open ended
        # before anything is admitted, pushed revocations and reaping of a silent replica on PostgreSQL.
        replica = Replica(svc)
        await replica.start()  # refuses a node id a running replica holds: only then is the row this one's
        self._replica = replica
        for name in ("postgres", "ssh", "http"):
            if name in self.enable:
                # Registered before it starts: one that fails half-way (bound, then an error) is still closed.
                listener = self.listeners[name] = self._factory(name)(svc)
                await listener.start()
        # Revocations and kills made by other processes (CLI, replicas) reach live sessions within 0.25 s.
        svc.scheduler.every(0.25, "revocation-sweep", lambda now: svc.registry.sweep())
        svc.scheduler.every(5.0, "grant-expiry", self._expire_grants)
        every = svc.anchors.settings.interval  # first after one interval: start and stop sign checkpoints already
        svc.scheduler.every(every, "audit-anchors", svc.anchors.tick, first=every)
        svc.scheduler.every(self.config.heartbeat, "replica-heartbeat", replica.tick)
        every = self.config.detection.sweep_every
        # Backends and processes of the injected logins that no live session owns: flagged, ended.
        if "postgres" in self.enable:
            from gateway.detect.pgsweep import PgSweeper

            sweeper = PgSweeper(self.config, svc.store, svc.alerts)
            svc.scheduler.every(every, "lingering-sweep", sweeper.once, first=every)
        if "ssh" in self.enable and svc.registry.detector is not None:
            from gateway.detect.sshsweep import SshSweeper

            ssh_sweeper = SshSweeper(self.config, svc.policies, svc.registry.detector)
            svc.scheduler.every(every, "lingering-sweep-ssh", ssh_sweeper.once, first=every)
        svc.scheduler.start()
        return svc

    @staticmethod
    def _factory(name: str) -> Callable[[Services], Listener]:
        # Imported on demand so an API-only process does not load (or depend on) the proxies.
        if name == "postgres":
            from gateway.pg.listener import PostgresListener

            return PostgresListener
        if name == "ssh":
            from gateway.ssh.listener import SshListener

            return SshListener
        from gateway.api.server import ApiServer

        return ApiServer

    def _addresses(self) -> dict[str, str]:
        c = self.config
        return {"ssh": str(c.listen_ssh), "postgres": str(c.listen_postgres), "http": str(c.listen_http)}

    async def _expire_grants(self, now: float) -> None:
        """Mark grants past their end as expired (audited); their sessions end at their own deadline."""
        assert self.services is not None
        store = self.services.store
        detector = self.services.registry.detector
        for gid in await store.expire_grants(now):
            await store.append("grant.expired", grant=gid)
            grant = await store.get_grant(gid) if detector is not None else None
            if detector is not None and grant is not None:
                await detector.grant_expired(grant)  # approved and never used?

    async def reload_policies(self) -> bool:
        """SIGHUP: reload policies; a bad file keeps the old ones. The result is audited either way."""
        assert self.services is not None
        svc = self.services
        try:
            policies = load_policies(self.config)
        except PolicyError as exc:
            await svc.store.append("policy.reload_failed", severity="warning", data={"error": str(exc)})
            log.error("policy reload failed, keeping the old policies: %s", exc)
            return False
        svc.policies.replace(policies)
        await svc.store.append("policy.reloaded", data={"targets": [t.target for t in policies.targets()]})
        return True

    async def stop(self) -> None:
        """Stop accepting, end live sessions, sign the final checkpoint; also after a start that failed half-way."""
        if self.services is not None:
            await self.services.scheduler.stop()
        for listener in self.listeners.values():
            await listener.close()
        if self._replica is not None:
            try:
                await self._replica.stopped()
                await self._replica.upstreams_done(limit=STOP_GRACE / 2)
            except Exception as exc:
                log.error("could not record this replica's stop: %s", type(exc).__name__)
        if self.services is not None:
            await self.services.store.append("gateway.stop")
            await self.services.registry.close_all("gateway shutting down")
            if self._webhooks is not None:
                await self._webhooks.close()  # after the kills, so their alerts still go out
            await self.services.close()

    async def serve_forever(self, *, grace: float = STOP_GRACE, ready: Callable[[], None] | None = None) -> None:
        """Run until SIGINT/SIGTERM; SIGHUP reloads policies. A failed start stops what it started and raises.

        The first SIGINT/SIGTERM stops gracefully; a second one, or a graceful stop still running after
        `grace` seconds, ends the process at once (a wedged shutdown must not make a hung unit).
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)

        def on_signal(sig: signal.Signals) -> None:
            if stop.is_set():
                _exit_now(f"second {sig.name}", 128 + sig)
            stop.set()
            _arm_watchdog(grace, sig)

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload_policies()))
        try:
            await self.start()
            if ready is not None:
                ready()  # a worker tells its supervisor it serves
            await stop.wait()
        finally:
            try:
                await asyncio.wait_for(self.stop(), grace)
            except TimeoutError:
                _exit_now(f"the graceful stop took longer than {grace:.0f} s", 1)
            finally:
                for sig in (*signals, signal.SIGHUP):
                    loop.remove_signal_handler(sig)


def _arm_watchdog(grace: float, sig: signal.Signals) -> None:
    """End the process `grace` seconds from now even if the event loop is wedged (a thread, not a loop timer)."""
    timer = threading.Timer(grace + 2.0, _exit_now, (f"{sig.name}: still stopping after {grace:.0f} s", 1))
    timer.daemon = True
    timer.start()


def _exit_now(why: str, code: int) -> NoReturn:
    """The "for sure" of a stop: no cleanup, no waiting for threads."""
    log.error("exiting now (%s)", why)
    sys.stderr.flush()
    os._exit(code)
