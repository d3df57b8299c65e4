"""Built-in execution algorithms a strategy starts with ``ctx.execute``: ``twap`` (time-
sliced unwinding on one market) and ``sor`` (one sweep routed across venues of an asset)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import quoteforge
from quoteforge.model import Fill, Order, OrderUpdate, Side
from quoteforge.plugins.consumer_book import ConsumerBook
from quoteforge.plugins.routing import Route, SmartOrderRouter
from quoteforge.plugins.twap import TwapExecutor, TwapParams
from quoteforge.registry import Register
from quoteforge.strategy import Market, StrategyContext

__all__ = ["SorAlgo", "SorParams", "TwapAlgo"]

OnDone = Callable[[Any], None]


class TwapAlgo:
    """TWAP on one market: ``TwapExecutor`` behind the execution-algorithm interface."""

    def __init__(
        self,
        ctx: StrategyContext,
        market: Market,
        side: Side,
        qty_lots: int,
        params: TwapParams,
        on_done: OnDone | None = None,
    ) -> None:
        self._on_done = on_done
        self.executor = TwapExecutor(ctx, market, side, qty_lots, params, on_done=self._finished)

    def start(self) -> None:
        self.executor.start()

    def cancel(self) -> None:
        """Send no further slices; children already sent run to their end."""
        self.executor.cancel()

    @property
    def done(self) -> bool:
        return self.executor.done

    @property
    def orders(self) -> list[Order]:
        return self.executor.orders

    @property
    def filled_lots(self) -> int:
        schedule = self.executor.schedule
        return schedule.filled_lots if schedule is not None else 0

    def on_fill(self, fill: Fill) -> bool:
        return self.executor.on_fill(fill)

    def on_order_update(self, update: OrderUpdate) -> bool:
        return self.executor.on_order_update(update)

    def _finished(self, _: TwapExecutor) -> None:
        if self._on_done is not None:
            self._on_done(self)


class SorParams(BaseModel):
    """How one sweep across venues is bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_slippage_bps: Decimal = Field(
        ge=0,
        description="No level worse than the cross-venue best price by more than this, in bps.",
    )
    venues: list[str] | None = Field(
        None,
        description="Markets (keys or symbols of the strategy) to route over; default: every "
        "market of the strategy with the same base and quote asset as the one given.",
    )
    cap_includes_fees: bool = Field(
        False, description="Apply the slippage cap to fee-adjusted prices instead of raw ones."
    )


class SorAlgo:
    """Smart order routing: ``qty_lots`` of the given market's lots, split by
    ``SmartOrderRouter`` over the venues of one asset, as one immediate-or-cancel child
    per venue through ``ctx.take``. What the cap or the depth leaves is not sent
    (``route.unfilled``); the algorithm is done when every child has its final report."""

    def __init__(
        self,
        ctx: StrategyContext,
        market: Market,
        side: Side,
        qty_lots: int,
        params: SorParams,
        on_done: OnDone | None = None,
    ) -> None:
        self.ctx = ctx
        self.market = market
        self.side = side
        self.qty_lots = qty_lots
        self.params = params
        self._on_done = on_done
        self.legs = self._legs(params.venues)
        self.route: Route | None = None
        self.orders: list[Order] = []
        self.refused: list[str] = []
        self.filled_qty = Decimal(0)
        self._open: set[str] = set()
        self._leg_of: dict[str, Market] = {}
        self._finished = False
        self.cancelled = False

    def _legs(self, names: list[str] | None) -> dict[str, Market]:
        markets = self.ctx.markets
        inst = self.market.instrument
        if names is None:
            keys = [
                k
                for k, m in markets.items()
                if (m.instrument.base, m.instrument.quote) == (inst.base, inst.quote)
            ]
            return {k: markets[k] for k in keys}
        legs: dict[str, Market] = {}
        for name in names:
            found = [k for k, m in markets.items() if name in (k, m.symbol)]
            if not found:
                known = ", ".join(sorted(markets)) or "none"
                raise ValueError(
                    f"execution algo 'sor': venue {name!r} is not a market of strategy "
                    f"{self.ctx.name!r} ({known}); list market keys or symbols"
                )
            legs[found[0]] = markets[found[0]]
        if self.market.key not in legs:
            raise ValueError(
                f"execution algo 'sor': venues {names} must include the market the size is "
                f"given in, {self.market.key!r}"
            )
        return legs

    def start(self) -> None:
        if self.route is not None:
            raise RuntimeError("this route has already been sent; start a new algorithm")
        book = ConsumerBook(self.ctx.name)
        for key, leg in self.legs.items():
            book.add(leg.book, name=key)
        router = SmartOrderRouter(book, cap_includes_fees=self.params.cap_includes_fees)
        size = self.market.instrument.lots_to_qty(self.qty_lots)
        self.route = router.route(self.side, size, self.params.max_slippage_bps)
        for child in self.route.children:
            order = self.ctx.take(
                self.legs[child.venue], self.side, child.price_ticks, child.qty_lots
            )
            if order is None:
                self.refused.append(child.venue)
                continue
            self.orders.append(order)
            self._open.add(order.client_id)
            self._leg_of[order.client_id] = self.legs[child.venue]
        self._check_done()

    def cancel(self) -> None:
        """Nothing left to stop: every child is immediate-or-cancel and already sent."""
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self._finished

    def on_fill(self, fill: Fill) -> bool:
        leg = self._leg_of.get(fill.client_id)
        if leg is None:
            return False
        self.filled_qty += leg.instrument.lots_to_qty(fill.qty_lots)
        return True

    def on_order_update(self, update: OrderUpdate) -> bool:
        if update.client_id not in self._leg_of:
            return False
        if update.status.is_terminal and update.client_id in self._open:
            self._open.discard(update.client_id)
            self._check_done()
        return True

    def _check_done(self) -> None:
        if not self._finished and not self._open:
            self._finished = True
            if self._on_done is not None:
                self._on_done(self)


@quoteforge.hookimpl
def quoteforge_register_execution_algos(register: Register) -> None:
    register(
        "twap",
        TwapAlgo,
        params=TwapParams,
        description="Work a quantity on one market in time slices within a band around the mid",
    )
    register(
        "sor",
        SorAlgo,
        params=SorParams,
        description="Take a quantity across the venues of one asset within a slippage cap",
    )
