"""The run engine: resolves plugins once, then drives the hot path with direct calls.

book update -> strategy.on_book -> risk chain -> execution policy -> order manager ->
adapter.submit. Order updates and fills come back through the order manager (which
journals them first), then positions, then the strategy. pluggy is used at start-up
and for low-frequency observer hooks only.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gc
import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from loguru import logger
from pydantic import BaseModel

from quoteforge.book import BookState, L2Book
from quoteforge.breakers import Breakers, Trip
from quoteforge.bus import Bus
from quoteforge.clock import NS, Clock, LiveClock, SimClock, TimerHandle
from quoteforge.exchange import (
    CancelOrder,
    ExchangeAdapter,
    OrderAction,
    PlaceOrder,
    ReplaceOrder,
    VenueContext,
)
from quoteforge.execution import ExecutionPolicy, Plan
from quoteforge.gate import OrderGate
from quoteforge.journal import Journal, JournalRecord
from quoteforge.latency import LatencyHistogram
from quoteforge.manifest import LoadedManifest, ManifestError, load_manifest, split_market
from quoteforge.model import (
    Fill,
    Offer,
    Order,
    OrderStatus,
    OrderUpdate,
    Quote,
    Side,
    TimeInForce,
)
from quoteforge.orders import OrderManager, fill_from_dict
from quoteforge.portfolio import Portfolio
from quoteforge.progress import Progress
from quoteforge.registry import PluginRegistry
from quoteforge.resume import ReplayJournal, ResumeRefusedError, replays_on_resume
from quoteforge.risk import RiskChain, RiskRefusal, RiskView
from quoteforge.strategy import Market, Strategy, StrategyContext, book_interest

__all__ = ["Alert", "MarketRuntime", "Run", "StrategyRuntime", "run_manifest", "stop_signals"]

KILL_FILE = "KILL"
RECONCILE_GRACE_NS = 5 * NS  # younger orders may not show in a venue snapshot yet
RESET_FILE = "RESET_BREAKERS"

SUMMARY_COLUMNS = (
    "market",
    "mid",
    "spread",
    "inventory",
    "pnl",
    "fill_count",
    "notional",
    "max_drawdown",
)


@dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator must hear about now."""

    kind: str  # "breaker", "kill", "stale_book", "strategy_halted", ...
    severity: str  # "warning" or "critical"
    message: str
    ts_ns: int
    market: str | None = None


@dataclass(eq=False)
class StrategyRuntime:
    name: str
    strategy: Strategy
    type: str
    markets: dict[str, MarketRuntime] = field(default_factory=dict)
    halted: bool = False
    errors: int = 0
    top_only: bool = True
    best_only: bool = False
    prices_only: bool = False  # with best_only: best prices, not their sizes
    hears_trades: bool = True  # the strategy has an on_trade of its own

    def read_book_interest(self) -> None:
        """Which book changes reach ``on_book``, and whether trades reach ``on_trade``."""
        interest = book_interest(self.strategy)
        self.top_only = interest.top_only
        self.best_only = interest.best_only
        self.prices_only = interest.prices_only
        self.hears_trades = interest.hears_trades


@dataclass(eq=False)
class MarketRuntime:
    instrument: Any
    book: L2Book
    market: Market
    adapter: ExchangeAdapter
    owner: StrategyRuntime
    wanted: list[Quote] = field(default_factory=list)
    peak_pnl: float = 0.0
    max_drawdown: float = 0.0
    last_pnl: float = 0.0
    quote_updates: int = 0
    seen_top: int = -1  # the book's top_version when the strategy last saw it
    seen_best: Any = None  # (best bid, best ask) when the strategy last saw it
    reject_streak: int = 0  # consecutive order rejections on this market
    quiet_until: int = 0  # no new quotes before this time (backoff after rejections)
    retry: TimerHandle | None = None


class Run:
    """One run of a manifest: build, start, drive, stop and report."""

    def __init__(
        self,
        loaded: LoadedManifest,
        registry: PluginRegistry,
        *,
        run_dir: Path,
        clock: Clock | None = None,
        manifest_path: Path | None = None,
        resume: bool = False,
        venue_factory: Callable[[str, Any, BaseModel, VenueContext], ExchangeAdapter] | None = None,
    ) -> None:
        self.resume = resume
        # A simulated run resumes by replaying its first life (see quoteforge.resume).
        self.replaying = resume and replays_on_resume(loaded.manifest.run.mode)
        #: Why a replaying resume was refused (the replay differed from the journal).
        self.resume_refused = ""
        # Lets a node (or a test) stand a different adapter in for a manifest exchange,
        # e.g. one that reaches the venue through the bus.
        self.venue_factory = venue_factory
        self.loaded = loaded
        self.manifest = loaded.manifest
        self.registry = registry
        self.mode = self.manifest.run.mode
        self.run_dir = run_dir
        self.run_id = run_dir.name
        # Bus topics use the manifest's run name, shared by every node of a split run.
        self.topic_run = loaded.manifest.run.name
        if clock is None:
            clock = SimClock(_epoch_ns()) if self.mode in ("sim", "backtest") else LiveClock()
        self.clock = clock
        self.manifest_path = manifest_path
        self.venues: dict[str, ExchangeAdapter] = {}
        self.strategies: dict[str, StrategyRuntime] = {}
        self.markets: dict[str, MarketRuntime] = {}
        self.started_ns = 0
        self.stop_reason = ""
        self._stop = asyncio.Event()
        self._timers: list[TimerHandle] = []
        self._trace: Any = None
        self.refusals = 0
        self.events_processed = 0
        # Book event -> strategy -> risk -> execution diff (the quoting decision) ...
        self.tick_to_quote = LatencyHistogram()
        # ... and on to orders handed to the venue (order manager and journal included).
        self.tick_to_orders = LatencyHistogram()
        self._tick_start = 0
        #: Set to {"tick_to_quote": [], "tick_to_orders": []} to keep every sample (bench).
        self.latency_samples: dict[str, list[int]] | None = None
        self.alerts: list[Alert] = []
        self._stale_timers: dict[str, TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.killed = False
        # (venue, asset) -> balance the run started from, net of the position then held
        self._balance_start: dict[tuple[str, str], Decimal] = {}
        # (venue, what) a venue cannot report, already logged once
        self._unreconcilable: set[tuple[str, str]] = set()
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
        self.log = logger.bind(component="engine", run=self.run_id)

    # -- construction ----------------------------------------------------------------
    def _build(self) -> None:
        m = self.manifest
        reg = self.registry
        seed = m.run.seed
        jspec = m.journal
        journal_factory = reg.get("journal", jspec.type).factory
        self.journal: Journal = journal_factory(self.loaded.params_of("journal"), self.run_dir)
        if self.replaying:
            # Everything the replay journals is checked against the first life's records.
            self.journal = ReplayJournal(self.journal, self._refuse_resume)
        bus_factory = reg.get("bus", m.bus.type).factory
        self.bus: Bus = bus_factory(self.loaded.params_of("bus"), self.topic_run)

        symbols_by_venue: dict[str, list[str]] = {name: [] for name in m.exchanges}
        for strategy_spec in m.strategies.values():
            # "*" asks for every market of the venue: the venue decides what that is.
            if "*" not in strategy_spec.symbols:
                for entry in strategy_spec.symbols:
                    venue_name, symbol = split_market(strategy_spec.exchange, entry)
                    symbols_by_venue[venue_name].append(symbol)
        for name, spec in m.exchanges.items():
            ctx = VenueContext(
                name=name,
                clock=self.clock,
                seed=seed,
                mode=self.mode,
                symbols=symbols_by_venue[name],
                secrets=dict(spec.secrets),
                extra={
                    "run_dir": self.run_dir,
                    "duration": m.run.duration,
                    "data": m.run.data,
                    "manifest_dir": self.manifest_path.parent if self.manifest_path else None,
                },
            )
            params = self.loaded.params_of("exchanges", name)
            if self.venue_factory is not None:
                venue = self.venue_factory(name, spec, params, ctx)
            else:
                venue = reg.get("exchange", spec.type).factory(params, ctx)
            if self.mode == "paper":
                # Live market data, simulated fills: orders never reach the venue.
                wrapper = reg.get("venue_wrapper", "paper").factory
                venue = wrapper(venue, self.loaded.plugin_params.get("paper"), ctx)
            self.venues[name] = venue

        checks = []
        for name, risk_spec in m.risk.items():
            cls = reg.get("risk", risk_spec.type).factory
            checks.append(cls(name, self.loaded.params_of("risk", name)))
        self.risk = RiskChain(checks, self._on_refusal)
        self.alert_channels = [
            reg.get("alert", spec.type).factory(self.loaded.params_of("alerts", name))
            for name, spec in m.alerts.items()
        ]
        policy_cls = reg.get("execution", m.execution.type).factory
        self.policy: ExecutionPolicy = policy_cls(self.loaded.params_of("execution"))
        self._policy_retry = getattr(self.policy, "retry_at_ns", None)
        self.breakers = Breakers(m.breakers, self._on_trip) if m.breakers is not None else None
        # A resumed run gets a new id session so no client id of the first life repeats.
        # A replayed simulation makes the same ids again, so it keeps the first session.
        session = (
            _base36(time.time_ns() // 1_000_000) if self.resume and not self.replaying else None
        )
        self.orders = OrderManager(
            self.journal, self.clock, id_prefix=_id_prefix(m.run.name), session=session
        )

    def _attach_markets(self) -> None:
        m = self.manifest
        instruments = {}
        for name, venue in self.venues.items():
            for symbol, inst in venue.instruments.items():
                instruments[f"{name}:{symbol}"] = inst
        self.portfolio = Portfolio(instruments)
        self.risk_view = RiskView(
            position_lots=self.portfolio.position_lots,
            open_lots=lambda key, sign: self.orders.open_lots(key, Side(sign)),
            open_order_count=self.orders.open_count,
            now_ns=self.clock.now_ns,
            markets={},
            own_best_ticks=self._own_best_ticks,
        )
        for name, spec in m.strategies.items():
            reg = self.registry.get("strategy", spec.type)
            home = self.venues[spec.exchange]
            views: dict[str, Market] = {}
            runtimes: dict[str, MarketRuntime] = {}
            entries = list(home.instruments) if "*" in spec.symbols else spec.symbols
            for entry in entries:
                venue_name, symbol = split_market(spec.exchange, entry)
                venue = self.venues[venue_name]
                found = venue.instruments.get(symbol)
                if found is None:
                    known = ", ".join(sorted(venue.instruments)) or "none"
                    raise RuntimeError(
                        f"strategy {name!r}: exchange {venue_name!r} has no market "
                        f"{symbol!r}; it lists: {known}"
                    )
                book = venue.books[symbol]
                key = found.key
                market = Market(found, book, _position_of(self.portfolio, key))
                views[key] = market
                runtimes[key] = MarketRuntime(found, book, market, venue, owner=None)  # type: ignore[arg-type]
            ctx = StrategyContext(
                name=name,
                markets=views,
                now_ns=self.clock.now_ns,
                set_quotes=self._set_quotes,
                schedule=self._schedule_for(name),
                seed=m.run.seed,
                publish=self._publish,
                take=self._take_for(name),
            )
            strategy = reg.factory(ctx, self.loaded.params_of("strategies", name))
            srt = StrategyRuntime(name, strategy, spec.type, runtimes)
            srt.read_book_interest()
            for key, mr in runtimes.items():
                mr.owner = srt
                self.markets[key] = mr
                self.risk_view.markets[key] = mr.market
            self.strategies[name] = srt
        self.gate = OrderGate(
            risk=self.risk,
            risk_view=self.risk_view,
            breakers=self.breakers,
            orders=self.orders,
            policy=self.policy,
            position_lots=self.portfolio.position_lots,
            now_ns=self.clock.now_ns,
            is_halted=lambda strategy: self.strategies[strategy].halted,
        )

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._build()
        await self.journal.open()
        await self.bus.start()
        self.started_ns = self.clock.now_ns()
        journaled_fills: list[Fill] = []
        if isinstance(self.journal, ReplayJournal):
            self.log.info(
                "resuming {} by replaying it: {} journal records to produce again",
                self.run_id,
                self.journal.expected,
            )
        elif self.resume:
            records = list(self.journal.read())
            self.orders.restore(records)
            journaled_fills = [
                fill_from_dict(r.payload["fill"]) for r in records if r.kind == "fill"
            ]
            self.log.info(
                "resuming {}: {} journal records, {} fills, {} orders working",
                self.run_id,
                len(records),
                len(journaled_fills),
                len(self.orders.all_working()),
            )
        info_path = self.run_dir / "run.json"
        self._run_info_before = (
            info_path.read_text(encoding="utf-8") if self.replaying and info_path.exists() else None
        )
        self._write_run_files()
        for venue in self.venues.values():
            await venue.connect(self)
        self._attach_markets()
        for fill in journaled_fills:
            self.portfolio.apply_fill(fill)
        if self.resume and not self.replaying:
            await self.reconcile(since_ns=max((f.ts_ns for f in journaled_fills), default=0))
        elif self.mode == "live":
            # A fresh live start: orders of ours left open by an earlier life that was not
            # resumed are cancelled before quoting (other bots' orders are left alone).
            await self.reconcile(since_ns=self.started_ns)
        self.journal.append(
            JournalRecord(
                f"run-start-{self.run_id}",
                "run",
                self.started_ns,
                "",
                {"event": "start", "mode": self.mode, "seed": self.manifest.run.seed},
            )
        )
        # A replay writes its trace anew beside the old one and swaps it in at the end.
        name = "trace.jsonl.replay" if self.replaying else "trace.jsonl"
        self._trace_path = self.run_dir / name
        self._trace = self._trace_path.open(
            "a" if self.resume and not self.replaying else "w",
            encoding="utf-8",
            buffering=1 << 16,
        )
        self.bus.subscribe(
            f"quoteforge/{self.topic_run}/control/kill",
            lambda topic, payload: self.kill(f"bus: {payload.get('reason', 'kill')}"),
        )
        self._call_observers(self.registry.pm.hook.quoteforge_run_started, run=self)
        for srt in self.strategies.values():
            self._guard(srt, srt.strategy.on_start)
        interval = int(float(self.manifest.run.sample_interval) * NS)
        self._timers.append(self.clock.call_later(interval, self._sample, interval))
        for mr in self.markets.values():
            if mr.book.state is BookState.LIVE:
                self._requote(mr)
        if not self.clock.is_virtual:
            freeze_startup_objects()

    async def reconcile(self, since_ns: int = 0, *, periodic: bool = False) -> dict[str, int]:
        """Make local state match the venues (REST is the truth): book fills the journal
        missed, adopt orders both sides know, close orders the venue no longer has, and
        cancel orders of ours (our client-id prefix) the venue has that the journal does
        not know; other orders on the account are left alone. The diff is journaled.

        ``periodic``: a check while trading, so orders in flight (not yet acknowledged,
        or younger than a few seconds) are not judged by a snapshot that predates them.
        Orders made after the check began (the engine quotes while it awaits the venues'
        answers, at a live start too) are never judged by it.

        A venue whose adapter cannot report open orders (or fills) is not compared: its
        working orders are left alone, and that is logged once per run.
        """
        counts = {"missed_fills": 0, "closed": 0, "orphans_cancelled": 0, "adopted": 0}
        om = self.orders
        ours = f"{om.id_prefix}-"
        now = self.clock.now_ns()
        young = now - RECONCILE_GRACE_NS
        for name, venue in self.venues.items():
            fills = await venue.fetch_fills(max(0, since_ns - 60 * NS))
            if fills is None:
                self._cannot_reconcile(name, "fills", "missed fills are not looked for")
            for fill in fills or ():
                orphans = len(om.orphan_fills)
                order = om.apply_fill(fill)
                if order is not None or len(om.orphan_fills) > orphans:
                    self.portfolio.apply_fill(fill)
                    counts["missed_fills"] += 1
            reported = await venue.fetch_open_orders()
            if reported is None:
                self._cannot_reconcile(
                    name, "open orders", "its working orders are not compared (left alone)"
                )
                continue
            open_now = {u.client_id: u for u in reported}
            for order in [o for o in om.all_working() if o.venue == name]:
                update = open_now.pop(order.client_id, None)
                if update is not None:
                    om.apply_update(update)
                    counts["adopted"] += 1
                    continue
                if order.created_ns >= now:
                    continue  # made while the venues were being asked (quoting goes on)
                if periodic and (
                    order.status is OrderStatus.PENDING_NEW or order.created_ns > young
                ):
                    continue
                status = OrderStatus.FILLED if order.remaining_lots <= 0 else OrderStatus.CANCELLED
                om.apply_update(
                    OrderUpdate(
                        name,
                        order.client_id,
                        status,
                        self.clock.now_ns(),
                        reason="not open at the venue on reconciliation",
                    )
                )
                counts["closed"] += 1
            for client_id, update in open_now.items():
                if not client_id.startswith(ours):
                    self.log.info("{}: order {} is not ours: left alone", name, client_id)
                    continue
                self.log.warning(
                    "{}: order {} is open at the venue but unknown here: cancelling it",
                    name,
                    client_id,
                )
                venue.submit([CancelOrder(client_id, name, update.symbol)])
                counts["orphans_cancelled"] += 1
        if self.mode == "live":
            await self._check_balances()
        self.journal.append(
            JournalRecord(
                f"reconcile-{self.run_id}-{self.clock.now_ns()}",
                "reconcile",
                self.clock.now_ns(),
                "",
                dict(counts),
            )
        )
        if not periodic:
            self.log.info("reconciled with the venues: {}", counts)
        return counts

    def _cannot_reconcile(self, venue: str, what: str, consequence: str) -> None:
        if (venue, what) not in self._unreconcilable:
            self._unreconcilable.add((venue, what))
            self.log.warning(
                "{}: the venue adapter cannot report its {}: {}", venue, what, consequence
            )

    async def _check_balances(self) -> None:
        """Compare each venue's base-asset balances with what our fills explain: the
        balance change since the first check should equal our position change. A drift
        (fills we never saw, transfers, another bot on the account) is logged; the venue
        stays the truth."""
        for name, venue in self.venues.items():
            try:
                balances = await venue.fetch_balances()
            except Exception as exc:
                self.log.warning("{}: balances unavailable: {}", name, exc)
                continue
            if balances is None:
                self._cannot_reconcile(name, "balances", "balance drift is not checked")
                continue
            if not balances:
                continue
            by_base: dict[str, list[str]] = {}
            for key, mr in self.markets.items():
                if mr.instrument.venue == name:
                    by_base.setdefault(mr.instrument.base, []).append(key)
            for asset, keys in by_base.items():
                held = balances.get(asset)
                if held is None or len(keys) != 1:
                    continue  # an asset traded on several markets cannot be attributed
                position = self.portfolio.position(keys[0])
                start = self._balance_start.setdefault((name, asset), held - position)
                drift = held - position - start
                lot = self.markets[keys[0]].instrument.lot_size
                if abs(drift) >= lot:
                    self.log.warning(
                        "{}: {} balance {} differs from start {} + our position {} by {}",
                        name,
                        asset,
                        held,
                        start,
                        position,
                        drift,
                    )
                    self._trace_event(keys[0], "balance_drift", f"{asset} {drift}")

    async def _reconcile_every(self, interval_s: float) -> None:
        """Live runs check their copy against the venues' REST truth periodically."""
        while True:
            await asyncio.sleep(interval_s)
            since = self.clock.now_ns() - int(2 * interval_s * NS)
            try:
                counts = await self.reconcile(since_ns=since, periodic=True)
            except Exception as exc:
                self.log.warning("periodic reconciliation failed: {}; retrying later", exc)
                continue
            repaired = {k: v for k, v in counts.items() if k != "adopted" and v}
            if repaired:
                self.log.warning("periodic reconciliation repaired: {}", repaired)

    async def run(self) -> str:
        """Start, run until the duration passes or a stop is requested, then stop."""
        await self.start()
        watcher = asyncio.create_task(self._watch_files())
        checker = None
        interval = self.manifest.run.reconcile_interval
        if not self.clock.is_virtual and self.mode == "live" and interval:
            checker = asyncio.create_task(self._reconcile_every(float(interval)))
        try:
            if isinstance(self.clock, SimClock):
                await self._drive_sim(self.clock)
            else:
                await self._drive_live()
        finally:
            for task in (watcher, checker):
                if task is None:
                    continue
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.stop()
        if self.resume_refused:
            raise ResumeRefusedError(
                f"run {self.run_id} cannot be resumed exactly: {self.resume_refused}. "
                "The run folder is unchanged; start a new run instead"
            )
        return self.stop_reason

    async def _drive_sim(self, clock: SimClock) -> None:
        duration = self.manifest.run.duration
        end = self.started_ns + int(float(duration) * NS) if duration is not None else None
        far = end if end is not None else 2**62
        total = float(duration) if duration is not None else 0.0
        with Progress(total, desc=self.manifest.run.name, unit="s") as progress:
            shown = 0.0
            while not self._stop.is_set():
                # Without a duration the run ends when the events do (e.g. the end of a
                # recording); the clock must not jump to the far future then. Small
                # slices keep signals, file watching and a metrics scrape responsive.
                ran = clock.run_until(far, max_events=2_000, advance=end is not None)
                self.events_processed += ran
                if total:
                    done = min(total, (clock.now_ns() - self.started_ns) / NS)
                    progress.update(done - shown)
                    shown = done
                if clock.now_ns() >= far or clock.next_time() is None:
                    self.stop_reason = self.stop_reason or "duration reached"
                    break
                await asyncio.sleep(0)

    async def _drive_live(self) -> None:
        duration = self.manifest.run.duration
        timeout = float(duration) if duration is not None else None
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=timeout)
        except TimeoutError:
            self.stop_reason = self.stop_reason or "duration reached"

    @property
    def reconnects(self) -> int:
        """Venue connections lost and re-established so far (adapters with sockets)."""
        return sum(
            getattr(sock, "drops", 0)
            for venue in self.venues.values()
            for sock in getattr(venue, "sockets", ())
        )

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            gate = getattr(self, "gate", None)
            if gate is not None:
                gate.close(f"the run is stopping: {reason}")
            self.stop_reason = reason
            self.log.info("stopping: {}", reason)
            self._stop.set()

    async def stop(self) -> None:
        self._stop.set()  # from here on nothing requotes; only cancels go out
        if hasattr(self, "gate"):
            self.gate.close(f"the run is stopping: {self.stop_reason or 'stop'}")
        if self.resume_refused:
            await self._abandon_replay()
            return
        for handle in self._timers:
            handle.cancel()
        await self._cancel_everything()
        if not self.clock.is_virtual and self.mode == "live":
            # A fill's stream report can trail the cancel answer: ask the venues (REST is
            # the truth) once more before closing so the journal misses nothing.
            try:
                await asyncio.wait_for(self.reconcile(since_ns=self.started_ns), 30)
            except Exception as exc:
                self.log.error("final reconciliation failed: {}; run --resume to repair", exc)
        for srt in self.strategies.values():
            self._guard(srt, srt.strategy.on_stop)
        summary = self.summary_rows()
        self._sample_now()
        self.journal.append(
            JournalRecord(
                f"run-stop-{self.run_id}",
                "run",
                self.clock.now_ns(),
                "",
                {"event": "stop", "reason": self.stop_reason},
            )
        )
        for venue in self.venues.values():
            with contextlib.suppress(Exception):
                await venue.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self.journal.close()
        await self.bus.close()
        if self._trace is not None:
            self._trace.close()
            self._trace = None
            if self._trace_path.name != "trace.jsonl":
                self._trace_path.replace(self.run_dir / "trace.jsonl")
        written = self._write_summary(summary)
        self._finish_run_file()
        hook = self.registry.pm.hook
        self._call_observers(hook.quoteforge_run_stopped, run=self, summary=summary)
        for path in written:
            self._call_observers(hook.quoteforge_report_written, run=self, path=path)

    def _refuse_resume(self, why: str) -> None:
        self.resume_refused = why
        self.log.error("resume refused: {}", why)
        self.request_stop(f"resume refused: {why}")

    async def _abandon_replay(self) -> None:
        """A replay that differs from the journal: release everything, change nothing in
        the run folder (the journal wrote nothing after the first difference)."""
        for handle in self._timers:
            handle.cancel()
        for venue in self.venues.values():
            with contextlib.suppress(Exception):
                await venue.close()
        await self.journal.close()
        await self.bus.close()
        if self._trace is not None:
            self._trace.close()
            self._trace = None
            self._trace_path.unlink(missing_ok=True)
        if self._run_info_before is not None:
            (self.run_dir / "run.json").write_text(self._run_info_before, encoding="utf-8")

    async def _cancel_everything(self) -> None:
        """Pull every working order and wait (bounded) for the venues to confirm."""
        for mr in self.markets.values():
            self._execute(mr, [], record_wanted=False)
        timeout_ns = int(float(self.manifest.run.cancel_timeout) * NS)
        deadline = self.clock.now_ns() + timeout_ns
        if isinstance(self.clock, SimClock):
            while self.orders.all_working() and self.clock.now_ns() < deadline:
                if self.clock.next_time() is None:
                    break
                step_end = min(deadline, self.clock.now_ns() + 10_000_000)
                self.clock.run_until(step_end)
        else:
            while self.orders.all_working() and time.time_ns() < deadline:
                await asyncio.sleep(0.05)
        left = self.orders.all_working()
        if left:
            self.log.warning(
                "{} orders still unconfirmed after cancel: {}",
                len(left),
                ", ".join(o.client_id for o in left[:10]),
            )
            for venue in self.venues.values():
                with contextlib.suppress(Exception):
                    await venue.cancel_all()

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
                if owner.prices_only:
                    best: Any = (book.best_bid_ticks(), book.best_ask_ticks())
                else:
                    best = (book.best_bid(), book.best_ask())
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
        orphans = len(self.orders.orphan_fills)
        order = self.orders.apply_fill(fill)
        if order is None and len(self.orders.orphan_fills) == orphans:
            return  # a duplicate: already applied once
        # An orphan fill (an order this run does not know) still moved our position.
        self.portfolio.apply_fill(fill)
        mr = self.markets.get(fill.market)
        inst = mr.instrument if mr else None
        if self._trace is not None and inst is not None:
            self._write_trace(
                {
                    "type": "fill",
                    "t": fill.ts_ns,
                    "market": fill.market,
                    "fill_id": fill.fill_id,
                    "side": "buy" if fill.side is Side.BUY else "sell",
                    "price": inst.ticks_to_float(fill.price_ticks),
                    "qty": inst.lots_to_float(fill.qty_lots),
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

    # -- sampling and outputs ------------------------------------------------------------
    def _sample(self, interval: int) -> None:
        self._sample_now()
        if not self._stop.is_set():
            self._timers.append(self.clock.call_later(interval, self._sample, interval))

    def _mark(self, mr: MarketRuntime) -> Decimal | None:
        mid = mr.book.mid_ticks()
        if mid is None:
            return None
        return mr.instrument.tick_size * Decimal(str(mid))

    def _sample_now(self) -> None:
        if self._trace is None:
            return
        now = self.clock.now_ns()
        pnl_by_market: dict[str, Decimal] = {}
        for key, mr in self.markets.items():
            inst = mr.instrument
            book = mr.book
            mark = self._mark(mr)
            pf = self.portfolio
            realized = pf.realized(key)
            fees = pf.fees(key)
            unrealized = pf.unrealized(key, mark) if mark is not None else Decimal(0)
            exact_pnl = realized + unrealized - fees
            pnl_by_market[key] = exact_pnl
            pnl = float(exact_pnl)
            mr.last_pnl = pnl
            mr.peak_pnl = max(mr.peak_pnl, pnl)
            mr.max_drawdown = max(mr.max_drawdown, mr.peak_pnl - pnl)
            bid, ask = book.best_bid_ticks(), book.best_ask_ticks()
            our_bid = our_ask = None
            for order in self.orders.working(inst.venue, inst.symbol):
                if order.price_ticks is None:
                    continue
                if order.side is Side.BUY and (our_bid is None or order.price_ticks > our_bid):
                    our_bid = order.price_ticks
                elif order.side is Side.SELL and (our_ask is None or order.price_ticks < our_ask):
                    our_ask = order.price_ticks
            spread = book.spread_ticks()
            self._write_trace(
                {
                    "type": "tick",
                    "t": now,
                    "market": key,
                    "mid": float(mark) if mark is not None else None,
                    "bid": inst.ticks_to_float(bid) if bid is not None else None,
                    "ask": inst.ticks_to_float(ask) if ask is not None else None,
                    "our_bid": inst.ticks_to_float(our_bid) if our_bid is not None else None,
                    "our_ask": inst.ticks_to_float(our_ask) if our_ask is not None else None,
                    "inventory": float(pf.position(key)),
                    "pnl": pnl,
                    "realized": float(realized),
                    "unrealized": float(unrealized),
                    "fees": float(fees),
                    "spread": inst.ticks_to_float(spread) if spread is not None else None,
                    "state": book.state.value,
                }
            )
        if self.breakers is not None and not self._stop.is_set():
            self.breakers.on_sample(now, pnl_by_market, sum(pnl_by_market.values(), Decimal(0)))

    def _write_trace(self, record: dict[str, Any]) -> None:
        try:
            line = orjson.dumps(record).decode()
        except TypeError:  # an int beyond 64 bits, a key that is not text: the slow way
            line = json.dumps(record, separators=(",", ":"))
        self._trace.write(line + "\n")

    def _trace_event(self, market: str | None, event: str, detail: str) -> None:
        if self._trace is not None:
            self._write_trace(
                {
                    "type": "event",
                    "t": self.clock.now_ns(),
                    "market": market,
                    "event": event,
                    "detail": detail,
                }
            )

    def summary_rows(self) -> list[dict[str, Any]]:
        rows = []
        for key, mr in self.markets.items():
            mark = self._mark(mr)
            pf = self.portfolio
            pnl = pf.pnl(key, mark) if mark is not None else pf.realized(key) - pf.fees(key)
            spread = mr.book.spread_ticks()
            rows.append(
                {
                    "market": key,
                    "mid": float(mark) if mark is not None else None,
                    "spread": mr.instrument.ticks_to_float(spread) if spread is not None else None,
                    "inventory": float(pf.position(key)),
                    "pnl": float(pnl),
                    "fill_count": pf.fill_count(key),
                    "notional": float(pf.notional(key)),
                    "max_drawdown": max(mr.max_drawdown, mr.peak_pnl - float(pnl)),
                }
            )
        return rows

    def _write_run_files(self) -> None:
        info_path = self.run_dir / "run.json"
        if self.resume and info_path.exists():
            info = json.loads(info_path.read_text(encoding="utf-8"))
            info.setdefault("resumed", []).append(datetime.now(UTC).isoformat())
            info["pid"] = _pid()
            info.pop("finished_at", None)
            info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")
            return
        (self.run_dir / "manifest.yaml").write_text(self.loaded.text, encoding="utf-8")
        info = {
            "run_id": self.run_id,
            "name": self.manifest.run.name,
            "mode": self.mode,
            "seed": self.manifest.run.seed,
            "manifest": str(self.manifest_path) if self.manifest_path else None,
            "overrides": self.loaded.overrides,
            "started_at": datetime.now(UTC).isoformat(),
            "pid": _pid(),
        }
        (self.run_dir / "run.json").write_text(json.dumps(info, indent=2), encoding="utf-8")

    def _finish_run_file(self) -> None:
        path = self.run_dir / "run.json"
        info = json.loads(path.read_text(encoding="utf-8"))
        info["finished_at"] = datetime.now(UTC).isoformat()
        info["stop_reason"] = self.stop_reason
        info["sim_events"] = self.events_processed
        path.write_text(json.dumps(info, indent=2), encoding="utf-8")

    def _write_summary(self, rows: list[dict[str, Any]]) -> list[Path]:
        path = self.run_dir / "summary.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _fmt(row[k]) for k in SUMMARY_COLUMNS})
        return [path, self.run_dir / "trace.jsonl"]

    # -- live parameter changes ------------------------------------------------------------
    async def _watch_files(self) -> None:
        """Poll the run folder's KILL file and, when enabled, the manifest file."""
        path = self.manifest_path if self.manifest.run.watch_manifest else None
        last = None
        if path is not None:
            with contextlib.suppress(OSError):
                last = path.stat().st_mtime_ns
        kill_file = self.run_dir / KILL_FILE
        while True:
            await asyncio.sleep(0.25)
            if kill_file.exists():
                reason = kill_file.read_text(encoding="utf-8").strip() or "kill file"
                self.kill(f"file: {reason}")
                return
            reset_file = self.run_dir / RESET_FILE
            if reset_file.exists():
                who = reset_file.read_text(encoding="utf-8").strip() or "all"
                reset_file.unlink()
                try:
                    self.reset_breakers(who)
                except ValueError as exc:
                    self.log.error("breaker reset refused: {}", exc)
            if path is None:
                continue
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                continue
            if mtime != last:
                last = mtime
                self.reload_params()

    def kill(self, source: str) -> None:
        """The kill switch: halt every strategy, cancel every order on every venue, stop.

        Reachable from ``quoteforge kill RUN``, the run folder's KILL file, SIGUSR1 and
        the bus control topic.
        """
        if self.killed:
            return
        self.killed = True
        self.gate.close(f"kill switch: {source}")
        self.journal.append(
            JournalRecord(
                f"kill-{self.run_id}", "breaker", self.clock.now_ns(), "", {"kill": source}
            )
        )
        for srt in self.strategies.values():
            srt.halted = True
        for mr in self.markets.values():
            self._execute(mr, [], record_wanted=False)
        for venue in self.venues.values():
            task = asyncio.get_event_loop().create_task(venue.cancel_all())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.alert("kill", f"kill switch ({source}): every order cancelled", severity="critical")
        self.request_stop(f"kill switch: {source}")

    def reload_params(self) -> list[str]:
        """Re-read the manifest and apply changed strategy params; returns what changed.

        An invalid manifest is refused and logged; the run keeps the old values.
        """
        assert self.manifest_path is not None
        try:
            fresh = load_manifest(
                self.manifest_path, self.registry, overrides=self.loaded.overrides
            )
        except ManifestError as exc:
            self.log.error("manifest change refused, keeping the running params:\n{}", exc)
            self._trace_event(None, "params_refused", str(exc))
            return []
        changed = []
        for name, srt in self.strategies.items():
            key = f"strategies.{name}"
            new_params: BaseModel | None = fresh.plugin_params.get(key)
            old_params = self.loaded.plugin_params.get(key)
            if new_params is None or new_params == old_params:
                continue
            if self._guard(srt, srt.strategy.on_params, new_params) is None and srt.halted:
                continue
            self.loaded.plugin_params[key] = new_params
            srt.read_book_interest()  # what the strategy reads may follow its params
            changed.append(name)
            self.log.info("strategy {!r}: new params applied: {}", name, new_params)
            self._trace_event(None, "params_applied", f"{name}: {new_params}")
            for mr in srt.markets.values():
                self._requote(mr, refill=True)
        structural = {k: v for k, v in fresh.data.items() if k != "strategies"}
        if structural != {k: v for k, v in self.loaded.data.items() if k != "strategies"}:
            self.log.warning(
                "manifest sections other than strategy params changed: restart to apply"
            )
        return changed


def freeze_startup_objects() -> None:
    """Take everything alive after start-up (imported modules, plugins, instruments,
    books) out of the cyclic garbage collector's reach, after one last collection.

    A full collection otherwise walks those tens of thousands of objects every time and
    pauses the event loop for 10-50 ms; frozen, later collections only scan what the run
    itself allocates. Called once by live runs and by every split node when started.
    """
    gc.collect()
    gc.freeze()


def _base36(value: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while value:
        value, rem = divmod(value, 36)
        out = digits[rem] + out
    return out or "0"


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.10g}"
    return "" if value is None else value


def _position_of(portfolio: Portfolio, key: str) -> Callable[[], int]:
    return lambda: portfolio.position_lots(key)


def _epoch_ns() -> int:
    # Simulations start at a fixed virtual epoch so that a seed gives identical traces.
    return int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * NS


def _pid() -> int:
    import os

    return os.getpid()


def _id_prefix(name: str) -> str:
    return "".join(c for c in name if c.isalnum())[:6] or "qf"


def new_run_dir(base: Path, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return base / f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"


async def run_manifest(
    loaded: LoadedManifest,
    registry: PluginRegistry,
    *,
    run_dir: Path,
    manifest_path: Path | None = None,
    install_signals: bool = True,
    resume: bool = False,
) -> Run:
    """Run a validated manifest to the end; SIGINT/SIGTERM stop it cleanly."""
    run = Run(loaded, registry, run_dir=run_dir, manifest_path=manifest_path, resume=resume)
    with stop_signals(run.request_stop, run.kill, enabled=install_signals):
        await run.run()
    return run


@contextlib.contextmanager
def stop_signals(
    request_stop: Callable[[str], None], kill: Callable[[str], None], *, enabled: bool = True
) -> Iterator[None]:
    """SIGINT and SIGTERM stop cleanly, SIGUSR1 is the kill switch, while the block runs."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    handlers = (
        (signal.SIGINT, request_stop),
        (signal.SIGTERM, request_stop),
        (signal.SIGUSR1, kill),
    )
    if enabled:
        for sig, handler in handlers:
            try:
                loop.add_signal_handler(sig, handler, f"signal {sig.name}")
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass  # not the main thread, or a platform without signals
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
