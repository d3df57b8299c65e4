"""The kernel's perpetual-futures seams: funding booked in the portfolio's PnL once per
id, the venue's position kept for risk, and reduce-only orders through the gate
(refused on spot markets, allowed only when they shrink a perpetual's position)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from quoteforge.book import L2Book
from quoteforge.clock import SimClock
from quoteforge.gate import OrderGate
from quoteforge.model import (
    REDUCE_ONLY,
    Fill,
    Funding,
    Instrument,
    InstrumentKind,
    Liquidity,
    Quote,
    Side,
    VenuePosition,
)
from quoteforge.orders import OrderManager, order_from_dict, order_to_dict
from quoteforge.portfolio import Portfolio
from quoteforge.risk import RiskChain, RiskView
from quoteforge.strategy import Market

PERP = Instrument(
    "usdm",
    "ETHUSDT",
    "ETH",
    "USDT",
    Decimal("0.01"),
    Decimal("0.001"),
    kind=InstrumentKind.PERPETUAL,
)
SPOT = Instrument("spot", "ETHUSDT", "ETH", "USDT", Decimal("0.01"), Decimal("0.001"))


def fill(side: Side, lots: int, ticks: int, fill_id: str = "f1") -> Fill:
    return Fill(
        "usdm", "ETHUSDT", fill_id, "c1", side, ticks, lots, Decimal(0), "USDT", Liquidity.MAKER, 1
    )


def test_funding_is_in_pnl_once_per_id() -> None:
    portfolio = Portfolio([PERP])
    portfolio.apply_fill(fill(Side.BUY, 1000, 260_000))  # 1 ETH at 2600
    paid = Funding("usdm", "ETHUSDT", "t1", Decimal("-0.26"), "USDT", 2)
    assert portfolio.apply_funding(paid) is True
    assert portfolio.apply_funding(paid) is False  # the same payment again
    assert portfolio.funding(PERP.key) == Decimal("-0.26")
    assert portfolio.pnl(PERP.key, Decimal("2600")) == Decimal("-0.26")
    assert portfolio.total_pnl({PERP.key: Decimal("2610")}) == Decimal("9.74")


def test_funding_only_market_counts_in_total_and_other_assets_are_refused() -> None:
    portfolio = Portfolio([PERP])
    portfolio.apply_funding(Funding("usdm", "ETHUSDT", "t1", Decimal("0.5"), "USDT", 2))
    assert portfolio.total_pnl({}) == Decimal("0.5")
    with pytest.raises(ValueError, match="books funding in the quote asset USDT"):
        portfolio.apply_funding(Funding("usdm", "ETHUSDT", "t2", Decimal("1"), "BNB", 3))


def test_venue_position_is_kept_for_risk() -> None:
    portfolio = Portfolio([PERP])
    assert portfolio.venue_position(PERP.key) is None
    seen = VenuePosition(
        "usdm",
        "ETHUSDT",
        1000,
        Decimal("2600"),
        Decimal("2601"),
        Decimal("1"),
        Decimal("2483.00"),
        5,
    )
    portfolio.set_venue_position(seen)
    view = RiskView(
        portfolio.position_lots,
        lambda k, s: 0,
        lambda k: 0,
        venue_position=portfolio.venue_position,
    )
    assert view.venue_position(PERP.key) == seen


def gate_for(instrument: Instrument, position: int) -> tuple[OrderGate, Market]:
    clock = SimClock(1)
    orders = OrderManager(None, clock, "qf")
    market = Market(instrument, L2Book(instrument), lambda: position)
    view = RiskView(lambda k: position, lambda k, s: 0, lambda k: 0)
    gate = OrderGate(
        risk=RiskChain([], lambda r: None),
        risk_view=view,
        breakers=None,
        orders=orders,
        policy=None,
        position_lots=lambda k: position,
        now_ns=clock.now_ns,
    )
    return gate, market


def test_reduce_only_take_is_refused_on_spot() -> None:
    gate, market = gate_for(SPOT, 1000)
    assert gate.take(market, "s", Side.SELL, 100, 500, reduce_only=True) is None
    assert "not a perpetual" in gate.last_refusal


def test_reduce_only_take_must_shrink_without_flipping() -> None:
    gate, market = gate_for(PERP, -1000)
    assert gate.take(market, "s", Side.SELL, 100, 500, reduce_only=True) is None
    assert "would not reduce -1000 lots" in gate.last_refusal
    assert gate.take(market, "s", Side.BUY, 100, 1500, reduce_only=True) is None
    order = gate.take(market, "s", Side.BUY, 100, 1000, reduce_only=True)
    assert order is not None and order.reduce_only and order.extra[REDUCE_ONLY] is True
    # The flag is journaled with the order (its first record) and restored with it.
    assert order_from_dict(order_to_dict(order)).reduce_only


def liquidation_check(
    position: int, reported: VenuePosition | None, **params: Any
) -> tuple[Any, Market, Any]:
    from quoteforge.plugins.risk_liquidation import LiquidationDistance

    check = LiquidationDistance(
        "liq", LiquidationDistance.Params.model_validate({"min_distance_pct": 10, **params})
    )
    book = L2Book(PERP)
    book.apply_snapshot([(259_900, 1000)], [(260_100, 1000)])  # mid 2600
    market = Market(PERP, book, lambda: position)
    view = RiskView(
        lambda k: position, lambda k, s: 0, lambda k: 0, venue_position=lambda k: reported
    )
    return check, market, view


def test_liquidation_distance_refuses_only_what_grows_the_position_too_close() -> None:
    # Long 1 ETH, mark 2600, liquidation 2340: 10% away now.
    reported = VenuePosition(
        "usdm", "ETHUSDT", 1000, Decimal("2600"), Decimal("2600"), Decimal(0), Decimal("2340"), 1
    )
    check, market, view = liquidation_check(1000, reported)
    grow = Quote(Side.BUY, 259_000, 100)  # 0.1 ETH more: 10% x 1 / 1.1 = 9.09%
    reason = check.check(market, grow, view)
    assert reason is not None and "9.09% from its liquidation price 2340" in reason
    assert check.check(market, Quote(Side.SELL, 261_000, 500), view) is None  # reduces
    far = VenuePosition(
        "usdm", "ETHUSDT", 1000, Decimal("2600"), Decimal("2600"), Decimal(0), Decimal("1300"), 1
    )
    check, market, view = liquidation_check(1000, far)
    assert check.check(market, grow, view) is None  # 50% away: 45% after
    check, market, view = liquidation_check(0, None)
    assert check.check(market, grow, view) is None  # flat: nothing reported yet


def _reported(qty: int, liquidation: str | None, mark: str | None = "2600") -> VenuePosition:
    return VenuePosition(
        "usdm",
        "ETHUSDT",
        qty,
        Decimal("2600"),
        None if mark is None else Decimal(mark),
        Decimal(0),
        None if liquidation is None else Decimal(liquidation),
        1,
    )


def test_liquidation_distance_on_a_short_grows_with_sells_and_is_inclusive() -> None:
    # Short 1 ETH, liquidation 10% above the mark: sells grow it, buys shrink it.
    check, market, view = liquidation_check(-1000, _reported(-1000, "2860"))
    reason = check.check(market, Quote(Side.SELL, 261_000, 100), view)
    assert reason is not None and reason.startswith("SELL 100 lots would bring the position")
    assert "9.09% from its liquidation price 2860 (mark 2600; min_distance_pct 10)" in reason
    assert check.check(market, Quote(Side.BUY, 259_000, 500), view) is None
    # 11% away now, 10% exactly after the quote: at the limit, allowed.
    check, market, view = liquidation_check(1000, _reported(1000, "2314"))
    assert check.check(market, Quote(Side.BUY, 259_000, 100), view) is None
    assert check.check(market, Quote(Side.BUY, 259_000, 101), view) is not None


def test_liquidation_distance_without_a_mark_uses_the_mid_and_unknown_is_a_choice() -> None:
    # No mark in the report: the book's mid (2600) stands in for it.
    check, market, view = liquidation_check(1000, _reported(1000, "2340", mark=None))
    reason = check.check(market, Quote(Side.BUY, 259_000, 100), view)
    assert reason is not None and "9.09%" in reason and "(mark 2600;" in reason
    # No liquidation price reported (or a mark of 0): let through, unless told to refuse.
    for unknown in (_reported(1000, None), _reported(1000, "2340", mark="0")):
        check, market, view = liquidation_check(1000, unknown)
        assert check.check(market, Quote(Side.BUY, 259_000, 100), view) is None
        check, market, view = liquidation_check(1000, unknown, refuse_unknown=True)
        assert check.check(market, Quote(Side.BUY, 259_000, 100), view) == (
            "no liquidation price reported for the open position on usdm:ETHUSDT"
        )
        assert check.check(market, Quote(Side.SELL, 261_000, 100), view) is None  # shrinks
