"""Regular expressions in linear time (RE2, google-re2) for every pattern matched against what users send.

Python's `re` backtracks: `(a+)+$` against a long run of a's never ends, and it holds the interpreter's lock
meanwhile, so one line typed by an engineer against one careless policy rule would stall every session of the
process. RE2 matches in time linear in the text and releases the lock. It has no backreferences or lookaround,
and its `\\b`, `\\w`, `\\d` are ASCII; a pattern it does not take is refused, saying so.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Protocol

import re2

SYNTAX = "RE2 syntax, matched in linear time: no backreferences or lookaround"


class LinearPattern(Protocol):
    """What callers use of a compiled pattern (RE2's, or `re`'s in tests that build policies by hand)."""

    @property
    def pattern(self) -> str: ...

    def search(self, text: str) -> Any: ...

    def fullmatch(self, text: str) -> Any: ...


def compile_linear(pattern: str, *, ignore_case: bool = False) -> LinearPattern:
    """`pattern` compiled by RE2 (`search`, `fullmatch` as in `re`); ValueError with RE2's reason if refused."""
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own line to stderr; the caller reports the reason instead
    options.case_sensitive = not ignore_case
    try:
        compiled: LinearPattern = re2.compile(pattern, options)
        return compiled
    except re2.error as exc:
        why = exc.args[0] if exc.args else "invalid"
        raise ValueError(why.decode("utf-8", "replace") if isinstance(why, bytes) else str(why)) from None


@lru_cache(maxsize=1024)
def cached(pattern: str) -> LinearPattern:
    """compile_linear of a policy's pattern, once (policies are validated at load, so this does not fail)."""
    return compile_linear(pattern)
