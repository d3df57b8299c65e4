"""The run engine: resolves plugins once, then drives the hot path with direct calls.

book update -> strategy.on_book -> risk chain -> execution policy -> order manager ->
adapter.submit. Order updates and fills come back through the order manager (which
journals them first), then positions, then the strategy. pluggy is used at start-up
and for low-frequency observer hooks only. The parts are built by
``quoteforge.assembly``; the run folder's files are written by ``quoteforge.runfiles``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from loguru import logger
from pydantic import BaseModel

from quoteforge.assembly import (
    MarketRuntime,
    StrategyRuntime,
    VenueFactory,
    build_bus,
    build_journal,
    build_order_manager,
    build_portfolio,
    build_risk,
    build_risk_view,
    build_strategies,
    build_venues,
    run_clock,
)
from quoteforge.book import BookState
from quoteforge.breakers import Breakers
from quoteforge.bus import Bus
from quoteforge.clock import NS, Clock, SimClock
from quoteforge.exchange import CancelOrder, ExchangeAdapter
from quoteforge.execution import ExecutionPolicy
from quoteforge.gate import OrderGate
from quoteforge.journal import JournalRecord
from quoteforge.manifest import LoadedManifest, ManifestError, load_manifest
from quoteforge.model import Fill, Funding
from quoteforge.orders import fill_from_dict
from quoteforge.progress import Progress
from quoteforge.quoting import Alert, QuotingEngine
from quoteforge.reconcile import Reconciler
from quoteforge.registry import PluginRegistry
from quoteforge.resume import ReplayJournal, ResumeRefusedError, replays_on_resume
from quoteforge.risk import RiskChain, RiskView
from quoteforge.runfiles import (
    KILL_FILE,
    RESET_FILE,
    TraceWriter,
    finish_run_info,
    new_run_dir,
    sample_markets,
    stop_signals,
    summary_rows,
    watch_run_files,
    write_run_info,
    write_summary,
)
from quoteforge.strategy import Market, StrategyContext

__all__ = [
    "KILL_FILE",
    "RESET_FILE",
    "Alert",
    "MarketRuntime",
    "QuotingEngine",
    "Run",
    "RunDriver",
    "StrategyRuntime",
    "new_run_dir",
    "run_manifest",
]


class RunDriver(Protocol):
    """Decides when a run ends and how it winds down, in place of the run's own clock:
    a strategy node in lock step follows the virtual time another process keeps.

    ``drive`` returns when the run is to stop (having set ``run.stop_reason`` if it
    chose the reason); ``cancel_everything`` pulls every quote (``run.pull_quotes()``)
    and returns when the orders are settled or given up on.
    """

    async def drive(self, run: Run) -> None: ...

    async def cancel_everything(self, run: Run) -> None: ...


class Run(QuotingEngine):
    """One run of a manifest: build, start, drive, stop and report.

    Extension points, for a process that runs the engine as part of something larger (a
    split run's strategy node) or for a test:

    - ``venue_factory``: makes each exchange's adapter instead of its registered factory
      (e.g. an adapter that reaches the venue over the bus).
    - ``bus``: this bus instead of one built from the manifest.
    - ``run_info``: extra fields for run.json (a node's role), at start and at the end (a
      damaged recording adds ``incomplete``, orders left open ``orders_left_open``).
    - ``driver``: a ``RunDriver`` that ends and winds down the run.
    - ``on_started(run)``: called once the run is started and quoting.
    - ``on_kill(source)``: called when the kill switch is pulled here, before the run
      acts on it (a node tells its peers).
    - ``progress_every``: without a terminal, log progress every so many seconds;
      ``progress_bar=False``: no bar on a terminal either (see ``quoteforge.progress``).
    """

    def __init__(
        self,
        loaded: LoadedManifest,
        registry: PluginRegistry,
        *,
        run_dir: Path,
        clock: Clock | None = None,
        manifest_path: Path | None = None,
        resume: bool = False,
        venue_factory: VenueFactory | None = None,
        bus: Bus | None = None,
        run_info: dict[str, Any] | None = None,
        driver: RunDriver | None = None,
        on_started: Callable[[Run], None] | None = None,
        on_kill: Callable[[str], None] | None = None,
        progress_every: float | None = None,
        progress_bar: bool = True,
    ) -> None:
        self.resume = resume
        self.progress_every = progress_every
        self.progress_bar = progress_bar
        # A simulated run resumes by replaying its first life (see quoteforge.resume).
        self.replaying = resume and replays_on_resume(loaded.manifest.run.mode)
        #: Why a replaying resume was refused (the replay differed from the journal).
        self.resume_refused = ""
        self._life = ""  # a resumed life's suffix of its run-start/run-stop record ids
        #: Why a strategy refused the last params change it was given, by strategy name.
        self.params_refused: dict[str, str] = {}
        self.venue_factory = venue_factory
        self._given_bus = bus
        self.run_info = run_info or {}
        self.driver = driver
        self._on_started = on_started
        self._on_kill = on_kill
        self.loaded = loaded
        self.manifest = loaded.manifest
        self.mode = self.manifest.run.mode
        self.run_dir = run_dir
        self.run_id = run_dir.name
        # Bus topics use the manifest's run name, shared by every node of a split run.
        self.topic_run = loaded.manifest.run.name
        clock = clock if clock is not None else run_clock(self.mode)
        self.manifest_path = manifest_path
        super().__init__(registry, clock, logger.bind(component="engine", run=self.run_id))
        self.venues: dict[str, ExchangeAdapter] = {}
        self.started_ns = 0
        self.stop_reason = ""
        self.events_processed = 0
        self.killed = False

    # -- construction ----------------------------------------------------------------
    def _build(self) -> None:
        loaded, reg = self.loaded, self.registry
        self.journal = build_journal(loaded, reg, self.run_dir)
        if self.replaying:
            # Everything the replay journals is checked against the first life's records.
            self.journal = ReplayJournal(self.journal, self._refuse_resume)
        self.bus = self._given_bus or build_bus(loaded, reg)
        self.venues = build_venues(
            loaded,
            reg,
            clock=self.clock,
            run_dir=self.run_dir,
            manifest_path=self.manifest_path,
            factory=self.venue_factory,
        )
        self.risk: RiskChain = build_risk(loaded, reg, self._on_refusal)
        self.alert_channels = [
            reg.get("alert", spec.type).factory(loaded.params_of("alerts", name))
            for name, spec in self.manifest.alerts.items()
        ]
        self.policy: ExecutionPolicy = reg.get("execution", self.manifest.execution.type).factory(
            loaded.params_of("execution")
        )
        self._policy_retry = getattr(self.policy, "retry_at_ns", None)
        spec = self.manifest.breakers
        self.breakers = Breakers(spec, self._on_trip) if spec is not None else None
        # A resumed run gets a new id session so no client id of the first life repeats.
        # A replayed simulation makes the same ids again, so it keeps the first session.
        session = (
            _base36(time.time_ns() // 1_000_000) if self.resume and not self.replaying else None
        )
        self.orders = build_order_manager(loaded, self.journal, self.clock, session)

    def _attach_markets(self) -> None:
        self.portfolio = build_portfolio(self.venues)
        self.risk_view: RiskView = build_risk_view(
            self.portfolio, self.orders, self.clock, {}, self._own_best_ticks
        )
        seed = self.manifest.run.seed

        def make_context(name: str, views: dict[str, Market]) -> StrategyContext:
            return StrategyContext(
                name=name,
                markets=views,
                now_ns=self.clock.now_ns,
                set_quotes=self._set_quotes,
                schedule=self._schedule_for(name),
                seed=seed,
                publish=self._publish,
                take=self._take_for(name),
            )

        built = build_strategies(
            self.loaded, self.registry, self.venues, self.portfolio, make_context
        )
        for name, srt in built.items():
            for key, mr in srt.markets.items():
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
        self.reconciler = Reconciler(
            run_id=self.run_id,
            mode=self.mode,
            venues=self.venues,
            orders=self.orders,
            portfolio=self.portfolio,
            instruments={key: mr.instrument for key, mr in self.markets.items()},
            journal=self.journal,
            clock=self.clock,
            log=self.log,
            trace_event=self._trace_event,
        )

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._build()
        await self.journal.open()
        await self.bus.start()
        self.started_ns = self.clock.now_ns()
        journaled_fills: list[Fill] = []
        journaled_funding: list[JournalRecord] = []  # perpetuals' funding payments
        openings: list[JournalRecord] = []  # positions the venues held at the run's start
        first_start = 0  # when the run's first life started (fills before it are not ours)
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
            journaled_funding = [r for r in records if r.kind == "funding"]
            openings = [r for r in records if r.kind == "opening"]
            starts = [r.ts_ns for r in records if r.payload.get("event") == "start"]
            first_start = min(starts, default=0)
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
        write_run_info(
            self.run_dir,
            {
                "run_id": self.run_id,
                "name": self.manifest.run.name,
                "mode": self.mode,
                "seed": self.manifest.run.seed,
                "manifest": str(self.manifest_path) if self.manifest_path else None,
                "overrides": self.loaded.overrides,
            },
            resume=self.resume,
            manifest_text=self.loaded.text,
            extra=self.run_info,
        )
        for venue in self.venues.values():
            await venue.connect(self)
        self._attach_markets()
        for r in openings:  # the first life's record, not the venue's position now
            self.portfolio.open_position(r.market, **r.payload)
        for fill in journaled_fills:
            self.portfolio.apply_fill(fill)
        for r in journaled_funding:
            where, _, symbol = r.market.partition(":")
            amount, asset, fid = Decimal(r.payload["amount"]), r.payload["asset"], r.payload["id"]
            self.portfolio.apply_funding(Funding(where, symbol, fid, amount, asset, r.ts_ns))
        if not self.replaying:
            await self._start_positions()
        if self.resume and not self.replaying:
            # Orders of the earlier lives, for a venue that names orders by its own ids
            # only: their trades while the bot was down are the run's.
            for name, venue in self.venues.items():
                if (know := getattr(venue, "know_orders", None)) is not None:
                    know([o for o in self.orders.all_orders() if o.venue == name])
            await self.reconcile(
                since_ns=max((f.ts_ns for f in journaled_fills), default=first_start)
            )
        elif self.mode == "live":
            # A fresh live start: orders of ours left open by an earlier life that was not
            # resumed are cancelled before quoting (other bots' orders are left alone).
            await self.reconcile(since_ns=self.started_ns)
        # A later life's start and stop are its own records (a replay's are the first's).
        self._life = f"-{self.orders.session}" if self.resume and not self.replaying else ""
        self.journal.append(
            JournalRecord(
                f"run-start-{self.run_id}{self._life}",
                "run",
                self.started_ns,
                "",
                {"event": "start", "mode": self.mode, "seed": self.manifest.run.seed},
            )
        )
        # A replay writes its trace anew beside the old one and swaps it in at the end.
        name = "trace.jsonl.replay" if self.replaying else "trace.jsonl"
        self._trace = TraceWriter(self.run_dir / name, append=self.resume and not self.replaying)
        self.bus.subscribe(
            f"quoteforge/{self.topic_run}/control/kill",
            lambda topic, payload: self.kill(f"bus: {payload.get('reason', 'kill')}"),
        )
        self._call_observers(self.registry.pm.hook.quoteforge_run_started, run=self)
        for srt in self.strategies.values():
            srt.halted = bool(self.gate.closed)  # held until now; not after a kill
            self._guard(srt, srt.strategy.on_start)
        interval = int(float(self.manifest.run.sample_interval) * NS)
        self._timers.append(self.clock.call_later(interval, self._sample, interval))
        for mr in self.markets.values():
            if mr.book.state is BookState.LIVE:
                self._requote(mr)
        if self._on_started is not None:
            self._on_started(self)

    async def _start_positions(self) -> None:
        """What venues with ``start_positions`` (docs/adapters.md) held before the run: booked
        as opening positions and journaled (kind ``opening``); none on a resume."""
        for name, venue in self.venues.items():
            if (hook := getattr(venue, "start_positions", None)) is None:
                continue
            orders = [o for o in self.orders.all_orders() if o.venue == name]
            for p in await hook(self.portfolio.position_lots, orders, resumed=self.resume):
                payload = {"qty_lots": p.qty_lots, "entry_price": str(p.entry_price)}
                r = JournalRecord(f"opening:{p.market}", "opening", p.ts_ns, p.market, payload)
                self.journal.append(r)
                self.portfolio.open_position(p.market, **payload)
                self.log.warning("{}: opening position {} lots at {}", p.market, *payload.values())

    async def reconcile(self, since_ns: int = 0, *, periodic: bool = False) -> dict[str, int]:
        """Make local state match the venues (REST is the truth); returns the counts
        of what was repaired. See ``quoteforge.reconcile.Reconciler.reconcile``."""
        return await self.reconciler.reconcile(since_ns, periodic=periodic)

    async def run(self) -> str:
        """Start, run until the duration passes or a stop is requested, then stop."""
        try:
            await self.start()
        except BaseException:  # nothing will run: what the start opened is closed
            await self._release(quietly=True)
            raise
        watcher = asyncio.create_task(
            watch_run_files(
                self.run_dir,
                self.kill,
                reset=self._reset_from_file,
                manifest_path=self.manifest_path if self.manifest.run.watch_manifest else None,
                reload=self.reload_params,
            )
        )
        checker = None
        interval = self.manifest.run.reconcile_interval
        if not self.clock.is_virtual and self.mode == "live" and interval:
            checker = asyncio.create_task(self.reconciler.every(float(interval)))
        guard = None if self.clock.is_virtual else asyncio.create_task(self._journal_guard())
        try:
            if self.driver is not None:
                await self.driver.drive(self)
            elif isinstance(self.clock, SimClock):
                await self._drive_sim(self.clock)
            else:
                await self._drive_live()
        finally:
            for task in (watcher, checker, guard):
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
        total = float(duration) if duration is not None else None
        with self._progress(total) as progress:
            shown = 0.0
            while not self._stop.is_set():
                # Without a duration the run ends when the events do (e.g. the end of a
                # recording); the clock must not jump to the far future then. Small
                # slices keep signals, file watching and a metrics scrape responsive.
                ran = clock.run_until(far, max_events=2_000, advance=end is not None)
                self.events_processed += ran
                done = min(total or math.inf, (clock.now_ns() - self.started_ns) / NS)
                progress.update(done - shown)
                shown = done
                if clock.now_ns() >= far or clock.next_time() is None:
                    self.stop_reason = self.stop_reason or "duration reached"
                    break
                await asyncio.sleep(0)

    async def _journal_guard(self) -> None:
        """A run on the wall clock is killed when its journal fails (flushed every
        second): it could no longer say what it did, nor send an order it could record."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.journal.flush()
            except Exception as exc:
                return self.kill(f"the journal failed: {exc}")

    async def _drive_live(self) -> None:
        duration = self.manifest.run.duration
        end = time.monotonic() + float(duration) if duration is not None else None
        with self._progress(float(duration) if duration else None, bar=False) as progress:
            while not self._stop.is_set():
                now = time.monotonic()
                if end is not None and now >= end:
                    self.stop_reason = self.stop_reason or "duration reached"
                    break
                waits = [w for w in (progress.log_every, end and end - now) if w]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), min(waits, default=None))
                progress.update(time.monotonic() - now)

    def _progress(self, total: float | None, bar: bool = True) -> Progress:
        name, every, bar = self.manifest.run.name, self.progress_every, bar and self.progress_bar
        return Progress(total, name, "s", bar=bar, log_every=every, status=self._progress_status)

    def _progress_status(self) -> str:
        fills = sum(self.portfolio.fill_count(key) for key in self.markets)
        text = f"{fills:,} fills, {len(self.orders.all_working()):,} orders working"
        if not self.clock.is_virtual:
            return text
        sim = timedelta(seconds=(self.clock.now_ns() - self.started_ns) // NS)
        return f"sim time {sim}, {self.events_processed:,} events, {text}"

    @property
    def reconnects(self) -> int:
        """Venue connections lost and re-established so far (adapters with sockets)."""
        return sum(
            getattr(sock, "drops", 0)
            for venue in self.venues.values()
            for sock in getattr(venue, "sockets", ())
        )

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    async def wait_stopped(self) -> None:
        """Return once a stop is requested (a signal, the kill switch, the duration...)."""
        await self._stop.wait()

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
        if self.gc_policy is not None:
            self.gc_policy.stop()  # Python's collector as before: a stop is no hot path
        if hasattr(self, "gate"):
            self.gate.close(f"the run is stopping: {self.stop_reason or 'stop'}")
        if self.resume_refused:
            await self._abandon_replay()
            return
        for handle in self._timers:
            handle.cancel()
        if self.driver is not None:
            await self.driver.cancel_everything(self)
        else:
            await self._cancel_everything()
        if self.resume_refused:  # the replay differed in its stop's cancels
            await self._abandon_replay()
            return
        if not self.clock.is_virtual and self.mode == "live":
            # A fill's stream report can trail the cancel answer: ask the venues (REST is
            # the truth) once more before closing so the journal misses nothing.
            try:
                await asyncio.wait_for(self.reconcile(since_ns=self.started_ns), 30)
            except Exception as exc:
                self.log.error("final reconciliation failed: {}; run --resume to repair", exc)
        if left := len(self.orders.all_working()):  # run.json; quoteforge run then exits 1
            self.run_info["orders_left_open"] = left
            self.log.error("{} order(s) not confirmed closed at the venues: check them", left)
        for srt in self.strategies.values():
            self._guard(srt, srt.strategy.on_stop)
        self._sample_now()
        summary = self.summary_rows()  # after the last sample: the spreads' means count it
        with contextlib.suppress(Exception):  # a failed journal says so at close, below
            self.journal.append(
                JournalRecord(
                    f"run-stop-{self.run_id}{self._life}",
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
            if self._trace.path.name != "trace.jsonl":
                self._trace.path.replace(self.run_dir / "trace.jsonl")
            self._trace = None
        written = write_summary(self.run_dir, summary)
        ended = {"stop_reason": self.stop_reason, "sim_events": self.events_processed}
        finish_run_info(self.run_dir, **self.run_info, **ended)
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
        await self._release()
        if self._trace is not None:
            self._trace.close()
            self._trace.path.unlink(missing_ok=True)
            self._trace = None
        if self._run_info_before is not None:
            (self.run_dir / "run.json").write_text(self._run_info_before, encoding="utf-8")

    async def _release(self, quietly: bool = False) -> None:
        """Cancel the timers, close the venues (errors ignored), the journal and the bus
        (their errors too when ``quietly``: a start that failed may not have opened them)."""
        for handle in self._timers:
            handle.cancel()
        for venue in self.venues.values():
            with contextlib.suppress(Exception):
                await venue.close()
        for close in (self.journal.close, self.bus.close):
            with contextlib.suppress(*([Exception] if quietly else [])):
                await close()

    async def _cancel_everything(self) -> None:
        """Pull every working order and wait (bounded) for the venues to confirm."""
        try:
            self.pull_quotes()
        except Exception as exc:  # the journal failed: the venues cancel everything instead
            self.log.error("pulling quotes failed ({}); cancelling every order", exc)
            for venue in self.venues.values():
                with contextlib.suppress(Exception):
                    await venue.cancel_all()
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
            ids = ", ".join(o.client_id for o in left[:10])
            self.log.warning("{} orders still unconfirmed after cancel: {}", len(left), ids)
            for venue in self.venues.values():
                with contextlib.suppress(Exception):
                    await venue.cancel_all()

    # -- sampling and outputs ------------------------------------------------------------
    def _sample(self, interval: int) -> None:
        self._sample_now()
        if not self._stop.is_set():
            self._timers.append(self.clock.call_later(interval, self._sample, interval))

    def _sample_now(self) -> None:
        if self._trace is None:
            return
        now = self.clock.now_ns()
        pnl = sample_markets(self.markets, self.portfolio, self.orders, now, self._trace)
        if self.breakers is not None and not self._stop.is_set():
            self.breakers.on_sample(now, pnl, sum(pnl.values(), Decimal(0)))

    def summary_rows(self) -> list[dict[str, Any]]:
        return summary_rows(self.markets, self.portfolio)

    # -- kill switch, live changes ------------------------------------------------------------
    def _reset_from_file(self, who: str) -> None:
        try:
            self.reset_breakers(who)
        except ValueError as exc:
            self.log.error("breaker reset refused: {}", exc)

    def kill(self, source: str) -> None:
        """The kill switch: halt every strategy, cancel every order on every venue, stop.

        Reachable from ``quoteforge kill RUN``, the run folder's KILL file, SIGUSR1 and
        the bus control topic.
        """
        if self.killed:
            return
        if source == "signal SIGUSR1" and (self.run_dir / KILL_FILE).is_file():  # its --reason
            source = f"quoteforge kill: {(self.run_dir / KILL_FILE).read_text().strip()}"
        if self._on_kill is not None:
            self._on_kill(source)
        self.killed = True
        self.gate.close(f"kill switch: {source}")
        try:  # a journal that failed must not stop the kill: the venues cancel all the same
            self.journal.append(
                JournalRecord(
                    f"kill-{self.run_id}", "breaker", self.clock.now_ns(), "", {"kill": source}
                )
            )
        except Exception as exc:
            self.log.error("kill switch: not journaled ({}); cancelling all the same", exc)
        for srt in self.strategies.values():
            srt.halted = True
        with contextlib.suppress(Exception):  # the venues' cancel_all below covers it
            self.pull_quotes()
        for venue in self.venues.values():
            task = asyncio.get_event_loop().create_task(venue.cancel_all())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.alert("kill", f"kill switch ({source}): cancelling every order", severity="critical")
        self.request_stop(f"kill switch: {source}")

    def pause_strategy(self, name: str, who: str) -> None:
        """Halt strategy ``name`` by hand (KeyError if unknown): the halted flag the order
        gate reads is set and its quotes are pulled, as after an error, until resumed."""
        srt = self.strategies[name]
        srt.halted = True
        self.pull_quotes(name)
        self.log.warning("strategy {!r} paused by {}", name, who)
        self._trace_event(None, "strategy_paused", f"{name} by {who}")

    def cancel_order(self, client_id: str, who: str) -> str:
        """Cancel one working order by client id, as the execution policy cancels a quote:
        the order manager records the request, then the venue gets it; returns its market.
        KeyError if unknown; ValueError if it is no longer working or a cancel is already
        in flight. Its strategy may quote again at its next decision (pause it first)."""
        order = self.orders.get(client_id)
        if order is None:
            raise KeyError(client_id)
        if self.orders.request_cancel(client_id) is None:
            raise ValueError(f"order {client_id!r} is {order.status.value}: nothing to cancel")
        venue = self.venues[order.venue]
        venue.submit([CancelOrder(client_id, order.venue, order.symbol)])
        self.log.warning("order {} on {} cancelled by {}", client_id, order.market, who)
        self._trace_event(order.market, "order_cancelled", f"{client_id} by {who}")
        return order.market

    def resume_strategy(self, name: str, who: str) -> None:
        """Clear strategy ``name``'s halted flag and let it quote again; refused (ValueError)
        once the run is killed or stopping."""
        srt = self.strategies[name]
        if self.gate.closed:
            raise ValueError(f"cannot resume {name!r}: {self.gate.closed}")
        srt.halted = False
        self.log.warning("strategy {!r} resumed by {}", name, who)
        self._trace_event(None, "strategy_resumed", f"{name} by {who}")
        for mr in srt.markets.values():
            self._requote(mr, refill=True)

    def reload_params(self, text: str | None = None) -> list[str]:
        """Re-read the manifest and apply changed strategy params; returns what changed.
        ``text``: the manifest as this text, not the file's (a run not watching its file).

        An invalid manifest, or params a strategy's ``on_params`` raises on, is refused and
        logged; the run keeps the old values.
        """
        assert self.manifest_path is not None
        try:
            fresh = load_manifest(
                self.manifest_path, self.registry, overrides=self.loaded.overrides, text=text
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
            if srt.halted:  # paused or failed: it takes no params until resumed
                continue
            try:
                srt.strategy.on_params(new_params)
            except Exception as exc:  # refused: back to the running params, still quoting
                edit = {k: v for k, v in new_params if getattr(old_params, k, None) != v}
                why = f"strategy {name!r} refused the params change {edit}: {exc}"
                self.params_refused[name] = why
                self.log.opt(exception=exc).error("{}; it keeps its running params", why)
                self._trace_event(None, "params_refused", why)
                self._guard(srt, srt.strategy.on_params, old_params)
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


def _base36(value: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while value:
        value, rem = divmod(value, 36)
        out = digits[rem] + out
    return out or "0"


async def run_manifest(
    loaded: LoadedManifest,
    registry: PluginRegistry,
    *,
    run_dir: Path,
    manifest_path: Path | None = None,
    install_signals: bool = True,
    resume: bool = False,
    **options: Any,
) -> Run:
    """Run a validated manifest to the end; SIGINT/SIGTERM stop it cleanly. ``options``
    are more of ``Run``'s keyword arguments (``progress_every``...)."""
    run = Run(
        loaded, registry, run_dir=run_dir, manifest_path=manifest_path, resume=resume, **options
    )
    with stop_signals(run.request_stop, run.kill, enabled=install_signals):
        await run.run()
    return run
