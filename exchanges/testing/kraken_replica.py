"""A local Kraken spot replica for tests: REST (``/0/public``, ``/0/private``) and
websocket v2 (``book`` with checksums, ``trade``, ``executions`` and order entry), in
Kraken's wire formats, on 127.0.0.1.

    async with KrakenReplica() as venue:
        params = {"rest_url": venue.url, "ws_url": venue.public_ws_url,
                  "private_ws_url": venue.private_ws_url}
        await venue.corrupt_checksum()
"""

from __future__ import annotations

import base64
import json
import secrets
import zlib
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from aiohttp import web

from quoteforge.exchanges.ccxt_base import dumps_exact
from quoteforge.exchanges.testing.faults import (
    OrderRejectedError,
    ReplicaMarket,
    ReplicaOrder,
    ReplicaTrade,
)
from quoteforge.exchanges.testing.kraken_replica_rest import (
    DEFAULT_PAIRS,
    REJECT,
    REST_TIERS,
    KrakenPair,
    KrakenRest,
    RestCallCounter,
    iso,
    kraken_sign,
)

__all__ = ["KrakenPair", "KrakenReplica", "kraken_sign"]


def _digits(text: str) -> str:
    return text.replace(".", "").lstrip("0")


class KrakenReplica(KrakenRest):
    """Kraken spot on 127.0.0.1 with a real book per pair and our orders matched.

    Control API (``async``): ``set_level``, ``set_book``, ``churn``, ``fill_order``,
    ``use_rest_counter`` and the fault commands of ``ReplicaServer``. ``order_path``
    ("add_order") aims ``fail_http`` and ``time_out`` at websocket order entry: an HTTP
    429/418 becomes ``EOrder:Rate limit exceeded``, a 5xx ``EService:Unavailable``, a
    time-out no answer. ``cancel_path`` ("cancel_order") aims ``fail_http`` at websocket
    cancels the same way (only faults armed with that path). The REST API is
    ``KrakenRest`` (kraken_replica_rest.py); this class adds websocket v2 and the order
    engine.

    ``rest_tier`` is the account's verification tier for the REST call counter
    (``REST_TIERS``: starter, intermediate, pro); "starter" by default, as the adapter's
    ``tier``. Give both the same tier.
    """

    cancel_path = "cancel_order"
    churn_ticks = 12
    churn_lots = (10_000, 3_000_000)

    def __init__(
        self,
        pairs: Mapping[str, KrakenPair] | None = None,
        *,
        balances: Mapping[str, str] | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        seed: int = 7,
        ping_interval: float = 1.0,
        port: int = 0,
        rest_tier: str = "starter",
    ) -> None:
        if rest_tier not in REST_TIERS:
            raise ValueError(f"unknown Kraken tier {rest_tier!r}: use one of {sorted(REST_TIERS)}")
        super().__init__(
            port=port,
            ping_interval=ping_interval,
            balances=balances or {"ZUSD": "1000000", "XXBT": "100", "XETH": "1000"},
            seed=seed,
        )
        self.api_key = api_key or secrets.token_urlsafe(40)
        self.api_secret = api_secret or base64.b64encode(secrets.token_bytes(64)).decode()
        self.pairs = dict(pairs or DEFAULT_PAIRS)
        self._by_symbol: dict[str, str] = {}
        self._txids: dict[str, ReplicaOrder] = {}
        self._last_nonce = 0
        self.tokens: set[str] = set()
        self.cancel_after_ms = 0
        """The replica's ms at which every open order is cancelled (``CancelAllOrdersAfter``,
        armed and not renewed); 0: off."""
        self.cancel_after_fired = 0
        """How often the countdown ran out."""
        self._book_subs: dict[Any, dict[str, int]] = {}
        self._views: dict[Any, dict[str, dict[str, dict[Decimal, Decimal]]]] = {}
        self._trade_subs: dict[Any, set[str]] = {}
        self._exec_subs: set[Any] = set()
        self._exec_ids = iter(range(1, 1 << 62))
        self.ws_requests: list[str] = []
        """Private websocket methods received, in order (``add_order``, ``batch_add`` ...)."""
        self.queried_txids: list[list[str]] = []
        """The txid list of every signed ``QueryOrders`` call, in order."""
        self.trades_history_calls: list[int] = []
        """The ``ofs`` of every signed ``TradesHistory`` call, in order."""
        self.rest_counter = RestCallCounter(*REST_TIERS[rest_tier])
        """The API key's REST call counter (``refused``: the calls it turned away)."""
        trade_ids = iter(range(1, 1 << 62))
        for name, pair in self.pairs.items():
            market = ReplicaMarket(
                pair.symbol,
                pair.base,
                pair.quote,
                tick=pair.tick,
                lot=pair.lot,
                account=self.account,
                ids=trade_ids,
                maker_fee=Decimal("0.0025"),
                taker_fee=Decimal("0.004"),
                fee_in_received_asset=False,
            )
            self.add_market(
                pair.symbol,
                market,
                mid=Decimal(pair.mid),
                levels=pair.levels,
                spacing=3,
                lots=(10_000, 5_000_000),
            )
            self._by_symbol[pair.symbol] = name

    @property
    def public_ws_url(self) -> str:
        return f"{self.ws_url}/v2"

    @property
    def private_ws_url(self) -> str:
        return f"{self.ws_url}/auth/v2"

    # -- routes -----------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        r = app.router
        self._add_rest_routes(r)
        r.add_get("/v2", self._ws_public)
        r.add_get("/auth/v2", self._ws_private)

    def forget_socket(self, ws: web.WebSocketResponse) -> None:
        self._book_subs.pop(ws, None)
        self._views.pop(ws, None)
        self._trade_subs.pop(ws, None)
        self._exec_subs.discard(ws)

    # -- order engine -----------------------------------------------------------------------
    def _validate(self, spec: dict[str, Any]) -> None:
        """The checks that need no state change: pair, grid, minimums, post-only."""
        symbol = str(spec.get("symbol", ""))
        if symbol not in self.markets:
            raise OrderRejectedError("unknown_pair", "EQuery:Unknown asset pair")
        market, pair = self.markets[symbol], self._pair(symbol)
        qty = Decimal(str(spec.get("order_qty", "0")))
        price = None if spec.get("limit_price") is None else Decimal(str(spec["limit_price"]))
        if qty % market.lot or (price is not None and price % market.tick):
            raise OrderRejectedError("tick_size" if qty % market.lot == 0 else "lot_size", "grid")
        if qty < Decimal(pair.ordermin):
            raise OrderRejectedError("minimum", "minimum")
        if price is not None and price * qty < Decimal(pair.costmin):
            raise OrderRejectedError("notional", "notional")
        if spec.get("post_only") and price is not None:
            side = str(spec.get("side", ""))
            other = market.depth("sell" if side == "buy" else "buy", 1)
            if other and (price >= other[0][0] if side == "buy" else price <= other[0][0]):
                raise OrderRejectedError("post_only", "post only")

    async def add_order(self, spec: dict[str, Any]) -> ReplicaOrder:
        symbol = str(spec.get("symbol", ""))
        if symbol not in self.markets:
            raise OrderRejectedError("unknown_pair", "EQuery:Unknown asset pair")
        forced = self.faults.take_reject()
        if forced is not None:
            raise OrderRejectedError("forced", forced or "EOrder:Order rejected")
        market = self.markets[symbol]
        pair = self._pair(symbol)
        side = str(spec.get("side", ""))
        kind = str(spec.get("order_type", ""))
        if side not in ("buy", "sell") or kind not in ("limit", "market"):
            raise OrderRejectedError("args", "EGeneral:Invalid arguments")
        qty = Decimal(str(spec.get("order_qty", "0")))
        price = None if spec.get("limit_price") is None else Decimal(str(spec["limit_price"]))
        if qty < Decimal(pair.ordermin):
            raise OrderRejectedError("minimum", "minimum")
        if price is not None and price * qty < Decimal(pair.costmin):
            raise OrderRejectedError("notional", "notional")
        tif = (
            "post_only"
            if spec.get("post_only")
            else (
                "ioc"
                if str(spec.get("time_in_force", "gtc")).lower() == "ioc" or kind == "market"
                else "gtc"
            )
        )
        client_id = str(spec.get("cl_ord_id") or secrets.token_hex(8))
        now = self.now_ms()
        order = ReplicaOrder(
            len(self.accepted) + 1,
            client_id,
            symbol,
            side,
            kind,
            tif,
            price,
            qty,
            now,
            updated_ms=now,
        )
        txid = (
            f"O{secrets.token_hex(3).upper()}-{secrets.token_hex(3)[:5].upper()}-"
            f"{secrets.token_hex(3).upper()}"
        )
        order.venue_id = txid
        await self._execute(market, order)
        return order

    async def cancel_order(self, order: ReplicaOrder) -> None:
        market = self.markets[order.symbol]
        market.cancel(order.client_id, self.now_ms())
        await self._report(order, "canceled", "canceled", reason="User requested")
        await self.publish_book(market)

    # -- websocket: public --------------------------------------------------------------------
    async def on_ping_tick(self, ws: web.WebSocketResponse) -> None:
        if ws in self._book_subs or ws in self._trade_subs or ws in self._exec_subs:
            await self.send_text(ws, '{"channel":"heartbeat"}')

    def _ack(self, method: str, req_id: Any, result: Any = None, error: str | None = None) -> str:
        now = iso(self.now_ms())
        msg: dict[str, Any] = {"method": method}
        if error is not None:
            msg.update(error=error, success=False)
        else:
            msg.update(result=result, success=True)
        msg.update(time_in=now, time_out=now)
        if req_id is not None:
            msg["req_id"] = req_id
        return dumps_exact(msg)

    async def _ws_public(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self.open_socket(request)
        await self.send_text(
            ws,
            json.dumps(
                {
                    "channel": "status",
                    "type": "update",
                    "data": [
                        {
                            "api_version": "v2",
                            "connection_id": self._rng.getrandbits(60),
                            "system": "online",
                            "version": "2.0.10",
                        }
                    ],
                }
            ),
        )

        async def on_text(text: str) -> None:
            await self._public_request(ws, text)

        await self.read_loop(ws, on_text)
        return ws

    async def _public_request(self, ws: web.WebSocketResponse, text: str) -> None:
        try:
            msg = json.loads(text)
            method = msg["method"]
        except (ValueError, KeyError, TypeError):
            await self.send_text(ws, self._ack("unknown", None, error="EGeneral:Invalid arguments"))
            return
        req_id = msg.get("req_id")
        params = msg.get("params") or {}
        if method == "ping":
            now = iso(self.now_ms())
            await self.send_text(
                ws,
                json.dumps({"method": "pong", "req_id": req_id, "time_in": now, "time_out": now}),
            )
            return
        channel = params.get("channel")
        symbols = params.get("symbol") or []
        unknown = [s for s in symbols if s not in self.markets]
        if method not in ("subscribe", "unsubscribe") or channel not in ("book", "trade"):
            await self.send_text(ws, self._ack(method, req_id, error="EGeneral:Invalid arguments"))
            return
        if unknown:
            await self.send_text(
                ws, self._ack(method, req_id, error=f"Currency pair not supported {unknown[0]}")
            )
            return
        for symbol in symbols:
            if channel == "book":
                depth = int(params.get("depth", 10))
                if depth not in (10, 25, 100, 500, 1000):
                    await self.send_text(
                        ws, self._ack(method, req_id, error="EGeneral:Invalid arguments:depth")
                    )
                    return
                subs = self._book_subs.setdefault(ws, {})
                views = self._views.setdefault(ws, {})
                if method == "subscribe":
                    subs[symbol] = depth
                    await self.send_text(
                        ws,
                        self._ack(
                            method,
                            req_id,
                            {"channel": "book", "depth": depth, "snapshot": True, "symbol": symbol},
                        ),
                    )
                    await self._send_book_snapshot(ws, symbol, depth)
                else:
                    subs.pop(symbol, None)
                    views.pop(symbol, None)
                    await self.send_text(
                        ws,
                        self._ack(
                            method, req_id, {"channel": "book", "depth": depth, "symbol": symbol}
                        ),
                    )
            else:
                trade_subs = self._trade_subs.setdefault(ws, set())
                if method == "subscribe":
                    trade_subs.add(symbol)
                else:
                    trade_subs.discard(symbol)
                await self.send_text(
                    ws,
                    self._ack(
                        method, req_id, {"channel": "trade", "symbol": symbol, "snapshot": False}
                    ),
                )

    def _view(self, symbol: str, depth: int) -> dict[str, dict[Decimal, Decimal]]:
        market = self.markets[symbol]
        return {side: dict(market.depth(side, depth)) for side in ("buy", "sell")}

    def _checksum(self, symbol: str, view: dict[str, dict[Decimal, Decimal]]) -> int:
        asks = sorted(view["sell"].items())[:10]
        bids = sorted(view["buy"].items(), reverse=True)[:10]
        text = "".join(
            _digits(self._price_text(symbol, p)) + _digits(self._qty_text(symbol, q))
            for p, q in asks + bids
        )
        value = zlib.crc32(text.encode())
        if self.faults.take_corrupt():
            value = (value + 1) % (1 << 32)
        return value

    def _levels_json(
        self, symbol: str, levels: list[tuple[Decimal, Decimal]]
    ) -> list[dict[str, Decimal]]:
        pair = self._pair(symbol)
        return [{"price": p.quantize(pair.tick), "qty": q.quantize(pair.lot)} for p, q in levels]

    async def _send_book_snapshot(self, ws: web.WebSocketResponse, symbol: str, depth: int) -> None:
        view = self._view(symbol, depth)
        self._views.setdefault(ws, {})[symbol] = view
        await self.send_text(
            ws,
            dumps_exact(
                {
                    "channel": "book",
                    "type": "snapshot",
                    "data": [
                        {
                            "symbol": symbol,
                            "bids": self._levels_json(
                                symbol, sorted(view["buy"].items(), reverse=True)
                            ),
                            "asks": self._levels_json(symbol, sorted(view["sell"].items())),
                            "checksum": self._checksum(symbol, view),
                            "timestamp": iso(self.now_ms()),
                        }
                    ],
                }
            ),
        )

    async def publish_book(self, market: ReplicaMarket) -> None:
        market.take_changes()
        symbol = market.symbol
        skip = self.faults.take_skip()
        for ws, subs in list(self._book_subs.items()):
            depth = subs.get(symbol)
            if depth is None:
                continue
            old = self._views.setdefault(ws, {}).get(symbol, {"buy": {}, "sell": {}})
            new = self._view(symbol, depth)
            changes: dict[str, list[tuple[Decimal, Decimal]]] = {"buy": [], "sell": []}
            for side in ("buy", "sell"):
                for price in old[side]:
                    # Levels pushed out of range are not sent; the client truncates.
                    if price not in new[side] and market.published(side, price) == 0:
                        changes[side].append((price, Decimal(0)))
                for price, qty in new[side].items():
                    if old[side].get(price) != qty:
                        changes[side].append((price, qty))
            if not changes["buy"] and not changes["sell"]:
                continue
            self._views[ws][symbol] = new
            if skip:
                continue
            await self.send_text(
                ws,
                dumps_exact(
                    {
                        "channel": "book",
                        "type": "update",
                        "data": [
                            {
                                "symbol": symbol,
                                "bids": self._levels_json(symbol, changes["buy"]),
                                "asks": self._levels_json(symbol, changes["sell"]),
                                "checksum": self._checksum(symbol, new),
                                "timestamp": iso(self.now_ms()),
                            }
                        ],
                    }
                ),
            )

    async def publish_trade(
        self, market: ReplicaMarket, trade: ReplicaTrade, *, taker_side: str
    ) -> None:
        symbol = market.symbol
        pair = self._pair(symbol)
        text = dumps_exact(
            {
                "channel": "trade",
                "type": "update",
                "data": [
                    {
                        "symbol": symbol,
                        "side": taker_side,
                        "price": trade.price.quantize(pair.tick),
                        "qty": trade.qty.quantize(pair.lot),
                        "ord_type": "limit",
                        "trade_id": trade.trade_id,
                        "timestamp": iso(trade.ts_ms),
                    }
                ],
            }
        )
        for ws, symbols in list(self._trade_subs.items()):
            if symbol in symbols:
                await self.send_text(ws, text)

    # -- websocket: private -------------------------------------------------------------------
    async def _ws_private(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self.open_socket(request)

        async def on_text(text: str) -> None:
            await self._private_request(ws, text)

        await self.read_loop(ws, on_text)
        return ws

    async def _private_request(self, ws: web.WebSocketResponse, text: str) -> None:
        try:
            msg = json.loads(text, parse_float=Decimal)
            method = msg["method"]
        except (ValueError, KeyError, TypeError):
            await self.send_text(ws, self._ack("unknown", None, error="EGeneral:Invalid arguments"))
            return
        req_id = msg.get("req_id")
        params = msg.get("params") or {}
        self.ws_requests.append(str(method))
        if method == "ping":
            await self.send_text(ws, json.dumps({"method": "pong", "req_id": req_id}))
            return
        if params.get("token") not in self.tokens:
            await self.send_text(
                ws,
                self._ack(
                    method,
                    req_id,
                    error="EAccount:Invalid permissions"
                    if "token" in params
                    else "EGeneral:Invalid arguments:token",
                ),
            )
            return
        if method == "subscribe" and params.get("channel") == "executions":
            self._exec_subs.add(ws)
            await self.send_text(
                ws, self._ack(method, req_id, {"channel": "executions", "snapshot": True})
            )
            await self._send_exec_snapshot(
                ws, bool(params.get("snap_orders", True)), bool(params.get("snap_trades", False))
            )
            return
        if method in ("add_order", "batch_add"):
            fault = self.faults.take_http(self.order_path)
            if fault is not None:
                error = (
                    "EOrder:Rate limit exceeded"
                    if fault.status in (418, 429)
                    else "EService:Unavailable"
                )
                await self.send_text(ws, self._ack(method, req_id, error=error))
                return
            timeout = self.faults.take_timeout(self.order_path)
            if timeout is not None and not timeout.after_processing:
                return  # the request is lost: no effect, no answer
            reply = await self._trading(method, params, req_id)
            if timeout is None:
                await self.send_text(ws, reply)
            return
        if method == "cancel_order":
            fault = self.faults.take_http(self.cancel_path, aimed_only=True)
            if fault is not None:
                error = (
                    "EOrder:Rate limit exceeded"
                    if fault.status in (418, 429)
                    else "EService:Unavailable"
                )
                await self.send_text(ws, self._ack(method, req_id, error=error))
                return
        await self.send_text(ws, await self._trading(method, params, req_id))

    async def _trading(self, method: str, params: dict[str, Any], req_id: Any) -> str:
        try:
            if method == "add_order":
                order = await self.add_order(params)
                return self._ack(
                    method, req_id, {"order_id": order.venue_id, "cl_ord_id": order.client_id}
                )
            if method == "batch_add":
                symbol = params.get("symbol")
                orders = params.get("orders") or []
                if not 2 <= len(orders) <= 15:
                    raise OrderRejectedError("args", "EGeneral:Invalid arguments:orders")
                for spec in orders:  # the batch is validated as a whole first
                    self._validate({**spec, "symbol": symbol})
                results = []
                for spec in orders:
                    order = await self.add_order({**spec, "symbol": symbol})
                    results.append({"order_id": order.venue_id, "cl_ord_id": order.client_id})
                return self._ack(method, req_id, results)
            if method == "cancel_order":
                ids = params.get("cl_ord_id") or []
                txids = params.get("order_id") or []
                targets = [self._order_by_client(c) for c in ids] + [
                    self._txids.get(t) for t in txids
                ]
                if not targets or any(o is None or not o.is_open for o in targets):
                    raise OrderRejectedError("unknown_order", "unknown")
                for target in targets:
                    assert target is not None
                    await self.cancel_order(target)
                last = targets[-1]
                assert last is not None
                return self._ack(
                    method, req_id, {"order_id": last.venue_id, "cl_ord_id": last.client_id}
                )
            if method == "cancel_all":
                count = 0
                for resting in self.orders():
                    await self.cancel_order(resting)
                    count += 1
                return self._ack(method, req_id, {"count": count})
            if method == "amend_order":
                amended = self._order_by_client(
                    str(params.get("cl_ord_id", ""))
                ) or self._txids.get(str(params.get("order_id", "")))
                if amended is None:
                    raise OrderRejectedError("unknown_order", "unknown")
                market = self.markets[amended.symbol]
                qty = params.get("order_qty")
                price = params.get("limit_price")
                market.amend(
                    amended.client_id,
                    None if qty is None else Decimal(str(qty)),
                    None if price is None else Decimal(str(price)),
                    self.now_ms(),
                )
                await self._report(amended, "amended", amended.status, reason="User requested")
                await self.publish_book(market)
                return self._ack(
                    method,
                    req_id,
                    {
                        "amend_id": secrets.token_hex(8),
                        "order_id": amended.venue_id,
                        "cl_ord_id": amended.client_id,
                    },
                )
        except OrderRejectedError as exc:
            text = (
                str(exc)
                if exc.code in ("forced", "args", "unknown_pair")
                else REJECT.get(exc.code, str(exc))
            )
            return self._ack(method, req_id, error=text)
        return self._ack(method, req_id, error="EGeneral:Invalid arguments:method")

    def _exec_event(
        self, o: ReplicaOrder, exec_type: str, status: str, reason: str = ""
    ) -> dict[str, Any]:
        pair = self._pair(o.symbol)
        event: dict[str, Any] = {
            "order_id": o.venue_id,
            "cl_ord_id": o.client_id,
            "exec_id": f"X{next(self._exec_ids):06d}",
            "exec_type": exec_type,
            "order_status": status,
            "symbol": o.symbol,
            "side": o.side,
            "order_type": o.kind,
            "order_qty": o.qty.quantize(pair.lot),
            "cum_qty": o.filled.quantize(pair.lot),
            "cum_cost": o.quote_filled,
            "time_in_force": "IOC" if o.tif == "ioc" else "GTC",
            "post_only": o.tif == "post_only",
            "timestamp": iso(o.updated_ms),
        }
        if o.price is not None:
            event["limit_price"] = o.price.quantize(pair.tick)
        if reason:
            event["reason"] = reason
        return event

    async def _send_exec(
        self, events: list[dict[str, Any]], kind: str = "update", ws: Any = None
    ) -> None:
        text = dumps_exact({"channel": "executions", "type": kind, "data": events})
        for target in [ws] if ws is not None else list(self._exec_subs):
            await self.send_text(target, text)

    async def _report(self, o: ReplicaOrder, exec_type: str, status: str, reason: str = "") -> None:
        event = self._exec_event(o, exec_type, status, reason)
        if exec_type in ("pending_new", "new"):
            event["cum_qty"] = Decimal(0).quantize(self._pair(o.symbol).lot)
            event["cum_cost"] = Decimal(0)
        await self._send_exec([event])

    def _trade_event(self, t: ReplicaTrade) -> dict[str, Any]:
        o = t.order
        pair = self._pair(o.symbol)
        done = sum(
            (
                x.qty
                for x in self.markets[o.symbol].trades
                if x.order is o and x.trade_id <= t.trade_id
            ),
            Decimal(0),
        )
        event = self._exec_event(o, "trade", "filled" if done == o.qty else "partially_filled")
        event.update(
            cum_qty=done.quantize(pair.lot),
            last_qty=t.qty.quantize(pair.lot),
            last_price=t.price.quantize(pair.tick),
            trade_id=t.trade_id,
            liquidity_ind="m" if t.maker else "t",
            timestamp=iso(t.ts_ms),
            cost=t.price * t.qty,
            fees=[
                {
                    "asset": t.fee_asset.lstrip("Z")
                    if t.fee_asset.startswith("Z")
                    else t.fee_asset,
                    "qty": t.fee,
                }
            ],
        )
        return event

    async def _report_trade(self, trade: ReplicaTrade) -> None:
        await self._send_exec([self._trade_event(trade)])
        order = trade.order
        if order.status == "filled":
            await self._report(order, "filled", "filled")

    async def _send_exec_snapshot(self, ws: Any, snap_orders: bool, snap_trades: bool) -> None:
        events: list[dict[str, Any]] = []
        if snap_orders:
            events.extend(
                self._exec_event(o, "status", "new" if o.filled == 0 else "partially_filled")
                for o in self.orders()
            )
        if snap_trades:
            trades = sorted(
                (t for m in self.markets.values() for t in m.trades), key=lambda t: t.ts_ms
            )[-50:]
            events.extend(self._trade_event(t) for t in trades)
        await self._send_exec(events, "snapshot", ws)

    # -- order flow hooks -------------------------------------------------------------------
    def on_accepted(self, order: ReplicaOrder) -> None:
        self._txids[order.venue_id] = order

    async def report_accepted(self, order: ReplicaOrder) -> None:
        await self._report(order, "pending_new", "pending_new")
        await self._report(order, "new", "new")

    async def report_fill(self, trade: ReplicaTrade) -> None:
        await self._report_trade(trade)

    async def report_expired(self, order: ReplicaOrder) -> None:
        await self._report(order, "expired", "expired")
