"""Fixtures for the control plane: a config with users and policies, a running gateway (HTTP API), an API caller."""

from __future__ import annotations

import contextlib
import os
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.api.auth import hash_api_key, new_api_key
from gateway.app import App
from gateway.config import Config, load_config
from gateway.services import Services
from tests.rig.ports import free_ports

# name -> groups; every user gets a fresh API key per test
USERS: dict[str, list[str]] = {
    "alice": ["engineers"],
    "bob": ["engineers"],
    "carol": ["dba"],
    "dave": ["dba"],
    "erin": ["admins"],
    "mallory": ["contractors"],
}

ORDERS_POLICY = """\
target: orders-db
scopes:
  read:
    max_ttl: 1h
    requesters: {groups: [engineers, dba]}
    approvals: {count: 1}
    sql: {mode: read}
  write:
    max_ttl: 30m
    requesters: {groups: [engineers, dba]}
    approvals: {count: 2, groups: [dba]}
    sql: {mode: write}
  stats:
    max_ttl: 10m
    auto_approve: true
    sql: {mode: read}
"""

WEB_POLICY = """\
target: web-1
scopes:
  shell:
    max_ttl: 1h
    requesters: {groups: [engineers]}
    approvals: {count: 1}
"""


def write_config(
    root: Path,
    keys: dict[str, str],
    *,
    extra: str = "",
    pg: dict[str, Any] | None = None,
    ssh: dict[str, Any] | None = None,
) -> Path:
    """A gateway.toml in `root` with the users, two targets and the policies above; returns its path."""
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "orders-db.yaml").write_text(ORDERS_POLICY)
    (root / "policies" / "web-1.yaml").write_text(WEB_POLICY)
    pg = pg or {"address": "127.0.0.1:9", "database": "orders"}
    ssh = ssh or {"address": "127.0.0.1:9", "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPUTTHEKEYHERE"}
    users = "".join(
        f'[users.{name}]\napi_key_sha256 = "{hash_api_key(keys[name])}"\ngroups = {groups!r}\n'.replace("'", '"')
        for name, groups in USERS.items()
    )
    ssh_port, pg_port, http_port = free_ports(3)
    text = textwrap.dedent(f"""\
        [listen]
        ssh = "127.0.0.1:{ssh_port}"
        postgres = "127.0.0.1:{pg_port}"
        http = "127.0.0.1:{http_port}"

        [store]
        url = "sqlite:///var/gateway.db"

        [postgres]
        require_tls = {str(pg.get("require_tls", True)).lower()}

        [alerts]
        file = "var/alerts.jsonl"
        """)
    text += extra + "\n" + users
    text += textwrap.dedent(f"""\
        [targets.orders-db]
        kind = "postgres"
        address = "{pg["address"]}"
        database = "{pg["database"]}"
        [targets.orders-db.logins]
        read = {{ user = "{pg.get("ro_user", "app_ro")}", password_env = "GW_TEST_RO_PASSWORD" }}
        write = {{ user = "{pg.get("rw_user", "app_rw")}", password_env = "GW_TEST_RW_PASSWORD" }}
        stats = {{ user = "{pg.get("ro_user", "app_ro")}", password_env = "GW_TEST_RO_PASSWORD" }}

        [targets.web-1]
        kind = "ssh"
        address = "{ssh["address"]}"
        host_key = "{ssh["host_key"]}"
        [targets.web-1.logins]
        shell = {{ user = "{ssh.get("user", "ops")}", key_file = "{ssh.get("key_file", "keys/ops")}" }}
        """)
    path = root / "gateway.toml"
    path.write_text(text)
    return path


def write_rig_config(root: Path, keys: dict[str, str], pg: Any, sshd: Any) -> Path:
    """write_config with the rig's PostgreSQL and sshd as targets (the caller sets GW_TEST_*_PASSWORD)."""
    return write_config(
        root,
        keys,
        pg={"address": f"127.0.0.1:{pg.port}", "database": "orders"},
        ssh={
            "address": f"127.0.0.1:{sshd.port}",
            "host_key": sshd.host_key_line,
            "user": sshd.user,
            "key_file": str(sshd.client_key_path),
        },
    )


@pytest.fixture
def api_keys() -> dict[str, str]:
    """A fresh API key per configured user."""
    return {name: new_api_key() for name in USERS}


@pytest.fixture
def config_path(tmp_path: Path, api_keys: dict[str, str]) -> Path:
    """The test gateway.toml."""
    return write_config(tmp_path, api_keys)


@pytest.fixture
def config(config_path: Path) -> Config:
    """The loaded test config (secrets are not needed by the control plane)."""
    return load_config(config_path, need_secrets=False)


@dataclass
class Running:
    """A gateway serving the API, and a way to call it as any configured user."""

    services: Services
    port: int
    keys: dict[str, str]
    session: aiohttp.ClientSession
    stop: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return f"http://127.0.0.1:{self.port}"

    async def call(
        self,
        user: str | None,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: Any = None,
    ) -> tuple[int, Any]:
        """One API call as `user` (None: no credentials); (status, decoded JSON or text)."""
        h = dict(headers or {})
        if user is not None:
            h["Authorization"] = f"Bearer {self.keys[user]}"
        kwargs: dict[str, Any] = {"headers": h, "params": params}
        if raw is not None:
            kwargs["data"] = raw
            h.setdefault("Content-Type", "application/json")
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def ok(self, user: str | None, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """A call that must succeed (2xx)."""
        status, out = await self.call(user, method, path, body, **kw)
        assert 200 <= status < 300, (status, out)
        return out

    async def approved_grant(
        self, requester: str = "alice", approver: str = "bob", target: str = "orders-db", scope: str = "read"
    ) -> tuple[str, str, str]:
        """Request, approve, fetch the token: (request id, grant id, token)."""
        req = await self.ok(
            requester,
            "POST",
            "/v1/requests",
            {"target": target, "scope": scope, "ttl": "15m", "reason": "INC-1234: refund stuck"},
        )
        await self.ok(approver, "POST", f"/v1/requests/{req['id']}/approve", {"comment": "ok"})
        tok = await self.ok(requester, "GET", f"/v1/requests/{req['id']}/token")
        return req["id"], tok["grant"], tok["token"]


async def start_gateway(config: Config, enable: tuple[str, ...] = ("http",)) -> tuple[Services, int, Any]:
    """Start `App(config, enable=...)`: (services, API port, async stop)."""
    app = App(config, enable=enable)
    svc = await app.start()
    return svc, app.listeners["http"].port, app.stop


@pytest.fixture
async def gw(config: Config, api_keys: dict[str, str]) -> AsyncIterator[Running]:
    """A running gateway (HTTP API only) with an HTTP client."""
    svc, port, stop = await start_gateway(config)
    async with aiohttp.ClientSession() as session:
        yield Running(svc, port, api_keys, session, stop)
    await stop()


def rig_passwords(monkeypatch: pytest.MonkeyPatch, pg: Any) -> None:
    """The upstream logins' passwords, where write_rig_config's config reads them."""
    monkeypatch.setenv("GW_TEST_RO_PASSWORD", pg.passwords["app_ro"])
    monkeypatch.setenv("GW_TEST_RW_PASSWORD", pg.passwords["app_rw"])


@contextlib.asynccontextmanager
async def rig_gateway(path: Path, keys: dict[str, str], pg: Any, sshd: Any) -> AsyncIterator[Running]:
    """Every listener of the config at `path` (from write_rig_config), its targets the rig's PostgreSQL and sshd."""
    svc, port, stop = await start_gateway(load_config(path, need_secrets=True), enable=("postgres", "ssh", "http"))
    try:
        async with aiohttp.ClientSession() as session:
            yield Running(svc, port, keys, session, stop, {"pg": pg, "sshd": sshd})
    finally:
        await stop()


def cli_env(gw: Running, user: str) -> dict[str, str]:
    """The environment of a `gateway` CLI run as `user` against `gw`, the rig's psql on PATH."""
    pg = gw.extra["pg"]
    return {
        **os.environ,
        "GATEWAY_URL": gw.url,
        "GATEWAY_API_KEY": gw.keys[user],
        "GATEWAY_CREDENTIALS": "/nonexistent/credentials",
        "PATH": f"{pg.bin_dir}:{os.environ.get('PATH', '')}",
        "PGCONNECT_TIMEOUT": "10",
    }
