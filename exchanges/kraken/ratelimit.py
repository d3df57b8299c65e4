"""Kraken's rate-limit governors: the trading engine's decaying counter per pair, shared
by REST and websocket trading, with extra cost for cancelling or amending young orders
(the cost functions are used by the simulated venue profiles too), and 429
``Retry-After``; and the REST call counter of the API key, which every other private REST
call uses (https://docs.kraken.com/api/docs/guides/spot-rest-ratelimits)."""

from __future__ import annotations

import asyncio

from quoteforge.clock import NS, Clock
from quoteforge.ratelimit import RateGovernor, RateLimitError

__all__ = [
    "KRAKEN_REST_TIERS",
    "KRAKEN_TIERS",
    "KrakenRateGovernor",
    "KrakenRestGovernor",
    "kraken_amend_cost",
    "kraken_cancel_cost",
    "kraken_rest_cost",
]


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


KRAKEN_REST_TIERS: dict[str, tuple[float, float]] = {
    # tier: (maximum of the REST call counter, decay per second)
    "starter": (15.0, 0.33),
    "intermediate": (20.0, 0.5),
    "pro": (20.0, 1.0),
}
"""The REST call counter of each verification tier (the same tier names as the trading
engine's ``KRAKEN_TIERS``, a different limiter)."""

# The calls the REST counter charges 2 ("ledger/trade history calls"), and those on the
# trading engine's per-pair counter instead; every other private call costs 1.
_HISTORY_CALLS = frozenset({"ledgers", "queryledgers", "tradeshistory", "querytrades"})
_TRADING_CALLS = frozenset({"addorder", "cancelorder"})


def kraken_rest_cost(method: str) -> float:
    """What one call adds to the API key's REST call counter. ``method`` is ccxt's
    implicit-API name (``private_post_tradeshistory``) or the endpoint
    (``TradesHistory``); public calls cost nothing."""
    name = method.lower()
    if name.startswith("public_"):
        return 0.0
    name = name.removeprefix("private_post_").removeprefix("private_get_")
    if name in _TRADING_CALLS:
        return 0.0
    return 2.0 if name in _HISTORY_CALLS else 1.0


class KrakenRestGovernor(RateGovernor):
    """The REST call counter of one API key: it rises by each private call's cost
    (``kraken_rest_cost``) and decays at the tier's rate; the venue refuses a call over
    the tier's maximum (``EAPI:Rate limit exceeded``) and keeps refusing while calls
    continue. Calls are charged before they are sent and wait until they fit under
    ``headroom`` of the maximum. The venue lowers its counter every couple of seconds
    rather than continuously, so the estimate may run a little low: the headroom covers
    that, and a refusal fills the estimate (``on_limit_exceeded``)."""

    def __init__(self, clock: Clock, *, tier: str = "starter", headroom: float = 0.9) -> None:
        super().__init__(clock)
        if tier not in KRAKEN_REST_TIERS:
            raise ValueError(
                f"unknown Kraken tier {tier!r}; expected one of {sorted(KRAKEN_REST_TIERS)}"
            )
        self.tier = tier
        self.venue_maximum, self.decay_per_s = KRAKEN_REST_TIERS[tier]
        self.maximum = self.venue_maximum * headroom
        self._value = 0.0
        self._at = 0

    def counter(self) -> float:
        """The estimated counter now."""
        elapsed = (self.clock.now_ns() - self._at) / NS
        return max(0.0, self._value - elapsed * self.decay_per_s)

    def delay_for(self, cost: float) -> float:
        """Seconds until a call of ``cost`` fits under the maximum."""
        over = self.counter() + cost - self.maximum
        return max(self.blocked_for(), over / self.decay_per_s if over > 0 else 0.0)

    def charge(self, cost: float) -> None:
        self._value, self._at = self.counter() + cost, self.clock.now_ns()

    def on_limit_exceeded(self, cost: float) -> None:
        """The venue answered a call of ``cost`` ``EAPI:Rate limit exceeded``: its counter
        was over its maximum (another program on the key, or a slower decay than ours),
        and the refused call counted too. Fill the estimate to match."""
        self.limit_hits += 1
        level = max(self.counter(), self.venue_maximum + cost)
        self._value, self._at = level, self.clock.now_ns()

    async def acquire(self, cost: float, *, max_wait: float) -> float:
        """Wait until a call of ``cost`` fits, then charge it; the seconds waited.
        ``RateLimitError`` when that would take longer than ``max_wait``."""
        waited = 0.0
        while True:
            delay = self.delay_for(cost)
            if delay <= 0:
                self.charge(cost)
                return waited
            if waited + delay > max_wait:
                raise RateLimitError(
                    f"the API key's REST call counter is full for {delay:.1f}s more, "
                    f"longer than the {max_wait - waited:.1f}s max_rate_wait_s leaves",
                    delay,
                )
            await asyncio.sleep(delay)
            waited += delay
