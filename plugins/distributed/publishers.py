"""What a node keeps publishing for its peers: the market data of the venues it hosts
(``MarketDataPublisher``) and its recent QoS 1 messages, kept to be sent again after a
broker restart (``ReplayBuffer``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from quoteforge.book import L2Book
from quoteforge.bus import Bus
from quoteforge.model import Instrument, Side
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
    """

    def __init__(
        self,
        bus: Bus,
        scheme: TopicScheme,
        *,
        depth: int = 10,
        snapshot_interval_s: float = 1.0,
        session: str | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError(f"book depth must be at least 1 level, got {depth}")
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
        self._task: asyncio.Task[None] | None = None
        self.books_published = 0
        self.trades_published = 0

    def publish_instruments(self, venue: str, instruments: dict[str, Instrument]) -> None:
        self.bus.publish(
            self.scheme.instruments(venue),
            {"venue": venue, "instruments": [instrument_to_dict(i) for i in instruments.values()]},
            qos=1,
            retain=True,
        )

    def track(self, book: L2Book) -> None:
        """Include ``book`` in the periodic retained snapshots."""
        if book.key not in self._books:
            self._books[book.key] = book
            self._topics[book.key] = (
                self.scheme.book(book.venue, book.symbol),
                self.scheme.book_snapshot(book.venue, book.symbol),
            )

    def start(self) -> None:
        if self._task is None and self.snapshot_interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._snapshots())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- venue sink side ------------------------------------------------------------------
    def on_book(self, book: L2Book) -> None:
        self.track(book)
        self._dirty[book.key] = book
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        self.track(book)
        self._dirty.pop(book.key, None)
        self._send(book, snapshot=True)

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
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

    # -- internals -------------------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, {}
        for book in dirty.values():
            self._send(book, snapshot=False)

    def _payload(self, book: L2Book) -> dict[str, Any]:
        payload = book_payload(book, self.depth, self.publisher, next(self._n), time.time_ns())
        if self.session is not None:
            payload["session"] = self.session
        return payload

    def _send(self, book: L2Book, *, snapshot: bool) -> None:
        live_topic, snapshot_topic = self._topics[book.key]
        payload = self._payload(book)
        self.bus.publish(live_topic, payload)
        self.books_published += 1
        if snapshot:
            self.bus.publish(snapshot_topic, payload, qos=1, retain=True)

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_interval_s)
            for book in self._books.values():
                _, snapshot_topic = self._topics[book.key]
                payload = self._payload(book)
                self.bus.publish(snapshot_topic, payload, qos=1, retain=True)
