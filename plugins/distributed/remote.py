"""Venues across the bus: the wire forms of books, instruments, intents and order events,
the publisher of a hosted venue's market data, and ``RemoteVenue``, the strategy node's
adapter that reaches a venue hosted by other nodes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from loguru import logger

from quoteforge.book import BookState, L2Book
from quoteforge.bus import Bus
from quoteforge.clock import Clock, TimerHandle
from quoteforge.exchange import (
    CancelAll,
    CancelOrder,
    ExchangeAdapter,
    OrderAction,
    PlaceOrder,
    ReplaceOrder,
    VenueContext,
    VenueSink,
)
from quoteforge.model import (
    Fill,
    Instrument,
    InstrumentKind,
    Offer,
    Order,
    OrderStatus,
    OrderUpdate,
    Side,
)
from quoteforge.orders import fill_from_dict, fill_to_dict, order_from_dict, order_to_dict
from quoteforge.plugins.distributed.topics import TopicScheme

__all__ = [
    "IntentError",
    "LockstepClock",
    "LockstepFollower",
    "MarketDataPublisher",
    "ReconcileError",
    "ReconcileResponder",
    "RemoteVenue",
    "ReplayBuffer",
    "apply_book_sync",
    "book_payload",
    "book_sync",
    "clock_topics",
    "fill_from_payload",
    "fill_payload",
    "instrument_from_dict",
    "instrument_to_dict",
    "intent_from_payload",
    "intent_payload",
    "offer_from_wire",
    "offer_to_wire",
    "reconcile_topics",
    "update_from_payload",
    "update_from_wire",
    "update_payload",
    "update_to_wire",
]

CLOSE_DRAIN_QUIET_S = 0.5  # how long the order/fill streams must be quiet at close
CLOSE_DRAIN_MAX_S = 3.0

NS = 1_000_000_000


class IntentError(ValueError):
    """An intent message that cannot be turned into an order action."""


class ReconcileError(RuntimeError):
    """A reconciliation question to the execution node got no usable answer."""


# ---------------------------------------------------------------------------------------
# Wire forms
# ---------------------------------------------------------------------------------------


def instrument_to_dict(inst: Instrument) -> dict[str, Any]:
    """An instrument as a bus payload; sizes and fees stay exact Decimals."""
    return {
        "venue": inst.venue,
        "symbol": inst.symbol,
        "base": inst.base,
        "quote": inst.quote,
        "tick_size": inst.tick_size,
        "lot_size": inst.lot_size,
        "min_qty": inst.min_qty,
        "min_notional": inst.min_notional,
        "kind": inst.kind.value,
        "maker_fee": inst.maker_fee,
        "taker_fee": inst.taker_fee,
    }


def instrument_from_dict(data: dict[str, Any]) -> Instrument:
    return Instrument(
        venue=data["venue"],
        symbol=data["symbol"],
        base=data["base"],
        quote=data["quote"],
        tick_size=Decimal(data["tick_size"]),
        lot_size=Decimal(data["lot_size"]),
        min_qty=Decimal(data.get("min_qty", 0)),
        min_notional=Decimal(data.get("min_notional", 0)),
        kind=InstrumentKind(data.get("kind", "spot")),
        maker_fee=Decimal(data.get("maker_fee", 0)),
        taker_fee=Decimal(data.get("taker_fee", 0)),
    )


def book_payload(book: L2Book, depth: int, publisher: str, n: int) -> dict[str, Any]:
    """A full top-``depth`` snapshot of ``book``: each message stands alone, so a receiver
    that missed some needs no replay. ``n`` orders the messages of one ``publisher``."""
    return {
        "bids": book.top(Side.BUY, depth),
        "asks": book.top(Side.SELL, depth),
        "state": book.state.value,
        "ts_ns": book.ts_ns,
        "pub": publisher,
        "n": n,
    }


def intent_payload(action: OrderAction, strategy: str, seq: int) -> tuple[dict[str, Any], str]:
    """The intent message of one order action and its message id.

    Ids of places, cancels and replaces derive from client ids, so republishing the same
    action is harmless; ``seq`` only separates repeated cancel-alls.
    """
    if isinstance(action, PlaceOrder):
        order = action.order
        payload: dict[str, Any] = {
            "action": "place",
            "strategy": strategy,
            "order": order_to_dict(order),
        }
        return payload, f"intent:{order.client_id}:place"
    if isinstance(action, CancelOrder):
        payload = {
            "action": "cancel",
            "strategy": strategy,
            "client_id": action.client_id,
            "venue": action.venue,
            "symbol": action.symbol,
        }
        return payload, f"intent:{action.client_id}:cancel"
    if isinstance(action, ReplaceOrder):
        payload = {
            "action": "replace",
            "strategy": strategy,
            "old_client_id": action.old_client_id,
            "order": order_to_dict(action.new),
        }
        return payload, f"intent:{action.old_client_id}:replace:{action.new.client_id}"
    payload = {
        "action": "cancel_all",
        "strategy": strategy,
        "venue": action.venue,
        "symbol": action.symbol,
    }
    return payload, f"intent:{strategy}:cancel_all:{action.venue}:{seq}"


def intent_from_payload(payload: dict[str, Any]) -> tuple[str, OrderAction]:
    """(strategy, action) of an intent message, or IntentError saying what is wrong."""
    try:
        kind = payload["action"]
        strategy = str(payload["strategy"])
        if kind == "place":
            return strategy, PlaceOrder(_fresh(order_from_dict(payload["order"])))
        if kind == "cancel":
            return strategy, CancelOrder(
                str(payload["client_id"]), str(payload["venue"]), str(payload["symbol"])
            )
        if kind == "replace":
            new = _fresh(order_from_dict(payload["order"]))
            return strategy, ReplaceOrder(str(payload["old_client_id"]), new)
        if kind == "cancel_all":
            symbol = payload.get("symbol")
            return strategy, CancelAll(str(payload["venue"]), None if symbol is None else symbol)
    except (KeyError, TypeError, ValueError) as exc:
        raise IntentError(f"malformed intent {payload!r}: {exc!r}") from None
    raise IntentError(
        f"unknown intent action {kind!r}: expected place, cancel, replace or cancel_all"
    )


def _fresh(order: Order) -> Order:
    # Whatever the sender's view, an order that is being sent has not traded yet.
    order.status = OrderStatus.PENDING_NEW
    order.filled_lots = 0
    return order


def update_payload(update: OrderUpdate, order: Order | None) -> dict[str, Any]:
    """An order report, with the order's terms so that observers need no other state."""
    payload: dict[str, Any] = {
        "venue": update.venue,
        "client_id": update.client_id,
        "status": update.status.value,
        "ts_ns": update.ts_ns,
        "exchange_id": update.exchange_id,
        "filled_lots": update.filled_lots,
        "price_ticks": update.price_ticks,
        "qty_lots": update.qty_lots,
        "reason": update.reason,
        "symbol": update.symbol or (order.symbol if order is not None else ""),
    }
    if order is not None:
        payload["order"] = {
            "side": order.side.name.lower(),
            "price_ticks": order.price_ticks,
            "qty_lots": order.qty_lots,
            "filled_lots": order.filled_lots,
            "status": order.status.value,
            "strategy": order.strategy,
        }
    return payload


def update_from_payload(payload: dict[str, Any]) -> OrderUpdate:
    return OrderUpdate(
        venue=payload["venue"],
        client_id=payload["client_id"],
        status=OrderStatus(payload["status"]),
        ts_ns=int(payload["ts_ns"]),
        exchange_id=payload.get("exchange_id"),
        filled_lots=payload.get("filled_lots"),
        price_ticks=payload.get("price_ticks"),
        qty_lots=payload.get("qty_lots"),
        reason=payload.get("reason", ""),
        symbol=payload.get("symbol", ""),
    )


def fill_payload(fill: Fill) -> dict[str, Any]:
    return fill_to_dict(fill)


def fill_from_payload(payload: dict[str, Any]) -> Fill:
    return fill_from_dict(payload)


def update_to_wire(update: OrderUpdate) -> list[Any]:
    """An order report exactly as the venue made it (lock-step runs hand it on as is)."""
    return [
        update.client_id,
        update.status.value,
        update.ts_ns,
        update.exchange_id,
        update.filled_lots,
        update.price_ticks,
        update.qty_lots,
        update.reason,
        update.symbol,
    ]


def update_from_wire(venue: str, data: list[Any]) -> OrderUpdate:
    client_id, status, ts_ns, exchange_id, filled, price, qty, reason, symbol = data
    return OrderUpdate(
        venue,
        client_id,
        OrderStatus(status),
        ts_ns,
        exchange_id,
        filled,
        price,
        qty,
        reason,
        symbol,
    )


def offer_to_wire(offer: Offer) -> list[Any]:
    return [
        offer.symbol,
        offer.offer_id,
        int(offer.side),
        offer.price_ticks,
        offer.qty_lots,
        offer.ts_ns,
        offer.expires_ns,
    ]


def offer_from_wire(venue: str, data: list[Any]) -> Offer:
    symbol, offer_id, side, price, qty, ts_ns, expires_ns = data
    return Offer(venue, symbol, offer_id, Side(side), price, qty, ts_ns, expires_ns)


def book_sync(
    book: L2Book, sent: tuple[dict[int, int], dict[int, int]] | None
) -> tuple[list[Any], tuple[dict[int, int], dict[int, int]]]:
    """What a mirror needs to become ``book`` again: the levels that changed since
    ``sent`` (the levels of the last sync, None for a first one; 0 lots removes a level),
    the state and the book's own counters, so that a mirror's ``top_version`` moves
    exactly when the venue's does. Returns the message part and the levels now sent."""
    bids = dict(book.levels(Side.BUY))
    asks = dict(book.levels(Side.SELL))
    old_bids, old_asks = sent if sent is not None else ({}, {})
    return [
        book.symbol,
        book.state.value,
        book.version,
        book.top_version,
        book.side_top_version(Side.BUY),
        book.side_top_version(Side.SELL),
        book.update_count,
        book.ts_ns,
        _level_diff(old_bids, bids),
        _level_diff(old_asks, asks),
    ], (bids, asks)


def _level_diff(old: dict[int, int], new: dict[int, int]) -> list[list[int]]:
    diff = [[p, q] for p, q in new.items() if old.get(p) != q]
    diff.extend([p, 0] for p in old if p not in new)
    return diff


def apply_book_sync(book: L2Book, data: list[Any]) -> None:
    """Make a mirror equal to the book a ``book_sync`` message describes."""
    _, state, version, top_version, bid_topv, ask_topv, updates, ts_ns, bids, asks = data
    for price, lots in bids:
        book.set_level(Side.BUY, price, lots)
    for price, lots in asks:
        book.set_level(Side.SELL, price, lots)
    book.state = BookState(state)
    book.version = version
    book.top_version = top_version
    book._bid_topv = bid_topv
    book._ask_topv = ask_topv
    book._bid_top = book._ask_top = None
    book.update_count = updates
    book.ts_ns = ts_ns


CLOCK_ROOT = "quoteforge-clock"


def clock_topics(scheme: TopicScheme) -> tuple[str, str]:
    """The two topics of a lock-step run: the driver's steps and the follower's answers,
    ``quoteforge-clock/<run>/step`` and ``.../ack``.

    They travel at QoS 0, outside the ``quoteforge/`` tree whose kinds set a QoS floor:
    a step and its answer alternate, one message in flight, so a QoS 1 acknowledgement
    would make the broker send two small packets in a row to one client, and the
    second would wait for the first's delayed TCP ACK (about 40 ms per step on a broker
    without ``set_tcp_nodelay``). A lost step or answer is sent again after
    ``LOCKSTEP_RETRY_S``; steps are numbered, so a repeat is harmless.
    """
    return f"{CLOCK_ROOT}/{scheme.run}/step", f"{CLOCK_ROOT}/{scheme.run}/ack"


RECONCILE_ROOT = "quoteforge-reconcile"
RECONCILE_TIMEOUT_S = 10.0  # how long the strategy node waits for an answer
RECONCILE_RETRY_S = 2.0  # ask again (same question id) this often until answered
RECONCILE_WHAT = ("open_orders", "fills", "balances")


def reconcile_topics(scheme: TopicScheme, venue: str) -> tuple[str, str]:
    """The two topics of a venue's reconciliation questions:
    ``quoteforge-reconcile/<run>/ask/<venue>`` (the strategy node asks) and
    ``.../answer/<venue>`` (the execution node, which holds the real adapter, answers).

    Both travel at QoS 1, never retained; a question carries an id and the answer the
    same id. They sit outside the ``quoteforge/`` tree, whose topic kinds are a closed
    set: observers of ``quoteforge/<run>/#`` do not see the venue's order lists.
    """
    scheme.order(venue)  # checks the venue name as a topic level
    return (
        f"{RECONCILE_ROOT}/{scheme.run}/ask/{venue}",
        f"{RECONCILE_ROOT}/{scheme.run}/answer/{venue}",
    )


class ReconcileResponder:
    """The execution node's side of reconciliation: answers the strategy node's
    questions about a venue with the real adapter's ``fetch_open_orders``,
    ``fetch_fills(since_ns)`` or ``fetch_balances``.

    Answers carry orders as ``update_payload`` and fills as ``fill_payload`` (the forms
    of ``order/<venue>`` and ``fill/<venue>``), balances as exact Decimals. An adapter
    that cannot tell answers ``{"unknown": true}``; an adapter that fails answers
    ``{"error": "..."}``. A repeated question (same id) is answered once per arrival
    from the first answer, without asking the venue again. No credential is ever part
    of an answer: only what the venue reported.
    """

    def __init__(
        self, bus: Callable[[], Bus], scheme: TopicScheme, venues: dict[str, ExchangeAdapter]
    ) -> None:
        self._bus = bus
        self.scheme = scheme
        self.venues = venues
        self._answers: dict[str, dict[str, Any] | None] = {}  # id -> answer, None: asking
        self._tasks: set[asyncio.Task[None]] = set()
        self.answered = 0

    def start(self) -> None:
        """Subscribe to the questions about every hosted venue."""
        bus = self._bus()
        for name in self.venues:
            ask, _ = reconcile_topics(self.scheme, name)
            bus.subscribe(ask, self._handler(name))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _handler(self, venue: str) -> Callable[[str, dict[str, Any]], None]:
        def handle(topic: str, payload: dict[str, Any]) -> None:
            self.on_question(venue, payload)

        return handle

    def on_question(self, venue: str, payload: dict[str, Any]) -> None:
        qid = str(payload.get("id", ""))
        what = payload.get("what")
        if not qid:
            logger.error("reconciliation question without an id on venue {}: ignored", venue)
            return
        if qid in self._answers:
            answer = self._answers[qid]
            if answer is not None:  # our answer was lost: send it again
                self._publish(venue, answer)
            return  # still asking the venue: the answer goes out when it comes
        if what not in RECONCILE_WHAT:
            self._answers[qid] = answer = {
                "id": qid,
                "what": what,
                "error": f"unknown question {what!r}: expected one of {RECONCILE_WHAT}",
            }
            self._publish(venue, answer)
            return
        self._answers[qid] = None
        while len(self._answers) > 256:
            del self._answers[next(iter(self._answers))]
        task = asyncio.get_running_loop().create_task(
            self._answer(venue, qid, str(what), int(payload.get("since_ns", 0)))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, venue: str, qid: str, what: str, since_ns: int) -> None:
        answer: dict[str, Any] = {"id": qid, "what": what}
        adapter = self.venues[venue]
        try:
            if what == "open_orders":
                orders = await adapter.fetch_open_orders()
                if orders is not None:
                    answer["orders"] = [update_payload(u, None) for u in orders]
            elif what == "fills":
                fills = await adapter.fetch_fills(since_ns)
                if fills is not None:
                    answer["fills"] = [fill_payload(f) for f in fills]
            else:
                balances = await adapter.fetch_balances()
                if balances is not None:
                    answer["balances"] = {k: Decimal(v) for k, v in balances.items()}
            if len(answer) == 2:
                answer["unknown"] = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("{}: reconciliation question {} failed: {!r}", venue, what, exc)
            answer["error"] = f"{type(exc).__name__}: {exc}"
        if qid in self._answers:
            self._answers[qid] = answer
        self.answered += 1
        self._publish(venue, answer)

    def _publish(self, venue: str, answer: dict[str, Any]) -> None:
        _, topic = reconcile_topics(self.scheme, venue)
        with contextlib.suppress(RuntimeError):  # the bus closed: the node is stopping
            self._bus().publish(topic, answer, qos=1)


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
    """

    def __init__(
        self,
        bus: Bus,
        scheme: TopicScheme,
        *,
        depth: int = 10,
        snapshot_interval_s: float = 1.0,
    ) -> None:
        if depth < 1:
            raise ValueError(f"book depth must be at least 1 level, got {depth}")
        self.bus = bus
        self.scheme = scheme
        self.depth = depth
        self.snapshot_interval_s = snapshot_interval_s
        self.publisher = secrets.token_hex(4)
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
        self.bus.publish(
            self.scheme.trade(venue, symbol),
            {
                "price_ticks": price_ticks,
                "qty_lots": qty_lots,
                "aggressor": aggressor.name.lower(),
                "ts_ns": ts_ns,
            },
        )

    # -- internals -------------------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, {}
        for book in dirty.values():
            self._send(book, snapshot=False)

    def _send(self, book: L2Book, *, snapshot: bool) -> None:
        live_topic, snapshot_topic = self._topics[book.key]
        payload = book_payload(book, self.depth, self.publisher, next(self._n))
        self.bus.publish(live_topic, payload)
        self.books_published += 1
        if snapshot:
            self.bus.publish(snapshot_topic, payload, qos=1, retain=True)

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_interval_s)
            for book in self._books.values():
                _, snapshot_topic = self._topics[book.key]
                payload = book_payload(book, self.depth, self.publisher, next(self._n))
                self.bus.publish(snapshot_topic, payload, qos=1, retain=True)


# ---------------------------------------------------------------------------------------
# The strategy node's adapter
# ---------------------------------------------------------------------------------------


class _Mirror:
    """One market's book as last published by the node hosting it."""

    __slots__ = ("book", "last_n", "last_pub", "last_seen_ns", "reason")

    def __init__(self, book: L2Book) -> None:
        self.book = book
        self.last_pub = ""
        self.last_n = 0
        self.last_seen_ns = 0
        self.reason = ""


class RemoteVenue(ExchangeAdapter):
    """A venue hosted by another node, reached through the bus.

    Books mirror ``book/<venue>/<symbol>`` and the retained snapshots: each message
    replaces the book. A book goes STALE when neither a book message nor a heartbeat of
    the hosting node arrived within ``stale_after_s`` (or when that node says it is
    offline, or its own book is not LIVE), and LIVE again with the next LIVE snapshot.
    ``submit`` publishes each action as an intent on ``intent/<strategy>`` (QoS 1, one
    message id per action); order reports and fills come back from ``order/<venue>`` and
    ``fill/<venue>``. Reconciliation (``fetch_open_orders``, ``fetch_fills``,
    ``fetch_balances``) asks the execution node, which holds the real adapter
    (``reconcile_topics``, ``ReconcileResponder``); no answer within
    ``reconcile_timeout_s`` raises ``ReconcileError``.
    """

    def __init__(
        self,
        ctx: VenueContext,
        bus: Callable[[], Bus],
        scheme: TopicScheme,
        strategies: Sequence[str],
        *,
        host_role: str,
        stale_after_s: float = 3.0,
        connect_timeout_s: float = 30.0,
        replay: ReplayBuffer | None = None,
        lockstep: LockstepFollower | None = None,
        reconcile_timeout_s: float = RECONCILE_TIMEOUT_S,
    ) -> None:
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be > 0, got {stale_after_s}")
        if reconcile_timeout_s <= 0:
            raise ValueError(f"reconcile_timeout_s must be > 0, got {reconcile_timeout_s}")
        # The strategy node never holds venue credentials: the execution node does.
        ctx.secrets = {}
        self.ctx = ctx
        self.name = ctx.name
        self._bus = bus
        self.scheme = scheme
        self.strategies = list(strategies)
        # Intents name a strategy; a venue no strategy trades files them under this one.
        self._default_strategy = self.strategies[0] if self.strategies else "unassigned"
        self.host_role = host_role
        self.stale_after_ns = int(stale_after_s * NS)
        self.connect_timeout_s = connect_timeout_s
        self.replay = replay if replay is not None else ReplayBuffer(bus)
        self.instruments: dict[str, Instrument] = {}
        self.books: dict[str, L2Book] = {}
        self.sink: VenueSink | None = None
        self._mirrors: dict[str, _Mirror] = {}
        self._owner: dict[str, str] = {}
        self._instruments_seen = asyncio.Event()
        self._host_seen_ns = 0
        self._host_online = True
        self._watchdog: asyncio.Task[None] | None = None
        self._last_report_s = 0.0  # monotonic time of the last order report or fill
        self._cancel_all_seq = itertools.count(1)
        self.intents_sent = 0
        self.reconcile_timeout_s = reconcile_timeout_s
        self._questions: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._question_ids = itertools.count(1)
        self._asker = secrets.token_hex(4)
        self._answers_subscribed = False
        # In a lock-step run everything comes from, and goes to, the follower.
        self.lockstep = lockstep
        if lockstep is not None:
            lockstep.attach(self)

    # -- adapter contract ------------------------------------------------------------------
    async def connect(self, sink: VenueSink) -> None:
        self.sink = sink
        bus = self._bus()
        bus.subscribe(self.scheme.instruments(self.name), self._on_instruments)
        try:
            await asyncio.wait_for(self._instruments_seen.wait(), self.connect_timeout_s)
        except TimeoutError:
            raise RuntimeError(
                f"venue {self.name!r}: no instruments on "
                f"{self.scheme.instruments(self.name)!r} after {self.connect_timeout_s:g}s; "
                f"start the {self.host_role} node of run {self.scheme.run!r} (same manifest, "
                "same bus)"
            ) from None
        wanted = self.ctx.symbols or list(self.instruments)
        missing = [s for s in wanted if s not in self.instruments]
        if missing:
            raise RuntimeError(
                f"venue {self.name!r}: the {self.host_role} node does not host "
                f"{', '.join(missing)}; it lists: {', '.join(sorted(self.instruments))}"
            )
        if self.lockstep is not None:
            for symbol in wanted:
                self.books[symbol] = L2Book(self.instruments[symbol])
            await self.lockstep.welcome(self, self.connect_timeout_s)
            return
        for symbol in wanted:
            book = L2Book(self.instruments[symbol])
            self.books[symbol] = book
            mirror = _Mirror(book)
            self._mirrors[symbol] = mirror
            handler = self._book_handler(mirror)
            bus.subscribe(self.scheme.book(self.name, symbol), handler)
            bus.subscribe(self.scheme.book_snapshot(self.name, symbol), handler)
            bus.subscribe(self.scheme.trade(self.name, symbol), self._trade_handler(symbol))
        bus.subscribe(self.scheme.order(self.name), self._on_order)
        bus.subscribe(self.scheme.fill(self.name), self._on_fill)
        bus.subscribe(self.scheme.heartbeat(self.host_role), self._on_host_heartbeat)
        self._host_seen_ns = time.monotonic_ns()
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    def submit(self, actions: Sequence[OrderAction]) -> None:
        topic_of = self.scheme.intent
        lockstep = self.lockstep
        for action in actions:
            if isinstance(action, CancelAll):
                for strategy in self.strategies:
                    seq = next(self._cancel_all_seq)
                    payload, msg_id = intent_payload(action, strategy, seq)
                    if lockstep is not None:
                        lockstep.intent(payload)
                    else:
                        self.replay.publish(topic_of(strategy), payload, msg_id)
                    self.intents_sent += 1
                continue
            strategy = self._strategy_of(action)
            payload, msg_id = intent_payload(action, strategy, 0)
            if lockstep is not None:
                # In virtual time the intent travels with the answer to the step that
                # made it, so the venue receives it at the very same virtual moment.
                lockstep.intent(payload)
            else:
                self.replay.publish(topic_of(strategy), payload, msg_id)
            self.intents_sent += 1

    async def close(self) -> None:
        # Order reports and fills travel on separate topics, so a fill can trail the
        # CANCELLED that ended the run's wait for its orders: keep listening until the
        # stream has been quiet for a moment (bounded) before letting go of the sink.
        deadline = time.monotonic() + (CLOSE_DRAIN_MAX_S if self.lockstep is None else 0.0)
        while time.monotonic() < deadline:
            quiet = time.monotonic() - self._last_report_s
            if quiet >= CLOSE_DRAIN_QUIET_S:
                break
            await asyncio.sleep(CLOSE_DRAIN_QUIET_S - quiet)
        self.sink = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    # -- reconciliation: the execution node asks the real venue -------------------------------
    async def fetch_open_orders(self) -> list[OrderUpdate] | None:
        answer = await self._ask("open_orders")
        orders = answer.get("orders")
        return None if orders is None else [update_from_payload(d) for d in orders]

    async def fetch_fills(self, since_ns: int) -> list[Fill] | None:
        answer = await self._ask("fills", since_ns)
        fills = answer.get("fills")
        return None if fills is None else [fill_from_payload(d) for d in fills]

    async def fetch_balances(self) -> dict[str, Decimal] | None:
        answer = await self._ask("balances")
        balances = answer.get("balances")
        return None if balances is None else {k: Decimal(v) for k, v in balances.items()}

    async def _ask(self, what: str, since_ns: int = 0) -> dict[str, Any]:
        """One question to the execution node, asked again every ``RECONCILE_RETRY_S``
        (a lost question or answer, a subscription not yet active) until answered or
        ``reconcile_timeout_s`` passed."""
        bus = self._bus()
        ask, answers = reconcile_topics(self.scheme, self.name)
        if not self._answers_subscribed:
            self._answers_subscribed = True
            bus.subscribe(answers, self._on_answer)
        qid = f"{self._asker}-{next(self._question_ids)}"
        question = {"id": qid, "what": what, "since_ns": since_ns}
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._questions[qid] = future
        deadline = time.monotonic() + self.reconcile_timeout_s
        try:
            attempt = 0
            while not future.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReconcileError(
                        f"venue {self.name!r}: no answer to reconciliation question "
                        f"{what!r} on {ask!r} after {self.reconcile_timeout_s:g}s; is the "
                        f"execution node of run {self.scheme.run!r} running (same manifest, "
                        "same bus)?"
                    )
                attempt += 1
                bus.publish(ask, question, qos=1, msg_id=f"reconcile:{qid}:{attempt}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), min(RECONCILE_RETRY_S, left))
        finally:
            self._questions.pop(qid, None)
        answer = future.result()
        if "error" in answer:
            raise ReconcileError(
                f"venue {self.name!r}: the execution node could not read {what}: {answer['error']}"
            )
        return answer

    def _on_answer(self, topic: str, payload: dict[str, Any]) -> None:
        future = self._questions.get(str(payload.get("id", "")))
        if future is not None and not future.done():
            future.set_result(payload)

    # -- intents -----------------------------------------------------------------------------
    def _strategy_of(self, action: OrderAction) -> str:
        if isinstance(action, PlaceOrder):
            order = action.order
            strategy = order.strategy or self._default_strategy
            self._owner[order.client_id] = strategy
            return strategy
        if isinstance(action, ReplaceOrder):
            strategy = action.new.strategy or self._owner.get(
                action.old_client_id, self._default_strategy
            )
            self._owner[action.new.client_id] = strategy
            return strategy
        assert isinstance(action, CancelOrder)
        return self._owner.get(action.client_id, self._default_strategy)

    # -- incoming ------------------------------------------------------------------------------
    def _on_instruments(self, topic: str, payload: dict[str, Any]) -> None:
        fresh = {}
        for data in payload.get("instruments", []):
            inst = instrument_from_dict(data)
            fresh[inst.symbol] = inst
        for symbol, inst in fresh.items():
            known = self.instruments.get(symbol)
            if known is None:
                self.instruments[symbol] = inst
            elif known != inst:
                # Books and strategies hold the first version; a changed grid needs a restart.
                logger.error(
                    "venue {}: instrument {} changed on the bus ({} -> {}); restart the "
                    "strategy node to use the new one",
                    self.name,
                    symbol,
                    known,
                    inst,
                )
        self._instruments_seen.set()

    def _book_handler(self, mirror: _Mirror) -> Callable[[str, dict[str, Any]], None]:
        def handle(topic: str, payload: dict[str, Any]) -> None:
            self._apply_book(mirror, payload)

        return handle

    def _apply_book(self, mirror: _Mirror, payload: dict[str, Any]) -> None:
        pub = payload.get("pub", "")
        n = int(payload.get("n", 0))
        # Live updates and retained snapshots travel on two topics: drop the older one.
        if pub == mirror.last_pub and n <= mirror.last_n:
            return
        mirror.last_pub = pub
        mirror.last_n = n
        now = time.monotonic_ns()
        mirror.last_seen_ns = now
        self._host_seen_ns = now
        book = mirror.book
        state = payload.get("state", BookState.LIVE.value)
        if state != BookState.LIVE.value:
            self._set_state(mirror, BookState.STALE, f"publisher book {state}")
            return
        bids = [(int(p), int(q)) for p, q in payload["bids"]]
        asks = [(int(p), int(q)) for p, q in payload["asks"]]
        changed = bids != book.top(Side.BUY, len(bids) + 1) or asks != book.top(
            Side.SELL, len(asks) + 1
        )
        if changed:
            book.apply_snapshot(bids, asks, int(payload.get("ts_ns", 0)))
        else:
            book.ts_ns = int(payload.get("ts_ns", book.ts_ns))
        if book.state is not BookState.LIVE:
            self._set_state(mirror, BookState.LIVE, "snapshot from the bus")
        elif changed and self.sink is not None:
            self.sink.on_book(book)

    def _trade_handler(self, symbol: str) -> Callable[[str, dict[str, Any]], None]:
        def handle(topic: str, payload: dict[str, Any]) -> None:
            if self.sink is not None:
                self.sink.on_trade(
                    self.name,
                    symbol,
                    int(payload["price_ticks"]),
                    int(payload["qty_lots"]),
                    Side.parse(payload["aggressor"]),
                    int(payload["ts_ns"]),
                )

        return handle

    def _on_order(self, topic: str, payload: dict[str, Any]) -> None:
        self._last_report_s = time.monotonic()
        if self.sink is not None:
            update = update_from_payload(payload)
            if update.status.is_terminal:
                self._owner.pop(update.client_id, None)
            self.sink.on_order_update(update)

    def _on_fill(self, topic: str, payload: dict[str, Any]) -> None:
        self._last_report_s = time.monotonic()
        if self.sink is not None:
            self.sink.on_fill(fill_from_payload(payload))

    def _on_host_heartbeat(self, topic: str, payload: dict[str, Any]) -> None:
        online = payload.get("status") == "online"
        self._host_online = online
        if online:
            self._host_seen_ns = time.monotonic_ns()
            return
        reason = f"{self.host_role} node offline ({payload.get('reason', 'no reason given')})"
        for mirror in self._mirrors.values():
            self._set_state(mirror, BookState.STALE, reason)

    # -- lock step ---------------------------------------------------------------------------
    def lockstep_event(self, code: str, data: Any) -> None:
        """One event of a lock-step run, handed on exactly as the venue made it."""
        sink = self.sink
        if code == "y":
            book = self.books.get(data[0])
            if book is not None:
                apply_book_sync(book, data)
            return
        if sink is None:
            return
        if code == "b":
            book = self.books.get(data)
            if book is not None:
                sink.on_book(book)
        elif code == "s":
            book = self.books.get(data[0])
            if book is not None:
                sink.on_book_state(book, data[1], data[2], data[3])
        elif code == "o":
            sink.on_order_update(update_from_wire(self.name, data))
        elif code == "f":
            sink.on_fill(fill_from_payload(data))
        elif code == "x":
            symbol, price, qty, aggressor, ts_ns = data
            sink.on_trade(self.name, symbol, price, qty, Side(aggressor), ts_ns)
        elif code == "w":
            sink.on_offer(offer_from_wire(self.name, data))

    # -- staleness -------------------------------------------------------------------------------
    async def _watch(self) -> None:
        period = max(0.05, self.stale_after_ns / NS / 4)
        while True:
            await asyncio.sleep(period)
            self.check_stale()

    def check_stale(self) -> None:
        """Mark LIVE books STALE when the hosting node has been silent too long."""
        now = time.monotonic_ns()
        for mirror in self._mirrors.values():
            if mirror.book.state is not BookState.LIVE:
                continue
            heard = max(mirror.last_seen_ns, self._host_seen_ns if self._host_online else 0)
            silent = now - heard
            if silent > self.stale_after_ns:
                self._set_state(
                    mirror,
                    BookState.STALE,
                    f"no book message and no {self.host_role} heartbeat for "
                    f"{silent / 1e6:.0f} ms (limit {self.stale_after_ns / 1e6:.0f} ms)",
                )

    def _set_state(self, mirror: _Mirror, new: BookState, reason: str) -> None:
        book = mirror.book
        old = book.state
        if old is new or (old is BookState.SYNCING and new is BookState.STALE):
            return  # a book that never had data stays SYNCING until its first snapshot
        book.state = new
        mirror.reason = reason
        if self.sink is not None:
            self.sink.on_book_state(book, old.value, new.value, reason)


# ---------------------------------------------------------------------------------------
# Lock step: the strategy node of a simulation follows the execution node's clock
# ---------------------------------------------------------------------------------------

LOCKSTEP_RETRY_S = 1.0  # resend an unanswered hello or step this often (wall time)


class _LockstepTimer(TimerHandle):
    __slots__ = ("_clock", "_id")

    def __init__(self, clock: LockstepClock, timer_id: int) -> None:
        super().__init__()
        self._clock = clock
        self._id = timer_id

    def cancel(self) -> None:
        if not self.cancelled:
            super().cancel()
            self._clock._cancel(self._id)


class LockstepClock(Clock):
    """Virtual time owned by another process: the clock of a strategy node that follows
    the ``SimClock`` of the execution node hosting the simulated venues.

    The driver sets the time (``advance``) before it hands over each event. Timers do
    not run by themselves: every ``call_at`` and every cancel is recorded, in call order,
    as an operation (``("timer", id, when)``, ``("cancel", id)``) that the driver puts
    into its own event queue at the place the timer has in a one-process run; when the
    driver's queue reaches it, the driver asks for ``fire(id)``. Other parts of the node
    record their operations too (``record``), so that everything the node does reaches
    the driver in the order it happened.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._ids = itertools.count(1)
        self._timers: dict[int, tuple[TimerHandle, Callable[..., Any], tuple[Any, ...]]] = {}
        self._ops: list[tuple[Any, ...]] = []

    @property
    def is_virtual(self) -> bool:
        return True

    def now_ns(self) -> int:
        return self._now

    def advance(self, now_ns: int) -> None:
        """The driver's time; virtual time never goes back."""
        if now_ns > self._now:
            self._now = now_ns

    def call_at(self, when_ns: int, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        timer_id = next(self._ids)
        handle = _LockstepTimer(self, timer_id)
        self._timers[timer_id] = (handle, fn, args)
        self._ops.append(("timer", timer_id, max(when_ns, self._now)))
        return handle

    def _cancel(self, timer_id: int) -> None:
        if self._timers.pop(timer_id, None) is not None:
            self._ops.append(("cancel", timer_id))

    def fire(self, timer_id: int) -> bool:
        """Run a timer the driver reached; False if it was cancelled (or is unknown)."""
        entry = self._timers.pop(timer_id, None)
        if entry is None or entry[0].cancelled:
            return False
        entry[1](*entry[2])
        return True

    @property
    def pending_timers(self) -> int:
        return len(self._timers)

    def record(self, op: tuple[Any, ...]) -> None:
        """Add one operation of this node to the stream for the driver."""
        self._ops.append(op)

    def take_ops(self) -> list[tuple[Any, ...]]:
        """The operations recorded since the last call, oldest first."""
        ops, self._ops = self._ops, []
        return ops


class LockstepFollower:
    """The strategy node's side of a lock-step simulation.

    The execution node hosts the simulated venues and their ``SimClock``. Every event
    that reaches the strategy engine in a one-process run (book, book state, trade,
    order report, fill, offer, and the engine's own timers) is sent as one step
    (``clock_topics``), stamped with its virtual time; this follower applies it to the
    mirrors, hands it to the engine exactly as the venue made it, and answers the step
    with everything the engine did meanwhile, in order: timers
    set and cancelled, and intents. The driver puts these into its own event queue at
    the place a one-process run would, so the venue sees the same actions at the same
    virtual times and draws the same random numbers. Steps are numbered: a repeated
    step is answered again, an old one ignored.
    """

    def __init__(
        self,
        bus: Callable[[], Bus],
        scheme: TopicScheme,
        clock: LockstepClock,
        *,
        clock_bus: Bus | None = None,
        host_role: str = "execution",
        silence_s: float = 30.0,
    ) -> None:
        self._bus = bus
        # Steps and answers: on a connection of their own when given (see clock_topics).
        self._clock_bus = clock_bus
        self.scheme = scheme
        self.clock = clock
        self.host_role = host_role
        self.step_topic, self.ack_topic = clock_topics(scheme)
        self.instance = secrets.token_hex(6)
        self.venues: dict[str, RemoteVenue] = {}
        self.working: Callable[[], int] = lambda: 0
        self.on_end: Callable[[str], None] = lambda reason: None
        self.last_step = 0
        self._last_answer: dict[str, Any] | None = None
        self._held: int | None = None  # a step answered later (the first, the end)
        self._welcome: list[list[Any]] | None = None
        self._welcomed = asyncio.Event()
        self.ended = asyncio.Event()
        self.done = asyncio.Event()
        self.end_reason = ""
        self.lost = ""
        self._attempt = itertools.count(1)
        self._hello: asyncio.Task[None] | None = None
        self._subscribed = False
        self.steps = 0
        self.silence_s = silence_s
        self._heard = time.monotonic()

    def attach(self, venue: RemoteVenue) -> None:
        self.venues[venue.name] = venue

    # -- start ------------------------------------------------------------------------------
    async def _subscribe(self) -> None:
        if self._subscribed:
            return
        self._subscribed = True
        bus = self._bus()
        steps = bus
        if self._clock_bus is not None:
            await self._clock_bus.start()
            steps = self._clock_bus
        steps.subscribe(self.step_topic, self._on_step)
        bus.subscribe(self.scheme.heartbeat(self.host_role), self._on_host_heartbeat)
        self._hello = asyncio.get_running_loop().create_task(self._say_hello())

    async def _say_hello(self) -> None:
        while not self._welcomed.is_set():
            self._publish({"hello": self.instance})
            await asyncio.sleep(LOCKSTEP_RETRY_S)
        # Then watch the driver: a step (or a repeat) comes at least every
        # LOCKSTEP_RETRY_S while it lives and the broker is reachable.
        while not self.done.is_set():
            await asyncio.sleep(LOCKSTEP_RETRY_S)
            silent = time.monotonic() - self._heard
            if silent > self.silence_s and self._held is None:
                self.lose(f"no step from the {self.host_role} node for {silent:.0f}s")

    async def welcome(self, venue: RemoteVenue, timeout_s: float) -> None:
        """Wait for the driver's first step and apply what it says about ``venue``
        (its books as the venue connected, and their state changes)."""
        await self._subscribe()
        try:
            await asyncio.wait_for(self._welcomed.wait(), timeout_s)
        except TimeoutError:
            raise RuntimeError(
                f"venue {venue.name!r}: no first step of the lock-step run on "
                f"{self.step_topic!r} after {timeout_s:g}s; is the {self.host_role} node of "
                f"run {self.scheme.run!r} running (same manifest, same bus)?"
            ) from None
        if self.lost:
            raise RuntimeError(f"venue {venue.name!r}: {self.lost}")
        for event in self._welcome or ():
            if event[1] == venue.name:
                self.clock.advance(event[2])
                venue.lockstep_event(event[0], event[3])

    def started(self) -> None:
        """The engine has started: answer the first step with what it did."""
        self._welcome = None
        self._answer_held()

    # -- steps -------------------------------------------------------------------------------
    def _on_step(self, topic: str, payload: dict[str, Any]) -> None:
        k = int(payload["k"])
        self._heard = time.monotonic()
        if k <= self.last_step:
            answer = self._last_answer
            if answer is not None and answer["k"] == k:
                self._publish(answer)  # our answer was lost: send it again
            return
        if k != self.last_step + 1:
            logger.error("lock step: step {} after step {}: ignored", k, self.last_step)
            return
        self.last_step = k
        self.steps += 1
        self.clock.advance(int(payload["t"]))
        events = payload.get("ev") or []
        if k == 1:
            # The venues are connecting: each RemoteVenue takes its part in connect().
            self._welcome = events
            self._held = k
            self._welcomed.set()
            return
        venues = self.venues
        clock = self.clock
        for code, venue, t, data in events:
            clock.advance(t)
            if code == "t":
                clock.fire(data)
                continue
            target = venues.get(venue)
            if target is not None:
                target.lockstep_event(code, data)
        if payload.get("done"):
            self.done.set()
            return
        end = payload.get("end")
        if end is not None:
            self._held = k
            self.end_reason = str(end)
            self.ended.set()
            self.on_end(self.end_reason)
            return
        self._answer(k)

    def _answer(self, k: int) -> None:
        answer = {
            "k": k,
            "ops": [list(op) for op in self.clock.take_ops()],
            "working": self.working(),
            "src": self.instance,
        }
        self._last_answer = answer
        self._publish(answer)

    def _answer_held(self) -> None:
        if self._held is not None:
            k, self._held = self._held, None
            self._answer(k)

    def answer_end(self) -> None:
        """The engine has pulled its quotes after the end step: answer it."""
        self._answer_held()

    def intent(self, payload: dict[str, Any]) -> None:
        self.clock.record(("intent", payload))

    def request_end(self, reason: str) -> None:
        """This node wants to stop: ask the driver to end the run at its current time."""
        self._publish({"stop": reason, "src": self.instance})

    def _publish(self, payload: dict[str, Any]) -> None:
        bus = self._clock_bus if self._clock_bus is not None else self._bus()
        with contextlib.suppress(RuntimeError):  # the bus closed: the node is stopping
            bus.publish(
                self.ack_topic,
                payload,
                qos=0,
                msg_id=f"clock-ack:{self.instance}:{payload.get('k', 0)}:{next(self._attempt)}",
            )

    # -- the driver's liveness --------------------------------------------------------------------
    def _on_host_heartbeat(self, topic: str, payload: dict[str, Any]) -> None:
        if payload.get("status") == "online" or not self._welcomed.is_set() or self.done.is_set():
            return  # retained from an earlier run, or the run is over: not news
        self.lose(f"{self.host_role} node offline ({payload.get('reason', 'no reason given')})")

    def lose(self, reason: str) -> None:
        """The driver is gone: nothing will advance the clock any more."""
        if self.lost:
            return
        self.lost = reason
        logger.warning("lock step: {}", reason)
        self.end_reason = self.end_reason or reason
        for event in (self._welcomed, self.ended, self.done):
            event.set()
        self.on_end(reason)

    async def close(self) -> None:
        if self._hello is not None:
            self._hello.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._hello
            self._hello = None
        if self._clock_bus is not None and self._subscribed:
            await self._clock_bus.close()
