"""The compiled book path against the interpreted one, on the same inputs.

``quoteforge.book.fast`` must be indistinguishable from the interpreted code: the same
books, the same top-of-book signals, the same merged consumer levels, and for anything
unusual it must hand over to the interpreted path, which accepts the rare valid forms
and raises the clear error for the rest.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quoteforge.book import BinanceSpotBookSource, BookMessageError, BookState, ConsumerBook, fast
from quoteforge.book.l2 import L2Book
from quoteforge.model import Instrument, Side

TICK = Decimal("0.01")
LOT = Decimal("0.00001")


def test_ci_builds_the_extension() -> None:
    # The README's install command compiles it; CI must exercise the compiled path.
    if os.environ.get("CI", "").lower() == "true":
        assert fast.COMPILED, "quoteforge.book._fastbook was not built by the install"


@pytest.fixture(autouse=True)
def _needs_the_extension(request: pytest.FixtureRequest) -> None:
    if not fast.COMPILED and request.node.name != "test_ci_builds_the_extension":
        pytest.skip("the C extension quoteforge.book._fastbook is not built here")


def _instrument(venue: str = "binance", tick: Decimal = TICK, lot: Decimal = LOT) -> Instrument:
    return Instrument(venue, "BTCUSDT", "BTC", "USDT", tick, lot)


def _source() -> BinanceSpotBookSource:
    return BinanceSpotBookSource(_instrument(), stale_after_ms=None)


def _state(book: L2Book) -> tuple[Any, ...]:
    return (
        list(book._bid_keys),
        dict(book._bid_qty),
        list(book._ask_keys),
        dict(book._ask_qty),
        book.version,
        book.top_version,
        book.side_top_version(Side.BUY),
        book.side_top_version(Side.SELL),
        book.top(Side.BUY, 5),
        book.top(Side.SELL, 5),
        book.top(Side.BUY, 8),
        book.top(Side.SELL, 8),
    )


def _spell_price(ticks: int, style: int) -> str:
    """The same price written the ways a venue (or a bad one) may write it."""
    whole, cents = divmod(ticks, 100)
    return [
        f"{whole}.{cents:02d}000000",  # Binance's fixed 8 decimals
        f"{whole}.{cents:02d}",
        f"{whole:05d}.{cents:02d}0",  # leading zeros
        f"{whole}.{cents:02d}" + "0" * 20,  # more decimals than the fast path reads
        f"{ticks}E-2",  # exponent form: valid, interpreted path only
    ][style]


def _spell_qty(lots: int, style: int) -> str:
    whole, frac = divmod(lots, 100_000)
    return [
        f"{whole}.{frac:05d}000",
        f"{whole}.{frac:05d}",
        f"{lots}E-5",
        f"{whole}.{frac:05d}" + "0" * 16,
    ][style]


levels = st.lists(
    st.tuples(
        st.integers(1, 60),  # distance from 1000.00 in ticks
        st.integers(0, 3) | st.integers(0, 10**9),  # lots; 0 removes
        st.integers(0, 4),
        st.integers(0, 3),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(events=st.lists(st.tuples(levels, levels), min_size=1, max_size=25))
def test_compiled_diffs_equal_interpreted_diffs(
    events: list[tuple[list[Any], list[Any]]],
) -> None:
    compiled, interpreted = _source(), _source()
    snapshot = {
        "lastUpdateId": 10,
        "bids": [[_spell_price(100_000 - i, 0), "1.00000000"] for i in range(1, 8)],
        "asks": [[_spell_price(100_000 + i, 0), "1.00000000"] for i in range(1, 8)],
    }
    compiled.on_snapshot(dict(snapshot))
    interpreted.on_snapshot(dict(snapshot))
    for bid_levels, ask_levels in events:
        b = [[_spell_price(100_000 - d, ps), _spell_qty(q, qs)] for d, q, ps, qs in bid_levels]
        a = [[_spell_price(100_000 + d, ps), _spell_qty(q, qs)] for d, q, ps, qs in ask_levels]
        top = compiled.book._apply_text(b, a, compiled._price_table, compiled._qty_table, None)
        if top is None:  # a level off the fast path: handed over, book untouched
            bids, asks = compiled._convert({"b": b, "a": a})
            top = compiled.book._apply_keyed(bids, asks, None)
        bids, asks = interpreted._convert({"b": b, "a": a})
        assert top == interpreted.book._apply_keyed(bids, asks, None)
        assert _state(compiled.book) == _state(interpreted.book)


@pytest.mark.parametrize(
    "level",
    [
        ["1000.005", "1.0"],  # price off the tick grid
        ["1000.01", "0.000001"],  # size off the lot grid
        ["-1000.01", "1.0"],
        ["1000.01", "-1.0"],
        ["1,000.01", "1.0"],
        ["1000.01.5", "1.0"],
        [".", "1.0"],
        ["", "1.0"],
        ["1000.01", ""],
        ["١٠٠٠.٠١", "1.0"],  # non-ASCII digits
        [1000.01, "1.0"],  # a number, not text
        ["1000.01"],
        ["1000.01", "1.0", "extra"],
        "1000.01",
    ],
)
def test_invalid_levels_are_refused_whole_with_the_interpreted_error(level: Any) -> None:
    source = _source()
    source.on_snapshot({"lastUpdateId": 1, "bids": [["999.99", "1"]], "asks": [["1000.02", "1"]]})
    before = _state(source.book)
    event = {
        "e": "depthUpdate",
        "s": "BTCUSDT",
        "U": 2,
        "u": 2,
        # A valid level first: it must not be applied when a later one is bad.
        "b": [["999.98", "5.0"], level],
        "a": [],
    }
    assert (
        source.book._apply_text(event["b"], event["a"], source._price_table, source._qty_table, 1)
        is None
    )
    with pytest.raises(BookMessageError) as raised:
        source._process(event, True)
    assert "BTCUSDT" in str(raised.value)
    assert _state(source.book) == before


def test_huge_values_take_the_interpreted_path_exactly() -> None:
    source = _source()
    source.on_snapshot({"lastUpdateId": 1, "bids": [["999.99", "1"]], "asks": [["1000.02", "1"]]})
    big = "123456789012345678901234.00"  # beyond 64 bits in ticks
    event = {"e": "depthUpdate", "s": "BTCUSDT", "U": 2, "u": 2, "b": [], "a": [[big, "2.5"]]}
    source._process(event, True)
    assert source.book.lots_at(Side.SELL, 12345678901234567890123400) == 250_000
    # The compiled path keeps working on a side that now holds a Python-sized key.
    event = {"e": "depthUpdate", "s": "BTCUSDT", "U": 3, "u": 3, "b": [], "a": [["1000.03", "1"]]}
    source._process(event, True)
    assert source.book.top(Side.SELL, 3) == [
        (100_002, 100_000),
        (100_003, 100_000),
        (12345678901234567890123400, 250_000),
    ]


# -- consumer book ------------------------------------------------------------------------

venue_levels = st.dictionaries(st.integers(1, 30), st.integers(1, 50), max_size=10)


@settings(max_examples=150, deadline=None)
@given(
    sides=st.lists(st.tuples(venue_levels, venue_levels), min_size=1, max_size=3),
    live=st.lists(st.booleans(), min_size=3, max_size=3),
    steps=st.lists(
        st.tuples(st.integers(0, 2), st.booleans(), st.integers(1, 30), st.integers(0, 50)),
        max_size=12,
    ),
)
def test_compiled_merge_equals_interpreted_merge(
    sides: list[tuple[dict[int, int], dict[int, int]]],
    live: list[bool],
    steps: list[tuple[int, bool, int, int]],
) -> None:
    # Venues on different grids: ticks of 0.01, 0.02 and 0.05, lots of 0.001 and 0.01.
    grids = [(Decimal("0.01"), Decimal("0.001")), (Decimal("0.02"), Decimal("0.01"))]
    grids.append((Decimal("0.05"), Decimal("0.001")))
    consumer = ConsumerBook("BTC")
    books = []
    for i, (bids, asks) in enumerate(sides):
        tick, lot = grids[i]
        book = L2Book(_instrument(f"v{i}", tick, lot))
        book.apply_snapshot(
            [(5000 - d, q) for d, q in bids.items()], [(5001 + d, q) for d, q in asks.items()]
        )
        book.state = BookState.LIVE if live[i] else BookState.STALE
        consumer.add(book)
        books.append(book)

    def check() -> None:
        for side in (Side.BUY, Side.SELL):
            for n in (1, 3, 5):
                expected = consumer._merge_interpreted(side, n)
                assert consumer.top(side, n) == expected
                assert consumer.top(side, n) == expected  # the cached answer too

    check()
    for venue, bid, distance, lots in steps:
        book = books[venue % len(books)]
        if lots == 50:  # a state change instead of a level change
            book.state = BookState.LIVE if book.state is not BookState.LIVE else BookState.STALE
        elif bid:
            book.set_level(Side.BUY, 5000 - distance, lots)
        else:
            book.set_level(Side.SELL, 5001 + distance, lots)
        check()
