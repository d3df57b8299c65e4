"""Binance USDⓈ-M futures adapter (``type: binance_usdm``): pu-chained diff depth, trades
and mark prices on one market socket; order entry (limit, post-only GTX, IOC, market,
reduce-only, cancel, cancel-all, batch orders, modify) over signed REST through ccxt;
positions, funding and order reports from the listen-key user stream (venue.py)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge import hookimpl
from quoteforge.exchange import OrderAction, PlaceOrder
from quoteforge.exchanges.binance.family import STATUS, check_client_id
from quoteforge.exchanges.binance_usdm.venue import BinanceUsdmParams, UsdmAccountVenue
from quoteforge.exchanges.ccxt_base import (
    LatencyEndpoints,
    TrackedOrder,
    VenueCallError,
    VenueFactory,
)
from quoteforge.model import (
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
)

if TYPE_CHECKING:
    pass

__all__ = [
    "BinanceUsdm",
    "BinanceUsdmParams",
    "create_binance_usdm",
    "quoteforge_register_exchanges",
]

BATCH_MAX = 5  # POST /fapi/v1/batchOrders takes at most 5 orders


class BinanceUsdm(UsdmAccountVenue):
    """Binance USDⓈ-M futures. Strategies see the signed position where spot strategies
    see inventory; reduce-only orders and funding payments reach the run through the
    kernel's order flag and ``on_funding``."""

    def latency_endpoints(self) -> LatencyEndpoints:
        if not self.ctx.symbols:
            raise ValueError(f"exchange {self.name!r}: give it a symbol to open a stream of")
        native = self.ctx.symbols[0].replace("/", "").replace("-", "").lower()
        return LatencyEndpoints(
            f"{self.rest_base}/fapi/v1/time", f"{self.streams_base}/ws/{native}@trade"
        )

    def latency_order_wait_s(self, symbol: str) -> float:
        return self.governor.delay_for(1, orders=1)

    # -- start ---------------------------------------------------------------------------------
    async def start_streams(self) -> None:
        if self.has_credentials:
            await self.configure_account()
        self.start_market_data()
        if self.has_credentials:
            await self.refresh_positions()
            await self.start_user_stream()
            if self.params.auto_cancel_after_s is not None:
                await self.start_auto_cancel(self.params.auto_cancel_after_s, self._countdown)
        self.spawn_task(self._time_sync_loop(), f"{self.name}/time-sync")

    async def _countdown(self, seconds: float) -> None:
        """``POST /fapi/v1/countdownCancelAll`` for every traded symbol (weight 10 each)."""
        for native in self._native.values():
            params = {"symbol": native, "countdownTime": int(seconds * 1000)}
            await self._with_rate_retry(
                functools.partial(
                    self._call, "fapiprivate_post_countdowncancelall", params, weight=10
                )
            )

    def market_url(self) -> str:
        interval = self.params.depth_interval_ms
        speed = "" if interval == 250 else f"@{interval}ms"
        names = []
        for native in self._native.values():
            lower = native.lower()
            names.append(f"{lower}@depth{speed}")
            if self.params.public_trades:
                names.append(f"{lower}@trade")
            if self.params.mark_price_stream:
                names.append(f"{lower}@markPrice@1s")
        return f"{self.streams_base}/stream?streams={'/'.join(names)}"

    def on_market_message(self, symbol: str, kind: str, data: dict[str, Any]) -> None:
        if kind.startswith("markPrice"):
            try:
                self.on_mark_price(symbol, data)
            except (KeyError, ValueError) as exc:
                logger.warning("{}: bad mark price message ({}): {!r}", self.name, exc, data)
            return
        super().on_market_message(symbol, kind, data)

    # -- orders --------------------------------------------------------------------------------
    def order_params(self, tracked: TrackedOrder) -> dict[str, Any]:
        """The fapi parameters of one new order: GTX for post-only, ``reduceOnly`` in
        one-way mode, ``positionSide`` in hedge mode (a reduce-only BUY closes SHORT)."""
        order = tracked.order
        check_client_id(order.client_id)
        params: dict[str, Any] = {
            "symbol": self._native[order.symbol],
            "side": "BUY" if order.side is Side.BUY else "SELL",
            "quantity": tracked.qty_text(),
            "newClientOrderId": order.client_id,
            "newOrderRespType": "RESULT",
        }
        if order.order_type is OrderType.MARKET:
            params["type"] = "MARKET"
        else:
            tif = {TimeInForce.POST_ONLY: "GTX", TimeInForce.IOC: "IOC"}.get(order.tif, "GTC")
            params.update(type="LIMIT", price=tracked.price_text(), timeInForce=tif)
        if self.params.position_mode == "hedge":
            opens_long = (order.side is Side.BUY) != order.reduce_only
            params["positionSide"] = "LONG" if opens_long else "SHORT"
        elif order.reduce_only:
            params["reduceOnly"] = "true"
        return params

    def order_report(self, data: dict[str, Any], client_id: str | None = None) -> OrderUpdate:
        symbol = self._by_native[data["symbol"]]
        inst = self.instruments[symbol]
        price = Decimal(data.get("price") or "0")
        return OrderUpdate(
            self.name,
            client_id or data["clientOrderId"],
            STATUS.get(data["status"], OrderStatus.OPEN),
            int(data.get("updateTime") or 0) * 1_000_000 or self.clock.now_ns(),
            exchange_id=str(data["orderId"]),
            filled_lots=inst.qty_to_lots(data["executedQty"]),
            price_ticks=inst.price_to_ticks(price) if price else None,
            qty_lots=inst.qty_to_lots(data["origQty"]),
            symbol=symbol,
        )

    async def send_place(self, order: TrackedOrder) -> None:
        data = await self._call(
            "fapiprivate_post_order", self.order_params(order), weight=0, orders=1, places=[order]
        )
        order.exchange_id = str(data["orderId"])
        self._emit_update(self.order_report(data, order.client_id))

    async def send_cancel_all(self, symbol: str) -> None:
        """``DELETE /fapi/v1/allOpenOrders`` answers only "done": each order's end comes
        on the user stream, and is asked for here too so a quiet stream loses none."""
        await self._call("fapiprivate_delete_allopenorders", {"symbol": self._native[symbol]})
        for tracked in list(self._orders.values()):
            if tracked.symbol == symbol and not tracked.status.is_terminal:
                update = await self._lookup_quietly(tracked)
                if update is not None:
                    self._emit_update(update)

    async def modify(self, client_id: str, price_ticks: int, qty_lots: int) -> None:
        """``PUT /fapi/v1/order``: a new price and quantity for a resting LIMIT order,
        same client id. The venue re-queues a modified order (no priority kept)."""
        tracked = self.tracked(client_id)
        if tracked is None or tracked.status.is_terminal:
            raise ValueError(f"{self.name}: no working order {client_id!r} to modify")
        inst = tracked.instrument
        data = await self._with_rate_retry(
            lambda: self._call(
                "fapiprivate_put_order",
                {
                    "symbol": self._native[tracked.symbol],
                    "origClientOrderId": client_id,
                    "side": "BUY" if tracked.order.side is Side.BUY else "SELL",
                    "quantity": format(inst.lots_to_qty(qty_lots), "f"),
                    "price": format(inst.ticks_to_price(price_ticks), "f"),
                },
                weight=0,
                orders=1,
            )
        )
        tracked.order.price_ticks, tracked.order.qty_lots = price_ticks, qty_lots
        self._emit_update(self.order_report(data, client_id))

    # -- batches -------------------------------------------------------------------------------
    def submit(self, actions: Sequence[OrderAction]) -> None:
        """New orders handed over together go out in batches of up to five
        (``POST /fapi/v1/batchOrders``); everything else as on spot."""
        fresh = [
            a
            for a in actions
            if isinstance(a, PlaceOrder) and a.order.client_id not in self._chains
        ]
        if len(fresh) < 2:
            super().submit(actions)
            return
        super().submit([a for a in actions if not any(a is f for f in fresh)])
        for i in range(0, len(fresh), BATCH_MAX):
            chunk = [a.order for a in fresh[i : i + BATCH_MAX]]
            keys = tuple(o.client_id for o in chunk)
            task = self.spawn_task(self._place_batch(chunk), f"{self.name}/batch")
            for key in keys:
                self._chains[key] = task
            task.add_done_callback(functools.partial(self._unchain, keys))

    async def _place_batch(self, orders: list[Any]) -> None:
        tracked = [t for t in (self._track(o) for o in orders) if t is not None]
        if len(tracked) < 2:
            for one in tracked:
                await self._place_checked(one)
            return
        try:
            batch = [self.order_params(t) for t in tracked]
            rows = await self._call(
                "fapiprivate_post_batchorders",
                {"batchOrders": batch},
                weight=5,
                orders=len(batch),
                places=tracked,
            )
        except VenueCallError as exc:
            if exc.kind in ("rejected", "auth"):
                for one in tracked:
                    self._emit(
                        OrderUpdate(
                            self.name,
                            one.client_id,
                            OrderStatus.REJECTED,
                            self.clock.now_ns(),
                            reason=str(exc),
                        )
                    )
                return
            # Rate limited or unknown: each order on its own path (retry or look-up).
            for one in tracked:
                if exc.kind == "unknown":
                    await self._resolve_unknown(one, str(exc))
                else:
                    await self._place_checked(one)
            return
        for one, row in zip(tracked, rows, strict=False):
            if "orderId" in row:
                one.exchange_id = str(row["orderId"])
                self._emit_update(self.order_report(row, one.client_id))
                continue
            error = self.classify_http_error(400, json.dumps(row))
            if error.kind == "unknown":
                await self._resolve_unknown(one, str(error))
            else:
                self.counters["rejected"] += 1
                self._emit(
                    OrderUpdate(
                        self.name,
                        one.client_id,
                        OrderStatus.REJECTED,
                        self.clock.now_ns(),
                        reason=str(error),
                    )
                )

    # -- reconciliation ------------------------------------------------------------------------
    async def reconcile_orders(self) -> None:
        """After the user stream was down or its key expired: every working order, our
        trades, positions and funding since then."""
        await super().reconcile_orders()
        try:
            await self.refresh_positions()
            await self.recover_funding()
        except VenueCallError as exc:
            logger.warning("{}: position/funding recovery failed: {}", self.name, exc)

    async def fetch_balances(self) -> dict[str, Decimal]:
        """Wallet balance per margin asset (``GET /fapi/v2/account``), and per base asset
        the net position of its symbol, so the run's balance-drift check compares the
        venue's positions with what our fills explain."""
        self.require_credentials("balances")
        data = await self._read_patiently(
            functools.partial(self._call, "fapiprivatev2_get_account", weight=5), "the balances"
        )
        out = {
            row["asset"]: Decimal(row["walletBalance"])
            for row in data.get("assets", [])
            if Decimal(row["walletBalance"])
        }
        for row in data.get("positions", []):
            symbol = self._by_native.get(row.get("symbol", ""))
            if symbol is not None:
                base = self.instruments[symbol].base
                out[base] = out.get(base, Decimal(0)) + Decimal(row["positionAmt"])
        return out


@hookimpl
def quoteforge_register_commands(register: Any) -> None:
    from quoteforge.exchanges.binance_usdm.flatten import flatten_main

    register(
        "flatten",
        flatten_main,
        help="close a finished or killed run's futures positions with reduce-only orders",
        requires=("ccxt",),
    )


create_binance_usdm = VenueFactory(BinanceUsdmParams, BinanceUsdm)
"""Factory the registry calls with the manifest's params and the run context."""


@hookimpl
def quoteforge_register_exchanges(register: Any) -> None:
    create_binance_usdm.register(
        register,
        "binance_usdm",
        description="Binance USDⓈ-M perpetual futures (positions, funding, reduce-only, "
        "listen-key user stream).",
        requires=("ccxt",),
    )
