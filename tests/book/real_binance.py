"""Real Binance traffic for the book tests: the committed corpus slices and, when the
shared data folder sits beside the repository, the full recordings they were cut from.

Recordings are hftbacktest collector files: one line per message, ``<receive time ns>
<raw JSON>`` (see ``tests/fixtures/real/binance/README.md``). Instruments are built
the way the venue's own rules say: spot from ``exchangeInfo.json`` through the
adapter's ``instrument_from_exchange_info``, USD-M from ``fapi_exchangeInfo.json``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from book_helpers import FIXTURES

from quoteforge.book import BookState, Outcome
from quoteforge.exchanges.binance.adapter import instrument_from_exchange_info
from quoteforge.exchanges.binance.book import BinanceFuturesBookSource, BinanceSpotBookSource
from quoteforge.model import Instrument, Side

CORPUS = FIXTURES / "real" / "binance"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hftbacktest-binance"

# (file stem, market, symbol)
RECORDINGS = [
    ("spot_btcusdt_20240808", "spot", "BTCUSDT"),
    ("spot_ethusdt_20240808", "spot", "ETHUSDT"),
    ("usdm_ethusdt_20240808", "usdm", "ETHUSDT"),
]


def recording_paths() -> list[tuple[str, Path, str, str]]:
    """(id, path, market, symbol) for every corpus slice, plus every full shared
    recording when the shared data folder is present."""
    out = [(f"slice-{stem}", CORPUS / f"{stem}.gz", m, sym) for stem, m, sym in RECORDINGS]
    for stem, market, sym in RECORDINGS:
        full = SHARED / f"{stem}.gz"
        if full.is_file():
            out.append((f"full-{stem}", full, market, sym))
    return out


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(receive ns, raw JSON text) per recorded message, as the venue sent it."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            stamp, _, raw = line.rstrip("\n").partition(" ")
            yield int(stamp), raw


def spot_instrument(symbol: str) -> Instrument:
    info = json.loads((FIXTURES / "binance_rest" / "exchangeInfo.json").read_text())
    entry = next(s for s in info["symbols"] if s["symbol"] == symbol)
    return instrument_from_exchange_info("binance", symbol, entry)


def usdm_instrument(symbol: str) -> Instrument:
    """USD-M reports quantities at ``quantityPrecision`` decimals and prices on the
    PRICE_FILTER tick; orders go on LOT_SIZE ``stepSize``."""
    info = json.loads((FIXTURES / "binance_rest" / "fapi_exchangeInfo.json").read_text())
    entry = next(s for s in info["symbols"] if s["symbol"] == symbol)
    filters = {f["filterType"]: f for f in entry["filters"]}
    return Instrument(
        venue="binance_usdm",
        symbol=symbol,
        base=entry["baseAsset"],
        quote=entry["quoteAsset"],
        tick_size=Decimal(filters["PRICE_FILTER"]["tickSize"]).normalize(),
        lot_size=Decimal(1).scaleb(-int(entry["quantityPrecision"])),
        qty_step=Decimal(filters["LOT_SIZE"]["stepSize"]).normalize(),
        min_qty=Decimal(filters["LOT_SIZE"]["minQty"]).normalize(),
        min_notional=Decimal(filters["MIN_NOTIONAL"]["notional"]).normalize(),
    )


def instrument_for(market: str, symbol: str) -> Instrument:
    return spot_instrument(symbol) if market == "spot" else usdm_instrument(symbol)


def source_for(market: str, symbol: str, **kwargs: Any) -> BinanceSpotBookSource:
    cls = BinanceSpotBookSource if market == "spot" else BinanceFuturesBookSource
    return cls(instrument_for(market, symbol), **kwargs)


@dataclass
class Replay:
    """What a book source did over one recording."""

    outcomes: dict[str, int] = field(default_factory=dict)
    resyncs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    crossed_while_live: int = 0
    tickers: int = 0
    tickers_compared: int = 0
    ticker_mismatches: list[str] = field(default_factory=list)
    max_jump: int = 0  # largest u - previous u between consecutive depth events
    max_rate: float = 0.0  # ids per second between events at least 50 ms apart


def _top(book: Any, side: Side) -> tuple[int, int] | None:
    return book.best_bid() if side is Side.BUY else book.best_ask()


def replay(path: Path, source: BinanceSpotBookSource) -> Replay:
    """Feed a recording through ``source`` as the adapter does (depth messages and the
    REST snapshot), checking after every message that a LIVE book is never crossed.

    A bookTicker carries the id of the book update it shows. Whenever an applied diff's
    final id ``u`` equals a bookTicker's ``u`` (the ticker may come before or after the
    diff: diffs are batched every 100 ms on spot), the book right after that diff must
    show exactly the ticker's best bid and ask with their sizes.
    """
    report = Replay()
    source.on_resync = lambda _src, reason: report.resyncs.append(reason)
    inst = source.instrument
    book = source.book
    prev_u: int | None = None
    prev_ns = 0
    tops: dict[int, Any] = {}  # final u of an applied diff -> top of book after it
    tickers: dict[int, Any] = {}  # bookTicker u -> its (bid, ask), not yet compared

    def compare(u: int, seen: Any, sent: Any) -> None:
        report.tickers_compared += 1
        if seen != sent:
            report.ticker_mismatches.append(f"u={u}: book {seen} ticker {sent}")

    for recv_ns, raw in read_lines(path):
        if raw.startswith('{"lastUpdateId"'):
            outcome = source.on_snapshot(raw, recv_ns)
        elif "@depth" in raw[:40]:
            try:
                outcome = source.on_message(raw, recv_ns)
            except Exception as exc:  # counted: the test asserts there are none
                report.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            u = json.loads(raw)["data"]["u"]
            if prev_u is not None:
                report.max_jump = max(report.max_jump, u - prev_u)
                if recv_ns - prev_ns >= 50_000_000:
                    rate = (u - prev_u) / ((recv_ns - prev_ns) / 1e9)
                    report.max_rate = max(report.max_rate, rate)
            prev_u, prev_ns = u, recv_ns
            if outcome is Outcome.APPLIED and source.last_update_id == u:
                seen = (_top(book, Side.BUY), _top(book, Side.SELL))
                if len(tops) > 4096:
                    tops.clear()
                tops[u] = seen
                sent = tickers.pop(u, None)
                if sent is not None:
                    compare(u, seen, sent)
        elif "@bookTicker" in raw[:40]:
            report.tickers += 1
            data = json.loads(raw)["data"]
            sent = (
                (inst.price_to_ticks(data["b"]), inst.qty_to_lots(data["B"])),
                (inst.price_to_ticks(data["a"]), inst.qty_to_lots(data["A"])),
            )
            known = tops.get(data["u"])
            if known is not None:
                compare(data["u"], known, sent)
            else:
                if len(tickers) > 4096:
                    tickers.clear()
                tickers[data["u"]] = sent
            continue
        else:
            continue
        report.outcomes[outcome.value] = report.outcomes.get(outcome.value, 0) + 1
        if book.state is BookState.LIVE and book.is_crossed():
            report.crossed_while_live += 1
    return report


__all__ = [
    "CORPUS",
    "RECORDINGS",
    "SHARED",
    "Outcome",
    "Replay",
    "instrument_for",
    "read_lines",
    "recording_paths",
    "replay",
    "source_for",
    "spot_instrument",
    "usdm_instrument",
]
