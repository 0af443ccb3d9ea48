"""The HTTP API server (aiohttp): middlewares for errors and authentication, routes split by resource."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import workermetrics
from gateway.api import routes_audit, routes_grants, routes_meta, routes_requests, routes_sessions
from gateway.api.auth import Authenticator, AuthError
from gateway.api.body import MAX_BODY
from gateway.api.context import CALLER_KEY, CONTEXT, ApiContext, ctx
from gateway.api.errors import error_response, from_exception
from gateway.config import ApiSettings
from gateway.control.workflow import Workflow
from gateway.services import Services
from gateway.web.app import is_console_path, mount
from gateway.workload.exchange import Exchanger

log = logging.getLogger(__name__)

REQUEST_EXPIRY = "request-expiry"
METRICS_PUBLISH = "worker-metrics"
"""The scheduler job that expires stale pending requests."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The exchange authenticates by the pipeline's OIDC token in its body, not by an API key.
PUBLIC_PATHS = frozenset({"/healthz", "/.well-known/jwks.json", "/v1/grants/exchange"})


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes the JSON error shape; a bug is a 500 that names nothing internal."""
    try:
        return await handler(request)
    except Exception as exc:
        err = from_exception(exc)
        if err is None:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "internal", "internal error; the gateway log has the details")
        if err.status == 403 and not err.code.startswith("workload-"):  # exchange refusals audit themselves
            await _audit_forbidden(request, err.message)
        return error_response(err.status, err.code, err.message)


async def _audit_forbidden(request: web.Request, message: str) -> None:
    # Refusals by policy (self-approval, a requester the policy does not name) are security events.
    who = request.get(CALLER_KEY)
    try:
        await ctx(request).services.store.append(
            "api.forbidden",
            actor=who.name if who is not None else "unknown",
            severity="warning",
            data={"method": request.method, "path": request.path, "reason": message},
        )
    except Exception as exc:
        log.error("could not audit a refused API call: %s", type(exc).__name__)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate everything but health, JWKS, (when public) metrics and the console (its own sign-in)."""
    c = ctx(request)
    public = request.path in PUBLIC_PATHS or (request.path == "/metrics" and c.settings.metrics_public)
    public = public or is_console_path(request.path)
    if not public:
        try:
            request[CALLER_KEY] = await c.auth.authenticate(request.headers.get("Authorization"))
        except AuthError as exc:
            c.counters.inc("gateway_api_auth_failures_total", "API calls refused for bad or missing credentials")
            log.warning("API authentication failed from %s: %s", request.remote, exc.message)
            raise
    return await handler(request)


class ApiServer:
    """Serve the control plane on config.listen_http (port 0 picks a free port; see `.port`)."""

    def __init__(
        self, services: Services, settings: ApiSettings | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.services = services
        self.settings = settings or services.config.api
        s = self.settings
        workflow = Workflow(
            services.config,
            services.ring,
            services.store,
            services.policies,
            services.alerts,
            request_timeout=s.request_timeout,
        )
        exchanger = Exchanger(
            services.config, services.ring, services.store, services.policies, services.alerts, clock=clock
        )
        self.context = ApiContext(services, s, workflow, Authenticator(services.config.users, s), clock, exchanger)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port = 0

    def __repr__(self) -> str:
        return f"ApiServer({self.services.config.listen_http.host}:{self._port})"

    def make_app(self) -> web.Application:
        """The aiohttp application (exposed for tests that want aiohttp's test client)."""
        app = web.Application(middlewares=[errors_middleware, auth_middleware], client_max_size=MAX_BODY)
        app[CONTEXT] = self.context
        for module in (routes_meta, routes_requests, routes_grants, routes_sessions, routes_audit):
            app.add_routes(module.routes)
        mount(app, self.context)
        return app

    async def start(self) -> None:
        """Bind and serve; start the pending-request expiry loop."""
        addr = self.services.config.listen_http
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, addr.host, addr.port, reuse_address=True,
                                 reuse_port=self.services.config.worker is not None)  # fmt: skip
        await self._site.start()
        bound = self._runner.addresses  # public: the sockets' names, (host, port, ...) for TCP
        self._port = int(bound[0][1]) if bound else addr.port
        # Pending requests past api.request_timeout expire even when nobody lists them (the process's scheduler).
        self.services.scheduler.every(self.settings.expire_interval, REQUEST_EXPIRY, self.context.workflow.expire_stale)
        slot = self.services.config.worker
        if slot is not None:  # a worker: its siblings answer /metrics for it too (gateway/workermetrics.py)

            async def publish(now: float) -> None:
                workermetrics.publish(slot, routes_meta.local_metrics(self.context))

            self.services.scheduler.every(workermetrics.PUBLISH_EVERY, METRICS_PUBLISH, publish)
        log.info("control plane API on http://%s:%d", addr.host, self._port)

    @property
    def port(self) -> int:
        """The bound port."""
        return self._port

    async def close(self) -> None:
        """Stop serving and the expiry loop; close the IdP client."""
        self.services.scheduler.cancel(REQUEST_EXPIRY)
        self.services.scheduler.cancel(METRICS_PUBLISH)
        if self.services.config.worker is not None:
            workermetrics.withdraw(self.services.config.worker)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.context.auth.close()
        await self.context.exchanger.close()
