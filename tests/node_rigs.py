"""Helpers for the split-run tests (test_nodes.py, test_split_reconcile.py,
test_bus_security.py, test_remote_venue.py): the example node manifest written for a
test's broker, the journals and working orders a node leaves, a bus observer of a run's
orders and breakers, and a strategy node's remote venue on an in-process bus (the
mirror rig)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from brokers import SecureBroker

from quoteforge.book import BookState, L2Book
from quoteforge.bus import InProcessBus
from quoteforge.clock import LiveClock
from quoteforge.exchange import VenueContext
from quoteforge.journal import JournalRecord
from quoteforge.model import Fill, Instrument, Offer, Order, OrderStatus, OrderUpdate
from quoteforge.orders import OrderManager
from quoteforge.plugins.bus_mqtt import MqttBus
from quoteforge.plugins.distributed.remote import MarketDataPublisher, RemoteVenue
from quoteforge.plugins.distributed.topics import TopicScheme
from quoteforge.plugins.journal_sqlite import SqliteJournal

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "distributed" / "sim_nodes.yaml"
HEARTBEAT = 0.5
GRACE = 2.0

# ---------------------------------------------------------------------------------------
# Split runs: manifests, journals, a bus observer
# ---------------------------------------------------------------------------------------


def write_manifest(
    path: Path, *, port: int, duration: float, run_name: str | None = None, **nodes: Any
) -> tuple[Path, str]:
    """The example manifest with a unique run name, this test's broker and fast timings.
    The bus settings stay the example's (TLS, credentials and key from the environment)."""
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    name = run_name or f"t{uuid.uuid4().hex[:10]}"
    data["run"].update({"name": name, "duration": duration, "cancel_timeout": 3})
    data["bus"]["params"].update(
        {"port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "connect_timeout_s": 3}
    )
    data["nodes"] = {
        "heartbeat": HEARTBEAT,
        "strategy_grace": GRACE,
        "stale_after": 2,
        "connect_timeout": 15,
        "monitor_interval": 1,
        **nodes,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path, name


def journal_records(run_dir: Path, *kinds: str) -> list[JournalRecord]:
    return list(SqliteJournal(run_dir / "journal.sqlite").read(kinds or None))


def working_after(records: list[JournalRecord]) -> list[Order]:
    om = OrderManager(None, LiveClock(), id_prefix="check")
    om.restore(records)
    return om.all_working()


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


class Observer:
    """A test-side bus client that follows a run's orders and control messages, with the
    monitor's credentials and the run's key."""

    def __init__(self, broker: SecureBroker, run: str) -> None:
        self.bus = MqttBus(broker.params("monitor"), run)
        self.scheme = TopicScheme(run)
        self.working: dict[str, str] = {}
        self.ever_open: set[str] = set()
        self.cancelled: set[str] = set()
        self.breakers: list[tuple[float, dict[str, Any]]] = []

    async def start(self) -> None:
        await self.bus.start()
        self.bus.subscribe(self.scheme.order("sim"), self._on_order)
        self.bus.subscribe(self.scheme.breaker(), self._on_breaker)
        await self.bus.flush(5)

    def _on_order(self, topic: str, payload: dict[str, Any]) -> None:
        status = OrderStatus(payload["status"])
        client_id = payload["client_id"]
        if status.is_terminal:
            self.working.pop(client_id, None)
            if status is OrderStatus.CANCELLED:
                self.cancelled.add(client_id)
        elif status is OrderStatus.OPEN:
            self.working[client_id] = payload["symbol"]
            self.ever_open.add(client_id)

    def _on_breaker(self, topic: str, payload: dict[str, Any]) -> None:
        self.breakers.append((time.monotonic(), payload))


# ---------------------------------------------------------------------------------------
# A strategy node's remote venue on an in-process bus (no broker)
# ---------------------------------------------------------------------------------------


class MirrorSink:
    """A venue sink that records everything a remote venue hands to the run."""

    def __init__(self) -> None:
        self.states: list[tuple[str, str, str]] = []
        self.books = 0
        self.shown: list[L2Book] = []
        self.updates: list[OrderUpdate] = []
        self.fills: list[Fill] = []
        self.trades: list[tuple[Any, ...]] = []
        self.offers: list[Offer] = []

    def on_book(self, book: L2Book) -> None:
        self.books += 1
        self.shown.append(book)

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        self.states.append((old, new, reason))

    def on_trade(self, *args: Any) -> None:
        self.trades.append(args)

    def on_order_update(self, update: OrderUpdate) -> None:
        self.updates.append(update)

    def on_fill(self, fill: Fill) -> None:
        self.fills.append(fill)

    def on_offer(self, offer: Offer) -> None:
        self.offers.append(offer)


@dataclass
class MirrorRig:
    """A strategy node's remote venue on an in-process bus, connected to a sink that
    records everything, with a publisher of the execution node's books."""

    bus: InProcessBus
    scheme: TopicScheme
    inst: Instrument
    publisher: MarketDataPublisher
    ctx: VenueContext
    venue: RemoteVenue
    sink: MirrorSink

    def live_source(self, bids: list[tuple[int, int]] | None = None) -> L2Book:
        """A LIVE book of the rig's instrument at the host, to publish from."""
        source = L2Book(self.inst)
        source.apply_snapshot(bids or [(100, 5)], [(101, 3)], 1)
        source.state = BookState.LIVE
        return source


async def mirror_rig(
    stale_after_s: float,
    *,
    depth: int = 1,
    secrets: dict[str, str] | None = None,
    host_role: str = "execution",
    announce: bool = True,
) -> MirrorRig:
    """A connected rig whose mirror goes STALE after ``stale_after_s`` without a book
    message or a heartbeat of ``host_role``; with ``announce`` the execution node has
    announced its session (it listens to intents)."""
    bus = InProcessBus()
    scheme = TopicScheme("unit")
    inst = Instrument("sim", "BTC/USDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.001"))
    publisher = MarketDataPublisher(bus, scheme, depth=depth, snapshot_interval_s=0)
    publisher.publish_instruments("sim", {inst.symbol: inst})
    ctx = VenueContext("sim", LiveClock(), 0, "sim", ["BTC/USDT"], secrets=secrets or {})
    venue = RemoteVenue(
        ctx, lambda: bus, scheme, ["mm"], host_role=host_role, stale_after_s=stale_after_s
    )
    sink = MirrorSink()
    await venue.connect(sink)
    if announce:  # the execution node announces its session once it listens to intents
        bus.publish(scheme.node_session("execution"), {"instance": "x", "connects": 1})
    return MirrorRig(bus, scheme, inst, publisher, ctx, venue, sink)
