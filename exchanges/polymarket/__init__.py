"""Polymarket CLOB: the adapter (``type: polymarket``) for binary outcome tokens, its book
source for the market channel, its rate-limit governor and wire formats (extra
``polymarket``)."""

from quoteforge.exchanges.polymarket.adapter import (
    PolymarketClob,
    PolymarketParams,
    create_polymarket,
)
from quoteforge.exchanges.polymarket.book import PolymarketBookSource, book_hash

__all__ = [
    "PolymarketBookSource",
    "PolymarketClob",
    "PolymarketParams",
    "book_hash",
    "create_polymarket",
]
