"""Binance messages read straight from their JSON text by compiled code, when it is
available.

``quoteforge.exchanges.binance._fastparse`` is an optional C extension built beside
``quoteforge.book._fastbook`` (``setup.py``; without a C compiler the install goes on).
For a live Binance book it reads a whole ``depthUpdate`` from its JSON text, makes the
update-id decision of the interpreted source itself and applies the levels with the
book's own compiled apply, so the common message is never decoded into Python objects;
for the replay of Binance trades it reads a trade's price, size and maker side. Results
are exactly those of the interpreted path: anything unusual is None and the interpreted
code decodes the text, decides and raises the clear error. ``docs/books.md`` has the
measurements.

The parsing is Binance's, so it lives here rather than in the venue-neutral book
(``quoteforge.book.fast``). ``QUOTEFORGE_PURE_PYTHON=1`` turns it off too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = [
    "COMPILED",
    "ApplyDepthText",
    "BinanceTradeText",
    "apply_depth_text",
    "binance_trade_text",
]

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
(dropped), else applied with the change code of ``quoteforge.book.fast.apply_diff``,
plus 16 when the book is crossed or locked afterwards; ts_ns is ``E`` in ns or None.
None, with the book untouched, for anything else (the interpreted source decides)."""

BinanceTradeText = Callable[[str, bytes, bytes], tuple[int, int, bool] | None]
"""``binance_trade_text(raw, price_table, qty_table)``: one Binance trade message read
from its JSON text -> (price ticks, quantity lots, buyer is maker), or None for anything
but the plain spelling with "p", "q" and "m" (the caller decodes it in full)."""

apply_depth_text: ApplyDepthText | None = None
binance_trade_text: BinanceTradeText | None = None
if os.environ.get("QUOTEFORGE_PURE_PYTHON", "").strip().lower() not in ("1", "true", "yes"):
    try:
        from quoteforge.exchanges.binance._fastparse import apply_depth_text, binance_trade_text
    except ImportError:  # built without a C compiler: the interpreted path serves
        apply_depth_text = binance_trade_text = None

COMPILED = apply_depth_text is not None
"""Whether Binance messages are read by the compiled extension in this process."""
