# Types of the compiled hot loop (framework/book/_fastbook.c); see quoteforge.book.fast.
from typing import Any

MAX_DECIMALS: int
TOP_LEVELS: int

def apply_diff(
    bids: Any,
    asks: Any,
    bid_keys: list[int],
    bid_qty: dict[int, int],
    ask_keys: list[int],
    ask_qty: dict[int, int],
    price_table: bytes,
    qty_table: bytes,
    /,
) -> int | None: ...
def top_levels(
    keys: list[int], qty: dict[int, int], n: int, negate: bool, /
) -> list[tuple[int, int]]: ...
def consumer_top(
    books: list[Any],
    meta: list[tuple[str, int, int]],
    n: int,
    bids: bool,
    live_only: bool,
    live: Any,
    level_type: Any,
    grid: Any,
    cache: list[Any],
    /,
) -> Any: ...
def apply_depth_text(
    raw: Any,
    symbol: str,
    last: Any,
    futures: bool,
    chained: bool,
    bid_keys: list[int],
    bid_qty: dict[int, int],
    ask_keys: list[int],
    ask_qty: dict[int, int],
    price_table: bytes,
    qty_table: bytes,
    max_jump: int,
    per_second: int,
    elapsed_ns: int,
    /,
) -> tuple[int, int, int | None] | None: ...
def binance_trade_text(
    raw: Any, price_table: bytes, qty_table: bytes, /
) -> tuple[int, int, bool] | None: ...
