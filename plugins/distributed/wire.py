"""Wire forms of what crosses the bus between the nodes of a split run: instruments,
book snapshots and lock-step book syncs, order intents, order reports, fills and offers.

Each form has its inverse next to it, so the publishing side and the receiving side
(``publishers``, ``remote``, ``lockstep``, ``reconcile`` and the node runtime) cannot
drift apart. See ``docs/distributed.md`` for the topics each travels on.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from quoteforge.book import BookState, L2Book
from quoteforge.exchange import CancelAll, CancelOrder, OrderAction, PlaceOrder, ReplaceOrder
from quoteforge.model import (
    Fill,
    Instrument,
    InstrumentKind,
    Offer,
    Order,
    OrderStatus,
    OrderUpdate,
    Side,
)
from quoteforge.orders import fill_from_dict, fill_to_dict, order_from_dict, order_to_dict

__all__ = [
    "IntentError",
    "apply_book_sync",
    "book_payload",
    "book_sync",
    "fill_from_payload",
    "fill_payload",
    "host_offline_reason",
    "instrument_from_dict",
    "instrument_to_dict",
    "intent_from_payload",
    "intent_payload",
    "offer_from_wire",
    "offer_to_wire",
    "update_from_payload",
    "update_from_wire",
    "update_payload",
    "update_to_wire",
]


class IntentError(ValueError):
    """An intent message that cannot be turned into an order action."""


def instrument_to_dict(inst: Instrument) -> dict[str, Any]:
    """An instrument as a bus payload; sizes and fees stay exact Decimals."""
    return {
        "venue": inst.venue,
        "symbol": inst.symbol,
        "base": inst.base,
        "quote": inst.quote,
        "tick_size": inst.tick_size,
        "lot_size": inst.lot_size,
        "min_qty": inst.min_qty,
        "min_notional": inst.min_notional,
        "kind": inst.kind.value,
        "maker_fee": inst.maker_fee,
        "taker_fee": inst.taker_fee,
    }


def instrument_from_dict(data: dict[str, Any]) -> Instrument:
    return Instrument(
        venue=data["venue"],
        symbol=data["symbol"],
        base=data["base"],
        quote=data["quote"],
        tick_size=Decimal(data["tick_size"]),
        lot_size=Decimal(data["lot_size"]),
        min_qty=Decimal(data.get("min_qty", 0)),
        min_notional=Decimal(data.get("min_notional", 0)),
        kind=InstrumentKind(data.get("kind", "spot")),
        maker_fee=Decimal(data.get("maker_fee", 0)),
        taker_fee=Decimal(data.get("taker_fee", 0)),
    )


def book_payload(
    book: L2Book, depth: int, publisher: str, n: int, sent_ns: int | None = None
) -> dict[str, Any]:
    """A full top-``depth`` snapshot of ``book``: each message stands alone, so a receiver
    that missed some needs no replay. ``n`` orders the messages of one ``publisher``;
    ``sent_ns`` (wall clock, ns) is when it is published, from which a receiver tells a
    message read late (optional: publishers of older versions do not send it)."""
    payload: dict[str, Any] = {
        "bids": book.top(Side.BUY, depth),
        "asks": book.top(Side.SELL, depth),
        "state": book.state.value,
        "ts_ns": book.ts_ns,
        "pub": publisher,
        "n": n,
    }
    if sent_ns is not None:
        payload["sent_ns"] = sent_ns
    return payload


def intent_payload(action: OrderAction, strategy: str, seq: int) -> tuple[dict[str, Any], str]:
    """The intent message of one order action and its message id.

    Ids of places, cancels and replaces derive from client ids, so republishing the same
    action is harmless; ``seq`` only separates repeated cancel-alls.
    """
    if isinstance(action, PlaceOrder):
        order = action.order
        payload: dict[str, Any] = {
            "action": "place",
            "strategy": strategy,
            "order": order_to_dict(order),
        }
        return payload, f"intent:{order.client_id}:place"
    if isinstance(action, CancelOrder):
        payload = {
            "action": "cancel",
            "strategy": strategy,
            "client_id": action.client_id,
            "venue": action.venue,
            "symbol": action.symbol,
        }
        return payload, f"intent:{action.client_id}:cancel"
    if isinstance(action, ReplaceOrder):
        payload = {
            "action": "replace",
            "strategy": strategy,
            "old_client_id": action.old_client_id,
            "order": order_to_dict(action.new),
        }
        return payload, f"intent:{action.old_client_id}:replace:{action.new.client_id}"
    payload = {
        "action": "cancel_all",
        "strategy": strategy,
        "venue": action.venue,
        "symbol": action.symbol,
    }
    return payload, f"intent:{strategy}:cancel_all:{action.venue}:{seq}"


def intent_from_payload(payload: dict[str, Any]) -> tuple[str, OrderAction]:
    """(strategy, action) of an intent message, or IntentError saying what is wrong."""
    try:
        kind = payload["action"]
        strategy = str(payload["strategy"])
        if kind == "place":
            return strategy, PlaceOrder(_fresh(order_from_dict(payload["order"])))
        if kind == "cancel":
            return strategy, CancelOrder(
                str(payload["client_id"]), str(payload["venue"]), str(payload["symbol"])
            )
        if kind == "replace":
            new = _fresh(order_from_dict(payload["order"]))
            return strategy, ReplaceOrder(str(payload["old_client_id"]), new)
        if kind == "cancel_all":
            symbol = payload.get("symbol")
            return strategy, CancelAll(str(payload["venue"]), None if symbol is None else symbol)
    except (KeyError, TypeError, ValueError) as exc:
        raise IntentError(f"malformed intent {payload!r}: {exc!r}") from None
    raise IntentError(
        f"unknown intent action {kind!r}: expected place, cancel, replace or cancel_all"
    )


def _fresh(order: Order) -> Order:
    # Whatever the sender's view, an order that is being sent has not traded yet.
    order.status = OrderStatus.PENDING_NEW
    order.filled_lots = 0
    return order


def update_payload(update: OrderUpdate, order: Order | None) -> dict[str, Any]:
    """An order report, with the order's terms so that observers need no other state."""
    payload: dict[str, Any] = {
        "venue": update.venue,
        "client_id": update.client_id,
        "status": update.status.value,
        "ts_ns": update.ts_ns,
        "exchange_id": update.exchange_id,
        "filled_lots": update.filled_lots,
        "price_ticks": update.price_ticks,
        "qty_lots": update.qty_lots,
        "reason": update.reason,
        "symbol": update.symbol or (order.symbol if order is not None else ""),
    }
    if order is not None:
        payload["order"] = {
            "side": order.side.name.lower(),
            "price_ticks": order.price_ticks,
            "qty_lots": order.qty_lots,
            "filled_lots": order.filled_lots,
            "status": order.status.value,
            "strategy": order.strategy,
        }
    return payload


def update_from_payload(payload: dict[str, Any]) -> OrderUpdate:
    return OrderUpdate(
        venue=payload["venue"],
        client_id=payload["client_id"],
        status=OrderStatus(payload["status"]),
        ts_ns=int(payload["ts_ns"]),
        exchange_id=payload.get("exchange_id"),
        filled_lots=payload.get("filled_lots"),
        price_ticks=payload.get("price_ticks"),
        qty_lots=payload.get("qty_lots"),
        reason=payload.get("reason", ""),
        symbol=payload.get("symbol", ""),
    )


def fill_payload(fill: Fill) -> dict[str, Any]:
    return fill_to_dict(fill)


def fill_from_payload(payload: dict[str, Any]) -> Fill:
    return fill_from_dict(payload)


def update_to_wire(update: OrderUpdate) -> list[Any]:
    """An order report exactly as the venue made it (lock-step runs hand it on as is)."""
    return [
        update.client_id,
        update.status.value,
        update.ts_ns,
        update.exchange_id,
        update.filled_lots,
        update.price_ticks,
        update.qty_lots,
        update.reason,
        update.symbol,
    ]


def update_from_wire(venue: str, data: list[Any]) -> OrderUpdate:
    client_id, status, ts_ns, exchange_id, filled, price, qty, reason, symbol = data
    return OrderUpdate(
        venue,
        client_id,
        OrderStatus(status),
        ts_ns,
        exchange_id,
        filled,
        price,
        qty,
        reason,
        symbol,
    )


def offer_to_wire(offer: Offer) -> list[Any]:
    return [
        offer.symbol,
        offer.offer_id,
        int(offer.side),
        offer.price_ticks,
        offer.qty_lots,
        offer.ts_ns,
        offer.expires_ns,
    ]


def offer_from_wire(venue: str, data: list[Any]) -> Offer:
    symbol, offer_id, side, price, qty, ts_ns, expires_ns = data
    return Offer(venue, symbol, offer_id, Side(side), price, qty, ts_ns, expires_ns)


def book_sync(
    book: L2Book, sent: tuple[dict[int, int], dict[int, int]] | None
) -> tuple[list[Any], tuple[dict[int, int], dict[int, int]]]:
    """What a mirror needs to become ``book`` again: the levels that changed since
    ``sent`` (the levels of the last sync, None for a first one; 0 lots removes a level),
    the state and the book's own counters, so that a mirror's ``top_version`` moves
    exactly when the venue's does. Returns the message part and the levels now sent."""
    bids = dict(book.levels(Side.BUY))
    asks = dict(book.levels(Side.SELL))
    old_bids, old_asks = sent if sent is not None else ({}, {})
    return [
        book.symbol,
        book.state.value,
        book.version,
        book.top_version,
        book.side_top_version(Side.BUY),
        book.side_top_version(Side.SELL),
        book.update_count,
        book.ts_ns,
        _level_diff(old_bids, bids),
        _level_diff(old_asks, asks),
    ], (bids, asks)


def _level_diff(old: dict[int, int], new: dict[int, int]) -> list[list[int]]:
    diff = [[p, q] for p, q in new.items() if old.get(p) != q]
    diff.extend([p, 0] for p in old if p not in new)
    return diff


def apply_book_sync(book: L2Book, data: list[Any]) -> None:
    """Make a mirror equal to the book a ``book_sync`` message describes."""
    _, state, version, top_version, bid_topv, ask_topv, updates, ts_ns, bids, asks = data
    for price, lots in bids:
        book.set_level(Side.BUY, price, lots)
    for price, lots in asks:
        book.set_level(Side.SELL, price, lots)
    book.state = BookState(state)
    book.version = version
    book.top_version = top_version
    book._bid_topv = bid_topv
    book._ask_topv = ask_topv
    book._bid_top = book._ask_top = None
    book.update_count = updates
    book.ts_ns = ts_ns


def host_offline_reason(host_role: str, heartbeat: dict[str, Any]) -> str:
    """Why the node hosting a venue is gone, from its "offline" heartbeat (a last will
    or a clean close), for the book-state and lock-step messages that report it."""
    return f"{host_role} node offline ({heartbeat.get('reason', 'no reason given')})"
