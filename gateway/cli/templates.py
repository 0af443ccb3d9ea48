"""What `gateway init` writes: a config with every default spelled out, and example policies."""

from __future__ import annotations

_CONFIG = """\
# gateway.toml - written by `gateway init`. Every key below shows its default.
# Relative paths resolve against this file's folder. Reference: README.md, "Configuration".

[listen]
ssh = "127.0.0.1:2222"          # engineers: ssh -p 2222 TARGET@gateway
postgres = "127.0.0.1:6432"     # engineers: psql "host=gateway port=6432 user=ME dbname=TARGET"
http = "127.0.0.1:8080"         # control plane API (requests, approvals, revocation, audit)

[store]
url = "sqlite:///var/gateway.db"

[paths]
keys = "var/keys"               # token signing keys (Ed25519), made on first start
policies = "policies"           # policies/*.yaml
recordings = "recordings"       # SSH asciicast and SQL JSON-lines recordings

[tokens]
issuer = "gateway"
audience = "gateway"
leeway = 30                     # seconds of clock skew tolerated on nbf/exp (30 at most)
checkpoint_every = 100          # sign the audit chain head every N events (and on shutdown)

[anchors]                       # every signed checkpoint is published outside the store (README, "Anchors")
origin = ""                     # the checkpoints' name; "" means "<tokens.issuer>/audit"
folder = "var/anchors"          # one file per checkpoint; point it at WORM storage / object lock; "" turns it off
interval = "60s"                # also checkpoint at least this often while events arrive
webhooks = []                   # URLs that receive each checkpoint (POST, text/plain signed note)
alert_webhooks = false          # also send each checkpoint to the alert webhooks (type audit.checkpoint)

# CI/CD pipelines exchange their OIDC token for a grant (README, "From a pipeline"):
# [workloads.github]
# issuer = "https://token.actions.githubusercontent.com"
# jwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"
# audience = "https://gateway.example.com"

[postgres]
require_tls = true              # refuse clients that do not ask for TLS (the token is a password)
tls_cert = "var/keys/tls.crt"   # made on first start when missing (self-signed)
tls_key = "var/keys/tls.key"

[ssh]
host_key = "var/keys/ssh_host_ed25519"

[alerts]
file = "var/alerts.jsonl"       # one JSON line per alert, for SIEM shippers
# [[alerts.webhooks]]
# url = "https://hooks.example.com/..."
# format = "slack"              # or "json"
# events = ["break_glass", "session.killed", "violation"]
# min_severity = "warning"

# Control-plane users (API keys are stored as SHA-256; `gateway users add NAME` prints a key).
# [users.alice]
# api_key_sha256 = "..."
# groups = ["engineers"]

[targets.orders-db]
kind = "postgres"
address = "127.0.0.1:5432"
database = "orders"
tls = "disable"                 # upstream TLS: disable | require | verify-full (with ca_file)
[targets.orders-db.logins]      # scope -> the login the gateway uses upstream (the engineer never sees it)
read = { user = "app_ro", password_env = "ORDERS_RO_PASSWORD" }
write = { user = "app_rw", password_env = "ORDERS_RW_PASSWORD" }
admin = { user = "app_admin", password_file = "secrets/orders_admin" }

[targets.web-1]
kind = "ssh"
address = "127.0.0.1:22"
# Pin the upstream's host key: `ssh-keyscan -t ed25519 HOST`. The gateway refuses an upstream whose key differs.
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPUT-THE-REAL-HOST-KEY-HERE"
[targets.web-1.logins]
shell = { user = "ops", key_file = "keys/ops_ed25519" }
"""

_ORDERS_POLICY = """\
# Policy for orders-db. Scopes not listed here cannot be requested.
target: orders-db
scopes:
  read:
    max_ttl: 1h
    approvals: {count: 1}             # one approval by someone other than the requester
    sql:
      mode: read                      # reads only; the upstream login is SELECT-only too
      sensitive_tables: [customers]   # statements on these raise an alert
      max_rows: 10000                 # a result larger than this raises an alert
  write:
    max_ttl: 30m
    approvals: {count: 1, groups: [dba]}
    sql:
      mode: write
      rules:
        - {name: no-drop, kinds: [ddl], action: kill}
  admin:
    max_ttl: 15m
    approvals: {count: 2, groups: [dba]}
    sql:
      mode: admin
"""

_WEB_POLICY = """\
# Policy for web-1.
target: web-1
scopes:
  shell:
    max_ttl: 1h
    approvals: {count: 1}
    ssh:
      shell: true
      exec: true
      sftp: read-only                 # downloads only; writes, removes and renames are refused
      commands:
        - {pattern: "rm -rf /*", action: kill}
        - {pattern: "sudo *", action: alert}
        - {pattern: "regex:^(shutdown|reboot|halt)\\\\b", action: deny}
"""

EXAMPLE_POLICIES = {"orders-db.yaml": _ORDERS_POLICY, "web-1.yaml": _WEB_POLICY}


def config_template() -> str:
    """The text of a fresh gateway.toml."""
    return _CONFIG
