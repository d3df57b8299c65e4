"""Smart order router: allocation across venues, fees, the slippage cap, exact grids."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from venues import two_venue_consumer, venue_book

from quoteforge.book import BookState, L2Book
from quoteforge.model import Instrument, Side
from quoteforge.plugins.consumer_book import ConsumerBook
from quoteforge.plugins.routing import SmartOrderRouter

D = Decimal
Levels = list[tuple[str, str]]


@pytest.fixture
def consumer() -> ConsumerBook:
    return two_venue_consumer(taker_fee="0.001")


def test_buy_walks_venues_by_price_into_exact_child_orders(consumer: ConsumerBook) -> None:
    route = SmartOrderRouter(consumer).route(Side.BUY, "3.5", 50)
    assert route.complete and route.best_price == D("100.15")
    assert [(f.venue, f.price, f.qty) for f in route.fills] == [
        ("b", D("100.15"), D("2")),
        ("a", D("100.2"), D("1")),
        ("a", D("100.25"), D("0.5")),
    ]
    children = route.by_venue()
    # Each child is on its venue's grid: a in cents and 0.001 lots, b in 0.05 and 0.01.
    assert (children["a"].price_ticks, children["a"].qty_lots) == (10_025, 1_500)
    assert (children["b"].price_ticks, children["b"].qty_lots) == (2_003, 200)
    assert children["a"].price == D("100.25") and children["b"].qty == D(2)
    notional = D("100.15") * 2 + D("100.20") + D("100.25") * D("0.5")
    assert route.notional == notional
    assert route.avg_price == notional / D("3.5")
    assert route.fees == notional * D("0.001")
    assert route.all_in_price == (notional + route.fees) / D("3.5")
    assert route.slippage_bps == (notional / D("3.5") - D("100.15")) / D("100.15") * 10_000


def test_slippage_cap_stops_allocation_and_reports_the_rest(consumer: ConsumerBook) -> None:
    # 100.15 * (1 + 5 bps) = 100.200075: 100.20 is in, 100.25 is out.
    route = SmartOrderRouter(consumer).route(Side.BUY, 5, 5)
    assert route.cap_price == D("100.200075")
    assert route.filled == D(3) and route.unfilled == D(2) and not route.complete
    assert max(f.price for f in route.fills) == D("100.2")
    assert route.slippage_bps is not None and route.slippage_bps <= 5
    # Zero slippage takes only the best price.
    sell = SmartOrderRouter(consumer).route(Side.SELL, 3, 0)
    assert [(f.venue, f.qty) for f in sell.fills] == [("a", D("1.5")), ("b", D("0.5"))]
    assert sell.filled == D(2) and sell.slippage_bps == 0


def test_fees_pick_the_cheaper_all_in_venue() -> None:
    # a is 1 cent cheaper but charges 20 bps; b's 100.01 + 0 fee beats 100.00 + 0.20.
    a = venue_book("a", "0.01", "0.01", [("99", "1")], [("100.00", "1")], taker_fee="0.001")
    b = venue_book("b", "0.01", "0.01", [("99", "1")], [("100.01", "1")], taker_fee="0.001")
    book = ConsumerBook("X")
    book.add(a)
    book.add(b)
    router = SmartOrderRouter(book, {"a": "0.002", "b": 0})
    route = router.route(Side.BUY, "1.5", 10)
    assert [(f.venue, f.qty) for f in route.fills] == [("b", D(1)), ("a", D("0.5"))]
    assert route.fees == D("100.00") * D("0.5") * D("0.002")
    # Capping on the all-in price leaves venue a out: 100.20 > 100.00 * (1 + 10 bps).
    strict = SmartOrderRouter(book, {"a": "0.002", "b": 0}, cap_includes_fees=True)
    assert strict.route(Side.BUY, "1.5", 10).filled == D(1)


def test_stale_venues_are_left_out(consumer: ConsumerBook) -> None:
    consumer.book("b").state = BookState.STALE
    route = SmartOrderRouter(consumer).route(Side.BUY, 1, 100)
    assert {f.venue for f in route.fills} == {"a"} and route.best_price == D("100.2")


def test_bad_input_names_the_problem(consumer: ConsumerBook) -> None:
    router = SmartOrderRouter(consumer)
    with pytest.raises(ValueError, match=r"size 0.0005 is not a multiple of the common lot size"):
        router.route(Side.BUY, "0.0005", 10)
    with pytest.raises(ValueError, match="positive size"):
        router.route(Side.BUY, 0, 10)
    with pytest.raises(ValueError, match="max_slippage_bps must be >= 0"):
        router.route(Side.BUY, 1, -1)
    with pytest.raises(ValueError, match=r"fee for venue 'a' must be a rate in \[0, 1\)"):
        SmartOrderRouter(consumer, {"a": 5})
    with pytest.raises(ValueError, match=r"venues \['c'\] that consumer book"):
        SmartOrderRouter(consumer, {"c": "0.001"})


_grid = st.tuples(st.sampled_from(["0.01", "0.05", "0.1"]), st.sampled_from(["0.001", "0.01"]))
_levels = st.lists(st.tuples(st.integers(1, 40), st.integers(1, 500)), min_size=0, max_size=6)


@st.composite
def markets(draw: st.DrawFn) -> ConsumerBook:
    book = ConsumerBook("BTC/USDT")
    for venue in ("a", "b", "c")[: draw(st.integers(1, 3))]:
        tick, lot = draw(_grid)
        inst = Instrument(venue, "BTC/USDT", "BTC", "USDT", D(tick), D(lot))
        base = inst.price_to_ticks(100)
        asks = [(base + off, q) for off, q in draw(_levels)]
        bids = [(base - off, q) for off, q in draw(_levels)]
        venue_book = L2Book(inst)
        venue_book.apply_snapshot(bids, asks)
        venue_book.state = BookState.LIVE
        book.add(venue_book)
    return book


@settings(max_examples=150, deadline=None)
@given(
    book=markets(),
    side=st.sampled_from([Side.BUY, Side.SELL]),
    units=st.integers(1, 3000),
    cap=st.integers(0, 300),
    fees=st.lists(st.sampled_from(["0", "0.0005", "0.002"]), min_size=3, max_size=3),
)
def test_route_never_passes_the_cap_and_stays_on_each_grid(
    book: ConsumerBook, side: Side, units: int, cap: int, fees: list[str]
) -> None:
    size = book.qty_step * units
    router = SmartOrderRouter(book, dict(zip(book.venues, fees, strict=False)))
    route = router.route(side, size, cap)
    assert route.filled + route.unfilled == size and route.filled <= size
    if route.best_price is None:
        assert route.fills == ()
        return
    assert route.cap_price is not None
    for f in route.fills:
        inst = book.book(f.venue).instrument
        assert f.price == inst.ticks_to_price(f.price_ticks) and f.lots > 0
        assert f.price <= route.cap_price if side is Side.BUY else f.price >= route.cap_price
        # Never more than the level shows on that venue.
        assert f.lots <= book.book(f.venue).lots_at(side.opposite, f.price_ticks)
    assert sum(c.qty for c in route.children) == route.filled
    if route.filled:
        assert route.slippage_bps is not None and route.slippage_bps <= cap
    # The route only stops short when nothing else within the cap fits the remainder.
    if not route.complete:
        left = route.unfilled
        used = {(f.venue, f.price_ticks): f.lots for f in route.fills}
        for venue in book.venues:
            venue_book = book.book(venue)
            inst = venue_book.instrument
            for ticks, lots in venue_book.levels(side.opposite):
                price = inst.ticks_to_price(ticks)
                inside = price <= route.cap_price if side is Side.BUY else price >= route.cap_price
                spare = lots - used.get((venue, ticks), 0)
                if inside and spare > 0:
                    assert inst.lot_size > left


@settings(max_examples=100, deadline=None)
@given(book=markets(), side=st.sampled_from([Side.BUY, Side.SELL]), units=st.integers(1, 3000))
def test_without_fees_or_cap_the_route_matches_the_consumer_book_take(
    book: ConsumerBook, side: Side, units: int
) -> None:
    size = book.qty_step * units
    route = SmartOrderRouter(book, dict.fromkeys(book.venues, 0)).route(side, size, 10**6)
    allocation = book.take(side, size)
    assert route.fills == allocation.fills
    assert route.filled == allocation.filled
    assert route.avg_price == allocation.avg_price


def binance_like_book(venue: str, asks: Levels) -> L2Book:
    """Sizes reported at 8 decimals, orders in steps of 0.00001 (Binance BTCUSDT)."""
    inst = Instrument(
        venue,
        "BTC/USDT",
        "BTC",
        "USDT",
        D("0.01"),
        D("0.00000001"),
        qty_step=D("0.00001"),
    )
    book = L2Book(inst)
    book.apply_snapshot(
        [(inst.price_to_ticks("99"), inst.qty_to_lots("1"))],
        [(inst.price_to_ticks(p), inst.qty_to_lots(q)) for p, q in asks],
    )
    book.state = BookState.LIVE
    return book


def test_children_are_whole_order_steps_on_levels_finer_than_the_step() -> None:
    book = ConsumerBook("X")
    book.add(binance_like_book("a", [("100.00", "0.000007"), ("100.01", "0.000018")]))
    route = SmartOrderRouter(book).route(Side.BUY, "0.00003", 100)
    # 0.000025 is visible: two whole steps, the level takes exact at their prices.
    assert [(f.price, f.qty) for f in route.fills] == [
        (D("100.00"), D("0.000007")),
        (D("100.01"), D("0.000013")),
    ]
    child = route.by_venue()["a"]
    assert child.qty == D("0.00002") and child.price == D("100.01")
    assert child.instrument.check_order(child.price_ticks, child.qty_lots) is None
    assert route.filled == D("0.00002") and route.unfilled == D("0.00001")
