"""The compiled hot loop of Binance book updates, when it is available.

``quoteforge.book._fastbook`` is a small C extension built at install time when a C
compiler is present (``setup.py``; it is optional, so an install without a compiler
still works). It converts a diff's text levels to integer ticks and lots and applies
them to an ``L2Book`` in one call, with exactly the results of the interpreted path:
the same books, the same top-of-book signals, the same errors (anything unusual is
handed back to the interpreted path, which raises the clear error). For a live Binance
book it also reads a whole ``depthUpdate`` from its JSON text and makes the update-id
decision itself, so the common message is never decoded into Python objects.
``docs/books.md`` has the measurements.

Set ``QUOTEFORGE_PURE_PYTHON=1`` to run the interpreted path even when the extension is
installed (to compare the two, or to rule the extension out while debugging).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = [
    "COMPILED",
    "ApplyDepthText",
    "ApplyDiff",
    "BinanceTradeText",
    "ConsumerTop",
    "TopLevels",
    "apply_depth_text",
    "apply_diff",
    "binance_trade_text",
    "consumer_top",
    "top_levels",
]

ApplyDiff = Callable[
    [Any, Any, list[int], dict[int, int], list[int], dict[int, int], bytes, bytes], int | None
]
"""``apply_diff(bids, asks, bid_keys, bid_qty, ask_keys, ask_qty, price_table,
qty_table)`` -> change code (bid | ask << 2; 0 none, 1 below the top levels, 2 top
levels) or None with the book untouched."""

ApplyDepthText = Callable[
    [
        Any,
        str,
        Any,
        bool,
        bool,
        list[int],
        dict[int, int],
        list[int],
        dict[int, int],
        bytes,
        bytes,
        int,
        int,
        int,
    ],
    tuple[int, int, int | None] | None,
]
"""``apply_depth_text(raw, symbol, last, futures, chained, bid_keys, bid_qty, ask_keys,
ask_qty, price_table, qty_table, max_jump, per_second, elapsed_ns)``: one Binance
depthUpdate read from its JSON text for a live book whose last applied update id is
``last``, accepted only when ``u`` is within ``max_jump + per_second * elapsed_ns //
10**9`` ids of ``last``. -> (code, u, ts_ns): code -1 when the event is already covered
(dropped), else applied with ``apply_diff``'s change code, plus 16 when the book is
crossed or locked afterwards; ts_ns is ``E`` in ns or None. None, with the book
untouched, for anything else (the interpreted source decides)."""

BinanceTradeText = Callable[[str, bytes, bytes], tuple[int, int, bool] | None]
"""``binance_trade_text(raw, price_table, qty_table)``: one Binance trade message read
from its JSON text -> (price ticks, quantity lots, buyer is maker), or None for anything
but the plain spelling with "p", "q" and "m" (the caller decodes it in full)."""

TopLevels = Callable[[list[int], dict[int, int], int, bool], list[tuple[int, int]]]
"""``top_levels(keys, qty, n, negate)`` -> the best ``n`` (ticks, lots) of one side."""

ConsumerTop = Callable[
    [list[Any], list[tuple[str, int, int]], int, bool, bool, Any, Any, Any, list[Any]], Any
]
"""``consumer_top(books, meta, n, bids, live_only, live, level_type, grid, cache)`` ->
a consumer book's best ``n`` merged levels of one side, served from ``cache`` while no
venue's top levels changed; None when a value needs the interpreted merge."""

apply_diff: ApplyDiff | None = None
apply_depth_text: ApplyDepthText | None = None
binance_trade_text: BinanceTradeText | None = None
top_levels: TopLevels | None = None
consumer_top: ConsumerTop | None = None
if os.environ.get("QUOTEFORGE_PURE_PYTHON", "").strip().lower() not in ("1", "true", "yes"):
    try:
        from quoteforge.book._fastbook import (
            apply_depth_text,
            apply_diff,
            binance_trade_text,
            consumer_top,
            top_levels,
        )
    except ImportError:  # built without a C compiler: the interpreted path serves
        apply_diff = apply_depth_text = binance_trade_text = top_levels = consumer_top = None

COMPILED = apply_diff is not None
"""Whether book updates run through the compiled extension in this process."""
