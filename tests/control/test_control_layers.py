"""The control actions have one home (gateway/control) and the layers point one way; one validation of
target, scope and TTL for requests and grants, with the same errors."""

from __future__ import annotations

import ast
import asyncio
import math
from pathlib import Path

import pytest

import gateway
from gateway.cli.review import _LiveWatch
from gateway.config import Config
from gateway.control.caller import Caller
from gateway.control.errors import GrantRefused, WorkflowError
from gateway.control.grants import issue_grant
from gateway.control.rules import check_access, check_create
from gateway.services import build_services, load_policies
from gateway.store import SessionRecord, SqliteStore

PKG = Path(gateway.__file__).parent
ALICE = Caller("alice", frozenset({"engineers"}))


def _imports(path: Path) -> set[str]:
    """Every gateway module a file imports, at any depth (function-level imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "gateway" or m.startswith("gateway.")}


def _package(name: str) -> list[Path]:
    return sorted((PKG / name).rglob("*.py"))


@pytest.mark.parametrize("path", _package("cli"), ids=lambda p: p.name)
def test_cli_does_not_import_the_http_package(path: Path) -> None:
    """cli -> control, never cli -> api: the CLI on the embedded store and the API share the actions below both."""
    assert not {m for m in _imports(path) if m == "gateway.api" or m.startswith("gateway.api.")}


@pytest.mark.parametrize("path", _package("control"), ids=lambda p: p.name)
def test_control_imports_neither_front(path: Path) -> None:
    """The control package sits below api/ and cli/ (and the front ends): it imports none of them."""
    above = ("gateway.api", "gateway.cli", "gateway.app", "gateway.pg", "gateway.ssh")
    assert not {m for m in _imports(path) if m.startswith(above)}


def test_old_homes_are_gone() -> None:
    """approvals.py's mix and api/actions.py are split into control/ (rules, errors, workflow, grants, actions)."""
    assert not (PKG / "approvals.py").exists()
    assert not (PKG / "api" / "actions.py").exists()


def test_cli_reads_the_store_only_through_the_store() -> None:
    """No CLI command opens the SQLite file itself (a PostgreSQL store must serve every command)."""
    for path in _package("cli"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "connect"]
        named = [n for n in calls if isinstance(n.value, ast.Name) and n.value.id in ("sqlite3", "aiosqlite")]
        assert not named, path


BAD = [
    ("nope", "read", 600.0),  # unknown target
    ("orders-db", "root", 600.0),  # no such scope
    ("web-1", "read", 600.0),  # a scope of another target
    ("orders-db", "read", 0.0),
    ("orders-db", "read", -5.0),
    ("orders-db", "read", math.nan),  # NaN compares false with everything: refused, not let through
    ("orders-db", "read", 7200.0),  # above the policy's max_ttl 1h
    ("orders-db", "read", math.inf),
]


@pytest.mark.parametrize(("target", "scope", "ttl"), BAD)
async def test_request_and_grant_refuse_with_the_same_error(
    config: Config, target: str, scope: str, ttl: float
) -> None:
    """A request (API/CLI `request`) and a grant (break-glass, or on approval) are refused with the same message."""
    policies = load_policies(config)
    with pytest.raises(WorkflowError) as asked:
        check_create(config, policies, ALICE, target, scope, ttl, "INC-1")
    svc = await build_services(config)
    try:
        with pytest.raises(GrantRefused) as granted:
            await issue_grant(
                config,
                svc.ring,
                svc.store,
                svc.policies,
                user="alice",
                target=target,
                scope=scope,
                ttl=ttl,
                reason="INC-1",
                approvers=(),
                now=1000.0,
            )
        assert await svc.store.list_grants() == []  # nothing was stored for a refused grant
    finally:
        await svc.store.close(checkpoint=False)
    assert (
        (asked.value.code, asked.value.message)
        == (granted.value.code, granted.value.message)
        == (
            "invalid",
            str(granted.value),
        )
    )
    with pytest.raises(GrantRefused) as direct:
        check_access(config, policies, target, scope, ttl)
    assert direct.value.message == granted.value.message


def test_grant_refused_is_still_a_value_error(config: Config) -> None:
    """Callers that caught the old ValueError-based GrantRefused still do."""
    with pytest.raises(ValueError, match="unknown target"):
        check_access(config, load_policies(config), "nope", "read", 60)


async def test_replay_follow_reads_liveness_through_the_store(tmp_path: Path) -> None:
    """`gateway replay` of a live session asks the Store whether it still runs, and sees it end."""
    store = await SqliteStore(tmp_path / "gw.db").open()
    try:
        s = SessionRecord("s_live01", "g_1", "alice", "web-1", "shell", "ssh", "127.0.0.1:1", 1000.0)
        await store.add_session(s)
        async with _LiveWatch(store, s.id, live=True, every=0.02) as watch:
            await asyncio.sleep(0.1)
            assert watch.is_live()
            await store.end_session(s.id, ended_at=1001.0, reason="client exit", recording_sha256=None, stats={})
            for _ in range(100):
                if not watch.is_live():
                    break
                await asyncio.sleep(0.02)
            assert not watch.is_live()
        async with _LiveWatch(store, "s_gone", live=True, every=0.02) as watch:
            for _ in range(100):
                if not watch.is_live():
                    break
                await asyncio.sleep(0.02)
            assert not watch.is_live()  # an unknown session is not live
    finally:
        await store.close(checkpoint=False)
