"""Price-time priority matching engine of the simulated exchange.

Prices are integer ticks and quantities integer lots; no float ever enters the book.
"""

from __future__ import annotations

import heapq
import math
import operator
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from quoteforge.model import Instrument, OrderType, Side, TimeInForce

__all__ = ["STP_MODES", "MatchingEngine", "SimOrder", "SubmitResult", "Trade"]

STP_MODES: Final = ("cancel_resting", "cancel_taker", "none")

_STP_NONE: Final = 0
_STP_CANCEL_RESTING: Final = 1
_STP_CANCEL_TAKER: Final = 2
_STP_CODES: Final = {
    "none": _STP_NONE,
    "cancel_resting": _STP_CANCEL_RESTING,
    "cancel_taker": _STP_CANCEL_TAKER,
}

_BUY: Final = Side.BUY
_LIMIT: Final = OrderType.LIMIT
_MARKET: Final = OrderType.MARKET
_GTC: Final = TimeInForce.GTC
_IOC: Final = TimeInForce.IOC
_POST_ONLY: Final = TimeInForce.POST_ONLY


@dataclass(slots=True)
class SimOrder:
    """An order inside the engine. The engine mutates it once it is submitted.

    ``price_ticks`` is the limit price; for a MARKET order it is an optional protection
    limit (the order never trades through it), ``None`` for no limit.
    """

    order_id: str
    owner: str
    side: Side
    order_type: OrderType
    tif: TimeInForce
    price_ticks: int | None
    qty_lots: int
    ts_ns: int = 0
    filled_lots: int = 0

    @property
    def remaining_lots(self) -> int:
        return self.qty_lots - self.filled_lots

    @classmethod
    def limit(
        cls,
        order_id: str,
        owner: str,
        side: Side,
        price_ticks: int,
        qty_lots: int,
        tif: TimeInForce = TimeInForce.GTC,
        ts_ns: int = 0,
    ) -> SimOrder:
        return cls(order_id, owner, side, OrderType.LIMIT, tif, price_ticks, qty_lots, ts_ns)

    @classmethod
    def market(
        cls,
        order_id: str,
        owner: str,
        side: Side,
        qty_lots: int,
        limit_ticks: int | None = None,
        ts_ns: int = 0,
    ) -> SimOrder:
        return cls(
            order_id, owner, side, OrderType.MARKET, TimeInForce.IOC, limit_ticks, qty_lots, ts_ns
        )


@dataclass(frozen=True, slots=True)
class Trade:
    """One execution between a resting (maker) and an incoming (taker) order."""

    maker_order_id: str
    maker_owner: str
    taker_order_id: str
    taker_owner: str
    aggressor: Side
    price_ticks: int
    qty_lots: int
    maker_remaining_lots: int
    taker_remaining_lots: int


@dataclass(slots=True)
class SubmitResult:
    """What a submit or replace did.

    ``reason`` explains a rejection; on an accepted order it is empty or notes why the
    remainder was cancelled (self-trade prevention, replace below the filled quantity).
    """

    accepted: bool
    reason: str = ""
    trades: list[Trade] = field(default_factory=list)
    resting: bool = False
    cancelled_remainder_lots: int = 0
    stp_cancelled: list[SimOrder] = field(default_factory=list)

    @property
    def filled_lots(self) -> int:
        return sum(t.qty_lots for t in self.trades)


# A queue entry: the order and its arrival sequence. Cancels leave the entry in the
# queue (O(1) cancel); it is live only while the engine's id map points at this very
# tuple, so a re-queued or re-used order id never revives a stale entry.
_Entry = tuple[SimOrder, int]


class _Level:
    __slots__ = ("live", "price", "queue", "total")

    def __init__(self, price: int) -> None:
        self.price = price
        self.queue: deque[_Entry] = deque()
        self.total = 0  # remaining lots of live orders
        self.live = 0  # live orders in the queue


class _BookSide:
    """Levels of one side, with a min-heap of keys (``sign * price``) for the best level.

    ``sign`` is +1 for asks and -1 for bids, so the smallest key is the best price on
    both sides. Emptied levels leave their key in the heap (lazy deletion); ``in_heap``
    stops a price that comes back from being pushed twice.
    """

    __slots__ = ("heap", "in_heap", "levels", "side", "sign")

    def __init__(self, side: Side) -> None:
        self.side = side
        self.sign = -1 if side is Side.BUY else 1
        self.levels: dict[int, _Level] = {}
        self.heap: list[int] = []
        self.in_heap: set[int] = set()

    def best(self) -> _Level | None:
        heap = self.heap
        levels = self.levels
        sign = self.sign
        while heap:
            level = levels.get(heap[0] * sign)
            if level is not None:
                return level
            self.in_heap.discard(heapq.heappop(heap))
        return None


def _as_int(value: object) -> int | None:
    """``value`` as a plain int (numpy integers included), None for floats, bools etc."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _rejected(reason: str, cancelled_lots: int = 0) -> SubmitResult:
    return SubmitResult(False, reason, [], False, cancelled_lots, [])


class MatchingEngine:
    """A limit order book for one instrument with price-time priority matching.

    Time priority is arrival order in the engine; ``SimOrder.ts_ns`` is carried along
    for the caller and not used to sort. Order ids must be unique among resting orders;
    the id of a finished order can be used again.

    ``self_trade_prevention`` decides what happens when an order would trade with a
    resting order of the same owner: ``"cancel_resting"`` cancels the resting order and
    goes on matching, ``"cancel_taker"`` cancels the rest of the incoming order, and
    ``"none"`` lets them trade.
    """

    def __init__(
        self, instrument: Instrument, *, self_trade_prevention: str = "cancel_resting"
    ) -> None:
        code = _STP_CODES.get(self_trade_prevention)
        if code is None:
            raise ValueError(
                f"self_trade_prevention {self_trade_prevention!r} is not supported: "
                f"expected one of {', '.join(STP_MODES)}"
            )
        self.instrument = instrument
        self.self_trade_prevention = self_trade_prevention
        self._stp = code
        self._min_price = instrument.min_price_ticks
        self._max_price = instrument.max_price_ticks
        # The instrument's minimums as integers, so checking an order needs no Decimal.
        self._min_lots = max(1, math.ceil(instrument.min_qty / instrument.lot_size))
        self._min_notional_units = math.ceil(
            instrument.min_notional / (instrument.tick_size * instrument.lot_size)
        )
        self._bids = _BookSide(Side.BUY)
        self._asks = _BookSide(Side.SELL)
        self._live: dict[str, _Entry] = {}
        self._by_owner: dict[str, dict[str, SimOrder]] = {}
        # Level changes since the last drain, keyed like the heaps (-price for bids).
        self._changes: dict[int, int] = {}
        self._seq = 0

    # -- order entry ----------------------------------------------------------------------
    def submit(self, order: SimOrder) -> SubmitResult:
        """Match ``order`` against the book; rest, fill or cancel it by its type and TIF."""
        reason = self._check_new(order)
        if reason is not None:
            return _rejected(reason)
        return self._execute(order)

    def cancel(self, order_id: str) -> SimOrder | None:
        """Remove a resting order; None when the id is unknown or the order is done."""
        entry = self._live.pop(order_id, None)
        if entry is None:
            return None
        order = entry[0]
        self._unlink(order)
        return order

    def replace(
        self, order_id: str, new_price_ticks: int, new_qty_lots: int, ts_ns: int
    ) -> SubmitResult:
        """Change a resting order's price and total quantity.

        The order keeps its place in the queue when the price is unchanged and the
        quantity does not grow; otherwise it is taken out and entered again as a new
        arrival stamped ``ts_ns``, and may trade. A post-only order that would then
        cross is rejected and its remainder cancelled. A new total at or below the filled
        quantity cancels the remainder. A rejected request for a bad price or quantity
        leaves the order as it was.
        """
        entry = self._live.get(order_id)
        if entry is None:
            return _rejected(
                f"cannot replace order {order_id!r}: no resting order has this id "
                "(never submitted, already filled or cancelled)"
            )
        order = entry[0]
        price = _as_int(new_price_ticks)
        if price is None:
            return _rejected(
                f"new_price_ticks must be an int number of ticks, got {new_price_ticks!r}; "
                "convert prices with Instrument.price_to_ticks"
            )
        qty = _as_int(new_qty_lots)
        if qty is None:
            return _rejected(
                f"new_qty_lots must be an int number of lots, got {new_qty_lots!r}; "
                "convert quantities with Instrument.qty_to_lots"
            )
        if qty < 0:
            return _rejected(f"new_qty_lots must not be negative, got {qty}")
        reason = self._check_price(price)
        if reason is not None:
            return _rejected(reason)
        if qty <= order.filled_lots:
            remaining = order.qty_lots - order.filled_lots
            self.cancel(order_id)
            return SubmitResult(
                True,
                f"new quantity {qty} lots is not above the {order.filled_lots} lots already "
                f"filled: the order is done and its remaining {remaining} lots are cancelled",
                [],
                False,
                remaining,
                [],
            )
        reason = self._check_minimums(price, qty)
        if reason is not None:
            return _rejected(reason)

        book = self._bids if order.side is _BUY else self._asks
        if price == order.price_ticks and qty <= order.qty_lots:
            if qty < order.qty_lots:
                level = book.levels[price]
                level.total -= order.qty_lots - qty
                order.qty_lots = qty
                self._note_change(price * book.sign, level.total)
            return SubmitResult(True, "", [], True, 0, [])

        del self._live[order_id]
        self._unlink(order)
        if order.tif is _POST_ONLY:
            best = (self._asks if order.side is _BUY else self._bids).best()
            if best is not None and (
                best.price <= price if order.side is _BUY else best.price >= price
            ):
                return _rejected(
                    f"post-only order would cross at {best.price}; "
                    f"the original order {order_id!r} is cancelled",
                    order.qty_lots - order.filled_lots,
                )
        order.price_ticks = price
        order.qty_lots = qty
        order.ts_ns = ts_ns
        return self._execute(order)

    def cancel_all(self, owner: str) -> list[SimOrder]:
        """Cancel every resting order of ``owner``; returns them in time order."""
        orders = self.orders_of(owner)
        for order in orders:
            self.cancel(order.order_id)
        return orders

    # -- reading --------------------------------------------------------------------------
    def get(self, order_id: str) -> SimOrder | None:
        """The resting order with this id, None when it is not in the book."""
        entry = self._live.get(order_id)
        return None if entry is None else entry[0]

    def __len__(self) -> int:
        """Number of resting orders."""
        return len(self._live)

    def best_bid(self) -> tuple[int, int] | None:
        """(price ticks, total lots) of the best bid, None when there is no bid."""
        level = self._bids.best()
        return None if level is None else (level.price, level.total)

    def best_ask(self) -> tuple[int, int] | None:
        """(price ticks, total lots) of the best ask, None when there is no ask."""
        level = self._asks.best()
        return None if level is None else (level.price, level.total)

    def levels(self, side: Side, n: int) -> list[tuple[int, int]]:
        """Up to ``n`` levels of one side as (price ticks, total lots), best first."""
        book = self._bids if side is _BUY else self._asks
        if n <= 0 or not book.levels:
            return []
        sign = book.sign
        levels = book.levels
        keys = heapq.nsmallest(n, [price * sign for price in levels])
        return [(key * sign, levels[key * sign].total) for key in keys]

    def queue_ahead(self, order_id: str) -> int:
        """Lots resting ahead of this order at its price."""
        entry = self._live.get(order_id)
        if entry is None:
            raise KeyError(f"order {order_id!r} is not resting in the book")
        order = entry[0]
        book = self._bids if order.side is _BUY else self._asks
        live = self._live
        ahead = 0
        for queued in book.levels[order.price_ticks].queue:  # type: ignore[index]
            if queued is entry:
                break
            other = queued[0]
            if live.get(other.order_id) is queued:
                ahead += other.qty_lots - other.filled_lots
        return ahead

    def orders_of(self, owner: str) -> list[SimOrder]:
        """Resting orders of ``owner`` in the order they (last) joined the book."""
        orders = self._by_owner.get(owner)
        return list(orders.values()) if orders else []

    def drain_level_changes(self) -> list[tuple[Side, int, int]]:
        """(side, price ticks, new total lots; 0 = level gone) of every level whose total
        changed since the last call, one entry per level with its latest total, ordered
        by each level's latest change."""
        changes = self._changes
        if not changes:
            return []
        self._changes = {}
        return [
            (Side.SELL, key, total) if key > 0 else (Side.BUY, -key, total)
            for key, total in changes.items()
        ]

    # -- internals ------------------------------------------------------------------------
    def _check_price(self, price: int) -> str | None:
        if price < self._min_price:
            return (
                f"price {price} ticks is below the instrument's minimum of {self._min_price} ticks"
            )
        top = self._max_price
        if top is not None and price > top:
            return f"price {price} ticks is above the instrument's maximum of {top} ticks"
        return None

    def _check_minimums(self, price: int | None, qty: int) -> str | None:
        if qty < self._min_lots:
            return (
                f"quantity {qty} lots is below the instrument's minimum of "
                f"{self._min_lots} lots ({self.instrument.min_qty})"
            )
        if (
            price is not None
            and self._min_notional_units
            and price * qty < (self._min_notional_units)
        ):
            return (
                f"notional {self.instrument.notional(price, qty)} is below the "
                f"instrument's minimum of {self.instrument.min_notional}"
            )
        return None

    def _check_new(self, order: SimOrder) -> str | None:
        if order.order_id in self._live:
            return (
                f"duplicate order_id {order.order_id!r}: an order with this id is already "
                "resting; use a new id"
            )
        qty = order.qty_lots
        if type(qty) is not int:
            converted = _as_int(qty)
            if converted is None:
                return (
                    f"qty_lots must be an int number of lots, got {qty!r}; "
                    "convert quantities with Instrument.qty_to_lots"
                )
            order.qty_lots = qty = converted
        if qty <= 0:
            return f"qty_lots must be positive, got {qty}"
        if order.filled_lots != 0:
            return f"a new order must have filled_lots=0, got {order.filled_lots}"
        if order.side is not _BUY and order.side is not Side.SELL:
            return f"side must be Side.BUY or Side.SELL, got {order.side!r}"
        tif = order.tif
        if tif is not _GTC and tif is not _IOC and tif is not _POST_ONLY:
            return f"tif must be TimeInForce.GTC, IOC or POST_ONLY, got {tif!r}"
        price = order.price_ticks
        if order.order_type is _LIMIT:
            if price is None:
                return (
                    "a limit order needs price_ticks; "
                    "send an OrderType.MARKET order to trade without a price"
                )
        elif order.order_type is _MARKET:
            if tif is _POST_ONLY:
                return (
                    "a market order cannot be post-only: "
                    "send a limit order with TimeInForce.POST_ONLY"
                )
        else:
            return (
                f"order_type must be OrderType.LIMIT or OrderType.MARKET, got {order.order_type!r}"
            )
        if price is not None:
            if type(price) is not int:
                converted = _as_int(price)
                if converted is None:
                    return (
                        f"price_ticks must be an int number of ticks, got {price!r}; "
                        "convert prices with Instrument.price_to_ticks"
                    )
                order.price_ticks = price = converted
            top = self._max_price
            if price < self._min_price or (top is not None and price > top):
                return self._check_price(price)
        if qty < self._min_lots or self._min_notional_units:
            return self._check_minimums(price if order.order_type is _LIMIT else None, qty)
        return None

    def _execute(self, order: SimOrder) -> SubmitResult:
        """Match a validated order, then rest or cancel what is left."""
        is_buy = order.side is _BUY
        best = (self._asks if is_buy else self._bids).best()
        limit = order.price_ticks
        if best is None or (
            limit is not None and (best.price > limit if is_buy else best.price < limit)
        ):
            # Nothing to trade with: the common case of an order joining the book.
            if order.order_type is _LIMIT and order.tif is not _IOC:
                self._rest(order, self._bids if is_buy else self._asks)
                return SubmitResult(True, "", [], True, 0, [])
            return SubmitResult(True, "", [], False, order.qty_lots - order.filled_lots, [])
        if order.tif is _POST_ONLY:
            return _rejected(f"post-only order would cross at {best.price}")
        trades: list[Trade] = []
        stp_cancelled: list[SimOrder] = []
        stopped = self._match(order, is_buy, trades, stp_cancelled)
        remaining = order.qty_lots - order.filled_lots
        if not remaining:
            return SubmitResult(True, "", trades, False, 0, stp_cancelled)
        if stopped:
            return SubmitResult(
                True,
                f"self-trade prevention cancelled the remaining {remaining} lots: "
                f"the next resting order is owner {order.owner!r}'s own",
                trades,
                False,
                remaining,
                stp_cancelled,
            )
        if order.order_type is _LIMIT and order.tif is not _IOC:
            self._rest(order, self._bids if is_buy else self._asks)
            return SubmitResult(True, "", trades, True, 0, stp_cancelled)
        return SubmitResult(True, "", trades, False, remaining, stp_cancelled)

    def _match(
        self,
        taker: SimOrder,
        is_buy: bool,
        trades: list[Trade],
        stp_cancelled: list[SimOrder],
    ) -> bool:
        """Trade ``taker`` against the opposite side; True when self-trade prevention
        stopped it. Written as one loop with locals because it is the hot path."""
        book = self._asks if is_buy else self._bids
        levels = book.levels
        heap = book.heap
        sign = book.sign
        live = self._live
        changes = self._changes
        stp = self._stp
        limit = taker.price_ticks
        owner = taker.owner
        taker_id = taker.order_id
        aggressor = taker.side
        remaining = taker.qty_lots - taker.filled_lots
        stopped = False
        while remaining:
            level = None
            while heap:
                level = levels.get(heap[0] * sign)
                if level is not None:
                    break
                book.in_heap.discard(heapq.heappop(heap))
            if level is None:
                break
            price = level.price
            if limit is not None and (price > limit if is_buy else price < limit):
                break
            queue = level.queue
            before = level.total
            while remaining and queue:
                entry = queue[0]
                maker = entry[0]
                maker_id = maker.order_id
                if live.get(maker_id) is not entry:
                    queue.popleft()
                    continue
                maker_left = maker.qty_lots - maker.filled_lots
                if stp and maker.owner == owner:
                    if stp == _STP_CANCEL_TAKER:
                        stopped = True
                        break
                    queue.popleft()
                    del live[maker_id]
                    self._forget_owner(maker)
                    level.live -= 1
                    level.total -= maker_left
                    stp_cancelled.append(maker)
                    continue
                fill = remaining if remaining < maker_left else maker_left
                maker.filled_lots += fill
                maker_left -= fill
                remaining -= fill
                level.total -= fill
                trades.append(
                    Trade(
                        maker_id,
                        maker.owner,
                        taker_id,
                        owner,
                        aggressor,
                        price,
                        fill,
                        maker_left,
                        remaining,
                    )
                )
                if not maker_left:
                    queue.popleft()
                    del live[maker_id]
                    self._forget_owner(maker)
                    level.live -= 1
            if level.total != before:
                key = price * sign
                changes.pop(key, None)
                changes[key] = level.total
            if not level.live:
                del levels[price]
            if stopped:
                break
        taker.filled_lots = taker.qty_lots - remaining
        return stopped

    def _rest(self, order: SimOrder, book: _BookSide) -> None:
        price = order.price_ticks
        assert price is not None  # only limit orders rest
        level = book.levels.get(price)
        if level is None:
            level = book.levels[price] = _Level(price)
            key = price * book.sign
            if key not in book.in_heap:
                book.in_heap.add(key)
                heapq.heappush(book.heap, key)
        self._seq += 1
        entry = (order, self._seq)
        level.queue.append(entry)
        level.live += 1
        level.total += order.qty_lots - order.filled_lots
        self._live[order.order_id] = entry
        owned = self._by_owner.get(order.owner)
        if owned is None:
            owned = self._by_owner[order.owner] = {}
        owned[order.order_id] = order
        changes = self._changes
        key = price * book.sign
        changes.pop(key, None)
        changes[key] = level.total

    def _unlink(self, order: SimOrder) -> None:
        """Take an order that has left ``_live`` out of its level's totals."""
        book = self._bids if order.side is _BUY else self._asks
        price = order.price_ticks
        assert price is not None  # only limit orders rest
        level = book.levels[price]
        level.live -= 1
        level.total -= order.qty_lots - order.filled_lots
        if not level.live:
            del book.levels[price]
        elif len(level.queue) > 2 * level.live + 16:
            # Compact once dead entries dominate, so cancels stay amortised O(1) and a
            # queue never grows without bound behind a long-lived order.
            live = self._live
            level.queue = deque(e for e in level.queue if live.get(e[0].order_id) is e)
        self._forget_owner(order)
        self._note_change(price * book.sign, level.total)

    def _forget_owner(self, order: SimOrder) -> None:
        owned = self._by_owner[order.owner]
        del owned[order.order_id]
        if not owned:
            del self._by_owner[order.owner]

    def _note_change(self, key: int, total: int) -> None:
        changes = self._changes
        changes.pop(key, None)
        changes[key] = total
