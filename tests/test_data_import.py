"""``quoteforge data import``: hftbacktest collector files (real Binance bytes) and
Tardis.dev CSV (a sample written from its documentation) converted into recordings that
replay through the venue's own book rules in a backtest."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from quoteforge.book import BookState
from quoteforge.book.l2 import L2Book
from quoteforge.cli import main
from quoteforge.engine import Run, run_manifest
from quoteforge.exchanges.binance.book import BinanceFuturesBookSource, BinanceSpotBookSource
from quoteforge.exchanges.recording import read_recording
from quoteforge.exchanges.replay import ReplayExchange
from quoteforge.manifest import load_manifest
from quoteforge.model import Instrument
from quoteforge.plugins.data_import import DataImportError, import_recording, read_hftbacktest
from quoteforge.registry import PluginRegistry

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SPOT_HFT = FIXTURES / "real" / "binance" / "spot_btcusdt_20240808.gz"
USDM_HFT = FIXTURES / "real" / "binance" / "usdm_ethusdt_20240808.gz"
TARDIS = FIXTURES / "tardis"
SPOT_TARDIS = [
    TARDIS / "binance_BTCUSDT_incremental_book_L2.csv",
    TARDIS / "binance_BTCUSDT_trades.csv",
]
USDM_TARDIS = [
    TARDIS / "binance-futures_ETHUSDT_incremental_book_L2.csv",
    TARDIS / "binance-futures_ETHUSDT_trades.csv",
]


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


def backtest(
    registry: PluginRegistry,
    tmp_path: Path,
    data: Path,
    *,
    protocol: str,
    symbol: str,
    tick: str,
    step: str,
    order_size: float,
    spread_bps: float,
) -> tuple[Run, Path]:
    """Pure market making over ``data``; the run and its folder."""
    manifest = {
        "run": {
            "name": "imported",
            "mode": "backtest",
            "seed": 3,
            "data": str(data),
            "duration": None,  # to the end of the recording
        },
        "exchanges": {
            "venue": {
                "type": "replay",
                "params": {
                    "protocol": protocol,
                    # The order step the venue publishes; the recording is read at
                    # the protocol's precision (Binance: 8 decimals).
                    "markets": {symbol: {"tick_size": tick, "qty_step": step}},
                    "maker_fee_bps": 0,
                    "latency": {"market_data_ms": 2, "order_ms": 4, "jitter_ms": 0},
                },
            }
        },
        "strategies": {
            "mm": {
                "type": "pure_market_making",
                "exchange": "venue",
                "symbols": symbol,
                "params": {
                    "spread_bps": spread_bps,
                    "levels": 1,
                    "order_size": order_size,
                    "refresh_tolerance_bps": spread_bps / 4,
                    "inventory_limit": order_size * 20,
                },
            }
        },
        "execution": {"type": "minimal_diff"},
        "report": {"html": False, "png": False},
    }
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    loaded = load_manifest(path, registry, overrides=["run.watch_manifest=false"])
    run_dir = tmp_path / "run"
    run = asyncio.run(run_manifest(loaded, registry, run_dir=run_dir, install_signals=False))
    return run, run_dir


def feed(source: Any, recording: Path) -> None:
    """Every snapshot and depth message of ``recording`` into a book source."""
    for record in read_recording(recording):
        if record.stream.startswith("rest:"):
            source.on_snapshot(record.raw)
        elif "@depth" in record.stream:
            source.on_message(record.raw)


def trace(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    if kind == "fill":
        return [r for r in rows if r["type"] == "fill"]
    return [r for r in rows if r.get("event") == kind]


# -- hftbacktest ------------------------------------------------------------------------------
# The full shared recordings (about six minutes each), when the shared data folder sits
# beside the repository, as it does in CI: (file, protocol, symbol, tick, step Binance
# publishes, order size, spread in bps).
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hftbacktest-binance"
FULL = [
    ("spot_btcusdt_20240808.gz", "binance_spot", "BTC/USDT", "0.01", "0.00001", 0.01, 1.0),
    ("spot_ethusdt_20240808.gz", "binance_spot", "ETH/USDT", "0.01", "0.0001", 0.1, 1.0),
    ("usdm_ethusdt_20240808.gz", "binance_futures", "ETH/USDT", "0.01", "0.001", 0.5, 0.5),
]


@pytest.mark.parametrize("case", FULL, ids=[c[0].split(".")[0] for c in FULL])
def test_the_full_shared_recordings_backtest_live_to_the_end_with_fills(
    registry: PluginRegistry, tmp_path: Path, case: tuple[Any, ...]
) -> None:
    """Whole recordings the unit tests never saw, markets set only by what Binance
    publishes: each book goes LIVE on its first snapshot and stays LIVE to the end of
    the data, and our quotes fill."""
    name, protocol, symbol, tick, step, size, spread = case
    source = SHARED / name
    if not source.is_file():
        message = f"{source} is not here (the shared data folder sits beside the repository)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)  # CI always has it: a missing recording is a broken run
        pytest.skip(message)
    out = tmp_path / "full.jsonl.gz"
    report = import_recording("hftbacktest", [source], out, keep=["depth", "trade"], progress=False)
    assert report.records > 5_000  # depth and trades of about six minutes
    run, run_dir = backtest(
        registry,
        tmp_path,
        out,
        protocol=protocol,
        symbol=symbol,
        tick=tick,
        step=step,
        order_size=size,
        spread_bps=spread,
    )
    venue = run.venues["venue"]
    assert isinstance(venue, ReplayExchange)
    assert run.stop_reason == "venue: end of recorded data"
    assert venue.malformed == 0
    states = [s["detail"] for s in trace(run_dir, "book_state")]
    assert len(states) == 1 and states[0].startswith("SYNCING->LIVE")
    assert len(trace(run_dir, "fill")) > 0


def test_hftbacktest_spot_keeps_the_venue_bytes_and_names_the_snapshot(tmp_path: Path) -> None:
    out = tmp_path / "btc.jsonl"
    report = import_recording("hftbacktest", [SPOT_HFT], out, progress=False)
    records = list(read_recording(out))
    source = _lines(SPOT_HFT)
    assert report.records == len(records) == len(source)
    assert report.streams == {
        "@depth@100ms": sum('"btcusdt@depth@100ms"' in line for line in source),
        "@trade": sum('"btcusdt@trade"' in line for line in source),
        "@bookTicker": sum('"btcusdt@bookTicker"' in line for line in source),
        "rest:/api/v3/depth": 1,
    }
    for line, record in zip(source, records, strict=True):
        stamp, _, payload = line.partition(" ")
        assert record.t_ns == int(stamp)
        assert record.venue == "binance"
        if record.stream.startswith("rest:"):
            assert record.stream == "rest:/api/v3/depth?symbol=BTCUSDT"
            assert record.raw == payload
        else:
            # The data object's text, byte for byte as the venue sent it.
            assert payload == '{"stream":"' + record.stream + '","data":' + record.raw + "}"


def test_hftbacktest_usdm_snapshot_is_the_futures_endpoint_and_keep_drops_tickers(
    tmp_path: Path,
) -> None:
    out = tmp_path / "eth.jsonl.gz"
    report = import_recording(
        "hftbacktest", [USDM_HFT], out, keep=["depth", "trade"], progress=False
    )
    streams = {r.stream for r in read_recording(out)}
    assert streams == {"ethusdt@depth@0ms", "ethusdt@trade", "rest:/fapi/v1/depth?symbol=ETHUSDT"}
    tickers = sum('"ethusdt@bookTicker"' in line for line in _lines(USDM_HFT))
    assert tickers > 0
    assert report.ignored == tickers
    assert report.records + tickers == len(_lines(USDM_HFT))


def test_real_usdm_bytes_keep_a_futures_book_live_from_the_snapshot_on(tmp_path: Path) -> None:
    """The converted stream drives the futures book source: one bridge, then every
    event chains on ``pu`` (no resync on what the venue really sent)."""
    out = tmp_path / "eth.jsonl"
    import_recording("hftbacktest", [USDM_HFT], out, progress=False)
    inst = Instrument(
        "v", "ETH/USDT", "ETH", "USDT", tick_size=Decimal("0.01"), lot_size=Decimal("0.001")
    )
    source = BinanceFuturesBookSource(inst)
    feed(source, out)
    assert source.book.state is BookState.LIVE
    assert source.stats.gaps == 0
    assert source.stats.applied > 100


@pytest.mark.parametrize(
    ("source", "protocol", "symbol", "step", "size", "spread"),
    [
        # Real spot levels carry 8 decimals, finer than the 0.00001 order step.
        (SPOT_HFT, "binance_spot", "BTC/USDT", "0.00001", 0.01, 1.0),
        (USDM_HFT, "binance_futures", "ETH/USDT", "0.001", 0.5, 0.5),
    ],
    ids=["spot", "usdm"],
)
def test_hftbacktest_round_trips_through_a_backtest_with_fills(
    registry: PluginRegistry,
    tmp_path: Path,
    source: Path,
    protocol: str,
    symbol: str,
    step: str,
    size: float,
    spread: float,
) -> None:
    out = tmp_path / "data.jsonl.gz"
    import_recording("hftbacktest", [source], out, keep=["depth", "trade"], progress=False)
    run, run_dir = backtest(
        registry,
        tmp_path,
        out,
        protocol=protocol,
        symbol=symbol,
        tick="0.01",
        step=step,
        order_size=size,
        spread_bps=spread,
    )
    venue = run.venues["venue"]
    assert isinstance(venue, ReplayExchange)
    assert run.stop_reason == "venue: end of recorded data"
    assert venue.records == sum(1 for _ in read_recording(out))
    assert venue.malformed == 0 and venue.unrouted == 0
    states = [s["detail"] for s in trace(run_dir, "book_state")]
    assert len(states) == 1 and states[0].startswith("SYNCING->LIVE")
    assert len(trace(run_dir, "fill")) > 0


def test_read_hftbacktest_gives_the_records_for_other_readers() -> None:
    records = list(read_hftbacktest(SPOT_HFT))
    assert len(records) == len(_lines(SPOT_HFT))
    assert sum(r.stream.startswith("rest:") for r in records) == 1


def test_a_snapshot_before_any_stream_message_waits_for_the_symbol(tmp_path: Path) -> None:
    lines = _lines(SPOT_HFT)
    snap = next(line for line in lines if "lastUpdateId" in line)
    first_stream = lines[0]
    stamp = int(first_stream.partition(" ")[0])
    src = tmp_path / "collector.txt"
    early = f"{stamp - 1} {snap.partition(' ')[2]}"
    src.write_text(f"{early}\n{first_stream}\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    import_recording("hftbacktest", [src], out, progress=False)
    got = [(r.t_ns, r.stream) for r in read_recording(out)]
    assert got == [
        (stamp - 1, "rest:/api/v3/depth?symbol=BTCUSDT"),
        (stamp, "btcusdt@depth@100ms"),
    ]


# -- Tardis -------------------------------------------------------------------------------------


def _csv_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()[1:]]


def test_tardis_snapshot_rows_become_one_rest_snapshot_and_updates_chain(tmp_path: Path) -> None:
    out = tmp_path / "btc.jsonl"
    report = import_recording("tardis", SPOT_TARDIS, out, progress=False)
    records = list(read_recording(out))
    book_rows = _csv_rows(SPOT_TARDIS[0])
    before = [r for r in book_rows if r[3] < book_rows[2][3]]  # rows ahead of the snapshot
    assert len(before) == 2 and report.ignored == 2  # the docs: skip until the first snapshot
    snaps = [r for r in records if r.stream.startswith("rest:")]
    assert [s.stream for s in snaps] == ["rest:/api/v3/depth?symbol=BTCUSDT"]
    snap = json.loads(snaps[0].raw)
    rows = [r for r in book_rows if r[4] == "true"]
    assert snap["bids"] == sorted(
        ([r[6], r[7]] for r in rows if r[5] == "bid"), key=lambda x: -float(x[0])
    )
    assert snap["asks"] == sorted(
        ([r[6], r[7]] for r in rows if r[5] == "ask"), key=lambda x: float(x[0])
    )
    diffs = [json.loads(r.raw) for r in records if r.stream == "btcusdt@depth"]
    updates = {r[3] for r in book_rows if r[4] == "false"} - {r[3] for r in before}
    assert len(diffs) == len(updates)  # one event per local_timestamp group
    assert diffs[0]["U"] == snap["lastUpdateId"] + 1
    assert all(b["U"] == a["u"] + 1 for a, b in itertools.pairwise(diffs))
    trades = [json.loads(r.raw) for r in records if r.stream == "btcusdt@trade"]
    trade_rows = _csv_rows(SPOT_TARDIS[1])
    assert [(t["p"], t["q"], t["m"]) for t in trades] == [
        (r[6], r[7], r[5] == "sell") for r in trade_rows
    ]
    times = [r.t_ns for r in records]
    assert times == sorted(times)


def test_tardis_usdm_events_bridge_the_futures_snapshot(tmp_path: Path) -> None:
    out = tmp_path / "eth.jsonl"
    import_recording("tardis", USDM_TARDIS, out, progress=False)
    records = list(read_recording(out))
    assert records[0].stream == "rest:/fapi/v1/depth?symbol=ETHUSDT"
    inst = Instrument(
        "v", "ETH/USDT", "ETH", "USDT", tick_size=Decimal("0.01"), lot_size=Decimal("0.001")
    )
    source = BinanceFuturesBookSource(inst)
    applied = 0
    for record in records:
        if record.stream.startswith("rest:"):
            source.on_snapshot(record.raw)
        elif record.stream.endswith("@depth"):
            source.on_message(record.raw)
            applied += 1
    assert source.book.state is BookState.LIVE
    assert source.stats.gaps == 0 and source.stats.applied == applied


@pytest.mark.parametrize(
    ("files", "protocol", "symbol", "step", "size"),
    [
        (SPOT_TARDIS, "binance_spot", "BTC/USDT", "0.00001", 0.01),
        (USDM_TARDIS, "binance_futures", "ETH/USDT", "0.001", 0.5),
    ],
    ids=["spot", "usdm"],
)
def test_tardis_round_trips_through_a_backtest_with_fills(
    registry: PluginRegistry,
    tmp_path: Path,
    files: list[Path],
    protocol: str,
    symbol: str,
    step: str,
    size: float,
) -> None:
    out = tmp_path / "data.jsonl"
    report = import_recording("tardis", files, out, progress=False)
    run, run_dir = backtest(
        registry,
        tmp_path,
        out,
        protocol=protocol,
        symbol=symbol,
        tick="0.01",
        step=step,
        order_size=size,
        spread_bps=0.01,
    )
    venue = run.venues["venue"]
    assert isinstance(venue, ReplayExchange)
    assert venue.records == report.records and venue.malformed == 0
    states = [s["detail"] for s in trace(run_dir, "book_state")]
    assert len(states) == 1 and states[0].startswith("SYNCING->LIVE")
    assert len(trace(run_dir, "fill")) > 0


def test_a_new_snapshot_in_the_middle_replaces_the_book(tmp_path: Path) -> None:
    """A reconnect in the Tardis file: the second snapshot is a new REST snapshot and
    the book is exactly its levels afterwards (old levels gone)."""
    head = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n"
    rows = [
        "binance,BTCUSDT,1000,1000,true,bid,100.00,1",
        "binance,BTCUSDT,1000,1000,true,ask,101.00,1",
        "binance,BTCUSDT,2000,2000,false,bid,99.00,2",
        "binance,BTCUSDT,3000,3000,true,bid,98.00,3",
        "binance,BTCUSDT,3000,3000,true,ask,102.00,4",
        "binance,BTCUSDT,4000,4000,false,ask,103.00,5",
    ]
    src = tmp_path / "book.csv"
    src.write_text(head + "\n".join(rows) + "\n")
    out = tmp_path / "o.jsonl"
    import_recording("tardis", [src], out, progress=False)
    inst = Instrument(
        "v", "BTC/USDT", "BTC", "USDT", tick_size=Decimal("0.01"), lot_size=Decimal("0.00000001")
    )
    source = BinanceSpotBookSource(inst)
    feed(source, out)
    book: L2Book = source.book
    assert book.state is BookState.LIVE and source.stats.gaps == 0
    lots = 100_000_000
    assert book.top(book_side("buy"), 10) == [(inst.price_to_ticks("98.00"), 3 * lots)]
    assert book.top(book_side("sell"), 10) == [
        (inst.price_to_ticks("102.00"), 4 * lots),
        (inst.price_to_ticks("103.00"), 5 * lots),
    ]


def book_side(name: str) -> Any:
    from quoteforge.model import Side

    return Side.BUY if name == "buy" else Side.SELL


def test_tardis_exponent_numbers_are_written_as_plain_decimals(tmp_path: Path) -> None:
    src = tmp_path / "trades.csv"
    src.write_text(
        "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
        "binance,BTCUSDT,1000,1500,7,buy,61000.5,1e-05\n"
    )
    out = tmp_path / "o.jsonl"
    import_recording("tardis", [src], out, progress=False)
    (record,) = list(read_recording(out))
    msg = json.loads(record.raw)
    assert (msg["p"], msg["q"], msg["m"], msg["t"]) == ("61000.5", "0.00001", False, 7)
    assert record.t_ns == 1_500_000


# -- errors: nothing half written -------------------------------------------------------------


def test_a_malformed_line_names_file_and_line_and_writes_nothing(tmp_path: Path) -> None:
    lines = _lines(SPOT_HFT)[:20]
    lines[11] = "1723161254 {not json"
    src = tmp_path / "bad.txt"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataImportError, match=rf"{src}:12: the message is not JSON .*expected"):
        import_recording("hftbacktest", [src], out, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [src]  # no temporary file left behind


def test_an_existing_output_is_kept_when_the_import_fails(tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text(
        "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
        "binance,BTCUSDT,1000,1500,7,unknown,61000.5,0.1\n"
    )
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    with pytest.raises(DataImportError, match=rf"{src}:2: side must be buy or sell"):
        import_recording("tardis", [src], out, progress=False)
    assert out.read_text() == "previous\n"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("binance,BTCUSDT,1000,x,false,bid,1,1", "local_timestamp must be microseconds"),
        ("binance,BTCUSDT,1000,1000,maybe,bid,1,1", "is_snapshot must be true or false"),
        ("binance,BTCUSDT,1000,1000,false,buy,1,1", "side must be bid or ask"),
        ("binance,BTCUSDT,1000,1000,false,bid,abc,1", "price must be a decimal number"),
        ("binance,BTCUSDT,1000,1000,false,bid,1", "expected 8 comma-separated fields"),
        ("kraken,XBTUSD,1000,1000,false,bid,1,1", "exchange 'kraken' is not supported"),
    ],
)
def test_tardis_bad_rows_say_what_was_expected(tmp_path: Path, row: str, expected: str) -> None:
    src = tmp_path / "book.csv"
    src.write_text(
        "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n"
        "binance,BTCUSDT,900,900,true,bid,1,1\n" + row + "\n"
    )
    with pytest.raises(DataImportError, match=rf"{src}:3: {expected}"):
        import_recording("tardis", [src], tmp_path / "o.jsonl", progress=False)


def test_a_file_that_is_not_tardis_csv_is_refused_by_its_header(tmp_path: Path) -> None:
    src = tmp_path / "x.csv"
    src.write_text("time,price\n1,2\n")
    with pytest.raises(DataImportError, match=rf"{src}:1: expected a Tardis CSV header"):
        import_recording("tardis", [src], tmp_path / "o.jsonl", progress=False)


def test_skip_bad_lines_counts_and_reports_them(tmp_path: Path) -> None:
    lines = _lines(SPOT_HFT)[:30]
    lines[4] = "garbage"
    lines[9] = "17231612 []"
    src = tmp_path / "bad.txt"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    report = import_recording("hftbacktest", [src], out, skip_bad_lines=True, progress=False)
    assert report.bad_lines == 2
    assert report.records == 28 == sum(1 for _ in read_recording(out))
    assert report.bad_examples[0].startswith(f"{src}:5: expected")
    assert report.bad_examples[1].startswith(f"{src}:10: the message must be a JSON object")
    assert "2 bad lines skipped" in report.summary()


# -- command line ---------------------------------------------------------------------------------


def test_cli_imports_and_prints_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.jsonl.gz"
    code = main(["data", "import", "tardis", *map(str, SPOT_TARDIS), "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"to {out}" in printed.out and "rest:/api/v3/depth: 1" in printed.out
    assert printed.err == ""  # no progress bar without a terminal
    assert sum(1 for _ in read_recording(out)) > 100


def test_cli_error_is_one_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.txt"
    src.write_text("not a line\n")
    out = tmp_path / "o.jsonl"
    code = main(["data", "import", "hftbacktest", str(src), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{src}:1: expected" in err and "nothing written" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_cli_refuses_an_unknown_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["data", "import", "lobster", "x.csv", "--out", "o.jsonl"])
    assert exc.value.code == 2
    assert "invalid choice: 'lobster'" in capsys.readouterr().err


def test_a_combined_message_in_another_key_order_keeps_its_data(tmp_path: Path) -> None:
    """The payload is cut out of the envelope's text only when that gives exactly the
    ``data`` object; any other layout is re-encoded with the same values."""
    src = tmp_path / "collector.txt"
    src.write_text(
        '5 {"stream":"btcusdt@trade","data":{"e":"trade","p":"1.00"},"extra":1}\n'
        '6 {"data":{"e":"trade","p":"2.00"},"stream":"btcusdt@trade"}\n'
    )
    out = tmp_path / "o.jsonl"
    import_recording("hftbacktest", [src], out, progress=False)
    assert [(r.t_ns, r.stream, r.raw) for r in read_recording(out)] == [
        (5, "btcusdt@trade", '{"e":"trade","p":"1.00"}'),
        (6, "btcusdt@trade", '{"e":"trade","p":"2.00"}'),
    ]
