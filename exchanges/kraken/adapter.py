"""Kraken spot adapter: REST over ccxt for instruments, balances, tokens and lookups;
websocket v2 for checksummed books, trades, executions and order entry."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger
from pydantic import Field, model_validator

from quoteforge import hookimpl
from quoteforge.exchange import OrderAction, PlaceOrder, VenueContext
from quoteforge.exchanges.ccxt_base import (
    API_KEY_SECRETS,
    AutoCancelParams,
    CcxtSpotParams,
    LatencyEndpoints,
    ManagedSocket,
    TrackedOrder,
    VenueCallError,
    VenueFactory,
    book_source_factory,
    dumps_exact,
)
from quoteforge.exchanges.kraken.ratelimit import (
    KRAKEN_TIERS,
    KrakenRateGovernor,
    kraken_amend_cost,
    kraken_cancel_cost,
)
from quoteforge.exchanges.kraken.reconciliation import KrakenReconciliation
from quoteforge.exchanges.kraken.wire import (
    ORDER_STATUS,
    classify_error,
    order_params,
    parse_timestamp_ns,
    public_stream,
    v2_asset,
)
from quoteforge.model import (
    Fill,
    Instrument,
    Liquidity,
    OrderStatus,
    OrderUpdate,
    Side,
)
from quoteforge.ratelimit import RateLimitError

if TYPE_CHECKING:
    from quoteforge.book.source import BookSource
    from quoteforge.exchanges.kraken.book import KrakenBookSource

__all__ = ["KrakenParams", "KrakenSpot", "create_kraken", "quoteforge_register_exchanges"]

LIVE_REST = "https://api.kraken.com"
LIVE_WS = "wss://ws.kraken.com/v2"
LIVE_WS_AUTH = "wss://ws-auth.kraken.com/v2"


class KrakenParams(CcxtSpotParams, AutoCancelParams):
    """Kraken spot adapter parameters. Secrets ``api_key`` and ``api_secret`` (base64)
    come from the run's secrets (environment variables), never from here."""

    required_secrets = API_KEY_SECRETS

    book_depth: Literal[10, 25, 100, 500, 1000] = Field(
        10, description="Subscribed book depth (Kraken truncates to it)."
    )
    public_trades: bool = Field(True, description="Subscribe to the trade channel.")
    tier: Literal["starter", "intermediate", "pro"] = Field(
        "starter",
        description="Account verification tier: sets the trading engine's per-pair counter "
        "and the API key's REST call counter (maximum and decay of each).",
    )
    rate_headroom: float = Field(
        0.9, gt=0, le=1, description="Share of each counter's maximum to use."
    )
    silence_timeout_s: float = Field(
        10.0,
        gt=0,
        le=315_360_000,
        description="Kraken sends heartbeats every second; silent this long is down.",
    )
    batch_orders: bool = Field(
        True, description="Send 2-15 new orders of one pair in one submit as a batch_add."
    )
    book_source: str = Field(
        "kraken_v2",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="The registered book source (plugin kind book_source) that keeps each "
        "book; a plugin's source with the interface of kraken_v2 replaces it by name.",
    )

    @model_validator(mode="after")
    def _no_testnet(self) -> KrakenParams:
        if self.testnet:
            raise ValueError(
                "Kraken spot has no test network: set testnet: false and point rest_url, "
                "ws_url and private_ws_url at a KrakenReplica for offline runs"
            )
        return self


class KrakenSpot(KrakenReconciliation):
    """Kraken spot. One public socket carries every pair's book and trades; one private
    socket carries executions and order entry (add_order, batch_add, amend_order,
    cancel_order, cancel_all). The REST reads for reconciliation are
    ``KrakenReconciliation``'s (reconciliation.py), and so is ``_paced_rest``, which
    every REST call passes: it paces the private ones by the API key's call counter."""

    venue_id = "kraken"
    ccxt_id = "kraken"
    params: KrakenParams

    @property
    def book_ts_venue_time(self) -> bool:
        """Whether its books are stamped with the venue's time (the ``timestamp`` of v2
        book updates), which a market-data node relies on after a pause of its own."""
        return self.params.book_source == "kraken_v2"

    def __init__(self, params: KrakenParams, ctx: VenueContext) -> None:
        super().__init__(params, ctx, tier=params.tier, headroom=params.rate_headroom)
        if params.tier not in KRAKEN_TIERS:  # pragma: no cover - Literal already checks
            raise ValueError(f"unknown tier {params.tier!r}")
        self.governor = KrakenRateGovernor(
            ctx.clock, tier=params.tier, headroom=params.rate_headroom
        )
        # Looked up now, so a manifest naming an unknown source fails before connecting.
        self._make_source = book_source_factory(ctx, params.book_source)
        self._wire: dict[str, str] = {}  # our symbol -> "BTC/USD"
        self._by_wire: dict[str, str] = {}
        self._rest_pair: dict[str, str] = {}  # our symbol -> "XXBTZUSD"
        self._sources: dict[str, KrakenBookSource] = {}
        self._public: ManagedSocket | None = None
        self._private: ManagedSocket | None = None
        self._private_ready = asyncio.Event()
        self._private_subscriptions = 0
        self._private_refusal: VenueCallError | None = None  # keys refused at the start
        self._token = ""
        self._req_ids = iter(range(1, 1 << 62))
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._opening_public = False
        self._subscribed_at: dict[str, float] = {}

    # -- URLs and client -------------------------------------------------------------------
    @property
    def rest_base(self) -> str:
        return (self.params.rest_url or LIVE_REST).rstrip("/")

    def latency_endpoints(self) -> LatencyEndpoints:
        return LatencyEndpoints(f"{self.rest_base}/0/public/Time", self.params.ws_url or LIVE_WS)

    def latency_order_wait_s(self, symbol: str) -> float:
        # Adding costs 1 and cancelling a just-placed order the most (its age is ~0).
        cost = KrakenRateGovernor.ADD_COST + kraken_cancel_cost(0)
        return self.governor.delay_for(self._wire[symbol], cost)

    def client_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"options": {"adjustForTimeDifference": False}}
        if self.params.rest_url:
            config["urls"] = {"api": {"public": self.rest_base, "private": self.rest_base}}
        return config

    def classify_http_error(self, status: int, body: str) -> VenueCallError:
        try:
            errors = json.loads(body).get("error") or []
        except (ValueError, AttributeError):
            errors = []
        text = "; ".join(errors) or f"HTTP {status}: {body[:200]}"
        return classify_error(text, status)

    async def load_instruments(self) -> dict[str, Instrument]:
        data = await self._paced_rest("public_get_assetpairs")
        pairs: dict[str, dict[str, Any]] = data.get("result", {})
        by_v2: dict[str, tuple[str, dict[str, Any]]] = {}
        for name, info in pairs.items():
            wsname = info.get("wsname", "")
            if "/" not in wsname:
                continue
            base, quote = wsname.split("/")
            v2 = f"{v2_asset(base)}/{v2_asset(quote)}"
            for alias in (v2, wsname, info.get("altname", ""), name):
                by_v2[alias] = (v2, info)
                by_v2.setdefault(f"{alias}|rest", (name, info))
        out: dict[str, Instrument] = {}
        missing = [s for s in self.ctx.symbols if s not in by_v2]
        if missing:
            names = sorted(k for k in by_v2 if "/" in k and "|" not in k)[:10]
            raise ValueError(
                f"{self.name}: unknown pair(s) {missing}; the venue lists e.g. {names} "
                "(write BTC/USD as in websocket v2)"
            )
        for symbol in self.ctx.symbols:
            v2, info = by_v2[symbol]
            rest_name = by_v2[f"{symbol}|rest"][0]
            tick = Decimal(str(info.get("tick_size") or Decimal(1).scaleb(-info["pair_decimals"])))
            base, quote = v2.split("/")
            out[symbol] = Instrument(
                venue=self.name,
                symbol=symbol,
                base=base,
                quote=quote,
                tick_size=tick.normalize(),
                lot_size=Decimal(1).scaleb(-int(info["lot_decimals"])),
                min_qty=Decimal(str(info.get("ordermin", "0"))).normalize(),
                min_notional=Decimal(str(info.get("costmin", "0"))).normalize(),
            )
            self._wire[symbol] = v2
            self._by_wire[v2] = symbol
            self._rest_pair[symbol] = rest_name
        return out

    # -- public socket: books and trades ---------------------------------------------------
    async def start_streams(self) -> None:
        depth = self.params.book_depth
        self._sources.update(
            self._open_book_sources(
                self._make_source,
                self._on_resync,
                lambda s: {"depth": depth, "wire_symbol": self._wire[s]},
            )
        )
        self.spawn_task(self._snapshot_watchdog(), f"{self.name}/snapshot-watchdog")
        self._public = self._spawn_socket(
            "public",
            lambda: self.params.ws_url or LIVE_WS,
            self._on_public_open,
            self._on_public_text,
            self._on_public_down,
        )
        if self.has_credentials:
            self._private = self._spawn_socket(
                "private",
                lambda: self.params.private_ws_url or LIVE_WS_AUTH,
                self._on_private_open,
                self._on_private_text,
                self._on_private_down,
            )
            await self._await_ready(self._private_ready, "private socket")
            if self._private_refusal is not None:
                raise self._private_refusal
            if self.params.auto_cancel_after_s is not None:
                await self.start_auto_cancel(self.params.auto_cancel_after_s, self._cancel_after)

    async def _cancel_after(self, seconds: float) -> None:
        """``CancelAllOrdersAfter`` (whole seconds; it cancels every order of the account)."""
        await self._paced_rest("private_post_cancelallordersafter", {"timeout": math.ceil(seconds)})

    async def _snapshot_watchdog(self) -> None:
        """A subscription whose snapshot never came (lost reply, refused request) is sent
        again; the book would otherwise wait in RESYNCING for ever."""
        every = self.params.silence_timeout_s
        while not self._closed:
            await asyncio.sleep(every / 2)
            sock = self._public
            if sock is None or not sock.is_up:
                continue
            now = time.monotonic()
            for symbol, source in self._sources.items():
                if source.needs_snapshot and now - self._subscribed_at.get(symbol, now) > every:
                    logger.warning(
                        "{}: no book snapshot for {} after {:.1f}s; subscribing again",
                        self.name,
                        symbol,
                        every,
                    )
                    self._on_resync(source, "snapshot overdue")

    def _subscribe_book(self, symbols: list[str], method: str = "subscribe") -> str:
        if method == "subscribe":
            now = time.monotonic()
            for symbol in symbols:
                self._subscribed_at[symbol] = now
        return json.dumps(
            {
                "method": method,
                "params": {
                    "channel": "book",
                    "symbol": [self._wire[s] for s in symbols],
                    "depth": self.params.book_depth,
                    **({"snapshot": True} if method == "subscribe" else {}),
                },
                "req_id": next(self._req_ids),
            }
        )

    async def _on_public_open(self, sock: ManagedSocket) -> None:
        symbols = list(self._sources)
        if sock.connects > 1:
            self._opening_public = True
            try:
                for source in self._sources.values():
                    source.reconnected(f"reconnected after: {sock.last_reason}")
            finally:
                self._opening_public = False
        await sock.send(self._subscribe_book(symbols))
        if self.params.public_trades:
            await sock.send(
                json.dumps(
                    {
                        "method": "subscribe",
                        "params": {
                            "channel": "trade",
                            "symbol": [self._wire[s] for s in symbols],
                            "snapshot": False,
                        },
                        "req_id": next(self._req_ids),
                    }
                )
            )

    def _on_public_down(self, reason: str) -> None:
        for source in self._sources.values():
            source.feed_down(f"public socket down: {reason}")

    def _on_resync(self, source: BookSource, reason: str) -> None:
        if self._opening_public:
            return  # the subscription being sent brings a fresh snapshot
        sock = self._public
        if sock is None or not sock.is_up:
            return
        symbol = source.book.symbol

        async def resubscribe() -> None:
            try:
                await sock.send(self._subscribe_book([symbol], "unsubscribe"))
                await sock.send(self._subscribe_book([symbol]))
            except (ConnectionError, RuntimeError) as exc:
                logger.warning(
                    "{}: resubscribe {} failed ({}); reconnect will resync", self.name, symbol, exc
                )

        self.spawn_task(resubscribe(), f"{self.name}/resubscribe/{symbol}")

    def _on_public_text(self, raw: str, recv_ns: int) -> None:
        if self.tap is not None:
            self._tap_raw(public_stream(raw), raw, recv_ns)
        if '"channel":"book"' in raw:
            start = raw.find('"symbol":"')
            if start < 0:
                return
            start += 10
            symbol = self._by_wire.get(raw[start : raw.find('"', start)])
            if symbol is None:
                return
            from quoteforge.book.wire import BookMessageError

            try:
                self._sources[symbol].on_message(raw, self.clock.now_ns())
            except BookMessageError as exc:
                logger.warning("{}: dropped malformed book message: {}", self.name, exc)
        elif '"channel":"trade"' in raw:
            try:
                msg = json.loads(raw, parse_float=Decimal)
                if type(msg) is dict and "method" in msg:
                    # A (un)subscribe answer: its result names the channel, it has no data.
                    if msg.get("success") is not True:
                        logger.warning("{}: public request refused: {}", self.name, raw[:300])
                    return
                rows = msg["data"]
            except (ValueError, LookupError, TypeError) as exc:
                logger.warning("{}: dropped unreadable trade message ({})", self.name, exc)
                return
            for row in rows if type(rows) is list else ():
                if type(row) is dict:
                    self._on_public_trade(row)
        elif '"success":false' in raw:
            logger.warning("{}: public request refused: {}", self.name, raw[:300])

    def _on_public_trade(self, row: dict[str, Any]) -> None:
        symbol = self._by_wire.get(row.get("symbol", ""))
        if symbol is None:
            return
        inst = self.instruments[symbol]
        try:
            price = inst.price_to_ticks(row["price"])
            qty = inst.qty_to_lots(row["qty"])
            aggressor = Side.parse(row["side"])
            if price <= 0 or qty <= 0:
                raise ValueError("price and qty must be above 0")
        except (LookupError, ValueError, TypeError, ArithmeticError, AttributeError) as exc:
            logger.warning("{}: bad trade ({}): {!r}", self.name, exc, row)
            return
        self._emit_trade(symbol, price, qty, aggressor, parse_timestamp_ns(row.get("timestamp")))

    # -- private socket: executions and trading --------------------------------------------
    async def _on_private_open(self, sock: ManagedSocket) -> None:
        try:
            data = await self._paced_rest("private_post_getwebsocketstoken")
        except VenueCallError as exc:
            if exc.kind == "auth" and not self._private_subscriptions:
                # Keys the venue refuses stop the start now, with its reason, rather
                # than after start_timeout_s at the first private REST read.
                self._private_refusal = VenueCallError(
                    "auth",
                    f"{self.name}: the websocket token request was refused: {exc.message}; "
                    "check the api_key and api_secret secrets",
                    exc.code,
                )
                self._private_ready.set()  # wakes the start, which raises it
            raise
        self._token = data["result"]["token"]
        req_id = next(self._req_ids)
        reply = await sock.request(
            json.dumps(
                {
                    "method": "subscribe",
                    "params": {
                        "channel": "executions",
                        "token": self._token,
                        "snap_orders": True,
                        "snap_trades": self._private_subscriptions > 0,
                    },
                    "req_id": req_id,
                }
            ),
            lambda m: isinstance(m, dict) and m.get("req_id") == req_id,
            self.params.request_timeout_s,
        )
        if not reply.get("success"):
            raise ConnectionError(f"executions subscription refused: {reply.get('error')}")
        self._private_subscriptions += 1
        if self._private_subscriptions > 1:
            self.spawn_task(self.reconcile_orders(), f"{self.name}/reconcile")
        self._private_ready.set()

    def _on_private_down(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"private socket down: {reason}"))
        self._pending.clear()

    def _on_private_text(self, raw: str, recv_ns: int) -> None:
        try:
            msg = json.loads(raw, parse_float=Decimal)
        except ValueError:
            logger.warning("{}: private socket sent non-JSON: {!r}", self.name, raw[:300])
            return
        if not isinstance(msg, dict):
            return
        req_id = msg.get("req_id")
        if req_id is not None and "method" in msg:
            future = self._pending.pop(req_id, None)
            if future is not None and not future.done():
                future.set_result(msg)
            return
        if msg.get("channel") == "executions":
            for event in msg.get("data", []):
                try:
                    self._on_execution(event)
                except (LookupError, ValueError, TypeError, ArithmeticError, AttributeError) as exc:
                    # It may have carried a fill: subscribe again, and the executions
                    # snapshot replays our recent fills (booked ones are known by id).
                    logger.warning(
                        "{}: unreadable execution event ({}: {}); subscribing again for "
                        "the executions snapshot: {!r}",
                        self.name,
                        type(exc).__name__,
                        exc,
                        event,
                    )
                    sock = self._private
                    if sock is not None and sock.ws is not None and not sock.ws.closed:
                        self.spawn_task(sock.ws.close(), f"{self.name}/resubscribe")

    async def _ws_call(self, method: str, params: dict[str, Any]) -> Any:
        """One private websocket request; the result, or a classified VenueCallError."""
        sock = self._private
        if sock is None:
            raise VenueCallError("auth", "no private socket (no API credentials)")
        if not sock.is_up:
            try:
                await asyncio.wait_for(sock.ready.wait(), self.params.max_rate_wait_s)
            except TimeoutError:
                raise VenueCallError("rejected", "private socket down; request not sent") from None
        req_id = next(self._req_ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        try:
            await sock.send(
                dumps_exact(
                    {"method": method, "params": {**params, "token": self._token}, "req_id": req_id}
                )
            )
            reply = await asyncio.wait_for(future, self.params.request_timeout_s)
        except (TimeoutError, ConnectionError) as exc:
            raise VenueCallError("unknown", f"{method}: no answer ({type(exc).__name__})") from None
        finally:
            self._pending.pop(req_id, None)
        if reply.get("success"):
            return reply.get("result")
        error = classify_error(str(reply.get("error", "")))
        if error.kind == "rate_limited":
            pair = str(params.get("symbol", ""))
            self.governor.on_limit_exceeded(pair)
            error.retry_after_s = max(self.governor.delay_for(pair, 1.0), 0.2)
        raise error

    async def _charge(self, symbol: str, cost: float) -> None:
        try:
            await self.governor.acquire(
                self._wire[symbol], cost, max_wait=self.params.max_rate_wait_s
            )
        except RateLimitError as exc:
            raise VenueCallError(
                "rate_limited", str(exc), retry_after_s=exc.retry_after_s
            ) from None

    async def send_place(self, order: TrackedOrder) -> None:
        await self._charge(order.symbol, KrakenRateGovernor.ADD_COST)
        result = await self._ws_call(
            "add_order", {**order_params(order), "symbol": self._wire[order.symbol]}
        )
        self._acknowledged(order, str(result.get("order_id", "")))

    def _acknowledged(self, order: TrackedOrder, order_id: str) -> None:
        order.exchange_id = order_id or order.exchange_id
        if order_id:
            self._by_order_id[order_id] = order.client_id
        order.placed_ns = self.clock.now_ns()
        self._emit_update(
            OrderUpdate(
                self.name,
                order.client_id,
                OrderStatus.OPEN,
                self.clock.now_ns(),
                exchange_id=order.exchange_id,
                price_ticks=order.order.price_ticks,
                qty_lots=order.order.qty_lots,
            )
        )

    def _age_s(self, order: TrackedOrder) -> float:
        return max(0.0, (self.clock.now_ns() - order.placed_ns) / 1e9)

    async def send_cancel(self, order: TrackedOrder) -> None:
        await self._charge(order.symbol, kraken_cancel_cost(self._age_s(order)))
        await self._ws_call("cancel_order", {"cl_ord_id": [order.client_id]})
        self.report_cancelled(order)

    async def send_cancel_all(self, symbol: str) -> None:
        # cancel_all covers every pair; cancel per order keeps other pairs' quotes alive.
        for tracked in list(self._orders.values()):
            if tracked.symbol == symbol and not tracked.status.is_terminal:
                await self._cancel_checked(tracked)
        # Orders the venue has that we never tracked (an earlier run) go as well.
        for update in await self._open_on(symbol):
            if (
                update.client_id not in self._orders
                or self._orders[update.client_id].status.is_terminal
            ):
                adopted = self._adopt(update.client_id, symbol)
                if adopted is not None:
                    await self._cancel_checked(adopted)

    async def amend_order(
        self, client_id: str, *, price_ticks: int | None = None, qty_lots: int | None = None
    ) -> None:
        """Change a working order in place (``amend_order``): ids stay, and a smaller
        size keeps queue priority. Reported through ``on_order_update``."""
        tracked = self._orders.get(client_id)
        if tracked is None or tracked.status.is_terminal:
            raise ValueError(f"no working order {client_id!r} to amend")
        params: dict[str, Any] = {"cl_ord_id": client_id}
        inst = tracked.instrument
        if price_ticks is not None:
            params["limit_price"] = inst.ticks_to_price(price_ticks)
        if qty_lots is not None:
            params["order_qty"] = inst.lots_to_qty(qty_lots)
        await self._charge(tracked.symbol, kraken_amend_cost(self._age_s(tracked)))
        await self._ws_call("amend_order", {**params, "symbol": self._wire[tracked.symbol]})
        tracked.placed_ns = self.clock.now_ns()

    # -- batches -----------------------------------------------------------------------------
    def submit(self, actions: Sequence[OrderAction]) -> None:
        if not self.params.batch_orders:
            super().submit(actions)
            return
        batches: dict[str, list[PlaceOrder]] = {}
        rest: list[OrderAction] = []
        for action in actions:
            if (
                isinstance(action, PlaceOrder)
                and action.order.client_id not in self._chains
                and action.order.symbol in self.instruments
            ):
                batches.setdefault(action.order.symbol, []).append(action)
            else:
                rest.append(action)
        for symbol, places in batches.items():
            if len(places) < 2:
                rest.extend(places)
                continue
            for i in range(0, len(places), 15):
                chunk = places[i : i + 15]
                if len(chunk) < 2:
                    rest.extend(chunk)
                    continue
                task = self.spawn_task(
                    self._run_batch(symbol, [p.order for p in chunk]), f"{self.name}/batch"
                )
                for place in chunk:
                    self._chains[place.order.client_id] = task
                task.add_done_callback(
                    functools.partial(self._unchain, tuple(p.order.client_id for p in chunk))
                )
        if rest:
            super().submit(rest)

    async def _run_batch(self, symbol: str, orders: list[Any]) -> None:
        tracked = [t for t in (self._track(o) for o in orders) if t is not None]
        if len(tracked) < 2:
            for t in tracked:
                await self._place_checked(t)
            return
        try:
            await self._with_rate_retry(lambda: self._place_batch(symbol, tracked))
        except VenueCallError as exc:
            if exc.kind == "unknown":
                for t in tracked:
                    await self._resolve_unknown(t, str(exc))
                return
            for t in tracked:
                self.report_rejected(t.client_id, f"batch: {exc}")
        except Exception:
            logger.exception("{}: batch on {} failed unexpectedly", self.name, symbol)

    async def _place_batch(self, symbol: str, tracked: list[TrackedOrder]) -> None:
        await self._charge(symbol, KrakenRateGovernor.ADD_COST * len(tracked))
        result = await self._ws_call(
            "batch_add",
            {"symbol": self._wire[symbol], "orders": [order_params(t) for t in tracked]},
        )
        ids = {str(r.get("cl_ord_id")): str(r.get("order_id", "")) for r in result or []}
        for t in tracked:
            self._acknowledged(t, ids.get(t.client_id, ""))

    # -- executions ----------------------------------------------------------------------------
    def _on_execution(self, ev: dict[str, Any]) -> None:
        client_id = ev.get("cl_ord_id") or self._by_order_id.get(str(ev.get("order_id")), "")
        if not client_id:
            return
        tracked = self._orders.get(client_id)
        symbol = self._by_wire.get(ev.get("symbol", "")) or (tracked.symbol if tracked else None)
        if symbol is None:
            return
        inst = self.instruments[symbol]
        if ev.get("order_id"):
            self._by_order_id[str(ev["order_id"])] = client_id
        exec_type = ev.get("exec_type", "")
        status = ORDER_STATUS.get(ev.get("order_status", ""), OrderStatus.OPEN)
        ts_ns = parse_timestamp_ns(ev.get("timestamp"))
        if exec_type == "amended":
            # A new size or price: a report the dedupe must not swallow as a repeat.
            self._last_update.pop(client_id, None)
        limit = ev.get("limit_price")
        update = OrderUpdate(
            self.name,
            client_id,
            status,
            ts_ns or self.clock.now_ns(),
            exchange_id=str(ev.get("order_id") or "") or None,
            filled_lots=inst.qty_to_lots(ev["cum_qty"]) if "cum_qty" in ev else None,
            price_ticks=inst.price_to_ticks(limit) if limit is not None else None,
            qty_lots=inst.qty_to_lots(ev["order_qty"]) if "order_qty" in ev else None,
            reason=str(ev.get("reason", "")),
        )
        fill = None
        if exec_type == "trade":  # read whole before the report goes out
            fees = ev.get("fees") or [{}]
            fee = Decimal(str(fees[0].get("qty", "0")))
            fill = Fill(
                venue=self.name,
                symbol=symbol,
                fill_id=f"{self._wire[symbol]}:{ev.get('trade_id', ev.get('exec_id'))}",
                client_id=client_id,
                side=Side.parse(ev.get("side", "buy")),
                price_ticks=inst.price_to_ticks(ev["last_price"]),
                qty_lots=inst.qty_to_lots(ev["last_qty"]),
                fee=fee,
                fee_asset=str(fees[0].get("asset", "")),
                liquidity=Liquidity.MAKER if ev.get("liquidity_ind") == "m" else Liquidity.TAKER,
                ts_ns=ts_ns,
                strategy=tracked.order.strategy if tracked else "",
            )
            if fill.price_ticks <= 0 or fill.qty_lots <= 0 or not fee.is_finite():
                raise ValueError("a trade needs a price and quantity above 0 and a finite fee")
        self._emit_update(update)
        if fill is not None:
            self._emit_fill(fill)


create_kraken = VenueFactory(KrakenParams, KrakenSpot)
"""Factory the registry calls with the manifest's params and the run context."""


@hookimpl
def quoteforge_register_exchanges(register: Any) -> None:
    create_kraken.register(
        register,
        "kraken",
        description="Kraken spot (REST over ccxt, websocket v2 checksummed books and trading).",
        requires=("ccxt",),
    )
