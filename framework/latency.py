"""Latency recording for the hot path: fixed log-spaced buckets, O(1) per sample.

Buckets double from 1 µs, so a histogram costs one ``bit_length`` and one increment per
sample; percentiles are read from the bucket counts (upper bound of the bucket).
"""

from __future__ import annotations

__all__ = ["LatencyHistogram"]


class LatencyHistogram:
    """Counts of nanosecond latencies in power-of-two buckets starting at 1 µs."""

    BUCKETS = 32

    __slots__ = ("count", "counts", "max_ns", "sum_ns")

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.count = 0
        self.sum_ns = 0
        self.max_ns = 0

    def record(self, ns: int) -> None:
        index = (ns // 1000).bit_length() if ns > 0 else 0
        if index >= 32:  # BUCKETS, as a constant: this runs on every strategy call
            index = 31
        self.counts[index] += 1
        self.count += 1
        self.sum_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    @staticmethod
    def upper_bound_ns(index: int) -> int:
        """Largest latency that falls in bucket ``index``."""
        return (1 << index) * 1000 - 1 if index else 999

    def buckets_seconds(self) -> list[tuple[float, int]]:
        """Cumulative (upper bound in seconds, count) pairs, Prometheus style."""
        out = []
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            out.append(((self.upper_bound_ns(index) + 1) / 1e9, seen))
        return out
