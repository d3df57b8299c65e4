"""Bus throughput and latency: the in-process bus, and MQTT over a loopback Mosquitto.

Run: ``python bench/bus_bench.py``; it starts its own Mosquitto (tuned as in
examples/distributed/mosquitto.conf) unless ``--port`` names a running one. Prints a table,
whether each target of the issue is met, and writes ``bench/results/bus_bench.json``.

MQTT rows count messages (what ``publish()`` was called with): several messages of one
topic may share one MQTT publish (a batch frame), so the table also gives the MQTT
publishes per second the subscriber received (frames/s). The ``batch 1`` rows run the
same case with batching off, as a reference measured in the same run. Latency is from
the ``publish()`` call to the handler in the subscriber process, via the broker; the
flood rows' latencies measure the queue the flood builds up. The ``gc.freeze`` rows
repeat the paced cases with ``gc.freeze()`` called in both processes once they are set
up, as a latency-sensitive node process should: full garbage collections then skip the
tens of thousands of objects every quoteforge process holds from its imports, and stop
pausing the event loop for tens of milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from quoteforge.bus import InProcessBus
from quoteforge.plugins.bus_mqtt import MqttBus, MqttParams
from quoteforge.plugins.distributed.topics import Codec

RESULTS = Path(__file__).resolve().parent / "results" / "bus_bench.json"
# The --signed rows: both ends hold the run's bus key, as the nodes of a split run do.
BENCH_KEY = SecretStr("bench-key-0123456789abcdef0123456789abcdef")


@dataclass
class Row:
    case: str
    sent: int
    received: int
    seconds: float
    msgs_per_s: float
    p50_us: float
    p99_us: float
    note: str = ""
    frames_per_s: float | None = None


def percentile(samples: list[int], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


BOOK = {
    "venue": "binance",
    "symbol": "BTC/USDT",
    "bids": [[6500012, 150], [6500011, 20], [6500010, 3]],
    "asks": [[6500013, 2], [6500014, 9], [6500015, 1]],
}


def bench_inprocess(count: int) -> list[Row]:
    bus = InProcessBus()
    received = 0

    def count_it(topic: str, payload: dict[str, Any]) -> None:
        nonlocal received
        received += 1

    bus.subscribe("quoteforge/b/book/binance/BTC-USDT", count_it)
    bus.subscribe("quoteforge/b/fill/+", count_it)
    publish = bus.publish
    topic = "quoteforge/b/book/binance/BTC-USDT"
    start = time.perf_counter()
    for _ in range(count):
        publish(topic, BOOK)
    elapsed = time.perf_counter() - start

    latencies: list[int] = []
    clock = time.perf_counter_ns

    def timed(topic: str, payload: dict[str, Any]) -> None:
        latencies.append(clock() - payload["t"])

    bus.subscribe("quoteforge/b/intent/mm1", timed)
    for _ in range(min(count, 200_000)):
        publish("quoteforge/b/intent/mm1", {"t": clock()})
    return [
        Row(
            "inprocess",
            count,
            received,
            elapsed,
            count / elapsed,
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            "latency: publish call to handler, same thread",
        )
    ]


def bench_codec(count: int) -> list[Row]:
    rows = []
    fill = {"price": Decimal("65000.10"), "qty": Decimal("0.015"), "side": "buy", "id": "o-1"}
    for backend in ("orjson", "json"):
        try:
            codec = Codec(backend)
        except ImportError:
            continue
        for name, payload in (("book", BOOK), ("fill", fill)):
            data = codec.encode(payload, msg_id=None, seq=1, source="s")
            start = time.perf_counter()
            for i in range(count):
                codec.decode(codec.encode(payload, msg_id=None, seq=i, source="s"))
            elapsed = time.perf_counter() - start
            rows.append(
                Row(
                    f"codec {backend} {name} encode+decode",
                    count,
                    count,
                    elapsed,
                    count / elapsed,
                    elapsed / count * 1e6,
                    float("nan"),
                    f"{len(data)} bytes; p50 column = mean us per round trip",
                )
            )
    return rows


# -- MQTT: the subscriber runs in its own process, as a separate node would ---------------


def _subscriber(
    port: int,
    run: str,
    expected: int,
    seconds: float,
    freeze: bool,
    conn: Connection,
    signed: bool = False,
) -> None:
    async def main() -> None:
        key = BENCH_KEY if signed else None
        bus = MqttBus(MqttParams(port=port, heartbeat_interval_s=0, signing_key=key), run)
        await bus.start()
        if freeze:
            gc.freeze()
        latencies: list[int] = []
        first_sent = last = 0
        clock = time.time_ns

        def handler(topic: str, payload: dict[str, Any]) -> None:
            nonlocal first_sent, last
            last = clock()
            if not latencies:
                first_sent = payload["t"]
            latencies.append(last - payload["t"])

        bus.subscribe(f"quoteforge/{run}/book/+/+", handler)
        bus.subscribe(f"quoteforge/{run}/fill/+", handler)
        await bus.flush(10)
        conn.send("ready")
        deadline = time.monotonic() + seconds
        while len(latencies) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)  # stragglers would show as more than expected
        step = max(1, len(latencies) // 100_000)
        conn.send((len(latencies), bus.stats.frames_received, first_sent, last, latencies[::step]))
        await bus.close()

    asyncio.run(main())


async def _publish(
    port: int,
    run: str,
    qos: int,
    count: int,
    rate: float | None,
    batch: int,
    freeze: bool,
    signed: bool = False,
) -> None:
    """Publish ``count`` messages (as fast as possible, or paced at ``rate``/s)."""
    params = MqttParams(
        port=port,
        heartbeat_interval_s=0,
        max_queued=count + 10,
        batch_max_messages=batch,
        signing_key=BENCH_KEY if signed else None,
    )
    bus = MqttBus(params, run)
    await bus.start()
    if freeze:
        gc.freeze()
    topic = f"quoteforge/{run}/book/binance/BTC-USDT" if qos == 0 else f"quoteforge/{run}/fill/sim"
    clock = time.time_ns
    start = time.perf_counter()
    for i in range(count):
        bus.publish(topic, {"t": clock(), "i": i, "bids": BOOK["bids"], "asks": BOOK["asks"]})
        if rate is not None:
            due = start + (i + 1) / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        elif i % 200 == 199:
            await asyncio.sleep(0)  # let the sender drain while the loop keeps producing
    await bus.flush(60)
    await bus.close()
    if freeze:
        gc.unfreeze()


def bench_mqtt(
    port: int,
    qos: int,
    count: int,
    seconds: float,
    rate: float | None,
    batch: int = 256,
    freeze: bool = False,
    signed: bool = False,
) -> Row:
    run = f"bench{int(time.time() * 1000) % 10_000_000}q{qos}"
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_subscriber, args=(port, run, count, seconds, freeze, child, signed))
    proc.start()
    try:
        if not parent.poll(15):
            raise RuntimeError("subscriber process did not get ready")
        parent.recv()
        asyncio.run(_publish(port, run, qos, count, rate, batch, freeze, signed))
        if not parent.poll(seconds + 15):
            raise RuntimeError("subscriber process did not report")
        received, frames, first, last, latencies = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    # From the first publish() call to the last delivery.
    elapsed = max(1e-9, (last - first) / 1e9)
    mode = f"paced {rate:.0f}/s" if rate else "flood"
    return Row(
        f"mqtt qos{qos} {mode}"
        + ("" if batch > 1 else " batch 1")
        + (" gc.freeze" if freeze else "")
        + (" signed" if signed else ""),
        count,
        received,
        elapsed,
        received / elapsed,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        "msgs/s counts messages; frames/s MQTT publishes received",
        frames / elapsed,
    )


def own_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A Mosquitto on a free loopback port with the example config's latency settings."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
        "max_inflight_messages 1000\nmax_queued_messages 200000\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'case':42} {'sent':>9} {'recv':>9} {'msgs/s':>12} {'frames/s':>10} "
        f"{'p50 us':>10} {'p99 us':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        frames = f"{r.frames_per_s:>10,.0f}" if r.frames_per_s is not None else f"{'':>10}"
        print(
            f"{r.case:42} {r.sent:>9} {r.received:>9} {r.msgs_per_s:>12,.0f} {frames} "
            f"{r.p50_us:>10.1f} {r.p99_us:>10.1f}"
        )


def check_targets(rows: list[Row], rate: float) -> list[dict[str, Any]]:
    """The issue's targets: in-process >= 1M msgs/s; MQTT >= 20k msgs/s with p99 < 5 ms."""
    by_case = {r.case: r for r in rows}
    checks: list[dict[str, Any]] = []

    def check(case: str, what: str, value: float, ok: bool) -> None:
        checks.append({"case": case, "target": what, "value": value, "met": ok})

    r = by_case["inprocess"]
    check(r.case, ">= 1,000,000 msgs/s", r.msgs_per_s, r.msgs_per_s >= 1e6)
    for qos in (0, 1):
        flood = by_case.get(f"mqtt qos{qos} flood")
        if flood is not None:
            ok = flood.msgs_per_s >= 20_000 and flood.received == flood.sent
            check(flood.case, ">= 20,000 msgs/s, none lost", flood.msgs_per_s, ok)
        for suffix in ("", " gc.freeze"):
            paced = by_case.get(f"mqtt qos{qos} paced {rate:.0f}/s{suffix}")
            if paced is not None:
                ok = (
                    rate >= 20_000
                    and paced.msgs_per_s >= 0.98 * rate
                    and paced.received == paced.sent
                    and paced.p99_us < 5_000
                )
                check(paced.case, "20,000 msgs/s kept up, p99 < 5 ms", paced.p99_us, ok)
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port", type=int, default=None, help="use the Mosquitto running on this port"
    )
    parser.add_argument("--count", type=int, default=100_000, help="messages per MQTT flood")
    parser.add_argument("--inprocess-count", type=int, default=2_000_000)
    parser.add_argument("--seconds", type=float, default=30, help="time limit per MQTT case")
    parser.add_argument("--rate", type=float, default=20_000, help="paced rate (target: 20000)")
    parser.add_argument(
        "--paced-seconds", type=float, default=3.0, help="length of the paced cases"
    )
    parser.add_argument("--no-mqtt", action="store_true", help="skip the MQTT rows")
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the batch 1 reference rows"
    )
    parser.add_argument(
        "--signed",
        action="store_true",
        help="add the flood and paced rows again with a bus key on both ends (every "
        "frame signed and checked), to compare in the same run",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows = bench_inprocess(args.inprocess_count)
    rows += bench_codec(100_000)
    if not args.no_mqtt:
        paced = int(args.rate * args.paced_seconds)
        with tempfile.TemporaryDirectory() as tmp:
            broker = None
            port = args.port
            if port is None:
                broker, port = own_broker(Path(tmp))
            try:
                for qos in (0, 1):
                    rows.append(bench_mqtt(port, qos, args.count, args.seconds, None))
                    rows.append(bench_mqtt(port, qos, paced, args.seconds, args.rate))
                    rows.append(bench_mqtt(port, qos, paced, args.seconds, args.rate, freeze=True))
                if not args.no_reference:
                    for qos in (0, 1):
                        rows.append(bench_mqtt(port, qos, args.count, args.seconds, None, 1))
                if args.signed:
                    for qos in (0, 1):
                        for rate in (None, args.rate):
                            count = args.count if rate is None else paced
                            rows.append(
                                bench_mqtt(port, qos, count, args.seconds, rate, signed=True)
                            )
            finally:
                if broker is not None:
                    broker.kill()
                    broker.wait()
    print_table(rows)
    checks = check_targets(rows, args.rate)
    print()
    for c in checks:
        print(f"{'MET    ' if c['met'] else 'NOT MET'} {c['case']:42} {c['target']}")
    by_case = {r.case: r for r in rows}
    for qos in (0, 1):
        batched = by_case.get(f"mqtt qos{qos} flood")
        single = by_case.get(f"mqtt qos{qos} flood batch 1")
        if batched is not None and single is not None:
            print(
                f"qos{qos} flood, batching on / off: {batched.msgs_per_s / single.msgs_per_s:.1f}x"
            )
    load_after = os.getloadavg()
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "cpus": mp.cpu_count(),
                "load_average_before_after": [load_before[0], load_after[0]],
                "rows": [
                    {k: None if v != v else v for k, v in asdict(r).items()}  # NaN -> null
                    for r in rows
                ],
                "targets": checks,
            },
            indent=2,
        )
    )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
