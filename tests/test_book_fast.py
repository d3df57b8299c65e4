"""The compiled book path against the interpreted one, on the same inputs.

``quoteforge.book.fast`` must be indistinguishable from the interpreted code: the same
books, the same top-of-book signals, the same merged consumer levels, and for anything
unusual it must hand over to the interpreted path, which accepts the rare valid forms
and raises the clear error for the rest. The compiled depthUpdate text reader
(``quoteforge.exchanges.binance.fast``, which applies with the book's code) is held
to the whole source's behaviour: outcomes, errors, stats, states, notifications and
update ids, on random streams spelled every way a venue (or a broken one) may.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quoteforge.book import BookMessageError, BookState, Outcome, fast, l2
from quoteforge.book.l2 import L2Book
from quoteforge.book.source import SourceStats
from quoteforge.clock import SimClock
from quoteforge.exchanges.binance import book as binance
from quoteforge.exchanges.binance import fast as binance_fast
from quoteforge.exchanges.binance.book import BinanceFuturesBookSource, BinanceSpotBookSource
from quoteforge.model import Instrument, Side
from quoteforge.plugins.consumer_book import ConsumerBook

TICK = Decimal("0.01")
LOT = Decimal("0.00001")


def test_ci_builds_the_extension() -> None:
    # The README's install command compiles it; CI must exercise the compiled path.
    if os.environ.get("CI", "").lower() == "true":
        assert fast.COMPILED, "quoteforge.book._fastbook was not built by the install"
        assert binance_fast.COMPILED, (
            "quoteforge.exchanges.binance._fastparse was not built by the install"
        )


@pytest.fixture(autouse=True)
def _needs_the_extension(request: pytest.FixtureRequest) -> None:
    if request.node.name == "test_ci_builds_the_extension":
        return
    if not fast.COMPILED:
        pytest.skip("the C extension quoteforge.book._fastbook is not built here")
    if not binance_fast.COMPILED:
        pytest.skip("the C extension quoteforge.exchanges.binance._fastparse is not built here")


def _instrument(venue: str = "binance", tick: Decimal = TICK, lot: Decimal = LOT) -> Instrument:
    return Instrument(venue, "BTCUSDT", "BTC", "USDT", tick, lot)


def _source() -> BinanceSpotBookSource:
    return BinanceSpotBookSource(_instrument(), stale_after_ms=None)


def _state(book: L2Book) -> tuple[Any, ...]:
    return (
        list(book._bid_keys),
        dict(book._bid_qty),
        list(book._ask_keys),
        dict(book._ask_qty),
        book.version,
        book.top_version,
        book.side_top_version(Side.BUY),
        book.side_top_version(Side.SELL),
        book.top(Side.BUY, 5),
        book.top(Side.SELL, 5),
        book.top(Side.BUY, 8),
        book.top(Side.SELL, 8),
    )


def _spell_price(ticks: int, style: int) -> str:
    """The same price written the ways a venue (or a bad one) may write it."""
    whole, cents = divmod(ticks, 100)
    return [
        f"{whole}.{cents:02d}000000",  # Binance's fixed 8 decimals
        f"{whole}.{cents:02d}",
        f"{whole:05d}.{cents:02d}0",  # leading zeros
        f"{whole}.{cents:02d}" + "0" * 20,  # more decimals than Binance writes: refused
        f"{ticks}E-2",  # exponent form: refused by both paths
    ][style]


def _spell_qty(lots: int, style: int) -> str:
    whole, frac = divmod(lots, 100_000)
    return [
        f"{whole}.{frac:05d}000",
        f"{whole}.{frac:05d}",
        f"{lots}E-5",  # refused
        f"{whole}.{frac:05d}" + "0" * 16,  # refused: 21 decimals
    ][style]


levels = st.lists(
    st.tuples(
        st.integers(1, 60),  # distance from 1000.00 in ticks
        st.integers(0, 3) | st.integers(0, 10**9),  # lots; 0 removes
        st.integers(0, 4),
        st.integers(0, 3),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(events=st.lists(st.tuples(levels, levels), min_size=1, max_size=25))
def test_compiled_diffs_equal_interpreted_diffs(
    events: list[tuple[list[Any], list[Any]]],
) -> None:
    compiled, interpreted = _source(), _source()
    snapshot = {
        "lastUpdateId": 10,
        "bids": [[_spell_price(100_000 - i, 0), "1.00000000"] for i in range(1, 8)],
        "asks": [[_spell_price(100_000 + i, 0), "1.00000000"] for i in range(1, 8)],
    }
    compiled.on_snapshot(dict(snapshot))
    interpreted.on_snapshot(dict(snapshot))
    for bid_levels, ask_levels in events:
        b = [[_spell_price(100_000 - d, ps), _spell_qty(q, qs)] for d, q, ps, qs in bid_levels]
        a = [[_spell_price(100_000 + d, ps), _spell_qty(q, qs)] for d, q, ps, qs in ask_levels]
        top: Any = compiled.book._apply_text(b, a, compiled._price_table, compiled._qty_table, None)
        if top is None:  # a level off the fast path: handed over, book untouched
            try:
                bids, asks = compiled._convert({"b": b, "a": a})
                top = compiled.book._apply_keyed(bids, asks, None)
            except BookMessageError as exc:
                top = ("error", str(exc))
        try:
            bids, asks = interpreted._convert({"b": b, "a": a})
            expected: Any = interpreted.book._apply_keyed(bids, asks, None)
        except BookMessageError as exc:
            expected = ("error", str(exc))
        assert top == expected
        assert _state(compiled.book) == _state(interpreted.book)


@pytest.mark.parametrize(
    "level",
    [
        ["1000.005", "1.0"],  # price off the tick grid
        ["1000.01", "0.000001"],  # size off the lot grid
        ["-1000.01", "1.0"],
        ["1000.01", "-1.0"],
        ["1,000.01", "1.0"],
        ["1000.01.5", "1.0"],
        [".", "1.0"],
        ["", "1.0"],
        ["1000.01", ""],
        ["١٠٠٠.٠١", "1.0"],  # non-ASCII digits
        [1000.01, "1.0"],  # a number, not text
        ["1000.01"],
        ["1000.01", "1.0", "extra"],
        "1000.01",
    ],
)
def test_invalid_levels_are_refused_whole_with_the_interpreted_error(level: Any) -> None:
    source = _source()
    source.on_snapshot({"lastUpdateId": 1, "bids": [["999.99", "1"]], "asks": [["1000.02", "1"]]})
    before = _state(source.book)
    event = {
        "e": "depthUpdate",
        "s": "BTCUSDT",
        "U": 2,
        "u": 2,
        # A valid level first: it must not be applied when a later one is bad.
        "b": [["999.98", "5.0"], level],
        "a": [],
    }
    assert (
        source.book._apply_text(event["b"], event["a"], source._price_table, source._qty_table, 1)
        is None
    )
    with pytest.raises(BookMessageError) as raised:
        source._process(event, 0)
    assert "BTCUSDT" in str(raised.value)
    assert _state(source.book) == before


def test_huge_values_take_the_interpreted_path_exactly() -> None:
    source = _source()
    source.on_snapshot({"lastUpdateId": 1, "bids": [["999.99", "1"]], "asks": [["1000.02", "1"]]})
    big = "123456789012345678.12"  # 18 integer digits: beyond 64 bits in ticks
    event = {"e": "depthUpdate", "s": "BTCUSDT", "U": 2, "u": 2, "b": [], "a": [[big, "2.5"]]}
    source._process(event, 0)
    assert source.book.lots_at(Side.SELL, 12345678901234567812) == 250_000
    # The compiled path keeps working on a side that now holds a Python-sized key.
    event = {"e": "depthUpdate", "s": "BTCUSDT", "U": 3, "u": 3, "b": [], "a": [["1000.03", "1"]]}
    source._process(event, 0)
    assert source.book.top(Side.SELL, 3) == [
        (100_002, 100_000),
        (100_003, 100_000),
        (12345678901234567812, 250_000),
    ]


# -- consumer book ------------------------------------------------------------------------

venue_levels = st.dictionaries(st.integers(1, 30), st.integers(1, 50), max_size=10)


@settings(max_examples=150, deadline=None)
@given(
    sides=st.lists(st.tuples(venue_levels, venue_levels), min_size=1, max_size=3),
    live=st.lists(st.booleans(), min_size=3, max_size=3),
    steps=st.lists(
        st.tuples(st.integers(0, 2), st.booleans(), st.integers(1, 30), st.integers(0, 50)),
        max_size=12,
    ),
)
def test_compiled_merge_equals_interpreted_merge(
    sides: list[tuple[dict[int, int], dict[int, int]]],
    live: list[bool],
    steps: list[tuple[int, bool, int, int]],
) -> None:
    # Venues on different grids: ticks of 0.01, 0.02 and 0.05, lots of 0.001 and 0.01.
    grids = [(Decimal("0.01"), Decimal("0.001")), (Decimal("0.02"), Decimal("0.01"))]
    grids.append((Decimal("0.05"), Decimal("0.001")))
    consumer = ConsumerBook("BTC")
    books = []
    for i, (bids, asks) in enumerate(sides):
        tick, lot = grids[i]
        book = L2Book(_instrument(f"v{i}", tick, lot))
        book.apply_snapshot(
            [(5000 - d, q) for d, q in bids.items()], [(5001 + d, q) for d, q in asks.items()]
        )
        book.state = BookState.LIVE if live[i] else BookState.STALE
        consumer.add(book)
        books.append(book)

    def check() -> None:
        for side in (Side.BUY, Side.SELL):
            for n in (1, 3, 5):
                expected = consumer._merge_interpreted(side, n)
                assert consumer.top(side, n) == expected
                assert consumer.top(side, n) == expected  # the cached answer too

    check()
    for venue, bid, distance, lots in steps:
        book = books[venue % len(books)]
        if lots == 50:  # a state change instead of a level change
            book.state = BookState.LIVE if book.state is not BookState.LIVE else BookState.STALE
        elif bid:
            book.set_level(Side.BUY, 5000 - distance, lots)
        else:
            book.set_level(Side.SELL, 5001 + distance, lots)
        check()


# -- whole depthUpdate texts: the compiled reader against the interpreted source ------------


@contextlib.contextmanager
def _interpreted() -> Iterator[None]:
    """Every compiled book piece switched off, as with QUOTEFORGE_PURE_PYTHON=1."""
    saved = (binance._apply_depth_text, l2._apply_diff, l2._top_levels)
    binance._apply_depth_text = l2._apply_diff = l2._top_levels = None
    try:
        yield
    finally:
        binance._apply_depth_text, l2._apply_diff, l2._top_levels = saved


class _Run:
    """A source with everything it reports recorded: resync requests, state changes and
    the book as each update notification saw it."""

    def __init__(self, futures: bool, clock: SimClock) -> None:
        cls = BinanceFuturesBookSource if futures else BinanceSpotBookSource
        self.log: list[Any] = []
        self.source = cls(
            _instrument(),
            clock=clock,
            stale_after_ms=None,
            max_buffer=6,
            on_resync=lambda src, why: self.log.append(("resync", why)),
            on_update=lambda book: self.log.append(("update", book.version, book.ts_ns)),
        )
        self.source.add_observer(
            lambda book, old, new, why: self.log.append(("state", old, new, why))
        )

    def do(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.source, method)(*args)
        except Exception as exc:  # any error must be the interpreted path's error
            return ("error", type(exc).__name__, str(exc))

    def observed(self) -> tuple[Any, ...]:
        s = self.source
        return (
            _state(s.book),
            s.book.state,
            s.book.ts_ns,
            s.book.update_count,
            s.stats.as_dict(),
            s.states.last_message_ns,
            s.last_update_id,
            s._chained,
            s._buffer,
            s.needs_snapshot,
            self.log,
        )


def _level_text(side: int, distance: int, lots: int, ps: int, qs: int) -> list[str]:
    return [_spell_price(100_000 + side * distance, ps), _spell_qty(lots, qs)]


def _render(msg: dict[str, Any], rnd: random.Random) -> str | bytes:
    """A depthUpdate spelled as a venue may send it: compact or spaced, any key order,
    plain or in a combined-stream envelope, as text or bytes."""
    items = list(msg.items())
    if rnd.random() < 0.3:
        rnd.shuffle(items)
    if rnd.random() < 0.3:
        seps = rnd.choice([(", ", ": "), (",", ":"), (" ,\n", " :\t")])
    else:
        seps = (",", ":")
    body: Any = dict(items)
    if rnd.random() < 0.25:
        body = {"stream": "btcusdt@depth", "data": body}
        if rnd.random() < 0.5:
            body = {"data": body["data"], "stream": "btcusdt@depth"}
    text = json.dumps(body, separators=seps)
    if rnd.random() < 0.1:
        text = rnd.choice([" ", "\n", "\r\n\t"]) + text + rnd.choice(["", " ", "\n"])
    return text.encode() if rnd.random() < 0.3 else text


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda msg: {**msg, key: value}


def _drop(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda msg: {k: v for k, v in msg.items() if k != key}


# Changes to a well-formed event; each gives either another valid spelling the reader
# may or may not take, or a message the interpreted path refuses or ignores.
_MSG_CHANGES: list[Callable[[dict[str, Any]], dict[str, Any]]] = [
    _drop("e"),
    _drop("E"),
    _drop("s"),
    _drop("U"),
    _drop("u"),
    _drop("b"),
    _drop("a"),
    _set("e", "trade"),
    _set("s", "ETHUSDT"),
    _set("s", None),
    _set("E", 1.5),
    _set("E", -5),
    _set("E", "1700000000000"),
    _set("E", 10**25),
    _set("E", None),
    _set("U", 3.0),
    _set("u", "12"),
    _set("U", -1),
    _set("U", True),
    _set("b", None),
    _set("a", {}),
    _set("b", [["1000.01", "1.0", "x"]]),
    _set("b", [["1000.01"]]),
    _set("a", [[1000.02, "1.0"]]),
    _set("a", ["1000.02"]),
    _set("a", [["1000.025", "1.0"]]),
    _set("b", [["999.99", "-1.0"]]),
    _set("b", [["999.99", "1e-5"]]),
    _set("a", [["1000.02", "1.0"], ["1000.03", "0.000001"]]),
    _set("T", 1700000000000),
    _set("x", None),
    _set("x", True),
    _set("x", "text"),
    _set("x", -3),
    _set("x", 1.25),
    _set("x", [1]),
    _set("x", {"y": 1}),
    _set("x", "é"),
    _set("data", {}),
    _set("stream", "btcusdt@depth"),
    lambda msg: {**msg, "U": msg["u"] + 1},  # U > u
    lambda msg: {**msg, "pu": msg["u"]},
    lambda msg: {"stream": "btcusdt@depth", "data": {**msg, "e": "trade"}},
    lambda msg: {"data": msg},  # an envelope without its stream name
    lambda msg: {"stream": "btcusdt@depth", "data": msg, "u": msg["u"]},
    lambda msg: {"stream": "btcusdt@depth", "data": {"stream": "x", "data": msg}},
]

# Changes to the text itself.
_TEXT_CHANGES: list[Callable[[str], str]] = [
    lambda t: t[:-1],  # not JSON
    lambda t: t + "x",
    lambda t: t + "{}",
    lambda t: t.replace('"BTCUSDT"', '"\\u0042TCUSDT"'),  # the same symbol, escaped
    lambda t: t.replace('"depthUpdate"', '"depth\\u0055pdate"'),
    lambda t: t.replace('"s"', '"\\u0073"'),
    lambda t: t.replace(".", "\\u002e", 1),
    lambda t: t.replace('"U":', '"U":0', 1),  # a leading zero: not JSON
    lambda t: t.replace('"u":', '"u":1,"u":', 1),  # a repeated key: the last counts
    lambda t: t.replace('"E":', '"E":1,"E":', 1),
    lambda t: t.replace('"b":[', '"b":[["1000.01","2.0"],', 1),
    lambda t: t.replace('"a":[]', '"a":[ ]', 1),
    lambda t: t.replace("]]", "],]", 1),
    lambda t: t.replace(",", ",,", 1),
    lambda t: t.replace("}", ",}", 1),
    lambda t: t.replace('"BTCUSDT"', '"BTCUSDT\t"'),
    lambda t: "[" + t + "]",
    lambda t: "null",
    lambda t: '{"result":null,"id":1}',
]

# Mostly the spellings Binance uses (which the compiled reader takes), sometimes others.
_text_levels = st.lists(
    st.tuples(
        st.integers(1, 60),
        st.integers(0, 3) | st.integers(0, 10**9),
        st.sampled_from([0] * 40 + [1] * 5 + [2] * 5 + [3, 4]),
        st.sampled_from([0] * 40 + [1] * 10 + [2, 3]),
    ),
    max_size=8,
)
_event = st.tuples(
    st.sampled_from(["next"] * 6 + ["overlap", "gap", "repeat"]),
    st.integers(0, 3),  # how many more ids the event spans
    _text_levels,
    _text_levels,
    st.none() | st.none() | st.none() | st.integers(0, len(_MSG_CHANGES + _TEXT_CHANGES) - 1),
)
_step = st.one_of(
    *[_event] * 8,
    st.tuples(st.just("snapshot"), st.integers(-3, 2)),  # lastUpdateId vs the next event
    st.tuples(st.sampled_from(["feed_down", "reconnected"])),
)


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "futures"])
@settings(max_examples=200, deadline=None)
@given(steps=st.lists(_step, min_size=1, max_size=50), rnd=st.randoms())
def test_depth_texts_give_what_the_interpreted_source_gives(
    futures: bool, steps: list[tuple[Any, ...]], rnd: random.Random
) -> None:
    clock = SimClock(1_000_000_000)
    compiled, interpreted = _Run(futures, clock), _Run(futures, clock)
    last_id = 100  # the last id the venue sent
    sent: list[str | bytes] = []
    for step in [("snapshot", 0), *steps]:
        clock.run_until(clock.now_ns() + 1_000)
        recv_ns: int | None = clock.now_ns()
        kind = step[0]
        if kind == "snapshot":
            # Futures snapshots bridge when they fall inside the next event (U <= id <= u).
            lid = max(1, last_id + step[1] + futures)
            body = json.dumps(
                {
                    "lastUpdateId": lid,
                    "bids": [[_spell_price(100_000 - i, 0), "1.00000000"] for i in range(1, 8)],
                    "asks": [[_spell_price(100_000 + i, 0), "1.00000000"] for i in range(1, 8)],
                }
            )
            call: tuple[Any, ...] = ("on_snapshot", body, recv_ns)
        elif kind in ("feed_down", "reconnected"):
            call = (kind,)
        elif kind == "repeat" and not sent:
            continue
        elif kind == "repeat":
            # Mostly one of the last few: the duplicates a reconnect or a retry sends.
            raw = (
                sent[-1 - rnd.randrange(min(3, len(sent)))]
                if rnd.random() < 0.7
                else rnd.choice(sent)
            )
            call = ("on_message", raw, recv_ns)
        else:
            _, span, bid_levels, ask_levels, change = step
            prev = last_id
            first = {"next": last_id + 1, "overlap": max(1, last_id - 1), "gap": last_id + 3}[kind]
            last_id = max(last_id, first + span)
            msg: dict[str, Any] = {
                "e": "depthUpdate",
                "E": 1_700_000_000_000 + len(sent),
                "s": "BTCUSDT",
                "U": first,
                "u": first + span,
                "b": [_level_text(-1, *level) for level in bid_levels],
                "a": [_level_text(1, *level) for level in ask_levels],
            }
            if futures:
                pu = {"next": prev, "overlap": prev - 1, "gap": prev + 2}[kind]
                msg = {"e": msg.pop("e"), "E": msg.pop("E"), "T": 1, **msg, "pu": pu}
            change = -1 if change is None else change
            if 0 <= change < len(_MSG_CHANGES):
                msg = _MSG_CHANGES[change](msg)
            raw = _render(msg, rnd)
            text_change = change - len(_MSG_CHANGES)
            if text_change >= 0:
                text = raw.decode() if isinstance(raw, bytes) else raw
                raw = _TEXT_CHANGES[text_change](text)
            sent.append(raw)
            if rnd.random() < 0.2:
                recv_ns = None  # the source reads the clock
            call = ("on_message", raw, recv_ns)
        got = compiled.do(*call)
        with _interpreted():
            expected = interpreted.do(*call)
        assert got == expected, call
        assert compiled.observed() == interpreted.observed(), call


def _plain(first: int = 11, final: int = 12) -> str:
    return (
        f'{{"e":"depthUpdate","E":1700000000123,"s":"BTCUSDT","U":{first},"u":{final},'
        '"b":[["999.98000000","1.50000000"],["999.99000000","0.00000000"]],'
        '"a":[["1000.03000000","0.25000000"]]}'
    )


_PLAIN = _plain()
_SNAPSHOT = {"lastUpdateId": 10, "bids": [["999.99", "1"]], "asks": [["1000.02", "1"]]}


def _read(source: BinanceSpotBookSource, raw: Any, last: int) -> Any:
    """The compiled reader called as the live spot source calls it."""
    book = source.book
    read = binance_fast.apply_depth_text
    assert read is not None
    return read(
        raw,
        source.wire_symbol,
        last,
        False,
        True,
        book._bid_keys,
        book._bid_qty,
        book._ask_keys,
        book._ask_qty,
        source._price_table,
        source._qty_table,
        source.max_id_jump,
        source.max_ids_per_second,
        0,
    )


@pytest.mark.parametrize(
    "raw",
    [
        _PLAIN,
        _PLAIN.encode(),
        json.dumps(json.loads(_PLAIN)),  # spaces after , and :
        json.dumps(json.loads(_PLAIN), indent=2),
        " \r\n" + _PLAIN + "\n",
        json.dumps(dict(reversed(json.loads(_PLAIN).items()))),
        json.dumps({"stream": "btcusdt@depth", "data": json.loads(_PLAIN)}),
        json.dumps({"data": json.loads(_PLAIN), "stream": "btcusdt@depth"}).encode(),
        json.dumps({**json.loads(_PLAIN), "T": 1, "pu": 10, "x": None, "y": "z", "w": -1}),
        json.dumps({**json.loads(_PLAIN), "b": [], "a": []}),
        json.dumps({k: v for k, v in json.loads(_PLAIN).items() if k != "E"}),
    ],
)
def test_binance_spellings_are_read_by_the_compiled_reader(raw: str | bytes) -> None:
    source, reference = _source(), _source()
    source.on_snapshot(dict(_SNAPSHOT))
    reference.on_snapshot(dict(_SNAPSHOT))
    event = json.loads(raw)
    event_ms = event.get("data", event).get("E")
    done = _read(source, raw, 10)
    assert done is not None
    assert done[1:] == (12, None if event_ms is None else event_ms * 1_000_000)
    # The interpreted source on the same text: the same book and the same bookkeeping.
    with _interpreted():
        assert reference.on_message(raw, 5) is Outcome.APPLIED
    source.book._applied(done[0], done[2])
    assert _state(source.book) == _state(reference.book)
    assert source.book.ts_ns == reference.book.ts_ns
    # Covered now: dropped, the book untouched.
    assert _read(source, raw, 12) == (-1, 12, None)
    assert _state(source.book) == _state(reference.book)


@pytest.mark.parametrize(
    "raw",
    [
        _PLAIN.replace('"BTCUSDT"', '"ETHUSDT"'),  # another symbol: ignored
        _PLAIN.replace('"BTCUSDT"', '"\\u0042TCUSDT"'),  # escapes: decoded in full
        _PLAIN.replace('"U":11', '"U":13'),  # a gap
        _PLAIN.replace('"U":11', '"U":13,"u":14'),  # a repeated key
        _PLAIN.replace('"U":11', '"U":11.0'),
        _PLAIN.replace('"E":1700000000123', '"E":1.7e12'),
        _PLAIN.replace('"0.25000000"', '"25E-2"'),  # a valid level in exponent form
        _PLAIN.replace('"0.25000000"', '"0.250000001"'),  # off the lot grid
        _PLAIN.replace('"1000.03000000"', '"1000.035"'),  # off the tick grid
        _PLAIN.replace('"0.25000000"', "0.25"),
        _PLAIN.replace('"e":"depthUpdate",', ""),
        _PLAIN.replace('"b":', '"x":[1],"b":'),
        _PLAIN[:-1],
        _PLAIN + ",",
        "[" + _PLAIN + "]",
        json.dumps({"data": json.loads(_PLAIN)}),
        json.dumps({"stream": "s", "data": json.loads(_PLAIN), "U": 11}),
        _PLAIN.replace('"s":"BTCUSDT"', '"s":"BTCUSDT","x":"\u00e9"'),
        _PLAIN.encode().replace(b'"s":"BTCUSDT"', b'"s":"BTCUSDT","x":"\xff"'),
        bytearray(_PLAIN.encode()),
    ],
)
def test_other_texts_are_left_to_the_interpreted_path(raw: str | bytes) -> None:
    source = _source()
    source.on_snapshot(dict(_SNAPSHOT))
    before = _state(source.book)
    assert _read(source, raw, 10) is None
    assert _state(source.book) == before


def test_the_compiled_reader_keeps_update_ids_within_the_bounds() -> None:
    source = _source()
    source.on_snapshot(dict(_SNAPSHOT))
    book = source.book
    read = binance_fast.apply_depth_text
    assert read is not None

    def call(raw: str, last: int, jump: int, per_second: int, elapsed: int) -> Any:
        return read(
            raw, "BTCUSDT", last, False, True, book._bid_keys, book._bid_qty,
            book._ask_keys, book._ask_qty, source._price_table, source._qty_table,
            jump, per_second, elapsed,
        )  # fmt: skip

    before = _state(book)
    # 2 ids ahead: refused with a bound of 1, left to the interpreted source's desync.
    assert call(_plain(11, 12), 10, 1, 0, 0) is None
    # A second at 1 id/s makes it plausible; a negative elapsed time grants nothing.
    assert call(_plain(11, 12), 10, 1, 1, -5 * 10**9) is None
    assert _state(book) == before
    assert call(_plain(11, 12), 10, 1, 1, 10**9)[:2] == (10, 12)
    # Behind the book by more than the bound: not "covered", the interpreted desync.
    assert call(_plain(3, 4), 12, 7, 0, 0) is None
    assert call(_plain(3, 4), 12, 8, 0, 0) == (-1, 4, None)
    with pytest.raises(ValueError, match="id bounds must be >= 0"):
        call(_plain(13, 13), 12, -1, 0, 0)


def test_the_compiled_reader_flags_a_crossed_or_locked_result() -> None:
    source = _source()
    source.on_snapshot(dict(_SNAPSHOT))
    raw = _plain(11, 12).replace('"999.98000000","1.50000000"', '"1000.02000000","1.5"')
    done = _read(source, raw, 10)
    assert done is not None and done[0] & 16  # bid 1000.02 meets the ask 1000.02
    source.book._applied(done[0] & 15, done[2])
    assert source.book.is_crossed()
    fresh = _source()
    fresh.on_snapshot(dict(_SNAPSHOT))
    done = _read(fresh, _plain(11, 12), 10)
    assert done is not None and not done[0] & 16


def test_a_book_that_is_not_live_never_reaches_the_compiled_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Any] = []
    read = binance_fast.apply_depth_text
    assert read is not None

    def counting(*args: Any) -> Any:
        calls.append(args[0])
        return read(*args)

    monkeypatch.setattr(binance, "_apply_depth_text", counting)
    source = _source()
    assert source.on_message(_PLAIN) is Outcome.BUFFERED  # no snapshot yet
    assert calls == []
    source.on_snapshot({"lastUpdateId": 10, "bids": [], "asks": []})
    assert (
        source.stats.applied == 1 and calls == []
    )  # the buffered event, through the interpreted path
    source.feed_down()
    assert source.on_message(_plain(13, 13)) is Outcome.APPLIED
    assert calls == [] and source.state is BookState.LIVE  # STALE -> LIVE on the way
    assert source.on_message(_plain(14, 14)) is Outcome.APPLIED
    assert source.on_message(_plain(14, 14)) is Outcome.DROPPED
    assert len(calls) == 2
    assert source.stats.as_dict() == {
        **SourceStats().as_dict(),
        "messages": 4,
        "applied": 3,
        "buffered": 1,
        "dropped": 1,
        "snapshots": 1,
    }


def test_compiled_merge_reads_books_of_other_l2book_types() -> None:
    # The merge reads a book's slots in place; other types, or a type changed after a
    # read, must give the same levels as the interpreted merge.
    class Tagged(L2Book):
        __slots__ = ("tag",)

    class Watched(L2Book):
        def __getattribute__(self, name: str) -> Any:
            return super().__getattribute__(name)

    consumer = ConsumerBook("BTC")
    books = []
    for i, cls in enumerate((L2Book, Tagged, Watched)):
        book = cls(_instrument(f"v{i}"))
        book.apply_snapshot([(5000 - i, 10 + i), (4990, 1)], [(5001 + i, 20 + i), (5010, 2)])
        book.state = BookState.LIVE
        consumer.add(book)
        books.append(book)
    for step in range(6):
        if step == 3:
            Tagged.extra = 1  # type: ignore[attr-defined]  # the type changes
        books[step % 3].set_level(Side.BUY, 4995 + step, step + 1)
        books[(step + 1) % 3].set_level(Side.SELL, 5005 - step, step + 2)
        for side in (Side.BUY, Side.SELL):
            assert consumer.top(side, 5) == consumer._merge_interpreted(side, 5)


_decimal_text = st.one_of(
    st.from_regex(r"\A0{0,3}[0-9]{0,20}(\.[0-9]{0,20}0{0,4})?\Z"),
    st.from_regex(r"\A[0-9.eE+-]{0,12}\Z"),
    st.sampled_from(["0", "0.", ".0", ".", "", "1000.01", "0.00001", "00.000010", "9" * 19]),
)


@settings(max_examples=300, deadline=None)
@given(price=_decimal_text, qty=_decimal_text, bid=st.booleans())
def test_level_texts_convert_as_the_interpreted_parser_does(
    price: str, qty: str, bid: bool
) -> None:
    # Every digit string the reader converts itself must give the interpreted value;
    # everything it leaves alone must meet the interpreted path's answer or error.
    clock = SimClock(0)
    compiled, interpreted = _Run(False, clock), _Run(False, clock)
    snapshot = json.dumps(_SNAPSHOT)
    compiled.do("on_snapshot", snapshot, 1)
    with _interpreted():
        interpreted.do("on_snapshot", snapshot, 1)
    level = json.dumps([price, qty])
    raw = _plain().replace('[["999.98000000","1.50000000"]', "[" + level, 1)
    if not bid:
        raw = _plain().replace('[["1000.03000000","0.25000000"]', "[" + level, 1)
    assert compiled.do("on_message", raw, 2) == interpreted_message(interpreted, raw)
    assert compiled.observed() == interpreted.observed()


def interpreted_message(run: _Run, raw: str) -> Any:
    with _interpreted():
        return run.do("on_message", raw, 2)
