"""Random order flow through the matching engine, checked against a plain reference book
(a list sorted by price then arrival) and against the book's invariants."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quoteforge.exchanges.sim.matching import MatchingEngine, SimOrder, SubmitResult, Trade
from quoteforge.model import Instrument, OrderType, Side, TimeInForce

BUY, SELL = Side.BUY, Side.SELL
INSTRUMENT = Instrument("sim", "BTC-USD", "BTC", "USD", Decimal("0.5"), Decimal(1))
OWNERS = ("us", "bg", "mm")

TradeKey = tuple[str, str, str, str, Side, int, int, int, int]


def trade_key(t: Trade) -> TradeKey:
    return (
        t.maker_order_id,
        t.maker_owner,
        t.taker_order_id,
        t.taker_owner,
        t.aggressor,
        t.price_ticks,
        t.qty_lots,
        t.maker_remaining_lots,
        t.taker_remaining_lots,
    )


# -- reference model ----------------------------------------------------------------------
@dataclass
class RefOrder:
    oid: str
    owner: str
    side: Side
    tif: TimeInForce
    price: int
    qty: int
    seq: int
    filled: int = 0

    @property
    def left(self) -> int:
        return self.qty - self.filled


@dataclass
class RefResult:
    accepted: bool
    trades: list[TradeKey] = field(default_factory=list)
    resting: bool = False
    cancelled: int = 0
    stp: list[str] = field(default_factory=list)


class ReferenceBook:
    """Deliberately naive: every match sorts the whole opposite side."""

    def __init__(self, stp: str) -> None:
        self.stp = stp
        self.resting: list[RefOrder] = []
        self.seq = 0

    def find(self, oid: str) -> RefOrder | None:
        return next((o for o in self.resting if o.oid == oid), None)

    def queue(self, side: Side) -> list[RefOrder]:
        """Resting orders of one side, best price first, then by arrival."""
        mine = [o for o in self.resting if o.side is side]
        return sorted(mine, key=lambda o: (-o.price if side is BUY else o.price, o.seq))

    def levels(self, side: Side) -> list[tuple[int, int]]:
        totals: dict[int, int] = defaultdict(int)
        for o in self.queue(side):
            totals[o.price] += o.left
        return list(totals.items())

    def crosses(self, side: Side, price: int | None, other: int) -> bool:
        return price is None or (other <= price if side is BUY else other >= price)

    def submit(
        self,
        oid: str,
        owner: str,
        side: Side,
        kind: OrderType,
        tif: TimeInForce,
        price: int | None,
        qty: int,
    ) -> RefResult:
        if self.find(oid) is not None:
            return RefResult(False)
        # A market order's price is only a protection limit; it never rests.
        order = RefOrder(oid, owner, side, tif, price or 0, qty, 0)
        return self.enter(order, kind, price)

    def enter(self, order: RefOrder, kind: OrderType, limit: int | None) -> RefResult:
        opposite = self.queue(order.side.opposite)
        post_only = order.tif is TimeInForce.POST_ONLY
        if post_only and opposite and self.crosses(order.side, limit, opposite[0].price):
            return RefResult(False)
        result = RefResult(True)
        stopped = False
        for maker in opposite:
            if not order.left or not self.crosses(order.side, limit, maker.price):
                break
            if self.stp != "none" and maker.owner == order.owner:
                if self.stp == "cancel_taker":
                    stopped = True
                    break
                self.resting.remove(maker)
                result.stp.append(maker.oid)
                continue
            qty = min(order.left, maker.left)
            maker.filled += qty
            order.filled += qty
            result.trades.append(
                (maker.oid, maker.owner, order.oid, order.owner, order.side, maker.price, qty,
                 maker.left, order.left)
            )  # fmt: skip
            if not maker.left:
                self.resting.remove(maker)
        if order.left:
            if not stopped and kind is OrderType.LIMIT and order.tif is not TimeInForce.IOC:
                self.seq += 1
                order.seq = self.seq
                self.resting.append(order)
                result.resting = True
            else:
                result.cancelled = order.left
        return result

    def cancel(self, oid: str) -> int | None:
        order = self.find(oid)
        if order is None:
            return None
        self.resting.remove(order)
        return order.left

    def replace(self, oid: str, price: int, qty: int) -> RefResult:
        order = self.find(oid)
        if order is None:
            return RefResult(False)
        if qty <= order.filled:
            self.resting.remove(order)
            return RefResult(True, cancelled=order.left)
        if price == order.price and qty <= order.qty:
            order.qty = qty
            return RefResult(True, resting=True)
        self.resting.remove(order)
        if order.tif is TimeInForce.POST_ONLY:
            opposite = self.queue(order.side.opposite)
            if opposite and self.crosses(order.side, price, opposite[0].price):
                return RefResult(False, cancelled=order.left)
        order.price, order.qty = price, qty
        return self.enter(order, OrderType.LIMIT, price)


# -- random flow --------------------------------------------------------------------------
@dataclass(frozen=True)
class Submit:
    owner: str
    side: Side
    kind: str
    price: int
    qty: int
    reuse: int  # >= 8: use an earlier id again


@dataclass(frozen=True)
class Cancel:
    pick: int


@dataclass(frozen=True)
class Replace:
    pick: int
    price: int
    qty: int


prices = st.integers(min_value=95, max_value=105)
submits = st.builds(
    Submit,
    st.sampled_from(OWNERS),
    st.sampled_from([BUY, SELL]),
    st.sampled_from(["gtc", "gtc", "ioc", "post_only", "market", "market_limit"]),
    prices,
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=0, max_value=9),
)
picks = st.integers(min_value=0, max_value=10_000)
cancels = st.builds(Cancel, picks)
replaces = st.builds(Replace, picks, prices, st.integers(min_value=0, max_value=10))
flows = st.lists(st.one_of(submits, submits, cancels, replaces), min_size=5, max_size=80)

KINDS = {
    "gtc": (OrderType.LIMIT, TimeInForce.GTC),
    "ioc": (OrderType.LIMIT, TimeInForce.IOC),
    "post_only": (OrderType.LIMIT, TimeInForce.POST_ONLY),
    "market": (OrderType.MARKET, TimeInForce.IOC),
    "market_limit": (OrderType.MARKET, TimeInForce.IOC),
}


class Ledger:
    """Every accepted order's fate, kept from the results the engine returns."""

    def __init__(self) -> None:
        self.orders: list[SimOrder] = []
        self.filled: dict[int, int] = defaultdict(int)
        self.cancelled: dict[int, int] = defaultdict(int)
        self.current: dict[str, SimOrder] = {}  # latest accepted order per id

    def add(self, order: SimOrder) -> None:
        self.orders.append(order)
        self.current[order.order_id] = order

    def apply(self, taker: SimOrder, result: SubmitResult) -> None:
        for t in result.trades:
            maker = self.current[t.maker_order_id]
            self.check_trade(maker, taker, t)
            self.filled[id(maker)] += t.qty_lots
            self.filled[id(taker)] += t.qty_lots
        for order in result.stp_cancelled:
            self.cancelled[id(order)] += order.remaining_lots
        self.cancelled[id(taker)] += result.cancelled_remainder_lots

    def check_trade(self, maker: SimOrder, taker: SimOrder, t: Trade) -> None:
        # (4) partial fills: each trade is positive and the remainders it reports match
        # what the two orders had left before it.
        assert t.qty_lots > 0
        assert maker.side is not taker.side
        assert t.aggressor is taker.side
        assert (t.maker_owner, t.taker_owner) == (maker.owner, taker.owner)
        maker_before = maker.qty_lots - self.filled[id(maker)]
        taker_before = taker.qty_lots - self.filled[id(taker)]
        assert t.maker_remaining_lots == maker_before - t.qty_lots >= 0
        assert t.taker_remaining_lots == taker_before - t.qty_lots >= 0
        # The trade happens at the maker's price, within the taker's limit.
        assert t.price_ticks == maker.price_ticks
        if taker.price_ticks is not None:
            assert (
                t.price_ticks <= taker.price_ticks
                if taker.side is BUY
                else t.price_ticks >= taker.price_ticks
            )


def better_or_earlier(a: RefOrder, b: RefOrder) -> bool:
    """``a`` has priority over ``b`` on the same side."""
    if a.price != b.price:
        return a.price > b.price if a.side is BUY else a.price < b.price
    return a.seq < b.seq


def check_priority(engine: MatchingEngine, before: list[RefOrder], result: SubmitResult) -> None:
    """(3) No trade hits a worse price or a later order while a better or earlier one
    still rests; ``before`` is the opposite side as it was before the operation."""
    seen = {o.oid: o for o in before}
    for t in result.trades:
        maker = seen[t.maker_order_id]
        for other in before:
            if other is not maker and better_or_earlier(other, maker):
                assert engine.get(other.oid) is None, (
                    f"{t.maker_order_id} traded while {other.oid} rests ahead of it"
                )


def check_book(
    engine: MatchingEngine, ref: ReferenceBook, replayed: dict[tuple[Side, int], int]
) -> None:
    bids = engine.levels(BUY, 1000)
    asks = engine.levels(SELL, 1000)
    # (1) never crossed, and no empty level is shown.
    if bids and asks:
        assert bids[0][0] < asks[0][0]
    assert all(lots > 0 for _, lots in bids + asks)
    assert engine.best_bid() == (bids[0] if bids else None)
    assert engine.best_ask() == (asks[0] if asks else None)
    assert bids == ref.levels(BUY)
    assert asks == ref.levels(SELL)
    # (5) level changes replayed onto an empty map rebuild the book.
    for side, price, lots in engine.drain_level_changes():
        if lots:
            replayed[side, price] = lots
        else:
            replayed.pop((side, price), None)
    assert sorted(replayed.items()) == sorted(
        [((BUY, p), q) for p, q in bids] + [((SELL, p), q) for p, q in asks]
    )
    # Queue positions agree with arrival order in the reference book.
    for order in ref.resting:
        ahead = sum(
            o.left
            for o in ref.resting
            if o.side is order.side and o.price == order.price and o.seq < order.seq
        )
        assert engine.queue_ahead(order.oid) == ahead


def check_result(result: SubmitResult, expected: RefResult) -> None:
    assert result.accepted == expected.accepted, result.reason
    assert [trade_key(t) for t in result.trades] == expected.trades
    assert result.resting == expected.resting
    assert result.cancelled_remainder_lots == expected.cancelled
    assert [o.order_id for o in result.stp_cancelled] == expected.stp
    # The quantity each trade takes from a taker is the quantity it gives its maker.
    assert sum(t.qty_lots for t in result.trades) == result.filled_lots


@pytest.mark.parametrize("stp", ["cancel_resting", "cancel_taker", "none"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow=flows)
def test_random_flow_matches_the_reference_and_keeps_invariants(
    stp: str, flow: list[Submit | Cancel | Replace]
) -> None:
    engine = MatchingEngine(INSTRUMENT, self_trade_prevention=stp)
    ref = ReferenceBook(stp)
    ledger = Ledger()
    replayed: dict[tuple[Side, int], int] = {}
    issued: list[str] = []

    for step, op in enumerate(flow):
        if isinstance(op, Submit):
            reused = op.reuse >= 8 and issued
            oid = issued[op.reuse % len(issued)] if reused else f"o{step}"
            order_type, tif = KINDS[op.kind]
            limit = None if op.kind == "market" else op.price
            order = SimOrder(oid, op.owner, op.side, order_type, tif, limit, op.qty, ts_ns=step)
            before = ref.queue(op.side.opposite)
            expected = ref.submit(oid, op.owner, op.side, order_type, tif, limit, op.qty)
            result = engine.submit(order)
            if result.accepted:
                ledger.add(order)
                ledger.apply(order, result)
                issued.append(oid)
            check_priority(engine, before, result)
            check_result(result, expected)
        elif isinstance(op, Cancel) and issued:
            oid = issued[op.pick % len(issued)]
            expected_left = ref.cancel(oid)
            cancelled = engine.cancel(oid)
            assert (cancelled.remaining_lots if cancelled else None) == expected_left
            if cancelled is not None:
                assert cancelled is ledger.current[oid]
                ledger.cancelled[id(cancelled)] += cancelled.remaining_lots
        elif isinstance(op, Replace) and issued:
            oid = issued[op.pick % len(issued)]
            target = engine.get(oid)
            before = ref.queue(target.side.opposite) if target else []
            expected = ref.replace(oid, op.price, op.qty)
            result = engine.replace(oid, op.price, op.qty, ts_ns=step)
            if target is not None:
                if result.accepted and op.qty > target.filled_lots - result.filled_lots:
                    # The order's total is now the new quantity, fills included.
                    assert target.qty_lots == op.qty
                ledger.apply(target, result)
            check_priority(engine, before, result)
            check_result(result, expected)
        check_book(engine, ref, replayed)

    # (2) conservation: every accepted order's quantity is filled, resting or cancelled,
    # and (4) the engine's own fill counters agree with the trades it reported.
    for order in ledger.orders:
        resting = order.remaining_lots if engine.get(order.order_id) is order else 0
        assert ledger.filled[id(order)] == order.filled_lots
        assert order.qty_lots == order.filled_lots + resting + ledger.cancelled[id(order)]
