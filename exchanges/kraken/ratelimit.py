"""Kraken's rate-limit governor: one decaying counter per pair, shared by REST and
websocket trading, with extra cost for cancelling or amending young orders (the cost
functions are used by the simulated venue profiles too), and 429 ``Retry-After``."""

from __future__ import annotations

import asyncio

from quoteforge.clock import NS, Clock
from quoteforge.ratelimit import RateGovernor, RateLimitError

__all__ = ["KRAKEN_TIERS", "KrakenRateGovernor", "kraken_amend_cost", "kraken_cancel_cost"]


# Kraken: counter increments by transaction type and the age of the order (seconds since
# it was placed or last amended). Cancelling a young order is what costs most.
_CANCEL_PENALTY = ((5, 8), (10, 6), (15, 5), (45, 4), (90, 2), (300, 1))
_AMEND_PENALTY = ((5, 3), (10, 2), (15, 1), (45, 1))

KRAKEN_TIERS: dict[str, tuple[float, float]] = {
    # tier: (maximum counter, decay per second)
    "starter": (60.0, 1.0),
    "intermediate": (125.0, 2.34),
    "pro": (180.0, 3.75),
}


def _penalty(table: tuple[tuple[int, int], ...], age_s: float) -> int:
    for limit, cost in table:
        if age_s < limit:
            return cost
    return 0


def kraken_cancel_cost(age_s: float) -> float:
    """Counter cost of cancelling an order that rested ``age_s`` seconds."""
    return float(_penalty(_CANCEL_PENALTY, age_s))


def kraken_amend_cost(age_s: float) -> float:
    """Counter cost of amending an order that rested ``age_s`` seconds (1 fixed + penalty)."""
    return 1.0 + _penalty(_AMEND_PENALTY, age_s)


class KrakenRateGovernor(RateGovernor):
    """One decaying counter per pair, shared by REST and websocket trading."""

    ADD_COST = 1.0

    def __init__(self, clock: Clock, *, tier: str = "starter", headroom: float = 0.9) -> None:
        super().__init__(clock)
        if tier not in KRAKEN_TIERS:
            raise ValueError(
                f"unknown Kraken tier {tier!r}; expected one of {sorted(KRAKEN_TIERS)}"
            )
        maximum, decay = KRAKEN_TIERS[tier]
        self.maximum = maximum * headroom
        self.decay_per_s = decay
        self._counters: dict[str, tuple[float, int]] = {}

    def counter(self, pair: str) -> float:
        value, at = self._counters.get(pair, (0.0, 0))
        elapsed = (self.clock.now_ns() - at) / NS
        return max(0.0, value - elapsed * self.decay_per_s)

    def delay_for(self, pair: str, cost: float) -> float:
        """Seconds until ``cost`` fits under the pair's maximum."""
        blocked = self.blocked_for()
        over = self.counter(pair) + cost - self.maximum
        return max(blocked, over / self.decay_per_s if over > 0 else 0.0)

    def charge(self, pair: str, cost: float) -> None:
        self._counters[pair] = (self.counter(pair) + cost, self.clock.now_ns())

    def on_limit_exceeded(self, pair: str) -> None:
        """The venue said ``EOrder:Rate limit exceeded``: our estimate was low; fill it."""
        self.limit_hits += 1
        self._counters[pair] = (max(self.counter(pair), self.maximum), self.clock.now_ns())

    async def acquire(self, pair: str, cost: float, *, max_wait: float = 60.0) -> None:
        while True:
            delay = self.delay_for(pair, cost)
            if delay <= 0:
                self.charge(pair, cost)
                return
            if delay > max_wait:
                raise RateLimitError(
                    f"kraken rate limit on {pair}: would wait {delay:.1f}s (> {max_wait:.1f}s)",
                    delay,
                )
            await asyncio.sleep(delay)
