"""In-process tick-to-quote latency on every book event of a quickstart sim run:
tick-to-quote = book event -> strategy -> risk -> execution diff (the quoting decision);
tick-to-orders = the same plus order manager, journal append and venue submit.

Prints p50/p90/p99/max in microseconds next to a reference measured in the same run (the
cost of one empty Python method call and of one L2 book level update), and writes
bench/results/tick_to_quote_bench.json.

    python bench/tick_to_quote_bench.py [--duration 3m]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from quoteforge.book import L2Book
from quoteforge.engine import Run
from quoteforge.logs import configure_logging
from quoteforge.manifest import load_manifest
from quoteforge.model import Instrument, Side
from quoteforge.registry import load_registry

ROOT = Path(__file__).resolve().parent.parent


def percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def reference_costs() -> dict[str, float]:
    class Empty:
        def call(self) -> None:
            return None

    obj = Empty()
    n = 200_000
    start = time.perf_counter_ns()
    for _ in range(n):
        obj.call()
    call_us = (time.perf_counter_ns() - start) / n / 1000
    from decimal import Decimal

    book = L2Book(Instrument("x", "A/B", "A", "B", Decimal("0.01"), Decimal("0.001")))
    start = time.perf_counter_ns()
    for i in range(n):
        book.set_level(Side.BUY, 10_000 - (i % 50), 1 + i % 7)
    level_us = (time.perf_counter_ns() - start) / n / 1000
    return {"empty_method_call_us": round(call_us, 4), "book_level_update_us": round(level_us, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", default="3m")
    parser.add_argument(
        "--manifest",
        type=Path,
        default=ROOT / "examples" / "quickstart.yaml",
        help="the simulated run to time (default: the quickstart)",
    )
    args = parser.parse_args()
    configure_logging("WARNING")
    registry = load_registry()
    loaded = load_manifest(
        args.manifest,
        registry,
        overrides=[f"run.duration={args.duration}", "report.html=false", "report.png=false"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(loaded, registry, run_dir=Path(tmp) / "run")
        run.latency_samples = {"tick_to_quote": [], "tick_to_orders": []}
        asyncio.run(run.run())
    quote = run.latency_samples["tick_to_quote"]
    orders = run.latency_samples["tick_to_orders"]
    results: dict[str, object] = {
        "book_events_timed": len(orders),
        "quoting_decisions_timed": len(quote),
        "tick_to_quote_p50_us": percentile(quote, 0.50),
        "tick_to_quote_p99_us": percentile(quote, 0.99),
        "tick_to_orders_p50_us": percentile(orders, 0.50),
        "tick_to_orders_p99_us": percentile(orders, 0.99),
        "tick_to_orders_max_us": max(orders) / 1000,
        "tick_to_orders_mean_us": round(statistics.fmean(orders) / 1000, 3),
        **reference_costs(),
    }
    results["p99_in_empty_calls"] = round(
        float(results["tick_to_quote_p99_us"]) / float(results["empty_method_call_us"])  # type: ignore[arg-type]
    )
    for key, value in results.items():
        print(f"{key:<34}{value!s:>14}")
    out = ROOT / "bench" / "results" / "tick_to_quote_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
