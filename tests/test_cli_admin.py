"""Admin CLI in-process (`gateway.cli.main`): init, break-glass grant, token verify, keys, audit export."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import stat
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
from cryptography import x509

from gateway.cli import main
from gateway.config import load_config
from gateway.policy import Policies
from gateway.store import GrantRecord, SqliteStore
from gateway.tokens import Claims, KeyRing

T = TypeVar("T")
JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Run async setup on its own loop in a worker thread (the CLI runs its own loop in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class Gw:
    """`gateway --config <home>/gateway.toml ...` in-process, with its output."""

    def __init__(self, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.home = home
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        rc = main(["--config", str(self.home / "gateway.toml"), *args])
        out, err = self.capsys.readouterr()
        return rc, out, err

    def grant(
        self, *extra: str, user: str = "alice", target: str = "orders-db", scope: str = "read", ttl: str = "10m"
    ) -> str:
        rc, out, err = self(
            "grant",
            "--user",
            user,
            "--target",
            target,
            "--scope",
            scope,
            "--ttl",
            ttl,
            "--reason",
            "INC-1234 disk full",
            *extra,
        )
        assert rc == 0, err
        return out.strip()

    @property
    def config(self):  # type: ignore[no-untyped-def]
        return load_config(self.home / "gateway.toml", need_secrets=False)

    def ring(self) -> KeyRing:
        return KeyRing.load(self.config.keys_dir)

    def store(self) -> SqliteStore:
        return SqliteStore(self.config.store_path, self.ring())

    def events(self) -> list[Any]:
        async def go() -> list[Any]:
            s = await self.store().open()
            try:
                return await s.events()
            finally:
                await s.close(checkpoint=False)

        return arun(go())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("init")
    assert main(["init", "--dir", str(home)]) == 0
    return home


@pytest.fixture
def gw(pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Gw:
    home = tmp_path / "home"
    shutil.copytree(pristine, home)
    return Gw(home, capsys)


# --- init ----------------------------------------------------------------------------------------------


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_writes_config_keys_cert_host_key_and_policies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "new"
    assert main(["init", "--dir", str(home)]) == 0
    out = capsys.readouterr().out
    config = load_config(home / "gateway.toml", need_secrets=False)
    assert set(config.targets) == {"orders-db", "web-1"}
    ring = KeyRing.load(config.keys_dir)
    assert f"signing key {ring.active_kid}" in out
    pems = list((config.keys_dir / "signing").glob("*.pem"))
    assert [p.stem for p in pems] == [ring.active_kid]
    for private in (*pems, config.tls_key, config.ssh_host_key):
        assert _mode(private) == 0o600, private
    assert _mode(config.keys_dir) & 0o077 == 0
    cert = x509.load_pem_x509_certificate(config.tls_cert.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=gateway"
    assert b"PRIVATE KEY" in config.tls_key.read_bytes()
    assert b"OPENSSH PRIVATE KEY" in config.ssh_host_key.read_bytes()
    assert config.ssh_host_key.with_name("ssh_host_ed25519.pub").read_text().startswith("ssh-ed25519 ")
    assert sorted(p.name for p in config.policies_dir.iterdir()) == ["orders-db.yaml", "web-1.yaml"]
    policies = Policies.load(config.policies_dir, {n: (t.kind, list(t.logins)) for n, t in config.targets.items()})
    assert policies.scope("orders-db", "read").max_ttl == 3600  # type: ignore[union-attr]
    assert policies.target("web-1").source.endswith("web-1.yaml")  # type: ignore[union-attr]
    assert config.recordings_dir.is_dir() and _mode(config.recordings_dir) == 0o700


def test_init_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "h"
    assert main(["init", "--dir", str(home)]) == 0
    kid = KeyRing.load(home / "var" / "keys").active_kid
    (home / "gateway.toml").write_text((home / "gateway.toml").read_text() + "\n# my edits\n")
    (home / "policies" / "web-1.yaml").write_text((home / "policies" / "web-1.yaml").read_text() + "# mine\n")
    capsys.readouterr()
    assert main(["init", "--dir", str(home)]) == 1
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and str(home / "gateway.toml") in err
    assert "# my edits" in (home / "gateway.toml").read_text()
    # --force rewrites the config but keeps the keys and the operator's policies
    assert main(["init", "--dir", str(home), "--force"]) == 0
    assert "# my edits" not in (home / "gateway.toml").read_text()
    assert KeyRing.load(home / "var" / "keys").active_kid == kid
    assert (home / "policies" / "web-1.yaml").read_text().endswith("# mine\n")


# --- grant ---------------------------------------------------------------------------------------------


def test_grant_prints_one_jwt_line(gw: Gw) -> None:
    rc, out, err = gw(
        "grant", "--user", "alice", "--target", "orders-db", "--scope", "read", "--ttl", "10m", "--reason", "INC-1234"
    )
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and JWT.match(lines[0]), out
    token = lines[0]
    ring = gw.ring()
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": ring.active_kid, "typ": "JWT"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["target"], claims["scope"], claims["reason"]) == (
        "alice",
        "orders-db",
        "read",
        "INC-1234",
    )
    assert claims["exp"] - claims["iat"] == 600
    assert abs(claims["iat"] - time.time()) < 30
    assert token not in err


def test_grant_json(gw: Gw) -> None:
    rc, out, err = gw(
        "grant",
        "--user",
        "bob",
        "--target",
        "web-1",
        "--scope",
        "shell",
        "--ttl",
        "5m",
        "--reason",
        "INC-9",
        "--max-sessions",
        "2",
        "--json",
    )
    assert rc == 0, err
    doc = json.loads(out)
    assert (doc["user"], doc["target"], doc["scope"]) == ("bob", "web-1", "shell")
    assert JWT.match(doc["token"]) and doc["grant"].startswith("g_")
    assert jwt.decode(doc["token"], options={"verify_signature": False})["max_sessions"] == 2


@pytest.mark.parametrize(
    ("scope", "ttl", "cap"),
    [("read", "2h", "1h"), ("read", "61m", "1h"), ("write", "31m", "30m"), ("admin", "1h", "15m")],
)
def test_grant_over_max_ttl_is_refused_with_exit_2(gw: Gw, scope: str, ttl: str, cap: str) -> None:
    rc, out, err = gw(
        "grant", "--user", "alice", "--target", "orders-db", "--scope", scope, "--ttl", ttl, "--reason", "INC-1"
    )
    assert rc == 2
    assert out == ""
    assert f"max_ttl {cap} for orders-db/{scope}" in err and f"ask for {cap} or less" in err
    assert gw.events() == []  # nothing issued, nothing audited


def test_grant_at_the_cap_is_accepted(gw: Gw) -> None:
    assert JWT.match(gw.grant(scope="admin", ttl="15m"))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--target", "billing-db", "--scope", "read", "--ttl", "5m"], "unknown target 'billing-db'"),
        (["--target", "orders-db", "--scope", "root", "--ttl", "5m"], "has no scope 'root'"),
        (["--target", "orders-db", "--scope", "read", "--ttl", "10x"], "invalid duration '10x'"),
        (["--target", "orders-db", "--scope", "read", "--ttl", "0s"], "more than zero"),
    ],
)
def test_grant_refusals(gw: Gw, args: list[str], words: str) -> None:
    rc, out, err = gw("grant", "--user", "alice", "--reason", "INC-1", *args)
    assert rc == 2 and out == "" and words in err


def test_break_glass_grant_is_audited_and_alerted(gw: Gw) -> None:
    token = gw.grant()
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    events = gw.events()
    assert [e.type for e in events] == ["grant.issued", "detection", "alert.break_glass"]
    issued, detection, alert = events
    assert (issued.grant, issued.severity, issued.data["break_glass"]) == (jti, "warning", True)
    assert issued.actor.startswith("cli")
    # a detection like the others (listed by `gateway detections`), its alert still of type break_glass
    assert (detection.data["rule"], detection.severity, detection.grant) == ("grant.break_glass", "critical", jti)
    assert detection.data["explanation"].startswith(f"break-glass grant {jti}: alice on orders-db/read for 10m")
    assert (alert.grant, alert.severity, alert.target) == (jti, "critical", "orders-db")
    assert alert.data["user"] == "alice" and "break-glass" in alert.data["summary"]
    assert alert.actor.startswith("cli") and alert.data["detection_seq"] == detection.seq
    assert token not in json.dumps([e.to_json() for e in events])
    lines = (gw.home / "var" / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["break_glass"]
    assert json.loads(lines[0])["audit_seq"] == alert.seq


# --- token verify ----------------------------------------------------------------------------------------


def test_token_verify_prints_claims(gw: Gw) -> None:
    token = gw.grant(ttl="10m")
    rc, out, err = gw("token", "verify", token)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["valid"] is True and doc["grant_state"] == "active" and doc["break_glass"] is True
    assert (doc["sub"], doc["target"], doc["scope"]) == ("alice", "orders-db", "read")
    assert 590 <= doc["expires_in"] <= 600


def test_token_verify_from_stdin(gw: Gw, monkeypatch: pytest.MonkeyPatch) -> None:
    token = gw.grant()
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    rc, out, _ = gw("token", "verify", "-")
    assert rc == 0 and json.loads(out)["sub"] == "alice"


def _reject(gw: Gw, token: str) -> str:
    rc, out, err = gw("token", "verify", token)
    assert rc != 0
    assert out == ""
    return err


def test_token_verify_tampered(gw: Gw) -> None:
    token = gw.grant()
    h, p, s = token.split(".")
    forged_payload = jwt.utils.base64url_encode(
        json.dumps({**jwt.decode(token, options={"verify_signature": False}), "scope": "admin"}).encode()
    ).decode()
    err = _reject(gw, f"{h}.{forged_payload}.{s}")
    assert "invalid token [signature]" in err and "claims to be 'alice' for 'orders-db'" in err
    flipped = s[:5] + ("A" if s[5] != "A" else "B") + s[6:]
    assert "invalid token [signature]" in _reject(gw, f"{h}.{p}.{flipped}")


def test_token_verify_expired(gw: Gw) -> None:
    now = int(time.time())
    token = gw.ring().issue(
        Claims(
            "alice", "g_old", "orders-db", "read", now - 7200, now - 7200, now - 3600, "INC-1", (), "gateway", "gateway"
        )
    )
    err = _reject(gw, token)
    assert "invalid token [expired]" in err and "expired at" in err


def test_token_verify_revoked(gw: Gw) -> None:
    token = gw.grant()
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]

    async def revoke() -> None:
        s = await gw.store().open()
        try:
            await s.revoke_grant(jti, by="carol", reason="incident closed", now=time.time())
        finally:
            await s.close()

    arun(revoke())
    err = _reject(gw, token)
    assert f"invalid token [revoked]: grant {jti} is revoked by carol: incident closed" in err


def test_token_verify_grant_expired_within_leeway(gw: Gw) -> None:
    """The token is still inside its 30 s leeway, but its grant's time is up: the code says `expired`."""
    now = int(time.time())
    claims = Claims(
        "alice", "g_just_expired", "orders-db", "read", now - 600, now - 600, now - 5, "x", (), "gateway", "gateway"
    )
    token = gw.ring().issue(claims)

    async def add() -> None:
        s = await gw.store().open()
        try:
            await s.add_grant(
                GrantRecord(claims.jti, "alice", "orders-db", "read", "x", (), now - 600, now - 600, now - 5)
            )
        finally:
            await s.close()

    arun(add())
    err = _reject(gw, token)
    assert "invalid token [expired]: grant g_just_expired is expired" in err


def test_token_verify_unknown_grant(gw: Gw) -> None:
    now = int(time.time())
    token = gw.ring().issue(
        Claims("alice", "g_not_in_store", "orders-db", "read", now, now, now + 600, "x", (), "gateway", "gateway")
    )
    assert "invalid token [unknown-grant]" in _reject(gw, token)


@pytest.mark.parametrize(("token", "code"), [("garbage", "malformed"), ("   ", "empty")])
def test_token_verify_garbage(gw: Gw, token: str, code: str) -> None:
    assert f"invalid token [{code}]" in _reject(gw, token)


def test_token_verify_from_another_gateway(gw: Gw, tmp_path: Path) -> None:
    other = KeyRing.load_or_create(tmp_path / "other")
    now = int(time.time())
    token = other.issue(Claims("alice", "g_1", "orders-db", "read", now, now, now + 60, "x", (), "gateway", "gateway"))
    assert "invalid token [unknown-key]" in _reject(gw, token)


# --- keys ----------------------------------------------------------------------------------------------


def test_keys_jwks_and_rotate(gw: Gw) -> None:
    before = gw.grant()
    old_kid = gw.ring().active_kid
    rc, out, _ = gw("keys", "jwks")
    assert rc == 0
    assert [k["kid"] for k in json.loads(out)["keys"]] == [old_kid]
    rc, out, _ = gw("keys", "rotate")
    assert rc == 0
    new_kid = gw.ring().active_kid
    assert new_kid != old_kid and f"new signing key {new_kid}; {old_kid} still verifies" in out
    rc, out, _ = gw("keys", "jwks")
    jwks = json.loads(out)
    assert sorted(k["kid"] for k in jwks["keys"]) == sorted([old_kid, new_kid])
    assert all("d" not in k for k in jwks["keys"])
    # a token from before the rotation still verifies; new ones carry the new kid
    assert gw("token", "verify", before)[0] == 0
    after = gw.grant()
    assert jwt.get_unverified_header(after)["kid"] == new_kid
    assert gw("token", "verify", after)[0] == 0
    # a verifier built from the printed JWKS accepts both
    verifier = KeyRing.from_jwks(jwks)
    assert verifier.public_key(old_kid) is not None and verifier.public_key(new_kid) is not None


# --- audit ---------------------------------------------------------------------------------------------


def test_audit_export_since(gw: Gw) -> None:
    gw.grant()
    gw.grant(user="bob")

    async def old_event() -> None:
        s = await gw.store().open()
        try:
            await s.append("test.old", ts=time.time() - 7200)
        finally:
            await s.close()

    arun(old_event())
    rc, out, err = gw("audit", "export", "--since", "1h")
    assert rc == 0, err
    lines = out.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["type"] for e in events] == ["grant.issued", "detection", "alert.break_glass"] * 2
    for e in events:
        assert set(e) == {
            "seq",
            "ts",
            "type",
            "actor",
            "session",
            "grant",
            "target",
            "severity",
            "data",
            "prev_hash",
            "hash",
            "node",
        }
        assert re.fullmatch(r"[0-9a-f]{64}", e["hash"])
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    # everything, and filtered by type
    rc, out, _ = gw("audit", "export", "--since", "3h")
    assert [json.loads(line)["type"] for line in out.splitlines()][-1] == "test.old"
    rc, out, _ = gw("audit", "export")
    assert len(out.splitlines()) == 7
    rc, out, _ = gw("audit", "export", "--type", "alert.break_glass", "--type", "test.old")
    assert [json.loads(line)["type"] for line in out.splitlines()] == [
        "alert.break_glass",
        "alert.break_glass",
        "test.old",
    ]


def test_audit_export_bad_since(gw: Gw) -> None:
    rc, out, err = gw("audit", "export", "--since", "yesterday")
    assert rc == 2 and out == "" and "invalid duration" in err


def test_audit_export_is_read_only(gw: Gw) -> None:
    gw.grant()
    side = gw.config.store_path.with_name("gateway.db.checkpoints")
    before = side.read_bytes()
    assert gw("audit", "export")[0] == 0
    assert side.read_bytes() == before


def test_audit_verify_after_cli_use(gw: Gw) -> None:
    gw.grant()
    gw("keys", "rotate")
    gw.grant(user="bob")
    rc, out, _ = gw("audit", "verify")
    assert rc == 0 and "audit chain intact: 6 events; last signed checkpoint at event #6 (" in out
    assert "every event is covered by a signature" in out


def test_audit_verify_says_what_the_signatures_do_not_cover(gw: Gw) -> None:
    """Events after the last signed checkpoint can be deleted with write access to the store, and verify
    still passes: the README and the output say so, with the count, instead of promising otherwise."""
    gw.grant()  # 3 events (the grant, its detection, its alert), signed at exit

    async def unsigned_events() -> None:
        s = await gw.store().open()
        for i in range(7):
            await s.append("test.unsigned", data={"i": i})
        await s.close(checkpoint=False)

    arun(unsigned_events())
    rc, out, _ = gw("audit", "verify")
    assert rc == 0, out
    line = out.splitlines()[0]
    assert re.fullmatch(
        r"audit chain intact: 10 events; last signed checkpoint at event #3 \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); "
        r"events after #3 \(7 of them\) are not covered by a signature \(deleting or rewriting them is not detected\); "
        r"0 recordings match their hashes",
        line,
    ), line
    # the limit, demonstrated: the unsigned tail cut off by someone with the file, and verify still passes
    import sqlite3

    with sqlite3.connect(gw.config.store_path) as db:
        db.executescript("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 5;")
    rc, out, _ = gw("audit", "verify")
    assert rc == 0 and "5 events; last signed checkpoint at event #3" in out and "(2 of them)" in out, out


# --- plumbing ------------------------------------------------------------------------------------------


def test_missing_config_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "nope.toml"), "keys", "jwks"]) == 2
    assert "file not found" in capsys.readouterr().err


def test_broken_config_is_exit_2_and_names_the_key(gw: Gw) -> None:
    (gw.home / "gateway.toml").write_text((gw.home / "gateway.toml").read_text().replace("leeway = 30", "leeway = 99"))
    rc, _, err = gw("audit", "verify")
    assert rc == 2 and "tokens.leeway" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert re.match(r"gateway \d+\.\d+", capsys.readouterr().out)
