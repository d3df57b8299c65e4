"""Backtest throughput: recorded Binance diffs and trades through the replay venue and the
full engine, with a strategy whose quotes follow the market and get filled.

Writes a deterministic Binance recording: the ``<symbol>@depth`` stream of
``bench/book_bench.py`` (a 1000+1000 level snapshot, then diff events of 1-10 changes
near the top, one per virtual millisecond) and ``<symbol>@trade`` messages derived from
it (a share of the drops at the best levels printed as trades just before the diff that
shows them). Times, on the same records in the same run:

  quiet (top)      ``quoteforge run`` of a ``mode: backtest`` manifest: replay venue with
                   its queue-aware fill simulation, ``pure_market_making`` quoting 1 bps
                   from the mid (asked on every best-price change, its quotes stand),
                   risk, execution, order manager, journal, trace; the replay notifies
                   the run when the best 5 levels changed
  active (top)     the same with quotes three ticks from the mid, requoted on every
                   three-tick move and filled by the stream's trades: about one order per
                   12 records
  active (best)    the same, notified when the best bid or ask changed
  active (every)   the same, notified on every applied diff
  replay alone     the replay venue on a virtual clock with a sink that does nothing:
                   recording read, scheduling, decode, integrity checks, book apply
  book apply       the book source alone on the decoded-in-memory diff texts

Rates are records per second (book apply: diffs per second). The strategy quotes from
the mid, so the engine calls it only when a best price moved, whatever the replay's
``notify``; the rows print its calls, quote updates, orders and fills. The cost model
splits the time into a cost per record (the quiet run) and a cost per order (the active
run's extra time over its orders). Then profiles the active run and lists where the time
goes. Writes ``bench/results/backtest_bench.json``.

    python bench/backtest_bench.py               # 200k diff events
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
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from quoteforge.book import L2Book
from quoteforge.clock import SimClock
from quoteforge.engine import Run, run_manifest
from quoteforge.exchange import VenueContext
from quoteforge.exchanges import replay
from quoteforge.exchanges.binance.book import BinanceSpotBookSource
from quoteforge.exchanges.recording import RecordingWriter
from quoteforge.exchanges.replay import ReplayExchange, ReplayParams
from quoteforge.logs import configure_logging
from quoteforge.manifest import load_manifest
from quoteforge.model import Side
from quoteforge.registry import PluginRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from book_bench import LOT, SYMBOL, TICK, generate, make_instrument

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "backtest_bench.json"
T0 = 1_767_225_600_000_000_000
EVENT_GAP_NS = 1_000_000  # one diff per virtual millisecond
TRADE_LEAD_NS = 400_000

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
    params: {strategy}
risk:
  position: {{type: max_position, params: {{max_position: 5}}}}
report: {{html: false, png: false}}
"""


# Active: quotes about three ticks from the mid (a tick of 0.01 at 65000 is 0.0015 bps;
# this stream's spread is a tick or two and its mid wanders about +-100 ticks), requoted
# when a wanted price moved more than three ticks: the quotes follow the market and the
# stream's trades and book changes reach them (about one order per 12 records).
STRATEGY = (
    "{spread_bps: 0.005, levels: 2, level_spacing_bps: 0.005, order_size: 0.05, "
    "refresh_tolerance_bps: 0.005, inventory_limit: 1, inventory_skew_bps: 0.01}"
)
# Quiet: the same strategy quoting 1 bps from the mid (~650 ticks), requoted when a
# wanted price moved 0.5 bps: the strategy is asked on every best-price change but its
# quotes stand, as a typical spread on this market would.
STRATEGY_QUIET = (
    "{spread_bps: 1, levels: 2, level_spacing_bps: 1, order_size: 0.05, "
    "refresh_tolerance_bps: 0.5, inventory_limit: 1, inventory_skew_bps: 0.01}"
)


class NullSink:
    """A run that does nothing with what it is told."""

    def on_book(self, book: L2Book) -> None: ...
    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None: ...
    def on_trade(self, *args: Any) -> None: ...
    def on_order_update(self, update: Any) -> None: ...
    def on_fill(self, fill: Any) -> None: ...
    def on_offer(self, offer: Any) -> None: ...


def _ticks(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 100 + int(frac[:2])


def _lots(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 100_000 + int(frac[:5])


def derive_trades(snapshot: str, messages: list[str], share: float, seed: int = 11) -> list[str]:
    """One Binance ``@trade`` text (or "") per diff message: when a message lowers or
    removes the best bid or ask level, that drop printed as a trade with probability
    ``share`` (the rest of such drops are cancellations), aggressor the other side."""
    rng = random.Random(seed)
    snap = json.loads(snapshot)
    bids = {_ticks(p): _lots(q) for p, q in snap["bids"]}
    asks = {_ticks(p): _lots(q) for p, q in snap["asks"]}
    out = []
    trade_id = 1
    for raw in messages:
        msg = json.loads(raw)
        best = (max(bids), min(asks))
        printed = []
        for key, book, is_bid in (("b", bids, True), ("a", asks, False)):
            for p_text, q_text in msg[key]:
                price, lots = _ticks(p_text), _lots(q_text)
                before = book.get(price, 0)
                if price == best[0 if is_bid else 1] and lots < before and rng.random() < share:
                    printed.append((p_text, before - lots, is_bid))
                if lots:
                    book[price] = lots
                else:
                    book.pop(price, None)
        text = ""
        if printed:
            p_text, lots, is_bid = printed[0]
            text = json.dumps(
                {
                    "e": "trade",
                    "E": msg["E"],
                    "s": SYMBOL,
                    "t": trade_id,
                    "p": p_text,
                    "q": f"{lots // 100_000}.{lots % 100_000:05d}000",
                    "T": msg["E"],
                    # A lower bid was hit by a seller: the buyer was the maker.
                    "m": is_bid,
                    "M": True,
                },
                separators=(",", ":"),
            )
            trade_id += 1
        out.append(text)
    return out


def write_recording(path: Path, snapshot: str, messages: list[str], trades: list[str]) -> int:
    """The snapshot, then one diff per virtual millisecond, each drop that traded
    recorded 0.4 ms before the diff that shows it (trades usually arrive first)."""
    with RecordingWriter(path) as writer:
        writer.write("binance", "rest:/api/v3/depth?symbol=BTCUSDT", snapshot, t_ns=T0)
        for i, raw in enumerate(messages, 1):
            t_ns = T0 + i * EVENT_GAP_NS
            if trades[i - 1]:
                writer.write("binance", "btcusdt@trade", trades[i - 1], t_ns=t_ns - TRADE_LEAD_NS)
            writer.write("binance", "btcusdt@depth@100ms", raw, t_ns=t_ns)
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
    registry: PluginRegistry,
    data: Path,
    run_dir: Path,
    notify: str,
    profile: bool = False,
    strategy: str = STRATEGY,
) -> tuple[float, Run, str]:
    text = MANIFEST.format(
        data=json.dumps(str(data)), notify=notify, tick=TICK, lot=LOT, strategy=strategy
    )
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
    parser.add_argument("--events", type=int, default=200_000, help="diff events")
    parser.add_argument(
        "--trade-share",
        type=float,
        default=0.4,
        help="share of the drops at the best levels that print as trades",
    )
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    snapshot, messages = generate(args.events)
    trades = derive_trades(snapshot, messages, args.trade_share)
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "events": args.events,
        "trades": sum(1 for t in trades if t),
        "strategy": STRATEGY,
        "strategy_quiet": STRATEGY_QUIET,
        "target_events_per_s": 200_000,
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        data = base / "btcusdt.jsonl"
        records = write_recording(data, snapshot, messages, trades)
        results["records"] = records
        registry = _registry()
        rows: list[dict[str, Any]] = []
        cases = [
            ("quiet (top)", "top", STRATEGY_QUIET),
            ("active (top)", "top", STRATEGY),
            ("active (best)", "best", STRATEGY),
            ("active (every)", "every", STRATEGY),
        ]
        for case, notify, strategy in cases:
            wall, run, _ = run_engine(
                registry, data, base / f"run-{len(rows)}", notify, strategy=strategy
            )
            venue = run.venues["binance"]
            assert isinstance(venue, ReplayExchange)
            fills = venue.fills.fills
            rows.append(
                {
                    "case": case,
                    "events_per_s": round(records / wall),
                    "wall_s": round(wall, 3),
                    # Every book event that reached the strategy (the engine's own
                    # filter included), whether or not it changed the quotes.
                    "strategy_calls": run.tick_to_orders.count,
                    "quote_updates": sum(m.quote_updates for m in run.markets.values()),
                    "orders": len(run.orders.all_orders()),
                    "fills": len(fills),
                    "taker_fills": sum(1 for f in fills if f.liquidity.value == "taker"),
                    "position": str(run.portfolio.position("binance:BTC/USDT")),
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
            _, _, profile = run_engine(
                registry, data, base / "run-profile", "top", profile=True, strategy=STRATEGY
            )
    results["rows"] = rows
    quiet, active = rows[0], rows[1]
    results["ratios"] = {
        "quiet_vs_replay_alone": round(quiet["events_per_s"] / replay_rate, 3),
        "active_vs_replay_alone": round(active["events_per_s"] / replay_rate, 3),
        "active_best_vs_replay_alone": round(rows[2]["events_per_s"] / replay_rate, 3),
        "active_every_vs_replay_alone": round(rows[3]["events_per_s"] / replay_rate, 3),
        "replay_alone_vs_book_apply": round(replay_rate / apply_rate, 3),
    }
    # The cost model: a record with the strategy standing costs the quiet run's time per
    # record; the active run's extra time goes to its orders (place, acknowledge, cancel
    # or replace, fills, journal records, the requotes they cause).
    extra = active["wall_s"] - quiet["wall_s"]
    results["cost_model"] = {
        "us_per_record_quiet": round(quiet["wall_s"] / records * 1e6, 2),
        "us_per_record_replay_alone": round(1e6 / replay_rate, 2),
        "us_per_order_active": round(extra / max(1, active["orders"] - quiet["orders"]) * 1e6, 1),
    }
    results["final_top_bids"] = top_book
    print(
        f"{records} records ({args.events} diffs, {results['trades']} trades, 1 snapshot); "
        "book apply: the diffs alone\n"
    )
    print(
        f"{'case':<16}{'events/s':>10}{'strategy calls':>16}{'quote updates':>15}"
        f"{'orders':>8}{'fills':>7}"
    )
    for row in rows:
        print(
            f"{row['case']:<16}{row['events_per_s']:>10,}{row.get('strategy_calls', '')!s:>16}"
            f"{row.get('quote_updates', '')!s:>15}{row.get('orders', '')!s:>8}"
            f"{row.get('fills', '')!s:>7}"
        )
    print()
    for key, value in results["ratios"].items():
        print(f"{key:<32}{value:>8}")
    print()
    for key, value in results["cost_model"].items():
        print(f"{key:<32}{value:>8}")
    if profile:
        results["profile_top"] = [
            line.strip() for line in profile.splitlines() if line.strip()[:1].isdigit()
        ][:18]
        print("\nprofile of the active (top) run, by own time:\n")
        print(profile)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return results


if __name__ == "__main__":
    main()
