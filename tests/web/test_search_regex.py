"""The admin regex search (console /search and `gateway search --regex`) over real recordings: a pattern that
backtracks exponentially in Python's `re` ends at once (RE2, linear time), the console keeps serving
meanwhile, and a pattern RE2 does not take is refused with the reason."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.config import load_config
from tests.rig.postgres import PgCluster
from tests.test_review_e2e import Recorded, cli, ended, recorded
from tests.web.test_console_http import browser
from tests.web.test_review_pages import hits

pytestmark = pytest.mark.slow
__all__ = ["recorded"]

RUN = 50_000  # `(a+)+$` over a run of n a's not at the end: ~2^n steps in Python's re, ~n in RE2
BOUND = 10.0  # seconds; each search below takes milliseconds


async def _record_long_run(rec: Recorded, psql: str) -> str:
    """A real psql session through the gateway whose statement holds RUN a's and then '!': its id."""
    gw, config = rec.gw, load_config(rec.config_path, need_secrets=False)
    _, _, token = await gw.approved_grant("alice", "bob", "orders-db", "read")
    assert config.listen_postgres is not None
    conninfo = f"host=127.0.0.1 port={config.listen_postgres.port} user=alice dbname=orders-db sslmode=require"
    before = {s.id for s in await gw.services.store.list_sessions(user="alice")}
    proc = await asyncio.create_subprocess_exec(
        psql, "-X", "-A", "-t", "-c", f"SELECT length('{'a' * RUN}!') AS n", conninfo,
        env={**rec.env, "PGPASSWORD": token, "PGCONNECT_TIMEOUT": "10"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and out.decode().strip() == str(RUN + 1), err
    (sid,) = {s.id for s in await gw.services.store.list_sessions(user="alice")} - before
    await ended(gw, sid)
    return sid


async def test_a_backtracking_pattern_ends_within_its_bound(recorded: Recorded, pg_cluster: PgCluster) -> None:
    sid = await _record_long_run(recorded, pg_cluster.psql_bin)
    gw, config = recorded.gw, load_config(recorded.config_path, need_secrets=False)
    erin = await browser(gw, config, "erin")
    async with erin:

        async def timed_search(pattern: str) -> tuple[float, int, str]:
            t0 = time.monotonic()
            async with erin.get(gw.url + "/search", params={"q": pattern, "regex": "on"}) as resp:
                return time.monotonic() - t0, resp.status, await resp.text()

        async def sessions_page() -> float:
            t0 = time.monotonic()
            async with erin.get(gw.url + "/sessions") as resp:
                assert resp.status == 200
            return time.monotonic() - t0

        # the catastrophic shapes: no match (the run is followed by "!"), a match after the run, alternation
        for pattern, matches in (("(a+)+$", False), ("(a+)+!", True), ("^SELECT length\\('(a|aa)+!'\\)", True),
                                 ("(a*)*b", False), ("(?i)(A+)+!", True)):  # fmt: skip
            (took, status, page), other = await asyncio.gather(timed_search(pattern), sessions_page())
            assert status == 200 and took < BOUND and other < BOUND, (pattern, took, other)
            found = [link for link, _ in hits(page) if f"/sessions/{sid}?" in link]
            assert bool(found) == matches, (pattern, found)
            print(f"{pattern!r}: {took * 1000:.1f} ms, /sessions meanwhile {other * 1000:.1f} ms")

        # what RE2 does not do is refused, saying why (and audited nothing: no search ran)
        for pattern in ("(a)\\1", "(?=a)a", "(?<!b)a"):
            took, status, page = await timed_search(pattern)
            assert status == 422 and "no backreferences or lookaround" in page, (pattern, page[:300])
        searched = [e.data["pattern"] for e in await gw.services.store.events(types=["console.search"])]
        assert "(a+)+$" in searched and "(a)\\1" not in searched

    # the CLI: the same engine and the same refusal
    t0 = time.monotonic()
    code, out, err = await cli(recorded, "search", "--regex", "(a+)+$", "--json", timeout=60)
    assert code == 1 and time.monotonic() - t0 < BOUND + 20, err  # + the interpreter's start-up on a busy machine
    code, out, err = await cli(recorded, "search", "--regex", "(a+)+!", "--json", timeout=60)
    assert code == 0 and sid in out, err
    code, out, err = await cli(recorded, "search", "--regex", "(a)\\1", timeout=60)
    assert code == 2 and "no backreferences or lookaround" in err and "Traceback" not in err, err
