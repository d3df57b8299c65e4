"""Order books: exact L2 books, their states, and the venue integrity rules."""

from quoteforge.book.l2 import BookState, L2Book

__all__ = ["BookState", "L2Book"]
