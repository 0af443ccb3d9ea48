"""The lingering-access sweep's I/O for Postgres: list each injected login's backends, terminate strays, report.

Every `sweep_every` seconds (`[detection] sweep_every`, default 30 s) the gateway logs in as each login it
injects (its own credentials, `application_name=gateway:sweep`), reads that login's rows of
pg_stat_activity, lets `sweep.find_strays` decide, and in kill mode ends the strays with
pg_terminate_backend (a role may signal its own backends). Each stray is a `detection` audit event and
an alert. A login the sweep cannot reach is a warning alert: an unchecked login is not a clean one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.alerts import Alerts
from gateway.config import Config, Login, Target
from gateway.detect.model import Detection
from gateway.detect.sweep import Backend, LiveUse, Stray, find_strays
from gateway.pg.pipe import Pipe
from gateway.pg.simplequery import QueryFailed, simple_query
from gateway.pg.upstream import UpstreamError, connect, startup_parameters
from gateway.store import Store

log = logging.getLogger(__name__)

SWEEP_TAG = "gateway:sweep"
_TERMINATE = b"X\x00\x00\x00\x04"
_BACKENDS_SQL = (
    "SELECT pid, coalesce(application_name, ''), extract(epoch FROM backend_start)::float8, "
    "coalesce(host(client_addr), '') FROM pg_stat_activity "
    "WHERE usename = current_user AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


class SweepError(Exception):
    """A login could not be checked; str() names the target and login, never a secret."""


async def _query(pipe: Pipe, leftover: bytes, sql: str) -> list[list[str]]:
    """One simple query's rows as text; a server error raises SweepError."""
    try:
        return await simple_query(pipe, leftover, sql, errors="replace")
    except QueryFailed as exc:
        raise SweepError(str(exc)) from None


async def sweep_login(
    target: Target, login: Login, decide: Callable[[list[Backend]], list[Stray]], *, kill: bool, limit: float = 10.0
) -> tuple[list[Stray], list[int]]:
    """Log in as `login`, list its backends, decide, terminate (kill mode); returns (strays, terminated pids)."""
    params = startup_parameters(target, login, application_name=SWEEP_TAG, read_only=False, client={})
    try:
        upstream = await connect(target, login, params, connect_timeout=limit)
    except UpstreamError as exc:
        raise SweepError(f"{login.user}@{target.name}: {exc}") from None
    pipe = upstream.pipe
    try:
        async with asyncio.timeout(limit):
            rows = await _query(pipe, upstream.leftover, _BACKENDS_SQL)
            backends = [Backend(int(r[0]), login.user, r[1], float(r[2]), r[3]) for r in rows if len(r) == 4]
            strays = decide(backends)
            ended: list[int] = []
            if kill and strays:
                pids = ",".join(str(s.backend.pid) for s in strays)
                sql = f"SELECT p FROM unnest(ARRAY[{pids}]::int[]) AS p WHERE pg_terminate_backend(p)"  # noqa: S608 - ints
                ended = [int(r[0]) for r in await _query(pipe, b"", sql)]
        pipe.write(_TERMINATE)
    except TimeoutError:
        raise SweepError(f"{login.user}@{target.name}: the sweep took over {limit:g} s") from None
    except (OSError, ConnectionError) as exc:
        raise SweepError(f"{login.user}@{target.name}: {type(exc).__name__}") from None
    finally:
        pipe.close()
    return strays, ended


class PgSweeper:
    """The periodic sweep over every Postgres target's injected logins; `once(now)` is one pass."""

    def __init__(
        self, config: Config, store: Store, alerts: Alerts, *, kill: bool = True, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.store = store
        self.alerts = alerts
        self.kill = kill
        self.clock = clock

    async def once(self, now: float | None = None) -> list[Stray]:
        """Sweep every injected login of every Postgres target once; report what was found."""
        now = self.clock() if now is None else now
        # One login may serve several targets (databases of one server): ownership is judged over every
        # session of every target, never one target's alone.
        live_rows = await self.store.list_sessions(live=True)
        live = [LiveUse(s.id, self._login_of(s.target, s.scope), s.started_at) for s in live_rows]
        recent = await self.store.list_sessions(live=False, since=now - 7 * 86400)
        ended = {r.id: (r.user, r.end_reason or "ended") for r in recent}
        found: list[Stray] = []
        swept: set[tuple[str, int, str]] = set()
        for target in self.config.targets.values():
            if target.kind != "postgres":
                continue
            for login in target.logins.values():
                server = (target.address.host, target.address.port, login.user)
                if server in swept:
                    continue  # the same login on the same server: one look is enough
                swept.add(server)
                found += await self._one(target, login, live, ended, now)
        return found

    def _login_of(self, target: str, scope: str) -> str:
        t = self.config.targets.get(target)
        login = t.logins.get(scope) if t is not None else None
        return login.user if login is not None else ""

    async def _one(
        self, target: Target, login: Login, live: list[LiveUse], ended: dict[str, tuple[str, str]], now: float
    ) -> list[Stray]:
        def decide(backends: list[Backend]) -> list[Stray]:
            return find_strays(target.name, backends, live, ended, now)

        try:
            strays, terminated = await sweep_login(target, login, decide, kill=self.kill)
        except SweepError as exc:
            await self.alerts.emit(
                "detection.sweep_unchecked",
                f"could not sweep {exc}",
                severity="warning",
                target=target.name,
                data={"login": login.user},
            )
            return []
        for s in strays:
            await self._report(s, s.backend.pid in terminated)
        return strays

    async def _report(self, s: Stray, terminated: bool) -> None:
        d = s.detection
        text = d.explanation + ("; terminated" if terminated else ("; NOT terminated" if self.kill else "; alert only"))
        data: dict[str, Any] = {
            **Detection(d.rule, d.severity, text, d.user, d.target, d.session).data(),
            "pid": s.backend.pid,
            "login": s.backend.login,
            "terminated": terminated,
        }
        try:
            ev = await self.store.append(
                "detection", actor=d.user, session=d.session, target=d.target, severity=d.severity, data=data
            )
            seq: int | None = ev.seq
        except Exception as exc:
            log.error("detection %s could not be audited: %s", d.rule, type(exc).__name__)
            seq = None
        await self.alerts.emit(
            "detection",
            text,
            severity=d.severity,
            actor=d.user,
            session=d.session,
            target=d.target,
            data={"rule": d.rule, "detection_seq": seq, "pid": s.backend.pid},
        )
