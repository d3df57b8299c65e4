"""The reconciler (framework/reconcile.py) on its own: a real order manager, portfolio and
journal against a venue whose REST answers the test sets. The whole-run paths (resume,
crash recovery, a split run's remote venue) are in tests/adapters/test_crash_recovery.py
and tests/test_split_reconcile.py; these pin each rule of a check."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from loguru import logger
from memory_journal import MemoryJournal

from quoteforge.clock import NS, SimClock
from quoteforge.exchange import CancelOrder, ExchangeAdapter, OrderAction, VenueSink
from quoteforge.model import Fill, Instrument, Liquidity, Order, OrderStatus, OrderUpdate, Side
from quoteforge.orders import OrderManager
from quoteforge.portfolio import Portfolio
from quoteforge.reconcile import RECONCILE_GRACE_NS, UNANSWERED_NS, Reconciler

VENUE, SYMBOL = "ex", "BTCUSDT"
MARKET = f"{VENUE}:{SYMBOL}"
START = 1_700_000_000 * NS


class Venue(ExchangeAdapter):
    """A venue's REST answers as the test sets them; what the reconciler sends it."""

    def __init__(self, name: str = VENUE, *, reports: bool = True) -> None:
        self.name = name
        self.open: list[OrderUpdate] | None = [] if reports else None
        self.fills: list[Fill] | None = [] if reports else None
        self.balances: dict[str, Decimal] | Exception | None = {} if reports else None
        self.sent: list[OrderAction] = []
        self.fills_since: list[int] = []

    async def connect(self, sink: VenueSink) -> None:
        return None

    def submit(self, actions: Any) -> None:
        self.sent.extend(actions)

    async def close(self) -> None:
        return None

    async def fetch_open_orders(self) -> list[OrderUpdate] | None:
        return None if self.open is None else list(self.open)

    async def fetch_fills(self, since_ns: int) -> list[Fill] | None:
        self.fills_since.append(since_ns)
        return None if self.fills is None else list(self.fills)

    async def fetch_balances(self) -> dict[str, Decimal] | None:
        if isinstance(self.balances, Exception):
            raise self.balances
        return None if self.balances is None else dict(self.balances)


def instrument(symbol: str = SYMBOL, base: str = "BTC", venue: str = VENUE) -> Instrument:
    return Instrument(venue, symbol, base, "USDT", Decimal("0.01"), Decimal("0.001"))


class Check:
    def __init__(self, *venues: Venue, mode: str = "sim", extra: Sequence[Instrument] = ()) -> None:
        self.clock = SimClock(START)
        self.journal = MemoryJournal()
        self.orders = OrderManager(self.journal, self.clock, "qf", session="s1")
        instruments = [instrument(), *extra]
        self.portfolio = Portfolio(instruments)
        self.venues = {v.name: v for v in venues}
        self.warnings: list[str] = []
        self.traced: list[tuple[str | None, str, str]] = []
        self.reconciler = Reconciler(
            run_id="r1",
            mode=mode,
            venues=dict(self.venues),
            orders=self.orders,
            portfolio=self.portfolio,
            instruments={i.key: i for i in instruments},
            journal=self.journal,
            clock=self.clock,
            log=logger,
            trace_event=lambda *event: self.traced.append(event),
        )

    def run(self, since_ns: int = 0, *, periodic: bool = False) -> dict[str, int]:
        sink = logger.add(self.warnings.append, level="WARNING", format="{message}")
        try:
            return asyncio.run(self.reconciler.reconcile(since_ns, periodic=periodic))
        finally:
            logger.remove(sink)

    def order(self, lots: int = 10, price: int = 100) -> Order:
        return self.orders.new_order(VENUE, SYMBOL, Side.BUY, lots, price)

    def ack(self, order: Order) -> None:
        self.orders.apply_update(
            OrderUpdate(VENUE, order.client_id, OrderStatus.OPEN, self.clock.now_ns())
        )

    def later(self, seconds: float) -> None:
        self.clock.run_until(self.clock.now_ns() + int(seconds * NS))


def fill(client_id: str, lots: int, fill_id: str, price: int = 100) -> Fill:
    return Fill(
        venue=VENUE,
        symbol=SYMBOL,
        fill_id=fill_id,
        client_id=client_id,
        side=Side.BUY,
        price_ticks=price,
        qty_lots=lots,
        fee=Decimal("0.001"),
        fee_asset="USDT",
        liquidity=Liquidity.MAKER,
        ts_ns=START,
    )


def venue_report(order: Order, status: OrderStatus = OrderStatus.OPEN) -> OrderUpdate:
    return OrderUpdate(VENUE, order.client_id, status, START, symbol=SYMBOL)


def test_missed_fills_are_booked_once_and_fills_of_our_orders_unknown_here_still_count() -> None:
    venue = Venue()
    c = Check(venue)
    mine = c.order()
    c.ack(mine)
    c.orders.apply_fill(fill(mine.client_id, 3, "seen"))  # the run saw this one
    c.portfolio.apply_fill(fill(mine.client_id, 3, "seen"))
    assert venue.fills is not None
    venue.fills += [
        fill(mine.client_id, 3, "seen"),
        fill(mine.client_id, 4, "missed"),
        # One of ours (the run's prefix and session) whose journal record was lost...
        fill("qf-s1-zz", 2, "orphan"),
        # ... and trades that are not this run's: another client on the account, an
        # earlier run of the same name (another session), a venue that gave no id.
        fill("other-bot-1", 5, "foreign"),
        fill("qf-s0-1", 6, "earlier run"),
        fill("order:12345", 7, "unnamed"),
        # A settlement of the run's holdings names no order: it is the run's.
        fill("", 1, "settlement"),
    ]
    venue.open = [venue_report(mine, OrderStatus.PARTIALLY_FILLED)]
    c.later(120)
    counts = c.run(since_ns=START + 100 * NS)
    assert counts["missed_fills"] == 3 and counts["foreign_fills"] == 3
    assert mine.filled_lots == 7
    assert c.portfolio.position_lots(MARKET) == 3 + 4 + 2 + 1
    assert venue.fills_since == [START + 40 * NS]  # a minute before the gap began
    assert not [r for r in c.journal.records if r.kind == "fill" and "foreign" in str(r.payload)]
    # Asked again, nothing is booked twice.
    assert c.run()["missed_fills"] == 0
    assert c.portfolio.position_lots(MARKET) == 10


def test_orders_the_venue_lists_are_adopted_and_the_others_closed() -> None:
    venue = Venue()
    c = Check(venue)
    listed, gone, done = c.order(), c.order(price=99), c.order(lots=5, price=98)
    for order in (listed, gone, done):
        c.ack(order)
    c.orders.apply_fill(fill(done.client_id, 5, "d1", 98))
    venue.open = [venue_report(listed)]
    c.later(60)
    counts = c.run()
    assert counts == {"missed_fills": 0, "closed": 1, "orphans_cancelled": 0, "adopted": 1}
    assert listed.status is OrderStatus.OPEN
    assert gone.status is OrderStatus.CANCELLED
    assert gone.reason == "not open at the venue on reconciliation"
    assert done.status is OrderStatus.FILLED
    [record] = [r for r in c.journal.records if r.kind == "reconcile"]
    assert record.payload == counts


def test_missed_fills_come_first_so_an_order_they_complete_is_filled_not_cancelled() -> None:
    venue = Venue()
    c = Check(venue)
    order = c.order(lots=5)
    c.ack(order)
    assert venue.fills is not None
    venue.fills.append(fill(order.client_id, 5, "all"))  # the fill the run missed
    c.later(60)
    counts = c.run()
    assert (counts["missed_fills"], counts["closed"]) == (1, 0)
    assert order.status is OrderStatus.FILLED


def test_while_trading_orders_in_flight_or_younger_than_the_grace_are_not_judged() -> None:
    venue = Venue()
    c = Check(venue)
    unacked = c.order()
    old = c.order(price=99)
    c.ack(old)
    c.later(RECONCILE_GRACE_NS / NS)  # old is exactly at the grace now
    young = c.order(price=98)
    c.ack(young)
    c.later(1)  # young is 1 s old, old is grace + 1 s
    counts = c.run(periodic=True)
    assert counts["closed"] == 1 and old.status is OrderStatus.CANCELLED
    assert unacked.status is OrderStatus.PENDING_NEW
    assert young.status is OrderStatus.OPEN
    # At a start or a resume (not periodic) the venue's snapshot decides for all.
    assert c.run()["closed"] == 2
    assert unacked.status is young.status is OrderStatus.CANCELLED


def test_an_order_no_report_answered_for_a_minute_is_judged_while_trading() -> None:
    """Its request or its acknowledgement was lost (a split run's intent sent to nobody):
    left pending, the execution policy would never replace it and its quote's place
    would stay empty for the rest of the run."""
    venue = Venue()
    c = Check(venue)
    lost = c.order()
    c.later(UNANSWERED_NS / NS - 1)
    assert c.run(periodic=True)["closed"] == 0 and lost.status is OrderStatus.PENDING_NEW
    c.later(1)
    assert c.run(periodic=True)["closed"] == 1
    assert lost.status is OrderStatus.CANCELLED
    assert lost.reason == "not open at the venue on reconciliation"


def test_an_order_exactly_at_the_grace_is_judged() -> None:
    venue = Venue()
    c = Check(venue)
    order = c.order()
    c.ack(order)
    c.later(RECONCILE_GRACE_NS / NS)
    assert c.run(periodic=True)["closed"] == 1


def test_orders_made_while_the_venue_is_asked_are_never_judged() -> None:
    venue = Venue()
    c = Check(venue)

    async def scenario() -> dict[str, int]:
        made: list[Order] = []
        original = venue.fetch_open_orders

        async def slow() -> list[OrderUpdate] | None:
            made.append(c.order())  # the engine quotes while the answer travels
            return await original()

        venue.fetch_open_orders = slow  # type: ignore[method-assign]
        counts = await c.reconciler.reconcile(0)
        assert made[0].status is OrderStatus.PENDING_NEW
        return counts

    assert asyncio.run(scenario())["closed"] == 0


def test_unknown_orders_of_ours_are_cancelled_and_other_orders_left_alone() -> None:
    venue = Venue()
    c = Check(venue)
    ours = OrderUpdate(VENUE, "qf-s1-zz", OrderStatus.OPEN, START, symbol=SYMBOL)
    manual = OrderUpdate(VENUE, "web_abc", OrderStatus.OPEN, START, symbol=SYMBOL)
    similar = OrderUpdate(VENUE, "qfx-1", OrderStatus.OPEN, START, symbol=SYMBOL)
    venue.open = [ours, manual, similar]
    counts = c.run()
    assert counts["orphans_cancelled"] == 1
    assert venue.sent == [CancelOrder("qf-s1-zz", VENUE, SYMBOL)]
    assert any("qf-s1-zz" in w and "cancelling it" in w for w in c.warnings)


def test_a_venue_that_cannot_report_is_left_alone_and_said_so_once() -> None:
    blind, seeing = Venue("blind", reports=False), Venue()
    c = Check(blind, seeing)
    on_blind = c.orders.new_order("blind", SYMBOL, Side.BUY, 10, 100)
    c.ack(on_blind)
    gone = c.order()
    c.ack(gone)
    c.later(60)
    assert c.run()["closed"] == 1
    assert c.run()["closed"] == 0
    assert gone.status is OrderStatus.CANCELLED
    assert on_blind.status is OrderStatus.OPEN
    said = [w for w in c.warnings if w.startswith("blind: the venue adapter cannot report")]
    assert len(said) == 2  # fills and open orders, each once over two checks
    assert any("open orders" in w and "left alone" in w for w in said)


@pytest.mark.parametrize("periodic", [False, True])
def test_every_check_is_journaled_with_its_counts(periodic: bool) -> None:
    c = Check(Venue())
    c.run(periodic=periodic)
    c.later(1)
    c.run(periodic=periodic)
    records = [r for r in c.journal.records if r.kind == "reconcile"]
    assert len(records) == 2 and records[0].event_id != records[1].event_id


def test_live_balance_drift_beyond_a_lot_is_reported_and_the_venue_stays_the_truth() -> None:
    venue = Venue()
    c = Check(venue, mode="live")
    mine = c.order(lots=6)
    c.ack(mine)
    c.orders.apply_fill(fill(mine.client_id, 2, "b1"))
    c.portfolio.apply_fill(fill(mine.client_id, 2, "b1"))
    venue.open = [venue_report(mine, OrderStatus.PARTIALLY_FILLED)]
    venue.balances = {"BTC": Decimal("1.002"), "USDT": Decimal("5000")}
    c.run()  # the first check takes the start: 1.002 held less our position 0.002
    assert c.traced == [] and c.warnings == []
    # We bought 0.002 BTC more and the balance shows it: no drift.
    c.orders.apply_fill(fill(mine.client_id, 2, "b2"))
    c.portfolio.apply_fill(fill(mine.client_id, 2, "b2"))
    venue.balances = {"BTC": Decimal("1.004")}
    c.run()
    assert c.traced == []
    # Less than a lot off: rounding, not drift.
    venue.balances = {"BTC": Decimal("1.0049")}
    c.run()
    assert c.traced == []
    # A deposit of exactly one lot is drift.
    venue.balances = {"BTC": Decimal("1.005")}
    c.run()
    assert c.traced == [(MARKET, "balance_drift", "BTC 0.001")]
    [warning] = [w.strip() for w in c.warnings if "differs from start" in w]
    assert warning == "ex: BTC balance 1.005 differs from start 1.000 + our position 0.004 by 0.001"


def test_balances_that_cannot_be_attributed_or_read_are_not_judged() -> None:
    venue, other = Venue(), Venue("other")
    eth_here = instrument("ETHUSDT", "ETH")
    btc_twice = instrument("BTCUSDC")  # BTC on two markets of this venue
    eth_elsewhere = instrument("ETHUSDT", "ETH", venue="other")
    c = Check(venue, other, mode="live", extra=[eth_here, btc_twice, eth_elsewhere])
    venue.balances = {"BTC": Decimal("1"), "ETH": Decimal("2")}
    other.balances = {}
    c.run()
    venue.balances = {"BTC": Decimal("9"), "ETH": Decimal("2.5")}
    other.balances = {"ETH": Decimal("7")}  # first seen now: its start
    c.run()
    assert c.traced == [(eth_here.key, "balance_drift", "ETH 0.5")]
    # A venue that cannot answer now is logged and skipped; one that cannot report
    # balances at all is said once.
    venue.balances = ConnectionError("REST 503")
    blind = Venue("blind", reports=False)
    c2 = Check(venue, blind, mode="live")
    c2.run()
    c2.run()
    assert sum("balances unavailable: REST 503" in w for w in c2.warnings) == 2
    assert sum("cannot report its balances" in w for w in c2.warnings) == 1
    assert c2.traced == []
    # Not live (a paper or sim run): balances are not asked for.
    venue.balances = None
    c3 = Check(venue)
    c3.run()
    assert not [w for w in c3.warnings if "balances" in w]


def test_periodic_checks_report_repairs_and_survive_a_failing_venue() -> None:
    venue = Venue()
    c = Check(venue)
    gone = c.order()
    c.ack(gone)
    c.later(60)
    calls = 0
    original = venue.fetch_open_orders

    async def flaky() -> list[OrderUpdate] | None:
        nonlocal calls
        calls += 1
        c.later(1)  # each check at its own time, so each is its own journal event
        if calls == 1:
            raise ConnectionError("REST 503")
        return await original()

    venue.fetch_open_orders = flaky  # type: ignore[method-assign]
    first_check_at = c.clock.now_ns()

    async def scenario() -> None:
        checks = asyncio.create_task(c.reconciler.every(0.02))
        while calls < 4:
            await asyncio.sleep(0.01)
        checks.cancel()

    sink = logger.add(c.warnings.append, level="WARNING", format="{message}")
    infos: list[str] = []
    info_sink = logger.add(infos.append, level="INFO", format="{message}")
    try:
        asyncio.run(scenario())
    finally:
        logger.remove(sink)
        logger.remove(info_sink)
    warned = [w.strip() for w in c.warnings if "periodic reconciliation" in w]
    assert warned[0] == "periodic reconciliation failed: REST 503; retrying later"
    # The repair is said once; later checks that only adopt say nothing.
    assert warned[1:] == ["periodic reconciliation repaired: {'closed': 1}"]
    assert gone.status is OrderStatus.CANCELLED
    # Each check looks for fills from two intervals (and a minute) back.
    assert venue.fills_since[0] == first_check_at - int(0.04 * NS) - 60 * NS
    assert not any(i.startswith("reconciled with the venues") for i in infos)
    assert len([r for r in c.journal.records if r.kind == "reconcile"]) >= 3


def test_a_check_at_a_start_or_resume_says_what_it_did() -> None:
    c = Check(Venue())
    infos: list[str] = []
    sink = logger.add(infos.append, level="INFO", format="{message}")
    try:
        asyncio.run(c.reconciler.reconcile())
    finally:
        logger.remove(sink)
    assert [i.strip() for i in infos if i.startswith("reconciled")] == [
        "reconciled with the venues: "
        "{'missed_fills': 0, 'closed': 0, 'orphans_cancelled': 0, 'adopted': 0}"
    ]
