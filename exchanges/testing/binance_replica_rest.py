"""The Binance replica's REST API (``/api/v3``): exchange info, depth, signed order
entry, queries, account and trades, with Binance's request-weight and order-count
windows, in Binance's wire format. ``BinanceReplica`` (binance_replica.py) adds the
streams, the websocket API and recording playback on top.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from aiohttp import web

from quoteforge.exchanges.testing.binance_replica_trades import TradeQueryError, account_trades
from quoteforge.exchanges.testing.faults import (
    OrderRejectedError,
    ReplicaMarket,
    ReplicaOrder,
    ReplicaTrade,
)
from quoteforge.exchanges.testing.replica import ReplicaServer

__all__ = [
    "DEFAULT_SYMBOLS",
    "ORDER_STATUS",
    "BinanceRest",
    "BinanceSymbol",
    "OrderCountWindow",
    "RateWindow",
    "exchange_rate_limit",
    "sign_query",
]


ORDER_STATUS = {  # the replica's order states as Binance writes them
    "new": "NEW",
    "partially_filled": "PARTIALLY_FILLED",
    "filled": "FILLED",
    "canceled": "CANCELED",
    "expired": "EXPIRED",
}
_REJECT_MESSAGES = {
    "insufficient_funds": (-2010, "Account has insufficient balance for requested action."),
    "post_only": (-2010, "Order would immediately match and take."),
    "duplicate": (-2010, "Duplicate order sent."),
    "lot_size": (-1013, "Filter failure: LOT_SIZE"),
    "tick_size": (-1013, "Filter failure: PRICE_FILTER"),
    "notional": (-1013, "Filter failure: NOTIONAL"),
    "missing_price": (
        -1102,
        "Mandatory parameter 'price' was not sent, was empty/null, or malformed.",
    ),
    "unknown_order": (-2011, "Unknown order sent."),
    "rejected": (-2010, "New order rejected."),
}


def f8(value: Decimal) -> str:
    """Binance's 8-decimal text for a price, quantity or amount."""
    return f"{value:.8f}"


@dataclass(frozen=True)
class BinanceSymbol:
    """A replica market: its assets, grid, minimum notional and opening book."""

    base: str
    quote: str
    tick: str
    lot: str
    min_notional: str = "5"
    mid: str = "100"
    levels: int = 20


DEFAULT_SYMBOLS = {
    "BTCUSDT": BinanceSymbol("BTC", "USDT", "0.01", "0.00001", "5", "50000.00"),
    "ETHUSDT": BinanceSymbol("ETH", "USDT", "0.01", "0.0001", "5", "3000.00"),
}


class RateWindow:
    """A fixed window counter (Binance counts weight per minute, orders per 10 s)."""

    def __init__(self, length_ms: int) -> None:
        self.length_ms = length_ms
        self.start = 0
        self.used = 0

    def add(self, now_ms: int, amount: int) -> int:
        start = now_ms - now_ms % self.length_ms
        if start != self.start:
            self.start, self.used = start, 0
        self.used += amount
        return self.used

    def retry_after_s(self, now_ms: int) -> int:
        return max(1, (self.start + self.length_ms - now_ms + 999) // 1000)


class OrderCountWindow(NamedTuple):
    """One of the venue's new-order counters: its window, its limit (``None``: counted
    and reported, never refused), the period the -1015 message names and the usage header
    that reports it."""

    window: RateWindow
    limit: int | None
    label: str
    header: str


def exchange_rate_limit(kind: str, interval: str, num: int, limit: int) -> dict[str, Any]:
    """One ``rateLimits`` entry of ``exchangeInfo`` (spot and futures write them alike)."""
    return {"rateLimitType": kind, "interval": interval, "intervalNum": num, "limit": limit}


def sign_query(secret: str, query: str) -> str:
    """HMAC-SHA256 hex signature Binance expects over a query string."""
    return hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()


class BinanceRest(ReplicaServer):
    """The REST half of ``BinanceReplica``: routes under ``/api/v3`` and their answers.

    The state it reads is set up by ``BinanceReplica.__init__``; the private stream
    report (``report_execution``) and the recorded book (``recorded_depth``) are
    implemented there too (the abstract methods below).
    """

    venue = "binance"
    order_path = "/api/v3/order"
    """Where order-entry faults (``fail_http``, ``time_out``) aim to hit new orders."""

    symbols: dict[str, BinanceSymbol]
    update_id: dict[str, int]
    recording: Path | None
    api_key: str
    api_secret: str
    weight_limit: int
    order_limit_10s: int
    _order_ids: Iterator[int]
    _weight: RateWindow
    _orders_10s: RateWindow
    _orders_1d: RateWindow
    order_windows: list[OrderCountWindow]
    """Every new-order counter, in the order the venue counts them (spot: 1 day, 10 s)."""

    @abstractmethod
    async def report_execution(
        self,
        o: ReplicaOrder,
        exec_type: str,
        trade: ReplicaTrade | None,
        *,
        cancel_client_id: str = "",
    ) -> None:
        """Put an ``executionReport`` on the user data stream. ``BinanceReplica``
        implements it; the REST cancel answers call it."""

    @abstractmethod
    async def recorded_depth(self, symbol: str, market: ReplicaMarket, limit: int) -> web.Response:
        """The answer to ``GET /api/v3/depth`` while serving a recording.
        ``BinanceReplica`` implements it."""

    def _add_rest_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/api/v3/time", self._time)
        r.add_get("/api/v3/ping", self._ping)
        r.add_get("/api/v3/exchangeInfo", self._exchange_info)
        r.add_get("/api/v3/depth", self._depth)
        r.add_post("/api/v3/order", self.answer_new_order)
        r.add_delete("/api/v3/order", self._cancel_order)
        r.add_get("/api/v3/order", self._query_order)
        r.add_get("/api/v3/openOrders", self._open_orders)
        r.add_delete("/api/v3/openOrders", self._cancel_all)
        r.add_get("/api/v3/account", self._account)
        r.add_get("/api/v3/myTrades", self._my_trades)
        r.add_post("/api/v3/order/cancelReplace", self._cancel_replace)

    def error_response(self, status: int, body: str, headers: dict[str, str]) -> web.Response:
        if not body:
            if status == 429:
                body = json.dumps(
                    {
                        "code": -1003,
                        "msg": "Too many requests; current limit is "
                        f"{self.weight_limit} request weight per 1 MINUTE.",
                    }
                )
            elif status == 418:
                body = json.dumps({"code": -1003, "msg": "Way too many requests; IP banned."})
            elif status >= 500:
                body = json.dumps(
                    {
                        "code": -1001,
                        "msg": "Internal error; unable to process your request. Please try again.",
                    }
                )
            else:
                body = json.dumps({"code": -1000, "msg": "An unknown error occurred."})
        headers = {**headers, "Content-Type": "application/json"}
        return web.Response(status=status, text=body, headers=headers)

    def usage_headers(self, *, orders: bool = False) -> dict[str, str]:
        """``X-MBX-USED-WEIGHT-1M`` and, for order entry, every order counter's
        ``X-MBX-ORDER-COUNT-*`` (what the adapters' rate governors read)."""
        now = self.now_ms()
        headers = {"X-MBX-USED-WEIGHT-1M": str(self._weight.add(now, 0))}
        if orders:
            for counter in self.order_windows:
                headers[counter.header] = str(counter.window.add(now, 0))
        return headers

    def json_answer(self, payload: Any, status: int = 200, *, orders: bool = False) -> web.Response:
        """A JSON answer with the usage headers (``orders``: an order-entry answer)."""
        return web.json_response(payload, status=status, headers=self.usage_headers(orders=orders))

    def _error(self, code: int, msg: str, status: int = 400, **extra: Any) -> web.Response:
        return self.json_answer({"code": code, "msg": msg, **extra}, status)

    def _reject(self, exc: OrderRejectedError) -> web.Response:
        code, msg = _REJECT_MESSAGES.get(exc.code, (-2010, str(exc)))
        return self._error(code, msg)

    def charge_weight(self, weight: int) -> web.Response | None:
        """Charge ``weight`` to the request-weight minute; the venue's -1003 answer (429
        with ``Retry-After``) past the limit, else ``None``."""
        now = self.now_ms()
        used = self._weight.add(now, weight)
        if used > self.weight_limit:
            return web.json_response(
                {
                    "code": -1003,
                    "msg": f"Too much request weight used; current limit is "
                    f"{self.weight_limit} request weight per 1 MINUTE.",
                },
                status=429,
                headers={
                    "Retry-After": str(self._weight.retry_after_s(now)),
                    "X-MBX-USED-WEIGHT-1M": str(used),
                },
            )
        return None

    async def signed_params(
        self, request: web.Request, weight: int
    ) -> dict[str, str] | web.Response:
        """Check a SIGNED request's API key, HMAC-SHA256 signature and timestamp (within
        ``recvWindow``) after charging ``weight``; returns its parameters or the venue's
        error answer."""
        limited = self.charge_weight(weight)
        if limited is not None:
            return limited
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            return self._error(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        query = request.query_string
        body = (await request.text()) if request.can_read_body else ""
        total = query + body
        head, sep, signature = total.rpartition("&signature=")
        if not sep or not hmac.compare_digest(
            hmac.new(self.api_secret.encode(), head.encode(), hashlib.sha256).hexdigest(),
            signature,
        ):
            return self._error(-1022, "Signature for this request is not valid.")
        params = dict(parse_qsl(head, keep_blank_values=True))
        try:
            ts = int(params["timestamp"])
        except (KeyError, ValueError):
            return self._error(
                -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."
            )
        window = int(params.get("recvWindow", "5000"))
        now = self.now_ms()
        if ts > now + 1000 or now - ts > window:
            return self._error(-1021, "Timestamp for this request is outside of the recvWindow.")
        return params

    # -- public REST --------------------------------------------------------------------
    async def _time(self, request: web.Request) -> web.Response:
        return self.charge_weight(1) or self.json_answer({"serverTime": self.now_ms()})

    async def _ping(self, request: web.Request) -> web.Response:
        return self.charge_weight(1) or self.json_answer({})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        limited = self.charge_weight(20)
        if limited is not None:
            return limited
        wanted: list[str] = list(self.symbols)
        if "symbol" in request.query:
            wanted = [request.query["symbol"]]
        elif "symbols" in request.query:
            wanted = json.loads(request.query["symbols"])
        missing = [s for s in wanted if s not in self.symbols]
        if missing:
            return self._error(-1121, "Invalid symbol.")
        return self.json_answer(
            {
                "timezone": "UTC",
                "serverTime": self.now_ms(),
                "rateLimits": [
                    exchange_rate_limit("REQUEST_WEIGHT", "MINUTE", 1, self.weight_limit),
                    exchange_rate_limit("ORDERS", "SECOND", 10, self.order_limit_10s),
                    exchange_rate_limit("ORDERS", "DAY", 1, 200000),
                    exchange_rate_limit("RAW_REQUESTS", "MINUTE", 5, 61000),
                ],
                "exchangeFilters": [],
                "symbols": [self._symbol_info(s) for s in wanted],
            }
        )

    def _symbol_info(self, name: str) -> dict[str, Any]:
        spec = self.symbols[name]
        return {
            "symbol": name,
            "status": "TRADING",
            "baseAsset": spec.base,
            "baseAssetPrecision": 8,
            "quoteAsset": spec.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": [
                "LIMIT",
                "LIMIT_MAKER",
                "MARKET",
                "STOP_LOSS",
                "STOP_LOSS_LIMIT",
                "TAKE_PROFIT",
                "TAKE_PROFIT_LIMIT",
            ],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "amendAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": f8(Decimal(spec.tick)),
                    "maxPrice": "1000000.00000000",
                    "tickSize": f8(Decimal(spec.tick)),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": f8(Decimal(spec.lot)),
                    "maxQty": "9000.00000000",
                    "stepSize": f8(Decimal(spec.lot)),
                },
                {"filterType": "ICEBERG_PARTS", "limit": 10},
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "minQty": "0.00000000",
                    "maxQty": "100.00000000",
                    "stepSize": "0.00000000",
                },
                {
                    "filterType": "NOTIONAL",
                    "minNotional": f8(Decimal(spec.min_notional)),
                    "applyMinToMarket": True,
                    "maxNotional": "9000000.00000000",
                    "applyMaxToMarket": False,
                    "avgPriceMins": 5,
                },
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }

    async def _depth(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "100"))
        weight = 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
        limited = self.charge_weight(weight)
        if limited is not None:
            return limited
        symbol = request.query.get("symbol", "")
        if symbol not in self.markets:
            return self._error(-1121, "Invalid symbol.")
        market = self.markets[symbol]
        if self.recording is not None:
            return await self.recorded_depth(symbol, market, limit)
        return self.json_answer(
            {
                "lastUpdateId": self.update_id[symbol],
                "bids": [[f8(p), f8(q)] for p, q in market.depth("buy", limit)],
                "asks": [[f8(p), f8(q)] for p, q in market.depth("sell", limit)],
            }
        )

    # -- orders ---------------------------------------------------------------------------
    def _order_json(self, o: ReplicaOrder, *, full: bool = False) -> dict[str, Any]:
        kind = (
            "MARKET" if o.kind == "market" else "LIMIT_MAKER" if o.tif == "post_only" else "LIMIT"
        )
        out: dict[str, Any] = {
            "symbol": o.symbol,
            "orderId": o.order_id,
            "orderListId": -1,
            "clientOrderId": o.client_id,
            "price": f8(o.price or Decimal(0)),
            "origQty": f8(o.qty),
            "executedQty": f8(o.filled),
            "cummulativeQuoteQty": f8(o.quote_filled),
            "status": ORDER_STATUS[o.status],
            "timeInForce": "IOC" if o.tif == "ioc" else "GTC",
            "type": kind,
            "side": o.side.upper(),
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }
        if full:
            out["transactTime"] = o.updated_ms
            out["workingTime"] = o.created_ms
            out["fills"] = [
                {
                    "price": f8(t.price),
                    "qty": f8(t.qty),
                    "commission": f8(t.fee),
                    "commissionAsset": t.fee_asset,
                    "tradeId": t.trade_id,
                }
                for t in self.markets[o.symbol].trades
                if t.order is o
            ]
        else:
            out.update(
                {
                    "stopPrice": "0.00000000",
                    "icebergQty": "0.00000000",
                    "time": o.created_ms,
                    "updateTime": o.updated_ms,
                    "isWorking": o.is_open,
                    "workingTime": o.created_ms,
                    "origQuoteOrderQty": "0.00000000",
                }
            )
        return out

    def parse_order(self, p: dict[str, str], market: ReplicaMarket) -> ReplicaOrder:
        """The order a spot ``POST /api/v3/order`` describes (MARKET, LIMIT_MAKER, LIMIT
        GTC/IOC); ``OrderRejectedError`` with the matcher's code when the venue refuses it.
        The futures replica parses through it too."""
        kind = p.get("type", "")
        side = p.get("side", "").lower()
        if side not in ("buy", "sell"):
            raise OrderRejectedError("rejected", "Invalid side.")
        try:
            qty = Decimal(p["quantity"])
        except KeyError:
            raise OrderRejectedError("missing_price", "quantity missing") from None
        price = Decimal(p["price"]) if "price" in p else None
        if kind == "MARKET":
            kind_, tif = "market", "ioc"
        elif kind == "LIMIT_MAKER":
            kind_, tif = "limit", "post_only"
        elif kind == "LIMIT":
            kind_ = "limit"
            tif = {"GTC": "gtc", "IOC": "ioc"}.get(p.get("timeInForce", ""), "")
            if not tif:
                raise OrderRejectedError("rejected", "Invalid timeInForce.")
        else:
            raise OrderRejectedError("rejected", f"Unsupported order type {kind}.")
        client_id = p.get("newClientOrderId") or f"replica-{secrets.token_hex(8)}"
        spec = self.symbols[market.symbol]
        if price is not None and qty * price < Decimal(spec.min_notional):
            raise OrderRejectedError("notional", "notional")
        now = self.now_ms()
        return ReplicaOrder(
            next(self._order_ids),
            client_id,
            market.symbol,
            side,
            kind_,
            tif,
            price,
            qty,
            now,
            updated_ms=now,
        )

    async def signed_order_entry(
        self, request: web.Request, weight: int
    ) -> dict[str, str] | web.Response:
        """A signed request that places one order (``signed_params``, then one new order
        counted by ``count_new_orders``): its parameters, or the venue's error answer."""
        p = await self.signed_params(request, weight)
        if isinstance(p, web.Response):
            return p
        limited = self.count_new_orders()
        return p if limited is None else limited

    def count_new_orders(self, n: int = 1) -> web.Response | None:
        """Count ``n`` new orders in every order counter; the venue's -1015 answer (429
        with ``Retry-After``) at the first counter past its limit (later ones are not
        counted), else ``None``."""
        now = self.now_ms()
        for counter in self.order_windows:
            used = counter.window.add(now, n)
            if counter.limit is not None and used > counter.limit:
                return web.json_response(
                    {
                        "code": -1015,
                        "msg": f"Too many new orders; current limit is {counter.limit} "
                        f"orders per {counter.label}.",
                    },
                    status=429,
                    headers={"Retry-After": str(counter.window.retry_after_s(now))},
                )
        return None

    async def _place(self, p: dict[str, str]) -> tuple[ReplicaOrder, list[ReplicaTrade]]:
        market = self._market(p.get("symbol", ""))
        order = self.parse_order(p, market)
        forced = self.faults.take_reject()
        if forced is not None:
            raise OrderRejectedError("forced", forced or "Order rejected by the venue.")
        return order, await self._execute(market, order)

    async def place_order(self, params: dict[str, str]) -> ReplicaOrder:
        """Control API: another program on the account places one order, given as the
        parameters of ``POST /api/v3/order`` (``symbol``, ``side``, ``type``,
        ``timeInForce``, ``price``, ``quantity``, ``newClientOrderId``); it is matched and
        reported like any order. ``OrderRejectedError`` when the venue would refuse it."""
        order, _ = await self._place(dict(params))
        return order

    async def answer_new_order(self, request: web.Request) -> web.Response:
        """``POST /api/v3/order``: place it and answer as the venue does. A subclass may
        override it to answer otherwise (``BinanceReplica``: -1007, executed later)."""
        p = await self.signed_order_entry(request, 1)
        if isinstance(p, web.Response):
            return p
        try:
            order, _ = await self._place(p)
        except OrderRejectedError as exc:
            if exc.code == "forced":
                return self._error(-2010, str(exc))
            return self._reject(exc)
        except KeyError as exc:
            return self._error(-1121, f"Invalid symbol. ({exc})")
        return self.json_answer(self._order_json(order, full=True), orders=True)

    def find_order(self, p: dict[str, str]) -> ReplicaOrder | None:
        """The order a request names by ``origClientOrderId`` or ``orderId`` on its
        ``symbol``, or ``None``."""
        market = self.markets.get(p.get("symbol", ""))
        if market is None:
            return None
        cid = p.get("origClientOrderId")
        if cid is not None:
            return market.orders.get(cid)
        oid = p.get("orderId")
        for o in market.orders.values():
            if str(o.order_id) == oid:
                return o
        return None

    async def cancel_resting(self, order: ReplicaOrder, cancel_cid: str) -> None:
        """Cancel a resting order: report it on the user stream and publish the book."""
        market = self.markets[order.symbol]
        market.cancel(order.client_id, self.now_ms())
        await self.report_execution(order, "CANCELED", None, cancel_client_id=cancel_cid)
        await self.publish_book(market)

    def _cancel_json(self, o: ReplicaOrder, cancel_cid: str) -> dict[str, Any]:
        body = self._order_json(o)
        for key in (
            "stopPrice",
            "icebergQty",
            "time",
            "updateTime",
            "isWorking",
            "workingTime",
            "origQuoteOrderQty",
        ):
            body.pop(key, None)
        body["origClientOrderId"] = o.client_id
        body["clientOrderId"] = cancel_cid
        body["transactTime"] = o.updated_ms
        return body

    async def _cancel_order(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 1)
        if isinstance(p, web.Response):
            return p
        order = self.find_order(p)
        if order is None or not order.is_open:
            return self._error(-2011, "Unknown order sent.")
        cancel_cid = p.get("newClientOrderId") or f"cancel-{secrets.token_hex(6)}"
        await self.cancel_resting(order, cancel_cid)
        return self.json_answer(self._cancel_json(order, cancel_cid))

    async def _query_order(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 4)
        if isinstance(p, web.Response):
            return p
        order = self.find_order(p)
        if order is None:
            return self._error(-2013, "Order does not exist.")
        return self.json_answer(self._order_json(order))

    async def _open_orders(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 6 if "symbol" in request.query else 80)
        if isinstance(p, web.Response):
            return p
        symbol = p.get("symbol")
        return self.json_answer([self._order_json(o) for o in self.orders(symbol)])

    async def _cancel_all(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 1)
        if isinstance(p, web.Response):
            return p
        symbol = p.get("symbol", "")
        if symbol not in self.markets:
            return self._error(-1121, "Invalid symbol.")
        out = []
        for order in self.orders(symbol):
            cid = f"cancel-{secrets.token_hex(6)}"
            await self.cancel_resting(order, cid)
            out.append(self._cancel_json(order, cid))
        if not out:
            return self._error(-2011, "Unknown order sent.")
        return self.json_answer(out)

    async def _account(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 20)
        if isinstance(p, web.Response):
            return p
        acct = self.account
        return self.json_answer(
            {
                "makerCommission": 10,
                "takerCommission": 10,
                "buyerCommission": 0,
                "sellerCommission": 0,
                "canTrade": True,
                "canWithdraw": True,
                "canDeposit": True,
                "brokered": False,
                "requireSelfTradePrevention": False,
                "preventSor": False,
                "updateTime": self.now_ms(),
                "accountType": "SPOT",
                "balances": [
                    {
                        "asset": a,
                        "free": f8(acct.free.get(a, Decimal(0))),
                        "locked": f8(acct.locked.get(a, Decimal(0))),
                    }
                    for a in acct.assets()
                ],
                "permissions": ["SPOT"],
                "uid": 354937868,
            }
        )

    async def _my_trades(self, request: web.Request) -> web.Response:
        """``GET /api/v3/myTrades`` (weight 20, 5 with ``orderId``): see
        ``account_trades``."""
        p = await self.signed_params(request, 5 if "orderId" in request.query else 20)
        if isinstance(p, web.Response):
            return p
        market = self.markets.get(p.get("symbol", ""))
        if market is None:
            return self._error(-1121, "Invalid symbol.")
        try:
            rows = account_trades(
                market.trades,
                p,
                max_span_ms=86_400_000,
                span_error="More than 24 hours between startTime and endTime.",
                implicit_span=False,
                now_ms=self.now_ms(),
            )
        except TradeQueryError as exc:
            return self._error(exc.code, exc.msg)
        return self.json_answer(
            [
                {
                    "symbol": market.symbol,
                    "id": t.trade_id,
                    "orderId": t.order.order_id,
                    "orderListId": -1,
                    "price": f8(t.price),
                    "qty": f8(t.qty),
                    "quoteQty": f8(t.price * t.qty),
                    "commission": f8(t.fee),
                    "commissionAsset": t.fee_asset,
                    "time": t.ts_ms,
                    "isBuyer": t.order.side == "buy",
                    "isMaker": t.maker,
                    "isBestMatch": True,
                }
                for t in rows
            ]
        )

    async def _cancel_replace(self, request: web.Request) -> web.Response:
        p = await self.signed_order_entry(request, 1)
        if isinstance(p, web.Response):
            return p
        mode = p.get("cancelReplaceMode", "STOP_ON_FAILURE")
        old = self.find_order(
            {
                "symbol": p.get("symbol", ""),
                "origClientOrderId": p.get("cancelOrigClientOrderId", ""),
                **({"orderId": p["cancelOrderId"]} if "cancelOrderId" in p else {}),
            }
        )
        cancel_cid = p.get("cancelNewClientOrderId") or f"cancel-{secrets.token_hex(6)}"
        cancel_resp: dict[str, Any]
        if old is None or not old.is_open:
            cancel_resp = {"code": -2011, "msg": "Unknown order sent."}
            if mode == "STOP_ON_FAILURE":
                return self._error(
                    -2022,
                    "Order cancel-replace failed.",
                    data={
                        "cancelResult": "FAILURE",
                        "newOrderResult": "NOT_ATTEMPTED",
                        "cancelResponse": cancel_resp,
                        "newOrderResponse": None,
                    },
                )
            cancel_ok = False
        else:
            await self.cancel_resting(old, cancel_cid)
            cancel_resp = self._cancel_json(old, cancel_cid)
            cancel_ok = True
        try:
            order, _ = await self._place(p)
        except (OrderRejectedError, KeyError) as exc:
            code, msg = _REJECT_MESSAGES.get(getattr(exc, "code", ""), (-2010, str(exc)))
            return self._error(
                -2021 if cancel_ok else -2022,
                "Order cancel-replace partially failed."
                if cancel_ok
                else "Order cancel-replace failed.",
                status=409 if cancel_ok else 400,
                data={
                    "cancelResult": "SUCCESS" if cancel_ok else "FAILURE",
                    "newOrderResult": "FAILURE",
                    "cancelResponse": cancel_resp,
                    "newOrderResponse": {"code": code, "msg": msg},
                },
            )
        return self.json_answer(
            {
                "cancelResult": "SUCCESS" if cancel_ok else "FAILURE",
                "newOrderResult": "SUCCESS",
                "cancelResponse": cancel_resp,
                "newOrderResponse": self._order_json(order, full=True),
            },
            orders=True,
        )
