"""Admin commands: init, grant (break-glass), token verify, keys, audit verify/export."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.anchors.checkpoint import AnchorVerdict
from gateway.anchors.verify import AnchorSourceError, parse_anchors, read_source, verify_anchors
from gateway.cli.common import CliError, Commands, config_from, local_caller, print_json, say, services_from, since_arg
from gateway.cli.templates import EXAMPLE_POLICIES, config_template
from gateway.control.actions import break_glass
from gateway.control.errors import WorkflowError
from gateway.durations import parse_duration
from gateway.keyfiles import ensure_ssh_host_key, ensure_tls_cert
from gateway.policy import PolicyError
from gateway.recording.check import check_recording
from gateway.review.sanitize import MAX_FREE_TEXT, free_text_problem
from gateway.services import Services
from gateway.store import Store
from gateway.tokens import KeyRing, TokenError, unverified_claims, verify_token


def register(sub: Commands) -> None:
    """Add the admin commands."""
    p = sub.add_parser("init", help="write gateway.toml, keys and example policies into the current folder")
    p.add_argument("--dir", default=".", help="folder to write into (default: current)")
    p.add_argument("--force", action="store_true", help="overwrite an existing gateway.toml")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("grant", help="break-glass: issue a token now, without approval (audited, alerts)")
    p.add_argument("--user", required=True, help="the engineer (token subject)")
    p.add_argument("--target", required=True)
    p.add_argument("--scope", required=True)
    p.add_argument("--ttl", default="15m", help="lifetime, e.g. 30s, 10m, 1h (capped by policy max_ttl)")
    p.add_argument("--reason", required=True, help="ticket or incident id and why")
    p.add_argument("--max-sessions", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the grant as JSON, token included")
    p.set_defaults(func=cmd_grant)

    tok = sub.group("token", help="approval tokens", dest="token_cmd")
    p = tok.add_parser("verify", help="verify a token and print its claims, or why it is invalid")
    p.add_argument("token", help="the JWT, or - to read it from stdin")
    p.set_defaults(func=cmd_token_verify)

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="keys_cmd", required=True)
    keys.add_parser("jwks", help="print the public keys as JWKS").set_defaults(func=cmd_keys_jwks)
    keys.add_parser("rotate", help="make a new signing key; old keys still verify").set_defaults(func=cmd_keys_rotate)

    audit = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(dest="audit_cmd", required=True)
    p = audit.add_parser("verify", help="walk the chain; exit 1 and name the first bad record if broken")
    p.add_argument("--no-recordings", action="store_true", help="skip checking recordings against their hashes")
    p.add_argument(
        "--anchors",
        action="append",
        default=[],
        metavar="DIR_OR_URL",
        help="also prove the store extends every signed checkpoint found there (a copy kept off the host)",
    )
    p.set_defaults(func=cmd_audit_verify)
    p = audit.add_parser("export", help="events as JSON lines (for a SIEM)")
    p.add_argument("--since", help="only events newer than this, e.g. 1h, 7d")
    p.add_argument("--type", action="append", default=[], help="only this event type (repeatable)")
    p.set_defaults(func=cmd_audit_export)

    tgt = sub.add_parser("target", help="upstream targets").add_subparsers(dest="target_cmd", required=True)
    p = tgt.add_parser("check", help="log in as each login of a Postgres target; list what it can do beyond its scope")
    p.add_argument("target")
    p.set_defaults(func=cmd_target_check)


def cmd_init(args: argparse.Namespace) -> int:
    """Write a complete config, keys and example policies."""
    root = Path(args.dir).resolve()
    cfg = root / "gateway.toml"
    if cfg.exists() and not args.force:
        raise CliError(f"{cfg} exists; use --force to overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    cfg.write_text(config_template(), encoding="utf-8")
    config = config_from(argparse.Namespace(config=str(cfg)))
    ring = KeyRing.load_or_create(config.keys_dir)
    ensure_tls_cert(config.tls_cert, config.tls_key)
    ensure_ssh_host_key(config.ssh_host_key)
    config.policies_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in EXAMPLE_POLICIES.items():
        path = config.policies_dir / name
        if not path.exists():
            path.write_text(text, encoding="utf-8")
            written.append(path.name)
    config.recordings_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    print(f"wrote {cfg}")
    print(f"signing key {ring.active_kid} in {config.keys_dir}")
    print(f"TLS certificate {config.tls_cert}, SSH host key {config.ssh_host_key}")
    if written:
        print(f"example policies in {config.policies_dir}: {', '.join(written)}")
    print("next: gateway grant --user alice --target orders-db --scope read --ttl 10m --reason 'INC-1234'")
    return 0


async def cmd_grant(args: argparse.Namespace) -> int:
    """Issue a break-glass grant and print its token."""
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    # break_glass checks these too; here first, so that the error names the flag before the store is opened.
    for flag, value, limit in (("--reason", args.reason, MAX_FREE_TEXT), ("--user", args.user, 100)):
        problem = free_text_problem(value, limit=limit)
        if problem is not None:
            raise CliError(f"{flag} {problem}", 2)
    async with services_from(args) as svc:
        try:
            issued = await break_glass(
                svc.config,
                svc.ring,
                svc.store,
                svc.policies,
                svc.alerts,
                local_caller(),
                user=args.user,
                target=args.target,
                scope=args.scope,
                ttl=ttl,
                reason=args.reason,
                now=time.time(),
                max_sessions=args.max_sessions,
            )
        except WorkflowError as exc:
            raise CliError(exc.message, 2) from None
    g = issued.grant
    if args.json:
        print_json(
            {
                "grant": g.id,
                "user": g.user,
                "target": g.target,
                "scope": g.scope,
                "expires_at": g.expires_at,
                "token": issued.token,
            }
        )
    else:
        say(issued.token)
    return 0


async def cmd_token_verify(args: argparse.Namespace) -> int:
    """Verify a token against the keys and the store; print claims or the reason."""
    token = sys.stdin.readline() if args.token == "-" else args.token  # noqa: S105 - "-" means stdin
    async with services_from(args) as svc:
        cfg = svc.config
        try:
            claims = verify_token(token, svc.ring, issuer=cfg.issuer, audience=cfg.audience, leeway=cfg.leeway)
        except TokenError as exc:
            hint = unverified_claims(token.strip())
            who = f" (claims to be {hint.get('sub')!r} for {hint.get('target')!r})" if hint.get("sub") else ""
            raise CliError(f"invalid token [{exc.code}]: {exc.reason}{who}") from None
        grant = await svc.store.get_grant(claims.jti)
    if grant is None:
        raise CliError(f"invalid token [unknown-grant]: grant {claims.jti} is not in this gateway's store")
    if grant.state != "active" or grant.expires_at <= time.time():
        why = f"revoked by {grant.revoked_by}: {grant.revoke_reason}" if grant.state == "revoked" else "expired"
        code = "revoked" if grant.state == "revoked" else "expired"  # an 'active' row past its expiry is expired
        raise CliError(f"invalid token [{code}]: grant {grant.id} is {why}")
    out: dict[str, Any] = claims.to_jwt_claims()
    out["valid"] = True
    out["expires_in"] = int(claims.exp - time.time())
    out["grant_state"] = grant.state
    out["break_glass"] = grant.break_glass
    print_json(out)
    return 0


def cmd_keys_jwks(args: argparse.Namespace) -> int:
    """Print the JWKS."""
    config = config_from(args)
    print_json(KeyRing.load_or_create(config.keys_dir).jwks())
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Rotate the signing key."""
    config = config_from(args)
    ring = KeyRing.load_or_create(config.keys_dir)
    old = ring.active_kid
    new = ring.rotate()
    print(f"new signing key {new}; {old} still verifies until its file is removed from {config.keys_dir / 'signing'}")
    return 0


async def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify the chain, then every closed recording against the hash recorded at close."""
    # Read-only: verification must not add a checkpoint that would bless a tampered chain.
    async with services_from(args, read_only=True) as svc:
        verdict = await svc.store.verify()
        checked, problems = (0, []) if args.no_recordings else await _check_recordings(svc.store)
        anchored = await _check_anchors(svc, args.anchors) if verdict.ok and args.anchors else None
    matched = f"; {checked - len(problems)}{f' of {checked}' if problems else ''} recordings match their hashes"
    if args.no_recordings:
        matched = ""
    say(verdict.describe() + matched)
    for p in problems:
        say(f"recording problem: {p}")
    if anchored is not None:
        say(anchored.describe())
    return 0 if verdict.ok and not problems and (anchored is None or anchored.ok) else 1


async def _check_anchors(svc: Services, sources: list[str]) -> AnchorVerdict:
    """Every anchor in every source, verified with the gateway's keys, against the store's chain."""
    origin = svc.config.anchor_origin
    try:
        anchors = [a for where in sources for a in parse_anchors(await read_source(where), origin, svc.ring)]
    except AnchorSourceError as exc:
        return AnchorVerdict(False, 0, f"bad anchor: {exc}")
    return await verify_anchors(svc.store, anchors)


async def _check_recordings(store: Store) -> tuple[int, list[str]]:
    """How many closed recordings were checked, and what is wrong with them."""
    checked, problems = 0, []
    for ev in await store.events(types=["session.end"]):
        path, digest = ev.data.get("recording"), ev.data.get("recording_sha256")
        if path and digest:
            checked += 1
            problem = check_recording(Path(path), digest)
            if problem:
                problems.append(f"session {ev.session} (audit #{ev.seq}): {problem}")
    return checked, problems


async def cmd_audit_export(args: argparse.Namespace) -> int:
    """Events as JSON lines on stdout."""
    since = since_arg(args.since)
    async with services_from(args, read_only=True) as svc:
        events = await svc.store.events(since=since, types=args.type)
    for ev in events:
        # ASCII JSON: a reason's ESC, C1 CSI (U+009B) or bidi override arrives as \uXXXX, inert on a terminal,
        # and a SIEM parses back exactly the same values (so re-verifying the hashes still works).
        sys.stdout.write(json.dumps(ev.to_json(), sort_keys=True, ensure_ascii=True) + "\n")
    return 0


async def cmd_target_check(args: argparse.Namespace) -> int:
    """Report each login's rights beyond its scope with the SQL that revokes them; exit 1 on any finding."""
    from gateway.pg.targetcheck import check_target, count_findings, render, scope_modes
    from gateway.review.sanitize import neutralise
    from gateway.services import load_policies

    config = config_from(args, need_secrets=True)
    target = config.targets.get(args.target)
    if target is None or target.kind != "postgres":
        raise CliError(f"{args.target!r} is not a configured postgres target", 2)
    try:
        policies = load_policies(config)
    except PolicyError as exc:
        raise CliError(str(exc), 2) from None
    reports = await check_target(target, scope_modes(target, policies))
    print(neutralise(render(target.name, reports)))  # names come from the database: never raw to a terminal
    return 1 if count_findings(reports) else 0
