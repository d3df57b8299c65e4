"""adaptive_binary: quotes on binary contracts stay inside (0, 1) and follow the rules."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from quoteforge.model import Instrument, InstrumentKind, Quote, Side
from quoteforge.strategies.adaptive_binary import AdaptiveBinary, binary_quote_ticks

if TYPE_CHECKING:
    from conftest import Desk

    from quoteforge.strategy import Market

TOP = 99  # highest tick strictly below 1.00 with tick 0.01


def _strategy(desk: Desk, **params: object) -> AdaptiveBinary:
    settings_: dict[str, object] = {"order_size": 10, "inventory_limit": 100}
    settings_.update(params)
    return AdaptiveBinary(desk.ctx("ab"), AdaptiveBinary.Params(**settings_))


def _binary(desk: Desk, symbol: str = "ELECTION", tick: str = "0.01") -> Instrument:
    return desk.instrument(symbol, tick=tick, lot="1", kind=InstrumentKind.BINARY)


def _market(
    desk: Desk, bid: int | None, ask: int | None, position: int = 0, symbol: str = "ELECTION"
) -> Market:
    inst = _binary(desk, symbol)
    bids = [] if bid is None else [(bid, 100)]
    asks = [] if ask is None else [(ask, 100)]
    return desk.market(inst, bids, asks, position)


def _sides(quotes: list[Quote] | None) -> dict[Side, Quote]:
    assert quotes is not None
    return {q.side: q for q in quotes}


def _assert_valid(quotes: list[Quote] | None, market: Market) -> None:
    assert quotes is not None
    sides = _sides(quotes)
    assert len(sides) == len(quotes)
    for q in quotes:
        assert 1 <= q.price_ticks <= TOP, q
        assert q.qty_lots > 0
    best_bid, best_ask = market.book.best_bid_ticks(), market.book.best_ask_ticks()
    if Side.BUY in sides and best_ask is not None:
        assert sides[Side.BUY].price_ticks < best_ask
    if Side.SELL in sides and best_bid is not None:
        assert sides[Side.SELL].price_ticks > best_bid
    if len(sides) == 2:
        assert sides[Side.BUY].price_ticks < sides[Side.SELL].price_ticks


near_edges = st.one_of(st.integers(1, 6), st.integers(93, 98), st.integers(1, 98))


@settings(
    max_examples=150,
    deadline=None,
    # make_desk is a stateless class factory: each example builds its own desk
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    bid=near_edges,
    width=st.integers(1, 5),
    position=st.integers(-100, 100),
    trades=st.lists(st.tuples(st.integers(1, TOP), st.integers(1, 50), st.booleans()), max_size=20),
    prior=st.floats(0.01, 0.99),
    skew=st.floats(0, 0.5),
    base=st.floats(0.01, 0.2),
    seconds=st.floats(0, 1000),
)
def test_quotes_stay_strictly_inside_zero_one_and_ordered(
    make_desk: type[Desk],
    bid: int,
    width: int,
    position: int,
    trades: list[tuple[int, int, bool]],
    prior: float,
    skew: float,
    base: float,
    seconds: float,
) -> None:
    desk = make_desk()
    ask = min(bid + width, TOP)
    market = _market(desk, bid, ask, position)
    strategy = _strategy(
        desk,
        prior=prior,
        inventory_skew=min(skew, 0.99),
        base_spread=base,
        min_spread=0.01,
        max_spread=0.5,
        reversion=0.01,
    )
    _assert_valid(strategy.on_book(market), market)
    for price, qty, buy in trades:
        strategy.on_trade(market, price, qty, Side.BUY if buy else Side.SELL)
        desk.advance(seconds / 20)
        _assert_valid(strategy.on_book(market), market)


@given(
    bid=st.floats(-0.5, 1.5),
    width=st.floats(0, 0.5),
    best_bid=st.one_of(st.none(), st.integers(1, TOP)),
    best_ask=st.one_of(st.none(), st.integers(1, TOP)),
)
def test_binary_quote_ticks_invariants(
    bid: float, width: float, best_bid: int | None, best_ask: int | None
) -> None:
    b, a = binary_quote_ticks(bid, bid + width, 0.01, best_bid, best_ask)
    for t in (b, a):
        assert t is None or 1 <= t <= TOP
    if b is not None and best_ask is not None:
        assert b < best_ask
    if a is not None and best_bid is not None:
        assert a > best_bid
    if b is not None and a is not None:
        assert b < a


def test_flat_balanced_market_quotes_base_spread_around_the_mid(desk: Desk) -> None:
    market = _market(desk, 40, 60)
    quotes = _sides(_strategy(desk, base_spread=0.04).on_book(market))
    assert quotes[Side.BUY].price_ticks == 48
    assert quotes[Side.SELL].price_ticks == 52
    assert quotes[Side.BUY].qty_lots == quotes[Side.SELL].qty_lots == 10


def test_one_sided_flow_widens_the_spread(desk: Desk) -> None:
    market = _market(desk, 40, 60)
    strategy = _strategy(desk, base_spread=0.04, imbalance_widening=1.0, learning_rate=0.0)
    for _ in range(10):
        strategy.on_trade(market, 55, 5, Side.BUY)
    assert strategy.imbalance(market) == 1.0
    quotes = _sides(strategy.on_book(market))
    # spread 0.04 * (1 + 1) = 0.08 around the unchanged mid 0.50
    assert quotes[Side.BUY].price_ticks == 46
    assert quotes[Side.SELL].price_ticks == 54


def test_inventory_skews_quotes_down_and_shrinks_the_growing_side(desk: Desk) -> None:
    market = _market(desk, 40, 60, position=50)
    strategy = _strategy(
        desk, base_spread=0.04, inventory_skew=0.04, inventory_widening=0.0, imbalance_window=5
    )
    quotes = _sides(strategy.on_book(market))
    # u = 50/100: centre 0.50 - 0.04*0.5 = 0.48, quotes 0.46 / 0.50
    assert quotes[Side.BUY].price_ticks == 46
    assert quotes[Side.SELL].price_ticks == 50
    # the buy side grows the long: 10 / (1 + 50/10) = 1.67 -> 1 lot; the sell keeps 10
    assert quotes[Side.BUY].qty_lots == 1
    assert quotes[Side.SELL].qty_lots == 10


def test_short_inventory_mirrors(desk: Desk) -> None:
    market = _market(desk, 40, 60, position=-20)
    quotes = _sides(_strategy(desk, inventory_skew=0.05).on_book(market))
    centre = (quotes[Side.BUY].price_ticks + quotes[Side.SELL].price_ticks) / 2
    assert centre > 50
    assert quotes[Side.SELL].qty_lots == math.floor(10 / (1 + 20 / 10))
    assert quotes[Side.BUY].qty_lots == 10


def test_mid_learns_from_trades(desk: Desk) -> None:
    market = _market(desk, 49, 51)
    strategy = _strategy(desk, learning_rate=0.5)
    assert strategy.learned_mid(market) == pytest.approx(0.50)
    strategy.on_trade(market, 60, 1, Side.BUY)
    assert strategy.learned_mid(market) == pytest.approx(0.55)
    strategy.on_trade(market, 60, 1, Side.BUY)
    assert strategy.learned_mid(market) == pytest.approx(0.575)


def test_mid_reverts_to_the_per_market_prior(desk: Desk) -> None:
    market = _market(desk, 79, 81, symbol="RAIN")
    strategy = _strategy(desk, reversion=0.01, priors={"RAIN": 0.3})
    assert strategy.learned_mid(market) == pytest.approx(0.80)
    desk.advance(100)
    strategy.on_book(market)
    assert strategy.learned_mid(market) == pytest.approx(0.3 + 0.5 * math.exp(-1.0))


def test_near_the_limit_recentres_on_the_book_and_only_reduces(desk: Desk) -> None:
    market = _market(desk, 30, 32, position=90)
    strategy = _strategy(desk, learning_rate=0.0, prior=0.7)
    strategy._state(market).mid = 0.7  # a stale belief far from the book
    quotes = strategy.on_book(market)
    assert quotes is not None
    assert [q.side for q in quotes] == [Side.SELL]
    assert strategy.learned_mid(market) == pytest.approx(0.31)
    assert quotes[0].price_ticks > 30


def test_growing_side_never_passes_the_inventory_limit(desk: Desk) -> None:
    market = _market(desk, 40, 60, position=-90)
    strategy = _strategy(desk, order_size=50, recenter_threshold=1.0)
    quotes = _sides(strategy.on_book(market))
    # 50 / (1 + 90/50) = 17.9 would pass the limit of 100; only 10 are left
    assert quotes[Side.SELL].qty_lots == 10


def test_spot_instruments_are_refused_with_a_fix(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(100, 1)], [(101, 1)])
    strategy = _strategy(desk)
    with pytest.raises(ValueError, match="binary contracts; sim:BTCUSDT is spot"):
        strategy.on_start()
    with pytest.raises(ValueError, match="kind 'binary'"):
        strategy.on_book(market)


def test_params_are_validated() -> None:
    with pytest.raises(ValidationError, match="min_spread <= base_spread <= max_spread"):
        AdaptiveBinary.Params(order_size=1, inventory_limit=10, base_spread=0.5, max_spread=0.2)
    with pytest.raises(ValidationError, match="priors\\['X'\\] must be strictly between"):
        AdaptiveBinary.Params(order_size=1, inventory_limit=10, priors={"X": 1.0})
    with pytest.raises(ValidationError, match="learning_rate"):
        AdaptiveBinary.Params(order_size=1, inventory_limit=10, learning_rate=2)
