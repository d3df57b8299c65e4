"""Kraken's spellings, read and written: new orders as the venue takes them, order
statuses (websocket v2 and REST), asset and pair names, timestamps, error texts
classified for the order recovery, and the stream name of a public message in a
recording.

Pure functions of the wire values, apart from the adapter (``adapter.py``) that keeps
the connections, so each translation is written once and testable alone.
"""

from __future__ import annotations

import re
import time
from decimal import Decimal
from typing import Any

from quoteforge.exchanges.ccxt_orders import TrackedOrder, VenueCallError
from quoteforge.model import Instrument, OrderStatus, OrderType, OrderUpdate, Side, TimeInForce

__all__ = [
    "ORDER_STATUS",
    "REST_ORDER_STATUS",
    "alt_pair",
    "classify_error",
    "order_params",
    "parse_timestamp_ns",
    "public_stream",
    "rest_asset",
    "rest_update",
    "v2_asset",
]

ORDER_STATUS = {
    "pending_new": OrderStatus.PENDING_NEW,
    "new": OrderStatus.OPEN,
    "partially_filled": OrderStatus.PARTIALLY_FILLED,
    "filled": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELLED,
    "expired": OrderStatus.EXPIRED,
}
"""Websocket v2 ``order_status`` -> ours."""
REST_ORDER_STATUS = {
    "pending": OrderStatus.PENDING_NEW,
    "open": OrderStatus.OPEN,
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELLED,
    "expired": OrderStatus.EXPIRED,
}
"""REST ``status`` of an order -> ours (an open order with fills is partially filled)."""
# Old Kraken asset codes as websocket v2 spells them.
_ASSET_ALIASES = {"XBT": "BTC", "XDG": "DOGE"}
_METHOD = re.compile(r'"method"\s*:\s*"([^"]*)"')
_CHANNEL = re.compile(r'"channel"\s*:\s*"([^"]*)"')
_THROTTLED = re.compile(r"EService:\s*Throttled:\s*(\d+(?:\.\d+)?)")
# Errors after which an order may or may not exist at the venue.
_UNKNOWN_ERRORS = (
    "EService:Unavailable",
    "EService:Busy",
    "EGeneral:Internal error",
    "EService:Deadline elapsed",
)


def v2_asset(code: str) -> str:
    """An asset code as websocket v2 spells it (XBT -> BTC)."""
    return _ASSET_ALIASES.get(code, code)


def public_stream(raw: str) -> str:
    """A public message's method (subscribe, pong) or channel (book, trade, heartbeat),
    to name it in a recording; the replay venue reads the message itself."""
    found = _METHOD.search(raw) or _CHANNEL.search(raw)
    return found.group(1) if found else "public"


def classify_error(text: str, status: int = 200) -> VenueCallError:
    """A REST or websocket error text (and HTTP status) as the order recovery reads it."""
    if status >= 500 or any(text.startswith(e) for e in _UNKNOWN_ERRORS):
        return VenueCallError("unknown", text)
    if "Rate limit exceeded" in text:
        return VenueCallError("rate_limited", text, retry_after_s=1.0)
    throttled = _THROTTLED.match(text)
    if throttled:
        # Too many concurrent requests: not done; "try again after [UNIX timestamp]".
        until = float(throttled.group(1))
        return VenueCallError("rate_limited", text, retry_after_s=max(until - time.time(), 0.5))
    if text.startswith(("EOrder:Unknown order", "EOrder:Invalid order")):
        return VenueCallError("not_found", text)
    if text.startswith(("EAPI:Invalid key", "EAPI:Invalid signature", "EAccount:")):
        return VenueCallError("auth", text)
    return VenueCallError("rejected", text)


def order_params(tracked: TrackedOrder) -> dict[str, Any]:
    """A new order as ``add_order`` and ``batch_add`` take it (without the pair)."""
    order = tracked.order
    spec: dict[str, Any] = {
        "order_type": "market" if order.order_type is OrderType.MARKET else "limit",
        "side": "buy" if order.side is Side.BUY else "sell",
        "order_qty": tracked.instrument.lots_to_qty(order.qty_lots),
        "cl_ord_id": order.client_id,
    }
    if order.order_type is OrderType.LIMIT:
        spec["limit_price"] = tracked.instrument.ticks_to_price(order.price_ticks or 0)
        if order.tif is TimeInForce.POST_ONLY:
            spec["post_only"] = True
        elif order.tif is TimeInForce.IOC:
            spec["time_in_force"] = "ioc"
    return spec


def rest_update(
    venue: str, client_id: str, info: dict[str, Any], inst: Instrument, now_ns: int
) -> OrderUpdate:
    """The report for one order of a REST ``OpenOrders``/``ClosedOrders`` answer."""
    price = Decimal(str(info.get("descr", {}).get("price") or "0"))
    status = REST_ORDER_STATUS.get(info.get("status", ""), OrderStatus.OPEN)
    filled = inst.qty_to_lots(str(info.get("vol_exec", "0")))
    if status is OrderStatus.OPEN and filled:
        status = OrderStatus.PARTIALLY_FILLED
    return OrderUpdate(
        venue,
        client_id,
        status,
        now_ns,
        filled_lots=filled,
        price_ticks=inst.price_to_ticks(price) if price else None,
        qty_lots=inst.qty_to_lots(str(info.get("vol", "0"))),
        symbol=inst.symbol,
    )


def alt_pair(rest_name: str) -> str:
    """XXBTZUSD -> XBTUSD (Kraken's altname for the classic four-letter pairs)."""
    if len(rest_name) == 8 and rest_name[0] in "XZ" and rest_name[4] in "XZ":
        return rest_name[1:4] + rest_name[5:]
    return rest_name


def rest_asset(code: str) -> str:
    """A REST balance's asset code as websocket v2 spells it (XXBT -> BTC, ZUSD -> USD)."""
    if len(code) == 4 and code[0] in "XZ":
        code = code[1:]
    return v2_asset(code)


def parse_timestamp_ns(text: Any) -> int:
    """An RFC 3339 timestamp in ns (microsecond precision); now for anything else."""
    if not isinstance(text, str):
        return time.time_ns()
    from datetime import datetime

    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return time.time_ns()
    return int(stamp.timestamp() * 1_000_000) * 1000
