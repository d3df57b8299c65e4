"""The fault plan and the minimal matcher behind every local replica venue.

``FaultPlan`` holds the faults a test armed through a replica's control API
(``await replica.fail_http(429, retry_after=1)`` ...) until the server or the venue code
consumes them; ``ReplicaMarket`` keeps one symbol's book and our orders and matches
them. The server that ties both to sockets is ``ReplicaServer`` in
``quoteforge.exchanges.testing.replica`` (also importable from here, where it lived first).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quoteforge.exchanges.testing.replica import ReplicaServer

__all__ = [
    "FaultPlan",
    "OrderRejectedError",
    "ReplicaAccount",
    "ReplicaMarket",
    "ReplicaOrder",
    "ReplicaServer",
    "ReplicaTrade",
]

ZERO = Decimal(0)


# ---------------------------------------------------------------------------------------
# Fault plan
# ---------------------------------------------------------------------------------------


@dataclass
class _HttpFault:
    status: int
    count: int
    retry_after: float | None
    path: str | None
    body: str


@dataclass
class _Timeout:
    count: int
    after_processing: bool
    delay: float
    path: str | None


@dataclass
class FaultPlan:
    """Faults waiting to happen. The server and the venue code consume them; tests arm
    them through the replica's control methods, which also say what each one does."""

    http: list[_HttpFault] = field(default_factory=list)
    timeouts: list[_Timeout] = field(default_factory=list)
    down_until: float = 0.0
    silent_until: float = 0.0
    skip_sequence: int = 0
    corrupt_checksum: int = 0
    reject_orders: list[str] = field(default_factory=list)
    partial_fills: list[Decimal] = field(default_factory=list)
    clock_offset_ms: int = 0

    def is_down(self) -> bool:
        return time.monotonic() < self.down_until

    def is_silent(self) -> bool:
        return time.monotonic() < self.silent_until

    def arm_http(
        self, status: int, count: int, retry_after: float | None, path: str | None, body: str
    ) -> None:
        self.http.append(_HttpFault(status, count, retry_after, path, body))

    def arm_timeout(
        self, count: int, after_processing: bool, delay: float, path: str | None
    ) -> None:
        self.timeouts.append(_Timeout(count, after_processing, delay, path))

    def take_http(self, path: str, *, aimed_only: bool = False) -> _HttpFault | None:
        """The next HTTP fault for ``path`` (one use of it); ``aimed_only``: only a fault
        armed for this path, not one armed for every request."""
        for fault in self.http:
            if (fault.path is None and not aimed_only) or (
                fault.path is not None and path.startswith(fault.path)
            ):
                fault.count -= 1
                if fault.count <= 0:
                    self.http.remove(fault)
                return fault
        return None

    def take_timeout(self, path: str) -> _Timeout | None:
        for fault in self.timeouts:
            if fault.path is None or path.startswith(fault.path):
                fault.count -= 1
                if fault.count <= 0:
                    self.timeouts.remove(fault)
                return fault
        return None

    def take_skip(self) -> bool:
        if self.skip_sequence > 0:
            self.skip_sequence -= 1
            return True
        return False

    def take_corrupt(self) -> bool:
        if self.corrupt_checksum > 0:
            self.corrupt_checksum -= 1
            return True
        return False

    def take_reject(self) -> str | None:
        return self.reject_orders.pop(0) if self.reject_orders else None

    def take_partial(self) -> Decimal | None:
        return self.partial_fills.pop(0) if self.partial_fills else None


# ---------------------------------------------------------------------------------------
# Matcher
# ---------------------------------------------------------------------------------------


class OrderRejectedError(Exception):
    """The replica refuses an order; ``code`` is the venue-neutral reason key."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ReplicaOrder:
    order_id: int
    client_id: str
    symbol: str
    side: str  # "buy" | "sell"
    kind: str  # "limit" | "market"
    tif: str  # "gtc" | "ioc" | "post_only"
    price: Decimal | None
    qty: Decimal
    created_ms: int
    filled: Decimal = ZERO
    quote_filled: Decimal = ZERO
    status: str = "new"  # new, partially_filled, filled, canceled, expired
    updated_ms: int = 0
    locked: Decimal = ZERO
    venue_id: str = ""

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled

    @property
    def is_open(self) -> bool:
        return self.status in ("new", "partially_filled")


@dataclass
class ReplicaTrade:
    trade_id: int
    order: ReplicaOrder
    price: Decimal
    qty: Decimal
    fee: Decimal
    fee_asset: str
    maker: bool
    ts_ms: int


@dataclass
class ReplicaAccount:
    """Balances with free and locked parts; orders lock what they could spend."""

    free: dict[str, Decimal] = field(default_factory=dict)
    locked: dict[str, Decimal] = field(default_factory=dict)

    def lock(self, asset: str, amount: Decimal) -> None:
        if self.free.get(asset, ZERO) < amount:
            raise OrderRejectedError("insufficient_funds", f"insufficient {asset}")
        self.free[asset] = self.free.get(asset, ZERO) - amount
        self.locked[asset] = self.locked.get(asset, ZERO) + amount

    def unlock(self, asset: str, amount: Decimal) -> None:
        self.locked[asset] = self.locked.get(asset, ZERO) - amount
        self.free[asset] = self.free.get(asset, ZERO) + amount

    def spend_locked(self, asset: str, amount: Decimal) -> None:
        self.locked[asset] = self.locked.get(asset, ZERO) - amount

    def credit(self, asset: str, amount: Decimal) -> None:
        self.free[asset] = self.free.get(asset, ZERO) + amount

    def debit(self, asset: str, amount: Decimal) -> None:
        self.free[asset] = self.free.get(asset, ZERO) - amount

    def assets(self) -> list[str]:
        return sorted(set(self.free) | set(self.locked))


class ReplicaMarket:
    """One symbol: other participants' liquidity per level plus our resting orders.

    The published depth of a level is the participants' quantity plus ours, as on a real
    venue. Every mutation records the levels it touched; the venue publishes them.
    """

    def __init__(
        self,
        symbol: str,
        base: str,
        quote: str,
        *,
        tick: Decimal,
        lot: Decimal,
        account: ReplicaAccount,
        maker_fee: Decimal = Decimal("0.001"),
        taker_fee: Decimal = Decimal("0.001"),
        fee_in_received_asset: bool = True,
        ids: Iterable[int] | None = None,
        qty_precision: Decimal | None = None,
    ) -> None:
        self.symbol = symbol
        self.base = base
        self.quote = quote
        self.tick = tick
        self.lot = lot
        # Other participants' levels are counted at the precision the venue reports
        # (Binance: 8 decimals), finer than the step our orders must keep.
        self.qty_precision = qty_precision if qty_precision is not None else lot
        self.account = account
        self.maker_fee = maker_fee
        self.taker_fee = taker_fee
        self.fee_in_received_asset = fee_in_received_asset
        self.levels: dict[str, dict[Decimal, Decimal]] = {"buy": {}, "sell": {}}
        self.orders: dict[str, ReplicaOrder] = {}
        self.trades: list[ReplicaTrade] = []
        self.changed: set[tuple[str, Decimal]] = set()
        self._trade_ids = iter(ids) if ids is not None else itertools.count(1)

    # -- depth ----------------------------------------------------------------------------
    def ours_at(self, side: str, price: Decimal) -> Decimal:
        return sum(
            (
                o.remaining
                for o in self.orders.values()
                if o.is_open and o.side == side and o.price == price
            ),
            ZERO,
        )

    def published(self, side: str, price: Decimal) -> Decimal:
        return self.levels[side].get(price, ZERO) + self.ours_at(side, price)

    def depth(self, side: str, n: int | None = None) -> list[tuple[Decimal, Decimal]]:
        """Published levels, best first."""
        prices = set(self.levels[side]) | {
            o.price
            for o in self.orders.values()
            if o.is_open and o.side == side and o.price is not None
        }
        ordered = sorted(prices, reverse=side == "buy")
        out = [(p, self.published(side, p)) for p in ordered]
        out = [(p, q) for p, q in out if q > 0]
        return out if n is None else out[:n]

    def set_level(self, side: str, price: Decimal, qty: Decimal) -> None:
        """Other participants' absolute quantity at a level (0 removes it)."""
        if price % self.tick or qty % self.qty_precision:
            raise ValueError(
                f"{self.symbol}: level {price} x {qty} is off the grid "
                f"(tick {self.tick}, quantity precision {self.qty_precision})"
            )
        if qty > 0:
            self.levels[side][price] = qty
        else:
            self.levels[side].pop(price, None)
        self.changed.add((side, price))

    def take_changes(self) -> list[tuple[str, Decimal, Decimal]]:
        out = [(s, p, self.published(s, p)) for s, p in sorted(self.changed)]
        self.changed.clear()
        return out

    # -- orders ---------------------------------------------------------------------------
    def _check_grid(self, price: Decimal | None, qty: Decimal) -> None:
        if qty <= 0 or qty % self.lot:
            raise OrderRejectedError(
                "lot_size", f"quantity {qty} is not a positive multiple of {self.lot}"
            )
        if price is not None and (price <= 0 or price % self.tick):
            raise OrderRejectedError(
                "tick_size", f"price {price} is not a positive multiple of {self.tick}"
            )

    def _fee(self, side: str, price: Decimal, qty: Decimal, maker: bool) -> tuple[Decimal, str]:
        rate = self.maker_fee if maker else self.taker_fee
        if self.fee_in_received_asset and side == "buy":
            return qty * rate, self.base
        return price * qty * rate, self.quote

    def _settle(
        self, order: ReplicaOrder, price: Decimal, qty: Decimal, maker: bool, now_ms: int
    ) -> ReplicaTrade:
        fee, fee_asset = self._fee(order.side, price, qty, maker)
        acct = self.account
        if order.side == "buy":
            cost = price * qty
            if order.price is not None and order.tif != "ioc" and order.kind == "limit":
                # Resting-capable buys locked at their limit; give back the price improvement.
                acct.spend_locked(self.quote, order.price * qty)
                acct.credit(self.quote, order.price * qty - cost)
                order.locked -= order.price * qty
            else:
                acct.debit(self.quote, cost)
            acct.credit(self.base, qty)
        else:
            if order.kind == "limit" and order.tif != "ioc":
                acct.spend_locked(self.base, qty)
                order.locked -= qty
            else:
                acct.debit(self.base, qty)
            acct.credit(self.quote, price * qty)
        acct.debit(fee_asset, fee)
        order.filled += qty
        order.quote_filled += price * qty
        order.status = "filled" if order.remaining == 0 else "partially_filled"
        order.updated_ms = now_ms
        trade = ReplicaTrade(
            next(self._trade_ids), order, price, qty, fee, fee_asset, maker, now_ms
        )
        self.trades.append(trade)
        return trade

    def _crosses(self, side: str, limit: Decimal | None, price: Decimal) -> bool:
        if limit is None:
            return True
        return price <= limit if side == "buy" else price >= limit

    def submit(self, order: ReplicaOrder, now_ms: int) -> list[ReplicaTrade]:
        """Accept, match and rest (or expire) one of our orders; returns its fills."""
        self._check_grid(order.price, order.qty)
        if order.client_id in self.orders and self.orders[order.client_id].is_open:
            raise OrderRejectedError("duplicate", f"duplicate client order id {order.client_id}")
        if order.kind == "limit" and order.price is None:
            raise OrderRejectedError("missing_price", "a limit order needs a price")
        opposite = "sell" if order.side == "buy" else "buy"
        book = self.levels[opposite]
        best = sorted(book, reverse=opposite == "buy")
        if order.tif == "post_only" and best and self._crosses(order.side, order.price, best[0]):
            raise OrderRejectedError("post_only", "order would immediately match and take")
        # Our own resting orders on the other side are not matched: the remainder would
        # trade with ourselves, so it expires instead (expire-taker self-trade prevention).
        own = [
            o.price
            for o in self.orders.values()
            if o.is_open and o.side == opposite and o.price is not None
        ]
        if order.kind == "limit" and order.tif != "ioc":
            if order.side == "buy":
                assert order.price is not None
                self.account.lock(self.quote, order.price * order.qty)
                order.locked = order.price * order.qty
            else:
                self.account.lock(self.base, order.qty)
                order.locked = order.qty
        elif order.side == "sell" and self.account.free.get(self.base, ZERO) < order.qty:
            raise OrderRejectedError("insufficient_funds", f"insufficient {self.base}")
        self.orders[order.client_id] = order
        order.updated_ms = now_ms
        trades: list[ReplicaTrade] = []
        for price in best:
            if order.remaining == 0 or not self._crosses(order.side, order.price, price):
                break
            if any(self._crosses(order.side, price, p) for p in own):
                break
            take = min(order.remaining, book[price])
            trades.append(self._settle(order, price, take, False, now_ms))
            left = book[price] - take
            if left > 0:
                book[price] = left
            else:
                del book[price]
            self.changed.add((opposite, price))
        if order.remaining > 0:
            crosses_own = order.price is not None and any(
                self._crosses(order.side, order.price, p) for p in own
            )
            if order.kind == "market" or order.tif == "ioc" or crosses_own:
                self._release(order)
                order.status = "expired"
            else:
                assert order.price is not None
                self.changed.add((order.side, order.price))
        return trades

    def _release(self, order: ReplicaOrder) -> None:
        if order.locked > 0:
            asset = self.quote if order.side == "buy" else self.base
            self.account.unlock(asset, order.locked)
            order.locked = ZERO

    def cancel(self, client_id: str, now_ms: int) -> ReplicaOrder:
        order = self.orders.get(client_id)
        if order is None or not order.is_open:
            raise OrderRejectedError("unknown_order", f"unknown order {client_id}")
        order.status = "canceled"
        order.updated_ms = now_ms
        self._release(order)
        if order.price is not None:
            self.changed.add((order.side, order.price))
        return order

    def amend(
        self, client_id: str, qty: Decimal | None, price: Decimal | None, now_ms: int
    ) -> ReplicaOrder:
        """Change a resting order in place (size down keeps priority)."""
        order = self.orders.get(client_id)
        if order is None or not order.is_open:
            raise OrderRejectedError("unknown_order", f"unknown order {client_id}")
        new_qty = qty if qty is not None else order.qty
        new_price = price if price is not None else order.price
        self._check_grid(new_price, new_qty)
        if new_qty <= order.filled:
            raise OrderRejectedError("amend_size", "new size is not above the filled size")
        opposite = "sell" if order.side == "buy" else "buy"
        best = sorted(self.levels[opposite], reverse=opposite == "buy")
        if best and new_price is not None and self._crosses(order.side, new_price, best[0]):
            raise OrderRejectedError("post_only", "amended price would immediately match")
        self._release(order)
        old_price = order.price
        order.qty, order.price = new_qty, new_price
        try:
            if order.side == "buy":
                assert new_price is not None
                self.account.lock(self.quote, new_price * order.remaining)
                order.locked = new_price * order.remaining
            else:
                self.account.lock(self.base, order.remaining)
                order.locked = order.remaining
        except OrderRejectedError:
            order.qty, order.price = new_qty, old_price
            raise
        order.updated_ms = now_ms
        if old_price is not None:
            self.changed.add((order.side, old_price))
        if new_price is not None:
            self.changed.add((order.side, new_price))
        return order

    def fill_resting(self, client_id: str, qty: Decimal | None, now_ms: int) -> ReplicaTrade:
        """Someone takes (part of) our resting order at its price."""
        order = self.orders.get(client_id)
        if order is None or not order.is_open or order.price is None:
            raise OrderRejectedError("unknown_order", f"no resting order {client_id}")
        take = order.remaining if qty is None else min(qty, order.remaining)
        take -= take % self.lot
        if take <= 0:
            raise OrderRejectedError("lot_size", f"fill size below one lot for {client_id}")
        trade = self._settle(order, order.price, take, True, now_ms)
        if order.status == "filled":
            self._release(order)
        self.changed.add((order.side, order.price))
        return trade

    def open_orders(self) -> list[ReplicaOrder]:
        return [o for o in self.orders.values() if o.is_open]


def __getattr__(name: str) -> Any:
    # ``ReplicaServer`` moved to ``replica.py``, which imports this module: resolve the
    # old import path lazily instead of importing in a cycle.
    if name == "ReplicaServer":
        from quoteforge.exchanges.testing.replica import ReplicaServer

        return ReplicaServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
