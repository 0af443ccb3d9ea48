"""The one door (`Access.open_session`) on a real SQLite store: every refusal has its code, is audited as
`token.rejected`, and never stores the token."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.access import Access, AccessDenied
from gateway.config import Config, load_config
from gateway.grants import issue_grant
from gateway.policy import Policies
from gateway.sessions import LiveSession, SessionRegistry
from gateway.store import GrantRecord, SessionRecord, SqliteStore
from gateway.tokens import Claims, KeyRing
from tests.held import hold, release

T0 = 1_700_000_000.0

CONFIG = """
[store]
url = "sqlite:///var/gateway.db"

[targets.orders-db]
kind = "postgres"
address = "127.0.0.1:5432"
database = "orders"
[targets.orders-db.logins]
read = { user = "app_ro", password_env = "X_RO" }
write = { user = "app_rw", password_env = "X_RW" }
admin = { user = "app_admin", password_env = "X_ADMIN" }

[targets.other-db]
kind = "postgres"
address = "127.0.0.1:5433"
database = "other"
sensitive = true
[targets.other-db.logins]
read = { user = "other_ro", password_env = "X_OTHER" }

[targets.web-1]
kind = "ssh"
address = "127.0.0.1:22"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq"
[targets.web-1.logins]
shell = { user = "ops", key_file = "keys/ops" }
"""

# orders-db: `admin` has a login but no policy (unknown-scope); `audit` has a policy but no login (no-login)
POLICY = """
target: orders-db
scopes:
  read: {max_ttl: 1h}
  write: {max_ttl: 30m}
  audit: {max_ttl: 30m}
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Door:
    config: Config
    ring: KeyRing
    store: SqliteStore
    policies: Policies
    registry: SessionRegistry
    access: Access
    clock: Clock

    async def issue(
        self,
        target: str = "orders-db",
        scope: str = "read",
        ttl: float = 600,
        user: str = "alice",
        max_sessions: int | None = None,
    ) -> tuple[str, GrantRecord]:
        issued = await issue_grant(
            self.config,
            self.ring,
            self.store,
            self.policies,
            user=user,
            target=target,
            scope=scope,
            ttl=ttl,
            reason="INC-42",
            approvers=("bob",),
            now=self.clock(),
            max_sessions=max_sessions,
        )
        return issued.token, issued.grant

    async def mint(self, *, store_grant: bool = True, **over: Any) -> str:
        """Sign a token directly with the ring (bypassing policy checks), optionally storing its grant."""
        now = int(self.clock())
        fields: dict[str, Any] = dict(
            sub="alice",
            jti="g_minted",
            target="orders-db",
            scope="read",
            iat=now,
            nbf=now,
            exp=now + 600,
            reason="INC-42",
            approvers=("bob",),
            iss="gateway",
            aud="gateway",
        )
        fields.update(over)
        c = Claims(**fields)
        if store_grant:
            await self.store.add_grant(
                GrantRecord(
                    c.jti,
                    c.sub,
                    c.target,
                    c.scope,
                    c.reason,
                    c.approvers,
                    c.iat,
                    c.nbf,
                    c.exp,
                    max_sessions=c.max_sessions,
                )
            )
        return self.ring.issue(c)

    async def open(self, token: str, target: str = "orders-db", protocol: str = "postgres", **kw: Any) -> LiveSession:
        return await hold(self.access, token=token, target=target, protocol=protocol, client_addr="203.0.113.7:50000",
                          user=kw.get("user"), login=kw.get("login"))  # fmt: skip

    def signing_key(self) -> Ed25519PrivateKey:
        assert self.ring.folder is not None
        pem = (self.ring.folder / "signing" / f"{self.ring.active_kid}.pem").read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return key


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[Door]:
    (tmp_path / "gateway.toml").write_text(CONFIG)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "orders-db.yaml").write_text(POLICY)
    config = load_config(tmp_path / "gateway.toml", need_secrets=False)
    ring = KeyRing.load_or_create(config.keys_dir)
    store = await SqliteStore(config.store_path, ring).open()
    policies = Policies.load(config.policies_dir, {n: (t.kind, list(t.logins)) for n, t in config.targets.items()})
    clock = Clock(T0)
    registry = SessionRegistry(store, clock=clock)
    d = Door(config, ring, store, policies, registry, Access(config, ring, store, policies, registry, clock), clock)
    yield d
    await registry.close_all("test over")
    await store.close()


# --- admitted ------------------------------------------------------------------------------------------


async def test_valid_token_opens_a_session(door: Door) -> None:
    token, grant = await door.issue()
    s = await door.open(token, user="alice")
    assert (s.user, s.scope, s.target.name, s.login.user, s.protocol) == (
        "alice",
        "read",
        "orders-db",
        "app_ro",
        "postgres",
    )
    assert s.deadline == grant.expires_at and s.started_at == T0
    assert s.policy.sql is not None and s.policy.sql.mode == "read"
    assert s.recording_path.parent == door.config.recordings_dir / "2023" / "11" / "14"
    assert s.recording_path.name == f"{s.id}.sql.jsonl"
    assert door.registry.get(s.id) is s
    row = await door.store.get_session(s.id)
    assert row is not None and (row.grant_id, row.user, row.client_addr, row.ended_at) == (
        grant.id,
        "alice",
        "203.0.113.7:50000",
        None,
    )
    [start] = await door.store.events(types=["session.start"])
    assert (start.actor, start.session, start.grant, start.target) == ("alice", s.id, grant.id, "orders-db")
    assert start.data["login"] == "app_ro" and start.data["deadline"] == grant.expires_at
    assert await door.store.events(types=["token.rejected"]) == []


async def test_ssh_login_checked_when_given(door: Door) -> None:
    token, _ = await door.issue("web-1", "shell")
    s = await door.open(token, "web-1", "ssh", login="ops")
    assert s.login.user == "ops" and s.recording_path.suffix == ".cast"
    s2 = await door.open(token, "web-1", "ssh")  # no explicit login: the scope's login
    assert s2.login.user == "ops"


async def test_token_within_leeway_of_expiry_still_needs_a_live_grant(door: Door) -> None:
    token, _ = await door.issue(ttl=60)
    door.clock.now = T0 + 59
    assert (await door.open(token)).user == "alice"


# --- refused -------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(door: Door, **over: Any) -> dict[str, Any]:
    now = int(door.clock())
    p = {
        "iss": "gateway",
        "aud": "gateway",
        "sub": "alice",
        "jti": "g_x",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "target": "orders-db",
        "scope": "read",
        "reason": "r",
        "approvers": [],
    }
    p.update(over)
    return p


def _craft(
    header: dict[str, Any],
    payload: dict[str, Any],
    key: Ed25519PrivateKey | None = None,
    mac_secret: bytes | None = None,
) -> str:
    si = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    sig = b""
    if key is not None:
        sig = key.sign(si.encode())
    if mac_secret is not None:
        sig = hmac.new(mac_secret, si.encode(), hashlib.sha256).digest()
    return f"{si}.{_b64(sig)}"


Case = Callable[[Door], Awaitable[tuple[str, dict[str, Any]]]]


async def _empty(d: Door) -> tuple[str, dict[str, Any]]:
    return "", {}


async def _garbage(d: Door) -> tuple[str, dict[str, Any]]:
    return "hunter2-not-a-token", {}


async def _undecodable(d: Door) -> tuple[str, dict[str, Any]]:
    return b"\xff\xfe\x80token".decode("utf-8", "surrogateescape"), {}


async def _too_long(d: Door) -> tuple[str, dict[str, Any]]:
    return await d.mint(store_grant=False, reason="x" * 9000), {}


async def _alg_none(d: Door) -> tuple[str, dict[str, Any]]:
    return _craft({"alg": "none", "kid": d.ring.active_kid}, _payload(d)), {}


async def _hs256_public_key(d: Door) -> tuple[str, dict[str, Any]]:
    pub = (
        d.signing_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return _craft({"alg": "HS256", "kid": d.ring.active_kid}, _payload(d), mac_secret=pub), {}


async def _unknown_kid(d: Door) -> tuple[str, dict[str, Any]]:
    return _craft({"alg": "EdDSA", "kid": "0123456789abcdef"}, _payload(d), Ed25519PrivateKey.generate()), {}


async def _missing_kid(d: Door) -> tuple[str, dict[str, Any]]:
    return _craft({"alg": "EdDSA"}, _payload(d), d.signing_key()), {}


async def _foreign_signature(d: Door) -> tuple[str, dict[str, Any]]:
    return _craft({"alg": "EdDSA", "kid": d.ring.active_kid}, _payload(d), Ed25519PrivateKey.generate()), {}


async def _wrong_aud(d: Door) -> tuple[str, dict[str, Any]]:
    return await d.mint(aud="another-gateway"), {}


async def _wrong_iss(d: Door) -> tuple[str, dict[str, Any]]:
    return await d.mint(iss="evil"), {}


async def _missing_claim(d: Door) -> tuple[str, dict[str, Any]]:
    p = _payload(d)
    del p["target"]
    return _craft({"alg": "EdDSA", "kid": d.ring.active_kid}, p, d.signing_key()), {}


async def _wrong_type(d: Door) -> tuple[str, dict[str, Any]]:
    return _craft({"alg": "EdDSA", "kid": d.ring.active_kid}, _payload(d, approvers="bob"), d.signing_key()), {}


async def _not_yet_valid(d: Door) -> tuple[str, dict[str, Any]]:
    now = int(d.clock())
    return await d.mint(nbf=now + 31, iat=now + 31, exp=now + 600), {}


async def _token_expired(d: Door) -> tuple[str, dict[str, Any]]:
    token, _ = await d.issue(ttl=60)
    d.clock.now += 60 + 30
    return token, {}


async def _revoked(d: Door) -> tuple[str, dict[str, Any]]:
    token, grant = await d.issue()
    await d.store.revoke_grant(grant.id, by="carol", reason="incident closed", now=d.clock())
    return token, {}


async def _unknown_grant(d: Door) -> tuple[str, dict[str, Any]]:
    return await d.mint(store_grant=False, jti="g_never_issued"), {}


async def _grant_expired_state(d: Door) -> tuple[str, dict[str, Any]]:
    # the token is still inside its 30 s leeway, but the sweeper has marked the grant expired
    token, _ = await d.issue(ttl=60)
    d.clock.now += 70
    assert await d.store.expire_grants(d.clock()) != []
    return token, {}


async def _grant_past_expiry(d: Door) -> tuple[str, dict[str, Any]]:
    # the same, before any sweep: the grant row is still 'active' but its time is up; leeway must not extend it
    token, _ = await d.issue(ttl=60)
    d.clock.now += 61
    return token, {}


async def _grant_mismatch(d: Door) -> tuple[str, dict[str, Any]]:
    _, grant = await d.issue(scope="read")
    return await d.mint(store_grant=False, jti=grant.id, scope="write"), {}


async def _grant_of_someone_else(d: Door) -> tuple[str, dict[str, Any]]:
    _, grant = await d.issue(user="bob")
    return await d.mint(store_grant=False, jti=grant.id, sub="mallory"), {"user": "mallory"}


async def _wrong_target(d: Door) -> tuple[str, dict[str, Any]]:
    token, _ = await d.issue("orders-db")
    return token, {"target": "other-db"}


async def _unknown_target(d: Door) -> tuple[str, dict[str, Any]]:
    token, _ = await d.issue("orders-db")
    return token, {"target": "billing-db"}


async def _wrong_protocol(d: Door) -> tuple[str, dict[str, Any]]:
    token, _ = await d.issue("orders-db")
    return token, {"protocol": "ssh"}


async def _wrong_user(d: Door) -> tuple[str, dict[str, Any]]:
    token, _ = await d.issue(user="alice")
    return token, {"user": "mallory"}


async def _wrong_login(d: Door) -> tuple[str, dict[str, Any]]:
    token, _ = await d.issue("web-1", "shell")
    return token, {"target": "web-1", "protocol": "ssh", "login": "root"}


async def _unknown_scope(d: Door) -> tuple[str, dict[str, Any]]:
    # `admin` has a login but no policy (say, removed by a reload after the grant was issued)
    return await d.mint(jti="g_admin", scope="admin"), {}


async def _no_login(d: Door) -> tuple[str, dict[str, Any]]:
    return await d.mint(jti="g_audit", scope="audit"), {}


async def _max_sessions(d: Door) -> tuple[str, dict[str, Any]]:
    token, _ = await d.issue(max_sessions=1)
    await d.open(token)
    return token, {}


CASES: list[tuple[Case, str]] = [
    (_empty, "empty"),
    (_garbage, "malformed"),
    (_undecodable, "malformed"),
    (_too_long, "malformed"),
    (_alg_none, "algorithm"),
    (_hs256_public_key, "algorithm"),
    (_unknown_kid, "unknown-key"),
    (_missing_kid, "unknown-key"),
    (_foreign_signature, "signature"),
    (_wrong_aud, "audience"),
    (_wrong_iss, "issuer"),
    (_missing_claim, "missing-claim"),
    (_wrong_type, "malformed"),
    (_not_yet_valid, "not-yet-valid"),
    (_token_expired, "expired"),
    (_revoked, "revoked"),
    (_unknown_grant, "unknown-grant"),
    (_grant_expired_state, "expired"),
    (_grant_past_expiry, "expired"),
    (_grant_mismatch, "grant-mismatch"),
    (_grant_of_someone_else, "grant-mismatch"),
    (_wrong_target, "wrong-target"),
    (_unknown_target, "unknown-target"),
    (_wrong_protocol, "unknown-target"),
    (_wrong_user, "wrong-user"),
    (_wrong_login, "wrong-login"),
    (_unknown_scope, "unknown-scope"),
    (_no_login, "no-login"),
    (_max_sessions, "max-sessions"),
]


def _db_bytes(store: SqliteStore) -> bytes:
    out = b""
    for suffix in ("", "-wal", "-shm", ".checkpoints"):
        p = store.path.with_name(store.path.name + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


@pytest.mark.parametrize(("case", "code"), CASES, ids=[c[0].__name__.strip("_") for c in CASES])
async def test_refusal_is_coded_audited_and_never_stores_the_token(door: Door, case: Case, code: str) -> None:
    token, kw = await case(door)
    target = kw.pop("target", "orders-db")
    protocol = kw.pop("protocol", "ssh" if target == "web-1" else "postgres")
    live_before = len(door.registry)
    sessions_before = len(await door.store.list_sessions())
    with pytest.raises(AccessDenied) as info:
        await door.open(token, target, protocol, **kw)
    denied = info.value
    assert denied.code == code, f"{denied.code}: {denied.reason}"
    if token.strip():
        assert token.strip() not in str(denied)
    # audited: exactly one token.rejected, the last event, carrying the code but not the token
    events = await door.store.events()
    rejected = [e for e in events if e.type == "token.rejected"]
    assert len(rejected) == 1
    ev = rejected[0]
    assert ev == events[-1]
    assert ev.data["code"] == code and ev.data["reason"] == denied.reason
    assert (ev.severity, ev.target, ev.data["protocol"], ev.data["client"]) == (
        "warning",
        target,
        protocol,
        "203.0.113.7:50000",
    )
    # nothing was opened
    assert len(door.registry) == live_before
    assert len(await door.store.list_sessions()) == sessions_before
    # the token text is nowhere: not in the rows, not in the database file or its WAL
    if token.strip():
        dumped = json.dumps([e.to_json() for e in events])
        raw = _db_bytes(door.store)
        pieces = [token.strip(), *[p for p in token.strip().split(".") if len(p) >= 16]]
        for piece in pieces:
            assert piece not in dumped
            assert piece.encode("utf-8", "surrogateescape") not in raw


async def test_rejection_names_who_it_claimed_to_be(door: Door) -> None:
    token, grant = await door.issue(user="alice")
    await door.store.revoke_grant(grant.id, by="carol", reason="incident closed", now=T0)
    with pytest.raises(AccessDenied) as info:
        await door.open(token)
    assert "incident closed" in info.value.reason
    [ev] = await door.store.events(types=["token.rejected"])
    assert (ev.actor, ev.grant) == ("alice", grant.id)


async def test_garbage_is_audited_as_unknown(door: Door) -> None:
    with pytest.raises(AccessDenied):
        await door.open("garbage")
    [ev] = await door.store.events(types=["token.rejected"])
    assert (ev.actor, ev.grant) == ("unknown", "")


async def test_max_sessions_frees_up_when_a_session_ends(door: Door) -> None:
    token, _ = await door.issue(max_sessions=2)
    a = await door.open(token)
    await door.open(token)
    with pytest.raises(AccessDenied) as info:
        await door.open(token)
    assert info.value.code == "max-sessions" and "2 concurrent" in info.value.reason
    await release(a, "client closed")
    assert (await door.open(token)).user == "alice"


async def test_no_max_sessions_means_no_limit(door: Door) -> None:
    token, _ = await door.issue()
    for _ in range(5):
        await door.open(token)
    assert len(door.registry) == 5


async def test_revocation_applies_to_the_next_connection(door: Door) -> None:
    token, grant = await door.issue()
    await door.open(token)
    await door.store.revoke_grant(grant.id, by="carol", reason="done", now=T0 + 1)
    with pytest.raises(AccessDenied) as info:
        await door.open(token)
    assert info.value.code == "revoked"


async def test_sensitive_target_raises_an_alert(door: Door) -> None:
    alerts: list[tuple[str, str]] = []

    async def alert(s: LiveSession | None, type_: str, summary: str, severity: str, data: dict[str, Any]) -> None:
        alerts.append((type_, summary))

    registry = SessionRegistry(door.store, clock=door.clock, alert=alert)
    access = Access(door.config, door.ring, door.store, door.policies, registry, door.clock)
    token, _ = await door.issue("other-db")
    s = await hold(access, token=token, target="other-db", protocol="postgres", client_addr="x")
    await release(s, "done")  # waits for the alert task
    assert alerts == [("session.sensitive", "alice started a session on sensitive target other-db")]


@pytest.mark.parametrize("limit", [1, 4])
async def test_concurrent_admissions_never_exceed_max_sessions(door: Door, limit: int) -> None:
    """20 connections at once used to pass a limit of 1 together (check first, insert later)."""
    token, grant = await door.issue(max_sessions=limit)
    results = await asyncio.gather(*(door.open(token) for _ in range(20)), return_exceptions=True)
    admitted = [r for r in results if isinstance(r, LiveSession)]
    refused = [r for r in results if not isinstance(r, LiveSession)]
    assert len(admitted) == limit
    assert all(isinstance(r, AccessDenied) and r.code == "max-sessions" for r in refused), refused
    assert len(await door.store.list_sessions(grant_id=grant.id, live=True)) == limit
    assert door.registry.live_count(grant.id) == limit
    rejected = await door.store.events(types=["token.rejected"])
    assert len(rejected) == 20 - limit


async def test_another_process_sessions_count_against_the_limit(door: Door, tmp_path: Path) -> None:
    """A second store on the same file (another replica) already holds the only session: refused here."""
    token, grant = await door.issue(max_sessions=1)
    other = await SqliteStore(door.store.path).open()
    try:
        rec = SessionRecord("s_replica", grant.id, "alice", "orders-db", "read", "postgres", "x", T0)
        assert await other.admit_session(rec, max_live=1)
        with pytest.raises(AccessDenied) as info:
            await door.open(token)
        assert info.value.code == "max-sessions"
    finally:
        await other.close(checkpoint=False)
