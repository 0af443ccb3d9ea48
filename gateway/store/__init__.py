"""Persistence behind one interface: grants, sessions, requests and the hash-chained audit log."""

from gateway.store.records import AuditEvent, GrantRecord, RequestRecord, SessionRecord
from gateway.store.sqlite import SqliteStore, StoreError

Store = SqliteStore

__all__ = ["AuditEvent", "GrantRecord", "RequestRecord", "SessionRecord", "SqliteStore", "Store", "StoreError"]
