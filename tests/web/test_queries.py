"""The console's Sessions query is SQL on both stores (SQLite and real PostgreSQL) and agrees with the filter's
own Python reading for every filter and page."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.web.queries import _PG, _SQLITE, SessionFilter, page_query, page_sessions
from tests.storekit import KINDS, Backend, backend_for
from tests.test_store import NOW, grant, session


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend_for(request, tmp_path)


FILTERS = [
    SessionFilter(),
    SessionFilter(user="bob"),
    SessionFilter(target="web-1", protocol="ssh"),
    SessionFilter(since=NOW + 10, until=NOW + 30),
    SessionFilter(violations=True),
    SessionFilter(violations=False, live=False),
    SessionFilter(end_reason="REVOKED"),  # case-insensitive substring
    SessionFilter(end_reason="50%_off\\"),  # LIKE metacharacters are literal
    SessionFilter(live=True, user="alice"),
]


async def test_page_query_agrees_with_the_filter_on_both_stores(backend: Backend) -> None:
    store = await backend.make().open()
    try:
        await store.add_grant(grant())
        everyone = []
        for i, (user, target, proto) in enumerate(itertools.product(("alice", "bob"), ("orders-db", "web-1"),
                                                                     ("postgres", "ssh"))):  # fmt: skip
            for j in range(5):
                s = replace(session(f"s_{i:02d}{j}"), user=user, target=target, protocol=proto,
                            started_at=NOW + i * 5 + j)  # fmt: skip
                await store.add_session(s)
                if j % 2 == 0:
                    reason = ("grant revoked: done", "50%_off\\ sale", "client closed")[(j // 2 + i) % 3]
                    stats = {"denied": j % 3, "violations": i % 2} if j else {}
                    await store.end_session(s.id, ended_at=s.started_at + 1, reason=reason,
                                            recording_sha256=None, stats=stats)  # fmt: skip
        everyone = sorted(await store.list_sessions(), key=lambda s: (s.started_at, s.id), reverse=True)
        for f in FILTERS:
            want = [s.id for s in everyone if f.matches(s)]
            for offset, limit in ((0, 50), (0, 3), (3, 4), (len(want), 5)):
                got = [s.id for s in await page_sessions(store, f, offset=offset, limit=limit)]
                assert got == want[offset : offset + limit], (f, offset, limit)
        assert any(FILTERS[i].matches(s) for s in everyone for i in (4, 6, 7))  # the data exercises them
    finally:
        await store.close()


def test_values_never_enter_the_sql_text() -> None:
    f = SessionFilter(user="x'; DROP TABLE sessions; --", end_reason="'", target="t")
    for dialect in (_SQLITE, _PG):
        sql, args = page_query(dialect, f, offset=0, limit=10)
        assert "DROP" not in sql and "'; " not in sql and f.user in args
