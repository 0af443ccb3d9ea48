"""`gateway exchange`: a pipeline trades its CI system's OIDC token for a grant token (printed on stdout)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from gateway.cli.client import ApiCallError, ApiClient, server_from
from gateway.cli.common import SERVER_HELP, CliError, Commands, print_json, say
from gateway.durations import parse_duration

TOKEN_ENVS = ("GATEWAY_OIDC_TOKEN", "ACTIONS_ID_TOKEN")
# GitHub Actions (permissions: id-token: write) gives a job these two instead of a token: it asks for one.
GITHUB_URL_ENV, GITHUB_BEARER_ENV = "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"


def register(sub: Commands) -> None:
    """Add `gateway exchange`."""
    p = sub.add_parser("exchange", help="trade a pipeline's OIDC token for a grant token (prints it)")
    p.add_argument("--server", default=argparse.SUPPRESS, help=SERVER_HELP)
    p.add_argument("--target", required=True)
    p.add_argument("--scope", required=True)
    p.add_argument("--for", dest="ttl", help="how long (default: the matching rule's max_ttl)")
    p.add_argument("--token-file", help="read the OIDC token from this file")
    p.add_argument(
        "--token-env",
        help=f"read the OIDC token from this variable (default: {' or '.join(TOKEN_ENVS)}, else GitHub's "
        f"{GITHUB_URL_ENV})",
    )
    p.add_argument("--audience", help="the audience to ask GitHub's token endpoint for (the gateway's [workloads])")
    p.add_argument("--wait", default="30m", help="how long to wait for an approver when the rule needs one")
    p.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    p.set_defaults(func=cmd_exchange)


def read_oidc_token(args: argparse.Namespace) -> str:
    """The pipeline's OIDC token: --token-file, --token-env, the usual variables, or GitHub's token endpoint."""
    if args.token_file:
        try:
            return Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(f"cannot read --token-file {args.token_file}: {exc.strerror}", 2) from None
    names = (args.token_env,) if args.token_env else TOKEN_ENVS
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    if args.token_env:
        raise CliError(f"${args.token_env} is empty or not set", 2)
    url, bearer = os.environ.get(GITHUB_URL_ENV), os.environ.get(GITHUB_BEARER_ENV)
    if url and bearer:
        return _github_token(url, bearer, args.audience)
    raise CliError(
        f"no OIDC token: set {' or '.join(TOKEN_ENVS)}, pass --token-file, or run in GitHub Actions with "
        "`permissions: id-token: write`",
        2,
    )


def _github_token(url: str, bearer: str, audience: str | None) -> str:
    if audience:
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"audience": audience})
    if not url.startswith(("https://", "http://")):
        raise CliError(f"${GITHUB_URL_ENV} is not an http(s) URL", 2)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {bearer}"})  # noqa: S310 - scheme checked
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310
            value = json.loads(resp.read()).get("value")
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
        raise CliError(f"cannot get an OIDC token from GitHub's token endpoint: {type(exc).__name__}") from None
    if not isinstance(value, str) or not value:
        raise CliError("GitHub's token endpoint answered without a token")
    return value


def cmd_exchange(args: argparse.Namespace) -> int:
    """Exchange, waiting for an approver if the rule needs one; the grant token goes to stdout."""
    server = server_from(getattr(args, "server", None))
    if server is None:
        raise CliError("no gateway server: pass --server URL or set GATEWAY_URL", 2)
    client = ApiClient(server, None)
    try:
        wait = parse_duration(args.wait)
        body: dict[str, Any] = {"target": args.target, "scope": args.scope}
        if args.ttl:
            body["ttl"] = args.ttl
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    deadline = time.monotonic() + wait
    out = _call(client, {**body, "subject_token": read_oidc_token(args)})
    if "request" in out and "access_token" not in out:
        say(f"waiting for an approver: gateway approve {out['request']} (up to {args.wait})", err=True)
    while "access_token" not in out:
        if time.monotonic() >= deadline:
            raise CliError(f"request {out['request']} is still pending after {args.wait}; nothing was granted")
        time.sleep(args.poll)
        out = _call(client, {**body, "subject_token": read_oidc_token(args), "request": out["request"]})
    if args.json:
        print_json(out)
    else:
        print(out["access_token"])
        say(f"grant {out['grant']} for {out['subject']} on {out['target']}/{out['scope']}", err=True)
    sys.stdout.flush()
    return 0


def _call(client: ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    try:
        out = client.call("POST", "/v1/grants/exchange", body)
    except ApiCallError as exc:
        raise CliError(f"exchange refused: {exc}", 1) from None
    if not isinstance(out, dict):
        raise CliError("the gateway's exchange answer is not an object")
    return out
