"""quoteforge and hftbacktest side by side on one real Binance USDⓈ-M recording.

Both tools convert the same raw file (hftbacktest's collector format: ``<receive time
ns> <raw JSON>``) with their own importer, then run a comparable two-sided quote on it
in this process, one after the other:

  hftbacktest  ``hftbacktest.data.utils.binancefutures.convert`` (depth diffs and
               trades to its event array), then a numba-compiled loop over
               ``HashMapMarketDepthBacktest``: on every market feed, one bid and one
               ask ``spread_bps`` from the mid, post-only, replaced when the wanted
               price moved more than ``tolerance_bps``; constant order latency; power
               probability queue model; fills of the whole order (no partial fills)
  quoteforge   ``quoteforge data import`` (plugins/data_import.py; depth, trades and the
               REST snapshot) then ``quoteforge run`` of a backtest manifest: replay
               venue (``binance_futures``: update-id chaining checked as live), the
               ``pure_market_making`` strategy with one level at ``spread_bps``,
               risk, execution, order manager, SQLite journal, trace

Prints for each: the conversion time, the loop time (hftbacktest: building the backtest
and a run once its code is compiled; quoteforge: the whole run, and of it the fixed cost
of a run that stops after one millisecond; wall and process CPU time, which moves less
when other work shares the machine), records/s over the same raw messages (depth
diffs and trades), the raw-file-to-report time (conversion + compilation + first run for
hftbacktest; import + run for quoteforge), the fills and the PnL, and the ratios. Writes
``bench/results/hftbacktest_compare.json``.

Needs the optional ``bench`` extra: ``pip install "quoteforge[bench]"`` (hftbacktest,
numba).

    python bench/hftbacktest_compare.py
    python bench/hftbacktest_compare.py --data PATH --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import platform
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from quoteforge.engine import run_manifest
from quoteforge.exchanges.replay import ReplayExchange
from quoteforge.logs import configure_logging
from quoteforge.manifest import load_manifest
from quoteforge.plugins.data_import import import_recording
from quoteforge.registry import load_registry

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "hftbacktest-binance" / "usdm_ethusdt_20240808.gz"
RESULTS = ROOT / "bench" / "results" / "hftbacktest_compare.json"
TICK = "0.01"
STEP = "0.001"

MANIFEST = """\
run: {{name: compare, mode: backtest, duration: {duration}, seed: 1, watch_manifest: false,
      sample_interval: 1s, data: {data}}}
exchanges:
  binance:
    type: replay
    params:
      protocol: binance_futures
      notify: best
      markets:
        ETH/USDT: {{tick_size: "{tick}", qty_step: "{step}"}}
      maker_fee_bps: {maker}
      taker_fee_bps: {taker}
      cancel_position: probabilistic
      latency: {{market_data_ms: 0, order_ms: {latency_ms}, jitter_ms: 0}}
strategies:
  mm:
    type: pure_market_making
    exchange: binance
    symbols: ETH/USDT
    params: {{spread_bps: {spread}, levels: 1, order_size: {size},
              refresh_tolerance_bps: {tolerance}, inventory_limit: {limit}}}
report: {{html: false, png: false}}
"""


def raw_messages(path: Path) -> dict[str, int]:
    """Depth diffs and trades in the raw file (the records both tools replay)."""
    counts = {"depth": 0, "trade": 0, "other": 0}
    with gzip.open(path, "rb") as fh:
        for line in fh:
            if b"@depth" in line[:80]:
                counts["depth"] += 1
            elif b'@trade"' in line[:80]:
                counts["trade"] += 1
            else:
                counts["other"] += 1
    return counts


def _hbt_strategy() -> Any:
    """The quoting loop, compiled by numba on its first call."""
    import numpy as np
    from hftbacktest import GTX, LIMIT
    from numba import njit

    @njit(cache=False)
    def quote(hbt, spread, tolerance, qty, max_position):  # type: ignore[no-untyped-def]
        bid_id = np.uint64(0)
        ask_id = np.uint64(0)
        bid_px = 0.0
        ask_px = 0.0
        next_id = np.uint64(1)
        steps = 0
        while hbt.wait_next_feed(False, 3_600_000_000_000) == 2:
            steps += 1
            hbt.clear_inactive_orders(0)
            depth = hbt.depth(0)
            if depth.best_bid_tick <= 0 or depth.best_ask_tick >= 2**31 - 1:
                continue
            tick = depth.tick_size
            mid = (depth.best_bid + depth.best_ask) / 2.0
            want_bid = np.floor(mid * (1 - spread) / tick) * tick
            want_ask = np.ceil(mid * (1 + spread) / tick) * tick
            position = hbt.position(0)
            orders = hbt.orders(0)
            if bid_id and not orders.__contains__(bid_id):
                bid_id = np.uint64(0)
            if ask_id and not orders.__contains__(ask_id):
                ask_id = np.uint64(0)
            if position < max_position and (
                bid_id == 0 or abs(want_bid - bid_px) > mid * tolerance
            ):
                if bid_id:
                    hbt.cancel(0, bid_id, False)
                hbt.submit_buy_order(0, next_id, want_bid, qty, GTX, LIMIT, False)
                bid_id = next_id
                bid_px = want_bid
                next_id += 1
            if position > -max_position and (
                ask_id == 0 or abs(want_ask - ask_px) > mid * tolerance
            ):
                if ask_id:
                    hbt.cancel(0, ask_id, False)
                hbt.submit_sell_order(0, next_id, want_ask, qty, GTX, LIMIT, False)
                ask_id = next_id
                ask_px = want_ask
                next_id += 1
        return steps

    return quote


def run_hftbacktest(events: Any, args: argparse.Namespace, strategy: Any) -> dict[str, Any]:
    from hftbacktest import BacktestAsset, HashMapMarketDepthBacktest

    latency_ns = int(args.latency_ms * 1_000_000)
    asset = (
        BacktestAsset()
        .data([events])
        .linear_asset(1.0)
        .constant_order_latency(latency_ns, latency_ns)
        .power_prob_queue_model(3.0)
        .no_partial_fill_exchange()
        .trading_value_fee_model(args.maker_bps / 1e4, args.taker_bps / 1e4)
        .tick_size(float(TICK))
        .lot_size(float(STEP))
    )
    cpu = time.process_time()
    built = time.perf_counter()
    hbt = HashMapMarketDepthBacktest([asset])
    start = time.perf_counter()
    steps = strategy(hbt, args.spread_bps / 1e4, args.tolerance_bps / 1e4, args.size, args.limit)
    loop = time.perf_counter() - built  # its set-up (loading the events) included
    cpu = time.process_time() - cpu
    state = hbt.state_values(0)
    depth = hbt.depth(0)
    mid = (depth.best_bid + depth.best_ask) / 2.0
    pnl = state.balance + state.position * mid - state.fee
    result = {
        "loop_s": loop,
        "loop_cpu_s": cpu,
        "setup_s": start - built,
        "feeds": int(steps),
        "fills": int(state.num_trades),
        "position": round(float(state.position), 6),
        "pnl": round(float(pnl), 4),
        "fees": round(float(state.fee), 4),
    }
    hbt.close()
    return result


def bench_hftbacktest(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    from hftbacktest.data.utils import binancefutures

    events = binancefutures.convert(str(args.data), combined_stream=True)
    converted = time.perf_counter()
    strategy = _hbt_strategy()
    first = run_hftbacktest(events, args, strategy)  # compiles, then runs
    to_report = time.perf_counter() - t0
    runs = [run_hftbacktest(events, args, strategy) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["loop_s"])
    return {
        "convert_s": converted - t0,
        "first_run_s": first["loop_s"],
        "compile_s": max(0.0, first["loop_s"] - best["loop_s"]),
        "raw_to_report_s": to_report,
        "event_rows": len(events),
        **best,
        "loop_s_runs": [round(r["loop_s"], 4) for r in runs],
    }


def run_quoteforge(
    data: Path, run_dir: Path, args: argparse.Namespace, duration: str = "null"
) -> dict[str, Any]:
    text = MANIFEST.format(
        duration=duration,
        data=json.dumps(str(data)),
        tick=TICK,
        step=STEP,
        maker=args.maker_bps,
        taker=args.taker_bps,
        latency_ms=args.latency_ms,
        spread=args.spread_bps,
        size=args.size,
        tolerance=args.tolerance_bps,
        limit=args.limit,
    )
    manifest = run_dir.parent / f"{run_dir.name}.yaml"
    manifest.write_text(text)
    registry = load_registry()
    loaded = load_manifest(manifest, registry)
    cpu = time.process_time()  # the journal's writer thread included
    start = time.perf_counter()
    run = asyncio.run(run_manifest(loaded, registry, run_dir=run_dir, install_signals=False))
    loop = time.perf_counter() - start
    cpu = time.process_time() - cpu
    venue = run.venues["binance"]
    assert isinstance(venue, ReplayExchange)
    key = "binance:ETH/USDT"
    mid = venue.books["ETH/USDT"].mid()
    mark = None if mid is None else Decimal(str(round(mid, 6)))
    return {
        "loop_s": loop,
        "loop_cpu_s": cpu,
        "records": venue.records,
        "fills": len(venue.fills.fills),
        "orders": len(run.orders.all_orders()),
        "position": float(run.portfolio.position(key)),
        "pnl": round(float(run.portfolio.pnl(key, mark)), 4),
        "fees": round(float(run.portfolio.fees(key)), 4),
        "stop_reason": run.stop_reason,
    }


def bench_quoteforge(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    configure_logging("WARNING")
    t0 = time.perf_counter()
    data = base / "ethusdt.jsonl"
    report = import_recording(
        "hftbacktest", [args.data], data, keep=["depth", "trade"], progress=False
    )
    converted = time.perf_counter()
    first = run_quoteforge(data, base / "run-0", args)
    # The run's fixed cost (build, journal open, connect, close, summary): a run that
    # stops after one replayed millisecond.
    empty = run_quoteforge(data, base / "run-empty", args, duration="1ms")
    to_report = time.perf_counter() - t0
    runs = [first] + [run_quoteforge(data, base / f"run-{i}", args) for i in range(1, args.repeats)]
    best = min(runs, key=lambda r: r["loop_s"])
    return {
        "convert_s": converted - t0,
        "raw_to_report_s": to_report,
        "imported_records": report.records,
        "setup_s": empty["loop_s"],
        **best,
        "loop_s_runs": [round(r["loop_s"], 4) for r in runs],
    }


FILL_MODELS = (
    "Why the fills differ: hftbacktest starts from an empty book (its converter skips the "
    "REST snapshot), fills a whole order once the queue ahead is gone (no partial fills) "
    "and moves the queue with its power probability model; quoteforge starts from the "
    "snapshot, fills the traded quantity past the queue ahead (partial fills), and books "
    "a cancellation ahead of our order by its probabilistic cancel position. The quoting "
    "differs too: pure_market_making rounds, skews and refreshes its quotes by its own "
    "rules, while the hftbacktest loop here requotes on every feed event."
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA, help="hftbacktest collector file")
    parser.add_argument("--spread-bps", type=float, default=0.5, help="quote distance")
    parser.add_argument("--tolerance-bps", type=float, default=0.125, help="requote after")
    parser.add_argument("--size", type=float, default=0.5, help="order size (ETH)")
    parser.add_argument("--limit", type=float, default=10.0, help="position limit (ETH)")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="order latency")
    parser.add_argument("--maker-bps", type=float, default=-0.5)
    parser.add_argument("--taker-bps", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each loop")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = parser.parse_args(argv)
    try:
        import hftbacktest  # noqa: F401
        import numba  # noqa: F401
    except ImportError as exc:
        sys.exit(
            f"this benchmark needs hftbacktest and numba ({exc}): pip install 'quoteforge[bench]'"
        )
    if not args.data.is_file():
        sys.exit(f"{args.data}: no such recording; pass --data PATH (hftbacktest collector file)")
    raw = raw_messages(args.data)
    replayed = raw["depth"] + raw["trade"]
    with tempfile.TemporaryDirectory() as tmp:
        hbt = bench_hftbacktest(args)
        qf = bench_quoteforge(args, Path(tmp))
    for side in (hbt, qf):
        side["records_per_s"] = round(replayed / side["loop_s"])
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "data": args.data.name,
        "raw_messages": raw,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "hftbacktest": hbt,
        "quoteforge": qf,
        "ratios": {
            "loop_quoteforge_over_hftbacktest": round(qf["loop_s"] / hbt["loop_s"], 2),
            "loop_cpu_quoteforge_over_hftbacktest": round(qf["loop_cpu_s"] / hbt["loop_cpu_s"], 2),
            "raw_to_report_quoteforge_over_hftbacktest": round(
                qf["raw_to_report_s"] / hbt["raw_to_report_s"], 2
            ),
        },
        "fill_models": FILL_MODELS,
    }
    print(
        f"{args.data.name}: {raw['depth']} depth diffs + {raw['trade']} trades replayed "
        f"({raw['other']} other lines: book tickers, the snapshot)\n"
    )
    print(f"{'':<28}{'hftbacktest':>14}{'quoteforge':>14}")
    rows = [
        ("conversion s", "convert_s", "{:.3f}"),
        ("loop s (best)", "loop_s", "{:.4f}"),
        ("  of which set-up s", "setup_s", "{:.4f}"),
        ("loop CPU s (same run)", "loop_cpu_s", "{:.4f}"),
        ("records/s", "records_per_s", "{:,}"),
        ("raw file to report s", "raw_to_report_s", "{:.3f}"),
        ("fills", "fills", "{}"),
        ("position", "position", "{}"),
        ("PnL (USDT)", "pnl", "{}"),
    ]
    for label, key, fmt in rows:
        print(f"{label:<28}{fmt.format(hbt[key]):>14}{fmt.format(qf[key]):>14}")
    print(f"{'numba compile s':<28}{hbt['compile_s']:>14.3f}{'':>14}")
    print()
    for key, value in results["ratios"].items():
        print(f"{key:<46}{value:>8}")
    print(f"\n{FILL_MODELS}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
