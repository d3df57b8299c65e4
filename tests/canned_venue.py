"""An execution node's adapter reduced to its reconciliation answers, and the answers
it gives (open orders, fills, balances): for the reconciliation questions a strategy
node's remote venue asks, over a real broker (test_split_reconcile.py) and on an
in-process bus (test_remote_venue.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from quoteforge.exchange import ExchangeAdapter, VenueSink
from quoteforge.model import Fill, Liquidity, OrderStatus, OrderUpdate, Side

UPDATES = [
    OrderUpdate(
        "sim",
        "mm-abc-1",
        OrderStatus.PARTIALLY_FILLED,
        1_700_000_000_123_456_789,
        exchange_id="x1",
        filled_lots=3,
        price_ticks=3_000_012,
        qty_lots=500,
        symbol="BTC/USDT",
    ),
    OrderUpdate("sim", "other-7", OrderStatus.OPEN, 5, price_ticks=1, qty_lots=2**53 + 1),
]
FILLS = [
    Fill(
        "sim",
        "BTC/USDT",
        "mm-abc-1",
        "f-9",
        Side.BUY,
        3_000_012,
        3,
        Decimal("-0.0000045"),
        "USDT",
        Liquidity.MAKER,
        1_700_000_000_000_000_001,
    )
]
BALANCES = {"BTC": Decimal("0.12345678"), "USDT": Decimal("1000.000000001")}


class CannedVenue(ExchangeAdapter):
    """The execution node's adapter, reduced to its reconciliation answers."""

    def __init__(self, name: str, *, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.since: list[int] = []

    async def connect(self, sink: VenueSink) -> None:
        return None

    def submit(self, actions: Any) -> None:
        return None

    async def close(self) -> None:
        return None

    async def fetch_open_orders(self) -> list[OrderUpdate] | None:
        if self.fail:
            raise ConnectionError("REST 503")
        return list(UPDATES)

    async def fetch_fills(self, since_ns: int) -> list[Fill] | None:
        self.since.append(since_ns)
        return list(FILLS)

    async def fetch_balances(self) -> dict[str, Decimal] | None:
        return dict(BALANCES)
