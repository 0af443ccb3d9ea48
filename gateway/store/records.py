"""Plain records the store keeps: grants, sessions, access requests, audit events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """An issued approval: the token's claims plus its lifecycle state."""

    id: str
    user: str
    target: str
    scope: str
    reason: str
    approvers: tuple[str, ...]
    issued_at: float
    not_before: float
    expires_at: float
    state: str = "active"  # active | revoked | expired
    break_glass: bool = False
    request_id: str | None = None
    max_sessions: int | None = None
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    # A pipeline's grant: which workload issuer, run and workflow it was exchanged for (None for a person).
    workload: dict[str, Any] | None = None

    def live(self, now: float) -> bool:
        """Usable for new connections right now."""
        return self.state == "active" and self.not_before <= now < self.expires_at


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One connection through the gateway, live or ended."""

    id: str
    grant_id: str
    user: str
    target: str
    scope: str
    protocol: str  # postgres | ssh
    client_addr: str
    started_at: float
    ended_at: float | None = None
    end_reason: str | None = None
    recording_path: str | None = None
    recording_sha256: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    kill_requested: str | None = None
    node: str = ""  # the replica that runs (or ran) it


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """An engineer's access request and its approvals."""

    id: str
    requester: str
    target: str
    scope: str
    reason: str
    ttl: float
    created_at: float
    state: str = "pending"  # pending | approved | denied | cancelled | expired
    approvals: tuple[dict[str, Any], ...] = ()
    decided_at: float | None = None
    decided_by: str | None = None
    comment: str | None = None
    grant_id: str | None = None
    expires_at: float | None = None
    workload: dict[str, Any] | None = None  # an exchange waiting for an approver: the pipeline run behind it


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An audit row as read back, hashes included."""

    seq: int
    ts: float
    type: str
    actor: str
    session: str
    grant: str
    target: str
    severity: str
    data: dict[str, Any]
    prev_hash: str
    hash: str
    node: str = ""  # the replica that wrote it

    def to_json(self) -> dict[str, Any]:
        """The event for export (SIEM), hashes included so a consumer can re-verify."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "type": self.type,
            "actor": self.actor,
            "session": self.session,
            "grant": self.grant,
            "target": self.target,
            "severity": self.severity,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "node": self.node,
        }


@dataclass(frozen=True, slots=True)
class WebSignIn:
    """A console sign-in as stored (by the SHA-256 of its cookie, never the cookie itself)."""

    user: str
    groups: tuple[str, ...]
    admin: bool
    via: str
    csrf: str
    expires_at: float

    def __repr__(self) -> str:
        return f"WebSignIn({self.user!r}, expires_at={self.expires_at})"
