"""Any venue ccxt supports (``type: ccxt``): ccxt's unified REST API for markets,
orders, lookups and balances, and ccxt.pro's ``watch_*`` websockets for books, trades,
order reports and our fills, mapped onto the kernel's contracts.

The order half (sequencing per client id, rate-limit retry, look-up by client id before
any resend) is the shared ``OrderTracking`` of the dedicated adapters; the streams are in
``quoteforge.exchanges.ccxt.streams``. ``docs/venues/ccxt.md`` says what is
checked for which venue, and when a dedicated adapter is the better choice.
"""

from __future__ import annotations

import contextvars
import functools
import random
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from loguru import logger
from pydantic import Field, field_validator, model_validator

from quoteforge import hookimpl
from quoteforge.book import BookState, L2Book
from quoteforge.exchange import VenueContext, VenueSink
from quoteforge.exchanges.ccxt.feeds import client_id_of, order_status_of
from quoteforge.exchanges.ccxt.streams import CcxtStreams
from quoteforge.exchanges.ccxt.venues import (
    CHECKED_VENUES,
    CheckedVenue,
    MarketGridError,
    ccxt_venues_main,
    grid_units,
    instrument_from_market,
    resolve_exchange_id,
)
from quoteforge.exchanges.ccxt_base import (
    API_KEY_SECRETS,
    CcxtSpotAdapter,
    CcxtSpotParams,
    TrackedOrder,
    VenueCallError,
    VenueFactory,
    require_ccxt,
    watch_ccxt_client,
)
from quoteforge.model import (
    Fill,
    Instrument,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
)

__all__ = [
    "CcxtParams",
    "CcxtVenue",
    "create_ccxt",
    "quoteforge_register_commands",
    "quoteforge_register_exchanges",
]

_response: contextvars.ContextVar[tuple[int, dict[str, str]] | None] = contextvars.ContextVar(
    "quoteforge_ccxt_response", default=None
)


class CcxtParams(CcxtSpotParams):
    """Parameters of ``type: ccxt``. Secrets ``api_key`` and ``api_secret`` (and
    ``password``/``uid`` where the venue needs them) come from the run's secrets."""

    required_secrets = API_KEY_SECRETS
    optional_secrets = ("password", "uid")

    exchange: str = Field(
        ..., min_length=1, description="The ccxt exchange id, e.g. binance, kraken, bybit, okx."
    )
    urls: dict[str, Any] = Field(
        default_factory=dict,
        description="Deep-merged into ccxt's urls, e.g. {api: {public: http://127.0.0.1:PORT}} "
        "to reach a local replica.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="ccxt options for the exchange (deep-merged)."
    )
    book_depth: int | None = Field(
        100,
        ge=1,
        description="Levels per side to subscribe to and keep (None: ccxt's default, e.g. "
        "1000 on Binance); each update costs a compare of every kept level.",
    )
    public_trades: bool = Field(True, description="Watch the venue's public trades.")
    rate_limit_ms: float | None = Field(
        None,
        gt=0,
        le=60_000,
        description="ccxt's rateLimit: milliseconds between requests of cost 1 (None: ccxt's "
        "value for the venue, e.g. 1000 for Kraken, 50 for Binance).",
    )
    poll_interval_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="Period of the REST polling that stands in for a watch_* the venue lacks.",
    )

    @field_validator("exchange")
    @classmethod
    def _known_exchange(cls, value: str) -> str:
        return resolve_exchange_id(value)

    def secret_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The key pair, and the secrets a checked venue also needs (OKX's password)."""
        profile = CHECKED_VENUES.get(self.exchange)
        more = profile.secrets if profile else ()
        required = (*API_KEY_SECRETS, *more)
        return required, tuple(k for k in self.optional_secrets if k not in required)

    @model_validator(mode="after")
    def _no_native_urls(self) -> CcxtParams:
        given = [k for k in ("rest_url", "ws_url", "private_ws_url") if getattr(self, k)]
        if given:
            raise ValueError(
                f"type ccxt takes no {', '.join(given)}: give urls instead, deep-merged into "
                "ccxt's own (e.g. urls: {api: {public: http://127.0.0.1:8080/api/v3}})"
            )
        return self


@hookimpl
def quoteforge_register_commands(register: Any) -> None:
    register(
        "ccxt-venues",
        ccxt_venues_main,
        help="list the ccxt exchanges type: ccxt has been checked against, and how",
    )


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class CcxtVenue(CcxtSpotAdapter):
    """One venue through ccxt. Two ccxt clients: ``market_client`` (public streams,
    no keys, so forcing it to reconnect never touches order entry) and
    ``trade_client`` (keys: REST orders, lookups, balances and the private streams);
    both share one market list."""

    venue_id = "ccxt"
    params: CcxtParams

    def __init__(self, params: CcxtParams, ctx: VenueContext) -> None:
        super().__init__(params, ctx)
        self.ccxt_id = params.exchange
        self.profile: CheckedVenue | None = CHECKED_VENUES.get(params.exchange)
        if self.profile is None:
            logger.warning(
                "{}: ccxt exchange {!r} has not been checked by quoteforge (checked: {}); it "
                "runs through ccxt's unified API as ccxt implements it: try it on the venue's "
                "test network first (docs/venues/ccxt.md)",
                ctx.name,
                params.exchange,
                ", ".join(sorted(CHECKED_VENUES)),
            )
        self._password = ctx.secrets.get("password", "")
        self._uid = ctx.secrets.get("uid", "")
        self.market_client: Any = None
        self.trade_client: Any = None
        self.ccxt_symbol: dict[str, str] = {}  # our symbol -> ccxt unified symbol
        self.our_symbol: dict[str, str] = {}  # ccxt unified symbol -> our symbol
        self.by_exchange_id: dict[str, str] = {}  # venue order id -> client id
        self.from_venue_client_id: dict[str, str] = {}  # as sent -> ours (venue_client_id)
        self.has: dict[str, Any] = {}
        self.filled_by_fills: dict[str, int] = {}  # client id -> lots of its fills seen
        self.streams = CcxtStreams(self)

    # -- clients -----------------------------------------------------------------------------
    def client_config(self) -> dict[str, Any]:
        options = _deep_merge(self.profile.options if self.profile else {}, self.params.options)
        config: dict[str, Any] = {
            # ccxt's own limiter paces every request by the venue's documented rate and
            # per-endpoint cost (docs/venues/ccxt.md says why not the kernel's governor).
            "enableRateLimit": True,
            "timeout": int(self.params.request_timeout_s * 1000),
            "newUpdates": True,
            "options": options,
        }
        if self.params.urls:
            config["urls"] = self.params.urls
        if self.profile and self.profile.has:
            config["has"] = dict(self.profile.has)
        if self.params.rate_limit_ms is not None:
            config["rateLimit"] = self.params.rate_limit_ms
        return config

    def make_client(self, *, private: bool) -> Any:
        """A ccxt.pro client (or a REST-only ccxt client for a venue ccxt.pro lacks)."""
        ccxt_async = require_ccxt()
        try:
            import ccxt.pro as ccxt_pro
        except ModuleNotFoundError:  # pragma: no cover - ccxt ships pro since 4.0
            ccxt_pro = None
        cls = getattr(ccxt_pro, self.ccxt_id, None) if ccxt_pro is not None else None
        if cls is None:
            cls = getattr(ccxt_async, self.ccxt_id)
        config = self.client_config()
        if private and self.has_credentials:
            config.update(apiKey=self._api_key, secret=self._api_secret)
            if self._password:
                config["password"] = self._password
            if self._uid:
                config["uid"] = self._uid
        client = cls(config)
        if self.params.testnet:
            try:
                if not (client.urls or {}).get("test"):
                    raise ccxt_async.NotSupported("no test urls")
                client.set_sandbox_mode(True)
            except (ccxt_async.NotSupported, TypeError, KeyError):
                raise ValueError(
                    f"{self.name}: ccxt has no test network for {self.ccxt_id!r}; set "
                    "testnet: false (and point urls at a replica for offline runs)"
                ) from None

        def on_response(status: int, headers: dict[str, str], body: str) -> None:
            _response.set((status, headers))

        watch_ccxt_client(client, f"quoteforge.exchanges.ccxt.{self.ccxt_id}", on_response)
        return client

    async def connect(self, sink: VenueSink) -> None:
        async with self._closed_on_failure():
            self.sink = sink
            self.trade_client = self.make_client(private=True)
            self._client = self.trade_client  # closed by the base's close()
            self.market_client = self.make_client(private=False)
            self.has = dict(self.trade_client.has)
            if not self.has.get("fetchMarkets"):
                raise ValueError(
                    f"{self.name}: ccxt's {self.ccxt_id} cannot fetchMarkets, so quoteforge "
                    "cannot learn its tick and step sizes; this venue needs a dedicated adapter"
                )
            self.instruments = await self._read_patiently(self.load_instruments, "the markets")
            self.market_client.set_markets(self.trade_client.markets, self.trade_client.currencies)
            await self.check_keys()
            await self.start_streams()

    async def check_keys(self) -> None:
        """With keys, one signed read (the balance) before any stream starts: keys the
        venue refuses stop the start here, with its reason."""
        if not self.has_credentials or not self.has.get("fetchBalance"):
            return
        try:
            await self._read_patiently(
                functools.partial(self.call, self.trade_client.fetch_balance), "the balance"
            )
        except VenueCallError as exc:
            if exc.kind != "auth":
                raise
            raise VenueCallError(
                "auth",
                f"{self.name}: {self.ccxt_id} refused the API keys ({exc.message}); check the "
                "secrets (api_key, api_secret and, where the venue has one, password)",
                exc.code,
            ) from None

    async def start_streams(self) -> None:
        await self.streams.start()

    async def close(self) -> None:
        await self.streams.stop()
        if self.market_client is not None:
            try:
                await self.market_client.close()
            except Exception:
                logger.debug("{}: closing the market client failed", self.name)
        await super().close()

    async def load_instruments(self) -> dict[str, Instrument]:
        await self.call(self.trade_client.load_markets)
        client = self.trade_client
        out: dict[str, Instrument] = {}
        for symbol in self.ctx.symbols:
            market = client.markets.get(symbol)
            if market is None:
                by_id = (client.markets_by_id or {}).get(symbol)
                market = by_id[0] if isinstance(by_id, list) and by_id else by_id
            if market is None:
                import difflib

                close = difflib.get_close_matches(symbol, list(client.markets), n=3)
                hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise ValueError(
                    f"{self.name}: {self.ccxt_id} has no market {symbol!r}{hint} "
                    "(give ccxt's unified symbol, e.g. BTC/USDT, or the venue's market id)"
                )
            try:
                out[symbol] = instrument_from_market(
                    self.name, symbol, market, int(client.precisionMode)
                )
            except MarketGridError as exc:
                raise ValueError(str(exc)) from None
            self.ccxt_symbol[symbol] = market["symbol"]
            self.our_symbol[market["symbol"]] = symbol
        return out

    def classify_http_error(self, status: int, body: str) -> VenueCallError:
        kind = "unknown" if status >= 500 or status == 0 else "rejected"
        return VenueCallError(kind, f"HTTP {status}: {body[:200]}", str(status))

    async def sync_time(self) -> None:
        client = self.trade_client
        if client is None or not client.has.get("fetchTime"):
            return
        try:
            await client.load_time_difference()
            self.counters["time_syncs"] += 1
        except Exception as exc:
            logger.warning("{}: time sync failed: {}", self.name, exc)

    # -- calls -------------------------------------------------------------------------------
    async def call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """One ccxt call; its failure becomes a ``VenueCallError`` classified by what it
        tells about the order: refused (rejected, auth, not_found), not done (rate_limited,
        clock) or maybe done (unknown)."""
        ccxt_async = require_ccxt()
        _response.set(None)
        try:
            return await method(*args, **kwargs)
        except ccxt_async.BaseError as exc:
            raise self.classify(exc) from None
        except (TimeoutError, OSError) as exc:
            raise VenueCallError("unknown", f"no answer: {type(exc).__name__}") from None

    def classify(self, exc: Exception) -> VenueCallError:
        e = require_ccxt()
        text = f"{type(exc).__name__}: {str(exc)[:300]}"
        if isinstance(exc, e.DDoSProtection):  # RateLimitExceeded is one
            last = _response.get()
            headers = {k.lower(): v for k, v in (last[1] if last else {}).items()}
            try:
                wait = float(headers.get("retry-after", "1"))
            except ValueError:
                wait = 1.0
            code = str(last[0]) if last else ""
            return VenueCallError("rate_limited", text, code, max(wait, 0.05))
        if isinstance(exc, e.InvalidNonce):
            return VenueCallError("clock", text)
        if isinstance(exc, e.OrderNotFound):
            return VenueCallError("not_found", text)
        if isinstance(exc, e.AuthenticationError | e.PermissionDenied | e.AccountSuspended):
            return VenueCallError("auth", text)
        last = _response.get()
        status = last[0] if last else 0
        # OperationFailed (NetworkError and the venue's "try again" errors), an answer
        # ccxt could not read, or a 5xx: the order may or may not exist.
        if isinstance(exc, e.OperationFailed | e.BadResponse | e.NullResponse) or status >= 500:
            return VenueCallError("unknown", text, str(status or ""))
        return VenueCallError("rejected", text, str(status or ""))

    # -- orders --------------------------------------------------------------------------------
    def order_params(self, tracked: TrackedOrder, client_id: str) -> dict[str, Any]:
        params: dict[str, Any] = {"clientOrderId": self.venue_client_id(client_id)}
        tif = tracked.order.tif
        if tif is TimeInForce.POST_ONLY:
            params["postOnly"] = True
        elif tif is TimeInForce.IOC:
            params["timeInForce"] = "IOC"
        return params

    def _order_args(self, tracked: TrackedOrder) -> tuple[str, str, str, str, str | None]:
        o = tracked.order
        market = o.order_type is OrderType.MARKET
        kind = "market" if market else "limit"
        price = None if market else tracked.price_text()
        side = "buy" if o.side is Side.BUY else "sell"
        return self.ccxt_symbol[o.symbol], kind, side, tracked.qty_text(), price

    async def send_place(self, order: TrackedOrder) -> None:
        if not self.has.get("createOrder"):
            raise VenueCallError("rejected", f"ccxt's {self.ccxt_id} cannot createOrder")
        symbol, kind, side, qty, price = self._order_args(order)
        result = await self.call(
            self.trade_client.create_order,
            symbol,
            kind,
            side,
            qty,
            price,
            self.order_params(order, order.client_id),
        )
        self.report_order(order, result)

    async def send_cancel(self, order: TrackedOrder) -> None:
        symbol = self.ccxt_symbol[order.symbol]
        if order.exchange_id:
            result = await self.call(self.trade_client.cancel_order, order.exchange_id, symbol)
        else:
            result = await self.call(
                self.trade_client.cancel_order,
                "",
                symbol,
                {"clientOrderId": self.venue_client_id(order.client_id)},
            )
        if isinstance(result, dict) and result.get("status") is not None:
            self.report_order(order, result)
        elif not self.has.get("watchOrders"):
            # The answer says only that it is done (Kraken: a count): ask for the order,
            # whose fills the cancel report must carry.
            update = await self._lookup_quietly(order)
            self._emit(
                update
                or self.update_from_order(
                    {}, order.client_id, order.instrument, OrderStatus.CANCELLED
                )
            )
        # else: the private stream reports the cancel with the order's fills.

    async def send_replace(self, old: TrackedOrder, new: TrackedOrder) -> None:
        profile = self.profile
        if not (
            profile and profile.edit_replaces and old.exchange_id and self.has.get("editOrder")
        ):
            await super().send_replace(old, new)
            return
        symbol, kind, side, qty, price = self._order_args(new)
        params = self.order_params(new, new.client_id)
        if profile.edit_old_client_id_param:
            params[profile.edit_old_client_id_param] = old.client_id
        try:
            result = await self.call(
                self.trade_client.edit_order,
                old.exchange_id,
                symbol,
                kind,
                side,
                qty,
                price,
                params,
            )
        except VenueCallError as exc:
            logger.info("{}: edit_order failed ({}); cancel then place", self.name, exc)
            await super().send_replace(old, new)
            return
        self._emit(
            OrderUpdate(self.name, old.client_id, OrderStatus.CANCELLED, self.clock.now_ns())
        )
        self.report_order(new, result)

    async def send_cancel_all(self, symbol: str) -> None:
        if self.has.get("cancelAllOrders"):
            result = await self.call(self.trade_client.cancel_all_orders, self.ccxt_symbol[symbol])
            # Venues that answer with the cancelled orders (Binance) confirm them now, as a
            # single cancel's answer does; the private stream's reports come again after.
            for row in result if isinstance(result, list) else ():
                if not isinstance(row, dict) or row.get("status") is None:
                    continue
                tracked = self._orders.get(self.client_id_for(row) or "")
                if tracked is not None and tracked.symbol == symbol:
                    self.report_order(tracked, row)
            return
        for tracked in list(self._orders.values()):
            if tracked.symbol == symbol and not tracked.status.is_terminal:
                await self._cancel_checked(tracked)

    def report_order(
        self,
        tracked: TrackedOrder,
        result: Any,
        default: OrderStatus = OrderStatus.OPEN,
    ) -> None:
        """Report what a REST answer says of one of our orders."""
        if not isinstance(result, dict):
            result = {}
        exchange_id = result.get("id")
        if exchange_id:
            self.by_exchange_id[str(exchange_id)] = tracked.client_id
        update = self.update_from_order(result, tracked.client_id, tracked.instrument, default)
        self._emit(update)

    def update_from_order(
        self,
        order: dict[str, Any],
        client_id: str,
        instrument: Instrument,
        default: OrderStatus = OrderStatus.OPEN,
        symbol: str = "",
    ) -> OrderUpdate:
        if order.get("status") is None:
            status, filled = default, None
        else:
            try:
                status, filled = order_status_of(order, instrument)
            except MarketGridError as exc:
                logger.warning("{}: order {}: {}", self.name, client_id, exc)
                status, filled = default, None
        price_ticks = qty_lots = None
        try:
            if order.get("price"):
                price_ticks = grid_units(order["price"], float(instrument.tick_size), "price")
            if order.get("amount"):
                qty_lots = grid_units(order["amount"], float(instrument.lot_size), "amount")
        except MarketGridError:
            pass
        exchange_id = order.get("id")
        return OrderUpdate(
            self.name,
            client_id,
            status,
            self.clock.now_ns(),
            exchange_id=str(exchange_id) if exchange_id else None,
            filled_lots=filled,
            price_ticks=price_ticks,
            qty_lots=qty_lots,
            symbol=symbol,
        )

    def venue_client_id(self, client_id: str) -> str:
        """Our client id as the venue takes it: unchanged, or (a venue that takes only
        letters and digits, OKX) without other characters and cut to its length; the
        reports map back."""
        pattern = self.profile.client_id_pattern if self.profile else None
        if pattern is None or re.fullmatch(pattern[0], client_id):
            return client_id
        venue_id = re.sub(pattern[1], "", client_id)[-pattern[2] :]
        self.from_venue_client_id[venue_id] = client_id
        return venue_id

    def know_orders(self, orders: Iterable[Order]) -> None:
        """Orders of an earlier life of the run, handed over at a resume: a venue whose
        trades name the order by its own id only then still tells ours."""
        for order in orders:
            if order.exchange_id:
                self.by_exchange_id.setdefault(order.exchange_id, order.client_id)

    def client_id_for(self, item: dict[str, Any], order_id_key: str = "id") -> str | None:
        """Our client id for a ccxt order (``order_id_key="id"``) or trade (``"order"``):
        by the venue's order id we were given, else the client id the venue echoes."""
        venue_id = item.get(order_id_key)
        if venue_id is not None and str(venue_id) in self.by_exchange_id:
            return self.by_exchange_id[str(venue_id)]
        cid = client_id_of(item)
        if cid is not None:
            cid = self.from_venue_client_id.get(cid, cid)
        if cid and venue_id is not None:
            self.by_exchange_id[str(venue_id)] = cid
        return cid

    async def lookup_order(self, order: TrackedOrder) -> OrderUpdate | None:
        symbol = self.ccxt_symbol[order.symbol]
        client = self.trade_client
        lookup = self.profile.lookup if self.profile else "open_closed"
        if lookup == "fetch_order" and self.has.get("fetchOrder"):
            try:
                found = await self.call(
                    client.fetch_order,
                    order.exchange_id or "",
                    symbol,
                    {}
                    if order.exchange_id
                    else {"clientOrderId": self.venue_client_id(order.client_id)},
                )
            except VenueCallError as exc:
                if exc.kind == "not_found":
                    return None
                raise
            return self.report_lookup(order, found)
        candidates: list[Any] = []
        if self.has.get("fetchOpenOrders"):
            candidates = await self.call(client.fetch_open_orders, symbol)
        match = self.match_order(order, candidates)
        if match is None and self.has.get("fetchClosedOrders"):
            since = order.placed_ns // 1_000_000 - 60_000 if order.placed_ns else None
            candidates = await self.call(client.fetch_closed_orders, symbol, since)
            match = self.match_order(order, candidates)
        return None if match is None else self.report_lookup(order, match)

    def match_order(self, order: TrackedOrder, candidates: list[Any]) -> dict[str, Any] | None:
        for cand in candidates or []:
            if (order.exchange_id and str(cand.get("id")) == order.exchange_id) or (
                client_id_of(cand) == self.venue_client_id(order.client_id)
            ):
                return dict(cand)
        return None

    def report_lookup(self, order: TrackedOrder, found: dict[str, Any]) -> OrderUpdate:
        if found.get("id"):
            self.by_exchange_id[str(found["id"])] = order.client_id
        return self.update_from_order(found, order.client_id, order.instrument)

    # -- reconciliation (REST is the truth) ------------------------------------------------------
    async def fetch_open_orders(self) -> list[OrderUpdate] | None:
        self.require_credentials("open orders")
        if not self.has.get("fetchOpenOrders"):
            return None
        out: list[OrderUpdate] = []
        for symbol, unified in self.ccxt_symbol.items():
            rows = await self.call(self.trade_client.fetch_open_orders, unified)
            for row in rows:
                cid = self.client_id_for(row)
                if cid:
                    out.append(
                        self.update_from_order(row, cid, self.instruments[symbol], symbol=symbol)
                    )
        return out

    async def fetch_balances(self) -> dict[str, Decimal] | None:
        self.require_credentials("balances")
        if not self.has.get("fetchBalance"):
            return None
        data = await self.call(self.trade_client.fetch_balance)
        out: dict[str, Decimal] = {}
        for asset, total in (data.get("total") or {}).items():
            if total:
                out[asset] = Decimal(repr(total)) if isinstance(total, float) else Decimal(total)
        return out

    async def fetch_fills(self, since_ns: int) -> list[Fill] | None:
        self.require_credentials("fills")
        if not self.has.get("fetchMyTrades"):
            return None
        fills: list[Fill] = []
        for symbol in self.ccxt_symbol:
            fills.extend(await self.streams.my_trades(symbol, since_ns // 1_000_000))
        return fills

    async def reconcile_orders(self) -> None:
        """The private stream was down: look every working order up, then fetch our
        trades since it went down, so no report and no fill is lost."""
        await super().reconcile_orders()
        await self.streams.recover_fills({t.symbol for t in self._orders.values()})

    # -- what the streams report through (the base's event helpers) -----------------------------
    @property
    def rng(self) -> random.Random:
        return self._rng

    @property
    def closed(self) -> bool:
        return self._closed

    def book_state_observer(
        self, book: L2Book, old: BookState, new: BookState, reason: str
    ) -> None:
        self._emit_book_state(book, old, new, reason)

    def emit_book(self, book: L2Book) -> None:
        self._emit_book(book)

    def emit_trade(
        self, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        self._emit_trade(symbol, price_ticks, qty_lots, aggressor, ts_ns)

    def emit_order_update(self, update: OrderUpdate) -> None:
        self._emit_update(update)

    def emit_fill(self, fill: Fill) -> None:
        """Report a fill once, and the order state it implies: some venues' order
        reports (Kraken's trade executions through ccxt) do not reach watch_orders."""
        new = fill.fill_id not in self._seen_fills
        self._emit_fill(fill)
        tracked = self._orders.get(fill.client_id)
        if not new or tracked is None or tracked.status.is_terminal or tracked.order.qty_lots <= 0:
            return
        total = self.filled_by_fills.get(fill.client_id, 0) + fill.qty_lots
        self.filled_by_fills[fill.client_id] = total
        done = total >= tracked.order.qty_lots
        if done:
            del self.filled_by_fills[fill.client_id]
        status = OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED
        self._emit_update(
            OrderUpdate(
                self.name,
                fill.client_id,
                status,
                self.clock.now_ns(),
                exchange_id=tracked.exchange_id,
                filled_lots=max(total, tracked.filled_lots),
            )
        )


create_ccxt = VenueFactory(CcxtParams, CcxtVenue)
"""Factory the registry calls with the manifest's params and the run context."""


@hookimpl
def quoteforge_register_exchanges(register: Any) -> None:
    create_ccxt.register(
        register,
        "ccxt",
        description="Any ccxt venue through its unified API and ccxt.pro websockets; checked "
        f"against replicas: {', '.join(sorted(CHECKED_VENUES))} (docs/venues/ccxt.md).",
        requires=("ccxt",),
    )
