"""ccxt's structures turned into the kernel's: an order book ccxt keeps (floats, whole
sides) applied to an exact ``L2Book`` as level changes under the book state machine,
and ccxt order and trade structures as ``OrderUpdate`` and ``Fill``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from quoteforge.book import BookState, L2Book
from quoteforge.book.state import BookStateMachine
from quoteforge.clock import Clock
from quoteforge.exchanges.ccxt.venues import MarketGridError, grid_units
from quoteforge.model import Fill, Instrument, Liquidity, OrderStatus, Side

__all__ = ["CCXT_STATUS", "BookFeed", "client_id_of", "fill_from_trade", "order_status_of"]

CCXT_STATUS = {
    "open": OrderStatus.OPEN,
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELLED,
    "cancelled": OrderStatus.CANCELLED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}
"""ccxt's unified order statuses (an ``open`` order with a fill is partly filled)."""

# Where venues put our client id in the raw order or trade when ccxt's parser does not
# lift it into ``clientOrderId`` (Kraken's websocket parser reads order_userref).
_CLIENT_ID_KEYS = ("clientOrderId", "cl_ord_id", "clOrdId", "orderLinkId", "c", "client_oid")


# Where venues put the cumulative filled quantity in a raw order report.
_FILLED_KEYS = ("cum_qty", "z", "cumExecQty", "accFillSz", "executedQty")


def client_id_of(item: Mapping[str, Any]) -> str | None:
    """The client id in a ccxt order or trade: the unified field, else the raw one."""
    unified = item.get("clientOrderId")
    if unified:
        return str(unified)
    info = item.get("info")
    if isinstance(info, Mapping):
        for key in _CLIENT_ID_KEYS:
            value = info.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def order_status_of(
    order: Mapping[str, Any], instrument: Instrument
) -> tuple[OrderStatus, int | None]:
    """The kernel status and cumulative filled lots (None: not reported) of a ccxt order."""
    status = CCXT_STATUS.get(str(order.get("status") or "open"), OrderStatus.OPEN)
    filled = order.get("filled")
    info = order.get("info")
    if filled is None and isinstance(info, Mapping):
        # Some ccxt websocket parsers leave ``filled`` empty though the venue sent it.
        filled = next((info[k] for k in _FILLED_KEYS if info.get(k) is not None), None)
    lots = None
    if filled is not None:
        lots = grid_units(filled, float(instrument.lot_size), "filled quantity")
        if status is OrderStatus.OPEN and lots > 0:
            status = OrderStatus.PARTIALLY_FILLED
    return status, lots


def fill_from_trade(
    venue: str,
    symbol: str,
    instrument: Instrument,
    trade: Mapping[str, Any],
    client_id: str,
    fee_sign: int = 1,
) -> Fill:
    """One of our trades (``watch_my_trades`` / ``fetch_my_trades``) as a ``Fill``.

    The fill id is the venue's trade id as its private stream and its REST trade
    history both give it (Kraken's executions id each report, not the trade: its
    ``trade_id`` is used), prefixed by the symbol, so a fill recovered over REST after a
    disconnect is the same fill the stream may also deliver."""
    info = trade.get("info") if isinstance(trade.get("info"), Mapping) else {}
    raw_id = info.get("trade_id") if isinstance(info, Mapping) else None
    trade_id = str(raw_id if raw_id is not None else trade.get("id"))
    fee = trade.get("fee") or {}
    cost = fee.get("cost")
    if cost is not None and fee_sign < 0:
        cost = -cost
    taker_or_maker = trade.get("takerOrMaker")
    ts = trade.get("timestamp")
    return Fill(
        venue=venue,
        symbol=symbol,
        fill_id=f"{symbol}:{trade_id}",
        client_id=client_id,
        side=Side.BUY if trade.get("side") == "buy" else Side.SELL,
        price_ticks=grid_units(trade["price"], float(instrument.tick_size), "fill price"),
        qty_lots=grid_units(trade["amount"], float(instrument.lot_size), "fill quantity"),
        fee=Decimal(repr(cost)) if isinstance(cost, float) else Decimal(str(cost or 0)),
        fee_asset=str(fee.get("currency") or ""),
        liquidity=Liquidity.MAKER if taker_or_maker == "maker" else Liquidity.TAKER,
        ts_ns=int(ts) * 1_000_000 if ts else 0,
    )


class BookFeed:
    """One symbol's exact book fed from the book ccxt keeps.

    Each time ``watch_order_book`` (or ``fetch_order_book``) returns, the whole ccxt
    book is converted to ticks and lots and only the levels that differ from the last
    one are applied, so the book's version counters move as with a diff stream. A book
    ccxt hands over crossed or off the grid is not applied: the feed asks for a resync.
    """

    def __init__(
        self,
        instrument: Instrument,
        clock: Clock,
        observer: Callable[[L2Book, BookState, BookState, str], None],
        depth: int | None = None,
        stale_after_s: float | None = None,
    ) -> None:
        self.instrument = instrument
        self.book = L2Book(instrument)
        self.depth = depth
        stale_ns = int(stale_after_s * 1e9) if stale_after_s else None
        self.machine = BookStateMachine(self.book, clock, stale_ns)
        self.machine.add_observer(observer)
        self._tick = float(instrument.tick_size)
        self._lot = float(instrument.lot_size)
        self._bids: dict[float, float] = {}  # the last book as ccxt held it
        self._asks: dict[float, float] = {}
        self.waiting_since = time.monotonic()

    @property
    def state(self) -> BookState:
        return self.book.state

    def _changes(
        self, old: dict[float, float], rows: Any
    ) -> tuple[dict[float, float], list[tuple[int, int]]]:
        """The side as ccxt holds it (price -> size, floats) and the levels that differ
        from ``old``, converted to ticks and lots (0 lots: removed). Only changed levels
        are converted, so an update costs a dict build and compare, not a conversion of
        every level."""
        rows = rows if self.depth is None else rows[: self.depth]
        new = {row[0]: row[1] for row in rows if row[1]}
        tick, lot = self._tick, self._lot
        changes = [
            (grid_units(p, tick, "book price"), grid_units(q, lot, "book quantity"))
            for p, q in new.items()
            if old.get(p) != q
        ]
        changes += [(grid_units(p, tick, "book price"), 0) for p in old if p not in new]
        return new, changes

    def apply(self, ccxt_book: Mapping[str, Any], now_ns: int) -> str | None:
        """Apply a ccxt book; None when applied, else why it must be resynchronised."""
        bid_rows = ccxt_book.get("bids") or []
        ask_rows = ccxt_book.get("asks") or []
        # ccxt keeps each side sorted best first.
        if bid_rows and ask_rows and bid_rows[0][0] >= ask_rows[0][0]:
            return f"crossed book from ccxt: bid {bid_rows[0][0]} >= ask {ask_rows[0][0]}"
        try:
            bids, bid_changes = self._changes(self._bids, bid_rows)
            asks, ask_changes = self._changes(self._asks, ask_rows)
        except MarketGridError as exc:
            return f"ccxt book off the venue's grid: {exc}"
        self._bids, self._asks = bids, asks
        if bid_changes or ask_changes or self.book.state is not BookState.LIVE:
            self.book.apply_deltas(bid_changes, ask_changes, now_ns)
        self.machine.touch(now_ns)
        if self.book.state is not BookState.LIVE:
            self.machine.transition(BookState.LIVE, "ccxt book received")
        return None

    def resyncing(self, reason: str) -> None:
        """The book can no longer be trusted and a new one is on its way."""
        if self.book.state in (BookState.LIVE, BookState.STALE):
            self.machine.transition(BookState.RESYNCING, reason)
            self.waiting_since = time.monotonic()

    def waited_s(self) -> float:
        """Seconds this book has waited for ccxt's next book while not LIVE (0: LIVE)."""
        if self.book.state is BookState.LIVE:
            return 0.0
        return time.monotonic() - self.waiting_since

    def down(self, reason: str) -> None:
        """The connection carrying the book is down (or silent)."""
        self.machine.feed_down(reason)
