"""Quoting rules of the pure market-making strategy, through its public interface."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from quoteforge.book import BookState, L2Book
from quoteforge.model import Instrument, Side
from quoteforge.strategies.pure_market_making import PureMarketMaking, PureMarketMakingParams
from quoteforge.strategy import Market, StrategyContext

INST = Instrument("sim", "BTC/USDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.001"))


class Position:
    def __init__(self) -> None:
        self.lots = 0

    def __call__(self) -> int:
        return self.lots


def make(mid: float = 100.0, **params: object) -> tuple[PureMarketMaking, Market, Position, L2Book]:
    book = L2Book(INST)
    ticks = round(mid / 0.01)
    book.apply_snapshot([(ticks - 5, 1000)], [(ticks + 5, 1000)])
    book.state = BookState.LIVE
    pos = Position()
    market = Market(INST, book, pos)
    ctx = StrategyContext(
        "mm", {market.key: market}, lambda: 0, lambda k, q: None, lambda d, f: None, 0
    )
    defaults: dict[str, object] = {"order_size": 1.0, "spread_bps": 10}
    defaults.update(params)
    strategy = PureMarketMaking(ctx, PureMarketMakingParams(**defaults))
    return strategy, market, pos, book


def prices(quotes: list, side: Side) -> list[float]:
    return [q.price_ticks * 0.01 for q in quotes if q.side is side]


def test_symmetric_levels_around_mid() -> None:
    strategy, market, _, _ = make(levels=3, level_spacing_bps=5, level_size_increment=0.5)
    quotes = strategy.on_book(market)
    assert quotes is not None
    assert prices(quotes, Side.BUY) == pytest.approx([99.90, 99.85, 99.80])
    assert prices(quotes, Side.SELL) == pytest.approx([100.10, 100.15, 100.20])
    assert [q.qty_lots for q in quotes if q.side is Side.BUY] == [1000, 1500, 2000]
    assert all(q.post_only for q in quotes)


def test_bids_round_down_asks_round_up() -> None:
    strategy, market, _, book = make(spread_bps=1)
    book.apply_snapshot([(10000, 5)], [(10001, 5)])  # mid 100.005
    quotes = strategy.on_book(market)
    assert quotes is not None
    # Wanted 99.995 and 100.015: passive rounding never quotes tighter than asked.
    assert [q.price_ticks for q in quotes] == [9999, 10002]


def test_inventory_skews_prices_and_sizes_against_the_position() -> None:
    strategy, market, pos, _ = make(inventory_limit=10, inventory_skew_bps=20)
    flat = strategy.wanted_quotes(market)
    pos.lots = 5000  # long 5 of a 10 limit: half skew
    long = strategy.wanted_quotes(market)
    assert prices(long, Side.BUY)[0] < prices(flat, Side.BUY)[0]
    assert prices(long, Side.SELL)[0] < prices(flat, Side.SELL)[0]
    # The centre moved down by 10 bps = half of the 20 bps skew.
    shift = prices(flat, Side.SELL)[0] - prices(long, Side.SELL)[0]
    assert shift == pytest.approx(100 * 10e-4, abs=0.011)
    buy_size = next(q.qty_lots for q in long if q.side is Side.BUY)
    sell_size = next(q.qty_lots for q in long if q.side is Side.SELL)
    assert buy_size == 500 and sell_size == 1000  # the growing side shrinks
    pos.lots = 10_000  # at the limit: no more bids at all
    assert prices(strategy.wanted_quotes(market), Side.BUY) == []
    pos.lots = -10_000
    assert prices(strategy.wanted_quotes(market), Side.SELL) == []


def test_inventory_target_is_the_neutral_point() -> None:
    strategy, market, pos, _ = make(inventory_limit=10, inventory_skew_bps=20, inventory_target=3)
    pos.lots = 3000
    quotes = strategy.wanted_quotes(market)
    assert prices(quotes, Side.BUY) == pytest.approx([99.90])
    assert prices(quotes, Side.SELL) == pytest.approx([100.10])


def test_refresh_tolerance_keeps_quotes_until_price_moves_enough() -> None:
    strategy, market, _, book = make(refresh_tolerance_bps=5)
    assert strategy.on_book(market) is not None
    book.apply_snapshot([(9997, 1000)], [(10007, 1000)])  # mid +1 tick = 1 bps
    book.state = BookState.LIVE
    assert strategy.on_book(market) is None
    book.apply_snapshot([(10005, 1000)], [(10015, 1000)])  # mid +10 ticks = 10 bps
    quotes = strategy.on_book(market)
    assert quotes is not None and prices(quotes, Side.BUY)[0] == pytest.approx(
        99.99
    )  # 99.9999 floored


def test_fill_forces_a_requote_even_within_tolerance() -> None:
    strategy, market, pos, _ = make(
        refresh_tolerance_bps=50, inventory_limit=10, inventory_skew_bps=5
    )
    assert strategy.on_book(market) is not None
    pos.lots = 1000
    strategy.on_fill(market, None)  # type: ignore[arg-type]
    assert strategy.on_book(market) is not None


def test_price_band() -> None:
    strategy, market, _, _ = make(price_ceiling=99.5)
    quotes = strategy.on_book(market)
    assert quotes is not None and prices(quotes, Side.BUY) == [] and prices(quotes, Side.SELL)
    strategy, market, _, _ = make(price_floor=100.5)
    quotes = strategy.on_book(market)
    assert quotes is not None and prices(quotes, Side.SELL) == [] and prices(quotes, Side.BUY)


def test_empty_book_pulls_quotes() -> None:
    strategy, market, _, book = make()
    book.clear()
    assert strategy.on_book(market) == []


def test_bad_params_are_refused_with_reason() -> None:
    with pytest.raises(ValidationError, match="inventory_skew_bps needs inventory_limit"):
        PureMarketMakingParams(order_size=1, inventory_skew_bps=5)
    with pytest.raises(ValidationError, match="price_floor must be below price_ceiling"):
        PureMarketMakingParams(order_size=1, price_floor=10, price_ceiling=9)
    with pytest.raises(ValidationError, match="extra"):
        PureMarketMakingParams(order_size=1, sprd=3)  # type: ignore[call-arg]
