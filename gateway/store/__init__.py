"""Persistence behind one interface: grants, sessions, requests, replicas and the hash-chained audit log."""

from __future__ import annotations

from pathlib import Path

from gateway.store.base import REPLICA_LOST, Counts, NodeRecord, Store, StoreConflict, StoreError
from gateway.store.records import AuditEvent, GrantRecord, RequestRecord, SessionRecord
from gateway.store.sqlite import SqliteStore
from gateway.tokens import KeyRing

PG_PREFIXES = ("postgresql://", "postgres://")


def store_for(
    url: str,
    ring: KeyRing | None,
    *,
    sqlite_path: Path | None = None,
    checkpoint_file: Path | None = None,
    checkpoint_every: int = 100,
    node: str = "",
) -> Store:
    """The store a URL names: PostgreSQL (shared by replicas) or the embedded SQLite file at `sqlite_path`."""
    if url.startswith(PG_PREFIXES):
        from gateway.store.postgres import PgStore  # asyncpg only where it is used

        return PgStore(url, ring, checkpoint_every=checkpoint_every, node=node, checkpoint_file=checkpoint_file)
    if sqlite_path is None:
        raise StoreError(f"not a store URL: {url.split(':', 1)[0]}:...")
    return SqliteStore(sqlite_path, ring, checkpoint_every=checkpoint_every, node=node)


__all__ = [
    "REPLICA_LOST",
    "AuditEvent",
    "Counts",
    "GrantRecord",
    "NodeRecord",
    "RequestRecord",
    "SessionRecord",
    "SqliteStore",
    "Store",
    "StoreConflict",
    "StoreError",
    "store_for",
]
