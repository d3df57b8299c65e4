"""Pure market making: symmetric levels around a reference price, skewed by inventory.

Each level i quotes at ``spread_bps + i * level_spacing_bps`` from the reference price
on both sides with ``order_size + i * level_size_increment``. Inventory away from
``inventory_target`` shifts both sides against the position (up to
``inventory_skew_bps`` at ``inventory_limit``) and shrinks the side that would grow it;
at the limit that side is not quoted. Quotes are refreshed only when a wanted price
moved by more than ``refresh_tolerance_bps``, so the venue is not spammed with
replacements that change nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

import quoteforge
from quoteforge.model import Quote
from quoteforge.registry import Register
from quoteforge.strategy import Market, Quotes, Strategy, StrategyParams

__all__ = ["PureMarketMaking", "PureMarketMakingParams"]


class PureMarketMakingParams(StrategyParams):
    spread_bps: float = Field(
        10.0,
        gt=0,
        description="Distance of the first level from the "
        "reference price on each side, in basis points.",
    )
    levels: int = Field(1, ge=1, le=50, description="Number of order levels per side.")
    level_spacing_bps: float = Field(
        5.0, ge=0, description="Extra distance of each further level, in basis points."
    )
    order_size: float = Field(gt=0, description="Size of the first level, in base units.")
    level_size_increment: float = Field(
        0.0, ge=0, description="Size added per further level, in base units."
    )
    refresh_tolerance_bps: float = Field(
        2.0,
        ge=0,
        description="Keep the working quotes unless a wanted price moved more than this.",
    )
    inventory_target: float = Field(0.0, description="Position the skew pulls toward, base units.")
    inventory_limit: float | None = Field(
        None, gt=0, description="Distance from target at which the growing side stops quoting."
    )
    inventory_skew_bps: float = Field(
        0.0, ge=0, description="Shift of both sides against the inventory at the limit, bps."
    )
    price_ceiling: float | None = Field(
        None, gt=0, description="No bids above this price (and no quoting of bids above it)."
    )
    price_floor: float | None = Field(None, gt=0, description="No asks below this price.")
    post_only: bool = Field(True, description="Send quotes as post-only (never take).")
    reference: str = Field(
        "mid", pattern="^(mid|microprice)$", description="Reference price: mid or microprice."
    )

    @model_validator(mode="after")
    def _band(self) -> PureMarketMakingParams:
        if self.price_ceiling and self.price_floor and self.price_floor >= self.price_ceiling:
            raise ValueError("price_floor must be below price_ceiling")
        if self.inventory_skew_bps and self.inventory_limit is None:
            raise ValueError("inventory_skew_bps needs inventory_limit (the position of full skew)")
        return self


class PureMarketMaking(Strategy):
    """Symmetric multi-level quoting with inventory skew, refresh tolerance and a price band."""

    Params = PureMarketMakingParams
    params: PureMarketMakingParams
    book_levels = 1  # quotes from the mid or microprice: only the best levels matter

    def __init__(self, ctx: quoteforge.StrategyContext, params: PureMarketMakingParams) -> None:
        super().__init__(ctx, params)
        self._last: dict[str, list[Quote]] = {}

    def on_params(self, params: Any, **kwargs: Any) -> None:
        self.params = params
        self._last.clear()  # new params: requote now, whatever the tolerance says

    def inventory_ratio(self, market: Market) -> float:
        """Signed distance from the target as a share of the limit, clamped to [-1, 1]."""
        p = self.params
        if p.inventory_limit is None:
            return 0.0
        ratio = (market.position - p.inventory_target) / p.inventory_limit
        return max(-1.0, min(1.0, ratio))

    def reference_price(self, market: Market) -> float | None:
        if self.params.reference == "microprice":
            return market.book.microprice()
        return market.book.mid()

    def wanted_quotes(self, market: Market) -> list[Quote]:
        p = self.params
        ref = self.reference_price(market)
        if ref is None:
            return []
        ratio = self.inventory_ratio(market)
        center = ref * (1 - ratio * p.inventory_skew_bps / 1e4)
        quotes: list[Quote] = []
        for level in range(p.levels):
            distance = (p.spread_bps + level * p.level_spacing_bps) / 1e4
            size = p.order_size + level * p.level_size_increment
            # The side that grows the position shrinks linearly and stops at the limit.
            bid_size = size * (1 - ratio) if ratio > 0 else size
            ask_size = size * (1 + ratio) if ratio < 0 else size
            bid_price = center * (1 - distance)
            ask_price = center * (1 + distance)
            if ratio < 1 and (p.price_ceiling is None or bid_price <= p.price_ceiling):
                bid = market.bid(bid_price, bid_size, level, p.post_only)
                if bid is not None:
                    quotes.append(bid)
            if ratio > -1 and (p.price_floor is None or ask_price >= p.price_floor):
                ask = market.ask(ask_price, ask_size, level, p.post_only)
                if ask is not None:
                    quotes.append(ask)
        return quotes

    def on_book(self, market: Market, **kwargs: Any) -> Quotes | None:
        quotes = self.wanted_quotes(market)
        last = self._last.get(market.key)
        if last is not None and self._within_tolerance(market, last, quotes):
            return None
        self._last[market.key] = quotes
        return quotes

    def on_fill(self, market: Market, fill: quoteforge.Fill, **kwargs: Any) -> None:
        # The position changed: skew and sizes must be recomputed even if prices did not move.
        self._last.pop(market.key, None)

    def _within_tolerance(self, market: Market, old: list[Quote], new: list[Quote]) -> bool:
        if len(old) != len(new):
            return False
        tolerance = self.params.refresh_tolerance_bps / 1e4
        tick = float(market.instrument.tick_size)
        for a, b in zip(old, new, strict=True):
            if a.side is not b.side or a.level != b.level or a.qty_lots != b.qty_lots:
                return False
            price = a.price_ticks * tick
            if abs(a.price_ticks - b.price_ticks) * tick > tolerance * price:
                return False
        return True


@quoteforge.hookimpl
def quoteforge_register_strategies(register: Register) -> None:
    register("pure_market_making", PureMarketMaking)
