"""Binance's rate-limit governor: request weight and order counts kept in step with the
counts the venue reports in its response headers (``X-MBX-USED-WEIGHT-1M``,
``X-MBX-ORDER-COUNT-10S``, ``X-MBX-ORDER-COUNT-1D``), and 429/418 ``Retry-After``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from quoteforge.clock import NS, Clock
from quoteforge.ratelimit import FixedWindow, RateGovernor, RateLimitError

__all__ = ["BinanceRateGovernor"]


class BinanceRateGovernor(RateGovernor):
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
        self.weight = FixedWindow(60 * NS, int(weight_per_minute * headroom))
        self.orders_10s = FixedWindow(10 * NS, int(orders_per_10s * headroom))
        self.orders_day = FixedWindow(86_400 * NS, int(orders_per_day * headroom))

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
