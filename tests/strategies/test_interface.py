"""The strategy author's surface: units, conversions, interface version, speed hints."""

from __future__ import annotations

import warnings
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from quoteforge.model import Instrument, InstrumentKind, Quote, Side
from quoteforge.strategies.pure_market_making import PureMarketMaking
from quoteforge.strategy import (
    INTERFACE_VERSION,
    BookInterest,
    Speed,
    Strategy,
    book_interest,
    check_interface,
)
from quoteforge.strategy import _warned as warned_once

if TYPE_CHECKING:
    from conftest import Desk


def _stepped(desk: Desk) -> Instrument:
    """Lots of 0.0001 sent in steps of 0.001 (10 lots), at least 0.002, notional >= 5."""
    return Instrument(
        "sim",
        "BTCUSDT",
        "BTC",
        "USDT",
        Decimal("0.01"),
        Decimal("0.0001"),
        min_qty=Decimal("0.002"),
        min_notional=Decimal("5"),
        qty_step=Decimal("0.001"),
    )


def test_ticks_round_passively_by_side_and_to_nearest_without_one(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(10000, 1000)], [(10001, 1000)])
    assert market.ticks(100.004, Side.BUY) == 10000
    assert market.ticks(100.004, Side.SELL) == 10001
    assert market.ticks(100.004) == 10000
    assert market.ticks(100.006) == 10001
    # Float noise within a billionth of a tick never moves a price a tick.
    assert market.ticks(100.00000000001, Side.SELL) == 10000
    assert market.ticks(0.1 + 0.2, Side.BUY) == 30
    # Decimals and ints are exact.
    assert market.ticks(Decimal("100.005"), Side.BUY) == 10000
    assert market.ticks(Decimal("100.005"), Side.SELL) == 10001
    assert market.ticks(Decimal("100.005")) == 10000  # half to even
    assert market.ticks(Decimal("100.015")) == 10002
    assert market.ticks(100) == 10000


def test_lots_round_down_to_order_steps_and_conversions_are_exact(desk: Desk) -> None:
    market = desk.market(_stepped(desk), [(10000, 1000)], [(10001, 1000)])
    assert market.lots(0.0039) == 30  # 3 steps of 10 lots, never more than asked
    assert market.lots(0.3) == 3000  # 0.3 / 0.001 is 299.99999999999994 in floats
    assert market.lots(Decimal("0.0039")) == 30
    assert market.lots(0.0) == market.lots(-1.0) == market.lots(Decimal(-1)) == 0
    assert market.price(10001) == Decimal("100.01")
    assert market.qty(30) == Decimal("0.003")
    assert market.qty(10000) == Decimal("1")


def test_bid_and_ask_take_ticks_and_lots_and_apply_the_venue_minimums(desk: Desk) -> None:
    market = desk.market(_stepped(desk), [(300000, 1000)], [(300001, 1000)])
    assert market.bid(300000, 39) == Quote(Side.BUY, 300000, 30)  # down to whole steps
    assert market.ask(300001, 30, level=2, post_only=False) == Quote(
        Side.SELL, 300001, 30, 2, False
    )
    assert market.bid(300000, 10) is None  # below min_qty 0.002
    assert market.bid(100, 20) is None  # 1.00 * 0.002 is below min_notional 5
    # The same wanted quote is the same object (quotes are immutable).
    assert market.bid(300000, 30) is market.bid(300000, 30)


def test_bid_clamps_binary_prices_inside_zero_and_one(desk: Desk) -> None:
    inst = desk.instrument("RAINUSD", tick="0.01", lot="1", kind=InstrumentKind.BINARY)
    market = desk.market(inst, [(50, 10)], [(55, 10)])
    assert market.ask(120, 5) == Quote(Side.SELL, 99, 5)
    assert market.bid(0, 5) == Quote(Side.BUY, 1, 5)


@pytest.mark.parametrize(("price", "qty"), [(100.0, 10), (10000, 0.01), (True, 10)])
def test_bid_refuses_floats_with_the_conversions_named(desk: Desk, price: Any, qty: Any) -> None:
    market = desk.market(desk.instrument(), [(10000, 1000)], [(10001, 1000)])
    with pytest.raises(TypeError, match=r"market\.ticks\(price, side\)"):
        market.bid(price, qty)


def test_position_lots_is_the_position_and_position_warns_once(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(10000, 1000)], [(10001, 1000)], 1500)
    assert market.position_lots == 1500
    warned_once.discard("Market.position")
    with pytest.warns(DeprecationWarning, match="position_lots"):
        assert market.position == pytest.approx(1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert market.position == pytest.approx(1.5)  # once per process


class _Current(Strategy):
    interface_version = INTERFACE_VERSION


class _Old(Strategy):
    interface_version = 1


class _Undeclared(Strategy):
    pass


class _Odd(Strategy):
    interface_version = "2"  # type: ignore[assignment]


def test_check_interface_refuses_another_major_version() -> None:
    assert INTERFACE_VERSION == 2
    assert check_interface(_Current) is None
    assert check_interface(_Undeclared) is None
    assert check_interface(PureMarketMaking) is None
    message = check_interface(_Old)
    assert message is not None
    assert "_Old" in message and "interface 1" in message and "interface 2" in message
    assert "must be an int" in (check_interface(_Odd) or "")
    assert check_interface(dict) is None  # declares nothing: the current interface


def test_every_shipped_strategy_is_written_for_this_interface() -> None:
    from quoteforge.registry import load_registry

    registry = load_registry()
    for name in registry.types("strategy"):
        cls = registry.get("strategy", name).factory
        if isinstance(cls, type) and issubclass(cls, Strategy):
            assert check_interface(cls) is None, name


def _strategy(cls: type[Strategy], desk: Desk) -> Strategy:
    return cls(desk.ctx(), cls.Params())


class _Depth(Strategy):
    speed = Speed(on_book="every_change")


class _Trades(Strategy):
    def on_trade(
        self, market: Any, price_ticks: int, qty_lots: int, aggressor: Side, **kw: Any
    ) -> None:
        return None


def test_book_interest_follows_the_speed_hint(desk: Desk) -> None:
    assert book_interest(_strategy(_Undeclared, desk)) == BookInterest(
        top_only=True, best_only=False, prices_only=False, hears_trades=False
    )
    assert book_interest(_strategy(_Depth, desk)).top_only is False
    assert book_interest(_strategy(_Trades, desk)).hears_trades is True
    for watch, best, prices in (("best_levels", True, False), ("best_prices", True, True)):

        class Hinted(Strategy):
            speed = Speed(on_book=watch)  # type: ignore[arg-type]

        interest = book_interest(_strategy(Hinted, desk))
        assert (interest.top_only, interest.best_only, interest.prices_only) == (
            True,
            best,
            prices,
        )
    with pytest.raises(ValueError, match="best_prices"):
        Speed(on_book="best")  # type: ignore[arg-type]


class _LegacyMid(Strategy):
    book_levels = 1

    @property
    def reads_best_sizes(self) -> bool:
        return False


class _LegacyAll(Strategy):
    top_of_book_only = False


def test_interface_1_switches_still_work_and_warn(desk: Desk) -> None:
    warned_once.discard("Strategy.book_levels/reads_best_sizes")
    with pytest.warns(DeprecationWarning, match="Speed"):
        interest = book_interest(_strategy(_LegacyMid, desk))
    assert (interest.best_only, interest.prices_only) == (True, True)
    warned_once.discard("Strategy.top_of_book_only")
    with pytest.warns(DeprecationWarning, match="top_of_book_only"):
        assert book_interest(_strategy(_LegacyAll, desk)).top_only is False
