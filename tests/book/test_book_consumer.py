"""Consumer book: merged levels with origins, cross-venue flags and routing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from venues import two_venue_consumer

from quoteforge.book import BookState
from quoteforge.model import Side
from quoteforge.plugins.consumer_book import ConsumerBook, common_step

D = Decimal


@pytest.fixture
def consumer() -> ConsumerBook:
    return two_venue_consumer()


def test_common_grid_is_exact() -> None:
    assert common_step([D("0.01"), D("0.05")]) == D("0.01")
    assert common_step([D("0.1"), D("0.25")]) == D("0.05")
    assert common_step([D("1"), D("0.5")]) == D("0.5")


def test_levels_merge_with_origins(consumer: ConsumerBook) -> None:
    bids = consumer.top(Side.BUY, 3)
    assert [lvl.price for lvl in bids] == [D("100.05"), D("100.00"), D("99.95")]
    assert bids[0].qty == D("2.0")
    assert bids[0].origins == (("a", D("1.5")), ("b", D("0.5")))
    assert bids[1].venues == ("a",) and bids[2].venues == ("b",)
    asks = consumer.top(Side.SELL, 3)
    assert [(lvl.price, lvl.qty) for lvl in asks] == [
        (D("100.15"), D("2")),
        (D("100.20"), D("1")),
        (D("100.25"), D("4")),
    ]
    assert asks[2].origins == (("a", D("3")), ("b", D("1")))
    best_bid, best_ask = consumer.best_bid(), consumer.best_ask()
    assert best_bid is not None and best_ask is not None
    assert best_bid.price == D("100.05")
    assert best_ask.venues == ("b",)


def test_reading_twice_reuses_the_merge_until_a_top_level_changes(consumer: ConsumerBook) -> None:
    first = consumer.top(Side.BUY, 3)
    assert consumer.top(Side.BUY, 3) is first
    consumer.book("b").set_level(Side.BUY, consumer.book("b").instrument.price_to_ticks("100.1"), 7)
    again = consumer.top(Side.BUY, 3)
    assert again is not first
    assert again[0].price == D("100.10") and again[0].origins == (("b", D("0.07")),)


def test_crossed_and_locked_markets_across_venues(consumer: ConsumerBook) -> None:
    assert consumer.crossing() is None
    b = consumer.book("b")
    b.set_level(Side.BUY, b.instrument.price_to_ticks("100.20"), 10)  # B bid == A ask
    cross = consumer.crossing()
    assert cross is not None and cross.locked and consumer.is_locked
    assert (cross.bid_venue, cross.ask_venue, cross.bid) == ("b", "a", D("100.20"))
    b.set_level(Side.BUY, b.instrument.price_to_ticks("100.30"), 10)  # through A's asks
    cross = consumer.crossing()
    assert cross is not None and not cross.locked and consumer.is_crossed
    assert (cross.bid, cross.ask) == (D("100.30"), D("100.20"))
    # A stale venue does not take part: its prices may be gone.
    b.state = BookState.STALE
    assert consumer.crossing() is None
    assert all(lvl.venues == ("a",) for lvl in consumer.top(Side.BUY, 5))


def test_take_allocates_across_venues_with_slippage(consumer: ConsumerBook) -> None:
    alloc = consumer.take(Side.BUY, "3.5")
    assert alloc.complete
    assert [(f.venue, f.price, f.qty) for f in alloc.fills] == [
        ("b", D("100.15"), D("2")),
        ("a", D("100.20"), D("1")),
        ("a", D("100.25"), D("0.5")),
    ]
    assert alloc.per_venue == {"b": D("2"), "a": D("1.5")}
    assert alloc.limit_prices == {"b": D("100.15"), "a": D("100.25")}
    assert alloc.notional == D("200.30") + D("100.20") + D("50.125")
    assert alloc.avg_price == alloc.notional / D("3.5")
    assert alloc.best_price == D("100.15")
    assert alloc.slippage == alloc.notional / D("3.5") - D("100.15")
    assert alloc.slippage_bps is not None and alloc.slippage_bps > 0


def test_take_respects_each_venue_lot_and_reports_shortfall(consumer: ConsumerBook) -> None:
    sell = consumer.take(Side.SELL, "0.505")
    # 0.505 at 100.05: venue A can do 0.505 (0.001 lots); B only whole 0.01 lots.
    assert [(f.venue, f.qty) for f in sell.fills] == [("a", D("0.505"))]
    huge = consumer.take(Side.SELL, "100")
    assert not huge.complete and huge.filled == D("8")
    with pytest.raises(ValueError, match="not a multiple of the common lot size"):
        consumer.take(Side.BUY, "0.0001")
    with pytest.raises(ValueError, match="positive size"):
        consumer.take(Side.BUY, 0)


def test_duplicate_venue_name_is_refused(consumer: ConsumerBook) -> None:
    with pytest.raises(ValueError, match="already has a venue named 'a'"):
        consumer.add(consumer.book("a"))
