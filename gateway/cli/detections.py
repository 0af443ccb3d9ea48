"""`gateway detections`: what the detector flagged, newest last, filtered by user and rule."""

from __future__ import annotations

import argparse
import json
import sys

from gateway.cli.common import Commands, iso, services_from, since_arg
from gateway.review.detections import detections
from gateway.review.sanitize import printable


def register(sub: Commands) -> None:
    """Add the `detections` command."""
    p = sub.add_parser("detections", help="list detections (rule, severity, explanation, session)")
    p.add_argument("--since", default="7d", help="only detections newer than this, e.g. 1h, 7d (default 7d)")
    p.add_argument("--user", help="only this user's")
    p.add_argument("--rule", action="append", default=[], help="only this rule id (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(func=cmd_detections)


async def cmd_detections(args: argparse.Namespace) -> int:
    """Print the matching `detection` audit events."""
    since = since_arg(args.since)
    async with services_from(args, read_only=True) as svc:
        events = await detections(svc.store, since=since, user=args.user, rules=args.rule)
    for ev in events:
        d = ev.data
        if args.json:
            row = {"ts": ev.ts, "seq": ev.seq, **d}
            sys.stdout.write(json.dumps(row, sort_keys=True, ensure_ascii=True) + "\n")
            continue
        where = d.get("session") or d.get("request") or "-"
        if d.get("offset") is not None:
            where += f"+{d['offset']:.0f}s"
        cells = (iso(ev.ts), ev.severity, d.get("rule"), where, d.get("explanation"))
        print("  ".join(printable(c) for c in cells))
    return 0
