# Types of the compiled book hot loops (framework/book/_fastbook.c); see quoteforge.book.fast.
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
