"""Conformance kit for exchange adapters: a pytest plugin with fixtures and the scenarios
every live adapter must pass against its local replica venue.

Use it with ``pytest -p quoteforge.exchanges.testing.conformance`` (or import ``venue_harness``
into a conftest), define a ``conformance_kit`` fixture returning a ``VenueKit``, and run::

    @pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
    async def test_conformance(venue_harness, scenario):
        await scenario(venue_harness)

A kit whose replica can serve a real recording (``make_recording_replica`` and
``recording``) also runs ``RECORDED_SCENARIOS`` on ``recorded_venue_harness``: the
adapter over the venue's real bytes, end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from quoteforge.book import BookState, L2Book
from quoteforge.clock import LiveClock
from quoteforge.exchange import (
    CancelAll,
    CancelOrder,
    ExchangeAdapter,
    PlaceOrder,
    ReplaceOrder,
    VenueContext,
)
from quoteforge.exchanges.testing.replica import ReplicaServer
from quoteforge.model import (
    Fill,
    Funding,
    Instrument,
    Offer,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
    VenuePosition,
)

__all__ = [
    "FAST_PARAMS",
    "RECORDED_SCENARIOS",
    "SCENARIOS",
    "DerivativesRecordingSink",
    "Harness",
    "RecordingSink",
    "VenueKit",
    "recorded_venue_harness",
    "venue_harness",
]

FAST_PARAMS: dict[str, Any] = {
    "request_timeout_s": 0.5,
    "reconnect_initial_s": 0.05,
    "reconnect_max_s": 0.3,
    "silence_timeout_s": 0.6,
    "lookup_interval_s": 0.1,
    "max_rate_wait_s": 5.0,
    "start_timeout_s": 5.0,
}
"""Adapter parameters that make the fault scenarios finish in well under a second each."""


class RecordingSink:
    """A ``VenueSink`` that keeps everything it is told."""

    def __init__(self) -> None:
        self.updates: list[OrderUpdate] = []
        self.fills: list[Fill] = []
        self.states: list[tuple[str, str, str, str]] = []
        self.trades: list[tuple[Any, ...]] = []
        self.book_events = 0

    def on_book(self, book: L2Book) -> None:
        self.book_events += 1

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        self.states.append((book.symbol, old, new, reason))

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        self.trades.append((venue, symbol, price_ticks, qty_lots, aggressor, ts_ns))

    def on_order_update(self, update: OrderUpdate) -> None:
        self.updates.append(update)

    def on_offer(self, offer: Offer) -> None:
        """Spot adapters send no offers; kept for the VenueSink contract."""

    def on_fill(self, fill: Fill) -> None:
        self.fills.append(fill)

    def last(self, client_id: str) -> OrderUpdate | None:
        for update in reversed(self.updates):
            if update.client_id == client_id:
                return update
        return None

    def fills_of(self, client_id: str) -> list[Fill]:
        return [f for f in self.fills if f.client_id == client_id]


class DerivativesRecordingSink(RecordingSink):
    """A ``RecordingSink`` that also keeps what a derivatives venue reports
    (``DerivativesSink``): positions and funding payments."""

    def __init__(self) -> None:
        super().__init__()
        self.positions: list[VenuePosition] = []
        self.funding: list[Funding] = []

    def on_position(self, position: VenuePosition) -> None:
        self.positions.append(position)

    def on_funding(self, funding: Funding) -> None:
        self.funding.append(funding)


@dataclass
class VenueKit:
    """How to run one venue's replica and adapter.

    ``make_adapter(replica, params, ctx)`` builds the adapter pointed at the replica
    with ``params`` (``FAST_PARAMS`` plus overrides); ``features`` names optional
    behaviour the scenarios check: ``sequence`` (gap detection), ``checksum``,
    ``replace`` (one-call cancel/replace), ``amend``, ``listen_key`` (a private stream
    on an expiring key: the replica offers ``expire_listen_key(notify=...)``).

    ``make_recording_replica(recording, speed)`` builds a replica that serves a real
    recording of the venue (``recording``) as its market data, ``speed`` times faster
    than recorded; ``RECORDED_SCENARIOS`` need it.
    """

    venue: str
    symbol: str
    make_replica: Callable[[], ReplicaServer]
    make_adapter: Callable[[Any, dict[str, Any], VenueContext], ExchangeAdapter]
    compare_depth: int | None = None
    features: frozenset[str] = frozenset()
    params: dict[str, Any] = field(default_factory=dict)
    make_recording_replica: Callable[[Path, float], ReplicaServer] | None = None
    recording: Path | None = None
    recording_speed: float = 4.0


class Harness:
    """A started replica and a connected adapter, plus helpers the scenarios share."""

    def __init__(
        self, kit: VenueKit, replica: Any, adapter: ExchangeAdapter, sink: RecordingSink
    ) -> None:
        self.kit = kit
        self.replica = replica
        self.adapter = adapter
        self.sink = sink
        self.symbol = kit.symbol
        self._ids = iter(range(1, 1 << 30))

    @property
    def instrument(self) -> Instrument:
        return self.adapter.instruments[self.symbol]

    @property
    def book(self) -> L2Book:
        return self.adapter.books[self.symbol]

    async def wait_for(self, cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
            await asyncio.sleep(0.01)

    def replica_levels(self, side: str) -> list[tuple[int, int]]:
        inst = self.instrument
        book = self.replica.book(self.symbol, self.kit.compare_depth)
        key = "bids" if side == "buy" else "asks"
        return [(inst.price_to_ticks(p), inst.qty_to_lots(q)) for p, q in book[key]]

    def book_matches(self) -> bool:
        depth = self.kit.compare_depth or 100_000
        return (
            self.book.state is BookState.LIVE
            and self.book.top(Side.BUY, depth) == self.replica_levels("buy")
            and self.book.top(Side.SELL, depth) == self.replica_levels("sell")
        )

    async def wait_book_matches(self, timeout: float = 5.0) -> None:
        await self.wait_for(
            self.book_matches, "adapter book LIVE and equal to the replica's", timeout
        )

    def status_is(self, client_id: str, status: OrderStatus) -> Callable[[], bool]:
        """A condition for ``wait_for``: the last report of ``client_id`` has ``status``."""

        def check() -> bool:
            last = self.sink.last(client_id)
            return last is not None and last.status is status

        return check

    def saw(self, old: str, new: str, since: int = 0) -> bool:
        """The book made the transition ``old -> new`` at or after state event ``since``."""
        return any(o == old and n == new for _, o, n, _ in self.sink.states[since:])

    def new_id(self, prefix: str = "qf") -> str:
        return f"{prefix}{next(self._ids)}x{int(time.time() * 1000) % 100000}"

    def passive_price(self, side: Side, ticks_away: int = 40) -> int:
        """A price ``ticks_away`` behind the replica's best on our side (rests, no cross)."""
        bids, asks = self.replica_levels("buy"), self.replica_levels("sell")
        if side is Side.BUY:
            return bids[0][0] - ticks_away
        return asks[0][0] + ticks_away

    def order(
        self,
        side: Side = Side.BUY,
        *,
        lots: int | None = None,
        price: int | None = None,
        tif: TimeInForce = TimeInForce.GTC,
        kind: OrderType = OrderType.LIMIT,
        client_id: str | None = None,
    ) -> Order:
        inst = self.instrument
        if lots is None:
            # Comfortably above any minimum notional.
            px = inst.ticks_to_price(price or self.passive_price(side))
            need = max(inst.min_qty, (inst.min_notional * 3) / px if px else Decimal(0))
            lots = max(1, int(need / inst.lot_size) + 1)
            # Orders go out in whole steps of the venue's order quantity step.
            lots = -(-lots // inst.step_lots) * inst.step_lots
        return Order(
            client_id or self.new_id(),
            self.adapter.name,
            self.symbol,
            side,
            lots,
            None if kind is OrderType.MARKET else (price or self.passive_price(side)),
            order_type=kind,
            tif=tif,
        )

    def accepted(self, client_id: str) -> int:
        """How many orders the replica accepted under this client id."""
        return sum(1 for o in self.replica.accepted if o.client_id == client_id)

    async def place(
        self, order: Order, until: Callable[[OrderUpdate], bool] | None = None, timeout: float = 5.0
    ) -> OrderUpdate:
        self.adapter.submit([PlaceOrder(order)])
        done = until or (lambda u: u.status is not OrderStatus.PENDING_NEW)
        await self.wait_for(
            lambda: any(u.client_id == order.client_id and done(u) for u in self.sink.updates),
            f"report for {order.client_id}",
            timeout,
        )
        last = self.sink.last(order.client_id)
        assert last is not None
        return last


@pytest.fixture
def conformance_kit() -> VenueKit:
    """Override in your conftest: the ``VenueKit`` of the adapter under test."""
    raise pytest.UsageError(
        "define a 'conformance_kit' fixture returning "
        "quoteforge.exchanges.testing.conformance.VenueKit"
    )


@contextlib.asynccontextmanager
async def _connected(
    kit: VenueKit, replica: Any, ready: Callable[[Harness], Awaitable[None]]
) -> AsyncIterator[Harness]:
    """``replica`` started on 127.0.0.1 and the kit's adapter connected to it, until
    ``ready``; both torn down afterwards."""
    await replica.start()
    sink = RecordingSink()
    ctx = VenueContext(
        name=kit.venue,
        clock=LiveClock(),
        seed=1,
        mode="live",
        symbols=[kit.symbol],
        # A replica whose venue needs more than a key and a secret names them all.
        secrets=getattr(replica, "secrets", None)
        or {"api_key": replica.api_key, "api_secret": replica.api_secret},
    )
    adapter = kit.make_adapter(replica, {**FAST_PARAMS, **kit.params}, ctx)
    try:
        await adapter.connect(sink)
        harness = Harness(kit, replica, adapter, sink)
        await ready(harness)
        yield harness
    finally:
        await adapter.close()
        await replica.stop()


@pytest_asyncio.fixture
async def venue_harness(conformance_kit: VenueKit) -> AsyncIterator[Harness]:
    """A replica on 127.0.0.1 and the adapter connected to it, torn down after the test."""
    kit = conformance_kit
    async with _connected(kit, kit.make_replica(), Harness.wait_book_matches) as harness:
        yield harness


@pytest_asyncio.fixture
async def recorded_venue_harness(conformance_kit: VenueKit) -> AsyncIterator[Harness]:
    """A replica serving the kit's real recording and the adapter connected to it, its
    book LIVE; torn down after the test."""
    kit = conformance_kit
    if kit.make_recording_replica is None or kit.recording is None:
        raise pytest.UsageError(
            f"kit {kit.venue!r}: give make_recording_replica and recording to run the "
            "scenarios over a real recording"
        )

    async def live(harness: Harness) -> None:
        await harness.wait_for(
            lambda: harness.book.state is BookState.LIVE, "book LIVE from the recording", 10
        )

    replica = kit.make_recording_replica(kit.recording, kit.recording_speed)
    async with _connected(kit, replica, live) as harness:
        yield harness


# ---------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------


async def book_tracks_replica(h: Harness) -> None:
    """Diffs keep the adapter's book equal to the venue's."""
    await h.replica.churn(h.symbol, 30, seed=3)
    await h.wait_book_matches()


async def order_round_trip(h: Harness) -> None:
    """Place a resting order, get filled partly on the venue, cancel the rest."""
    order = h.order(Side.BUY)
    update = await h.place(order)
    assert update.status is OrderStatus.OPEN, update
    half = h.instrument.lots_to_qty(order.qty_lots // 2 or 1)
    await h.replica.fill_order(order.client_id, half)
    await h.wait_for(lambda: len(h.sink.fills_of(order.client_id)) == 1, "one fill")
    fill = h.sink.fills_of(order.client_id)[0]
    assert fill.price_ticks == order.price_ticks and fill.side is Side.BUY
    h.adapter.submit([CancelOrder(order.client_id, h.adapter.name, h.symbol)])
    await h.wait_for(
        lambda: (
            (u := h.sink.last(order.client_id)) is not None and u.status is OrderStatus.CANCELLED
        ),
        "cancelled",
    )
    last = h.sink.last(order.client_id)
    assert last is not None and last.filled_lots == fill.qty_lots
    assert not h.replica.orders(h.symbol)


async def post_only_would_cross_is_rejected(h: Harness) -> None:
    best_ask = h.replica_levels("sell")[0][0]
    order = h.order(Side.BUY, price=best_ask, tif=TimeInForce.POST_ONLY)
    update = await h.place(order)
    assert update.status is OrderStatus.REJECTED, update
    assert h.accepted(order.client_id) == 0


async def ioc_takes_liquidity(h: Harness) -> None:
    ask_ticks, ask_lots = h.replica_levels("sell")[0]
    order = h.order(Side.BUY, price=ask_ticks, lots=ask_lots, tif=TimeInForce.IOC)
    await h.place(order, until=lambda u: u.status.is_terminal)
    await h.wait_for(
        lambda: sum(f.qty_lots for f in h.sink.fills_of(order.client_id)) == ask_lots, "IOC filled"
    )
    assert h.status_is(order.client_id, OrderStatus.FILLED)()
    await h.wait_book_matches()


async def market_order_fills(h: Harness) -> None:
    order = h.order(Side.SELL, kind=OrderType.MARKET, lots=h.replica_levels("buy")[0][1])
    await h.place(order, until=lambda u: u.status.is_terminal)
    await h.wait_for(lambda: bool(h.sink.fills_of(order.client_id)), "market fill")
    await h.wait_book_matches()


async def cancel_all_cancels_everything(h: Harness) -> None:
    orders = [h.order(Side.BUY), h.order(Side.SELL)]
    for order in orders:
        await h.place(order)
    h.adapter.submit([CancelAll(h.adapter.name, h.symbol)])
    for order in orders:
        await h.wait_for(
            h.status_is(order.client_id, OrderStatus.CANCELLED), f"{order.client_id} cancelled"
        )
    assert not h.replica.orders(h.symbol)


async def replace_swaps_orders(h: Harness) -> None:
    old = h.order(Side.BUY)
    await h.place(old)
    new = h.order(Side.BUY, price=(old.price_ticks or 0) - 1, lots=old.qty_lots)
    h.adapter.submit([ReplaceOrder(old.client_id, new)])
    await h.wait_for(
        h.status_is(old.client_id, OrderStatus.CANCELLED),
        "old cancelled",
    )
    await h.wait_for(
        lambda: (u := h.sink.last(new.client_id)) is not None and u.status is OrderStatus.OPEN,
        "new open",
    )
    assert [o.client_id for o in h.replica.orders(h.symbol)] == [new.client_id]


async def rejected_order_is_reported(h: Harness) -> None:
    await h.replica.reject_next_order()
    order = h.order(Side.BUY)
    update = await h.place(order)
    assert update.status is OrderStatus.REJECTED and update.reason, update
    # The adapter carries on: the next order goes through.
    assert (await h.place(h.order(Side.BUY))).status is OrderStatus.OPEN


async def partial_fill_on_arrival(h: Harness) -> None:
    await h.replica.partial_fill_next("0.5")
    order = h.order(Side.BUY)
    await h.place(order, until=lambda u: u.status is OrderStatus.PARTIALLY_FILLED)
    # The venue fills half, rounded down to its order step.
    half = h.instrument.floor_to_step(order.qty_lots // 2)
    await h.wait_for(
        lambda: sum(f.qty_lots for f in h.sink.fills_of(order.client_id)) == half,
        "half filled",
    )


async def dropped_connection_recovers(h: Harness) -> None:
    """Sockets cut: book STALE, then RESYNCING, then LIVE and equal again; orders go on."""
    mark = len(h.sink.states)
    await h.replica.drop_connections()
    await h.wait_for(lambda: h.saw("LIVE", "STALE", mark), "book LIVE -> STALE")
    await h.replica.churn(h.symbol, 10, seed=5)
    await h.wait_book_matches()
    assert h.saw("STALE", "RESYNCING", mark) and h.saw("RESYNCING", "LIVE", mark)
    assert (await h.place(h.order(Side.SELL))).status is OrderStatus.OPEN


async def silent_socket_is_treated_as_down(h: Harness) -> None:
    silence = float(h.kit.params.get("silence_timeout_s", FAST_PARAMS["silence_timeout_s"]))
    mark = len(h.sink.states)
    await h.replica.go_silent(silence * 2.5)
    await h.wait_for(
        lambda: h.saw("LIVE", "STALE", mark), "book STALE on silence", timeout=silence * 4
    )
    await h.replica.churn(h.symbol, 5, seed=9)
    await h.wait_book_matches(timeout=silence * 10)


async def sequence_gap_resyncs(h: Harness) -> None:
    """A change the venue applied but never sent: detected, resynced, equal again."""
    await h.replica.skip_sequence()
    await h.replica.churn(h.symbol, 6, seed=11)
    await h.wait_book_matches()
    assert any(new == "RESYNCING" for _, _, new, _ in h.sink.states)


async def corrupt_checksum_resyncs(h: Harness) -> None:
    await h.replica.corrupt_checksum()
    await h.replica.churn(h.symbol, 4, seed=13)
    await h.wait_book_matches()
    assert any("checksum" in reason for *_, reason in h.sink.states)


async def rate_limit_429_is_honoured(h: Harness) -> None:
    """Order entry refused by a rate limit: not lost, sent again once allowed, once."""
    await h.replica.fail_http(429, retry_after=1, path=h.replica.order_path)
    order = h.order(Side.BUY)
    update = await h.place(order, timeout=8)
    assert update.status is OrderStatus.OPEN, update
    assert h.accepted(order.client_id) == 1


async def ban_418_is_honoured(h: Harness) -> None:
    await h.replica.fail_http(418, retry_after=1, path=h.replica.order_path)
    order = h.order(Side.SELL)
    update = await h.place(order, timeout=8)
    assert update.status is OrderStatus.OPEN, update
    assert h.accepted(order.client_id) == 1


async def server_error_is_resolved_by_lookup(h: Harness) -> None:
    """A 5xx on order entry: status unknown, looked up by client id, never duplicated."""
    await h.replica.fail_http(503, path=h.replica.order_path)
    order = h.order(Side.BUY)
    update = await h.place(order, until=lambda u: u.status is OrderStatus.OPEN, timeout=8)
    assert update.status is OrderStatus.OPEN
    assert h.accepted(order.client_id) == 1


async def timeout_after_processing_no_duplicate(h: Harness) -> None:
    """The venue took the order but the answer never came: found by lookup, not resent."""
    await h.replica.time_out(after_processing=True, delay=2.0, path=h.replica.order_path)
    order = h.order(Side.BUY)
    await h.place(order, until=lambda u: u.status is OrderStatus.OPEN, timeout=8)
    await asyncio.sleep(0.5)
    assert h.accepted(order.client_id) == 1
    assert [o.client_id for o in h.replica.orders(h.symbol)].count(order.client_id) == 1


async def timeout_before_processing_placed_once(h: Harness) -> None:
    """The request never reached the book: lookups find nothing, one resend places it."""
    await h.replica.time_out(after_processing=False, delay=1.0, path=h.replica.order_path)
    order = h.order(Side.SELL)
    await h.place(order, until=lambda u: u.status is OrderStatus.OPEN, timeout=8)
    await asyncio.sleep(0.3)
    assert h.accepted(order.client_id) == 1


async def venue_down_then_back(h: Harness) -> None:
    """Unreachable for a while: nothing crashes; book and order entry come back."""
    mark = len(h.sink.states)
    await h.replica.down_for(1.0)
    await h.wait_for(lambda: h.saw("LIVE", "STALE", mark), "book LIVE -> STALE")
    order = h.order(Side.BUY)
    update = await h.place(
        order, until=lambda u: u.status is not OrderStatus.PENDING_NEW, timeout=10
    )
    assert update.status is OrderStatus.OPEN, update
    assert h.accepted(order.client_id) == 1
    await h.wait_book_matches(timeout=10)


async def fills_missed_while_private_stream_down_are_recovered(h: Harness) -> None:
    order = h.order(Side.BUY)
    await h.place(order)
    await h.replica.drop_connections()
    await h.replica.fill_order(order.client_id)  # happens while we are disconnected
    await h.wait_for(
        lambda: sum(f.qty_lots for f in h.sink.fills_of(order.client_id)) == order.qty_lots,
        "fill recovered after reconnect",
        timeout=8,
    )
    await h.wait_for(
        h.status_is(order.client_id, OrderStatus.FILLED),
        "filled",
    )
    assert len({f.fill_id for f in h.sink.fills}) == len(h.sink.fills)


async def expired_user_stream_key_is_renewed(h: Harness) -> None:
    """The private stream's key expires (``replica.expire_listen_key``), first with the
    venue's event, then silently (the stream goes quiet, pings too): a fill after each
    still reaches the adapter, through a renewed key or reconciliation."""
    for notify in (True, False):
        await h.replica.expire_listen_key(notify=notify)
        if not notify:
            await h.replica.go_silent(1.0)
            await asyncio.sleep(1.2)
        order = h.order(Side.BUY)
        await h.place(order, until=lambda u: u.status is OrderStatus.OPEN, timeout=10)
        await h.replica.fill_order(order.client_id)
        await h.wait_for(
            lambda o=order: bool(h.sink.fills_of(o.client_id)),  # type: ignore[misc]
            "the fill after the key expired",
            timeout=10,
        )
    assert len({f.fill_id for f in h.sink.fills}) == len(h.sink.fills)


SCENARIOS: list[Callable[[Harness], Awaitable[None]]] = [
    book_tracks_replica,
    order_round_trip,
    post_only_would_cross_is_rejected,
    ioc_takes_liquidity,
    market_order_fills,
    cancel_all_cancels_everything,
    replace_swaps_orders,
    rejected_order_is_reported,
    partial_fill_on_arrival,
    dropped_connection_recovers,
    silent_socket_is_treated_as_down,
    sequence_gap_resyncs,
    corrupt_checksum_resyncs,
    rate_limit_429_is_honoured,
    ban_418_is_honoured,
    server_error_is_resolved_by_lookup,
    timeout_after_processing_no_duplicate,
    timeout_before_processing_placed_once,
    venue_down_then_back,
    fills_missed_while_private_stream_down_are_recovered,
    expired_user_stream_key_is_renewed,
]
"""Every scenario; a kit without a feature (``sequence``/``checksum``/``listen_key``)
skips the scenario that needs it through ``needs``."""

# ---------------------------------------------------------------------------------------
# Scenarios over a real recording
# ---------------------------------------------------------------------------------------


def _states_after_live(h: Harness) -> list[tuple[str, str]]:
    """Book state changes after the book first went LIVE."""
    states = [(old, new) for _, old, new, _ in h.sink.states]
    first = next((i for i, (_, new) in enumerate(states) if new == "LIVE"), None)
    assert first is not None, f"the book never went LIVE: {states}"
    return states[first + 1 :]


async def recorded_book_stays_live(h: Harness) -> None:
    """The venue's real diffs chain on the real snapshot: the book stays LIVE, never
    crossed, and keeps following the recorded market."""
    played = h.replica.played
    seen = h.sink.book_events
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        book = h.book
        bid, ask = book.best_bid(), book.best_ask()
        assert bid is not None and ask is not None, "both sides of the book are known"
        assert bid[0] < ask[0], f"crossed book {bid} / {ask}"
        await asyncio.sleep(0.05)
    assert h.replica.played > played + 10, "the recording kept playing"
    assert h.sink.book_events > seen + 10, "the adapter kept applying real diffs"
    assert _states_after_live(h) == [], "the book stayed LIVE"


async def recorded_trades_fill_resting_quotes(h: Harness) -> None:
    """Quotes at the best bid and ask of the real book rest; recorded trades that
    reach them fill them (reported once each, at our price, as maker); cancelling the
    rest leaves nothing open."""
    placed: list[Order] = []
    deadline = time.monotonic() + 12.0
    while not h.sink.fills and time.monotonic() < deadline:
        working = {o.client_id for o in h.replica.orders(h.symbol)}
        for side in (Side.BUY, Side.SELL):
            best = h.book.best_bid() if side is Side.BUY else h.book.best_ask()
            assert best is not None
            resting = [o for o in placed if o.side is side and o.client_id in working]
            if resting and resting[-1].price_ticks == best[0]:
                continue
            # Not quoting at the best any more (the market moved away, or a post-only
            # order was refused): quote there again.
            for old in resting:
                h.adapter.submit([CancelOrder(old.client_id, h.adapter.name, h.symbol)])
            order = h.order(side, price=best[0], tif=TimeInForce.POST_ONLY)
            placed.append(order)
            h.adapter.submit([PlaceOrder(order)])
        await asyncio.sleep(0.2)
    assert h.sink.fills, "a recorded trade filled one of our quotes"
    h.adapter.submit([CancelAll(h.adapter.name, h.symbol)])
    await h.wait_for(lambda: not h.replica.orders(h.symbol), "nothing left open", 5)
    by_id = {o.client_id: o for o in placed}
    for fill in h.sink.fills:
        order = by_id[fill.client_id]
        assert fill.price_ticks == order.price_ticks and fill.side is order.side
        assert fill.liquidity.value == "maker"
    assert len({f.fill_id for f in h.sink.fills}) == len(h.sink.fills)
    for client_id, order in by_id.items():
        got = sum(f.qty_lots for f in h.sink.fills_of(client_id))
        assert got <= order.qty_lots
    assert _states_after_live(h) == [], "the book stayed LIVE"


RECORDED_SCENARIOS: list[Callable[[Harness], Awaitable[None]]] = [
    recorded_book_stays_live,
    recorded_trades_fill_resting_quotes,
]
"""Scenarios over the venue's real bytes (``recorded_venue_harness``)."""

_NEEDS: dict[Callable[[Harness], Awaitable[None]], str] = {
    sequence_gap_resyncs: "sequence",
    corrupt_checksum_resyncs: "checksum",
    expired_user_stream_key_is_renewed: "listen_key",
}


def needs(scenario: Callable[[Harness], Awaitable[None]]) -> str | None:
    """The kit feature a scenario requires, if any."""
    return _NEEDS.get(scenario)
