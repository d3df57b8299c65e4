"""The compiled hot loops of the order book, when they are available.

``quoteforge.book._fastbook`` is a small C extension built at install time when a C
compiler is present (``setup.py``; it is optional, so an install without a compiler
still works). It converts a diff's text levels to integer ticks and lots and applies
them to an ``L2Book`` in one call, reads a side's top levels and merges a consumer
book's venues, with exactly the results of the interpreted path: the same books, the
same top-of-book signals, the same errors (anything unusual is handed back to the
interpreted path, which raises the clear error). A venue's own wire reading lives with
the venue: ``quoteforge.exchanges.binance.fast`` reads a whole Binance ``depthUpdate``
from its JSON text with the same level apply. ``docs/books.md`` has the measurements.

Set ``QUOTEFORGE_PURE_PYTHON=1`` to run the interpreted path even when the extension is
installed (to compare the two, or to rule the extension out while debugging).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = [
    "COMPILED",
    "ApplyDiff",
    "ConsumerTop",
    "TopLevels",
    "apply_diff",
    "consumer_top",
    "top_levels",
]

ApplyDiff = Callable[
    [Any, Any, list[int], dict[int, int], list[int], dict[int, int], bytes, bytes], int | None
]
"""``apply_diff(bids, asks, bid_keys, bid_qty, ask_keys, ask_qty, price_table,
qty_table)`` -> change code (bid | ask << 2; 0 none, 1 below the top levels, 2 top
levels) or None with the book untouched."""

TopLevels = Callable[[list[int], dict[int, int], int, bool], list[tuple[int, int]]]
"""``top_levels(keys, qty, n, negate)`` -> the best ``n`` (ticks, lots) of one side."""

ConsumerTop = Callable[
    [list[Any], list[tuple[str, int, int]], int, bool, bool, Any, Any, Any, list[Any]], Any
]
"""``consumer_top(books, meta, n, bids, live_only, live, level_type, grid, cache)`` ->
a consumer book's best ``n`` merged levels of one side, served from ``cache`` while no
venue's top levels changed; None when a value needs the interpreted merge."""

apply_diff: ApplyDiff | None = None
top_levels: TopLevels | None = None
consumer_top: ConsumerTop | None = None
if os.environ.get("QUOTEFORGE_PURE_PYTHON", "").strip().lower() not in ("1", "true", "yes"):
    try:
        from quoteforge.book._fastbook import apply_diff, consumer_top, top_levels
    except ImportError:  # built without a C compiler: the interpreted path serves
        apply_diff = top_levels = consumer_top = None

COMPILED = apply_diff is not None
"""Whether book updates run through the compiled extension in this process."""
