# Types of the compiled Binance message reader (exchanges/binance/_fastparse.c); see
# quoteforge.exchanges.binance.fast.
from typing import Any

MAX_DECIMALS: int

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
