"""A fill that leaves one of our orders with a remainder off the order step: the order
manager takes it (the venue reported it), and the execution policy replaces or cancels
the order instead of leaving something resting that we could never have sent."""

from __future__ import annotations

from decimal import Decimal

from quoteforge.book import BookState, L2Book
from quoteforge.clock import SimClock
from quoteforge.model import (
    Fill,
    Instrument,
    Liquidity,
    Order,
    OrderStatus,
    OrderUpdate,
    Quote,
    Side,
)
from quoteforge.orders import OrderManager
from quoteforge.plugins.execution_minimal_diff import MinimalDiff
from quoteforge.strategy import Market

# Binance BTCUSDT: quantities reported at 8 decimals, orders in steps of 0.00001.
BTC = Instrument(
    "binance",
    "BTC/USDT",
    "BTC",
    "USDT",
    tick_size=Decimal("0.01"),
    lot_size=Decimal("0.00000001"),
    qty_step=Decimal("0.00001"),
)
PRICE = 6_000_000  # 60000.00
SIZE = BTC.qty_to_lots("0.001")  # 100 steps


def market() -> Market:
    book = L2Book(BTC)
    book.apply_snapshot([(PRICE - 1, 10**8)], [(PRICE + 1, 10**8)])
    book.state = BookState.LIVE
    return Market(BTC, book, lambda: 0)


def resting_order(om: OrderManager, clock: SimClock) -> Order:
    order = om.new_order("binance", "BTC/USDT", Side.BUY, SIZE, PRICE - 1)
    om.apply_update(OrderUpdate("binance", order.client_id, OrderStatus.OPEN, clock.now_ns()))
    return order


def fill(order: Order, qty: str, fill_id: str, clock: SimClock) -> Fill:
    return Fill(
        "binance",
        "BTC/USDT",
        fill_id,
        order.client_id,
        order.side,
        PRICE - 1,
        BTC.qty_to_lots(qty),
        Decimal(0),
        "BTC",
        Liquidity.MAKER,
        clock.now_ns(),
    )


def test_an_off_step_fill_is_applied_and_the_remainder_is_replaced_on_the_step() -> None:
    clock = SimClock(10**18)
    om = OrderManager(None, clock, "t")
    order = resting_order(om, clock)
    # The venue reports a fill of 0.00012345 BTC: finer than the step we send.
    assert om.apply_fill(fill(order, "0.00012345", "f1", clock)) is order
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert BTC.lots_to_qty(order.remaining_lots) == Decimal("0.00087655")
    assert order.remaining_lots % BTC.step_lots  # off the step
    wanted = [Quote(Side.BUY, PRICE - 1, SIZE)]
    # keep_partial (the default) would leave an on-step partial alone; this one is
    # replaced by the wanted quote, a whole number of steps.
    plan = MinimalDiff(MinimalDiff.Params()).plan(market(), wanted, om.working_in(BTC.key), 0)
    assert plan.replaces == [(order, wanted[0])]
    assert not plan.cancels and not plan.places
    assert BTC.check_order(wanted[0].price_ticks, wanted[0].qty_lots) is None
    # Without replace it is cancel + new; with no quote wanted it is cancelled.
    plain = MinimalDiff(MinimalDiff.Params(use_replace=False))
    plan = plain.plan(market(), wanted, om.working_in(BTC.key), 0)
    assert plan.cancels == [order] and plan.places == wanted
    plan = plain.plan(market(), [], om.working_in(BTC.key), 0)
    assert plan.cancels == [order]


def test_an_on_step_partial_fill_keeps_its_place() -> None:
    clock = SimClock(10**18)
    om = OrderManager(None, clock, "t")
    order = resting_order(om, clock)
    om.apply_fill(fill(order, "0.00012", "f1", clock))
    wanted = [Quote(Side.BUY, PRICE - 1, SIZE)]
    plan = MinimalDiff(MinimalDiff.Params()).plan(market(), wanted, om.working_in(BTC.key), 0)
    assert not plan  # queue priority kept: the remainder is a whole number of steps


def test_fills_that_complete_an_order_through_off_step_parts_close_it() -> None:
    clock = SimClock(10**18)
    om = OrderManager(None, clock, "t")
    order = resting_order(om, clock)
    om.apply_fill(fill(order, "0.00012345", "f1", clock))
    om.apply_fill(fill(order, "0.00087655", "f2", clock))
    assert order.status is OrderStatus.FILLED and order.remaining_lots == 0
    assert om.working_in(BTC.key) == []
