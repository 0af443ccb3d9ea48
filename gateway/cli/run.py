"""`gateway run`: the gateway process."""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from gateway import workers
from gateway.app import App
from gateway.cli.common import CliError, Commands, config_from
from gateway.policy import PolicyError
from gateway.store import StoreError


def register(sub: Commands) -> None:
    """Add `run`."""
    p = sub.add_parser("run", help="run the gateway (SSH, Postgres and HTTP listeners)")
    p.add_argument("--only", action="append", choices=["postgres", "ssh", "http"], help="start only these listeners")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # set by the supervisor of `[listen] workers = N`
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("health", help="exit 0 when the gateway of this config answers /healthz (container checks)")
    p.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for the answer (default 4)")
    p.set_defaults(func=cmd_health)


async def cmd_run(args: argparse.Namespace) -> int:
    """Start everything and serve until interrupted."""
    config = config_from(args, need_secrets=True)
    ready: Callable[[], None] | None = None
    if args.worker:
        workers.die_with_parent()
        config = workers.worker_config(config, args.worker)
        ready = Path(json.loads(args.worker)["ready"]).touch
    elif config.workers > 1:
        try:
            return await workers.Supervisor(config, workers.worker_argv(config, args.only)).run()
        except (PolicyError, OSError, sqlite3.Error, StoreError) as exc:
            raise CliError(f"cannot start: {exc}") from None
    app = App(config, enable=tuple(args.only or ("postgres", "ssh", "http")))
    try:
        await app.serve_forever(ready=ready)
    except (PolicyError, OSError, sqlite3.Error, StoreError) as exc:
        raise CliError(f"cannot start: {exc}") from None
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """GET /healthz on the config's HTTP listener; one line, exit 0 (healthy) or 1."""
    import urllib.request

    addr = config_from(args).listen_http
    # A wildcard listen address is reached on loopback from inside the same host or container.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(addr.host, addr.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{addr.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            body = resp.read(200).decode("utf-8", "replace").strip()
    except OSError as exc:
        raise CliError(f"unhealthy: {url}: {getattr(exc, 'reason', exc)}") from None
    print(f"healthy: {url} {body}")
    return 0
