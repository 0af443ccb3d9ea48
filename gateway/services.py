"""Build the shared services (keys, store, policies, sessions, alerts, access, scheduler) from a Config."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.access import Access
from gateway.alerts import Alerts
from gateway.anchors.publish import Anchorer
from gateway.config import Config
from gateway.detect.engine import Detector
from gateway.policy import Policies
from gateway.receipts import ReceiptIssuer
from gateway.scheduler import Scheduler
from gateway.sessions import LiveSession, SessionRegistry
from gateway.store import Store, store_for
from gateway.tokens import KeyRing


@dataclass
class Services:
    """The services one gateway process shares between its front ends, API and CLI."""

    config: Config
    ring: KeyRing
    store: Store
    policies: Policies
    alerts: Alerts
    registry: SessionRegistry
    access: Access
    anchors: Anchorer
    scheduler: Scheduler

    async def close(self) -> None:
        """End live sessions and close the store (signing a final checkpoint, anchored like every other)."""
        await self.registry.close_all("gateway shutting down")
        await self.store.close()
        await self.anchors.close()


def config_store(config: Config, ring: KeyRing | None, url: str | None = None) -> Store:
    """The (unopened) store of a config, or of another URL with this config's checkpoint settings."""
    url = url or config.store_url
    return store_for(
        url,
        ring,
        sqlite_path=config.store_path if url.startswith("sqlite:///") else None,
        # A shared store's signed heads are mirrored next to this replica's keys, outside the database.
        checkpoint_file=config.keys_dir.parent / "audit.checkpoints",
        checkpoint_every=config.checkpoint_every,
        node=config.node_id,
    )


def load_policies(config: Config) -> Policies:
    """Policies for the configured targets (files in policies_dir, built-in defaults for the rest)."""
    targets = {name: (t.kind, list(t.logins)) for name, t in config.targets.items()}
    return Policies.load(config.policies_dir, targets, list(config.workloads))


async def build_services(config: Config, *, clock: Callable[[], float] = time.time) -> Services:
    """Open keys (made on first start), the store and policies; wire sessions and alerts."""
    policies = load_policies(config)  # first: a bad policy file must not leave an open store (its thread) behind
    ring = KeyRing.load_or_create(config.keys_dir)
    store = config_store(config, ring)
    try:
        await store.open()
    except BaseException:
        # A store that fails half-way (not a database, a failed migration) still holds aiosqlite's
        # connection thread (or asyncpg's pool), which is not a daemon: left open, the process never exits.
        await store.close(checkpoint=False)
        raise
    alerts = Alerts(store, file=config.alerts_file)
    anchors = Anchorer(config.anchors, config.anchor_origin, ring, store, alert_sinks=alerts.sinks, clock=clock)
    store.checkpoint_listeners.append(anchors.publish)

    async def alert(s: LiveSession | None, type_: str, summary: str, severity: str, data: dict[str, Any]) -> None:
        if s is None:
            await alerts.emit(type_, summary, severity=severity, data=data)
        else:
            await alerts.emit(
                type_,
                summary,
                severity=severity,
                actor=s.user,
                session=s.id,
                grant=s.claims.jti,
                target=s.target.name,
                data=data,
            )

    registry = SessionRegistry(store, clock=clock, warn_before=config.warn_before, alert=alert)
    registry.detector = await Detector(config.detection, store, alerts, clock=clock).load()
    registry.end_listeners.append(registry.detector.on_session_end)
    receipts = ReceiptIssuer(store, ring, issuer=config.issuer, origin=config.anchor_origin)
    registry.end_listeners.append(receipts.on_session_end)
    access = Access(config, ring, store, policies, registry, clock)
    return Services(config, ring, store, policies, alerts, registry, access, anchors, Scheduler(clock))
