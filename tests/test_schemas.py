"""The JSON Schemas in schemas/ accept every shipped policy and config, and accept exactly what the loaders accept."""

from __future__ import annotations

import json
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway import config as config_mod
from gateway import policy as policy_mod
from gateway.cli.templates import EXAMPLE_POLICIES, config_template
from gateway.config import ConfigError, load_config
from gateway.detect import settings as detect_settings
from gateway.policy import PolicyError, load_policy_file
from gateway.workload import rules as rules_mod
from tests.control import conftest as control_conf
from tests.control import test_workloads

ROOT = Path(__file__).resolve().parents[1]
POLICY_SCHEMA = json.loads((ROOT / "schemas" / "policy.schema.json").read_text())
CONFIG_SCHEMA = json.loads((ROOT / "schemas" / "gateway.schema.json").read_text())
KINDS = {"orders-db": "postgres", "web-1": "ssh"}


def _valid(schema: dict[str, Any], doc: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(doc)


def _errors(schema: dict[str, Any], doc: Any) -> list[str]:
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]


def test_schemas_are_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(POLICY_SCHEMA)
    jsonschema.Draft202012Validator.check_schema(CONFIG_SCHEMA)


SHIPPED_POLICIES = {
    **{f"policies/{p.name}": p.read_text() for p in sorted((ROOT / "policies").glob("*.yaml"))},
    **{f"init:{name}": text for name, text in EXAMPLE_POLICIES.items()},
    "tests:orders": control_conf.ORDERS_POLICY,
    "tests:web": control_conf.WEB_POLICY,
    "tests:workloads": test_workloads.POLICY,
}


@pytest.mark.parametrize("name", sorted(SHIPPED_POLICIES))
def test_every_shipped_policy_validates_and_loads(name: str, tmp_path: Path) -> None:
    text = SHIPPED_POLICIES[name]
    assert _errors(POLICY_SCHEMA, yaml.safe_load(text)) == []
    path = tmp_path / "p.yaml"
    path.write_text(text)
    load_policy_file(path, KINDS, ["ci"])


def test_every_shipped_config_validates(tmp_path: Path) -> None:
    for name, text in {
        "init": config_template(),
        "docker": (ROOT / "docker" / "gateway.toml").read_text(),
    }.items():
        doc = tomllib.loads(text)
        assert _errors(CONFIG_SCHEMA, doc) == [], name
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        load_config(path, need_secrets=False)


def _props(schema: dict[str, Any], *path: str) -> set[str]:
    node = schema
    for part in path:
        node = node[part]
        if "oneOf" in node and "properties" not in node:
            node = next(o for o in node["oneOf"] if "properties" in o)
    return set(node["properties"])


def test_schema_keys_are_the_loaders_keys() -> None:
    """Every key the loaders know is in the schema and the other way round, at every level."""
    p = POLICY_SCHEMA["properties"]
    assert set(p) == {"target", "scopes", "workloads"}
    scope = p["scopes"]["additionalProperties"]
    assert set(scope["properties"]) == policy_mod._SCOPE_KEYS
    assert set(scope["properties"]["sql"]["properties"]) == policy_mod._SQL_KEYS
    assert set(scope["properties"]["sql"]["properties"]["rules"]["items"]["properties"]) == policy_mod._SQL_RULE_KEYS
    ssh = scope["properties"]["ssh"]["properties"]
    assert set(ssh) == policy_mod._SSH_KEYS
    assert set(ssh["commands"]["items"]["properties"]) == policy_mod._CMD_RULE_KEYS
    assert set(scope["properties"]["requesters"]["properties"]) == {"users", "groups"}
    assert set(scope["properties"]["approvals"]["properties"]) == {"count", "users", "groups"}
    assert set(scope["properties"]["detection"]["properties"]) == detect_settings.SCOPE_KEYS
    assert set(p["workloads"]["items"]["properties"]) == rules_mod._RULE_KEYS
    c = CONFIG_SCHEMA["properties"]
    assert set(c) == config_mod._SCHEMA[""]
    for section, keys in config_mod._SCHEMA.items():
        if section:
            assert set(c[section]["properties"]) == keys, section
    target = c["targets"]["additionalProperties"]
    assert set(target["properties"]) == config_mod._TARGET_KEYS
    assert set(target["properties"]["logins"]["additionalProperties"]["properties"]) == config_mod._LOGIN_KEYS
    assert set(c["users"]["additionalProperties"]["properties"]) == config_mod._USER_KEYS
    assert set(c["alerts"]["properties"]["webhooks"]["items"]["properties"]) == config_mod._WEBHOOK_KEYS
    assert set(c["workloads"]["additionalProperties"]["properties"]) == config_mod._WORKLOAD_KEYS


BAD_POLICIES = {
    "unknown top key": "target: orders-db\nscopes: {read: {}}\nowner: me\n",
    "no scopes": "target: orders-db\n",
    "unknown scope key": "target: orders-db\nscopes: {read: {ttl: 1h}}\n",
    "bad duration": "target: orders-db\nscopes: {read: {max_ttl: soon}}\n",
    "bad sql mode": "target: orders-db\nscopes: {read: {sql: {mode: readonly}}}\n",
    "bad action": "target: orders-db\nscopes: {read: {sql: {rules: [{kinds: [ddl], action: block}]}}}\n",
    "negative count": "target: orders-db\nscopes: {read: {approvals: {count: -1}}}\n",
    "zero max_rows": "target: orders-db\nscopes: {read: {sql: {max_rows: 0}}}\n",
    "bool as string": "target: orders-db\nscopes: {read: {auto_approve: 'yes'}}\n",
    "unknown sql key": "target: orders-db\nscopes: {read: {sql: {mode: read, limit: 5}}}\n",
    "bad sftp": "target: web-1\nscopes: {shell: {ssh: {sftp: writeonly}}}\n",
    "agent forwarding on": "target: web-1\nscopes: {shell: {ssh: {agent_forwarding: true}}}\n",
    "detection unknown key": "target: orders-db\nscopes: {read: {detection: {action: kill}}}\n",
    "detection bad action": "target: orders-db\nscopes: {read: {detection: {actions: {usual.hour: block}}}}\n",
    "detection bad hours": "target: orders-db\nscopes: {read: {detection: {hours: 8}}}\n",
    "command rule without pattern": "target: web-1\nscopes: {shell: {ssh: {commands: [{action: deny}]}}}\n",
    "workload without claims": (
        "target: orders-db\nscopes: {read: {}}\nworkloads: [{issuer: ci, scopes: [read], max_ttl: 5m}]\n"
    ),
    "workload bad approval": (
        "target: orders-db\nscopes: {read: {}}\n"
        "workloads: [{issuer: ci, claims: {repository: a/b}, scopes: read, max_ttl: 5m, approval: maybe}]\n"
    ),
    "workload without max_ttl": (
        "target: orders-db\nscopes: {read: {}}\nworkloads: [{issuer: ci, claims: {repository: a/b}, scopes: read}]\n"
    ),
    "workload empty claim": (
        "target: orders-db\nscopes: {read: {}}\n"
        "workloads: [{issuer: ci, claims: {repository: ''}, scopes: read, max_ttl: 5m}]\n"
    ),
}

GOOD_POLICIES = {
    "nulls mean defaults": "target: orders-db\nscopes:\n  read:\n    requesters:\n    approvals:\n    sql:\n",
    "strings for lists": (
        "target: orders-db\nscopes: {read: {requesters: {groups: dba}, sql: {allow_functions: lower}}}\n"
    ),
    "detection overrides": (
        "target: orders-db\nscopes: {read: {detection: {disabled: [first_use.shape], hours: '8-19', "
        "actions: {exfil.copy_sensitive: deny, usual.hour: kill}}}}\n"
    ),
    "detached off": "target: web-1\nscopes: {shell: {ssh: {detached: off, allowed_commands: 'uptime'}}}\n",
    "allowlist entries": (
        "target: web-1\nscopes: {shell: {ssh: {allowed_commands: ['uptime', {pattern: 'journalctl -u *', "
        "options: ['--no-pager', '-n *']}]}}}\n"
    ),
    "workload with globs": (
        "target: orders-db\nscopes: {read: {}}\n"
        "workloads: [{issuer: ci, claims: {repository: 'acme/*', ref: 'refs/heads/*'}, scopes: [read], "
        "max_ttl: 15m, approval: auto}]\n"
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_POLICIES))
def test_what_the_loader_refuses_the_schema_refuses(name: str, tmp_path: Path) -> None:
    text = BAD_POLICIES[name]
    assert not _valid(POLICY_SCHEMA, yaml.safe_load(text))
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError):
        load_policy_file(path, KINDS, ["ci"])


@pytest.mark.parametrize("name", sorted(GOOD_POLICIES))
def test_what_the_loader_accepts_the_schema_accepts(name: str, tmp_path: Path) -> None:
    text = GOOD_POLICIES[name]
    assert _errors(POLICY_SCHEMA, yaml.safe_load(text)) == []
    path = tmp_path / "p.yaml"
    path.write_text(text)
    load_policy_file(path, KINDS, ["ci"])


BAD_CONFIGS = {
    "unknown section": "[listn]\nssh = '127.0.0.1:2222'\n",
    "bad address": "[listen]\nssh = '2222'\n",
    "leeway too big": "[tokens]\nleeway = 31\n",
    "unknown target key": "[targets.db]\nkind = 'postgres'\naddress = 'h:5432'\ndatabase = 'd'\nport = 1\n"
    "[targets.db.logins]\nread = { user = 'u', password_env = 'X' }\n",
    "bad kind": "[targets.db]\nkind = 'mysql'\naddress = 'h:1'\n[targets.db.logins]\nread = { user = 'u' }\n",
    "bad api key hash": "[users.alice]\napi_key_sha256 = 'abc'\n",
    "webhook not http": "[[alerts.webhooks]]\nurl = 'ftp://x'\n",
    "workload without keys": "[workloads.ci]\nissuer = 'https://i'\naudience = 'a'\n",
    "workload both keys": (
        "[workloads.ci]\nissuer = 'https://i'\naudience = 'a'\njwks_url = 'https://i/k'\njwks_file = 'k.json'\n"
    ),
    "detection bad action": "[detection]\nactions = { 'exfil.copy_sensitive' = 'block' }\n",
    "detection sweep zero": "[detection]\nsweep_every = 0\n",
    "anchor interval": "[anchors]\ninterval = 'often'\n",
    "anchor origin with space": "[anchors]\norigin = 'my gateway'\n",
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_what_the_config_loader_refuses_the_schema_refuses(name: str, tmp_path: Path) -> None:
    text = textwrap.dedent(BAD_CONFIGS[name])
    assert not _valid(CONFIG_SCHEMA, tomllib.loads(text))
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path, need_secrets=False)
