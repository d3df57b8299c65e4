"""Venue-neutral parts of a rate-limit governor: pace requests to what a venue says is
left, never a static table.

A venue's governor (``quoteforge.exchanges.binance.ratelimit.BinanceRateGovernor``,
``quoteforge.exchanges.kraken.ratelimit.KrakenRateGovernor``) subclasses ``RateGovernor``
for the ``Retry-After`` block every venue shares (429 limit hit, 418 ban) and counts its
own limits, with ``FixedWindow`` for counts that restart on fixed clock intervals. Time
comes from the run's clock, so the arithmetic is testable in virtual time. The kernel
holds only these pieces so that a new venue's governor needs no kernel change.
"""

from __future__ import annotations

from dataclasses import dataclass

from quoteforge.clock import NS, Clock

__all__ = ["FixedWindow", "RateGovernor", "RateLimitError"]


class RateLimitError(Exception):
    """The venue asked us to wait; ``retry_after_s`` says how long."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateGovernor:
    """The ``Retry-After`` block every venue governor shares: after a 429 (limit hit) or
    418 (IP ban) nothing is sent until it ends.

    Subclasses add the venue's own counters and an ``acquire`` that waits for both; they
    read ``blocked_until_ns`` (or ``blocked_for()``) and report an answer's
    ``Retry-After`` with ``on_retry_after``. ``bans`` and ``limit_hits`` count what the
    venue refused, for the adapter's counters.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.blocked_until_ns = 0
        self.block_reason = ""
        self.bans = 0
        self.limit_hits = 0

    def on_retry_after(self, seconds: float, *, banned: bool = False) -> None:
        """Record a 429 (limit hit) or 418 (IP ban) and block for ``seconds``."""
        if banned:
            self.bans += 1
        else:
            self.limit_hits += 1
        until = self.clock.now_ns() + int(max(seconds, 0.0) * NS)
        if until > self.blocked_until_ns:
            self.blocked_until_ns = until
            self.block_reason = "banned (418)" if banned else "rate limited (429)"

    def blocked_for(self) -> float:
        """Seconds left of a Retry-After block (0 when none)."""
        return max(0, self.blocked_until_ns - self.clock.now_ns()) / NS


@dataclass
class FixedWindow:
    """A count the venue restarts on fixed clock intervals of ``length_ns`` (a minute
    window starts on the minute, not at our first request), allowed up to ``limit``."""

    length_ns: int
    limit: int
    start_ns: int = 0
    used: int = 0

    def roll(self, now_ns: int) -> None:
        """Start a new interval (count 0) when ``now_ns`` is past the current one."""
        start = now_ns - now_ns % self.length_ns
        if start != self.start_ns:
            self.start_ns, self.used = start, 0

    def wait_ns(self, now_ns: int, amount: int) -> int:
        """Nanoseconds until ``amount`` more fits (0: it fits now)."""
        self.roll(now_ns)
        if self.used + amount <= self.limit:
            return 0
        return self.start_ns + self.length_ns - now_ns
