"""The fill simulator and the book's state: nothing is taken from a book that is not LIVE,
and a book rebuilt by a resync moves no queue as if everyone ahead had cancelled; trades
printed meanwhile still count. Driven through the replay venue (and a paper venue over
it) with recorded Binance snapshots, diffs and trades."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from quoteforge.book import BookState, L2Book
from quoteforge.clock import SimClock
from quoteforge.exchange import ExchangeAdapter, PlaceOrder, VenueContext
from quoteforge.exchanges.fillsim import FillSimParams, FillSimulator
from quoteforge.exchanges.paper import wrap_for_paper
from quoteforge.exchanges.recording import RecordingWriter
from quoteforge.exchanges.replay import ReplayExchange, ReplayParams
from quoteforge.model import (
    Fill,
    Instrument,
    Liquidity,
    Order,
    OrderStatus,
    OrderUpdate,
    Side,
    TimeInForce,
)

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
SYMBOL = "BTC/USDT"
# Quantities are read at Binance's 8 decimals: one lot is 0.00000001 BTC.
BTC = {SYMBOL: {"tick_size": "0.01", "qty_step": "0.00001"}}
SNAP = "rest:/api/v3/depth?symbol=BTCUSDT"
DEPTH = "btcusdt@depth@100ms"
TRADE = "btcusdt@trade"
MODELS = ["front", "back", "proportional", "probabilistic"]


class Sink:
    """What the venue reports."""

    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []
        self.updates: list[OrderUpdate] = []
        self.fills: list[Fill] = []

    def on_book(self, book: L2Book) -> None: ...

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        self.states.append((old, new))

    def on_trade(self, *args: Any) -> None: ...

    def on_order_update(self, update: OrderUpdate) -> None:
        self.updates.append(update)

    def on_fill(self, fill: Fill) -> None:
        self.fills.append(fill)

    def on_offer(self, offer: Any) -> None: ...

    def request_stop(self, reason: str) -> None: ...


def snapshot(update_id: int, bids: list[list[str]], asks: list[list[str]]) -> str:
    return json.dumps({"lastUpdateId": update_id, "bids": bids, "asks": asks})


def depth(first: int, last: int, bids: list[list[str]], asks: list[list[str]]) -> str:
    event = {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": first, "u": last}
    return json.dumps({**event, "b": bids, "a": asks})


def trade(price: str, qty: str, *, seller_aggressor: bool) -> str:
    # "m": the buyer was the maker, i.e. a sell hit the bid.
    return json.dumps({"e": "trade", "s": "BTCUSDT", "p": price, "q": qty, "m": seller_aggressor})


FIRST = snapshot(
    100,
    [["100.00", "0.50000"], ["99.99", "1.00000"]],
    [["100.02", "0.40000"], ["100.03", "1.00000"]],
)
# u=105 does not chain on u=101: a sequence gap, the book goes RESYNCING until SECOND.
GAP = depth(105, 106, [["99.98", "0.2"]], [])


class Replay:
    """A replay venue over a recording written from ``lines`` (ms after the start)."""

    def __init__(
        self,
        tmp_path: Path,
        lines: list[tuple[int, str, str]],
        *,
        cancel_position: str = "front",
        stale_after_ms: float | None = None,
        paper: bool = False,
    ) -> None:
        path = tmp_path / "recording.jsonl"
        with RecordingWriter(path) as writer:
            for ms, stream, raw in lines:
                writer.write("binance", stream, raw, t_ns=T0 + ms * MS)
        latency = {"market_data_ms": 0, "order_ms": 1, "jitter_ms": 0}
        params: dict[str, Any] = {
            "protocol": "binance_spot",
            "markets": BTC,
            "data": str(path),
            "latency": latency,
            "cancel_position": cancel_position,
            "stale_after_ms": stale_after_ms,
            "notify": "every",
        }
        self.clock = SimClock(10**18)
        ctx = VenueContext("rec", self.clock, seed=3, mode="backtest", symbols=[], extra={})
        replay = ReplayExchange(ReplayParams.model_validate(params), ctx)
        self.venue: ExchangeAdapter = replay
        self.fills = replay.fills
        if paper:
            wrapped = wrap_for_paper(
                replay, {"latency": latency, "cancel_position": cancel_position}, ctx
            )
            self.venue = wrapped
            self.fills = wrapped.fills
        self.sink = Sink()
        asyncio.run(self.venue.connect(self.sink))
        self.start = self.clock.now_ns()

    def at(self, ms: int) -> None:
        self.clock.run_until(self.start + ms * MS)

    def place(self, order: Order) -> None:
        self.venue.submit([PlaceOrder(order)])

    def state(self) -> str:
        return self.venue.books[SYMBOL].state.value

    def statuses(self, client_id: str) -> list[OrderStatus]:
        return [u.status for u in self.sink.updates if u.client_id == client_id]


def bid(client_id: str, price: int, lots: int) -> Order:
    return Order(client_id, "rec", SYMBOL, Side.BUY, lots, price, tif=TimeInForce.POST_ONLY)


def ioc_buy(client_id: str, limit: int, lots: int) -> Order:
    return Order(client_id, "rec", SYMBOL, Side.BUY, lots, limit, tif=TimeInForce.IOC)


# -- taking ----------------------------------------------------------------------------------
def test_an_order_that_would_take_from_a_resyncing_book_is_rejected_not_filled(
    tmp_path: Path,
) -> None:
    """The book still shows 0.4 at 100.02 when the gap is found; the snapshot that ends
    the resync shows the asks gone to 100.05. Nothing is taken from the stale 100.02."""
    run = Replay(
        tmp_path,
        [
            (0, SNAP, FIRST),
            (20, DEPTH, GAP),
            (100, SNAP, snapshot(106, [["100.00", "0.2"]], [["100.05", "1.0"]])),
        ],
    )
    run.at(30)
    assert run.state() == "RESYNCING"
    run.place(ioc_buy("stale", 10_005, 10_000_000))
    run.at(50)
    assert run.sink.fills == []
    assert run.statuses("stale") == [OrderStatus.REJECTED]
    assert "RESYNCING" in run.sink.updates[0].reason
    run.at(150)  # LIVE again: the same order takes what the rebuilt book offers
    run.place(ioc_buy("live", 10_005, 10_000_000))
    run.at(200)
    assert [(f.client_id, f.price_ticks, f.qty_lots, f.liquidity) for f in run.sink.fills] == [
        ("live", 10_005, 10_000_000, Liquidity.TAKER)
    ]


def test_an_order_that_would_take_from_a_stale_book_is_rejected(tmp_path: Path) -> None:
    run = Replay(
        tmp_path,
        [(0, SNAP, FIRST), (500, DEPTH, depth(101, 101, [["100.00", "0.6"]], []))],
        stale_after_ms=100,
    )
    run.at(300)
    assert run.state() == "STALE"
    run.place(ioc_buy("stale", 10_002, 10_000_000))
    run.at(400)
    assert run.sink.fills == []
    assert run.statuses("stale") == [OrderStatus.REJECTED]
    run.at(600)
    assert run.state() == "LIVE"  # the next diff chained on: nothing was missed


# -- queue position across a resync ----------------------------------------------------------
def _grown_then_resynced(snapshot_size: str) -> list[tuple[int, str, str]]:
    """Our bid (placed at 10 ms behind 0.5) sees 1.0 join behind it, then a gap; the
    snapshot that ends the resync shows ``snapshot_size`` at our price."""
    return [
        (0, SNAP, FIRST),
        (50, DEPTH, depth(101, 101, [["100.00", "1.50000"]], [])),
        (60, DEPTH, GAP),
        (100, SNAP, snapshot(106, [["100.00", snapshot_size]], [["100.02", "0.4"]])),
        (200, TRADE, trade("100.00", "0.40000", seller_aggressor=True)),
    ]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("paper", [False, True], ids=["replay", "paper"])
def test_a_rebuilt_book_does_not_move_us_up_as_if_everyone_ahead_cancelled(
    tmp_path: Path, model: str, paper: bool
) -> None:
    """Between the gap and the snapshot 0.5 left our level, and we cannot tell from
    where: the 1.0 behind us may have gone as well as the 0.5 ahead. Read as
    cancellations, "front" moved us to the front and the 0.4 print filled us."""
    run = Replay(tmp_path, _grown_then_resynced("1.00000"), cancel_position=model, paper=paper)
    run.at(10)
    run.place(bid("b", 10_000, 20_000_000))
    run.at(55)
    assert run.fills.queue_ahead("b") == 50_000_000  # 1.0 joined behind us
    run.at(150)
    assert run.sink.states[-2:] == [("LIVE", "RESYNCING"), ("RESYNCING", "LIVE")]
    assert run.fills.queue_ahead("b") == 50_000_000
    run.at(250)
    assert run.sink.fills == []  # the 0.4 print was all ahead of us
    assert run.fills.queue_ahead("b") == 10_000_000


def test_a_rebuilt_level_smaller_than_our_queue_puts_at_most_its_size_ahead(
    tmp_path: Path,
) -> None:
    """More than the visible size cannot be ahead of us: the 0.5 ahead cannot all be
    there when the snapshot shows 0.1 at our price."""
    run = Replay(tmp_path, _grown_then_resynced("0.10000"))
    run.at(10)
    run.place(bid("b", 10_000, 20_000_000))
    run.at(150)
    assert run.fills.queue_ahead("b") == 10_000_000
    run.at(250)
    assert [(f.qty_lots, f.liquidity) for f in run.sink.fills] == [(20_000_000, Liquidity.MAKER)]


# -- what stays as it was --------------------------------------------------------------------
def test_depth_buffered_during_a_resync_moves_no_queue(tmp_path: Path) -> None:
    """While RESYNCING the source applies nothing: events that would empty our level
    wait for the snapshot, and the queue does not move on them."""
    run = Replay(
        tmp_path,
        [
            (0, SNAP, FIRST),
            (20, DEPTH, GAP),
            (30, DEPTH, depth(107, 107, [["100.00", "0"]], [])),
            (100, SNAP, snapshot(106, [["100.00", "0.5"]], [["100.02", "0.4"]])),
        ],
    )
    run.at(10)
    run.place(bid("b", 10_000, 20_000_000))
    run.at(50)
    assert run.state() == "RESYNCING"
    assert run.fills.queue_ahead("b") == 50_000_000
    run.at(150)  # the buffered event (u=107) follows the snapshot: the level is empty
    assert run.state() == "LIVE"
    assert run.fills.queue_ahead("b") == 0


def test_trades_printed_while_the_book_resyncs_still_count(tmp_path: Path) -> None:
    """A print is a fact from the venue whatever our book's state: one at our price
    consumes the queue, one through our price fills what is left of us."""
    run = Replay(
        tmp_path,
        [
            (0, SNAP, FIRST),
            (20, DEPTH, GAP),
            (30, TRADE, trade("100.00", "0.30000", seller_aggressor=True)),
            (40, TRADE, trade("99.99", "0.00100", seller_aggressor=True)),
        ],
    )
    run.at(10)
    run.place(bid("b", 10_000, 20_000_000))
    run.at(35)
    assert run.state() == "RESYNCING"
    assert run.fills.queue_ahead("b") == 20_000_000
    run.at(50)
    assert [(f.price_ticks, f.qty_lots, f.liquidity) for f in run.sink.fills] == [
        (10_000, 20_000_000, Liquidity.MAKER)
    ]
    assert run.statuses("b") == [OrderStatus.OPEN, OrderStatus.FILLED]


# -- the simulator on its own -----------------------------------------------------------------
def test_size_changes_of_a_book_that_is_not_live_move_no_queue() -> None:
    """A caller that reports changes of a RESYNCING book (``on_book``): the drop at our
    level is not read as cancellations then, nor when the book is LIVE again."""
    clock = SimClock(0)
    inst = Instrument("paper", SYMBOL, "BTC", "USDT", Decimal("0.01"), Decimal("0.001"))
    book = L2Book(inst)
    book.apply_snapshot([(10_000, 50)], [(10_002, 40)])
    book.state = BookState.LIVE
    params = FillSimParams.model_validate(
        {"cancel_position": "front", "latency": {"market_data_ms": 0, "order_ms": 0}}
    )
    sim = FillSimulator("paper", clock, params)
    sim.add_market(inst, book)
    sim.submit([PlaceOrder(Order("b", "paper", SYMBOL, Side.BUY, 10, 10_000))])
    clock.run_until(10**9)
    book.set_level(Side.BUY, 10_000, 80)  # 30 join behind us
    sim.on_book(SYMBOL)
    assert sim.queue_ahead("b") == 50
    book.state = BookState.RESYNCING
    book.set_level(Side.BUY, 10_000, 60)
    sim.on_book(SYMBOL)
    assert sim.queue_ahead("b") == 50
    book.state = BookState.LIVE
    sim.on_book(SYMBOL)
    assert sim.queue_ahead("b") == 50  # "front" would have read 20 cancelled ahead
    book.set_level(Side.BUY, 10_000, 30)
    sim.on_book(SYMBOL)  # LIVE: cancellations are read again
    assert sim.queue_ahead("b") == 20
