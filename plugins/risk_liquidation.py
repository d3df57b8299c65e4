"""Risk check ``liquidation``: on derivatives venues, refuse quotes that would
bring the position within N% of the liquidation price the venue reports."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

import quoteforge
from quoteforge.model import Quote
from quoteforge.registry import Register
from quoteforge.risk import RiskCheck, RiskView
from quoteforge.strategy import Market

__all__ = ["LiquidationDistance", "LiquidationDistanceParams"]


class LiquidationDistanceParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    min_distance_pct: float = Field(
        gt=0,
        lt=100,
        description="Least distance, in % of the mark price, between the mark and the "
        "liquidation price the position may come to; quotes that grow the position "
        "past it are refused.",
    )
    refuse_unknown: bool = Field(
        False,
        description="Refuse position-growing quotes while the venue has not reported a "
        "liquidation price for an open position (default: let them through).",
    )


class LiquidationDistance(RiskCheck):
    """Refuses a quote that grows the position when the position, grown by it, would
    stand closer than ``min_distance_pct`` to its liquidation price. Quotes that
    shrink the position always pass, and so does everything on a market whose venue
    reports no positions (spot).

    The distance after the fill is estimated from the one the venue reports: the margin
    cushion (distance x position) stays, spread over the larger position, so the
    distance shrinks by ``|position| / (|position| + quote)``. A flat position has no
    liquidation price: the first quote passes, and the venue's report after its fill
    sets the distance for the next ones.
    """

    Params = LiquidationDistanceParams
    params: LiquidationDistanceParams

    def check(self, market: Market, quote: Quote, view: RiskView) -> str | None:
        position = view.position_lots(market.key)
        grows = position == 0 or (position > 0) == (int(quote.side) > 0)
        if not grows:
            return None
        reported = view.venue_position(market.key)
        if reported is None or reported.qty_lots == 0:
            return None
        liquidation, mark = reported.liquidation_price, reported.mark_price
        if mark is None:
            mid = market.book.mid_ticks()
            mark = None if mid is None else Decimal(str(mid)) * market.instrument.tick_size
        if liquidation is None or mark is None or mark <= 0:
            if self.params.refuse_unknown:
                return f"no liquidation price reported for the open position on {market.key}"
            return None
        held = abs(reported.qty_lots)
        distance = abs(mark - liquidation) / mark * 100
        after = distance * held / (held + quote.qty_lots)
        limit = Decimal(str(self.params.min_distance_pct))
        if after < limit:
            return (
                f"{quote.side.name} {quote.qty_lots} lots would bring the position "
                f"{after:.2f}% from its liquidation price {liquidation} "
                f"(mark {mark.normalize():f}; min_distance_pct {limit.normalize():f})"
            )
        return None


@quoteforge.hookimpl
def quoteforge_register_risk_checks(register: Register) -> None:
    register(
        "liquidation",
        LiquidationDistance,
        description="Refuses quotes that would bring a position within N% of liquidation.",
    )
