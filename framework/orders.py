"""The order manager: the single owner of our orders' state, client ids and their journal.

Venue reports (``OrderUpdate``) and trades (``Fill``) move orders through one state
machine; every accepted change is journaled before the caller hears about it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import fields
from decimal import Decimal
from typing import Any

from loguru import logger

from quoteforge.clock import Clock
from quoteforge.journal import ORDER_RECORD_FORMAT, Journal, JournalRecord, OrderStates
from quoteforge.model import (
    Fill,
    Liquidity,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
    market_key,
)

__all__ = [
    "MAX_CLIENT_ID_LEN",
    "OrderManager",
    "fill_from_dict",
    "fill_to_dict",
    "order_from_dict",
    "order_to_dict",
    "update_to_dict",
]

#: Binance's limit for ``newClientOrderId``; the strictest of the supported venues.
MAX_CLIENT_ID_LEN = 36

_PREFIX_RE = re.compile(r"[A-Za-z0-9_]{1,12}")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"

# Tuples: ``in`` compares enum members by identity; a set hashes them in Python.
_PENDING_REQUEST = (OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE)
_LIVE_REPORT = (OrderStatus.PENDING_NEW, OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED)
_CLOSING_REPORT = (OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.FILLED)
_UNKNOWN_FLAG = "status_unknown"


def _base36(value: int) -> str:
    if value <= 0:
        return "0"
    digits = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_B36[rem])
    return "".join(reversed(digits))


# ---------------------------------------------------------------------------------------
# Serialisation (journal payloads; also handy for bus messages and reports)
# ---------------------------------------------------------------------------------------


# Enum members' ``_value_`` is a plain attribute; ``.value`` and ``.name`` go through a
# descriptor written in Python, which costs as much as the rest of a record.
_SIDE_NAMES = {int(side): side.name.lower() for side in Side}


def order_to_dict(order: Order) -> dict[str, Any]:
    extra = order.extra
    return {
        "client_id": order.client_id,
        "venue": order.venue,
        "symbol": order.symbol,
        "side": _SIDE_NAMES[order.side],
        "qty_lots": order.qty_lots,
        "price_ticks": order.price_ticks,
        "order_type": order.order_type._value_,
        "tif": order.tif._value_,
        "strategy": order.strategy,
        "level": order.level,
        "status": order.status._value_,
        "filled_lots": order.filled_lots,
        "exchange_id": order.exchange_id,
        "created_ns": order.created_ns,
        "updated_ns": order.updated_ns,
        "reason": order.reason,
        "extra": dict(extra) if extra else {},
    }


def order_from_dict(data: dict[str, Any]) -> Order:
    return Order(
        client_id=data["client_id"],
        venue=data["venue"],
        symbol=data["symbol"],
        side=Side.parse(data["side"]),
        qty_lots=int(data["qty_lots"]),
        price_ticks=None if data["price_ticks"] is None else int(data["price_ticks"]),
        order_type=OrderType(data["order_type"]),
        tif=TimeInForce(data["tif"]),
        strategy=data.get("strategy", ""),
        level=int(data.get("level", 0)),
        status=OrderStatus(data["status"]),
        filled_lots=int(data.get("filled_lots", 0)),
        exchange_id=data.get("exchange_id"),
        created_ns=int(data.get("created_ns", 0)),
        updated_ns=int(data.get("updated_ns", 0)),
        reason=data.get("reason", ""),
        extra=dict(data.get("extra") or {}),
    )


def update_to_dict(update: OrderUpdate) -> dict[str, Any]:
    return {
        "venue": update.venue,
        "client_id": update.client_id,
        "status": update.status._value_,
        "ts_ns": update.ts_ns,
        "exchange_id": update.exchange_id,
        "filled_lots": update.filled_lots,
        "price_ticks": update.price_ticks,
        "qty_lots": update.qty_lots,
        "reason": update.reason,
    }


def fill_to_dict(fill: Fill) -> dict[str, Any]:
    return {
        "venue": fill.venue,
        "symbol": fill.symbol,
        "fill_id": fill.fill_id,
        "client_id": fill.client_id,
        "side": _SIDE_NAMES[fill.side],
        "price_ticks": fill.price_ticks,
        "qty_lots": fill.qty_lots,
        "fee": str(fill.fee),
        "fee_asset": fill.fee_asset,
        "liquidity": fill.liquidity._value_,
        "ts_ns": fill.ts_ns,
        "strategy": fill.strategy,
    }


def fill_from_dict(data: dict[str, Any]) -> Fill:
    return Fill(
        venue=data["venue"],
        symbol=data["symbol"],
        fill_id=data["fill_id"],
        client_id=data["client_id"],
        side=Side.parse(data["side"]),
        price_ticks=int(data["price_ticks"]),
        qty_lots=int(data["qty_lots"]),
        fee=Decimal(data["fee"]),
        fee_asset=data["fee_asset"],
        liquidity=Liquidity(data["liquidity"]),
        ts_ns=int(data["ts_ns"]),
        strategy=data.get("strategy", ""),
    )


# ---------------------------------------------------------------------------------------
# The manager
# ---------------------------------------------------------------------------------------


class _Meta:
    """Bookkeeping the state machine needs besides the Order itself."""

    __slots__ = ("event_keys", "journaled", "journaled_prior", "prior")

    def __init__(self) -> None:
        # The live state to return to when a pending cancel/replace is rejected.
        self.prior: OrderStatus | None = None
        # How often each (status, filled) event key was used, so that a state revisited
        # (OPEN again after a cancel reject) gets a distinct, still deterministic id.
        self.event_keys: dict[str, int] = {}
        # The order and prior as last journaled: the next record holds what changed.
        self.journaled: dict[str, Any] | None = None
        self.journaled_prior: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> _Meta:
        meta = cls()
        if data:
            prior = data.get("prior")
            meta.prior = None if prior is None else OrderStatus(prior)
            meta.journaled_prior = None if prior is None else str(prior)
            meta.event_keys = {str(k): int(v) for k, v in (data.get("event_keys") or {}).items()}
        return meta


class OrderManager:
    """Single owner of order state.

    **Client ids** are ``{prefix}-{session}-{counter}``: ``prefix`` is 1-12 characters of
    ``[A-Za-z0-9_]`` (the bot's name), ``session`` is the start time in milliseconds in
    base 36 followed, on a wall clock, by two random base-36 characters (so two
    processes started in the same millisecond still differ), and ``counter`` counts
    orders in base 36. Ids are therefore unique across restarts and at most 36 characters
    (Binance's limit; ``[A-Za-z0-9-_]`` only). With a virtual clock the random part is
    left out so a seeded simulation produces the same ids every time. A prefix of at
    most 4 characters keeps ids within Kraken's 18-character free-text ``cl_ord_id`` for
    the first 1.6 million orders of a session.

    **State machine.** ``PENDING_NEW -> OPEN -> PARTIALLY_FILLED -> FILLED / CANCELLED /
    REJECTED / EXPIRED`` with the local request states ``PENDING_CANCEL`` and
    ``PENDING_REPLACE``. Terminal states never change, except that a late fill still
    counts (``filled_lots`` grows; a cancelled order that ends up completely filled
    becomes FILLED). ``filled_lots`` is the sum of applied fills: fills are the only
    quantity source, cumulative quantities in ``OrderUpdate`` are not used.

    While a cancel or replace is pending, a venue report that the order is live
    (PENDING_NEW, OPEN or PARTIALLY_FILLED) *with a reason*, or a REJECTED report about an
    order the venue had acknowledged, is a cancel/replace reject: the order returns to
    its prior live state (and the new order of a rejected replace that is still pending
    becomes REJECTED). A live report without a reason is a late acknowledgement of the
    order itself: it only records the exchange id and the cancel stays pending. A
    rejected replacement returns the order it was to replace to its live state too.

    Every accepted change appends a ``JournalRecord``: the order's first record holds the
    whole order, later ones what changed, so :meth:`restore` rebuilds the exact same
    state from a journal (``quoteforge.journal.OrderStates`` rebuilds it for readers).
    """

    def __init__(
        self,
        journal: Journal | None,
        clock: Clock,
        id_prefix: str,
        *,
        session: str | None = None,
    ) -> None:
        if not _PREFIX_RE.fullmatch(id_prefix):
            raise ValueError(
                f"order id prefix {id_prefix!r} is invalid: use 1-12 characters of "
                "A-Z, a-z, 0-9 and _ (venues accept only these in client order ids)"
            )
        if session is None:
            session = _base36(clock.now_ns() // 1_000_000)
            if not clock.is_virtual:
                session += "".join(secrets.choice(_B36) for _ in range(2))
        elif not re.fullmatch(r"[A-Za-z0-9]{1,12}", session):
            raise ValueError(
                f"order id session {session!r} is invalid: use 1-12 characters of A-Z, a-z, 0-9"
            )
        self.journal = journal
        self.clock = clock
        self.id_prefix = id_prefix
        self.session = session
        self._id_stem = f"{id_prefix}-{session}-"
        self._counter = 0
        self._orders: dict[str, Order] = {}
        self._meta: dict[str, _Meta] = {}
        # market key -> client id -> order, non-terminal orders only (the per-tick view)
        self._working: dict[str, dict[str, Order]] = {}
        self._unknown: dict[str, Order] = {}
        self._fill_ids: set[tuple[str, str]] = set()
        self.unknown_updates: list[OrderUpdate] = []
        self.orphan_fills: list[Fill] = []

    # -- ids ------------------------------------------------------------------------------
    def next_client_id(self) -> str:
        self._counter += 1
        client_id = self._id_stem + _base36(self._counter)
        if len(client_id) > MAX_CLIENT_ID_LEN:
            raise ValueError(
                f"client id {client_id!r} is longer than {MAX_CLIENT_ID_LEN} characters: "
                "use a shorter id prefix"
            )
        return client_id

    # -- requests from our side -------------------------------------------------------------
    def new_order(
        self,
        venue: str,
        symbol: str,
        side: Side | str | int,
        qty_lots: int,
        price_ticks: int | None,
        *,
        order_type: OrderType = OrderType.LIMIT,
        tif: TimeInForce = TimeInForce.GTC,
        strategy: str = "",
        level: int = 0,
        extra: dict[str, object] | None = None,
    ) -> Order:
        """A new order in PENDING_NEW with a fresh client id, journaled as kind "order"."""
        order = self.build_order(
            venue, symbol, side, qty_lots, price_ticks,
            order_type=order_type, tif=tif, strategy=strategy, level=level,
        )  # fmt: skip
        order.extra.update(extra or {})  # journaled with it (the reduce-only flag)
        self._validate_new(order)
        self._register(order)
        return order

    def build_order(
        self,
        venue: str,
        symbol: str,
        side: Side | str | int,
        qty_lots: int,
        price_ticks: int | None,
        *,
        order_type: OrderType = OrderType.LIMIT,
        tif: TimeInForce = TimeInForce.GTC,
        strategy: str = "",
        level: int = 0,
    ) -> Order:
        """A PENDING_NEW order with a fresh client id that is not registered yet: give it
        to :meth:`request_replace`, which registers and journals it once, with its link
        to the order it replaces. (:meth:`new_order` is this plus registering.)"""
        now = self.clock.now_ns()
        return Order(
            client_id=self.next_client_id(),
            venue=venue,
            symbol=symbol,
            side=Side.parse(side),
            qty_lots=qty_lots,
            price_ticks=price_ticks,
            order_type=order_type,
            tif=tif,
            strategy=strategy,
            level=level,
            created_ns=now,
            updated_ns=now,
        )

    def adopt(self, order: Order) -> Order:
        """Take over an order found on the venue (reconciliation) that this manager does
        not know, e.g. one placed before a crash whose journal record was lost.

        The order is taken as the venue reports it (status and ``filled_lots``) and
        journaled like a new order. Reports held in ``unknown_updates`` for its client id
        are dropped: the venue's current view supersedes them. ``orphan_fills`` stay
        where they are, because whoever received them has already accounted for them.
        """
        if order.client_id in self._orders:
            raise ValueError(f"order {order.client_id!r} is already managed")
        self._validate_new(order)
        if not order.created_ns:
            order.created_ns = self.clock.now_ns()
        order.updated_ns = self.clock.now_ns()
        self._register(order)
        self.unknown_updates = [u for u in self.unknown_updates if u.client_id != order.client_id]
        return order

    def request_cancel(self, client_id: str) -> Order | None:
        """Move a working order to PENDING_CANCEL before the cancel is sent.

        Returns None when the order is unknown, terminal, or already has a cancel in
        flight (nothing to send).
        """
        order = self._orders.get(client_id)
        if order is None or order.status.is_terminal:
            return None
        if order.status is OrderStatus.PENDING_CANCEL:
            return None
        meta = self._meta[client_id]
        if order.status not in _PENDING_REQUEST:
            meta.prior = order.status
        order.status = OrderStatus.PENDING_CANCEL
        order.updated_ns = self.clock.now_ns()
        self._journal_order(order, "order_update", None)
        return order

    def request_replace(self, client_id: str, new: Order) -> None:
        """Record that ``client_id`` is being replaced by ``new``: the old order goes to
        PENDING_REPLACE, ``new`` is registered (if it did not come from
        :meth:`new_order`) and the two are linked in ``extra`` (``replaced_by`` /
        ``replaces``).

        Raises ValueError when the old order is unknown, terminal or already has a cancel
        or replace in flight: a second request would race the first one on the venue.
        """
        old = self._orders.get(client_id)
        if old is None:
            raise ValueError(f"cannot replace order {client_id!r}: it is not known")
        if old.status.is_terminal:
            raise ValueError(
                f"cannot replace order {client_id!r}: it is already {old.status.value}"
            )
        if old.status in _PENDING_REQUEST:
            raise ValueError(
                f"cannot replace order {client_id!r}: a {old.status.value} request is "
                "already in flight; wait for the venue's answer"
            )
        if (old.venue, old.symbol) != (new.venue, new.symbol):
            raise ValueError(
                f"cannot replace order {client_id!r} on {old.market} by an order on "
                f"{new.market}: a replacement stays on the same market"
            )
        known = self._orders.get(new.client_id)
        if known is not None and known is not new:
            raise ValueError(f"replacement client id {new.client_id!r} is already in use")
        if known is None:
            self._validate_new(new)
            if not new.created_ns:
                new.created_ns = self.clock.now_ns()
                new.updated_ns = new.created_ns
        new.extra["replaces"] = client_id
        if known is None:
            self._register(new)
        else:
            self._journal_order(new, "order_update", None)
        meta = self._meta[client_id]
        meta.prior = old.status
        old.status = OrderStatus.PENDING_REPLACE
        old.extra["replaced_by"] = new.client_id
        old.updated_ns = self.clock.now_ns()
        self._journal_order(old, "order_update", None)

    def mark_unknown(self, client_id: str, reason: str) -> Order | None:
        """Flag a working order whose status is unknown (a request timed out).

        The order stays working; ``order.extra["status_unknown"]`` holds the reason and
        :meth:`unknown` lists it until any venue report about it arrives. Resolve it by
        looking the order up on the venue, never by sending the request again.
        """
        order = self._orders.get(client_id)
        if order is None or order.status.is_terminal or client_id in self._unknown:
            return None
        order.extra[_UNKNOWN_FLAG] = reason or "status unknown"
        order.updated_ns = self.clock.now_ns()
        self._unknown[client_id] = order
        self._journal_order(order, "order_update", None, status_key="unknown")
        return order

    def unknown(self) -> list[Order]:
        return list(self._unknown.values())

    def reject_cancel(self, client_id: str, reason: str, ts_ns: int | None = None) -> Order | None:
        """Shorthand for the venue report of a rejected cancel or replace."""
        order = self._orders.get(client_id)
        if order is None:
            return None
        ts_ns = self.clock.now_ns() if ts_ns is None else ts_ns
        reason = reason or "cancel rejected"
        return self.apply_update(
            OrderUpdate(order.venue, client_id, OrderStatus.OPEN, ts_ns, reason=reason)
        )

    # -- reports from the venue ---------------------------------------------------------------
    def apply_update(self, update: OrderUpdate) -> Order | None:
        """Apply a venue report; the order when its state changed, else None.

        Duplicates, stale and out-of-order reports return None. A report about a client
        id this manager does not know is kept in ``unknown_updates`` for reconciliation.
        """
        order = self._orders.get(update.client_id)
        if order is None:
            self.unknown_updates.append(update)
            return None
        if order.status.is_terminal:
            return None
        cleared = self._unknown.pop(order.client_id, None) is not None
        if cleared:
            order.extra.pop(_UNKNOWN_FLAG, None)
        changed = self._transition(order, update)
        if update.exchange_id and order.exchange_id is None:
            order.exchange_id = update.exchange_id
            changed = True
        if not (changed or cleared):
            return None
        order.updated_ns = update.ts_ns or self.clock.now_ns()
        self._journal_order(order, "order_update", update)
        if order.status.is_terminal:
            self._retire(order)
            if order.status is OrderStatus.REJECTED and "replaces" in order.extra:
                self._replacement_rejected(order)
        return order

    def _replacement_rejected(self, new: Order) -> None:
        """The order ``new`` was to replace still works: back to its live state."""
        old = self._orders.get(str(new.extra["replaces"]))
        if old is None or old.status is not OrderStatus.PENDING_REPLACE:
            return
        if old.extra.get("replaced_by") == new.client_id:
            self._revert(old, self._meta[old.client_id], f"replacement rejected: {new.reason}")
            old.updated_ns = new.updated_ns
            self._journal_order(old, "order_update", None)

    def _transition(self, order: Order, update: OrderUpdate) -> bool:
        status = order.status
        reported = update.status
        meta = self._meta[order.client_id]
        if reported in _CLOSING_REPORT:
            order.status = reported
            if update.reason:
                order.reason = update.reason
            return True
        if reported is OrderStatus.REJECTED:
            acknowledged = status is not OrderStatus.PENDING_NEW and not (
                status in _PENDING_REQUEST and meta.prior is OrderStatus.PENDING_NEW
            )
            if not acknowledged:
                order.status = OrderStatus.REJECTED
                order.reason = update.reason or "rejected"
                return True
            if status in _PENDING_REQUEST:
                self._revert(order, meta, update.reason or "cancel rejected")
                return True
            return False  # a venue never rejects an order it already accepted
        if reported in _LIVE_REPORT:
            if status in _PENDING_REQUEST:
                if update.reason:
                    self._revert(order, meta, update.reason)
                    return True
                if meta.prior is OrderStatus.PENDING_NEW and reported is not (
                    OrderStatus.PENDING_NEW
                ):
                    meta.prior = self._live_status(order)
                    return True
                return False
            if status is OrderStatus.PENDING_NEW and reported is not OrderStatus.PENDING_NEW:
                order.status = self._live_status(order)
                return True
        # PENDING_CANCEL / PENDING_REPLACE reports are our own request states echoed back.
        return False

    def _revert(self, order: Order, meta: _Meta, reason: str) -> None:
        was_replace = order.status is OrderStatus.PENDING_REPLACE
        if meta.prior is OrderStatus.PENDING_NEW and order.filled_lots == 0:
            order.status = OrderStatus.PENDING_NEW
        else:
            order.status = self._live_status(order)
        meta.prior = None
        order.reason = reason
        if was_replace:
            new_id = order.extra.pop("replaced_by", None)
            new = self._orders.get(str(new_id)) if new_id is not None else None
            if new is not None and new.status is OrderStatus.PENDING_NEW:
                new.status = OrderStatus.REJECTED
                new.reason = f"replace of {order.client_id} rejected: {reason}"
                new.updated_ns = self.clock.now_ns()
                self._journal_order(new, "order_update", None)
                self._retire(new)

    @staticmethod
    def _live_status(order: Order) -> OrderStatus:
        return OrderStatus.PARTIALLY_FILLED if order.filled_lots > 0 else OrderStatus.OPEN

    def apply_fill(self, fill: Fill) -> Order | None:
        """Apply one trade, once per ``(venue, fill_id)``; the order it filled, or None.

        A duplicate returns None. A fill for an unknown client id is journaled, kept in
        ``orphan_fills`` and returns None too: it is a real trade, so a caller that books
        positions checks :meth:`has_fill` first to tell it from a duplicate. Late fills
        on cancelled or expired orders count.
        """
        if fill.qty_lots <= 0:
            raise ValueError(
                f"fill {fill.fill_id!r} on {fill.market} has qty_lots={fill.qty_lots}; "
                "a fill must trade a positive number of lots"
            )
        key = (fill.venue, fill.fill_id)
        if key in self._fill_ids:
            return None
        order = self._orders.get(fill.client_id)
        if order is not None and (order.side is not fill.side or order.symbol != fill.symbol):
            raise ValueError(
                f"fill {fill.fill_id!r} ({fill.side.name} {fill.symbol}) does not match "
                f"order {order.client_id!r} ({order.side.name} {order.symbol})"
            )
        self._fill_ids.add(key)
        if order is None:
            self.orphan_fills.append(fill)
            self._journal_fill(fill, {"fill": fill_to_dict(fill), "order": None})
            return None
        order.filled_lots += fill.qty_lots
        if order.filled_lots > order.qty_lots:  # the venue traded it: it counts, loudly
            logger.error(
                "order {} on {} is filled {} lots beyond its {} lots by fill {}: the venue "
                "executed it more than once; the position includes every fill",
                order.client_id, order.market, order.filled_lots - order.qty_lots,
                order.qty_lots, fill.fill_id,
            )  # fmt: skip
        status = order.status
        if order.filled_lots >= order.qty_lots:
            order.status = OrderStatus.FILLED
        elif status in (OrderStatus.PENDING_NEW, OrderStatus.OPEN):
            order.status = OrderStatus.PARTIALLY_FILLED
        elif status in _PENDING_REQUEST:
            self._meta[order.client_id].prior = OrderStatus.PARTIALLY_FILLED
        order.updated_ns = fill.ts_ns or self.clock.now_ns()
        if order.client_id in self._unknown and order.status.is_terminal:
            del self._unknown[order.client_id]
            order.extra.pop(_UNKNOWN_FLAG, None)
        self._journal_fill(fill, self._order_payload(order, {"fill": fill_to_dict(fill)}))
        if order.status.is_terminal:
            self._retire(order)
        return order

    # -- queries --------------------------------------------------------------------------------
    def get(self, client_id: str) -> Order | None:
        return self._orders.get(client_id)

    def has_fill(self, venue: str, fill_id: str) -> bool:
        """Whether this trade was already applied; lets a caller tell a duplicate (drop
        it) from an orphan (a real trade to book) before calling :meth:`apply_fill`."""
        return (venue, fill_id) in self._fill_ids

    def prune(self, before_ns: int) -> int:
        """Forget terminal orders last updated before ``before_ns`` (long runs keep
        memory flat); returns how many. A fill arriving later for one of them is kept
        as an orphan fill. Fill ids are kept, so duplicates are still recognised."""
        stale = [
            cid
            for cid, order in self._orders.items()
            if order.status.is_terminal and order.updated_ns < before_ns
        ]
        for cid in stale:
            del self._orders[cid]
            del self._meta[cid]
        return len(stale)

    def working(self, venue: str, symbol: str) -> list[Order]:
        """Non-terminal orders on one market (called every tick: an index lookup)."""
        orders = self._working.get(market_key(venue, symbol))
        return list(orders.values()) if orders else []

    def working_in(self, market: str) -> list[Order]:
        orders = self._working.get(market)
        return list(orders.values()) if orders else []

    def all_working(self) -> list[Order]:
        return [o for orders in self._working.values() for o in orders.values()]

    def all_orders(self) -> list[Order]:
        return list(self._orders.values())

    def open_lots(self, market_key: str, side: Side | int) -> int:
        """Lots still to trade on one side of a market across working orders."""
        orders = self._working.get(market_key)
        if not orders:
            return 0
        sign = int(side)
        return sum(max(o.remaining_lots, 0) for o in orders.values() if o.side == sign)

    def open_count(self, market_key: str) -> int:
        orders = self._working.get(market_key)
        return len(orders) if orders else 0

    def prior_status(self, client_id: str) -> OrderStatus | None:
        """The live state a pending cancel/replace returns to if the venue rejects it."""
        meta = self._meta.get(client_id)
        return None if meta is None else meta.prior

    # -- crash recovery ---------------------------------------------------------------------
    def restore(self, records: Iterable[JournalRecord]) -> int:
        """Rebuild state from journal records (in append order; kinds ``order``,
        ``order_update`` and ``fill`` together, of either record format: see
        ``quoteforge.journal.OrderStates``); returns how many were used. Call on a fresh
        manager before any new order; nothing is re-journaled."""
        used = 0
        states = OrderStates()
        for record in records:
            if record.kind == "fill":
                fill = fill_from_dict(record.payload["fill"])
                self._fill_ids.add((fill.venue, fill.fill_id))
                if record.payload.get("order") is None:
                    self.orphan_fills.append(fill)
                    used += 1
                    continue
            data = states.apply(record)
            if data is not None:
                self._restore_order(data, states.meta[data["client_id"]])
                used += 1
        return used

    def _restore_order(self, data: dict[str, Any], meta_data: dict[str, Any] | None) -> None:
        snapshot = order_from_dict(data)
        order = self._orders.get(snapshot.client_id)
        if order is None:
            order = snapshot
            self._orders[order.client_id] = order
        else:
            # Keep the object identity callers may hold; copy the recorded state in.
            for spec in fields(Order):
                setattr(order, spec.name, getattr(snapshot, spec.name))
        self._meta[order.client_id] = meta = _Meta.from_dict(meta_data)
        meta.journaled = order_to_dict(order)
        market = order.market
        if order.status.is_terminal:
            self._retire(order)
        else:
            self._working.setdefault(market, {})[order.client_id] = order
        if _UNKNOWN_FLAG in order.extra and not order.status.is_terminal:
            self._unknown[order.client_id] = order
        else:
            self._unknown.pop(order.client_id, None)

    # -- internals ---------------------------------------------------------------------------
    def _validate_new(self, order: Order) -> None:
        where = f"order {order.client_id!r} on {order.venue}:{order.symbol}"
        if not order.venue or not order.symbol:
            raise ValueError(f"{where}: venue and symbol must not be empty")
        if isinstance(order.qty_lots, bool) or not isinstance(order.qty_lots, int):
            raise ValueError(f"{where}: qty_lots must be an int number of lots")
        if order.qty_lots <= 0:
            raise ValueError(f"{where}: qty_lots must be positive, got {order.qty_lots}")
        if order.order_type is OrderType.LIMIT and order.price_ticks is None:
            raise ValueError(f"{where}: a limit order needs price_ticks")
        if order.price_ticks is not None and (
            isinstance(order.price_ticks, bool)
            or not isinstance(order.price_ticks, int)
            or order.price_ticks <= 0
        ):
            raise ValueError(
                f"{where}: price_ticks must be a positive int, got {order.price_ticks!r}"
            )
        if not order.client_id or len(order.client_id) > MAX_CLIENT_ID_LEN:
            raise ValueError(f"{where}: client id must be 1-{MAX_CLIENT_ID_LEN} characters")

    def _register(self, order: Order) -> None:
        self._orders[order.client_id] = order
        self._meta[order.client_id] = _Meta()
        if not order.status.is_terminal:
            self._working.setdefault(order.market, {})[order.client_id] = order
        self._journal_order(order, "order", None)

    def _retire(self, order: Order) -> None:
        orders = self._working.get(order.market)
        if orders is not None:
            orders.pop(order.client_id, None)
            if not orders:
                del self._working[order.market]
        self._unknown.pop(order.client_id, None)

    def _journal_order(
        self,
        order: Order,
        kind: str,
        update: OrderUpdate | None,
        *,
        status_key: str | None = None,
    ) -> None:
        meta = self._meta[order.client_id]
        key = f"{status_key or order.status._value_}:{order.filled_lots}"
        seen = meta.event_keys.get(key, 0)
        meta.event_keys[key] = seen + 1
        event_id = f"{order.venue}:{order.client_id}:{key}"
        if seen:
            event_id += f"#{seen}"
        if self.journal is None:
            return
        payload = self._order_payload(order, {})
        if update is not None:  # the venue report, less the record's venue, id and blanks
            data = {"status": update.status._value_, "ts_ns": update.ts_ns}
            for name in ("exchange_id", "filled_lots", "price_ticks", "qty_lots", "reason"):
                if (value := getattr(update, name)) is not None and value != "":
                    data[name] = value
            payload["update"] = data
        self.journal.append(JournalRecord(event_id, kind, order.updated_ns, order.market, payload))

    def _order_payload(self, order: Order, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload`` plus the order: whole in its first record, then what changed (with
        ``client_id`` and ``status``) and ``prior`` when that changed (format 2)."""
        meta = self._meta[order.client_id]
        last = meta.journaled
        if last is None:
            payload["order"] = order_to_dict(order)
            meta.journaled = dict(payload["order"])  # the payload is the journal's now
            payload["format"] = ORDER_RECORD_FORMAT
        else:  # the fields a registered order can still change (its market, side... not)
            status = last["status"] = order.status._value_
            patch: dict[str, Any] = {"client_id": order.client_id, "status": status}
            payload["order"] = patch
            for key, value in (
                ("qty_lots", order.qty_lots), ("price_ticks", order.price_ticks),
                ("strategy", order.strategy), ("level", order.level),
                ("filled_lots", order.filled_lots), ("exchange_id", order.exchange_id),
                ("updated_ns", order.updated_ns), ("reason", order.reason),
                ("extra", order.extra or {}),
            ):  # fmt: skip
                if value != last[key]:  # extra is copied only when it changed
                    patch[key] = last[key] = dict(order.extra) if key == "extra" else value
        prior = None if meta.prior is None else meta.prior._value_
        if prior != meta.journaled_prior:
            payload["prior"] = meta.journaled_prior = prior
        return payload

    def _journal_fill(self, fill: Fill, payload: dict[str, Any]) -> None:
        if self.journal is not None:
            event_id = f"{fill.venue}:fill:{fill.fill_id}"
            self.journal.append(JournalRecord(event_id, "fill", fill.ts_ns, fill.market, payload))
