"""Binance USDⓈ-M rate limits: the spot governor's request weight and 10-second order
count, plus the per-minute order count futures add (``X-MBX-ORDER-COUNT-1M``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quoteforge.clock import NS, Clock
from quoteforge.exchanges.binance.ratelimit import BinanceRateGovernor
from quoteforge.ratelimit import FixedWindow

__all__ = ["BinanceUsdmRateGovernor"]


class BinanceUsdmRateGovernor(BinanceRateGovernor):
    """Weight per minute (2400), orders per 10 s (300) and per minute (1200): the
    USDⓈ-M defaults until ``exchangeInfo['rateLimits']`` says otherwise, each kept in
    step with the venue's own counts from the response headers."""

    def __init__(self, clock: Clock, *, headroom: float = 0.9) -> None:
        super().__init__(
            clock,
            weight_per_minute=2400,
            orders_per_10s=300,
            orders_per_day=10**9,
            headroom=headroom,
        )
        self.orders_1m = FixedWindow(60 * NS, int(1200 * headroom))

    def configure(self, rate_limits: list[Mapping[str, Any]]) -> None:
        super().configure(rate_limits)
        for item in rate_limits:
            if (
                item.get("rateLimitType") == "ORDERS"
                and item.get("interval") == "MINUTE"
                and int(item.get("intervalNum", 1)) == 1
            ):
                self.orders_1m.limit = int(int(item.get("limit", 0)) * self.headroom)

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        super().observe(status, headers)
        for key, value in headers.items():
            if key.lower() == "x-mbx-order-count-1m":
                try:
                    count = int(value)
                except ValueError:
                    return
                self.orders_1m.roll(self.clock.now_ns())
                used = self.orders_1m.used
                self.orders_1m.used = max(used, count) if used else count

    def delay_for(self, weight: int, orders: int = 0) -> float:
        wait = super().delay_for(weight, orders)
        if orders:
            wait = max(wait, self.orders_1m.wait_ns(self.clock.now_ns(), orders) / NS)
        return wait

    def reserve(self, weight: int, orders: int = 0) -> None:
        super().reserve(weight, orders)
        if orders:
            self.orders_1m.roll(self.clock.now_ns())
            self.orders_1m.used += orders
