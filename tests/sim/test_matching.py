"""Order types, self-trade prevention, replace and rejections of the matching engine."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from quoteforge.exchanges.sim.matching import MatchingEngine, SimOrder, SubmitResult, Trade
from quoteforge.model import Instrument, InstrumentKind, OrderType, Side, TimeInForce

BUY, SELL = Side.BUY, Side.SELL
GTC, IOC, POST_ONLY = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.POST_ONLY


def spot(min_qty: Decimal = Decimal(0), min_notional: Decimal = Decimal(0)) -> Instrument:
    return Instrument(
        "sim", "BTC-USD", "BTC", "USD", Decimal("0.1"), Decimal("0.001"), min_qty, min_notional
    )


@pytest.fixture
def engine() -> MatchingEngine:
    return MatchingEngine(spot())


def limit(
    oid: str, side: Side, price: int, qty: int, owner: str = "bg", tif: TimeInForce = GTC
) -> SimOrder:
    return SimOrder.limit(oid, owner, side, price, qty, tif)


def wrong(value: object) -> Any:
    """A value of the wrong type, passed on purpose to check the engine refuses it."""
    return value


def ok(result: SubmitResult) -> SubmitResult:
    assert result.accepted, result.reason
    return result


def fills(result: SubmitResult) -> list[tuple[str, int, int]]:
    return [(t.maker_order_id, t.price_ticks, t.qty_lots) for t in result.trades]


# -- limit orders -------------------------------------------------------------------------
def test_limit_order_rests_when_it_does_not_cross(engine: MatchingEngine) -> None:
    result = ok(engine.submit(limit("b1", BUY, 1000, 5)))
    assert result.resting
    assert result.trades == []
    assert engine.best_bid() == (1000, 5)
    assert engine.best_ask() is None
    assert engine.get("b1") is not None
    assert engine.drain_level_changes() == [(BUY, 1000, 5)]


def test_crossing_limit_trades_at_the_makers_price_and_rests_the_rest(
    engine: MatchingEngine,
) -> None:
    ok(engine.submit(limit("a1", SELL, 1012, 3)))
    result = ok(engine.submit(limit("b1", BUY, 1015, 5, owner="us")))
    assert result.trades == [Trade("a1", "bg", "b1", "us", BUY, 1012, 3, 0, 2)]
    assert result.resting
    assert result.filled_lots == 3
    assert engine.best_ask() is None
    assert engine.best_bid() == (1015, 2)
    taker = engine.get("b1")
    assert taker is not None
    assert (taker.filled_lots, taker.remaining_lots) == (3, 2)


def test_sweep_follows_price_then_time_priority(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("a-late-best", SELL, 1010, 2)))
    ok(engine.submit(limit("a-worse", SELL, 1011, 4)))
    ok(engine.submit(limit("a-early", SELL, 1011, 4)))
    ok(engine.submit(limit("a-best", SELL, 1009, 1)))
    result = ok(engine.submit(limit("b", BUY, 1011, 9, owner="us")))
    assert fills(result) == [
        ("a-best", 1009, 1),
        ("a-late-best", 1010, 2),
        ("a-worse", 1011, 4),
        ("a-early", 1011, 2),
    ]
    assert [t.taker_remaining_lots for t in result.trades] == [8, 6, 2, 0]
    assert result.trades[-1].maker_remaining_lots == 2
    assert not result.resting
    assert engine.levels(SELL, 5) == [(1011, 2)]


def test_levels_are_best_first_on_both_sides(engine: MatchingEngine) -> None:
    for i, price in enumerate([1000, 1003, 1001, 1002]):
        ok(engine.submit(limit(f"b{i}", BUY, price, i + 1)))
        ok(engine.submit(limit(f"a{i}", SELL, price + 10, i + 1)))
    ok(engine.submit(limit("b-more", BUY, 1001, 7)))
    assert engine.levels(BUY, 3) == [(1003, 2), (1002, 4), (1001, 10)]
    assert engine.levels(SELL, 10) == [(1010, 1), (1011, 3), (1012, 4), (1013, 2)]
    assert engine.levels(BUY, 0) == []
    assert engine.best_bid() == (1003, 2)
    assert engine.best_ask() == (1010, 1)


# -- IOC, market, post-only ---------------------------------------------------------------
def test_ioc_fills_what_it_can_and_never_rests(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("a1", SELL, 1010, 2)))
    ok(engine.submit(limit("a2", SELL, 1012, 2)))
    result = ok(engine.submit(limit("i1", BUY, 1011, 5, owner="us", tif=IOC)))
    assert fills(result) == [("a1", 1010, 2)]
    assert (result.resting, result.cancelled_remainder_lots) == (False, 3)
    assert engine.get("i1") is None
    assert engine.best_bid() is None

    unfilled = ok(engine.submit(limit("i2", BUY, 1000, 5, owner="us", tif=IOC)))
    assert (unfilled.trades, unfilled.cancelled_remainder_lots) == ([], 5)
    assert engine.best_bid() is None


def test_market_order_sweeps_and_cancels_the_rest(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("b1", BUY, 1000, 2)))
    ok(engine.submit(limit("b2", BUY, 990, 3)))
    result = ok(engine.submit(SimOrder.market("m1", "us", SELL, 10)))
    assert fills(result) == [("b1", 1000, 2), ("b2", 990, 3)]
    assert all(t.aggressor is SELL for t in result.trades)
    assert (result.resting, result.cancelled_remainder_lots) == (False, 5)
    assert engine.best_bid() is None

    empty = ok(engine.submit(SimOrder.market("m2", "us", SELL, 4)))
    assert (empty.trades, empty.cancelled_remainder_lots) == ([], 4)


def test_market_order_with_a_price_limit_stops_there(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("a1", SELL, 1010, 2)))
    ok(engine.submit(limit("a2", SELL, 1020, 2)))
    result = ok(engine.submit(SimOrder.market("m", "us", BUY, 3, limit_ticks=1015)))
    assert fills(result) == [("a1", 1010, 2)]
    assert result.cancelled_remainder_lots == 1
    assert engine.best_ask() == (1020, 2)


def test_market_order_with_gtc_still_never_rests(engine: MatchingEngine) -> None:
    order = SimOrder("m", "us", BUY, OrderType.MARKET, GTC, None, 3)
    result = ok(engine.submit(order))
    assert (result.resting, result.cancelled_remainder_lots) == (False, 3)
    assert len(engine) == 0


def test_post_only_rests_when_passive_and_is_rejected_when_it_would_cross(
    engine: MatchingEngine,
) -> None:
    ok(engine.submit(limit("a1", SELL, 1012, 2)))
    passive = ok(engine.submit(limit("p1", BUY, 1011, 1, owner="us", tif=POST_ONLY)))
    assert passive.resting

    crossing = engine.submit(limit("p2", BUY, 1013, 1, owner="us", tif=POST_ONLY))
    assert not crossing.accepted
    assert crossing.reason == "post-only order would cross at 1012"
    locking = engine.submit(limit("p3", BUY, 1012, 1, owner="us", tif=POST_ONLY))
    assert locking.reason == "post-only order would cross at 1012"
    assert engine.get("p2") is None
    assert engine.best_ask() == (1012, 2)
    assert engine.best_bid() == (1011, 1)


# -- self-trade prevention ----------------------------------------------------------------
def test_stp_cancel_resting_cancels_own_orders_and_trades_on() -> None:
    engine = MatchingEngine(spot(), self_trade_prevention="cancel_resting")
    ok(engine.submit(limit("own", SELL, 1010, 2, owner="us")))
    ok(engine.submit(limit("other", SELL, 1010, 2, owner="bg")))
    result = ok(engine.submit(limit("t", BUY, 1010, 3, owner="us")))
    assert [o.order_id for o in result.stp_cancelled] == ["own"]
    assert fills(result) == [("other", 1010, 2)]
    assert engine.get("own") is None
    assert engine.best_bid() == (1010, 1)
    assert engine.best_ask() is None
    assert engine.orders_of("us") == [engine.get("t")]


def test_stp_cancel_taker_stops_at_the_first_own_order() -> None:
    engine = MatchingEngine(spot(), self_trade_prevention="cancel_taker")
    ok(engine.submit(limit("other", SELL, 1010, 1, owner="bg")))
    ok(engine.submit(limit("own", SELL, 1010, 2, owner="us")))
    ok(engine.submit(limit("after", SELL, 1010, 2, owner="bg")))
    result = ok(engine.submit(limit("t", BUY, 1010, 4, owner="us")))
    assert fills(result) == [("other", 1010, 1)]
    assert result.stp_cancelled == []
    assert (result.resting, result.cancelled_remainder_lots) == (False, 3)
    assert "self-trade prevention" in result.reason
    assert engine.get("own") is not None
    assert engine.best_ask() == (1010, 4)
    assert engine.best_bid() is None


def test_stp_none_lets_an_owner_trade_with_itself() -> None:
    engine = MatchingEngine(spot(), self_trade_prevention="none")
    ok(engine.submit(limit("own", SELL, 1010, 2, owner="us")))
    result = ok(engine.submit(limit("t", BUY, 1010, 2, owner="us")))
    assert result.trades == [Trade("own", "us", "t", "us", BUY, 1010, 2, 0, 0)]
    assert result.stp_cancelled == []


def test_unknown_stp_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'cancel_both'.*cancel_resting, cancel_taker, none"):
        MatchingEngine(spot(), self_trade_prevention="cancel_both")


# -- cancel -------------------------------------------------------------------------------
def test_cancel_in_the_middle_of_a_queue(engine: MatchingEngine) -> None:
    for i in range(3):
        ok(engine.submit(limit(f"a{i}", SELL, 1010, i + 1)))
    engine.drain_level_changes()
    cancelled = engine.cancel("a1")
    assert cancelled is not None
    assert (cancelled.order_id, cancelled.remaining_lots) == ("a1", 2)
    assert engine.cancel("a1") is None
    assert engine.cancel("never") is None
    assert engine.best_ask() == (1010, 4)
    assert engine.queue_ahead("a2") == 1
    assert engine.drain_level_changes() == [(SELL, 1010, 4)]
    result = ok(engine.submit(SimOrder.market("m", "us", BUY, 10)))
    assert fills(result) == [("a0", 1010, 1), ("a2", 1010, 3)]


def test_many_cancels_ahead_of_a_survivor_keep_the_queue_right(engine: MatchingEngine) -> None:
    for i in range(500):
        ok(engine.submit(limit(f"a{i}", SELL, 1010, 1)))
    ok(engine.submit(limit("last", SELL, 1010, 7)))
    for i in range(500):
        assert engine.cancel(f"a{i}") is not None
    assert engine.queue_ahead("last") == 0
    assert engine.best_ask() == (1010, 7)
    result = ok(engine.submit(SimOrder.market("m", "us", BUY, 7)))
    assert fills(result) == [("last", 1010, 7)]
    assert engine.best_ask() is None


def test_cancel_all_and_orders_of(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("u1", BUY, 1000, 1, owner="us")))
    ok(engine.submit(limit("g1", BUY, 1000, 2, owner="bg")))
    ok(engine.submit(limit("u2", SELL, 1010, 3, owner="us")))
    assert [o.order_id for o in engine.orders_of("us")] == ["u1", "u2"]
    assert engine.orders_of("nobody") == []
    cancelled = engine.cancel_all("us")
    assert [o.order_id for o in cancelled] == ["u1", "u2"]
    assert engine.orders_of("us") == []
    assert engine.best_bid() == (1000, 2)
    assert engine.best_ask() is None
    assert engine.cancel_all("us") == []


def test_an_id_can_be_used_again_once_its_order_is_done(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("x", SELL, 1010, 1)))
    ok(engine.submit(SimOrder.market("m", "us", BUY, 1)))
    ok(engine.submit(limit("x", SELL, 1011, 2)))
    assert engine.best_ask() == (1011, 2)


# -- replace ------------------------------------------------------------------------------
def test_replace_down_at_the_same_price_keeps_priority(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("first", SELL, 1010, 5)))
    ok(engine.submit(limit("second", SELL, 1010, 5)))
    result = ok(engine.replace("first", 1010, 2, ts_ns=7))
    assert result.resting
    assert engine.queue_ahead("second") == 2
    assert engine.best_ask() == (1010, 7)
    fill = ok(engine.submit(SimOrder.market("m", "us", BUY, 1)))
    assert fills(fill) == [("first", 1010, 1)]


def test_replace_to_the_same_price_and_quantity_keeps_priority(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("first", SELL, 1010, 5)))
    ok(engine.submit(limit("second", SELL, 1010, 5)))
    ok(engine.replace("first", 1010, 5, ts_ns=7))
    assert engine.queue_ahead("second") == 5


def test_replace_up_loses_priority(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("first", SELL, 1010, 5)))
    ok(engine.submit(limit("second", SELL, 1010, 5)))
    result = ok(engine.replace("first", 1010, 6, ts_ns=9))
    assert result.resting
    assert engine.queue_ahead("first") == 5
    assert engine.queue_ahead("second") == 0
    order = engine.get("first")
    assert order is not None
    assert (order.qty_lots, order.ts_ns) == (6, 9)
    assert engine.best_ask() == (1010, 11)


def test_replace_to_a_crossing_price_trades(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("bid", BUY, 1000, 3, owner="us")))
    ok(engine.submit(limit("ask", SELL, 1005, 2)))
    result = ok(engine.replace("bid", 1006, 3, ts_ns=1))
    assert result.trades == [Trade("ask", "bg", "bid", "us", BUY, 1005, 2, 0, 1)]
    assert result.resting
    assert engine.best_bid() == (1006, 1)


def test_replace_counts_the_new_total_including_fills(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("a", SELL, 1010, 10)))
    ok(engine.submit(SimOrder.market("m", "us", BUY, 4)))
    ok(engine.replace("a", 1011, 8, ts_ns=1))
    order = engine.get("a")
    assert order is not None
    assert (order.qty_lots, order.filled_lots, order.remaining_lots) == (8, 4, 4)
    assert engine.best_ask() == (1011, 4)


def test_replace_at_or_below_the_filled_quantity_finishes_the_order(
    engine: MatchingEngine,
) -> None:
    ok(engine.submit(limit("a", SELL, 1010, 10)))
    ok(engine.submit(SimOrder.market("m", "us", BUY, 4)))
    result = ok(engine.replace("a", 1010, 4, ts_ns=1))
    assert (result.resting, result.cancelled_remainder_lots) == (False, 6)
    assert "already filled" in result.reason
    assert engine.get("a") is None
    assert engine.best_ask() is None


def test_post_only_replace_that_would_cross_is_rejected_and_cancelled(
    engine: MatchingEngine,
) -> None:
    ok(engine.submit(limit("ask", SELL, 1010, 2)))
    ok(engine.submit(limit("p", BUY, 1000, 3, owner="us", tif=POST_ONLY)))
    result = engine.replace("p", 1010, 3, ts_ns=1)
    assert not result.accepted
    assert result.reason.startswith("post-only order would cross at 1010")
    assert result.cancelled_remainder_lots == 3
    assert engine.get("p") is None
    assert engine.best_bid() is None
    assert engine.best_ask() == (1010, 2)


def test_replace_rejections_leave_the_order_alone(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("a", SELL, 1010, 5)))
    unknown = engine.replace("nope", 1010, 1, ts_ns=0)
    assert not unknown.accepted
    assert "no resting order has this id" in unknown.reason
    bad_price = engine.replace("a", 0, 5, ts_ns=0)
    assert "below the instrument's minimum of 1 ticks" in bad_price.reason
    negative = engine.replace("a", 1010, -1, ts_ns=0)
    assert "must not be negative" in negative.reason
    floaty = engine.replace("a", wrong(1010.5), 5, ts_ns=0)
    assert "new_price_ticks must be an int" in floaty.reason
    assert [r.accepted for r in (bad_price, negative, floaty)] == [False, False, False]
    order = engine.get("a")
    assert order is not None
    assert (order.price_ticks, order.qty_lots) == (1010, 5)
    assert engine.best_ask() == (1010, 5)


# -- rejections ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("order", "message"),
    [
        (SimOrder.limit("x", "us", BUY, 1000, 0), r"qty_lots must be positive, got 0"),
        (SimOrder.limit("x", "us", BUY, 1000, -3), r"qty_lots must be positive, got -3"),
        (
            SimOrder.limit("x", "us", BUY, 1000, wrong(1.5)),
            r"qty_lots must be an int number of lots, got 1.5; convert .*qty_to_lots",
        ),
        (
            SimOrder.limit("x", "us", BUY, 1000, True),
            r"qty_lots must be an int number of lots, got True",
        ),
        (
            SimOrder("x", "us", BUY, OrderType.LIMIT, GTC, None, 1),
            r"a limit order needs price_ticks",
        ),
        (
            SimOrder.limit("x", "us", BUY, 0, 1),
            r"price 0 ticks is below the instrument's minimum of 1 ticks",
        ),
        (
            SimOrder.limit("x", "us", BUY, wrong(Decimal("100.5")), 1),
            r"price_ticks must be an int number of ticks, got Decimal\('100.5'\)",
        ),
        (
            SimOrder("x", "us", BUY, OrderType.MARKET, POST_ONLY, None, 1),
            r"a market order cannot be post-only",
        ),
        (
            SimOrder("x", "us", BUY, OrderType.LIMIT, GTC, 1000, 2, filled_lots=1),
            r"a new order must have filled_lots=0, got 1",
        ),
        (
            SimOrder("x", "us", BUY, wrong("limit"), GTC, 1000, 2),
            r"order_type must be OrderType.LIMIT or OrderType.MARKET, got 'limit'",
        ),
        (
            SimOrder("x", "us", BUY, OrderType.LIMIT, wrong("gtc"), 1000, 2),
            r"tif must be TimeInForce.GTC, IOC or POST_ONLY, got 'gtc'",
        ),
    ],
)
def test_bad_orders_are_rejected_with_the_reason(
    engine: MatchingEngine, order: SimOrder, message: str
) -> None:
    result = engine.submit(order)
    assert not result.accepted
    assert not result.resting
    assert result.trades == []
    assert result.cancelled_remainder_lots == 0
    assert len(engine) == 0
    assert re.search(message, result.reason), result.reason


def test_duplicate_resting_id_is_rejected(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("dup", BUY, 1000, 1)))
    again = engine.submit(limit("dup", SELL, 1100, 1))
    assert not again.accepted
    assert again.reason.startswith("duplicate order_id 'dup'")
    assert engine.best_ask() is None


def test_binary_contract_prices_stop_below_one() -> None:
    event = Instrument(
        "sim", "EVT", "YES", "USD", Decimal("0.01"), Decimal(1), kind=InstrumentKind.BINARY
    )
    engine = MatchingEngine(event)
    ok(engine.submit(limit("top", SELL, 99, 1)))
    result = engine.submit(limit("over", SELL, 100, 1))
    assert result.reason == "price 100 ticks is above the instrument's maximum of 99 ticks"


def test_instrument_minimum_quantity_and_notional_are_enforced() -> None:
    engine = MatchingEngine(spot(min_qty=Decimal("0.005"), min_notional=Decimal(10)))
    small = engine.submit(limit("s", BUY, 100_000, 4))
    assert small.reason == "quantity 4 lots is below the instrument's minimum of 5 lots (0.005)"
    # 0.1 * 999 ticks * 0.001 * 100 lots = 9.99 < 10
    cheap = engine.submit(limit("c", BUY, 999, 100))
    assert cheap.reason == "notional 9.99 is below the instrument's minimum of 10"
    ok(engine.submit(limit("fine", BUY, 1000, 100)))
    # A market order has no price to check a notional against.
    ok(engine.submit(SimOrder.market("m", "us", SELL, 5)))


def test_numpy_integers_are_accepted_as_plain_ints(engine: MatchingEngine) -> None:
    order = SimOrder.limit("n", "us", BUY, wrong(np.int64(1000)), wrong(np.int64(3)))
    ok(engine.submit(order))
    assert type(order.qty_lots) is int
    assert type(order.price_ticks) is int
    assert engine.best_bid() == (1000, 3)


# -- market data --------------------------------------------------------------------------
def test_level_changes_are_coalesced_in_order_of_last_change(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("b1", BUY, 1000, 1)))
    ok(engine.submit(limit("a1", SELL, 1010, 2)))
    ok(engine.submit(limit("b2", BUY, 1000, 4)))
    ok(engine.submit(limit("a2", SELL, 1011, 1)))
    engine.cancel("a2")
    ok(engine.submit(SimOrder.market("m", "us", SELL, 1)))
    assert engine.drain_level_changes() == [
        (SELL, 1010, 2),
        (SELL, 1011, 0),
        (BUY, 1000, 4),
    ]
    assert engine.drain_level_changes() == []


def test_a_level_that_empties_and_comes_back_is_found_again(engine: MatchingEngine) -> None:
    ok(engine.submit(limit("a", SELL, 1010, 1)))
    ok(engine.submit(limit("b", SELL, 1012, 1)))
    engine.cancel("a")
    assert engine.best_ask() == (1012, 1)
    ok(engine.submit(limit("c", SELL, 1010, 2)))
    ok(engine.submit(limit("d", SELL, 1011, 1)))
    assert engine.best_ask() == (1010, 2)
    assert engine.levels(SELL, 5) == [(1010, 2), (1011, 1), (1012, 1)]


def test_queue_ahead_of_an_unknown_order_raises(engine: MatchingEngine) -> None:
    with pytest.raises(KeyError, match="'ghost' is not resting"):
        engine.queue_ahead("ghost")
