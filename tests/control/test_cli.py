"""The CLI against a running gateway: login, request, requests, approve, token get, revoke; and the local commands."""

from __future__ import annotations

import asyncio
import os
import stat
import tomllib
from pathlib import Path

import pytest

from gateway.api.auth import hash_api_key
from gateway.cli import main
from gateway.tokens import verify_token
from tests.control.conftest import Running
from tests.held import ended, hold


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config_path: Path) -> Path:
    """Credentials in a temp file; no server or key from the environment; the test config for local commands."""
    creds = tmp_path / "home" / "credentials"
    monkeypatch.setenv("GATEWAY_CREDENTIALS", str(creds))
    monkeypatch.delenv("GATEWAY_URL", raising=False)
    monkeypatch.delenv("GATEWAY_API_KEY", raising=False)
    monkeypatch.setenv("GATEWAY_CONFIG", str(config_path))
    return creds


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `gateway ARGV` in a thread (the CLI blocks; the gateway keeps serving on this loop)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_cli_flow(
    gw: Running, cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = await run(capsys, "login", "--server", gw.url, "--key", gw.keys["alice"])
    assert code == 0, err
    assert "as alice" in out
    assert stat.S_IMODE(cli_env.stat().st_mode) == 0o600
    assert gw.keys["alice"] not in out + err

    code, out, err = await run(
        capsys, "request", "orders-db", "--scope", "read", "--for", "15m", "--reason", "INC-1234: refund stuck"
    )
    assert code == 0, err
    rid = out.strip()
    assert rid.startswith("r_") and "gateway approve" in err

    code, out, err = await run(capsys, "approve", rid, "--comment", "ok")
    assert code == 1 and "own request" in err  # alice cannot approve her own

    monkeypatch.setenv("GATEWAY_API_KEY", gw.keys["bob"])
    code, out, _ = await run(capsys, "requests", "--pending")
    assert code == 0 and rid in out and "INC-1234" in out
    code, out, err = await run(capsys, "approve", rid, "--comment", "ok")
    assert code == 0, err
    assert "approved" in out
    monkeypatch.delenv("GATEWAY_API_KEY")

    code, out, err = await run(capsys, "token", "get", rid)
    assert code == 0, err
    cfg = gw.services.config
    claims = verify_token(out.strip(), gw.services.ring, issuer=cfg.issuer, audience=cfg.audience, leeway=0)
    assert claims.sub == "alice" and claims.approvers == ("bob",)

    code, out, _ = await run(capsys, "grants")
    assert code == 0 and claims.jti in out
    code, out, err = await run(capsys, "revoke", claims.jti, "--reason", "done")
    assert code == 0, err
    assert (await gw.services.store.get_grant(claims.jti)).state == "revoked"  # type: ignore[union-attr]
    code, _, err = await run(capsys, "revoke", claims.jti, "--reason", "again")
    assert code == 1 and "already revoked" in err


async def test_local_revoke_and_kill_without_server(
    gw: Running, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, grant, token = await gw.approved_grant()
    s = await hold(gw.services.access, token=token, target="orders-db", protocol="postgres")
    code, _, err = await run(capsys, "kill", s.id, "--reason", "from the cli")
    assert code == 0, err
    await asyncio.wait_for(ended(s), 1.5)  # the gateway's watcher picked up the store's kill mark
    assert s.killed_by == "gateway" and s.end_reason == "from the cli"
    code, _out, err = await run(capsys, "revoke", grant, "--reason", "ops done")
    assert code == 0, err
    g = await gw.services.store.get_grant(grant)
    assert g is not None and g.state == "revoked" and g.revoked_by.startswith("cli:")  # type: ignore[union-attr]


async def test_no_server_configured(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await run(capsys, "requests")
    assert code == 2 and "gateway login" in err


async def test_credentials_readable_by_others_refused(
    gw: Running, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await run(capsys, "login", "--server", gw.url, "--key", gw.keys["alice"]))[0] == 0
    os.chmod(cli_env, 0o644)
    code, _, err = await run(capsys, "whoami")
    assert code == 2 and "chmod 600" in err


async def test_login_with_wrong_key_saves_nothing(
    gw: Running, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run(capsys, "login", "--server", gw.url, "--key", "gw_wrong")
    assert code == 1 and "unknown API key" in err and "gw_wrong" not in err
    assert not cli_env.exists()


async def test_users_add(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, "users", "add", "zed@corp", "--group", "dba", "--group", "admins")
    assert code == 0
    key, _, toml = out.partition("\n")
    doc = tomllib.loads(toml)
    assert doc["users"]["zed@corp"] == {"api_key_sha256": hash_api_key(key), "groups": ["admins", "dba"]}
    assert key not in err  # printed once, on stdout only


async def test_policy_check(cli_env: Path, config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, "policy", "check")
    assert code == 0, err
    assert "alice (engineers): orders-db/read, orders-db/stats, orders-db/write, web-1/shell" in out
    assert "mallory (contractors): orders-db/stats" in out
    assert "2 approval(s) from group dba" in out
    assert err == ""


async def test_policy_check_errors(cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "orders.yaml").write_text("target: orders-db\nscopes:\n  read:\n    max_tll: 1h\n")
    code, _, err = await run(capsys, "policy", "check", "--dir", str(bad))
    assert code == 2 and "orders.yaml" in err and "max_tll" in err and "unknown key" in err

    (bad / "orders.yaml").write_text("target: orders-db\nscopes:\n  delete:\n    max_ttl: 1h\n")
    code, _, err = await run(capsys, "policy", "check", "--dir", str(bad))
    assert code == 2 and "orders-db/delete: no login" in err

    (bad / "orders.yaml").write_text("target: orders-db\nscopes:\n  read:\n    approvals: {count: 3, groups: [dba]}\n")
    code, _, err = await run(capsys, "policy", "check", "--dir", str(bad))
    assert code == 0 and "needs 3 approval(s) but only 2 configured user(s)" in err

    code, _, err = await run(capsys, "policy", "check", "--dir", str(tmp_path / "missing"))
    assert code == 2 and "no such policy folder" in err


async def test_ssh_and_psql_keep_the_token_out_of_argv(
    gw: Running, cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.cli import connect

    _, _, pg_token = await gw.approved_grant("alice", "bob", "orders-db", "read")
    _, _, ssh_token = await gw.approved_grant("alice", "bob", "web-1", "shell")
    monkeypatch.setenv("GATEWAY_URL", gw.url)
    monkeypatch.setenv("GATEWAY_API_KEY", gw.keys["alice"])
    seen: list[tuple[list[str], dict[str, str], str]] = []

    def fake_run(argv: list[str], env: dict[str, str]) -> int:
        askpass = Path(env.get("SSH_ASKPASS", "/nonexistent"))
        script = askpass.read_text() if askpass.exists() else ""
        if script:
            import subprocess

            answered = subprocess.run([str(askpass), "Approval token:"], env=env, capture_output=True, text=True)
            script = answered.stdout
        seen.append((argv, env, script))
        return 0

    monkeypatch.setattr(connect, "_run", fake_run)
    assert (await run(capsys, "psql", "orders-db", "--", "-c", "select 1"))[0] == 0
    assert (await run(capsys, "ssh", "web-1", "--", "uptime"))[0] == 0
    (pg_argv, pg_env, _), (ssh_argv, ssh_env, answered) = seen
    port = gw.services.config.listen_postgres.port
    assert pg_argv == [
        "psql",
        f"host=127.0.0.1 port={port} user='alice' dbname='orders-db' sslmode=require",
        "-c",
        "select 1",
    ]
    assert pg_env["PGPASSWORD"] == pg_token
    assert ssh_argv[-3:] == ["web-1", "127.0.0.1", "uptime"] and "-l" in ssh_argv
    assert answered == ssh_token + "\n"  # the askpass helper answers the prompt from the environment
    assert ssh_env["SSH_ASKPASS_REQUIRE"] == "force"
    assert not any(pg_token in a or ssh_token in a for a in pg_argv + ssh_argv)
    assert "StrictHostKeyChecking=yes" in ssh_argv  # the gateway's host key is pinned from /v1/info


async def test_psql_without_a_grant(
    gw: Running, cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_URL", gw.url)
    monkeypatch.setenv("GATEWAY_API_KEY", gw.keys["alice"])
    code, _, err = await run(capsys, "psql", "orders-db")
    assert code == 1 and "no live grant on orders-db" in err
    code, _, err = await run(capsys, "ssh", "orders-db")
    assert code == 1 and "not a ssh target" in err
