"""Typed settings from `gateway.toml`, validated once at start; every error names the file, the key and the fix."""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.detect.settings import KEYS as DETECTION_KEYS
from gateway.detect.settings import DetectionSettings, SettingsError, parse_settings
from gateway.durations import parse_duration
from gateway.secret import Secret

CONFIG_ENV = "GATEWAY_CONFIG"
DEFAULT_CONFIG_NAME = "gateway.toml"
TARGET_KINDS = ("postgres", "ssh")
UPSTREAM_TLS_MODES = ("disable", "require", "verify-full")
PG_URL_PREFIXES = ("postgresql://", "postgres://")


class ConfigError(ValueError):
    """The configuration is invalid; str() is one line naming the file, the key and the fix."""


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port to listen on or connect to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Login:
    """An upstream login the gateway uses for one scope; the engineer never sees its secret."""

    scope: str
    user: str
    password: Secret | None = None
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A production server or database reachable through the gateway."""

    name: str
    kind: str
    address: Address
    logins: Mapping[str, Login]
    database: str = ""
    host_key: str = ""
    tls: str = "disable"
    ca_file: Path | None = None
    sensitive: bool = False


@dataclass(frozen=True, slots=True)
class ApiUser:
    """A control-plane user: API key hash (sha256 hex) and groups."""

    name: str
    api_key_sha256: str
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Webhook:
    """An alert sink."""

    name: str
    url: str
    format: str = "json"
    events: frozenset[str] = frozenset()
    min_severity: str = "info"


# Asymmetric only: an HS* algorithm would let anyone holding the (public) JWKS mint tokens.
OIDC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """Where the company identity provider's keys are and which claims name the user and the groups."""

    issuer: str
    audience: str
    jwks_url: str
    user_claim: str = "preferred_username"
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: int = 30
    jwks_cache_seconds: float = 300.0
    jwks_min_refresh_seconds: float = 30.0  # an unknown kid refetches the JWKS at most this often

    def __post_init__(self) -> None:
        bad = [a for a in self.algorithms if a not in OIDC_ALGORITHMS]
        if bad or not self.algorithms:
            raise ValueError(f"oidc.algorithms: {bad or 'empty'} not allowed; use some of {', '.join(OIDC_ALGORITHMS)}")
        if not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError("oidc.jwks_url: must be an http(s) URL")
        if not self.issuer or not self.audience:
            raise ValueError("oidc.issuer and oidc.audience are required")
        if not 0 <= self.leeway <= 60:
            raise ValueError("oidc.leeway: must be 0 to 60 seconds")


@dataclass(frozen=True, slots=True)
class WorkloadIssuer:
    """A machine identity provider (a CI system's OIDC issuer) whose tokens may be exchanged for grants."""

    name: str
    issuer: str
    audience: str
    jwks_url: str = ""
    jwks_file: Path | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: int = 30
    # The grant's subject is "workload:" + this, each {claim} replaced ({ref_short}: ref without refs/heads/).
    subject: str = "{repository}@{ref_short}"
    max_token_age: int = 900  # seconds since iat: an old token (even unexpired) is refused


@dataclass(frozen=True, slots=True)
class AnchorSettings:
    """Where signed audit checkpoints are published, and how often (besides every `checkpoint_every` events)."""

    origin: str = ""  # the checkpoints' first line and key name; "" means "<tokens.issuer>/audit"
    folder: Path | None = Path("var/anchors")  # one file per checkpoint; None: off
    interval: float = 60.0  # a checkpoint at least this often while events arrive
    webhooks: tuple[str, ...] = ()  # URLs that receive each checkpoint (POST, text/plain)
    alert_webhooks: bool = False  # also offer each checkpoint to the alert webhooks (alert type audit.checkpoint)


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """How the API authenticates and authorises callers."""

    oidc: OidcConfig | None = None
    api_keys: bool = True  # [users.NAME] api_key_sha256; keep on for the embedded, IdP-less setup
    admin_groups: frozenset[str] = field(default_factory=lambda: frozenset({"admins"}))
    request_timeout: float = 4 * 3600.0
    metrics_public: bool = True  # Prometheus scrapers rarely carry credentials; counts only, no names of people
    expire_interval: float = 5.0


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Which worker of `count` this process is, and the supervisor's private folder (cancel forwarding)."""

    index: int
    count: int
    run_dir: Path


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the gateway needs to start; paths are absolute."""

    path: Path | None
    base_dir: Path
    listen_ssh: Address = Address("127.0.0.1", 2222)
    listen_postgres: Address = Address("127.0.0.1", 6432)
    listen_http: Address = Address("127.0.0.1", 8080)
    workers: int = 1  # processes sharing the listeners (SO_REUSEPORT) and the store; gateway/workers.py
    worker: WorkerSlot | None = None  # set in a worker process by its supervisor
    store_url: str = "sqlite:///var/gateway.db"
    node: str = ""  # this replica's id ("" = host name and HTTP port)
    heartbeat: float = 2.0  # seconds between this replica's heartbeats
    lost_after: float = 10.0  # seconds of silence after which a survivor reaps a replica's sessions
    keys_dir: Path = Path("var/keys")
    policies_dir: Path = Path("policies")
    recordings_dir: Path = Path("recordings")
    issuer: str = "gateway"
    audience: str = "gateway"
    leeway: int = 30
    checkpoint_every: int = 100
    pg_require_tls: bool = True
    tls_cert: Path = Path("var/keys/tls.crt")
    tls_key: Path = Path("var/keys/tls.key")
    ssh_host_key: Path = Path("var/keys/ssh_host_ed25519")
    preauth_timeout: float = 10.0
    warn_before: float = 60.0
    targets: Mapping[str, Target] = field(default_factory=dict)
    users: Mapping[str, ApiUser] = field(default_factory=dict)
    webhooks: tuple[Webhook, ...] = ()
    alerts_file: Path | None = None
    api: ApiSettings = field(default_factory=ApiSettings)
    workloads: Mapping[str, WorkloadIssuer] = field(default_factory=dict)
    anchors: AnchorSettings = field(default_factory=AnchorSettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)

    @property
    def anchor_origin(self) -> str:
        """The origin line (and signing key name) of this gateway's checkpoints."""
        return self.anchors.origin or f"{self.issuer}/audit"

    @property
    def store_path(self) -> Path:
        """The SQLite file of a `sqlite:///` store URL, resolved against the config folder."""
        if not self.store_url.startswith("sqlite:///"):
            raise ConfigError(f"{self.path or '(defaults)'}: store.url: not an embedded (sqlite:///) store")
        return _resolve(self.base_dir, self.store_url[len("sqlite:///") :])

    @property
    def shared_store(self) -> bool:
        """True for a PostgreSQL store several replicas share."""
        return self.store_url.startswith(PG_URL_PREFIXES)

    @property
    def node_id(self) -> str:
        """This replica's id in the store: configured, else host name and HTTP port (unique on one host);
        a worker's adds its index (workers of one gateway share its ports)."""
        node = self.node or f"{socket.gethostname()}:{self.listen_http.port}"
        return node if self.worker is None else f"{node}/w{self.worker.index}"


def _resolve(base: Path, value: str | Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


_SCHEMA: dict[str, set[str]] = {
    "": {
        "gateway",
        "listen",
        "store",
        "paths",
        "tokens",
        "postgres",
        "ssh",
        "targets",
        "users",
        "alerts",
        "api",
        "oidc",
        "workloads",
        "anchors",
        "detection",
    },
    "anchors": {"origin", "folder", "interval", "webhooks", "alert_webhooks"},
    "detection": DETECTION_KEYS,
    "api": {"admin_groups", "request_timeout", "metrics_public", "api_keys"},
    "oidc": {
        "issuer",
        "audience",
        "jwks_url",
        "user_claim",
        "groups_claim",
        "algorithms",
        "leeway",
        "jwks_cache_seconds",
    },
    "gateway": {"name"},
    "listen": {"ssh", "postgres", "http", "workers"},
    "store": {"url", "node", "heartbeat", "lost_after"},
    "paths": {"keys", "policies", "recordings"},
    "tokens": {"issuer", "audience", "leeway", "checkpoint_every"},
    "postgres": {"require_tls", "tls_cert", "tls_key"},
    "ssh": {"host_key"},
    "alerts": {"file", "webhooks"},
}
_TARGET_KEYS = {"kind", "address", "database", "host_key", "tls", "ca_file", "logins", "sensitive"}
_LOGIN_KEYS = {"user", "password_env", "password_file", "key_file"}
_USER_KEYS = {"api_key_sha256", "groups"}
_WORKLOAD_KEYS = {"issuer", "audience", "jwks_url", "jwks_file", "algorithms", "leeway", "subject", "max_token_age"}
_WEBHOOK_KEYS = {"name", "url", "format", "events", "min_severity"}


class _Reader:
    """Typed access to the parsed TOML with errors that name the file and key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key}: {msg}")

    def table(self, doc: Any, key: str, allowed: set[str] | None) -> dict[str, Any]:
        if doc is None:
            return {}
        if not isinstance(doc, dict):
            raise self.fail(key, "must be a table")
        if allowed is not None:
            for k in doc:
                if k not in allowed:
                    raise self.fail(
                        f"{key}.{k}" if key else k, f"unknown key; expected one of {', '.join(sorted(allowed))}"
                    )
        return doc

    def string(self, doc: dict[str, Any], key: str, prefix: str, default: str | None = None) -> str:
        value = doc.get(key, default)
        if not isinstance(value, str):
            raise self.fail(f"{prefix}{key}", f"must be a string, got {_typename(value)}")
        return value

    def boolean(self, doc: dict[str, Any], key: str, prefix: str, default: bool) -> bool:
        value = doc.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{prefix}{key}", f"must be true or false, got {_typename(value)}")
        return value

    def integer(self, doc: dict[str, Any], key: str, prefix: str, default: int, lo: int, hi: int) -> int:
        value = doc.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise self.fail(f"{prefix}{key}", f"must be a whole number from {lo} to {hi}, got {value!r}")
        return value

    def seconds(self, doc: dict[str, Any], key: str, prefix: str, default: float, lo: float, hi: float) -> float:
        value = doc.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
            raise self.fail(f"{prefix}{key}", f"must be a number of seconds from {lo:g} to {hi:g}, got {value!r}")
        return float(value)

    def strings(self, doc: dict[str, Any], key: str, prefix: str) -> frozenset[str]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{prefix}{key}", "must be a list of strings")
        return frozenset(value)

    def address(self, value: Any, key: str) -> Address:
        if not isinstance(value, str) or ":" not in value:
            raise self.fail(key, f'must be "host:port", got {value!r}')
        host, _, port = value.rpartition(":")
        host = host.strip("[]")
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise self.fail(key, f'must be "host:port" with a port from 1 to 65535, got {value!r}')
        return Address(host, int(port))


def _typename(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def find_config_path(explicit: str | None) -> Path | None:
    """`--config`, else $GATEWAY_CONFIG, else ./gateway.toml when it exists, else None (embedded defaults)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    return local if local.exists() else None


NO_CONFIG = f"no {DEFAULT_CONFIG_NAME} here: run 'gateway init' or pass --config / {CONFIG_ENV}"


def require_config_path(explicit: str | None) -> Path:
    """Like find_config_path, but no file is an error: commands other than init and demo never make state
    (a store, a signing key) in whatever folder they happen to be run from."""
    path = find_config_path(explicit)
    if path is None:
        raise ConfigError(NO_CONFIG)
    return path


def load_config(path: Path | None, *, need_secrets: bool = True) -> Config:
    """Read and validate a config file (None: embedded defaults in the current folder)."""
    if path is None:
        return _build({}, None, Path.cwd(), need_secrets)
    path = path.expanduser().resolve()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; run `gateway init` to write one, or drop --config") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _build(doc, path, path.parent, need_secrets)


def _build(doc: dict[str, Any], path: Path | None, base: Path, need_secrets: bool) -> Config:
    r = _Reader(str(path) if path else "(defaults)")
    r.table(doc, "", _SCHEMA[""])
    sections = {name: r.table(doc.get(name), name, _SCHEMA.get(name)) for name in _SCHEMA[""]}
    workloads = _workloads(r, sections["workloads"], base)
    listen = sections["listen"]
    d = Config(path=None, base_dir=base)
    addrs = {
        k: r.address(listen[k], f"listen.{k}") if k in listen else getattr(d, f"listen_{k}")
        for k in ("ssh", "postgres", "http")
    }
    _check_distinct_ports(r, addrs)
    paths, tokens, pg, ssh, alerts = (sections[k] for k in ("paths", "tokens", "postgres", "ssh", "alerts"))
    store = sections["store"]
    store_url = r.string(store, "url", "store.", d.store_url)
    if not store_url.startswith(("sqlite:///", *PG_URL_PREFIXES)):
        raise r.fail("store.url", "must be sqlite:///<path> or postgresql://user@host/database")
    heartbeat = r.seconds(store, "heartbeat", "store.", d.heartbeat, 0.1, 3600)
    lost_after = r.seconds(store, "lost_after", "store.", d.lost_after, 0.5, 86400)
    if lost_after < 2 * heartbeat:
        raise r.fail("store.lost_after", f"must be at least twice store.heartbeat ({heartbeat:g} s)")

    def p(section: dict[str, Any], key: str, prefix: str, default: Path) -> Path:
        return _resolve(base, r.string(section, key, prefix, str(default)))

    targets = _targets(r, sections["targets"], base, need_secrets)
    return Config(
        path=path,
        base_dir=base,
        listen_ssh=addrs["ssh"],
        listen_postgres=addrs["postgres"],
        listen_http=addrs["http"],
        workers=r.integer(listen, "workers", "listen.", d.workers, 1, 64),
        store_url=store_url,
        node=r.string(store, "node", "store.", d.node),
        heartbeat=heartbeat,
        lost_after=lost_after,
        keys_dir=p(paths, "keys", "paths.", d.keys_dir),
        policies_dir=p(paths, "policies", "paths.", d.policies_dir),
        recordings_dir=p(paths, "recordings", "paths.", d.recordings_dir),
        issuer=r.string(tokens, "issuer", "tokens.", d.issuer),
        audience=r.string(tokens, "audience", "tokens.", d.audience),
        leeway=r.integer(tokens, "leeway", "tokens.", d.leeway, 0, 30),
        checkpoint_every=r.integer(tokens, "checkpoint_every", "tokens.", d.checkpoint_every, 1, 100000),
        pg_require_tls=r.boolean(pg, "require_tls", "postgres.", d.pg_require_tls),
        tls_cert=p(pg, "tls_cert", "postgres.", d.tls_cert),
        tls_key=p(pg, "tls_key", "postgres.", d.tls_key),
        ssh_host_key=p(ssh, "host_key", "ssh.", d.ssh_host_key),
        targets=targets,
        users=_users(r, sections["users"]),
        webhooks=_webhooks(r, alerts.get("webhooks")),
        alerts_file=p(alerts, "file", "alerts.", Path()) if "file" in alerts else None,
        api=_api(r, sections["api"], sections["oidc"]),
        workloads=workloads,
        anchors=_anchors(r, sections["anchors"], base),
        detection=_detection(r, sections["detection"]),
    )


def _check_distinct_ports(r: _Reader, addrs: dict[str, Address]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for name, a in addrs.items():
        if (a.host, a.port) in seen:
            raise r.fail(
                f"listen.{name}", f"port {a.port} is already used by listen.{seen[(a.host, a.port)]}; pick another"
            )
        seen[(a.host, a.port)] = name


def _targets(r: _Reader, doc: dict[str, Any], base: Path, need_secrets: bool) -> dict[str, Target]:
    out = {}
    for name, body in doc.items():
        key = f"targets.{name}"
        body = r.table(body, key, _TARGET_KEYS)
        kind = body.get("kind")
        if kind not in TARGET_KINDS:
            raise r.fail(f"{key}.kind", f"must be one of {', '.join(TARGET_KINDS)}, got {kind!r}")
        if "address" not in body:
            raise r.fail(f"{key}.address", 'is required ("host:port")')
        addr = r.address(body["address"], f"{key}.address")
        tls = r.string(body, "tls", f"{key}.", "disable")
        if tls not in UPSTREAM_TLS_MODES:
            raise r.fail(f"{key}.tls", f"must be one of {', '.join(UPSTREAM_TLS_MODES)}")
        database = r.string(body, "database", f"{key}.", "")
        host_key = r.string(body, "host_key", f"{key}.", "")
        if kind == "postgres" and not database:
            raise r.fail(f"{key}.database", "is required for a postgres target")
        if kind == "ssh" and not host_key:
            raise r.fail(f"{key}.host_key", "is required for an ssh target: pin the upstream's public host key")
        if kind == "ssh" and len(host_key.split()) < 2:
            raise r.fail(f"{key}.host_key", 'must be a public key line like "ssh-ed25519 AAAA..."')
        logins_doc = r.table(body.get("logins"), f"{key}.logins", None)
        if not logins_doc:
            raise r.fail(f"{key}.logins", "needs at least one scope = { user = ..., ... }")
        logins = {
            scope: _login(r, scope, ldoc, f"{key}.logins.{scope}", kind, base, need_secrets)
            for scope, ldoc in logins_doc.items()
        }
        ca = body.get("ca_file")
        out[name] = Target(
            name=name,
            kind=kind,
            address=addr,
            logins=logins,
            database=database,
            host_key=host_key,
            tls=tls,
            ca_file=_resolve(base, r.string(body, "ca_file", f"{key}.")) if ca is not None else None,
            sensitive=r.boolean(body, "sensitive", f"{key}.", False),
        )
    return out


def _login(r: _Reader, scope: str, doc: Any, key: str, kind: str, base: Path, need_secrets: bool) -> Login:
    doc = r.table(doc, key, _LOGIN_KEYS)
    user = r.string(doc, "user", f"{key}.", "")
    if not user:
        raise r.fail(f"{key}.user", "is required")
    sources = [k for k in ("password_env", "password_file", "key_file") if k in doc]
    if kind == "ssh" and sources != ["key_file"]:
        raise r.fail(f"{key}", 'an ssh login takes exactly key_file = "path to the private key"')
    if kind == "postgres" and len(sources) > 1:
        raise r.fail(f"{key}", "give one of password_env or password_file, not both")
    if kind == "postgres" and "key_file" in doc:
        raise r.fail(f"{key}.key_file", "a postgres login takes password_env or password_file")
    password: Secret | None = None
    key_file: Path | None = None
    if "password_env" in doc:
        var = r.string(doc, "password_env", f"{key}.")
        if need_secrets:
            value = os.environ.get(var)
            if value is None:
                raise r.fail(f"{key}.password_env", f"environment variable {var} is not set; export it before starting")
            password = Secret(value)
    elif "password_file" in doc:
        pf = _resolve(base, r.string(doc, "password_file", f"{key}."))
        if need_secrets:
            try:
                password = Secret(pf.read_text(encoding="utf-8").rstrip("\r\n"))
            except OSError as exc:
                raise r.fail(f"{key}.password_file", f"cannot read {pf}: {exc.strerror}") from None
    elif "key_file" in doc:
        key_file = _resolve(base, r.string(doc, "key_file", f"{key}."))
        if need_secrets and not os.access(key_file, os.R_OK):
            raise r.fail(f"{key}.key_file", f"cannot read {key_file}; check the path and permissions")
    return Login(scope=scope, user=user, password=password, key_file=key_file)


def _users(r: _Reader, doc: dict[str, Any]) -> dict[str, ApiUser]:
    out = {}
    for name, body in doc.items():
        key = f"users.{name}"
        body = r.table(body, key, _USER_KEYS)
        digest = r.string(body, "api_key_sha256", f"{key}.", "")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise r.fail(f"{key}.api_key_sha256", "must be the sha256 hex of the user's API key (`gateway users add`)")
        out[name] = ApiUser(name, digest, r.strings(body, "groups", f"{key}."))
    return out


def _workloads(r: _Reader, doc: dict[str, Any], base: Path) -> dict[str, WorkloadIssuer]:
    out = {}
    for name, body in doc.items():
        key = f"workloads.{name}"
        body = r.table(body, key, _WORKLOAD_KEYS)
        issuer = r.string(body, "issuer", f"{key}.", "")
        audience = r.string(body, "audience", f"{key}.", "")
        if not issuer or not audience:
            raise r.fail(key, "needs issuer and audience (the `aud` the pipeline asks its token for)")
        url = r.string(body, "jwks_url", f"{key}.", "")
        jwks_file = _resolve(base, r.string(body, "jwks_file", f"{key}.")) if "jwks_file" in body else None
        if bool(url) == (jwks_file is not None):
            raise r.fail(key, "give exactly one of jwks_url (https://...) or jwks_file (a JWKS document)")
        if url and not url.startswith(("https://", "http://")):
            raise r.fail(f"{key}.jwks_url", "must be an http(s) URL")
        algs = body.get("algorithms", ["RS256", "ES256"])
        if not isinstance(algs, list) or not algs or any(a not in OIDC_ALGORITHMS for a in algs):
            raise r.fail(f"{key}.algorithms", f"must be a list of some of {', '.join(OIDC_ALGORITHMS)}")
        subject = r.string(body, "subject", f"{key}.", "{repository}@{ref_short}")
        if not subject or "{" not in subject:
            raise r.fail(f"{key}.subject", 'must name at least one claim, like "{repository}@{ref_short}"')
        out[name] = WorkloadIssuer(
            name,
            issuer,
            audience,
            url,
            jwks_file,
            tuple(algs),
            r.integer(body, "leeway", f"{key}.", 30, 0, 60),
            subject,
            r.integer(body, "max_token_age", f"{key}.", 900, 60, 86400),
        )
    return out


def _detection(r: _Reader, doc: dict[str, Any]) -> DetectionSettings:
    try:
        return parse_settings(doc)
    except SettingsError as exc:
        raise r.fail(f"detection.{exc.key}", str(exc)) from None


def _anchors(r: _Reader, doc: dict[str, Any], base: Path) -> AnchorSettings:
    origin = r.string(doc, "origin", "anchors.", "")
    if origin and (any(c.isspace() for c in origin) or "+" in origin):
        raise r.fail("anchors.origin", "must be one word without spaces or '+', like gateway.example.com/audit")
    folder = r.string(doc, "folder", "anchors.", "var/anchors")
    try:
        interval = parse_duration(r.string(doc, "interval", "anchors.", "60s"))
    except ValueError as exc:
        raise r.fail("anchors.interval", str(exc)) from None
    hooks = sorted(r.strings(doc, "webhooks", "anchors."))
    for url in hooks:
        if not url.startswith(("http://", "https://")):
            raise r.fail("anchors.webhooks", f"{url!r} is not an http:// or https:// URL")
    return AnchorSettings(
        origin,
        _resolve(base, folder) if folder else None,
        interval,
        tuple(hooks),
        r.boolean(doc, "alert_webhooks", "anchors.", False),
    )


def _webhooks(r: _Reader, doc: Any) -> tuple[Webhook, ...]:
    if doc is None:
        return ()
    if not isinstance(doc, list):
        raise r.fail("alerts.webhooks", "must be an array of tables ([[alerts.webhooks]])")
    out = []
    for i, body in enumerate(doc):
        key = f"alerts.webhooks[{i}]"
        body = r.table(body, key, _WEBHOOK_KEYS)
        url = r.string(body, "url", f"{key}.", "")
        if not url.startswith(("http://", "https://")):
            raise r.fail(f"{key}.url", "must be an http:// or https:// URL")
        fmt = r.string(body, "format", f"{key}.", "json")
        if fmt not in ("json", "slack"):
            raise r.fail(f"{key}.format", "must be json or slack")
        sev = r.string(body, "min_severity", f"{key}.", "info")
        if sev not in ("info", "warning", "critical"):
            raise r.fail(f"{key}.min_severity", "must be info, warning or critical")
        out.append(
            Webhook(
                r.string(body, "name", f"{key}.", f"webhook-{i}"), url, fmt, r.strings(body, "events", f"{key}."), sev
            )
        )
    return tuple(out)


def _api(r: _Reader, api: dict[str, Any], oidc: dict[str, Any]) -> ApiSettings:
    d = ApiSettings()
    timeout = r.string(api, "request_timeout", "api.", "4h")
    try:
        request_timeout = parse_duration(timeout)
    except ValueError as exc:
        raise r.fail("api.request_timeout", str(exc)) from None
    oidc_cfg = None
    if oidc:
        algs = oidc.get("algorithms", ["RS256", "ES256"])
        if not isinstance(algs, list) or not all(isinstance(a, str) for a in algs):
            raise r.fail("oidc.algorithms", "must be a list of strings")
        try:
            oidc_cfg = OidcConfig(
                issuer=r.string(oidc, "issuer", "oidc.", ""),
                audience=r.string(oidc, "audience", "oidc.", ""),
                jwks_url=r.string(oidc, "jwks_url", "oidc.", ""),
                user_claim=r.string(oidc, "user_claim", "oidc.", "preferred_username"),
                groups_claim=r.string(oidc, "groups_claim", "oidc.", "groups"),
                algorithms=tuple(algs),
                leeway=r.integer(oidc, "leeway", "oidc.", 30, 0, 60),
                jwks_cache_seconds=float(r.integer(oidc, "jwks_cache_seconds", "oidc.", 300, 1, 86400)),
            )
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{r.where}: {exc}") from None
    groups = r.strings(api, "admin_groups", "api.") if "admin_groups" in api else d.admin_groups
    return ApiSettings(
        oidc=oidc_cfg,
        api_keys=r.boolean(api, "api_keys", "api.", d.api_keys),
        admin_groups=groups,
        request_timeout=request_timeout,
        metrics_public=r.boolean(api, "metrics_public", "api.", d.metrics_public),
    )
