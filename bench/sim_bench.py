"""Simulation loop throughput: the quickstart manifest's events per second.

Prints events/s of the full sim loop (flow generation, matching, market data, strategy,
risk, execution, order manager, journal) and, as the in-run reference, the bare
scheduler's rate on no-op events; writes bench/results/sim_bench.json.

    python bench/sim_bench.py [--duration 10m] [--manifest examples/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from quoteforge.clock import SimClock
from quoteforge.engine import run_manifest
from quoteforge.logs import configure_logging
from quoteforge.manifest import load_manifest
from quoteforge.registry import load_registry

ROOT = Path(__file__).resolve().parent.parent


def bare_scheduler_rate(n: int = 500_000) -> float:
    clock = SimClock()

    def tick(i: int) -> None:
        if i < n:
            clock.call_later(1000, tick, i + 1)

    clock.call_later(0, tick, 0)
    start = time.perf_counter()
    ran = clock.run_until(2**62)
    return ran / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default=str(ROOT / "examples" / "quickstart.yaml"))
    parser.add_argument("--duration", default="10m")
    args = parser.parse_args()
    configure_logging("WARNING")
    registry = load_registry()
    loaded = load_manifest(
        args.manifest,
        registry,
        overrides=[f"run.duration={args.duration}", "report.html=false", "report.png=false"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = asyncio.run(
            run_manifest(loaded, registry, run_dir=Path(tmp) / "run", install_signals=False)
        )
        wall = time.perf_counter() - start
    events = run.events_processed
    fills = sum(row["fill_count"] for row in run.summary_rows())
    rate = events / wall
    floor = bare_scheduler_rate()
    results = {
        "manifest": Path(args.manifest).name,
        "virtual_seconds": float(loaded.manifest.run.duration or 0),
        "wall_seconds": round(wall, 3),
        "events": events,
        "fills": fills,
        "events_per_second": round(rate),
        "bare_scheduler_events_per_second": round(floor),
        "ratio_to_bare_scheduler": round(rate / floor, 4),
        "speedup_vs_real_time": round(float(loaded.manifest.run.duration or 0) / wall, 1),
    }
    print(f"{'measure':<36}{'value':>14}")
    for key, value in results.items():
        print(f"{key:<36}{value!s:>14}")
    out = ROOT / "bench" / "results" / "sim_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
