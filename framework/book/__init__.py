"""Order books: exact L2 books, their states, and the venue integrity rules."""

from quoteforge.book.binance import BinanceFuturesBookSource, BinanceSpotBookSource
from quoteforge.book.consumer import Allocation, ConsumerBook, ConsumerLevel, MarketCross
from quoteforge.book.kraken import KrakenBookSource, kraken_checksum
from quoteforge.book.l2 import TOP_LEVELS, BookState, L2Book, TakeCost
from quoteforge.book.source import BookSource, Outcome, SourceStats
from quoteforge.book.state import BookStateMachine
from quoteforge.book.trader import OwnOrder, TraderBook
from quoteforge.book.wire import BookMessageError, WireDecimalParser

__all__ = [
    "TOP_LEVELS",
    "Allocation",
    "BinanceFuturesBookSource",
    "BinanceSpotBookSource",
    "BookMessageError",
    "BookSource",
    "BookState",
    "BookStateMachine",
    "ConsumerBook",
    "ConsumerLevel",
    "KrakenBookSource",
    "L2Book",
    "MarketCross",
    "Outcome",
    "OwnOrder",
    "SourceStats",
    "TakeCost",
    "TraderBook",
    "WireDecimalParser",
    "kraken_checksum",
]
