"""Backtest throughput: recorded Binance diffs through the replay venue and the full engine.

Writes a deterministic Binance ``<symbol>@depth`` recording (the generator of
``bench/book_bench.py``: a 1000+1000 level snapshot, then diff events of 1-10 changes
near the top) and times, on the same records in the same run:

  engine (top)     ``quoteforge run`` of a ``mode: backtest`` manifest: replay venue,
                   ``pure_market_making``, risk, execution, order manager, journal, trace;
                   the strategy is called when the best 5 levels changed (``notify: top``)
  engine (best)    the same, the strategy called when the best bid or ask changed
  engine (every)   the same with the strategy called on every applied diff
  replay alone     the replay venue on a virtual clock with a sink that does nothing:
                   recording read, scheduling, decode, integrity checks, book apply
  book apply       the book source alone on the decoded-in-memory texts (no recording)

then profiles the engine run and lists where the time goes. Writes
``bench/results/backtest_bench.json``.

    python bench/backtest_bench.py               # 200k events
    python bench/backtest_bench.py --events 50000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from quoteforge.book import BinanceSpotBookSource, L2Book
from quoteforge.clock import SimClock
from quoteforge.engine import Run, run_manifest
from quoteforge.exchange import VenueContext
from quoteforge.exchanges import replay
from quoteforge.exchanges.replay import ReplayExchange, ReplayParams
from quoteforge.logs import configure_logging
from quoteforge.manifest import load_manifest
from quoteforge.model import Side
from quoteforge.recording import RecordingWriter
from quoteforge.registry import PluginRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from book_bench import LOT, TICK, generate, make_instrument

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "backtest_bench.json"
T0 = 1_767_225_600_000_000_000
EVENT_GAP_NS = 1_000_000  # one diff per virtual millisecond

MANIFEST = """\
run: {{name: bench, mode: backtest, duration: null, seed: 1, watch_manifest: false,
      sample_interval: 1s}}
exchanges:
  binance:
    type: replay
    params:
      data: {data}
      protocol: binance_spot
      notify: {notify}
      markets:
        BTC/USDT: {{tick_size: "{tick}", lot_size: "{lot}", min_notional: "5"}}
      latency: {{market_data_ms: 2, order_ms: 5, jitter_ms: 1}}
strategies:
  mm:
    type: pure_market_making
    exchange: binance
    symbols: BTC/USDT
    params: {{spread_bps: 1, levels: 2, order_size: 0.01, refresh_tolerance_bps: 0.5,
             inventory_limit: 1, inventory_skew_bps: 0.5}}
risk:
  position: {{type: max_position, params: {{max_position: 5}}}}
report: {{html: false, png: false}}
"""


class NullSink:
    """A run that does nothing with what it is told."""

    def on_book(self, book: L2Book) -> None: ...
    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None: ...
    def on_trade(self, *args: Any) -> None: ...
    def on_order_update(self, update: Any) -> None: ...
    def on_fill(self, fill: Any) -> None: ...
    def on_offer(self, offer: Any) -> None: ...


def write_recording(path: Path, snapshot: str, messages: list[str]) -> int:
    with RecordingWriter(path) as writer:
        writer.write("binance", "rest:/api/v3/depth?symbol=BTCUSDT", snapshot, t_ns=T0)
        for i, raw in enumerate(messages, 1):
            writer.write("binance", "btcusdt@depth@100ms", raw, t_ns=T0 + i * EVENT_GAP_NS)
    return writer.count


def bench_book_apply(snapshot: str, messages: list[str]) -> float:
    source = BinanceSpotBookSource(make_instrument(), stale_after_ms=None)
    source.on_snapshot(snapshot, 0)
    on_message = source.on_message
    gc.collect()
    start = time.perf_counter()
    for raw in messages:
        on_message(raw, 0)
    elapsed = time.perf_counter() - start
    assert source.stats.applied == len(messages), source.stats
    return len(messages) / elapsed


def bench_replay_alone(path: Path, records: int) -> tuple[float, L2Book]:
    clock = SimClock(T0)
    ctx = VenueContext("binance", clock, seed=1, mode="backtest", symbols=["BTC/USDT"])
    params = ReplayParams.model_validate(
        {
            "data": str(path),
            "protocol": "binance_spot",
            "markets": {"BTC/USDT": {"tick_size": str(TICK), "lot_size": str(LOT)}},
        }
    )
    venue = ReplayExchange(params, ctx)
    gc.collect()
    start = time.perf_counter()
    asyncio.run(venue.connect(NullSink()))
    clock.run_until(2**62)
    elapsed = time.perf_counter() - start
    assert venue.records == records and venue.malformed == 0, (venue.records, venue.malformed)
    return records / elapsed, venue.books["BTC/USDT"]


def _registry() -> PluginRegistry:
    registry = PluginRegistry()
    registry.load_entry_points()
    if "replay" not in registry.types("exchange"):
        registry.register_module(replay, "replay")
    return registry


def run_engine(
    registry: PluginRegistry, data: Path, run_dir: Path, notify: str, profile: bool = False
) -> tuple[float, Run, str]:
    text = MANIFEST.format(data=json.dumps(str(data)), notify=notify, tick=TICK, lot=LOT)
    manifest = run_dir.parent / f"{run_dir.name}.yaml"
    manifest.write_text(text)
    loaded = load_manifest(manifest, registry)
    profiler = cProfile.Profile() if profile else None
    gc.collect()
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    run = asyncio.run(run_manifest(loaded, registry, run_dir=run_dir, install_signals=False))
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - start
    report = ""
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
        report = out.getvalue()
    return elapsed, run, report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    snapshot, messages = generate(args.events)
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "events": args.events,
        "target_events_per_s": 200_000,
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        data = base / "btcusdt.jsonl"
        records = write_recording(data, snapshot, messages)
        registry = _registry()
        rows: list[dict[str, Any]] = []
        for notify in ("top", "best", "every"):
            wall, run, _ = run_engine(registry, data, base / f"run-{notify}", notify)
            venue = run.venues["binance"]
            assert isinstance(venue, ReplayExchange)
            strategy_calls = run.tick_to_quote.count
            rows.append(
                {
                    "case": f"engine ({notify})",
                    "events_per_s": round(records / wall),
                    "wall_s": round(wall, 3),
                    "strategy_calls": strategy_calls,
                    "quote_updates": sum(m.quote_updates for m in run.markets.values()),
                    "fills": len(venue.fills.fills),
                    "stop_reason": run.stop_reason,
                }
            )
        replay_rate, book = bench_replay_alone(data, records)
        rows.append({"case": "replay alone", "events_per_s": round(replay_rate)})
        apply_rate = bench_book_apply(snapshot, messages)
        rows.append({"case": "book apply", "events_per_s": round(apply_rate)})
        top_book = book.top(Side.BUY, 5)
        profile = ""
        if not args.no_profile:
            _, _, profile = run_engine(registry, data, base / "run-profile", "top", profile=True)
    results["rows"] = rows
    results["ratios"] = {
        "engine_top_vs_replay_alone": round(rows[0]["events_per_s"] / replay_rate, 3),
        "engine_best_vs_replay_alone": round(rows[1]["events_per_s"] / replay_rate, 3),
        "engine_every_vs_replay_alone": round(rows[2]["events_per_s"] / replay_rate, 3),
        "replay_alone_vs_book_apply": round(replay_rate / apply_rate, 3),
    }
    results["final_top_bids"] = top_book
    print(f"{records} records ({args.events} diffs + 1 snapshot)\n")
    print(f"{'case':<18}{'events/s':>12}{'strategy calls':>16}{'fills':>8}")
    for row in rows:
        calls = row.get("strategy_calls", "")
        print(
            f"{row['case']:<18}{row['events_per_s']:>12,}{calls!s:>16}{row.get('fills', '')!s:>8}"
        )
    print()
    for key, value in results["ratios"].items():
        print(f"{key:<32}{value:>8}")
    if profile:
        results["profile_top"] = [
            line.strip() for line in profile.splitlines() if line.strip()[:1].isdigit()
        ][:18]
        print("\nprofile of the engine (top) run, by own time:\n")
        print(profile)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return results


if __name__ == "__main__":
    main()
