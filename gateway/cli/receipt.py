"""`gateway receipt SESSION` prints a session's signed termination receipt; `gateway receipt verify FILE` checks one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import CliError, Commands, config_from, print_json, say, services_from
from gateway.cli.review import _find_session
from gateway.receipts import ReceiptError, describe, stored_receipt, verify_receipt
from gateway.tokens import KeyRing


def register(sub: Commands) -> None:
    """Add `gateway receipt show|verify` (`gateway receipt SESSION` means show)."""
    group = sub.add_parser("receipt", help="signed termination receipts of ended sessions")
    cmds = group.add_subparsers(dest="receipt_cmd", required=True)
    p = cmds.add_parser("show", help="print a session's receipt (a JWS to attach to a ticket)")
    p.add_argument("session", help="session id (or a 6+ character prefix), or a grant or request id")
    p.add_argument("--json", action="store_true", help="print the verified claims as JSON instead")
    p.set_defaults(func=cmd_receipt_show)
    p = cmds.add_parser("verify", help="check a receipt offline; exit 1 if altered or not this gateway's")
    p.add_argument("file", help="the receipt (the JWS, or the API's JSON answer); - reads stdin")
    p.add_argument("--jwks", help="the gateway's public keys (`gateway keys jwks` output); default: the config's keys")
    p.add_argument("--json", action="store_true", help="print the verified claims as JSON")
    p.set_defaults(func=cmd_receipt_verify)


async def cmd_receipt_show(args: argparse.Namespace) -> int:
    """Print the receipt of an ended session."""
    async with services_from(args, read_only=True) as svc:
        s = await _find_session(svc.store, args.session)
        if s.ended_at is None:
            raise CliError(f"session {s.id} is live; its receipt is issued when it ends")
        jws = await stored_receipt(svc.store, s.id)
        if jws is None:
            raise CliError(f"session {s.id} has no receipt (it ended before receipts were issued, or signing failed)")
        claims = verify_receipt(jws, svc.ring)
    if args.json:
        print_json(claims)
    else:
        print(jws)
        say(describe(claims), err=True)
    return 0


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    """Verify offline with a JWKS file (or the local config's keys); nothing is contacted."""
    text = _read(args.file)
    ring = _ring(args)
    try:
        claims = verify_receipt(_jws_of(text), ring)
    except ReceiptError as exc:
        say(f"receipt INVALID: {exc}")
        return 1
    if args.json:
        print_json(claims)
    else:
        say(f"receipt valid: {describe(claims)}")
    return 0


def _read(where: str) -> str:
    try:
        return sys.stdin.read() if where == "-" else Path(where).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {where}: {exc}", 2) from None


def _jws_of(text: str) -> str:
    """A bare JWS, or the `receipt` field of the API's answer."""
    text = text.strip()
    if text.startswith("{"):
        try:
            doc: Any = json.loads(text)
        except ValueError:
            raise CliError("the file is neither a JWS nor JSON", 2) from None
        if isinstance(doc, dict) and isinstance(doc.get("receipt"), str):
            return str(doc["receipt"])
        raise CliError('the JSON has no "receipt" string', 2)
    return text


def _ring(args: argparse.Namespace) -> KeyRing:
    if args.jwks:
        try:
            doc = json.loads(Path(args.jwks).read_text(encoding="utf-8"))
            return KeyRing.from_jwks(doc)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CliError(f"--jwks {args.jwks}: not a JWKS document ({type(exc).__name__})", 2) from None
    config = config_from(args)
    return KeyRing.load(config.keys_dir)
