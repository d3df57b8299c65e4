"""What the Polymarket adapter hears about its orders: ``order`` and ``trade`` events of
the user channel, the REST order, open-orders and trades endpoints (lookups and
reconciliation), and balances. The venue has no client order ids: an order's id is the
hash of the signed order, which the adapter knows before sending it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge.exchanges.ccxt_orders import OrderTracking, TrackedOrder, VenueCallError
from quoteforge.exchanges.polymarket.wire import (
    ORDER_STATUS,
    ReportError,
    decimal_of,
    fee_of,
    liquidity_of,
    shown,
)
from quoteforge.model import Fill, Instrument, Order, OrderStatus, OrderUpdate, Side

if TYPE_CHECKING:
    from quoteforge.exchanges.polymarket.wire import OrderSigner, OutcomeToken

__all__ = ["PolymarketReports"]

_END_CURSOR = "LTE="
NS = 1_000_000_000
MAX_AHEAD_S = 86_400
"""A trade stamped further ahead of our clock than this is malformed: booked, it would
move the reconciliation's starting point past every later fill."""


class PolymarketReports(OrderTracking):
    """The reporting half of ``PolymarketClob`` (see the module docstring)."""

    # Provided by the adapter.
    instruments: dict[str, Instrument]
    tokens: dict[str, OutcomeToken]
    held: dict[str, int]
    signer: OrderSigner | None
    _by_asset: dict[str, str]
    _last_fill_s: int

    call: Callable[..., Awaitable[Any]]  # the adapter's REST call

    # -- order ids ---------------------------------------------------------------------------
    @property
    def _ids(self) -> dict[str, str]:
        ids: dict[str, str] | None = getattr(self, "_order_ids", None)
        if ids is None:
            ids = {}
            self._order_ids = ids
        return ids

    def remember(self, order_id: str, client_id: str) -> None:
        """``order_id`` (the signed order's hash) is our order ``client_id``."""
        self._ids[order_id.lower()] = client_id

    def know_orders(self, orders: Iterable[Order]) -> None:
        """Orders of an earlier life of the run (its journal's, handed over at a resume):
        the venue names an order by its hash only, so without them the trades those
        orders made while the bot was down would not be recognised as ours."""
        for order in orders:
            if order.exchange_id:
                self.remember(order.exchange_id, order.client_id)

    def client_id_of(self, order_id: str) -> str | None:
        """Our client id of the venue's order ``order_id``, if it is ours."""
        return self._ids.get(str(order_id).lower())

    # -- fills ---------------------------------------------------------------------------------
    def deliver_fill(self, fill: Fill) -> None:
        """Report a fill once, keeping the tokens held (what a resolution settles)."""
        if fill.fill_id in self._seen_fills:
            self.counters["duplicate_fills"] += 1
            return
        self.held[fill.symbol] = self.held.get(fill.symbol, 0) + int(fill.side) * fill.qty_lots
        self._emit_fill(fill)

    def fills_of_trade(self, trade: dict[str, Any]) -> list[Fill]:
        """Our fills in one trade (user channel or ``GET /data/trades``): the taker order
        if ours, and each maker order of ours, each at its own token, side and price. A
        trade that cannot be read whole is a ``ReportError`` naming what was wrong; none
        of its fills is returned then."""
        if type(trade) is not dict:
            raise ReportError(f"trade {shown(trade)} is not an object")
        status = str(trade.get("status", "")).upper()
        if status in ("FAILED", "RETRYING"):
            if status == "FAILED":
                logger.warning("{}: trade {} failed on chain", self.name, trade.get("id"))
            return []
        trade_id = trade.get("id")
        if type(trade_id) not in (str, int) or trade_id == "":
            raise ReportError(f"id {shown(trade_id)} is not a trade id")
        trade_id = str(trade_id)
        ts_s = self._trade_time(trade)
        makers = trade.get("maker_orders") or []
        if type(makers) is not list:
            raise ReportError(f"maker_orders {shown(makers)} is not a list")
        out = []
        taker_id = str(trade.get("taker_order_id", ""))
        taker_cid = self.client_id_of(taker_id)
        if taker_cid is not None:
            side = _side_of(trade.get("side"), "side")
            fill = self._fill(trade_id, taker_id, taker_cid, trade, "size", side, True, ts_s)
            if fill is not None:
                out.append(fill)
        taker_side = _side_of(trade.get("side", "BUY"), "side")
        for maker in makers:
            if type(maker) is not dict:
                raise ReportError(f"maker_orders entry {shown(maker)} is not an object")
            order_id = str(maker.get("order_id", ""))
            cid = self.client_id_of(order_id)
            if cid is None:
                continue
            if maker.get("side"):
                side = _side_of(maker["side"], "maker side")
            elif str(maker.get("asset_id")) == str(trade.get("asset_id")):
                side = taker_side.opposite
            else:  # the other outcome: both sides buy (mint) or both sell (merge)
                side = taker_side
            fill = self._fill(trade_id, order_id, cid, maker, "matched_amount", side, False, ts_s)
            if fill is not None:
                out.append(fill)
        self._last_fill_s = max(self._last_fill_s, ts_s)
        return out

    def _trade_time(self, trade: dict[str, Any]) -> int:
        """A trade's time in whole seconds; not before 1970 nor beyond ``MAX_AHEAD_S``
        ahead of our clock."""
        name = "match_time" if trade.get("match_time") else "timestamp"
        value = trade.get(name) or 0
        seconds = decimal_of(value, name)
        if not 0 <= seconds <= self.clock.now_ns() // NS + MAX_AHEAD_S:
            raise ReportError(f"{name} {shown(value)} is not a time in seconds up to now")
        return int(seconds)

    def _fill(
        self,
        trade_id: str,
        order_id: str,
        client_id: str,
        row: dict[str, Any],
        size_key: str,
        side: Side,
        taker: bool,
        ts_s: int,
    ) -> Fill | None:
        symbol = self._by_asset.get(str(row.get("asset_id")))
        if symbol is None:
            return None
        inst = self.instruments[symbol]
        price, price_ticks = _price_of(inst, row.get("price"), "price")
        size, lots = _lots_of(inst, row.get(size_key), size_key)
        tracked = self._orders.get(client_id)
        return Fill(
            venue=self.name,
            symbol=symbol,
            fill_id=f"{trade_id}:{order_id.lower()}",
            client_id=client_id,
            side=side,
            price_ticks=price_ticks,
            qty_lots=lots,
            fee=fee_of(row.get("fee_rate_bps"), price, size),
            fee_asset="USDC",
            liquidity=liquidity_of(str(row.get("trader_side", "")) if taker else "", taker),
            ts_ns=ts_s * NS,
            strategy=tracked.order.strategy if tracked else "",
        )

    # -- order events ----------------------------------------------------------------------------
    def _on_user_text(self, raw: str, recv_ns: int) -> None:
        if raw == "PONG":
            return
        try:
            msg = json.loads(raw, parse_float=Decimal)
        except (ValueError, RecursionError):
            logger.warning("{}: user channel sent non-JSON: {}", self.name, shown(raw))
            return
        for event in msg if isinstance(msg, list) else [msg]:
            if not isinstance(event, dict):
                logger.warning("{}: user event {} skipped: not an object", self.name, shown(event))
                continue
            kind = event.get("event_type")
            try:
                if kind == "order":
                    self.on_order_event(event)
                elif kind == "trade":
                    for fill in self.fills_of_trade(event):
                        self.deliver_fill(fill)
            except ReportError as exc:
                logger.warning(
                    "{}: {} event {} skipped: {}", self.name, kind, str(event.get("id"))[:100], exc
                )
            except (LookupError, TypeError, AttributeError, ArithmeticError, ValueError) as exc:
                # Every field is checked before anything is booked; this is the backstop
                # that keeps one unforeseen event from taking the socket down.
                logger.warning(
                    "{}: {} event {} skipped: unreadable ({}: {})",
                    self.name,
                    kind,
                    str(event.get("id"))[:100],
                    type(exc).__name__,
                    exc,
                )

    def on_order_event(self, event: dict[str, Any]) -> None:
        """A user-channel ``order`` event: placed, (partly) matched or cancelled. An
        event that cannot be read is a ``ReportError`` naming what was wrong."""
        order_id = str(event.get("id", ""))
        client_id = self.client_id_of(order_id)
        if client_id is None:
            return
        self.report(client_id, order_id, event, str(event.get("type", "")).upper())

    def report(
        self, client_id: str, order_id: str, row: dict[str, Any], kind: str = ""
    ) -> OrderUpdate | None:
        """Turn a venue order (event or REST row) into a report and send it; a
        ``ReportError`` (nothing sent) when the row cannot be read."""
        symbol = self._by_asset.get(str(row.get("asset_id")))
        tracked = self._orders.get(client_id)
        if symbol is None and tracked is not None:
            symbol = tracked.symbol
        if symbol is None:
            return None
        inst = self.instruments[symbol]
        original, matched, price_ticks = _order_amounts(inst, row)
        if kind == "CANCELLATION":
            status = OrderStatus.CANCELLED
        else:
            status = _status_of(row)
            if status is OrderStatus.OPEN and matched:
                status = OrderStatus.PARTIALLY_FILLED
            if status is OrderStatus.FILLED and original and matched < original:
                status = OrderStatus.PARTIALLY_FILLED
        update = OrderUpdate(
            self.name,
            client_id,
            status,
            self.clock.now_ns(),
            exchange_id=order_id,
            filled_lots=matched,
            price_ticks=price_ticks,
            qty_lots=original or None,
            symbol=symbol,
        )
        self._emit_update(update)
        return update

    # -- REST lookups ----------------------------------------------------------------------------
    async def lookup_order(self, order: TrackedOrder) -> OrderUpdate | None:
        if not order.exchange_id:
            return None
        row = await self.call("GET", f"/data/order/{order.exchange_id}", auth=True)
        if not isinstance(row, dict) or not row.get("id"):
            return None
        symbol = self._by_asset.get(str(row.get("asset_id")), order.symbol)
        inst = self.instruments[symbol]
        try:
            original, matched, price_ticks = _order_amounts(inst, row)
            status = _status_of(row)
        except ReportError as exc:
            # Unknown, not "not found": a lookup must never make an order look unplaced.
            raise VenueCallError("unknown", f"order {order.exchange_id}: {exc}") from None
        if status is OrderStatus.OPEN and matched:
            status = OrderStatus.PARTIALLY_FILLED
        return OrderUpdate(
            self.name,
            order.client_id,
            status,
            self.clock.now_ns(),
            exchange_id=order.exchange_id,
            filled_lots=matched,
            price_ticks=price_ticks,
            qty_lots=original or None,
            symbol=symbol,
        )

    async def _pages(self, path: str, query: dict[str, str], limit: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        cursor = ""
        for _ in range(1000):
            answer = await self.call(
                "GET",
                path,
                query={**query, "next_cursor": cursor} if cursor else query,
                auth=True,
                limit=limit,
            )
            if isinstance(answer, list):
                return rows + answer
            rows.extend((answer or {}).get("data") or [])
            cursor = str((answer or {}).get("next_cursor") or "")
            if not cursor or cursor == _END_CURSOR:
                break
        return rows

    async def fetch_open_orders(self) -> list[OrderUpdate]:
        out = []
        for row in await self._pages("/data/orders", {}, "GET /data/orders"):
            if not isinstance(row, dict):
                raise VenueCallError("unknown", f"GET /data/orders: {shown(row)} is no order")
            symbol = self._by_asset.get(str(row.get("asset_id")))
            if symbol is None:
                continue
            order_id = str(row.get("id", ""))
            client_id = self.client_id_of(order_id) or f"venue:{order_id}"
            try:
                original, matched, price_ticks = _order_amounts(self.instruments[symbol], row)
                if not original or price_ticks is None:
                    raise ReportError("an open order needs original_size and price")
            except ReportError as exc:
                # Left out, the order would look closed to the reconciliation.
                raise VenueCallError(
                    "unknown", f"GET /data/orders: order {order_id}: {exc}"
                ) from None
            out.append(
                OrderUpdate(
                    self.name,
                    client_id,
                    OrderStatus.PARTIALLY_FILLED if matched else OrderStatus.OPEN,
                    self.clock.now_ns(),
                    exchange_id=order_id,
                    filled_lots=matched,
                    price_ticks=price_ticks,
                    qty_lots=original,
                    symbol=symbol,
                )
            )
        return out

    async def fetch_fills(self, since_ns: int) -> list[Fill]:
        query = {"after": str(since_ns // NS)} if since_ns else {}
        fills: list[Fill] = []
        for trade in await self._pages("/data/trades", query, "GET /data/trades"):
            try:
                found = self.fills_of_trade(trade)
            except ReportError as exc:
                trade_id = trade.get("id") if isinstance(trade, dict) else None
                logger.warning(
                    "{}: trade {} of GET /data/trades skipped: {}", self.name, trade_id, exc
                )
                continue
            fills.extend(f for f in found if f.ts_ns >= since_ns)
        return fills

    async def fetch_balances(self) -> dict[str, Decimal]:
        sig = str(getattr(getattr(self, "params", None), "signature_type", 0))
        scale = Decimal(1_000_000)
        out: dict[str, Decimal] = {}
        answer = await self.call(
            "GET",
            "/balance-allowance",
            query={"asset_type": "COLLATERAL", "signature_type": sig},
            auth=True,
        )
        out["USDC"] = Decimal(str((answer or {}).get("balance", "0"))) / scale
        for symbol, token in self.tokens.items():
            answer = await self.call(
                "GET",
                "/balance-allowance",
                query={
                    "asset_type": "CONDITIONAL",
                    "token_id": token.token_id,
                    "signature_type": sig,
                },
                auth=True,
            )
            value = Decimal(str((answer or {}).get("balance", "0"))) / scale
            if value:
                out[symbol] = value
        return out


def _price_of(inst: Instrument, value: Any, name: str) -> tuple[Decimal, int]:
    """A token's price and its ticks: inside (0, 1) and on the instrument's tick."""
    price = decimal_of(value, name)
    if not 0 < price < 1:
        raise ReportError(f"{name} {shown(value)} outside (0, 1)")
    try:
        return price, inst.price_to_ticks(price)
    except ValueError:
        raise ReportError(f"{name} {shown(value)} is off the tick {inst.tick_size}") from None


def _lots_of(inst: Instrument, value: Any, name: str, *, zero: bool = False) -> tuple[Decimal, int]:
    """A size and its lots: above 0 (0 too with ``zero``) and on the lot."""
    size = decimal_of(value, name)
    if size < 0 or not (zero or size):
        raise ReportError(f"{name} {shown(value)} is not {'>= 0' if zero else '> 0'}")
    try:
        return size, inst.qty_to_lots(size)
    except ValueError:
        raise ReportError(f"{name} {shown(value)} is off the lot {inst.lot_size}") from None
    except ArithmeticError:
        raise ReportError(f"{name} {shown(value)} is too large") from None


def _side_of(value: Any, name: str) -> Side:
    if type(value) is not str:
        raise ReportError(f"{name} {shown(value)} is not BUY or SELL")
    try:
        return Side.parse(value)
    except ValueError:
        raise ReportError(f"{name} {shown(value)} is not BUY or SELL") from None


def _order_amounts(inst: Instrument, row: dict[str, Any]) -> tuple[int, int, int | None]:
    """An order row's original and matched lots (0 when not given) and its price in
    ticks (None when not given); matched never above the original."""
    original = matched = 0
    price_ticks = None
    text = row.get("original_size")
    if text is not None and text != "":
        original = _lots_of(inst, text, "original_size")[1]
    text = row.get("size_matched")
    if text is not None and text != "":
        matched = _lots_of(inst, text, "size_matched", zero=True)[1]
    if original and matched > original:
        raise ReportError(
            f"size_matched {shown(row.get('size_matched'))} exceeds original_size "
            f"{shown(row.get('original_size'))}"
        )
    text = row.get("price")
    if text is not None and text != "":
        price_ticks = _price_of(inst, text, "price")[1]
    return original, matched, price_ticks


def _status_of(row: dict[str, Any]) -> OrderStatus:
    """An order row's status (LIVE when not given); one the venue does not document is
    a ``ReportError``."""
    value = row.get("status") or "LIVE"
    status = ORDER_STATUS.get(value.upper()) if type(value) is str else None
    if status is None:
        raise ReportError(f"status {shown(value)} is not an order status the venue documents")
    return status
