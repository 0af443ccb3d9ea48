"""Exfiltration shapes: `SELECT *` with no WHERE on a large table, a sensitive table read whole, COPY of one out.

Judged from the inspector's fingerprint (lowercased, literals replaced, tokens space-separated) and its
table names, once per statement shape (`shape_of` is cached by fingerprint); rows come from CommandComplete.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from gateway.detect.model import Detection

SELECT_STAR_LARGE = "exfil.select_star_large"
SENSITIVE_WHOLE = "exfil.sensitive_whole"
COPY_SENSITIVE = "exfil.copy_sensitive"
RULES = (SELECT_STAR_LARGE, SENSITIVE_WHOLE, COPY_SENSITIVE)
LARGE_ROWS = 10_000

# A single-table SELECT of every column with no filter, grouping or limit (a join or subquery is not "whole").
_STAR_WHOLE = re.compile(r"^select \* from (?:\"[^\"]+\"|[\w$]+)(?: \. (?:\"[^\"]+\"|[\w$]+))?(?: ;)?$")
_WHOLE = re.compile(r"^select (?!.*\b(?:where|limit|fetch|group|having|join|offset|union)\b)[^()]* from [^()]*$")
_COPY_OUT = re.compile(r"^copy .* to stdout\b")


@dataclass(frozen=True, slots=True)
class Shape:
    """What a statement shape could carry out."""

    star_whole: bool  # SELECT * FROM t, nothing else
    whole: bool  # a SELECT from tables with no WHERE/LIMIT/GROUP/JOIN
    copy_out: bool  # COPY ... TO STDOUT


@lru_cache(maxsize=4096)
def shape_of(fingerprint: str) -> Shape:
    """The exfiltration facts of one fingerprint."""
    whole = _WHOLE.match(fingerprint) is not None
    return Shape(_STAR_WHOLE.match(fingerprint) is not None, whole, _COPY_OUT.match(fingerprint) is not None)


def _sensitive(tables: Iterable[str], sensitive: frozenset[str]) -> list[str]:
    # A table named with or without its schema matches a policy entry written either way.
    return sorted(t for t in tables if t in sensitive or t.rsplit(".", 1)[-1] in sensitive)


def before_run(
    fingerprint: str, tables: Iterable[str], sensitive: frozenset[str], *, user: str, target: str, session: str
) -> list[Detection]:
    """Shapes judged before the statement runs (a policy may deny them): a sensitive table read whole or copied out."""
    if not sensitive:
        return []
    shape = shape_of(fingerprint)
    if not (shape.whole or shape.copy_out):
        return []
    hit = _sensitive(tables, sensitive)
    if not hit:
        return []
    if shape.copy_out:
        return [
            Detection(
                COPY_SENSITIVE,
                "critical",
                f"{user} copied sensitive table {', '.join(hit)} out of {target} with COPY ... TO STDOUT",
                user,
                target,
                session,
            )
        ]
    return [
        Detection(
            SENSITIVE_WHOLE,
            "warning",
            f"{user} read the whole of sensitive table {', '.join(hit)} on {target} (no WHERE or LIMIT)",
            user,
            target,
            session,
        )
    ]


def after_run(
    fingerprint: str,
    tables: Iterable[str],
    rows: int | None,
    *,
    user: str,
    target: str,
    session: str,
    large: int = LARGE_ROWS,
) -> list[Detection]:
    """Judged on completion: `SELECT *` with no WHERE that returned at least `large` rows."""
    if rows is None or rows < large or not shape_of(fingerprint).star_whole:
        return []
    names = ", ".join(sorted(tables)) or "a table"
    return [
        Detection(
            SELECT_STAR_LARGE,
            "warning",
            f"{user} read all {rows} rows of {names} on {target} with SELECT * and no WHERE",
            user,
            target,
            session,
        )
    ]
