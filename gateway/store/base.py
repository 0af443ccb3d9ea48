"""The one Store interface both backends (SQLite, PostgreSQL) implement, and its errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.store.chain import Checkpoint, Verdict
from gateway.store.records import AuditEvent, GrantRecord, RequestRecord, SessionRecord, WebSignIn

SEVERITIES = ("info", "warning", "critical")

REPLICA_LOST = "replica_lost"
"""The end reason of a session whose replica stopped heartbeating (set by a surviving replica)."""


class StoreError(Exception):
    """A store operation failed in a way the caller should report (unknown id, illegal transition, unreachable)."""


class StoreConflict(StoreError):
    """A record with that id already exists."""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One gateway replica as it last reported itself."""

    id: str
    version: str
    started_at: float
    heartbeat_at: float
    live_sessions: int
    state: str = "up"  # up | stopped | lost


@dataclass(frozen=True, slots=True)
class Counts:
    """Totals the metrics endpoint reports, read in one place per backend."""

    pending_requests: int
    active_grants: int
    kills: int
    rejected: dict[str, int]
    # per target: (statements, denied, commands) of ended sessions
    ended_stats: dict[str, tuple[float, float, float]]


Wake = Callable[[str], Awaitable[None] | None]
"""Called with 'grant:<id>' or 'session:<id>' when another replica revoked or killed something."""


class Store(Protocol):
    """Grants, sessions, requests, replicas and the hash-chained audit log, shared by every replica."""

    node: str
    checkpoint_every: int
    checkpoint_listeners: list[Callable[[Checkpoint], Awaitable[None]]]

    async def open(self) -> Store: ...
    async def close(self, *, checkpoint: bool = True) -> None: ...
    async def ping(self) -> None: ...

    async def append(
        self,
        type_: str,
        *,
        actor: str = "gateway",
        session: str = "",
        grant: str = "",
        target: str = "",
        severity: str = "info",
        data: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> AuditEvent: ...
    async def checkpoint(self) -> Checkpoint | None: ...
    async def events(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        types: Iterable[str] = (),
        session: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEvent]: ...
    async def checkpoints(self) -> list[Checkpoint]: ...
    async def head(self) -> tuple[int, str] | None: ...
    async def verify(self) -> Verdict: ...

    async def add_grant(self, g: GrantRecord) -> None: ...
    async def get_grant(self, grant_id: str) -> GrantRecord | None: ...
    async def list_grants(self, *, user: str | None = None, state: str | None = None) -> list[GrantRecord]: ...
    async def revoke_grant(self, grant_id: str, *, by: str, reason: str, now: float) -> GrantRecord: ...
    async def expire_grants(self, now: float) -> list[str]: ...
    async def revoked_grant_ids(self, ids: Iterable[str]) -> set[str]: ...

    async def use_workload_token(self, key: str, *, expires_at: float, now: float, used_for: str) -> bool: ...

    async def add_session(self, s: SessionRecord) -> None: ...
    async def admit_session(self, s: SessionRecord, *, max_live: int | None) -> bool: ...
    async def end_session(
        self, session_id: str, *, ended_at: float, reason: str, recording_sha256: str | None, stats: dict[str, Any]
    ) -> bool: ...
    async def get_session(self, session_id: str) -> SessionRecord | None: ...
    async def list_sessions(
        self,
        *,
        user: str | None = None,
        target: str | None = None,
        since: float | None = None,
        live: bool | None = None,
        grant_id: str | None = None,
    ) -> list[SessionRecord]: ...
    async def request_kill(self, session_id: str, reason: str) -> None: ...
    async def kill_requests(self, ids: Iterable[str]) -> dict[str, str]: ...

    async def add_request(self, r: RequestRecord) -> None: ...
    async def get_request(self, request_id: str) -> RequestRecord | None: ...
    async def update_request(
        self, r: RequestRecord, *, expect_state: str, expect_approvals: int | None = None
    ) -> bool: ...
    async def list_requests(
        self, *, requester: str | None = None, state: str | None = None, target: str | None = None
    ) -> list[RequestRecord]: ...

    async def session_history(self) -> list[tuple[str, str, int, float]]: ...
    async def baseline_seen(self) -> list[tuple[str, str, str, str]]: ...
    async def add_baseline_seen(self, rows: list[tuple[str, str, str, str, float]]) -> None: ...

    async def counts(self) -> Counts: ...

    async def heartbeat(self, node: NodeRecord) -> None: ...
    async def list_nodes(self) -> list[NodeRecord]: ...
    async def claim_lost_nodes(self, *, older_than: float, now: float) -> dict[str, list[SessionRecord]]: ...

    async def listen(self, wake: Wake) -> None: ...

    async def add_web_session(self, key: str, s: WebSignIn, *, now: float) -> None: ...
    async def get_web_session(self, key: str, *, now: float) -> WebSignIn | None: ...
    async def drop_web_session(self, key: str) -> None: ...
