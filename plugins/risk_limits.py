"""Basic risk checks: maximum position per market and maximum notional per order.

Both read only the quote, the position and our working orders, so they cost a few
integer operations per quote on the hot path.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from pydantic import BaseModel, ConfigDict, Field

import quoteforge
from quoteforge.model import Quote, Side
from quoteforge.registry import Register
from quoteforge.risk import RiskCheck, RiskView
from quoteforge.strategy import Market

__all__ = ["MaxOrderNotional", "MaxPosition"]


class MaxPositionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    max_position: Decimal = Field(
        gt=0,
        description="Largest absolute position per market in base units, counting the "
        "position plus every working order and this quote on the same side as filled.",
    )


class MaxPosition(RiskCheck):
    """Refuses a quote whose fill, with our working orders on that side, could take the
    position beyond ``max_position``."""

    Params = MaxPositionParams
    params: MaxPositionParams

    def __init__(self, name: str, params: MaxPositionParams) -> None:
        super().__init__(name, params)
        self._limit_cache: dict[str, int] = {}

    def _limit_lots(self, market: Market) -> int:
        lots = self._limit_cache.get(market.key)
        if lots is None:
            lots = int(self.params.max_position / market.instrument.lot_size)
            self._limit_cache[market.key] = lots
        return lots

    def check(self, market: Market, quote: Quote, view: RiskView) -> str | None:
        limit = self._limit_lots(market)
        position = view.position_lots(market.key)
        # Wanted quotes replace working ones, so count the batch being approved, not both.
        pending = view.batch_lots(quote.side)
        exposure = position + int(quote.side) * (pending + quote.qty_lots)
        if abs(exposure) > limit and abs(exposure) > abs(position):
            inst = market.instrument
            return (
                f"position would reach {inst.lots_to_qty(abs(exposure))} "
                f"> max_position {self.params.max_position} "
                f"(position {inst.lots_to_qty(position)}, "
                f"{'bids' if quote.side is Side.BUY else 'asks'} "
                f"{inst.lots_to_qty(pending + quote.qty_lots)})"
            )
        return None


class MaxOrderNotionalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    max_notional: Decimal = Field(
        gt=0, description="Largest price x quantity of one order, in quote units."
    )


class MaxOrderNotional(RiskCheck):
    """Refuses any single order larger than ``max_notional`` (fat-finger size guard)."""

    Params = MaxOrderNotionalParams
    params: MaxOrderNotionalParams

    def __init__(self, name: str, params: MaxOrderNotionalParams) -> None:
        super().__init__(name, params)
        # market key -> max_notional in tick x lot units, rounded down: price_ticks x lots
        # above it is above max_notional, exactly, with no Decimal maths per quote.
        self._limit_units: dict[str, int] = {}

    def check(self, market: Market, quote: Quote, view: RiskView) -> str | None:
        limit = self._limit_units.get(market.key)
        if limit is None:
            inst = market.instrument
            unit = Fraction(inst.tick_size) * Fraction(inst.lot_size)
            limit = self._limit_units[market.key] = int(Fraction(self.params.max_notional) // unit)
        if quote.price_ticks * quote.qty_lots > limit:
            notional = market.instrument.notional(quote.price_ticks, quote.qty_lots)
            return f"order notional {notional} > max_notional {self.params.max_notional}"
        return None


@quoteforge.hookimpl
def quoteforge_register_risk_checks(register: Register) -> None:
    register("max_position", MaxPosition)
    register("max_order_notional", MaxOrderNotional)
