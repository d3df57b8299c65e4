"""Journal benchmark: throughput (events/s) and event-loop lag while journaling.

Run: ``python bench/journal_bench.py [--events N] [--rate R] [--seconds S]``. Prints a
table and writes ``bench/results/journal_bench.json``. PostgreSQL is measured when
reachable at ``--dsn`` (default 127.0.0.1:5432/test) and reported as skipped otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from quoteforge.journal import JournalRecord
from quoteforge.plugins.journal_postgres import PostgresJournal
from quoteforge.plugins.journal_sqlite import SqliteJournal, ThreadedJournal

RESULTS = Path(__file__).resolve().parent / "results" / "journal_bench.json"
TARGET_EVENTS_PER_S = 20_000
TARGET_LAG_P99_MS = 1.0


def make_record(i: int) -> JournalRecord:
    """A fill-sized record, like the ones the order manager writes."""
    return JournalRecord(
        event_id=f"sim:fill:{i}",
        kind="fill",
        ts_ns=1_700_000_000_000_000_000 + i,
        market="sim:BTCUSDT",
        payload={
            "fill": {
                "venue": "sim",
                "symbol": "BTCUSDT",
                "fill_id": str(i),
                "client_id": f"qf-lz3k9a1b-{i:x}",
                "side": "buy",
                "price_ticks": 10_000_000 + i % 100,
                "qty_lots": 1 + i % 7,
                "fee": Decimal("0.00001"),
                "fee_asset": "USDT",
                "liquidity": "maker",
                "ts_ns": 1_700_000_000_000_000_000 + i,
            },
            "order": {"status": "partially_filled", "filled_lots": i % 7},
        },
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def measure_lag(
    work: Callable[[], Awaitable[None]], period_s: float = 0.001
) -> tuple[list[float], float]:
    """Run ``work`` next to a ticker that sleeps ``period_s`` and records how late it
    wakes up; returns the lateness samples (seconds) and the work's duration."""
    lateness: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            due = time.perf_counter() + period_s
            await asyncio.sleep(period_s)
            lateness.append(time.perf_counter() - due)

    async def timed() -> float:
        started = time.perf_counter()
        try:
            await work()
        finally:
            done.set()
        return time.perf_counter() - started

    _, elapsed = await asyncio.gather(ticker(), timed())
    return lateness, elapsed


async def bench_backend(
    name: str,
    build: Callable[[], ThreadedJournal[Any]],
    events: int,
    rate: int,
    seconds: float,
    rounds: int,
) -> dict[str, Any]:
    # 1) Throughput: append as fast as the loop allows (yielding every 100), then flush.
    journal = build()
    await journal.open()
    append_times: list[float] = []

    async def flood() -> None:
        for i in range(events):
            started = time.perf_counter()
            journal.append(make_record(i))
            append_times.append(time.perf_counter() - started)
            if i % 100 == 99:
                await asyncio.sleep(0)
        await journal.flush()

    flood_lag, elapsed = await measure_lag(flood)
    await journal.close()
    throughput = events / elapsed

    # 2) Lag at a steady production rate, as a busy run journals, alternating with the
    #    same loop that builds the records but journals nothing (the reference: the
    #    machine's floor plus our own record building). Medians over rounds.
    per_tick = max(1, rate // 1000)
    ticks = int(seconds * 1000)
    journal_p99: list[float] = []
    reference_p99: list[float] = []
    journal_max: list[float] = []
    batches = 0
    for round_no in range(rounds):
        journal = build()
        await journal.open()
        base = events + round_no * ticks * per_tick

        async def steady(sink: Callable[[JournalRecord], None], base: int = base) -> None:
            for tick in range(ticks):
                for j in range(per_tick):
                    sink(make_record(base + tick * per_tick + j))
                await asyncio.sleep(0.001)

        async def journaled(journal: ThreadedJournal[Any] = journal) -> None:
            await steady(journal.append)
            await journal.flush()

        lag, _ = await measure_lag(journaled)
        await journal.close()
        batches += journal.batches
        journal_p99.append(percentile(lag, 0.99))
        journal_max.append(max(lag))
        reference, _ = await measure_lag(lambda: steady(lambda record: None))
        reference_p99.append(percentile(reference, 0.99))

    lag_p99 = statistics.median(journal_p99)
    ref_p99 = statistics.median(reference_p99)
    return {
        "backend": name,
        "events": events,
        "throughput_events_per_s": round(throughput),
        "append_us_mean": round(statistics.fmean(append_times) * 1e6, 2),
        "append_us_p99": round(percentile(append_times, 0.99) * 1e6, 2),
        "flood_lag_p99_ms": round(percentile(flood_lag, 0.99) * 1e3, 3),
        "steady_rate_events_per_s": per_tick * 1000,
        "rounds": rounds,
        "steady_lag_p99_ms": round(lag_p99 * 1e3, 3),
        "steady_lag_max_ms": round(max(journal_max) * 1e3, 3),
        "reference_lag_p99_ms": round(ref_p99 * 1e3, 3),
        "journal_added_lag_p99_ms": round(max(0.0, lag_p99 - ref_p99) * 1e3, 3),
        "batches": batches,
    }


def postgres_reachable(dsn: str) -> str | None:
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=3):
            return None
    except Exception as exc:
        return str(exc).strip() or type(exc).__name__


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="records for throughput")
    parser.add_argument("--rate", type=int, default=20_000, help="steady events/s for lag")
    parser.add_argument("--seconds", type=float, default=2.0, help="steady phase duration")
    parser.add_argument("--rounds", type=int, default=3, help="steady phases per backend")
    parser.add_argument("--dsn", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    args = parser.parse_args(argv)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(1_000_000))

        def sqlite() -> SqliteJournal:
            return SqliteJournal(
                Path(tmp) / f"bench-{next(counter)}.sqlite", synchronous=args.synchronous
            )

        rows.append(
            await bench_backend("sqlite", sqlite, args.events, args.rate, args.seconds, args.rounds)
        )

    problem = postgres_reachable(args.dsn)
    if problem is None:
        table = "quoteforge_journal_bench"
        run_ids: list[str] = []

        def postgres() -> PostgresJournal:
            run_ids.append(f"bench-{uuid.uuid4().hex[:10]}")
            return PostgresJournal(args.dsn, run_id=run_ids[-1], table=table)

        rows.append(
            await bench_backend(
                "postgres", postgres, args.events, args.rate, args.seconds, args.rounds
            )
        )
        for run_id in run_ids:
            PostgresJournal(args.dsn, run_id=run_id, table=table).drop_run()
    else:
        rows.append({"backend": "postgres", "skipped": problem})

    columns = [
        ("backend", "backend"),
        ("throughput_events_per_s", "events/s"),
        ("append_us_mean", "append µs"),
        ("flood_lag_p99_ms", "flood lag p99 ms"),
        ("steady_rate_events_per_s", "steady ev/s"),
        ("steady_lag_p99_ms", "lag p99 ms"),
        ("reference_lag_p99_ms", "no-journal p99 ms"),
        ("journal_added_lag_p99_ms", "added p99 ms"),
    ]
    print(" | ".join(f"{title:>17}" for _, title in columns))
    for row in rows:
        if "skipped" in row:
            print(f"{row['backend']:>17} | skipped: {row['skipped']}")
            continue
        print(" | ".join(f"{row[key]!s:>17}" for key, _ in columns))

    verdicts = {}
    for row in rows:
        if "skipped" in row:
            continue
        verdicts[row["backend"]] = {
            "throughput_ok": row["throughput_events_per_s"] >= TARGET_EVENTS_PER_S,
            "lag_ok": row["steady_lag_p99_ms"] < TARGET_LAG_P99_MS,
            "added_lag_ok": row["journal_added_lag_p99_ms"] < TARGET_LAG_P99_MS,
        }
    print(
        f"targets: >= {TARGET_EVENTS_PER_S} events/s, ticker lag p99 < {TARGET_LAG_P99_MS} ms "
        "(lag p99: with the journal; no-journal p99: same loop, records built but not "
        "journaled; added: the difference)"
    )
    print(json.dumps(verdicts))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "sqlite_synchronous": args.synchronous,
                "targets": {
                    "events_per_s": TARGET_EVENTS_PER_S,
                    "lag_p99_ms": TARGET_LAG_P99_MS,
                },
                "results": rows,
                "verdicts": verdicts,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
