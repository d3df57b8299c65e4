"""Replay recorded Binance and Kraken book data into a consumer book and print the merged
top levels, with the venue behind every price, as they change. Runs offline.

    python examples/consumer_book.py [--levels 3]
"""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path

from quoteforge.book import BookSource
from quoteforge.exchanges.binance.book import BinanceSpotBookSource
from quoteforge.exchanges.kraken.book import KrakenBookSource
from quoteforge.exchanges.recording import merge_recordings
from quoteforge.model import Instrument, Side
from quoteforge.plugins.consumer_book import ConsumerBook, ConsumerLevel

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
RECORDINGS = [
    FIXTURES / "binance" / "depth_recording.jsonl",
    FIXTURES / "kraken" / "book_recording.jsonl",
]


def describe(level: ConsumerLevel) -> str:
    origins = ", ".join(f"{venue} {qty.normalize():f}" for venue, qty in level.origins)
    return f"{level.price:>10} {level.qty.normalize():>12f}  [{origins}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, default=3, help="levels per side to print")
    args = parser.parse_args(argv)

    binance = BinanceSpotBookSource(
        Instrument("binance", "BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.00001")),
        stale_after_ms=None,
    )
    kraken = KrakenBookSource(
        Instrument("kraken", "BTC/USD", "BTC", "USD", Decimal("0.1"), Decimal("0.00000001")),
        depth=10,
        stale_after_ms=None,
    )
    sources: dict[str, BookSource] = {"binance": binance, "kraken": kraken}
    for source in sources.values():
        source.add_observer(
            lambda book, old, new, why: print(f"  {book.key}: {old.value} -> {new.value} ({why})")
        )
    consumer = ConsumerBook("BTC")
    consumer.add(binance.book)
    consumer.add(kraken.book)

    start: int | None = None
    shown = None
    for record in merge_recordings(RECORDINGS):
        start = record.t_ns if start is None else start
        if record.stream.startswith("rest:"):
            binance.on_snapshot(record.raw, record.t_ns)
        else:
            sources[record.venue].on_message(record.raw, record.t_ns)
        bids = consumer.top(Side.BUY, args.levels)
        asks = consumer.top(Side.SELL, args.levels)
        if (bids, asks) == shown or not (bids or asks):
            continue
        shown = (bids, asks)
        print(f"t=+{(record.t_ns - start) / 1e9:6.3f}s after {record.venue}")
        for level in reversed(asks):
            print(f"   ask {describe(level)}")
        for level in bids:
            print(f"   bid {describe(level)}")
        cross = consumer.crossing()
        if cross is not None:
            kind = "LOCKED" if cross.locked else "CROSSED"
            print(
                f"   {kind}: {cross.bid_venue} bid {cross.bid} >= {cross.ask_venue} ask {cross.ask}"
            )

    order = consumer.take(Side.BUY, "2.5")
    print("\nbuying 2.5 BTC across both venues now would take:")
    for venue, qty in order.per_venue.items():
        print(f"   {venue:<8} {qty.normalize():>12f} up to {order.limit_prices[venue]}")
    if order.avg_price is not None and order.slippage_bps is not None:
        print(
            f"   average {order.avg_price:.2f}, {order.slippage_bps:.2f} bps over the best ask"
            f"{'' if order.complete else ' (book too thin for the full size)'}"
        )
    for name, source in sources.items():
        print(f"{name}: {source.stats.as_dict()}")


if __name__ == "__main__":
    main()
