"""Polymarket CLOB adapter: outcome tokens from the market endpoints, books from the
``market`` websocket channel, orders signed by the official client (EIP-712, HMAC API-key
headers) over REST, order and trade reports from the ``user`` channel, reconciliation
against REST open orders and trades, and market resolution booked as a final fill."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger
from pydantic import Field, model_validator

from quoteforge import hookimpl
from quoteforge.exchange import CancelAll, OrderAction, PlaceOrder, VenueContext
from quoteforge.exchanges.ccxt_base import (
    CcxtSpotAdapter,
    CcxtSpotParams,
    LatencyEndpoints,
    ManagedSocket,
    TrackedOrder,
    VenueCallError,
    VenueFactory,
    book_source_factory,
)
from quoteforge.exchanges.polymarket.book import PolymarketBookSource
from quoteforge.exchanges.polymarket.events import PolymarketEvents
from quoteforge.exchanges.polymarket.heartbeats import PolymarketHeartbeats
from quoteforge.exchanges.polymarket.positions import PolymarketPositions
from quoteforge.exchanges.polymarket.ratelimit import PolymarketRateGovernor
from quoteforge.exchanges.polymarket.reports import PolymarketReports
from quoteforge.exchanges.polymarket.wire import (
    ORDER_STATUS,
    QTY_STEP,
    TOKEN_UNIT,
    ApiCredentials,
    OrderSigner,
    OutcomeToken,
    classify_error,
    parse_market,
    plain,
)
from quoteforge.model import (
    Instrument,
    InstrumentKind,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
)
from quoteforge.ratelimit import RateLimitError

if TYPE_CHECKING:
    from quoteforge.book.source import BookSource
    from quoteforge.registry import Register

__all__ = [
    "PolymarketClob",
    "PolymarketParams",
    "create_polymarket",
    "quoteforge_register_book_sources",
    "quoteforge_register_exchanges",
]

LIVE_REST = "https://clob.polymarket.com"
LIVE_WS = "wss://ws-subscriptions-clob.polymarket.com/ws/market"
LIVE_WS_USER = "wss://ws-subscriptions-clob.polymarket.com/ws/user"
DATA_API = "https://data-api.polymarket.com"
BATCH_MAX = 15
_NEW = OrderStatus.PENDING_NEW
SECRET_NAMES = ("private_key", "api_key", "api_secret", "passphrase")


class PolymarketParams(CcxtSpotParams):
    """Polymarket CLOB parameters. Secrets ``private_key`` (the signing wallet's),
    ``api_key``, ``api_secret`` and ``passphrase`` come from the run's secrets (the
    environment), never from here. Symbols are ``<market>/<OUTCOME>``
    (``rain-nyc/YES``), ``<market>`` a key of ``markets`` or a condition id."""

    required_secrets = SECRET_NAMES

    markets: dict[str, str] = Field(
        default_factory=dict,
        description="Short names for markets: name -> condition id (0x...), so symbols read "
        "'rain-nyc/YES' instead of the condition id.",
    )
    chain_id: int = Field(137, description="Chain the orders are signed for (137: Polygon).")
    signature_type: Literal[0, 1, 2] = Field(
        0,
        description="0: the key's own wallet (EOA); 1: email/Magic proxy; 2: browser-wallet safe.",
    )
    funder: str | None = Field(
        None, description="Address holding the funds (proxy wallets, types 1 and 2)."
    )
    start_position: Literal["require_flat", "adopt"] = Field(
        "require_flat",
        description="Outcome tokens held when a run starts: require_flat refuses to start; "
        "adopt books them (balance, data API average price) as the opening position.",
    )
    data_url: str = Field(DATA_API, description="The data API (average prices at start).")
    gtd_seconds: float | None = Field(
        None,
        gt=60,
        le=31_536_000,
        description="Resting orders become GTD, expiring this long after they are sent "
        "(the venue needs more than 60 s); None: GTC.",
    )
    silence_timeout_s: float = Field(
        30.0,
        gt=0,
        le=315_360_000,
        description="We ping every ping_interval_s; a socket silent this long is down.",
    )
    ping_interval_s: float = Field(
        10.0, gt=0, le=3600, description="Text PING on each socket (the venue answers PONG)."
    )
    snapshot_check_s: float | None = Field(
        30.0,
        gt=0,
        le=315_360_000,
        description="Compare each LIVE book with a REST /book snapshot this often (None: never).",
    )
    resolution_poll_s: float | None = Field(
        60.0,
        gt=0,
        le=315_360_000,
        description="Ask the market endpoint this often whether a market resolved (None: never).",
    )
    rate_headroom: float = Field(0.8, gt=0, le=1, description="Share of each limit to use.")
    batch_orders: bool = Field(True, description="Send 2-15 new orders in one POST /orders.")
    heartbeat_interval_s: float | None = Field(
        None,
        gt=0,
        le=5,
        description="The venue's dead man's switch: send a heartbeat (POST /v1/heartbeats) "
        "this often from connect on. Once they have started, Polymarket cancels every open "
        "order of the account when none came for 10 s (a frozen host, a lost link). "
        "None: off.",
    )
    book_source: str = Field(
        "polymarket_clob",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="The registered book source (plugin kind book_source) of each token.",
    )

    @model_validator(mode="after")
    def _no_testnet(self) -> PolymarketParams:
        if self.testnet:
            raise ValueError(
                "Polymarket's CLOB has no test network here: set testnet: false and point "
                "rest_url, ws_url and private_ws_url at a PolymarketReplica for offline runs"
            )
        return self


@hookimpl
def quoteforge_register_book_sources(register: Register) -> None:
    register(
        "polymarket_clob",
        PolymarketBookSource,
        description="Polymarket market channel: book snapshots, price changes checked "
        "against the best bid/ask they carry, REST snapshots by hash.",
    )


class PolymarketClob(
    PolymarketEvents,
    PolymarketHeartbeats,
    PolymarketPositions,
    PolymarketReports,
    CcxtSpotAdapter,
):
    """Polymarket's CLOB: one market socket for every token's book and trades, one user
    socket for our orders and trades, REST for everything else. Not a ccxt venue: this
    adapter uses the shared base for sockets, tasks and order tracking only."""

    venue_id = "polymarket"
    params: PolymarketParams

    def __init__(self, params: PolymarketParams, ctx: VenueContext) -> None:
        super().__init__(params, ctx)
        self._api_key = ctx.secrets.get("api_key", "")
        self._api_secret = ctx.secrets.get("api_secret", "")
        self._private_key = ctx.secrets.get("private_key", "")
        self._passphrase = ctx.secrets.get("passphrase", "")
        self.signer: OrderSigner | None = None
        self.governor = PolymarketRateGovernor(ctx.clock, headroom=params.rate_headroom)
        self._make_source = book_source_factory(ctx, params.book_source)
        self.tokens: dict[str, OutcomeToken] = {}
        self._by_asset: dict[str, str] = {}
        self._sources: dict[str, PolymarketBookSource] = {}
        self.venue_tick: dict[str, Decimal] = {}
        self.held: dict[str, int] = {}
        self.resolved: dict[str, str] = {}
        self._market_ws: ManagedSocket | None = None
        self._user_ws: ManagedSocket | None = None
        self._user_ready = asyncio.Event()
        self._user_opens = 0
        self._subscribed_at: dict[str, float] = {}
        self._last_fill_s = 0
        self._opening = False
        self._heartbeat_id: str | None = None  # heartbeats.PolymarketHeartbeats
        self._heartbeat_path: str | None = None

    def __repr__(self) -> str:
        creds = "with credentials" if self.has_credentials else "public only"
        return f"PolymarketClob(name={self.name!r}, symbols={self.ctx.symbols!r}, {creds})"

    @property
    def has_credentials(self) -> bool:
        return all((self._private_key, self._api_key, self._api_secret, self._passphrase))

    @property
    def secret_keys(self) -> tuple[str, str]:  # type: ignore[override]
        return ("private_key", "api_key, api_secret and passphrase")

    # -- base hooks ------------------------------------------------------------------------
    @property
    def rest_base(self) -> str:
        return (self.params.rest_url or LIVE_REST).rstrip("/")

    def client_config(self) -> dict[str, Any]:
        return {}  # no ccxt client: REST goes through ``call``

    def classify_http_error(self, status: int, body: str) -> VenueCallError:
        return classify_error(status, body)

    def latency_endpoints(self) -> LatencyEndpoints:
        return LatencyEndpoints(f"{self.rest_base}/time", self.params.ws_url or LIVE_WS)

    def latency_order_wait_s(self, symbol: str) -> float:
        return max(self.governor.delay_for("POST /order"), self.governor.delay_for("DELETE /order"))

    async def connect(self, sink: Any) -> None:
        """Load the tokens and start the sockets (no ccxt client: this venue's REST is
        spoken here)."""
        async with self._closed_on_failure():
            self.sink = sink
            if self.has_credentials:
                self.signer = OrderSigner(
                    self._private_key,
                    ApiCredentials(self._api_key, self._api_secret, self._passphrase),
                    chain_id=self.params.chain_id,
                    signature_type=self.params.signature_type,
                    funder=self.params.funder,
                )
            elif any((self._private_key, self._api_key, self._api_secret, self._passphrase)):
                missing = [n for n in SECRET_NAMES if not self.ctx.secrets.get(n)]
                raise ValueError(
                    f"exchange {self.name!r}: trading needs all four secrets; missing {missing} "
                    "(give them under exchanges.<name>.secrets from environment variables)"
                )
            self.instruments = await self.load_instruments()
            await self.start_streams()
            if self.signer is not None and self.params.heartbeat_interval_s is not None:
                await self.start_heartbeats(self.params.heartbeat_interval_s)

    # -- REST ------------------------------------------------------------------------------
    async def call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        auth: bool = False,
        limit: str | None = None,
        raw_text: bool = False,
        base: str | None = None,
    ) -> Any:
        """One REST call; the decoded JSON answer (its text with ``raw_text``), or a
        classified ``VenueCallError``. ``limit`` names the rate-limit window to wait for
        (``"POST /order"``); every call counts against the general one."""
        import aiohttp

        try:
            await self.governor.acquire(limit or "", max_wait=self.params.max_rate_wait_s)
        except RateLimitError as exc:
            raise VenueCallError(
                "rate_limited", str(exc), retry_after_s=exc.retry_after_s
            ) from None
        text = None if body is None else json.dumps(body, separators=(",", ":"))
        headers = {"Content-Type": "application/json"} if text is not None else {}
        if auth:
            if self.signer is None:
                raise VenueCallError("auth", f"{self.name}: no API credentials")
            headers.update(self.signer.headers(method, path, text))
        timeout = aiohttp.ClientTimeout(total=self.params.request_timeout_s)
        try:
            async with self._get_session().request(
                method,
                (base or self.rest_base).rstrip("/") + path,
                params=query,
                data=text,
                headers=headers,
                timeout=timeout,
            ) as resp:
                raw = await resp.text()
                status = resp.status
                retry = resp.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise VenueCallError(
                "unknown", f"{method} {path}: no answer ({type(exc).__name__})"
            ) from None
        if status in (418, 429):
            wait = float(retry) if retry and retry.replace(".", "", 1).isdigit() else 1.0
            self.governor.on_retry_after(wait, banned=status == 418)
            raise VenueCallError("rate_limited", f"HTTP {status}", str(status), wait)
        if status >= 400:
            raise classify_error(status, raw)
        if raw_text:
            return raw
        if not raw:
            return None
        return json.loads(raw, parse_float=Decimal)

    async def load_instruments(self) -> dict[str, Instrument]:
        out: dict[str, Instrument] = {}
        wanted: dict[str, list[str]] = {}
        for symbol in self.ctx.symbols:
            alias, sep, outcome = symbol.rpartition("/")
            if not sep or not alias or not outcome:
                raise ValueError(
                    f"{self.name}: symbol {symbol!r} must be '<market>/<OUTCOME>', e.g. "
                    "'rain-nyc/YES' with rain-nyc in params.markets, or '0x<condition id>/NO'"
                )
            wanted.setdefault(alias, []).append(symbol)
        for alias, symbols in wanted.items():
            cid = self.params.markets.get(alias, alias)
            if not cid.startswith("0x"):
                raise ValueError(
                    f"{self.name}: market {alias!r} is neither a key of params.markets "
                    f"({sorted(self.params.markets) or 'none given'}) nor a condition id (0x...)"
                )
            data = await self.call("GET", f"/markets/{cid}")
            tokens, closed, _ = parse_market(alias, data or {})
            if closed:
                raise ValueError(f"{self.name}: market {alias!r} ({cid}) is closed")
            by_symbol = {t.symbol: t for t in tokens}
            for symbol in symbols:
                token = by_symbol.get(symbol)
                if token is None:
                    raise ValueError(
                        f"{self.name}: {symbol!r} names no outcome of {alias!r}; it has "
                        f"{sorted(by_symbol)}"
                    )
                # The token's current tick and neg-risk flag, as the official client
                # resolves them before signing (the market listing can lag a change).
                query = {"token_id": token.token_id}
                tick = await self.call("GET", "/tick-size", query=query)
                neg = await self.call("GET", "/neg-risk", query=query)
                token = dataclasses.replace(
                    token,
                    tick_size=Decimal(str(tick["minimum_tick_size"])).normalize(),
                    neg_risk=bool(neg["neg_risk"]),
                )
                self.tokens[symbol] = token
                self._by_asset[token.token_id] = symbol
                self.venue_tick[symbol] = token.tick_size
                out[symbol] = Instrument(
                    venue=self.name,
                    symbol=symbol,
                    base=symbol,
                    quote="USDC",
                    tick_size=token.tick_size,
                    lot_size=TOKEN_UNIT,
                    qty_step=QTY_STEP,
                    min_qty=token.min_size,
                    kind=InstrumentKind.BINARY,
                    maker_fee=Decimal(token.maker_fee_bps) / 10_000,
                    taker_fee=Decimal(token.taker_fee_bps) / 10_000,
                    complement=token.complement,
                )
        return out

    # -- market channel --------------------------------------------------------------------
    async def start_streams(self) -> None:
        self._sources.update(
            self._open_book_sources(
                self._make_source,
                self._on_resync,
                lambda s: {"asset_id": self.tokens[s].token_id},
            )
        )
        self._market_ws = self._spawn_socket(
            "market",
            lambda: self.params.ws_url or LIVE_WS,
            self._on_market_open,
            self._on_market_text,
            self._on_market_down,
        )
        self.spawn_task(self._keepalive(), f"{self.name}/ping")
        self.spawn_task(self._snapshot_watchdog(), f"{self.name}/snapshot-watchdog")
        if self.params.snapshot_check_s is not None:
            self.spawn_task(self._snapshot_checks(), f"{self.name}/snapshot-check")
        if self.params.resolution_poll_s is not None:
            self.spawn_task(self._resolution_polls(), f"{self.name}/resolution")
        if self.has_credentials:
            self._user_ws = self._spawn_socket(
                "user",
                lambda: self.params.private_ws_url or LIVE_WS_USER,
                self._on_user_open,
                self._on_user_text,
                self._on_user_down,
            )
            await self._await_ready(self._user_ready, "user channel")

    def _subscription(self, symbols: list[str], operation: str | None) -> str:
        ids = [self.tokens[s].token_id for s in symbols]
        if operation is None:
            return json.dumps({"assets_ids": ids, "type": "market", "custom_feature_enabled": True})
        if operation == "subscribe":
            now = time.monotonic()
            for symbol in symbols:
                self._subscribed_at[symbol] = now
        return json.dumps({"assets_ids": ids, "operation": operation})

    async def _on_market_open(self, sock: ManagedSocket) -> None:
        symbols = [s for s, src in self._sources.items() if not src.halted]
        if sock.connects > 1:
            self._opening = True  # the subscription below brings the fresh books
            try:
                for symbol in symbols:
                    self._sources[symbol].reconnected(f"reconnected after: {sock.last_reason}")
            finally:
                self._opening = False
            # A market that resolved while the socket was down told nobody: ask.
            self.spawn_task(self._confirm_resolution(), f"{self.name}/resolution")
        now = time.monotonic()
        for symbol in symbols:
            self._subscribed_at[symbol] = now
        await sock.send(self._subscription(symbols, None))

    def _on_market_down(self, reason: str) -> None:
        for source in self._sources.values():
            source.feed_down(f"market socket down: {reason}")

    def _on_resync(self, source: BookSource, reason: str) -> None:
        sock = self._market_ws
        halted: str = getattr(source, "halted", "")
        if self._opening or sock is None or not sock.is_up or halted:
            return  # a reconnect subscribes afresh
        symbol = source.book.symbol

        async def resubscribe() -> None:
            try:
                await sock.send(self._subscription([symbol], "unsubscribe"))
                await sock.send(self._subscription([symbol], "subscribe"))
            except (ConnectionError, RuntimeError) as exc:
                logger.warning("{}: resubscribe {} failed ({})", self.name, symbol, exc)

        self.spawn_task(resubscribe(), f"{self.name}/resubscribe/{symbol}")

    async def _keepalive(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.params.ping_interval_s)
            for sock in (self._market_ws, self._user_ws):
                if sock is not None and sock.is_up:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await sock.send("PING")

    async def _snapshot_watchdog(self) -> None:
        every = self.params.silence_timeout_s
        while not self._closed:
            await asyncio.sleep(every / 2)
            sock = self._market_ws
            if sock is None or not sock.is_up:
                continue
            now = time.monotonic()
            for symbol, source in self._sources.items():
                since = self._subscribed_at.get(symbol, now)
                if source.needs_snapshot and not source.halted and now - since > every:
                    self._subscribed_at[symbol] = now
                    self._on_resync(source, "snapshot overdue")

    async def _snapshot_checks(self) -> None:
        every = self.params.snapshot_check_s or 30.0
        while not self._closed:
            await asyncio.sleep(every)
            for symbol, source in list(self._sources.items()):
                try:
                    text = await self.call(
                        "GET",
                        "/book",
                        query={"token_id": self.tokens[symbol].token_id},
                        limit="GET /book",
                        raw_text=True,
                    )
                except VenueCallError as exc:
                    logger.info("{}: snapshot check of {} failed: {}", self.name, symbol, exc)
                    continue
                try:
                    summary = json.loads(text)
                    if isinstance(summary, dict) and self.tap is not None:
                        self._tap_raw("polymarket:book", text, time.time_ns())
                    source.compare_snapshot(summary)
                except (ValueError, RecursionError) as exc:  # BookMessageError is a ValueError
                    logger.warning(
                        "{}: snapshot check of {} skipped, malformed REST /book answer: {}",
                        self.name,
                        symbol,
                        str(exc)[:300],
                    )

    # -- orders ----------------------------------------------------------------------------
    def order_body(self, tracked: TrackedOrder) -> dict[str, Any]:
        """The ``POST /order`` body of ``tracked``, signed once: a resend sends the same
        order, so the venue sees the same order id."""
        body = tracked.extra.get("body")
        if body is not None:
            return body
        order = tracked.order
        symbol = order.symbol
        if symbol in self.resolved or self._sources[symbol].halted:
            raise VenueCallError("rejected", f"{symbol}: {self._sources[symbol].halted}")
        token = self.tokens[symbol]
        inst = tracked.instrument
        venue_tick = self.venue_tick[symbol]
        if order.order_type is OrderType.MARKET:
            # A marketable limit at the end of the range, filled and killed (FAK).
            price = venue_tick if order.side is Side.SELL else 1 - venue_tick
        else:
            assert order.price_ticks is not None
            price = inst.ticks_to_price(order.price_ticks)
        if price % venue_tick:
            raise VenueCallError(
                "rejected", f"price {price} is off the venue's tick {venue_tick} for {symbol}"
            )
        kind, post_only, expiration = "GTC", False, 0
        tif = order.tif
        if order.order_type is OrderType.MARKET or tif is TimeInForce.IOC:
            kind = "FOK" if order.extra.get("time_in_force") == "FOK" else "FAK"
        elif self.params.gtd_seconds is not None:
            kind = "GTD"
            expiration = int(time.time() + self.params.gtd_seconds)
        if tif is TimeInForce.POST_ONLY:
            post_only = True
        assert self.signer is not None
        try:
            signed, order_id = self.signer.sign(
                token_id=token.token_id,
                side=order.side,
                price=price,
                size=inst.lots_to_qty(order.qty_lots),
                tick_size=venue_tick,
                neg_risk=token.neg_risk,
                fee_rate_bps=token.taker_fee_bps,
                expiration=expiration,
            )
        except ValueError as exc:
            raise VenueCallError("rejected", str(exc)) from None
        body = {
            "order": signed,
            "owner": self.signer.api_key,
            "orderType": kind,
            "postOnly": post_only,
        }
        tracked.extra["body"] = body
        tracked.exchange_id = order_id
        self.remember(order_id, tracked.client_id)
        # The hash goes to the run (so to its journal) before the order is sent: a process
        # that dies before the venue answers leaves an order its resume knows as ours.
        now = self.clock.now_ns()
        self._emit_update(OrderUpdate(self.name, order.client_id, _NEW, now, exchange_id=order_id))
        return body

    async def send_place(self, order: TrackedOrder) -> None:
        body = self.order_body(order)
        answer = await self.call("POST", "/order", body=body, auth=True, limit="POST /order")
        self._placed(order, answer if isinstance(answer, dict) else {})

    def _placed(self, order: TrackedOrder, answer: dict[str, Any]) -> None:
        if not answer.get("success", False):
            error = str(answer.get("errorMsg") or "refused")
            if "DUPLICATE" in error.upper():
                raise VenueCallError("unknown", f"the venue has this order already ({error})")
            raise VenueCallError("rejected", error)
        status = ORDER_STATUS.get(str(answer.get("status", "")).upper(), OrderStatus.OPEN)
        if status is OrderStatus.PENDING_NEW:
            return  # delayed: the user channel (or a lookup) says what became of it
        filled = self.matched_lots(order, answer)
        if status is OrderStatus.FILLED and filled < order.order.qty_lots:
            ioc = order.order.order_type is OrderType.MARKET or order.order.tif is TimeInForce.IOC
            status = OrderStatus.EXPIRED if ioc else OrderStatus.PARTIALLY_FILLED
        order.placed_ns = self.clock.now_ns()
        self._emit_update(
            OrderUpdate(
                self.name,
                order.client_id,
                status,
                self.clock.now_ns(),
                exchange_id=order.exchange_id,
                filled_lots=filled or None,
                price_ticks=order.order.price_ticks,
                qty_lots=order.order.qty_lots,
            )
        )

    @staticmethod
    def matched_lots(order: TrackedOrder, answer: dict[str, Any]) -> int:
        """Shares matched on arrival, from the answer's amounts (buys take shares, sells
        make them)."""
        key = "takingAmount" if order.order.side is Side.BUY else "makingAmount"
        text = str(answer.get(key) or "0")
        try:
            return order.instrument.qty_to_lots(plain(text))
        except ValueError:
            return 0

    async def send_cancel(self, order: TrackedOrder) -> None:
        if not order.exchange_id:
            raise VenueCallError("not_found", "never acknowledged by the venue")
        answer = await self.call(
            "DELETE",
            "/order",
            body={"orderID": order.exchange_id},
            auth=True,
            limit="DELETE /order",
        )
        canceled = set((answer or {}).get("canceled") or [])
        if order.exchange_id not in canceled:
            why = ((answer or {}).get("not_canceled") or {}).get(order.exchange_id, "not cancelled")
            raise VenueCallError("not_found", str(why))
        self.report_cancelled(order)

    async def send_cancel_all(self, symbol: str) -> None:
        token = self.tokens[symbol]
        answer = await self.call(
            "DELETE",
            "/cancel-market-orders",
            body={"market": token.condition_id, "asset_id": token.token_id},
            auth=True,
        )
        self._cancelled(set((answer or {}).get("canceled") or []))

    async def cancel_all(self, symbol: str | None = None) -> None:
        """Cancel every order of ours: one ``DELETE /cancel-all`` for the whole account,
        or the token's orders (``DELETE /cancel-market-orders``) with a symbol."""
        if symbol is not None:
            self.submit([CancelAll(self.name, symbol)])
            return
        answer = await self.call("DELETE", "/cancel-all", auth=True)
        self._cancelled(set((answer or {}).get("canceled") or []))

    def _cancelled(self, ids: set[str]) -> None:
        for tracked in list(self._orders.values()):
            if tracked.exchange_id in ids and not tracked.status.is_terminal:
                self.report_cancelled(tracked)

    # -- batches ---------------------------------------------------------------------------
    def submit(self, actions: Sequence[OrderAction]) -> None:
        places = [
            a
            for a in actions
            if isinstance(a, PlaceOrder)
            and a.order.client_id not in self._chains
            and a.order.symbol in self.instruments
        ]
        if not self.params.batch_orders or len(places) < 2:
            super().submit(actions)
            return
        rest = [a for a in actions if not any(a is p for p in places)]
        for i in range(0, len(places), BATCH_MAX):
            chunk = places[i : i + BATCH_MAX]
            if len(chunk) < 2:
                rest.extend(chunk)
                continue
            task = self.spawn_task(self._run_batch([p.order for p in chunk]), f"{self.name}/batch")
            for place in chunk:
                self._chains[place.order.client_id] = task
            task.add_done_callback(
                functools.partial(self._unchain, tuple(p.order.client_id for p in chunk))
            )
        if rest:
            super().submit(rest)

    async def _run_batch(self, orders: list[Any]) -> None:
        tracked = [t for t in (self._track(o) for o in orders) if t is not None]
        ready: list[TrackedOrder] = []
        for t in tracked:
            try:
                self.order_body(t)
                ready.append(t)
            except VenueCallError as exc:
                self._reject(t, str(exc))
        if not ready:
            return
        try:
            answers = await self._with_rate_retry(
                lambda: self.call(
                    "POST",
                    "/orders",
                    body=[self.order_body(t) for t in ready],
                    auth=True,
                    limit="POST /orders",
                )
            )
        except VenueCallError as exc:
            for t in ready:
                if exc.kind == "unknown":
                    await self._resolve_unknown(t, str(exc))
                else:
                    self._reject(t, f"batch: {exc}")
            return
        for t, answer in zip(ready, answers or [], strict=False):
            try:
                self._placed(t, answer if isinstance(answer, dict) else {})
            except VenueCallError as exc:
                if exc.kind == "unknown":
                    await self._resolve_unknown(t, str(exc))
                else:
                    self._reject(t, str(exc))

    def _reject(self, tracked: TrackedOrder, reason: str) -> None:
        self.counters["rejected"] += 1
        self._emit_update(
            OrderUpdate(
                self.name,
                tracked.client_id,
                OrderStatus.REJECTED,
                self.clock.now_ns(),
                reason=reason,
            )
        )

    # -- user channel ----------------------------------------------------------------------
    async def _on_user_open(self, sock: ManagedSocket) -> None:
        markets = sorted({t.condition_id for t in self.tokens.values()})
        await sock.send(
            json.dumps(
                {
                    "auth": {
                        "apiKey": self._api_key,
                        "secret": self._api_secret,
                        "passphrase": self._passphrase,
                    },
                    "markets": markets,
                    "type": "user",
                }
            )
        )
        self._user_opens += 1
        if self._user_opens > 1:
            self.spawn_task(self.reconcile_orders(), f"{self.name}/reconcile")
        self._user_ready.set()

    def _on_user_down(self, reason: str) -> None:
        logger.info("{}: user channel down ({})", self.name, reason)

    async def reconcile_orders(self) -> None:
        """Look every working order up, then book the trades the user channel missed."""
        await super().reconcile_orders()
        fills = await self.fetch_fills(max(0, self._last_fill_s - 60) * 1_000_000_000)
        for fill in fills:
            self.deliver_fill(fill)


create_polymarket = VenueFactory(PolymarketParams, PolymarketClob)
"""Factory the registry calls with the manifest's params and the run context."""


@hookimpl
def quoteforge_register_exchanges(register: Any) -> None:
    create_polymarket.register(
        register,
        "polymarket",
        description="Polymarket CLOB binary outcome tokens (REST, market and user channels).",
        requires=("py_clob_client", "aiohttp"),
    )
