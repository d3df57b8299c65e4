"""Order books: exact L2 books, their states, and the book-source contract venues implement."""

from quoteforge.book.l2 import TOP_LEVELS, BookState, L2Book, TakeCost
from quoteforge.book.source import BookSource, Outcome, SourceStats
from quoteforge.book.state import BookStateMachine
from quoteforge.book.wire import BookMessageError, WireDecimalParser

__all__ = [
    "TOP_LEVELS",
    "BookMessageError",
    "BookSource",
    "BookState",
    "BookStateMachine",
    "L2Book",
    "Outcome",
    "SourceStats",
    "TakeCost",
    "WireDecimalParser",
]
