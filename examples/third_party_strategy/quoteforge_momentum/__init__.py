"""A momentum-leaning two-sided quoter, shipped as an independent quoteforge plugin."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

import quoteforge
from quoteforge import Market, Side, Strategy, StrategyParams


class MomentumParams(StrategyParams):
    half_spread_bps: float = Field(
        8.0, gt=0, description="Distance of each quote from the fair price, bps."
    )
    order_size: float = Field(gt=0, description="Quote size in base units.")
    fast_seconds: float = Field(
        5.0, gt=0, description="Time constant of the fast average, seconds."
    )
    slow_seconds: float = Field(
        60.0, gt=0, description="Time constant of the slow average, seconds."
    )
    lean: float = Field(
        0.5, ge=0, le=2, description="How much of the fast-slow gap the quotes lean toward."
    )


class MomentumQuoter(Strategy):
    """Quotes around the fast average, shifted by ``lean`` times the fast-slow gap."""

    Params = MomentumParams
    params: MomentumParams
    interface_version = 2  # ticks and lots at the surface; refused by another major version

    def __init__(self, ctx: quoteforge.StrategyContext, params: MomentumParams) -> None:
        super().__init__(ctx, params)
        self._state: dict[str, tuple[float, float, float]] = {}  # key -> (t, fast, slow)

    def averages(self, market: Market) -> tuple[float, float] | None:
        mid = market.book.mid()
        if mid is None:
            return None
        now = self.ctx.now()
        previous = self._state.get(market.key)
        if previous is None:
            fast = slow = mid
        else:
            t, fast, slow = previous
            dt = max(0.0, now - t)
            a_fast = 1 - math.exp(-dt / self.params.fast_seconds)
            a_slow = 1 - math.exp(-dt / self.params.slow_seconds)
            fast += a_fast * (mid - fast)
            slow += a_slow * (mid - slow)
        self._state[market.key] = (now, fast, slow)
        return fast, slow

    def on_book(self, market: Market, **kwargs: Any) -> list[quoteforge.Quote] | None:
        averages = self.averages(market)
        if averages is None:
            return []
        fast, slow = averages
        fair = fast + self.params.lean * (fast - slow)
        half = fair * self.params.half_spread_bps / 1e4
        # Prices onto the tick grid, passively (bids down, asks up); size in lots.
        lots = market.lots(self.params.order_size)
        quotes = [
            market.bid(market.ticks(fair - half, Side.BUY), lots),
            market.ask(market.ticks(fair + half, Side.SELL), lots),
        ]
        return [q for q in quotes if q is not None]


@quoteforge.hookimpl
def quoteforge_register_strategies(register: Any) -> None:
    # "momentum_quoter" is the type manifests write (`type: momentum_quoter`); the
    # description is the one line `quoteforge plugins` shows for it (without one, the
    # first line of the class docstring is used).
    register(
        "momentum_quoter",
        MomentumQuoter,
        description="Two-sided quotes around a fast average, leaning with momentum.",
    )
