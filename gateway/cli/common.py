"""Shared CLI plumbing: errors, config and store loading, output formatting."""

from __future__ import annotations

import argparse
import getpass
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from gateway.config import Config, ConfigError, load_config, require_config_path
from gateway.control.caller import Caller
from gateway.durations import parse_duration
from gateway.policy import PolicyError
from gateway.review.sanitize import printable
from gateway.services import Services, build_services
from gateway.store import StoreError

CONFIG_HELP = "config file (default: $GATEWAY_CONFIG, else ./gateway.toml; `gateway init` writes one)"
SERVER_HELP = "gateway API URL (default: $GATEWAY_URL, else the one from `gateway login`)"


class _SubParsers(Protocol):
    """What argparse's ``add_subparsers()`` returns (its class is private)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


class Commands:
    """The sub-commands of a parser; a command group (``gateway token ...``) is made once and shared by the
    modules that add to it, so no module reaches into argparse's internals to find another's."""

    def __init__(self, subparsers: _SubParsers) -> None:
        self._subparsers = subparsers
        self._groups: dict[str, Commands] = {}

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """One command."""
        return self._subparsers.add_parser(name, **kwargs)

    def group(self, name: str, *, help: str, dest: str) -> Commands:
        """The command group `name` (made on first use), whose sub-command lands in `dest`."""
        if name not in self._groups:
            parser = self.add_parser(name, help=help)
            self._groups[name] = Commands(parser.add_subparsers(dest=dest, required=True))
        return self._groups[name]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code non-zero."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def config_from(args: argparse.Namespace, *, need_secrets: bool = False) -> Config:
    """Load the config the user pointed at; none at all is an error that says how to make one."""
    try:
        return load_config(require_config_path(getattr(args, "config", None)), need_secrets=need_secrets)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None


@asynccontextmanager
async def services_from(
    args: argparse.Namespace, *, need_secrets: bool = False, read_only: bool = False
) -> AsyncIterator[Services]:
    """Open the embedded services (keys, store, policies) for one command; writers sign a checkpoint at the end."""
    config = config_from(args, need_secrets=need_secrets)
    try:
        services = await build_services(config)
    except (PolicyError, ValueError) as exc:
        raise CliError(str(exc), 2) from None
    except StoreError as exc:
        raise CliError(str(exc), 2) from None
    except (sqlite3.Error, OSError) as exc:
        raise CliError(f"cannot open the store {config.store_path}: {exc}", 2) from None
    try:
        yield services
    finally:
        await services.store.close(checkpoint=not read_only)


def since_arg(text: str | None, now: float | None = None) -> float | None:
    """`--since 1h` -> an absolute timestamp."""
    if text is None:
        return None
    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None


def iso(ts: float | None) -> str:
    """A UTC timestamp for humans."""
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def say(text: object, *, err: bool = False) -> None:
    """Print one line that carries stored or requester-controlled text, with every escape made visible."""
    print(printable(text), file=sys.stderr if err else sys.stdout)


def print_json(obj: Any) -> None:
    """Pretty JSON on stdout (ASCII only: escapes, C1 controls and bidi overrides come out as \\uXXXX)."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table on stdout; every cell shown inert (stored text may carry terminal escapes)."""
    cells = [[printable(c) for c in headers], *[[printable(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def local_caller() -> Caller:
    """The operator running a command on the embedded store (break-glass grant, revoke, kill)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    # Whoever can open the store file already controls the gateway: treat them as an admin, audited as cli:NAME.
    return Caller(f"cli:{name}", admin=True, via="local")
