"""Binance diff-depth integrity rules, driven by recorded-shape wire payloads."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from typing import Any

import pytest
from book_helpers import ReferenceBook, assert_same_book, fixture_lines, fixture_text
from hypothesis import given, settings
from hypothesis import strategies as st

from quoteforge.book import BookMessageError, BookState, Outcome
from quoteforge.exchanges.binance.book import BinanceFuturesBookSource, BinanceSpotBookSource
from quoteforge.model import Instrument, Side


def events(prefix: str = "depth") -> list[str]:
    return fixture_lines("binance", f"{prefix}_updates.jsonl")


def reference_after(prefix: str, last_id: int) -> ReferenceBook:
    """The reference book: the first snapshot plus every event up to ``last_id``."""
    ref, snap_id = ReferenceBook.from_binance_snapshot(
        fixture_text("binance", f"{prefix}_snapshot.json")
    )
    for raw in events(prefix):
        event = json.loads(raw)
        if snap_id < event["u"] <= last_id:
            ref.apply_binance(event)
    return ref


class Recorder:
    def __init__(self) -> None:
        self.resyncs: list[str] = []
        self.transitions: list[tuple[BookState, BookState, str]] = []

    def on_resync(self, source: Any, reason: str) -> None:
        self.resyncs.append(reason)

    def on_state(self, book: Any, old: BookState, new: BookState, reason: str) -> None:
        self.transitions.append((old, new, reason))


def make(instrument: Instrument, futures: bool = False) -> tuple[BinanceSpotBookSource, Recorder]:
    rec = Recorder()
    cls = BinanceFuturesBookSource if futures else BinanceSpotBookSource
    source = cls(instrument, on_resync=rec.on_resync, stale_after_ms=None)
    source.add_observer(rec.on_state)
    return source, rec


@pytest.mark.parametrize("prefix", ["depth", "futures_depth"])
def test_in_order_stream_with_early_events_builds_the_reference_book(
    btcusdt: Instrument, prefix: str
) -> None:
    source, rec = make(btcusdt, futures=prefix.startswith("futures"))
    raws = events(prefix)
    snapshot = fixture_text("binance", f"{prefix}_snapshot.json")
    snap_id = json.loads(snapshot)["lastUpdateId"]
    # The stream opens first: everything before the snapshot arrives is buffered.
    for raw in raws[:10]:
        assert source.on_message(raw, 1) is Outcome.BUFFERED
    assert rec.resyncs == ["initial snapshot"]
    assert source.needs_snapshot and source.state is BookState.SYNCING
    assert source.on_snapshot(snapshot, 2) is Outcome.APPLIED
    assert source.state is BookState.LIVE and not source.needs_snapshot
    last_buffered = json.loads(raws[9])["u"]
    assert source.last_update_id == last_buffered > snap_id
    assert_same_book(source.book, reference_after(prefix, last_buffered))
    for raw in raws[10:]:
        assert source.on_message(raw, 3) is Outcome.APPLIED
    final = json.loads(raws[-1])["u"]
    assert_same_book(source.book, reference_after(prefix, final))
    # The venue's own later snapshot agrees with what the diffs built.
    ref_final, final_id = ReferenceBook.from_binance_snapshot(
        fixture_text("binance", f"{prefix}_snapshot_final.json")
    )
    assert final_id == final
    assert_same_book(source.book, ref_final)
    assert source.stats.gaps == 0 and source.stats.resyncs == 0
    assert [(t[0], t[1]) for t in rec.transitions] == [(BookState.SYNCING, BookState.LIVE)]


def test_dropped_event_is_a_gap_then_resync_restores_the_reference(btcusdt: Instrument) -> None:
    source, rec = make(btcusdt)
    raws = events()
    source.on_message(raws[0], 0)
    source.on_snapshot(fixture_text("binance", "depth_snapshot.json"))
    for raw in raws[1:12]:
        source.on_message(raw, 0)
    assert source.state is BookState.LIVE
    # Event 12 is lost on the wire.
    outcome = source.on_message(raws[13], 0)
    assert outcome is Outcome.RESYNC
    assert source.state is BookState.RESYNCING and source.needs_snapshot
    assert source.stats.gaps == 1 and source.stats.resyncs == 1
    assert "sequence gap" in rec.resyncs[-1]
    # While resyncing, events are buffered, not applied.
    for raw in raws[14:30]:
        assert source.on_message(raw, 0) is Outcome.BUFFERED
    late = fixture_text("binance", "depth_snapshot_late.json")
    assert source.on_snapshot(late) is Outcome.APPLIED
    assert source.state is BookState.LIVE
    last = json.loads(raws[29])["u"]
    assert_same_book(source.book, reference_after("depth", last))
    for raw in raws[30:]:
        assert source.on_message(raw, 0) is Outcome.APPLIED
    assert_same_book(source.book, reference_after("depth", json.loads(raws[-1])["u"]))
    states = [(old, new) for old, new, _ in rec.transitions]
    assert states == [
        (BookState.SYNCING, BookState.LIVE),
        (BookState.LIVE, BookState.RESYNCING),
        (BookState.RESYNCING, BookState.LIVE),
    ]


def test_snapshot_older_than_the_buffer_asks_for_another(btcusdt: Instrument) -> None:
    source, rec = make(btcusdt)
    raws = events()
    # The stream is only joined at event 10, after the first snapshot's id.
    for raw in raws[10:20]:
        source.on_message(raw, 0)
    outcome = source.on_snapshot(fixture_text("binance", "depth_snapshot.json"))
    assert outcome is Outcome.RESYNC
    assert source.needs_snapshot and source.state is BookState.SYNCING
    assert "older than the first buffered event" in rec.resyncs[-1]
    assert source.book.depth(Side.BUY) == 0  # nothing applied from the old snapshot
    for raw in raws[20:30]:
        source.on_message(raw, 0)
    assert source.on_snapshot(fixture_text("binance", "depth_snapshot_late.json")) is (
        Outcome.APPLIED
    )
    assert_same_book(source.book, reference_after("depth", json.loads(raws[29])["u"]))


def test_duplicate_and_stale_events_are_dropped(btcusdt: Instrument) -> None:
    source, _ = make(btcusdt)
    raws = events()
    source.on_snapshot(fixture_text("binance", "depth_snapshot.json"))
    for raw in raws[5:15]:
        assert source.on_message(raw, 0) is Outcome.APPLIED
    before = list(source.book.levels(Side.BUY)), list(source.book.levels(Side.SELL))
    # Replayed (duplicate) and older (stale) events change nothing and are no gap.
    for raw in [raws[14], raws[10], raws[2]]:
        assert source.on_message(raw, 0) is Outcome.DROPPED
    assert (list(source.book.levels(Side.BUY)), list(source.book.levels(Side.SELL))) == before
    assert source.stats.dropped == 3 and source.stats.gaps == 0
    assert source.state is BookState.LIVE


def test_removing_a_level_that_is_not_in_the_book_is_normal(btcusdt: Instrument) -> None:
    source, _ = make(btcusdt)
    raws = events()
    source.on_snapshot(fixture_text("binance", "depth_snapshot.json"))
    unknown = json.loads(raws[7])
    assert ["64000.00000000", "0.00000000"] in unknown["b"]
    for raw in raws[5:8]:
        assert source.on_message(raw, 0) is Outcome.APPLIED
    assert source.state is BookState.LIVE
    assert source.book.lots_at(Side.BUY, 6_400_000) == 0
    assert_same_book(source.book, reference_after("depth", unknown["u"]))


def test_futures_chain_breaks_on_wrong_pu(btcusdt: Instrument) -> None:
    source, rec = make(btcusdt, futures=True)
    raws = events("futures_depth")
    source.on_snapshot(fixture_text("binance", "futures_depth_snapshot.json"))
    for raw in raws[4:10]:
        assert source.on_message(raw, 0) is Outcome.APPLIED
    broken = json.loads(raws[10])
    broken["pu"] -= 1
    assert source.on_message(json.dumps(broken), 0) is Outcome.RESYNC
    assert "expected pu=" in rec.resyncs[-1]
    assert source.state is BookState.RESYNCING


def test_combined_stream_envelope_and_control_messages(btcusdt: Instrument) -> None:
    source, _ = make(btcusdt)
    source.on_snapshot(fixture_text("binance", "depth_snapshot.json"))
    raw = events()[5]
    wrapped = json.dumps({"stream": "btcusdt@depth", "data": json.loads(raw)})
    assert source.on_message(wrapped, 0) is Outcome.APPLIED
    assert source.on_message('{"result":null,"id":1}', 0) is Outcome.IGNORED
    other = json.loads(events()[6])
    other["s"] = "ETHUSDT"
    assert source.on_message(json.dumps(other), 0) is Outcome.IGNORED


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.pop("U"), "without 'U'"),
        (lambda e: e.update(u="161"), "integer ids"),
        (lambda e: e.update(b=[["65000.001", "1.00000000"]]), "not a multiple of 0.01"),
        (lambda e: e.update(a=[["abc", "1.00000000"]]), "'abc' is not a plain decimal"),
        (lambda e: e.update(a=[["65000.00", "-1.00000000"]]), "no sign"),
        (lambda e: e.update(a=[["1E30", "1.00000000"]]), "'1E30' is not a plain decimal"),
        # The wire rule, one case per way a text can break it.
        (lambda e: e.update(a=[["1_0.0_0", "1.00000000"]]), "no sign, space, underscore"),
        (lambda e: e.update(a=[[" 65000.50", "1.00000000"]]), "not a plain decimal"),
        (lambda e: e.update(a=[["65000.50 ", "1.00000000"]]), "not a plain decimal"),
        (lambda e: e.update(a=[["+65000.50", "1.00000000"]]), "not a plain decimal"),
        (lambda e: e.update(a=[["6.5E+4", "1.00000000"]]), "exponent"),
        (lambda e: e.update(a=[["65000.50", "1e-5"]]), "exponent"),
        (lambda e: e.update(a=[[".50", "1.00000000"]]), "digits on both sides"),
        (lambda e: e.update(a=[["65000.", "1.00000000"]]), "digits on both sides"),
        (lambda e: e.update(a=[["65000.50", "1..0"]]), "at most one point"),
        (lambda e: e.update(a=[["6" * 40, "1.00000000"]]), "40 digits before the point"),
        (lambda e: e.update(a=[["65000.50", "1" * 19]]), "at most 18"),
        (lambda e: e.update(a=[["65000.500000000", "1.0"]]), "9 decimals; the venue writes"),
        (lambda e: e.update(a=[["65000.50", "1.000000000"]]), "9 decimals"),
        (lambda e: e.update(a=[["65000.50", "١.0"]]), "ASCII digits"),
        (lambda e: e.update(b=[["65000.00"]]), "bad level"),
        (lambda e: e.update(b=[[65000.0, "1.0"]]), "must be decimal text"),
        (lambda e: e.update(b=None), "bad level"),
    ],
)
def test_malformed_message_raises_clearly_and_leaves_the_book_unchanged(
    btcusdt: Instrument, mutate: Any, message: str
) -> None:
    source, _ = make(btcusdt)
    source.on_snapshot(fixture_text("binance", "depth_snapshot.json"))
    event = json.loads(events()[5])
    # Valid levels first, so a partial apply would show.
    event["a"] = [["65000.50", "9.00000000"], *event["a"]]
    mutate(event)
    before = list(source.book.levels(Side.BUY)), list(source.book.levels(Side.SELL))
    version = source.book.version
    with pytest.raises(BookMessageError, match=message):
        source.on_message(json.dumps(event), 0)
    assert (list(source.book.levels(Side.BUY)), list(source.book.levels(Side.SELL))) == before
    assert source.book.version == version
    assert source.stats.malformed == 1


def test_not_json_is_a_clear_error(btcusdt: Instrument) -> None:
    source, _ = make(btcusdt)
    with pytest.raises(BookMessageError, match="not JSON"):
        source.on_message(b'{"e":"depthUpdate",', 0)
    with pytest.raises(BookMessageError, match="lastUpdateId"):
        source.on_snapshot('{"bids":[],"asks":[]}')
    # A level that is not a [price, qty] list would unpack all the same: "99" as 9 at 9.
    for level in ('"99"', '{"99.00": 1, "2.0": 2}'):
        with pytest.raises(BookMessageError, match=r"not a \[price, qty\] list"):
            source.on_snapshot(f'{{"lastUpdateId": 100, "bids": [{level}], "asks": []}}')
    assert source.state is not BookState.LIVE and source.book.version == 0


# -- properties ------------------------------------------------------------------------
TICK = Decimal("0.01")
LOT = Decimal("0.00001")


def _text(ticks: int, step: Decimal) -> str:
    return format(step * ticks, "f")


@st.composite
def uncrossed_books(draw: st.DrawFn) -> tuple[dict[int, int], dict[int, int]]:
    mid = draw(st.integers(100, 10_000))
    spread = draw(st.integers(1, 5))
    bid_prices = draw(st.sets(st.integers(mid - 60, mid - 1), max_size=12))
    ask_prices = draw(st.sets(st.integers(mid - 1 + spread, mid + 60), max_size=12))
    lots = st.integers(1, 10**7)
    return ({p: draw(lots) for p in bid_prices}, {p: draw(lots) for p in ask_prices})


def _diff(old: dict[int, int], new: dict[int, int]) -> list[list[str]]:
    out = [[_text(p, TICK), _text(q, LOT)] for p, q in new.items() if old.get(p) != q]
    out += [[_text(p, TICK), "0.00000000"] for p in old if p not in new]
    return out


@settings(max_examples=60, deadline=None)
@given(states=st.lists(uncrossed_books(), min_size=2, max_size=8), data=st.data())
def test_valid_delta_streams_never_cross_and_match_the_later_snapshot(
    states: list[tuple[dict[int, int], dict[int, int]]], data: st.DataObject
) -> None:
    instrument = Instrument("binance", "BTCUSDT", "BTC", "USDT", TICK, LOT)
    source = BinanceSpotBookSource(instrument, stale_after_ms=None)
    bids0, asks0 = states[0]
    snapshot = {
        "lastUpdateId": 100,
        "bids": [[_text(p, TICK), _text(q, LOT)] for p, q in bids0.items()],
        "asks": [[_text(p, TICK), _text(q, LOT)] for p, q in asks0.items()],
    }
    assert source.on_snapshot(json.dumps(snapshot)) is Outcome.APPLIED
    last = 100
    for (old_b, old_a), (new_b, new_a) in itertools.pairwise(states):
        first = last + 1
        last += data.draw(st.integers(1, 5))
        event = {
            "e": "depthUpdate",
            "E": 1,
            "s": "BTCUSDT",
            "U": first,
            "u": last,
            "b": _diff(old_b, new_b),
            "a": _diff(old_a, new_a),
        }
        assert source.on_message(json.dumps(event), 0) is Outcome.APPLIED
        assert not source.book.is_crossed()
        assert dict(source.book.levels(Side.BUY)) == new_b
        assert dict(source.book.levels(Side.SELL)) == new_a
        prices = [p for p, _ in source.book.levels(Side.BUY)]
        assert prices == sorted(new_b, reverse=True)


junk = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.lists(st.text(max_size=4), max_size=3),
)


@settings(max_examples=80, deadline=None)
@given(
    where=st.sampled_from(["bid_price", "bid_qty", "ask_price", "ask_qty", "U", "u", "b", "a"]),
    value=junk,
)
def test_malformed_fields_never_change_the_book(where: str, value: object) -> None:
    instrument = Instrument("binance", "BTCUSDT", "BTC", "USDT", TICK, LOT)
    source = BinanceSpotBookSource(instrument, stale_after_ms=None)
    source.on_snapshot(
        '{"lastUpdateId":10,"bids":[["99.00","1.00000"]],"asks":[["101.00","2.00000"]]}'
    )
    event: dict[str, Any] = {
        "e": "depthUpdate",
        "E": 1,
        "s": "BTCUSDT",
        "U": 11,
        "u": 12,
        "b": [["99.50", "3.00000"], ["99.00", "0"]],
        "a": [["100.50", "4.00000"], ["101.00", "0"]],
    }
    if where in ("U", "u", "b", "a"):
        event[where] = value
    else:
        side, field = where.split("_")
        event[side[0]][0][0 if field == "price" else 1] = value
    before = list(source.book.levels(Side.BUY)), list(source.book.levels(Side.SELL))
    error: BookMessageError | None = None
    try:
        outcome = source.on_message(json.dumps(event), 0)
    except BookMessageError as exc:
        error = exc
    if error is not None:
        assert str(error).startswith("binance:BTCUSDT (binance_spot):")
        after = list(source.book.levels(Side.BUY)), list(source.book.levels(Side.SELL))
        assert after == before
    else:
        # Only values that are valid in that place get through: decimal text for a
        # price or size, an integer id, an empty level list.
        if where in ("U", "u"):
            assert type(value) is int
        elif where in ("b", "a"):
            assert value == []
        else:
            assert isinstance(value, str)
            assert str(value).replace(".", "", 1).isdigit()
        assert outcome is not Outcome.IGNORED


def test_a_repeated_key_is_malformed_on_both_paths(btcusdt: Instrument) -> None:
    """A second "u" would move the last update id far ahead: every later genuine event
    would be dropped as already covered until the book went stale. (Run compiled and
    interpreted, as every test here.)"""
    source, _ = make(btcusdt)
    raws = events()
    source.on_snapshot(fixture_text("binance", "depth_snapshot.json"))
    for raw in raws[5:10]:
        assert source.on_message(raw, 0) is Outcome.APPLIED
    last, version = source.last_update_id, source.book.version
    assert last is not None
    msg = json.loads(raws[10])
    text = json.dumps(msg, separators=(",", ":"))[:-1] + f',"u":{last + 10**9}}}'
    for sent in (text, text.encode()):
        with pytest.raises(BookMessageError, match="repeats the key '\"u\"'"):
            source.on_message(sent, 0)
        assert source.last_update_id == last and source.book.version == version
        source.on_snapshot(fixture_text("binance", "depth_snapshot.json"))
        for good in raws[5:10]:
            source.on_message(good, 0)
        last, version = source.last_update_id, source.book.version
