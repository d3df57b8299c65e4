"""The Kraken replica's REST API (``/0/public``, ``/0/private``) in Kraken's wire format:
asset pairs, depth, time, and the signed private calls (balance, websocket token, open,
closed and queried orders, trades history, add and cancel order). ``KrakenReplica``
(kraken_replica.py) adds websocket v2 and the order engine behind both.

Trades history rows carry the documented trade info only: no ``cl_ord_id``, so a client
learns a trade's client order id from the order (``QueryOrders``), as on Kraken. They come
50 a call, the most recent first, with ``count`` and ``ofs`` paging as the venue documents.

Every signed call goes through the API key's REST call counter, as
https://docs.kraken.com/api/docs/guides/spot-rest-ratelimits describes it: it starts at 0,
a ledger or trade history call adds 2, any other private call 1, ``AddOrder`` and
``CancelOrder`` nothing (they are on the trading engine's per-pair limiter); it decays at
the tier's rate. A call that would take it over the tier's maximum is answered
``EAPI:Rate limit exceeded`` and still counts, so a client that keeps calling stays
refused. The venue lowers the counter "every couple of seconds"; the replica lowers it
continuously at the documented rate. Public calls do not count.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from quoteforge.exchanges.ccxt_base import dumps_exact
from quoteforge.exchanges.testing.faults import (
    OrderRejectedError,
    ReplicaOrder,
    ReplicaTrade,
)
from quoteforge.exchanges.testing.replica import ReplicaServer

__all__ = [
    "DEFAULT_PAIRS",
    "QUERY_ORDERS_MAX",
    "REJECT",
    "REST_TIERS",
    "TRADES_HISTORY_PAGE",
    "KrakenPair",
    "KrakenRest",
    "RestCallCounter",
    "iso",
    "kraken_sign",
]

QUERY_ORDERS_MAX = 50
"""The most txids one ``QueryOrders`` call takes."""
TRADES_HISTORY_PAGE = 50
"""The trades one ``TradesHistory`` call returns at most (the most recent first)."""

REJECT = {
    "insufficient_funds": "EOrder:Insufficient funds",
    "post_only": "EOrder:Post only order",
    "duplicate": "EOrder:Duplicate order",
    "lot_size": "EGeneral:Invalid arguments:volume",
    "tick_size": "EGeneral:Invalid arguments:price",
    "missing_price": "EGeneral:Invalid arguments:limit_price",
    "unknown_order": "EOrder:Unknown order",
    "amend_size": "EOrder:Invalid order",
    "notional": "EOrder:Cost minimum not met",
    "minimum": "EOrder:Order minimum not met",
}


REST_TIERS: dict[str, tuple[float, float]] = {
    # account tier: (maximum of the REST call counter, decay per second)
    "starter": (15.0, 0.33),
    "intermediate": (20.0, 0.5),
    "pro": (20.0, 1.0),
}
"""The REST call counter of each verification tier, as the venue documents it."""
_HISTORY_CALLS = frozenset({"Ledgers", "QueryLedgers", "TradesHistory", "QueryTrades"})
_TRADING_LIMITER_CALLS = frozenset({"AddOrder", "CancelOrder"})


def rest_call_cost(name: str) -> int:
    """What one signed call to ``/0/private/<name>`` adds to the REST call counter."""
    if name in _TRADING_LIMITER_CALLS:
        return 0
    return 2 if name in _HISTORY_CALLS else 1


@dataclass
class RestCallCounter:
    """One API key's REST call counter: ``maximum``, decaying ``decay_per_s`` a second.

    ``peak`` is the highest level an answered call left it at; ``refused`` names every
    call answered ``EAPI:Rate limit exceeded``, in order.
    """

    maximum: float
    decay_per_s: float
    value: float = 0.0
    at: float = field(default_factory=time.monotonic)
    peak: float = 0.0
    refused: list[str] = field(default_factory=list)

    def level(self) -> float:
        """The counter now."""
        return max(0.0, self.value - (time.monotonic() - self.at) * self.decay_per_s)

    def add(self, amount: float) -> float:
        """Raise the counter by ``amount``; the new level."""
        self.value, self.at = self.level() + amount, time.monotonic()
        return self.value

    def admit(self, name: str) -> bool:
        """Count one call to ``name``; False when it takes the counter over the maximum
        (the call is refused, and counted all the same)."""
        cost = rest_call_cost(name)
        if not cost:
            return True
        level = self.add(cost)
        if level > self.maximum:
            self.refused.append(name)
            return False
        self.peak = max(self.peak, level)
        return True


@dataclass(frozen=True)
class KrakenPair:
    """A replica pair: REST names, websocket v2 symbol, grid and opening book."""

    altname: str
    wsname: str
    symbol: str  # websocket v2 name, e.g. "BTC/USD"
    base: str
    quote: str
    pair_decimals: int
    lot_decimals: int
    ordermin: str
    costmin: str
    mid: str
    levels: int = 30

    @property
    def tick(self) -> Decimal:
        return Decimal(1).scaleb(-self.pair_decimals)

    @property
    def lot(self) -> Decimal:
        return Decimal(1).scaleb(-self.lot_decimals)


DEFAULT_PAIRS = {
    "XXBTZUSD": KrakenPair(
        "XBTUSD", "XBT/USD", "BTC/USD", "XXBT", "ZUSD", 1, 8, "0.0001", "0.5", "50000.0"
    ),
    "XETHZUSD": KrakenPair(
        "ETHUSD", "ETH/USD", "ETH/USD", "XETH", "ZUSD", 2, 8, "0.002", "0.5", "3000.00"
    ),
}


def kraken_sign(secret_b64: str, path: str, nonce: str, body: str) -> str:
    """Kraken REST signature: HMAC-SHA512(base64-decoded secret, path + SHA256(nonce + body))."""
    digest = hashlib.sha256((nonce + body).encode()).digest()
    mac = hmac.new(base64.b64decode(secret_b64), path.encode() + digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode()


def iso(ms: int) -> str:
    """Kraken's RFC 3339 timestamp with microseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KrakenRest(ReplicaServer):
    """The REST half of ``KrakenReplica``: ``/0/public`` and ``/0/private``.

    ``KrakenReplica.__init__`` sets up the state it reads; placing and cancelling
    (``add_order``, ``cancel_order``, abstract here) are implemented there, the order
    engine shared with websocket order entry.
    """

    venue = "kraken"
    order_path = "add_order"

    pairs: dict[str, KrakenPair]
    api_key: str
    api_secret: str
    tokens: set[str]
    cancel_after_ms: int
    cancel_after_fired: int
    _by_symbol: dict[str, str]
    _txids: dict[str, ReplicaOrder]
    _last_nonce: int
    queried_txids: list[list[str]]
    trades_history_calls: list[int]
    rest_counter: RestCallCounter

    @abstractmethod
    async def add_order(self, spec: dict[str, Any]) -> ReplicaOrder:
        """Validate, place and report one order (a websocket ``add_order`` spec).
        ``KrakenReplica`` implements it; REST ``AddOrder`` calls it too."""

    @abstractmethod
    async def cancel_order(self, order: ReplicaOrder) -> None:
        """Cancel one of our open orders and report it. ``KrakenReplica`` implements
        it; REST ``CancelOrder`` calls it too."""

    def _add_rest_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/0/public/AssetPairs", self._asset_pairs)
        r.add_get("/0/public/Depth", self._depth)
        r.add_get("/0/public/Time", self._time)
        r.add_get("/0/public/Assets", self._assets)
        for name in (
            "Balance",
            "GetWebSocketsToken",
            "OpenOrders",
            "ClosedOrders",
            "QueryOrders",
            "AddOrder",
            "CancelOrder",
            "TradesHistory",
            "BalanceEx",
            "CancelAll",
            "CancelAllOrdersAfter",
        ):
            r.add_post(f"/0/private/{name}", self._private)

    def _pair(self, symbol: str) -> KrakenPair:
        return self.pairs[self._by_symbol[symbol]]

    def _price_text(self, symbol: str, price: Decimal) -> str:
        return f"{price:.{self._pair(symbol).pair_decimals}f}"

    def _qty_text(self, symbol: str, qty: Decimal) -> str:
        return f"{qty:.{self._pair(symbol).lot_decimals}f}"

    def _ok(self, result: Any) -> web.Response:
        return web.Response(
            text=dumps_exact({"error": [], "result": result}), content_type="application/json"
        )

    def _fail(self, *errors: str) -> web.Response:
        return web.json_response({"error": list(errors)})

    def error_response(self, status: int, body: str, headers: dict[str, str]) -> web.Response:
        if not body:
            text = (
                "EAPI:Rate limit exceeded"
                if status in (418, 429)
                else "EService:Unavailable"
                if status >= 500
                else "EGeneral:Invalid arguments"
            )
            body = json.dumps({"error": [text]})
        return web.Response(
            status=status, text=body, headers=headers, content_type="application/json"
        )

    # -- public REST ------------------------------------------------------------------------
    async def _time(self, request: web.Request) -> web.Response:
        now = self.now_ms()
        return self._ok({"unixtime": now // 1000, "rfc1123": iso(now)})

    def _pair_info(self, pair: KrakenPair) -> dict[str, Any]:
        return {
            "altname": pair.altname,
            "wsname": pair.wsname,
            "aclass_base": "currency",
            "base": pair.base,
            "aclass_quote": "currency",
            "quote": pair.quote,
            "lot": "unit",
            "cost_decimals": 5,
            "pair_decimals": pair.pair_decimals,
            "lot_decimals": pair.lot_decimals,
            "lot_multiplier": 1,
            "leverage_buy": [2, 3, 4, 5],
            "leverage_sell": [2, 3, 4, 5],
            "fees": [[0, 0.4], [10000, 0.35], [50000, 0.24]],
            "fees_maker": [[0, 0.25], [10000, 0.2], [50000, 0.14]],
            "fee_volume_currency": "ZUSD",
            "margin_call": 80,
            "margin_stop": 40,
            "ordermin": pair.ordermin,
            "costmin": pair.costmin,
            "tick_size": format(pair.tick, "f"),
            "status": "online",
            "long_position_limit": 270,
            "short_position_limit": 180,
        }

    def _find_pair(self, text: str) -> str | None:
        for name, pair in self.pairs.items():
            if text in (name, pair.altname, pair.wsname, pair.symbol):
                return name
        return None

    async def _assets(self, request: web.Request) -> web.Response:
        """``GET /0/public/Assets``: the assets of the replica's pairs (ccxt's
        ``load_markets`` reads it for currency codes)."""
        names = sorted(
            {p.base for p in self.pairs.values()} | {p.quote for p in self.pairs.values()}
        )
        return self._ok(
            {
                name: {
                    "aclass": "currency",
                    "altname": name[1:] if len(name) == 4 and name[0] in "XZ" else name,
                    "decimals": 10 if name.startswith("X") else 4,
                    "display_decimals": 5 if name.startswith("X") else 2,
                    "status": "enabled",
                }
                for name in names
            }
        )

    async def _asset_pairs(self, request: web.Request) -> web.Response:
        names = list(self.pairs)
        if "pair" in request.query:
            names = []
            for text in request.query["pair"].split(","):
                found = self._find_pair(text)
                if found is None:
                    return self._fail("EQuery:Unknown asset pair")
                names.append(found)
        return self._ok({n: self._pair_info(self.pairs[n]) for n in names})

    async def _depth(self, request: web.Request) -> web.Response:
        name = self._find_pair(request.query.get("pair", ""))
        if name is None:
            return self._fail("EQuery:Unknown asset pair")
        count = int(request.query.get("count", "100"))
        pair = self.pairs[name]
        market = self.markets[pair.symbol]
        ts = self.now_ms() // 1000
        return self._ok(
            {
                name: {
                    side: [
                        [self._price_text(pair.symbol, p), self._qty_text(pair.symbol, q), ts]
                        for p, q in market.depth(book_side, count)
                    ]
                    for side, book_side in (("asks", "sell"), ("bids", "buy"))
                }
            }
        )

    # -- private REST -----------------------------------------------------------------------
    async def use_rest_counter(self, amount: float) -> None:
        """Raise the API key's REST call counter by ``amount``, as another program
        calling with the same key would."""
        self.rest_counter.add(amount)

    def _cancel_all_after(self, timeout: str) -> web.Response:
        """The dead man's switch: every open order is cancelled ``timeout`` seconds from
        now unless armed again (checked every 10 ms); 0 stops it. Once it has fired it
        stays off until armed again."""
        if not timeout.isdigit():
            return self._fail("EGeneral:Invalid arguments:timeout")
        now = self.now_ms()
        if int(timeout) == 0:
            self.cancel_after_ms = 0
        else:
            if not self.cancel_after_ms:
                self.spawn(self._cancel_after_loop())
            self.cancel_after_ms = now + int(timeout) * 1000
        trigger = iso(self.cancel_after_ms) if self.cancel_after_ms else "0"
        return self._ok({"currentTime": iso(now), "triggerTime": trigger})

    async def _cancel_after_loop(self) -> None:
        while self.cancel_after_ms:
            await asyncio.sleep(0.01)
            if self.cancel_after_ms and self.now_ms() >= self.cancel_after_ms:
                self.cancel_after_ms = 0
                self.cancel_after_fired += 1
                for resting in [o for o in self._all_orders() if o.is_open]:
                    await self.cancel_order(resting)

    async def _private(self, request: web.Request) -> web.Response:
        body = await request.text()
        if request.headers.get("API-Key") != self.api_key:
            return self._fail("EAPI:Invalid key")
        params = dict(parse_qsl(body, keep_blank_values=True))
        nonce = params.get("nonce", "")
        try:
            expected = kraken_sign(self.api_secret, request.path, nonce, body)
        except (ValueError, TypeError):
            return self._fail("EAPI:Invalid signature")
        if not hmac.compare_digest(expected, request.headers.get("API-Sign", "")):
            return self._fail("EAPI:Invalid signature")
        if not nonce.isdigit() or int(nonce) <= self._last_nonce:
            return self._fail("EAPI:Invalid nonce")
        self._last_nonce = int(nonce)
        name = request.path.rsplit("/", 1)[1]
        if not self.rest_counter.admit(name):
            return self._fail("EAPI:Rate limit exceeded")
        if name == "Balance":
            acct = self.account
            return self._ok(
                {
                    a: format(acct.free.get(a, Decimal(0)) + acct.locked.get(a, Decimal(0)), ".10f")
                    for a in acct.assets()
                }
            )
        if name == "BalanceEx":
            acct = self.account
            return self._ok(
                {
                    a: {
                        "balance": format(
                            acct.free.get(a, Decimal(0)) + acct.locked.get(a, Decimal(0)), ".10f"
                        ),
                        "hold_trade": format(acct.locked.get(a, Decimal(0)), ".10f"),
                    }
                    for a in acct.assets()
                }
            )
        if name == "CancelAll":
            open_orders = [o for o in self._all_orders() if o.is_open]
            for resting in open_orders:
                await self.cancel_order(resting)
            return self._ok({"count": len(open_orders)})
        if name == "CancelAllOrdersAfter":
            return self._cancel_all_after(params.get("timeout", ""))
        if name == "GetWebSocketsToken":
            token = secrets.token_urlsafe(24)
            self.tokens.add(token)
            return self._ok({"token": token, "expires": 900})
        if name in ("OpenOrders", "ClosedOrders"):
            wanted = params.get("cl_ord_id")
            open_ = name == "OpenOrders"
            rows = {
                o.venue_id: self._order_info(o)
                for o in self._all_orders()
                if o.is_open == open_ and (wanted is None or o.client_id == wanted)
            }
            if open_:
                return self._ok({"open": rows})
            return self._ok({"closed": rows, "count": len(rows)})
        if name == "QueryOrders":
            return self._query_orders(params.get("txid", ""))
        if name == "TradesHistory":
            return self._trades_history(params)
        if name == "AddOrder":
            return await self._rest_add_order(params)
        if name == "CancelOrder":
            order = self._txids.get(params.get("txid", "")) or self._order_by_client(
                params.get("cl_ord_id", "")
            )
            if order is None or not order.is_open:
                return self._fail("EOrder:Unknown order")
            await self.cancel_order(order)
            return self._ok({"count": 1})
        return self._fail("EGeneral:Unknown method")

    def _query_orders(self, txid: str) -> web.Response:
        """``QueryOrders``: the order info of up to 50 orders, keyed by txid (a comma
        separated list). The docs do not say what an unknown txid gets; the replica
        refuses the call with ``EOrder:Invalid order``."""
        txids = [t.strip() for t in txid.split(",") if t.strip()]
        if not 1 <= len(txids) <= QUERY_ORDERS_MAX:
            return self._fail("EGeneral:Invalid arguments:txid")
        self.queried_txids.append(txids)
        orders = [self._txids.get(t) for t in txids]
        if any(o is None for o in orders):
            return self._fail("EOrder:Invalid order")
        return self._ok({t: self._order_info(o) for t, o in zip(txids, orders, strict=True) if o})

    def _trades_history(self, params: dict[str, str]) -> web.Response:
        """``TradesHistory``: the account's trades, ``TRADES_HISTORY_PAGE`` a call, the most
        recent first; ``count`` is how many match in all and ``ofs`` (result offset) pages
        on. ``start`` is exclusive and ``end`` inclusive, each a unix timestamp. The venue
        also takes a trade txid there; the replica refuses one, as it refuses a negative
        or unreadable ``ofs``."""
        try:
            start = Decimal(params["start"]) if params.get("start") else None
            end = Decimal(params["end"]) if params.get("end") else None
            ofs = int(params.get("ofs") or 0)
        except (ValueError, ArithmeticError):
            return self._fail("EGeneral:Invalid arguments")
        if ofs < 0 or not all(b is None or b.is_finite() for b in (start, end)):
            return self._fail("EGeneral:Invalid arguments")
        matching = sorted(
            (
                t
                for market in self.markets.values()
                for t in market.trades
                if (start is None or Decimal(t.ts_ms) / 1000 > start)
                and (end is None or Decimal(t.ts_ms) / 1000 <= end)
            ),
            key=lambda t: (t.ts_ms, t.trade_id),
            reverse=True,
        )
        page = matching[ofs : ofs + TRADES_HISTORY_PAGE]
        self.trades_history_calls.append(ofs)
        rows = {f"T{t.trade_id:05d}-REPLI-CA": self._trade_info(t) for t in page}
        return self._ok({"trades": rows, "count": len(matching)})

    def _all_orders(self) -> list[ReplicaOrder]:
        return [o for m in self.markets.values() for o in m.orders.values()]

    def _order_info(self, o: ReplicaOrder) -> dict[str, Any]:
        pair = self._pair(o.symbol)
        price = self._price_text(o.symbol, o.price) if o.price is not None else "0"
        status = {
            "new": "open",
            "partially_filled": "open",
            "filled": "closed",
            "canceled": "canceled",
            "expired": "expired",
        }[o.status]
        return {
            "refid": None,
            "userref": 0,
            "cl_ord_id": o.client_id,
            "status": status,
            "opentm": o.created_ms / 1000,
            "starttm": 0,
            "expiretm": 0,
            "descr": {
                "pair": pair.altname,
                "type": o.side,
                "ordertype": o.kind,
                "price": price,
                "price2": "0",
                "leverage": "none",
                "order": f"{o.side} {self._qty_text(o.symbol, o.qty)} {pair.altname} @ "
                f"{o.kind} {price}",
                "close": "",
            },
            "vol": self._qty_text(o.symbol, o.qty),
            "vol_exec": self._qty_text(o.symbol, o.filled),
            "cost": format(o.quote_filled, "f"),
            "fee": "0.00000",
            "price": price,
            "stopprice": "0.00000",
            "limitprice": "0.00000",
            "misc": "",
            "oflags": "post,fciq" if o.tif == "post_only" else "fciq",
            **({"closetm": o.updated_ms / 1000} if not o.is_open else {}),
        }

    def _trade_info(self, t: ReplicaTrade) -> dict[str, Any]:
        o = t.order
        return {
            "ordertxid": o.venue_id,
            "postxid": "TKH2SE-M7IF5-CFI7LT",
            "pair": self._pair(o.symbol).altname,
            "time": t.ts_ms / 1000,
            "type": o.side,
            "ordertype": o.kind,
            "price": self._price_text(o.symbol, t.price),
            "cost": format(t.price * t.qty, "f"),
            "fee": format(t.fee, "f"),
            "vol": self._qty_text(o.symbol, t.qty),
            "margin": "0.00000",
            "misc": "",
            "trade_id": t.trade_id,
            "maker": t.maker,
        }

    async def _rest_add_order(self, params: dict[str, str]) -> web.Response:
        name = self._find_pair(params.get("pair", ""))
        if name is None:
            return self._fail("EQuery:Unknown asset pair")
        pair = self.pairs[name]
        flags = params.get("oflags", "")
        spec = {
            "symbol": pair.symbol,
            "side": params.get("type", ""),
            "order_type": params.get("ordertype", ""),
            "order_qty": params.get("volume", "0"),
            "limit_price": params.get("price"),
            "cl_ord_id": params.get("cl_ord_id"),
            "post_only": "post" in flags,
            "time_in_force": params.get("timeinforce", "GTC").lower(),
        }
        try:
            order = await self.add_order(spec)
        except OrderRejectedError as exc:
            return self._fail(str(exc) if exc.code == "forced" else REJECT.get(exc.code, str(exc)))
        return self._ok(
            {
                "descr": {
                    "order": f"{order.side} {params.get('volume')} {pair.altname} @ {order.kind}"
                },
                "txid": [order.venue_id],
            }
        )
