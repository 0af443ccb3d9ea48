"""psycopg 3's own test suite run direct and through the gateway (admin scope) in the same run: the pass ratio.

    .venv/bin/python bench/driver_suite.py [--suite DIR] [-k EXPR] [--keep]

The suite comes from, in order: ``--suite DIR`` (a psycopg source tree, or its ``tests`` folder), the cache
(``~/.cache/gateway-bench/psycopg-<version>``), ``git clone --depth 1 --branch <version>`` from GitHub, and
the sdist (``pip download psycopg==<version> --no-binary :all:``; psycopg's sdists carry no tests, so this
last one is only tried). The suite runs in a venv of its own (psycopg at the version this project uses,
pytest, anyio, pproxy) against a throwaway PostgreSQL (gateway.sandbox): once with the admin login's own DSN,
once through a gateway process (its Postgres listener, TLS required, statement recording on) with a token
of an ``admin`` grant. A test that passes direct and not through the gateway is a difference: the known ones
are listed with their reason (EXPECTED); the ratio counts every difference, known or not.
Takes ~10 minutes on two cores; not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.sandbox.postgres import PgCluster

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gateway-bench"
TARGET = "orders-db"
RUNNER_DEPS = ("pytest", "anyio>=4", "pproxy>=2.7")

# Tests that cannot pass through the gateway, by design, with the reason. Patterns match the test id.
EXPECTED: list[tuple[str, str]] = [
    (
        r"proxy|Proxy",
        "puts its own TCP proxy (pproxy) in front of the server and cuts it: through the gateway "
        "that proxy sits in front of the gateway, whose session then ends as a dropped client",
    ),
    (
        r"backend_pid|test_notify|test_notifies|notify_handler",
        "compares the BackendKeyData pid with pg_backend_pid() (or a NOTIFY's sender pid): the gateway hands the "
        "client its own random cancel key, never the backend's pid (a client cannot aim a cancel at another "
        "backend)",
    ),
    (
        r"sslmode|no_ssl|test_ssl|plaintext|test_connect_timeout_ssl",
        "needs a plaintext connection or a specific sslmode: the gateway refuses plaintext clients (the token is a "
        "password) and presents its own certificate",
    ),
    (r"application_name", "reads back application_name: upstream it is gateway:<user>:<session> (audit)"),
    (
        r"dbname|current_database|conninfo.*db|test_info_db",
        "compares the connection's dbname with current_database(): the client names the target (orders-db), the "
        "gateway connects to the target's database",
    ),
    (
        r"password|test_get_params|test_connection_info.*(user|host|port)|test_info_(user|host|port)",
        "reads back the login parameters: the client logs in as the engineer with a token; upstream the gateway "
        "logs in as the scope's login",
    ),
    (
        r"cancel",
        "cancels through the gateway's own cancel key; a cancel that races the query's end lands on "
        "the next one or none, as through any pooler",
    ),
    (
        r"test_escape_\w+_1char\[off\]",
        "turns standard_conforming_strings off through libpq's exec (the refusal shows only as FATAL_ERROR): "
        "refused, a backslash would hide a quote from the parser",
    ),
]

# Failures expected by their message: the gateway's own refusals, by design.
EXPECTED_FAILURES: list[tuple[str, str]] = [
    (
        r"standard_conforming_strings must stay on",
        "turns standard_conforming_strings off: with it off a backslash escapes a quote, so the server and the "
        "gateway's parser would split strings differently (refused, SECURITY.md)",
    ),
    (
        r"client_encoding EUC_TW is not allowed",
        "EUC_TW: Python has no codec, so the gateway could not read the statements (refused)",
    ),
    (r"approval token is malformed", "reconnects with a password it just set: the gateway only takes tokens"),
    (r"b'gateway:", "reads back application_name: upstream it is gateway:<user>:<session> (audit)"),
]


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --- the suite ------------------------------------------------------------------------------------------------


def find_suite(explicit: str | None, version: str) -> Path:
    """A folder holding psycopg's `tests` package (copied into the cache once found)."""
    cached = CACHE / f"psycopg-{version}"
    if explicit:
        src = Path(explicit)
        tests = src if src.name == "tests" else src / "tests"
        if not (tests / "conftest.py").exists():
            raise SystemExit(f"{explicit}: no tests/conftest.py there")
        return _cache(tests, cached)
    if (cached / "tests" / "conftest.py").exists():
        return cached
    tmp = Path(tempfile.mkdtemp(prefix="gw-psycopg-src-"))
    clone = subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", version,
                            "https://github.com/psycopg/psycopg", str(tmp / "repo")],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    if clone.returncode == 0 and (tmp / "repo" / "tests" / "conftest.py").exists():
        return _cache(tmp / "repo" / "tests", cached)
    log(f"git clone failed ({clone.stderr.strip().splitlines()[-1:] or clone.returncode}); trying the sdist")
    dl = subprocess.run([sys.executable, "-m", "pip", "download", "-q", f"psycopg=={version}", "--no-binary",
                         ":all:", "--no-deps", "-d", str(tmp)], capture_output=True, text=True)  # fmt: skip
    for sdist in tmp.glob("psycopg-*.tar.gz"):
        with tarfile.open(sdist) as tar:
            names = [n for n in tar.getnames() if "/tests/" in n]
            if names:
                tar.extractall(tmp / "sdist", members=[tar.getmember(n) for n in names], filter="data")
                (tests,) = {p.parent for p in (tmp / "sdist").rglob("conftest.py") if p.parent.name == "tests"}
                return _cache(tests, cached)
    raise SystemExit("psycopg's test suite is not reachable: the sdist has no tests"
                     f"{'' if dl.returncode == 0 else ' (and pip download failed)'} and GitHub cannot be cloned; "
                     "pass --suite DIR with a psycopg checkout")  # fmt: skip


def _cache(tests: Path, cached: Path) -> Path:
    """Copy a `tests` folder (only that: a `psycopg/` folder next to it would shadow the installed package)."""
    if cached.exists():
        shutil.rmtree(cached)
    shutil.copytree(tests, cached / "tests")
    return cached


def runner_venv(version: str) -> Path:
    """A venv with psycopg at `version` and the suite's test dependencies (made once)."""
    venv = CACHE / f"venv-psycopg-{version}"
    py = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"psycopg[binary]=={version}", *RUNNER_DEPS],
                       check=True)  # fmt: skip
        (venv / ".ready").write_text(version)
    return py


# --- the gateway ------------------------------------------------------------------------------------------------

POLICY = f"""target: {TARGET}
scopes:
  admin:
    max_ttl: 4h
    sql:
      mode: admin
"""


async def serve(spec: dict[str, Any]) -> None:
    """Run a gateway for the cluster in `spec`; print its port and an admin token; serve until stdin closes."""
    from gateway.config import Address, Config, Login, Target
    from gateway.control.grants import issue_grant
    from gateway.pg.listener import PostgresListener
    from gateway.secret import Secret
    from gateway.services import build_services

    base = Path(spec["base"])
    (base / "policies").mkdir(parents=True, exist_ok=True)
    (base / "policies" / "orders.yaml").write_text(POLICY)
    login = Login("admin", "app_admin", Secret(spec["password"]))
    target = Target(name=TARGET, kind="postgres", address=Address("127.0.0.1", spec["pg_port"]),
                    logins={"admin": login}, database="orders")  # fmt: skip
    config = Config(path=None, base_dir=base, listen_postgres=Address("127.0.0.1", 0),
                    store_url=f"sqlite:///{base}/gateway.db", keys_dir=base / "keys", policies_dir=base / "policies",
                    recordings_dir=base / "recordings", tls_cert=base / "keys/tls.crt", tls_key=base / "keys/tls.key",
                    targets={TARGET: target})  # fmt: skip
    services = await build_services(config)
    listener = PostgresListener(services)
    await listener.start()
    issued = await issue_grant(config, services.ring, services.store, services.policies, user="bench", target=TARGET,
                               scope="admin", ttl=4 * 3600, reason="BENCH driver suite", approvers=("ops",),
                               now=time.time())  # fmt: skip
    print(json.dumps({"port": listener.port, "token": issued.token}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await listener.close()
    await services.close()


def start_gateway(cluster: PgCluster, base: Path) -> tuple[subprocess.Popen[str], int, str]:
    spec = {"base": str(base), "pg_port": cluster.port, "password": cluster.passwords["app_admin"]}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(spec)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    return proc, int(info["port"]), str(info["token"])


# --- running and comparing -------------------------------------------------------------------------------------------


def run_suite(py: Path, suite: Path, dsn: str, out: Path, extra: list[str]) -> dict[str, tuple[str, str]]:
    """Run the suite against `dsn`; each test's id -> (outcome, first line of its failure)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PSYCOPG_IMPL"] = "binary"
    cmd = [str(py), "-m", "pytest", "tests", "-q", "-p", "no:randomly", "-p", "no:cov", "-o", f"cache_dir={out}.cache",
           f"--junitxml={out}", f"--test-dsn={dsn}", "-o", "junit_family=xunit2", *extra]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=suite, env=env, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout else []
    log(f"  {time.monotonic() - t0:.0f} s, pytest exit {proc.returncode}: {tail[0] if tail else proc.stderr[-300:]}")
    return parse_junit(out)


def parse_junit(path: Path) -> dict[str, tuple[str, str]]:
    results: dict[str, tuple[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = f"{case.get('classname')}::{case.get('name')}"
        outcome, why = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                first = (child.get("message") or child.text or "").strip().splitlines()[:1]
                outcome, why = "failed", first[0][:200] if first else ""
                break
            if child.tag == "skipped":
                outcome = "skipped"
        results[tid] = (outcome, why)
    return results


def expected_reason(tid: str, message: str) -> str | None:
    """Why a test is expected to differ (its id or its failure matches EXPECTED), or None."""
    for pattern, reason in EXPECTED:
        if re.search(pattern, tid):
            return reason
    for pattern, reason in EXPECTED_FAILURES:
        if re.search(pattern, message):
            return reason
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", help="a psycopg checkout (or its tests folder)")
    ap.add_argument("-k", dest="keyword", help="only tests matching this pytest -k expression")
    ap.add_argument("--keep", action="store_true", help="keep the gateway's folder (recordings, store)")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve(json.loads(args.serve)))
        return 0
    version = importlib.metadata.version("psycopg")
    suite = find_suite(args.suite, version)
    py = runner_venv(version)
    extra = ["-k", args.keyword] if args.keyword else []
    cluster = PgCluster().start()
    base = Path(tempfile.mkdtemp(prefix="gw-driver-suite-"))
    gw: subprocess.Popen[str] | None = None
    try:
        gw, port, token = start_gateway(cluster, base)
        admin = cluster.passwords["app_admin"]
        direct_dsn = f"host=127.0.0.1 port={cluster.port} user=app_admin password={admin} dbname=orders"
        gateway_dsn = f"host=127.0.0.1 port={port} user=bench password={token} dbname={TARGET} sslmode=require"
        log(f"psycopg {version} suite from {suite}; direct run")
        direct = run_suite(py, suite, direct_dsn, base / "direct.xml", extra)
        log("through the gateway")
        through = run_suite(py, suite, gateway_dsn, base / "gateway.xml", extra)
    finally:
        if gw is not None and gw.stdin is not None:
            gw.stdin.close()
            gw.wait(30)
        cluster.stop()
    passed_direct = {t for t, (o, _) in direct.items() if o == "passed"}
    passed_both = {t for t in passed_direct if through.get(t, ("missing", ""))[0] == "passed"}
    lost = sorted(passed_direct - passed_both)
    gained = sorted(t for t, (o, _) in through.items() if o == "passed" and t not in passed_direct)
    ratio = len(passed_both) / len(passed_direct) if passed_direct else 0.0
    print(f"psycopg {version}: {len(direct)} tests; direct passes {len(passed_direct)}, through the gateway "
          f"{len(passed_both)} of those: {ratio:.1%} of direct")  # fmt: skip
    known = [(t, expected_reason(t, through.get(t, ("missing", ""))[1])) for t in lost]
    reasons: dict[str, list[str]] = {}
    for t, why in known:
        reasons.setdefault(why or "", []).append(t)
    for why, tests in sorted(reasons.items(), key=lambda kv: (kv[0] == "", -len(kv[1]))):
        print(f"\n{len(tests)} {'UNEXPECTED' if not why else 'expected'}: {why or 'no known reason'}")
        for t in tests:
            print(f"  {t}  -- {through.get(t, ('missing', ''))[1]}")
    if gained:
        print(f"\n{len(gained)} pass only through the gateway: {', '.join(gained[:20])}")
    unexpected = len(reasons.get("", []))
    expected = len(lost) - unexpected
    excluding = len(passed_both) / (len(passed_direct) - expected) if len(passed_direct) > expected else 0.0
    print(f"\nratio {ratio:.4f} ({len(passed_both)}/{len(passed_direct)}); {expected} expected differences, "
          f"{unexpected} unexpected; without the expected ones {excluding:.4f}")  # fmt: skip
    if args.keep:
        print(f"gateway folder kept: {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ratio >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
