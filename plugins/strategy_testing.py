"""Test a strategy on the simulated venue: the ``run_strategy`` pytest fixture.

quoteforge installs this module as a pytest plugin (entry point group ``pytest11``), so
every project with quoteforge and pytest installed has the fixture, no conftest needed::

    from my_package import MyQuoter

    def test_my_quoter_trades(run_strategy):
        result = run_strategy(MyQuoter, {"order_size": 0.05}, duration="2m", seed=3)
        assert not result.halted, result.halt_reason
        assert result.fills

``run_strategy(strategy, params, ...)`` writes a manifest (one ``type: sim`` exchange,
the strategy, and what the call adds), loads and validates it as ``quoteforge run``
does, runs it in virtual time and returns a ``StrategyRun``: the fills (``Fill``
objects in ticks and lots), the run's ``trace.jsonl`` records, the ``summary.csv``
rows, the run folder and the strategy instance. ``strategy`` is a registered type name
(``"pure_market_making"``) or a ``Strategy`` subclass; a class is registered for that
one run in a private registry, so it needs no entry point and leaves nothing behind.

Outside pytest, ``simulate_strategy(..., run_dir=...)`` does the same.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import re
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

import quoteforge
from quoteforge.model import Fill
from quoteforge.strategy import Strategy

__all__ = [
    "DEFAULT_MARKET",
    "DEFAULT_SYMBOL",
    "RunStrategy",
    "StrategyRun",
    "run_strategy",
    "simulate_strategy",
]

#: The market a strategy is run on when the call gives none: a liquid BTC/USDT-like spot
#: market of the ``sim`` exchange (the settings of docs/sim.md).
DEFAULT_MARKET: Mapping[str, Any] = {
    "tick_size": "0.01",
    "lot_size": "0.0001",
    "initial_price": 30000,
    "process": {"model": "brownian", "sigma": 0.0001},
    "flow": {"arrival_rate": 2.0, "reach": 15.0, "size": 0.05},
    "liquidity": {"levels": 6, "distance": 20.0, "spacing": 5.0, "size": 0.2},
}
DEFAULT_SYMBOL = "BTC/USDT"
#: The strategy's name in the manifest (and so in the trace, the journal and fills).
STRATEGY_NAME = "strategy"

_T = TypeVar("_T")


@dataclass(frozen=True)
class StrategyRun:
    """What a strategy did in one simulated run."""

    #: Our fills in the order they happened (integer ticks and lots, exact).
    fills: list[Fill]
    #: Every record of the run's ``trace.jsonl``: ``tick`` samples (book, our best
    #: quotes, inventory, PnL), ``fill`` and ``event`` records (``strategy_halted``...).
    trace: list[dict[str, Any]]
    #: One row per market, the columns of ``summary.csv``.
    summary: list[dict[str, Any]]
    #: The run folder (journal, trace, summary, run.json, the manifest that ran).
    run_dir: Path
    #: The strategy instance at the end of the run, to inspect its state.
    strategy: Strategy
    #: True when a handler raised and the engine halted the strategy.
    halted: bool
    #: Why it was halted (the exception, as the trace records it); "" when it was not.
    halt_reason: str
    #: Why the run ended ("duration reached", ...).
    stop_reason: str
    #: The manifest that ran, as a dict.
    manifest: dict[str, Any] = field(repr=False)

    def ticks(self, market: str | None = None) -> list[dict[str, Any]]:
        """The ``tick`` samples of the trace, of one market (``venue:symbol``) or all."""
        return [
            r
            for r in self.trace
            if r.get("type") == "tick" and (market is None or r.get("market") == market)
        ]

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The ``event`` records of the trace, of one kind (``strategy_halted``) or all."""
        return [
            r
            for r in self.trace
            if r.get("type") == "event" and (event is None or r.get("event") == event)
        ]


class RunStrategy(Protocol):
    """The ``run_strategy`` fixture's signature (see ``simulate_strategy``)."""

    def __call__(
        self,
        strategy: str | type[Strategy],
        params: Mapping[str, Any] | None = None,
        *,
        market: Mapping[str, Any] | None = None,
        symbol: str = DEFAULT_SYMBOL,
        duration: str | float = "60s",
        seed: int = 0,
        exchange: Mapping[str, Any] | None = None,
        manifest: Mapping[str, Any] | None = None,
    ) -> StrategyRun: ...


class _Observer:
    """Collects the fills and the summary of one run through the observer hooks."""

    def __init__(self) -> None:
        self.fills: list[Fill] = []
        self.summary: list[dict[str, Any]] = []

    @quoteforge.hookimpl
    def quoteforge_fill(self, run: Any, fill: Fill) -> None:
        self.fills.append(fill)

    @quoteforge.hookimpl
    def quoteforge_run_stopped(self, run: Any, summary: list[dict[str, Any]]) -> None:
        self.summary = list(summary)


class _LocalStrategy:
    """Registers one strategy class under ``name`` (a run's private registry)."""

    def __init__(self, name: str, cls: type[Strategy]) -> None:
        self.name = name
        self.cls = cls

    @quoteforge.hookimpl
    def quoteforge_register_strategies(self, register: Any) -> None:
        register(self.name, self.cls)


def _type_name(cls: type) -> str:
    """``MyQuoter`` -> ``my_quoter``: a lower_snake_case name for a registered type."""
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", cls.__name__).lower()
    snake = re.sub(r"[^a-z0-9_]", "_", snake).strip("_")
    return snake if re.fullmatch(r"[a-z][a-z0-9_]*", snake) else f"strategy_{snake}"


def _plain(value: Any) -> Any:
    """``value`` with Decimals as strings and tuples as lists, so YAML can hold it."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _run_to_end(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to the end; in a thread of its own when this thread has a running
    event loop (an async test)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def build_manifest(
    type_name: str,
    params: Mapping[str, Any] | None,
    *,
    market: Mapping[str, Any] | None,
    symbol: str,
    duration: str | float,
    seed: int,
    exchange: Mapping[str, Any] | None,
    manifest: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The manifest ``simulate_strategy`` runs, as a dict."""
    venue = dict(exchange or {})
    if "markets" in venue:
        if market is not None:
            raise ValueError(
                "run_strategy: give the market settings either as market=... (one market, "
                "named by symbol=...) or as exchange={'markets': {...}}, not both"
            )
        symbols = list(venue["markets"])
    else:
        venue["markets"] = {symbol: dict(DEFAULT_MARKET if market is None else market)}
        symbols = [symbol]
    extra = dict(manifest or {})
    for section in ("exchanges", "strategies"):
        if section in extra:
            raise ValueError(
                f"run_strategy: manifest= may not hold {section!r}: the exchange is given "
                "with exchange=/market=, the strategy with the first two arguments"
            )
    run = {
        "name": "run_strategy",
        "mode": "sim",
        "duration": duration,
        "seed": seed,
        "watch_manifest": False,
        **dict(extra.pop("run", None) or {}),
    }
    data: dict[str, Any] = {
        "run": run,
        "exchanges": {"sim": {"type": "sim", "params": venue}},
        "strategies": {
            STRATEGY_NAME: {
                "type": type_name,
                "exchange": "sim",
                "symbols": symbols,
                "params": dict(params or {}),
            }
        },
        "report": {"html": False, "png": False},
        **extra,
    }
    plain: dict[str, Any] = _plain(data)
    return plain


def simulate_strategy(
    strategy: str | type[Strategy],
    params: Mapping[str, Any] | None = None,
    *,
    run_dir: Path,
    market: Mapping[str, Any] | None = None,
    symbol: str = DEFAULT_SYMBOL,
    duration: str | float = "60s",
    seed: int = 0,
    exchange: Mapping[str, Any] | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> StrategyRun:
    """Run ``strategy`` with ``params`` on the simulated exchange and return what it did.

    :param strategy: a registered strategy type (``"pure_market_making"``) or a
        ``Strategy`` subclass, registered for this run only.
    :param params: the strategy's params, as a manifest's ``params:`` holds them.
    :param market: settings of the one simulated market (``tick_size``, ``lot_size``,
        ``initial_price``, ``process``, ``flow``, ``liquidity``...; docs/sim.md);
        ``DEFAULT_MARKET`` when not given.
    :param symbol: that market's symbol.
    :param duration: run time, virtual (``"90s"``, ``"5m"`` or seconds).
    :param seed: seed of every random process: same seed, same run.
    :param exchange: other params of the ``sim`` exchange (``maker_fee_bps``,
        ``latency``, ``profile``...); with ``markets`` in it, every one of them is traded.
    :param manifest: other manifest sections (``risk``, ``execution``, ``breakers``,
        ``run`` keys such as ``sample_interval``).
    :param run_dir: the run folder to create.

    A manifest that does not validate raises ``quoteforge.manifest.ManifestError``
    naming every problem, with the manifest that was built attached as a note.
    """
    from quoteforge.engine import run_manifest
    from quoteforge.manifest import ManifestError, load_manifest
    from quoteforge.registry import PluginError, PluginRegistry

    registry = PluginRegistry()
    registry.load_entry_points()
    if isinstance(strategy, str):
        type_name = strategy
    elif isinstance(strategy, type) and issubclass(strategy, Strategy):
        type_name = _type_name(strategy)
        known = registry.types("strategy").get(type_name)
        if known is None or known.factory is not strategy:
            if known is not None:
                type_name = f"{type_name}_under_test"
            record = registry.register_module(
                _LocalStrategy(type_name, strategy), name=f"run_strategy:{type_name}"
            )
            if not record.loaded:
                raise PluginError(f"run_strategy: {record.error}")
    else:
        raise TypeError(
            "run_strategy: strategy must be a registered strategy type name (a str, see "
            "`quoteforge plugins`) or a quoteforge.Strategy subclass, got "
            f"{strategy!r}"
        )
    observer = _Observer()
    registry.register_module(observer, name="run_strategy:observer")
    data = build_manifest(
        type_name,
        params,
        market=market,
        symbol=symbol,
        duration=duration,
        seed=seed,
        exchange=exchange,
        manifest=manifest,
    )
    text = json.dumps(data, indent=2)  # JSON is YAML: the manifest reads back exactly
    try:
        loaded = load_manifest("run_strategy manifest", registry, text=text)
    except ManifestError as exc:
        numbered = "\n".join(f"{n:4} {line}" for n, line in enumerate(text.splitlines(), 1))
        exc.add_note(f"the manifest run_strategy built (line numbers as above):\n{numbered}")
        raise
    run = _run_to_end(run_manifest(loaded, registry, run_dir=run_dir, install_signals=False))
    trace_path = run_dir / "trace.jsonl"
    trace = (
        [json.loads(line) for line in trace_path.read_text(encoding="utf-8").splitlines() if line]
        if trace_path.exists()
        else []
    )
    runtime = run.strategies[STRATEGY_NAME]
    halts = [
        str(r.get("detail", ""))
        for r in trace
        if r.get("type") == "event" and r.get("event") == "strategy_halted"
    ]
    return StrategyRun(
        fills=observer.fills,
        trace=trace,
        summary=observer.summary,
        run_dir=run_dir,
        strategy=runtime.strategy,
        halted=runtime.halted,
        halt_reason=halts[0] if halts else "",
        stop_reason=run.stop_reason,
        manifest=data,
    )


@pytest.fixture
def run_strategy(tmp_path: Path) -> RunStrategy:
    """Run a strategy on the simulated venue and return its fills, trace and summary.

    ``run_strategy(strategy, params=None, *, market=None, symbol="BTC/USDT",
    duration="60s", seed=0, exchange=None, manifest=None) -> StrategyRun``; each call
    makes a new run folder under the test's ``tmp_path``. See ``simulate_strategy``.
    """
    count = itertools.count(1)

    def run(
        strategy: str | type[Strategy],
        params: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> StrategyRun:
        return simulate_strategy(
            strategy, params, run_dir=tmp_path / f"strategy-run-{next(count)}", **options
        )

    runner: Callable[..., StrategyRun] = run
    return runner
