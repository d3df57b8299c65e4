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
import secrets
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web

from quoteforge.exchanges.recording import Record, read_recording
from quoteforge.exchanges.testing.binance_replica_rest import (
    DEFAULT_SYMBOLS,
    ORDER_STATUS,
    BinanceRest,
    BinanceSymbol,
    OrderCountWindow,
    RateWindow,
    f8,
    sign_query,
)
from quoteforge.exchanges.testing.faults import (
    OrderRejectedError,
    ReplicaMarket,
    ReplicaOrder,
    ReplicaTrade,
)

__all__ = ["BinanceReplica", "BinanceSymbol", "sign_query"]


class BinanceReplica(BinanceRest):
    """Binance spot on 127.0.0.1, keeping a real book and matching our orders.

    Control API (all ``async``): ``set_level``, ``set_book``, ``churn``, ``fill_order``,
    ``answer_unknown_then_execute`` and the fault commands of ``ReplicaServer``
    (``drop_connections``, ``go_silent``, ``skip_sequence``, ``fail_http``, ``time_out``,
    ``reject_next_order``, ``partial_fill_next``, ``down_for``, ``skew_clock``). The REST API is
    ``BinanceRest`` (binance_replica_rest.py); this class adds the market data streams,
    the websocket API's user data stream and recording playback.
    """

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
        super().__init__(
            port=port,
            ping_interval=ping_interval,
            balances=balances or {"USDT": "1000000", "BTC": "100", "ETH": "1000"},
            seed=seed,
        )
        if speed <= 0:
            raise ValueError(f"speed must be > 0 (1 = recorded pace), got {speed}")
        self.recording = Path(recording) if recording is not None else None
        if self.recording is not None and not self.recording.is_file():
            raise ValueError(f"recording {self.recording} not found")
        self.speed = speed
        self.recorded_fills = 0
        """Fills of our orders caused by recorded trades."""
        self._ready: dict[str, asyncio.Event] = {}
        self._early: dict[str, list[dict[str, Any]]] = {}  # diffs before the first snapshot
        self._bridge: dict[str, list[dict[str, Any]]] = {}  # of them, those to apply next
        self._snapshot_text: dict[str, tuple[int, int, str]] = {}
        self.api_key = api_key or secrets.token_hex(32)
        self.api_secret = api_secret or secrets.token_hex(32)
        self.weight_limit = weight_limit
        self.order_limit_10s = order_limit_10s
        self.symbols = dict(symbols or DEFAULT_SYMBOLS)
        self._order_ids = iter(range(1000, 1 << 62))
        self.update_id: dict[str, int] = {}
        self._weight = RateWindow(60_000)
        self._orders_10s = RateWindow(10_000)
        self._orders_1d = RateWindow(86_400_000)
        self.order_windows = [
            OrderCountWindow(self._orders_1d, None, "1 DAY", "X-MBX-ORDER-COUNT-1D"),
            OrderCountWindow(
                self._orders_10s, order_limit_10s, "10 SECOND", "X-MBX-ORDER-COUNT-10S"
            ),
        ]
        self._late_after_s: list[float] = []
        self.late_outcomes: list[tuple[str, str]] = []
        """(client id, ``executed`` / ``expired`` / ``rejected``) of each order answered
        -1007 by ``answer_unknown_then_execute``, once its backend got to it."""
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
            self.update_id[name] = 100
            seeded = self.recording is None  # a recording brings its own book
            self.add_market(
                name,
                market,
                mid=Decimal(spec.mid) if seeded else None,
                levels=spec.levels,
                spacing=5,
                lots=(100, 50_000),
            )

    def normalize_symbol(self, symbol: str) -> str:
        return symbol.upper()

    # -- late execution ------------------------------------------------------------------
    async def answer_unknown_then_execute(self, after_s: float, *, count: int = 1) -> None:
        """Answer the next ``count`` new orders (``POST /api/v3/order``) with -1007
        ("Timeout waiting for response from backend server. Send status unknown; execution
        status unknown.", HTTP 503), and let the backend execute each ``after_s`` later,
        unless its ``timestamp`` plus ``recvWindow`` has passed by then (the venue does not
        run an expired request). ``late_outcomes`` says what became of each."""
        self._late_after_s.extend([after_s] * count)

    async def answer_new_order(self, request: web.Request) -> web.Response:
        if not self._late_after_s:
            return await super().answer_new_order(request)
        p = await self.signed_order_entry(request, 1)
        if isinstance(p, web.Response):
            return p
        self.spawn(self._execute_late(p, self._late_after_s.pop(0)))
        return self._error(
            -1007,
            "Timeout waiting for response from backend server. Send status unknown; "
            "execution status unknown.",
            503,
        )

    async def _execute_late(self, p: dict[str, str], after_s: float) -> None:
        await asyncio.sleep(after_s)
        client_id = p.get("newClientOrderId", "")
        if self.now_ms() > int(p["timestamp"]) + int(p.get("recvWindow", "5000")):
            self.late_outcomes.append((client_id, "expired"))
            return
        try:
            await self._place(p)
        except (OrderRejectedError, KeyError):
            self.late_outcomes.append((client_id, "rejected"))
            return
        self.late_outcomes.append((client_id, "executed"))

    # -- recording mode -----------------------------------------------------------------
    async def start(self) -> None:
        await super().start()
        if self.recording is not None:
            self.spawn(self._play_paced(self._recorded(), self.speed))

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

    async def play_record(self, record: Record) -> None:
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
            await self.report_fill(trade)

    async def recorded_depth(self, symbol: str, market: ReplicaMarket, limit: int) -> web.Response:
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
            return self.json_answer(snap)

        def side(name: str) -> list[list[str]]:
            book = market.levels[name]
            prices = sorted(book, reverse=name == "buy")[:limit]
            return [[f8(p), f8(book[p])] for p in prices]

        return self.json_answer(
            {"lastUpdateId": self.update_id[symbol], "bids": side("buy"), "asks": side("sell")}
        )

    # -- routes -------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        r = app.router
        self._add_rest_routes(r)
        r.add_get("/ws/{streams:.*}", self._ws_streams)
        r.add_get("/stream", self._ws_streams)
        r.add_get("/ws-api/v3", self._ws_api)

    def forget_socket(self, ws: web.WebSocketResponse) -> None:
        self._depth_subs.pop(ws, None)
        self._combined.discard(ws)
        self._user_subs.pop(ws, None)

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

    async def publish_book(self, market: ReplicaMarket) -> None:
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
            "b": [[f8(p), f8(q)] for s, p, q in changes if s == "buy"],
            "a": [[f8(p), f8(q)] for s, p, q in changes if s == "sell"],
        }
        await self._broadcast(f"{market.symbol.lower()}@depth", payload)

    async def publish_trade(
        self, market: ReplicaMarket, trade: ReplicaTrade, *, taker_side: str
    ) -> None:
        buyer_maker = taker_side == "sell"  # a seller took the bid
        await self._broadcast(
            f"{market.symbol.lower()}@trade",
            {
                "e": "trade",
                "E": self.now_ms(),
                "s": market.symbol,
                "t": trade.trade_id,
                "p": f8(trade.price),
                "q": f8(trade.qty),
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

    async def report_execution(
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
        status = ORDER_STATUS[o.status] if exec_type != "NEW" else "NEW"
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
            "q": f8(o.qty),
            "p": f8(o.price or Decimal(0)),
            "P": "0.00000000",
            "F": "0.00000000",
            "g": -1,
            "C": o.client_id if cancel_client_id else "",
            "x": exec_type,
            "X": status,
            "r": "NONE",
            "i": o.order_id,
            "l": f8(trade.qty if trade else Decimal(0)),
            "z": f8(done),
            "L": f8(trade.price if trade else Decimal(0)),
            "n": f8(trade.fee) if trade else "0",
            "N": trade.fee_asset if trade else None,
            "T": trade.ts_ms if trade else o.updated_ms,
            "t": trade.trade_id if trade else -1,
            "v": 0,
            "I": 0,
            "w": o.is_open,
            "m": bool(trade and trade.maker),
            "M": False,
            "O": o.created_ms,
            "Z": f8(quote),
            "Y": f8(trade.qty * trade.price if trade else Decimal(0)),
            "Q": "0.00000000",
            "W": o.created_ms,
            "V": "EXPIRE_MAKER",
        }
        for ws, sub in list(self._user_subs.items()):
            await self.send_text(
                ws, json.dumps({"subscriptionId": sub, "event": event}, separators=(",", ":"))
            )

    # -- order flow hooks -----------------------------------------------------------------
    async def report_accepted(self, order: ReplicaOrder) -> None:
        await self.report_execution(order, "NEW", None)

    async def report_fill(self, trade: ReplicaTrade) -> None:
        await self.report_execution(trade.order, "TRADE", trade)

    async def report_expired(self, order: ReplicaOrder) -> None:
        await self.report_execution(order, "EXPIRED", None)
