"""Every CLI command that meets a configuration error prints one line and exits non-zero within 5 s.

Each case is a real `gateway` process on a folder `gateway init` wrote, then broken the way users break it:
the example SSH target removed from the config while its policy file stays (what init leaves behind), or a
store file that is not a database. A store connection left open keeps aiosqlite's thread (not a daemon)
alive, and the process then hangs after printing its error: the timeout catches that.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXIT_WITHIN = 5.0

# Every command that reads the config, the policies or the store (the ones that only call the API need a
# server and are covered by tests/control).
COMMANDS = [
    ["sessions"],
    ["show", "s_000000"],
    ["replay", "s_000000"],
    ["search", "x"],
    ["audit", "verify"],
    ["audit", "export"],
    ["grant", "--user", "alice", "--target", "orders-db", "--scope", "read", "--ttl", "5m", "--reason", "INC-1"],
    ["token", "verify", "not-a-token"],
    ["revoke", "g_000000", "--reason", "INC-1"],
    ["kill", "s_000000", "--reason", "INC-1"],
    ["policy", "check"],
    ["target", "check", "orders-db"],
    ["run"],
]
STORE_COMMANDS = [c for c in COMMANDS if c[0] not in ("policy", "target")]


def _gateway(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXIT_WITHIN,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The process environment: the example targets' secrets set, no server configured, home in a temp dir."""
    home = tmp_path_factory.mktemp("home")
    e = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    e.update(ORDERS_RO_PASSWORD="ro", ORDERS_RW_PASSWORD="rw", HOME=str(home), XDG_CONFIG_HOME=str(home))
    return e


def _init(home: Path, env: dict[str, str]) -> Path:
    home.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "init", "--dir", str(home)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "wrote" in done.stdout
    (home / "secrets").mkdir()
    (home / "secrets" / "orders_admin").write_text("admin\n")
    return home / "gateway.toml"


@pytest.fixture(scope="module")
def orphan_policy(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """init's folder with [targets.web-1] removed from the config; policies/web-1.yaml still names it."""
    cfg = _init(tmp_path_factory.mktemp("orphan") / "gw", env)
    text = cfg.read_text()
    cut = text.index("[targets.web-1]")  # the SSH example target is last in the file
    cfg.write_text(text[:cut])
    assert (cfg.parent / "policies" / "web-1.yaml").exists()
    return cfg


@pytest.fixture(scope="module")
def broken_store(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """init's folder, consistent (the SSH example target and its policy gone), but its store is not SQLite."""
    cfg = _init(tmp_path_factory.mktemp("store") / "gw", env)
    text = cfg.read_text()
    cfg.write_text(text[: text.index("[targets.web-1]")])
    (cfg.parent / "policies" / "web-1.yaml").unlink()
    (cfg.parent / "var").mkdir(exist_ok=True)
    (cfg.parent / "var" / "gateway.db").write_bytes(b"this is not a database\n" * 100)
    return cfg


def _assert_one_line_error(done: subprocess.CompletedProcess[str], *, mentions: str) -> None:
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gateway: "), lines
    assert mentions in lines[0], lines


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("where", ["before", "after"])
def test_policy_for_unconfigured_target(
    orphan_policy: Path, env: dict[str, str], command: list[str], where: str
) -> None:
    """The orphaned policy file is named, once, and the process is gone within 5 s (--config on either side)."""
    cfg = ["--config", str(orphan_policy)]
    args = [*cfg, *command] if where == "before" else [*command, *cfg]
    # Run from the folder above: no ./gateway.toml there, so the error proves --config was read.
    done = _gateway(orphan_policy.parent.parent, *args, env=env)
    _assert_one_line_error(done, mentions="web-1")


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=" ".join)
def test_store_that_is_not_a_database(broken_store: Path, env: dict[str, str], command: list[str]) -> None:
    """A store that fails to open is closed again: the error is printed and the process exits."""
    done = _gateway(broken_store.parent.parent, "--config", str(broken_store), *command, env=env)
    _assert_one_line_error(done, mentions="not a database")


def test_config_from_environment(orphan_policy: Path, env: dict[str, str]) -> None:
    """GATEWAY_CONFIG reaches the same error path."""
    done = _gateway(orphan_policy.parent.parent, "sessions", env={**env, "GATEWAY_CONFIG": str(orphan_policy)})
    _assert_one_line_error(done, mentions="web-1")


API_COMMANDS = [
    ["whoami"],
    ["request", "orders-db", "--scope", "read", "--for", "5m", "--reason", "INC-1"],
    ["requests", "--pending"],
    ["approve", "r_000000"],
    ["deny", "r_000000"],
    ["cancel", "r_000000"],
    ["token", "r_000000"],
    ["token", "get", "r_000000"],
    ["grants"],
    ["revoke", "g_000000", "--reason", "INC-1"],
    ["kill", "s_000000"],
    ["ssh", "web-1"],
    ["psql", "orders-db"],
]


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A port nothing listens on (bound, read back, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", API_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("where", ["before", "after"])
def test_api_commands_with_no_server(
    tmp_path: Path, env: dict[str, str], closed_port: int, command: list[str], where: str
) -> None:
    """Commands that call the API say the server cannot be reached, and exit (--server on either side)."""
    server = ["--server", f"http://127.0.0.1:{closed_port}"]
    args = [*server, *command] if where == "before" else [*command, *server]
    done = _gateway(tmp_path, *args, env={**env, "GATEWAY_API_KEY": "gw_test"})
    _assert_one_line_error(done, mentions=f"cannot reach the gateway at http://127.0.0.1:{closed_port}")


def test_other_error_paths(orphan_policy: Path, env: dict[str, str], closed_port: int, tmp_path: Path) -> None:
    """init over an existing config, a bad user name, health with nothing listening, demo into a full folder."""
    home = orphan_policy.parent
    _assert_one_line_error(_gateway(home, "init", "--dir", str(home), env=env), mentions="exists")
    _assert_one_line_error(_gateway(home, "users", "add", "bad name!", env=env), mentions="user names")
    cfg = home / "health.toml"
    cfg.write_text(f'[listen]\nhttp = "127.0.0.1:{closed_port}"\n')
    _assert_one_line_error(
        _gateway(home, "health", "--config", str(cfg), "--timeout", "1", env=env), mentions="unhealthy"
    )
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    done = _gateway(tmp_path, "demo", "--dir", str(full), env=env)
    assert done.returncode != 0 and "not an empty folder" in done.stderr and "Traceback" not in done.stderr
