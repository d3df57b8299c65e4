"""What the Polymarket adapter hears about its orders: ``order`` and ``trade`` events of
the user channel, the REST order, open-orders and trades endpoints (lookups and
reconciliation), and balances. The venue has no client order ids: an order's id is the
hash of the signed order, which the adapter knows before sending it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge.exchanges.ccxt_orders import OrderTracking, TrackedOrder
from quoteforge.exchanges.polymarket.wire import (
    ORDER_STATUS,
    fee_of,
    liquidity_of,
    plain,
)
from quoteforge.model import Fill, Instrument, OrderStatus, OrderUpdate, Side

if TYPE_CHECKING:
    from quoteforge.exchanges.polymarket.wire import OrderSigner, OutcomeToken

__all__ = ["PolymarketReports"]

_END_CURSOR = "LTE="
NS = 1_000_000_000


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
        if ours, and each maker order of ours, each at its own token, side and price."""
        status = str(trade.get("status", "")).upper()
        if status in ("FAILED", "RETRYING"):
            if status == "FAILED":
                logger.warning("{}: trade {} failed on chain", self.name, trade.get("id"))
            return []
        trade_id = str(trade["id"])
        ts_s = int(Decimal(str(trade.get("match_time") or trade.get("timestamp") or 0)))
        self._last_fill_s = max(self._last_fill_s, ts_s)
        out = []
        taker_id = str(trade.get("taker_order_id", ""))
        taker_cid = self.client_id_of(taker_id)
        if taker_cid is not None:
            fill = self._fill(
                trade_id, taker_id, taker_cid, trade, Side.parse(str(trade["side"])), True, ts_s
            )
            if fill is not None:
                out.append(fill)
        taker_side = Side.parse(str(trade.get("side", "BUY")))
        for maker in trade.get("maker_orders") or []:
            order_id = str(maker.get("order_id", ""))
            cid = self.client_id_of(order_id)
            if cid is None:
                continue
            if maker.get("side"):
                side = Side.parse(str(maker["side"]))
            elif str(maker.get("asset_id")) == str(trade.get("asset_id")):
                side = taker_side.opposite
            else:  # the other outcome: both sides buy (mint) or both sell (merge)
                side = taker_side
            entry = {**maker, "size": maker.get("matched_amount")}
            fill = self._fill(trade_id, order_id, cid, entry, side, False, ts_s)
            if fill is not None:
                out.append(fill)
        return out

    def _fill(
        self,
        trade_id: str,
        order_id: str,
        client_id: str,
        row: dict[str, Any],
        side: Side,
        taker: bool,
        ts_s: int,
    ) -> Fill | None:
        symbol = self._by_asset.get(str(row.get("asset_id")))
        if symbol is None:
            return None
        inst = self.instruments[symbol]
        price = Decimal(plain(row["price"]))
        size = Decimal(plain(row["size"]))
        tracked = self._orders.get(client_id)
        return Fill(
            venue=self.name,
            symbol=symbol,
            fill_id=f"{trade_id}:{order_id.lower()}",
            client_id=client_id,
            side=side,
            price_ticks=inst.price_to_ticks(price),
            qty_lots=inst.qty_to_lots(size),
            fee=fee_of(row.get("fee_rate_bps"), price, size),
            fee_asset="USDC",
            liquidity=liquidity_of(str(row.get("trader_side", "")) if taker else "", taker),
            ts_ns=ts_s * NS,
            strategy=tracked.order.strategy if tracked else "",
        )

    # -- order events ----------------------------------------------------------------------------
    def on_order_event(self, event: dict[str, Any]) -> None:
        """A user-channel ``order`` event: placed, (partly) matched or cancelled."""
        order_id = str(event.get("id", ""))
        client_id = self.client_id_of(order_id)
        if client_id is None:
            return
        self.report(client_id, order_id, event, str(event.get("type", "")).upper())

    def report(
        self, client_id: str, order_id: str, row: dict[str, Any], kind: str = ""
    ) -> OrderUpdate | None:
        """Turn a venue order (event or REST row) into a report and send it."""
        symbol = self._by_asset.get(str(row.get("asset_id")))
        tracked = self._orders.get(client_id)
        if symbol is None and tracked is not None:
            symbol = tracked.symbol
        if symbol is None:
            return None
        inst = self.instruments[symbol]
        original = inst.qty_to_lots(plain(row.get("original_size") or "0"))
        matched = inst.qty_to_lots(plain(row.get("size_matched") or "0"))
        if kind == "CANCELLATION":
            status = OrderStatus.CANCELLED
        else:
            status = ORDER_STATUS.get(str(row.get("status", "LIVE")).upper(), OrderStatus.OPEN)
            if status is OrderStatus.OPEN and matched:
                status = OrderStatus.PARTIALLY_FILLED
            if status is OrderStatus.FILLED and original and matched < original:
                status = OrderStatus.PARTIALLY_FILLED
        price = row.get("price")
        update = OrderUpdate(
            self.name,
            client_id,
            status,
            self.clock.now_ns(),
            exchange_id=order_id,
            filled_lots=matched,
            price_ticks=inst.price_to_ticks(plain(price)) if price is not None else None,
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
        original = inst.qty_to_lots(plain(row.get("original_size") or "0"))
        matched = inst.qty_to_lots(plain(row.get("size_matched") or "0"))
        status = ORDER_STATUS.get(str(row.get("status", "")).upper(), OrderStatus.OPEN)
        if status is OrderStatus.OPEN and matched:
            status = OrderStatus.PARTIALLY_FILLED
        return OrderUpdate(
            self.name,
            order.client_id,
            status,
            self.clock.now_ns(),
            exchange_id=order.exchange_id,
            filled_lots=matched,
            price_ticks=inst.price_to_ticks(plain(row["price"])) if row.get("price") else None,
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
            symbol = self._by_asset.get(str(row.get("asset_id")))
            if symbol is None:
                continue
            order_id = str(row.get("id", ""))
            client_id = self.client_id_of(order_id) or f"venue:{order_id}"
            inst = self.instruments[symbol]
            matched = inst.qty_to_lots(plain(row.get("size_matched") or "0"))
            out.append(
                OrderUpdate(
                    self.name,
                    client_id,
                    OrderStatus.PARTIALLY_FILLED if matched else OrderStatus.OPEN,
                    self.clock.now_ns(),
                    exchange_id=order_id,
                    filled_lots=matched,
                    price_ticks=inst.price_to_ticks(plain(row["price"])),
                    qty_lots=inst.qty_to_lots(plain(row["original_size"])),
                    symbol=symbol,
                )
            )
        return out

    async def fetch_fills(self, since_ns: int) -> list[Fill]:
        query = {"after": str(since_ns // NS)} if since_ns else {}
        fills: list[Fill] = []
        for trade in await self._pages("/data/trades", query, "GET /data/trades"):
            fills.extend(f for f in self.fills_of_trade(trade) if f.ts_ns >= since_ns)
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
