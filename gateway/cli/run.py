"""`gateway run`: the gateway process."""

from __future__ import annotations

import argparse

from gateway.app import App
from gateway.cli.common import CliError, config_from
from gateway.policy import PolicyError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `run`."""
    p = sub.add_parser("run", help="run the gateway (SSH, Postgres and HTTP listeners)")
    p.add_argument("--only", action="append", choices=["postgres", "ssh", "http"], help="start only these listeners")
    p.set_defaults(func=cmd_run)


async def cmd_run(args: argparse.Namespace) -> int:
    """Start everything and serve until interrupted."""
    config = config_from(args, need_secrets=True)
    app = App(config, enable=tuple(args.only or ("postgres", "ssh", "http")))
    try:
        await app.serve_forever()
    except (PolicyError, OSError) as exc:
        raise CliError(f"cannot start: {exc}") from None
    return 0
