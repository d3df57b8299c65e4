"""The USDⓈ-M replica's REST API (``/fapi``), in the venue's wire format: exchange info,
depth, signed order entry (GTX, reduce-only, position side, batch orders, modify,
cancel-all), queries, positions, account, leverage, margin type, income and listen
keys, with request-weight and 10 s / 1 min order-count windows. ``BinanceUsdmReplica``
(binance_usdm_replica.py) adds the streams and the position book-keeping.
"""

from __future__ import annotations

import asyncio
import json
from abc import abstractmethod
from decimal import Decimal
from typing import Any

from aiohttp import web

from quoteforge.exchanges.testing.binance_replica_rest import (
    ORDER_STATUS,
    BinanceRest,
    exchange_rate_limit,
)
from quoteforge.exchanges.testing.binance_replica_trades import TradeQueryError, account_trades
from quoteforge.exchanges.testing.faults import (
    OrderRejectedError,
    ReplicaMarket,
    ReplicaOrder,
    ReplicaTrade,
)

__all__ = ["USER_TRADES_SPAN_MS", "UsdmRest"]

USER_TRADES_SPAN_MS = 7 * 86_400_000
"""``userTrades``: the most ``startTime`` and ``endTime`` may be apart, and what is searched
when neither is sent (the last 7 days)."""

_ZERO = Decimal(0)
# The venue's codes for what the matcher refuses.
_REJECTS = {
    "post_only": (
        -5022,
        "Due to the order could not be executed as maker, the Post Only order will be "
        "rejected. The order will not be recorded in the order history",
    ),
    "reduce_only": (-2022, "ReduceOnly Order is rejected."),
    "duplicate": (-4015, "Client order id is not valid."),
    "lot_size": (-1111, "Precision is over the maximum defined for this asset."),
    "tick_size": (-4014, "Price not increased by tick size."),
    "notional": (
        -4164,
        "Order's notional must be no smaller than 5 (unless you choose reduce only).",
    ),
    "missing_price": (
        -1102,
        "Mandatory parameter 'price' was not sent, was empty/null, or malformed.",
    ),
    "position_side": (-4061, "Order's position side does not match user's setting."),
}


class UsdmRest(BinanceRest):
    """The ``/fapi`` routes of ``BinanceUsdmReplica`` and their answers."""

    dual_side: bool
    order_limit_1m: int
    leverage: dict[str, int]
    margin_type: dict[str, str]
    positions: dict[tuple[str, str], list[Decimal]]
    income: list[dict[str, Any]]
    listen_keys: dict[str, bool]
    order_meta: dict[str, dict[str, Any]]
    countdowns: dict[str, int]
    countdowns_fired: list[str]
    wallet: Decimal

    last_published: dict[str, int]
    """The ``u`` of the last depth event published per symbol (the next ``pu``)."""

    @abstractmethod
    def check_reduce_only(self, order: ReplicaOrder, reduce_only: bool, side_key: str) -> None:
        """Refuse an order that must reduce a position and would not."""

    @abstractmethod
    def liquidation_price(self, symbol: str, qty: Decimal, entry: Decimal) -> Decimal:
        """The estimated liquidation price of a position."""

    @abstractmethod
    def mark_price(self, symbol: str) -> Decimal:
        """The symbol's mark price."""

    @abstractmethod
    async def order_event(
        self, o: ReplicaOrder, exec_type: str, trade: ReplicaTrade | None = None
    ) -> None:
        """Put an ORDER_TRADE_UPDATE on the user stream."""

    @abstractmethod
    def new_listen_key(self) -> str:
        """The account's active listen key, or a new one."""

    async def report_execution(
        self,
        o: ReplicaOrder,
        exec_type: str,
        trade: ReplicaTrade | None,
        *,
        cancel_client_id: str = "",
    ) -> None:
        await self.order_event(o, exec_type, trade)

    # -- formatting ---------------------------------------------------------------------
    @staticmethod
    def fmt_price(market: ReplicaMarket, value: Decimal) -> str:
        return format(value.quantize(market.tick), "f")

    @staticmethod
    def fmt_qty(market: ReplicaMarket, value: Decimal) -> str:
        return format(value.quantize(market.lot), "f")

    @staticmethod
    def status_text(o: ReplicaOrder) -> str:
        return ORDER_STATUS[o.status]

    def order_body(self, o: ReplicaOrder) -> dict[str, Any]:
        market = self.markets[o.symbol]
        meta = self.order_meta.get(o.client_id, {})
        kind = "MARKET" if o.kind == "market" else "LIMIT"
        return {
            "orderId": o.order_id,
            "symbol": o.symbol,
            "status": self.status_text(o),
            "clientOrderId": o.client_id,
            "price": self.fmt_price(market, o.price or _ZERO),
            "avgPrice": self.fmt_price(market, o.quote_filled / o.filled) if o.filled else "0",
            "origQty": self.fmt_qty(market, o.qty),
            "executedQty": self.fmt_qty(market, o.filled),
            "cumQty": self.fmt_qty(market, o.filled),
            "cumQuote": format(o.quote_filled, "f"),
            "timeInForce": meta.get("timeInForce", "GTC"),
            "type": kind,
            "reduceOnly": bool(meta.get("reduceOnly")),
            "closePosition": False,
            "side": o.side.upper(),
            "positionSide": meta.get("positionSide", "BOTH"),
            "stopPrice": "0",
            "workingType": "CONTRACT_PRICE",
            "priceProtect": False,
            "origType": kind,
            "priceMatch": "NONE",
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "goodTillDate": 0,
            "time": o.created_ms,
            "updateTime": o.updated_ms,
        }

    def fapi_error(self, code: int, msg: str, status: int = 400) -> web.Response:
        return web.json_response({"code": code, "msg": msg}, status=status)

    async def keyed(self, request: web.Request) -> web.Response | None:
        """USER_STREAM endpoints: the API key only, no signature."""
        limited = self.charge_weight(1)
        if limited is not None:
            return limited
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            return self.fapi_error(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        return None

    def add_fapi_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/fapi/v1/time", self._time)
        r.add_get("/fapi/v1/ping", self._ping)
        r.add_get("/fapi/v1/exchangeInfo", self.fapi_exchange_info)
        r.add_get("/fapi/v1/depth", self.fapi_depth)
        r.add_get("/fapi/v1/premiumIndex", self.fapi_premium_index)
        r.add_post("/fapi/v1/order", self.fapi_new_order)
        r.add_put("/fapi/v1/order", self.fapi_modify)
        r.add_delete("/fapi/v1/order", self.fapi_cancel)
        r.add_get("/fapi/v1/order", self.fapi_query)
        r.add_post("/fapi/v1/batchOrders", self.fapi_batch)
        r.add_get("/fapi/v1/openOrders", self.fapi_open_orders)
        r.add_delete("/fapi/v1/allOpenOrders", self.fapi_cancel_all)
        r.add_post("/fapi/v1/countdownCancelAll", self.fapi_countdown_cancel_all)
        r.add_get("/fapi/v1/userTrades", self.fapi_user_trades)
        r.add_get("/fapi/v1/income", self.fapi_income)
        r.add_get("/fapi/v2/positionRisk", self.fapi_position_risk)
        r.add_get("/fapi/v2/account", self.fapi_account)
        r.add_get("/fapi/v1/positionSide/dual", self.fapi_dual)
        r.add_post("/fapi/v1/leverage", self.fapi_leverage)
        r.add_post("/fapi/v1/marginType", self.fapi_margin_type)
        r.add_post("/fapi/v1/listenKey", self.fapi_listen_key)
        r.add_put("/fapi/v1/listenKey", self.fapi_listen_key)
        r.add_delete("/fapi/v1/listenKey", self.fapi_listen_key)

    # -- public ---------------------------------------------------------------------------
    async def fapi_exchange_info(self, request: web.Request) -> web.Response:
        limited = self.charge_weight(1)
        if limited is not None:
            return limited
        symbols = []
        for name, spec in self.symbols.items():
            tick, lot = Decimal(spec.tick), Decimal(spec.lot)
            symbols.append(
                {
                    "symbol": name,
                    "pair": name,
                    "contractType": "PERPETUAL",
                    "status": "TRADING",
                    "baseAsset": spec.base,
                    "quoteAsset": spec.quote,
                    "marginAsset": spec.quote,
                    "pricePrecision": -int(tick.normalize().as_tuple().exponent),
                    "quantityPrecision": -int(lot.normalize().as_tuple().exponent),
                    "baseAssetPrecision": 8,
                    "quotePrecision": 8,
                    "underlyingType": "COIN",
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": spec.tick,
                            "maxPrice": "1000000",
                            "tickSize": spec.tick,
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": spec.lot,
                            "maxQty": "10000",
                            "stepSize": spec.lot,
                        },
                        {
                            "filterType": "MARKET_LOT_SIZE",
                            "minQty": spec.lot,
                            "maxQty": "2000",
                            "stepSize": spec.lot,
                        },
                        {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                        {"filterType": "MIN_NOTIONAL", "notional": spec.min_notional},
                        {
                            "filterType": "PERCENT_PRICE",
                            "multiplierUp": "1.0500",
                            "multiplierDown": "0.9500",
                            "multiplierDecimal": "4",
                        },
                    ],
                    "orderTypes": [
                        "LIMIT",
                        "MARKET",
                        "STOP",
                        "STOP_MARKET",
                        "TAKE_PROFIT",
                        "TAKE_PROFIT_MARKET",
                        "TRAILING_STOP_MARKET",
                    ],
                    "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
                }
            )
        return self.json_answer(
            {
                "timezone": "UTC",
                "serverTime": self.now_ms(),
                "rateLimits": [
                    exchange_rate_limit("REQUEST_WEIGHT", "MINUTE", 1, self.weight_limit),
                    exchange_rate_limit("ORDERS", "MINUTE", 1, self.order_limit_1m),
                    exchange_rate_limit("ORDERS", "SECOND", 10, self.order_limit_10s),
                ],
                "exchangeFilters": [],
                "assets": [{"asset": "USDT", "marginAvailable": True}],
                "symbols": symbols,
            }
        )

    async def fapi_depth(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "500"))
        weight = 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20
        limited = self.charge_weight(weight)
        if limited is not None:
            return limited
        symbol = request.query.get("symbol", "")
        if symbol not in self.markets:
            return self.fapi_error(-1121, "Invalid symbol.")
        market = self.markets[symbol]
        if self.recording is not None:
            return await self.recorded_depth(symbol, market, limit)
        return self.json_answer(self.depth_body(market, limit, self.update_id[symbol]))

    def depth_body(self, market: ReplicaMarket, limit: int, last_id: int) -> dict[str, Any]:
        """A ``GET /fapi/v1/depth`` answer: the book's ``limit`` best levels a side."""
        now = self.now_ms()
        return {
            "lastUpdateId": last_id,
            "E": now,
            "T": now,
            "bids": [
                [self.fmt_price(market, p), self.fmt_qty(market, q)]
                for p, q in market.depth("buy", limit)
            ],
            "asks": [
                [self.fmt_price(market, p), self.fmt_qty(market, q)]
                for p, q in market.depth("sell", limit)
            ],
        }

    async def fapi_premium_index(self, request: web.Request) -> web.Response:
        limited = self.charge_weight(1)
        if limited is not None:
            return limited
        symbol = request.query.get("symbol", "")
        if symbol not in self.markets:
            return self.fapi_error(-1121, "Invalid symbol.")
        mark = self.fmt_price(self.markets[symbol], self.mark_price(symbol))
        now = self.now_ms()
        return self.json_answer(
            {
                "symbol": symbol,
                "markPrice": mark,
                "indexPrice": mark,
                "estimatedSettlePrice": mark,
                "lastFundingRate": "0.00010000",
                "interestRate": "0.00010000",
                "nextFundingTime": now - now % 28_800_000 + 28_800_000,
                "time": now,
            }
        )

    # -- orders -----------------------------------------------------------------------------
    def parse_fapi_order(self, p: dict[str, str], market: ReplicaMarket) -> ReplicaOrder:
        """The spot parser on a spot-shaped copy of the futures parameters, plus the
        futures checks: position side against the account's mode, reduce-only."""
        tif = p.get("timeInForce", "GTC")
        spot = dict(p)
        if p.get("type") == "LIMIT" and tif == "GTX":
            spot["type"] = "LIMIT_MAKER"
            spot.pop("timeInForce")
        elif p.get("type") == "LIMIT" and tif not in ("GTC", "IOC"):
            raise OrderRejectedError("rejected", f"time in force {tif} is not served here")
        side_key = p.get("positionSide", "BOTH")
        if (side_key == "BOTH") == self.dual_side:
            raise OrderRejectedError("position_side", "position side does not match the mode")
        reduce_only = p.get("reduceOnly", "false").lower() == "true"
        order = self.parse_order(spot, market)
        self.check_reduce_only(order, reduce_only, side_key)
        self.order_meta[order.client_id] = {
            "reduceOnly": reduce_only,
            "positionSide": side_key,
            "timeInForce": "GTC" if p.get("type") == "MARKET" else tif,
        }
        return order

    async def place_fapi(self, p: dict[str, str]) -> web.Response | dict[str, Any]:
        try:
            market = self._market(p.get("symbol", ""))
        except KeyError:
            return self.fapi_error(-1121, "Invalid symbol.")
        try:
            order = self.parse_fapi_order(p, market)
            forced = self.faults.take_reject()
            if forced is not None:
                raise OrderRejectedError("forced", forced or "Order rejected by the venue.")
            if order.client_id in market.orders and market.orders[order.client_id].is_open:
                raise OrderRejectedError("duplicate", "duplicate")
            await self._execute(market, order)
        except OrderRejectedError as exc:
            code, msg = _REJECTS.get(exc.code, (-2010, str(exc)))
            return self.fapi_error(code, msg)
        return self.order_body(order)

    async def place_order(self, params: dict[str, str]) -> ReplicaOrder:
        """Control API: another program on the account places one order, given as the
        parameters of ``POST /fapi/v1/order``. ``OrderRejectedError`` when the venue would
        refuse it."""
        market = self._market(params.get("symbol", ""))
        order = self.parse_fapi_order(dict(params), market)
        if order.client_id in market.orders and market.orders[order.client_id].is_open:
            raise OrderRejectedError("duplicate", "duplicate")
        await self._execute(market, order)
        return order

    async def fapi_new_order(self, request: web.Request) -> web.Response:
        p = await self.signed_order_entry(request, 0)
        if isinstance(p, web.Response):
            return p
        answer = await self.place_fapi(p)
        return answer if isinstance(answer, web.Response) else self.json_answer(answer, orders=True)

    async def fapi_batch(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 5)
        if isinstance(p, web.Response):
            return p
        try:
            batch = json.loads(p.get("batchOrders", ""))
        except ValueError:
            return self.fapi_error(-1130, "Data sent for parameter 'batchOrders' is not valid.")
        if not isinstance(batch, list) or not 1 <= len(batch) <= 5:
            return self.fapi_error(-1130, "Data sent for parameter 'batchOrders' is not valid.")
        limited = self.count_new_orders(len(batch))
        if limited is not None:
            return limited
        out: list[Any] = []
        for item in batch:
            answer = await self.place_fapi({k: str(v) for k, v in item.items()})
            out.append(
                json.loads(answer.text or "{}") if isinstance(answer, web.Response) else answer
            )
        return self.json_answer(out, orders=True)

    async def fapi_modify(self, request: web.Request) -> web.Response:
        p = await self.signed_order_entry(request, 0)
        if isinstance(p, web.Response):
            return p
        order = self.find_order(p)
        if order is None or not order.is_open:
            return self.fapi_error(-2013, "Order does not exist.")
        market = self.markets[order.symbol]
        try:
            market.amend(
                order.client_id, Decimal(p["quantity"]), Decimal(p["price"]), self.now_ms()
            )
        except (OrderRejectedError, KeyError) as exc:
            code, msg = _REJECTS.get(getattr(exc, "code", ""), (-1102, str(exc)))
            return self.fapi_error(code, msg)
        # The venue re-queues a modified order: it goes to the back at its price.
        market.orders[order.client_id] = market.orders.pop(order.client_id)
        await self.order_event(order, "AMENDMENT")
        await self.publish_book(market)
        return self.json_answer(self.order_body(order), orders=True)

    async def fapi_cancel(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 1)
        if isinstance(p, web.Response):
            return p
        order = self.find_order(p)
        if order is None or not order.is_open:
            return self.fapi_error(-2011, "Unknown order sent.")
        await self.cancel_resting(order, "")
        return self.json_answer(self.order_body(order))

    async def fapi_query(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 1)
        if isinstance(p, web.Response):
            return p
        order = self.find_order(p)
        if order is None:
            return self.fapi_error(-2013, "Order does not exist.")
        return self.json_answer(self.order_body(order))

    async def fapi_open_orders(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 1 if "symbol" in request.query else 40)
        if isinstance(p, web.Response):
            return p
        return self.json_answer([self.order_body(o) for o in self.orders(p.get("symbol"))])

    async def fapi_cancel_all(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 1)
        if isinstance(p, web.Response):
            return p
        if p.get("symbol", "") not in self.markets:
            return self.fapi_error(-1121, "Invalid symbol.")
        for order in self.orders(p["symbol"]):
            await self.cancel_resting(order, "")
        return self.json_answer(
            {"code": 200, "msg": "The operation of cancel all open order is done."}
        )

    async def fapi_countdown_cancel_all(self, request: web.Request) -> web.Response:
        """Arm (or with 0 stop) the symbol's countdown: unless armed again in time, every
        open order of the symbol is cancelled when it runs out (checked every 10 ms)."""
        p = await self.signed_params(request, 10)
        if isinstance(p, web.Response):
            return p
        symbol = p.get("symbol", "")
        if symbol not in self.markets:
            return self.fapi_error(-1121, "Invalid symbol.")
        try:
            countdown = int(p.get("countdownTime", ""))
        except ValueError:
            countdown = -1
        if countdown < 0:
            return self.fapi_error(-1102, "Mandatory parameter 'countdownTime' was not sent.")
        if countdown == 0:
            self.countdowns.pop(symbol, None)
        else:
            if not self.countdowns:
                self.spawn(self._countdown_loop())
            self.countdowns[symbol] = self.now_ms() + countdown
        return self.json_answer({"symbol": symbol, "countdownTime": str(countdown)})

    async def _countdown_loop(self) -> None:
        while self.countdowns:
            await asyncio.sleep(0.01)
            now = self.now_ms()
            for symbol, deadline in list(self.countdowns.items()):
                if now >= deadline and self.countdowns.get(symbol) == deadline:
                    del self.countdowns[symbol]
                    self.countdowns_fired.append(symbol)
                    for order in self.orders(symbol):
                        await self.cancel_resting(order, "")

    # -- account ----------------------------------------------------------------------------
    async def fapi_user_trades(self, request: web.Request) -> web.Response:
        """``GET /fapi/v1/userTrades`` (weight 5): see ``account_trades``; without a time
        only the last 7 days are searched, and a window is at most 7 days."""
        p = await self.signed_params(request, 5)
        if isinstance(p, web.Response):
            return p
        market = self.markets.get(p.get("symbol", ""))
        if market is None:
            return self.fapi_error(-1121, "Invalid symbol.")
        try:
            rows = account_trades(
                market.trades,
                p,
                max_span_ms=USER_TRADES_SPAN_MS,
                span_error="Lookup interval is too big.",
                implicit_span=True,
                now_ms=self.now_ms(),
            )
        except TradeQueryError as exc:
            return self.fapi_error(exc.code, exc.msg)
        return self.json_answer(
            [
                {
                    "symbol": market.symbol,
                    "id": t.trade_id,
                    "orderId": t.order.order_id,
                    "side": t.order.side.upper(),
                    "price": self.fmt_price(market, t.price),
                    "qty": self.fmt_qty(market, t.qty),
                    "realizedPnl": "0",
                    "quoteQty": format(t.price * t.qty, "f"),
                    "commission": format(t.fee.quantize(Decimal("0.00000001")), "f"),
                    "commissionAsset": t.fee_asset,
                    "time": t.ts_ms,
                    "positionSide": self.order_meta.get(t.order.client_id, {}).get(
                        "positionSide", "BOTH"
                    ),
                    "buyer": t.order.side == "buy",
                    "maker": t.maker,
                }
                for t in rows
            ]
        )

    async def fapi_income(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 30)
        if isinstance(p, web.Response):
            return p
        start = int(p.get("startTime", "0"))
        rows = [
            r
            for r in self.income
            if r["time"] >= start
            and p.get("incomeType", r["incomeType"]) == r["incomeType"]
            and p.get("symbol", r["symbol"]) == r["symbol"]
        ]
        return self.json_answer(rows[: int(p.get("limit", "100"))])

    def position_rows(self) -> list[dict[str, Any]]:
        sides = ("LONG", "SHORT") if self.dual_side else ("BOTH",)
        rows = []
        for symbol, market in self.markets.items():
            mark = self.mark_price(symbol)
            for side in sides:
                qty, entry = self.positions.get((symbol, side), [_ZERO, _ZERO])
                rows.append(
                    {
                        "symbol": symbol,
                        "positionAmt": self.fmt_qty(market, qty),
                        "entryPrice": format(entry, "f"),
                        "breakEvenPrice": format(entry, "f"),
                        "markPrice": self.fmt_price(market, mark),
                        "unRealizedProfit": format(
                            ((mark - entry) * qty).quantize(Decimal("0.00000001")), "f"
                        ),
                        "liquidationPrice": format(self.liquidation_price(symbol, qty, entry), "f"),
                        "leverage": str(self.leverage[symbol]),
                        "maxNotionalValue": "1000000",
                        "marginType": self.margin_type[symbol].lower().replace("crossed", "cross"),
                        "isolatedMargin": "0",
                        "isAutoAddMargin": "false",
                        "positionSide": side,
                        "notional": format(mark * qty, "f"),
                        "isolatedWallet": "0",
                        "updateTime": self.now_ms(),
                    }
                )
        return rows

    async def fapi_position_risk(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 5)
        if isinstance(p, web.Response):
            return p
        rows = self.position_rows()
        if "symbol" in p:
            rows = [r for r in rows if r["symbol"] == p["symbol"]]
        return self.json_answer(rows)

    async def fapi_account(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 5)
        if isinstance(p, web.Response):
            return p
        wallet = format(self.wallet, "f")
        return self.json_answer(
            {
                "totalWalletBalance": wallet,
                "assets": [
                    {
                        "asset": "USDT",
                        "walletBalance": wallet,
                        "marginBalance": wallet,
                        "availableBalance": wallet,
                    }
                ],
                "positions": self.position_rows(),
            }
        )

    async def fapi_dual(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 30)
        if isinstance(p, web.Response):
            return p
        return self.json_answer({"dualSidePosition": self.dual_side})

    async def fapi_leverage(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 1)
        if isinstance(p, web.Response):
            return p
        symbol, value = p.get("symbol", ""), int(p.get("leverage", "0"))
        if symbol not in self.markets:
            return self.fapi_error(-1121, "Invalid symbol.")
        if not 1 <= value <= 125:
            return self.fapi_error(-4028, "Leverage is not valid.")
        self.leverage[symbol] = value
        return self.json_answer(
            {"leverage": value, "maxNotionalValue": "1000000", "symbol": symbol}
        )

    async def fapi_margin_type(self, request: web.Request) -> web.Response:
        p = await self.signed_params(request, 1)
        if isinstance(p, web.Response):
            return p
        symbol, kind = p.get("symbol", ""), p.get("marginType", "")
        if symbol not in self.markets or kind not in ("CROSSED", "ISOLATED"):
            return self.fapi_error(-1121, "Invalid symbol or margin type.")
        if self.margin_type[symbol] == kind:
            return self.fapi_error(-4046, "No need to change margin type.")
        self.margin_type[symbol] = kind
        return self.json_answer({"code": 200, "msg": "success"})

    async def fapi_listen_key(self, request: web.Request) -> web.Response:
        refused = await self.keyed(request)
        if refused is not None:
            return refused
        if request.method == "POST":
            return self.json_answer({"listenKey": self.new_listen_key()})
        body = await request.text() if request.can_read_body else ""
        params = dict(request.query)
        for part in body.split("&"):
            name, _, value = part.partition("=")
            if name:
                params[name] = value
        key = params.get("listenKey") or next((k for k, ok in self.listen_keys.items() if ok), "")
        if not self.listen_keys.get(key):
            return self.fapi_error(-1125, "This listenKey does not exist.")
        if request.method == "DELETE":
            self.listen_keys[key] = False
        return self.json_answer({})
