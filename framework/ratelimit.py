"""Rate-limit governors: pace requests to what a venue says is left, never a static table.

Binance reports usage in response headers (``X-MBX-USED-WEIGHT-1M``,
``X-MBX-ORDER-COUNT-10S``); Kraken keeps one decaying counter per pair with extra
cost for cancelling or amending young orders. Both honour 429/418 ``Retry-After``.
Time comes from the run's clock, so the arithmetic is testable in virtual time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quoteforge.clock import NS, Clock

__all__ = [
    "KRAKEN_TIERS",
    "BinanceRateGovernor",
    "KrakenRateGovernor",
    "RateLimitError",
    "kraken_amend_cost",
    "kraken_cancel_cost",
]


class RateLimitError(Exception):
    """The venue asked us to wait; ``retry_after_s`` says how long."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _Backoff:
    """The shared ``Retry-After`` block: after a 429 or 418 nothing is sent until it ends."""

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
class _Window:
    length_ns: int
    limit: int
    start_ns: int = 0
    used: int = 0

    def roll(self, now_ns: int) -> None:
        start = now_ns - now_ns % self.length_ns
        if start != self.start_ns:
            self.start_ns, self.used = start, 0

    def wait_ns(self, now_ns: int, amount: int) -> int:
        self.roll(now_ns)
        if self.used + amount <= self.limit:
            return 0
        return self.start_ns + self.length_ns - now_ns


class BinanceRateGovernor(_Backoff):
    """Request weight per minute and new orders per 10 s / per day, kept in step with
    the venue's own counts from the response headers.

    ``headroom`` keeps a share of each limit unused for requests other processes on the
    same IP or account make (the venue counts them, we cannot see them coming).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        weight_per_minute: int = 6000,
        orders_per_10s: int = 100,
        orders_per_day: int = 200_000,
        headroom: float = 0.9,
    ) -> None:
        super().__init__(clock)
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        self.headroom = headroom
        self.weight = _Window(60 * NS, int(weight_per_minute * headroom))
        self.orders_10s = _Window(10 * NS, int(orders_per_10s * headroom))
        self.orders_day = _Window(86_400 * NS, int(orders_per_day * headroom))

    def configure(self, rate_limits: list[Mapping[str, Any]]) -> None:
        """Take the limits from ``exchangeInfo['rateLimits']``."""
        for item in rate_limits:
            kind = item.get("rateLimitType")
            interval = item.get("interval")
            num = int(item.get("intervalNum", 1))
            limit = int(int(item.get("limit", 0)) * self.headroom)
            if kind == "REQUEST_WEIGHT" and interval == "MINUTE" and num == 1:
                self.weight.limit = limit
            elif kind == "ORDERS" and interval == "SECOND" and num == 10:
                self.orders_10s.limit = limit
            elif kind == "ORDERS" and interval == "DAY":
                self.orders_day.limit = limit

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Update from one response's status and headers (any capitalisation)."""
        now = self.clock.now_ns()
        lowered = {k.lower(): v for k, v in headers.items()}
        for key, window in (
            ("x-mbx-used-weight-1m", self.weight),
            ("x-mbx-order-count-10s", self.orders_10s),
            ("x-mbx-order-count-1d", self.orders_day),
        ):
            value = lowered.get(key)
            if value is None:
                continue
            try:
                count = int(value)
            except ValueError:
                continue
            window.roll(now)
            # The venue's count includes requests still in flight from us; never go below it.
            window.used = max(window.used, count) if window.used else count
        if status in (418, 429):
            retry = lowered.get("retry-after")
            try:
                seconds = float(retry) if retry is not None else 60.0
            except ValueError:
                seconds = 60.0
            self.on_retry_after(seconds, banned=status == 418)

    def delay_for(self, weight: int, orders: int = 0) -> float:
        """Seconds to wait before a request of this weight (and new-order count) fits."""
        now = self.clock.now_ns()
        wait = max(self.blocked_until_ns - now, self.weight.wait_ns(now, weight))
        if orders:
            wait = max(
                wait, self.orders_10s.wait_ns(now, orders), self.orders_day.wait_ns(now, orders)
            )
        return max(wait, 0) / NS

    def reserve(self, weight: int, orders: int = 0) -> None:
        now = self.clock.now_ns()
        self.weight.roll(now)
        self.weight.used += weight
        if orders:
            for window in (self.orders_10s, self.orders_day):
                window.roll(now)
                window.used += orders

    async def acquire(self, weight: int, orders: int = 0, *, max_wait: float = 120.0) -> None:
        """Wait until the request fits, then count it; ``RateLimitError`` past ``max_wait``."""
        while True:
            delay = self.delay_for(weight, orders)
            if delay <= 0:
                self.reserve(weight, orders)
                return
            if delay > max_wait:
                raise RateLimitError(
                    f"binance rate limit: would wait {delay:.1f}s (> {max_wait:.1f}s); "
                    f"{self.block_reason or 'window full'}",
                    delay,
                )
            await asyncio.sleep(delay)


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


class KrakenRateGovernor(_Backoff):
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
