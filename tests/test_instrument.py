"""The instrument's grids: passive rounding of prices, quantities rounded down to the
order step, and the venue's minimums checked exactly in integers (tick x lot units)
with the same answers as the Decimal arithmetic they stand for."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quoteforge.model import Instrument, InstrumentKind, Side


def spot(**kw: object) -> Instrument:
    fields: dict[str, object] = {"tick_size": Decimal("0.01"), "lot_size": Decimal("0.001")}
    fields.update(kw)
    return Instrument("sim", "ETH/USDT", "ETH", "USDT", **fields)  # type: ignore[arg-type]


def test_prices_round_passively_and_stay_on_the_valid_range() -> None:
    inst = spot()
    assert inst.round_price(100.004, Side.BUY) == 10_000
    assert inst.round_price(100.004, Side.SELL) == 10_001
    # A float error far below a tick (1e-11 ticks) is rounded away, not an extra tick.
    assert inst.round_price(100.0000000000001, Side.SELL) == 10_000
    assert inst.round_price(-5.0, Side.BUY) == 1  # never below one tick
    assert inst.max_price_ticks is None and inst.min_price_ticks == 1
    binary = spot(tick_size=Decimal("0.01"), lot_size=Decimal("1"), kind=InstrumentKind.BINARY)
    assert binary.max_price_ticks == 99
    assert binary.round_price(1.2, Side.SELL) == 99  # one tick below 1
    assert binary.clamp_ticks(0) == 1 and binary.clamp_ticks(150) == 99


def test_quantities_round_down_to_the_order_step() -> None:
    inst = spot(lot_size=Decimal("0.00000001"), qty_step=Decimal("0.00001"))
    assert inst.step_lots == 1_000
    assert inst.round_qty(0.123456789) == 12_345_000
    assert inst.floor_to_step(12_345_678) == 12_345_000
    assert inst.round_qty(-1.0) == 0


def test_check_order_refuses_below_the_minimums_exactly() -> None:
    inst = spot(min_qty=Decimal("0.005"), min_notional=Decimal("5"))
    # 5 lots is exactly the minimum quantity; 4 is below it.
    assert inst.check_order(100_000, 5) is None
    assert inst.check_order(100_000, 4) == "quantity 0.004 below minimum 0.005"
    # 10000 ticks (100.00) x 50 lots (0.05) is exactly 5; 49 lots is 4.900.
    assert inst.check_order(10_000, 50) is None
    assert inst.check_order(10_000, 49) == "notional 4.900 below minimum 5"
    assert inst.check_order(0, 50) == "price 0 below minimum"
    binary = spot(lot_size=Decimal("1"), kind=InstrumentKind.BINARY)
    assert binary.check_order(100, 1) == "price 1 above maximum"


decimals = st.decimals(min_value=0, max_value=10_000, places=6, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    min_qty=decimals,
    min_notional=decimals,
    price_ticks=st.integers(1, 10**9),
    lots=st.integers(1, 10**9),
    tick=st.sampled_from(["0.01", "0.1", "0.0001", "5", "0.25"]),
    lot=st.sampled_from(["0.001", "1", "0.00000001", "0.3"]),
)
def test_check_order_agrees_with_decimal_arithmetic(
    min_qty: Decimal, min_notional: Decimal, price_ticks: int, lots: int, tick: str, lot: str
) -> None:
    inst = spot(
        tick_size=Decimal(tick), lot_size=Decimal(lot), min_qty=min_qty, min_notional=min_notional
    )
    qty = Decimal(lot) * lots
    notional = Decimal(tick) * price_ticks * qty
    if qty < min_qty:
        expected = "quantity"
    elif min_notional and notional < min_notional:
        expected = "notional"
    else:
        expected = None
    reason = inst.check_order(price_ticks, lots)
    assert (reason.split()[0] if reason else None) == expected, reason


@pytest.mark.parametrize("field", ["tick_size", "lot_size"])
def test_a_grid_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be > 0"):
        spot(**{field: Decimal(0)})
