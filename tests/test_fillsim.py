"""Queue-aware fills against an external book: queue position, trades, cancellations,
taking, post-only, latency and fees; hypothesis checks of the invariants."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quoteforge.book import BookState, L2Book
from quoteforge.clock import SimClock
from quoteforge.exchange import CancelAll, CancelOrder, PlaceOrder, ReplaceOrder
from quoteforge.exchanges.fillsim import FillSimParams, FillSimulator
from quoteforge.model import (
    Fill,
    Instrument,
    Liquidity,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
)

SYMBOL = "BTC/USDT"
BUY, SELL = Side.BUY, Side.SELL


class Sink:
    """Collects what the simulator reports, with the time it arrived."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.updates: list[tuple[int, OrderUpdate]] = []
        self.fills: list[Fill] = []
        self.fill_times: list[int] = []

    def on_order_update(self, update: OrderUpdate) -> None:
        self.updates.append((self.clock.now_ns(), update))

    def on_fill(self, fill: Fill) -> None:
        self.fills.append(fill)
        self.fill_times.append(self.clock.now_ns())

    def statuses(self, client_id: str) -> list[OrderStatus]:
        return [u.status for _, u in self.updates if u.client_id == client_id]

    def filled(self, client_id: str) -> int:
        return sum(f.qty_lots for f in self.fills if f.client_id == client_id)

    # The rest of the VenueSink protocol is not used by the simulator.
    def on_book(self, book: Any) -> None: ...
    def on_book_state(self, book: Any, old: str, new: str, reason: str) -> None: ...
    def on_trade(self, *args: Any) -> None: ...
    def on_offer(self, offer: Any) -> None: ...


class Harness:
    def __init__(
        self,
        model: str = "back",
        bids: list[tuple[int, int]] | None = None,
        asks: list[tuple[int, int]] | None = None,
        *,
        maker_bps: str = "-1",
        taker_bps: str = "5",
        latency: dict[str, float] | None = None,
        seed: int = 1,
        min_notional: str = "0",
        lot: str = "0.001",
        qty_step: str = "0",
    ) -> None:
        self.clock = SimClock(0)
        self.inst = Instrument(
            "paper",
            SYMBOL,
            "BTC",
            "USDT",
            Decimal("0.01"),
            Decimal(lot),
            min_notional=Decimal(min_notional),
            qty_step=Decimal(qty_step),
        )
        self.book = L2Book(self.inst)
        self.book.apply_snapshot(
            bids if bids is not None else [(10_000, 50), (9_999, 80)],
            asks if asks is not None else [(10_002, 40), (10_003, 60)],
        )
        self.book.state = BookState.LIVE
        params = FillSimParams.model_validate(
            {
                "maker_fee_bps": maker_bps,
                "taker_fee_bps": taker_bps,
                "cancel_position": model,
                "latency": latency or {"market_data_ms": 0, "order_ms": 0, "jitter_ms": 0},
            }
        )
        self.sim = FillSimulator("paper", self.clock, params, seed=seed)
        self.sink = Sink(self.clock)
        self.sim.attach(self.sink)
        self.sim.add_market(self.inst, self.book)
        self.ids = itertools.count(1)

    def settle(self) -> None:
        self.clock.run_until(self.clock.now_ns() + 10**9)

    def order(
        self,
        side: Side,
        price: int | None,
        qty: int,
        tif: TimeInForce = TimeInForce.GTC,
        order_type: OrderType = OrderType.LIMIT,
    ) -> Order:
        return Order(
            f"c{next(self.ids)}",
            "paper",
            SYMBOL,
            side,
            qty,
            price,
            order_type=order_type,
            tif=tif,
            strategy="s",
        )

    def place(self, *args: Any, **kwargs: Any) -> Order:
        order = self.order(*args, **kwargs)
        self.sim.submit([PlaceOrder(order)])
        self.settle()
        return order

    def trade(self, price: int, qty: int, aggressor: Side) -> None:
        self.sim.on_trade(SYMBOL, price, qty, aggressor)
        self.settle()

    def depth(self, side: Side, price: int, lots: int) -> None:
        self.book.set_level(side, price, lots)
        self.sim.on_book(SYMBOL)
        self.settle()


# -- queue position ---------------------------------------------------------------------------
def test_passive_order_joins_behind_the_visible_size_or_at_the_front_of_a_new_level() -> None:
    h = Harness()
    behind = h.place(BUY, 10_000, 10)
    fresh = h.place(BUY, 10_001, 10)
    assert h.sim.queue_ahead(behind.client_id) == 50
    assert h.sim.queue_ahead(fresh.client_id) == 0
    assert h.sink.statuses(behind.client_id) == [OrderStatus.OPEN]


def test_trades_at_our_price_consume_the_queue_then_fill_us_partially_with_maker_fees() -> None:
    h = Harness(maker_bps="-1")
    order = h.place(BUY, 10_000, 10)
    h.trade(10_000, 30, SELL)
    assert h.sim.queue_ahead(order.client_id) == 20
    assert h.sink.fills == []
    h.trade(10_000, 25, SELL)  # 20 ahead, then 5 of ours
    assert [f.qty_lots for f in h.sink.fills] == [5]
    fill = h.sink.fills[0]
    assert fill.price_ticks == 10_000
    assert fill.liquidity is Liquidity.MAKER
    # 100.00 x 0.005 = 0.5 notional; -1 bps is an exact rebate.
    assert fill.fee == Decimal("-0.00005")
    assert fill.fee_asset == "USDT"
    h.trade(10_000, 9, SELL)
    assert h.sink.filled(order.client_id) == 10
    assert h.sink.statuses(order.client_id)[-1] is OrderStatus.FILLED
    assert h.sim.queue_ahead(order.client_id) is None


def test_a_print_fills_our_orders_at_one_level_in_queue_order_with_others_between() -> None:
    h = Harness()  # bids 50 at 10_000
    first = h.place(BUY, 10_000, 10)  # 50 ahead
    h.depth(BUY, 10_000, 80)  # 30 more joined behind it
    second = h.place(BUY, 10_000, 10)  # 80 ahead
    h.trade(10_000, 100, SELL)  # 50 external, 10 ours, 30 external, then 10 of ours
    assert h.sink.filled(first.client_id) == 10
    assert h.sink.filled(second.client_id) == 10
    h2 = Harness()
    first = h2.place(BUY, 10_000, 10)
    h2.depth(BUY, 10_000, 80)
    second = h2.place(BUY, 10_000, 10)
    h2.trade(10_000, 95, SELL)  # 5 short of the second order's whole size
    assert h2.sink.filled(first.client_id) == 10
    assert h2.sink.filled(second.client_id) == 5
    assert h2.sim.queue_ahead(second.client_id) == 0


def test_buy_aggressor_trades_do_not_touch_our_bid() -> None:
    h = Harness()
    order = h.place(BUY, 10_000, 10)
    h.trade(10_000, 500, BUY)
    h.trade(10_002, 500, BUY)
    assert h.sink.fills == []
    assert h.sim.queue_ahead(order.client_id) == 50


def test_depth_drop_explained_by_a_trade_is_not_counted_again_as_cancellation() -> None:
    h = Harness(model="front")
    order = h.place(BUY, 10_000, 10)
    h.trade(10_000, 30, SELL)
    h.depth(BUY, 10_000, 20)  # the same 30 lots, now in the depth stream
    assert h.sim.queue_ahead(order.client_id) == 20
    h.depth(BUY, 10_000, 15)  # 5 lots cancelled, all ahead under "front"
    assert h.sim.queue_ahead(order.client_id) == 15


def _queue_after_cancel(model: str, seed: int = 1) -> int:
    h = Harness(model=model, seed=seed, bids=[(10_000, 100)])
    order = h.place(BUY, 10_000, 10)
    h.depth(BUY, 10_000, 150)  # 50 lots join behind us
    h.depth(BUY, 10_000, 90)  # 60 lots cancelled
    ahead = h.sim.queue_ahead(order.client_id)
    assert ahead is not None
    assert h.sink.fills == []  # cancellations never fill us
    return ahead


def test_cancel_position_models() -> None:
    assert _queue_after_cancel("front") == 40  # all 60 from ahead of us
    assert _queue_after_cancel("back") == 90  # 50 behind us first, then 10 ahead
    assert _queue_after_cancel("proportional") == 60  # 60 x 100/150 ahead
    draws = [_queue_after_cancel("probabilistic", seed) for seed in range(300)]
    assert all(40 <= d <= 90 for d in draws)
    assert 57 <= sum(draws) / len(draws) <= 63  # hypergeometric mean: 60
    assert draws == [_queue_after_cancel("probabilistic", seed) for seed in range(300)]


def test_level_emptied_puts_us_at_the_front() -> None:
    h = Harness(model="back")
    order = h.place(BUY, 10_000, 10)
    h.depth(BUY, 10_000, 0)
    assert h.sim.queue_ahead(order.client_id) == 0
    h.trade(10_000, 4, SELL)
    assert h.sink.filled(order.client_id) == 4


# -- price moving through us -------------------------------------------------------------------
def test_opposite_best_reaching_our_price_fills_us_at_our_price_as_maker() -> None:
    h = Harness()
    order = h.place(SELL, 10_002, 7)  # behind 40 lots
    assert h.sim.queue_ahead(order.client_id) == 40
    h.depth(BUY, 10_002, 3)
    assert [(f.price_ticks, f.qty_lots, f.liquidity) for f in h.sink.fills] == [
        (10_002, 7, Liquidity.MAKER)
    ]
    assert h.sink.statuses(order.client_id) == [OrderStatus.OPEN, OrderStatus.FILLED]


def test_a_move_through_one_level_fills_it_and_still_counts_cancels_at_the_others() -> None:
    h = Harness(model="front")
    near = h.place(SELL, 10_002, 7)  # behind 40 lots
    far = h.place(SELL, 10_003, 5)  # behind the visible size there
    bid = h.place(BUY, 9_990, 4)
    ahead_far = h.sim.queue_ahead(far.client_id)
    assert ahead_far is not None and ahead_far > 10
    # One message: the bid side reaches 10_002, and 10 lots leave 10_003 untraded.
    h.book.set_level(SELL, 10_003, h.book.lots_at(SELL, 10_003) - 10)
    h.book.set_level(BUY, 10_002, 3)
    h.sim.book_watcher(SYMBOL)()  # what a venue reporting every change of the book calls
    h.settle()
    assert [(f.client_id, f.price_ticks, f.qty_lots) for f in h.sink.fills] == [
        (near.client_id, 10_002, 7)
    ]
    assert h.sim.queue_ahead(far.client_id) == ahead_far - 10  # "front": all were ahead
    assert h.sim.queue_ahead(bid.client_id) is not None
    # With nothing of ours reached, only the size change at our level is accounted.
    h.book.set_level(SELL, 10_003, h.book.lots_at(SELL, 10_003) - 1)
    h.sim.book_watcher(SYMBOL)()
    assert h.sim.queue_ahead(far.client_id) == ahead_far - 11


def test_no_through_fill_while_the_book_is_not_live() -> None:
    h = Harness()
    order = h.place(SELL, 10_002, 7)
    h.book.state = BookState.RESYNCING
    h.depth(BUY, 10_005, 3)
    assert h.sink.fills == []
    assert h.sim.queue_ahead(order.client_id) == 40


def test_trade_through_our_price_fills_everything_left() -> None:
    h = Harness()
    order = h.place(BUY, 10_000, 10)
    h.trade(9_999, 1, SELL)
    assert h.sink.filled(order.client_id) == 10
    assert h.sink.fills[0].price_ticks == 10_000


# -- taking --------------------------------------------------------------------------------------
def test_ioc_walks_visible_levels_with_taker_fees_and_expires_the_rest() -> None:
    h = Harness(taker_bps="5")
    order = h.place(BUY, 10_003, 120, tif=TimeInForce.IOC)
    assert [(f.price_ticks, f.qty_lots) for f in h.sink.fills] == [(10_002, 40), (10_003, 60)]
    assert all(f.liquidity is Liquidity.TAKER for f in h.sink.fills)
    assert h.sink.fills[0].fee == Decimal("100.02") * Decimal("0.040") * Decimal("0.0005")
    assert h.sink.statuses(order.client_id) == [OrderStatus.OPEN, OrderStatus.EXPIRED]
    expired = h.sink.updates[-1][1]
    assert expired.filled_lots == 100
    # The external book is not changed by our taking...
    assert h.book.lots_at(SELL, 10_002) == 40


def test_taken_liquidity_is_not_offered_again_until_the_level_updates() -> None:
    h = Harness()
    h.place(BUY, 10_002, 30, tif=TimeInForce.IOC)
    second = h.place(BUY, 10_002, 30, tif=TimeInForce.IOC)
    assert h.sink.filled(second.client_id) == 10
    h.depth(SELL, 10_002, 45)  # the feed shows the level again
    third = h.place(BUY, 10_002, 30, tif=TimeInForce.IOC)
    assert h.sink.filled(third.client_id) == 30


# -- a venue that reports quantities finer than its order step (Binance) -----------------------
def binance_like(bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> Harness:
    """Lots of 0.00000001 BTC (what the venue reports), orders in steps of 0.00001."""
    return Harness(bids=bids, asks=asks, lot="0.00000001", qty_step="0.00001")


def test_a_queue_finer_than_the_step_fills_us_in_whole_steps() -> None:
    h = binance_like(bids=[(10_000, 500)], asks=[(10_002, 4_000)])
    order = h.place(BUY, 10_000, 2_000)  # 0.00002 BTC behind 0.000005 resting
    assert h.sim.queue_ahead(order.client_id) == 500  # the queue at the venue's precision
    h.trade(10_000, 1_200, SELL)  # 500 ahead, then 700: less than one step of ours
    assert h.sink.fills == []
    assert h.sim.queue_ahead(order.client_id) == 0
    h.trade(10_000, 1_300, SELL)
    assert [f.qty_lots for f in h.sink.fills] == [1_000]
    h.trade(9_999, 5_000, SELL)  # through our price: the rest, a whole step
    assert [f.qty_lots for f in h.sink.fills] == [1_000, 1_000]
    assert h.sink.statuses(order.client_id)[-1] is OrderStatus.FILLED


def test_taking_levels_finer_than_the_step_fills_whole_steps() -> None:
    h = binance_like(bids=[(10_000, 5_000)], asks=[(10_002, 700), (10_003, 1_800)])
    order = h.place(BUY, 10_003, 3_000, tif=TimeInForce.IOC)
    # 0.000007 + 0.000018 visible: two whole steps, priced at the level that made them.
    assert [(f.price_ticks, f.qty_lots) for f in h.sink.fills] == [(10_003, 2_000)]
    assert h.sink.statuses(order.client_id) == [OrderStatus.OPEN, OrderStatus.EXPIRED]
    assert h.sink.updates[-1][1].filled_lots == 2_000


def test_market_order_takes_without_a_limit() -> None:
    h = Harness()
    order = h.place(SELL, None, 100, order_type=OrderType.MARKET)
    assert [(f.price_ticks, f.qty_lots) for f in h.sink.fills] == [(10_000, 50), (9_999, 50)]
    assert h.sink.statuses(order.client_id)[-1] is OrderStatus.FILLED


def test_a_market_order_ignores_a_price_it_carries() -> None:
    h = Harness()  # asks 40 at 10_002, 60 at 10_003
    order = h.order(BUY, 9_000, 70, order_type=OrderType.MARKET)  # a stale reference price
    h.sim.submit([PlaceOrder(order)])
    h.settle()
    assert [(f.price_ticks, f.qty_lots) for f in h.sink.fills] == [(10_002, 40), (10_003, 30)]
    assert h.sink.statuses(order.client_id)[-1] is OrderStatus.FILLED


def test_crossing_gtc_takes_then_rests_at_its_limit() -> None:
    h = Harness()
    order = h.place(BUY, 10_002, 50)
    assert h.sink.filled(order.client_id) == 40
    assert h.sim.queue_ahead(order.client_id) == 0
    h.trade(10_002, 6, SELL)
    assert h.sink.filled(order.client_id) == 46
    assert [f.liquidity for f in h.sink.fills] == [Liquidity.TAKER, Liquidity.MAKER]
    h.trade(10_002, 20, SELL)  # more than the 4 lots left resting
    assert h.sink.filled(order.client_id) == 50
    assert h.sink.statuses(order.client_id)[-1] is OrderStatus.FILLED


def test_a_sell_takes_down_to_its_limit_inclusive() -> None:
    h = Harness()  # bids 50 at 10_000, 80 at 9_999
    order = h.place(SELL, 9_999, 100, tif=TimeInForce.IOC)
    assert [(f.price_ticks, f.qty_lots) for f in h.sink.fills] == [(10_000, 50), (9_999, 50)]
    assert h.sink.statuses(order.client_id)[-1] is OrderStatus.FILLED


def test_post_only_that_would_cross_is_rejected() -> None:
    h = Harness()
    order = h.place(BUY, 10_002, 5, tif=TimeInForce.POST_ONLY)
    assert h.sink.statuses(order.client_id) == [OrderStatus.REJECTED]
    assert h.sink.updates[-1][1].reason == "post-only order would cross at 100.02"
    assert h.sink.fills == []


def test_post_only_that_does_not_cross_rests_and_one_at_the_touch_is_refused() -> None:
    h = Harness()  # bids 50 at 10_000; asks 40 at 10_002
    inside = h.place(BUY, 10_001, 5, tif=TimeInForce.POST_ONLY)
    assert h.sink.statuses(inside.client_id) == [OrderStatus.OPEN]
    assert h.sim.queue_ahead(inside.client_id) == 0
    at_bid = h.place(SELL, 10_000, 5, tif=TimeInForce.POST_ONLY)  # would take the bid
    assert h.sink.statuses(at_bid.client_id) == [OrderStatus.REJECTED]
    assert h.sink.fills == []


def test_a_sell_limit_at_the_best_bid_takes_it() -> None:
    h = Harness()  # bids 50 at 10_000, 80 at 9_999
    order = h.place(SELL, 10_000, 70)
    assert [(f.price_ticks, f.qty_lots, f.liquidity) for f in h.sink.fills] == [
        (10_000, 50, Liquidity.TAKER)
    ]
    assert h.sim.queue_ahead(order.client_id) == 0  # the rest leads the new ask level


def test_a_one_sided_book_and_trades_of_other_markets_fill_nothing_and_raise_nothing() -> None:
    h = Harness()
    bid = h.place(BUY, 9_999, 10)
    ask = h.place(SELL, 10_003, 10)
    for price in (10_002, 10_003):
        h.depth(SELL, price, 0)  # the asks are gone
    for price in (10_000, 9_999):
        h.depth(BUY, price, 0)  # and the bids
    h.sim.on_trade("ETH/USDT", 9_000, 100, SELL)  # a market this venue does not simulate
    h.settle()
    assert h.sink.fills == []
    assert h.sink.statuses(bid.client_id) == h.sink.statuses(ask.client_id) == [OrderStatus.OPEN]


def test_invalid_orders_are_rejected_with_the_reason() -> None:
    h = Harness(min_notional="5")
    small = h.place(BUY, 10_000, 10)  # 100.00 x 0.010 = 1 < 5
    assert h.sink.statuses(small.client_id) == [OrderStatus.REJECTED]
    assert "below minimum 5" in h.sink.updates[-1][1].reason
    other = Order("x1", "paper", "ETH/USDT", BUY, 1, 10)
    h.sim.submit([PlaceOrder(other)])
    h.settle()
    assert "unknown market 'ETH/USDT' on paper; it lists: BTC/USDT" in h.sink.updates[-1][1].reason


# -- cancel, replace, latency, ids -----------------------------------------------------------------
def test_cancel_replace_and_cancel_all() -> None:
    h = Harness()
    a = h.place(BUY, 10_000, 10)
    h.trade(10_000, 53, SELL)  # 3 of ours
    h.sim.submit([CancelOrder(a.client_id, "paper", SYMBOL)])
    h.settle()
    assert h.sink.statuses(a.client_id)[-1] is OrderStatus.CANCELLED
    assert h.sink.updates[-1][1].filled_lots == 3
    b = h.place(SELL, 10_005, 5)
    new = h.order(SELL, 10_004, 5)
    h.sim.submit([ReplaceOrder(b.client_id, new)])
    h.settle()
    assert h.sink.statuses(b.client_id)[-1] is OrderStatus.CANCELLED
    assert h.sim.queue_ahead(new.client_id) == 0
    h.sim.submit([CancelAll("paper", SYMBOL)])
    h.settle()
    assert h.sink.statuses(new.client_id)[-1] is OrderStatus.CANCELLED
    assert h.sim.open_orders() == []
    before = len(h.sink.updates)
    h.sim.submit([CancelOrder(a.client_id, "paper", SYMBOL)])  # already gone: no answer
    h.settle()
    assert len(h.sink.updates) == before


def test_order_and_report_latency_follow_the_view_lag() -> None:
    h = Harness(latency={"market_data_ms": 5, "order_ms": 10, "jitter_ms": 0})
    order = h.order(BUY, 10_000, 10)
    h.sim.submit([PlaceOrder(order)])
    h.clock.run_until(14_999_999)
    assert h.sim.queue_ahead(order.client_id) is None  # still on the way
    h.clock.run_until(15_000_000)  # order_ms + market_data_ms on our view's clock
    assert h.sim.queue_ahead(order.client_id) == 50
    h.settle()
    assert h.sink.updates[0][0] == 20_000_000  # back after order_ms - market_data_ms


def test_with_jitter_orders_and_reports_keep_their_order_as_on_one_connection() -> None:
    h = Harness(latency={"market_data_ms": 0, "order_ms": 10, "jitter_ms": 9}, seed=3)
    orders = [h.order(BUY, 9_990 - i, 1) for i in range(40)]
    for order in orders:  # one at a time, all at the same moment
        h.sim.submit([PlaceOrder(order)])
    arrived: list[str] = []
    while len(arrived) < len(orders):  # watch them reach the venue, one tick at a time
        h.clock.run_until(h.clock.now_ns() + 100_000)
        arrived += [
            o.client_id
            for o in orders
            if o.client_id not in arrived and h.sim.queue_ahead(o.client_id) is not None
        ]
    assert arrived == [o.client_id for o in orders]
    h.settle()
    reported = [u.client_id for _, u in h.sink.updates]
    times = [t for t, _ in h.sink.updates]
    assert reported == [o.client_id for o in orders]
    assert times == sorted(times) and len(set(times)) > 5  # jittered, never overtaking


def test_fill_ids_are_unique_across_markets_of_the_venue() -> None:
    h = Harness()
    eth = Instrument("paper", "ETH/USDT", "ETH", "USDT", Decimal("0.01"), Decimal("0.001"))
    eth_book = L2Book(eth)
    eth_book.apply_snapshot([(2_000, 5)], [(2_001, 5)])
    eth_book.state = BookState.LIVE
    h.sim.add_market(eth, eth_book)
    h.place(BUY, None, 5, order_type=OrderType.MARKET)
    h.sim.submit([PlaceOrder(Order("e1", "paper", "ETH/USDT", BUY, 5, None, OrderType.MARKET))])
    h.settle()
    ids = [f.fill_id for f in h.sink.fills]
    assert len(ids) == 2
    assert len(set(ids)) == 2


# -- properties ------------------------------------------------------------------------------------
event = st.one_of(
    st.tuples(
        st.just("trade"),
        st.integers(9_996, 10_004),
        st.integers(1, 60),
        st.sampled_from([BUY, SELL]),
    ),
    st.tuples(
        st.just("depth"),
        st.integers(9_996, 10_004),
        st.integers(0, 120),
        st.sampled_from([BUY, SELL]),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=st.sampled_from(["front", "back", "proportional", "probabilistic"]),
    side=st.sampled_from([BUY, SELL]),
    offset=st.integers(0, 1),
    qty=st.integers(1, 80),
    events=st.lists(event, max_size=40),
    seed=st.integers(0, 2**16),
)
def test_passive_fills_respect_queue_size_and_price(
    model: str, side: Side, offset: int, qty: int, events: list[Any], seed: int
) -> None:
    h = Harness(model=model, seed=seed)
    price = 10_000 - offset if side is BUY else 10_002 + offset
    order = h.place(side, price, qty, tif=TimeInForce.POST_ONLY)
    cid = order.client_id
    for kind, p, n, s in events:
        if h.sim.queue_ahead(cid) is None:
            break
        ahead = h.sim.queue_ahead(cid)
        assert ahead is not None
        before = h.sink.filled(cid)
        if kind == "trade":
            h.trade(p, n, s)
            got = h.sink.filled(cid) - before
            through = s is side.opposite and (p < price if side is BUY else p > price)
            at_price = s is side.opposite and p == price
            if through:
                assert got == qty - before
            elif at_price:
                assert got <= max(0, n - ahead), "filled before the queue ahead traded"
            else:
                assert got == 0
        else:
            h.depth(s, p, n)
            got = h.sink.filled(cid) - before
            best = h.book.best_ask_ticks() if side is BUY else h.book.best_bid_ticks()
            reached = best is not None and (best <= price if side is BUY else best >= price)
            assert got == (qty - before if reached else 0)
        assert h.sink.filled(cid) <= qty
    assert all(f.price_ticks == price for f in h.sink.fills)
    assert all(f.liquidity is Liquidity.MAKER for f in h.sink.fills)


@settings(max_examples=100, deadline=None)
@given(
    visible=st.integers(0, 200),
    qty=st.integers(1, 100),
    trades=st.lists(st.integers(1, 80), max_size=12),
    model=st.sampled_from(["front", "back", "proportional", "probabilistic"]),
)
def test_without_cancellations_we_fill_exactly_what_trades_past_the_queue(
    visible: int, qty: int, trades: list[int], model: str
) -> None:
    bids = [(10_000, visible)] if visible else []
    h = Harness(model=model, bids=bids, asks=[(10_003, 10)])
    order = h.place(BUY, 10_000, qty)
    for n in trades:
        h.trade(10_000, n, SELL)
    assert h.sink.filled(order.client_id) == min(qty, max(0, sum(trades) - visible))


levels = st.dictionaries(st.integers(1, 40), st.integers(1, 50), max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    bid_levels=levels,
    ask_levels=levels,
    orders=st.lists(
        st.tuples(
            st.sampled_from([BUY, SELL]),
            st.integers(-45, 45),
            st.integers(1, 120),
            st.sampled_from(["ioc", "gtc", "market"]),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_taking_never_fills_beyond_the_limit_or_the_order_size(
    bid_levels: dict[int, int], ask_levels: dict[int, int], orders: list[Any]
) -> None:
    mid = 10_000
    h = Harness(
        bids=[(mid - d, q) for d, q in bid_levels.items()],
        asks=[(mid + d, q) for d, q in ask_levels.items()],
    )
    placed = []
    for side, offset, qty, kind in orders:
        if kind == "market":
            order = h.place(side, None, qty, order_type=OrderType.MARKET)
        else:
            tif = TimeInForce.IOC if kind == "ioc" else TimeInForce.GTC
            order = h.place(side, mid + offset, qty, tif=tif)
        placed.append(order)
    visible = {(SELL, mid + d): q for d, q in ask_levels.items()}
    visible.update({(BUY, mid - d): q for d, q in bid_levels.items()})
    taken: dict[tuple[Side, int], int] = {}
    for order in placed:
        mine = [f for f in h.sink.fills if f.client_id == order.client_id]
        assert sum(f.qty_lots for f in mine) <= order.qty_lots
        for f in mine:
            if order.price_ticks is not None:
                if order.side is BUY:
                    assert f.price_ticks <= order.price_ticks
                else:
                    assert f.price_ticks >= order.price_ticks
            if f.liquidity is Liquidity.TAKER:
                key = (order.side.opposite, f.price_ticks)
                taken[key] = taken.get(key, 0) + f.qty_lots
    # Together our takers never used more than the book showed at any level.
    for key, lots in taken.items():
        assert lots <= visible[key]


def test_unknown_cancel_position_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="'front', 'back', 'proportional' or 'probabilistic'"):
        FillSimParams.model_validate({"cancel_position": "middle"})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=st.sampled_from(["front", "back", "proportional", "probabilistic"]),
    side=st.sampled_from([BUY, SELL]),
    steps=st.integers(1, 16),
    events=st.lists(event, max_size=40),
    take=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_with_a_coarser_order_step_every_fill_is_whole_steps(
    model: str, side: Side, steps: int, events: list[Any], take: bool, seed: int
) -> None:
    # Book and trades in lots of 0.001 (any count), orders in steps of 0.005.
    h = Harness(model=model, seed=seed, qty_step="0.005")
    step = h.inst.step_lots
    assert step == 5
    resting = h.place(side, 10_000 if side is BUY else 10_002, steps * step)
    for kind, p, n, s in events:
        if kind == "trade":
            h.trade(p, n, s)
        else:
            h.depth(s, p, n)
        if take:
            h.place(side, 10_004 if side is BUY else 9_996, step * 3, tif=TimeInForce.IOC)
    assert all(f.qty_lots % step == 0 for f in h.sink.fills)
    assert h.sink.filled(resting.client_id) <= resting.qty_lots
    for _, update in h.sink.updates:
        assert update.filled_lots is None or update.filled_lots % step == 0
