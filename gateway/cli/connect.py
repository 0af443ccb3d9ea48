"""`gateway ssh` and `gateway psql`: fetch the token of your live grant and run the real client with it.

The token never goes into argv (any local user can read argv in /proc): psql gets it as PGPASSWORD, ssh through
SSH_ASKPASS, a tiny script that prints an environment variable; both are readable only by you.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from gateway.cli.client import ApiClient, client_from
from gateway.cli.common import CliError, Commands
from gateway.durations import format_duration

TOKEN_ENV = "GATEWAY_TOKEN"  # noqa: S105 - the name of the variable, not a secret
# Answers ssh's token prompt from the environment; the token is never in a file or argv.
_ASKPASS = "#!/bin/sh\nprintf '%s\\n' \"$GATEWAY_TOKEN\"\n"
GRANT_HELP = "the grant to use: a grant id, or the request id `gateway request` printed (default: your newest live one)"


def register(sub: Commands, server: argparse.ArgumentParser) -> None:
    """Add `ssh` and `psql`."""
    p = sub.add_parser("ssh", parents=[server], help="ssh to a target with the token of your live grant")
    p.add_argument("target")
    p.add_argument("--login", help="upstream login (default: the one mapped from the grant's scope)")
    p.add_argument("--host", help="gateway SSH host (default: the --server host)")
    p.add_argument("--port", type=int, help="gateway SSH port (default: from the server)")
    p.add_argument("--grant", metavar="ID", help=GRANT_HELP)
    p.add_argument("args", nargs=argparse.REMAINDER, help="extra ssh arguments or a command, after --")
    p.set_defaults(func=cmd_ssh)

    p = sub.add_parser("psql", parents=[server], help="psql to a target with the token of your live grant")
    p.add_argument("target")
    p.add_argument("--host", help="gateway Postgres host (default: the --server host)")
    p.add_argument("--port", type=int, help="gateway Postgres port (default: from the server)")
    p.add_argument("--grant", metavar="ID", help=GRANT_HELP)
    p.add_argument("args", nargs=argparse.REMAINDER, help="extra psql arguments, after --")
    p.set_defaults(func=cmd_psql)


def live_grants(client: ApiClient, user: str, target: str, now: float) -> list[dict[str, Any]]:
    """Your grants on `target` usable right now, newest first.

    Newest, not longest-lived: the grant just approved is the one the user means (and the one whose revocation
    must end the session), even when an older one runs longer.
    """
    rows = client.call("GET", "/v1/grants", query={"state": "active", "target": target, "user": user})["grants"]
    usable = [
        g for g in rows if g["user"] == user and g["target"] == target and g["not_before"] <= now < g["expires_at"]
    ]
    return sorted(usable, key=lambda g: (g["issued_at"], g["not_before"]), reverse=True)


def pick_grant(client: ApiClient, usable: list[dict[str, Any]], target: str, chosen: str | None) -> dict[str, Any]:
    """`chosen` (a grant id or request id) among the usable grants, else the newest; a CliError saying what to do."""
    if chosen is not None:
        wanted = _grant_of(client, chosen)
        for g in usable:
            if g["id"] == wanted:
                return g
        raise CliError(f"{wanted} is not a live grant of yours on {target} (see: gateway grants --target {target})")
    if not usable:
        raise CliError(
            f"you have no live grant on {target}: gateway request {target} --scope SCOPE --for 15m --reason '...'"
        )
    return usable[0]


def _grant_of(client: ApiClient, ident: str) -> str:
    """A grant id, or the grant of a request id (r_...: what `gateway request` printed)."""
    if not ident.startswith("r_"):
        return ident
    req = client.call("GET", f"/v1/requests/{_path_id(ident)}")
    if not req.get("grant"):
        raise CliError(f"request {ident} has no grant (it is {req.get('state', 'unknown')})")
    return str(req["grant"])


def _path_id(value: str) -> str:
    # Ids go into URL paths: refuse anything that could walk to another route.
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", value):
        raise CliError(f"not an id: {value!r}", 2)
    return value


def _say_which(grant: dict[str, Any], live: int, chosen: bool, now: float) -> None:
    """Before connecting, on stderr: which grant, its scope and time left (so a revocation can name it)."""
    left = format_duration(grant["expires_at"] - now)
    others = f"; newest of {live} live grants, --grant ID picks another" if live > 1 and not chosen else ""
    print(
        f"gateway: using grant {grant['id']} ({grant['target']}/{grant['scope']}, {left} left{others})",
        file=sys.stderr,
        flush=True,
    )


def _prepare(args: argparse.Namespace, kind: str) -> tuple[dict[str, Any], str, str, int, str, dict[str, Any]]:
    _own_options(args, kind)
    client = client_from(args.server)
    me = client.call("GET", "/v1/whoami")["user"]
    info = client.call("GET", "/v1/info")
    if info["targets"].get(args.target) != kind:
        raise CliError(f"{args.target!r} is not a {kind} target (targets: {', '.join(info['targets']) or 'none'})")
    now = time.time()
    usable = live_grants(client, me, args.target, now)
    grant = pick_grant(client, usable, args.target, args.grant)
    token = client.call("GET", f"/v1/grants/{grant['id']}/token")["token"]
    _say_which(grant, len(usable), args.grant is not None, now)
    listen = info["ssh" if kind == "ssh" else "postgres"]
    host = args.host or urllib.parse.urlsplit(client.server).hostname or listen["host"]
    return grant, me, host, int(args.port or listen["port"]), token, info


def _own_options(args: argparse.Namespace, kind: str) -> None:
    """Take back our options typed after the target (`gateway ssh web-1 --grant ID -- uptime`): argparse's
    REMAINDER hands everything after the target to the client, which would fail on them."""
    names = {"--grant", "--host", "--port", "--server", *(["--login"] if kind == "ssh" else [])}
    rest = list(args.args)
    while rest and rest[0] != "--":
        name, eq, value = rest[0].partition("=")
        if name not in names:
            break
        if not eq:
            if len(rest) < 2:
                raise CliError(f"{name} needs a value", 2)
            value = rest[1]
        rest = rest[1:] if eq else rest[2:]
        if name == "--port" and not value.isdigit():
            raise CliError(f"--port: not a port number: {value!r}", 2)
        setattr(args, name[2:], int(value) if name == "--port" else value)
    args.args = rest


def _extra(args: argparse.Namespace) -> list[str]:
    rest = list(args.args)
    return rest[1:] if rest[:1] == ["--"] else rest


def _run(argv: list[str], env: dict[str, str]) -> int:
    if shutil.which(argv[0]) is None:
        raise CliError(f"{argv[0]} is not installed or not on PATH")
    # The child owns the terminal: Ctrl-C goes to it, not to us.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.call(argv, env=env)
    finally:
        signal.signal(signal.SIGINT, old)


def cmd_psql(args: argparse.Namespace) -> int:
    """Run psql as you, against the target, with the token as PGPASSWORD."""
    _, me, host, port, token, info = _prepare(args, "postgres")
    sslmode = "require" if info.get("pg_require_tls", True) else "prefer"
    conninfo = f"host={host} port={port} user={_quote(me)} dbname={_quote(args.target)} sslmode={sslmode}"
    env = {**os.environ, "PGPASSWORD": token}
    env.pop("PGSERVICE", None)  # a service file could redirect the connection elsewhere with our token
    return _run(["psql", conninfo, *_extra(args)], env)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cmd_ssh(args: argparse.Namespace) -> int:
    """Run ssh with the token answered by SSH_ASKPASS and the gateway's host key pinned."""
    _, _, host, port, token, info = _prepare(args, "ssh")
    host_key = info["ssh"].get("host_key", "")
    with tempfile.TemporaryDirectory(prefix="gateway-ssh-") as tmp:
        askpass = Path(tmp) / "askpass"
        fd = os.open(askpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, "w") as f:
            f.write(_ASKPASS)
        known = Path(tmp) / "known_hosts"
        known.write_text(f"[{host}]:{port} {host_key}\n" if host_key else "", encoding="utf-8")
        user = f"{args.login}@{args.target}" if args.login else args.target
        argv = [
            "ssh",
            "-p",
            str(port),
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes" if host_key else "StrictHostKeyChecking=ask",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=keyboard-interactive,password",
            "-o",
            "NumberOfPasswordPrompts=1",
            "-l",
            user,
            host,
            *_extra(args),
        ]
        env = {**os.environ, TOKEN_ENV: token, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
        env.setdefault("DISPLAY", ":0")  # OpenSSH before 8.4 uses askpass only with a DISPLAY
        return _run(argv, env)
