"""Read each target's catalogue (gateway.pg.sql.catalog) over the gateway's own upstream connection, and keep it.

Loaded at a target's first session, with that session's login (the scope's): pg_proc, pg_operator,
pg_cast, pg_type, pg_attribute and pg_depend are readable by PUBLIC, so the least-privileged login
sees the same rows as a superuser, and the gateway never logs in as more than a grant allows. It is
a connection of its own (application_name gateway:catalog), never the client's: the client's session
state and statement stream stay exactly what the client sent.

Reloaded in the background when older than `max_age`, and after a DDL statement passes through the
gateway (1 s and 10 s later: the DDL runs after it is allowed and may commit later still). When a
load fails the last snapshot is kept (a target that never loaded has none: the inspector then fails
closed on ambiguous names), and the next session retries after `retry` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.config import Login, Target
from gateway.pg.simplequery import QueryFailed, simple_query
from gateway.pg.sql.catalog import CATALOG_SQL, Catalog, build
from gateway.pg.upstream import UpstreamError, connect, startup_parameters

log = logging.getLogger(__name__)

_TERMINATE = b"X\x00\x00\x00\x04"
Row = tuple[str, str, str, str, str]


class CatalogError(Exception):
    """The catalogue could not be read; str() names the target, never a secret."""


async def load_catalog(target: Target, login: Login, *, limit: float = 10.0, now: float = 0.0) -> Catalog:
    """Log in as `login` on a connection of our own, run CATALOG_SQL, build the snapshot."""
    params = startup_parameters(target, login, application_name="gateway:catalog", read_only=True, client={})
    try:
        upstream = await connect(target, login, params, connect_timeout=limit)
    except UpstreamError as exc:
        raise CatalogError(str(exc)) from None
    pipe = upstream.pipe
    try:
        async with asyncio.timeout(limit):
            rows = _rows(await simple_query(pipe, upstream.leftover, CATALOG_SQL), target.name)
        pipe.write(_TERMINATE)
    except QueryFailed as exc:
        raise CatalogError(f"the catalogue query on {target.name} failed: {exc}") from None
    except UnicodeDecodeError:
        raise CatalogError(f"the catalogue of {target.name} is not valid UTF-8") from None
    except TimeoutError:
        raise CatalogError(f"reading the catalogue of {target.name} took over {limit:g} s") from None
    except (OSError, ConnectionError) as exc:
        raise CatalogError(f"reading the catalogue of {target.name} failed: {type(exc).__name__}") from None
    finally:
        pipe.close()
    return build(rows, now)


def _rows(rows: list[list[str]], name: str) -> list[Row]:
    """The catalogue query's rows, each of the five columns CATALOG_SQL selects."""
    if any(len(r) != 5 for r in rows):
        raise CatalogError(f"the catalogue query on {name} returned rows of an unexpected shape")
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


@dataclass
class _Entry:
    catalog: Catalog | None = None
    loaded: float = float("-inf")  # monotonic time of the last successful load
    failed: float = float("-inf")  # ... of the last failure
    task: asyncio.Task[Catalog | None] | None = None


Loader = Callable[[Target, Login], Awaitable[Catalog]]


class Catalogs:
    """Per-target catalogue snapshots; `listeners` are told when a target's snapshot changes."""

    def __init__(self, *, max_age: float = 300.0, retry: float = 30.0, timeout: float = 5.0,
                 loader: Loader | None = None, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.max_age = max_age
        self.retry = retry
        self.timeout = timeout
        self._loader = loader
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._logins: dict[str, Login] = {}
        self._later: dict[str, list[asyncio.TimerHandle]] = {}
        self.listeners: list[Callable[[str, Catalog], None]] = []

    def current(self, target: str) -> Catalog | None:
        """The snapshot in use for a target, without loading."""
        entry = self._entries.get(target)
        return entry.catalog if entry is not None else None

    async def get(self, target: Target, login: Login) -> Catalog | None:
        """The target's snapshot: the first call waits for the load (bounded); later ones refresh in the background."""
        entry = self._entries.setdefault(target.name, _Entry())
        self._logins.setdefault(target.name, login)
        now = self._clock()
        fresh = now - entry.loaded < self.max_age
        if entry.catalog is not None and fresh:
            return entry.catalog
        if entry.task is None and now - entry.failed >= self.retry:
            entry.task = asyncio.ensure_future(self._load(target, login, entry))
        if entry.catalog is not None or entry.task is None:
            return entry.catalog  # an old snapshot beats none while the new one loads
        return await asyncio.shield(entry.task)

    def ddl(self, target: Target) -> None:
        """A DDL statement was allowed through: reload once it has had time to run (and again later)."""
        login = self._logins.get(target.name)
        if login is None:
            return
        loop = asyncio.get_running_loop()
        for handle in self._later.pop(target.name, []):
            handle.cancel()
        self._later[target.name] = [loop.call_later(delay, self._reload, target, login) for delay in (1.0, 10.0)]

    def _reload(self, target: Target, login: Login) -> None:
        entry = self._entries.setdefault(target.name, _Entry())
        if entry.task is None:
            entry.task = asyncio.ensure_future(self._load(target, login, entry))

    async def _load(self, target: Target, login: Login, entry: _Entry) -> Catalog | None:
        try:
            if self._loader is not None:
                catalog = await self._loader(target, login)
            else:
                catalog = await load_catalog(target, login, limit=self.timeout, now=time.time())
        except Exception as exc:  # any failure: keep the last snapshot, deny what it cannot tell
            entry.failed = self._clock()
            log.warning("catalogue of %s not loaded (ambiguous names will be denied): %s", target.name, exc)
            return entry.catalog
        finally:
            entry.task = None
        entry.catalog, entry.loaded = catalog, self._clock()
        for tell in list(self.listeners):
            tell(target.name, catalog)
        return catalog

    def close(self) -> None:
        """Cancel pending reloads."""
        for handles in self._later.values():
            for h in handles:
                h.cancel()
        self._later.clear()
        for entry in self._entries.values():
            if entry.task is not None:
                entry.task.cancel()
