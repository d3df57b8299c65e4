"""Fuzzing the book sources with mutated real and documented venue messages.

Every stream starts from messages a venue sent (the hftbacktest Binance recordings in
``tests/fixtures/real/``) or that its documentation shows (the Binance and Kraken
replicas in ``tests/fixtures/binance`` and ``tests/fixtures/kraken``). Hypothesis picks
where to join the stream and mutates what follows: prices and sizes respelled (signs,
spaces, underscores, exponents, too many digits, off the grid, non-ASCII), levels that
cross the book, update ids moved anywhere, structure broken (keys removed, wrong types,
truncated or deeply nested text, envelopes), messages dropped, repeated, reordered and
delayed, the stream frozen. After every message, on both book paths:

- only ``BookMessageError`` ever leaves a source;
- each side's keys are sorted, match its size map, and every size is positive;
- a LIVE book is never crossed or locked;
- a book is never LIVE while its updates are not being applied: after more than the
  staleness limit without an applied message, the watchdog finds it STALE (or it is
  already resyncing).

When a source asks for a snapshot, the venue's answer is given at a later point of the
stream: a snapshot of the reference book (a clean source fed the unmutated stream),
possibly mutated too.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

import pytest
from book_helpers import fixture_lines, fixture_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from real_binance import CORPUS, instrument_for, read_lines

from quoteforge.book import BookMessageError, BookSource, BookState, Outcome
from quoteforge.exchanges.binance.book import BinanceFuturesBookSource, BinanceSpotBookSource
from quoteforge.exchanges.kraken.book import KrakenBookSource, kraken_checksum
from quoteforge.model import Instrument

STALE_MS = 1_000
STALE_NS = STALE_MS * 1_000_000
SNAPSHOT_LEVELS = 100  # a REST snapshot asked with limit=100
KRAKEN_DEPTH = 10


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# -- seed streams ------------------------------------------------------------------------
@dataclass(frozen=True)
class Seed:
    """An unmutated stream and the reference snapshots along it.

    ``events[i]`` is the i-th diff as a dict; ``snapshots[i]`` the venue's snapshot of the
    book just after event ``i`` (a dict, as the REST call or the channel returns it).
    ``gaps_ms[i]`` is the recorded time before event ``i``.
    """

    name: str
    venue: str  # "spot", "usdm" or "kraken"
    instrument: Instrument
    events: tuple[dict[str, Any], ...]
    snapshots: tuple[dict[str, Any], ...]
    gaps_ms: tuple[int, ...]


def _binance_snapshot(source: BinanceSpotBookSource, decimals: tuple[int, int]) -> dict[str, Any]:
    inst = source.instrument
    pd, qd = decimals

    def side(levels: Any) -> list[list[str]]:
        out = []
        for ticks, lots in levels:
            price = inst.tick_size * ticks
            qty = inst.lot_size * lots
            out.append([f"{price:.{pd}f}", f"{qty:.{qd}f}"])
            if len(out) == SNAPSHOT_LEVELS:
                break
        return out

    from quoteforge.model import Side

    return {
        "lastUpdateId": source.last_update_id,
        "bids": side(source.book.levels(Side.BUY)),
        "asks": side(source.book.levels(Side.SELL)),
    }


def _binance_seed(
    name: str, venue: str, instrument: Instrument, lines: list[tuple[int, str]], limit: int
) -> Seed:
    """Run a clean source over the stream; keep the diffs after the venue snapshot and
    a reference snapshot after each."""
    cls = BinanceSpotBookSource if venue == "spot" else BinanceFuturesBookSource
    clean = cls(instrument, stale_after_ms=None)
    decimals = (8, 8) if venue == "spot" else (2, 3)
    events: list[dict[str, Any]] = []
    snapshots: list[dict[str, Any]] = []
    gaps: list[int] = []
    live_from = None
    last_ns = 0
    for recv_ns, raw in lines:
        msg = json.loads(raw)
        if "lastUpdateId" in msg:
            assert clean.on_snapshot(raw, recv_ns) is Outcome.APPLIED
            live_from = len(events)
            continue
        data = msg.get("data", msg)
        if data.get("e") != "depthUpdate":
            continue
        outcome = clean.on_message(raw, recv_ns)
        if live_from is None:
            continue
        assert outcome is Outcome.APPLIED, (name, outcome)
        events.append(data)
        snapshots.append(_binance_snapshot(clean, decimals))
        gaps.append(max(0, (recv_ns - last_ns) // 1_000_000) if last_ns else 0)
        last_ns = recv_ns
        if len(events) >= limit:
            break
    assert clean.stats.resyncs == 0 and len(events) > 20
    return Seed(name, venue, instrument, tuple(events), tuple(snapshots), tuple(gaps))


@cache
def real_seed(stem: str) -> Seed:
    venue = "spot" if stem.startswith("spot") else "usdm"
    symbol = stem.split("_")[1].upper()
    lines = []
    for recv_ns, raw in read_lines(CORPUS / f"{stem}.gz"):
        if "lastUpdateId" in raw[:20] or "@depth" in raw[:40]:
            lines.append((recv_ns, raw))
        if len(lines) > 260:
            break
    return _binance_seed(f"real:{stem}", venue, instrument_for(venue, symbol), lines, 240)


@cache
def documented_binance_seed(futures: bool) -> Seed:
    prefix = "futures_depth" if futures else "depth"
    snapshot = fixture_text("binance", f"{prefix}_snapshot.json")
    snap_id = json.loads(snapshot)["lastUpdateId"]
    lines = [(1, snapshot)]
    for i, raw in enumerate(fixture_lines("binance", f"{prefix}_updates.jsonl")):
        u = json.loads(raw)["u"]
        if u >= snap_id if futures else u > snap_id:
            lines.append((2 + i * 100_000_000, raw))
    inst = Instrument("binance", "BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.00001"))
    seed = _binance_seed(f"documented:{prefix}", "usdm" if futures else "spot", inst, lines, 99)
    # The replicas write 8 decimals on both markets.
    snaps = tuple(_respell(s, 8) for s in seed.snapshots)
    return Seed(seed.name, seed.venue, inst, seed.events, snaps, seed.gaps_ms)


def _respell(snapshot: dict[str, Any], decimals: int) -> dict[str, Any]:
    def side(levels: list[list[str]]) -> list[list[str]]:
        return [[f"{Decimal(p):.{decimals}f}", f"{Decimal(q):.{decimals}f}"] for p, q in levels]

    return {**snapshot, "bids": side(snapshot["bids"]), "asks": side(snapshot["asks"])}


@cache
def kraken_seed() -> Seed:
    """The documented Kraken replica: snapshot then updates; the reference snapshot is
    the channel's snapshot message of the book after each update, with its checksum."""
    inst = Instrument("kraken", "BTC/USD", "BTC", "USD", Decimal("0.1"), Decimal("0.00000001"))
    decode: Callable[[str], Any] = lambda raw: json.loads(raw, parse_float=str, parse_int=str)  # noqa: E731
    lines = fixture_lines("kraken", "book_updates.jsonl")
    first = decode(lines[0])["data"][0]  # the channel's snapshot opens the replica
    bids = {lvl["price"]: lvl["qty"] for lvl in first["bids"]}
    asks = {lvl["price"]: lvl["qty"] for lvl in first["asks"]}
    events: list[dict[str, Any]] = []
    snapshots: list[dict[str, Any]] = []
    for raw in lines[1:]:
        msg = decode(raw)
        assert msg["type"] == "update"
        entry = msg["data"][0]
        for levels, book in ((entry["bids"], bids), (entry["asks"], asks)):
            for lvl in levels:
                if Decimal(lvl["qty"]):
                    book[lvl["price"]] = lvl["qty"]
                else:
                    book.pop(lvl["price"], None)
        for book, best_high in ((bids, True), (asks, False)):
            keep = sorted(book, key=Decimal, reverse=best_high)[:KRAKEN_DEPTH]
            for price in list(book):
                if price not in keep:
                    del book[price]
        bid_rows = sorted(bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)
        ask_rows = sorted(asks.items(), key=lambda kv: Decimal(kv[0]))
        snap = {
            "symbol": "BTC/USD",
            "bids": [{"price": p, "qty": q} for p, q in bid_rows],
            "asks": [{"price": p, "qty": q} for p, q in ask_rows],
            "checksum": kraken_checksum(ask_rows, bid_rows),
        }
        assert str(snap["checksum"]) == str(entry["checksum"]), "replica checksums verify"
        events.append(entry)
        snapshots.append(snap)
    gaps = tuple(50 for _ in events)
    return Seed("documented:kraken", "kraken", inst, tuple(events), tuple(snapshots), gaps)


# -- rendering and mutation --------------------------------------------------------------
_KRAKEN_NUMBER = re.compile(r'"(price|qty|checksum)":"([0-9]+(?:\.[0-9]+)?)"')


def render(seed: Seed, msg: Any, kind: str) -> str:
    """Wire text: Binance as combined-stream or plain JSON, Kraken with its numbers
    unquoted (as the venue sends them)."""
    if seed.venue == "kraken":
        if isinstance(msg, dict) and "symbol" in msg:
            msg = {"channel": "book", "type": kind, "data": [msg]}
        return _KRAKEN_NUMBER.sub(r'"\1":\2', _dumps(msg))
    if kind == "update" and isinstance(msg, dict) and msg.get("e") == "depthUpdate":
        stream = "btcusdt@depth@100ms" if seed.venue == "spot" else "ethusdt@depth@0ms"
        return _dumps({"stream": stream, "data": msg})
    return _dumps(msg)


def _spellings(text: str) -> list[Any]:
    """The same value spelled the ways the wire rule refuses (and a few it accepts)."""
    head, _, tail = text.partition(".")
    return [
        f"{head[:1]}_{head[1:]}.{tail}" if len(head) > 1 else f"_{text}",
        f" {text}",
        f"{text} ",
        f"+{text}",
        f"-{text}",
        f"{Decimal(text):E}",
        f"{text}E+0",
        "9" * 40,
        f"{head}.{tail}{'1' * 12}",
        f"{head}.{tail[:-1]}7" if tail else f"{text}.7",
        f"{head}." if tail else f"{text}.",
        f".{tail}" if tail else f".{text}",
        text.replace(text[:1], "\u0661", 1),
        "",
        ".",
        "NaN",
        "1..0",
        f"0{text}",
        float(text) if text.replace(".", "", 1).isdigit() else 1.5,
        None,
        [text],
    ]


_ID_VALUES: list[Callable[[int], Any]] = [
    lambda u: 2**63 - 1,
    lambda u: 2**64 + 5,
    lambda u: -1,
    lambda u: 0,
    lambda u: u + 10**7,
    lambda u: u + 10**12,
    lambda u: u - 10**7,
    lambda u: max(0, u - 10**12),
    lambda u: u + 1,
    lambda u: u - 1,
    lambda u: str(u),
    lambda u: float(u),
    lambda u: None,
]


def _levels_key(seed: Seed, side: str) -> str:
    return ("bids" if side == "b" else "asks") if seed.venue == "kraken" else side


def mutate(
    seed: Seed, msg: dict[str, Any], source: BookSource, rnd: random.Random
) -> tuple[Any, str | None]:
    """One mutation of a diff (or snapshot) dict; returns (message, raw text override)."""
    msg = json.loads(json.dumps(msg))
    kind = rnd.choice(["price", "size", "cross", "ids", "structure", "text", "zero"])
    side = rnd.choice(["b", "a"])
    key = _levels_key(seed, side)
    levels = msg.get(key) or msg.get("bids" if side == "b" else "asks")
    kraken = seed.venue == "kraken"

    def get(level: Any, i: int) -> Any:
        return level[("price", "qty")[i]] if kraken else level[i]

    def put(level: Any, i: int, value: Any) -> None:
        if kraken:
            level[("price", "qty")[i]] = value
        else:
            level[i] = value

    if kind in ("price", "size", "zero") and levels:
        at = rnd.randint(0, len(levels) - 1)
        field = 0 if kind == "price" else 1
        if kind == "zero":
            put(levels[at], 1, "0.00000000" if not kraken else "0")
        else:
            choices = _spellings(str(get(levels[at], field)))
            put(levels[at], field, rnd.choice(choices))
        return msg, None
    if kind == "cross":
        book = source.book
        best = book.best_ask_ticks() if side == "b" else book.best_bid_ticks()
        if best is None:
            return msg, None
        inst = seed.instrument
        ticks = best + (1 if side == "b" else -1) * rnd.randint(0, 3)
        price = inst.tick_size * max(1, ticks)
        decimals = 1 if kraken else (8 if seed.venue == "spot" else 2)
        qty_dec = 8 if seed.venue != "usdm" else 3
        text = [f"{price:.{decimals}f}", f"{Decimal(1):.{qty_dec}f}"]
        level: Any = {"price": text[0], "qty": text[1]} if kraken else text
        if isinstance(levels, list):
            levels.insert(rnd.randint(0, len(levels)), level)
        else:
            msg[key] = [level]
        return msg, None
    if kind == "ids" and not kraken:
        name = rnd.choice(["U", "u", "pu", "lastUpdateId", "E"])
        base = msg.get("u", msg.get("lastUpdateId", 0))
        base = base if type(base) is int else 0
        msg[name] = rnd.choice(_ID_VALUES)(base)
        if rnd.random() < 0.5:
            msg["U"], msg["u"] = msg.get("u"), msg.get("U")
        return msg, None
    if kind == "ids":  # Kraken has no ids; its checksum and timestamp instead
        msg[rnd.choice(["checksum", "timestamp"])] = rnd.choice(
            [0, -1, 2**32, 2**64, "x", None, "9999-99-99", 1.5]
        )
        return msg, None
    if kind == "structure":
        what = rnd.choice(["drop_key", "retype", "level_shape", "symbol", "wrap", "nest"])
        keys = sorted(msg)
        if what == "drop_key" and keys:
            msg.pop(rnd.choice(keys))
        elif what == "retype" and keys:
            msg[rnd.choice(keys)] = rnd.choice([None, {}, "x", 1, [], [[]], [1, 2], True])
        elif what == "level_shape" and levels:
            at = rnd.randint(0, len(levels) - 1)
            levels[at] = rnd.choice([[], ["1.0"], ["1.0", "1.0", "1.0"], "1.0", None, {"p": 1}])
        elif what == "symbol":
            msg["symbol" if kraken else "s"] = rnd.choice(["ETHBTC", "", None, 5])
        elif what == "wrap":
            return [msg], None
        else:
            depth = rnd.choice([3, 50, 2_000, 20_000])
            return msg, "[" * depth + "]" * depth
        return msg, None
    # "text": the wire text itself broken
    return msg, rnd.choice(["truncate", "garbage", "bytes", "empty"])


def _break_text(text: str, how: str, rnd: random.Random) -> str | bytes:
    if how == "truncate":
        return text[: rnd.randint(0, max(0, len(text) - 1))]
    if how == "garbage":
        return text.replace('"', "'", 1) if rnd.random() < 0.5 else text + "}"
    if how == "bytes":
        return text.encode() + b"\xff"
    return ""


# -- invariants --------------------------------------------------------------------------
def check_book(source: BookSource, now: int, applied_at: int) -> None:
    book = source.book
    for keys, qty in ((book._bid_keys, book._bid_qty), (book._ask_keys, book._ask_qty)):
        assert keys == sorted(keys), "keys out of order"
        assert len(keys) == len(qty) and set(keys) == set(qty), "keys and sizes disagree"
        assert all(lots > 0 for lots in qty.values()), "a level with no size"
    source.check_stale(now)
    if book.state is BookState.LIVE:
        assert not book.is_crossed(), "a LIVE book is crossed or locked"
        assert now - applied_at <= STALE_NS, "LIVE without applying anything for too long"


# -- the driver --------------------------------------------------------------------------
_STEPS = ["next"] * 6 + ["drop", "repeat", "swap", "freeze", "late"]


def drive(seed: Seed, start: int, length: int, rate: float, rnd: random.Random) -> None:
    """One stream: join the seed at ``start``, ``length`` messages on, each mutated
    with probability ``rate``; ``rnd`` (seeded by hypothesis) picks the mutations."""
    inst = seed.instrument
    requests: list[str] = []
    source: BookSource
    if seed.venue == "kraken":
        source = KrakenBookSource(inst, stale_after_ms=STALE_MS, depth=KRAKEN_DEPTH)
    elif seed.venue == "spot":
        source = BinanceSpotBookSource(inst, stale_after_ms=STALE_MS)
    else:
        source = BinanceFuturesBookSource(inst, stale_after_ms=STALE_MS)
    source.on_resync = lambda _src, why: requests.append(why)
    n = len(seed.events)
    start %= n - 1
    now = 1_000_000_000
    applied_at = now
    snapshot_kind = "snapshot"

    def deliver(raw: Any, is_snapshot: bool) -> None:
        nonlocal applied_at
        try:
            if is_snapshot and seed.venue != "kraken":
                outcome = source.on_snapshot(raw, now)
            else:
                outcome = source.on_message(raw, now)
        except BookMessageError:
            outcome = None
        if outcome is Outcome.APPLIED:
            applied_at = now
        check_book(source, now, applied_at)

    # Binance: the stream opens first (buffered), then the snapshot of event start - 1 or
    # start; Kraken: the channel's snapshot first.
    # USD-M: the first event after a snapshot must straddle its id, so event ``start``
    # (whose u is the snapshot's id) comes again; spot goes on with the next one.
    i = start
    resume = i if seed.venue == "usdm" else i + 1
    if seed.venue != "kraken" and (rnd.random() < 0.5):
        deliver(render(seed, seed.events[resume], "update"), False)
    snapshot = seed.snapshots[i]
    deliver(render(seed, snapshot, snapshot_kind), True)
    i = resume
    end = min(n, i + length)
    while i < end:
        step = (
            rnd.choice(["next"] * 6 + ["drop", "repeat", "swap", "freeze", "late"])
            if rate
            else "next"
        )
        gap_ms = seed.gaps_ms[i] if seed.gaps_ms[i] < STALE_MS else 100
        now += gap_ms * 1_000_000
        if step == "late":
            now += rnd.randint(STALE_MS // 2, 3 * STALE_MS) * 1_000_000
        if step == "drop":
            i += 1
            continue
        if step == "swap" and i + 1 < end:
            order = [i + 1, i]
            i += 2
        else:
            order = [i]
            i += 1
        for j in order:
            msg: Any = seed.events[j]
            override: Any = None
            if rate and rnd.random() < rate:
                msg, override = mutate(seed, msg, source, rnd)
            text = render(seed, msg, "update")
            if override in ("truncate", "garbage", "bytes", "empty"):
                raw: Any = _break_text(text, override, rnd)
            elif isinstance(override, str):
                raw = override if seed.venue == "kraken" else f'{{"stream":"x","data":{override}}}'
            else:
                raw = text
            deliver(raw, False)
            if step == "repeat":
                deliver(raw, False)
            if step == "freeze":
                for _ in range(rnd.randint(1, 4)):
                    now += STALE_MS // 2 * 1_000_000
                    deliver(raw, False)
        if requests and source.needs_snapshot and (rnd.random() < 0.5):
            # The venue answers the resync with a snapshot of the book as of now.
            requests.clear()
            snap: Any = seed.snapshots[i - 1]
            if rate and rnd.random() < rate / 2:
                snap, _ = mutate(seed, snap, source, rnd)
            deliver(render(seed, snap, snapshot_kind), True)


_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
SEEDS: dict[str, Callable[[], Seed]] = {
    "real-spot-btcusdt": lambda: real_seed("spot_btcusdt_20240808"),
    "real-spot-ethusdt": lambda: real_seed("spot_ethusdt_20240808"),
    "real-usdm-ethusdt": lambda: real_seed("usdm_ethusdt_20240808"),
    "documented-spot": lambda: documented_binance_seed(False),
    "documented-usdm": lambda: documented_binance_seed(True),
    "documented-kraken": kraken_seed,
}
# Examples per seed and per book path: 2 paths x 5,050 = 10,100 streams in all.
EXAMPLES = {
    "real-spot-btcusdt": 1_000,
    "real-spot-ethusdt": 700,
    "real-usdm-ethusdt": 800,
    "documented-spot": 800,
    "documented-usdm": 750,
    "documented-kraken": 1_000,
}


def _fuzz_test(name: str) -> Any:
    # Hypothesis draws where the stream is joined, how long and how mutated it is, and
    # the seed of the generator that picks each mutation (one draw per stream keeps
    # 10k streams within CI time; a failure prints the four values that replay it).
    @settings(max_examples=EXAMPLES[name], **_SETTINGS)
    @given(
        start=st.integers(0, 10**6),
        length=st.integers(1, 24),
        rate=st.sampled_from([0.0, 0.1, 0.3, 0.7]),
        seed=st.integers(0, 2**32 - 1),
    )
    def run(start: int, length: int, rate: float, seed: int) -> None:
        drive(SEEDS[name](), start, length, rate, random.Random(seed))

    return run


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_mutated_streams_never_leave_a_lying_book(name: str) -> None:
    _fuzz_test(name)()


def test_seeds_start_from_real_and_documented_messages() -> None:
    for name, make in SEEDS.items():
        seed = make()
        assert len(seed.events) == len(seed.snapshots) >= 20, name
        assert seed.name.startswith("real:" if name.startswith("real") else "documented:")
