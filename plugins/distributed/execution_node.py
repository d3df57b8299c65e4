"""The execution node of a split run: hosts the trading side of every venue (simulated
venues whole), checks and forwards the strategy node's intents, journals every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

from quoteforge.assembly import (
    build_journal,
    build_portfolio,
    build_risk,
    build_risk_view,
    build_venue,
    id_prefix,
    sim_epoch_ns,
    symbols_by_venue,
    venue_context,
    venue_markets,
)
from quoteforge.book import L2Book
from quoteforge.clock import NS, SimClock
from quoteforge.exchange import (
    CancelAll,
    CancelOrder,
    ExchangeAdapter,
    OrderAction,
    PlaceOrder,
    ReplaceOrder,
)
from quoteforge.gate import OrderGate
from quoteforge.journal import JournalRecord
from quoteforge.model import (
    Fill,
    Offer,
    Order,
    OrderStatus,
    OrderUpdate,
    Side,
    TimeInForce,
)
from quoteforge.orders import OrderManager, fill_to_dict
from quoteforge.plugins.distributed.execution_instances import (
    cancel_listed_orders,
)
from quoteforge.plugins.distributed.lockstep_driver import LockstepDriver
from quoteforge.plugins.distributed.node_base import (
    Node,
    is_lockstep,
    is_simulated,
    node_bus,
)
from quoteforge.plugins.distributed.reconcile import book_fills_after_kill
from quoteforge.plugins.distributed.recording_journal import RecordingJournal
from quoteforge.plugins.distributed.remote import (
    IntentError,
    MarketDataPublisher,
    ReconcileResponder,
    ReplayBuffer,
    fill_payload,
    intent_from_payload,
    offer_to_wire,
    update_payload,
    update_to_wire,
)
from quoteforge.plugins.distributed.session_rivals import SessionRivals
from quoteforge.plugins.distributed.strategy_binding import StrategyBinding, session_of
from quoteforge.plugins.distributed.topics import (
    TopicKind,
)
from quoteforge.portfolio import Portfolio
from quoteforge.risk import RiskRefusal
from quoteforge.strategy import Market


class ExecutionNode(Node):
    """Hosts the trading side of every venue (simulated venues whole): takes intents,
    checks new orders against the risk chain with positions from its own fills, sends
    them to the venue, journals every event (the record of truth) and publishes every
    order report and fill."""

    role = "execution"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lockstep: LockstepDriver | None = None
        if is_lockstep(self.loaded, self.registry):
            # Every venue is simulated: they run in virtual time, driven from here.
            sim_clock = SimClock(sim_epoch_ns())
            self.clock = sim_clock
            # The steps have a connection of their own (see remote.clock_topics).
            clock_bus = node_bus(
                self.loaded,
                self.registry,
                f"{self.role}-clock",
                self.settings,
                heartbeats=False,
                user=self.role,
            )
            self.lockstep = LockstepDriver(self, sim_clock, clock_bus)
        self._early_cancels: set[str] = set()
        self.replay = ReplayBuffer(lambda: self.bus, window_s=float(self.settings.replay_window))
        self.intent_max_age_ns = int(float(self.settings.intent_max_age) * NS)
        self.stopping = False
        self.started_ns = 0  # when start() began: a kill checks the venues' fills since
        self.fills = 0
        self.refusals = 0
        self._last_refusal = ""
        self.strategies = set(self.manifest.strategies)
        self.journal = RecordingJournal(build_journal(self.loaded, self.registry, self.run_dir))
        self.journal_open = False
        # This manager never makes client ids: it adopts the strategy node's orders.
        self.orders = OrderManager(
            self.journal, self.clock, id_prefix=id_prefix(self.manifest.run.name)
        )
        # Intents are taken from one strategy session at a time (see StrategyBinding).
        self.binding = StrategyBinding(
            self.manifest.run.name,
            float(self.settings.strategy_grace),
            self.orders,
            self.strategies,
            self._cancel_orders,
            on_conflict=self._strategy_conflict,
            on_goodbye=self._strategy_goodbye,
            log=self.log,
            skew_limit_s=float(self.settings.stale_after) / 2,
        )
        self.watch = self.binding.watch
        # Books, trades, order reports, fills and answers carry this node's session, so
        # the strategy node keeps to one execution node (see ExecutionBinding).
        self.session = self.sessions.instance
        self.rivals: SessionRivals | None = None  # another live execution session (start)
        self.publisher = MarketDataPublisher(
            self.bus,
            self.scheme,
            depth=self.settings.book_depth,
            snapshot_interval_s=float(self.settings.snapshot_interval),
            session=self.session,
            # After this node's pause the simulated books go out STALE first (wall
            # clock only: lock-step books carry virtual time and wait for the steps).
            stale_after_s=float(self.settings.stale_after) if self.lockstep is None else None,
        )
        self.venues: dict[str, ExchangeAdapter] = {}
        # The strategy node's reconciliation questions, answered by the real adapters.
        self.reconciler = ReconcileResponder(
            lambda: self.bus, self.scheme, self.venues, session=self.session
        )
        self.md_venues: set[str] = set()
        self.portfolio = Portfolio({})
        self.markets: dict[str, Market] = {}

    # -- start ------------------------------------------------------------------------------
    async def preflight(self) -> None:
        """Claim the run's execution role, on a connection of its own (see
        ``RoleClaim``): refused beside a live execution instance of this run or a
        rival that claimed after this one (both would send every order)."""
        # A silent instance is taken for dead only once the strategy node has given it up
        # too (stale_after, and half a heartbeat for the messages on their way): it then
        # takes this node's session at once.
        await self.claim_the_role(
            float(self.settings.stale_after) + float(self.settings.heartbeat) / 2
        )

    async def start(self) -> None:
        m = self.manifest
        reg = self.registry
        self.announce_claim()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.started_ns = self.clock.now_ns()
        await self.journal.open()
        self.journal_open = True
        if self.lockstep is not None:
            await self.lockstep.start()
        symbols = symbols_by_venue(m)
        for name, spec in m.exchanges.items():
            whole = is_simulated(reg, spec)
            ctx = venue_context(
                self.loaded,
                name,
                clock=self.clock,
                run_dir=self.run_dir,
                symbols=symbols[name],
                manifest_path=self.manifest_path,
                role="all" if whole else "execution",
            )
            self.venues[name] = build_venue(self.loaded, reg, name, ctx)
            if whole:
                self.md_venues.add(name)
                stamps = getattr(self.venues[name], "book_ts_venue_time", False) is True
                self.publisher.venue_time_stamps(name, stamps)
        for venue in self.venues.values():
            await venue.connect(self)
        # Before intents are taken: an order of this run resting at a venue that this new
        # process did not place was left by a node that died (its strategy node's cancels
        # went nowhere). Its cancel report goes to the strategy node like any other.
        await cancel_listed_orders(
            self.venues,
            self.orders.id_prefix,
            lambda cid: self.orders.get(cid) is not None,
            what="this new node did not place (left by a node that died?)",
        )
        # Before the instruments go out: a strategy node starts asking once it has them.
        self.reconciler.start()
        self.portfolio = build_portfolio(self.venues)
        self.markets = venue_markets(self.venues, self.portfolio)
        self.risk = build_risk(self.loaded, reg, self._on_refusal)
        self.view = build_risk_view(self.portfolio, self.orders, self.clock, self.markets)
        # Intents were planned by the strategy node's policy: no policy stage here.
        self.gate = OrderGate(
            risk=self.risk,
            risk_view=self.view,
            breakers=None,
            orders=self.orders,
            policy=None,
            position_lots=self.portfolio.position_lots,
            now_ns=self.clock.now_ns,
            is_halted=lambda s: bool(self.watch.blocked.get(s) or self.watch.blocked.get("*")),
        )
        for name, venue in self.venues.items():
            self.publisher.publish_instruments(name, venue.instruments)
            if name in self.md_venues:
                for book in venue.books.values():
                    self.publisher.on_book_state(book, book.state.value, book.state.value, "start")
                    if self.lockstep is not None:
                        self.lockstep.track(book)
        self.publisher.start()
        self.sessions.on_reconnect(self.publisher.republish)
        self.journal.append(
            JournalRecord(
                f"run-start-{self.run_dir.name}",
                "run",
                self.clock.now_ns(),
                "",
                {"event": "start", "role": self.role, "mode": m.run.mode, "seed": m.run.seed},
            )
        )
        self.journal.take()
        self.rivals = self.watch_rivals(self._rival_won)
        self.bus.subscribe(self.scheme.all_of(TopicKind.INTENT), self._on_intent)
        self.bus.subscribe(self.scheme.node_session("strategy"), self.binding.on_announce)
        self.bus.subscribe(self.scheme.heartbeat("strategy"), self.binding.on_heartbeat)
        watch = self.binding.watch_silence(self._strategy_lost)
        self._tasks.append(asyncio.get_running_loop().create_task(watch))
        self.log.info(
            "hosting {} venue(s) ({} with their market data): {}{}",
            len(self.venues),
            len(self.md_venues),
            ", ".join(sorted(self.venues)),
            "; virtual time in lock step with the strategy node" if self.lockstep else "",
        )

    # -- venue sink --------------------------------------------------------------------------
    def on_book(self, book: L2Book) -> None:
        if self.lockstep is not None:
            # The strategy node gets every update in its step; observers get the
            # periodic snapshots.
            self.lockstep.track(book)
            self.lockstep.deliver("b", book.venue, book.symbol)
        elif book.venue in self.md_venues:
            self.publisher.on_book(book)

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        if self.lockstep is not None:
            self.lockstep.track(book)
            self.lockstep.deliver("s", book.venue, [book.symbol, old, new, reason])
        if book.venue in self.md_venues:
            self.publisher.on_book_state(book, old, new, reason)

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        if self.lockstep is not None:
            self.lockstep.deliver(
                "x", venue, [symbol, price_ticks, qty_lots, int(aggressor), ts_ns]
            )
        if venue in self.md_venues:
            self.publisher.on_trade(venue, symbol, price_ticks, qty_lots, aggressor, ts_ns)

    def on_offer(self, offer: Offer) -> None:
        if self.lockstep is not None:
            self.lockstep.deliver("w", offer.venue, offer_to_wire(offer))

    def on_order_update(self, update: OrderUpdate, mark: dict[str, Any] | None = None) -> None:
        """Journal and publish a venue's report; ``mark`` adds fields to the published one."""
        if self.lockstep is not None:
            self.lockstep.deliver("o", update.venue, update_to_wire(update))
        order = self.orders.apply_update(update)
        records = self.journal.take()
        event_id = next(
            (
                r.event_id
                for r in reversed(records)
                if (r.payload.get("order") or {}).get("client_id") == update.client_id
            ),
            None,
        )
        if event_id is None:
            # Not a state change here (a FILLED report after the fill that completed the
            # order, or an order this node does not know): still every node's business.
            event_id = (
                f"{update.venue}:{update.client_id}:report:{update.status.value}:"
                f"{update.filled_lots}:{update.ts_ns}"
            )
            order = self.orders.get(update.client_id)
        payload = update_payload(update, order) | (mark or {})
        payload["session"] = self.session
        self.replay.publish(self.scheme.order(update.venue), payload, event_id)

    def on_fill(self, fill: Fill) -> None:
        if self.lockstep is not None:
            self.lockstep.deliver("f", fill.venue, fill_payload(fill))
        if self.orders.has_fill(fill.venue, fill.fill_id):
            return
        try:
            self.orders.apply_fill(fill)
        except ValueError as exc:
            self.journal.take()
            self.log.error("fill refused by the order manager: {}", exc)
            return
        self.journal.take()
        self.portfolio.apply_fill(fill)
        self.fills += 1
        payload = fill_payload(fill)
        payload["session"] = self.session
        self.replay.publish(
            self.scheme.fill(fill.venue), payload, f"{fill.venue}:fill:{fill.fill_id}"
        )

    # -- intents -----------------------------------------------------------------------------
    def _on_intent(self, topic: str, payload: dict[str, Any]) -> None:
        if self.lockstep is not None:
            self.log.error("lock step: intent on {} ignored (intents come with the steps)", topic)
            return
        if not self.journal_open or (self.rivals and self.rivals.addressed_elsewhere(payload)):
            return  # stopped, or the strategy node is bound to another execution session
        if self.binding.admit(payload):
            self.apply_intent(payload, topic)
            return
        # Another strategy session's: its new orders go back REJECTED, marked so that
        # its node stops quoting; its cancels never touch the bound session's orders.
        with contextlib.suppress(IntentError):
            strategy, action = intent_from_payload(payload)
            if isinstance(action, (PlaceOrder, ReplaceOrder)):
                new = action.order if isinstance(action, PlaceOrder) else action.new
                new.strategy = new.strategy or strategy
                if self.orders.get(new.client_id) is None and self._adopt(new):
                    session = session_of(payload)
                    mark = self.binding.refusal_mark(session)
                    self._reject(new, self.binding.refusal(session), mark)

    def apply_intent(self, payload: dict[str, Any], source: str) -> None:
        """Check, register and forward one intent of the strategy node."""
        try:
            strategy, action = intent_from_payload(payload)
        except IntentError as exc:
            self.log.error("{} from {}", exc, source)
            return
        if isinstance(action, (PlaceOrder, ReplaceOrder)):
            self.binding.placed(
                (action.order if isinstance(action, PlaceOrder) else action.new).client_id,
                payload,
            )
        if isinstance(action, PlaceOrder):
            self._place(strategy, action.order)
        elif isinstance(action, CancelOrder):
            self._cancel([action.client_id], action.venue, action.symbol)
        elif isinstance(action, ReplaceOrder):
            self._replace(strategy, action)
        else:
            self._cancel_all(strategy, action)

    def _cancelled_before_placed(self, order: Order) -> bool:
        """A cancel for this order overtook its place/replace intent (a replay after a
        broker restart can reorder them): adopt it and report it cancelled unsent."""
        if order.client_id not in self._early_cancels:
            return False
        self._early_cancels.discard(order.client_id)
        if self._adopt(order):
            self.on_order_update(
                OrderUpdate(
                    order.venue,
                    order.client_id,
                    OrderStatus.CANCELLED,
                    self.clock.now_ns(),
                    reason="cancelled before it reached the venue",
                    symbol=order.symbol,
                )
            )
        return True

    def _place(self, strategy: str, order: Order) -> None:
        if self.orders.get(order.client_id) is not None:
            return  # the same intent again (e.g. replayed after a reconnect)
        order.strategy = order.strategy or strategy
        if self._cancelled_before_placed(order):
            return
        refusal = self._gate(order)
        if not self._adopt(order):
            return
        if refusal is not None:
            self._reject(order, refusal)
            return
        self.venues[order.venue].submit([PlaceOrder(order)])

    def _replace(self, strategy: str, action: ReplaceOrder) -> None:
        new = action.new
        if self.orders.get(new.client_id) is not None:
            return
        new.strategy = new.strategy or strategy
        if self._cancelled_before_placed(new):
            self._cancel([action.old_client_id], new.venue, new.symbol)
            return
        refusal = self._gate(new)
        old = self.orders.get(action.old_client_id)
        if refusal is not None:
            if self._adopt(new):
                self._reject(new, refusal)
            self._cancel([action.old_client_id], new.venue, new.symbol)
            return
        if old is None or old.status.is_terminal:
            # Unknown here (or already done): the venue decides about the old order.
            if not self._adopt(new):
                return
        else:
            try:
                self.orders.request_replace(action.old_client_id, new)
            except ValueError:
                if not self._adopt(new):
                    return
        self.journal.take()
        self.venues[new.venue].submit([ReplaceOrder(action.old_client_id, new)])

    def _adopt(self, order: Order) -> bool:
        """Register (and journal) an order the strategy node made; False if invalid."""
        try:
            self.orders.adopt(order)
        except ValueError as exc:
            self.log.error("intent for order {} refused: {}", order.client_id, exc)
            return False
        finally:
            self.journal.take()
        return True

    def _cancel(self, client_ids: list[str], venue: str, symbol: str) -> None:
        actions: list[OrderAction] = []
        for client_id in client_ids:
            known = self.orders.get(client_id)
            if known is not None and known.status.is_terminal:
                continue
            if known is None:
                # Not placed here (yet): if its place intent arrives later, it is not sent.
                self._early_cancels.add(client_id)
            if known is None or self.orders.request_cancel(client_id) is not None:
                actions.append(CancelOrder(client_id, venue, symbol))
        self.journal.take()
        adapter = self.venues.get(venue)
        if actions and adapter is not None:
            adapter.submit(actions)

    def _cancel_all(self, strategy: str, action: CancelAll) -> None:
        self._cancel_orders(
            [
                o
                for o in self.orders.all_working()
                if o.venue == action.venue
                and o.strategy == strategy
                and action.symbol in (None, o.symbol)
            ]
        )

    def _cancel_orders(self, orders: list[Order]) -> int:
        by_market: dict[tuple[str, str], list[str]] = {}
        for order in orders:
            by_market.setdefault((order.venue, order.symbol), []).append(order.client_id)
        for (venue, symbol), ids in by_market.items():
            self._cancel(ids, venue, symbol)
        return len(orders)

    def _gate(self, order: Order) -> str | None:
        """Why a new order must not reach the venue, or None: a strategy, venue and
        market of this run and node, then the kernel's order gate (kill and stop, halted
        strategies, risk, the instrument's rules) with this node's positions and working
        orders."""
        if order.strategy not in self.strategies:
            # Halts, breakers and cancel-alls go by strategy name: an order under a name
            # this run does not know would slip past them.
            return (
                f"strategy {order.strategy!r} is not in this run's manifest (it has "
                f"{', '.join(sorted(self.strategies))}); do the nodes run the same manifest?"
            )
        if order.venue not in self.venues:
            return f"venue {order.venue!r} is not hosted by this execution node"
        market = self.markets.get(order.market)
        if market is None:
            return f"market {order.market} is not hosted by this execution node"
        if self.stopping:
            self.gate.close("the execution node is stopping")
        age_ns = self.clock.now_ns() - order.created_ns
        if order.created_ns and age_ns > self.intent_max_age_ns:
            # Replayed after an outage, it was priced on a book that is gone; the
            # strategy quotes again when it hears of the refusal.
            return (
                f"refused at the execution node: made {age_ns / NS:.1f} s ago, longer than "
                f"nodes.intent_max_age ({self.intent_max_age_ns / NS:g} s) allows; if every "
                "order is refused so, the nodes' clocks disagree: synchronise them (NTP)"
            )
        price = order.price_ticks
        if price is None:
            price = (
                market.book.best_ask_ticks()
                if order.side is Side.BUY
                else market.book.best_bid_ticks()
            )
            if price is None:
                return "a market order needs a book to be checked against"
        refused = self.gate.check(
            market,
            order.strategy,
            order.side,
            price,
            order.qty_lots,
            level=order.level,
            post_only=order.tif is TimeInForce.POST_ONLY,
        )
        if not refused:
            return None
        blocked = self.watch.blocked.get(order.strategy) or self.watch.blocked.get("*")
        if blocked:
            return blocked
        if refused.startswith("refused by risk"):
            refused = self._last_refusal  # the chain reported the check and its numbers
        return f"refused at the execution node: {refused}"

    def _reject(self, order: Order, reason: str, mark: dict[str, Any] | None = None) -> None:
        self.on_order_update(
            OrderUpdate(
                order.venue,
                order.client_id,
                OrderStatus.REJECTED,
                self.clock.now_ns(),
                reason=reason,
                symbol=order.symbol,
            ),
            mark,
        )

    def _on_refusal(self, refusal: RiskRefusal) -> None:
        self.refusals += 1
        self._last_refusal = str(refusal)
        if self.refusals <= 20 or self.refusals % 1000 == 0:
            self.log.info("risk: {} (refusal #{})", refusal, self.refusals)

    # -- strategy liveness ---------------------------------------------------------------------
    def _strategy_goodbye(self) -> None:
        if self.lockstep is not None:
            self.lockstep.detach("the strategy node closed")

    def _strategy_lost(self, grace: float) -> None:
        w = self.watch
        w.tripped = True
        reason = f"strategy node heartbeat lost for more than {grace:g}s"
        w.blocked["*"] = f"refused at the execution node: {reason}"
        cancelled = self._cancel_orders(self.binding.orders_of(self.binding.bound))
        if self.lockstep is not None:
            self.lockstep.detach(reason)
        message = f"{reason}: cancelled {cancelled} open order(s) at the venues"
        self.log.warning("BREAKER strategy_lost: {}", message)
        self._alert("strategy_lost", message, cancelled=cancelled)

    def _rival_won(self, message: str, rival: Mapping[str, Any]) -> None:
        """Another live execution session claimed the role first: no new order goes out
        from here, this node's own orders are cancelled (never the rival's: the venues'
        other orders of the run are left alone at stop), and the node stops (exit 2)."""
        self.stopping = True
        self.refused_by_peer = message
        cancelled = self._cancel_orders(self.orders.all_working())
        self.log.error("{}", message)
        sessions = [self.session, rival.get("session")]
        self._alert("execution_conflict", message, sessions=sessions, cancelled=cancelled)
        self.request_stop(f"refused: {message}")

    def _strategy_conflict(self, message: str, session: str) -> None:
        self._alert("strategy_conflict", message, sessions=[self.binding.bound, session])

    def _alert(self, kind: str, message: str, **fields: Any) -> None:
        """Journal a breaker record and publish a critical alert on ``control/breaker``."""
        now = self.clock.now_ns()
        self.journal.append(
            JournalRecord(
                f"breaker-{kind.replace('_', '-')}-{now}",
                "breaker",
                now,
                "",
                {"kind": kind, "message": message, **fields},
            )
        )
        self.journal.take()
        self.bus.publish(
            self.scheme.breaker(),
            {
                "kind": kind,
                "severity": "critical",
                "action": "alert",
                "node": self.role,
                "strategies": sorted(self.strategies),
                **fields,
                "message": message,
                "ts_ns": now,
            },
            qos=1,
        )

    def on_breaker(self, payload: dict[str, Any]) -> None:
        super().on_breaker(payload)
        if payload.get("node") == self.role or payload.get("action") != "halt":
            return
        names = payload.get("strategies") or ["*"]
        for name in names:
            self.watch.blocked[str(name)] = (
                f"refused at the execution node: breaker {payload.get('kind', '')}: "
                f"{payload.get('message', '')}"
            )
        halted = self._cancel_orders(
            [o for o in self.orders.all_working() if "*" in names or o.strategy in names]
        )
        self.log.warning("breaker halt: cancelled {} order(s)", halted)

    # -- peers ---------------------------------------------------------------------------------
    def on_peer_reconnect(self, role: str) -> None:
        if role in ("strategy", "monitor"):
            sent = self.replay.replay()
            self.log.info("{} node reconnected: {} order report(s)/fill(s) republished", role, sent)

    # -- kill and stop -----------------------------------------------------------------------------
    def on_kill(self, source: str) -> None:
        if self.killed:
            return
        self.stopping = True
        cancelled = self._cancel_orders(self.orders.all_working())
        for venue in self.venues.values():
            venue.submit([CancelAll(venue.name)])
        now = self.clock.now_ns()
        self.journal.append(
            JournalRecord(f"kill-{self.run_dir.name}", "breaker", now, "", {"kill": source})
        )
        self.journal.take()
        self.log.warning(
            "kill switch: cancelling {} order(s) and everything at the venues", cancelled
        )
        super().on_kill(source)

    async def wait(self) -> None:
        if self.lockstep is not None:
            await self.lockstep.drive()
        else:
            await super().wait()
        # On a kill, once its cancels are confirmed: the fills no stream reported (a
        # user stream silent at the kill), then the strategy node's final reconciliation
        # is answered, before the venues close (see book_fills_after_kill).
        kill = self.killed and self.lockstep is None and self.journal_open
        if kill:
            timeout = float(self.manifest.run.cancel_timeout)
            await book_fills_after_kill(
                self.venues, self.orders, self.started_ns - 60 * NS, self.on_fill, timeout
            )
        elif self.stop_requested:
            return
        # Serve the strategy node while it winds down: it cancels its quotes through us.
        linger = self.settings.linger
        limit = (
            float(linger)
            if linger is not None
            else float(self.settings.strategy_grace) + float(self.manifest.run.cancel_timeout)
        )
        deadline = time.monotonic() + limit
        ticks = 0
        while time.monotonic() < deadline and (kill or not self.stop_requested):
            if not self.watch.seen or not self.watch.online:
                break
            await asyncio.sleep(0.1)
            ticks += 1
            if self.lockstep is not None and ticks % 10 == 0:
                self.lockstep.repeat_done()  # in case the last step was lost (QoS 0)

    async def stop(self) -> None:
        self.stopping = True
        if not self.journal_open:
            return
        if self.lockstep is not None:
            self.lockstep.detach("the execution node is stopping")
        self._cancel_orders(self.orders.all_working())
        timeout = float(self.manifest.run.cancel_timeout)
        deadline = time.monotonic() + timeout
        if self.lockstep is not None:
            await self.lockstep.settle(timeout)
        else:
            while self.orders.all_working() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        left = self.orders.all_working()
        if left and not self.refused_by_peer:  # a refused node leaves the rival's orders alone
            self.log.warning("{} order(s) unconfirmed after cancel: cancelling all", len(left))
            for venue in self.venues.values():
                with contextlib.suppress(Exception):
                    await venue.cancel_all()
        # Whatever the venues still list under this run's client ids (placed by an
        # instance that died, or whose report never came) is cancelled too.
        await cancel_listed_orders(
            self.venues,
            self.orders.id_prefix,
            lambda cid: bool(self.refused_by_peer) and self.orders.get(cid) is None,
            wait_s=max(0.5, deadline - time.monotonic()),
            what="still listed at stop",
        )
        open_left = 0
        with (self.run_dir / "venue_fills.jsonl").open("w", encoding="utf-8") as fh:
            for name, venue in self.venues.items():
                try:
                    open_now = await venue.fetch_open_orders()
                    venue_fills = await venue.fetch_fills(0)
                except Exception as exc:
                    # Unread: this node's orders there not confirmed closed count as open.
                    open_left += sum(1 for o in left if o.venue == name)
                    self.log.error("{}: cannot read open orders/fills at stop: {}", name, exc)
                    continue
                if open_now is None or venue_fills is None:
                    self.log.warning("{}: the adapter cannot report open orders/fills", name)
                open_left += len(open_now or ())
                for fill in venue_fills or ():
                    fh.write(json.dumps(fill_to_dict(fill)) + "\n")
        await self.publisher.stop()
        await self.reconciler.close()
        if self.lockstep is not None:
            await self.lockstep.close()
        for venue in self.venues.values():
            with contextlib.suppress(Exception):
                await venue.close()
        now = self.clock.now_ns()
        self.journal.append(
            JournalRecord(
                f"run-stop-{self.run_dir.name}",
                "run",
                now,
                "",
                {"event": "stop", "role": self.role, "reason": self.stop_reason},
            )
        )
        await self.journal.close()
        self.journal_open = False
        self.info.update(
            {
                "fills": self.fills,
                "risk_refusals": self.refusals,
                "open_orders_left": open_left,
                "unconfirmed_orders": [o.client_id for o in left],
                "replayed": self.replay.replayed,
                "strategy_session": self.binding.bound,
                "foreign_strategy_intents_refused": self.binding.refused,
                "intents_for_other_execution_sessions": self.rivals.elsewhere if self.rivals else 0,
            }
        )
