"""Kraken websocket v2 book channel: depth truncation and the CRC32 checksum."""

from __future__ import annotations

import json
import zlib
from decimal import Decimal
from typing import Any

import pytest
from book_helpers import fixture_lines, fixture_text

from quoteforge.book import BookMessageError, BookState, Outcome
from quoteforge.exchanges.kraken.book import KrakenBookSource, kraken_checksum
from quoteforge.model import Instrument, Side


def reference_checksum(bids: dict[str, str], asks: dict[str, str]) -> int:
    """Kraken's documented rule, spelled out independently of the implementation."""

    def fmt(text: str) -> str:
        return text.replace(".", "").lstrip("0")

    top_asks = sorted(asks.items(), key=lambda kv: Decimal(kv[0]))[:10]
    top_bids = sorted(bids.items(), key=lambda kv: -Decimal(kv[0]))[:10]
    text = "".join(fmt(p) + fmt(q) for p, q in top_asks + top_bids)
    return zlib.crc32(text.encode())


def test_documented_example_checksum(kraken_btcusd: Instrument) -> None:
    source = KrakenBookSource(kraken_btcusd, stale_after_ms=None)
    raw = fixture_text("kraken", "book_snapshot.json")
    assert source.on_message(raw, 0) is Outcome.APPLIED
    assert source.checksum() == 3310070434
    assert source.state is BookState.LIVE
    # Trailing zeros count: "0.10000000" is 10000000 in the checksum, not 1.
    assert source.book.best_bid() == (452835, 10_000_000)
    entry = json.loads(raw, parse_float=str)["data"][0]
    asks = [(a["price"], a["qty"]) for a in entry["asks"]]
    bids = [(b["price"], b["qty"]) for b in entry["bids"]]
    assert kraken_checksum(asks, bids) == 3310070434


def test_update_stream_keeps_every_checksum_and_the_final_book(
    kraken_btcusd: Instrument,
) -> None:
    source = KrakenBookSource(kraken_btcusd, depth=10, stale_after_ms=None)
    lines = fixture_lines("kraken", "book_updates.jsonl")
    wire_bids: dict[str, str] = {}
    wire_asks: dict[str, str] = {}
    for raw in lines:
        assert source.on_message(raw, 0) is Outcome.APPLIED
        entry = json.loads(raw, parse_float=str)["data"][0]
        if json.loads(raw)["type"] == "snapshot":
            wire_bids.clear()
            wire_asks.clear()
        for levels, side in ((entry["bids"], wire_bids), (entry["asks"], wire_asks)):
            for level in levels:
                key = str(Decimal(level["price"]))
                if Decimal(level["qty"]):
                    side[key] = level["qty"]
                else:
                    side.pop(key, None)
        # Levels pushed out of the subscribed depth are not announced: cut locally.
        for side, best_first in ((wire_bids, True), (wire_asks, False)):
            keep = sorted(side, key=Decimal, reverse=best_first)[:10]
            for key in list(side):
                if key not in keep:
                    del side[key]
        assert entry["checksum"] == reference_checksum(wire_bids, wire_asks)
        assert source.book.depth(Side.BUY) <= 10 and source.book.depth(Side.SELL) <= 10
    assert source.stats.checksum_failures == 0
    final = json.loads(fixture_text("kraken", "book_final.json"))
    inst = source.book.instrument
    for book_side, name in ((Side.BUY, "bids"), (Side.SELL, "asks")):
        levels = source.book.levels(book_side)
        got = [(inst.ticks_to_price(p), inst.lots_to_qty(q)) for p, q in levels]
        assert got == [(Decimal(p), Decimal(q)) for p, q in final[name]]


def test_corrupted_checksum_resyncs_until_the_next_snapshot(kraken_btcusd: Instrument) -> None:
    asked: list[str] = []
    seen: list[tuple[BookState, BookState]] = []
    source = KrakenBookSource(
        kraken_btcusd, stale_after_ms=None, on_resync=lambda s, why: asked.append(why)
    )
    source.add_observer(lambda book, old, new, why: seen.append((old, new)))
    lines = fixture_lines("kraken", "book_updates.jsonl")
    source.on_message(lines[0], 0)
    source.on_message(lines[1], 0)
    bad = json.loads(lines[2])
    bad["data"][0]["checksum"] = (bad["data"][0]["checksum"] + 1) % (1 << 32)
    assert source.on_message(json.dumps(bad), 0) is Outcome.RESYNC
    assert source.state is BookState.RESYNCING and source.needs_snapshot
    assert "checksum mismatch" in asked[-1]
    assert source.stats.checksum_failures == 1
    # Updates cannot be trusted until Kraken sends a fresh snapshot (resubscribe).
    assert source.on_message(lines[3], 0) is Outcome.DROPPED
    assert source.on_message(lines[0], 0) is Outcome.APPLIED
    assert source.state is BookState.LIVE
    assert seen == [
        (BookState.SYNCING, BookState.LIVE),
        (BookState.LIVE, BookState.RESYNCING),
        (BookState.RESYNCING, BookState.LIVE),
    ]


def test_a_level_value_that_differs_from_the_wire_text_is_caught(
    kraken_btcusd: Instrument,
) -> None:
    source = KrakenBookSource(kraken_btcusd, stale_after_ms=None)
    raw = fixture_text("kraken", "book_snapshot.json")
    # Same number, different text: the checksum covers the digits Kraken sent.
    assert source.on_message(raw.replace('"qty":0.00100000', '"qty":0.001'), 0) is (Outcome.RESYNC)


def test_depth_truncation_drops_levels_that_fall_out(kraken_btcusd: Instrument) -> None:
    source = KrakenBookSource(kraken_btcusd, depth=10, verify_checksum=False, stale_after_ms=None)
    source.on_message(fixture_text("kraken", "book_snapshot.json"), 0)
    worst_bid = source.book.top(Side.BUY, 10)[-1][0]
    update = {
        "channel": "book",
        "type": "update",
        "data": [
            {
                "symbol": "BTC/USD",
                "bids": [{"price": "45284.0", "qty": "1.00000000"}],
                "asks": [],
                "timestamp": "2023-10-06T17:35:55.440295Z",
            }
        ],
    }
    assert source.on_message(json.dumps(update), 0) is Outcome.APPLIED
    assert source.book.depth(Side.BUY) == 10
    assert source.book.lots_at(Side.BUY, worst_bid) == 0
    assert source.book.best_bid() == (452840, 100_000_000)
    assert source.book.ts_ns == 1696613755440295000


def test_control_messages_and_other_symbols_are_ignored(kraken_btcusd: Instrument) -> None:
    source = KrakenBookSource(kraken_btcusd, stale_after_ms=None)
    for raw in fixture_lines("kraken", "control_messages.jsonl"):
        assert source.on_message(raw, 0) is Outcome.IGNORED
    other = fixture_text("kraken", "book_snapshot.json").replace("BTC/USD", "ETH/USD")
    assert source.on_message(other, 0) is Outcome.IGNORED
    assert source.state is BookState.SYNCING


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.update(bids=[{"price": 1.0}]), "bad level"),
        (lambda e: e.update(asks=[{"price": "45290.25", "qty": "1.0"}]), "writes at most 1"),
        (lambda e: e.update(asks=[{"price": "45290.2", "qty": "1e-05"}]), "exponent"),
        (lambda e: e.update(asks="none"), "must be a list"),
        (lambda e: e.update(checksum="x"), "checksum"),
        (lambda e: e.pop("checksum"), "without its 'checksum'"),
        (lambda e: e.update(checksum=None), "without its 'checksum'"),
        (lambda e: e.update(timestamp="yesterday"), "RFC 3339"),
    ],
)
def test_malformed_update_raises_and_leaves_the_book_unchanged(
    kraken_btcusd: Instrument, mutate: Any, message: str
) -> None:
    source = KrakenBookSource(kraken_btcusd, stale_after_ms=None)
    source.on_message(fixture_text("kraken", "book_snapshot.json"), 0)
    before = list(source.book.levels(Side.BUY)), list(source.book.levels(Side.SELL))
    entry: dict[str, Any] = {
        "symbol": "BTC/USD",
        "bids": [{"price": "45283.5", "qty": "0.20000000"}],
        "asks": [],
        "checksum": 1,
    }
    mutate(entry)
    raw = json.dumps({"channel": "book", "type": "update", "data": [entry]})
    with pytest.raises(BookMessageError, match=message):
        source.on_message(raw, 0)
    assert (list(source.book.levels(Side.BUY)), list(source.book.levels(Side.SELL))) == before
    # An update that cannot be read leaves a hole: resubscribe for a fresh snapshot.
    assert source.state is BookState.RESYNCING and source.needs_snapshot
    assert source.stats.malformed == 1 and source.stats.resyncs == 1


def test_unknown_depth_is_refused(kraken_btcusd: Instrument) -> None:
    with pytest.raises(ValueError, match="depth must be one of"):
        KrakenBookSource(kraken_btcusd, depth=20)
