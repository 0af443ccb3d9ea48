"""Alerts: audited, written as JSON lines for SIEM shippers, and sent to webhook sinks without blocking sessions."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Protocol, TextIO

from gateway.store import Store

log = logging.getLogger(__name__)

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


class Sink(Protocol):
    """Something that takes alerts (a webhook deliverer); it must never block or raise."""

    def offer(self, alert: dict[str, Any]) -> None: ...


class Alerts:
    """Raise an alert: one audit event, one JSON line, and an offer to each sink."""

    def __init__(self, store: Store, *, file: Path | None = None, stream: TextIO | None = None) -> None:
        self.store = store
        self.file = file
        self.stream = stream
        self.sinks: list[Sink] = []

    async def emit(
        self,
        type_: str,
        summary: str,
        *,
        severity: str = "warning",
        actor: str = "gateway",
        session: str = "",
        grant: str = "",
        target: str = "",
        data: dict[str, Any] | None = None,
    ) -> None:
        """Audit the alert, write its line, hand it to the sinks; failures are logged, never raised."""
        data = dict(data or {})
        try:
            ev = await self.store.append(
                f"alert.{type_}",
                actor=actor,
                session=session,
                grant=grant,
                target=target,
                severity=severity,
                data={"summary": summary, **data},
            )
            seq: int | None = ev.seq
        except Exception as exc:
            log.error("alert %s could not be audited: %s", type_, type(exc).__name__)
            seq = None
        alert = {
            "type": type_,
            "severity": severity,
            "summary": summary,
            "ts": time.time(),
            "actor": actor,
            "session": session,
            "grant": grant,
            "target": target,
            "audit_seq": seq,
            "data": data,
        }
        line = json.dumps(alert, sort_keys=True, default=str)
        try:
            if self.file is not None:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                with self.file.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
            if self.stream is not None:
                print(line, file=self.stream, flush=True)
        except OSError as exc:
            log.error("alert line could not be written: %s", exc.strerror)
        for sink in self.sinks:
            sink.offer(alert)
