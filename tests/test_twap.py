"""TWAP: the slice schedule, band prices, re-slicing after partial fills, and the driver
on a virtual clock through the strategy context."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quoteforge.book import BookState, L2Book
from quoteforge.clock import SimClock
from quoteforge.model import (
    Fill,
    Instrument,
    Liquidity,
    Order,
    OrderStatus,
    OrderUpdate,
    Quote,
    Side,
    TimeInForce,
)
from quoteforge.plugins.twap import TwapExecutor, TwapParams, TwapSchedule
from quoteforge.strategy import Market, StrategyContext

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
INST = Instrument("sim", "BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.01"))


def schedule(
    total: int = 10, slices: int = 4, band: str = "10", side: Side = Side.SELL
) -> TwapSchedule:
    return TwapSchedule(INST, side, total, T0, 60 * NS, slices, Decimal(band))


def run_slices(s: TwapSchedule, fill_ratio: Fraction = Fraction(1)) -> list[tuple[int, int]]:
    """Offer every slice at its due time; each child fills ``fill_ratio`` of its size."""
    out = []
    ids = itertools.count()
    while (due := s.next_due_ns()) is not None:
        child = s.child(due, 9_999, 10_001)
        if child is None:
            continue
        cid = f"c{next(ids)}"
        s.sent(cid, child)
        filled = math.floor(child.qty_lots * fill_ratio)
        if filled:
            s.on_fill(cid, filled)
        s.on_closed(cid, filled)
        out.append(((due - T0) // NS, child.qty_lots))
    return out


def test_slices_are_even_in_time_and_size() -> None:
    s = schedule(total=10, slices=4)
    assert run_slices(s) == [(0, 3), (15, 3), (30, 2), (45, 2)]
    assert s.filled_lots == 10 and s.remaining_lots == 0 and s.done


def test_slices_are_whole_order_steps_when_the_step_is_coarser_than_the_lot() -> None:
    """Binance counts BTC at 8 decimals but takes orders in 0.00001 steps: every child is
    whole steps, and the part step that cannot be sent is left, never refused in a loop."""
    fine = Instrument(
        "sim",
        "BTCUSDT",
        "BTC",
        "USDT",
        Decimal("0.01"),
        Decimal("0.00000001"),
        qty_step=Decimal("0.00001"),
    )
    s = TwapSchedule(fine, Side.SELL, 20_500, T0, 60 * NS, 3, Decimal(10))
    assert run_slices(s) == [(0, 7000), (20, 7000), (40, 6000)]
    assert s.remaining_lots == 500 and s.done
    assert all(fine.check_order(10_000, qty) is None for qty in (7000, 6000))
    assert s.skipped == []


def test_partial_fills_are_resliced_over_the_slices_left() -> None:
    s = schedule(total=12, slices=3)
    # Every child fills half: 12 -> child 4 (2 left over), then 10/2 = 5, then 8/1 = 8.
    assert run_slices(s, Fraction(1, 2)) == [(0, 4), (20, 5), (40, 8)]
    assert s.filled_lots == 2 + 2 + 4 and s.remaining_lots == 4 and s.done


def test_child_waits_for_its_time_and_late_slices_merge() -> None:
    s = schedule(total=8, slices=4)
    assert s.child(T0 - 1, 9_999, 10_001) is None
    first = s.child(T0, 9_999, 10_001)
    assert first is not None and (first.index, first.qty_lots) == (0, 2)
    s.sent("a", first)
    assert s.child(T0 + 15 * NS - 1, 9_999, 10_001) is None
    # The timer fired late, after slices 1 and 2: one child for slice 2, sized over the
    # two slices left, with the first child's lots still counted as working.
    late = s.child(T0 + 31 * NS, 9_999, 10_001)
    assert late is not None and (late.index, late.qty_lots) == (2, 3)
    assert s.in_flight_lots == 2 and s.unassigned_lots == 6


def test_limit_price_is_inside_the_band_around_the_mid() -> None:
    sell = schedule(band="10", side=Side.SELL)
    buy = schedule(band="10", side=Side.BUY)
    assert sell.limit_ticks(9_999, 10_001) == 9_990  # 100.00 * (1 - 0.001)
    assert buy.limit_ticks(9_999, 10_001) == 10_010
    # mid 99.995: the buy limit 100.094995 rounds down, the sell limit 99.895005 up.
    assert buy.limit_ticks(9_999, 10_000) == 10_009
    assert sell.limit_ticks(9_999, 10_000) == 9_990
    assert schedule(band="0", side=Side.BUY).limit_ticks(9_999, 10_000) == 9_999


@settings(max_examples=200, deadline=None)
@given(
    bid=st.integers(1, 100_000),
    spread=st.integers(1, 1_000),
    band=st.decimals(min_value=0, max_value=500, places=2),
    side=st.sampled_from([Side.BUY, Side.SELL]),
)
def test_limit_is_the_last_tick_inside_the_band(
    bid: int, spread: int, band: Decimal, side: Side
) -> None:
    s = schedule(band=str(band), side=side)
    ticks = s.limit_ticks(bid, bid + spread)
    bound = Fraction(2 * bid + spread, 2) * (1 + int(side) * Fraction(band) / 10_000)
    if side is Side.BUY:
        assert ticks <= bound < ticks + 1
    else:
        assert ticks - 1 < bound <= ticks or (ticks == 1 and bound <= 1)


def test_no_mid_and_too_small_slices_carry_their_lots_forward() -> None:
    inst = Instrument(
        "sim", "BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.01"), min_qty=Decimal("0.05")
    )
    s = TwapSchedule(INST, Side.SELL, 12, T0, 40 * NS, 4, Decimal(10))
    assert s.child(T0, None, 10_001) is None
    assert s.skipped == [(0, "no mid: a book side is empty")]
    child = s.child(T0 + 10 * NS, 9_999, 10_001)
    assert child is not None and child.qty_lots == 4  # 12 lots over the 3 slices left
    s.sent("a", child)
    s.on_fill("a", 4)
    s.on_closed("a", 4)
    s.on_fill("x", 1)  # not ours: ignored
    small = TwapSchedule(inst, Side.SELL, 6, T0, 40 * NS, 4, Decimal(10))
    assert small.child(T0, 9_999, 10_001) is None  # 2 lots = 0.02 < min 0.05
    assert "below minimum 0.05" in small.skipped[0][1]
    assert small.child(T0 + 10 * NS, 9_999, 10_001) is None  # 6/3 = 2 lots
    assert small.child(T0 + 20 * NS, 9_999, 10_001) is None  # 6/2 = 3 lots
    last = small.child(T0 + 30 * NS, 9_999, 10_001)
    assert last is not None and last.qty_lots == 6  # everything offered by the last slice
    assert [i for i, _ in small.skipped] == [0, 1, 2]


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="positive quantity"):
        schedule(total=0)
    with pytest.raises(ValueError, match="slices >= 1"):
        schedule(slices=0)
    with pytest.raises(ValueError, match="band_bps"):
        TwapParams(duration_s=10, slices=2, band_bps=Decimal(-1))


@settings(max_examples=100, deadline=None)
@given(
    total=st.integers(1, 500),
    slices=st.integers(1, 12),
    ratios=st.lists(st.fractions(min_value=0, max_value=1), min_size=12, max_size=12),
)
def test_children_never_oversell_and_full_fills_complete(
    total: int, slices: int, ratios: list[Fraction]
) -> None:
    s = schedule(total=total, slices=slices)
    offered = 0
    for i in range(slices):
        child = s.child(s.due_ns(i), 9_999, 10_001)
        if child is None:
            continue
        assert 0 < child.qty_lots <= total - s.filled_lots
        s.sent(f"c{i}", child)
        filled = math.floor(child.qty_lots * ratios[i])
        s.on_fill(f"c{i}", filled)
        s.on_closed(f"c{i}", filled)
        offered += child.qty_lots
    assert s.filled_lots <= total and s.done
    if all(r == 1 for r in ratios[:slices]):
        assert s.filled_lots == total and offered == total


# -- the driver --------------------------------------------------------------------------


class Venue:
    """Fills immediate-or-cancel orders against a book after a small latency."""

    def __init__(self, clock: SimClock, book: L2Book, max_fill: int | None = None) -> None:
        self.clock = clock
        self.book = book
        self.max_fill = max_fill
        self.orders: list[Order] = []
        self.ids = itertools.count()
        self.executor: TwapExecutor | None = None

    def take(
        self, market: Market, side: Side, price_ticks: int, qty_lots: int, offer_id: str | None
    ) -> Order:
        order = Order(
            f"o{next(self.ids)}", "sim", "BTCUSDT", side, qty_lots, price_ticks, tif=TimeInForce.IOC
        )
        order.created_ns = self.clock.now_ns()
        self.orders.append(order)
        self.clock.call_later(1_000_000, self._match, order)
        return order

    def _match(self, order: Order) -> None:
        assert self.executor is not None
        limit = order.price_ticks
        assert limit is not None  # take() prices every order
        left = order.qty_lots if self.max_fill is None else min(order.qty_lots, self.max_fill)
        for ticks, lots in list(self.book.levels(order.side.opposite)):
            through = ticks > limit if order.side is Side.BUY else ticks < limit
            if through or left == 0:
                break
            qty = min(lots, left)
            left -= qty
            order.filled_lots += qty
            fill = Fill(
                "sim", "BTCUSDT", f"f{next(self.ids)}", order.client_id, order.side, ticks, qty,
                Decimal(0), "USDT", Liquidity.TAKER, self.clock.now_ns(),
            )  # fmt: skip
            self.executor.on_fill(fill)
        status = OrderStatus.FILLED if order.filled_lots == order.qty_lots else OrderStatus.EXPIRED
        update = OrderUpdate(
            "sim", order.client_id, status, self.clock.now_ns(), filled_lots=order.filled_lots
        )
        self.executor.on_order_update(update)


def desk(
    max_fill: int | None = None, refuse: bool = False
) -> tuple[SimClock, Market, Venue, StrategyContext]:
    clock = SimClock(T0)
    book = L2Book(INST)
    book.apply_snapshot([(9_999, 1_000), (9_990, 1_000)], [(10_001, 1_000)], T0)
    book.state = BookState.LIVE
    market = Market(INST, book, lambda: 0)
    venue = Venue(clock, book, max_fill)

    def schedule_fn(delay_ns: int, fn: Any) -> Any:
        return clock.call_later(delay_ns, fn)

    def set_quotes(key: str, quotes: list[Quote]) -> None:
        raise AssertionError("a TWAP only takes")

    def refusing(*args: Any) -> None:
        return None  # what the engine's take returns when risk refuses

    take = refusing if refuse else venue.take
    ctx = StrategyContext(
        "unwind", {market.key: market}, clock.now_ns, set_quotes, schedule_fn, 1, take=take
    )
    return clock, market, venue, ctx


def test_driver_unwinds_on_the_virtual_clock() -> None:
    clock, market, venue, ctx = desk()
    finished: list[TwapExecutor] = []
    params = TwapParams(duration_s=60, slices=4, band_bps=Decimal(5))
    twap = TwapExecutor(ctx, market, Side.SELL, 10, params, on_done=finished.append)
    venue.executor = twap
    twap.start()
    clock.run_until(T0 + 120 * NS)
    assert [(o.created_ns - T0) // NS for o in venue.orders] == [0, 15, 30, 45]
    assert [o.qty_lots for o in venue.orders] == [3, 3, 2, 2]
    assert all(o.price_ticks == 9_995 for o in venue.orders)  # 100.00 * (1 - 5 bps)
    assert finished == [twap] and twap.done
    assert twap.schedule is not None and twap.schedule.filled_lots == 10


def test_driver_reslices_what_thin_liquidity_left() -> None:
    clock, market, venue, ctx = desk(max_fill=2)
    params = TwapParams(duration_s=30, slices=3, band_bps=Decimal(5))
    twap = TwapExecutor(ctx, market, Side.SELL, 12, params)
    venue.executor = twap
    twap.start()
    clock.run_until(T0 + 60 * NS)
    # 12/3 = 4 fills 2; 10/2 = 5 fills 2; 8/1 = 8 fills 2: 6 lots remain unsold.
    assert [o.qty_lots for o in venue.orders] == [4, 5, 8]
    assert twap.done and twap.schedule is not None and twap.schedule.remaining_lots == 6


def test_driver_counts_refused_children_and_can_be_cancelled() -> None:
    clock, market, _, ctx = desk(refuse=True)
    params = TwapParams(duration_s=20, slices=2, band_bps=Decimal(5))
    twap = TwapExecutor(ctx, market, Side.BUY, 4, params)
    twap.start()
    assert twap.schedule is not None and twap.schedule.skipped == [(0, "refused by risk")]
    twap.cancel()
    assert twap.done
    clock.run_until(T0 + 60 * NS)
    assert twap.schedule.skipped == [(0, "refused by risk")]  # no slice after the cancel
    with pytest.raises(RuntimeError, match="already started"):
        twap.start()
