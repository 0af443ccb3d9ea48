"""`gateway console-link USER`: a one-time, short-lived sign-in link to the web console."""

from __future__ import annotations

import argparse
import time

from gateway.cli.common import CliError, Commands, config_from
from gateway.config import Config
from gateway.tokens import KeyRing
from gateway.web.links import LINK_TTL, sign_in_link


def register(sub: Commands) -> None:
    """Add console-link."""
    p = sub.add_parser("console-link", help="print a one-time sign-in link to the web console for USER")
    p.add_argument("user", help="a user of the [users] table")
    p.add_argument("--base", help="the console's URL as browsers reach it (default: the HTTP listen address)")
    p.set_defaults(func=cmd_console_link)


def console_link(config: Config, user: str, *, base: str | None = None, now: float | None = None) -> str:
    """The sign-in link for `user` (valid LINK_TTL seconds, once); raises CliError for an unknown user."""
    if user not in config.users:
        raise CliError(f"no user {user!r} in the [users] table of the config", 2)
    ring = KeyRing.load_or_create(config.keys_dir)
    return sign_in_link(ring, config, user, now=time.time() if now is None else now, base=base)


def cmd_console_link(args: argparse.Namespace) -> int:
    """Print the link; it works once, for LINK_TTL seconds."""
    print(console_link(config_from(args), args.user, base=args.base))
    print(f"(works once, for {int(LINK_TTL // 60)} minutes)")
    return 0
