"""Ladder quoting: several levels per side, smallest at the touch and larger further out,
with spacing and size growth set by recent volatility and size by recent trading."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

import quoteforge
from quoteforge.model import Quote, Side
from quoteforge.strategies.signals import RealizedVolatility
from quoteforge.strategy import Market, Quotes, Strategy, StrategyContext, StrategyParams

__all__ = ["Ladder", "LadderParams", "ladder_sizes", "ladder_spacing_ticks"]


class LadderParams(StrategyParams):
    """Parameters of ``ladder``."""

    levels: int = Field(5, ge=1, le=50, description="Quotes per side.")
    min_spacing_ticks: int = Field(
        1, ge=1, description="Distance between neighbouring levels in calm markets, ticks."
    )
    spacing_vol_factor: float = Field(
        0.5,
        ge=0,
        description="Spacing is at least this multiple of the expected price move over "
        "vol_horizon_s (from realised volatility).",
    )
    vol_window_s: float = Field(
        300.0,
        gt=0,
        le=315_360_000,
        description="Window of the realised volatility estimate, seconds.",
    )
    vol_horizon_s: float = Field(
        10.0,
        gt=0,
        le=315_360_000,
        description="Horizon the expected price move is measured over, seconds.",
    )
    vol_min_samples: int = Field(
        10, ge=2, description="Mid returns needed before volatility affects the ladder."
    )
    size_growth: float = Field(
        0.5,
        ge=0,
        description="Calm-market growth of size per level: level i is (1 + g)^i times "
        "level 0, with g = size_growth / (spacing / min_spacing).",
    )
    participation: float = Field(
        0.1,
        gt=0,
        le=10,
        description="Total size per side as a fraction of the volume traded at the "
        "ladder's prices over trade_window_s.",
    )
    trade_window_s: float = Field(
        300.0, gt=0, le=315_360_000, description="Window of the traded-volume measure, seconds."
    )
    min_total_size: float = Field(
        0.0,
        ge=0,
        le=1e9,
        description="Total size per side (base units) quoted even with no trades.",
    )
    max_total_size: float = Field(
        gt=0, le=1e9, description="Cap on the total size per side, base units."
    )
    max_position: float | None = Field(
        None,
        gt=0,
        le=1e9,
        description="Absolute position in base units at which the side that grows it is pulled.",
    )


def ladder_spacing_ticks(
    min_spacing_ticks: int, vol_factor: float, expected_move: float | None, tick: float
) -> int:
    """Ticks between levels: the calm minimum, or a multiple of the expected price move
    when that is wider."""
    if expected_move is None:
        return min_spacing_ticks
    return max(min_spacing_ticks, math.ceil(round(vol_factor * expected_move / tick, 9)))


def ladder_sizes(total: float, levels: int, growth: float) -> list[float]:
    """Sizes from the touch outward: geometric with ratio ``1 + growth``, summing to
    ``total``."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if growth < 0:
        raise ValueError(f"growth must be >= 0, got {growth}")
    weights = [(1.0 + growth) ** i for i in range(levels)]
    scale = total / sum(weights)
    return [w * scale for w in weights]


@dataclass
class _MarketState:
    vol: RealizedVolatility
    trades: deque[tuple[int, int, int, int]] = field(default_factory=deque)  # ts, px, lots, side


class Ladder(Strategy):
    """A volatility-scaled ladder of quotes on both sides of the book."""

    Params = LadderParams
    interface_version = 2

    def __init__(self, ctx: StrategyContext, params: BaseModel) -> None:
        if not isinstance(params, LadderParams):
            raise TypeError(f"ladder needs Ladder.Params, got {type(params).__name__}")
        super().__init__(ctx, params)
        self.p: LadderParams = params
        self._states: dict[str, _MarketState] = {}

    def on_params(self, params: BaseModel, **kwargs: Any) -> None:
        assert isinstance(params, LadderParams)
        old = self.p
        super().on_params(params)
        self.p = params
        if (old.vol_window_s, old.vol_min_samples) != (params.vol_window_s, params.vol_min_samples):
            for state in self._states.values():
                state.vol = RealizedVolatility(params.vol_window_s, "abs", params.vol_min_samples)

    def _state(self, market: Market) -> _MarketState:
        state = self._states.get(market.key)
        if state is None:
            vol = RealizedVolatility(self.p.vol_window_s, "abs", self.p.vol_min_samples)
            state = self._states[market.key] = _MarketState(vol)
        return state

    def _expire(self, state: _MarketState, now_ns: int) -> None:
        cutoff = now_ns - int(self.p.trade_window_s * 1e9)
        trades = state.trades
        while trades and trades[0][0] <= cutoff:
            trades.popleft()

    def on_trade(
        self, market: Market, price_ticks: int, qty_lots: int, aggressor: Side, **kwargs: Any
    ) -> None:
        state = self._state(market)
        now = self.ctx.now_ns()
        state.trades.append((now, price_ticks, qty_lots, int(aggressor)))
        self._expire(state, now)

    def traded_lots(self, market: Market, side: Side, low: int, high: int) -> int:
        """Lots traded in the window against ``side`` (sells hit bids, buys lift asks)
        at prices in ``[low, high]`` ticks."""
        state = self._state(market)
        self._expire(state, self.ctx.now_ns())
        hitting = -int(side)
        return sum(
            lots for _, px, lots, agg in state.trades if agg == hitting and low <= px <= high
        )

    def spacing_ticks(self, market: Market) -> int:
        sigma = self._state(market).vol.sigma(self.p.vol_horizon_s)
        tick = float(market.instrument.tick_size)
        return ladder_spacing_ticks(
            self.p.min_spacing_ticks, self.p.spacing_vol_factor, sigma, tick
        )

    def on_book(self, market: Market, **kwargs: Any) -> Quotes | None:
        book = market.book
        mid = book.mid()
        best_bid, best_ask = book.best_bid_ticks(), book.best_ask_ticks()
        if mid is None or best_bid is None or best_ask is None:
            return []
        state = self._state(market)
        state.vol.update(self.ctx.now_ns(), mid)
        p = self.p
        inst = market.instrument
        spacing = self.spacing_ticks(market)
        # Wider spacing (higher volatility) slows size growth in the same proportion.
        growth = p.size_growth * p.min_spacing_ticks / spacing
        position = inst.lots_to_float(market.position_lots)  # base units, as max_position
        quotes: list[Quote] = []
        for side, touch in ((Side.BUY, best_bid), (Side.SELL, best_ask)):
            if p.max_position is not None and int(side) * position >= p.max_position:
                continue
            prices = [touch - int(side) * spacing * i for i in range(p.levels)]
            prices = [inst.clamp_ticks(px) for px in prices]
            if side is Side.BUY:
                prices = [px for px in prices if px < best_ask]
            else:
                prices = [px for px in prices if px > best_bid]
            prices = list(dict.fromkeys(prices))  # clamping can merge levels at the edges
            if not prices:
                continue
            low, high = min(prices), max(prices)
            traded = inst.lots_to_float(self.traded_lots(market, side, low, high))
            total = min(p.max_total_size, max(p.min_total_size, p.participation * traded))
            for level, (px, size) in enumerate(
                zip(prices, ladder_sizes(total, len(prices), growth), strict=True)
            ):
                lots = inst.round_qty(size)
                if lots > 0:
                    quotes.append(Quote(side, px, lots, level))
        return quotes


@quoteforge.hookimpl
def quoteforge_register_strategies(register: Any) -> None:
    register("ladder", Ladder)
