"""The fill simulator and books cut to a fixed depth (Kraken's subscribed depth): a level
of ours that the market pushed beyond the worst visible price is out of view, not empty.
Its disappearance is not read as everyone ahead of us cancelling, and when it comes
back into view the queue ahead keeps what trades left of it, cut to the size it shows.
Driven through the replay venue (and a paper venue over it) with Kraken v2 book and
trade messages, and through the simulator on its own."""

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
from quoteforge.exchanges.kraken.book import kraken_checksum
from quoteforge.exchanges.paper import wrap_for_paper
from quoteforge.exchanges.recording import RecordingWriter
from quoteforge.exchanges.replay import ReplayExchange, ReplayParams
from quoteforge.model import Fill, Instrument, Order, OrderUpdate, Side, TimeInForce

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
SYMBOL = "BTC/USD"
DEPTH = 10
# Kraken quantities are read at 8 decimals: one lot is 0.00000001 BTC.
BTC = 100_000_000
MODELS = ["front", "back", "proportional", "probabilistic"]
OUR_BID = 995  # 99.5 (tick 0.1)
OUR_ASK = 1015


class Sink:
    """What the venue reports."""

    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []
        self.fills: list[Fill] = []

    def on_book(self, book: L2Book) -> None: ...

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        self.states.append((old, new))

    def on_trade(self, *args: Any) -> None: ...

    def on_order_update(self, update: OrderUpdate) -> None: ...

    def on_fill(self, fill: Fill) -> None:
        self.fills.append(fill)

    def on_offer(self, offer: Any) -> None: ...

    def request_stop(self, reason: str) -> None: ...


class KrakenFeed:
    """Kraken v2 ``book`` and ``trade`` messages for BTC/USD at depth 10: a replica of
    the venue's visible book gives each message its checksum, as Kraken sends it."""

    def __init__(self) -> None:
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    @staticmethod
    def _texts(levels: dict[int, int], best_high: bool) -> list[tuple[str, str]]:
        rows = sorted(levels.items(), reverse=best_high)[:DEPTH]
        return [(f"{p / 10:.1f}", f"{q / BTC:.8f}") for p, q in rows]

    def _message(self, kind: str, bids: dict[int, int], asks: dict[int, int]) -> str:
        for side, changes, best_high in ((self.bids, bids, True), (self.asks, asks, False)):
            for price, lots in changes.items():
                if lots:
                    side[price] = lots
                else:
                    side.pop(price, None)
            # Kraken sends no deletion for a level pushed out of range.
            for price in sorted(side, reverse=best_high)[DEPTH:]:
                del side[price]
        checksum = kraken_checksum(self._texts(self.asks, False), self._texts(self.bids, True))

        def levels(changes: dict[int, int]) -> str:
            return ",".join(
                f'{{"price":{p / 10:.1f},"qty":{q / BTC:.8f}}}' for p, q in changes.items()
            )

        return (
            f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{SYMBOL}",'
            f'"bids":[{levels(bids)}],"asks":[{levels(asks)}],"checksum":{checksum}}}]}}'
        )

    def snapshot(self, bids: dict[int, int], asks: dict[int, int]) -> str:
        self.bids.clear()
        self.asks.clear()
        return self._message("snapshot", bids, asks)

    def update(self, bids: dict[int, int], asks: dict[int, int] | None = None) -> str:
        return self._message("update", bids, asks or {})

    @staticmethod
    def sell(price: int, lots: int) -> str:
        """A sell that hit the bid at ``price``."""
        entry = {"symbol": SYMBOL, "side": "sell", "price": price / 10, "qty": lots / BTC}
        message = {"channel": "trade", "type": "update", "data": [entry]}
        return json.dumps(message, separators=(",", ":"))


def _levels(prices: range, lots: int) -> dict[int, int]:
    return dict.fromkeys(prices, lots)


# Bids 99.9 down to 99.0, 0.5 BTC each (ten levels: the whole window); asks from 101.0.
START_BIDS = _levels(range(999, 989, -1), BTC // 2)
START_ASKS = _levels(range(1010, 1020), BTC // 2)
# Six better bids, 100.0 to 100.5: the window keeps 100.5 to 99.6, our 99.5 falls out.
BETTER = _levels(range(1000, 1006), BTC // 10)
GONE = dict.fromkeys(BETTER, 0)


class Replay:
    """A Kraken replay venue (depth 10) over ``lines`` (ms after the start, payload)."""

    def __init__(
        self, tmp_path: Path, lines: list[tuple[int, str]], *, model: str, paper: bool
    ) -> None:
        path = tmp_path / "kraken.jsonl"
        with RecordingWriter(path) as writer:
            for ms, raw in lines:
                writer.write("kraken", "ws", raw, t_ns=T0 + ms * MS)
        latency = {"market_data_ms": 0, "order_ms": 1, "jitter_ms": 0}
        params: dict[str, Any] = {
            "protocol": "kraken_v2",
            "depth": DEPTH,
            "markets": {SYMBOL: {"tick_size": "0.1", "qty_step": "0.00000001"}},
            "data": str(path),
            "latency": latency,
            "cancel_position": model,
            "stale_after_ms": None,
            "notify": "every",
        }
        self.clock = SimClock(10**18)
        ctx = VenueContext("rec", self.clock, seed=3, mode="backtest", symbols=[], extra={})
        replay = ReplayExchange(ReplayParams.model_validate(params), ctx)
        self.venue: ExchangeAdapter = replay
        self.fills = replay.fills
        if paper:
            wrapped = wrap_for_paper(replay, {"latency": latency, "cancel_position": model}, ctx)
            self.venue = wrapped
            self.fills = wrapped.fills
        self.sink = Sink()
        asyncio.run(self.venue.connect(self.sink))
        self.start = self.clock.now_ns()

    def at(self, ms: int) -> None:
        self.clock.run_until(self.start + ms * MS)

    def bid(self, client_id: str, price: int, lots: int) -> None:
        order = Order(client_id, "rec", SYMBOL, Side.BUY, lots, price, tif=TimeInForce.POST_ONLY)
        self.venue.submit([PlaceOrder(order)])

    def book(self) -> L2Book:
        return self.venue.books[SYMBOL]

    def filled(self) -> list[tuple[int, int]]:
        return [(f.price_ticks, f.qty_lots) for f in self.sink.fills]


def _pushed_out(feed: KrakenFeed) -> list[tuple[int, str]]:
    """The start book, then at 50 ms the better bids that push 99.5 out of the window
    (later messages are made after these: each checksum covers the book before it)."""
    return [(0, feed.snapshot(START_BIDS, START_ASKS)), (50, feed.update(BETTER))]


# -- through the replay venue -----------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("paper", [False, True], ids=["replay", "paper"])
def test_a_level_pushed_out_of_the_window_keeps_its_queue_and_a_print_there_consumes_it(
    tmp_path: Path, model: str, paper: bool
) -> None:
    """Our 0.1 bid rests at 99.5 behind 0.5. Six better bids push 99.5 out of the
    depth-10 window: the book shows nothing there, but nothing says the 0.5 left. A
    0.2 print at 99.5 then consumes 0.2 of the 0.5 ahead of us and does not fill us
    (read as cancellations, the disappearance put us at the front and the print
    filled all of us)."""
    feed = KrakenFeed()
    lines = [*_pushed_out(feed), (100, feed.sell(OUR_BID, BTC // 5))]
    run = Replay(tmp_path, lines, model=model, paper=paper)
    run.at(10)
    run.bid("b", OUR_BID, BTC // 10)
    run.at(20)
    assert run.fills.queue_ahead("b") == BTC // 2
    run.at(60)
    book = run.book()
    assert book.state is BookState.LIVE
    assert book.depth(Side.BUY) == DEPTH
    assert book.lots_at(Side.BUY, OUR_BID) == 0  # beyond the worst visible bid, 99.6
    assert run.fills.queue_ahead("b") == BTC // 2
    run.at(110)
    assert run.filled() == []
    assert run.fills.queue_ahead("b") == BTC // 2 - BTC // 5


@pytest.mark.parametrize("model", MODELS)
def test_a_level_back_in_view_puts_at_most_its_new_size_ahead(tmp_path: Path, model: str) -> None:
    """While 99.5 is out of view its size cannot be read. The better bids go, and it
    comes back showing 0.2: nobody can tell whether the 0.3 that left was ahead of us
    or behind, so it is read like a rebuilt book: 0.2 ahead, and a 0.2 print there is
    all ahead of us; the next one fills us."""
    feed = KrakenFeed()
    lines = _pushed_out(feed)
    lines += [
        # The better bids are cancelled; Kraken sends the levels that enter the window.
        (100, feed.update({**GONE, **START_BIDS, OUR_BID: BTC // 5})),
        (150, feed.sell(OUR_BID, BTC // 5)),
        (200, feed.sell(OUR_BID, BTC // 20)),
    ]
    run = Replay(tmp_path, lines, model=model, paper=False)
    run.at(10)
    run.bid("b", OUR_BID, BTC // 10)
    run.at(110)
    assert run.book().lots_at(Side.BUY, OUR_BID) == BTC // 5
    assert run.fills.queue_ahead("b") == BTC // 5
    run.at(160)
    assert run.filled() == []
    assert run.fills.queue_ahead("b") == 0
    run.at(210)
    assert run.filled() == [(OUR_BID, BTC // 20)]


def test_prints_while_out_of_view_count_when_the_level_comes_back(tmp_path: Path) -> None:
    """A 0.2 print at 99.5 while it is out of view leaves 0.3 ahead of us; the level
    comes back showing the 0.3 the venue still has, and that is still ahead."""
    feed = KrakenFeed()
    lines = _pushed_out(feed)
    lines += [
        (100, feed.sell(OUR_BID, BTC // 5)),
        (150, feed.update({**GONE, **START_BIDS, OUR_BID: BTC * 3 // 10})),
        (200, feed.sell(OUR_BID, BTC * 3 // 10)),
    ]
    run = Replay(tmp_path, lines, model="front", paper=False)
    run.at(10)
    run.bid("b", OUR_BID, BTC // 10)
    run.at(160)
    assert run.fills.queue_ahead("b") == BTC * 3 // 10
    run.at(210)
    assert run.filled() == []
    assert run.fills.queue_ahead("b") == 0


def test_a_level_back_in_view_and_empty_has_nobody_ahead(tmp_path: Path) -> None:
    """The window reaches past 99.5 again (99.4 and below show) and 99.5 shows nothing:
    now the book does say everyone there left, so a print at 99.5 fills us."""
    feed = KrakenFeed()
    lines = _pushed_out(feed)
    lines += [
        (100, feed.update({**GONE, **START_BIDS, OUR_BID: 0})),
        (150, feed.sell(OUR_BID, BTC // 10)),
    ]
    run = Replay(tmp_path, lines, model="back", paper=False)
    run.at(10)
    run.bid("b", OUR_BID, BTC // 10)
    run.at(60)
    assert run.fills.queue_ahead("b") == BTC // 2
    run.at(110)
    assert run.fills.queue_ahead("b") == 0
    run.at(160)
    assert run.filled() == [(OUR_BID, BTC // 10)]


# -- the simulator on its own -----------------------------------------------------------------
class Simulator:
    """A simulator over a book the test edits and cuts to ``DEPTH`` levels per side."""

    def __init__(self, model: str = "front", side: Side = Side.BUY) -> None:
        self.clock = SimClock(0)
        inst = Instrument("paper", SYMBOL, "BTC", "USD", Decimal("0.1"), Decimal("0.001"))
        self.book = book = L2Book(inst)
        book.apply_snapshot(
            [(p, 50) for p in range(999, 989, -1)], [(p, 50) for p in range(1010, 1020)]
        )
        book.state = BookState.LIVE
        params = FillSimParams.model_validate(
            {"cancel_position": model, "latency": {"market_data_ms": 0, "order_ms": 0}}
        )
        self.sim = sim = FillSimulator("paper", self.clock, params)
        sim.add_market(inst, book)
        self.place("b", side)
        assert sim.queue_ahead("b") == 50

    def place(self, client_id: str, side: Side) -> None:
        price = OUR_BID if side is Side.BUY else OUR_ASK
        self.sim.submit([PlaceOrder(Order(client_id, "paper", SYMBOL, side, 10, price))])
        self.clock.run_until(self.clock.now_ns() + 10**9)

    def bids(self, levels: dict[int, int]) -> None:
        self.book.apply_deltas(levels.items(), [])
        self.book.truncate(DEPTH)
        self.sim.on_book(SYMBOL)

    def asks(self, levels: dict[int, int]) -> None:
        self.book.apply_deltas([], levels.items())
        self.book.truncate(DEPTH)
        self.sim.on_book(SYMBOL)


@pytest.mark.parametrize("model", MODELS)
def test_a_level_out_of_view_stays_so_while_its_side_shows_nothing(model: str) -> None:
    """Out of view, then every visible bid is deleted: an empty side says nothing about
    a level that was already beyond the window (the venue may refill the window in its
    next message). Better bids alone do not bring it back; a window reaching past it
    while it shows nothing does, and then nobody is ahead."""
    run = Simulator(model)
    run.bids(dict.fromkeys(range(1000, 1006), 10))
    assert run.sim.queue_ahead("b") == 50
    run.bids(dict.fromkeys(range(996, 1006), 0))
    assert run.book.depth(Side.BUY) == 0
    assert run.sim.queue_ahead("b") == 50
    run.bids({1001: 10})
    assert run.sim.queue_ahead("b") == 50
    run.bids({990: 10})
    assert run.sim.queue_ahead("b") == 0


@pytest.mark.parametrize("model", MODELS)
def test_a_level_in_view_whose_whole_side_is_deleted_reads_as_cancelled(model: str) -> None:
    """Cutting a book to a depth never empties a side: only deletions do, so the 50
    lots at our level, in view until then, are read as cancelled."""
    run = Simulator(model)
    run.bids(dict.fromkeys(range(990, 1000), 0))
    assert run.book.depth(Side.BUY) == 0
    assert run.sim.queue_ahead("b") == 0


def test_a_level_in_view_that_empties_still_reads_as_cancelled() -> None:
    """99.5 empties while 99.4 and below still show: it is in view, so the 50 lots
    are read as cancelled (the window does not make the simulator blind)."""
    run = Simulator("back")
    run.bids({OUR_BID: 0})
    assert run.sim.queue_ahead("b") == 0


def test_a_resync_that_leaves_our_level_out_of_view_keeps_the_queue() -> None:
    """The snapshot that ends a resync shows only levels better than ours: our level
    is out of view, not empty, so the rebuilt book does not put us at the front."""
    run = Simulator("front")
    book = run.book
    book.state = BookState.RESYNCING
    run.sim.on_book_state(SYMBOL, BookState.RESYNCING)
    book.apply_snapshot([(p, 50) for p in range(1005, 995, -1)], [(1010, 50)])
    book.state = BookState.LIVE
    run.sim.on_book(SYMBOL)
    assert run.sim.queue_ahead("b") == 50
    run.bids({**dict.fromkeys(range(1000, 1006), 0), OUR_BID: 30})  # back in view, smaller
    assert run.sim.queue_ahead("b") == 30
    run.sim.on_trade(SYMBOL, OUR_BID, 30, Side.SELL)
    assert run.sim.queue_ahead("b") == 0


def test_an_ask_pushed_out_of_the_window_keeps_its_queue() -> None:
    """The same on the ask side (asks are kept by negated ticks): our ask at 101.5
    behind 50 falls out when six better asks arrive; a 20-lot print there is ahead of
    us; it comes back showing 20, all of it ahead."""
    run = Simulator("front", Side.SELL)
    run.asks(dict.fromkeys(range(1000, 1006), 10))
    assert run.book.lots_at(Side.SELL, OUR_ASK) == 0
    assert run.sim.queue_ahead("b") == 50
    run.sim.on_trade(SYMBOL, OUR_ASK, 20, Side.BUY)
    assert run.sim.fills == []
    assert run.sim.queue_ahead("b") == 30
    run.asks({**dict.fromkeys(range(1000, 1006), 0), OUR_ASK: 20})
    assert run.sim.queue_ahead("b") == 20


def test_an_order_joining_our_level_out_of_view_queues_behind_our_earlier_one() -> None:
    """The book shows nothing at 99.5 while it is out of view, but our earlier order
    and the 50 lots ahead of it are still ahead of a new order there."""
    run = Simulator("front")
    run.bids(dict.fromkeys(range(1000, 1006), 10))
    run.place("c", Side.BUY)
    assert run.sim.queue_ahead("c") == 50
    run.sim.on_trade(SYMBOL, OUR_BID, 55, Side.SELL)
    assert [(f.client_id, f.qty_lots) for f in run.sim.fills] == [("b", 5)]
