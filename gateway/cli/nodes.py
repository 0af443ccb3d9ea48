"""`gateway nodes`: the replicas sharing this store, with heartbeat age and live sessions."""

from __future__ import annotations

import argparse
import time

from gateway.cli.common import Commands, say, services_from


def register(sub: Commands) -> None:
    """Add `nodes`."""
    p = sub.add_parser("nodes", help="replicas sharing this store: heartbeat age, live sessions, version")
    p.set_defaults(func=cmd_nodes)


async def cmd_nodes(args: argparse.Namespace) -> int:
    """One line per replica, most recent heartbeat first."""
    async with services_from(args, read_only=True) as svc:
        nodes = await svc.store.list_nodes()
    now = time.time()
    say(f"{'NODE':<24} {'STATE':<8} {'HEARTBEAT':>10} {'SESSIONS':>8}  VERSION")
    for n in nodes:
        say(f"{n.id:<24} {n.state:<8} {now - n.heartbeat_at:>9.1f}s {n.live_sessions:>8}  {n.version}")
    if not nodes:
        say("no replica has heartbeat yet (replicas heartbeat while `gateway run` runs)")
    return 0
