"""The detections query `gateway detections` and the console share: `detection` audit events, filtered."""

from __future__ import annotations

from collections.abc import Collection

from gateway.store import Store
from gateway.store.records import AuditEvent

DETECTION = "detection"


async def detections(
    store: Store,
    *,
    since: float | None = None,
    user: str | None = None,
    rules: Collection[str] = (),
    session: str | None = None,
    request: str | None = None,
) -> list[AuditEvent]:
    """The detection events matching every filter given, oldest first (a request's: its own or its session's)."""
    events = await store.events(since=since, types=[DETECTION], session=session)
    return [
        ev
        for ev in events
        if (not user or ev.actor == user)
        and (not rules or ev.data.get("rule") in rules)
        and (not request or ev.data.get("request") == request)
    ]
