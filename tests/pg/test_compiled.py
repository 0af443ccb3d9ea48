"""The optional mypyc build (scripts/build-mypyc) passes the same Postgres tests as the pure-Python modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rig import needs

ROOT = Path(__file__).resolve().parents[2]
COMPILED = ("machine", "journal", "codec", "fastdecode")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_compiled_build_passes_the_postgres_tests(tmp_path: Path) -> None:
    needs(shutil.which("cc") is not None, "no C compiler for the mypyc build")
    needs((Path(sys.executable).parent / "mypyc").exists(), "no mypyc beside the interpreter (it comes with mypy)")
    build = subprocess.run(["bash", str(ROOT / "scripts/build-mypyc"), "--into", str(tmp_path)], capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    # The tests run from the copy, so pytest puts the copy (not this tree) first on sys.path.
    shutil.copytree(ROOT / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    probe = f"import importlib; print(*[importlib.import_module('gateway.pg.' + m).__file__ for m in {COMPILED!r}])"
    where = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    files = where.stdout.split()
    assert len(files) == len(COMPILED) and all(f.startswith(str(tmp_path)) and f.endswith(".so") for f in files), files
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/pg",
                          "--ignore=tests/pg/test_compiled.py"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=850)  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1], run.stdout[-500:]
