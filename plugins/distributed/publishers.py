"""What a node keeps publishing for its peers: the market data of the venues it hosts
(``MarketDataPublisher``, which withholds its books after a pause of its own until the
venue has brought them up to date) and its recent QoS 1 messages, kept to be sent again
after a broker restart (``ReplayBuffer``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from loguru import logger

from quoteforge.book import BookState, L2Book
from quoteforge.bus import Bus
from quoteforge.model import Instrument, Side
from quoteforge.plugins.distributed.freshness import NodePause
from quoteforge.plugins.distributed.topics import TopicScheme
from quoteforge.plugins.distributed.wire import book_payload, instrument_to_dict

__all__ = ["NS", "MarketDataPublisher", "ReplayBuffer"]

NS = 1_000_000_000


# ---------------------------------------------------------------------------------------
# Replay of QoS 1 streams
# ---------------------------------------------------------------------------------------


class ReplayBuffer:
    """Publishes QoS 1 messages and keeps the recent ones to publish again.

    A broker that restarts forgets who subscribed: what a node publishes before its peer
    has subscribed again is lost at the broker. The sender therefore republishes its
    recent messages, under the same message ids, when a peer reports a new connection;
    receivers apply each id once.
    """

    def __init__(
        self, bus: Callable[[], Bus], *, window_s: float = 300.0, capacity: int = 100_000
    ) -> None:
        if window_s <= 0 or capacity < 1:
            raise ValueError("ReplayBuffer needs window_s > 0 and capacity >= 1")
        self._bus = bus
        self._window_ns = int(window_s * NS)
        self._kept: deque[tuple[int, str, dict[str, Any], str]] = deque(maxlen=capacity)
        self.replayed = 0

    def publish(self, topic: str, payload: dict[str, Any], msg_id: str) -> None:
        self._kept.append((time.monotonic_ns(), topic, payload, msg_id))
        self._bus().publish(topic, payload, qos=1, msg_id=msg_id)

    def replay(self) -> int:
        """Publish every message of the window again; returns how many."""
        horizon = time.monotonic_ns() - self._window_ns
        kept = self._kept
        while kept and kept[0][0] < horizon:
            kept.popleft()
        bus = self._bus()
        for _, topic, payload, msg_id in kept:
            bus.publish(topic, payload, qos=1, msg_id=msg_id)
        self.replayed += len(kept)
        return len(kept)

    def __len__(self) -> int:
        return len(self._kept)


# ---------------------------------------------------------------------------------------
# Publishing a hosted venue's market data
# ---------------------------------------------------------------------------------------


class WithheldBook:
    """A book this node published STALE after its own pause, and what brings it up to
    date again (``why_up_to_date``).

    What the node reads first after a pause is the venue's backlog: updates received
    now, made during the pause. So a book is up to date only once LIVE at its source
    and: resynchronised from the venue after the pause (``resynced``: its source asked
    for a new snapshot since); or, a quiet market, unchanged for ``quiet_ns`` of this
    node running since it woke, by when the backlog has long been read and the book is
    what the venue last said, as any quiet book is; or, only where the book's ``ts_ns``
    is the venue's time of its content (``venue_time``: its adapter declares
    ``book_ts_venue_time``), showing an update the venue made after the wake (wall
    clock, as ``woke_ns``). A source that stamps a book with the local time it applied
    it stamps the backlog read after the wake "now": that rule would release the book
    on the first message of the backlog.
    """

    __slots__ = ("heard_ns", "resynced", "venue_time", "woke_ns")

    def __init__(self, woke_ns: int, now_ns: int, *, venue_time: bool = False) -> None:
        self.woke_ns = woke_ns  # wall clock
        self.heard_ns = now_ns  # monotonic: the wake, then the book's last change
        self.resynced = False
        self.venue_time = venue_time

    def why_up_to_date(self, book: L2Book, now_ns: int, quiet_ns: int) -> str | None:
        if book.state is not BookState.LIVE:
            return None
        if self.resynced:
            return "resynchronised from the venue"
        if self.venue_time and book.ts_ns >= self.woke_ns:
            return "an update the venue made since"
        if now_ns - self.heard_ns >= quiet_ns:
            return f"read all the venue sent, unchanged for {quiet_ns / NS:g} s since"
        return None


class MarketDataPublisher:
    """Puts the market data of venues this node hosts on the bus.

    Book changes are coalesced per event-loop pass (latest wins: every message is a full
    top-``depth`` snapshot) and published at QoS 0 on ``book/<venue>/<symbol>``; every
    ``snapshot_interval_s`` (and on every state change) the same snapshot also goes,
    retained, to ``state/book-<venue>-<symbol>`` for late joiners. Trades go to
    ``trade/<venue>/<symbol>``, instruments to the retained ``state/instruments-<venue>``.
    With a ``session`` (the execution node's, which hosts simulated venues whole) every
    book and trade message carries it, so a strategy node tells whose books it gets.
    Every book message carries its publishing time (``sent_ns``, wall clock), so a
    strategy node tells one it reads late (after a pause of its own) from the book of now.

    That time says when a message left, not how old its book is. So with
    ``stale_after_s`` (``nodes.stale_after``) the publisher watches its own event loop
    (``NodePause``, marked every quarter of it and before anything is published): when
    this node did not run for longer than that, a paused host or a blocked loop, its
    books may show the market of before, and the venue's messages of that time wait
    unread behind the timers that come due first. Before anything else goes out, every
    book is then published STALE (live and retained), and each stays so (no LIVE
    snapshot, no change) until the venue has brought it up to date (``WithheldBook``).
    The gap is the node's own scheduling, never the venue's silence: a quiet market
    is no pause.
    """

    def __init__(
        self,
        bus: Bus,
        scheme: TopicScheme,
        *,
        depth: int = 10,
        snapshot_interval_s: float = 1.0,
        session: str | None = None,
        stale_after_s: float | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError(f"book depth must be at least 1 level, got {depth}")
        if stale_after_s is not None and stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be > 0 or None, got {stale_after_s}")
        self.bus = bus
        self.scheme = scheme
        self.depth = depth
        self.snapshot_interval_s = snapshot_interval_s
        self.publisher = secrets.token_hex(4)
        self.session = session
        self._books: dict[str, L2Book] = {}
        self._topics: dict[str, tuple[str, str]] = {}
        self._dirty: dict[str, L2Book] = {}
        self._flush_scheduled = False
        self._n = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self.stale_after_ns = None if stale_after_s is None else int(stale_after_s * NS)
        self._pause: NodePause | None = None
        self._withheld: dict[str, WithheldBook] = {}
        #: The venues whose books carry the venue's time (``venue_time_stamps``).
        self._venue_time: set[str] = set()
        self.books_published = 0
        self.trades_published = 0
        self.pauses = 0
        self._instruments: dict[str, dict[str, Any]] = {}

    def publish_instruments(self, venue: str, instruments: dict[str, Instrument]) -> None:
        payload = {
            "venue": venue,
            "instruments": [instrument_to_dict(i) for i in instruments.values()],
        }
        self._instruments[venue] = payload
        self.bus.publish(self.scheme.instruments(venue), payload, qos=1, retain=True)

    def republish(self) -> None:
        """Publish the retained values again (instruments, book snapshots): the bus
        reconnected, maybe to a broker that lost them."""
        for venue, payload in self._instruments.items():
            self.bus.publish(self.scheme.instruments(venue), payload, qos=1, retain=True)
        for book in self._books.values():
            self._send(book, snapshot=True)

    def venue_time_stamps(self, venue: str, venue_time: bool) -> None:
        """Whether the adapter hosting ``venue`` stamps its books with the venue's time
        of their content (``venue_time``: its class declares ``book_ts_venue_time =
        True``; by default the stamp is the local time a book was applied). Only such a
        book is released after this node's pause by an update dated after it
        (``WithheldBook``)."""
        if venue_time:
            self._venue_time.add(venue)
        else:
            self._venue_time.discard(venue)

    def track(self, book: L2Book) -> None:
        """Include ``book`` in the periodic retained snapshots."""
        if book.key not in self._books:
            self._books[book.key] = book
            self._topics[book.key] = (
                self.scheme.book(book.venue, book.symbol),
                self.scheme.book_snapshot(book.venue, book.symbol),
            )

    def start(self) -> None:
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        if self.stale_after_ns is not None:
            pause = self._pause = NodePause.of_running_loop()
            pause.seen()  # the time spent starting is no pause (no listener hears it)
            pause.join(self, self.stale_after_ns)
            period = max(0.05, self.stale_after_ns / NS / 4)
            self._tasks.append(loop.create_task(self._watch(period)))
        if self.snapshot_interval_s > 0:
            self._tasks.append(loop.create_task(self._snapshots()))

    async def stop(self) -> None:
        if self._pause is not None:
            self._pause.leave(self)
            self._pause = None
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    # -- venue sink side ------------------------------------------------------------------
    def on_book(self, book: L2Book) -> None:
        self._ran()
        withheld = self._withheld.get(book.key)
        if withheld is not None:
            withheld.heard_ns = time.monotonic_ns()
        self.track(book)
        self._dirty[book.key] = book
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        self._ran()
        self.track(book)
        self._dirty.pop(book.key, None)
        withheld = self._withheld.get(book.key)
        if withheld is not None:
            withheld.heard_ns = time.monotonic_ns()
            if new in (BookState.RESYNCING.value, BookState.SYNCING.value):
                withheld.resynced = True  # its next snapshot is asked for after the pause
        self._send(book, snapshot=True)

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        self._ran()  # a trade read after a pause goes out after the books' STALE
        self.trades_published += 1
        payload: dict[str, Any] = {
            "price_ticks": price_ticks,
            "qty_lots": qty_lots,
            "aggressor": aggressor.name.lower(),
            "ts_ns": ts_ns,
        }
        if self.session is not None:
            payload["session"] = self.session
        self.bus.publish(self.scheme.trade(venue, symbol), payload)

    # -- this node's pause ---------------------------------------------------------------
    def node_paused(self, gap_ns: int) -> None:
        """This node did not run for ``gap_ns`` (longer than ``stale_after_s``): every
        book goes out STALE now, before anything else, and is withheld until the venue
        has brought it up to date (``NodePause`` calls this from ``_ran``)."""
        self.pauses += 1
        woke, now = time.time_ns(), time.monotonic_ns()
        self._dirty.clear()  # changes read before the pause: not the book of now
        for key, book in self._books.items():
            venue_time = book.venue in self._venue_time
            self._withheld[key] = WithheldBook(woke, now, venue_time=venue_time)
            self._send_stale(book)
        assert self.stale_after_ns is not None  # only a publisher with a limit listens
        logger.warning(
            "this node did not run for {:.1f} s (a paused host or a blocked event loop), "
            "longer than nodes.stale_after ({:g} s): {} book(s) published STALE until the "
            "venue has brought each up to date",
            gap_ns / NS,
            self.stale_after_ns / NS,
            len(self._books),
        )

    def _ran(self) -> None:
        """Mark this node running; a gap over ``stale_after_s`` calls ``node_paused``."""
        if self._pause is not None:
            self._pause.seen()

    def _still_withheld(self, book: L2Book) -> bool:
        withheld = self._withheld.get(book.key)
        if withheld is None:
            return False
        assert self.stale_after_ns is not None  # only a publisher with a limit withholds
        why = withheld.why_up_to_date(book, time.monotonic_ns(), self.stale_after_ns)
        if why is None:
            return True
        del self._withheld[book.key]
        logger.info(
            "book {}/{} up to date after this node's pause ({}): published LIVE again",
            book.venue,
            book.symbol,
            why,
        )
        return False

    def _release_quiet(self) -> None:
        """Publish the withheld books that are up to date though the venue did not
        change them (a quiet market): no update would send them."""
        for key in list(self._withheld):
            book = self._books[key]
            if not self._still_withheld(book):
                self._send(book, snapshot=True)

    # -- internals -------------------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_scheduled = False
        self._ran()
        dirty, self._dirty = self._dirty, {}
        for book in dirty.values():
            self._send(book, snapshot=False)

    def _payload(self, book: L2Book) -> dict[str, Any]:
        payload = book_payload(book, self.depth, self.publisher, next(self._n), time.time_ns())
        if self.session is not None:
            payload["session"] = self.session
        return payload

    def _send(self, book: L2Book, *, snapshot: bool) -> None:
        self._ran()
        if self._still_withheld(book):
            if snapshot:  # a state change: the retained snapshot stays STALE
                self._send_stale(book)
            return
        live_topic, snapshot_topic = self._topics[book.key]
        payload = self._payload(book)
        self.bus.publish(live_topic, payload)
        self.books_published += 1
        if snapshot:
            self.bus.publish(snapshot_topic, payload, qos=1, retain=True)

    def _send_stale(self, book: L2Book) -> None:
        """``book`` STALE on both topics, without its levels: not the book of now."""
        live_topic, snapshot_topic = self._topics[book.key]
        payload = self._payload(book)
        payload.update(state=BookState.STALE.value, bids=[], asks=[])
        self.bus.publish(live_topic, payload)
        self.bus.publish(snapshot_topic, payload, qos=1, retain=True)
        self.books_published += 1

    async def _watch(self, period_s: float) -> None:
        # Marks the loop as running while the market is quiet, so that the first timer,
        # message or update after a pause finds the gap.
        while True:
            await asyncio.sleep(period_s)
            self._ran()
            if self._withheld:
                self._release_quiet()

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_interval_s)
            self._ran()  # after a pause: the books' STALE goes out first
            for book in self._books.values():
                if self._still_withheld(book):
                    self._send_stale(book)
                    continue
                _, snapshot_topic = self._topics[book.key]
                payload = self._payload(book)
                self.bus.publish(snapshot_topic, payload, qos=1, retain=True)
