"""Webhook alert sink: filtered per hook, delivered in the background with retries and backoff; failures audited."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.alerts import SEVERITY_RANK
from gateway.config import Webhook
from gateway.metrics import Counters, Metric
from gateway.services import Services
from gateway.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Retry:
    """How hard to try: attempts in all, exponential backoff from `base` up to `cap` seconds, per-try timeout."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 30.0
    timeout: float = 5.0
    queue_size: int = 1000

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number `attempt` (1-based); honours Retry-After up to the cap."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap)
        exp = min(self.cap, self.base * 2.0 ** (attempt - 1))
        return exp * random.uniform(0.8, 1.2)  # jitter: many gateways must not retry in lockstep


def matches(hook: Webhook, alert: dict[str, Any]) -> bool:
    """Whether the hook wants this alert: type in its `events` globs (all when empty), severity at least its minimum."""
    kind = str(alert.get("type", ""))
    if hook.events and not any(fnmatch.fnmatchcase(kind, pattern) for pattern in hook.events):
        return False
    return SEVERITY_RANK.get(str(alert.get("severity")), 0) >= SEVERITY_RANK.get(hook.min_severity, 0)


def payload(hook: Webhook, alert: dict[str, Any]) -> dict[str, Any]:
    """The body to POST: Slack-compatible `{"text": ...}` or the alert itself."""
    if hook.format == "slack":
        target = f" on {alert['target']}" if alert.get("target") else ""
        return {"text": f"[{str(alert.get('severity', 'info')).upper()}] {alert.get('summary', '')}{target}"}
    return {"source": "gateway", **alert}


def where(hook: Webhook) -> str:
    """The hook for logs: name and host only (Slack-style URLs carry their secret in the path)."""
    return f"{hook.name} ({urlsplit(hook.url).hostname or '?'})"


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One delivery attempt: no error, or the error and whether (and when) to try again."""

    error: str | None = None
    retry: bool = True
    retry_after: float | None = None


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None  # the HTTP-date form is rare from webhook receivers; plain backoff then
    return float(value.strip())


class WebhookSink:
    """One bounded queue and one worker per hook: a slow or dead endpoint delays only its own alerts."""

    def __init__(self, hooks: Sequence[Webhook], store: Store, *, retry: Retry | None = None) -> None:
        self.hooks = tuple(hooks)
        self.store = store
        self.retry = retry or Retry()
        self.counters = Counters()
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"WebhookSink(hooks={[h.name for h in self.hooks]})"

    def offer(self, alert: dict[str, Any]) -> None:
        """Queue the alert for every hook that wants it; never blocks, never raises."""
        if self._closed:
            return
        for hook in self.hooks:
            if not matches(hook, alert):
                continue
            try:
                self._queue(hook).put_nowait(alert)
            except asyncio.QueueFull:
                self.counters.inc("gateway_webhook_dropped_total", "Alerts dropped: queue full", webhook=hook.name)
                log.error("webhook %s: queue full, alert %s dropped", where(hook), alert.get("type"))
            except RuntimeError:
                log.error("webhook %s: no event loop, alert %s dropped", where(hook), alert.get("type"))

    def _queue(self, hook: Webhook) -> asyncio.Queue[dict[str, Any]]:
        q = self._queues.get(hook.name)
        if q is None:
            asyncio.get_running_loop()  # RuntimeError outside a loop: nothing could deliver
            q = self._queues[hook.name] = asyncio.Queue(self.retry.queue_size)
            self._workers[hook.name] = asyncio.create_task(self._work(hook, q), name=f"webhook-{hook.name}")
        return q

    async def _work(self, hook: Webhook, q: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            alert = await q.get()
            try:
                await self._deliver(hook, alert)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook %s: delivery crashed", where(hook))
            finally:
                q.task_done()

    async def _deliver(self, hook: Webhook, alert: dict[str, Any]) -> None:
        body = payload(hook, alert)
        for attempt in range(1, self.retry.attempts + 1):
            try:
                outcome = await self._post(hook, body)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                outcome = _Outcome(error=type(exc).__name__)
            if outcome.error is None:
                self.counters.inc(
                    "gateway_webhook_deliveries_total", "Webhook deliveries", webhook=hook.name, result="ok"
                )
                return
            final = attempt == self.retry.attempts or not outcome.retry
            await self._failed(hook, alert, attempt, outcome.error, final=final)
            if final:
                return
            await asyncio.sleep(self.retry.delay(attempt, outcome.retry_after))

    async def _post(self, hook: Webhook, body: dict[str, Any]) -> _Outcome:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.retry.timeout))
        async with self._session.post(hook.url, json=body, allow_redirects=False) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return _Outcome()
            # 408/429/5xx may pass; any other 4xx is a bad hook or payload that retrying cannot fix.
            retry = resp.status in (408, 429) or resp.status >= 500
            return _Outcome(f"HTTP {resp.status}", retry, _retry_after(resp.headers.get("Retry-After")))

    async def _failed(self, hook: Webhook, alert: dict[str, Any], attempt: int, error: str, *, final: bool) -> None:
        self.counters.inc(
            "gateway_webhook_deliveries_total",
            "Webhook deliveries",
            webhook=hook.name,
            result="gave_up" if final else "retry",
        )
        log.warning("webhook %s: attempt %d for alert %s failed: %s", where(hook), attempt, alert.get("type"), error)
        try:
            await self.store.append(
                "webhook.failed",
                severity="critical" if final else "warning",
                target=str(alert.get("target") or ""),
                data={
                    "webhook": hook.name,
                    "alert": alert.get("type"),
                    "audit_seq": alert.get("audit_seq"),
                    "attempt": attempt,
                    "error": error,
                    "final": final,
                },
            )
        except Exception as exc:
            log.error("webhook %s: could not audit a failed delivery: %s", where(hook), type(exc).__name__)

    def metrics(self) -> list[Metric]:
        """Delivery counters for /metrics."""
        return self.counters.metrics()

    async def drain(self, grace: float = 5.0) -> None:
        """Wait (bounded) until queued alerts are delivered or given up."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues.values())), grace)

    async def close(self, grace: float = 5.0) -> None:
        """Stop taking alerts, give the queues `grace` seconds, then stop the workers."""
        self._closed = True
        await self.drain(grace)
        for task in self._workers.values():
            task.cancel()
        for task in self._workers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None


def install_webhooks(services: Services, *, retry: Retry | None = None) -> WebhookSink:
    """Attach a sink for the configured webhooks to the alert service; the caller closes it at shutdown."""
    sink = WebhookSink(services.config.webhooks, services.store, retry=retry)
    services.alerts.sinks.append(sink)
    return sink
