"""Binance spot adapter: REST over ccxt, diff depth through the Binance book source,
and the websocket-API user data stream for order reports and fills."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import time
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field

from quoteforge import hookimpl
from quoteforge.exchange import VenueContext
from quoteforge.exchanges.binance.family import (
    AUTH_CODES,
    STATUS,
    BinanceFamilyAdapter,
    check_client_id,
)
from quoteforge.exchanges.binance.ratelimit import BinanceRateGovernor
from quoteforge.exchanges.ccxt_base import (
    API_KEY_SECRETS,
    CcxtSpotParams,
    LatencyEndpoints,
    ManagedSocket,
    TrackedOrder,
    VenueCallError,
    VenueFactory,
)
from quoteforge.model import (
    Instrument,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
)

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

_STATUS = STATUS


class BinanceParams(CcxtSpotParams):
    """Binance spot adapter parameters. Secrets ``api_key`` and ``api_secret`` come from
    the run's secrets (environment variables), never from here."""

    required_secrets = API_KEY_SECRETS

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


class BinanceSpot(BinanceFamilyAdapter):
    """Binance spot. One socket carries every symbol's diff depth and trades; one
    websocket-API socket carries the user data stream."""

    venue_id = "binance"
    ccxt_id = "binance"
    time_method = "public_get_time"
    depth_method = "public_get_depth"
    trades_method, trades_weight = "private_get_mytrades", 20
    exchange_info_method, exchange_info_weight = "public_get_exchangeinfo", 20
    open_orders_method, open_orders_weight = "private_get_openorders", 6
    cancel_method = "private_delete_order"
    query_method, query_weight = "private_get_order", 4
    depth_weights = ((100, 5), (500, 25), (1000, 50), (5000, 250))  # by snapshot limit
    params: BinanceParams

    def __init__(self, params: BinanceParams, ctx: VenueContext) -> None:
        super().__init__(params, ctx, BinanceRateGovernor(ctx.clock, headroom=params.rate_headroom))
        self._user_socket: ManagedSocket | None = None
        self._user_ready = asyncio.Event()
        self._user_subscriptions = 0
        self._user_refusal: VenueCallError | None = None  # keys refused at the start
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

    def instrument_of(self, symbol: str, info: dict[str, Any]) -> Instrument:
        return instrument_from_exchange_info(self.name, symbol, info)

    # -- streams -----------------------------------------------------------------------------
    async def start_streams(self) -> None:
        self.start_market_data()
        if self.has_credentials:
            self._user_socket = self._spawn_socket(
                "user",
                lambda: self.ws_api_url,
                self._on_user_open,
                self._on_user_text,
                self._on_user_down,
            )
            await self._await_ready(self._user_ready, "user data stream")
            if self._user_refusal is not None:
                raise self._user_refusal
        self.spawn_task(self._time_sync_loop(), f"{self.name}/time-sync")

    def market_url(self) -> str:
        speed = "@100ms" if self.params.depth_interval_ms == 100 else ""
        names = []
        for native in self._native.values():
            lower = native.lower()
            names.append(f"{lower}@depth{speed}")
            if self.params.public_trades:
                names.append(f"{lower}@trade")
        return f"{self.streams_base}/stream?streams={'/'.join(names)}"

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
            elif error.get("code") in AUTH_CODES and not self._user_subscriptions:
                # Keys the venue refuses stop the start now, with the venue's reason,
                # rather than after start_timeout_s at the first signed REST read.
                self._user_refusal = VenueCallError(
                    "auth",
                    f"{self.name}: the user data stream subscription was refused: "
                    f"{error.get('msg')}; check the api_key and api_secret secrets (and the "
                    "key's IP restrictions)",
                    str(error.get("code")),
                )
                self._user_ready.set()  # wakes the start, which raises it
            raise ConnectionError(f"user stream subscription refused: {error}")
        self._user_subscriptions += 1
        if self._user_subscriptions > 1:
            self.spawn_task(self.reconcile_orders(), f"{self.name}/reconcile")
        self._user_ready.set()

    def _on_user_down(self, reason: str) -> None:
        if self._user_down_since_ms is None:
            self._user_down_since_ms = int(time.time() * 1000) + self.time_offset_ms

    def _on_user_text(self, raw: str, recv_ns: int) -> None:
        try:
            msg = json.loads(raw)
        except ValueError as exc:
            self.unreadable_execution(raw, exc)
            return
        event = msg.get("event") if isinstance(msg, dict) else None
        if not isinstance(event, dict):
            return
        if event.get("e") == "executionReport":
            try:
                self._on_execution_report(event)
            except (LookupError, ValueError, TypeError, ArithmeticError) as exc:
                self.unreadable_execution(event, exc)

    def _on_execution_report(self, ev: dict[str, Any]) -> None:
        symbol = self._by_native.get(ev["s"])
        if symbol is None:
            return
        # A cancel reports the cancel request's id in "c" and the order's in "C".
        client_id = ev["C"] if ev["x"] == "CANCELED" and ev.get("C") else ev["c"]
        reason = "" if ev.get("r") in (None, "NONE") else str(ev["r"])
        self.on_execution(symbol, ev, client_id, int(ev.get("E", 0)) * 1_000_000, reason=reason)

    # -- orders ------------------------------------------------------------------------------
    def _order_params(self, tracked: TrackedOrder) -> dict[str, Any]:
        order = tracked.order
        check_client_id(order.client_id)
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

    def order_report(self, data: dict[str, Any], client_id: str | None = None) -> OrderUpdate:
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
        data = await self._call("private_post_order", params, weight=1, orders=1, places=[order])
        order.exchange_id = str(data["orderId"])
        self._emit_update(self.order_report(data, order.client_id))

    async def send_cancel_all(self, symbol: str) -> None:
        try:
            rows = await self._call("private_delete_openorders", {"symbol": self._native[symbol]})
        except VenueCallError as exc:
            if exc.kind == "not_found":
                return  # nothing was open
            raise
        for row in rows:
            self._emit_update(self.order_report(row))

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
                lambda: self._call(
                    "private_post_order_cancelreplace", params, weight=1, orders=1, places=[new]
                )
            )
        except VenueCallError as exc:
            detail = (exc.payload or {}).get("data") if isinstance(exc.payload, dict) else None
            if exc.kind == "unknown" or not isinstance(detail, dict):
                if exc.kind != "unknown":
                    self.report_rejected(new.client_id, str(exc))
                    return
                # The call may not have been processed, and then ``old`` still rests: the
                # run asked for it to go, so its cancel is sent until the venue confirms
                # it closed, whatever becomes of ``new``.
                if not await self._cancel_looked_up(old):
                    await self._cancel_checked(old)
                await self._resolve_unknown(new, str(exc))
                return
            cancel = detail.get("cancelResponse") or {}
            if detail.get("cancelResult") == "SUCCESS" and "orderId" in cancel:
                self._emit_update(self.order_report(cancel, old.client_id))
            else:
                update = await self._lookup_quietly(old)
                if update is not None:
                    self._emit_update(update)
            new_resp = detail.get("newOrderResponse") or {}
            self.report_rejected(
                new.client_id, f"cancel-replace: {new_resp.get('msg') or exc.message}"
            )
            return
        self._emit_update(self.order_report(data["cancelResponse"], old.client_id))
        new_data = data["newOrderResponse"]
        new.exchange_id = str(new_data["orderId"])
        self._emit_update(self.order_report(new_data, new.client_id))

    # -- reconciliation truth ----------------------------------------------------------------
    async def fetch_balances(self) -> dict[str, Decimal]:
        """Total (free + locked) per asset with a non-zero balance."""
        self.require_credentials("balances")
        data = await self._read_patiently(
            functools.partial(self._call, "private_get_account", weight=20), "the balances"
        )
        out = {}
        for row in data.get("balances", []):
            total = Decimal(row["free"]) + Decimal(row["locked"])
            if total:
                out[row["asset"]] = total
        return out


create_binance = VenueFactory(BinanceParams, BinanceSpot)
"""Factory the registry calls with the manifest's params and the run context."""


@hookimpl
def quoteforge_register_exchanges(register: Any) -> None:
    create_binance.register(
        register,
        "binance",
        description="Binance spot (REST over ccxt, diff-depth books, websocket user stream).",
        requires=("ccxt",),
    )
