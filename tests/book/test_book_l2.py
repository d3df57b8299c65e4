"""L2Book: exact levels, the top-levels change signal, and book analytics."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quoteforge.book import TOP_LEVELS, L2Book
from quoteforge.model import Instrument, Side


def make_book(instrument: Instrument) -> L2Book:
    book = L2Book(instrument)
    book.apply_snapshot(
        bids=[(100, 5), (99, 10), (98, 20), (97, 40)],
        asks=[(102, 4), (103, 8), (104, 16), (106, 32)],
    )
    return book


def test_public_api_reads(btcusdt: Instrument) -> None:
    book = make_book(btcusdt)
    assert book.best_bid() == (100, 5) and book.best_ask() == (102, 4)
    assert book.best_bid_ticks() == 100 and book.best_ask_ticks() == 102
    assert book.top(Side.BUY, 2) == [(100, 5), (99, 10)]
    assert book.top(Side.SELL, 10) == [(102, 4), (103, 8), (104, 16), (106, 32)]
    assert book.depth(Side.BUY) == 4
    assert book.mid_ticks() == 101 and book.spread_ticks() == 2
    assert book.mid() == pytest.approx(1.01)
    # Size-weighted: the bigger bid pulls the price towards the ask.
    assert book.microprice() == pytest.approx((100 * 4 + 102 * 5) / 9 * 0.01)
    assert not book.is_crossed()
    book.set_level(Side.BUY, 102, 1)
    assert book.is_crossed()
    book.set_level(Side.BUY, 102, 0)
    book.set_level(Side.BUY, 50, 0)  # removing an absent level is fine
    assert book.best_bid() == (100, 5)
    book.clear()
    assert book.best_bid() is None and book.mid() is None


def test_top_version_moves_only_for_the_top_levels(btcusdt: Instrument) -> None:
    book = L2Book(btcusdt)
    book.apply_snapshot([(100 - i, 1) for i in range(10)], [(101 + i, 1) for i in range(10)])
    version, top = book.version, book.top_version
    book.set_level(Side.BUY, 94, 7)  # 7th level: below the top five
    book.set_level(Side.SELL, 120, 3)  # a new level far away
    assert book.version == version + 2 and book.top_version == top
    book.set_level(Side.SELL, 105, 2)  # 5th ask
    assert book.top_version == top + 1
    book.set_level(Side.SELL, 105, 2)  # same size again: no change at all
    assert book.top_version == top + 1 and book.version == version + 3
    changed = book.apply_deltas([(90, 0)], [(150, 1)])
    assert not changed and book.top_version == top + 1
    changed = book.apply_deltas([(100, 0)], [])
    assert changed and book.top_version == top + 2
    assert book.top(Side.BUY, TOP_LEVELS) == [(99, 1), (98, 1), (97, 1), (96, 1), (95, 1)]


def test_imbalance_and_depth_within_bps(btcusdt: Instrument) -> None:
    book = make_book(btcusdt)
    assert book.imbalance(1) == pytest.approx((5 - 4) / 9)
    assert book.imbalance(2) == pytest.approx((15 - 12) / 27)
    # Mid is 101 ticks; 200 bps is 2.02 ticks: bids >= 98.98, asks <= 103.02.
    assert book.depth_within_bps(Side.BUY, 200) == 15
    assert book.depth_within_bps(Side.SELL, 200) == 12
    assert book.depth_within_bps(Side.SELL, "0") == 0
    with pytest.raises(ValueError, match="bps >= 0"):
        book.depth_within_bps(Side.BUY, -1)
    with pytest.raises(ValueError, match="n >= 1"):
        book.imbalance(0)
    assert L2Book(btcusdt).imbalance() is None


def test_cost_to_take_walks_the_book_exactly(btcusdt: Instrument) -> None:
    book = make_book(btcusdt)
    cost = book.cost_to_take(Side.BUY, 10)
    assert cost.complete and cost.levels == 2
    assert cost.notional_units == 102 * 4 + 103 * 6
    assert cost.avg_price_ticks == Fraction(102 * 4 + 103 * 6, 10)
    assert cost.notional == Decimal("0.01") * Decimal("0.00001") * (102 * 4 + 103 * 6)
    assert cost.avg_price == Decimal("1.0260")
    assert cost.slippage_ticks == Fraction(6, 10)
    assert (cost.best_ticks, cost.worst_ticks) == (102, 103)
    sell = book.cost_to_take(Side.SELL, 1000)
    assert not sell.complete and sell.filled_lots == 75
    assert sell.worst_ticks == 97
    with pytest.raises(ValueError, match="lots > 0"):
        book.cost_to_take(Side.BUY, 0)


def test_truncate_reports_what_it_removed(btcusdt: Instrument) -> None:
    book = make_book(btcusdt)
    assert book.truncate(2) == ([97, 98], [106, 104])  # worst first
    assert book.top(Side.BUY, 5) == [(100, 5), (99, 10)]
    assert book.truncate(2) == ([], [])


ops = st.lists(
    st.tuples(st.sampled_from([Side.BUY, Side.SELL]), st.integers(1, 40), st.integers(0, 5)),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops)
def test_matches_a_dict_model_and_signals_every_top_change(
    ops: list[tuple[Side, int, int]],
) -> None:
    inst = Instrument("t", "X", "X", "Y", Decimal("1"), Decimal("1"))
    book = L2Book(inst)
    model: dict[Side, dict[int, int]] = {Side.BUY: {}, Side.SELL: {}}

    def model_top(side: Side) -> list[tuple[int, int]]:
        levels = sorted(model[side].items(), reverse=side is Side.BUY)
        return levels[:TOP_LEVELS]

    for side, price, lots in ops:
        before = (model_top(Side.BUY), model_top(Side.SELL))
        top_version = book.top_version
        book.set_level(side, price, lots)
        if lots:
            model[side][price] = lots
        else:
            model[side].pop(price, None)
        after = (model_top(Side.BUY), model_top(Side.SELL))
        assert (book.top_version != top_version) == (before != after)
        assert (book.top(Side.BUY, TOP_LEVELS), book.top(Side.SELL, TOP_LEVELS)) == after
    for side in (Side.BUY, Side.SELL):
        assert list(book.levels(side)) == sorted(model[side].items(), reverse=side is Side.BUY)
        assert book.depth(side) == len(model[side])
