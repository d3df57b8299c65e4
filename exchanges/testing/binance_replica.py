"""A local Binance spot replica for tests: REST, the diff-depth and trade streams and the
websocket-API user data stream, in Binance's wire formats, on 127.0.0.1.

    async with BinanceReplica() as venue:
        params = {"rest_url": venue.url, "ws_url": venue.ws_url}
        await venue.set_level("BTCUSDT", "sell", "50010.00", "0.5")
        await venue.fail_http(429, retry_after=1)

With ``recording=`` the market data is a real recording instead (a quoteforge
recording or an hftbacktest collector file): its messages go out on the streams, byte
for byte, at their recorded pace (``speed`` times faster), the book they build answers
``GET /api/v3/depth``, and recorded trades fill our resting orders they reach.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import random
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from quoteforge.exchanges.testing.faults import (
    OrderRejectedError,
    ReplicaAccount,
    ReplicaMarket,
    ReplicaOrder,
    ReplicaServer,
    ReplicaTrade,
)
from quoteforge.recording import Record, read_recording

__all__ = ["BinanceReplica", "BinanceSymbol", "sign_query"]

_STATUS = {
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


def _f8(value: Decimal) -> str:
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


class _Window:
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


class BinanceReplica(ReplicaServer):
    """Binance spot on 127.0.0.1, keeping a real book and matching our orders.

    Control API (all ``async``): ``set_level``, ``set_book``, ``churn``, ``fill_order``
    and the fault commands of ``ReplicaServer`` (``drop_connections``, ``go_silent``,
    ``skip_sequence``, ``fail_http``, ``time_out``, ``reject_next_order``,
    ``partial_fill_next``, ``down_for``, ``skew_clock``).
    """

    venue = "binance"
    order_path = "/api/v3/order"
    """Where order-entry faults (``fail_http``, ``time_out``) aim to hit new orders."""

    def __init__(
        self,
        symbols: Mapping[str, BinanceSymbol] | None = None,
        *,
        balances: Mapping[str, str] | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        weight_limit: int = 6000,
        order_limit_10s: int = 100,
        seed: int = 7,
        ping_interval: float = 20.0,
        port: int = 0,
        recording: str | Path | None = None,
        speed: float = 1.0,
    ) -> None:
        super().__init__(port=port, ping_interval=ping_interval)
        if speed <= 0:
            raise ValueError(f"speed must be > 0 (1 = recorded pace), got {speed}")
        self.recording = Path(recording) if recording is not None else None
        if self.recording is not None and not self.recording.is_file():
            raise ValueError(f"recording {self.recording} not found")
        self.speed = speed
        self.played = 0
        """Recorded messages played so far (``recording`` mode)."""
        self.recorded_fills = 0
        """Fills of our orders caused by recorded trades."""
        self.playback_done = asyncio.Event()
        self._ready: dict[str, asyncio.Event] = {}
        self._early: dict[str, list[dict[str, Any]]] = {}  # diffs before the first snapshot
        self._bridge: dict[str, list[dict[str, Any]]] = {}  # of them, those to apply next
        self._snapshot_text: dict[str, tuple[int, int, str]] = {}
        self.api_key = api_key or secrets.token_hex(32)
        self.api_secret = api_secret or secrets.token_hex(32)
        self.weight_limit = weight_limit
        self.order_limit_10s = order_limit_10s
        self.symbols = dict(symbols or DEFAULT_SYMBOLS)
        self.account = ReplicaAccount(
            free={
                k: Decimal(v)
                for k, v in (balances or {"USDT": "1000000", "BTC": "100", "ETH": "1000"}).items()
            }
        )
        self._rng = random.Random(seed)
        self._order_ids = iter(range(1000, 1 << 62))
        self.markets: dict[str, ReplicaMarket] = {}
        self.update_id: dict[str, int] = {}
        self.accepted: list[ReplicaOrder] = []
        self._weight = _Window(60_000)
        self._orders_10s = _Window(10_000)
        self._orders_1d = _Window(86_400_000)
        self._depth_subs: dict[Any, set[str]] = {}
        self._combined: set[Any] = set()
        self._user_subs: dict[Any, int] = {}
        trade_ids = iter(range(5000, 1 << 62))
        for name, spec in self.symbols.items():
            market = ReplicaMarket(
                name,
                spec.base,
                spec.quote,
                tick=Decimal(spec.tick),
                lot=Decimal(spec.lot),
                account=self.account,
                ids=trade_ids,
                qty_precision=Decimal("0.00000001"),  # baseAssetPrecision 8
            )
            self.markets[name] = market
            self.update_id[name] = 100
            if self.recording is None:
                self._seed_book(market, Decimal(spec.mid), spec.levels)
            market.changed.clear()

    def _seed_book(self, market: ReplicaMarket, mid: Decimal, levels: int) -> None:
        for i in range(1, levels + 1):
            for side, sign in (("buy", -1), ("sell", 1)):
                price = mid + sign * market.tick * (i * 5)
                qty = market.lot * self._rng.randint(100, 50_000)
                market.set_level(side, price, qty)

    def _market(self, symbol: str) -> ReplicaMarket:
        try:
            return self.markets[symbol.upper()]
        except KeyError:
            raise KeyError(
                f"unknown symbol {symbol!r}; replica has {sorted(self.markets)}"
            ) from None

    # -- control API: market ------------------------------------------------------------
    def book(
        self, symbol: str, depth: int | None = None
    ) -> dict[str, list[tuple[Decimal, Decimal]]]:
        """The published book as (price, qty) Decimals, best first."""
        market = self._market(symbol)
        return {"bids": market.depth("buy", depth), "asks": market.depth("sell", depth)}

    def orders(self, symbol: str | None = None, *, open_only: bool = True) -> list[ReplicaOrder]:
        """Our orders as the replica holds them."""
        markets = [self._market(symbol)] if symbol else list(self.markets.values())
        out: list[ReplicaOrder] = []
        for market in markets:
            out.extend(o for o in market.orders.values() if o.is_open or not open_only)
        return out

    async def set_level(
        self, symbol: str, side: str, price: str | Decimal, qty: str | Decimal
    ) -> None:
        """Other participants' absolute quantity at a level; published as a diff."""
        market = self._market(symbol)
        market.set_level(side, Decimal(price), Decimal(qty))
        await self._publish_depth(market)

    async def set_book(
        self, symbol: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]]
    ) -> None:
        market = self._market(symbol)
        for side in ("buy", "sell"):
            for price in list(market.levels[side]):
                market.set_level(side, price, Decimal(0))
        for bid_price, bid_qty in bids:
            market.set_level("buy", Decimal(bid_price), Decimal(bid_qty))
        for ask_price, ask_qty in asks:
            market.set_level("sell", Decimal(ask_price), Decimal(ask_qty))
        await self._publish_depth(market)

    async def churn(self, symbol: str, events: int = 10, seed: int | None = None) -> None:
        """Random level changes near the top of the book, one diff event each."""
        rng = random.Random(seed) if seed is not None else self._rng
        market = self._market(symbol)
        for _ in range(events):
            side = rng.choice(("buy", "sell"))
            levels = market.depth(side, 10)
            if not levels:
                continue
            base = levels[0][0]
            sign = -1 if side == "buy" else 1
            price = base + sign * market.tick * rng.randint(0, 30)
            qty = market.lot * rng.choice((0, rng.randint(10, 20_000)))
            if price > 0:
                market.set_level(side, price, qty)
                await self._publish_depth(market)

    async def fill_order(self, client_id: str, qty: str | Decimal | None = None) -> None:
        """Someone trades against our resting order (all of it, or ``qty``)."""
        for market in self.markets.values():
            if client_id in market.orders and market.orders[client_id].is_open:
                amount = None if qty is None else Decimal(qty)
                trade = market.fill_resting(client_id, amount, self.now_ms())
                await self._report(trade.order, "TRADE", trade)
                await self._publish_trade(market, trade, buyer_maker=trade.order.side == "buy")
                await self._publish_depth(market)
                return
        raise KeyError(f"no open replica order with client id {client_id!r}")

    # -- recording mode -----------------------------------------------------------------
    async def start(self) -> None:
        await super().start()
        if self.recording is not None:
            self.spawn(self._play_recording())

    def _recorded(self) -> Iterator[Record]:
        """The recording's records: the project's format, or an hftbacktest collector
        file (``<ns> <JSON>`` lines)."""
        assert self.recording is not None
        path = self.recording
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            head = fh.read(1)
        if head.isdigit():
            from quoteforge.plugins.data_import import read_hftbacktest

            return read_hftbacktest(path)
        return read_recording(path)

    async def _play_recording(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        first: int | None = None
        try:
            for record in self._recorded():
                if first is None:
                    first = record.t_ns
                due = start + (record.t_ns - first) / 1e9 / self.speed
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._play(record)
                self.played += 1
        finally:
            self.playback_done.set()

    async def _play(self, record: Record) -> None:
        stream, raw = record.stream, record.raw
        if stream.startswith("rest:"):
            if "depth" in stream:
                self._play_snapshot(stream, raw)
            return
        if "@" not in stream:
            return
        native, _, kind = stream.partition("@")
        market = self.markets.get(native.upper())
        if market is None:
            return
        msg = json.loads(raw)
        if kind.startswith("depth"):
            self._play_depth(market, msg)
        await self._send_recorded(native.lower(), kind, raw)
        if kind.startswith("trade"):
            await self._recorded_trade(market, msg)

    def _play_snapshot(self, stream: str, raw: str) -> None:
        _, found, rest = stream.partition("symbol=")
        name = rest.split("&")[0].upper() if found else next(iter(self.markets))
        market = self.markets.get(name)
        if market is None:
            return
        snap = json.loads(raw)
        for side in ("buy", "sell"):
            market.levels[side].clear()
        for side, key in (("buy", "bids"), ("sell", "asks")):
            for price, qty in snap[key]:
                market.set_level(side, Decimal(price), Decimal(qty))
        market.changed.clear()
        last_id = int(snap["lastUpdateId"])
        self.update_id[name] = last_id
        # The recorder bridged from this snapshot with the events it had buffered:
        # those that end after it apply on top (Binance's procedure) when the next
        # event plays; until then the depth endpoint answers the snapshot as recorded.
        self._bridge[name] = self._early.pop(name, [])
        self._ready_event(name).set()
        deepest = max(len(snap["bids"]), len(snap["asks"]))
        self._snapshot_text[name] = (last_id, deepest, raw)

    def _play_depth(self, market: ReplicaMarket, msg: dict[str, Any]) -> None:
        name = market.symbol
        if not self._ready_event(name).is_set():
            # Before the recording's first snapshot the book is unknown: keep the
            # events for the bridge.
            self._early.setdefault(name, []).append(msg)
            return
        bridge = self._bridge.pop(name, None)
        if bridge:
            for early in bridge:
                self._apply_recorded(market, early)
        self._apply_recorded(market, msg)

    def _apply_recorded(self, market: ReplicaMarket, msg: dict[str, Any]) -> None:
        name = market.symbol
        # Events already in the book are old. Levels are absolute, so an event that
        # overlaps what is applied is safe to apply.
        if msg["u"] <= self.update_id[name]:
            return
        for side, key in (("buy", "b"), ("sell", "a")):
            for price, qty in msg[key]:
                market.set_level(side, Decimal(price), Decimal(qty))
        market.changed.clear()
        self.update_id[name] = msg["u"]

    def _ready_event(self, symbol: str) -> asyncio.Event:
        event = self._ready.get(symbol)
        if event is None:
            event = self._ready[symbol] = asyncio.Event()
        return event

    async def _send_recorded(self, native: str, kind: str, data: str) -> None:
        """A recorded payload to every socket subscribed to its stream, as recorded;
        the diff-depth speeds (``@depth``, ``@depth@100ms``) are one stream here, the
        recording's pace is what it is."""
        depth = kind.startswith("depth")
        for ws, names in list(self._depth_subs.items()):
            name = next(
                (
                    n
                    for n in names
                    if n.partition("@")[0] == native
                    and (
                        n.partition("@")[2].startswith("depth")
                        if depth
                        else n.partition("@")[2] == kind
                    )
                ),
                None,
            )
            if name is None:
                continue
            if ws in self._combined:
                await self.send_text(ws, '{"stream":"' + name + '","data":' + data + "}")
            else:
                await self.send_text(ws, data)

    async def _recorded_trade(self, market: ReplicaMarket, msg: dict[str, Any]) -> None:
        """A recorded trade fills our resting orders it reaches on the side it hit, best
        price first, up to its size. Queue-blind: our order is taken to be first at its
        price (the backtest's fill simulator models the queue; this is for adapters)."""
        price = Decimal(msg["p"])
        left = Decimal(msg["q"])
        hit = "buy" if msg["m"] else "sell"  # buyer was maker: a seller hit the bids
        reached = [
            o
            for o in market.orders.values()
            if o.is_open
            and o.side == hit
            and o.price is not None
            and (o.price >= price if hit == "buy" else o.price <= price)
        ]
        reached.sort(key=lambda o: (-o.price if hit == "buy" else o.price, o.created_ms))  # type: ignore[operator]
        for order in reached:
            take = min(left, order.remaining)
            take -= take % market.lot
            if take <= 0:
                break
            trade = market.fill_resting(order.client_id, take, self.now_ms())
            market.changed.clear()  # our depth is not on the recorded streams
            left -= take
            self.recorded_fills += 1
            await self._report(order, "TRADE", trade)

    # -- routes -------------------------------------------------------------------------
    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v3/time", self._time)
        r.add_get("/api/v3/ping", self._ping)
        r.add_get("/api/v3/exchangeInfo", self._exchange_info)
        r.add_get("/api/v3/depth", self._depth)
        r.add_post("/api/v3/order", self._new_order)
        r.add_delete("/api/v3/order", self._cancel_order)
        r.add_get("/api/v3/order", self._query_order)
        r.add_get("/api/v3/openOrders", self._open_orders)
        r.add_delete("/api/v3/openOrders", self._cancel_all)
        r.add_get("/api/v3/account", self._account)
        r.add_get("/api/v3/myTrades", self._my_trades)
        r.add_post("/api/v3/order/cancelReplace", self._cancel_replace)
        r.add_get("/ws/{streams:.*}", self._ws_streams)
        r.add_get("/stream", self._ws_streams)
        r.add_get("/ws-api/v3", self._ws_api)

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

    def _json(self, payload: Any, status: int = 200, *, orders: bool = False) -> web.Response:
        now = self.now_ms()
        headers = {"X-MBX-USED-WEIGHT-1M": str(self._weight.add(now, 0))}
        if orders:
            headers["X-MBX-ORDER-COUNT-10S"] = str(self._orders_10s.add(now, 0))
            headers["X-MBX-ORDER-COUNT-1D"] = str(self._orders_1d.add(now, 0))
        return web.json_response(payload, status=status, headers=headers)

    def _error(self, code: int, msg: str, status: int = 400, **extra: Any) -> web.Response:
        return self._json({"code": code, "msg": msg, **extra}, status)

    def _reject(self, exc: OrderRejectedError) -> web.Response:
        code, msg = _REJECT_MESSAGES.get(exc.code, (-2010, str(exc)))
        return self._error(code, msg)

    def _charge(self, weight: int) -> web.Response | None:
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

    async def _signed(self, request: web.Request, weight: int) -> dict[str, str] | web.Response:
        """Check key, signature and timestamp; returns the parameters or the error."""
        limited = self._charge(weight)
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
        return self._charge(1) or self._json({"serverTime": self.now_ms()})

    async def _ping(self, request: web.Request) -> web.Response:
        return self._charge(1) or self._json({})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        limited = self._charge(20)
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
        return self._json(
            {
                "timezone": "UTC",
                "serverTime": self.now_ms(),
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": self.weight_limit,
                    },
                    {
                        "rateLimitType": "ORDERS",
                        "interval": "SECOND",
                        "intervalNum": 10,
                        "limit": self.order_limit_10s,
                    },
                    {
                        "rateLimitType": "ORDERS",
                        "interval": "DAY",
                        "intervalNum": 1,
                        "limit": 200000,
                    },
                    {
                        "rateLimitType": "RAW_REQUESTS",
                        "interval": "MINUTE",
                        "intervalNum": 5,
                        "limit": 61000,
                    },
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
                    "minPrice": _f8(Decimal(spec.tick)),
                    "maxPrice": "1000000.00000000",
                    "tickSize": _f8(Decimal(spec.tick)),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": _f8(Decimal(spec.lot)),
                    "maxQty": "9000.00000000",
                    "stepSize": _f8(Decimal(spec.lot)),
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
                    "minNotional": _f8(Decimal(spec.min_notional)),
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
        limited = self._charge(weight)
        if limited is not None:
            return limited
        symbol = request.query.get("symbol", "")
        if symbol not in self.markets:
            return self._error(-1121, "Invalid symbol.")
        market = self.markets[symbol]
        if self.recording is not None:
            return await self._recorded_depth(symbol, market, limit)
        return self._json(
            {
                "lastUpdateId": self.update_id[symbol],
                "bids": [[_f8(p), _f8(q)] for p, q in market.depth("buy", limit)],
                "asks": [[_f8(p), _f8(q)] for p, q in market.depth("sell", limit)],
            }
        )

    async def _recorded_depth(self, symbol: str, market: ReplicaMarket, limit: int) -> web.Response:
        """The recorded book: the recording's snapshot text itself while nothing has
        changed it, else the book the recorded events built from it. A request before
        the recording's first snapshot waits for it (the venue's book is unknown)."""
        ready = self._ready_event(symbol)
        waited = not ready.is_set()
        try:
            await asyncio.wait_for(ready.wait(), timeout=30)
        except TimeoutError:
            return self._error(-1003, "The recording has no depth snapshot yet.", status=503)
        last_id, deepest, raw = self._snapshot_text[symbol]
        # A request that waited is answered with the book as it was when the snapshot
        # arrived, whatever played while the answer was on its way.
        if waited or last_id == self.update_id[symbol]:
            if deepest <= limit:
                return web.Response(text=raw, content_type="application/json")
            snap = json.loads(raw)
            snap["bids"], snap["asks"] = snap["bids"][:limit], snap["asks"][:limit]
            return self._json(snap)

        def side(name: str) -> list[list[str]]:
            book = market.levels[name]
            prices = sorted(book, reverse=name == "buy")[:limit]
            return [[_f8(p), _f8(book[p])] for p in prices]

        return self._json(
            {"lastUpdateId": self.update_id[symbol], "bids": side("buy"), "asks": side("sell")}
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
            "price": _f8(o.price or Decimal(0)),
            "origQty": _f8(o.qty),
            "executedQty": _f8(o.filled),
            "cummulativeQuoteQty": _f8(o.quote_filled),
            "status": _STATUS[o.status],
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
                    "price": _f8(t.price),
                    "qty": _f8(t.qty),
                    "commission": _f8(t.fee),
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

    def _parse_order(self, p: dict[str, str], market: ReplicaMarket) -> ReplicaOrder:
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

    def _count_order(self) -> web.Response | None:
        now = self.now_ms()
        self._orders_1d.add(now, 1)
        if self._orders_10s.add(now, 1) > self.order_limit_10s:
            return web.json_response(
                {
                    "code": -1015,
                    "msg": f"Too many new orders; current limit is "
                    f"{self.order_limit_10s} orders per 10 SECOND.",
                },
                status=429,
                headers={"Retry-After": str(self._orders_10s.retry_after_s(now))},
            )
        return None

    async def _place(self, p: dict[str, str]) -> tuple[ReplicaOrder, list[ReplicaTrade]]:
        market = self._market(p.get("symbol", ""))
        order = self._parse_order(p, market)
        forced = self.faults.take_reject()
        if forced is not None:
            raise OrderRejectedError("forced", forced or "Order rejected by the venue.")
        trades = market.submit(order, self.now_ms())
        self.accepted.append(order)
        await self._report(order, "NEW", None)
        for trade in trades:
            await self._report(order, "TRADE", trade)
            await self._publish_trade(market, trade, buyer_maker=order.side == "sell")
        if order.status == "expired":
            await self._report(order, "EXPIRED", None)
        partial = self.faults.take_partial() if order.is_open else None
        if partial is not None:
            amount = order.remaining * partial
            amount -= amount % market.lot
            if amount > 0:
                trade = market.fill_resting(order.client_id, amount, self.now_ms())
                trades.append(trade)
                await self._report(order, "TRADE", trade)
                await self._publish_trade(market, trade, buyer_maker=order.side == "buy")
        await self._publish_depth(market)
        return order, trades

    async def _new_order(self, request: web.Request) -> web.Response:
        p = await self._signed(request, 1)
        if isinstance(p, web.Response):
            return p
        limited = self._count_order()
        if limited is not None:
            return limited
        try:
            order, _ = await self._place(p)
        except OrderRejectedError as exc:
            if exc.code == "forced":
                return self._error(-2010, str(exc))
            return self._reject(exc)
        except KeyError as exc:
            return self._error(-1121, f"Invalid symbol. ({exc})")
        return self._json(self._order_json(order, full=True), orders=True)

    def _find(self, p: dict[str, str]) -> ReplicaOrder | None:
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

    async def _cancel(self, order: ReplicaOrder, cancel_cid: str) -> None:
        market = self.markets[order.symbol]
        market.cancel(order.client_id, self.now_ms())
        await self._report(order, "CANCELED", None, cancel_client_id=cancel_cid)
        await self._publish_depth(market)

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
        p = await self._signed(request, 1)
        if isinstance(p, web.Response):
            return p
        order = self._find(p)
        if order is None or not order.is_open:
            return self._error(-2011, "Unknown order sent.")
        cancel_cid = p.get("newClientOrderId") or f"cancel-{secrets.token_hex(6)}"
        await self._cancel(order, cancel_cid)
        return self._json(self._cancel_json(order, cancel_cid))

    async def _query_order(self, request: web.Request) -> web.Response:
        p = await self._signed(request, 4)
        if isinstance(p, web.Response):
            return p
        order = self._find(p)
        if order is None:
            return self._error(-2013, "Order does not exist.")
        return self._json(self._order_json(order))

    async def _open_orders(self, request: web.Request) -> web.Response:
        p = await self._signed(request, 6 if "symbol" in request.query else 80)
        if isinstance(p, web.Response):
            return p
        symbol = p.get("symbol")
        return self._json([self._order_json(o) for o in self.orders(symbol)])

    async def _cancel_all(self, request: web.Request) -> web.Response:
        p = await self._signed(request, 1)
        if isinstance(p, web.Response):
            return p
        symbol = p.get("symbol", "")
        if symbol not in self.markets:
            return self._error(-1121, "Invalid symbol.")
        out = []
        for order in self.orders(symbol):
            cid = f"cancel-{secrets.token_hex(6)}"
            await self._cancel(order, cid)
            out.append(self._cancel_json(order, cid))
        if not out:
            return self._error(-2011, "Unknown order sent.")
        return self._json(out)

    async def _account(self, request: web.Request) -> web.Response:
        p = await self._signed(request, 20)
        if isinstance(p, web.Response):
            return p
        acct = self.account
        return self._json(
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
                        "free": _f8(acct.free.get(a, Decimal(0))),
                        "locked": _f8(acct.locked.get(a, Decimal(0))),
                    }
                    for a in acct.assets()
                ],
                "permissions": ["SPOT"],
                "uid": 354937868,
            }
        )

    async def _my_trades(self, request: web.Request) -> web.Response:
        p = await self._signed(request, 20)
        if isinstance(p, web.Response):
            return p
        market = self.markets.get(p.get("symbol", ""))
        if market is None:
            return self._error(-1121, "Invalid symbol.")
        start = int(p.get("startTime", "0"))
        from_id = int(p.get("fromId", "0"))
        limit = int(p.get("limit", "500"))
        rows = [t for t in market.trades if t.ts_ms >= start and t.trade_id >= from_id][:limit]
        return self._json(
            [
                {
                    "symbol": market.symbol,
                    "id": t.trade_id,
                    "orderId": t.order.order_id,
                    "orderListId": -1,
                    "price": _f8(t.price),
                    "qty": _f8(t.qty),
                    "quoteQty": _f8(t.price * t.qty),
                    "commission": _f8(t.fee),
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
        p = await self._signed(request, 1)
        if isinstance(p, web.Response):
            return p
        limited = self._count_order()
        if limited is not None:
            return limited
        mode = p.get("cancelReplaceMode", "STOP_ON_FAILURE")
        old = self._find(
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
            await self._cancel(old, cancel_cid)
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
        return self._json(
            {
                "cancelResult": "SUCCESS" if cancel_ok else "FAILURE",
                "newOrderResult": "SUCCESS",
                "cancelResponse": cancel_resp,
                "newOrderResponse": self._order_json(order, full=True),
            },
            orders=True,
        )

    # -- streams --------------------------------------------------------------------------
    async def _ws_streams(self, request: web.Request) -> web.WebSocketResponse:
        if request.path == "/stream":
            names = request.query.get("streams", "")
            combined = True
        else:
            names = request.match_info.get("streams", "")
            combined = False
        ws = await self.open_socket(request)
        self._depth_subs[ws] = {n for n in names.split("/") if n}
        if combined:
            self._combined.add(ws)

        async def on_text(text: str) -> None:
            try:
                msg = json.loads(text)
                method, params, req_id = msg["method"], msg.get("params", []), msg.get("id")
            except (ValueError, KeyError, TypeError):
                await self.send_text(
                    ws, json.dumps({"error": {"code": 2, "msg": "Invalid request"}})
                )
                return
            if method == "SUBSCRIBE":
                self._depth_subs[ws].update(params)
            elif method == "UNSUBSCRIBE":
                self._depth_subs[ws].difference_update(params)
            await self.send_text(ws, json.dumps({"result": None, "id": req_id}))

        await self.read_loop(ws, on_text)
        self._depth_subs.pop(ws, None)
        self._combined.discard(ws)
        return ws

    async def _broadcast(self, stream: str, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload, separators=(",", ":"))
        fast = f"{stream}@100ms"
        for ws, names in list(self._depth_subs.items()):
            name = stream if stream in names else fast if fast in names else None
            if name is None:
                continue
            if ws in self._combined:
                wrapped = json.dumps({"stream": name, "data": payload}, separators=(",", ":"))
                await self.send_text(ws, wrapped)
            else:
                await self.send_text(ws, raw)

    async def _publish_depth(self, market: ReplicaMarket) -> None:
        changes = market.take_changes()
        if not changes or self.recording is not None:
            # Serving a recording, the recorded events are the depth stream.
            return
        first = self.update_id[market.symbol] + 1
        last = first + len(changes) - 1
        self.update_id[market.symbol] = last
        if self.faults.take_skip():
            return
        payload = {
            "e": "depthUpdate",
            "E": self.now_ms(),
            "s": market.symbol,
            "U": first,
            "u": last,
            "b": [[_f8(p), _f8(q)] for s, p, q in changes if s == "buy"],
            "a": [[_f8(p), _f8(q)] for s, p, q in changes if s == "sell"],
        }
        await self._broadcast(f"{market.symbol.lower()}@depth", payload)

    async def _publish_trade(
        self, market: ReplicaMarket, trade: ReplicaTrade, *, buyer_maker: bool
    ) -> None:
        await self._broadcast(
            f"{market.symbol.lower()}@trade",
            {
                "e": "trade",
                "E": self.now_ms(),
                "s": market.symbol,
                "t": trade.trade_id,
                "p": _f8(trade.price),
                "q": _f8(trade.qty),
                "T": trade.ts_ms,
                "m": buyer_maker,
                "M": True,
            },
        )

    # -- websocket API (user data) --------------------------------------------------------
    async def _ws_api(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self.open_socket(request)
        next_sub = iter(range(1 << 30))

        async def on_text(text: str) -> None:
            try:
                msg = json.loads(text)
                req_id, method = msg["id"], msg["method"]
                params: dict[str, Any] = msg.get("params") or {}
            except (ValueError, KeyError, TypeError):
                await self.send_text(
                    ws,
                    json.dumps(
                        {
                            "id": None,
                            "status": 400,
                            "error": {"code": -1102, "msg": "Malformed request."},
                        }
                    ),
                )
                return
            if method == "userDataStream.subscribe.signature":
                error = self._check_ws_signature(params)
                if error is not None:
                    await self.send_text(
                        ws, json.dumps({"id": req_id, "status": 400, "error": error})
                    )
                    return
                sub = next(next_sub)
                self._user_subs[ws] = sub
                await self.send_text(
                    ws, json.dumps({"id": req_id, "status": 200, "result": {"subscriptionId": sub}})
                )
            elif method == "userDataStream.unsubscribe":
                self._user_subs.pop(ws, None)
                await self.send_text(ws, json.dumps({"id": req_id, "status": 200, "result": {}}))
            elif method == "ping":
                await self.send_text(ws, json.dumps({"id": req_id, "status": 200, "result": {}}))
            elif method == "time":
                await self.send_text(
                    ws,
                    json.dumps(
                        {"id": req_id, "status": 200, "result": {"serverTime": self.now_ms()}}
                    ),
                )
            else:
                await self.send_text(
                    ws,
                    json.dumps(
                        {
                            "id": req_id,
                            "status": 400,
                            "error": {"code": -1100, "msg": f"Unknown method {method}."},
                        }
                    ),
                )

        await self.read_loop(ws, on_text)
        self._user_subs.pop(ws, None)
        return ws

    def _check_ws_signature(self, params: dict[str, Any]) -> dict[str, Any] | None:
        if params.get("apiKey") != self.api_key:
            return {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}
        signature = str(params.get("signature", ""))
        payload = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "signature")
        expected = hmac.new(self.api_secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return {"code": -1022, "msg": "Signature for this request is not valid."}
        ts = int(params.get("timestamp", 0))
        now = self.now_ms()
        if ts > now + 1000 or now - ts > int(params.get("recvWindow", 5000)):
            return {
                "code": -1021,
                "msg": "Timestamp for this request is outside of the recvWindow.",
            }
        return None

    async def _report(
        self,
        o: ReplicaOrder,
        exec_type: str,
        trade: ReplicaTrade | None,
        *,
        cancel_client_id: str = "",
    ) -> None:
        now = self.now_ms()
        kind = (
            "MARKET" if o.kind == "market" else "LIMIT_MAKER" if o.tif == "post_only" else "LIMIT"
        )
        status = _STATUS[o.status] if exec_type != "NEW" else "NEW"
        if exec_type == "TRADE":
            # A report describes the order as of this trade, not as of later ones.
            assert trade is not None
            done = sum(
                (
                    t.qty
                    for t in self.markets[o.symbol].trades
                    if t.order is o and t.trade_id <= trade.trade_id
                ),
                Decimal(0),
            )
            quote = sum(
                (
                    t.qty * t.price
                    for t in self.markets[o.symbol].trades
                    if t.order is o and t.trade_id <= trade.trade_id
                ),
                Decimal(0),
            )
            status = "FILLED" if done == o.qty else "PARTIALLY_FILLED"
        elif exec_type == "NEW":
            done, quote = Decimal(0), Decimal(0)
        else:
            done, quote = o.filled, o.quote_filled
        event = {
            "e": "executionReport",
            "E": now,
            "s": o.symbol,
            "c": cancel_client_id or o.client_id,
            "S": o.side.upper(),
            "o": kind,
            "f": "IOC" if o.tif == "ioc" else "GTC",
            "q": _f8(o.qty),
            "p": _f8(o.price or Decimal(0)),
            "P": "0.00000000",
            "F": "0.00000000",
            "g": -1,
            "C": o.client_id if cancel_client_id else "",
            "x": exec_type,
            "X": status,
            "r": "NONE",
            "i": o.order_id,
            "l": _f8(trade.qty if trade else Decimal(0)),
            "z": _f8(done),
            "L": _f8(trade.price if trade else Decimal(0)),
            "n": _f8(trade.fee) if trade else "0",
            "N": trade.fee_asset if trade else None,
            "T": trade.ts_ms if trade else o.updated_ms,
            "t": trade.trade_id if trade else -1,
            "v": 0,
            "I": 0,
            "w": o.is_open,
            "m": bool(trade and trade.maker),
            "M": False,
            "O": o.created_ms,
            "Z": _f8(quote),
            "Y": _f8(trade.qty * trade.price if trade else Decimal(0)),
            "Q": "0.00000000",
            "W": o.created_ms,
            "V": "EXPIRE_MAKER",
        }
        for ws, sub in list(self._user_subs.items()):
            await self.send_text(
                ws, json.dumps({"subscriptionId": sub, "event": event}, separators=(",", ":"))
            )


def sign_query(secret: str, query: str) -> str:
    """HMAC-SHA256 hex signature Binance expects over a query string."""
    return hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
