"""A fixed log-scale histogram: O(1) insert, quantiles good to one bucket (~19% wide), JSON-serialisable."""

from __future__ import annotations

import math

BUCKETS = 96  # 2**(96/4) = 16.7 million: rows, bytes (KiB), seconds and rates all fit
_PER_OCTAVE = 4


class LogHistogram:
    """Counts of values in buckets [2**(i/4), 2**((i+1)/4)); bucket 0 also holds everything below 1."""

    __slots__ = ("counts", "total")

    def __init__(self, counts: list[int] | None = None) -> None:
        self.counts = list(counts) if counts else [0] * BUCKETS
        self.total = sum(self.counts)

    @staticmethod
    def bucket(value: float) -> int:
        """The bucket a value falls in."""
        if value < 1.0:
            return 0
        return min(BUCKETS - 1, int(math.log2(value) * _PER_OCTAVE))

    def add(self, value: float) -> None:
        """Count one value."""
        self.counts[self.bucket(value)] += 1
        self.total += 1

    def quantile(self, q: float) -> float:
        """The upper edge of the bucket holding quantile q (0 for an empty histogram)."""
        if self.total == 0:
            return 0.0
        need = q * self.total
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= need and c:
                return float(2 ** ((i + 1) / _PER_OCTAVE))
        return float(2 ** (BUCKETS / _PER_OCTAVE))
