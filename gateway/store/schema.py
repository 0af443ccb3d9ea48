"""The SQLite schema (versioned migrations) and the mapping from rows (of either backend) to records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.store.base import NodeRecord
from gateway.store.chain import Checkpoint
from gateway.store.records import AuditEvent, GrantRecord, RequestRecord, SessionRecord, WebSignIn

# Each entry upgrades the schema by one version (PRAGMA user_version); never edit a shipped entry.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE grants (
        id TEXT PRIMARY KEY, user TEXT NOT NULL, target TEXT NOT NULL, scope TEXT NOT NULL,
        reason TEXT NOT NULL, approvers TEXT NOT NULL, issued_at REAL NOT NULL, not_before REAL NOT NULL,
        expires_at REAL NOT NULL, state TEXT NOT NULL, break_glass INTEGER NOT NULL, request_id TEXT,
        max_sessions INTEGER, revoked_at REAL, revoked_by TEXT, revoke_reason TEXT,
        changed_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX grants_state ON grants(state, expires_at);
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY, grant_id TEXT NOT NULL, user TEXT NOT NULL, target TEXT NOT NULL,
        scope TEXT NOT NULL, protocol TEXT NOT NULL, client_addr TEXT NOT NULL, started_at REAL NOT NULL,
        ended_at REAL, end_reason TEXT, recording_path TEXT, recording_sha256 TEXT, stats TEXT NOT NULL,
        kill_requested TEXT
    );
    CREATE INDEX sessions_grant ON sessions(grant_id);
    CREATE INDEX sessions_started ON sessions(started_at);
    CREATE TABLE requests (
        id TEXT PRIMARY KEY, requester TEXT NOT NULL, target TEXT NOT NULL, scope TEXT NOT NULL,
        reason TEXT NOT NULL, ttl REAL NOT NULL, created_at REAL NOT NULL, state TEXT NOT NULL,
        approvals TEXT NOT NULL, decided_at REAL, decided_by TEXT, comment TEXT, grant_id TEXT, expires_at REAL
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY, ts REAL NOT NULL, type TEXT NOT NULL, actor TEXT NOT NULL,
        session TEXT NOT NULL, grant_id TEXT NOT NULL, target TEXT NOT NULL, severity TEXT NOT NULL,
        data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
    );
    CREATE INDEX audit_ts ON audit(ts);
    CREATE INDEX audit_session ON audit(session);
    -- Append-only: the database itself refuses to change history (a determined attacker with the file
    -- can drop these triggers, which is what the hash chain and signed checkpoints are for).
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
    CREATE TABLE checkpoints (
        seq INTEGER PRIMARY KEY, head TEXT NOT NULL, kid TEXT NOT NULL, signature TEXT NOT NULL, ts REAL NOT NULL
    );
    CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
        BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
    CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
        BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
    """,
    # Workload identities: the pipeline run on its grant and request; each workload token used once.
    """
    ALTER TABLE grants ADD COLUMN workload TEXT;
    ALTER TABLE requests ADD COLUMN workload TEXT;
    CREATE TABLE workload_tokens (
        key TEXT PRIMARY KEY, expires_at REAL NOT NULL, used_at REAL NOT NULL, used_for TEXT NOT NULL
    );
    CREATE INDEX workload_tokens_expiry ON workload_tokens(expires_at);
    """,
    # 3: replicas. Which replica wrote an event and runs a session; the replicas' heartbeats.
    """
    ALTER TABLE audit ADD COLUMN node TEXT NOT NULL DEFAULT '';
    ALTER TABLE sessions ADD COLUMN node TEXT NOT NULL DEFAULT '';
    CREATE INDEX sessions_live_node ON sessions(node) WHERE ended_at IS NULL;
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY, version TEXT NOT NULL, started_at REAL NOT NULL, heartbeat_at REAL NOT NULL,
        live_sessions INTEGER NOT NULL, state TEXT NOT NULL
    );
    """,
    # 4: detection baselines: what each user was first seen doing on each target ('' target: targets used).
    """
    CREATE TABLE baseline_seen (
        user TEXT NOT NULL, target TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL, first_at REAL NOT NULL,
        PRIMARY KEY (user, target, kind, value)
    );
    """,
    # 5: console sign-ins, shared by replicas behind a load balancer (the key is the cookie's SHA-256).
    """
    CREATE TABLE web_sessions (
        key TEXT PRIMARY KEY, user TEXT NOT NULL, groups TEXT NOT NULL, admin INTEGER NOT NULL, via TEXT NOT NULL,
        csrf TEXT NOT NULL, expires_at REAL NOT NULL
    );
    CREATE INDEX web_sessions_expiry ON web_sessions(expires_at);
    """,
)


def split_script(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies (which contain ';') whole."""
    out, buf = [], []
    for line in script.strip().splitlines():
        if line.strip().startswith("--") or not line.strip():
            continue
        buf.append(line)
        joined = "\n".join(buf).strip()
        if joined.endswith(";") and ("BEGIN" not in joined.upper().split() or joined.upper().endswith("END;")):
            out.append(joined)
            buf = []
    if buf:
        out.append("\n".join(buf))
    return out


def read_checkpoint_file(path: Path) -> list[Checkpoint]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
            out.append(Checkpoint(int(d["seq"]), str(d["head"]), str(d["kid"]), str(d["signature"]), float(d["ts"])))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line after a crash; the DB copy still counts
    return out


def event_row(r: Any) -> AuditEvent:
    return AuditEvent(
        int(r["seq"]),
        float(r["ts"]),
        r["type"],
        r["actor"],
        r["session"],
        r["grant_id"],
        r["target"],
        r["severity"],
        json.loads(r["data"]),
        r["prev_hash"],
        r["hash"],
        r["node"],
    )


def grant_row(r: Any) -> GrantRecord:
    return GrantRecord(
        r["id"],
        r["user"],
        r["target"],
        r["scope"],
        r["reason"],
        tuple(json.loads(r["approvers"])),
        r["issued_at"],
        r["not_before"],
        r["expires_at"],
        r["state"],
        bool(r["break_glass"]),
        r["request_id"],
        r["max_sessions"],
        r["revoked_at"],
        r["revoked_by"],
        r["revoke_reason"],
        _json_or_none(r["workload"]),
    )


def session_row(r: Any) -> SessionRecord:
    return SessionRecord(
        r["id"],
        r["grant_id"],
        r["user"],
        r["target"],
        r["scope"],
        r["protocol"],
        r["client_addr"],
        r["started_at"],
        r["ended_at"],
        r["end_reason"],
        r["recording_path"],
        r["recording_sha256"],
        json.loads(r["stats"]),
        r["kill_requested"],
        r["node"],
    )


def node_row(r: Any) -> NodeRecord:
    return NodeRecord(
        r["id"], r["version"], float(r["started_at"]), float(r["heartbeat_at"]), int(r["live_sessions"]), r["state"]
    )


def request_row(r: Any) -> RequestRecord:
    return RequestRecord(
        r["id"],
        r["requester"],
        r["target"],
        r["scope"],
        r["reason"],
        r["ttl"],
        r["created_at"],
        r["state"],
        tuple(json.loads(r["approvals"])),
        r["decided_at"],
        r["decided_by"],
        r["comment"],
        r["grant_id"],
        r["expires_at"],
        _json_or_none(r["workload"]),
    )


def _json_or_none(value: Any) -> Any:
    return None if value is None else json.loads(value)


def web_signin_row(r: Any) -> WebSignIn:
    """A web_sessions row (either backend)."""
    groups = tuple(str(g) for g in json.loads(r["groups"]))
    return WebSignIn(str(r["user"]), groups, bool(r["admin"]), str(r["via"]), str(r["csrf"]), float(r["expires_at"]))
