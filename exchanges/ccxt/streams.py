"""The streams of the generic ccxt adapter: one loop per ccxt ``watch_*`` (books,
public trades, our orders, our trades), a REST poll in place of any ``watch_*`` the
venue lacks, and a watchdog that treats a silent websocket as down.

ccxt reconnects by itself on the next ``watch_*`` call after an error; these loops decide
what an error means for the book (``ChecksumError``/``InvalidNonce``: RESYNCING;
disconnect or silence: STALE, then RESYNCING while reconnecting) and, for the private
streams, recover what was missed (order look-ups and our trades over REST).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge.exchanges.ccxt.feeds import BookFeed, fill_from_trade
from quoteforge.exchanges.ccxt.venues import MarketGridError, grid_units
from quoteforge.exchanges.ccxt_base import Backoff, VenueCallError, require_ccxt
from quoteforge.model import Fill, OrderStatus, Side

if TYPE_CHECKING:
    from quoteforge.exchanges.ccxt.adapter import CcxtVenue

__all__ = ["CcxtStreams"]


def _now_ms() -> int:
    return int(time.time() * 1000)


class CcxtStreams:
    """The market-data and private loops of one ``CcxtVenue`` (composition: the
    adapter owns one and calls ``start``/``stop``)."""

    def __init__(self, venue: CcxtVenue) -> None:
        self.venue = venue
        self.feeds: dict[str, BookFeed] = {}
        self.private_down_since_ms: int | None = None
        self._seen_trades: dict[str, deque[str]] = {}
        self._one_page_warned = False

    def backoff(self) -> Backoff:
        p = self.venue.params
        return Backoff(p.reconnect_initial_s, p.reconnect_max_s, self.venue.rng)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        v, p = self.venue, self.venue.params
        market_has = v.market_client.has
        for symbol, instrument in v.instruments.items():
            feed = BookFeed(
                instrument, v.clock, v.book_state_observer, p.book_depth, p.book_stale_after_s
            )
            self.feeds[symbol] = feed
            v.books[symbol] = feed.book
            if p.book_stale_after_s:
                feed.machine.start_watchdog()
            v.spawn_task(self.book_loop(symbol), f"{v.name}/book/{symbol}")
            if p.public_trades and (market_has.get("watchTrades") or market_has.get("fetchTrades")):
                v.spawn_task(self.trade_loop(symbol), f"{v.name}/trades/{symbol}")
        v.spawn_task(self.silence_watchdog(), f"{v.name}/silence")
        if not v.has_credentials:
            return
        v.spawn_task(self.orders_loop(), f"{v.name}/orders")
        v.spawn_task(self.my_trades_loop(), f"{v.name}/my_trades")
        if v.has.get("watchOrders") and not await self.wait_private_ready(p.start_timeout_s):
            logger.warning(
                "{}: the private stream did not connect within {} s; order reports come "
                "from REST answers and look-ups until it does",
                v.name,
                p.start_timeout_s,
            )

    async def stop(self) -> None:
        for feed in self.feeds.values():
            feed.machine.stop_watchdog()

    async def wait_private_ready(self, timeout: float) -> bool:
        """Until a private websocket of the trade client is connected (ccxt subscribes
        on connect), or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            clients = list((self.venue.trade_client.clients or {}).values())
            if any(getattr(c, "isConnected", False) and not c.closed() for c in clients):
                await asyncio.sleep(0.05)  # the subscribe frame follows the connect
                return True
            await asyncio.sleep(0.02)
        return False

    # -- books ---------------------------------------------------------------------------
    async def book_loop(self, symbol: str) -> None:
        v, p = self.venue, self.venue.params
        errors = require_ccxt()
        feed = self.feeds[symbol]
        unified = v.ccxt_symbol[symbol]
        client = v.market_client
        watch = bool(client.has.get("watchOrderBook"))
        if not watch:
            logger.info("{}: {} has no watchOrderBook; polling the REST book", v.name, v.ccxt_id)
        backoff = self.backoff()
        while not v.closed:
            try:
                if watch:
                    ob = await client.watch_order_book(unified, p.book_depth)
                else:
                    ob = await client.fetch_order_book(unified, p.book_depth)
            except asyncio.CancelledError:
                raise
            except errors.InvalidNonce as exc:  # ChecksumError is an InvalidNonce
                check = "checksum" if isinstance(exc, errors.ChecksumError) else "nonce"
                feed.resyncing(f"ccxt {type(exc).__name__} ({check} check failed): {exc}")
                await asyncio.sleep(p.reconnect_initial_s / 10)
                continue
            except Exception as exc:
                feed.down(f"market data down: {type(exc).__name__}: {str(exc)[:200]}")
                await asyncio.sleep(backoff.next_delay())
                feed.resyncing("reconnecting to the market data stream")
                continue
            backoff.reset()
            reason = feed.apply(ob, v.clock.now_ns())
            if reason is not None:
                feed.resyncing(reason)
                self.force_reconnect(client, reason)
                continue
            v.emit_book(feed.book)
            if not watch:
                await asyncio.sleep(p.poll_interval_s)

    def force_reconnect(self, client: Any, reason: str) -> None:
        """Drop every websocket of ``client``: pending watches fail, and the next
        ``watch_*`` reconnects and subscribes afresh (a new snapshot)."""
        errors = require_ccxt()
        for ws in list((client.clients or {}).values()):
            if not ws.closed():
                ws.on_error(errors.NetworkError(reason))

    async def silence_watchdog(self) -> None:
        """A websocket with no frame (data, ping, heartbeat) for ``silence_timeout_s``
        is down: ccxt's own keep-alive is venue-paced and often minutes long."""
        v, p = self.venue, self.venue.params
        errors = require_ccxt()
        limit_ms = p.silence_timeout_s * 1000
        while not v.closed:
            await asyncio.sleep(p.silence_timeout_s / 4)
            # A subscription lost on the way (sent to a venue that did not answer) leaves
            # a live socket and a watch that never returns: resubscribe.
            waiting = [s for s, f in self.feeds.items() if f.waited_s() > 2 * p.silence_timeout_s]
            if waiting:
                logger.warning("{}: no book for {} yet; resubscribing", v.name, waiting)
                for symbol in waiting:
                    self.feeds[symbol].waiting_since = time.monotonic()
                self.force_reconnect(v.market_client, f"no book for {waiting}")
            now = _now_ms()
            for client in (v.market_client, v.trade_client):
                for ws in list((client.clients or {}).values()):
                    if ws.closed() or not getattr(ws, "isConnected", False):
                        continue
                    last = ws.last_message_at or ws.connectionEstablished
                    if last and now - last > limit_ms:
                        logger.warning("{}: {} silent for {} ms", v.name, ws.url, now - last)
                        ws.on_error(
                            errors.RequestTimeout(f"no frame for {(now - last) / 1000:.1f} s")
                        )

    # -- public trades ---------------------------------------------------------------------
    async def trade_loop(self, symbol: str) -> None:
        v, p = self.venue, self.venue.params
        client = v.market_client
        unified = v.ccxt_symbol[symbol]
        watch = bool(client.has.get("watchTrades"))
        instrument = v.instruments[symbol]
        seen = self._seen_trades.setdefault(symbol, deque(maxlen=2000))
        backoff = self.backoff()
        while not v.closed:
            try:
                if watch:
                    trades = await client.watch_trades(unified)
                else:
                    await asyncio.sleep(p.poll_interval_s)
                    trades = await client.fetch_trades(unified)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("{}: trades of {}: {}", v.name, symbol, exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            for trade in trades:
                trade_id = str(trade.get("id"))
                if trade.get("id") is not None:
                    if trade_id in seen:
                        continue
                    seen.append(trade_id)
                try:
                    ticks = grid_units(trade["price"], float(instrument.tick_size), "trade price")
                    lots = grid_units(trade["amount"], float(instrument.lot_size), "trade qty")
                except (MarketGridError, KeyError, TypeError) as exc:
                    logger.warning("{}: trade of {} skipped: {}", v.name, symbol, exc)
                    continue
                side = Side.BUY if trade.get("side") == "buy" else Side.SELL
                ts = trade.get("timestamp")
                v.emit_trade(symbol, ticks, lots, side, int(ts) * 1_000_000 if ts else 0)

    # -- our orders and trades ---------------------------------------------------------------
    async def orders_loop(self) -> None:
        v, p = self.venue, self.venue.params
        client = v.trade_client
        if not v.has.get("watchOrders"):
            logger.info("{}: {} has no watchOrders; looking orders up over REST", v.name, v.ccxt_id)
            while not v.closed:
                await asyncio.sleep(p.poll_interval_s)
                await self.recover()
            return
        backoff = self.backoff()
        recovering = False
        while not v.closed:
            pending = asyncio.ensure_future(client.watch_orders())
            try:
                if recovering and await self.wait_private_ready(p.start_timeout_s):
                    recovering = False
                    await self.recover()
                orders = await pending
            except asyncio.CancelledError:
                pending.cancel()
                raise
            except Exception as exc:
                if not pending.done():
                    pending.cancel()
                logger.info("{}: private stream down: {}: {}", v.name, type(exc).__name__, exc)
                if self.private_down_since_ms is None:
                    self.private_down_since_ms = _now_ms()
                recovering = True
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            for order in orders:
                self.on_order(order)

    async def recover(self) -> None:
        """After the private stream was down (or in place of it): reconcile."""
        try:
            await self.venue.reconcile_orders()
        except Exception:
            logger.exception("{}: recovery after the private stream failed", self.venue.name)

    def on_order(self, order: dict[str, Any]) -> None:
        v = self.venue
        symbol = v.our_symbol.get(str(order.get("symbol")))
        if symbol is None:
            return
        client_id = v.client_id_for(order)
        if client_id is None:
            return
        v.emit_order_update(
            v.update_from_order(order, client_id, v.instruments[symbol], OrderStatus.OPEN)
        )

    async def my_trades_loop(self) -> None:
        v, p = self.venue, self.venue.params
        client = v.trade_client
        watch = bool(v.has.get("watchMyTrades"))
        if not watch and not v.has.get("fetchMyTrades"):
            logger.warning(
                "{}: {} can neither watch nor fetch our trades: fills are not reported",
                v.name,
                v.ccxt_id,
            )
            return
        backoff = self.backoff()
        since = _now_ms() - 60_000
        while not v.closed:
            try:
                if watch:
                    trades = await client.watch_my_trades()
                else:
                    await asyncio.sleep(p.poll_interval_s)
                    trades = []
                    for symbol in v.ccxt_symbol:
                        trades += await self.trade_rows(symbol, since)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("{}: our trades: {}", v.name, exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            for trade in trades:
                fill = self.fill_of(trade, stream=watch)
                if fill is not None:
                    v.emit_fill(fill)
                    since = max(since, fill.ts_ns // 1_000_000 - 60_000)

    def fill_of(self, trade: dict[str, Any], *, stream: bool = False) -> Fill | None:
        """Our trade as a fill (None: not ours, or unreadable); ``stream``: it came from
        ``watch_my_trades`` (whose fee sign some ccxt parsers leave as the venue's)."""
        v = self.venue
        fee_sign = v.profile.stream_fee_sign if stream and v.profile else 1
        symbol = v.our_symbol.get(str(trade.get("symbol")))
        if symbol is None:
            return None
        client_id = v.client_id_for(trade, "order")
        if client_id is None:
            logger.debug("{}: trade {} of an order not ours", v.name, trade.get("id"))
            return None
        try:
            return fill_from_trade(
                v.name, symbol, v.instruments[symbol], trade, client_id, fee_sign
            )
        except (MarketGridError, KeyError, TypeError) as exc:
            logger.warning("{}: fill {} unreadable: {}", v.name, trade.get("id"), exc)
            return None

    async def my_trades(self, symbol: str, since_ms: int) -> list[Fill]:
        """Our trades on ``symbol`` since ``since_ms`` over REST, as fills."""
        rows = await self.trade_rows(symbol, since_ms)
        return [f for f in (self.fill_of(row) for row in rows) if f is not None]

    async def trade_rows(self, symbol: str, since_ms: int) -> list[dict[str, Any]]:
        """Our ccxt trades on ``symbol`` since ``since_ms`` over REST, every page of them as
        the venue's profile says it pages (``CheckedVenue.my_trades_paging``), each once
        (by trade id: a trade made while paging may repeat a row, never skip one)."""
        v = self.venue
        fetch, wanted = v.trade_client.fetch_my_trades, v.ccxt_symbol[symbol]
        paging = v.profile.my_trades_paging if v.profile else ""
        found: dict[str, dict[str, Any]] = {}

        def add(page: Any) -> int:
            """Keep a page's trades; how many were new."""
            if not isinstance(page, list):
                raise VenueCallError("unknown", f"fetch_my_trades answered {str(page)[:200]}")
            before = len(found)
            for trade in page:
                if isinstance(trade, dict):
                    found.setdefault(str(trade.get("id")), trade)
            return len(found) - before

        if paging == "from_id":
            size = v.profile.my_trades_page if v.profile else 0
            page = await v.call(fetch, wanted, since_ms, size)
            add(page)
            while size and len(page) >= size:
                after = max(int(t["id"]) for t in page) + 1
                page = await v.call(fetch, wanted, None, size, {"fromId": after})
                add(page)
        elif paging == "offset":
            # Every pair's trades (a symbol would be filtered after the page is cut, and
            # the offset counts the venue's rows); ours are picked below.
            ofs = 0
            while True:
                page = await v.call(fetch, None, since_ms, None, {"ofs": ofs})
                if not page:
                    break
                add(page)
                ofs += len(page)
        elif paging == "after":
            params: dict[str, Any] = {}
            while add(page := await v.call(fetch, wanted, since_ms, None, params)):
                bills = [str(t.get("info", {}).get("billId") or "") for t in page]
                if not all(b.isdigit() for b in bills):
                    break
                params = {"after": min(bills, key=int)}
        else:
            if not self._one_page_warned:
                self._one_page_warned = True
                logger.warning(
                    "{}: how {} pages our trade history is not known here: each read takes "
                    "one fetch_my_trades answer, so trades beyond it are missed (more "
                    "trades than one answer between reads, or a long outage)",
                    v.name,
                    v.ccxt_id,
                )
            add(await v.call(fetch, wanted, since_ms))
        rows = [t for t in found.values() if t.get("symbol") == wanted]
        return sorted(rows, key=lambda t: (t.get("timestamp") or 0, str(t.get("id"))))

    async def recover_fills(self, symbols: set[str]) -> None:
        """Our trades since the private stream went down (or the last hour), over REST."""
        v = self.venue
        if not v.has.get("fetchMyTrades"):
            return
        since = self.private_down_since_ms
        self.private_down_since_ms = None
        start = (since or _now_ms() - 3_600_000) - 5_000
        for symbol in symbols:
            try:
                for fill in await self.my_trades(symbol, start):
                    v.emit_fill(fill)
            except VenueCallError as exc:
                logger.warning("{}: recovering fills of {} failed: {}", v.name, symbol, exc)
