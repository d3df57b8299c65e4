"""Run assembly: the parts of a run, built from a loaded manifest in one place.

The one-process engine (``quoteforge.engine.Run``) and the nodes of a split run (the
``distributed`` plugin) build their journal, bus, venues, risk chain, alert channels,
execution policy, breakers, order manager, portfolio, markets and strategies with these
functions, so a manifest means the same thing however the run is deployed. Each function
builds one part and takes what it depends on as arguments; none of them starts anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from quoteforge.book import L2Book
from quoteforge.bus import Bus
from quoteforge.clock import NS, Clock, LiveClock, SimClock, TimerHandle
from quoteforge.exchange import ExchangeAdapter, VenueContext
from quoteforge.journal import Journal
from quoteforge.manifest import LoadedManifest, Manifest, PluginSpec, split_market
from quoteforge.model import Instrument, Quote, Side
from quoteforge.orders import OrderManager
from quoteforge.portfolio import Portfolio
from quoteforge.registry import PluginRegistry
from quoteforge.risk import RiskChain, RiskRefusal, RiskView
from quoteforge.strategy import Market, Strategy, StrategyContext, book_interest

#: Makes the adapter of one manifest exchange: ``(name, spec, params, ctx)``. A node (or a
#: test) passes one to stand another adapter in, e.g. one reaching the venue over a bus.
VenueFactory = Callable[[str, PluginSpec, BaseModel, VenueContext], ExchangeAdapter]


@dataclass(eq=False)
class StrategyRuntime:
    """One strategy instance of a run and the engine's state about it."""

    name: str
    strategy: Strategy
    type: str
    markets: dict[str, MarketRuntime] = field(default_factory=dict)
    halted: bool = True  # until the run has reconciled with the venues and started it
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
    """One market a strategy quotes, with the engine's per-market quoting state."""

    instrument: Any
    book: L2Book
    market: Market
    adapter: ExchangeAdapter
    owner: StrategyRuntime
    wanted: list[Quote] = field(default_factory=list)
    peak_pnl: float = 0.0
    max_drawdown: float = 0.0
    # Sums of the sampled spreads (market's, ours when both sides are out) for summary.csv.
    spread_sum: float = 0.0
    spread_samples: int = 0
    quoted_spread_sum: float = 0.0
    quoted_spread_samples: int = 0
    quote_updates: int = 0
    seen_top: int = -1  # the book's top_version when the strategy last saw it
    seen_best: Any = None  # (best bid, best ask) when the strategy last saw it
    reject_streak: int = 0  # consecutive order rejections on this market
    quiet_until: int = 0  # no new quotes before this time (backoff after rejections)
    retry: TimerHandle | None = None


def sim_epoch_ns() -> int:
    """Where virtual time starts: a fixed epoch, so a seed gives identical traces."""
    return int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * NS


def run_clock(mode: str) -> Clock:
    """The clock a run of ``mode`` uses unless it is given one: virtual for sim/backtest."""
    return SimClock(sim_epoch_ns()) if mode in ("sim", "backtest") else LiveClock()


def id_prefix(name: str) -> str:
    """The client-id prefix of a run's orders (reconciliation tells ours by it)."""
    return "".join(c for c in name if c.isalnum())[:6] or "qf"


def build_journal(loaded: LoadedManifest, registry: PluginRegistry, run_dir: Path) -> Journal:
    factory = registry.get("journal", loaded.manifest.journal.type).factory
    journal: Journal = factory(loaded.params_of("journal"), run_dir)
    return journal


def build_bus(
    loaded: LoadedManifest, registry: PluginRegistry, params: BaseModel | None = None
) -> Bus:
    """The manifest's bus; ``params`` replaces its params (a node's own client id...)."""
    m = loaded.manifest
    bus: Bus = registry.get("bus", m.bus.type).factory(
        params if params is not None else loaded.params_of("bus"), m.run.name
    )
    return bus


def symbols_by_venue(manifest: Manifest) -> dict[str, list[str]]:
    """The symbols each exchange must serve for the manifest's strategies. A strategy
    asking for ``"*"`` adds none: the venue decides what every market is."""
    out: dict[str, list[str]] = {name: [] for name in manifest.exchanges}
    for spec in manifest.strategies.values():
        if "*" not in spec.symbols:
            for entry in spec.symbols:
                venue_name, symbol = split_market(spec.exchange, entry)
                out[venue_name].append(symbol)
    return out


def venue_context(
    loaded: LoadedManifest,
    name: str,
    *,
    clock: Clock,
    run_dir: Path,
    symbols: list[str],
    manifest_path: Path | None = None,
    role: str | None = None,
    secrets: bool = True,
) -> VenueContext:
    """What the adapter factory of exchange ``name`` is handed. ``role`` is the split-run
    role hosting it (absent in one process); ``secrets=False`` for a process that never
    trades on the venue (a market-data node needs no keys). A paper run gets no keys
    either: it must send no signed request (a venue's dead man's switch, heartbeats or
    countdown, acts on the whole account)."""
    m = loaded.manifest
    extra: dict[str, Any] = {
        "run_dir": run_dir,
        "duration": m.run.duration,
        "data": m.run.data,
        "manifest_dir": manifest_path.parent if manifest_path else None,
    }
    if role is not None:
        extra["role"] = role
    return VenueContext(
        name=name,
        clock=clock,
        seed=m.run.seed,
        mode=m.run.mode,
        symbols=symbols,
        secrets=dict(m.exchanges[name].secrets) if secrets and m.run.mode != "paper" else {},
        extra=extra,
    )


def build_venue(
    loaded: LoadedManifest,
    registry: PluginRegistry,
    name: str,
    ctx: VenueContext,
    *,
    factory: VenueFactory | None = None,
    trades: bool = True,
) -> ExchangeAdapter:
    """The adapter of exchange ``name``. In a paper run a venue this process trades on
    is wrapped by the ``venue_wrapper`` plugin ``paper``: live market data, simulated
    fills, so no order reaches the venue."""
    spec = loaded.manifest.exchanges[name]
    params = loaded.params_of("exchanges", name)
    # A venue builds its books with the book source registered under the name its
    # params give, so a plugin's source can stand in for the built-in one.
    ctx.extra.setdefault(
        "book_sources",
        {n: r.factory for n, r in registry.types("book_source").items() if r.loadable},
    )
    if factory is not None:
        venue = factory(name, spec, params, ctx)
    else:
        venue = registry.get("exchange", spec.type).factory(params, ctx)
    if trades and ctx.mode == "paper":
        wrapper = registry.get("venue_wrapper", "paper").factory
        venue = wrapper(venue, loaded.plugin_params.get("paper"), ctx)
    return venue


def build_venues(
    loaded: LoadedManifest,
    registry: PluginRegistry,
    *,
    clock: Clock,
    run_dir: Path,
    manifest_path: Path | None = None,
    factory: VenueFactory | None = None,
) -> dict[str, ExchangeAdapter]:
    """Every exchange of the manifest, for a process that runs all of them."""
    symbols = symbols_by_venue(loaded.manifest)
    venues = {}
    for name in loaded.manifest.exchanges:
        ctx = venue_context(
            loaded,
            name,
            clock=clock,
            run_dir=run_dir,
            symbols=symbols[name],
            manifest_path=manifest_path,
        )
        venues[name] = build_venue(loaded, registry, name, ctx, factory=factory)
    return venues


def build_risk(
    loaded: LoadedManifest, registry: PluginRegistry, on_refusal: Callable[[RiskRefusal], None]
) -> RiskChain:
    checks = [
        registry.get("risk", spec.type).factory(name, loaded.params_of("risk", name))
        for name, spec in loaded.manifest.risk.items()
    ]
    return RiskChain(checks, on_refusal)


def build_order_manager(
    loaded: LoadedManifest, journal: Journal, clock: Clock, session: str | None = None
) -> OrderManager:
    """``session`` makes client ids unlike any of an earlier life of the run."""
    prefix = id_prefix(loaded.manifest.run.name)
    return OrderManager(journal, clock, id_prefix=prefix, session=session)


def build_portfolio(venues: dict[str, ExchangeAdapter]) -> Portfolio:
    """Positions over every instrument the (connected) venues list."""
    instruments: dict[str, Instrument] = {}
    for name, venue in venues.items():
        for symbol, inst in venue.instruments.items():
            instruments[f"{name}:{symbol}"] = inst
    return Portfolio(instruments)


def position_of(portfolio: Portfolio, key: str) -> Callable[[], int]:
    return lambda: portfolio.position_lots(key)


def venue_markets(venues: dict[str, ExchangeAdapter], portfolio: Portfolio) -> dict[str, Market]:
    """Every book of every venue as a ``Market`` (what an order can be checked against)."""
    markets = {}
    for venue in venues.values():
        for symbol, book in venue.books.items():
            inst = venue.instruments[symbol]
            markets[inst.key] = Market(inst, book, position_of(portfolio, inst.key))
    return markets


def build_risk_view(
    portfolio: Portfolio,
    orders: OrderManager,
    clock: Clock,
    markets: dict[str, Market],
    own_best_ticks: Callable[[str, int], int | None] = lambda key, sign: None,
) -> RiskView:
    return RiskView(
        position_lots=portfolio.position_lots,
        open_lots=lambda key, sign: orders.open_lots(key, Side(sign)),
        open_order_count=orders.open_count,
        now_ns=clock.now_ns,
        markets=markets,
        own_best_ticks=own_best_ticks,
        venue_position=portfolio.venue_position,
    )


def build_strategies(
    loaded: LoadedManifest,
    registry: PluginRegistry,
    venues: dict[str, ExchangeAdapter],
    portfolio: Portfolio,
    make_context: Callable[[str, dict[str, Market]], StrategyContext],
) -> dict[str, StrategyRuntime]:
    """Each manifest strategy with its markets (resolved on the connected venues) and its
    context (``make_context(name, markets)``, whose services the engine provides)."""
    out = {}
    for name, spec in loaded.manifest.strategies.items():
        home = venues[spec.exchange]
        views: dict[str, Market] = {}
        runtimes: dict[str, MarketRuntime] = {}
        entries = list(home.instruments) if "*" in spec.symbols else spec.symbols
        for entry in entries:
            venue_name, symbol = split_market(spec.exchange, entry)
            venue = venues[venue_name]
            found = venue.instruments.get(symbol)
            if found is None:
                known = ", ".join(sorted(venue.instruments)) or "none"
                raise RuntimeError(
                    f"strategy {name!r}: exchange {venue_name!r} has no market "
                    f"{symbol!r}; it lists: {known}"
                )
            book = venue.books[symbol]
            market = Market(found, book, position_of(portfolio, found.key))
            views[found.key] = market
            runtimes[found.key] = MarketRuntime(found, book, market, venue, owner=None)  # type: ignore[arg-type]
        factory = registry.get("strategy", spec.type).factory
        strategy = factory(make_context(name, views), loaded.params_of("strategies", name))
        srt = StrategyRuntime(name, strategy, spec.type, runtimes)
        srt.read_book_interest()
        for mr in runtimes.values():
            mr.owner = srt
        out[name] = srt
    return out
