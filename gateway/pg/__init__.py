"""PostgreSQL front end: wire protocol, relay and statement inspection."""

from pathlib import Path as _Path

# scripts/build-mypyc compiles machine.py in place, and Python prefers the extension: one older than its
# source would run code that is no longer there. Refuse it (rebuild, or `scripts/build-mypyc --clean`).
_HERE = _Path(__file__).parent
for _so in _HERE.glob("machine.*.so"):
    if _so.stat().st_mtime < (_HERE / "machine.py").stat().st_mtime:
        raise ImportError(f"{_so.name} is older than machine.py: run scripts/build-mypyc again, or with --clean")
