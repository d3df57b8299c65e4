"""Binance spot adapter: REST over ccxt, diff depth through the Binance book source,
and the websocket-API user data stream for order reports and fills."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger
from pydantic import Field

from quoteforge import hookimpl
from quoteforge.exchange import VenueContext
from quoteforge.exchanges.binance.ratelimit import BinanceRateGovernor
from quoteforge.exchanges.ccxt_base import (
    CcxtSpotAdapter,
    CcxtSpotParams,
    LatencyEndpoints,
    ManagedSocket,
    TrackedOrder,
    VenueCallError,
    book_source_factory,
)
from quoteforge.model import (
    Fill,
    Instrument,
    Liquidity,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
)
from quoteforge.ratelimit import RateLimitError

if TYPE_CHECKING:
    from quoteforge.book.source import BookSource
    from quoteforge.exchanges.binance.book import BinanceSpotBookSource

__all__ = [
    "BinanceParams",
    "BinanceSpot",
    "create_binance",
    "instrument_from_exchange_info",
    "quoteforge_register_exchanges",
]

LIVE_REST = "https://api.binance.com"
LIVE_STREAMS = "wss://stream.binance.com:9443"
LIVE_WS_API = "wss://ws-api.binance.com:443/ws-api/v3"
TEST_REST = "https://testnet.binance.vision"
TEST_STREAMS = "wss://stream.testnet.binance.vision"
TEST_WS_API = "wss://ws-api.testnet.binance.vision/ws-api/v3"

_STATUS = {
    "NEW": OrderStatus.OPEN,
    "PENDING_NEW": OrderStatus.PENDING_NEW,
    "PARTIALLY_FILLED": OrderStatus.PARTIALLY_FILLED,
    "FILLED": OrderStatus.FILLED,
    "CANCELED": OrderStatus.CANCELLED,
    "PENDING_CANCEL": OrderStatus.PENDING_CANCEL,
    "REJECTED": OrderStatus.REJECTED,
    "EXPIRED": OrderStatus.EXPIRED,
    "EXPIRED_IN_MATCH": OrderStatus.EXPIRED,
}
_CLIENT_ID = re.compile(r"^[a-zA-Z0-9_-]{1,36}$")
# Codes after which the order may or may not exist (Binance: "execution status unknown").
_UNKNOWN_CODES = {-1000, -1001, -1006, -1007, -1008}
_AUTH_CODES = {-1002, -1022, -2014, -2015}
_DEPTH_WEIGHT = ((100, 5), (500, 25), (1000, 50), (5000, 250))


class BinanceParams(CcxtSpotParams):
    """Binance spot adapter parameters. Secrets ``api_key`` and ``api_secret`` come from
    the run's secrets (environment variables), never from here."""

    private_ws_url: str | None = Field(
        None, description="Websocket API URL for the user data stream (default by network)."
    )
    depth_snapshot_limit: Literal[5, 10, 20, 50, 100, 500, 1000, 5000] = Field(
        1000, description="Levels in the REST snapshot that seeds each book."
    )
    depth_interval_ms: Literal[100, 1000] = Field(100, description="Diff depth stream speed.")
    public_trades: bool = Field(True, description="Subscribe to <symbol>@trade.")
    recv_window_ms: int = Field(
        5000, gt=0, le=60000, description="How long a signed request stays valid at the venue."
    )
    time_sync_interval_s: float = Field(
        600.0,
        gt=0,
        le=315_360_000,
        description="How often the venue clock offset is measured again.",
    )
    rate_headroom: float = Field(
        0.9, gt=0, le=1, description="Share of the venue's rate limits this adapter may use."
    )
    silence_timeout_s: float = Field(
        60.0,
        gt=0,
        le=315_360_000,
        description="Binance pings every 20 s; a socket silent this long is down.",
    )
    book_source: str = Field(
        "binance_spot",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="The registered book source (plugin kind book_source) that keeps each "
        "book; a plugin's source with the interface of binance_spot replaces it by name.",
    )


def create_binance(spec_params: Any, ctx: VenueContext) -> BinanceSpot:
    """Factory the registry calls with the manifest's params and the run context."""
    params = (
        spec_params
        if isinstance(spec_params, BinanceParams)
        else BinanceParams.model_validate(spec_params or {})
    )
    return BinanceSpot(params, ctx)


@hookimpl
def quoteforge_register_exchanges(register: Any) -> None:
    register(
        "binance",
        create_binance,
        params=BinanceParams,
        description="Binance spot (REST over ccxt, diff-depth books, websocket user stream).",
        requires=("ccxt",),
    )


def instrument_from_exchange_info(
    venue: str, symbol: str, symbol_info: dict[str, Any]
) -> Instrument:
    """The instrument for one ``symbols[]`` entry of spot ``GET /api/v3/exchangeInfo``.

    Prices on PRICE_FILTER ``tickSize``; quantities counted at ``baseAssetPrecision``
    (what the venue reports) and ordered on LOT_SIZE ``stepSize``.
    """
    native = symbol_info.get("symbol", symbol)
    filters = {f["filterType"]: f for f in symbol_info.get("filters", [])}
    price_filter, lot = filters.get("PRICE_FILTER"), filters.get("LOT_SIZE")
    if price_filter is None or lot is None:
        raise ValueError(f"{venue}: {native} has no PRICE_FILTER/LOT_SIZE filter")
    notional = filters.get("NOTIONAL") or filters.get("MIN_NOTIONAL") or {}
    return Instrument(
        venue=venue,
        symbol=symbol,
        base=symbol_info["baseAsset"],
        quote=symbol_info["quoteAsset"],
        tick_size=Decimal(price_filter["tickSize"]).normalize(),
        # The venue reports quantities (book levels, fills, balances) at the base
        # asset's precision, finer than the order step: resting orders from before
        # a step change show e.g. 25.42618900 BTC on a 0.00001 step.
        lot_size=Decimal(1).scaleb(-int(symbol_info.get("baseAssetPrecision", 8))),
        qty_step=Decimal(lot["stepSize"]).normalize(),
        min_qty=Decimal(lot.get("minQty", "0")).normalize(),
        min_notional=Decimal(notional.get("minNotional", "0")).normalize(),
    )


class BinanceSpot(CcxtSpotAdapter):
    """Binance spot. One socket carries every symbol's diff depth and trades; one
    websocket-API socket carries the user data stream."""

    venue_id = "binance"
    ccxt_id = "binance"
    params: BinanceParams

    def __init__(self, params: BinanceParams, ctx: VenueContext) -> None:
        super().__init__(params, ctx)
        self.governor = BinanceRateGovernor(ctx.clock, headroom=params.rate_headroom)
        # Looked up now, so a manifest naming an unknown source fails before connecting.
        self._make_source = book_source_factory(ctx, params.book_source)
        self._native: dict[str, str] = {}  # our symbol -> BTCUSDT
        self._by_native: dict[str, str] = {}
        self._sources: dict[str, BinanceSpotBookSource] = {}
        self._snapshot_tasks: dict[str, asyncio.Task[Any]] = {}
        self._market_socket: ManagedSocket | None = None
        self._user_socket: ManagedSocket | None = None
        self._user_ready = asyncio.Event()
        self._user_subscriptions = 0
        self._user_down_since_ms: int | None = None
        self._request_ids = iter(range(1, 1 << 62))

    # -- URLs ------------------------------------------------------------------------------
    @property
    def rest_base(self) -> str:
        p = self.params
        return (p.rest_url or (TEST_REST if p.testnet else LIVE_REST)).rstrip("/")

    @property
    def streams_base(self) -> str:
        p = self.params
        return (p.ws_url or (TEST_STREAMS if p.testnet else LIVE_STREAMS)).rstrip("/")

    def latency_endpoints(self) -> LatencyEndpoints:
        symbols = self.ctx.symbols
        if not symbols:
            raise ValueError(f"exchange {self.name!r}: give it a symbol to open a stream of")
        native = symbols[0].replace("/", "").replace("-", "").replace("_", "").lower()
        # A trade stream is quiet enough that pongs do not queue behind data frames.
        return LatencyEndpoints(
            f"{self.rest_base}/api/v3/time", f"{self.streams_base}/ws/{native}@trade"
        )

    def latency_order_wait_s(self, symbol: str) -> float:
        # A new order weighs 1 (one order count), its cancel 1.
        return self.governor.delay_for(2, orders=1)

    @property
    def ws_api_url(self) -> str:
        p = self.params
        if p.private_ws_url:
            return p.private_ws_url
        if p.ws_url:
            return p.ws_url.rstrip("/") + "/ws-api/v3"
        return TEST_WS_API if p.testnet else LIVE_WS_API

    def client_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "options": {
                "defaultType": "spot",
                "fetchMarkets": {"types": ["spot"]},
                "fetchCurrencies": False,
                "recvWindow": self.params.recv_window_ms,
                "timeDifference": 0,
                "adjustForTimeDifference": False,
            }
        }
        if self.params.rest_url or self.params.testnet:
            # set_sandbox_mode would do the same for the testnet; one path for both.
            api = f"{self.rest_base}/api/v3"
            config["urls"] = {
                "api": {"public": api, "private": api, "v1": f"{self.rest_base}/api/v1"}
            }
        return config

    # -- REST --------------------------------------------------------------------------------
    def observe_response(self, status: int, headers: dict[str, str]) -> None:
        self.governor.observe(status, headers)

    async def _call(
        self, method: str, params: dict[str, Any] | None = None, *, weight: int = 1, orders: int = 0
    ) -> Any:
        try:
            await self.governor.acquire(weight, orders, max_wait=self.params.max_rate_wait_s)
        except RateLimitError as exc:
            raise VenueCallError(
                "rate_limited", str(exc), retry_after_s=exc.retry_after_s
            ) from None
        return await self._rest(method, params)

    def classify_http_error(self, status: int, body: str) -> VenueCallError:
        try:
            data = json.loads(body)
            code = int(data.get("code"))
            msg = str(data.get("msg", ""))
        except (ValueError, TypeError, AttributeError):
            data, code, msg = None, None, body[:200]
        text = f"HTTP {status}: {msg}"
        if status >= 500 or code in _UNKNOWN_CODES:
            return VenueCallError("unknown", text, str(code or status), payload=data)
        if code == -1021:
            return VenueCallError("clock", text, str(code), payload=data)
        if code in (-2011, -2013):
            return VenueCallError("not_found", text, str(code), payload=data)
        if code in _AUTH_CODES or status in (401, 403):
            return VenueCallError("auth", text, str(code or status), payload=data)
        return VenueCallError("rejected", text, str(code or status), payload=data)

    async def sync_time(self) -> None:
        t0 = time.time_ns()
        data = await self._call("public_get_time", weight=1)
        t1 = time.time_ns()
        local_ms = (t0 + t1) // 2 // 1_000_000
        self.time_offset_ms = int(data["serverTime"]) - local_ms
        # ccxt signs with timestamp = local ms - timeDifference.
        self._client.options["timeDifference"] = -self.time_offset_ms
        self.counters["time_syncs"] += 1
        if abs(self.time_offset_ms) > 1000:
            logger.warning(
                "{}: venue clock differs from ours by {} ms; compensating",
                self.name,
                self.time_offset_ms,
            )

    async def _time_sync_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.params.time_sync_interval_s)
            try:
                await self.sync_time()
            except VenueCallError as exc:
                logger.warning("{}: time sync failed: {}", self.name, exc)

    async def load_instruments(self) -> dict[str, Instrument]:
        wanted: dict[str, str] = {}
        for symbol in self.ctx.symbols:
            native = symbol.replace("/", "").replace("-", "").replace("_", "").upper()
            wanted[symbol] = native
        data = await self._call("public_get_exchangeinfo", weight=20)
        self.governor.configure(data.get("rateLimits", []))
        by_name = {s["symbol"]: s for s in data.get("symbols", [])}
        missing = [s for s, n in wanted.items() if n not in by_name]
        if missing:
            raise ValueError(
                f"{self.name}: unknown symbol(s) {missing}; the venue lists e.g. "
                f"{sorted(by_name)[:10]} (write BTCUSDT or BTC/USDT)"
            )
        out: dict[str, Instrument] = {}
        for symbol, native in wanted.items():
            out[symbol] = instrument_from_exchange_info(self.name, symbol, by_name[native])
            self._native[symbol] = native
            self._by_native[native] = symbol
        return out

    # -- streams -----------------------------------------------------------------------------
    async def start_streams(self) -> None:
        stale = self.params.book_stale_after_s
        for symbol, instrument in self.instruments.items():
            source: BinanceSpotBookSource = self._make_source(
                instrument,
                clock=self.clock,
                stale_after_ms=None if stale is None else stale * 1000,
                on_resync=self._on_resync,
                on_update=self._emit_book,
                wire_symbol=self._native[symbol],
            )
            source.add_observer(self._emit_book_state)
            self._sources[symbol] = source
            self.books[symbol] = source.book
        self._market_socket = self._spawn_socket(
            "market",
            self._market_url,
            self._on_market_open,
            self._on_market_text,
            self._on_market_down,
        )
        if self.has_credentials:
            self._user_socket = self._spawn_socket(
                "user",
                lambda: self.ws_api_url,
                self._on_user_open,
                self._on_user_text,
                self._on_user_down,
            )
            try:
                await asyncio.wait_for(self._user_ready.wait(), self.params.start_timeout_s)
            except TimeoutError:
                logger.warning(
                    "{}: user data stream not ready after {:.0f}s; continuing, it keeps retrying",
                    self.name,
                    self.params.start_timeout_s,
                )
        self.spawn_task(self._time_sync_loop(), f"{self.name}/time-sync")

    def _market_url(self) -> str:
        speed = "@100ms" if self.params.depth_interval_ms == 100 else ""
        names = []
        for native in self._native.values():
            lower = native.lower()
            names.append(f"{lower}@depth{speed}")
            if self.params.public_trades:
                names.append(f"{lower}@trade")
        return f"{self.streams_base}/stream?streams={'/'.join(names)}"

    async def _on_market_open(self, sock: ManagedSocket) -> None:
        reason = "connected" if sock.connects == 1 else f"reconnected after: {sock.last_reason}"
        for source in self._sources.values():
            # Nothing from the previous connection chains with this one: new snapshot.
            source.reconnected(reason)

    def _on_market_down(self, reason: str) -> None:
        for source in self._sources.values():
            source.feed_down(f"market data socket down: {reason}")

    def _on_market_text(self, raw: str, recv_ns: int) -> None:
        start = raw.find('"stream":"')
        if start < 0:
            if self.tap is not None:
                self._tap_raw("market", raw, recv_ns)
            return  # subscription acks and other control answers
        start += 10
        stream = raw[start : raw.find('"', start)]
        if self.tap is not None:
            self._tap_raw(stream, raw, recv_ns)
        native, _, kind = stream.partition("@")
        symbol = self._by_native.get(native.upper())
        if symbol is None:
            return
        if kind.startswith("depth"):
            from quoteforge.book.wire import BookMessageError

            try:
                self._sources[symbol].on_message(raw, self.clock.now_ns())
            except BookMessageError as exc:
                logger.warning("{}: dropped malformed depth message: {}", self.name, exc)
        elif kind == "trade":
            self._on_public_trade(symbol, json.loads(raw)["data"])

    def _on_public_trade(self, symbol: str, data: dict[str, Any]) -> None:
        instrument = self.instruments[symbol]
        try:
            price = instrument.price_to_ticks(data["p"])
            qty = instrument.qty_to_lots(data["q"])
        except (KeyError, ValueError) as exc:
            logger.warning("{}: bad trade message ({}): {!r}", self.name, exc, data)
            return
        # "m": the buyer was the maker, so the seller hit the bid.
        aggressor = Side.SELL if data.get("m") else Side.BUY
        self._emit_trade(symbol, price, qty, aggressor, int(data.get("T", 0)) * 1_000_000)

    def _on_resync(self, source: BookSource, reason: str) -> None:
        symbol = source.book.symbol
        task = self._snapshot_tasks.get(symbol)
        if task is None or task.done():
            self._snapshot_tasks[symbol] = self.spawn_task(
                self._snapshot_loop(symbol), f"{self.name}/snapshot/{symbol}"
            )

    async def _snapshot_loop(self, symbol: str) -> None:
        from quoteforge.book.wire import BookMessageError

        source = self._sources[symbol]
        limit = self.params.depth_snapshot_limit
        weight = next(w for top, w in _DEPTH_WEIGHT if limit <= top)
        delay = 0.05
        while source.needs_snapshot and not self._closed:
            sock = self._market_socket
            if sock is None or not sock.is_up:
                return  # reconnecting: the new connection asks for a snapshot again
            try:
                snap = await self._call(
                    "public_get_depth",
                    {"symbol": self._native[symbol], "limit": limit},
                    weight=weight,
                )
                if self.tap is not None:
                    # Stream name and body as the replay venue reads them back.
                    body = self._last_rest_body() or json.dumps(snap, separators=(",", ":"))
                    self._tap_raw(f"rest:depth?symbol={self._native[symbol]}", body, time.time_ns())
                source.on_snapshot(snap, self.clock.now_ns())
            except (VenueCallError, BookMessageError) as exc:
                logger.warning("{}: depth snapshot for {} failed: {}", self.name, symbol, exc)
            if source.needs_snapshot:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.params.reconnect_max_s)

    # -- user data stream (websocket API) -------------------------------------------------------
    def _ws_signature(self, params: dict[str, Any]) -> str:
        payload = "&".join(f"{k}={params[k]}" for k in sorted(params))
        return hmac.new(self._api_secret.encode(), payload.encode(), hashlib.sha256).hexdigest()

    async def _on_user_open(self, sock: ManagedSocket) -> None:
        params: dict[str, Any] = {
            "apiKey": self._api_key,
            "timestamp": int(time.time() * 1000) + self.time_offset_ms,
            "recvWindow": self.params.recv_window_ms,
        }
        params["signature"] = self._ws_signature(params)
        req_id = f"sub-{next(self._request_ids)}"
        reply = await sock.request(
            json.dumps(
                {"id": req_id, "method": "userDataStream.subscribe.signature", "params": params}
            ),
            lambda m: isinstance(m, dict) and m.get("id") == req_id,
            self.params.request_timeout_s,
        )
        if reply.get("status") != 200:
            error = reply.get("error", {})
            if error.get("code") == -1021:
                await self.sync_time()
            raise ConnectionError(f"user stream subscription refused: {error}")
        self._user_subscriptions += 1
        if self._user_subscriptions > 1:
            self.spawn_task(self.reconcile_orders(), f"{self.name}/reconcile")
        self._user_ready.set()

    def _on_user_down(self, reason: str) -> None:
        if self._user_down_since_ms is None:
            self._user_down_since_ms = int(time.time() * 1000) + self.time_offset_ms

    def _on_user_text(self, raw: str, recv_ns: int) -> None:
        msg = json.loads(raw)
        event = msg.get("event") if isinstance(msg, dict) else None
        if not isinstance(event, dict):
            return
        if event.get("e") == "executionReport":
            try:
                self._on_execution_report(event)
            except (KeyError, ValueError) as exc:
                logger.warning("{}: bad executionReport ({}): {!r}", self.name, exc, event)

    def _on_execution_report(self, ev: dict[str, Any]) -> None:
        symbol = self._by_native.get(ev["s"])
        if symbol is None:
            return
        instrument = self.instruments[symbol]
        exec_type = ev["x"]
        client_id = ev["C"] if exec_type == "CANCELED" and ev.get("C") else ev["c"]
        price = Decimal(ev["p"])
        ts_ns = int(ev.get("E", 0)) * 1_000_000
        self._emit_update(
            OrderUpdate(
                self.name,
                client_id,
                _STATUS.get(ev["X"], OrderStatus.OPEN),
                ts_ns,
                exchange_id=str(ev["i"]),
                filled_lots=instrument.qty_to_lots(ev["z"]),
                price_ticks=instrument.price_to_ticks(price) if price else None,
                qty_lots=instrument.qty_to_lots(ev["q"]),
                reason="" if ev.get("r") in (None, "NONE") else str(ev["r"]),
            )
        )
        if exec_type == "TRADE":
            tracked = self.tracked(client_id)
            self._emit_fill(
                Fill(
                    venue=self.name,
                    symbol=symbol,
                    fill_id=f"{ev['s']}:{ev['t']}",
                    client_id=client_id,
                    side=Side.parse(ev["S"]),
                    price_ticks=instrument.price_to_ticks(ev["L"]),
                    qty_lots=instrument.qty_to_lots(ev["l"]),
                    fee=Decimal(ev.get("n") or "0"),
                    fee_asset=ev.get("N") or "",
                    liquidity=Liquidity.MAKER if ev.get("m") else Liquidity.TAKER,
                    ts_ns=int(ev.get("T", 0)) * 1_000_000,
                    strategy=tracked.order.strategy if tracked else "",
                )
            )

    async def reconcile_orders(self) -> None:
        """The user stream was down: ask for every working order and for our trades
        since then, so no report and no fill is lost."""
        since = self._user_down_since_ms
        self._user_down_since_ms = None
        await super().reconcile_orders()
        symbols = {t.symbol for t in self._orders.values()}
        start = (since or 0) - 5_000
        for symbol in symbols:
            try:
                for fill in await self._my_trades(symbol, start):
                    self._emit_fill(fill)
            except VenueCallError as exc:
                logger.warning("{}: trade recovery for {} failed: {}", self.name, symbol, exc)

    async def _my_trades(self, symbol: str, start_ms: int) -> list[Fill]:
        instrument = self.instruments[symbol]
        rows = await self._call(
            "private_get_mytrades",
            {"symbol": self._native[symbol], "startTime": max(0, start_ms), "limit": 1000},
            weight=20,
        )
        by_exchange_id = {t.exchange_id: t for t in self._orders.values() if t.exchange_id}
        fills = []
        for row in rows:
            tracked = by_exchange_id.get(str(row["orderId"]))
            fills.append(
                Fill(
                    venue=self.name,
                    symbol=symbol,
                    fill_id=f"{row['symbol']}:{row['id']}",
                    client_id=tracked.client_id if tracked else f"order:{row['orderId']}",
                    side=Side.BUY if row["isBuyer"] else Side.SELL,
                    price_ticks=instrument.price_to_ticks(row["price"]),
                    qty_lots=instrument.qty_to_lots(row["qty"]),
                    fee=Decimal(row["commission"]),
                    fee_asset=row["commissionAsset"],
                    liquidity=Liquidity.MAKER if row["isMaker"] else Liquidity.TAKER,
                    ts_ns=int(row["time"]) * 1_000_000,
                    strategy=tracked.order.strategy if tracked else "",
                )
            )
        return fills

    # -- orders ------------------------------------------------------------------------------
    def _order_params(self, tracked: TrackedOrder) -> dict[str, Any]:
        order = tracked.order
        if not _CLIENT_ID.match(order.client_id):
            raise VenueCallError(
                "rejected",
                f"client id {order.client_id!r} must match [a-zA-Z0-9_-]{{1,36}} on Binance",
            )
        params: dict[str, Any] = {
            "symbol": self._native[order.symbol],
            "side": "BUY" if order.side is Side.BUY else "SELL",
            "quantity": tracked.qty_text(),
        }
        if order.order_type is OrderType.MARKET:
            params["type"] = "MARKET"
        elif order.tif is TimeInForce.POST_ONLY:
            params.update(type="LIMIT_MAKER", price=tracked.price_text())
        else:
            params.update(
                type="LIMIT",
                price=tracked.price_text(),
                timeInForce="IOC" if order.tif is TimeInForce.IOC else "GTC",
            )
        return params

    def _update_from_order(self, data: dict[str, Any], client_id: str | None = None) -> OrderUpdate:
        symbol = self._by_native[data["symbol"]]
        instrument = self.instruments[symbol]
        price = Decimal(data.get("price") or "0")
        ts = data.get("transactTime") or data.get("updateTime") or 0
        return OrderUpdate(
            self.name,
            client_id or data.get("origClientOrderId") or data["clientOrderId"],
            _STATUS.get(data["status"], OrderStatus.OPEN),
            int(ts) * 1_000_000 or self.clock.now_ns(),
            exchange_id=str(data["orderId"]),
            filled_lots=instrument.qty_to_lots(data["executedQty"]),
            price_ticks=instrument.price_to_ticks(price) if price else None,
            qty_lots=instrument.qty_to_lots(data["origQty"]),
            symbol=symbol,
        )

    async def send_place(self, order: TrackedOrder) -> None:
        params = self._order_params(order)
        params.update(newClientOrderId=order.client_id, newOrderRespType="RESULT")
        data = await self._call("private_post_order", params, weight=1, orders=1)
        order.exchange_id = str(data["orderId"])
        self._emit_update(self._update_from_order(data, order.client_id))

    async def send_cancel(self, order: TrackedOrder) -> None:
        data = await self._call(
            "private_delete_order",
            {"symbol": self._native[order.symbol], "origClientOrderId": order.client_id},
        )
        self._emit_update(self._update_from_order(data, order.client_id))

    async def lookup_order(self, order: TrackedOrder) -> OrderUpdate | None:
        try:
            data = await self._call(
                "private_get_order",
                {"symbol": self._native[order.symbol], "origClientOrderId": order.client_id},
                weight=4,
            )
        except VenueCallError as exc:
            if exc.kind == "not_found":
                return None
            raise
        return self._update_from_order(data, order.client_id)

    async def send_cancel_all(self, symbol: str) -> None:
        try:
            rows = await self._call("private_delete_openorders", {"symbol": self._native[symbol]})
        except VenueCallError as exc:
            if exc.kind == "not_found":
                return  # nothing was open
            raise
        for row in rows:
            self._emit_update(self._update_from_order(row))

    async def send_replace(self, old: TrackedOrder, new: TrackedOrder) -> None:
        """``POST /api/v3/order/cancelReplace`` (STOP_ON_FAILURE): one call, and the new
        order is not placed when the cancel fails."""
        if old.symbol != new.symbol or old.order.side is not new.order.side:
            await super().send_replace(old, new)
            return
        params = self._order_params(new)
        params.update(
            cancelReplaceMode="STOP_ON_FAILURE",
            cancelOrigClientOrderId=old.client_id,
            newClientOrderId=new.client_id,
            newOrderRespType="RESULT",
        )
        try:
            data = await self._with_rate_retry(
                lambda: self._call("private_post_order_cancelreplace", params, weight=1, orders=1)
            )
        except VenueCallError as exc:
            detail = (exc.payload or {}).get("data") if isinstance(exc.payload, dict) else None
            if exc.kind == "unknown" or not isinstance(detail, dict):
                if exc.kind != "unknown":
                    self._emit_update(
                        OrderUpdate(
                            self.name,
                            new.client_id,
                            OrderStatus.REJECTED,
                            self.clock.now_ns(),
                            reason=str(exc),
                        )
                    )
                    return
                update = await self._lookup_quietly(old)
                if update is not None:
                    self._emit_update(update)
                await self._resolve_unknown(new, str(exc))
                return
            cancel = detail.get("cancelResponse") or {}
            if detail.get("cancelResult") == "SUCCESS" and "orderId" in cancel:
                self._emit_update(self._update_from_order(cancel, old.client_id))
            else:
                update = await self._lookup_quietly(old)
                if update is not None:
                    self._emit_update(update)
            new_resp = detail.get("newOrderResponse") or {}
            self._emit_update(
                OrderUpdate(
                    self.name,
                    new.client_id,
                    OrderStatus.REJECTED,
                    self.clock.now_ns(),
                    reason=f"cancel-replace: {new_resp.get('msg') or exc.message}",
                )
            )
            return
        self._emit_update(self._update_from_order(data["cancelResponse"], old.client_id))
        new_data = data["newOrderResponse"]
        new.exchange_id = str(new_data["orderId"])
        self._emit_update(self._update_from_order(new_data, new.client_id))

    # -- reconciliation truth ----------------------------------------------------------------
    async def fetch_open_orders(self) -> list[OrderUpdate]:
        out: list[OrderUpdate] = []
        for native in self._native.values():
            rows = await self._call("private_get_openorders", {"symbol": native}, weight=6)
            out.extend(self._update_from_order(row) for row in rows)
        return out

    async def fetch_balances(self) -> dict[str, Decimal]:
        """Total (free + locked) per asset with a non-zero balance."""
        data = await self._call("private_get_account", weight=20)
        out = {}
        for row in data.get("balances", []):
            total = Decimal(row["free"]) + Decimal(row["locked"])
            if total:
                out[row["asset"]] = total
        return out

    async def fetch_fills(self, since_ns: int) -> list[Fill]:
        fills: list[Fill] = []
        for symbol in self._native:
            fills.extend(await self._my_trades(symbol, since_ns // 1_000_000))
        return fills
