"""PostgreSQL front end: wire protocol, relay and statement inspection."""

from pathlib import Path as _Path

# scripts/build-mypyc compiles the hot modules in place, and Python prefers an extension: one older than its
# source would run code that is no longer there. Refuse it (rebuild, or `scripts/build-mypyc --clean`).
_HERE = _Path(__file__).parent
for _so in _HERE.glob("*.so"):
    _src = _HERE / (_so.name.split(".", 1)[0] + ".py")
    if _src.exists() and _so.stat().st_mtime < _src.stat().st_mtime:
        raise ImportError(f"{_so.name} is older than {_src.name}: run scripts/build-mypyc again, or with --clean")
