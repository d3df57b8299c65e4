"""Small exact venue books for tests of the consumer book and the router: two venues of
BTC/USDT on different tick and lot grids."""

from __future__ import annotations

from decimal import Decimal

from quoteforge.book import BookState, L2Book
from quoteforge.model import Instrument
from quoteforge.plugins.consumer_book import ConsumerBook

Levels = list[tuple[str, str]]


def venue_book(
    venue: str, tick: str, lot: str, bids: Levels, asks: Levels, taker_fee: str = "0"
) -> L2Book:
    """A LIVE book of ``venue`` holding exactly these (price, quantity) levels."""
    inst = Instrument(
        venue, "BTC/USDT", "BTC", "USDT", Decimal(tick), Decimal(lot), taker_fee=Decimal(taker_fee)
    )
    book = L2Book(inst)
    book.apply_snapshot(
        [(inst.price_to_ticks(p), inst.qty_to_lots(q)) for p, q in bids],
        [(inst.price_to_ticks(p), inst.qty_to_lots(q)) for p, q in asks],
    )
    book.state = BookState.LIVE
    return book


def two_venue_consumer(taker_fee: str = "0") -> ConsumerBook:
    """Venue a quotes in cents with 0.001 lots, venue b in 0.05 steps with 0.01 lots."""
    a = venue_book(
        "a",
        "0.01",
        "0.001",
        [("100.05", "1.5"), ("100.00", "2")],
        [("100.20", "1"), ("100.25", "3")],
        taker_fee,
    )
    b = venue_book(
        "b",
        "0.05",
        "0.01",
        [("100.05", "0.5"), ("99.95", "4")],
        [("100.15", "2"), ("100.25", "1")],
        taker_fee,
    )
    book = ConsumerBook("BTC/USDT")
    book.add(a)
    book.add(b)
    return book
