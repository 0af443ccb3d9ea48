"""`gateway demo`: throwaway PostgreSQL and sshd behind a gateway, one approved request, lines to paste."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli.common import CliError, Commands


def register(sub: Commands) -> None:
    """Add `demo`."""
    p = sub.add_parser(
        "demo",
        help="try it: throwaway PostgreSQL + sshd + gateway, two users, and the lines to paste",
        description="Start a throwaway PostgreSQL (sample 'orders' database) and OpenSSH server, the gateway in "
        "front of them and two users, alice (engineer) and bob (approver), and print the lines to paste, in "
        "order: log in, request, approve, connect with psql and ssh, revoke, review. "
        "Ctrl-C stops everything and removes the demo's folder. Run as root, the two OS accounts the servers run "
        "as (and a lock file) stay, because other demos and test runs share them; the demo says so at the end, "
        "with the command that removes them.",
    )
    p.add_argument("--ports-from", type=_port, metavar="N", help="listen on N (ssh), N+1 (postgres), N+2 (http)")
    p.add_argument("--ssh-port", type=_port, help="the gateway's SSH port (default 2222)")
    p.add_argument("--pg-port", type=_port, help="the gateway's Postgres port (default 6432)")
    p.add_argument("--http-port", type=_port, help="the gateway's HTTP API port (default 8080)")
    p.add_argument("--dir", type=Path, help="put the demo's files here (new or empty; removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the folder (config, audit, recordings) at the end")
    p.set_defaults(func=cmd_demo)


def _port(text: str) -> int:
    """A TCP port number from the command line."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


async def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo until Ctrl-C."""
    # Imported here: the demo pulls in every front end, which no other command needs.
    from gateway.demo import DemoOptions, run_demo

    base = args.ports_from
    if base is not None and base + 2 > 65535:
        raise CliError(f"--ports-from {base}: N+2 must be a port too", 2)
    ssh, pg, http = (base, base + 1, base + 2) if base is not None else (2222, 6432, 8080)
    opts = DemoOptions(
        ssh_port=args.ssh_port or ssh,
        pg_port=args.pg_port or pg,
        http_port=args.http_port or http,
        dir=args.dir,
        keep=args.keep,
    )
    return await run_demo(opts)
