"""Webhook delivery to a local aiohttp receiver: retries with backoff after failures, failures audited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from gateway.config import Config, Webhook
from gateway.services import Services, build_services
from gateway.webhooks import Retry, WebhookSink, install_webhooks, matches, payload

FAST = Retry(attempts=4, base=0.02, cap=0.1, timeout=2.0)


@dataclass
class Receiver:
    """Answers with the queued statuses (then 200) and keeps what it got."""

    statuses: list[int] = field(default_factory=list)
    got: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def hook(request: web.Request) -> web.Response:
        rec.got.append(await request.json())
        status = rec.statuses.pop(0) if rec.statuses else 200
        if status == 200:
            rec.arrived.set()
        return web.json_response({}, status=status)

    app = web.Application()
    app.router.add_post("/hook/{secret}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.url = f"http://127.0.0.1:{port}/hook/T0KEN-IN-PATH"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def services(config: Config) -> AsyncIterator[Services]:
    svc = await build_services(config)
    yield svc
    await svc.close()


async def test_retries_after_two_failures_and_audits_them(services: Services, receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    sink = WebhookSink([Webhook("ops", receiver.url)], services.store, retry=FAST)
    services.alerts.sinks.append(sink)
    await services.alerts.emit("break_glass", "break-glass grant g_1", severity="critical", target="orders-db")
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    await sink.close()
    assert len(receiver.got) == 3
    assert receiver.got[-1]["type"] == "break_glass" and receiver.got[-1]["summary"] == "break-glass grant g_1"
    failed = await services.store.events(types=["webhook.failed"])
    assert [(e.data["attempt"], e.data["error"], e.data["final"]) for e in failed] == [
        (1, "HTTP 500", False),
        (2, "HTTP 503", False),
    ]
    # the URL carries a secret: it is in no audit event
    assert all("T0KEN" not in str(e.data) for e in await services.store.events())
    assert any(s[0].get("result") == "ok" for m in sink.metrics() for s in m.samples)


async def test_gives_up_after_attempts_and_never_blocks(services: Services) -> None:
    sink = WebhookSink([Webhook("dead", "http://127.0.0.1:9/hook")], services.store, retry=FAST)
    services.alerts.sinks.append(sink)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await services.alerts.emit("session.killed", "killed", severity="warning")
    assert loop.time() - t0 < 0.5  # emit returned without waiting for delivery
    await sink.drain(5)
    await sink.close()
    failed = await services.store.events(types=["webhook.failed"])
    assert [e.data["attempt"] for e in failed] == [1, 2, 3, 4]
    assert failed[-1].data["final"] is True and failed[-1].severity == "critical"


async def test_client_errors_are_not_retried(services: Services, receiver: Receiver) -> None:
    receiver.statuses = [404]
    sink = WebhookSink([Webhook("typo", receiver.url)], services.store, retry=FAST)
    sink.offer({"type": "revocation", "severity": "warning", "summary": "x"})
    await sink.drain(5)
    await sink.close()
    assert len(receiver.got) == 1
    failed = await services.store.events(types=["webhook.failed"])
    assert len(failed) == 1 and failed[0].data["final"] is True


async def test_slack_format_and_filters(services: Services, receiver: Receiver) -> None:
    slack = Webhook("slack", receiver.url, "slack", frozenset({"session.*", "revocation"}), "warning")
    sink = install_webhooks(services, retry=FAST)  # no configured hooks: a no-op sink
    assert sink in services.alerts.sinks and sink.hooks == ()
    sink = WebhookSink([slack], services.store, retry=FAST)
    services.alerts.sinks.append(sink)
    await services.alerts.emit("request.pending", "alice requests", severity="info")
    await services.alerts.emit("session.sensitive", "low", severity="info")
    await services.alerts.emit("session.killed", "session s1 killed", severity="warning", target="web-1")
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    await sink.close()
    assert receiver.got == [{"text": "[WARNING] session s1 killed on web-1"}]


def test_matching_rules() -> None:
    hook = Webhook("h", "http://x", events=frozenset({"break_glass", "session.*"}), min_severity="warning")
    assert matches(hook, {"type": "break_glass", "severity": "critical"})
    assert matches(hook, {"type": "session.killed", "severity": "warning"})
    assert not matches(hook, {"type": "session.killed", "severity": "info"})
    assert not matches(hook, {"type": "request.pending", "severity": "critical"})
    assert matches(Webhook("all", "http://x"), {"type": "anything", "severity": "info"})
    assert payload(Webhook("j", "http://x"), {"type": "t"}) == {"source": "gateway", "type": "t"}
    assert Retry(base=1, cap=8).delay(10) <= 8 * 1.2
    assert Retry().delay(1, retry_after=3) == 3
