"""The default execution policy: send only what changed between wanted and working.

Wanted quotes and working orders are paired by (side, level). A pair with the same
price and remaining size is left alone; a changed price or size becomes one
cancel/replace; unpaired working orders are cancelled and unpaired quotes placed.
Orders already being cancelled are ignored; orders not yet acknowledged count as
working, so nothing is placed twice while the venue is thinking.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import quoteforge
from quoteforge.execution import ExecutionPolicy, Plan
from quoteforge.model import Order, OrderStatus, Quote, TimeInForce
from quoteforge.registry import Register
from quoteforge.strategy import Market

__all__ = ["MinimalDiff", "MinimalDiffParams"]

_GOING = (OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE)


class MinimalDiffParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    use_replace: bool = Field(
        True, description="Use the venue's cancel/replace for a changed level (else cancel + new)."
    )
    keep_partial: bool = Field(
        True,
        description="Leave a partially filled order at the right price alone instead of "
        "topping it up (keeps queue priority).",
    )


class MinimalDiff(ExecutionPolicy):
    """Cancel/replace only the levels that changed."""

    Params = MinimalDiffParams
    params: MinimalDiffParams

    def plan(self, market: Market, wanted: list[Quote], working: list[Order], now_ns: int) -> Plan:
        plan = Plan()
        by_slot: dict[tuple[int, int], Order] = {}
        for order in working:
            if order.status in _GOING or order.tif is TimeInForce.IOC:
                continue  # being cancelled, or a taking order rather than a quote
            slot = (int(order.side), order.level)
            if slot in by_slot:
                plan.cancels.append(order)  # a stray duplicate on a slot
                continue
            by_slot[slot] = order
        for quote in wanted:
            order = by_slot.pop((int(quote.side), quote.level), None)
            if order is None:
                plan.places.append(quote)
                continue
            if order.price_ticks == quote.price_ticks and (
                order.remaining_lots == quote.qty_lots
                or (
                    self.params.keep_partial
                    and 0 < order.remaining_lots < quote.qty_lots
                    and order.filled_lots > 0
                )
            ):
                continue
            if order.status is OrderStatus.PENDING_NEW:
                # Not acknowledged yet: changing it now would race its own acknowledgement.
                continue
            if self.params.use_replace:
                plan.replaces.append((order, quote))
            else:
                plan.cancels.append(order)
                plan.places.append(quote)
        plan.cancels.extend(by_slot.values())
        return plan


@quoteforge.hookimpl
def quoteforge_register_execution_policies(register: Register) -> None:
    register("minimal_diff", MinimalDiff)
