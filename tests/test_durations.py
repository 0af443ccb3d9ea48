"""Durations (`30s`, `1h30m`) and TTL caps: a grant never outlives its policy's max_ttl."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Config, load_config
from gateway.durations import format_duration, parse_duration
from gateway.grants import GrantRefused, Issued, issue_grant
from gateway.policy import Policies
from gateway.store import SqliteStore
from gateway.tokens import KeyRing, verify_token

NOW = 1_700_000_000.0

# --- parse_duration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("1s", 1),
        ("10m", 600),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1d2h3m4s", 86400 + 7200 + 180 + 4),
        ("90s", 90),
        ("90m", 5400),
        ("  15m ", 900),
        ("10M", 600),
        ("1H30M", 5400),
        ("007s", 7),
    ],
)
def test_parse_duration_accepts(text: str, seconds: int) -> None:
    value = parse_duration(text)
    assert value == seconds
    assert isinstance(value, float)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "10",
        "10x",
        "-5m",
        "+5m",
        "1.5h",
        "1,5h",
        "h",
        "m10",
        "10 m",
        "1h 30m",
        "1h-30m",
        "5mm",
        "1w",
        "1y",
        "1e3s",
        "inf",
        "nan",
        "10ms",
        "s10",
        "1h30",
        "0x10s",
        "½h",
    ],
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(text)
    assert "30s, 10m, 1h" in str(info.value)  # the message shows the accepted forms
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("text", ["0s", "0m", "0h0m", "0d", "00s"])
def test_parse_duration_refuses_zero(text: str) -> None:
    with pytest.raises(ValueError, match="more than zero"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (3600, "1h"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (86400, "1d"),
        (1, "1s"),
        (0, "0s"),
        (-5, "0s"),
        (90061, "1d1h1m1s"),
        (59.6, "1m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=1, max_value=10**8))
def test_format_then_parse_round_trips(n: int) -> None:
    assert parse_duration(format_duration(n)) == n


@given(st.lists(st.tuples(st.integers(0, 10**4), st.sampled_from("smhd")), min_size=1, max_size=5))
def test_parse_sums_its_parts(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{u}" for n, u in parts)
    total = sum(n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)
    if total == 0:
        with pytest.raises(ValueError):
            parse_duration(text)
    else:
        assert parse_duration(text) == total


@given(st.text(max_size=30))
def test_parse_duration_fuzz_returns_positive_or_value_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        assert "invalid duration" in str(exc)
    else:
        assert value > 0
        assert re.fullmatch(r"(\d+[smhd])+", text.strip().lower())


# --- TTL caps on grants ------------------------------------------------------------------------------

CONFIG = """
[store]
url = "sqlite:///var/gateway.db"

[targets.orders-db]
kind = "postgres"
address = "127.0.0.1:5432"
database = "orders"
[targets.orders-db.logins]
read = { user = "app_ro", password_env = "ORDERS_RO_PASSWORD" }
write = { user = "app_rw", password_env = "ORDERS_RW_PASSWORD" }

[targets.web-1]
kind = "ssh"
address = "127.0.0.1:22"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq"
[targets.web-1.logins]
shell = { user = "ops", key_file = "keys/ops" }
"""

ORDERS_POLICY = """
target: orders-db
scopes:
  read:
    max_ttl: 2h
  write:
    max_ttl: 15m
"""


class Env:
    def __init__(self, config: Config, ring: KeyRing, store: SqliteStore, policies: Policies) -> None:
        self.config, self.ring, self.store, self.policies = config, ring, store, policies

    async def grant(
        self, target: str, scope: str, ttl: float, *, user: str = "alice", reason: str = "INC-7", **kw: Any
    ) -> Issued:
        return await issue_grant(
            self.config,
            self.ring,
            self.store,
            self.policies,
            user=user,
            target=target,
            scope=scope,
            ttl=ttl,
            reason=reason,
            approvers=("bob",),
            now=NOW,
            **kw,
        )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    (tmp_path / "gateway.toml").write_text(CONFIG)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "orders-db.yaml").write_text(ORDERS_POLICY)
    config = load_config(tmp_path / "gateway.toml", need_secrets=False)
    ring = KeyRing.load_or_create(config.keys_dir)
    store = await SqliteStore(config.store_path, ring).open()
    policies = Policies.load(config.policies_dir, {n: (t.kind, list(t.logins)) for n, t in config.targets.items()})
    yield Env(config, ring, store, policies)
    await store.close()


async def test_default_policy_caps_at_one_hour(env: Env) -> None:
    # web-1 has no policy file: the built-in default allows 1 h
    ok = await env.grant("web-1", "shell", parse_duration("1h"))
    assert ok.grant.expires_at - ok.grant.issued_at == 3600
    with pytest.raises(GrantRefused) as info:
        await env.grant("web-1", "shell", parse_duration("1h1s"))
    msg = str(info.value)
    assert "max_ttl 1h" in msg and "web-1/shell" in msg and "1h or less" in msg


async def test_policy_file_max_ttl_is_the_cap(env: Env) -> None:
    ok = await env.grant("orders-db", "read", parse_duration("2h"))  # above the 1 h default: the file allows 2 h
    assert ok.grant.expires_at == NOW + 7200
    with pytest.raises(GrantRefused, match=r"max_ttl 2h for orders-db/read"):
        await env.grant("orders-db", "read", parse_duration("2h1m"))
    with pytest.raises(GrantRefused, match=r"ttl 16m exceeds the policy's max_ttl 15m for orders-db/write"):
        await env.grant("orders-db", "write", parse_duration("16m"))
    assert (await env.grant("orders-db", "write", parse_duration("15m"))).grant.expires_at == NOW + 900


async def test_refused_grants_leave_no_trace_but_issued_ones_are_stored_and_audited(env: Env) -> None:
    with pytest.raises(GrantRefused):
        await env.grant("orders-db", "write", 3600)
    assert await env.store.list_grants() == []
    assert await env.store.events() == []
    issued = await env.grant("orders-db", "write", 600)
    assert await env.store.get_grant(issued.grant.id) == issued.grant
    [ev] = await env.store.events()
    assert (ev.type, ev.grant, ev.target, ev.data["ttl"], ev.data["expires_at"]) == (
        "grant.issued",
        issued.grant.id,
        "orders-db",
        600,
        NOW + 600,
    )
    assert issued.token not in str(ev.to_json())


async def test_token_window_matches_the_ttl(env: Env) -> None:
    issued = await env.grant("orders-db", "read", 600, max_sessions=2)
    claims = verify_token(issued.token, env.ring, issuer="gateway", audience="gateway", leeway=0, now=NOW + 1)
    assert (claims.iat, claims.nbf, claims.exp) == (int(NOW), int(NOW), int(NOW) + 600)
    assert (claims.sub, claims.target, claims.scope, claims.jti, claims.max_sessions) == (
        "alice",
        "orders-db",
        "read",
        issued.grant.id,
        2,
    )
    assert jwt.get_unverified_header(issued.token)["kid"] == env.ring.active_kid


@pytest.mark.parametrize("ttl", [0, -1, -3600])
async def test_non_positive_ttl_refused(env: Env, ttl: float) -> None:
    with pytest.raises(GrantRefused, match="more than zero"):
        await env.grant("orders-db", "read", ttl)


async def test_unknown_target_refused(env: Env) -> None:
    with pytest.raises(GrantRefused) as info:
        await env.grant("billing-db", "read", 60)
    assert "unknown target 'billing-db'" in str(info.value)
    assert "orders-db" in str(info.value) and "web-1" in str(info.value)  # names what exists


@pytest.mark.parametrize(("target", "scope"), [("orders-db", "admin"), ("orders-db", "shell"), ("web-1", "read")])
async def test_unknown_scope_refused(env: Env, target: str, scope: str) -> None:
    with pytest.raises(GrantRefused) as info:
        await env.grant(target, scope, 60)
    assert f"has no scope {scope!r}" in str(info.value)


async def test_scope_with_login_but_missing_from_policy_file_is_refused(env: Env, tmp_path: Path) -> None:
    # orders-db's policy file lists read and write; a login for a scope the file leaves out cannot be granted
    text = (
        (tmp_path / "gateway.toml")
        .read_text()
        .replace(
            'write = { user = "app_rw", password_env = "ORDERS_RW_PASSWORD" }',
            'write = { user = "app_rw", password_env = "ORDERS_RW_PASSWORD" }\n'
            'admin = { user = "app_admin", password_env = "ORDERS_ADMIN_PASSWORD" }',
        )
    )
    (tmp_path / "gateway.toml").write_text(text)
    config = load_config(tmp_path / "gateway.toml", need_secrets=False)
    policies = Policies.load(config.policies_dir, {n: (t.kind, list(t.logins)) for n, t in config.targets.items()})
    with pytest.raises(GrantRefused, match="scopes: read, write"):
        await issue_grant(
            config,
            env.ring,
            env.store,
            policies,
            user="alice",
            target="orders-db",
            scope="admin",
            ttl=60,
            reason="x",
            approvers=(),
            now=NOW,
        )


@pytest.mark.parametrize(
    ("user", "reason", "match"), [("", "INC-1", "needs a user"), ("alice", "  ", "needs a reason")]
)
async def test_user_and_reason_required(env: Env, user: str, reason: str, match: str) -> None:
    with pytest.raises(GrantRefused, match=match):
        await env.grant("orders-db", "read", 60, user=user, reason=reason)


async def test_break_glass_grant_is_a_warning_event(env: Env) -> None:
    issued = await env.grant("orders-db", "read", 60, break_glass=True, actor="cli:root")
    assert issued.grant.break_glass
    [ev] = await env.store.events(types=["grant.issued"])
    assert (ev.severity, ev.actor, ev.data["break_glass"]) == ("warning", "cli:root", True)
