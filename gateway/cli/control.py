"""Control-plane commands: login, request, requests, approve, deny, cancel, token get, grants, revoke, kill,
ssh, psql, users add (policy check and diff: gateway.cli.policy)."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
import time

from gateway.cli import connect
from gateway.cli.client import ApiClient, check_server_url, client_from, save_credentials, server_from
from gateway.cli.common import (
    SERVER_HELP,
    CliError,
    Commands,
    iso,
    local_caller,
    print_json,
    print_table,
    say,
    services_from,
)
from gateway.control.actions import default_kill_reason, kill_session, revoke_grant
from gateway.control.apikeys import hash_api_key, new_api_key
from gateway.control.errors import WorkflowError
from gateway.durations import format_duration, parse_duration


def register(sub: Commands) -> None:
    """Add the control-plane commands."""
    server = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: `gateway --server URL request ...` keeps the URL given before the command.
    server.add_argument("--server", default=argparse.SUPPRESS, help=SERVER_HELP)

    p = sub.add_parser("login", help="save the server URL and your API key (0600) for the other commands")
    p.add_argument("--server", required=True, help="gateway API URL, e.g. http://gateway:8080")
    p.add_argument("--key", help="your API key (default: read from stdin, or prompt); - reads stdin")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("whoami", parents=[server], help="who the gateway thinks you are")
    p.set_defaults(func=cmd_whoami)

    p = sub.add_parser("request", parents=[server], help="ask for access; prints the request id")
    p.add_argument("target")
    p.add_argument("--scope", required=True)
    p.add_argument("--for", dest="ttl", required=True, help="how long, e.g. 15m, 1h (capped by policy)")
    p.add_argument("--reason", required=True, help="ticket or incident id and why")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("requests", parents=[server], help="list access requests you may see")
    p.add_argument("--pending", action="store_true", help="only requests waiting for approval")
    p.add_argument("--state", choices=["pending", "approved", "denied", "cancelled", "expired"])
    p.add_argument("--target")
    p.add_argument("--mine", action="store_true", help="only your own requests")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_requests)

    for name, verb in (("approve", "approve"), ("deny", "deny"), ("cancel", "cancel")):
        p = sub.add_parser(name, parents=[server], help=f"{verb} an access request")
        p.add_argument("request")
        p.add_argument("--comment", default="")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_decide, verb=verb)

    # `gateway token verify` lives in the admin group; fetching sits next to it as `gateway token get REQ`.
    token_group = sub.group("token", help="approval tokens", dest="token_cmd")
    p = token_group.add_parser("get", parents=[server], help="print the token of your approved request (or grant)")
    p.add_argument("id", help="request id (r_...) or grant id (g_...)")
    p.set_defaults(func=cmd_token_get)

    p = sub.add_parser("grants", parents=[server], help="list grants (yours; admins: everyone's)")
    p.add_argument("--state", choices=["active", "revoked", "expired"])
    p.add_argument("--target")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_grants)

    p = sub.add_parser("revoke", parents=[server], help="revoke a grant: ends its live sessions within 1 s")
    p.add_argument("grant", help="grant id (g_...), or the request id (r_...) whose grant to revoke")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("kill", parents=[server], help="end one live session")
    p.add_argument("session")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_kill)

    connect.register(sub, server)

    users = sub.add_parser("users", help="control-plane users").add_subparsers(dest="users_cmd", required=True)
    p = users.add_parser("add", help="make an API key; prints it once and the TOML lines to paste")
    p.add_argument("name")
    p.add_argument("--group", action="append", default=[], help="group (repeatable)")
    p.set_defaults(func=cmd_users_add)


# --- login -----------------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    """Check the key against the server, then save both."""
    server = check_server_url(args.server)
    key = args.key
    if key in (None, "-"):
        key = sys.stdin.readline().strip() if (key == "-" or not sys.stdin.isatty()) else getpass.getpass("API key: ")
    if not key:
        raise CliError("no API key given", 2)
    me = ApiClient(server, key).call("GET", "/v1/whoami")
    path = save_credentials(server, key)
    groups = ", ".join(me.get("groups", [])) or "no groups"
    say(f"logged in to {server} as {me['user']} ({groups}); credentials in {path}")
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    """Print the caller."""
    me = client_from(args.server).call("GET", "/v1/whoami")
    say(f"{me['user']} ({', '.join(me['groups']) or 'no groups'}){' admin' if me['admin'] else ''} via {me['via']}")
    return 0


# --- requests --------------------------------------------------------------------------------------


def cmd_request(args: argparse.Namespace) -> int:
    """Create a request and print its id (stdout) and what happens next (stderr)."""
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    body = {"target": args.target, "scope": args.scope, "ttl": ttl, "reason": args.reason}
    req = client_from(args.server).call("POST", "/v1/requests", body)
    if args.json:
        print_json(req)
        return 0
    say(req["id"])
    if req["state"] == "approved":
        say(f"auto-approved by policy; get the token with: gateway token get {req['id']}", err=True)
    else:
        say(f"waiting for {req['approvals_needed']} approval(s): gateway approve {req['id']}", err=True)
    return 0


def cmd_requests(args: argparse.Namespace) -> int:
    """List requests."""
    query = {"pending": args.pending, "state": args.state, "target": args.target, "mine": args.mine}
    rows = client_from(args.server).call("GET", "/v1/requests", query=query)["requests"]
    if args.json:
        print_json(rows)
        return 0
    print_table(
        ["ID", "REQUESTER", "TARGET", "SCOPE", "FOR", "STATE", "APPROVALS", "CREATED", "REASON"],
        [
            [
                r["id"],
                r["requester"],
                r["target"],
                r["scope"],
                format_duration(r["ttl"]),
                r["state"],
                f"{len(r['approvals'])}/{r['approvals_needed']}",
                iso(r["created_at"]),
                r["reason"],
            ]
            for r in rows
        ],
    )
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    """Approve, deny or cancel."""
    req = client_from(args.server).call(
        "POST", f"/v1/requests/{_id(args.request)}/{args.verb}", {"comment": args.comment}
    )
    if args.json:
        print_json(req)
        return 0
    extra = ""
    if req["state"] == "pending":
        extra = f" ({len(req['approvals'])}/{req['approvals_needed']} approvals)"
    elif req["state"] == "approved":
        extra = f" (grant {req['grant']})"
    say(f"request {req['id']}: {req['state']}{extra}")
    return 0


def cmd_token_get(args: argparse.Namespace) -> int:
    """Print the JWT (stdout only, so `TOKEN=$(gateway token get REQ)` works)."""
    ident = _id(args.id)
    path = f"/v1/grants/{ident}/token" if ident.startswith("g_") else f"/v1/requests/{ident}/token"
    say(client_from(args.server).call("GET", path)["token"])
    return 0


def cmd_grants(args: argparse.Namespace) -> int:
    """List grants."""
    rows = client_from(args.server).call("GET", "/v1/grants", query={"state": args.state, "target": args.target})
    rows = rows["grants"]
    if args.json:
        print_json(rows)
        return 0
    print_table(
        ["ID", "USER", "TARGET", "SCOPE", "STATE", "EXPIRES", "APPROVERS", "REASON"],
        [
            [
                g["id"],
                g["user"],
                g["target"],
                g["scope"],
                g["state"] + (" (break-glass)" if g["break_glass"] else ""),
                iso(g["expires_at"]),
                ", ".join(g["approvers"]) or "-",
                g["reason"],
            ]
            for g in rows
        ],
    )
    return 0


def _id(value: str) -> str:
    # Ids go into URL paths: refuse anything that could walk to another route.
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", value):
        raise CliError(f"not an id: {value!r}", 2)
    return value


# --- revoke and kill: through the API, or on the embedded store when no server is configured ---------


async def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke a grant."""
    if server_from(args.server):
        client = client_from(args.server)
        gid = _id(args.grant)
        if gid.startswith("r_"):  # the request id `gateway request` printed: revoke the grant it produced
            gid = _id(str(client.call("GET", f"/v1/requests/{gid}").get("grant") or gid))
        out = client.call("POST", f"/v1/grants/{gid}/revoke", {"reason": args.reason})
        say(f"grant {out['id']} revoked; {out['sessions_ended']} live session(s) ended here, the rest within 1 s")
        return 0
    async with services_from(args) as svc:
        gid = args.grant
        if gid.startswith("r_"):
            req = await svc.store.get_request(gid)
            gid = req.grant_id if req is not None and req.grant_id else gid
        try:
            g, _ = await revoke_grant(
                svc.store, None, svc.alerts, local_caller(), gid, reason=args.reason, now=time.time()
            )
        except WorkflowError as exc:
            raise CliError(exc.message) from None
    say(f"grant {g.id} revoked in the store; the running gateway ends its sessions within 1 s")
    return 0


async def cmd_kill(args: argparse.Namespace) -> int:
    """End one session."""
    if server_from(args.server):
        body = {"reason": args.reason} if args.reason else {}
        out = client_from(args.server).call("POST", f"/v1/sessions/{_id(args.session)}/kill", body)
        say(f"session {out['id']}: kill {'done' if out['killed_here'] else 'requested; it ends within 1 s'}")
        return 0
    who = local_caller()
    async with services_from(args) as svc:
        try:
            reason = args.reason or default_kill_reason(who)
            s, _ = await kill_session(svc.store, None, who, args.session, reason=reason)
        except WorkflowError as exc:
            raise CliError(exc.message) from None
    say(f"session {s.id}: kill requested; the running gateway ends it within 1 s")
    return 0


# --- users and policies (local: read the config and policy files) ----------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_users_add(args: argparse.Namespace) -> int:
    """Print a new API key and the config lines holding its hash."""
    name = args.name
    if not re.fullmatch(r"[A-Za-z0-9_.@+-]{1,100}", name):
        raise CliError("user names are letters, digits and _ . @ + - (at most 100)", 2)
    key = new_api_key()
    table = name if _BARE_KEY.fullmatch(name) else _toml_str(name)
    groups = ", ".join(_toml_str(g) for g in sorted(set(args.group)))
    print(f"API key for {name} (shown once; only its hash goes into the config):", file=sys.stderr)
    print(key)
    print("\nadd to gateway.toml (then restart the gateway):", file=sys.stderr)
    print(f'[users.{table}]\napi_key_sha256 = "{hash_api_key(key)}"\ngroups = [{groups}]')
    print(f"\nthe user then runs: gateway login --server URL --key {key[:6]}...", file=sys.stderr)
    return 0
