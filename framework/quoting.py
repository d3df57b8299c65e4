"""The quoting engine: what a run does on each market event, over parts already built.

book update -> ``strategy.on_book`` -> order gate (kill and halt, breakers, risk,
execution policy) -> order manager -> ``adapter.submit``. Order reports and fills come
back through the order manager (which journals them first), then positions, then the
strategy. Everything here is called directly, once per event: no plugin dispatch.
``quoteforge.engine.Run`` is this engine with a run's lifecycle (build, start, stop,
files); the parts are built by ``quoteforge.assembly``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quoteforge.assembly import MarketRuntime, StrategyRuntime
from quoteforge.book import BookState, L2Book
from quoteforge.breakers import Breakers, Trip
from quoteforge.bus import Bus
from quoteforge.clock import NS, Clock, TimerHandle
from quoteforge.exchange import CancelOrder, OrderAction, PlaceOrder, ReplaceOrder
from quoteforge.execution import Plan
from quoteforge.gate import OrderGate
from quoteforge.journal import Journal, JournalRecord
from quoteforge.latency import LatencyHistogram
from quoteforge.manifest import Manifest
from quoteforge.model import Fill, Offer, Order, OrderStatus, OrderUpdate, Quote, Side, TimeInForce
from quoteforge.orders import OrderManager
from quoteforge.portfolio import Portfolio
from quoteforge.registry import PluginRegistry
from quoteforge.risk import RiskRefusal
from quoteforge.runfiles import TraceWriter, on_grid
from quoteforge.strategy import Market

if TYPE_CHECKING:
    from quoteforge.model import Funding, VenuePosition


@dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator must hear about now."""

    kind: str  # "breaker", "kill", "stale_book", "strategy_halted", ...
    severity: str  # "warning" or "critical"
    message: str
    ts_ns: int
    market: str | None = None


class QuotingEngine:
    """Market events in, orders out, for the strategies and markets of one run."""

    # Parts the run builds before the venues connect (see quoteforge.engine.Run).
    manifest: Manifest
    topic_run: str
    bus: Bus
    journal: Journal
    orders: OrderManager
    portfolio: Portfolio
    gate: OrderGate
    breakers: Breakers | None
    alert_channels: list[Any]
    _policy_retry: Callable[[str, int], int | None] | None

    def __init__(self, registry: PluginRegistry, clock: Clock, log: Any) -> None:
        self.registry = registry
        self.clock = clock
        self.log = log
        self.strategies: dict[str, StrategyRuntime] = {}
        self.markets: dict[str, MarketRuntime] = {}
        self._stop = asyncio.Event()
        self._timers: list[TimerHandle] = []
        self._trace: TraceWriter | None = None
        self.refusals = 0
        # Book event -> strategy -> risk -> execution diff (the quoting decision) ...
        self.tick_to_quote = LatencyHistogram()
        # ... and on to orders handed to the venue (order manager and journal included).
        self.tick_to_orders = LatencyHistogram()
        self._tick_start = 0
        #: Set to {"tick_to_quote": [], "tick_to_orders": []} to keep every sample (bench).
        self.latency_samples: dict[str, list[int]] | None = None
        self.gc_policy: Any = None  # run.gc (plugins/gc_policy.py): collects between events
        self.alerts: list[Alert] = []
        self._stale_timers: dict[str, TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        hook = registry.pm.hook
        self._fill_hook = hook.quoteforge_fill if hook.quoteforge_fill.get_hookimpls() else None
        self._order_hook = (
            hook.quoteforge_order_event if hook.quoteforge_order_event.get_hookimpls() else None
        )
        self._book_hook = (
            hook.quoteforge_book_state_changed
            if hook.quoteforge_book_state_changed.get_hookimpls()
            else None
        )

    # -- hot path ------------------------------------------------------------------------
    def on_book(self, book: L2Book) -> None:
        mr = self.markets.get(book.key)
        if mr is None:
            return
        owner = mr.owner
        if owner.halted:
            return
        if owner.top_only:
            if owner.best_only:
                best = _best_seen(book, owner.prices_only)
                if best == mr.seen_best:
                    return
                mr.seen_best = best
            elif book.top_version == mr.seen_top:
                return
            else:
                mr.seen_top = book.top_version
        start = time.perf_counter_ns()
        self._tick_start = start
        self._requote(mr)
        self._tick_start = 0
        end = time.perf_counter_ns()
        self.tick_to_orders.record(end - start)
        if self.latency_samples is not None:
            self.latency_samples["tick_to_orders"].append(end - start)
        if self.gc_policy is not None:
            self.gc_policy.after_decision()

    def _requote(self, mr: MarketRuntime, refill: bool = False) -> None:
        srt = mr.owner
        if srt.halted or mr.book.state is not BookState.LIVE or self._stop.is_set():
            return
        if mr.quiet_until and self.clock.now_ns() < mr.quiet_until:
            if mr.retry is None:
                mr.retry = self.clock.call_at(mr.quiet_until, self._retry_after_backoff, mr)
            return
        try:
            quotes = srt.strategy.on_book(mr.market)
        except Exception as exc:
            self._halt(srt, exc, "on_book")
            return
        if quotes is None:
            if not refill:
                return
            quotes = mr.wanted
        self._execute(mr, quotes)

    def _execute(self, mr: MarketRuntime, quotes: list[Quote], record_wanted: bool = True) -> None:
        if record_wanted:
            mr.wanted = quotes
            mr.quote_updates += 1
        inst = mr.instrument
        now = self.clock.now_ns()
        # Kill/halt, breakers, risk and the execution policy: the one order gate.
        plan: Plan = self.gate.plan(mr.market, mr.owner.name, quotes, now)
        if self._tick_start:
            decided = time.perf_counter_ns() - self._tick_start
            self.tick_to_quote.record(decided)
            if self.latency_samples is not None:
                self.latency_samples["tick_to_quote"].append(decided)
        if self._policy_retry is not None:
            retry_at = self._policy_retry(mr.market.key, now)
            if retry_at is not None and mr.retry is None:
                # The policy held changes back (rate limits): plan again when it can send.
                mr.retry = self.clock.call_at(retry_at, self._retry_after_backoff, mr)
        if not plan:
            return
        actions: list[OrderAction] = []
        om = self.orders
        for order in plan.cancels:
            if om.request_cancel(order.client_id) is not None:
                actions.append(CancelOrder(order.client_id, inst.venue, inst.symbol))
        strategy = mr.owner.name
        for quote in plan.places:
            new = self._new_order(mr, quote, strategy)
            actions.append(PlaceOrder(new))
        for old, quote in plan.replaces:
            # Built, then registered by the replace itself: one journal record for the
            # new order, already linked to the one it replaces.
            new = self._new_order(mr, quote, strategy, register=False)
            om.request_replace(old.client_id, new)
            actions.append(ReplaceOrder(old.client_id, new))
        if actions:
            mr.adapter.submit(actions)

    def _new_order(
        self, mr: MarketRuntime, quote: Quote, strategy: str, register: bool = True
    ) -> Order:
        inst = mr.instrument
        make = self.orders.new_order if register else self.orders.build_order
        return make(
            inst.venue,
            inst.symbol,
            quote.side,
            quote.qty_lots,
            quote.price_ticks,
            tif=TimeInForce.POST_ONLY if quote.post_only else TimeInForce.GTC,
            strategy=strategy,
            level=quote.level,
        )

    def _own_best_ticks(self, key: str, sign: int) -> int | None:
        """Best price of our working quotes on one side of a market (self-trade checks)."""
        best = None
        venue, _, symbol = key.partition(":")
        for order in self.orders.working(venue, symbol):
            if int(order.side) != sign or order.price_ticks is None:
                continue
            if best is None or (order.price_ticks > best if sign > 0 else order.price_ticks < best):
                best = order.price_ticks
        return best

    def _take_for(self, strategy: str) -> Callable[..., Order | None]:
        def take(
            market: Market, side: Side, price_ticks: int, qty_lots: int, offer_id: str | None
        ) -> Order | None:
            mr = self.markets.get(market.key)
            if mr is None or mr.owner.name != strategy:
                raise KeyError(f"strategy {strategy!r} has no market {market.key!r}")
            order = self.gate.take(mr.market, strategy, side, price_ticks, qty_lots, offer_id)
            if order is not None:
                mr.adapter.submit([PlaceOrder(order)])
            return order

        return take

    def on_offer(self, offer: Offer) -> None:
        mr = self.markets.get(offer.market)
        if mr is None or mr.owner.halted or self._stop.is_set():
            return
        srt = mr.owner
        try:
            srt.strategy.on_offer(mr.market, offer)
        except Exception as exc:
            self._halt(srt, exc, "on_offer")

    def _set_quotes(self, key: str, quotes: list[Quote]) -> None:
        mr = self.markets[key]
        if mr.book.state is BookState.LIVE and not self._stop.is_set():
            self._execute(mr, quotes)
        else:
            mr.wanted = quotes

    def pull_quotes(self, strategy: str | None = None) -> None:
        """Cancel the working quotes of one strategy (or all), keeping what it wants."""
        for mr in self.markets.values():
            if strategy is None or mr.owner.name == strategy:
                self._execute(mr, [], record_wanted=False)

    # -- venue sink -----------------------------------------------------------------------
    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        mr = self.markets.get(book.key)
        if self.breakers is not None:
            self.breakers.on_book_state(book.key, new == BookState.LIVE.value, self.clock.now_ns())
        self._trace_event(book.key, "book_state", f"{old}->{new}: {reason}")
        if self._book_hook is not None:
            self._call_observers(self._book_hook, market=book.key, old=old, new=new, reason=reason)
        if mr is None:
            return
        if new != BookState.LIVE.value:
            self.log.warning("{} book {} ({}): pulling quotes", book.key, new, reason)
            self._execute(mr, [], record_wanted=False)
            if book.key not in self._stale_timers:
                after = int(float(self.manifest.alerting.stale_after) * NS)
                self._stale_timers[book.key] = self.clock.call_later(
                    after, self._stale_too_long, book.key, reason
                )
        else:
            timer = self._stale_timers.pop(book.key, None)
            if timer is not None:
                timer.cancel()
            self.log.info("{} book LIVE again ({}): quoting resumes", book.key, reason)
            # Shown this book now: the next book event asks again only if what it reads moved.
            mr.seen_top = book.top_version
            mr.seen_best = _best_seen(book, mr.owner.prices_only)
            self._requote(mr, refill=True)

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        mr = self.markets.get(f"{venue}:{symbol}")
        if mr is None:
            return
        srt = mr.owner
        if srt.halted or not srt.hears_trades:
            return
        try:
            srt.strategy.on_trade(mr.market, price_ticks, qty_lots, aggressor)
        except Exception as exc:
            self._halt(srt, exc, "on_trade")

    def on_order_update(self, update: OrderUpdate) -> None:
        order = self.orders.apply_update(update)
        if order is None:
            return
        if self._order_hook is not None:
            self._call_observers(self._order_hook, run=self, order=order, update=update)
        mr = self.markets.get(order.market)
        if mr is None:
            return
        if order.status is OrderStatus.REJECTED and order.filled_lots == 0:
            self._note_rejection(mr, order)
            if self.breakers is not None:
                self.breakers.on_order_error(mr.market.key, order.reason, self.clock.now_ns())
        elif order.status is OrderStatus.OPEN:
            mr.reject_streak = 0
            mr.quiet_until = 0
            if self.breakers is not None:
                self.breakers.on_order_ok(mr.market.key)
        srt = mr.owner
        if not srt.halted:
            try:
                for algo in list(srt.strategy.ctx.algos):
                    if algo.on_order_update(update):
                        break
                srt.strategy.on_order_update(mr.market, update)
            except Exception as exc:
                self._halt(srt, exc, "on_order_update")
                return
        if order.status.is_terminal:
            self._requote(mr, refill=True)

    def on_fill(self, fill: Fill) -> None:
        if self.orders.get(fill.client_id) is None and not self.orders.has_fill(
            fill.venue, fill.fill_id
        ):
            reconciler = getattr(self, "reconciler", None)
            if reconciler is not None and not reconciler.owns(fill):
                return  # another client's trade on the account: not this run's position
        orphans = len(self.orders.orphan_fills)
        order = self.orders.apply_fill(fill)
        if order is None and len(self.orders.orphan_fills) == orphans:
            return  # a duplicate: already applied once
        # An orphan fill (an order this run does not know) still moved our position.
        self.portfolio.apply_fill(fill)
        mr = self.markets.get(fill.market)
        inst = mr.instrument if mr else None
        if self._trace is not None and inst is not None:
            self._trace.write(
                {
                    "type": "fill",
                    "t": fill.ts_ns,
                    "market": fill.market,
                    "fill_id": fill.fill_id,
                    "side": "buy" if fill.side is Side.BUY else "sell",
                    "price": on_grid(fill.price_ticks, inst.tick_size),
                    "qty": on_grid(fill.qty_lots, inst.lot_size),
                    "fee": float(fill.fee),
                    "liquidity": fill.liquidity.value,
                    "client_id": fill.client_id,
                    "strategy": fill.strategy,
                }
            )
        if self._fill_hook is not None:
            self._call_observers(self._fill_hook, run=self, fill=fill)
        if mr is None:
            return
        srt = mr.owner
        if srt.halted:
            return
        try:
            for algo in list(srt.strategy.ctx.algos):
                if algo.on_fill(fill):
                    break
            srt.strategy.on_fill(mr.market, fill)
        except Exception as exc:
            self._halt(srt, exc, "on_fill")
            return
        self._requote(mr, refill=True)

    def on_funding(self, funding: Funding) -> None:
        """A funding payment (perpetuals): journaled, then booked in the PnL, once."""
        portfolio: Portfolio | None = getattr(self, "portfolio", None)
        if portfolio is None or funding.market not in portfolio.markets:
            return  # reports while the venues connect come again on reconciliation
        self.journal.append(
            JournalRecord(
                f"funding:{funding.venue}:{funding.funding_id}",
                "funding",
                funding.ts_ns,
                funding.market,
                {"amount": str(funding.amount), "asset": funding.asset, "id": funding.funding_id},
            )
        )
        if portfolio.apply_funding(funding):
            self._trace_event(funding.market, "funding", f"{funding.amount} {funding.asset}")

    def on_position(self, position: VenuePosition) -> None:
        """The venue's view of a position, for risk (liquidation price) and the report;
        journaled at most once a second per market."""
        portfolio: Portfolio | None = getattr(self, "portfolio", None)
        if portfolio is None:
            return  # while the venues connect; the venue reports positions again
        portfolio.set_venue_position(position)
        liq = position.liquidation_price
        at, key = position.ts_ns, position.market
        payload = {"qty_lots": position.qty_lots, "entry_price": str(position.entry_price)}
        payload["liquidation_price"] = None if liq is None else str(liq)
        record = JournalRecord(f"position:{key}:{at // NS}", "position", at, key, payload)
        self.journal.append(record)

    # -- failure handling -------------------------------------------------------------
    def _guard(self, srt: StrategyRuntime, fn: Callable[..., Any], *args: Any) -> Any:
        if srt.halted:
            return None
        try:
            return fn(*args)
        except Exception as exc:
            self._halt(srt, exc, getattr(fn, "__name__", "callback"))
            return None

    def _halt(self, srt: StrategyRuntime, exc: BaseException, where: str) -> None:
        srt.errors += 1
        srt.halted = True
        self.log.opt(exception=exc).error(
            "strategy {!r} raised in {}: {}; its quotes are pulled and it is halted",
            srt.name,
            where,
            exc,
        )
        for mr in srt.markets.values():
            self._trace_event(mr.market.key, "strategy_halted", f"{srt.name}: {exc!r}")
            self._execute(mr, [], record_wanted=False)
        self.alert("strategy_halted", f"strategy {srt.name!r} halted after {where}: {exc!r}")

    def _on_trip(self, trip: Trip) -> None:
        """A breaker fired: journal it, alert, and re-run execution so HALT pulls every
        quote and REDUCE keeps only the quotes that shrink the position."""
        self.journal.append(
            JournalRecord(
                f"breaker-{trip.kind}-{trip.market or 'run'}-{trip.ts_ns}",
                "breaker",
                trip.ts_ns,
                trip.market or "",
                {"kind": trip.kind, "mode": trip.mode, "reason": trip.reason},
            )
        )
        self.alert("breaker", str(trip), market=trip.market, severity="critical")
        for key, mr in self.markets.items():
            if trip.market in (None, key):
                self._execute(mr, mr.wanted)

    def reset_breakers(self, who: str) -> list[Trip]:
        """Manual reset of latched breakers (``all``, ``run``, a kind or a market)."""
        if self.breakers is None:
            return []
        cleared = self.breakers.reset(who)
        for trip in cleared:
            self._trace_event(trip.market, "breaker_reset", f"{trip.kind} reset by {who}")
            self.log.warning("breaker {} reset ({})", trip.kind, who)
        for mr in self.markets.values():
            self._requote(mr, refill=True)
        return cleared

    def _retry_after_backoff(self, mr: MarketRuntime) -> None:
        mr.retry = None
        self._requote(mr, refill=True)

    def _note_rejection(self, mr: MarketRuntime, order: Order) -> None:
        """Back off after rejections so a quote the venue refuses is not resent in a loop:
        0.1 s doubling to 30 s; an alert after 10 in a row."""
        mr.reject_streak += 1
        if order.tif is TimeInForce.POST_ONLY and mr.reject_streak < 3:
            # A post-only order refused because the market moved through it is routine
            # for a market maker: requote at once; only a streak means something is off.
            self.log.debug(
                "{}: post-only {} refused: {}", mr.market.key, order.client_id, order.reason
            )
            return
        delay = min(30 * NS, int(0.1 * NS) << min(mr.reject_streak - 1, 10))
        mr.quiet_until = self.clock.now_ns() + delay
        if mr.reject_streak <= 3 or mr.reject_streak % 50 == 0:
            self.log.warning(
                "{}: order {} rejected ({}); quoting pauses {:.1f}s ({} in a row)",
                mr.market.key,
                order.client_id,
                order.reason,
                delay / NS,
                mr.reject_streak,
            )
        if mr.reject_streak == 10:
            self.alert(
                "rejections",
                f"{mr.market.key}: 10 orders rejected in a row, last: {order.reason}",
                market=mr.market.key,
            )

    def _stale_too_long(self, key: str, reason: str) -> None:
        self._stale_timers.pop(key, None)
        after = float(self.manifest.alerting.stale_after)
        self.alert("stale_book", f"{key} book not LIVE for {after:g}s ({reason})", market=key)

    def alert(
        self, kind: str, message: str, *, market: str | None = None, severity: str = "warning"
    ) -> Alert:
        """Tell observers and every alert channel; channel failures are logged only."""
        alert = Alert(kind, severity, message, self.clock.now_ns(), market)
        self.alerts.append(alert)
        self.log.warning("ALERT {} [{}]: {}", kind, severity, message)
        self._trace_event(market, "alert", f"{kind}: {message}")
        self._call_observers(self.registry.pm.hook.quoteforge_alert, run=self, alert=alert)
        for channel in self.alert_channels:
            task = asyncio.get_event_loop().create_task(self._send_alert(channel, alert))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return alert

    async def _send_alert(self, channel: Any, alert: Alert) -> None:
        try:
            await channel.send(alert)
        except Exception as exc:
            self.log.error("alert channel {} failed: {}", type(channel).__name__, exc)

    def _on_refusal(self, refusal: RiskRefusal) -> None:
        self.refusals += 1
        now = self.clock.now_ns()
        quote = refusal.quote
        # Journaled once per second per identical refusal: a check that refuses the same
        # quote on every tick must not flood the journal.
        self.journal.append(
            JournalRecord(
                f"risk:{refusal.market}:{refusal.check}:{int(quote.side)}:{quote.price_ticks}:"
                f"{quote.qty_lots}:{now // NS}",
                "risk",
                now,
                refusal.market,
                {
                    "check": refusal.check,
                    "side": quote.side.name.lower(),
                    "price_ticks": quote.price_ticks,
                    "qty_lots": quote.qty_lots,
                    "reason": refusal.reason,
                },
            )
        )
        if self.refusals <= 20 or self.refusals % 1000 == 0:
            self.log.info("risk: {} (refusal #{})", refusal, self.refusals)

    def _call_observers(self, hook: Any, **kwargs: Any) -> None:
        try:
            hook(**kwargs)
        except Exception as exc:
            self.log.opt(exception=exc).error("observer hook {} failed: {}", hook.name, exc)

    # -- timers, bus -------------------------------------------------------------------
    def _schedule_for(self, name: str) -> Callable[[int, Callable[[], None]], TimerHandle]:
        def schedule(delay_ns: int, fn: Callable[[], None]) -> TimerHandle:
            srt = self.strategies.get(name)

            def fire() -> None:
                if srt is not None and not srt.halted and not self._stop.is_set():
                    self._guard(srt, fn)

            handle = self.clock.call_later(delay_ns, fire)
            self._timers.append(handle)
            return handle

        return schedule

    def _publish(self, topic: str, payload: Any) -> None:
        self.bus.publish(f"quoteforge/{self.topic_run}/{topic}", payload)

    def _trace_event(self, market: str | None, event: str, detail: str) -> None:
        if self._trace is not None:
            self._trace.write(
                {
                    "type": "event",
                    "t": self.clock.now_ns(),
                    "market": market,
                    "event": event,
                    "detail": detail,
                }
            )


def _best_seen(book: L2Book, prices_only: bool) -> Any:
    """What a strategy that reads only the best levels (or their prices) reads of ``book``."""
    if prices_only:
        return book.best_bid_ticks(), book.best_ask_ticks()
    return book.best_bid(), book.best_ask()
