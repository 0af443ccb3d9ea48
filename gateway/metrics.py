"""Prometheus text exposition: live sessions, statements, denials, kills, pending approvals; render is pure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.services import Services

Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family and its samples."""

    name: str
    kind: str  # counter | gauge
    help: str
    samples: tuple[tuple[Labels, float], ...] = field(default_factory=tuple)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(metrics: Iterable[Metric]) -> str:
    """The text format, version 0.0.4."""
    lines: list[str] = []
    for m in metrics:
        lines.append(f"# HELP {m.name} {_escape_help(m.help)}")
        lines.append(f"# TYPE {m.name} {m.kind}")
        for labels, value in m.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
                lines.append(f"{m.name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{m.name} {_number(value)}")
    return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Counters:
    """In-process counters (API auth failures and the like), exported as counters."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._help: dict[str, str] = {}

    def inc(self, name: str, help_: str, amount: float = 1.0, **labels: str) -> None:
        """Add to a counter."""
        key = (name, tuple(sorted(labels.items())))
        self._values[key] = self._values.get(key, 0.0) + amount
        self._help[name] = help_

    def metrics(self) -> list[Metric]:
        """Every counter as a Metric."""
        out: dict[str, list[tuple[Labels, float]]] = {}
        for (name, labels), value in sorted(self._values.items()):
            out.setdefault(name, []).append((dict(labels), value))
        return [Metric(n, "counter", self._help[n], tuple(s)) for n, s in out.items()]


@dataclass(frozen=True, slots=True)
class Local:
    """What only this process knows: its live sessions, their counts so far, its own counters. Workers of one
    gateway (gateway/workers.py) share a port, so a scrape lands on any of them: each publishes its Local and
    answers with the sum of all (gateway/workermetrics.py); everything else comes from the shared store."""

    live: Mapping[tuple[str, str], float]  # (target, protocol) -> live sessions
    stats: Mapping[str, tuple[float, float, float]]  # target -> statements, denied, commands of live sessions
    extra: tuple[Metric, ...] = ()  # counters of this process (API auth failures, webhook deliveries)


def local(services: Services, extra: Iterable[Metric] = ()) -> Local:
    """This process's Local, from its session registry."""
    live: dict[tuple[str, str], float] = {}
    stats: dict[str, tuple[float, float, float]] = {}
    for s in services.registry.live():
        live[(s.target.name, s.protocol)] = live.get((s.target.name, s.protocol), 0) + 1
        row = stats.get(s.target.name, (0.0, 0.0, 0.0))
        got = [s.stats.get(key, 0) for key in ("statements", "denied", "commands")]
        add = [float(v) if isinstance(v, int | float) else 0.0 for v in got]
        stats[s.target.name] = (row[0] + add[0], row[1] + add[1], row[2] + add[2])
    return Local(live, stats, tuple(extra))


def merge(parts: Iterable[Local]) -> Local:
    """The sum of several processes' Locals (samples with the same name and labels add up)."""
    live: dict[tuple[str, str], float] = {}
    stats: dict[str, tuple[float, float, float]] = {}
    families: dict[str, tuple[Metric, dict[tuple[tuple[str, str], ...], float]]] = {}
    for part in parts:
        for key, n in part.live.items():
            live[key] = live.get(key, 0) + n
        for target, row in part.stats.items():
            have = stats.get(target, (0.0, 0.0, 0.0))
            stats[target] = (have[0] + row[0], have[1] + row[1], have[2] + row[2])
        for m in part.extra:
            samples = families.setdefault(m.name, (m, {}))[1]
            for labels, value in m.samples:
                lkey = tuple(sorted(labels.items()))
                samples[lkey] = samples.get(lkey, 0.0) + value
    extra = tuple(Metric(m.name, m.kind, m.help, tuple((dict(k), v) for k, v in sorted(samples.items())))
                  for m, samples in families.values())  # fmt: skip
    return Local(live, stats, extra)


async def collect(services: Services, here: Local) -> list[Metric]:
    """The metric families: `here` (this process's Local, or the sum of the workers') and the store's counts."""
    live = dict(here.live)
    for name, t in services.config.targets.items():
        live.setdefault((name, t.kind), 0)
    counts = await services.store.counts()
    stats: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in services.config.targets}
    for name, ended in counts.ended_stats.items():
        stats[name] = list(ended)
    for target, row in here.stats.items():
        have = stats.setdefault(target, [0.0, 0.0, 0.0])
        for i in range(3):
            have[i] += row[i]
    pending, active, kills = counts.pending_requests, counts.active_grants, counts.kills
    rejected = [({"code": code}, float(n)) for code, n in sorted(counts.rejected.items())]
    targets = sorted(stats)
    return [
        Metric("gateway_up", "gauge", "1 while the gateway answers", (({}, 1.0),)),
        Metric(
            "gateway_live_sessions",
            "gauge",
            "Live sessions, per target and protocol (all workers of this gateway)",
            tuple(({"target": t, "protocol": p}, v) for (t, p), v in sorted(live.items())),
        ),
        Metric(
            "gateway_statements_total",
            "counter",
            "SQL statements relayed, per target",
            tuple(({"target": t}, stats[t][0]) for t in targets),
        ),
        Metric(
            "gateway_denials_total",
            "counter",
            "Statements and commands denied by policy, per target",
            tuple(({"target": t}, stats[t][1]) for t in targets),
        ),
        Metric(
            "gateway_commands_total",
            "counter",
            "SSH command lines seen, per target",
            tuple(({"target": t}, stats[t][2]) for t in targets),
        ),
        Metric("gateway_access_denied_total", "counter", "Connections refused, per reason code", tuple(rejected)),
        Metric("gateway_session_kills_total", "counter", "Sessions killed (revocation, kill, expiry)", (({}, kills),)),
        Metric("gateway_approvals_pending", "gauge", "Access requests waiting for approval", (({}, pending),)),
        Metric("gateway_grants_active", "gauge", "Grants not yet expired or revoked", (({}, active),)),
        *here.extra,
    ]
