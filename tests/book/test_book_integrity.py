"""What the venues cannot check for us: crossed books, implausible update ids, frozen
streams and messages that cannot be read. Each case was once accepted into a LIVE book
(or escaped the source); now it is a desync: RESYNCING and a fresh snapshot."""

from __future__ import annotations

import json
from typing import Any

import pytest
from book_helpers import fixture_text

from quoteforge.book import BookMessageError, BookState, Outcome
from quoteforge.exchanges.binance import book as binance
from quoteforge.exchanges.binance.book import BinanceFuturesBookSource, BinanceSpotBookSource
from quoteforge.exchanges.kraken.book import KrakenBookSource
from quoteforge.model import Instrument, Side

MS = 1_000_000
SNAPSHOT = {
    "lastUpdateId": 100,
    "bids": [["99.00000000", "1.00000000"], ["98.00000000", "2.00000000"]],
    "asks": [["101.00000000", "1.50000000"], ["102.00000000", "2.50000000"]],
}


class Log:
    def __init__(self) -> None:
        self.resyncs: list[str] = []

    def __call__(self, source: Any, reason: str) -> None:
        self.resyncs.append(reason)


def spot(instrument: Instrument, **kwargs: Any) -> tuple[BinanceSpotBookSource, Log]:
    log = Log()
    kwargs.setdefault("stale_after_ms", None)
    return BinanceSpotBookSource(instrument, on_resync=log, **kwargs), log


def event(first: int, final: int, bids: Any = (), asks: Any = (), **extra: Any) -> str:
    body = {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": first, "u": final}
    body.update(b=[list(level) for level in bids], a=[list(level) for level in asks], **extra)
    return json.dumps(body)


def levels(book: Any) -> tuple[list[Any], list[Any]]:
    return list(book.levels(Side.BUY)), list(book.levels(Side.SELL))


# -- crossed and locked books ------------------------------------------------------------
@pytest.mark.parametrize("bid", ["101.00000000", "101.50000000", "150.00000000"])
def test_a_diff_that_crosses_or_locks_the_book_is_a_desync(btcusdt: Instrument, bid: str) -> None:
    source, log = spot(btcusdt)
    assert source.on_snapshot(SNAPSHOT, 0) is Outcome.APPLIED
    assert source.on_message(event(101, 101, bids=[(bid, "1.00000000")]), 1) is Outcome.RESYNC
    assert source.state is BookState.RESYNCING and source.needs_snapshot
    assert source.stats.crossed == 1 and source.stats.applied == 0
    assert log.resyncs[-1].startswith("book crossed after update u=101: best bid")
    # Until a new snapshot the stream is buffered, not applied to the wrong book.
    assert source.on_message(event(102, 103, asks=[("103.00000000", "1")]), 2) is (Outcome.BUFFERED)
    fresh = {**SNAPSHOT, "lastUpdateId": 102}
    assert source.on_snapshot(fresh, 3) is Outcome.APPLIED
    assert source.state is BookState.LIVE and not source.book.is_crossed()
    assert source.book.lots_at(Side.SELL, 10_300) == 100_000


def test_an_ask_that_crosses_on_the_futures_stream_is_a_desync(btcusdt: Instrument) -> None:
    log = Log()
    source = BinanceFuturesBookSource(btcusdt, on_resync=log, stale_after_ms=None)
    source.on_snapshot(SNAPSHOT, 0)
    raw = event(95, 101, asks=[("98.50000000", "1.00000000")], pu=90)
    assert source.on_message(raw, 1) is Outcome.RESYNC
    assert source.state is BookState.RESYNCING and source.stats.crossed == 1
    assert "best ask 98.5" in log.resyncs[-1]


def test_a_crossed_snapshot_is_not_applied(btcusdt: Instrument) -> None:
    source, log = spot(btcusdt)
    crossed = {**SNAPSHOT, "bids": [["101.00000000", "1.00000000"]]}
    assert source.on_snapshot(crossed, 0) is Outcome.RESYNC
    assert source.state is BookState.SYNCING and source.needs_snapshot
    assert levels(source.book) == ([], [])
    assert "is crossed: best bid 101 >= best ask 101" in log.resyncs[-1]
    assert source.on_snapshot(SNAPSHOT, 1) is Outcome.APPLIED


def test_a_locked_kraken_book_is_a_desync_even_with_its_checksum(
    kraken_btcusd: Instrument,
) -> None:
    log = Log()
    source = KrakenBookSource(kraken_btcusd, on_resync=log, stale_after_ms=None)
    source.on_message(fixture_text("kraken", "book_snapshot.json"), 0)
    assert source.state is BookState.LIVE
    best_ask = source.book.best_ask_ticks()
    assert best_ask is not None
    price = str(kraken_btcusd.ticks_to_price(best_ask))
    # The checksum covers what the venue sends, so a lying venue's message passes it:
    # give the update the checksum of the locked book it makes.
    update: dict[str, Any] = {
        "symbol": "BTC/USD",
        "bids": [{"price": price, "qty": "1.00000000"}],
        "asks": [],
    }
    trial = KrakenBookSource(kraken_btcusd, stale_after_ms=None, verify_checksum=False)
    trial.on_message(fixture_text("kraken", "book_snapshot.json"), 0)
    trial.on_message(json.dumps({"channel": "book", "type": "update", "data": [update]}), 1)
    update["checksum"] = trial.checksum()
    raw = json.dumps({"channel": "book", "type": "update", "data": [update]})
    assert source.on_message(raw, 1) is Outcome.RESYNC
    assert source.state is BookState.RESYNCING and source.stats.crossed == 1
    assert source.stats.checksum_failures == 0
    assert log.resyncs[-1].startswith("book crossed: best bid")


# -- implausible update ids --------------------------------------------------------------
def test_a_huge_update_id_is_a_desync_not_a_frozen_live_book(btcusdt: Instrument) -> None:
    source, log = spot(btcusdt)
    source.on_snapshot(SNAPSHOT, 0)
    before = levels(source.book)
    bogus = event(101, 2**63 - 1, bids=[("99.50000000", "7.00000000")])
    assert source.on_message(bogus, 1) is Outcome.RESYNC
    assert levels(source.book) == before  # not applied
    assert source.last_update_id == 100 and source.stats.implausible_ids == 1
    assert "implausible update id: u=9223372036854775807" in log.resyncs[-1]
    assert source.state is BookState.RESYNCING
    # The real events that follow are kept for the next snapshot, not dropped as covered.
    assert source.on_message(event(101, 102, bids=[("99.00000000", "3.0")]), 2) is (
        Outcome.BUFFERED
    )
    assert source.on_snapshot({**SNAPSHOT, "lastUpdateId": 101}, 3) is Outcome.APPLIED
    assert source.last_update_id == 102 and source.book.lots_at(Side.BUY, 9_900) == 300_000
    assert source.on_message(event(103, 104, asks=[("101.00000000", "0")]), 4) is (Outcome.APPLIED)
    assert source.state is BookState.LIVE


def test_the_id_bound_grows_with_the_time_since_the_last_applied_event(
    btcusdt: Instrument,
) -> None:
    source, _ = spot(btcusdt, max_id_jump=1_000, max_ids_per_second=10_000)
    source.on_snapshot(SNAPSHOT, 0)
    # 1,000 ids at once are plausible, 1,001 are not ...
    assert source.on_message(event(101, 1_100), 0) is Outcome.APPLIED
    assert source.on_message(event(1_101, 2_101), 0) is Outcome.RESYNC
    # ... but two seconds later 21,000 are.
    source.on_snapshot({**SNAPSHOT, "lastUpdateId": 3_000}, 0)
    assert source.on_message(event(3_001, 24_000), 2_000 * MS) is Outcome.APPLIED
    assert source.on_message(event(24_001, 25_002), 2_000 * MS) is Outcome.RESYNC


def test_an_event_far_behind_the_book_is_a_desync(btcusdt: Instrument) -> None:
    source, log = spot(btcusdt, max_id_jump=1_000, max_ids_per_second=0)
    source.on_snapshot({**SNAPSHOT, "lastUpdateId": 1_000_000}, 0)
    # A duplicate just behind the book is dropped as covered ...
    assert source.on_message(event(999_000, 999_500), 1) is Outcome.DROPPED
    # ... but the stream being a million ids behind means the snapshot's id was wrong.
    assert source.on_message(event(5, 6), 2) is Outcome.RESYNC
    assert "ids behind the last applied id 1000000" in log.resyncs[-1]


def test_a_snapshot_far_ahead_of_the_buffered_stream_is_refused(btcusdt: Instrument) -> None:
    source, log = spot(btcusdt)
    assert source.on_message(event(101, 105), 0) is Outcome.BUFFERED
    assert source.on_snapshot({**SNAPSHOT, "lastUpdateId": 2**62}, 1) is Outcome.RESYNC
    assert source.state is BookState.SYNCING and source.stats.implausible_ids == 1
    assert "ids ahead of the newest buffered event (u=105" in log.resyncs[-1]


def test_a_huge_futures_id_with_the_right_pu_is_not_applied(btcusdt: Instrument) -> None:
    source = BinanceFuturesBookSource(btcusdt, stale_after_ms=None)
    source.on_snapshot(SNAPSHOT, 0)
    assert source.on_message(event(95, 105, pu=90), 0) is Outcome.APPLIED
    bogus = event(106, 10**17, bids=[("99.00000000", "5.0")], pu=105)
    assert source.on_message(bogus, 0) is Outcome.RESYNC
    assert source.book.lots_at(Side.BUY, 9_900) == 100_000


def test_id_bounds_are_checked(btcusdt: Instrument) -> None:
    with pytest.raises(ValueError, match="max_id_jump must be an integer"):
        BinanceSpotBookSource(btcusdt, max_id_jump=-1)
    with pytest.raises(ValueError, match="max_ids_per_second must be an integer"):
        BinanceSpotBookSource(btcusdt, max_ids_per_second=2**63)


# -- staleness ---------------------------------------------------------------------------
def test_dropped_messages_do_not_keep_a_book_fresh(btcusdt: Instrument) -> None:
    source, _ = spot(btcusdt, stale_after_ms=1_000)
    source.on_snapshot(SNAPSHOT, 0)
    assert source.on_message(event(101, 102), 100 * MS) is Outcome.APPLIED
    # The stream keeps talking, but only in events the book already covers.
    for t in range(200, 1_400, 100):
        assert source.on_message(event(101, 102), t * MS) is Outcome.DROPPED
        assert source.check_stale(t * MS) is (t > 1_100)
    assert source.state is BookState.STALE
    # An event that chains on is applied and the book is LIVE again.
    assert source.on_message(event(103, 103), 1_400 * MS) is Outcome.APPLIED
    assert source.state is BookState.LIVE


# -- unreadable messages -----------------------------------------------------------------
def test_kraken_json_nested_past_the_decoder_is_a_clear_error_and_a_resync(
    kraken_btcusd: Instrument,
) -> None:
    log = Log()
    source = KrakenBookSource(kraken_btcusd, on_resync=log, stale_after_ms=None)
    source.on_message(fixture_text("kraken", "book_snapshot.json"), 0)
    deep = '{"channel":"book","type":"update","data":' + "[" * 5_000 + "]" * 5_000 + "}"
    with pytest.raises(BookMessageError, match="nested deeper than the decoder goes"):
        source.on_message(deep, 1)
    assert source.state is BookState.RESYNCING and source.stats.malformed == 1
    assert log.resyncs[-1].startswith("unreadable book message")


@pytest.mark.parametrize("decoder", ["orjson", "json"])
def test_binance_json_nested_past_the_decoder_is_a_clear_error_and_a_resync(
    btcusdt: Instrument, decoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if decoder == "json":  # the decoder used where orjson is not installed
        monkeypatch.setattr(binance, "_decode", json.loads)
    source, log = spot(btcusdt)
    source.on_snapshot(SNAPSHOT, 0)
    deep = '{"stream":"btcusdt@depth","data":' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(BookMessageError, match="BTCUSDT"):
        source.on_message(deep, 1)
    assert source.state is BookState.RESYNCING
    assert log.resyncs[-1].startswith("unreadable depth message")


def test_a_malformed_event_while_live_is_a_resync(btcusdt: Instrument) -> None:
    source, log = spot(btcusdt)
    source.on_snapshot(SNAPSHOT, 0)
    with pytest.raises(BookMessageError, match=r"'1_0\.0_0' is not a plain decimal"):
        source.on_message(event(101, 101, bids=[("1_0.0_0", "1.0")]), 1)
    assert source.state is BookState.RESYNCING and source.needs_snapshot
    assert "unreadable depth message" in log.resyncs[-1]
