"""What the Binance spot and USDⓈ-M futures adapters share: signed REST through ccxt
paced by the venue's rate governor, error classification, the venue clock, and the
market-data socket whose diff-depth books are seeded by a REST snapshot.

``BinanceSpot`` (adapter.py) and ``BinanceUsdm`` (``quoteforge.exchanges.binance_usdm``)
subclass ``BinanceFamilyAdapter`` and give the venue's own endpoints (class attributes
``time_method``, ``depth_method``, ``depth_weights``), the market stream URL
(``market_url``) and anything their market stream carries beyond depth and trades
(``on_market_message``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from abc import abstractmethod
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from loguru import logger

from quoteforge.exchange import VenueContext
from quoteforge.exchanges.ccxt_base import (
    CcxtSpotAdapter,
    ManagedSocket,
    TrackedOrder,
    VenueCallError,
    book_source_factory,
)
from quoteforge.model import Fill, Instrument, Liquidity, OrderStatus, OrderUpdate, Side
from quoteforge.ratelimit import RateLimitError

if TYPE_CHECKING:
    from quoteforge.book.source import BookSource
    from quoteforge.exchanges.binance.ratelimit import BinanceRateGovernor

__all__ = [
    "AUTH_CODES",
    "CLIENT_ID",
    "STATUS",
    "TRADE_PAGE",
    "UNKNOWN_CODES",
    "BinanceFamilyAdapter",
    "check_client_id",
]

STATUS = {
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
"""Binance's order status names (spot and futures) as ours."""
CLIENT_ID = r"^[a-zA-Z0-9_-]{1,36}$"
_CLIENT_ID = re.compile(CLIENT_ID)


def check_client_id(client_id: str) -> None:
    """Refuse, before anything is sent, a client id Binance (spot or futures) would."""
    if not _CLIENT_ID.match(client_id):
        raise VenueCallError(
            "rejected", f"client id {client_id!r} must match [a-zA-Z0-9_-]{{1,36}} on Binance"
        )


TRADE_PAGE = 1000
"""The most trades one ``myTrades`` / ``userTrades`` call returns (its largest ``limit``)."""

# Codes after which the order may or may not exist (Binance: "execution status unknown").
UNKNOWN_CODES = frozenset({-1000, -1001, -1006, -1007, -1008})
AUTH_CODES = frozenset({-1002, -1022, -2014, -2015})


class BinanceFamilyAdapter(CcxtSpotAdapter):
    """The shared half of the Binance adapters (see the module docstring)."""

    time_method: ClassVar[str]
    """ccxt's method for the venue clock (``public_get_time``, ``fapipublic_get_time``)."""
    depth_method: ClassVar[str]
    """ccxt's method for the REST depth snapshot."""
    depth_weights: ClassVar[tuple[tuple[int, int], ...]]
    """(largest limit, request weight) of the depth snapshot, ascending."""
    not_found_codes: ClassVar[frozenset[int]] = frozenset({-2011, -2013})
    """Codes that mean "no such order" (or, on futures, "no such listen key")."""
    trades_method: ClassVar[str]
    """ccxt's method for our trades (``private_get_mytrades``, ...) and its weight."""
    trades_weight: ClassVar[int]
    open_orders_method: ClassVar[str]
    """ccxt's method for the open orders of a symbol and its weight."""
    open_orders_weight: ClassVar[int]
    exchange_info_method: ClassVar[str]
    """ccxt's method for the venue's market list (``exchangeInfo``) and its weight."""
    exchange_info_weight: ClassVar[int]
    cancel_method: ClassVar[str]
    """ccxt's method to cancel one order by client id."""
    query_method: ClassVar[str]
    """ccxt's method to look one order up by client id, and its weight."""
    query_weight: ClassVar[int]
    trades_span_ms: ClassVar[int | None] = None
    """How far apart ``startTime`` and ``endTime`` of one trades call may be, where the
    venue also bounds a call that sends neither (USDⓈ-M: 7 days, "the last 7 days' data"
    without a time, so ``fromId`` cannot page further back): then the trades are read in
    windows of that span. ``None`` (spot): ``startTime`` alone is unbounded and ``fromId``
    pages on."""
    trades_history_ms: ClassVar[int | None] = None
    """How far back the venue serves our trades (USDⓈ-M: 6 months); ``None``: no limit."""

    params: Any

    book_sources_venue_time: ClassVar[frozenset[str]] = frozenset(
        {"binance_spot", "binance_futures"}
    )
    """The built-in book sources: they stamp books with the venue's event time (``E``)."""

    @property
    def book_ts_venue_time(self) -> bool:
        """Whether its books carry the venue's time, which a market-data node relies on
        after a pause of its own; a plugin's source put in by name is not assumed to."""
        return getattr(self.params, "book_source", "") in self.book_sources_venue_time

    def __init__(self, params: Any, ctx: VenueContext, governor: BinanceRateGovernor) -> None:
        super().__init__(params, ctx)
        self.governor = governor
        # Looked up now, so a manifest naming an unknown source fails before connecting.
        self._make_source = book_source_factory(ctx, params.book_source)
        self._native: dict[str, str] = {}  # our symbol -> BTCUSDT
        self._by_native: dict[str, str] = {}
        self._sources: dict[str, Any] = {}
        self._snapshot_tasks: dict[str, asyncio.Task[Any]] = {}
        self._market_socket: ManagedSocket | None = None
        self._user_down_since_ms: int | None = None
        self._offset_error_ms = 0  # half the round trip of the last clock measurement
        self._client_of_order: dict[str, str] = {}
        """Venue order id -> client id, of orders not tracked here that a lookup named."""

    # -- REST --------------------------------------------------------------------------------
    def observe_response(self, status: int, headers: dict[str, str]) -> None:
        self.governor.observe(status, headers)

    async def send_cancel(self, order: TrackedOrder) -> None:
        data = await self._call(
            self.cancel_method,
            {"symbol": self._native[order.symbol], "origClientOrderId": order.client_id},
        )
        self._emit_update(self.order_report(data, order.client_id))

    async def lookup_order(self, order: TrackedOrder) -> OrderUpdate | None:
        try:
            data = await self._call(
                self.query_method,
                {"symbol": self._native[order.symbol], "origClientOrderId": order.client_id},
                weight=self.query_weight,
            )
        except VenueCallError as exc:
            if exc.kind == "not_found":
                return None
            raise
        return self.order_report(data, order.client_id)

    async def _call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        weight: int = 1,
        orders: int = 0,
        places: Sequence[TrackedOrder] = (),
    ) -> Any:
        """One REST call, paced by the governor. A call that ``places`` orders is signed
        with a timestamp taken here, after any wait, and kept on each order: the venue
        may execute it until that timestamp plus recvWindow (``resend_wait_s``)."""
        try:
            await self.governor.acquire(weight, orders, max_wait=self.params.max_rate_wait_s)
        except RateLimitError as exc:
            raise VenueCallError(
                "rate_limited", str(exc), retry_after_s=exc.retry_after_s
            ) from None
        if places and params is not None:
            params["timestamp"] = stamp = self.venue_time_ms()  # ccxt signs this one
            for order in places:
                order.extra["signed_ms"] = stamp
        return await self._rest(method, params)

    def venue_time_ms(self) -> int:
        """Now on the venue's clock, as far as the last measured offset tells."""
        return time.time_ns() // 1_000_000 + self.time_offset_ms

    def resend_wait_s(self, tracked: TrackedOrder) -> float:
        """Binance executes a request until its timestamp plus recvWindow, venue time
        (a -1007 answer says "execution status unknown"; the backend may still run it),
        and refuses a duplicate client id only among open orders: no resend before then.
        The clock offset's uncertainty and 100 ms are added."""
        # An order not signed by _call: a request sent by now is signed by now.
        signed = tracked.extra.setdefault("signed_ms", self.venue_time_ms())
        window = int(self.params.recv_window_ms)
        expires = int(signed) + window + self._offset_error_ms + 100
        return max(0.0, (expires - self.venue_time_ms()) / 1000)

    def classify_http_error(self, status: int, body: str) -> VenueCallError:
        try:
            data = json.loads(body)
            code = int(data.get("code"))
            msg = str(data.get("msg", ""))
        except (ValueError, TypeError, AttributeError):
            data, code, msg = None, None, body[:200]
        text = f"HTTP {status}: {msg}"
        if status >= 500 or code in UNKNOWN_CODES:
            return VenueCallError("unknown", text, str(code or status), payload=data)
        if code == -1021:
            return VenueCallError("clock", text, str(code), payload=data)
        if code in self.not_found_codes:
            return VenueCallError("not_found", text, str(code), payload=data)
        if code in AUTH_CODES or status in (401, 403):
            return VenueCallError("auth", text, str(code or status), payload=data)
        return VenueCallError("rejected", text, str(code or status), payload=data)

    async def sync_time(self) -> None:
        t0 = time.time_ns()
        data = await self._call(self.time_method, weight=1)
        t1 = time.time_ns()
        local_ms = (t0 + t1) // 2 // 1_000_000
        self.time_offset_ms = int(data["serverTime"]) - local_ms
        self._offset_error_ms = (t1 - t0) // 2_000_000 + 1
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

    # -- instruments -------------------------------------------------------------------------
    @abstractmethod
    def instrument_of(self, symbol: str, info: dict[str, Any]) -> Instrument:
        """The instrument of one ``exchangeInfo`` symbol entry. Venues implement it."""
        raise NotImplementedError

    async def load_instruments(self) -> dict[str, Instrument]:
        # BTC/USDT, btc-usdt, BTCUSDT (and a futures settle suffix, ETH/USDT:USDT) alike.
        wanted = {
            s: s.split(":")[0].replace("/", "").replace("-", "").replace("_", "").upper()
            for s in self.ctx.symbols
        }
        data = await self._call(self.exchange_info_method, weight=self.exchange_info_weight)
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
            out[symbol] = self.instrument_of(symbol, by_name[native])
            self._native[symbol], self._by_native[native] = native, symbol
        return out

    # -- market data -------------------------------------------------------------------------
    @abstractmethod
    def market_url(self) -> str:
        """The combined-stream URL of every symbol's market data. Venues implement it."""
        raise NotImplementedError

    def start_market_data(self) -> None:
        """A book source and book per symbol, and the market socket that feeds them."""
        self._sources.update(
            self._open_book_sources(
                self._make_source, self._on_resync, lambda s: {"wire_symbol": self._native[s]}
            )
        )
        self._market_socket = self._spawn_socket(
            "market",
            self.market_url,
            self._on_market_open,
            self._on_market_text,
            self._on_market_down,
        )

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
        else:
            try:
                data = json.loads(raw)["data"]
            except (ValueError, LookupError, TypeError) as exc:
                logger.warning("{}: dropped unreadable {} message ({})", self.name, kind, exc)
                return
            if type(data) is dict:
                self.on_market_message(symbol, kind, data)
            else:
                logger.warning(
                    "{}: dropped {} message whose data is not an object", self.name, kind
                )

    def on_market_message(self, symbol: str, kind: str, data: dict[str, Any]) -> None:
        """A market stream message other than depth (``kind`` after the ``@``): trades
        here; venues with more streams override it and call this one."""
        if kind != "trade":
            return
        instrument = self.instruments[symbol]
        try:
            price = instrument.price_to_ticks(data["p"])
            qty = instrument.qty_to_lots(data["q"])
            maker_bought, ts_ms = data["m"], data.get("T", 0)
            if price <= 0 or qty <= 0 or type(maker_bought) is not bool or type(ts_ms) is not int:
                raise ValueError("p and q must be above 0, m true or false, T an integer")
        except (LookupError, ValueError, TypeError, ArithmeticError) as exc:
            logger.warning("{}: bad trade message ({}): {!r}", self.name, exc, data)
            return
        # "m": the buyer was the maker, so the seller hit the bid.
        aggressor = Side.SELL if maker_bought else Side.BUY
        self._emit_trade(symbol, price, qty, aggressor, ts_ms * 1_000_000)

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
        weight = next(w for top, w in self.depth_weights if limit <= top)
        delay = 0.05
        while source.needs_snapshot and not self._closed:
            sock = self._market_socket
            if sock is None or not sock.is_up:
                return  # reconnecting: the new connection asks for a snapshot again
            try:
                snap = await self._call(
                    self.depth_method,
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

    # -- private stream ----------------------------------------------------------------------
    def on_execution(
        self, symbol: str, ev: dict[str, Any], client_id: str, ts_ns: int, *, reason: str = ""
    ) -> None:
        """One execution event: spot's ``executionReport`` or futures'
        ``ORDER_TRADE_UPDATE`` order (the same letters): the order's report, and its fill
        when it traded."""
        instrument = self.instruments[symbol]
        price = Decimal(ev["p"])
        if not price.is_finite() or price < 0:
            raise ValueError(f"order price {ev['p']!r} is not a price")
        update = OrderUpdate(
            self.name,
            client_id,
            STATUS.get(ev["X"], OrderStatus.OPEN),
            ts_ns,
            exchange_id=str(ev["i"]),
            filled_lots=instrument.qty_to_lots(ev["z"]),
            price_ticks=instrument.price_to_ticks(price) if price else None,
            qty_lots=instrument.qty_to_lots(ev["q"]),
            reason=reason,
        )
        if ev["x"] != "TRADE":
            self._emit_update(update)
            return
        # The fill is read whole before the report goes out: a report of a trade whose
        # fill cannot be booked would leave the order filled and its fill missing.
        fill = self._execution_fill(symbol, instrument, ev, client_id, ts_ns)
        self._emit_update(update)
        self._emit_fill(fill)

    def _execution_fill(
        self, symbol: str, instrument: Instrument, ev: dict[str, Any], client_id: str, ts_ns: int
    ) -> Fill:
        fee = Decimal(ev.get("n") or "0")
        if not fee.is_finite() or type(ev.get("m", False)) is not bool:
            raise ValueError(f"fee {ev.get('n')!r} is not an amount, or m not true or false")
        tracked = self.tracked(client_id)
        fill = Fill(
            venue=self.name,
            symbol=symbol,
            fill_id=f"{ev['s']}:{ev['t']}",
            client_id=client_id,
            side=Side.parse(ev["S"]),
            price_ticks=instrument.price_to_ticks(ev["L"]),
            qty_lots=instrument.qty_to_lots(ev["l"]),
            fee=fee,
            fee_asset=ev.get("N") or "",
            liquidity=Liquidity.MAKER if ev.get("m") else Liquidity.TAKER,
            ts_ns=int(ev.get("T", 0)) * 1_000_000 or ts_ns,
            strategy=tracked.order.strategy if tracked else "",
        )
        if fill.price_ticks <= 0 or fill.qty_lots <= 0:
            raise ValueError(f"trade of {ev['l']!r} at {ev['L']!r} is not a trade")
        return fill

    def unreadable_execution(self, event: object, exc: Exception) -> None:
        """An execution event that cannot be read is not booked; it may have carried a
        fill, so our orders and trades of the last minute are asked for over REST
        (fills already booked are recognised by their id)."""
        logger.warning(
            "{}: unreadable execution event ({}: {}); recovering our orders and trades "
            "over REST: {}",
            self.name,
            type(exc).__name__,
            exc,
            str(event)[:300],
        )
        now_ms = int(time.time() * 1000) + self.time_offset_ms
        since = self._user_down_since_ms
        self._user_down_since_ms = min(since, now_ms - 60_000) if since else now_ms - 60_000
        self.spawn_task(self.reconcile_orders(), f"{self.name}/reconcile")

    # -- reconciliation ------------------------------------------------------------------------
    @abstractmethod
    def order_report(self, data: dict[str, Any], client_id: str | None = None) -> OrderUpdate:
        """Our report of one order as the venue's REST API describes it. Venues
        implement it."""
        raise NotImplementedError

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
                for fill in await self.recent_fills(symbol, start):
                    self._emit_fill(fill)
            except VenueCallError as exc:
                logger.warning("{}: trade recovery for {} failed: {}", self.name, symbol, exc)

    async def recent_fills(self, symbol: str, start_ms: int) -> list[Fill]:
        """Our trades on ``symbol`` since ``start_ms`` (venue time) as fills, every page."""
        instrument = self.instruments[symbol]
        rows = await self._trade_rows(symbol, max(0, start_ms))
        by_exchange_id = {t.exchange_id: t for t in self._orders.values() if t.exchange_id}
        # A trade row names its order by the venue's id only: an order this adapter does
        # not track (an earlier life's, or another client's) is asked for its client id,
        # which tells the run whether the trade is its own.
        await self._learn_client_ids(
            symbol, {str(r["orderId"]) for r in rows} - set(by_exchange_id)
        )
        fills = []
        for row in rows:
            tracked = by_exchange_id.get(str(row["orderId"]))
            buyer, maker = (
                row.get("isBuyer", row.get("buyer")),
                row.get("isMaker", row.get("maker")),
            )
            fills.append(
                Fill(
                    venue=self.name,
                    symbol=symbol,
                    fill_id=f"{row['symbol']}:{row['id']}",
                    client_id=tracked.client_id
                    if tracked
                    else self._client_of_order.get(str(row["orderId"]))
                    or f"order:{row['orderId']}",
                    side=Side.BUY if buyer else Side.SELL,
                    price_ticks=instrument.price_to_ticks(row["price"]),
                    qty_lots=instrument.qty_to_lots(row["qty"]),
                    fee=Decimal(row["commission"]),
                    fee_asset=row["commissionAsset"],
                    liquidity=Liquidity.MAKER if maker else Liquidity.TAKER,
                    ts_ns=int(row["time"]) * 1_000_000,
                    strategy=tracked.order.strategy if tracked else "",
                )
            )
        return fills

    async def _trade_page(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        rows = await self._read_patiently(
            functools.partial(self._call, self.trades_method, params, weight=self.trades_weight),
            "our trades",
        )
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise VenueCallError(
                "unknown", f"the trade list answer is not a list of trades: {str(rows)[:200]}"
            )
        return rows

    async def _trade_rows(self, symbol: str, start_ms: int) -> list[dict[str, Any]]:
        """Every trade row of ours on ``symbol`` from ``start_ms`` on, each once, oldest
        first. A call returns at most ``TRADE_PAGE`` rows.

        Spot: ``startTime`` alone returns the oldest trades from it ("With startTime,
        returns oldest items from startTime up to the limit"), then ``fromId`` (trades with
        id >= it; it cannot be sent with a time) pages on from the last id + 1 until a
        page comes back short. Venues with ``trades_span_ms`` (USDⓈ-M) are read in
        windows of ``startTime`` and ``endTime`` that span; a full answer is followed by
        the windows before and after it, so it does not matter which end of the window
        the venue keeps (the USDⓈ-M documentation does not say).
        """
        native = self._native[symbol]
        found: dict[int, dict[str, Any]] = {}
        if self.trades_span_ms is None:
            params: dict[str, Any] = {"symbol": native, "startTime": start_ms, "limit": TRADE_PAGE}
            while True:
                page = await self._trade_page(params)
                found.update((int(r["id"]), r) for r in page)
                if len(page) < TRADE_PAGE:
                    break
                last = max(int(r["id"]) for r in page)
                params = {"symbol": native, "fromId": last + 1, "limit": TRADE_PAGE}
            return [found[i] for i in sorted(found)]
        now = self.venue_time_ms()
        if self.trades_history_ms is not None and start_ms < now - self.trades_history_ms:
            if start_ms > 0:
                logger.warning(
                    "{}: our {} trades since {} are asked from {} on: the venue serves "
                    "only the last {} days of trades",
                    self.name,
                    symbol,
                    start_ms,
                    now - self.trades_history_ms,
                    self.trades_history_ms // 86_400_000,
                )
            start_ms = now - self.trades_history_ms
        span = self.trades_span_ms
        windows = [(t, t + span - 1) for t in range(start_ms, now + 1, span)]
        while windows:
            first, last = windows.pop()
            page = await self._trade_page(
                {"symbol": native, "startTime": first, "endTime": last, "limit": TRADE_PAGE}
            )
            found.update((int(r["id"]), r) for r in page)
            if len(page) < TRADE_PAGE:
                continue
            # A full answer is a run of consecutive trades at one end of the window; the
            # rest lie before its first or after its last millisecond (both included, for
            # trades of the same millisecond beyond the answer).
            times = sorted(int(r["time"]) for r in page)
            low, high = times[0], times[-1]
            if low < high:
                windows += [(high, last), (first, low)]
            elif first < last:
                windows += [
                    (w0, w1)
                    for w0, w1 in ((low + 1, last), (low, low), (first, low - 1))
                    if first <= w0 <= w1 <= last
                ]
            else:
                logger.error(
                    "{}: more than {} of our {} trades at {} ms: the venue's trade list "
                    "cannot page within one millisecond, some may be missing; compare the "
                    "run's position with the venue's",
                    self.name,
                    TRADE_PAGE,
                    symbol,
                    first,
                )
        return [found[i] for i in sorted(found)]

    async def _learn_client_ids(self, symbol: str, order_ids: set[str]) -> None:
        """Ask the venue for the client id of each order in ``order_ids`` not named yet
        (each answer is kept for the process; the calls are paced by the rate governor).
        An order left unnamed (the lookup failed) is ``order:<id>`` in this read: another
        trade on the account, to the reconciliation, until a later read names it. After
        a lookup refused for the rate limit, the others wait for a later read too."""
        wanted = sorted(order_ids - set(self._client_of_order), key=lambda i: (len(i), i))
        for done, order_id in enumerate(wanted):
            try:
                data = await self._call(
                    self.query_method,
                    {"symbol": self._native[symbol], "orderId": order_id},
                    weight=self.query_weight,
                )
            except VenueCallError as exc:
                logger.warning(
                    "{}: order {} could not be looked up ({}); its trades count as other "
                    "trades on the account until a later read names it",
                    self.name,
                    order_id,
                    exc,
                )
                if exc.kind == "rate_limited":
                    logger.warning(
                        "{}: {} more order(s) of {} trades are left unnamed until a later "
                        "read: the request weight is used up",
                        self.name,
                        len(wanted) - done - 1,
                        symbol,
                    )
                    return
                continue
            found = data.get("clientOrderId") if isinstance(data, dict) else None
            if isinstance(found, str) and found:
                self._client_of_order[order_id] = found

    async def fetch_open_orders(self) -> list[OrderUpdate]:
        self.require_credentials("open orders")
        out: list[OrderUpdate] = []
        for native in self._native.values():
            rows = await self._read_patiently(
                functools.partial(
                    self._call,
                    self.open_orders_method,
                    {"symbol": native},
                    weight=self.open_orders_weight,
                ),
                "the open orders",
            )
            out.extend(self.order_report(row) for row in rows)
        return out

    async def fetch_fills(self, since_ns: int) -> list[Fill]:
        self.require_credentials("fills")
        fills: list[Fill] = []
        for symbol in self._native:
            fills.extend(await self.recent_fills(symbol, since_ns // 1_000_000))
        return fills
