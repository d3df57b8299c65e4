"""``RemoteVenue``: the strategy node's adapter for a venue hosted by other nodes.

The rest of the distributed venue plumbing lives in modules of its own: the wire forms
(``wire``), the publishers of a hosted venue's market data and of replayable QoS 1
streams (``publishers``), reconciliation (``reconcile``) and lock step (``lockstep``).
Their public names are re-exported here, where the node runtime, tests and docs have
always imported them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from loguru import logger

from quoteforge.book import BookState, L2Book
from quoteforge.bus import Bus
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
from quoteforge.model import Fill, Instrument, OrderStatus, OrderUpdate, Side
from quoteforge.plugins.distributed.execution_instances import ExecutionBinding
from quoteforge.plugins.distributed.freshness import (
    BookMirror,
    NodePause,
    book_message_problem,
    heartbeat_age_over,
)
from quoteforge.plugins.distributed.lockstep import (
    CLOCK_ROOT,
    LOCKSTEP_RETRY_S,
    LockstepClock,
    LockstepFollower,
    apply_lockstep_event,
    clock_topics,
)
from quoteforge.plugins.distributed.publishers import NS, MarketDataPublisher, ReplayBuffer
from quoteforge.plugins.distributed.reconcile import (
    RECONCILE_RETRY_S,
    RECONCILE_ROOT,
    RECONCILE_TIMEOUT_S,
    RECONCILE_WHAT,
    ReconcileError,
    ReconcileResponder,
    reconcile_topics,
)
from quoteforge.plugins.distributed.session_rivals import ADDRESS_FIELD
from quoteforge.plugins.distributed.topics import TopicScheme
from quoteforge.plugins.distributed.wire import (
    IntentError,
    apply_book_sync,
    book_payload,
    book_sync,
    fill_from_payload,
    fill_payload,
    host_offline_reason,
    instrument_from_dict,
    instrument_to_dict,
    intent_from_payload,
    intent_payload,
    offer_from_wire,
    offer_to_wire,
    update_from_payload,
    update_from_wire,
    update_payload,
    update_to_wire,
)

__all__ = [
    "CLOCK_ROOT",
    "LOCKSTEP_RETRY_S",
    "RECONCILE_RETRY_S",
    "RECONCILE_ROOT",
    "RECONCILE_TIMEOUT_S",
    "RECONCILE_WHAT",
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


class RemoteVenue(ExchangeAdapter):
    """A venue hosted by another node, reached through the bus.

    Books mirror ``book/<venue>/<symbol>`` and the retained snapshots: each message
    replaces the book. A book goes STALE when neither a book message nor a heartbeat of
    the hosting node arrived within ``stale_after_s`` (or when that node says it is
    offline, or its own book is not LIVE), and LIVE again with the next LIVE snapshot.
    When this node did not run for longer than ``stale_after_s`` it catches up: the
    first book message, trade, order report or fill of that time makes every book STALE
    before it is applied, and the books go LIVE again with a book message published
    since the node woke. A book message published longer than ``stale_after_s`` ago
    makes its book STALE too, until a message published since it was read
    (``freshness``).
    With a market-data host, the books also go STALE when the execution node is offline
    or silent for ``stale_after_s`` (no order would reach the venue).
    ``submit`` publishes each action as an intent on ``intent/<strategy>`` (QoS 1, one
    message id per action); order reports and fills come back from ``order/<venue>`` and
    ``fill/<venue>``. Reconciliation (``fetch_open_orders``, ``fetch_fills``,
    ``fetch_balances``) asks the execution node, which holds the real adapter
    (``reconcile_topics``, ``ReconcileResponder``); no answer within
    ``reconcile_timeout_s`` raises ``ReconcileError``. With a ``binding`` (one per
    strategy node, shared by its venues) only the bound execution session's books,
    trades, order reports, fills and answers are applied (see ``ExecutionBinding``); with
    a market-data host and an ``md_binding``, only the bound market-data session's books,
    trades and heartbeats.
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
        binding: ExecutionBinding | None = None,
        session: str = "",
        md_binding: ExecutionBinding | None = None,
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
        self.binding = binding
        # The binding of the node hosting the books: another session's are not applied.
        self.host_binding = binding if host_role == "execution" else md_binding
        self.session = session  # the strategy node's, named in every intent
        if binding is not None and lockstep is None:
            topic = scheme.node_session("execution")
            binding.listen(lambda payload: self._on_execution_session(topic, payload))
        self.stale_after_ns = int(stale_after_s * NS)
        self.connect_timeout_s = connect_timeout_s
        self.replay = replay if replay is not None else ReplayBuffer(bus)
        self.instruments: dict[str, Instrument] = {}
        self.books: dict[str, L2Book] = {}
        self.sink: VenueSink | None = None
        self._mirrors: dict[str, BookMirror] = {}
        self._owner: dict[str, str] = {}
        self._instruments_seen = asyncio.Event()
        self._host_seen_ns = 0
        self._host_online = True
        # No order reaches the venue without the execution node (with a market-data
        # host, too): it is ready once it announced its session (it listens to intents
        # then) and no "offline" came after that session.
        self._execution_online = False
        self._execution_session: tuple[str, int] | None = None
        self._execution_gone: tuple[str, int] | None = None
        # With a market-data host, the execution node's silence is watched too: a node
        # that froze (a paused host, a dead link the broker has not noticed yet) keeps
        # its "online" until its last will, up to 1.5x the MQTT keepalive later.
        self._execution_heard_ns = 0
        self._execution_silent = False
        self._execution_ready = asyncio.Event()  # set while _execution_online
        self._asked = False  # the first reconciliation question waits for the node
        #: Called with the session of an execution node ready to take intents (its
        #: announcement), each time one is: the strategy node reconciles on a rebind.
        self.on_execution_ready: Callable[[str], None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._pause: NodePause | None = None  # set by connect (not in lock step)
        # After a pause of this node: why its books are STALE once a message of that
        # time is read; empty once a book message published since has been read.
        self._catch_up = ""
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
        # Every message is seen by the pause watch first: after a pause of this node,
        # the books go STALE before a message of that time is applied.
        pause = self._pause = NodePause.of_running_loop()
        pause.join(self, self.stale_after_ns)

        def subscribe(topic: str, handler: Callable[[str, dict[str, Any]], None]) -> None:
            def handle(topic: str, payload: dict[str, Any]) -> None:
                pause.seen()
                handler(topic, payload)

            bus.subscribe(topic, handle)

        # The execution node's session, then the heartbeats, then the books: a crashed
        # node's retained session, then its retained last will ("offline"), then the
        # retained book snapshots it left behind, each judged by what came before.
        subscribe(self.scheme.node_session("execution"), self._on_execution_session)
        subscribe(self.scheme.heartbeat(self.host_role), self._on_host_heartbeat)
        if self.host_role != "execution":
            subscribe(self.scheme.heartbeat("execution"), self._on_execution_heartbeat)
        for symbol in wanted:
            book = L2Book(self.instruments[symbol])
            self.books[symbol] = book
            mirror = BookMirror(book)
            self._mirrors[symbol] = mirror
            handler = self._book_handler(mirror)
            subscribe(self.scheme.book(self.name, symbol), handler)
            subscribe(self.scheme.book_snapshot(self.name, symbol), handler)
            subscribe(self.scheme.trade(self.name, symbol), self._trade_handler(symbol))
        subscribe(self.scheme.order(self.name), self._on_order)
        subscribe(self.scheme.fill(self.name), self._on_fill)
        self._host_seen_ns = time.monotonic_ns()
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    def submit(self, actions: Sequence[OrderAction]) -> None:
        topic_of = self.scheme.intent
        lockstep = self.lockstep
        if self._pause is not None:
            # A timer that came due while this node did not run (a strategy's refresh, a
            # held-back requote) runs before the watch and the sockets: the pause is
            # noticed here first, so nothing it asks for is priced on the book of before.
            self._pause.seen()
        if self._catch_up:
            actions = self._refuse_while_catching_up(actions)
        # Each intent names this node's session and the execution session it is bound
        # to: no other execution node acts on it (``SessionRivals.addressed_elsewhere``).
        bound = self.binding.bound if self.binding is not None else None
        address = {"session": self.session} if self.session else {}
        if bound:
            address[ADDRESS_FIELD] = bound
        for action in actions:
            if isinstance(action, CancelAll):
                strategies = self.strategies or [self._default_strategy]
                made = [intent_payload(action, s, next(self._cancel_all_seq)) for s in strategies]
            else:
                made = [intent_payload(action, self._strategy_of(action), 0)]
            for payload, msg_id in made:
                payload.update(address)
                if lockstep is not None:
                    # In virtual time the intent travels with the answer to the step that
                    # made it, so the venue receives it at the very same virtual moment.
                    lockstep.intent(payload)
                else:
                    self.replay.publish(topic_of(payload["strategy"]), payload, msg_id)
                self.intents_sent += 1

    def _refuse_while_catching_up(self, actions: Sequence[OrderAction]) -> list[OrderAction]:
        """The cancels among ``actions``; the places and replaces, made before a book
        message published since this node's pause was read, are not sent: each new order
        is reported REJECTED (a refused replacement leaves its old order as it was)."""
        self._all_stale(self._catch_up)
        reason = f"not sent: {self._catch_up}"
        kept: list[OrderAction] = []
        refused = []
        for action in actions:
            if isinstance(action, PlaceOrder | ReplaceOrder):
                refused.append(action.order if isinstance(action, PlaceOrder) else action.new)
            else:
                kept.append(action)
        if refused and self.sink is not None:
            sink, now = self.sink, time.time_ns()
            logger.warning("venue {}: {} order(s) {}", self.name, len(refused), reason)
            for order in refused:  # after this call returns, as a venue's answer would
                update = OrderUpdate(
                    self.name, order.client_id, OrderStatus.REJECTED, now,
                    reason=reason, symbol=order.symbol,
                )  # fmt: skip
                asyncio.get_running_loop().call_soon(sink.on_order_update, update)
        return kept

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
        if self._pause is not None:
            self._pause.leave(self)
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
        ``reconcile_timeout_s`` passed. The first question (a live run's start-up
        reconciliation) of a connected venue first waits up to ``connect_timeout_s`` for
        the execution node to announce its session: the nodes of a split run may start
        in any order."""
        if not self._asked and self._watchdog is not None:  # connected: sessions watched
            self._asked = True
            await self._await_execution_node(what)
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

    async def _await_execution_node(self, what: str) -> None:
        if self._execution_online:
            return
        topic = self.scheme.node_session("execution")
        logger.info(
            "venue {}: waiting up to {:g}s for the execution node (its session on {}) to "
            "ask it for {}",
            self.name,
            self.connect_timeout_s,
            topic,
            what,
        )
        try:
            await asyncio.wait_for(self._execution_ready.wait(), self.connect_timeout_s)
        except TimeoutError:
            raise ReconcileError(
                f"venue {self.name!r}: cannot ask the execution node for {what}: it has not "
                f"announced a session on {topic!r} within {self.connect_timeout_s:g}s "
                f"(nodes.connect_timeout); start the execution node of run "
                f"{self.scheme.run!r} (same manifest, same bus)"
            ) from None

    def _on_answer(self, topic: str, payload: dict[str, Any]) -> None:
        future = self._questions.get(str(payload.get("id", "")))
        if future is not None and not future.done() and self._admit(payload, "answer"):
            future.set_result(payload)

    def _admit(self, payload: dict[str, Any], kind: str) -> bool:
        """Whether a message of an execution node comes from the bound session."""
        binding = self.binding
        return binding is None or binding.admit(payload.get("session"), kind)

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

    def _book_handler(self, mirror: BookMirror) -> Callable[[str, dict[str, Any]], None]:
        def handle(topic: str, payload: dict[str, Any]) -> None:
            self._apply_book(mirror, payload)

        return handle

    def _apply_book(self, mirror: BookMirror, payload: dict[str, Any]) -> None:
        if not (self._host_online and self._execution_online) or self._execution_silent:
            return  # a host that is down left this (its last book), or no order gets out
        host = self.host_binding
        if host is not None and not host.admit(payload.get("session"), "book"):
            return
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
        late = self._read_late(mirror, payload.get("sent_ns"))
        bids = [(int(p), int(q)) for p, q in payload["bids"]]
        asks = [(int(p), int(q)) for p, q in payload["asks"]]
        changed = bids != book.top(Side.BUY, len(bids) + 1) or asks != book.top(
            Side.SELL, len(asks) + 1
        )
        if changed:
            book.apply_snapshot(bids, asks, int(payload.get("ts_ns", 0)))
        else:
            book.ts_ns = int(payload.get("ts_ns", book.ts_ns))
        if late is not None:
            # Kept (the messages after it are newer), but not the book of now.
            if self._catch_up:
                self._all_stale(late)
            elif book.state is BookState.LIVE:
                mirror.fresh_from_ns = time.time_ns()
                mirror.told_late = True
                self._set_state(mirror, BookState.STALE, late)
            return
        if book.state is not BookState.LIVE:
            self._set_state(mirror, BookState.LIVE, "snapshot from the bus")
        elif changed and self.sink is not None:
            self.sink.on_book(book)

    def _read_late(self, mirror: BookMirror, sent: Any) -> str | None:
        """Why a book message published at ``sent`` (``sent_ns``, wall clock) does not
        show the book of now, or None: too old, stamped ahead by a clock, or published
        before this node knew itself behind (its pause, a message read late), when newer
        ones may still wait unread. A message without ``sent_ns`` (a publisher of an
        older version) is taken as fresh, except while catching up after a pause."""
        if sent is None:
            return self._catch_up or None
        sent_ns = int(sent)
        problem = book_message_problem(sent_ns, time.time_ns(), self.stale_after_ns)
        if sent_ns < mirror.fresh_from_ns:
            return self._catch_up or problem or "published before this node caught up"
        if problem is not None:
            if not (mirror.told_late or self._catch_up or mirror.book.state is BookState.LIVE):
                mirror.told_late = True  # once per spell: the clocks may be apart for good
                logger.warning(
                    "venue {}: book {} not LIVE: {}", self.name, mirror.book.symbol, problem
                )
            return problem
        if self._catch_up:
            self._catch_up = ""
            logger.info(
                "venue {}: caught up after its pause: read a book message published since",
                self.name,
            )
        return None

    def _trade_handler(self, symbol: str) -> Callable[[str, dict[str, Any]], None]:
        def handle(topic: str, payload: dict[str, Any]) -> None:
            if self._catch_up:
                self._all_stale(self._catch_up)
            host = self.host_binding
            if self.sink is None or (host and not host.admit(payload.get("session"), "trade")):
                return
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
        if not self._admit(payload, "order"):
            return
        if self._catch_up:  # a report of the pause: requote on nothing of before
            self._all_stale(self._catch_up)
        self._last_report_s = time.monotonic()
        if self.sink is not None:
            update = update_from_payload(payload)
            if update.status.is_terminal:
                self._owner.pop(update.client_id, None)
            self.sink.on_order_update(update)

    def _on_fill(self, topic: str, payload: dict[str, Any]) -> None:
        if not self._admit(payload, "fill"):
            return  # never booked
        if self._catch_up:
            self._all_stale(self._catch_up)
        self._last_report_s = time.monotonic()
        if self.sink is not None:
            self.sink.on_fill(fill_from_payload(payload))

    def _on_host_heartbeat(self, topic: str, payload: dict[str, Any]) -> None:
        gone = self._gone_reason(payload, self.host_role)
        if gone is None:
            return
        self._host_online = not gone
        if not gone:
            self._host_seen_ns = time.monotonic_ns()
            return
        if self.host_role == "execution":
            self._execution_left()
        self._all_stale(gone)

    def _gone_reason(self, payload: dict[str, Any], role: str) -> str | None:
        """Why the ``role`` node of a heartbeat is gone ("" while it lives): it said
        "offline", or its "online" was sent over ``stale_after_s`` ago (the retained last
        word of a node that died before its last will went out). None when it is no
        news: another execution session's (it neither keeps the books LIVE nor makes
        them STALE), or an old one read after this node's pause (fresh ones follow)."""
        binding = self.binding if role == "execution" else self.host_binding
        if binding is not None and not binding.heartbeat(payload):
            return None
        if payload.get("status") != "online":
            return host_offline_reason(role, payload)
        age = heartbeat_age_over(payload, self.stale_after_ns / NS)
        if age is None:
            return ""
        if self._catch_up:
            return None
        return (
            f"{role} node's last heartbeat was sent {age:.1f} s ago, longer than "
            "nodes.stale_after: taken for dead (or the nodes' clocks disagree: NTP)"
        )

    def _on_execution_session(self, topic: str, payload: dict[str, Any]) -> None:
        binding = self.binding
        if binding is not None and not binding.admit(payload.get("instance"), "session", payload):
            return
        session = (str(payload.get("instance", "")), int(payload.get("connects", 0)))
        self._execution_session = session
        # A retained session sent again (a new subscription) is not a return.
        self._execution_online = session != self._execution_gone
        if self._execution_online:
            self._execution_ready.set()
            self._execution_heard()
            if self.on_execution_ready is not None:
                self.on_execution_ready(session[0])

    def _on_execution_heartbeat(self, topic: str, payload: dict[str, Any]) -> None:
        gone = self._gone_reason(payload, "execution")
        if gone is None:
            return
        if not gone:
            # Ready only with its next session (it may not have subscribed yet); the
            # same session heard again after a silence is back at once.
            if self._execution_online:
                self._execution_heard()
            return
        self._execution_left()
        self._all_stale(gone + ": no order reaches the venue")

    def _execution_left(self) -> None:
        """No order reaches the venue until the execution node's next session."""
        self._execution_online = False
        self._execution_gone = self._execution_session
        self._execution_ready.clear()

    def _execution_heard(self) -> None:
        self._execution_heard_ns = time.monotonic_ns()
        if self._execution_silent:
            self._execution_silent = False
            logger.info(
                "venue {}: execution node heard again: books LIVE with the next book message",
                self.name,
            )

    def _all_stale(self, reason: str) -> None:
        for mirror in self._mirrors.values():
            self._set_state(mirror, BookState.STALE, reason)

    def node_paused(self, gap_ns: int) -> None:
        """This node did not run for ``gap_ns`` (longer than ``stale_after_s``): what
        arrived meanwhile waits unread, in order, so the reports of that time come before
        the books of after them. Until a book message published from now on is read,
        any book message, trade, order report or fill makes every book STALE before it
        is applied: none of them requotes on the book of before. Heartbeats alone leave
        the books as they are (a host that published nothing meanwhile left its book as
        it was)."""
        if not self._mirrors:
            return
        woke = time.time_ns()
        for mirror in self._mirrors.values():
            mirror.fresh_from_ns = woke
        limit = self.stale_after_ns / NS
        self._catch_up = (
            f"this node did not run for {gap_ns / NS:.1f} s, longer than nodes.stale_after "
            f"({limit:g} s): reading what arrived meanwhile"
        )
        logger.warning(
            "venue {}: this node did not run for {:.1f} s (a paused host or a blocked event "
            "loop), longer than nodes.stale_after ({:g} s): what arrived meanwhile is read "
            "first; a book message, trade, order report or fill of that time makes the "
            "books STALE, LIVE again with a book message published since; silences are "
            "judged again once it is read",
            self.name,
            gap_ns / NS,
            limit,
        )

    # -- lock step ---------------------------------------------------------------------------
    def lockstep_event(self, code: str, data: Any) -> None:
        """One event of a lock-step run, handed on exactly as the venue made it."""
        apply_lockstep_event(self, code, data)

    # -- staleness -------------------------------------------------------------------------------
    async def _watch(self) -> None:
        period = max(0.05, self.stale_after_ns / NS / 4)
        pause = self._pause
        while True:
            slept = time.monotonic()
            await asyncio.sleep(period)
            if pause is not None:
                pause.ticked()
            late = time.monotonic() - slept - period
            if late > max(period, 0.1):
                # This node did not run (its host paused, its loop blocked): the messages
                # of that time wait unread, so silences are judged after they are read
                # (said once: a pause longer than stale_after was told by node_paused).
                if pause is None or pause.noted_ns < slept * NS:
                    logger.warning(
                        "venue {}: this node did not run for {:.1f} s (a paused host or a "
                        "blocked event loop); silences are judged again once its messages "
                        "are read",
                        self.name,
                        late + period,
                    )
                continue
            self.check_stale()

    def check_stale(self) -> None:
        """Mark LIVE books STALE when the hosting node, or with a market-data host the
        execution node, has been silent too long."""
        now = time.monotonic_ns()
        if self.host_role != "execution" and self._execution_online and not self._execution_silent:
            silent = now - self._execution_heard_ns
            if silent > self.stale_after_ns:
                self._execution_silent = True
                self._all_stale(
                    f"no execution heartbeat for {silent / 1e6:.0f} ms (limit "
                    f"{self.stale_after_ns / 1e6:.0f} ms): no order reaches the venue"
                )
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

    def _set_state(self, mirror: BookMirror, new: BookState, reason: str) -> None:
        book = mirror.book
        old = book.state
        if old is new or (old is BookState.SYNCING and new is BookState.STALE):
            return  # a book that never had data stays SYNCING until its first snapshot
        book.state = new
        mirror.reason = reason
        if new is BookState.LIVE:
            mirror.told_late = False
        if self.sink is not None:
            self.sink.on_book_state(book, old.value, new.value, reason)
