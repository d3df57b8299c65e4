"""A backtest over real Binance traffic with nothing but the grids Binance publishes:
quantities are read at the 8 decimals the venue sends, orders go out on the order step."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from own_strategies import register_strategy

from quoteforge import Market, Quote, Strategy, StrategyContext, StrategyParams
from quoteforge.engine import Run, run_manifest
from quoteforge.exchanges import replay
from quoteforge.exchanges.replay import ReplayExchange
from quoteforge.manifest import load_manifest
from quoteforge.model import Side
from quoteforge.plugins.data_import import import_recording
from quoteforge.registry import PluginRegistry
from quoteforge.strategy import Speed

ROOT = Path(__file__).resolve().parent.parent
# Two minutes of real BTCUSDT traffic (the corpus of tests/fixtures/real/binance/).
REAL = ROOT / "tests" / "fixtures" / "real" / "binance" / "spot_btcusdt_20240808.gz"


MANIFEST = """
run:
  name: real
  mode: backtest
  duration: null
  seed: 5
  data: {data}
exchanges:
  binance:
    type: replay
    params:
      protocol: binance_spot
      markets:
        BTC/USDT: {market}
      latency: {{market_data_ms: 3, order_ms: 8, jitter_ms: 1}}
strategies:
  mm:
    type: pure_market_making
    exchange: binance
    symbols: BTC/USDT
    params:
      spread_bps: 0.1
      levels: 1
      order_size: 0.01
      refresh_tolerance_bps: 0.5
      inventory_limit: 1
execution:
  type: minimal_diff
journal:
  type: sqlite
report:
  html: false
  png: false
"""


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    registry = PluginRegistry()
    registry.load_entry_points()
    if "replay" not in registry.types("exchange"):
        registry.register_module(replay, "replay")
    return registry


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "btcusdt.jsonl"
    import_recording("hftbacktest", [REAL], out, keep=["depth", "trade"], progress=False)
    return out


def backtest(registry: PluginRegistry, recording: Path, run_dir: Path, market: str) -> Run:
    manifest = run_dir.parent / f"{run_dir.name}.yaml"
    manifest.write_text(MANIFEST.format(data=recording, market=market))
    loaded = load_manifest(manifest, registry, overrides=["run.watch_manifest=false"])
    return asyncio.run(run_manifest(loaded, registry, run_dir=run_dir, install_signals=False))


def trace(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]


def test_real_btcusdt_replays_live_with_only_the_published_tick_and_step(
    registry: PluginRegistry, recording: Path, tmp_path: Path
) -> None:
    # The slice holds a level of 25.42618900 BTC: finer than the 0.00001 order step.
    assert '\\"25.42618900\\"' in recording.read_text()
    run = backtest(
        registry, recording, tmp_path / "run", '{tick_size: "0.01", qty_step: "0.00001"}'
    )
    assert run.stop_reason == "binance: end of recorded data"
    venue = run.venues["binance"]
    assert isinstance(venue, ReplayExchange)
    assert venue.malformed == 0 and venue.unrouted == 0
    inst = venue.instruments["BTC/USDT"]
    assert inst.lot_size == Decimal("1E-8") and inst.qty_step == Decimal("0.00001")
    events = trace(tmp_path / "run")
    states = [e["detail"] for e in events if e.get("event") == "book_state"]
    assert len(states) == 1 and "LIVE" in states[0]  # synced once, never lost
    fills = [e for e in events if e["type"] == "fill"]
    assert len(fills) > 10
    # Our fills are whole order steps even though the book is read at 8 decimals.
    assert len(venue.fills.fills) == len(fills)
    assert all(f.qty_lots % inst.step_lots == 0 for f in venue.fills.fills)
    lots = [o.filled_lots for o in run.orders.all_orders() if o.filled_lots]
    assert lots and all(n % inst.step_lots == 0 for n in lots)


def test_the_same_data_read_at_the_step_breaks_the_book(
    registry: PluginRegistry, recording: Path, tmp_path: Path
) -> None:
    """What reading venue values on the order grid did: the off-step level is refused,
    the diff is lost and the book falls into a resync the recording never repairs."""
    run = backtest(
        registry,
        recording,
        tmp_path / "run",
        '{tick_size: "0.01", qty_step: "0.00001", qty_decimals: 5}',
    )
    venue = run.venues["binance"]
    assert isinstance(venue, ReplayExchange)
    assert venue.malformed >= 1
    states = [e["detail"] for e in trace(tmp_path / "run") if e.get("event") == "book_state"]
    assert any("RESYNCING" in s for s in states)


class WatchParams(StrategyParams):
    watch: str = "top_levels"


class Watcher(Strategy):
    """Quotes nothing; records the top five levels of each book it is shown. Its speed
    hint comes from its ``watch`` parameter."""

    Params = WatchParams
    params: WatchParams

    def __init__(self, ctx: StrategyContext, params: WatchParams) -> None:
        super().__init__(ctx, params)
        self.seen: list[tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]] = []

    @property
    def speed(self) -> Speed:
        return Speed(on_book=self.params.watch)  # type: ignore[arg-type]

    def on_book(self, market: Market, **kwargs: Any) -> list[Quote] | None:
        book = market.book
        self.seen.append((tuple(book.top(Side.BUY, 5)), tuple(book.top(Side.SELL, 5))))
        return []


def _changes(seen: list[Any], key: Any) -> list[Any]:
    """``seen`` less each entry whose ``key`` equals the one before it."""
    out: list[Any] = []
    for entry in seen:
        if not out or key(entry) != key(out[-1]):
            out.append(entry)
    return out


def test_a_strategy_is_shown_exactly_the_book_changes_its_speed_hint_asks_for(
    registry: PluginRegistry, recording: Path, tmp_path: Path
) -> None:
    """On real traffic, with the replay telling the run of every applied diff: the
    strategy that watches every change sees every book; the others see that sequence
    less the books that did not change what they read (the top five levels, the best
    levels, the best prices). No orders of ours, so every run sees the same market."""
    register_strategy(registry, "book_watcher_probe", Watcher)
    text = MANIFEST.replace("type: pure_market_making", "type: book_watcher_probe")
    text = text.replace("protocol: binance_spot", "protocol: binance_spot\n      notify: every")
    start = text.index("    params:\n      spread_bps")
    end = text.index("execution:")
    seen: dict[str, list[Any]] = {}
    for watch in ("every_change", "top_levels", "best_levels", "best_prices"):
        run_dir = tmp_path / watch
        manifest = tmp_path / f"{watch}.yaml"
        body = text[:start] + f"    params: {{{{watch: {watch}}}}}\n" + text[end:]
        manifest.write_text(
            body.format(data=recording, market='{tick_size: "0.01", qty_step: "0.00001"}')
        )
        loaded = load_manifest(manifest, registry, overrides=["run.watch_manifest=false"])
        run = asyncio.run(run_manifest(loaded, registry, run_dir=run_dir, install_signals=False))
        assert run.stop_reason == "binance: end of recorded data"
        strategy = run.strategies["mm"].strategy
        assert isinstance(strategy, Watcher)
        seen[watch] = strategy.seen
    every = seen["every_change"]
    top = _changes(every, lambda e: e)
    best_levels = _changes(every, lambda e: (e[0][:1], e[1][:1]))
    best_prices = _changes(every, lambda e: (e[0][0][0], e[1][0][0]))
    assert seen["top_levels"] == top
    assert seen["best_levels"] == best_levels
    assert seen["best_prices"] == best_prices
    # Each narrower hint is shown fewer books on this traffic: every filter bites.
    assert len(every) > len(top) > len(best_levels) > len(best_prices) > 10
