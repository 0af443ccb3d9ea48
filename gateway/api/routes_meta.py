"""Health, JWKS, metrics, and what the caller is and may request."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import workermetrics
from gateway.api.body import query
from gateway.api.context import ApiContext, caller, ctx
from gateway.control.rules import approvals_needed
from gateway.metrics import CONTENT_TYPE, Local, collect, local, merge, render
from gateway.webhooks import WebhookSink

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """200 while the store answers."""
    c = ctx(request)
    try:
        await c.services.store.ping()
    except Exception:
        return web.json_response({"status": "unhealthy", "store": "unavailable"}, status=503)
    return web.json_response({"status": "ok", "live_sessions": len(c.services.registry)})


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    """The public keys that verify approval tokens."""
    return web.json_response(ctx(request).services.ring.jwks())


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text."""
    c = ctx(request)
    here = local_metrics(c)
    slot = c.services.config.worker
    if slot is not None:  # the workers share this port: answer for all of them
        here = merge([here, *workermetrics.siblings(slot)])
    text = render(await collect(c.services, here))
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


def local_metrics(c: ApiContext) -> Local:
    """This process's live sessions and counters (its API's, its webhook sinks')."""
    extra = list(c.counters.metrics())
    for sink in c.services.alerts.sinks:
        if isinstance(sink, WebhookSink):
            extra.extend(sink.metrics())
    return local(c.services, extra)


@routes.get("/v1/whoami")
async def whoami(request: web.Request) -> web.Response:
    """The authenticated caller."""
    who = caller(request)
    return web.json_response({"user": who.name, "groups": sorted(who.groups), "admin": who.admin, "via": who.via})


@routes.get("/v1/info")
async def info(request: web.Request) -> web.Response:
    """Where the front ends listen and the SSH host key to pin (for `gateway ssh` / `gateway psql`)."""
    query(request, {})
    cfg = ctx(request).services.config
    pub = cfg.ssh_host_key.with_name(cfg.ssh_host_key.name + ".pub")
    try:
        host_key = " ".join(pub.read_text(encoding="utf-8").split()[:2])
    except OSError:
        host_key = ""
    return web.json_response(
        {
            "postgres": {"host": cfg.listen_postgres.host, "port": cfg.listen_postgres.port},
            "ssh": {"host": cfg.listen_ssh.host, "port": cfg.listen_ssh.port, "host_key": host_key},
            "targets": {name: t.kind for name, t in sorted(cfg.targets.items())},
            "pg_require_tls": cfg.pg_require_tls,
        }
    )


@routes.get("/v1/targets")
async def targets(request: web.Request) -> web.Response:
    """Every target and scope with what the caller may do there."""
    query(request, {})
    who = caller(request)
    svc = ctx(request).services
    out: list[dict[str, Any]] = []
    for tp in svc.policies.targets():
        target = svc.config.targets.get(tp.target)
        for name, sp in sorted(tp.scopes.items()):
            out.append(
                {
                    "target": tp.target,
                    "kind": target.kind if target else None,
                    "scope": name,
                    "may_request": sp.may_request(who.name, who.groups),
                    "max_ttl": sp.max_ttl,
                    "approvals_needed": approvals_needed(sp),
                    "approver_users": sorted(sp.approvals.from_users),
                    "approver_groups": sorted(sp.approvals.from_groups),
                }
            )
    return web.json_response({"targets": out})
