"""In-process tick-to-quote latency on every book event of a quickstart sim run:
tick-to-quote = book event -> strategy -> risk -> execution diff (the quoting decision);
tick-to-orders = the same plus order manager, journal append and venue submit.

The same run is timed with each ``run.gc`` mode, in turn, ``--repeats`` times:
``between_events`` (the default of live and paper runs: the garbage collector runs
after decisions) and ``automatic`` (Python's schedule, which runs it inside them). Prints
the median p50/p99/max of each in microseconds, the collections and their pauses, the
ratio of the p99s, and a reference measured in the same run (the cost of one empty
Python method call and of one L2 book level update); writes
bench/results/tick_to_quote_bench.json.

    python bench/tick_to_quote_bench.py [--duration 3m] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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
#: ``run.gc`` values timed, the live default first.
GC_MODES = ("between_events", "automatic")


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


class GcPauses:
    """Every collection of the cyclic garbage collector once the run has started: Python's
    own (``automatic``, timed through ``gc.callbacks``) or the run's ``between_events``."""

    def __init__(self) -> None:
        self.pauses_ns: list[int] = []
        self._started = 0

    def attach(self, run: Run) -> None:
        if run.gc_policy is not None:
            run.gc_policy.pauses_ns = self.pauses_ns
        else:
            gc.callbacks.append(self._timed)

    def detach(self) -> None:
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)

    def _timed(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
        else:
            self.pauses_ns.append(time.perf_counter_ns() - self._started)


def timed_run(manifest: Path, duration: str, gc_mode: str) -> dict[str, object]:
    """One simulated run with every sample kept; ``gc_mode`` is its ``run.gc``."""
    registry = load_registry()
    overrides = [f"run.duration={duration}", f"run.gc={gc_mode}"]
    loaded = load_manifest(
        manifest, registry, overrides=[*overrides, "report.html=false", "report.png=false"]
    )
    pauses = GcPauses()
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(loaded, registry, run_dir=Path(tmp) / "run", on_started=pauses.attach)
        run.latency_samples = {"tick_to_quote": [], "tick_to_orders": []}
        try:
            asyncio.run(run.run())
        finally:
            pauses.detach()
    quote = run.latency_samples["tick_to_quote"]
    orders = run.latency_samples["tick_to_orders"]
    gcs = pauses.pauses_ns
    return {
        "book_events_timed": len(orders),
        "quoting_decisions_timed": len(quote),
        "tick_to_quote_p50_us": percentile(quote, 0.50),
        "tick_to_quote_p99_us": percentile(quote, 0.99),
        "tick_to_quote_max_us": max(quote) / 1000,
        "tick_to_orders_p50_us": percentile(orders, 0.50),
        "tick_to_orders_p99_us": percentile(orders, 0.99),
        "tick_to_orders_max_us": max(orders) / 1000,
        "tick_to_orders_mean_us": round(statistics.fmean(orders) / 1000, 3),
        "gc_collections": len(gcs),
        "gc_pause_p50_us": percentile(gcs, 0.50) if gcs else 0.0,
        "gc_pause_max_us": max(gcs) / 1000 if gcs else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", default="3m")
    parser.add_argument("--repeats", type=int, default=3, help="runs per run.gc mode")
    parser.add_argument(
        "--manifest",
        type=Path,
        default=ROOT / "examples" / "quickstart.yaml",
        help="the simulated run to time (default: the quickstart)",
    )
    args = parser.parse_args()
    configure_logging("WARNING")
    # The same run, the same events, once per mode in turn, ``--repeats`` times: each
    # figure is the median of its repeats (a shared machine's noise moves single runs).
    runs: dict[str, list[dict[str, object]]] = {mode: [] for mode in GC_MODES}
    for _ in range(args.repeats):
        for mode in GC_MODES:
            runs[mode].append(timed_run(args.manifest, args.duration, mode))
    cases = {
        mode: {key: statistics.median([r[key] for r in rs]) for key in rs[0]}  # type: ignore[type-var]
        for mode, rs in runs.items()
    }
    references = reference_costs()
    results: dict[str, object] = {"cases": cases, **references}
    print(f"{'run.gc':<34}" + "".join(f"{mode:>16}" for mode in GC_MODES))
    for key in cases[GC_MODES[0]]:
        print(f"{key:<34}" + "".join(f"{cases[mode][key]!s:>16}" for mode in GC_MODES))
    for mode in GC_MODES:
        p99 = float(cases[mode]["tick_to_quote_p99_us"])  # type: ignore[arg-type]
        results[f"p99_in_empty_calls_{mode}"] = round(p99 / references["empty_method_call_us"])
    live, auto = (float(cases[m]["tick_to_quote_p99_us"]) for m in GC_MODES)  # type: ignore[arg-type]
    results["p99_between_events_over_automatic"] = round(live / auto, 3)
    for key, value in references.items():
        print(f"{key:<34}{value!s:>16}")
    for key in ("p99_in_empty_calls_between_events", "p99_between_events_over_automatic"):
        print(f"{key:<34}{results[key]!s:>16}")
    out = ROOT / "bench" / "results" / "tick_to_quote_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
