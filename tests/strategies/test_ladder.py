"""ladder: sizes grow away from the touch, spacing and growth follow volatility."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from quoteforge.model import Quote, Side
from quoteforge.strategies.ladder import Ladder, ladder_sizes, ladder_spacing_ticks

if TYPE_CHECKING:
    from conftest import Desk

    from quoteforge.strategy import Market


def _ladder(desk: Desk, **params: object) -> Ladder:
    settings: dict[str, object] = {
        "levels": 4,
        "min_spacing_ticks": 1,
        "size_growth": 0.5,
        "participation": 0.5,
        "max_total_size": 10.0,
        "vol_min_samples": 3,
        "vol_horizon_s": 1.0,
        "spacing_vol_factor": 1.0,
    }
    settings.update(params)
    return Ladder(desk.ctx("ladder"), Ladder.Params(**settings))


def _side(quotes: list[Quote] | None, side: Side) -> list[Quote]:
    assert quotes is not None
    return sorted((q for q in quotes if q.side is side), key=lambda q: q.level)


def _hit_bids(desk: Desk, ladder: Ladder, market: Market, price: int, lots: int) -> None:
    ladder.on_trade(market, price, lots, Side.SELL)
    desk.advance(0.1)


def test_smallest_size_at_the_touch_growing_outward(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(10000, 5000)], [(10001, 5000)])
    ladder = _ladder(desk)
    _hit_bids(desk, ladder, market, 10000, 4000)  # 4.0 base sold into the bids
    bids = _side(ladder.on_book(market), Side.BUY)
    assert [q.price_ticks for q in bids] == [10000, 9999, 9998, 9997]
    expected = [int(s * 1000) for s in ladder_sizes(0.5 * 4.0, 4, 0.5)]
    assert [q.qty_lots for q in bids] == expected
    lots = [q.qty_lots for q in bids]
    assert lots == sorted(lots)
    assert lots[0] < lots[-1]
    assert sum(lots) <= 2000
    # nobody lifted the asks, so there is no ask size to quote
    assert _side(ladder.on_book(market), Side.SELL) == []


def test_trades_away_from_the_ladder_do_not_count(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(10000, 5000)], [(10001, 5000)])
    ladder = _ladder(desk)
    _hit_bids(desk, ladder, market, 9900, 4000)  # far below the four levels
    ladder.on_trade(market, 10001, 2000, Side.BUY)
    quotes = ladder.on_book(market)
    assert _side(quotes, Side.BUY) == []
    asks = _side(quotes, Side.SELL)
    assert [q.price_ticks for q in asks] == [10001, 10002, 10003, 10004]
    assert sum(q.qty_lots for q in asks) == pytest.approx(1000, abs=4)


def test_old_trades_leave_the_window(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(10000, 5000)], [(10001, 5000)])
    ladder = _ladder(desk, trade_window_s=60, min_total_size=0.1)
    _hit_bids(desk, ladder, market, 10000, 4000)
    desk.advance(61)
    bids = _side(ladder.on_book(market), Side.BUY)
    assert sum(q.qty_lots for q in bids) == pytest.approx(100, abs=4)  # the floor


def test_total_size_is_capped(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(10000, 5000)], [(10001, 5000)])
    ladder = _ladder(desk, max_total_size=1.0)
    _hit_bids(desk, ladder, market, 10000, 100_000)
    bids = _side(ladder.on_book(market), Side.BUY)
    assert 996 <= sum(q.qty_lots for q in bids) <= 1000


def _feed_mids(desk: Desk, ladder: Ladder, market: Market, swing: int, steps: int = 8) -> None:
    for i in range(steps):
        desk.advance(1)
        bid = 10000 + (swing if i % 2 else 0)
        desk.book(market, [(bid, 5000)], [(bid + 1, 5000)])
        ladder.on_book(market)


def test_volatility_widens_spacing_and_slows_size_growth(desk: Desk) -> None:
    calm_market = desk.market(desk.instrument("BTCUSDT"), [(10000, 5000)], [(10001, 5000)])
    wild_market = desk.market(desk.instrument("ETHUSDT"), [(10000, 5000)], [(10001, 5000)])
    calm, wild = _ladder(desk), _ladder(desk)
    _feed_mids(desk, calm, calm_market, swing=0)
    _feed_mids(desk, wild, wild_market, swing=10)  # the mid moves 0.10 every second
    for ladder, market in ((calm, calm_market), (wild, wild_market)):
        _hit_bids(desk, ladder, market, market.book.best_bid_ticks() or 0, 8000)
    assert calm.spacing_ticks(calm_market) == 1
    assert wild.spacing_ticks(wild_market) == 10
    calm_bids = _side(calm.on_book(calm_market), Side.BUY)
    wild_bids = _side(wild.on_book(wild_market), Side.BUY)
    wild_prices = [q.price_ticks for q in wild_bids]
    assert [a - b for a, b in itertools.pairwise(wild_prices)] == [10, 10, 10]

    def growth(bids: list[Quote]) -> float:
        return bids[-1].qty_lots / bids[0].qty_lots

    assert growth(wild_bids) < growth(calm_bids)
    assert growth(wild_bids) == pytest.approx(1.05**3, rel=0.01)
    assert growth(calm_bids) == pytest.approx(1.5**3, rel=0.01)


def test_position_limit_pulls_the_growing_side(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(10000, 5000)], [(10001, 5000)], position_lots=2000)
    ladder = _ladder(desk, max_position=2.0, min_total_size=1.0)
    quotes = ladder.on_book(market)
    assert _side(quotes, Side.BUY) == []
    assert len(_side(quotes, Side.SELL)) == 4


def test_empty_book_pulls_everything(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(10000, 5000)], [])
    assert _ladder(desk, min_total_size=1.0).on_book(market) == []


@given(
    total=st.floats(0, 1e6),
    levels=st.integers(1, 20),
    growth=st.floats(0, 3),
)
def test_ladder_sizes_sum_to_total_and_never_shrink(
    total: float, levels: int, growth: float
) -> None:
    sizes = ladder_sizes(total, levels, growth)
    assert len(sizes) == levels
    assert sum(sizes) == pytest.approx(total, rel=1e-9, abs=1e-9)
    assert all(a <= b * (1 + 1e-12) for a, b in itertools.pairwise(sizes))


def test_spacing_rule() -> None:
    assert ladder_spacing_ticks(2, 1.0, None, 0.01) == 2
    assert ladder_spacing_ticks(2, 1.0, 0.005, 0.01) == 2
    assert ladder_spacing_ticks(2, 0.5, 0.1, 0.01) == 5


def test_params_are_validated() -> None:
    with pytest.raises(ValidationError, match="max_total_size"):
        Ladder.Params()  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="levels"):
        Ladder.Params(max_total_size=1, levels=0)
