"""What every route handler gets: the services, the workflow, the authenticated caller, the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from gateway.api.auth import Authenticator
from gateway.config import ApiSettings
from gateway.control.caller import Caller
from gateway.control.workflow import Workflow
from gateway.metrics import Counters
from gateway.services import Services
from gateway.workload.exchange import Exchanger


@dataclass
class ApiContext:
    """Shared by all handlers of one ApiServer."""

    services: Services
    settings: ApiSettings
    workflow: Workflow
    auth: Authenticator
    clock: Callable[[], float]
    exchanger: Exchanger
    counters: Counters = field(default_factory=Counters)


CONTEXT = web.AppKey("gateway_api", ApiContext)
CALLER_KEY = web.RequestKey("gateway_caller", Caller)


def ctx(request: web.Request) -> ApiContext:
    """The server's context."""
    return request.app[CONTEXT]


def caller(request: web.Request) -> Caller:
    """The authenticated caller (set by the auth middleware on every /v1 route)."""
    try:
        return request[CALLER_KEY]
    except KeyError:
        raise RuntimeError("route reached without authentication") from None  # a wiring bug: fail closed


def no_store(resp: web.Response) -> web.Response:
    """Responses that carry a token must not be cached by anything in between."""
    resp.headers["Cache-Control"] = "no-store"
    return resp
