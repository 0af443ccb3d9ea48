"""The PostgreSQL schema as versioned migrations (table gateway_schema), the same tables as the SQLite one."""

from __future__ import annotations

# Each entry upgrades the schema by one version; never edit a shipped entry. Times are float8 (the same
# IEEE double SQLite's REAL is), JSON stays text: what is hashed is what is read back, on either store.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE grants (
        id text PRIMARY KEY, "user" text NOT NULL, target text NOT NULL, scope text NOT NULL,
        reason text NOT NULL, approvers text NOT NULL, issued_at float8 NOT NULL, not_before float8 NOT NULL,
        expires_at float8 NOT NULL, state text NOT NULL, break_glass boolean NOT NULL, request_id text,
        max_sessions integer, revoked_at float8, revoked_by text, revoke_reason text, workload text
    );
    CREATE INDEX grants_state ON grants(state, expires_at);
    CREATE TABLE sessions (
        id text PRIMARY KEY, grant_id text NOT NULL, "user" text NOT NULL, target text NOT NULL,
        scope text NOT NULL, protocol text NOT NULL, client_addr text NOT NULL, started_at float8 NOT NULL,
        ended_at float8, end_reason text, recording_path text, recording_sha256 text, stats text NOT NULL,
        kill_requested text, node text NOT NULL DEFAULT ''
    );
    CREATE INDEX sessions_grant ON sessions(grant_id);
    CREATE INDEX sessions_started ON sessions(started_at);
    CREATE INDEX sessions_live_node ON sessions(node) WHERE ended_at IS NULL;
    CREATE TABLE requests (
        id text PRIMARY KEY, requester text NOT NULL, target text NOT NULL, scope text NOT NULL,
        reason text NOT NULL, ttl float8 NOT NULL, created_at float8 NOT NULL, state text NOT NULL,
        approvals text NOT NULL, decided_at float8, decided_by text, comment text, grant_id text, expires_at float8,
        workload text
    );
    CREATE TABLE workload_tokens (
        key text PRIMARY KEY, expires_at float8 NOT NULL, used_at float8 NOT NULL, used_for text NOT NULL
    );
    CREATE INDEX workload_tokens_expiry ON workload_tokens(expires_at);
    CREATE TABLE audit (
        seq bigint PRIMARY KEY, ts float8 NOT NULL, type text NOT NULL, actor text NOT NULL,
        session text NOT NULL, grant_id text NOT NULL, target text NOT NULL, severity text NOT NULL,
        data text NOT NULL, prev_hash text NOT NULL, hash text NOT NULL, node text NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_ts ON audit(ts);
    CREATE INDEX audit_session ON audit(session);
    CREATE INDEX audit_type ON audit(type);
    CREATE TABLE checkpoints (
        seq bigint PRIMARY KEY, head text NOT NULL, kid text NOT NULL, signature text NOT NULL, ts float8 NOT NULL
    );
    CREATE TABLE nodes (
        id text PRIMARY KEY, version text NOT NULL, started_at float8 NOT NULL, heartbeat_at float8 NOT NULL,
        live_sessions integer NOT NULL, state text NOT NULL
    );
    -- Append-only: the database refuses to change history (an owner can drop these triggers, which is what
    -- the hash chain and the signed checkpoints are for).
    CREATE FUNCTION gateway_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '%', TG_ARGV[0];
    END
    $$;
    CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION gateway_append_only('audit log is append-only');
    CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
        FOR EACH STATEMENT EXECUTE FUNCTION gateway_append_only('audit log is append-only');
    CREATE TRIGGER checkpoints_no_change BEFORE UPDATE OR DELETE ON checkpoints
        FOR EACH ROW EXECUTE FUNCTION gateway_append_only('checkpoints are append-only');
    CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
        FOR EACH STATEMENT EXECUTE FUNCTION gateway_append_only('checkpoints are append-only');
    """,
    # 2: detection baselines: what each user was first seen doing on each target ('' target: targets used).
    """
    CREATE TABLE baseline_seen (
        "user" text NOT NULL, target text NOT NULL, kind text NOT NULL, value text NOT NULL,
        first_at double precision NOT NULL, PRIMARY KEY ("user", target, kind, value)
    );
    """,
    # 3: console sign-ins, shared by replicas behind a load balancer (the key is the cookie's SHA-256).
    """
    CREATE TABLE web_sessions (
        key text PRIMARY KEY, "user" text NOT NULL, groups text NOT NULL, admin boolean NOT NULL, via text NOT NULL,
        csrf text NOT NULL, expires_at double precision NOT NULL
    );
    CREATE INDEX web_sessions_expiry ON web_sessions(expires_at);
    """,
)

SCHEMA_LOCK = 0x67770001
"""Advisory lock key held while migrating: replicas starting together migrate one at a time."""

CHAIN_LOCK = 0x67770002
"""Advisory lock key serialising audit appends: one chain head, many writers."""

CHANNEL = "gateway_control"
"""LISTEN/NOTIFY channel carrying 'grant:<id>' and 'session:<id>' on revocation and kill."""
