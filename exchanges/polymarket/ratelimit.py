"""Polymarket CLOB trading rate limits: each order-entry endpoint has a burst limit per
10 s and a sustained limit per 10 min on sliding windows (the venue's documented
table); the governor waits for room in both and honours ``Retry-After`` after a 429."""

from __future__ import annotations

import asyncio
from collections import deque

from quoteforge.clock import NS, Clock
from quoteforge.ratelimit import RateGovernor, RateLimitError

__all__ = ["POLYMARKET_LIMITS", "PolymarketRateGovernor", "SlidingWindow"]

POLYMARKET_LIMITS: dict[str, tuple[int, int | None]] = {
    # endpoint: (per 10 s, per 10 min or None), from docs.polymarket.com "Rate Limits";
    # every CLOB call also counts against the general 9,000 per 10 s ("*").
    "*": (9_000, None),
    "POST /order": (3_500, 36_000),
    "DELETE /order": (3_000, 30_000),
    "POST /orders": (1_000, 15_000),
    "GET /data/orders": (500, None),
    "GET /data/trades": (500, None),
    "GET /book": (1_500, None),
}


class SlidingWindow:
    """At most ``limit`` requests in any ``length_ns`` (the venue's windows slide)."""

    def __init__(self, length_ns: int, limit: int) -> None:
        self.length_ns = length_ns
        self.limit = limit
        self.sent: deque[int] = deque()

    def wait_ns(self, now_ns: int) -> int:
        sent = self.sent
        while sent and sent[0] <= now_ns - self.length_ns:
            sent.popleft()
        if len(sent) < self.limit:
            return 0
        return sent[0] + self.length_ns - now_ns

    def take(self, now_ns: int) -> None:
        self.sent.append(now_ns)


class PolymarketRateGovernor(RateGovernor):
    """The documented windows of each endpoint and the general one, scaled by ``headroom``."""

    def __init__(self, clock: Clock, *, headroom: float = 0.8) -> None:
        super().__init__(clock)
        self.windows: dict[str, list[SlidingWindow]] = {}
        for name, (burst, sustained) in POLYMARKET_LIMITS.items():
            windows = [SlidingWindow(10 * NS, max(1, int(burst * headroom)))]
            if sustained is not None:
                windows.append(SlidingWindow(600 * NS, max(1, int(sustained * headroom))))
            self.windows[name] = windows

    def _of(self, endpoint: str) -> list[SlidingWindow]:
        return [*self.windows["*"], *self.windows.get(endpoint, ())]

    def delay_for(self, endpoint: str) -> float:
        """Seconds until one more request on ``endpoint`` fits (0: now)."""
        now = self.clock.now_ns()
        wait = self.blocked_until_ns - now
        for window in self._of(endpoint):
            wait = max(wait, window.wait_ns(now))
        return max(0, wait) / NS

    async def acquire(self, endpoint: str, *, max_wait: float) -> None:
        """Wait for room on ``endpoint``; ``RateLimitError`` when that is over ``max_wait``."""
        waited = 0.0
        while (delay := self.delay_for(endpoint)) > 0:
            if waited + delay > max_wait:
                raise RateLimitError(
                    f"{endpoint}: the venue's limit leaves no room for {delay:.1f}s", delay
                )
            await asyncio.sleep(delay)
            waited += delay
        now = self.clock.now_ns()
        for window in self._of(endpoint):
            window.take(now)
