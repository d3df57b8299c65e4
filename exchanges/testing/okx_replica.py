"""A local OKX v5 spot replica for tests: the REST endpoints ccxt's ``okx`` calls for
spot trading and the public (``books``, ``trades``) and private (``login``, ``orders``)
websockets, in OKX's documented wire formats (docs-v5), on 127.0.0.1.

    async with OkxReplica() as venue:
        urls = {"api": {"rest": venue.url, "ws": f"{venue.ws_url}/ws/v5"}}

What it follows, from OKX's v5 documentation as ccxt and other clients implement it (no
live OKX traffic has been compared): every REST answer is ``{"code", "msg",
"data"}`` with HTTP 200 for business errors (an order error carries ``sCode``/``sMsg``
per order); private REST calls are signed (``OK-ACCESS-SIGN`` = base64 HMAC-SHA256 of
timestamp + method + path and query + body) with a passphrase; client order ids are
1-32 letters and digits; a ``post_only`` order that would take liquidity is accepted
and then cancelled by the system (``cancelSource`` 31), not refused; the ``books``
channel sends a snapshot then updates chained by ``prevSeqId``/``seqId`` with a CRC32
checksum of the top 25 levels; the ``orders`` channel reports every order change, with
``tradeId``/``fillPx``/``fillSz``/``fillFee`` on fills (a fee is negative when charged);
the trade history pages by ``billId`` (``after``/``before``/``limit``: okx_replica_fills.py).
Besides the venue's text ``ping``/``pong``, the replica sends websocket ping frames every
``ping_interval`` so silence can be injected like on the other replicas.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiohttp import web

from quoteforge.exchanges.testing.faults import (
    OrderRejectedError,
    ReplicaMarket,
    ReplicaOrder,
    ReplicaTrade,
)
from quoteforge.exchanges.testing.okx_replica_fills import fills_page
from quoteforge.exchanges.testing.replica import ReplicaServer

__all__ = ["DEFAULT_INSTRUMENTS", "OkxInstrument", "OkxReplica", "okx_checksum", "okx_sign"]

_CLIENT_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")

# Order errors (sCode) for the matcher's refusals, from the v5 error code list.
_SCODE = {
    "insufficient_funds": ("51008", "Order failed. Insufficient balance."),
    "duplicate": ("51016", "Duplicated clOrdId."),
    "lot_size": ("51121", "Order quantity must be a multiple of the lot size."),
    "tick_size": ("51000", "Parameter px error"),
    "missing_price": ("51000", "Parameter px error"),
    "minimum": ("51020", "Your order should meet or exceed the minimum order amount."),
    "unknown_order": (
        "51400",
        "Order cancellation failed as the order has been filled, canceled or does not exist.",
    ),
    "forced": ("51000", "Parameter error"),
}


@dataclass(frozen=True)
class OkxInstrument:
    """A replica spot instrument: its id, grid and opening book."""

    inst_id: str
    base: str
    quote: str
    tick: str
    lot: str
    min_sz: str
    mid: str
    levels: int = 30


DEFAULT_INSTRUMENTS = {
    "BTC-USDT": OkxInstrument("BTC-USDT", "BTC", "USDT", "0.1", "0.00000001", "0.00001", "50000.0"),
    "ETH-USDT": OkxInstrument("ETH-USDT", "ETH", "USDT", "0.01", "0.000001", "0.0001", "3000.00"),
}


def okx_sign(secret: str, prehash: str) -> str:
    """OKX's signature: base64 of HMAC-SHA256 of the prehash string with the secret."""
    mac = hmac.new(secret.encode(), prehash.encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def okx_checksum(bids: list[list[str]], asks: list[list[str]]) -> int:
    """The ``books`` checksum: CRC32 (as a signed 32-bit integer) of the top 25 bids and
    asks interleaved (bid price:bid size:ask price:ask size:...), as sent."""
    parts: list[str] = []
    for i in range(25):
        if i < len(bids):
            parts += bids[i][:2]
        if i < len(asks):
            parts += asks[i][:2]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def _text(value: Decimal, step: Decimal) -> str:
    return format(value.quantize(step), "f")


class OkxReplica(ReplicaServer):
    """OKX v5 spot on 127.0.0.1, keeping a real book and matching our orders.

    Control API as ``ReplicaServer`` (``set_level``, ``churn``, ``fill_order``, faults);
    ``skip_sequence`` drops one book update (its ``seqId`` is used, so the next
    ``prevSeqId`` does not chain), ``corrupt_checksum`` sends one wrong checksum.
    """

    venue = "okx"
    order_path = "/api/v5/trade/order"

    def __init__(
        self,
        instruments: Mapping[str, OkxInstrument] | None = None,
        *,
        balances: Mapping[str, str] | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        passphrase: str | None = None,
        seed: int = 7,
        ping_interval: float = 20.0,
        port: int = 0,
    ) -> None:
        super().__init__(
            port=port,
            ping_interval=ping_interval,
            balances=balances or {"USDT": "1000000", "BTC": "100", "ETH": "1000"},
            seed=seed,
        )
        self.api_key = api_key or secrets.token_hex(16)
        self.api_secret = api_secret or secrets.token_hex(16).upper()
        self.passphrase = passphrase or secrets.token_hex(6)
        self.instruments = dict(instruments or DEFAULT_INSTRUMENTS)
        self.seq: dict[str, int] = {}
        self._order_ids = iter(range(600_000_000_000, 1 << 62))
        self._book_subs: dict[Any, set[str]] = {}
        self._trade_subs: dict[Any, set[str]] = {}
        self._order_subs: set[Any] = set()
        self._logged_in: set[Any] = set()
        self.cancel_sources: dict[str, str] = {}  # client id -> why the system cancelled it
        trade_ids = iter(range(90_000, 1 << 62))
        for inst_id, spec in self.instruments.items():
            market = ReplicaMarket(
                inst_id,
                spec.base,
                spec.quote,
                tick=Decimal(spec.tick),
                lot=Decimal(spec.lot),
                account=self.account,
                ids=trade_ids,
            )
            self.seq[inst_id] = 1000
            self.add_market(
                inst_id,
                market,
                mid=Decimal(spec.mid),
                levels=spec.levels,
                spacing=3,
                lots=(100_000, 50_000_000),
            )

    def normalize_symbol(self, symbol: str) -> str:
        return symbol.replace("/", "-").upper()

    # -- routes ---------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v5/public/time", self._time)
        r.add_get("/api/v5/public/instruments", self._instruments)
        r.add_get("/api/v5/market/books", self._books)
        r.add_post("/api/v5/trade/order", self._private)
        r.add_post("/api/v5/trade/batch-orders", self._private)
        r.add_post("/api/v5/trade/cancel-order", self._private)
        r.add_post("/api/v5/trade/cancel-batch-orders", self._private)
        r.add_get("/api/v5/trade/order", self._private)
        r.add_get("/api/v5/trade/orders-pending", self._private)
        r.add_get("/api/v5/trade/orders-history", self._private)
        r.add_get("/api/v5/trade/fills-history", self._private)
        r.add_get("/api/v5/trade/fills", self._private)
        r.add_get("/api/v5/account/balance", self._private)
        r.add_get("/ws/v5/public", self._ws_public)
        r.add_get("/ws/v5/private", self._ws_private)

    def forget_socket(self, ws: web.WebSocketResponse) -> None:
        self._book_subs.pop(ws, None)
        self._trade_subs.pop(ws, None)
        self._order_subs.discard(ws)
        self._logged_in.discard(ws)

    def error_response(self, status: int, body: str, headers: dict[str, str]) -> web.Response:
        code, msg = {429: ("50011", "Too Many Requests"), 418: ("50011", "Too Many Requests")}.get(
            status, ("50001", "Service temporarily unavailable, please try again later.")
        )
        payload = body or json.dumps({"code": code, "msg": msg, "data": []})
        return web.Response(
            status=status, text=payload, headers=headers, content_type="application/json"
        )

    @staticmethod
    def _ok(data: list[Any]) -> web.Response:
        return web.json_response({"code": "0", "msg": "", "data": data})

    @staticmethod
    def _fail(code: str, msg: str, status: int = 200) -> web.Response:
        return web.json_response({"code": code, "msg": msg, "data": []}, status=status)

    # -- public REST ----------------------------------------------------------------------
    async def _time(self, request: web.Request) -> web.Response:
        return self._ok([{"ts": str(self.now_ms())}])

    def _instrument_json(self, spec: OkxInstrument) -> dict[str, Any]:
        return {
            "instType": "SPOT",
            "instId": spec.inst_id,
            "uly": "",
            "instFamily": "",
            "baseCcy": spec.base,
            "quoteCcy": spec.quote,
            "settleCcy": "",
            "ctVal": "",
            "ctMult": "",
            "ctValCcy": "",
            "optType": "",
            "stk": "",
            "listTime": "1606468572000",
            "expTime": "",
            "lever": "10",
            "tickSz": spec.tick,
            "lotSz": spec.lot,
            "minSz": spec.min_sz,
            "ctType": "",
            "alias": "",
            "state": "live",
            "ruleType": "normal",
            "maxLmtSz": "9999999999",
            "maxMktSz": "1000000",
        }

    async def _instruments(self, request: web.Request) -> web.Response:
        if request.query.get("instType", "SPOT") != "SPOT":
            return self._ok([])
        wanted = request.query.get("instId")
        return self._ok(
            [
                self._instrument_json(s)
                for s in self.instruments.values()
                if wanted is None or s.inst_id == wanted
            ]
        )

    def _levels(self, inst_id: str, side: str, depth: int | None) -> list[list[str]]:
        market = self.markets[inst_id]
        return [
            [_text(p, market.tick), _text(q, market.lot), "0", "1"]
            for p, q in market.depth(side, depth)
        ]

    async def _books(self, request: web.Request) -> web.Response:
        inst_id = request.query.get("instId", "")
        if inst_id not in self.markets:
            return self._fail("51001", "Instrument ID does not exist")
        depth = int(request.query.get("sz", "400"))
        return self._ok(
            [
                {
                    "asks": self._levels(inst_id, "sell", depth),
                    "bids": self._levels(inst_id, "buy", depth),
                    "ts": str(self.now_ms()),
                }
            ]
        )

    # -- private REST ---------------------------------------------------------------------
    def _check_auth(self, request: web.Request, body: str) -> web.Response | None:
        h = request.headers
        if h.get("OK-ACCESS-KEY") != self.api_key:
            return self._fail("50111", "Invalid OK-ACCESS-KEY", 401)
        if h.get("OK-ACCESS-PASSPHRASE") != self.passphrase:
            return self._fail("50105", "Invalid OK-ACCESS-PASSPHRASE", 401)
        ts = h.get("OK-ACCESS-TIMESTAMP", "")
        expected = okx_sign(self.api_secret, ts + request.method + request.path_qs + body)
        if not hmac.compare_digest(expected, h.get("OK-ACCESS-SIGN", "")):
            return self._fail("50113", "Invalid Sign", 401)
        return None

    async def _private(self, request: web.Request) -> web.Response:
        body = await request.text() if request.method == "POST" else ""
        refused = self._check_auth(request, body)
        if refused is not None:
            return refused
        name = request.path.removeprefix("/api/v5/")
        q = dict(request.query)
        payload: Any = json.loads(body) if body else {}
        if name == "trade/order" and request.method == "POST":
            return await self._place_many([payload], single=True)
        if name == "trade/batch-orders":
            return await self._place_many(list(payload), single=False)
        if name == "trade/cancel-order":
            return await self._cancel_many([payload])
        if name == "trade/cancel-batch-orders":
            return await self._cancel_many(list(payload))
        if name == "trade/order":
            order = self._find(q)
            if order is None:
                return self._fail("51603", "Order does not exist")
            return self._ok([self._order_json(order)])
        if name == "trade/orders-pending":
            return self._ok([self._order_json(o) for o in self._orders_of(q) if o.is_open])
        if name == "trade/orders-history":
            return self._ok([self._order_json(o) for o in self._orders_of(q) if not o.is_open])
        if name in ("trade/fills-history", "trade/fills"):
            return self._fills(q)
        if name == "account/balance":
            return self._ok([self._balance()])
        return self._fail("50000", "Body can not be empty")

    def _orders_of(self, q: dict[str, str]) -> list[ReplicaOrder]:
        wanted = q.get("instId")
        out = [
            o
            for inst_id, m in self.markets.items()
            if wanted is None or inst_id == wanted
            for o in m.orders.values()
        ]
        return sorted(out, key=lambda o: -o.order_id)

    def _find(self, q: dict[str, str]) -> ReplicaOrder | None:
        market = self.markets.get(q.get("instId", ""))
        if market is None:
            return None
        if q.get("clOrdId"):
            return market.orders.get(q["clOrdId"])
        for o in market.orders.values():
            if o.venue_id == q.get("ordId"):
                return o
        return None

    async def _place_many(self, specs: list[dict[str, Any]], *, single: bool) -> web.Response:
        results = []
        failed = 0
        for spec in specs:
            cid = str(spec.get("clOrdId", ""))
            try:
                order = await self._place(spec)
            except OrderRejectedError as exc:
                failed += 1
                code, msg = _SCODE.get(exc.code, ("51000", str(exc)))
                results.append({"clOrdId": cid, "ordId": "", "tag": "", "sCode": code, "sMsg": msg})
                continue
            results.append(
                {
                    "clOrdId": order.client_id,
                    "ordId": order.venue_id,
                    "tag": "",
                    "sCode": "0",
                    "sMsg": "Order placed",
                }
            )
        if not failed:
            return self._ok(results)
        code = "1" if single or failed == len(specs) else "2"
        msg = "Operation failed." if code == "1" else "Bulk operation partially succeeded."
        return web.json_response({"code": code, "msg": msg, "data": results})

    async def place_order(self, spec: dict[str, Any]) -> ReplicaOrder:
        """Place an order as ``POST /api/v5/trade/order`` gives it (``instId``, ``side``,
        ``ordType``, ``px``, ``sz``, ``clOrdId``): another program on the account."""
        return await self._place(spec)

    async def _place(self, spec: dict[str, Any]) -> ReplicaOrder:
        reason = self.faults.take_reject()
        if reason is not None:
            raise OrderRejectedError("forced", reason or "Parameter error")
        inst_id = str(spec.get("instId", ""))
        market = self.markets.get(inst_id)
        if market is None:
            raise OrderRejectedError("forced", "Instrument ID does not exist.")
        cid = str(spec.get("clOrdId") or f"r{secrets.token_hex(8)}")
        if not _CLIENT_ID.match(cid):
            raise OrderRejectedError("forced", "Parameter clOrdId error")
        ord_type = str(spec.get("ordType", ""))
        kind = "market" if ord_type == "market" else "limit"
        tif = {"post_only": "post_only", "ioc": "ioc", "fok": "ioc"}.get(ord_type, "gtc")
        side = str(spec.get("side", ""))
        size = Decimal(str(spec.get("sz", "0")))
        if kind == "market" and side == "buy" and spec.get("tgtCcy") != "base_ccy":
            best = market.depth("sell", 1)
            if not best:
                raise OrderRejectedError("forced", "No liquidity")
            size = (size / best[0][0]).quantize(market.lot, rounding="ROUND_DOWN")
        minimum = Decimal(self.instruments[inst_id].min_sz)
        if size < minimum:
            raise OrderRejectedError("minimum", f"order size below {minimum}")
        price = Decimal(str(spec["px"])) if kind == "limit" and spec.get("px") else None
        order = ReplicaOrder(
            order_id=next(self._order_ids),
            client_id=cid,
            symbol=inst_id,
            side=side,
            kind=kind,
            tif=tif,
            price=price,
            qty=size,
            created_ms=self.now_ms(),
        )
        order.venue_id = str(order.order_id)
        try:
            await self._execute(market, order)
        except OrderRejectedError as exc:
            if exc.code != "post_only":
                raise
            # OKX accepts a post-only order that would take and the system cancels it.
            order.status = "canceled"
            order.updated_ms = self.now_ms()
            market.orders[cid] = order
            self.cancel_sources[cid] = "31"
            await self._report(order)
        return order

    async def _cancel_many(self, specs: list[dict[str, Any]]) -> web.Response:
        results = []
        failed = 0
        for spec in specs:
            order = self._find({k: str(v) for k, v in spec.items()})
            if order is None or not order.is_open:
                failed += 1
                code, msg = _SCODE["unknown_order"]
                results.append(
                    {
                        "clOrdId": spec.get("clOrdId", ""),
                        "ordId": spec.get("ordId", ""),
                        "sCode": code,
                        "sMsg": msg,
                    }
                )
                continue
            market = self.markets[order.symbol]
            market.cancel(order.client_id, self.now_ms())
            await self._report(order)
            await self.publish_book(market)
            results.append(
                {"clOrdId": order.client_id, "ordId": order.venue_id, "sCode": "0", "sMsg": ""}
            )
        if not failed:
            return self._ok(results)
        code = "1" if failed == len(specs) else "2"
        return web.json_response({"code": code, "msg": "Operation failed.", "data": results})

    def _fills(self, q: dict[str, str]) -> web.Response:
        rows = [self._fill_json(t) for market in self.markets.values() for t in market.trades]
        try:
            return self._ok(fills_page(rows, q))
        except ValueError as exc:
            return self._fail("51000", f"Parameter {exc} error")

    def _fill_json(self, t: ReplicaTrade) -> dict[str, Any]:
        o = t.order
        market = self.markets[o.symbol]
        return {
            "instType": "SPOT",
            "instId": o.symbol,
            "tradeId": str(t.trade_id),
            "ordId": o.venue_id,
            "clOrdId": o.client_id,
            "billId": str(t.trade_id * 10),
            "tag": "",
            "fillPx": _text(t.price, market.tick),
            "fillSz": _text(t.qty, market.lot),
            "side": o.side,
            "posSide": "net",
            "execType": "M" if t.maker else "T",
            "feeCcy": t.fee_asset,
            "fee": format(-t.fee, "f"),
            "ts": str(t.ts_ms),
            "fillTime": str(t.ts_ms),
        }

    def _balance(self) -> dict[str, Any]:
        acct = self.account
        details = []
        for ccy in acct.assets():
            free = acct.free.get(ccy, Decimal(0))
            frozen = acct.locked.get(ccy, Decimal(0))
            details.append(
                {
                    "ccy": ccy,
                    "availBal": format(free, "f"),
                    "frozenBal": format(frozen, "f"),
                    "cashBal": format(free + frozen, "f"),
                    "eq": format(free + frozen, "f"),
                    "availEq": "",
                    "uTime": str(self.now_ms()),
                }
            )
        return {"uTime": str(self.now_ms()), "totalEq": "", "details": details}

    # -- orders as OKX reports them ---------------------------------------------------------
    def _order_json(self, o: ReplicaOrder, trade: ReplicaTrade | None = None) -> dict[str, Any]:
        market = self.markets[o.symbol]
        done = o.filled
        quote = o.quote_filled
        if trade is not None:  # the order as of this fill, not of later ones
            mine = [t for t in market.trades if t.order is o and t.trade_id <= trade.trade_id]
            done = sum((t.qty for t in mine), Decimal(0))
            quote = sum((t.qty * t.price for t in mine), Decimal(0))
        if o.status in ("canceled", "expired"):
            state = "canceled"
        elif trade is not None:
            state = "filled" if done == o.qty else "partially_filled"
        else:
            state = {"new": "live", "partially_filled": "partially_filled", "filled": "filled"}[
                o.status
            ]
        ord_type = (
            "market"
            if o.kind == "market"
            else {"post_only": "post_only", "ioc": "ioc"}.get(o.tif, "limit")
        )
        fee = sum((t.fee for t in market.trades if t.order is o), Decimal(0))
        out = {
            "instType": "SPOT",
            "instId": o.symbol,
            "ordId": o.venue_id,
            "clOrdId": o.client_id,
            "tag": "",
            "px": _text(o.price, market.tick) if o.price is not None else "",
            "sz": _text(o.qty, market.lot),
            "ordType": ord_type,
            "side": o.side,
            "tdMode": "cash",
            "state": state,
            "accFillSz": _text(done, market.lot),
            "avgPx": _text(quote / done, market.tick) if done else "",
            "fee": format(-fee, "f"),
            "feeCcy": market.base if o.side == "buy" else market.quote,
            "cancelSource": self.cancel_sources.get(o.client_id, ""),
            "cTime": str(o.created_ms),
            "uTime": str(o.updated_ms or o.created_ms),
            "tradeId": "",
            "fillPx": "",
            "fillSz": "0",
            "fillTime": "",
            "fillFee": "0",
            "fillFeeCcy": "",
            "execType": "",
        }
        if trade is not None:
            out.update(
                tradeId=str(trade.trade_id),
                fillPx=_text(trade.price, market.tick),
                fillSz=_text(trade.qty, market.lot),
                fillTime=str(trade.ts_ms),
                fillFee=format(-trade.fee, "f"),
                fillFeeCcy=trade.fee_asset,
                execType="M" if trade.maker else "T",
                uTime=str(trade.ts_ms),
            )
        return out

    async def _report(self, o: ReplicaOrder, trade: ReplicaTrade | None = None) -> None:
        text = json.dumps(
            {
                "arg": {"channel": "orders", "instType": "ANY", "uid": "44705892343619584"},
                "data": [self._order_json(o, trade)],
            }
        )
        for ws in list(self._order_subs):
            await self.send_text(ws, text)

    async def report_accepted(self, order: ReplicaOrder) -> None:
        await self._report(order)

    async def report_fill(self, trade: ReplicaTrade) -> None:
        await self._report(trade.order, trade)

    async def report_expired(self, order: ReplicaOrder) -> None:
        await self._report(order)

    # -- public websocket ---------------------------------------------------------------------
    async def _ws_public(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self.open_socket(request)
        self._book_subs[ws] = set()
        self._trade_subs[ws] = set()

        async def on_text(text: str) -> None:
            msg = await self._ws_request(ws, text)
            if msg is None:
                return
            for arg in msg.get("args", []):
                channel, inst_id = arg.get("channel"), arg.get("instId")
                if inst_id not in self.markets or channel not in ("books", "trades"):
                    await self.send_text(
                        ws,
                        json.dumps(
                            {
                                "event": "error",
                                "code": "60018",
                                "msg": f"Wrong URL or channel:{channel}",
                            }
                        ),
                    )
                    continue
                subs = self._book_subs[ws] if channel == "books" else self._trade_subs[ws]
                if msg.get("op") == "unsubscribe":
                    subs.discard(inst_id)
                    await self.send_text(ws, json.dumps({"event": "unsubscribe", "arg": arg}))
                    continue
                subs.add(inst_id)
                await self.send_text(
                    ws, json.dumps({"event": "subscribe", "arg": arg, "connId": "a4d3ae55"})
                )
                if channel == "books":
                    await self._send_snapshot(ws, inst_id)

        await self.read_loop(ws, on_text)
        return ws

    @staticmethod
    def _request(text: str) -> dict[str, Any] | None:
        try:
            msg = json.loads(text)
        except ValueError:
            return None
        return msg if isinstance(msg, dict) and "op" in msg else None

    async def _ws_request(self, ws: web.WebSocketResponse, text: str) -> dict[str, Any] | None:
        """A websocket request to act on, or ``None`` once answered here: a text ``ping``
        gets ``pong``, anything but a JSON object with an ``op`` gets error 60012."""
        if text == "ping":
            await self.send_text(ws, "pong")
            return None
        msg = self._request(text)
        if msg is None:
            await self.send_text(
                ws, json.dumps({"event": "error", "code": "60012", "msg": "Invalid request"})
            )
        return msg

    async def _send_snapshot(self, ws: web.WebSocketResponse, inst_id: str) -> None:
        bids = self._levels(inst_id, "buy", 400)
        asks = self._levels(inst_id, "sell", 400)
        data = {
            "asks": asks,
            "bids": bids,
            "ts": str(self.now_ms()),
            "checksum": okx_checksum(bids, asks),
            "prevSeqId": -1,
            "seqId": self.seq[inst_id],
        }
        await self.send_text(
            ws,
            json.dumps(
                {
                    "arg": {"channel": "books", "instId": inst_id},
                    "action": "snapshot",
                    "data": [data],
                }
            ),
        )

    async def publish_book(self, market: ReplicaMarket) -> None:
        changes = market.take_changes()
        if not changes:
            return
        inst_id = market.symbol
        prev = self.seq[inst_id]
        self.seq[inst_id] = prev + 1
        if self.faults.take_skip():
            return
        bids = self._levels(inst_id, "buy", 400)
        asks = self._levels(inst_id, "sell", 400)
        checksum = okx_checksum(bids, asks)
        if self.faults.take_corrupt():
            checksum ^= 0x5A5A
        data = {
            "asks": [
                [_text(p, market.tick), _text(q, market.lot), "0", "1" if q else "0"]
                for s, p, q in changes
                if s == "sell"
            ],
            "bids": [
                [_text(p, market.tick), _text(q, market.lot), "0", "1" if q else "0"]
                for s, p, q in changes
                if s == "buy"
            ],
            "ts": str(self.now_ms()),
            "checksum": checksum,
            "prevSeqId": prev,
            "seqId": prev + 1,
        }
        text = json.dumps(
            {"arg": {"channel": "books", "instId": inst_id}, "action": "update", "data": [data]}
        )
        for ws, subs in list(self._book_subs.items()):
            if inst_id in subs:
                await self.send_text(ws, text)

    async def publish_trade(
        self, market: ReplicaMarket, trade: ReplicaTrade, *, taker_side: str
    ) -> None:
        text = json.dumps(
            {
                "arg": {"channel": "trades", "instId": market.symbol},
                "data": [
                    {
                        "instId": market.symbol,
                        "tradeId": str(trade.trade_id),
                        "px": _text(trade.price, market.tick),
                        "sz": _text(trade.qty, market.lot),
                        "side": taker_side,
                        "ts": str(trade.ts_ms),
                        "count": "1",
                    }
                ],
            }
        )
        for ws, subs in list(self._trade_subs.items()):
            if market.symbol in subs:
                await self.send_text(ws, text)

    # -- private websocket --------------------------------------------------------------------
    async def _ws_private(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self.open_socket(request)

        async def on_text(text: str) -> None:
            msg = await self._ws_request(ws, text)
            if msg is None:
                return
            if msg["op"] == "login":
                arg = (msg.get("args") or [{}])[0]
                expected = okx_sign(self.api_secret, f"{arg.get('timestamp')}GET/users/self/verify")
                good = (
                    arg.get("apiKey") == self.api_key
                    and arg.get("passphrase") == self.passphrase
                    and hmac.compare_digest(expected, str(arg.get("sign", "")))
                )
                if not good:
                    await self.send_text(
                        ws, json.dumps({"event": "error", "code": "60009", "msg": "Login failed."})
                    )
                    return
                self._logged_in.add(ws)
                await self.send_text(
                    ws, json.dumps({"event": "login", "code": "0", "msg": "", "connId": "a4d3"})
                )
                return
            for arg in msg.get("args", []):
                if ws not in self._logged_in:
                    await self.send_text(
                        ws, json.dumps({"event": "error", "code": "60011", "msg": "Please log in"})
                    )
                    continue
                if arg.get("channel") != "orders":
                    await self.send_text(
                        ws,
                        json.dumps(
                            {"event": "error", "code": "60018", "msg": "Wrong URL or channel"}
                        ),
                    )
                    continue
                self._order_subs.add(ws)
                await self.send_text(
                    ws, json.dumps({"event": "subscribe", "arg": arg, "connId": "a4d3"})
                )

        await self.read_loop(ws, on_text)
        return ws
