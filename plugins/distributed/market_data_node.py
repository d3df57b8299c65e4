"""The market-data node of a split run: hosts the market-data side of every live venue
and publishes its books and trades on the bus.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from quoteforge.assembly import (
    build_venue,
    symbols_by_venue,
    venue_context,
)
from quoteforge.book import L2Book
from quoteforge.exchange import (
    ExchangeAdapter,
)
from quoteforge.model import (
    Fill,
    Offer,
    OrderUpdate,
    Side,
)
from quoteforge.plugins.distributed.node_base import Node, is_simulated
from quoteforge.plugins.distributed.remote import (
    MarketDataPublisher,
)


class PublishingSink:
    """The sink of a venue hosted by the market-data node: market data goes on the bus;
    an adapter in the market-data role has no orders, so order events are ignored."""

    def __init__(self, publisher: MarketDataPublisher) -> None:
        self.publisher = publisher

    def on_book(self, book: L2Book) -> None:
        self.publisher.on_book(book)

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        self.publisher.on_book_state(book, old, new, reason)

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        self.publisher.on_trade(venue, symbol, price_ticks, qty_lots, aggressor, ts_ns)

    def on_order_update(self, update: OrderUpdate) -> None:
        return None

    def on_fill(self, fill: Fill) -> None:
        return None

    def on_offer(self, offer: Offer) -> None:
        return None


# ---------------------------------------------------------------------------------------
# Market-data node
# ---------------------------------------------------------------------------------------


class MarketDataNode(Node):
    """Hosts the market-data side of every live venue and publishes its books and trades.

    Simulated venues are market data and matching engine at once: the execution node
    hosts and publishes them. The publisher watches this node's own pauses: after one
    longer than ``nodes.stale_after`` its books go out STALE before anything else, and
    LIVE again only once the venue has brought each up to date (``MarketDataPublisher``).

    One market-data node per run: a starting one claims the role (``RoleClaim``,
    ``state/claim-marketdata``) and refuses to start beside a live one; its books,
    trades and heartbeats carry its session, and the strategy node takes them from one
    session at a time (``ExecutionBinding`` with ``role="marketdata"``).
    """

    role = "marketdata"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.publisher = MarketDataPublisher(
            self.bus,
            self.scheme,
            depth=self.settings.book_depth,
            snapshot_interval_s=float(self.settings.snapshot_interval),
            stale_after_s=float(self.settings.stale_after),
            session=self.sessions.instance,
        )
        self.venues: dict[str, ExchangeAdapter] = {}

    async def preflight(self) -> None:
        """Claim the run's market-data role, on a connection of its own (see
        ``RoleClaim``): refused beside a live market-data node of this run or a rival
        that claimed after this one. A silent one is taken for dead once the strategy
        node's books have given it up too (stale_after and half a heartbeat)."""
        await self.claim_the_role(
            float(self.settings.stale_after) + float(self.settings.heartbeat) / 2
        )

    async def start(self) -> None:
        m = self.manifest
        self.announce_claim()
        sink = PublishingSink(self.publisher)
        symbols = symbols_by_venue(m)
        for name, spec in m.exchanges.items():
            if is_simulated(self.registry, spec):
                continue
            # This node never trades: no keys, and a paper run's wrapper is not needed.
            ctx = venue_context(
                self.loaded,
                name,
                clock=self.clock,
                run_dir=self.run_dir,
                symbols=symbols[name],
                manifest_path=self.manifest_path,
                role="marketdata",
                secrets=False,
            )
            adapter = build_venue(self.loaded, self.registry, name, ctx, trades=False)
            # Whether its books carry the venue's time: a book withheld after this
            # node's pause is released on a later one only then.
            self.publisher.venue_time_stamps(
                name, getattr(adapter, "book_ts_venue_time", False) is True
            )
            await adapter.connect(sink)
            self.venues[name] = adapter
            self.publisher.publish_instruments(name, adapter.instruments)
            for book in adapter.books.values():
                self.publisher.on_book_state(book, book.state.value, book.state.value, "start")
        self.publisher.start()
        self.sessions.on_reconnect(self.publisher.republish)
        self.watch_rivals(self._rival_won)
        if not self.venues:
            self.log.info(
                "every venue of this manifest is simulated: the execution node hosts and "
                "publishes them; this node only keeps its heartbeat"
            )
        self.info["venues"] = sorted(self.venues)

    def _rival_won(self, message: str, rival: Mapping[str, Any]) -> None:
        """Another live market-data session claimed the role first (one of them started
        while the broker had lost its retained values): this node stops publishing,
        raises the critical alert ``marketdata_conflict`` and stops (exit 2)."""
        self.refused_by_peer = message
        self.log.error("{}", message)
        self.bus.publish(
            self.scheme.breaker(),
            {
                "kind": "marketdata_conflict",
                "node": self.role,
                "severity": "critical",
                "message": message,
                "sessions": [self.sessions.instance, rival.get("session")],
            },
            qos=1,
        )
        self.request_stop(f"refused: {message}")

    async def stop(self) -> None:
        await self.publisher.stop()
        for venue in self.venues.values():
            with contextlib.suppress(Exception):
                await venue.close()
        self.info["books_published"] = self.publisher.books_published
        self.info["pauses"] = self.publisher.pauses
