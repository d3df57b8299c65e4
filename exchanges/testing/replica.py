"""The shared base of the local replica venues (``BinanceReplica``, ``KrakenReplica``).

``ReplicaServer`` is everything a replica does that is not the venue's wire format: the
server on 127.0.0.1 and its websocket plumbing, the fault controls, the markets (a
``ReplicaMarket`` per symbol, matching our orders against other participants' levels),
the market control API tests use (``set_level``, ``set_book``, ``churn``,
``fill_order``, ``book``, ``orders``), the order flow after a venue parsed an order, and
the pacing of a recording's playback. Each venue module adds routes and the hooks that
write its messages.

Tests drive a replica through its async control API (``await replica.drop_connections()``,
``await replica.fail_http(429, retry_after=1)`` ...) while an adapter talks to it over
real sockets, so an adapter is exercised exactly as it would be against the venue.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, Self

from aiohttp import WSMsgType, web

from quoteforge.exchanges.recording import Record
from quoteforge.exchanges.testing.faults import (
    ZERO,
    FaultPlan,
    ReplicaAccount,
    ReplicaMarket,
    ReplicaOrder,
    ReplicaTrade,
)

__all__ = ["ReplicaServer"]


def other_side(side: str) -> str:
    """The side that trades against ``side``."""
    return "sell" if side == "buy" else "buy"


class ReplicaServer(ABC):
    """A replica venue: an aiohttp server on 127.0.0.1 (a free port unless one is given),
    the fault controls, the markets with our orders in them and the control API every
    replica offers, and the order flow (accept, match, report, publish) in one place.

    A venue subclass speaks the wire format only: it adds its routes (``add_routes``),
    registers its markets (``add_market``) and implements the hooks that put an event on
    the wire (``report_accepted``, ``report_fill``, ``report_expired``,
    ``publish_trade``, ``publish_book``, ``forget_socket``); it may override
    ``normalize_symbol``, ``on_accepted``, ``play_record`` and ``on_ping_tick``. These
    are the subclass's extension points, called by this class's order flow and server,
    not by tests. The conformance kit drives any replica through this class's methods,
    so a new venue's replica gets them by subclassing.
    """

    venue = "replica"
    order_path = ""
    """Where order-entry faults (``fail_http``, ``time_out``) aim to hit new orders."""
    churn_ticks = 30
    """``churn`` moves a level up to this many ticks behind the best."""
    churn_lots = (10, 20_000)
    """``churn`` sets a level to 0 or a size drawn from this range of lots."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval: float = 20.0,
        balances: Mapping[str, str] | None = None,
        seed: int = 7,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"a replica listens on loopback only, got host {host!r}")
        self.host = host
        self.port = port
        self.ping_interval = ping_interval
        self.faults = FaultPlan()
        self.request_log: list[tuple[str, str]] = []
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ping_task: asyncio.Task[None] | None = None
        self.connections_opened = 0
        self.account = ReplicaAccount(free={k: Decimal(v) for k, v in (balances or {}).items()})
        self._rng = random.Random(seed)
        self.markets: dict[str, ReplicaMarket] = {}
        self.accepted: list[ReplicaOrder] = []
        """Every order ever accepted, in order (the conformance kit's duplicate check)."""
        self.played = 0
        """Recorded messages played so far (a replica serving a recording)."""
        self.playback_done = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of the REST API (``http://127.0.0.1:<port>``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._fault_middleware])
        self.add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        self._ping_task = asyncio.create_task(self._ping_loop())

    async def stop(self) -> None:
        if self._ping_task is not None:
            self._ping_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ping_task
        for task in list(self._tasks):
            task.cancel()
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @abstractmethod
    def add_routes(self, app: web.Application) -> None:
        """Add the venue's REST and websocket routes. Venue replicas implement it;
        ``start`` calls it once before the server listens."""

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def now_ms(self) -> int:
        """The replica's own clock, offset by ``skew_clock`` to test clock-skew handling."""
        return time.time_ns() // 1_000_000 + self.faults.clock_offset_ms

    # -- fault controls -------------------------------------------------------------------
    async def drop_connections(self) -> int:
        """Cut every open websocket without a close frame; returns how many were cut."""
        sockets = list(self._sockets)
        for ws in sockets:
            self._abort(ws)
        return len(sockets)

    async def go_silent(self, seconds: float) -> None:
        """Send nothing (no data, no pings, no heartbeats) on open sockets for a while."""
        self.faults.silent_until = time.monotonic() + seconds

    async def resume(self) -> None:
        """End a silence or an outage early."""
        self.faults.silent_until = 0.0
        self.faults.down_until = 0.0

    async def down_for(self, seconds: float) -> None:
        """Be unreachable: cut sockets now and reset every connection for ``seconds``."""
        self.faults.down_until = time.monotonic() + seconds
        await self.drop_connections()

    async def fail_http(
        self,
        status: int,
        *,
        count: int = 1,
        retry_after: float | None = None,
        path: str | None = None,
        body: str = "",
    ) -> None:
        """Answer the next ``count`` REST requests (on ``path`` prefix) with ``status``;
        429 and 418 carry ``Retry-After`` when given."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error (400-599), got {status}")
        self.faults.arm_http(status, count, retry_after, path, body)

    async def time_out(
        self,
        *,
        count: int = 1,
        after_processing: bool = False,
        delay: float = 3.0,
        path: str | None = None,
    ) -> None:
        """Hold the next ``count`` REST requests for ``delay`` seconds. With
        ``after_processing`` the request takes effect first (the client cannot know)."""
        self.faults.arm_timeout(count, after_processing, delay, path)

    async def skip_sequence(self, count: int = 1) -> None:
        """Apply the next ``count`` book changes without publishing them (a gap)."""
        self.faults.skip_sequence += count

    async def corrupt_checksum(self, count: int = 1) -> None:
        """Publish the next ``count`` book messages with a wrong checksum."""
        self.faults.corrupt_checksum += count

    async def reject_next_order(self, reason: str = "", count: int = 1) -> None:
        """Refuse the next ``count`` new orders with the venue's rejection (``reason``
        overrides the message)."""
        self.faults.reject_orders.extend([reason] * count)

    async def partial_fill_next(self, fraction: Decimal | str = "0.5") -> None:
        """Fill the next resting order partly (``fraction`` of its size) on arrival."""
        value = Decimal(fraction)
        if not ZERO < value < 1:
            raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction}")
        self.faults.partial_fills.append(value)

    async def skew_clock(self, offset_ms: int) -> None:
        """Run the venue clock ``offset_ms`` ahead of (or behind) local time."""
        self.faults.clock_offset_ms = offset_ms

    # -- markets ----------------------------------------------------------------------------
    def add_market(
        self,
        key: str,
        market: ReplicaMarket,
        *,
        mid: Decimal | None = None,
        levels: int = 0,
        spacing: int = 1,
        lots: tuple[int, int] = (1, 1),
    ) -> None:
        """Register ``market`` under ``key`` (the name tests and the wire use). With a
        ``mid``, seed ``levels`` levels a side, ``spacing`` ticks apart, each holding a
        random number of lots in ``lots`` (drawn from the replica's seeded RNG)."""
        if mid is not None:
            for i in range(1, levels + 1):
                for side, sign in (("buy", -1), ("sell", 1)):
                    market.set_level(
                        side,
                        mid + sign * market.tick * (i * spacing),
                        market.lot * self._rng.randint(*lots),
                    )
        market.changed.clear()
        self.markets[key] = market

    def normalize_symbol(self, symbol: str) -> str:
        """The key in ``markets`` of the control API's ``symbol``. The default takes it
        as given; a venue replica whose venue accepts other spellings overrides it
        (Binance accepts any case)."""
        return symbol

    def _market(self, symbol: str) -> ReplicaMarket:
        try:
            return self.markets[self.normalize_symbol(symbol)]
        except KeyError:
            raise KeyError(
                f"unknown symbol {symbol!r}; replica has {sorted(self.markets)}"
            ) from None

    def _order_by_client(self, client_id: str) -> ReplicaOrder | None:
        for market in self.markets.values():
            if client_id in market.orders:
                return market.orders[client_id]
        return None

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
        return [o for m in markets for o in m.orders.values() if o.is_open or not open_only]

    async def set_level(
        self, symbol: str, side: str, price: str | Decimal, qty: str | Decimal
    ) -> None:
        """Other participants' absolute quantity at a level; published as a book change."""
        market = self._market(symbol)
        market.set_level(side, Decimal(price), Decimal(qty))
        await self.publish_book(market)

    async def set_book(
        self, symbol: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]]
    ) -> None:
        """Replace other participants' levels with ``bids`` and ``asks``; one change."""
        market = self._market(symbol)
        for side in ("buy", "sell"):
            for price in list(market.levels[side]):
                market.set_level(side, price, ZERO)
        for bid_price, bid_qty in bids:
            market.set_level("buy", Decimal(bid_price), Decimal(bid_qty))
        for ask_price, ask_qty in asks:
            market.set_level("sell", Decimal(ask_price), Decimal(ask_qty))
        await self.publish_book(market)

    async def churn(self, symbol: str, events: int = 10, seed: int | None = None) -> None:
        """Random level changes near the top of the book, each published on its own."""
        rng = random.Random(seed) if seed is not None else self._rng
        market = self._market(symbol)
        for _ in range(events):
            side = rng.choice(("buy", "sell"))
            levels = market.depth(side, 10)
            if not levels:
                continue
            sign = -1 if side == "buy" else 1
            price = levels[0][0] + sign * market.tick * rng.randint(0, self.churn_ticks)
            qty = market.lot * rng.choice((0, rng.randint(*self.churn_lots)))
            if price > 0:
                market.set_level(side, price, qty)
                await self.publish_book(market)

    async def fill_order(self, client_id: str, qty: str | Decimal | None = None) -> None:
        """Someone trades against our resting order (all of it, or ``qty``)."""
        for market in self.markets.values():
            order = market.orders.get(client_id)
            if order is not None and order.is_open:
                amount = None if qty is None else Decimal(qty)
                trade = market.fill_resting(client_id, amount, self.now_ms())
                await self.report_fill(trade)
                await self.publish_trade(market, trade, taker_side=other_side(order.side))
                await self.publish_book(market)
                return
        raise KeyError(f"no open replica order with client id {client_id!r}")

    # -- order flow ---------------------------------------------------------------------
    async def _execute(self, market: ReplicaMarket, order: ReplicaOrder) -> list[ReplicaTrade]:
        """Match a parsed order and put it on the wire: accepted, its fills as the taker,
        expired if nothing of it may rest, then a partial fill if one is armed
        (``partial_fill_next``), then the book. Raises ``OrderRejectedError`` (nothing
        accepted, nothing sent) when the matcher refuses it."""
        trades = market.submit(order, self.now_ms())
        self.accepted.append(order)
        self.on_accepted(order)
        await self.report_accepted(order)
        for trade in trades:
            await self.report_fill(trade)
            await self.publish_trade(market, trade, taker_side=order.side)
        if order.status == "expired":
            await self.report_expired(order)
        partial = self.faults.take_partial() if order.is_open else None
        if partial is not None:
            amount = order.remaining * partial
            amount -= amount % market.lot
            if amount > 0:
                trade = market.fill_resting(order.client_id, amount, self.now_ms())
                trades.append(trade)
                await self.report_fill(trade)
                await self.publish_trade(market, trade, taker_side=other_side(order.side))
        await self.publish_book(market)
        return trades

    def on_accepted(self, order: ReplicaOrder) -> None:  # noqa: B027 - optional hook
        """The matcher took ``order``: a venue replica that looks orders up by its own id
        (Kraken's txid) overrides this to index it, before any report about it goes out.
        The default does nothing."""

    # -- venue hooks: what goes on the wire (every venue replica implements these) ------
    @abstractmethod
    async def report_accepted(self, order: ReplicaOrder) -> None:
        """Tell the private stream the order is accepted."""

    @abstractmethod
    async def report_fill(self, trade: ReplicaTrade) -> None:
        """Tell the private stream about one fill of our order."""

    @abstractmethod
    async def report_expired(self, order: ReplicaOrder) -> None:
        """Tell the private stream the order expired (IOC or market remainder)."""

    @abstractmethod
    async def publish_trade(
        self, market: ReplicaMarket, trade: ReplicaTrade, *, taker_side: str
    ) -> None:
        """Put a trade on the public trade stream; ``taker_side`` is the aggressor."""

    @abstractmethod
    async def publish_book(self, market: ReplicaMarket) -> None:
        """Publish the market's changed levels (``market.take_changes()``)."""

    # -- recording playback -------------------------------------------------------------
    async def _play_paced(self, records: Iterable[Record], speed: float) -> None:
        """Hand each record to ``play_record`` at its recorded pace, ``speed`` times
        faster; ``played`` counts them and ``playback_done`` is set at the end (or on
        an error, so a waiting test does not hang)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        first: int | None = None
        try:
            for record in records:
                if first is None:
                    first = record.t_ns
                due = start + (record.t_ns - first) / 1e9 / speed
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.play_record(record)
                self.played += 1
        finally:
            self.playback_done.set()

    async def play_record(self, record: Record) -> None:
        """Serve one recorded message. A venue replica that can serve recordings
        overrides it; the default refuses."""
        raise NotImplementedError(f"the {self.venue} replica does not serve recordings")

    # -- websocket plumbing ---------------------------------------------------------------
    def _abort(self, ws: web.WebSocketResponse) -> None:
        self._sockets.discard(ws)
        req = getattr(ws, "_req", None)
        transport = req.transport if req is not None else None
        if transport is not None:
            transport.abort()

    async def open_socket(self, request: web.Request) -> web.WebSocketResponse:
        # Pings are ours (not aiohttp's) so that a silence fault stops them too.
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, max_msg_size=1 << 22)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.connections_opened += 1
        return ws

    async def read_loop(
        self, ws: web.WebSocketResponse, on_text: Callable[[str], Awaitable[None]]
    ) -> None:
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await on_text(msg.data)
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._sockets.discard(ws)
            self.forget_socket(ws)

    async def send_text(self, ws: web.WebSocketResponse, text: str) -> None:
        if ws.closed or self.faults.is_silent() or ws not in self._sockets:
            return
        try:
            await ws.send_str(text)
        except (ConnectionResetError, RuntimeError):
            self._sockets.discard(ws)

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            if self.faults.is_silent():
                continue
            for ws in list(self._sockets):
                with contextlib.suppress(Exception):
                    await self.on_ping_tick(ws)

    async def on_ping_tick(self, ws: web.WebSocketResponse) -> None:
        """Keep-alive per socket: a ping frame by default (Kraken sends heartbeats)."""
        await ws.ping()

    @abstractmethod
    def forget_socket(self, ws: web.WebSocketResponse) -> None:
        """A socket closed (``read_loop`` ended): drop it from the venue's subscription
        registries, whichever endpoint it came in on."""

    # -- REST faults ------------------------------------------------------------------------
    @web.middleware
    async def _fault_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.request_log.append((request.method, request.path))
        faults = self.faults
        if faults.is_down():
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await handler(request)
        fault = faults.take_http(request.path)
        if fault is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(int(fault.retry_after + 0.999))
            return self.error_response(fault.status, fault.body, headers)
        timeout = faults.take_timeout(request.path)
        if timeout is not None and not timeout.after_processing:
            await asyncio.sleep(timeout.delay)
            raise web.HTTPGatewayTimeout()
        response = await handler(request)
        if timeout is not None:
            await asyncio.sleep(timeout.delay)
        return response

    def error_response(self, status: int, body: str, headers: dict[str, str]) -> web.Response:
        """The venue's body for an injected HTTP error."""
        return web.Response(status=status, text=body or "", headers=headers)
