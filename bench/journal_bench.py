"""Journal benchmark: throughput (events/s), event-loop lag while journaling, and what
journaling costs a busy appending thread.

Run: ``python bench/journal_bench.py [--events N] [--rate R] [--seconds S]``. Prints two
tables and writes ``bench/results/journal_bench.json``. SQLite is measured with both
ways of inserting a batch: ``sqlite``, the default (one statement per row, bound in
Python, the GIL handed over around each row) and ``sqlite (json)`` (one statement per
batch, its one parameter the rows as JSON text, unpacked by SQLite with the GIL
released; SQLite 3.38+). PostgreSQL is measured when reachable at ``--dsn`` (default
127.0.0.1:5432/test) and reported as skipped otherwise.

Busy thread: a backtest's strategy thread is CPU-bound Python that appends a record every
few tens of microseconds, and on a 2-core machine it shares the GIL with the writer
thread. Each unit of this phase runs a fixed piece of Python work and appends one record,
turning the event loop every ``--busy-yield`` units (as the engine does between events);
the phase's duration is compared with the same loop that builds the records and
journals nothing, alternating the journals and the reference within each round.

Order manager: ``--orders`` order lives through the real ``OrderManager`` into SQLite
(five records each, the record format of docs/journal.md): records/s until durable, the
appending side's µs per record and the file's bytes per record.
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
from typing import Any, Literal

from quoteforge.clock import SimClock
from quoteforge.journal import JournalRecord
from quoteforge.model import Fill, Liquidity, OrderStatus, OrderUpdate, Side
from quoteforge.orders import OrderManager
from quoteforge.plugins.journal_postgres import PostgresJournal
from quoteforge.plugins.journal_sqlite import SqliteJournal, ThreadedJournal, sqlite_json_batches

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
            # What changed in the order (record format 2, docs/journal.md).
            "order": {
                "client_id": f"qf-lz3k9a1b-{i:x}",
                "status": "partially_filled",
                "filled_lots": i % 7,
                "updated_ns": 1_700_000_000_000_000_000 + i,
            },
        },
    )


async def bench_order_manager(
    directory: Path, orders: int, synchronous: Literal["full", "normal"]
) -> dict[str, Any]:
    """The order manager's real records into SQLite: each order placed, acknowledged,
    partly filled, cancelled and confirmed (five records; docs/journal.md, format 2).
    Returns records/s until durable, µs per record on the appending side (the manager's
    bookkeeping and the payload's encoding) and bytes per record in the file."""
    path = directory / "orders.sqlite"
    journal = SqliteJournal(path, synchronous=synchronous)
    await journal.open()
    om = OrderManager(journal, SimClock(1_700_000_000_000_000_000), "qf")
    started = time.perf_counter()
    for i in range(orders):
        side = Side.BUY if i % 2 else Side.SELL
        order = om.new_order("sim", "BTCUSDT", side, 10, 10_000_000 + i % 50, strategy="mm")
        om.apply_update(OrderUpdate("sim", order.client_id, OrderStatus.OPEN, i, str(i)))
        fill = Fill("sim", "BTCUSDT", f"f{i}", order.client_id, side, 10_000_000, 3,
                    Decimal("-0.0001"), "USDT", Liquidity.MAKER, i, "mm")  # fmt: skip
        om.apply_fill(fill)
        om.request_cancel(order.client_id)
        om.apply_update(OrderUpdate("sim", order.client_id, OrderStatus.CANCELLED, i))
        if i % 20 == 19:
            await asyncio.sleep(0)
    appended = time.perf_counter() - started
    await journal.close()
    elapsed = time.perf_counter() - started
    size = sum(p.stat().st_size for p in directory.glob("orders.sqlite*"))
    return {
        "records": journal.appended,
        "records_per_s": round(journal.appended / elapsed),
        "append_us_per_record": round(appended / journal.appended * 1e6, 2),
        "bytes_per_record": round(size / journal.appended),
    }


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


def python_work(iterations: int) -> int:
    """Pure-Python CPU work, as a strategy does between two journal records."""
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def thread_schedstat() -> tuple[float, float] | None:
    """This thread's time on a CPU and time runnable but waiting for one (Linux), in
    seconds; None elsewhere."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            on_cpu, waiting, _ = f.read().split()
    except (OSError, ValueError):
        return None
    return int(on_cpu) / 1e9, int(waiting) / 1e9


async def bench_busy(
    builds: dict[str, Callable[[], ThreadedJournal[Any]]],
    units: int,
    work: int,
    yield_every: int,
    rounds: int,
) -> dict[str, Any]:
    """The busy-thread phase: per round, the loop once without a journal and once per
    journal (order reversed every other round); returns per-journal slowdowns.

    Where the appending thread's time went (Linux): on a CPU, runnable but waiting for
    a CPU (the machine is busy: other processes, or the writer thread on the only free
    core), and blocked, which in this loop is waiting for the GIL. The writer's CPU is
    the process's CPU time minus the appending thread's."""
    samples: dict[str, list[dict[str, float]]] = {"none": [], **{name: [] for name in builds}}
    batches: dict[str, int] = dict.fromkeys(builds, 0)
    base = 10_000_000

    async def loop(sink: Callable[[JournalRecord], None], first: int) -> dict[str, float]:
        sched = thread_schedstat()
        process, thread = time.process_time(), time.thread_time()
        started = time.perf_counter()
        for i in range(units):
            python_work(work)
            sink(make_record(first + i))
            if i % yield_every == yield_every - 1:
                await asyncio.sleep(0)
        sample = {"wall": time.perf_counter() - started}
        sample["writer_cpu"] = (time.process_time() - process) - (time.thread_time() - thread)
        after = thread_schedstat()
        if sched is not None and after is not None:
            sample["on_cpu"] = after[0] - sched[0]
            sample["runq"] = after[1] - sched[1]
            sample["blocked"] = max(0.0, sample["wall"] - sample["on_cpu"] - sample["runq"])
        return sample

    names = ["none", *builds]
    for round_no in range(rounds):
        for name in names if round_no % 2 == 0 else names[::-1]:
            base += units
            if name == "none":
                samples[name].append(await loop(lambda record: None, base))
                continue
            journal = builds[name]()
            await journal.open()
            samples[name].append(await loop(journal.append, base))
            await journal.close()
            batches[name] += journal.batches

    def us_per_unit(name: str, key: str) -> float | None:
        values = [sample[key] for sample in samples[name] if key in sample]
        return round(statistics.median(values) / units * 1e6, 2) if values else None

    reference = [sample["wall"] for sample in samples["none"]]
    result: dict[str, Any] = {
        "units": units,
        "work_iterations": work,
        "yield_every": yield_every,
        "rounds": rounds,
        "none": {key: us_per_unit("none", key) for key in ("wall", "on_cpu", "runq", "blocked")},
        "journals": {},
    }
    for name in builds:
        # Each journal's time against the reference of its own round.
        walls = [sample["wall"] for sample in samples[name]]
        slowdowns = sorted(d / r - 1 for d, r in zip(walls, reference, strict=True))
        result["journals"][name] = {
            "slowdown_pct_median": round(statistics.median(slowdowns) * 100, 1),
            "slowdown_pct_min": round(slowdowns[0] * 100, 1),
            "slowdown_pct_max": round(slowdowns[-1] * 100, 1),
            **{
                f"{key}_us_per_unit": us_per_unit(name, key)
                for key in ("wall", "on_cpu", "runq", "blocked", "writer_cpu")
            },
            "batches_per_round": round(batches[name] / rounds),
        }
    return result


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
    parser.add_argument("--busy-units", type=int, default=50_000, help="busy phase records")
    parser.add_argument(
        "--busy-work", type=int, default=200, help="Python loop iterations per busy unit"
    )
    parser.add_argument(
        "--busy-yield", type=int, default=4, help="busy units between event-loop turns"
    )
    parser.add_argument("--busy-rounds", type=int, default=5)
    parser.add_argument(
        "--orders", type=int, default=20_000, help="order lives (5 records each), SQLite"
    )
    args = parser.parse_args(argv)

    rows: list[dict[str, Any]] = []
    problem = postgres_reachable(args.dsn)
    table = "quoteforge_journal_bench"
    run_ids: list[str] = []

    def postgres() -> PostgresJournal:
        run_ids.append(f"bench-{uuid.uuid4().hex[:10]}")
        return PostgresJournal(args.dsn, run_id=run_ids[-1], table=table)

    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(1_000_000))

        def sqlite_builder(insert: Literal["json", "executemany"]) -> Callable[[], SqliteJournal]:
            def build() -> SqliteJournal:
                path = Path(tmp) / f"bench-{next(counter)}.sqlite"
                return SqliteJournal(path, synchronous=args.synchronous, insert=insert)

            return build

        builds: dict[str, Callable[[], ThreadedJournal[Any]]] = {
            "sqlite": sqlite_builder("executemany")
        }
        if sqlite_json_batches():
            builds["sqlite (json)"] = sqlite_builder("json")
        if problem is None:
            builds["postgres"] = postgres
        for name, build in builds.items():
            rows.append(
                await bench_backend(name, build, args.events, args.rate, args.seconds, args.rounds)
            )
        if problem is not None:
            rows.append({"backend": "postgres", "skipped": problem})
        busy = await bench_busy(
            builds, args.busy_units, args.busy_work, args.busy_yield, args.busy_rounds
        )
        order_manager = await bench_order_manager(Path(tmp), args.orders, args.synchronous)
    for run_id in run_ids:
        PostgresJournal(args.dsn, run_id=run_id, table=table).drop_run()

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
    print(" | ".join(f"{title:>20}" for _, title in columns))
    for row in rows:
        if "skipped" in row:
            print(f"{row['backend']:>20} | skipped: {row['skipped']}")
            continue
        print(" | ".join(f"{row[key]!s:>20}" for key, _ in columns))

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

    none = busy["none"]
    print(
        f"\nbusy appending thread: {busy['units']} units of {busy['work_iterations']} Python "
        f"loop iterations + one append, an event-loop turn every {busy['yield_every']} units; "
        f"{busy['rounds']} rounds. Without a journal: {none['wall']} µs/unit (median; "
        f"on a CPU {none['on_cpu']}, waiting for a CPU {none['runq']})."
    )
    headers = ("slowdown (median, range)", "µs/unit", "on CPU", "wait CPU", "blocked", "writer")
    print(
        f"{'journal':>20} | "
        + " | ".join(f"{h:>10}" if i else f"{h:>26}" for i, h in enumerate(headers))
        + " | batches"
    )
    for name, row in busy["journals"].items():
        spread = (
            f"{row['slowdown_pct_median']:+.1f}% "
            f"({row['slowdown_pct_min']:+.1f} .. {row['slowdown_pct_max']:+.1f})"
        )
        cells = [
            row[f"{key}_us_per_unit"] for key in ("wall", "on_cpu", "runq", "blocked", "writer_cpu")
        ]
        print(
            f"{name:>20} | {spread:>26} | "
            + " | ".join(f"{cell!s:>10}" for cell in cells)
            + f" | {row['batches_per_round']}"
        )
    print(
        "(µs per unit, medians, of the appending thread: its wall time, on a CPU, runnable "
        "but waiting for a CPU, blocked (here: waiting for the GIL); writer: the rest of "
        "the process's CPU time, i.e. the writer thread's)"
    )

    om = order_manager
    print(
        f"\norder manager -> sqlite: {om['records']} records ({args.orders} orders: placed, "
        f"acknowledged, partly filled, cancelled, confirmed): {om['records_per_s']} records/s "
        f"until durable, {om['append_us_per_record']} µs/record to journal, "
        f"{om['bytes_per_record']} bytes/record on disk"
    )

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
                "busy_thread": busy,
                "order_manager": order_manager,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
