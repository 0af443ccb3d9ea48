"""Parse and print durations like `30s`, `10m`, `1h`, `7d`."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+)([smhd])")


def parse_duration(text: str) -> float:
    """Seconds in `text` (`90s`, `10m`, `1h30m`, `2d`); ValueError with the accepted forms otherwise."""
    s = text.strip().lower()
    pos = 0
    total = 0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"invalid duration {text!r}: use a number with s, m, h or d, like 30s, 10m, 1h")
    if total <= 0:
        raise ValueError(f"invalid duration {text!r}: must be more than zero")
    return float(total)


def format_duration(seconds: float) -> str:
    """The shortest exact form: 3600 -> '1h', 90 -> '1m30s'."""
    rest = round(seconds)
    if rest <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)
