"""Command line: thin; parses arguments, calls services, prints. Each command group lives in its own module."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from gateway import __version__
from gateway.cli import (
    admin,
    console,
    control,
    demo,
    detections,
    nodes,
    pipeline,
    policy,
    receipt,
    review,
    run,
    storecmd,
)
from gateway.cli.common import CONFIG_HELP, SERVER_HELP, CliError, Commands
from gateway.review.sanitize import printable

GROUPS = (admin, run, review, receipt, control, policy, pipeline, nodes, storecmd, demo, console, detections)


class _Parser(argparse.ArgumentParser):
    """A parser whose every command and sub-command also takes the global options.

    Users type `gateway run --config X` as often as `gateway --config X run`. Sub-command values default to
    SUPPRESS so that a sub-command that was not given the option does not overwrite the value given before it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
        self.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more")


# Global options and their values when given nowhere; those taking a value are skipped by _shorthands.
GLOBAL_DEFAULTS: dict[str, Any] = {"config": None, "verbose": False, "server": None}
_VALUED = ("--config", "--server")


def build_parser() -> argparse.ArgumentParser:
    """The `gateway` argument parser with every command group registered."""
    parser = _Parser(prog="gateway", description="Just-in-time access proxy for SSH and PostgreSQL.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    # --server is global too, but only the commands that call the API take it after their name.
    parser.add_argument("--server", default=argparse.SUPPRESS, help=SERVER_HELP)
    sub = Commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    for group in GROUPS:
        group.register(sub)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line; global options given nowhere get their defaults."""
    args = build_parser().parse_args(_shorthands(list(argv)))
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gateway` console script; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            result = _run_async(result)
        sys.stdout.flush()  # here, not at exit: a reader that left early is then caught below
        return int(result or 0)
    except CliError as exc:
        # Errors echo input and server messages (names, ids, reasons): shown inert like every stored value.
        print(f"gateway: {printable(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_left()


def _reader_left() -> int:
    """`gateway show S | head -3`: the reader closed the pipe; end quietly, as Unix tools do (128 + SIGPIPE)."""
    # Python flushes stdout once more at exit; point it at /dev/null so that flush cannot fail and print a traceback.
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _shorthands(argv: list[str]) -> list[str]:
    """`gateway token REQ` means `gateway token get REQ`, `gateway receipt SESSION` `gateway receipt show SESSION`."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # global options before the command
        i += 2 if argv[i] in _VALUED else 1
    for group, sub, named in (("token", "get", ("verify", "get")), ("receipt", "show", ("verify", "show"))):
        if argv[i : i + 1] == [group] and i + 1 < len(argv) and argv[i + 1] not in named:
            if not argv[i + 1].startswith("-"):
                argv.insert(i + 1, sub)
    return argv


def _run_async(coro: object) -> object:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
