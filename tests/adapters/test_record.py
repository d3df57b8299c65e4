"""``quoteforge record`` against the replica venues: what it writes replays through
``type: replay`` into the book the venue ended with, message for message."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from quoteforge.book import L2Book
from quoteforge.clock import SimClock
from quoteforge.exchange import VenueContext
from quoteforge.exchanges.recording import read_recording
from quoteforge.exchanges.replay import ReplayExchange
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.kraken_replica import KrakenReplica
from quoteforge.manifest import load_manifest
from quoteforge.model import Side
from quoteforge.plugins.record import record_main
from quoteforge.registry import PluginRegistry

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FAST = "request_timeout_s: 2, reconnect_initial_s: 0.05, reconnect_max_s: 0.3"


def binance_manifest(replica: BinanceReplica) -> str:
    # The secrets name variables nobody exported: recording must not need them.
    return f"""
run: {{name: rec, mode: live}}
exchanges:
  bn:
    type: binance
    params: {{rest_url: "{replica.url}", ws_url: "{replica.ws_url}", {FAST}}}
    secrets: {{api_key: "${{QF_UNSET_RECORD_KEY}}", api_secret: "${{QF_UNSET_RECORD_SECRET}}"}}
strategies:
  mm: {{type: pure_market_making, exchange: bn, symbols: BTCUSDT, params: {{order_size: 0.001}}}}
"""


def kraken_manifest(replica: KrakenReplica) -> str:
    return f"""
run: {{name: rec, mode: live}}
exchanges:
  kr:
    type: kraken
    params:
      rest_url: "{replica.url}"
      ws_url: "{replica.public_ws_url}"
      private_ws_url: "{replica.private_ws_url}"
      book_depth: 10
      {FAST.replace(", ", chr(10) + "      ")}
strategies:
  mm: {{type: pure_market_making, exchange: kr, symbols: BTC/USD, params: {{order_size: 0.001}}}}
"""


async def churn_while_connected(replica: Any, symbol: str, seconds: float) -> None:
    """Once the recorder's socket is open, move the book for ``seconds``, then stop so
    the venue's final book is what the recording ends with."""
    deadline = time.monotonic() + 15
    while replica.connections_opened < 1:
        assert time.monotonic() < deadline, "the recorder never connected"
        await asyncio.sleep(0.02)
    end = time.monotonic() + seconds
    seed = 1
    while time.monotonic() < end:
        await replica.churn(symbol, 4, seed=seed)
        seed += 1
        await asyncio.sleep(0.03)


async def record_during_churn(
    replica: Any, symbol: str, manifest: Path, out: Path, *extra: str
) -> int:
    argv = [str(manifest), "--out", str(out), "--duration", "2.5s", *extra]
    recording = asyncio.create_task(asyncio.to_thread(record_main, argv))
    await churn_while_connected(replica, symbol, 1.0)
    return await recording


async def replay(
    registry: PluginRegistry, tmp_path: Path, data: Path, protocol: str, symbol: str, grid: Any
) -> tuple[ReplayExchange, _Sink]:
    """The recording through a ``type: replay`` exchange, run to its end."""
    text = f"""
run: {{name: back, mode: backtest, data: "{data}"}}
exchanges:
  rec:
    type: replay
    params:
      protocol: {protocol}
      markets: {{"{symbol}": {{tick_size: "{grid.tick}", lot_size: "{grid.lot}"}}}}
strategies:
  mm: {{type: pure_market_making, exchange: rec, symbols: "{symbol}", params: {{order_size: 1}}}}
"""
    path = tmp_path / "backtest.yaml"
    path.write_text(text)
    loaded = load_manifest(path, registry)
    clock = SimClock(10**18)
    ctx = VenueContext("rec", clock, 0, "backtest", [symbol], extra={"data": str(data)})
    venue = registry.get("exchange", "replay").factory(loaded.params_of("exchanges", "rec"), ctx)
    assert isinstance(venue, ReplayExchange)
    sink = _Sink()
    await venue.connect(sink)
    clock.run_until(2**62)
    assert venue.finished
    return venue, sink


class _Sink:
    def __init__(self) -> None:
        self.states: list[str] = []

    def on_book(self, book: L2Book) -> None: ...

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        self.states.append(new)

    def on_trade(self, *args: Any) -> None: ...

    def on_order_update(self, update: Any) -> None: ...

    def on_fill(self, fill: Any) -> None: ...

    def on_offer(self, offer: Any) -> None: ...

    def request_stop(self, reason: str) -> None: ...


def top(book: L2Book, side: Side, depth: int) -> list[tuple[Decimal, Decimal]]:
    inst = book.instrument
    return [(inst.ticks_to_price(p), inst.lots_to_qty(q)) for p, q in book.top(side, depth)]


def printed_count(out: str, venue: str) -> int:
    row = next(line for line in out.splitlines() if line.split()[:1] == [venue])
    return int(row.split()[1])


async def test_binance_recording_replays_into_the_replica_book(
    registry: PluginRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    try:
        manifest = tmp_path / "bn.yaml"
        manifest.write_text(binance_manifest(replica))
        out = tmp_path / "bn.jsonl"
        assert await record_during_churn(replica, "BTCUSDT", manifest, out) == 0
        final = replica.book("BTCUSDT", 20)
        last_update_id = replica.update_id["BTCUSDT"]
    finally:
        await replica.stop()

    records = list(read_recording(out))
    streams = Counter(r.stream for r in records)
    assert streams["rest:depth?symbol=BTCUSDT"] == 1
    snapshot = next(r for r in records if r.stream.startswith("rest:"))
    assert snapshot.raw.startswith('{"lastUpdateId": '), "the venue's own text, spacing and all"
    assert streams["btcusdt@depth@100ms"] > 20
    assert {r.venue for r in records} == {"bn"}
    assert [r.t_ns for r in records] == sorted(r.t_ns for r in records)
    depth = [json.loads(r.raw)["data"] for r in records if "@depth" in r.stream]
    assert depth[-1]["u"] == last_update_id, "the recording holds the venue's last change"
    assert printed_count(capsys.readouterr().out, "bn") == len(records)

    grid = type("Grid", (), {"tick": "0.01", "lot": "0.00001"})
    venue, sink = await replay(registry, tmp_path, out, "binance_spot", "BTC/USDT", grid)
    assert venue.records == len(records)
    assert venue.malformed == 0 and venue.unrouted == 0
    assert sink.states == ["LIVE"], "bridged to the snapshot once, no gap"
    book = venue.books["BTC/USDT"]
    assert top(book, Side.BUY, 20) == final["bids"]
    assert top(book, Side.SELL, 20) == final["asks"]


async def test_kraken_recording_replays_with_every_checksum_matching(
    registry: PluginRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replica = KrakenReplica(ping_interval=0.1)
    await replica.start()
    try:
        manifest = tmp_path / "kr.yaml"
        manifest.write_text(kraken_manifest(replica))
        out = tmp_path / "kr.jsonl.gz"
        assert await record_during_churn(replica, "BTC/USD", manifest, out) == 0
        final = replica.book("BTC/USD", 10)
    finally:
        await replica.stop()

    records = list(read_recording(out))
    streams = Counter(r.stream for r in records)
    assert streams["book"] > 20
    assert streams["heartbeat"] > 0
    snapshots = [r for r in records if '"type":"snapshot"' in r.raw]
    assert len(snapshots) == 1
    assert printed_count(capsys.readouterr().out, "kr") == len(records)

    grid = replica.markets["BTC/USD"]
    venue, sink = await replay(registry, tmp_path, out, "kraken_v2", "BTC/USD", grid)
    assert venue.records == len(records)
    assert venue.malformed == 0
    assert sink.states == ["LIVE"], "every checksum matched"
    book = venue.books["BTC/USD"]
    assert top(book, Side.BUY, 10) == final["bids"]
    assert top(book, Side.SELL, 10) == final["asks"]


async def test_sigterm_stops_the_recording_cleanly(tmp_path: Path) -> None:
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    try:
        manifest = tmp_path / "bn.yaml"
        manifest.write_text(binance_manifest(replica))
        out = tmp_path / "bn.jsonl.gz"
        code = "import sys; from quoteforge.plugins.record import record_main; "
        code += "sys.exit(record_main(sys.argv[1:]))"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            str(manifest),
            "--out",
            str(out),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await churn_while_connected(replica, "BTCUSDT", 0.6)
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        await replica.stop()
    text = stdout.decode()
    assert proc.returncode == 0, stderr.decode()
    assert "until Ctrl-C" in text and "(signal SIGTERM)" in text
    # A cleanly closed .gz reads to its end; a killed writer would leave it truncated.
    records = list(read_recording(out))
    assert printed_count(text, "bn") == len(records) > 10


def test_a_simulated_venue_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = EXAMPLES / "quickstart.yaml"
    out = tmp_path / "x.jsonl"
    assert record_main([str(manifest), "--out", str(out), "--duration", "1s"]) == 2
    err = capsys.readouterr().err
    assert "exchange 'sim' is of type 'sim', which has no wire feed to record" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duration", "soon"], "--duration: expected a duration like 90"),
        (["--duration", "0s"], "--duration must be positive"),
        (["--venue", "nope"], "no exchange 'nope' in the manifest; it defines: bn"),
    ],
)
def test_bad_arguments_say_what_to_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    replica = BinanceReplica()  # never started: nothing may connect
    manifest = tmp_path / "bn.yaml"
    manifest.write_text(binance_manifest(replica))
    assert record_main([str(manifest), "--out", str(tmp_path / "r.jsonl"), *args]) == 2
    assert message in capsys.readouterr().err


def test_an_existing_recording_is_not_appended_to_by_accident(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text("")
    manifest = tmp_path / "bn.yaml"
    manifest.write_text(binance_manifest(BinanceReplica()))
    assert record_main([str(manifest), "--out", str(out)]) == 2
    assert "exists; choose another name or pass --append" in capsys.readouterr().err
    assert record_main([str(manifest), "--out", str(tmp_path / "r.csv")]) == 2
    assert "name the file .jsonl or .jsonl.gz" in capsys.readouterr().err
