"""The order manager: client ids, the state machine, idempotency, journaling, restore."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)
from memory_journal import MemoryJournal

from quoteforge.clock import LiveClock, SimClock
from quoteforge.journal import Journal, order_states
from quoteforge.model import (
    Fill,
    Liquidity,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
)
from quoteforge.orders import MAX_CLIENT_ID_LEN, OrderManager, order_to_dict

S = OrderStatus
VENUE, SYMBOL = "sim", "BTCUSDT"
MARKET = f"{VENUE}:{SYMBOL}"


def make_manager(journal: Journal | None = None) -> OrderManager:
    return OrderManager(journal, SimClock(1_700_000_000_000_000_000), "qf")


_fill_seq = iter(range(10**9))


def fill_for(order: Order, lots: int, fill_id: str | None = None) -> Fill:
    return Fill(
        venue=order.venue,
        symbol=order.symbol,
        fill_id=fill_id or f"f{next(_fill_seq)}",
        client_id=order.client_id,
        side=order.side,
        price_ticks=order.price_ticks or 1,
        qty_lots=lots,
        fee=Decimal("0.01"),
        fee_asset="USDT",
        liquidity=Liquidity.MAKER,
        ts_ns=1,
    )


def report(
    order: Order, status: OrderStatus, reason: str = "", exchange_id: str | None = None
) -> OrderUpdate:
    return OrderUpdate(VENUE, order.client_id, status, 1, exchange_id=exchange_id, reason=reason)


def state(om: OrderManager) -> dict[str, object]:
    """Everything observable about a manager, for comparing two of them."""
    return {
        "orders": {o.client_id: order_to_dict(o) for o in om.all_orders()},
        "prior": {o.client_id: om.prior_status(o.client_id) for o in om.all_orders()},
        "working": sorted(o.client_id for o in om.all_working()),
        "unknown": sorted(o.client_id for o in om.unknown()),
        "orphans": [f.fill_id for f in om.orphan_fills],
    }


# ---------------------------------------------------------------------------------------
# Client ids
# ---------------------------------------------------------------------------------------


def test_client_ids_fit_venue_rules_and_are_unique() -> None:
    om = OrderManager(None, LiveClock(), "abcdefghijkl")
    ids = [om.next_client_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", cid)
        assert len(cid) <= MAX_CLIENT_ID_LEN
    # A restart (new manager, same prefix, same instant) never reuses an id.
    restarted = OrderManager(None, LiveClock(), "abcdefghijkl")
    assert restarted.session != om.session
    assert restarted.next_client_id() not in ids


def test_client_ids_are_reproducible_in_virtual_time() -> None:
    first = [make_manager().next_client_id() for _ in range(3)]
    assert first[0] == first[1] == first[2]
    assert first[0].startswith("qf-")
    assert first[0].endswith("-1")


@pytest.mark.parametrize("prefix", ["", "has space", "x" * 13, "dash-es", "ünï"])
def test_bad_prefix_is_refused_with_the_rule(prefix: str) -> None:
    with pytest.raises(ValueError, match="1-12 characters"):
        OrderManager(None, SimClock(), prefix)


def test_new_order_validates_size_and_price() -> None:
    om = make_manager()
    with pytest.raises(ValueError, match="qty_lots must be positive"):
        om.new_order(VENUE, SYMBOL, Side.BUY, 0, 100)
    with pytest.raises(ValueError, match="limit order needs price_ticks"):
        om.new_order(VENUE, SYMBOL, Side.BUY, 1, None)
    with pytest.raises(ValueError, match="price_ticks must be a positive int"):
        om.new_order(VENUE, SYMBOL, Side.BUY, 1, -5)
    market = om.new_order(VENUE, SYMBOL, "sell", 3, None, order_type=OrderType.MARKET)
    assert market.side is Side.SELL
    assert market.status is S.PENDING_NEW


# ---------------------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------------------


def test_lifecycle_is_journaled_before_returning() -> None:
    journal = MemoryJournal()
    om = make_manager(journal)
    order = om.new_order(VENUE, SYMBOL, Side.BUY, 10, 100, strategy="mm", level=1)
    assert [r.kind for r in journal.records] == ["order"]
    assert journal.records[0].payload["order"]["status"] == "pending_new"

    assert om.apply_update(report(order, S.OPEN, exchange_id="X1")) is order
    assert order.status is S.OPEN
    assert order.exchange_id == "X1"
    assert om.apply_fill(fill_for(order, 4)) is order
    assert order.status is S.PARTIALLY_FILLED
    assert order.filled_lots == 4
    assert om.apply_fill(fill_for(order, 6)) is order
    assert order.status is S.FILLED
    assert om.working(VENUE, SYMBOL) == []

    kinds = [r.kind for r in journal.records]
    assert kinds == ["order", "order_update", "fill", "fill"]
    assert journal.records[-1].payload["order"]["status"] == "filled"
    assert journal.records[1].event_id == f"{VENUE}:{order.client_id}:open:0"
    assert journal.records[2].event_id.startswith(f"{VENUE}:fill:")
    assert journal.records[2].market == MARKET
    assert journal.duplicates == []


def test_stale_and_duplicate_reports_change_nothing() -> None:
    journal = MemoryJournal()
    om = make_manager(journal)
    order = om.new_order(VENUE, SYMBOL, Side.SELL, 5, 200)
    om.apply_update(report(order, S.OPEN))
    assert om.apply_update(report(order, S.OPEN)) is None  # duplicate ack
    om.apply_fill(fill_for(order, 5))
    before = len(journal.records)
    assert om.apply_update(report(order, S.OPEN)) is None  # OPEN after FILLED
    assert om.apply_update(report(order, S.CANCELLED)) is None
    assert om.apply_update(report(order, S.PENDING_NEW)) is None
    assert order.status is S.FILLED
    assert len(journal.records) == before

    other = om.new_order(VENUE, SYMBOL, Side.SELL, 5, 200)
    assert om.apply_update(report(other, S.CANCELLED)) is other
    assert om.apply_update(report(other, S.CANCELLED)) is None  # second CANCELLED
    assert other.status is S.CANCELLED


def test_duplicate_fill_is_ignored_by_venue_and_fill_id() -> None:
    om = make_manager()
    order = om.new_order(VENUE, SYMBOL, Side.BUY, 10, 100)
    fill = fill_for(order, 3, "t-1")
    assert om.apply_fill(fill) is order
    assert om.apply_fill(fill) is None
    assert order.filled_lots == 3
    # The same trade id on another venue is another trade.
    other = om.new_order("kraken", SYMBOL, Side.BUY, 10, 100)
    assert om.apply_fill(fill_for(other, 3, "t-1")) is other


def test_duplicates_and_orphans_can_be_told_apart_and_old_orders_pruned() -> None:
    om = make_manager()
    order = om.new_order(VENUE, SYMBOL, Side.BUY, 2, 100)
    fill = fill_for(order, 2, "p-1")
    assert not om.has_fill(VENUE, "p-1")
    om.apply_fill(fill)
    assert om.has_fill(VENUE, "p-1")
    live = om.new_order(VENUE, SYMBOL, Side.BUY, 2, 100)
    assert om.prune(before_ns=order.updated_ns + 1) == 1
    assert om.get(order.client_id) is None
    assert om.get(live.client_id) is live  # working orders are never pruned
    assert om.apply_fill(fill) is None  # still a duplicate
    late = fill_for(order, 1, "p-2")
    assert om.apply_fill(late) is None
    assert om.orphan_fills == [late]


def test_fill_that_does_not_match_its_order_is_refused() -> None:
    om = make_manager()
    order = om.new_order(VENUE, SYMBOL, Side.BUY, 10, 100)
    wrong = Fill(VENUE, SYMBOL, "w", order.client_id, Side.SELL, 100, 1, Decimal(0), "USDT",
                 Liquidity.MAKER, 1)  # fmt: skip
    with pytest.raises(ValueError, match="does not match order"):
        om.apply_fill(wrong)
    with pytest.raises(ValueError, match="positive number of lots"):
        om.apply_fill(fill_for(order, 0))
    assert order.filled_lots == 0


def test_unknown_client_ids_are_kept_for_reconciliation() -> None:
    journal = MemoryJournal()
    om = make_manager(journal)
    update = OrderUpdate(VENUE, "ghost-1", S.OPEN, 1)
    assert om.apply_update(update) is None
    assert om.unknown_updates == [update]
    ghost = Fill(VENUE, SYMBOL, "g1", "ghost-1", Side.BUY, 100, 2, Decimal(0), "USDT",
                 Liquidity.TAKER, 1)  # fmt: skip
    assert om.apply_fill(ghost) is None
    assert om.apply_fill(ghost) is None
    assert om.orphan_fills == [ghost]
    assert [r.kind for r in journal.records] == ["fill"]
    assert journal.records[0].payload["order"] is None

    adopted = om.adopt(
        Order("ghost-1", VENUE, SYMBOL, Side.BUY, 5, 100, status=S.OPEN, filled_lots=2)
    )
    assert om.get("ghost-1") is adopted
    assert om.unknown_updates == []
    assert om.open_lots(MARKET, Side.BUY) == 3


def test_pruning_forgets_only_terminal_orders_strictly_older_than_the_cut() -> None:
    clock = SimClock(1_700_000_000_000_000_000)
    om = OrderManager(None, clock, "qf")
    done = om.new_order(VENUE, SYMBOL, Side.BUY, 2, 100)
    om.apply_fill(fill_for(done, 2))
    working = om.new_order(VENUE, SYMBOL, Side.SELL, 2, 110)  # as old, never terminal
    assert om.prune(before_ns=done.updated_ns) == 0  # exactly at the cut: kept
    assert om.prune(before_ns=done.updated_ns + 10**9) == 1
    assert om.get(done.client_id) is None and om.get(working.client_id) is working


def _valid(**changes: object) -> Order:
    order = Order("qf-x-1", VENUE, SYMBOL, Side.BUY, 5, 100, status=S.OPEN)
    for name, value in changes.items():
        setattr(order, name, value)
    return order


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"venue": ""}, "venue and symbol must not be empty"),
        ({"symbol": ""}, "venue and symbol must not be empty"),
        ({"qty_lots": True}, "qty_lots must be an int number of lots"),
        ({"qty_lots": 1.5}, "qty_lots must be an int number of lots"),
        ({"qty_lots": 0}, "qty_lots must be positive, got 0"),
        ({"price_ticks": None}, "a limit order needs price_ticks"),
        ({"price_ticks": 0}, "price_ticks must be a positive int, got 0"),
        ({"price_ticks": True}, "price_ticks must be a positive int, got True"),
        ({"price_ticks": 100.0}, "price_ticks must be a positive int, got 100.0"),
        ({"client_id": ""}, f"client id must be 1-{MAX_CLIENT_ID_LEN} characters"),
        ({"client_id": "c" * 37}, f"client id must be 1-{MAX_CLIENT_ID_LEN} characters"),
    ],
)
def test_an_adopted_order_is_checked_like_a_new_one(
    changes: dict[str, object], message: str
) -> None:
    """Orders taken over (reconciliation, a remote strategy node's intents) are refused
    with the field that is wrong; nothing is registered or journaled."""
    journal = MemoryJournal()
    om = make_manager(journal)
    order = _valid(**changes)
    with pytest.raises(ValueError, match=re.escape(message)):
        om.adopt(order)
    assert om.get(order.client_id) is None and journal.records == []
    om.adopt(_valid(client_id="c" * MAX_CLIENT_ID_LEN))  # the longest id is fine


def test_an_adopted_order_keeps_its_creation_time() -> None:
    om = make_manager()
    made = om.adopt(_valid(client_id="a1", created_ns=5))
    fresh = om.adopt(_valid(client_id="a2"))
    assert made.created_ns == 5
    assert fresh.created_ns == om.clock.now_ns()


@pytest.mark.parametrize("session", ["", "has-dash", "x" * 13, "ü"])
def test_an_order_id_session_must_be_1_to_12_letters_or_digits(session: str) -> None:
    with pytest.raises(ValueError, match="order id session"):
        OrderManager(None, SimClock(0), "qf", session=session)
    assert OrderManager(None, SimClock(0), "qf", session="Ab3" * 4).session == "Ab3" * 4


def test_cancel_reject_returns_to_the_prior_live_state() -> None:
    om = make_manager()
    order = om.new_order(VENUE, SYMBOL, Side.BUY, 10, 100)
    om.apply_update(report(order, S.OPEN))
    assert om.request_cancel(order.client_id) is order
    assert order.status is S.PENDING_CANCEL
    assert om.request_cancel(order.client_id) is None  # already in flight
    assert om.reject_cancel(order.client_id, "unknown order") is order
    assert order.status is S.OPEN
    assert order.reason == "unknown order"

    om.apply_fill(fill_for(order, 4))
    om.request_cancel(order.client_id)
    # A venue may answer a failed cancel with a REJECTED report about the order.
    assert om.apply_update(report(order, S.REJECTED, "cancel failed")) is order
    assert order.status is S.PARTIALLY_FILLED


def test_late_ack_keeps_the_cancel_pending() -> None:
    om = make_manager()
    order = om.new_order(VENUE, SYMBOL, Side.BUY, 10, 100)
    om.request_cancel(order.client_id)
    assert om.prior_status(order.client_id) is S.PENDING_NEW
    assert om.apply_update(report(order, S.OPEN, exchange_id="X9")) is order
    assert order.status is S.PENDING_CANCEL
    assert order.exchange_id == "X9"
    assert om.prior_status(order.client_id) is S.OPEN
    assert om.apply_update(report(order, S.CANCELLED)) is order
    assert order.status is S.CANCELLED


def test_fills_after_cancel_still_count() -> None:
    om = make_manager()
    order = om.new_order(VENUE, SYMBOL, Side.SELL, 10, 100)
    om.apply_update(report(order, S.OPEN))
    om.request_cancel(order.client_id)
    om.apply_fill(fill_for(order, 3))
    assert order.status is S.PENDING_CANCEL  # a partial fill does not answer the cancel
    om.apply_update(report(order, S.CANCELLED))
    assert om.apply_fill(fill_for(order, 2)) is order
    assert order.status is S.CANCELLED
    assert order.filled_lots == 5
    assert om.apply_fill(fill_for(order, 5)) is order
    assert order.status is S.FILLED
    assert order.filled_lots == 10
    assert om.open_count(MARKET) == 0


def test_rejected_new_order_is_terminal() -> None:
    om = make_manager()
    order = om.new_order(VENUE, SYMBOL, Side.BUY, 1, 100)
    assert om.apply_update(report(order, S.REJECTED, "post-only would cross")) is order
    assert order.status is S.REJECTED
    assert order.reason == "post-only would cross"
    assert om.apply_update(report(order, S.OPEN)) is None
    assert om.request_cancel(order.client_id) is None
    # An accepted order is not "rejected" later: that report is stale.
    live = om.new_order(VENUE, SYMBOL, Side.BUY, 1, 100)
    om.apply_update(report(live, S.OPEN))
    assert om.apply_update(report(live, S.REJECTED)) is None
    assert live.status is S.OPEN


def test_replace_links_orders_and_handles_confirm_and_reject() -> None:
    om = make_manager()
    old = om.new_order(VENUE, SYMBOL, Side.BUY, 5, 100)
    om.apply_update(report(old, S.OPEN))
    new = om.new_order(VENUE, SYMBOL, Side.BUY, 5, 101)
    om.request_replace(old.client_id, new)
    assert old.status is S.PENDING_REPLACE
    assert old.extra["replaced_by"] == new.client_id
    assert new.extra["replaces"] == old.client_id
    with pytest.raises(ValueError, match="already in flight"):
        om.request_replace(old.client_id, new)
    om.apply_update(report(old, S.CANCELLED))
    om.apply_update(report(new, S.OPEN))
    assert (old.status, new.status) == (S.CANCELLED, S.OPEN)
    with pytest.raises(ValueError, match="already cancelled"):
        om.request_replace(old.client_id, new)

    # Rejected replace: the old order lives on, the new one never will.
    third = Order("qf-custom-1", VENUE, SYMBOL, Side.BUY, 5, 99)
    om.request_replace(new.client_id, third)
    assert om.get("qf-custom-1") is third
    assert third.status is S.PENDING_NEW
    om.reject_cancel(new.client_id, "would cross")
    assert new.status is S.OPEN
    assert third.status is S.REJECTED
    assert [o.client_id for o in om.working(VENUE, SYMBOL)] == [new.client_id]
    with pytest.raises(ValueError, match="not known"):
        om.request_replace("nope", third)


def test_unknown_status_is_flagged_until_the_venue_answers() -> None:
    journal = MemoryJournal()
    om = make_manager(journal)
    order = om.new_order(VENUE, SYMBOL, Side.BUY, 5, 100)
    assert om.mark_unknown(order.client_id, "place timed out") is order
    assert om.mark_unknown(order.client_id, "again") is None
    assert om.unknown() == [order]
    assert order.extra["status_unknown"] == "place timed out"
    assert om.working(VENUE, SYMBOL) == [order]  # still counts as exposure
    assert om.apply_update(report(order, S.OPEN)) is order
    assert om.unknown() == []
    assert "status_unknown" not in order.extra
    # A report that changes no status still resolves the flag.
    om.mark_unknown(order.client_id, "cancel timed out")
    assert om.apply_update(report(order, S.OPEN)) is order
    assert om.unknown() == []
    assert journal.duplicates == []


def test_working_index_and_exposure() -> None:
    om = make_manager()
    bids = [om.new_order(VENUE, SYMBOL, Side.BUY, 5, 100 - i) for i in range(3)]
    ask = om.new_order(VENUE, SYMBOL, Side.SELL, 7, 110)
    elsewhere = om.new_order("kraken", "XBT/USD", Side.BUY, 9, 100)
    om.apply_fill(fill_for(bids[0], 2))
    om.apply_update(report(bids[1], S.CANCELLED))
    assert {o.client_id for o in om.working(VENUE, SYMBOL)} == {
        bids[0].client_id,
        bids[2].client_id,
        ask.client_id,
    }
    assert om.open_lots(MARKET, Side.BUY) == 3 + 5
    assert om.open_lots(MARKET, -1) == 7
    assert om.open_count(MARKET) == 3
    assert om.open_count("kraken:XBT/USD") == 1
    assert om.working("kraken", "XBT/USD") == [elsewhere]
    assert om.open_count("nowhere:X") == 0
    assert om.working("nowhere", "X") == []
    assert len(om.all_working()) == 4


def test_restore_reproduces_live_state() -> None:
    journal = MemoryJournal()
    om = make_manager(journal)
    a = om.new_order(VENUE, SYMBOL, Side.BUY, 5, 100)
    b = om.new_order(VENUE, SYMBOL, Side.SELL, 5, 105)
    om.apply_update(report(a, S.OPEN))
    om.apply_fill(fill_for(a, 2, "x1"))
    om.request_cancel(b.client_id)
    om.mark_unknown(b.client_id, "timeout")
    om.apply_fill(Fill(VENUE, SYMBOL, "orphan", "zz", Side.BUY, 1, 1, Decimal(0), "USDT",
                       Liquidity.MAKER, 1))  # fmt: skip

    restored = make_manager()
    assert restored.restore(journal.read()) == len(journal.records)
    assert state(restored) == state(om)
    # Fill ids are remembered: a redelivered fill after the restart is still a duplicate.
    assert restored.apply_fill(fill_for(a, 2, "x1")) is None
    assert restored.reject_cancel(b.client_id, "too late") is not None
    b_restored = restored.get(b.client_id)
    assert b_restored is not None
    assert b_restored.status is S.PENDING_NEW


def test_a_venue_id_reported_before_the_acknowledgement_is_journaled_and_restored() -> None:
    """Venues that name an order themselves (Polymarket: the signed order's hash) report
    the id as soon as it is known, before sending: still PENDING_NEW, the id is
    journaled, and a manager restored from the journal knows the order by it."""
    journal = MemoryJournal()
    om = make_manager(journal)
    order = om.new_order(VENUE, SYMBOL, Side.BUY, 5, 100)
    assert om.apply_update(report(order, S.PENDING_NEW, exchange_id="0xabc")) is order
    assert order.status is S.PENDING_NEW and order.exchange_id == "0xabc"
    assert journal.records[-1].payload["order"]["exchange_id"] == "0xabc"
    assert om.apply_update(report(order, S.PENDING_NEW, exchange_id="0xabc")) is None
    restored = make_manager()
    restored.restore(journal.read())
    again = restored.get(order.client_id)
    assert again is not None and again.exchange_id == "0xabc"
    assert again.status is S.PENDING_NEW


# ---------------------------------------------------------------------------------------
# Property-based: random venue behaviour against a reference model
# ---------------------------------------------------------------------------------------

LIVE_REPORTS = (S.PENDING_NEW, S.OPEN, S.PARTIALLY_FILLED)
PENDING = (S.PENDING_CANCEL, S.PENDING_REPLACE)


@dataclass
class RefOrder:
    """The documented rules, written as plainly as possible."""

    qty: int
    status: OrderStatus = S.PENDING_NEW
    prior: OrderStatus | None = None
    filled: int = 0
    fills: set[str] = field(default_factory=set)

    def live(self) -> OrderStatus:
        return S.PARTIALLY_FILLED if self.filled else S.OPEN

    def revert(self) -> None:
        self.status = (
            S.PENDING_NEW if self.prior is S.PENDING_NEW and not self.filled else self.live()
        )
        self.prior = None

    def update(self, status: OrderStatus, reason: str) -> bool:
        if self.status.is_terminal:
            return False
        pending = self.status in PENDING
        if status in (S.CANCELLED, S.EXPIRED, S.FILLED):
            self.status = status
            return True
        if status is S.REJECTED:
            never_acked = self.status is S.PENDING_NEW or (pending and self.prior is S.PENDING_NEW)
            if never_acked:
                self.status = S.REJECTED
                return True
            if pending:
                self.revert()
                return True
            return False
        if pending:
            if reason:
                self.revert()
                return True
            if self.prior is S.PENDING_NEW and status is not S.PENDING_NEW:
                self.prior = self.live()
                return True
            return False
        if self.status is S.PENDING_NEW and status is not S.PENDING_NEW:
            self.status = self.live()
            return True
        return False

    def fill(self, fill_id: str, lots: int) -> bool:
        if fill_id in self.fills:
            return False
        self.fills.add(fill_id)
        self.filled += lots
        if self.filled >= self.qty:
            self.status = S.FILLED
        elif self.status in (S.PENDING_NEW, S.OPEN):
            self.status = S.PARTIALLY_FILLED
        elif self.status in PENDING:
            self.prior = S.PARTIALLY_FILLED
        return True

    def cancel(self) -> bool:
        if self.status.is_terminal or self.status is S.PENDING_CANCEL:
            return False
        if self.status not in PENDING:
            self.prior = self.status
        self.status = S.PENDING_CANCEL
        return True


class OrderMachine(RuleBasedStateMachine):
    orders = Bundle("orders")

    def __init__(self) -> None:
        super().__init__()
        self.journal = MemoryJournal()
        self.om = make_manager(self.journal)
        self.ref: dict[str, RefOrder] = {}
        self.sent_updates: list[OrderUpdate] = []
        self.sent_fills: list[Fill] = []
        self.fill_lots: dict[str, dict[str, int]] = {}
        self.ever_terminal: dict[str, OrderStatus] = {}
        self.next_fill = 0

    @rule(target=orders, side=st.sampled_from(Side), qty=st.integers(1, 8))
    def place(self, side: Side, qty: int) -> str:
        order = self.om.new_order(VENUE, SYMBOL, side, qty, 100)
        self.ref[order.client_id] = RefOrder(qty)
        self.fill_lots[order.client_id] = {}
        return order.client_id

    @rule(
        cid=orders,
        status=st.sampled_from(
            [
                S.OPEN,
                S.PARTIALLY_FILLED,
                S.PENDING_NEW,
                S.CANCELLED,
                S.EXPIRED,
                S.FILLED,
                S.REJECTED,
            ]
        ),
        reason=st.sampled_from(["", "", "unknown order"]),
    )
    def venue_report(self, cid: str, status: OrderStatus, reason: str) -> None:
        update = OrderUpdate(VENUE, cid, status, 5, reason=reason)
        self.sent_updates.append(update)
        expected = self.ref[cid].update(status, reason)
        assert (self.om.apply_update(update) is not None) == expected

    @rule(cid=orders)
    def cancel(self, cid: str) -> None:
        expected = self.ref[cid].cancel()
        assert (self.om.request_cancel(cid) is not None) == expected

    @rule(cid=orders, lots=st.integers(1, 4))
    def trade(self, cid: str, lots: int) -> None:
        self.next_fill += 1
        order = self.om.get(cid)
        assert order is not None
        fill = fill_for(order, lots, f"t{self.next_fill}")
        self.sent_fills.append(fill)
        self.fill_lots[cid][fill.fill_id] = lots
        assert self.ref[cid].fill(fill.fill_id, lots)
        assert self.om.apply_fill(fill) is not None

    @precondition(lambda self: self.sent_fills or self.sent_updates)
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        """A redelivered report or trade changes nothing at all."""
        before = state(self.om)
        records = len(self.journal.records)
        if self.sent_fills and (not self.sent_updates or data.draw(st.booleans())):
            assert self.om.apply_fill(data.draw(st.sampled_from(self.sent_fills))) is None
        else:
            update = data.draw(st.sampled_from(self.sent_updates))
            cid = update.client_id
            # Re-sending an old report is a duplicate only if the order has not moved on
            # in a way that report now means something else: check with the model.
            probe = RefOrder(self.ref[cid].qty, self.ref[cid].status, self.ref[cid].prior,
                             self.ref[cid].filled)  # fmt: skip
            if probe.update(update.status, update.reason):
                return
            assert self.om.apply_update(update) is None
        assert state(self.om) == before
        assert len(self.journal.records) == records

    @rule(cid=consumes(orders))
    def forget(self, cid: str) -> None:
        """Stop touching an order (keeps the bundle small); its state must hold."""

    @invariant()
    def matches_reference(self) -> None:
        for cid, ref in self.ref.items():
            order = self.om.get(cid)
            assert order is not None
            assert order.status is ref.status, (cid, order.status, ref.status)
            assert order.filled_lots == sum(self.fill_lots[cid].values())
            if ref.status in PENDING:
                assert self.om.prior_status(cid) is ref.prior
            if cid in self.ever_terminal:
                assert order.status.is_terminal
                # Only a late fill may move a terminal order, and only to FILLED.
                assert order.status is self.ever_terminal[cid] or order.status is S.FILLED
            if order.status.is_terminal:
                self.ever_terminal[cid] = order.status

    @invariant()
    def index_matches_orders(self) -> None:
        working = {o.client_id for o in self.om.all_working()}
        assert working == {cid for cid, ref in self.ref.items() if not ref.status.is_terminal}
        for side in Side:
            assert self.om.open_lots(MARKET, side) == sum(
                max(0, o.qty_lots - o.filled_lots) for o in self.om.all_working() if o.side is side
            )

    def teardown(self) -> None:
        assert self.journal.duplicates == []
        restored = make_manager()
        restored.restore(self.journal.read())
        assert state(restored) == state(self.om)


OrderMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOrderStateMachine = OrderMachine.TestCase


def test_a_built_order_given_to_replace_is_journaled_once_with_its_link() -> None:
    journal = MemoryJournal()
    om = make_manager(journal)
    old = om.new_order(VENUE, SYMBOL, Side.BUY, 10, 100)
    new = om.build_order(VENUE, SYMBOL, Side.BUY, 10, 101)
    assert om.get(new.client_id) is None  # built, not yet known
    om.request_replace(old.client_id, new)
    records = [r for r in journal.records if new.client_id in r.event_id]
    assert len(records) == 1
    assert records[0].payload["order"]["extra"] == {"replaces": old.client_id}
    assert om.get(new.client_id) is new and new.status is S.PENDING_NEW
    assert old.status is S.PENDING_REPLACE


def test_a_replacement_from_elsewhere_is_checked_like_a_new_order_before_anything_changes() -> None:
    journal = MemoryJournal()
    om = make_manager(journal)
    old = om.new_order(VENUE, SYMBOL, Side.BUY, 10, 100)
    om.apply_update(report(old, S.OPEN))
    before = len(journal.records)
    for bad, problem in (
        (Order("qf-r-1", VENUE, SYMBOL, Side.BUY, 0, 101), "qty_lots must be positive"),
        (Order("qf-r-2", VENUE, SYMBOL, Side.BUY, 10, None), "needs price_ticks"),
        (Order("x" * (MAX_CLIENT_ID_LEN + 1), VENUE, SYMBOL, Side.BUY, 10, 101), "client id"),
        (Order("qf-r-3", VENUE, "ETHUSDT", Side.BUY, 10, 101), "stays on the same market"),
    ):
        with pytest.raises(ValueError, match=problem):
            om.request_replace(old.client_id, bad)
        assert om.get(bad.client_id) is None
    assert old.status is S.OPEN and "replaced_by" not in old.extra
    assert len(journal.records) == before
    # A valid one keeps the creation time it was made with (a strategy node's, say);
    # one without gets the manager's clock.
    made = Order("qf-r-4", VENUE, SYMBOL, Side.BUY, 10, 101, created_ns=123, updated_ns=123)
    om.request_replace(old.client_id, made)
    assert (made.created_ns, made.updated_ns) == (123, 123)
    om.apply_update(report(old, S.CANCELLED))
    om.apply_update(report(made, S.OPEN))
    fresh = Order("qf-r-5", VENUE, SYMBOL, Side.BUY, 10, 102)
    om.request_replace(made.client_id, fresh)
    assert fresh.created_ns == fresh.updated_ns == om.clock.now_ns()


def test_reports_without_a_time_or_a_reason_get_the_managers_clock_and_a_plain_reason() -> None:
    clock = SimClock(1_700_000_000_000_000_000)
    om = OrderManager(None, clock, "qf")
    now = clock.now_ns()
    timed = om.new_order(VENUE, SYMBOL, Side.BUY, 5, 100)
    om.apply_update(OrderUpdate(VENUE, timed.client_id, S.OPEN, 42))
    assert timed.updated_ns == 42  # the venue's time when it gives one
    untimed = om.new_order(VENUE, SYMBOL, Side.BUY, 5, 99)
    clock.run_until(now + 7)
    om.apply_update(OrderUpdate(VENUE, untimed.client_id, S.OPEN, 0))
    assert untimed.updated_ns == now + 7
    om.apply_fill(dataclasses.replace(fill_for(untimed, 1), ts_ns=0))
    assert untimed.updated_ns == now + 7
    om.apply_fill(fill_for(timed, 1))  # fill_for's trade time is 1
    assert timed.updated_ns == 1

    refused = om.new_order(VENUE, SYMBOL, Side.BUY, 5, 98)
    om.apply_update(OrderUpdate(VENUE, refused.client_id, S.REJECTED, 0))
    assert (refused.status, refused.reason) == (S.REJECTED, "rejected")

    # A cancel the venue refuses without saying why, as a REJECTED report or through
    # reject_cancel: the order is live again with a plain reason, at the manager's time.
    om.request_cancel(timed.client_id)
    om.apply_update(OrderUpdate(VENUE, timed.client_id, S.REJECTED, 0))
    assert (timed.status, timed.reason) == (S.PARTIALLY_FILLED, "cancel rejected")
    om.request_cancel(timed.client_id)
    clock.run_until(now + 9)
    om.reject_cancel(timed.client_id, "")
    assert (timed.status, timed.reason, timed.updated_ns) == (
        S.PARTIALLY_FILLED,
        "cancel rejected",
        now + 9,
    )
    om.request_cancel(timed.client_id)
    om.reject_cancel(timed.client_id, "too late", ts_ns=55)
    assert (timed.reason, timed.updated_ns) == ("too late", 55)
    assert om.reject_cancel("nope", "x") is None

    lost = om.new_order(VENUE, SYMBOL, Side.BUY, 5, 97)
    om.mark_unknown(lost.client_id, "")
    assert lost.extra["status_unknown"] == "status unknown"


# ---------------------------------------------------------------------------------------
# Journal records hold what changed; restore and readers rebuild the whole order
# ---------------------------------------------------------------------------------------


def _life(om: OrderManager, restored: bool = False) -> list[Callable[[], object]]:
    """Three orders (or, ``restored``, the three a restored manager holds), then one step
    per list item: acks, partial and late fills, a rejected and a confirmed cancel, a
    rejected replace, an unknown status."""
    if restored:
        a, b, c = om.all_orders()[:3]  # in the order of their first records
    else:
        a = om.new_order(VENUE, SYMBOL, Side.BUY, 10, 100, strategy="mm")
        b = om.new_order(VENUE, SYMBOL, Side.SELL, 10, 110, strategy="mm", level=1)
        c = om.new_order(VENUE, SYMBOL, Side.BUY, 5, 99)
    r = om.get("qf-repl-1") or Order("qf-repl-1", VENUE, SYMBOL, Side.SELL, 10, 111)
    return [
        lambda: om.apply_update(report(a, S.OPEN, exchange_id="XA")),
        lambda: om.apply_update(report(b, S.OPEN, exchange_id="XB")),
        lambda: om.apply_fill(fill_for(a, 3, "life-1")),
        lambda: om.request_cancel(a.client_id),
        lambda: om.reject_cancel(a.client_id, "too late"),
        lambda: om.request_replace(b.client_id, r),
        lambda: om.reject_cancel(b.client_id, "would cross"),
        lambda: om.mark_unknown(c.client_id, "place timed out"),
        lambda: om.apply_update(report(c, S.OPEN, exchange_id="XC")),
        lambda: om.request_cancel(a.client_id),
        lambda: om.apply_update(report(a, S.CANCELLED)),
        lambda: om.apply_fill(fill_for(a, 2, "life-2")),
        lambda: om.apply_fill(fill_for(b, 10, "life-3")),
        lambda: om.request_cancel(c.client_id),
        lambda: om.apply_update(report(c, S.OPEN, reason="cancel rejected")),
    ]


def test_records_after_the_first_hold_only_what_changed() -> None:
    journal = MemoryJournal()
    om = make_manager(journal)
    for step in _life(om):
        step()
    orders = [r for r in journal.records if r.payload.get("order")]
    firsts = [r for r in orders if r.kind == "order"]
    assert len(firsts) == 4 and all(r.payload["format"] == 2 for r in firsts)
    assert len(firsts[0].payload["order"]) == len(order_to_dict(om.all_orders()[0]))
    # A record keeps what it said when it was written.
    assert [r.payload["order"]["status"] for r in firsts] == ["pending_new"] * 4
    ack = journal.records[3]
    assert ack.payload["order"] == {
        "client_id": ack.payload["order"]["client_id"],
        "status": "open",
        "exchange_id": "XA",
        "updated_ns": 1,
    }
    assert ack.payload["update"] == {
        "status": "open",
        "ts_ns": 1,
        "exchange_id": "XA",
    }
    cancel = next(r for r in orders if r.payload["order"]["status"] == "pending_cancel")
    assert cancel.payload["prior"] == "partially_filled"
    later = [r for r in orders if r.kind != "order"]
    assert all("client_id" in r.payload["order"] and "meta" not in r.payload for r in later)
    assert all(len(r.payload["order"]) <= 5 for r in later)


@pytest.mark.parametrize("cut", range(16))
def test_a_manager_restored_mid_life_journals_what_an_uninterrupted_one_does(cut: int) -> None:
    whole = MemoryJournal()
    om = make_manager(whole)
    for step in _life(om):
        step()

    first = MemoryJournal()
    crashed = make_manager(first)
    for step in _life(crashed)[:cut]:
        step()
    second = MemoryJournal()
    resumed = make_manager(second)
    used = resumed.restore(first.read(kinds=("order", "order_update", "fill")))
    assert used == len(first.records)
    assert state(resumed) == state(crashed)
    # The rest of the life on the restored orders: the same records, field for field.
    for step in _life(resumed, restored=True)[cut:]:
        step()
    assert first.records + second.records == whole.records
    assert state(resumed) == state(om)
    assert order_states(whole.records) == {o.client_id: order_to_dict(o) for o in om.all_orders()}
