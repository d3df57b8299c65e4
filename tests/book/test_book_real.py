"""Every Binance book source over real venue traffic (hftbacktest recordings).

The corpus slices under ``tests/fixtures/real/binance/`` always run; the full shared
recordings run too when ``../shared/data`` sits beside the repository. Both book paths
(compiled and interpreted) run each, through the autouse fixture of this folder.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from real_binance import (
    CORPUS,
    RECORDINGS,
    read_lines,
    recording_paths,
    replay,
    source_for,
    spot_instrument,
    usdm_instrument,
)

from quoteforge.book import BookState
from quoteforge.exchanges.binance.book import (
    FUTURES_MAX_ID_JUMP,
    FUTURES_MAX_IDS_PER_SECOND,
    SPOT_MAX_ID_JUMP,
    SPOT_MAX_IDS_PER_SECOND,
)
from quoteforge.model import Side

_RECORDINGS = recording_paths()


def test_the_corpus_is_committed_small_and_gzip() -> None:
    for stem, _market, _symbol in RECORDINGS:
        path = CORPUS / f"{stem}.gz"
        assert path.is_file(), f"{path} is missing"
        assert path.stat().st_size <= 1_100_000, f"{path} is larger than ~1 MB"
        with gzip.open(path, "rt") as f:
            stamp, _, raw = f.readline().partition(" ")
        assert int(stamp) > 1_700_000_000 * 10**9 and json.loads(raw)
    assert (CORPUS / "README.md").read_text().count("MIT") >= 1


@pytest.mark.parametrize(
    ("path", "market", "symbol"),
    [pytest.param(p, m, s, id=i) for i, p, m, s in _RECORDINGS],
)
def test_real_streams_build_the_venue_book(path: Path, market: str, symbol: str) -> None:
    source = source_for(market, symbol, stale_after_ms=None)
    report = replay(path, source)
    assert report.errors == []
    # The only snapshot request is the first one: no false gap, id or crossing alarm.
    assert report.resyncs == ["initial snapshot"]
    stats = source.stats
    assert stats.malformed == stats.gaps == stats.crossed == stats.implausible_ids == 0
    assert stats.resyncs == 0 and stats.dropped == 0 and stats.snapshots == 1
    assert stats.applied > 1000 and source.state is BookState.LIVE
    assert report.crossed_while_live == 0
    # Hundreds of bookTickers name an applied diff's final id: the book shows exactly
    # their best bid and ask, sizes included.
    assert report.ticker_mismatches == []
    assert report.tickers_compared >= 90
    # The id bounds never trip on real traffic, with two orders of magnitude to spare
    # (docs/real-data.md has the measured values).
    jump, rate = (
        (SPOT_MAX_ID_JUMP, SPOT_MAX_IDS_PER_SECOND)
        if market == "spot"
        else (FUTURES_MAX_ID_JUMP, FUTURES_MAX_IDS_PER_SECOND)
    )
    assert 0 < report.max_jump * 100 < jump
    assert 0 < report.max_rate * 100 < rate


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_real_spot_sizes_are_finer_than_the_order_step_and_kept_exactly(symbol: str) -> None:
    """Binance reports book sizes at baseAssetPrecision (8 decimals) although orders go
    on LOT_SIZE stepSize (BTCUSDT 25.42618900 on a 0.00001 step): a book counting in
    order steps would refuse these real levels."""
    instrument = spot_instrument(symbol)
    assert instrument.lot_size < instrument.qty_step
    source = source_for("spot", symbol, stale_after_ms=None)
    checked = 0
    for recv_ns, raw in read_lines(CORPUS / f"spot_{symbol.lower()}_20240808.gz"):
        if raw.startswith('{"lastUpdateId"'):
            source.on_snapshot(raw, recv_ns)
            continue
        if "@depth" not in raw[:40]:
            continue
        outcome = source.on_message(raw, recv_ns)
        data = json.loads(raw)["data"]
        for key, side in (("b", Side.BUY), ("a", Side.SELL)):
            for price, qty in data[key]:
                lots = instrument.qty_to_lots(qty)
                if lots % instrument.step_lots and outcome.value == "applied":
                    held = source.book.lots_at(side, instrument.price_to_ticks(price))
                    assert held == lots, f"{price} {qty}"
                    checked += 1
    assert checked >= 1, "no applied level off the order step in the corpus"


def test_usdm_instrument_follows_the_published_filters() -> None:
    inst = usdm_instrument("ETHUSDT")
    assert (str(inst.tick_size), str(inst.lot_size), str(inst.qty_step)) == (
        "0.01",
        "0.001",
        "0.001",
    )
    eth = spot_instrument("ETHUSDT")
    assert (str(eth.tick_size), str(eth.lot_size), str(eth.qty_step), str(eth.min_notional)) == (
        "0.01",
        "1E-8",
        "0.0001",
        "5",
    )
