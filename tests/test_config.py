"""gateway.toml: every error names the file and the key; secrets never show up in errors or reprs."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from gateway.cli.templates import config_template
from gateway.config import Address, ConfigError, WorkerSlot, find_config_path, load_config
from gateway.secret import Secret

SECRET = "s3cr3t-value"

BASE = """\
[listen]
ssh = "127.0.0.1:2222"
postgres = "127.0.0.1:6432"
http = "127.0.0.1:8080"

[store]
url = "sqlite:///var/gateway.db"

[tokens]
leeway = 20
checkpoint_every = 50

[targets.orders-db]
kind = "postgres"
address = "db.internal:5432"
database = "orders"
tls = "require"
[targets.orders-db.logins]
read = { user = "app_ro", password_env = "GW_TEST_RO_PASSWORD" }
admin = { user = "app_admin", password_file = "secrets/admin" }

[targets.web-1]
kind = "ssh"
address = "10.0.0.5:22"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq"
sensitive = true
[targets.web-1.logins]
shell = { user = "ops", key_file = "keys/ops" }
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the secrets the base config needs."""
    monkeypatch.setenv("GW_TEST_RO_PASSWORD", SECRET)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "admin").write_text("admin-" + SECRET + "\n")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ops").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    return tmp_path


def write(home: Path, text: str) -> Path:
    path = home / "gateway.toml"
    path.write_text(text)
    return path


def error(home: Path, text: str, *, need_secrets: bool = True) -> str:
    """Load `text` expecting a ConfigError; returns its message after checking it names the file."""
    path = write(home, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, need_secrets=need_secrets)
    msg = str(info.value)
    assert str(path.resolve()) in msg, msg
    assert "\n" not in msg.strip()
    assert SECRET not in msg
    return msg


# --- a valid file ------------------------------------------------------------------------------------


def test_base_config_loads(home: Path) -> None:
    cfg = load_config(write(home, BASE))
    assert cfg.path == (home / "gateway.toml").resolve()
    assert cfg.listen_ssh == Address("127.0.0.1", 2222)
    assert (cfg.leeway, cfg.checkpoint_every) == (20, 50)
    assert cfg.store_path == home.resolve() / "var" / "gateway.db"
    assert cfg.keys_dir == home.resolve() / "var" / "keys"  # relative paths resolve against the file's folder
    db = cfg.targets["orders-db"]
    assert (db.kind, db.address, db.database, db.tls, db.sensitive) == (
        "postgres",
        Address("db.internal", 5432),
        "orders",
        "require",
        False,
    )
    assert db.logins["read"].password == Secret(SECRET)
    assert db.logins["read"].password is not None and db.logins["read"].password.reveal() == SECRET
    assert db.logins["admin"].password is not None and db.logins["admin"].password.reveal() == "admin-" + SECRET
    web = cfg.targets["web-1"]
    assert web.sensitive and web.logins["shell"].key_file == home.resolve() / "keys" / "ops"
    assert web.logins["shell"].password is None


def test_template_written_by_init_parses(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, config_template()), need_secrets=False)
    assert set(cfg.targets) == {"orders-db", "web-1"}
    assert cfg.alerts_file == tmp_path.resolve() / "var" / "alerts.jsonl"
    assert cfg.leeway == 30


def test_no_file_means_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert cfg.path is None and cfg.targets == {}
    assert cfg.store_path == tmp_path / "var" / "gateway.db"
    assert (cfg.listen_ssh.port, cfg.listen_postgres.port, cfg.listen_http.port) == (2222, 6432, 8080)


def test_find_config_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    assert find_config_path(None) is None
    (tmp_path / "gateway.toml").write_text("")
    assert find_config_path(None) == tmp_path / "gateway.toml"
    monkeypatch.setenv("GATEWAY_CONFIG", "/etc/gw.toml")
    assert find_config_path(None) == Path("/etc/gw.toml")
    assert find_config_path("explicit.toml") == Path("explicit.toml")


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.targets == {} and cfg.issuer == "gateway" and cfg.pg_require_tls is True


# --- secrets -----------------------------------------------------------------------------------------


def test_secret_never_in_repr(home: Path) -> None:
    cfg = load_config(write(home, BASE))
    login = cfg.targets["orders-db"].logins["read"]
    for obj in (cfg, cfg.targets["orders-db"], login, cfg.targets["orders-db"].logins["admin"], login.password):
        assert SECRET not in repr(obj)
        assert SECRET not in str(obj)
    assert "***" in repr(login)


def test_secret_cannot_be_pickled(home: Path) -> None:
    import pickle

    cfg = load_config(write(home, BASE))
    with pytest.raises(TypeError):
        pickle.dumps(cfg.targets["orders-db"].logins["read"].password)


def test_secret_not_in_errors_after_it_was_read(home: Path) -> None:
    # The secret is loaded (read login) before a later key is found wrong: the error must not carry it.
    msg = error(
        home,
        BASE + '\n[targets.other]\nkind = "postgres"\naddress = "x:1"\ndatabase = "d"\n'
        'logins = { read = { user = "u", password_env = "GW_TEST_RO_PASSWORD", extra = 1 } }\n',
    )
    assert "targets.other.logins.read.extra" in msg


def test_secret_value_in_a_wrong_place_is_not_echoed(home: Path) -> None:
    # someone pastes the password into the wrong key: the error names the key, not the value
    msg = error(home, BASE.replace('password_env = "GW_TEST_RO_PASSWORD"', f'password = "{SECRET}"'))
    assert "targets.orders-db.logins.read.password" in msg


# --- errors, each naming the file and the key -------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda t: 'colour = "blue"\n' + t, "colour"),
        (lambda t: t.replace("[store]", '[store]\npath = "x"'), "store.path"),
        (lambda t: t.replace("[tokens]", "[tokens]\nlifetime = 5"), "tokens.lifetime"),
        (lambda t: t + '\n[paths]\nkey = "k"\n', "paths.key"),
        (lambda t: t.replace('database = "orders"', 'database = "orders"\nport = 5432'), "targets.orders-db.port"),
        (
            lambda t: t.replace('{ user = "ops", key_file', '{ user = "ops", shell = "/bin/sh", key_file'),
            "targets.web-1.logins.shell.shell",
        ),
        (
            lambda t: t.replace('read = { user = "app_ro"', 'read = { usr = "x", user = "app_ro"'),
            "targets.orders-db.logins.read.usr",
        ),
        (lambda t: t + '\n[users.alice]\napi_key = "x"\n', "users.alice.api_key"),
        (lambda t: t + '\n[[alerts.webhooks]]\nurl = "https://x"\nsecret = "y"\n', "alerts.webhooks[0].secret"),
    ],
    ids=["top", "store", "tokens", "paths", "target", "ssh-login", "pg-login", "user", "webhook"],
)
def test_unknown_key(home: Path, edit, key: str) -> None:  # type: ignore[no-untyped-def]
    msg = error(home, edit(BASE))
    assert f": {key}: unknown key" in msg


@pytest.mark.parametrize(
    ("edit", "key", "words"),
    [
        (lambda t: t.replace("leeway = 20", 'leeway = "20"'), "tokens.leeway", "whole number"),
        (lambda t: t.replace("leeway = 20", "leeway = true"), "tokens.leeway", "whole number"),
        (lambda t: t.replace("leeway = 20", "leeway = 31"), "tokens.leeway", "0 to 30"),
        (lambda t: t.replace("leeway = 20", "leeway = -1"), "tokens.leeway", "0 to 30"),
        (lambda t: t.replace("checkpoint_every = 50", "checkpoint_every = 0"), "tokens.checkpoint_every", "1 to"),
        (lambda t: t.replace("[tokens]", "[tokens]\nissuer = 5"), "tokens.issuer", "must be a string"),
        (lambda t: t + '\n[postgres]\nrequire_tls = "yes"\n', "postgres.require_tls", "true or false"),
        (lambda t: t.replace("sensitive = true", "sensitive = 1"), "targets.web-1.sensitive", "true or false"),
        (lambda t: t.replace('database = "orders"', "database = 5"), "targets.orders-db.database", "string"),
        (lambda t: t.replace('kind = "ssh"', 'kind = "telnet"'), "targets.web-1.kind", "postgres, ssh"),
        (lambda t: t.replace('tls = "require"', 'tls = "prefer"'), "targets.orders-db.tls", "verify-full"),
        (lambda t: "store = 5\n" + t.replace('[store]\nurl = "sqlite:///var/gateway.db"\n', ""), "store", "table"),
        (lambda t: t.replace('user = "app_ro"', "user = 7"), "targets.orders-db.logins.read.user", "string"),
        (lambda t: t + '\n[users.alice]\napi_key_sha256 = "abc"\n', "users.alice.api_key_sha256", "sha256"),
        (
            lambda t: t + '\n[users.bob]\napi_key_sha256 = "' + "a" * 64 + '"\ngroups = "ops"\n',
            "users.bob.groups",
            "list of strings",
        ),
        (lambda t: t + "\n[alerts]\nwebhooks = 5\n", "alerts.webhooks", "array of tables"),
        (lambda t: t + '\n[[alerts.webhooks]]\nurl = "ftp://x"\n', "alerts.webhooks[0].url", "http"),
        (
            lambda t: t + '\n[[alerts.webhooks]]\nurl = "https://x"\nformat = "xml"\n',
            "alerts.webhooks[0].format",
            "json or slack",
        ),
    ],
)
def test_wrong_type_or_value(home: Path, edit, key: str, words: str) -> None:  # type: ignore[no-untyped-def]
    text = edit(BASE)
    assert text != BASE
    msg = error(home, text)
    assert f": {key}: " in msg and words in msg, msg


@pytest.mark.parametrize(
    "value",
    [
        "localhost",
        "2222",
        "127.0.0.1:",
        ":2222",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:99999",
        "127.0.0.1:ssh",
        "127.0.0.1:-1",
        "127.0.0.1:²",  # str.isdigit() is true for superscripts, int() is not
        "127.0.0.1:\uff12\uff12",  # fullwidth digits: int() would accept them
        "127.0.0.1: 22",
        "",
        "[]:80",
    ],
)
def test_bad_listen_address(home: Path, value: str) -> None:
    msg = error(home, BASE.replace('ssh = "127.0.0.1:2222"', f'ssh = "{value}"'))
    assert ': listen.ssh: must be "host:port"' in msg


def test_listen_address_of_wrong_type(home: Path) -> None:
    assert ": listen.ssh: " in error(home, BASE.replace('ssh = "127.0.0.1:2222"', "ssh = 2222"))


@pytest.mark.parametrize("value", ["db", "db:", "db:70000", 5432])
def test_bad_target_address(home: Path, value: object) -> None:
    v = f'"{value}"' if isinstance(value, str) else str(value)
    msg = error(home, BASE.replace('address = "db.internal:5432"', f"address = {v}"))
    assert ": targets.orders-db.address: " in msg


def test_ipv6_listen_address(home: Path) -> None:
    cfg = load_config(write(home, BASE.replace('http = "127.0.0.1:8080"', 'http = "[::1]:8080"')))
    assert cfg.listen_http == Address("::1", 8080)


def test_workers(home: Path) -> None:
    assert load_config(write(home, BASE)).workers == 1
    cfg = load_config(write(home, BASE.replace("[listen]\n", "[listen]\nworkers = 4\n")))
    assert cfg.workers == 4 and cfg.worker is None
    w = dataclasses.replace(cfg, node="gw-a", worker=WorkerSlot(3, 4, home))
    assert (cfg.node_id, w.node_id) == (f"{socket.gethostname()}:8080", "gw-a/w3")  # one node id per worker
    for bad in ("0", "65", '"2"'):
        assert ": listen.workers: " in error(home, BASE.replace("[listen]\n", f"[listen]\nworkers = {bad}\n"))


def test_duplicate_listen_port(home: Path) -> None:
    msg = error(home, BASE.replace('postgres = "127.0.0.1:6432"', 'postgres = "127.0.0.1:2222"'))
    assert ": listen.postgres: port 2222 is already used by listen.ssh" in msg


def test_duplicate_of_a_default_port(home: Path) -> None:
    # only http is given, on the default ssh port
    msg = error(
        home,
        BASE.replace('ssh = "127.0.0.1:2222"\npostgres = "127.0.0.1:6432"\n', "").replace(
            'http = "127.0.0.1:8080"', 'http = "127.0.0.1:2222"'
        ),
    )
    assert ": listen.http: port 2222 is already used by listen.ssh" in msg


def test_missing_secret_env_var(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_TEST_RO_PASSWORD")
    msg = error(home, BASE)
    assert ": targets.orders-db.logins.read.password_env: environment variable GW_TEST_RO_PASSWORD is not set" in msg
    # the CLI's offline commands do not need secrets
    cfg = load_config(home / "gateway.toml", need_secrets=False)
    assert cfg.targets["orders-db"].logins["read"].password is None
    assert cfg.targets["orders-db"].logins["read"].user == "app_ro"


def test_unreadable_password_file(home: Path) -> None:
    (home / "secrets" / "admin").unlink()
    msg = error(home, BASE)
    assert ": targets.orders-db.logins.admin.password_file: cannot read " in msg
    assert str(home.resolve() / "secrets" / "admin") in msg
    assert load_config(home / "gateway.toml", need_secrets=False).targets["orders-db"].logins["admin"].password is None


def test_password_file_that_is_a_folder(home: Path) -> None:
    (home / "secrets" / "admin").unlink()
    (home / "secrets" / "admin").mkdir()
    assert ": targets.orders-db.logins.admin.password_file: cannot read " in error(home, BASE)


def test_unreadable_key_file(home: Path) -> None:
    (home / "keys" / "ops").unlink()
    msg = error(home, BASE)
    assert ": targets.web-1.logins.shell.key_file: cannot read " in msg
    assert load_config(home / "gateway.toml", need_secrets=False).targets["web-1"].logins["shell"].key_file == (
        home.resolve() / "keys" / "ops"
    )


def test_ssh_target_without_host_key(home: Path) -> None:
    msg = error(home, BASE.replace('host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq"\n', ""))
    assert ": targets.web-1.host_key: is required for an ssh target" in msg


def test_ssh_host_key_must_be_a_key_line(home: Path) -> None:
    msg = error(home, BASE.replace('"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq"', '"AAAAC3NzaC1lZDI1NTE5AAAAIOMq"'))
    assert ": targets.web-1.host_key: must be a public key line" in msg


def test_postgres_target_without_database(home: Path) -> None:
    msg = error(home, BASE.replace('database = "orders"\n', ""))
    assert ": targets.orders-db.database: is required for a postgres target" in msg


def test_target_without_kind_address_or_logins(home: Path) -> None:
    assert ": targets.orders-db.kind: " in error(home, BASE.replace('kind = "postgres"\n', ""))
    assert ": targets.orders-db.address: is required" in error(home, BASE.replace('address = "db.internal:5432"\n', ""))
    no_logins = BASE.split("[targets.web-1]")[0].split("[targets.orders-db.logins]")[0]
    assert ": targets.orders-db.logins: needs at least one" in error(home, no_logins)


@pytest.mark.parametrize(
    ("login", "key"),
    [
        ('read = { user = "u", password_env = "A", password_file = "b" }', "targets.orders-db.logins.read"),
        ('read = { user = "u", key_file = "k" }', "targets.orders-db.logins.read.key_file"),
        ('read = { password_env = "GW_TEST_RO_PASSWORD" }', "targets.orders-db.logins.read.user"),
        ('read = { user = "", password_env = "GW_TEST_RO_PASSWORD" }', "targets.orders-db.logins.read.user"),
        ('read = "app_ro"', "targets.orders-db.logins.read"),
    ],
)
def test_bad_postgres_login(home: Path, login: str, key: str) -> None:
    text = BASE.replace('read = { user = "app_ro", password_env = "GW_TEST_RO_PASSWORD" }', login)
    assert text != BASE
    assert f": {key}: " in error(home, text)


def test_postgres_login_without_a_secret_is_allowed(home: Path) -> None:
    # trust/peer authentication upstream: no password at all
    text = BASE.replace('read = { user = "app_ro", password_env = "GW_TEST_RO_PASSWORD" }', 'read = { user = "u" }')
    assert load_config(write(home, text)).targets["orders-db"].logins["read"].password is None


def test_ssh_login_needs_exactly_a_key_file(home: Path) -> None:
    msg = error(home, BASE.replace('{ user = "ops", key_file = "keys/ops" }', '{ user = "ops", password_env = "X" }'))
    assert ": targets.web-1.logins.shell: an ssh login takes exactly key_file" in msg


@pytest.mark.parametrize("url", ["sqlite://relative.db", "mysql:///x", "", "var/gateway.db", "postgresq://db/x"])
def test_bad_store_url(home: Path, url: str) -> None:
    msg = error(home, BASE.replace('url = "sqlite:///var/gateway.db"', f'url = "{url}"'))
    assert ": store.url: must be sqlite:///<path> or postgresql://" in msg


@pytest.mark.parametrize("url", ["postgres://db/gateway", "postgresql://gw@db:5432/gateway"])
def test_postgresql_store_url_and_replica_settings(home: Path, url: str) -> None:
    text = BASE.replace(
        'url = "sqlite:///var/gateway.db"', f'url = "{url}"\nnode = "gw-a"\nheartbeat = 1\nlost_after = 4.5'
    )
    cfg = load_config(write(home, text))
    assert (cfg.store_url, cfg.shared_store, cfg.node_id, cfg.heartbeat, cfg.lost_after) == (
        url,
        True,
        "gw-a",
        1.0,
        4.5,
    )
    with pytest.raises(ConfigError, match="not an embedded"):
        _ = cfg.store_path


def test_replica_settings_are_checked(home: Path) -> None:
    def base(extra: str) -> str:
        return BASE.replace('url = "sqlite:///var/gateway.db"', 'url = "sqlite:///var/gateway.db"\n' + extra)

    assert ": store.lost_after: must be at least twice" in error(home, base("heartbeat = 3\nlost_after = 5"))
    assert ": store.heartbeat: must be a number of seconds" in error(home, base('heartbeat = "2s"'))
    cfg = load_config(write(home, base("")))
    assert cfg.node_id.endswith(":8080") and not cfg.shared_store


def test_invalid_toml(home: Path) -> None:
    msg = error(home, BASE + "\n[targets.web-1\nbroken = \n")
    assert "not valid TOML" in msg


def test_duplicate_toml_table_is_invalid(home: Path) -> None:
    assert "not valid TOML" in error(home, BASE + '\n[store]\nurl = "sqlite:///b.db"\n')


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str((tmp_path / "nope.toml").resolve()) in str(info.value)
    assert "gateway init" in str(info.value)


def test_config_path_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_api_and_oidc_sections(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[api]\nadmin_groups = ["sec"]\nrequest_timeout = "2h"\nmetrics_public = false\n'
        '[oidc]\nissuer = "https://idp.example"\naudience = "gateway"\njwks_url = "https://idp.example/jwks"\n'
        'groups_claim = "roles"\n'
    )
    api = load_config(cfg).api
    assert api.admin_groups == frozenset({"sec"})
    assert api.request_timeout == 7200
    assert api.metrics_public is False
    assert api.oidc is not None and api.oidc.groups_claim == "roles" and api.oidc.algorithms == ("RS256", "ES256")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[oidc]\nissuer = "x"\naudience = "a"\njwks_url = "https://x/j"\nalgorithms = ["HS256"]\n', "HS256"),
        ('[oidc]\nissuer = "x"\naudience = "a"\njwks_url = "ftp://x"\n', "jwks_url"),
        ('[oidc]\nissuer = "x"\njwks_url = "https://x/j"\n', "audience"),
        ('[api]\nrequest_timeout = "soon"\n', "api.request_timeout"),
        ("[api]\nadmin = true\n", "api.admin"),
    ],
)
def test_api_and_oidc_errors(tmp_path: Path, text: str, words: str) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    assert str(cfg) in str(exc.value) and words in str(exc.value)
