"""The replay venue: recorded Binance and Kraken data through the book rules, trades into
the fill simulator, latency, errors, and a full ``mode: backtest`` run through the engine."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from quoteforge.book import L2Book
from quoteforge.clock import SimClock
from quoteforge.engine import Run, run_manifest
from quoteforge.exchange import PlaceOrder, VenueContext
from quoteforge.exchanges import replay
from quoteforge.exchanges.recording import RecordingWriter
from quoteforge.exchanges.replay import ReplayExchange, ReplayParams
from quoteforge.manifest import load_manifest
from quoteforge.model import Fill, Liquidity, Order, OrderStatus, OrderUpdate, Side, TimeInForce
from quoteforge.registry import PluginRegistry

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SAMPLE = ROOT / "examples" / "data" / "ethusdt_binance.jsonl"
T0 = 1_700_000_000_000_000_000


class Sink:
    """Records everything a venue reports, with the virtual time it arrived."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.books: list[int] = []
        self.states: list[tuple[str, str, str]] = []
        self.trades: list[tuple[str, int, int, Side, int]] = []
        self.updates: list[OrderUpdate] = []
        self.fills: list[Fill] = []
        self.stops: list[str] = []

    def on_book(self, book: L2Book) -> None:
        self.books.append(self.clock.now_ns())

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        self.states.append((old, new, reason))

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        self.trades.append((symbol, price_ticks, qty_lots, aggressor, ts_ns))

    def on_order_update(self, update: OrderUpdate) -> None:
        self.updates.append(update)

    def on_fill(self, fill: Fill) -> None:
        self.fills.append(fill)

    def on_offer(self, offer: Any) -> None: ...

    def request_stop(self, reason: str) -> None:
        self.stops.append(reason)


def make_venue(
    params: dict[str, Any], *, extra: dict[str, Any] | None = None, start_ns: int = 10**18
) -> tuple[ReplayExchange, SimClock, Sink]:
    clock = SimClock(start_ns)
    ctx = VenueContext("rec", clock, seed=3, mode="backtest", symbols=[], extra=extra or {})
    venue = ReplayExchange(ReplayParams.model_validate(params), ctx)
    sink = Sink(clock)
    asyncio.run(venue.connect(sink))
    return venue, clock, sink


# BTCUSDT as Binance publishes it: tick 0.01, order step 0.00001; quantities are read
# at the 8 decimals the protocol sends, so one lot is 0.00000001 BTC.
BTC = {"BTC/USDT": {"tick_size": "0.01", "qty_step": "0.00001"}}


def levels(book: L2Book, side: Side) -> list[tuple[Decimal, Decimal]]:
    inst = book.instrument
    return [(inst.ticks_to_price(p), inst.lots_to_qty(q)) for p, q in book.levels(side)]


# -- recorded books ------------------------------------------------------------------------------
def test_binance_recording_rebuilds_the_final_book_from_run_data() -> None:
    path = FIXTURES / "binance" / "depth_recording.jsonl"
    venue, clock, sink = make_venue(
        {"protocol": "binance_spot", "markets": BTC}, extra={"data": str(path)}
    )
    clock.run_until(2**62)
    final = json.loads((FIXTURES / "binance" / "depth_snapshot_final.json").read_text())
    book = venue.books["BTC/USDT"]
    assert levels(book, Side.BUY) == [(Decimal(p), Decimal(q)) for p, q in final["bids"]]
    assert levels(book, Side.SELL) == [(Decimal(p), Decimal(q)) for p, q in final["asks"]]
    assert ("SYNCING", "LIVE") in [(old, new) for old, new, _ in sink.states]
    assert venue.finished
    assert sink.stops == ["rec: end of recorded data"]
    assert venue.records == 42
    assert venue.malformed == 0


def test_kraken_recording_keeps_checksums_and_rebuilds_the_final_book(tmp_path: Path) -> None:
    path = FIXTURES / "kraken" / "book_recording.jsonl"
    markets = {"BTC/USD": {"tick_size": "0.1", "lot_size": "0.00000001"}}
    venue, clock, sink = make_venue(
        {"protocol": "kraken_v2", "markets": markets, "data": str(path)}
    )
    clock.run_until(2**62)
    final = json.loads((FIXTURES / "kraken" / "book_final.json").read_text())
    book = venue.books["BTC/USD"]
    assert levels(book, Side.BUY) == [(Decimal(p), Decimal(q)) for p, q in final["bids"]]
    assert levels(book, Side.SELL) == [(Decimal(p), Decimal(q)) for p, q in final["asks"]]
    assert [new for _, new, _ in sink.states] == ["LIVE"]  # every checksum matched


def _sample_lines(tmp_path: Path, lines: list[tuple[int, str, str]], name: str = "r.jsonl") -> Path:
    path = tmp_path / name
    with RecordingWriter(path) as writer:
        for t, stream, raw in lines:
            writer.write("binance", stream, raw, t_ns=T0 + t)
    return path


def _depth(first: int, last: int, bids: list[list[str]], asks: list[list[str]]) -> str:
    event = {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": first, "u": last}
    return json.dumps({**event, "b": bids, "a": asks})


def _trade(price: str, qty: str, buyer_maker: bool) -> str:
    return json.dumps({"e": "trade", "s": "BTCUSDT", "p": price, "q": qty, "m": buyer_maker})


SNAPSHOT = json.dumps(
    {
        "lastUpdateId": 100,
        "bids": [["100.00", "0.50000"], ["99.99", "1.00000"]],
        "asks": [["100.02", "0.40000"], ["100.03", "1.00000"]],
    }
)


def test_gap_in_the_recording_resyncs_and_the_next_snapshot_brings_the_book_back(
    tmp_path: Path,
) -> None:
    ms = 1_000_000
    path = _sample_lines(
        tmp_path,
        [
            (0, "rest:/api/v3/depth?symbol=BTCUSDT", SNAPSHOT),
            (10 * ms, "btcusdt@depth@100ms", _depth(101, 101, [["100.01", "0.1"]], [])),
            (20 * ms, "btcusdt@depth@100ms", _depth(105, 106, [["100.00", "0.2"]], [])),  # gap
            (30 * ms, "rest:/api/v3/depth?symbol=BTCUSDT", SNAPSHOT.replace("100,", "106,")),
            (40 * ms, "btcusdt@depth@100ms", _depth(107, 107, [], [["100.02", "0"]])),
        ],
    )
    venue, clock, sink = make_venue({"protocol": "binance_spot", "markets": BTC, "data": str(path)})
    clock.run_until(2**62)
    moves = [(old, new) for old, new, _ in sink.states]
    assert moves == [("SYNCING", "LIVE"), ("LIVE", "RESYNCING"), ("RESYNCING", "LIVE")]
    assert "sequence gap" in sink.states[1][2]
    book = venue.books["BTC/USDT"]
    assert book.best_ask() == (10_003, 100_000_000)


def test_recorded_trades_fill_our_resting_order_behind_the_queue(tmp_path: Path) -> None:
    ms = 1_000_000
    path = _sample_lines(
        tmp_path,
        [
            (0, "rest:/api/v3/depth?symbol=BTCUSDT", SNAPSHOT),
            (100 * ms, "btcusdt@trade", _trade("100.00", "0.30000", True)),
            (200 * ms, "btcusdt@trade", _trade("100.00", "0.30000", True)),
            (300 * ms, "btcusdt@trade", _trade("100.03", "0.10000", False)),
        ],
    )
    params = {
        "protocol": "binance_spot",
        "markets": BTC,
        "data": str(path),
        "maker_fee_bps": "-1",
        "latency": {"market_data_ms": 0, "order_ms": 1, "jitter_ms": 0},
        "cancel_position": "back",
    }
    venue, clock, sink = make_venue(params)
    start = clock.now_ns()
    clock.run_until(start + 50 * ms)
    order = Order("o1", "rec", "BTC/USDT", Side.BUY, 20_000_000, 10_000, tif=TimeInForce.POST_ONLY)
    venue.submit([PlaceOrder(order)])
    clock.run_until(start + 60 * ms)
    assert venue.fills.queue_ahead("o1") == 50_000_000  # behind the 0.5 visible
    clock.run_until(2**62)
    assert [t[1:4] for t in sink.trades] == [
        (10_000, 30_000_000, Side.SELL),
        (10_000, 30_000_000, Side.SELL),
        (10_003, 10_000_000, Side.BUY),
    ]
    # 0.3 then 0.3 at our price: 0.5 ahead, then 0.1 of ours (partial fill as maker).
    assert [(f.price_ticks, f.qty_lots, f.liquidity) for f in sink.fills] == [
        (10_000, 10_000_000, Liquidity.MAKER)
    ]
    assert sink.fills[0].fee == Decimal("-0.001")  # 100.00 x 0.1 = 10, x -1 bps
    assert [u.status for u in sink.updates] == [OrderStatus.OPEN]


def test_extra_latency_delays_what_the_strategy_sees(tmp_path: Path) -> None:
    path = FIXTURES / "binance" / "depth_recording.jsonl"
    _, clock_a, sink_a = make_venue(
        {"protocol": "binance_spot", "markets": BTC, "data": str(path), "notify": "every"}
    )
    clock_a.run_until(2**62)
    _, clock_b, sink_b = make_venue(
        {
            "protocol": "binance_spot",
            "markets": BTC,
            "data": str(path),
            "notify": "every",
            "extra_latency_ms": 250,
        }
    )
    clock_b.run_until(2**62)
    assert len(sink_a.books) == len(sink_b.books) > 10
    assert [b - a for a, b in zip(sink_a.books, sink_b.books, strict=True)] == [250_000_000] * len(
        sink_a.books
    )


def test_top_notification_skips_updates_below_the_top_levels() -> None:
    path = FIXTURES / "binance" / "depth_recording.jsonl"
    every, clock, sink_every = make_venue(
        {"protocol": "binance_spot", "markets": BTC, "data": str(path), "notify": "every"}
    )
    clock.run_until(2**62)
    top, clock, sink_top = make_venue(
        {"protocol": "binance_spot", "markets": BTC, "data": str(path)}
    )
    clock.run_until(2**62)
    best, clock, sink_best = make_venue(
        {"protocol": "binance_spot", "markets": BTC, "data": str(path), "notify": "best"}
    )
    clock.run_until(2**62)
    assert 0 < len(sink_best.books) <= len(sink_top.books) <= len(sink_every.books)
    assert len(sink_best.books) < len(sink_every.books)
    for venue in (top, best):
        assert every.books["BTC/USDT"].top(Side.BUY, 5) == venue.books["BTC/USDT"].top(Side.BUY, 5)


def test_malformed_records_are_skipped_and_counted(tmp_path: Path) -> None:
    path = _sample_lines(
        tmp_path,
        [
            (0, "rest:/api/v3/depth?symbol=BTCUSDT", SNAPSHOT),
            (1, "btcusdt@depth@100ms", _depth(101, 101, [["100.005", "1"]], [])),  # off the grid
            (2, "btcusdt@trade", '{"e":"trade","p":"100.00"}'),
            (3, "ethusdt@trade", _trade("1.00", "1", True)),
        ],
    )
    venue, clock, _ = make_venue({"protocol": "binance_spot", "markets": BTC, "data": str(path)})
    clock.run_until(2**62)
    assert venue.malformed == 2
    assert venue.unrouted == 1
    assert venue.finished


def _depth_lines(count: int, gap_ns: int) -> list[tuple[int, str, str]]:
    lines = [(0, "rest:/api/v3/depth?symbol=BTCUSDT", SNAPSHOT)]
    for i in range(1, count + 1):
        bid = [["99.99", f"{i}.00000"]]
        lines.append((i * gap_ns, "btcusdt@depth@100ms", _depth(100 + i, 100 + i, bid, [])))
    return lines


def test_records_play_in_clock_order_with_other_events_and_stay_within_bounds(
    tmp_path: Path,
) -> None:
    ms = 1_000_000
    path = _sample_lines(tmp_path, _depth_lines(10, ms))
    venue, clock, sink = make_venue(
        {"protocol": "binance_spot", "markets": BTC, "data": str(path), "notify": "every"}
    )
    start = clock.now_ns()
    seen: list[tuple[str, int]] = []
    # A timer at the time of record 3 was scheduled before that record's turn, so it
    # runs first; one between records 5 and 6 runs between them.
    clock.call_at(start + 3 * ms, lambda: seen.append(("timer", venue.records)))
    clock.call_at(start + 5 * ms + 1, lambda: seen.append(("timer", venue.records)))
    clock.run_until(start + 7 * ms)
    assert venue.records == 8  # the snapshot and the diffs up to 7 ms, not one more
    assert clock.now_ns() == start + 7 * ms
    assert seen == [("timer", 3), ("timer", 6)]
    # An event budget counts records: a slice of 2 events plays 2 records.
    assert clock.run_until(2**62, max_events=2) == 2
    assert venue.records == 10
    clock.run_until(2**62)
    assert venue.records == 11 and venue.finished
    assert sink.books == [start + i * ms for i in range(11)]


def test_a_bad_line_stops_the_replay_after_the_records_before_it(tmp_path: Path) -> None:
    path = _sample_lines(tmp_path, _depth_lines(3, 1_000_000))
    with path.open("a", encoding="utf-8") as handle:
        handle.write("not a recording line\n")
    venue, clock, sink = make_venue({"protocol": "binance_spot", "markets": BTC, "data": str(path)})
    clock.run_until(2**62)
    assert venue.records == 4
    assert venue.finished
    assert sink.stops and "recording unreadable" in sink.stops[0] and "r.jsonl:5" in sink.stops[0]


@pytest.mark.parametrize("damage", ["not utf-8", "gzip cut short"])
def test_a_damaged_recording_stops_the_replay_naming_the_file(tmp_path: Path, damage: str) -> None:
    """Bytes that are not UTF-8, or a compressed file cut short, end the replay like a bad
    line does: the records before were played, the stop names the file and the damage."""
    lines = _depth_lines(20_000, 1_000_000)  # past the first read (about a megabyte)
    path = _sample_lines(tmp_path, lines)
    data = path.read_bytes()
    assert len(data) > 2 << 20
    if damage == "not utf-8":
        at = len(data) * 2 // 3
        path.write_bytes(data[:at] + b"\xff\xfe\xff" + data[at + 3 :])
    else:
        packed = gzip.compress(data)
        path = tmp_path / "r.jsonl.gz"
        path.write_bytes(packed[: len(packed) // 2])
    venue, clock, sink = make_venue({"protocol": "binance_spot", "markets": BTC, "data": str(path)})
    clock.run_until(2**62)
    assert venue.finished and 0 < venue.records < len(lines)
    assert sink.stops and "recording unreadable" in sink.stops[0], sink.stops
    assert f"{path.name}: unreadable after line" in sink.stops[0]
    assert "the file is damaged" in sink.stops[0]


def test_a_recording_no_book_starts_on_is_warned_of(tmp_path: Path) -> None:
    """Binance records replayed as Kraken's: every record is played, no book starts, and
    the end says to check the protocol (it was a quiet, empty run)."""
    path = _sample_lines(tmp_path, _depth_lines(5, 1_000_000))
    venue, clock, _ = make_venue(
        {"protocol": "kraken_v2", "markets": {"BTC/USD": BTC["BTC/USDT"]}, "data": str(path)}
    )
    said: list[str] = []
    handler = logger.add(said.append, level="WARNING", format="{message}")
    try:
        clock.run_until(2**62)
    finally:
        logger.remove(handler)
    assert venue.finished and venue.records == 6
    assert any(
        "no book of BTC/USD ever started: check that protocol: kraken_v2" in line for line in said
    ), said


def test_missing_recording_is_refused_with_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"recording 'nope.jsonl' not found \(looked at .*nope"):
        make_venue({"protocol": "binance_spot", "markets": BTC, "data": "nope.jsonl"})
    with pytest.raises(ValueError, match=r"no recording given; set params\.data on the exchange"):
        make_venue({"protocol": "binance_spot", "markets": BTC})


def test_bad_params_name_the_problem() -> None:
    with pytest.raises(ValueError, match="protocol"):
        ReplayParams.model_validate({"protocol": "ftx", "markets": BTC})
    with pytest.raises(ValueError, match="symbols are BASE/QUOTE"):
        ReplayParams.model_validate(
            {"protocol": "binance_spot", "markets": {"BTCUSDT": BTC["BTC/USDT"]}}
        )


def test_market_grids_take_the_published_step_and_refuse_inconsistent_settings() -> None:
    def market(**grid: str) -> dict[str, Any]:
        return {"protocol": "binance_spot", "markets": {"BTC/USDT": {"tick_size": "0.01", **grid}}}

    # lot_size is the older name of the order step; quantities are read at 8 decimals.
    for grid in ({"lot_size": "0.00001"}, {"qty_step": "0.00001"}):
        params = ReplayParams.model_validate(market(**grid))
        mp = params.markets["BTC/USDT"]
        assert mp.step == Decimal("0.00001")
        assert params.qty_resolution(mp) == Decimal("1E-8")
    explicit = ReplayParams.model_validate(market(qty_step="0.001", qty_decimals="3"))
    assert explicit.qty_resolution(explicit.markets["BTC/USDT"]) == Decimal("0.001")
    with pytest.raises(ValueError, match=r"lot_size 0.001 and qty_step 0.00001 disagree"):
        ReplayParams.model_validate(market(lot_size="0.001", qty_step="0.00001"))
    with pytest.raises(ValueError, match=r"give qty_step, the order quantity step"):
        ReplayParams.model_validate(market())
    with pytest.raises(
        ValueError, match=r"'BTC/USDT': order step 1E-9 is finer than the binance_spot quantity"
    ):
        ReplayParams.model_validate(market(qty_step="0.000000001"))


# -- through the engine ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backtest_registry() -> PluginRegistry:
    registry = PluginRegistry()
    registry.load_entry_points()
    if "replay" not in registry.types("exchange"):
        registry.register_module(replay, "replay")
    return registry


def run_backtest(registry: PluginRegistry, run_dir: Path, *overrides: str) -> Run:
    loaded = load_manifest(
        ROOT / "examples" / "backtest.yaml",
        registry,
        overrides=[
            f"exchanges.binance.params.data={SAMPLE}",
            "report.html=false",
            "report.png=false",
            "run.watch_manifest=false",
            *overrides,
        ],
    )
    return asyncio.run(run_manifest(loaded, registry, run_dir=run_dir, install_signals=False))


def _fills(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "trace.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "fill"]


def test_backtest_manifest_runs_to_the_end_of_the_data_with_fills(
    backtest_registry: PluginRegistry, tmp_path: Path
) -> None:
    run = run_backtest(backtest_registry, tmp_path / "a")
    assert run.mode == "backtest"
    assert run.stop_reason == "binance: end of recorded data"
    venue = run.venues["binance"]
    assert isinstance(venue, ReplayExchange)
    assert venue.malformed == 0
    fills = _fills(tmp_path / "a")
    assert len(fills) > 20
    assert {f["liquidity"] for f in fills} == {"maker"}  # post-only quotes never take
    row = run.summary_rows()[0]
    assert row["fill_count"] == len(fills)
    events = [
        json.loads(line) for line in (tmp_path / "a" / "trace.jsonl").read_text().splitlines()
    ]
    states = [e["detail"] for e in events if e.get("event") == "book_state"]
    assert any("RESYNCING" in s for s in states)  # the sample holds one sequence gap
    # The whole recording (about 60 s of virtual time) was replayed.
    assert venue.first_ns is not None
    assert venue.last_ns is not None
    assert 55 * 10**9 < venue.last_ns - venue.first_ns < 65 * 10**9
    assert venue.records == sum(1 for _ in SAMPLE.open())
    assert not run.orders.all_working()  # everything cancelled at the end
    # Same seed, same fills.
    again = run_backtest(backtest_registry, tmp_path / "b")
    assert again.stop_reason == run.stop_reason
    assert _fills(tmp_path / "b") == fills


def test_more_latency_changes_the_outcome(
    backtest_registry: PluginRegistry, tmp_path: Path
) -> None:
    run_backtest(backtest_registry, tmp_path / "a")
    base = _fills(tmp_path / "a")
    run_backtest(
        backtest_registry, tmp_path / "slow", "exchanges.binance.params.extra_latency_ms=200"
    )
    slow = _fills(tmp_path / "slow")
    assert slow != base


_TRADE_TEXTS = [
    '{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"100.01","q":"0.50000","T":1,"m":true,"M":true}',
    '{"e":"trade","s":"BTCUSDT","p":"100.01000000","q":"2","m":false}',
    '{ "p" : "100.01" , "q" : "0.1" , "m" : false }',
    '{"stream":"btcusdt@trade","data":{"p":"100.01","q":"0.1","m":true}}',
    '{"p":"100.01","q":"0.1","m":true,"p":"100.02"}',
    '{"p":"100.01","q":"0.1","m":1}',
    '{"p":"100.01","q":"0.1","m":null}',
    '{"p":"100.015","q":"0.1","m":true}',
    '{"p":"1E2","q":"0.1","m":true}',
    '{"p":100.01,"q":"0.1","m":true}',
    '{"p":"100.01","q":"-1","m":true}',
    '{"p":"100.01","m":true}',
    '{"p":"100.01","q":"0.1","m":true}x',
    '{"p":"100.01","q":"0.1","m":true,"x":[1]}',
    '{"p":"١٠٠","q":"0.1","m":true}',
    '{"p":"100.01","q":"0.1","m":tru}',
    "[1, 2]",
    "not json",
    "",
]


@pytest.mark.parametrize("text", _TRADE_TEXTS)
def test_compiled_trade_reader_reads_exactly_as_the_interpreted_one(
    text: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every trade text, plain or not, gives the same trade or the same clear error with
    the compiled reader as without it."""
    data = str(_sample_lines(tmp_path, [(0, "rest:/api/v3/depth?symbol=BTCUSDT", SNAPSHOT)]))
    outcomes: list[tuple[str, object]] = []
    for reader in (replay._trade_text, None):
        monkeypatch.setattr(replay, "_trade_text", reader)
        venue, _clock, sink = make_venue({"protocol": "binance_spot", "markets": BTC, "data": data})
        market = venue._markets["BTC/USDT"]
        try:
            venue._binance_trade(market, text)
            outcomes.append(("trade", sink.trades[-1][:4]))
        except replay.BookMessageError as exc:
            outcomes.append(("error", str(exc)))
    assert outcomes[0] == outcomes[1]


def test_the_compiled_trade_reader_is_used_when_built(tmp_path: Path) -> None:
    import os

    if os.environ.get("CI") and not os.environ.get("QUOTEFORGE_PURE_PYTHON"):
        assert replay._trade_text is not None, "the _fastbook extension was not built"
    if replay._trade_text is not None:
        data = str(_sample_lines(tmp_path, [(0, "rest:/api/v3/depth?symbol=BTCUSDT", SNAPSHOT)]))
        venue = make_venue({"protocol": "binance_spot", "markets": BTC, "data": data})[0]
        market = venue._markets["BTC/USDT"]
        assert replay._trade_text(_TRADE_TEXTS[0], market.price_table, market.qty_table) == (
            10001,
            50_000_000,
            True,
        )


def test_a_trade_that_is_not_json_is_skipped_and_counted(tmp_path: Path) -> None:
    path = _sample_lines(
        tmp_path,
        [
            (0, "rest:/api/v3/depth?symbol=BTCUSDT", SNAPSHOT),
            (1, "btcusdt@trade", '{"e":"trade","p":"100.00",'),
            (2, "btcusdt@trade", _trade("100.00", "1", True)),
        ],
    )
    venue, clock, sink = make_venue({"protocol": "binance_spot", "markets": BTC, "data": str(path)})
    clock.run_until(2**62)
    assert venue.malformed == 1 and venue.finished
    assert [t[1:4] for t in sink.trades] == [(10000, 100_000_000, Side.SELL)]


def test_kraken_trades_that_are_not_json_or_not_objects_are_skipped_and_counted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "k.jsonl"
    good: dict[str, Any] = {
        "channel": "trade",
        "data": [{"symbol": "BTC/USD", "price": 100.1, "qty": 0.5}],
    }
    good["data"][0]["side"] = "buy"
    with RecordingWriter(path) as writer:
        writer.write("kraken", "ws", '{"channel":"trade","data":[{"symbol"', t_ns=T0)
        writer.write("kraken", "ws", '{"channel":"trade","data":{"a":1}}', t_ns=T0 + 1)
        writer.write("kraken", "ws", '{"channel":"trade","data":[7]}', t_ns=T0 + 2)
        writer.write("kraken", "ws", json.dumps(good, separators=(",", ":")), t_ns=T0 + 3)
    markets = {"BTC/USD": {"tick_size": "0.1", "lot_size": "0.00000001"}}
    params = {"protocol": "kraken_v2", "markets": markets, "data": str(path)}
    venue, clock, sink = make_venue(params)
    clock.run_until(2**62)
    assert venue.malformed == 3 and venue.finished
    assert [t[1:4] for t in sink.trades] == [(1001, 50_000_000, Side.BUY)]


def test_a_backtest_whose_recording_breaks_off_exits_1_and_says_it_is_partial(
    tmp_path: Path,
) -> None:
    """A recording damaged half-way stops the replay: `quoteforge run` keeps the partial
    results (summary, trace) but exits 1, and run.json says what broke off, so a script
    that checks exit codes never takes a partial backtest for a whole one; the same
    recording whole exits 0."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    damaged = tmp_path / "damaged.jsonl"
    half = len(lines) // 2
    damaged.write_text("".join(lines[:half]) + "not a recording line\n" + "".join(lines[half:]))

    def backtest(data: Path, out: Path) -> subprocess.CompletedProcess[str]:
        sets = [f"exchanges.binance.params.data={data}", "report.html=false", "report.png=false"]
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "quoteforge.cli",
                "run",
                str(ROOT / "examples" / "backtest.yaml"),
            ]
            + [arg for s in sets for arg in ("--set", s)]
            + ["--out", str(out), "--quiet"],
            capture_output=True,
            text=True,
            timeout=300,
        )

    broken = backtest(damaged, tmp_path / "broken")
    assert broken.returncode == 1, broken.stderr[-2000:]
    assert "replay stopped" in broken.stderr
    info = json.loads((tmp_path / "broken" / "run.json").read_text(encoding="utf-8"))
    assert info["finished_at"]
    assert info["incomplete"].startswith("binance: recording unreadable: ")
    assert f"damaged.jsonl:{half + 1}" in info["incomplete"]
    assert (tmp_path / "broken" / "summary.csv").exists()

    whole = backtest(SAMPLE, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    info = json.loads((tmp_path / "whole" / "run.json").read_text(encoding="utf-8"))
    assert "incomplete" not in info and info["stop_reason"] == "binance: end of recorded data"
