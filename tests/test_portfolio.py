"""Exact positions, average-cost PnL, flips through zero and fees in any asset."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from itertools import count
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quoteforge.model import Fill, Instrument, Liquidity, Side
from quoteforge.portfolio import Portfolio, _div_round

D = Decimal
BTC = Instrument("sim", "BTCUSDT", "BTC", "USDT", D("0.01"), D("0.001"))
ETH = Instrument("sim", "ETHUSDT", "ETH", "USDT", D("0.01"), D("0.0001"))
XBT = Instrument("kraken", "XBT/USD", "XBT", "USD", D("0.1"), D("0.00000001"))
_ids = count()


def fill(
    inst: Instrument,
    side: Side,
    price: str,
    qty: str,
    fee: str = "0",
    fee_asset: str | None = None,
) -> Fill:
    return Fill(
        venue=inst.venue,
        symbol=inst.symbol,
        fill_id=f"f{next(_ids)}",
        client_id="c",
        side=side,
        price_ticks=inst.price_to_ticks(price),
        qty_lots=inst.qty_to_lots(qty),
        fee=D(fee),
        fee_asset=fee_asset or inst.quote,
        liquidity=Liquidity.MAKER,
        ts_ns=0,
    )


def book(*fills: Fill, rates: dict[str, Decimal] | None = None) -> Portfolio:
    portfolio = Portfolio({i.key: i for i in (BTC, ETH)}, rates.get if rates else None)
    for f in fills:
        portfolio.apply_fill(f)
    return portfolio


K = BTC.key


def test_round_trip_realizes_exactly() -> None:
    p = book(fill(BTC, Side.BUY, "100.10", "0.3"), fill(BTC, Side.SELL, "100.20", "0.3"))
    assert p.position_lots(K) == 0
    assert p.position(K) == 0
    assert p.realized(K) == D("0.03")
    assert p.unrealized(K, D("1")) == 0
    assert p.notional(K) == D("60.09")
    assert p.fill_count(K) == 2
    assert p.average_price(K) is None


def test_average_cost_keeps_the_average_of_what_remains() -> None:
    p = book(
        fill(BTC, Side.BUY, "100", "1"),
        fill(BTC, Side.BUY, "110", "1"),
        fill(BTC, Side.SELL, "120", "0.5"),
    )
    assert p.average_price(K) == D("105")
    assert p.realized(K) == D("7.5")  # (120 - 105) x 0.5
    assert p.position(K) == D("1.5")
    assert p.unrealized(K, D("100")) == D("-7.5")
    assert p.pnl(K, D("100")) == D("0")


def test_non_terminating_average_still_gives_exact_totals() -> None:
    p = book(
        fill(BTC, Side.BUY, "1", "1"),
        fill(BTC, Side.BUY, "2", "2"),
        fill(BTC, Side.SELL, "2", "1"),
    )
    # Average cost 5/3: realized 1/3 and unrealized 2/3 are not finite decimals ...
    unit = BTC.tick_size * BTC.lot_size * Decimal("1e-12")
    assert abs(p.realized(K) - Decimal(1) / 3) <= unit
    assert abs(p.unrealized(K, D("2")) - Decimal(2) / 3) <= unit
    # ... but their sum, like every cash flow, is exact, and so is realized once flat.
    assert p.pnl(K, D("2")) == D("1")
    p.apply_fill(fill(BTC, Side.SELL, "2", "2"))
    assert p.realized(K) == D("1")


def test_flip_through_zero_long_to_short_and_back() -> None:
    p = book(fill(BTC, Side.BUY, "100", "2"), fill(BTC, Side.SELL, "110", "5"))
    assert p.realized(K) == D("20")
    assert p.position(K) == D("-3")
    assert p.average_price(K) == D("110")
    assert p.unrealized(K, D("100")) == D("30")
    p.apply_fill(fill(BTC, Side.BUY, "100", "4"))
    assert p.realized(K) == D("50")
    assert p.position(K) == D("1")
    assert p.average_price(K) == D("100")
    assert p.unrealized(K, D("101")) == D("1")


def test_short_first_realizes_when_bought_back() -> None:
    p = book(fill(BTC, Side.SELL, "200", "0.5"), fill(BTC, Side.BUY, "190", "0.2"))
    assert p.realized(K) == D("2")
    assert p.position(K) == D("-0.3")
    assert p.unrealized(K, D("210")) == D("-3")


def test_fees_in_quote_base_and_third_asset_and_rebates() -> None:
    p = book(
        fill(BTC, Side.BUY, "100", "1", fee="0.1"),  # quote
        fill(BTC, Side.SELL, "120", "0.5", fee="0.001", fee_asset="BTC"),  # base at 120
        fill(BTC, Side.SELL, "120", "0.5", fee="0.02", fee_asset="BNB"),  # third at 300
        fill(BTC, Side.BUY, "100", "1", fee="-0.05"),  # rebate
        rates={"BNB": D("300")},
    )
    assert p.fees(K) == D("0.1") + D("0.12") + D("6") - D("0.05")
    assert p.realized(K) == D("20")
    assert p.pnl(K, D("100")) == D("20") - D("6.17")


def test_fee_asset_without_rate_is_a_clear_error() -> None:
    p = book()
    with pytest.raises(ValueError, match=r"no conversion rate for 'BNB' into USDT"):
        p.apply_fill(fill(BTC, Side.BUY, "100", "1", fee="0.01", fee_asset="BNB"))
    assert p.fill_count(K) == 0  # nothing half-applied
    # A zero fee needs no rate.
    p.apply_fill(fill(BTC, Side.BUY, "100", "1", fee="0", fee_asset="BNB"))
    assert p.fees(K) == 0


def test_bad_rate_and_unknown_market_and_bad_mark_are_refused() -> None:
    p = book(rates={"BNB": D("-1")})
    with pytest.raises(ValueError, match="must be > 0"):
        p.apply_fill(fill(BTC, Side.BUY, "100", "1", fee="1", fee_asset="BNB"))
    with pytest.raises(ValueError, match=r"not in the portfolio.*add_instrument"):
        p.apply_fill(fill(XBT, Side.BUY, "100", "1"))
    p.apply_fill(fill(BTC, Side.BUY, "100", "1"))
    float_mark: Any = 101.5
    with pytest.raises(ValueError, match="must be a Decimal"):
        p.unrealized(K, float_mark)
    with pytest.raises(ValueError, match="needs a mark price"):
        p.pnl(K, None)


def test_total_pnl_over_markets() -> None:
    p = book(
        fill(BTC, Side.BUY, "100", "1", fee="0.1"),
        fill(ETH, Side.SELL, "10", "2"),
        fill(ETH, Side.BUY, "9", "2", fee="0.01"),
    )
    total = p.total_pnl({K: D("101")})  # ETH is flat: no mark needed
    assert total == D("1") - D("0.1") + D("2") - D("0.01")
    assert p.total_fees() == D("0.11")
    with pytest.raises(ValueError, match=r"BTCUSDT.*needs a mark price"):
        p.total_pnl({})


def test_mixed_quote_assets_convert_into_the_currency() -> None:
    rates = {"USD": D("1"), "USDT": D("0.999")}
    p = Portfolio([BTC, XBT], rates.get, currency="USD")
    p.apply_fill(fill(BTC, Side.BUY, "100", "1"))
    p.apply_fill(fill(BTC, Side.SELL, "110", "1"))
    p.apply_fill(fill(XBT, Side.BUY, "100", "1"))
    p.apply_fill(fill(XBT, Side.SELL, "105", "1"))
    assert p.total_pnl({}) == D("10") * D("0.999") + D("5")
    unconverted = Portfolio([BTC, XBT])
    unconverted.apply_fill(fill(XBT, Side.BUY, "100", "1"))
    unconverted.apply_fill(fill(BTC, Side.BUY, "100", "1"))
    with pytest.raises(ValueError, match="different assets"):
        unconverted.total_pnl({K: D("100"), XBT.key: D("100")})


def test_bad_fills_rates_and_totals_are_refused_with_the_reason() -> None:
    p = book(fill(BTC, Side.BUY, "100", "1"))
    with pytest.raises(ValueError, match="qty_lots=0; a fill must trade a positive number"):
        p.apply_fill(replace(fill(BTC, Side.BUY, "100", "1"), qty_lots=0))
    with pytest.raises(ValueError, match="an opening position comes before any fill"):
        p.open_position(K, 5, "100")  # BTC has traded
    held = Portfolio([BTC, ETH])
    held.open_position(ETH.key, 10_000, "2000")  # 1 ETH held before the run
    with pytest.raises(ValueError, match="an opening position comes before any fill"):
        held.open_position(ETH.key, 10_000, "2000")
    # A position held from the start counts in the total even without a fill.
    assert held.total_pnl({ETH.key: D("2010")}) == D("10")
    zero = Portfolio([BTC, XBT], {"USD": D(0), "USDT": D(1)}.get, currency="USDT")
    zero.apply_fill(fill(XBT, Side.BUY, "100", "1"))
    with pytest.raises(ValueError, match=r"quote_rates\('USD'\) returned 0; must be > 0"):
        zero.total_pnl({XBT.key: D("100")})
    mixed = Portfolio([BTC, XBT])
    mixed.apply_fill(fill(BTC, Side.BUY, "100", "1", fee="0.1"))
    mixed.apply_fill(fill(XBT, Side.BUY, "100", "1", fee="0.1"))
    with pytest.raises(ValueError, match="markets quote in different assets"):
        mixed.total_fees()


@settings(max_examples=300, deadline=None)
@given(num=st.integers(-(10**30), 10**30), den=st.integers(1, 10**15))
def test_average_cost_division_rounds_half_to_even(num: int, den: int) -> None:
    """The basis taken off a partly closed position is cost x closed / held rounded
    half-even (Fraction's round), ties included."""
    assert _div_round(num, den) == round(Fraction(num, den))
    assert _div_round(2 * num + 1, 2) == round(Fraction(2 * num + 1, 2))  # every one a tie


side_st = st.sampled_from([Side.BUY, Side.SELL])
fills_st = st.lists(
    st.tuples(side_st, st.integers(1, 100_000), st.integers(1, 5_000), st.integers(-50, 500)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(trades=fills_st, mark_ticks=st.integers(1, 100_000))
def test_pnl_equals_cash_flow_plus_marked_position(
    trades: list[tuple[Side, int, int, int]], mark_ticks: int
) -> None:
    """Whatever the order of buys, sells and flips, realized + unrealized - fees is
    the cash received minus the cash paid plus the position at the mark, exactly."""
    p = Portfolio([BTC])
    cash = D(0)
    position = 0
    fees = D(0)
    # Reference: textbook average cost in exact rationals.
    ref_lots, ref_avg, ref_realized = 0, Fraction(0), Fraction(0)
    for i, (side, ticks, lots, fee_units) in enumerate(trades):
        price = Fraction(BTC.ticks_to_price(ticks))
        qty = Fraction(BTC.lots_to_qty(lots))
        held = Fraction(BTC.lots_to_qty(abs(ref_lots)))
        if ref_lots == 0 or (ref_lots > 0) == (side > 0):
            ref_avg = (ref_avg * held + price * qty) / (held + qty)
        else:
            closing = min(qty, held)
            ref_realized += (price - ref_avg) * closing * (1 if ref_lots > 0 else -1)
            if qty > held:
                ref_avg = price
        ref_lots += side * lots
        fee = D(fee_units) / 1000
        p.apply_fill(
            Fill("sim", "BTCUSDT", str(i), "c", side, ticks, lots, fee, "USDT", Liquidity.MAKER, 0)
        )
        cash -= side * BTC.notional(ticks, lots)
        position += side * lots
        fees += fee
    mark = BTC.ticks_to_price(mark_ticks)
    assert p.position_lots(K) == position
    assert p.fees(K) == fees
    assert p.pnl(K, mark) == cash + BTC.lots_to_qty(position) * mark - fees
    tolerance = Fraction(BTC.tick_size * BTC.lot_size) * len(trades) / 10**12
    assert abs(Fraction(p.realized(K)) - ref_realized) <= tolerance
    # Once flat, everything is realized.
    if position == 0:
        assert p.realized(K) == cash
        assert p.unrealized(K, mark) == 0


def test_fills_finer_than_the_order_step_are_booked_exactly() -> None:
    # Binance BTCUSDT: 8 decimals reported, orders in steps of 0.00001.
    spot = Instrument(
        "binance", "BTCUSDT", "BTC", "USDT", D("0.01"), D("0.00000001"), qty_step=D("0.00001")
    )
    portfolio = Portfolio({spot.key: spot})
    portfolio.apply_fill(fill(spot, Side.BUY, "60000.00", "0.00012345"))
    portfolio.apply_fill(fill(spot, Side.SELL, "60010.00", "0.00002345"))
    assert portfolio.position(spot.key) == D("0.0001")
    assert portfolio.realized(spot.key) == D("0.2345") * D("0.001")  # 10 x 0.00002345
    assert portfolio.unrealized(spot.key, D("60001.00")) == D("0.0001")
