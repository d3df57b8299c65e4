"""A local Binance USDⓈ-M futures replica for tests, written from the venue's
documentation: the ``/fapi`` REST API (orders with GTX, reduce-only, position side,
batch orders, modify, cancel-all; positions, leverage, margin type, income, listen
keys), the pu-chained diff depth, trade and mark-price streams, and the listen-key user
data stream (ORDER_TRADE_UPDATE, ACCOUNT_UPDATE, listenKeyExpired), on 127.0.0.1.

    async with BinanceUsdmReplica() as venue:
        params = {"rest_url": venue.url, "ws_url": venue.ws_url}
        await venue.expire_listen_key()        # the user stream's key stops working
        await venue.pay_funding("ETHUSDT", "0.0001")

It is the spot replica (``BinanceReplica``) with the futures wire format: the same
markets, matcher, faults and recording playback (``recording=`` serves a real USDⓈ-M
recording on the market streams, byte for byte). Margin is not modelled: orders are
never refused for margin, and the liquidation price is the isolated-margin estimate
``entry x (1 -/+ 1/leverage +/- maintenance rate)``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web

from quoteforge.exchanges.recording import Record
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.binance_replica_rest import (
    BinanceSymbol,
    OrderCountWindow,
    RateWindow,
)
from quoteforge.exchanges.testing.binance_usdm_replica_rest import UsdmRest
from quoteforge.exchanges.testing.faults import (
    OrderRejectedError,
    ReplicaMarket,
    ReplicaOrder,
    ReplicaTrade,
)

__all__ = ["USDM_SYMBOLS", "BinanceUsdmReplica"]

USDM_SYMBOLS = {
    "ETHUSDT": BinanceSymbol("ETH", "USDT", "0.01", "0.001", "5", "2600.00"),
    "BTCUSDT": BinanceSymbol("BTC", "USDT", "0.10", "0.001", "100", "60000.00"),
}
_ZERO = Decimal(0)


class BinanceUsdmReplica(UsdmRest, BinanceReplica):
    """Binance USDⓈ-M futures on 127.0.0.1 (see the module docstring).

    Control API beyond the spot replica's: ``expire_listen_key`` (with or without the
    ``listenKeyExpired`` event), ``pay_funding``, ``publish_mark``, ``set_position_mode``;
    state: ``positions`` (signed quantity and entry price per symbol and position side),
    ``income``, ``listen_keys``.
    """

    venue = "binance_usdm"
    order_path = "/fapi/v1/order"

    def __init__(
        self,
        symbols: Mapping[str, BinanceSymbol] | None = None,
        *,
        position_mode: str = "one_way",
        leverage: int = 20,
        maintenance_rate: str = "0.005",
        funding_rate: str = "0.0001",
        wallet: str = "100000",
        api_key: str | None = None,
        api_secret: str | None = None,
        weight_limit: int = 2400,
        order_limit_10s: int = 300,
        order_limit_1m: int = 1200,
        seed: int = 7,
        ping_interval: float = 20.0,
        port: int = 0,
        recording: str | Path | None = None,
        speed: float = 1.0,
    ) -> None:
        chosen = dict(symbols or USDM_SYMBOLS)
        # Margin is not modelled: the spot matcher's balances are made unlimited.
        plenty = {spec.base: "1000000000" for spec in chosen.values()}
        super().__init__(
            chosen,
            balances={"USDT": "1000000000000", **plenty},
            api_key=api_key,
            api_secret=api_secret,
            weight_limit=weight_limit,
            order_limit_10s=order_limit_10s,
            seed=seed,
            ping_interval=ping_interval,
            port=port,
            recording=recording,
            speed=speed,
        )
        for market in self.markets.values():
            market.fee_in_received_asset = False  # commission in the margin asset
            market.maker_fee, market.taker_fee = Decimal("0.0002"), Decimal("0.0005")
        if position_mode not in ("one_way", "hedge"):
            raise ValueError(f"position_mode must be one_way or hedge, got {position_mode!r}")
        self.dual_side = position_mode == "hedge"
        self.order_limit_1m = order_limit_1m
        self.order_windows = [
            OrderCountWindow(
                self._orders_10s, order_limit_10s, "10 SECOND", "X-MBX-ORDER-COUNT-10S"
            ),
            OrderCountWindow(
                RateWindow(60_000), order_limit_1m, "1 MINUTE", "X-MBX-ORDER-COUNT-1M"
            ),
        ]
        self.leverage = dict.fromkeys(chosen, leverage)
        self.margin_type = dict.fromkeys(chosen, "CROSSED")
        self.maintenance_rate = Decimal(maintenance_rate)
        self.funding_rate = Decimal(funding_rate)
        self.wallet = Decimal(wallet)
        self.positions: dict[tuple[str, str], list[Decimal]] = {}
        """(symbol, BOTH | LONG | SHORT) -> [signed quantity, entry price]."""
        self.marks: dict[str, Decimal] = {}
        self.income: list[dict[str, Any]] = []
        self.listen_keys: dict[str, bool] = {}
        """Every listen key handed out -> whether it is still valid."""
        self.order_meta: dict[str, dict[str, Any]] = {}
        """client id -> reduceOnly, positionSide and the time in force as sent."""
        self.countdowns: dict[str, int] = {}
        """symbol -> the replica's ms at which every open order of that symbol is cancelled
        (``POST /fapi/v1/countdownCancelAll``, armed and not refreshed)."""
        self.countdowns_fired: list[str] = []
        """The symbols whose countdown ran out, in order."""
        self.last_published: dict[str, int] = {}
        self._depth_waiters: dict[str, list[tuple[asyncio.Future[web.Response], int]]] = {}
        self._user_sockets: dict[Any, str] = {}
        self._tran_ids = iter(range(9_000_000, 1 << 62))

    # -- control API --------------------------------------------------------------------
    async def expire_listen_key(self, *, notify: bool = True) -> str:
        """The active listen key expires: with ``notify`` its sockets get
        ``listenKeyExpired`` (as the venue sends it); either way they hear nothing more
        and a keep-alive of the key answers -1125. Returns the key."""
        key = next((k for k, ok in reversed(self.listen_keys.items()) if ok), "")
        if not key:
            raise KeyError("no valid listen key to expire")
        self.listen_keys[key] = False
        if notify:
            event = {"e": "listenKeyExpired", "E": self.now_ms(), "listenKey": key}
            raw = json.dumps(event, separators=(",", ":"))
            for ws in [w for w, k in self._user_sockets.items() if k == key]:
                await self.send_text(ws, raw)
        return key

    async def set_position_mode(self, mode: str) -> None:
        """Set the account's position mode (``one_way`` or ``hedge``) behind our back."""
        self.dual_side = mode == "hedge"

    def mark_price(self, symbol: str) -> Decimal:
        """The mark: set by ``publish_mark``, else the book's mid."""
        market = self._market(symbol)
        if market.symbol in self.marks:
            return self.marks[market.symbol]
        bids, asks = market.depth("buy", 1), market.depth("sell", 1)
        if bids and asks:
            return (bids[0][0] + asks[0][0]) / 2
        return Decimal(self.symbols[market.symbol].mid)

    async def publish_mark(self, symbol: str, price: str | Decimal | None = None) -> None:
        """A ``markPriceUpdate`` on ``<symbol>@markPrice@1s`` (mark ``price`` or the mid)."""
        market = self._market(symbol)
        if price is not None:
            self.marks[market.symbol] = Decimal(price)
        mark = self.mark_price(symbol)
        now = self.now_ms()
        payload = {
            "e": "markPriceUpdate",
            "E": now,
            "s": market.symbol,
            "p": self.fmt_price(market, mark),
            "i": self.fmt_price(market, mark),
            "P": self.fmt_price(market, mark),
            "r": format(self.funding_rate, "f"),
            "T": now - now % 28_800_000 + 28_800_000,
        }
        await self._broadcast(f"{market.symbol.lower()}@markPrice@1s", payload)

    async def pay_funding(self, symbol: str, rate: str | Decimal | None = None) -> Decimal:
        """Settle funding on ``symbol`` at ``rate`` (default the replica's): positions pay
        ``qty x mark x rate`` (longs pay a positive rate). Booked in the income history
        and pushed as ACCOUNT_UPDATE reason FUNDING_FEE, balance only (a crossed
        position, as the venue sends it). Returns the amount (negative: paid)."""
        market = self._market(symbol)
        value = Decimal(rate) if rate is not None else self.funding_rate
        mark = self.mark_price(symbol)
        qty = sum((p[0] for (s, _), p in self.positions.items() if s == market.symbol), _ZERO)
        amount = (-qty * mark * value).quantize(Decimal("0.00000001"))
        if not amount:
            return amount
        now = self.now_ms()
        self.wallet += amount
        self.income.append(
            {
                "symbol": market.symbol,
                "incomeType": "FUNDING_FEE",
                "income": format(amount, "f"),
                "asset": "USDT",
                "info": "FUNDING_FEE",
                "time": now,
                "tranId": next(self._tran_ids),
                "tradeId": "",
            }
        )
        balance = {
            "a": "USDT",
            "wb": format(self.wallet, "f"),
            "cw": format(self.wallet, "f"),
            "bc": format(amount, "f"),
        }
        await self.send_user(
            {
                "e": "ACCOUNT_UPDATE",
                "E": now,
                "T": now,
                "a": {"m": "FUNDING_FEE", "B": [balance], "P": []},
            }
        )
        return amount

    # -- positions ------------------------------------------------------------------------
    def position_side(self, client_id: str) -> str:
        return str(self.order_meta.get(client_id, {}).get("positionSide", "BOTH"))

    def check_reduce_only(self, order: ReplicaOrder, reduce_only: bool, side_key: str) -> None:
        """Refuse (as -2022) an order that must reduce a position and would not."""
        if self.dual_side:
            held = self.positions.get((order.symbol, side_key), [_ZERO])[0]
            closing = (side_key == "LONG") == (order.side == "sell")
            if closing and abs(held) < order.qty:
                raise OrderRejectedError("reduce_only", "ReduceOnly Order is rejected.")
            return
        if not reduce_only:
            return
        held = self.positions.get((order.symbol, "BOTH"), [_ZERO])[0]
        sign = 1 if order.side == "buy" else -1
        if held * sign >= 0 or order.qty > abs(held):
            raise OrderRejectedError("reduce_only", "ReduceOnly Order is rejected.")

    def book_trade(self, trade: ReplicaTrade) -> tuple[str, list[Decimal]]:
        """Move the position of a fill; returns its key and [qty, entry]."""
        order = trade.order
        side_key = self.position_side(order.client_id)
        key = (order.symbol, side_key)
        held = self.positions.setdefault(key, [_ZERO, _ZERO])
        qty, entry = held
        delta = trade.qty if order.side == "buy" else -trade.qty
        new = qty + delta
        if qty == 0 or (qty > 0) == (delta > 0):
            entry = (abs(qty) * entry + trade.qty * trade.price) / abs(new)
        else:
            closing = min(abs(delta), abs(qty))
            self.wallet += (trade.price - entry) * closing * (1 if qty > 0 else -1)
            if new == 0:
                entry = _ZERO
            elif (new > 0) != (qty > 0):
                entry = trade.price
        self.wallet -= trade.fee
        held[0], held[1] = new, entry.quantize(Decimal("0.00000001")) if entry else _ZERO
        return side_key, held

    def liquidation_price(self, symbol: str, qty: Decimal, entry: Decimal) -> Decimal:
        """The isolated-margin estimate of where the position is liquidated (0: flat)."""
        if not qty:
            return _ZERO
        lev, mmr = Decimal(self.leverage[symbol]), self.maintenance_rate
        factor = 1 - 1 / lev + mmr if qty > 0 else 1 + 1 / lev - mmr
        tick = self.markets[symbol].tick
        return (entry * factor).quantize(tick)

    # -- user data stream ------------------------------------------------------------------
    async def send_user(self, event: dict[str, Any]) -> None:
        """One event to every user-stream socket whose listen key is still valid."""
        await self.send_user_text(json.dumps(event, separators=(",", ":")))

    async def send_user_text(self, raw: str) -> None:
        """One user-stream message exactly as given (recorded bytes from the venue, say)
        to every user-stream socket whose listen key is still valid."""
        for ws, key in list(self._user_sockets.items()):
            if self.listen_keys.get(key):
                await self.send_text(ws, raw)

    async def order_event(
        self, o: ReplicaOrder, exec_type: str, trade: ReplicaTrade | None = None
    ) -> None:
        """ORDER_TRADE_UPDATE for one order, as of ``trade`` when it is a fill."""
        market = self.markets[o.symbol]
        meta = self.order_meta.get(o.client_id, {})
        if trade is not None:
            done = sum(
                (t.qty for t in market.trades if t.order is o and t.trade_id <= trade.trade_id),
                _ZERO,
            )
            status = "FILLED" if done == o.qty else "PARTIALLY_FILLED"
        else:
            done = o.filled if exec_type != "NEW" else _ZERO
            status = self.status_text(o) if exec_type != "NEW" else "NEW"
        now = self.now_ms()
        event = {
            "e": "ORDER_TRADE_UPDATE",
            "E": now,
            "T": trade.ts_ms if trade else o.updated_ms,
            "o": {
                "s": o.symbol,
                "c": o.client_id,
                "S": o.side.upper(),
                "o": "MARKET" if o.kind == "market" else "LIMIT",
                "f": meta.get("timeInForce", "GTC"),
                "q": self.fmt_qty(market, o.qty),
                "p": self.fmt_price(market, o.price or _ZERO),
                "ap": self.fmt_price(market, o.quote_filled / o.filled) if o.filled else "0",
                "sp": "0",
                "x": exec_type,
                "X": status,
                "i": o.order_id,
                "l": self.fmt_qty(market, trade.qty) if trade else "0",
                "z": self.fmt_qty(market, done),
                "L": self.fmt_price(market, trade.price) if trade else "0",
                "N": trade.fee_asset if trade else "USDT",
                "n": format(trade.fee.quantize(Decimal("0.00000001")), "f") if trade else "0",
                "T": trade.ts_ms if trade else o.updated_ms,
                "t": trade.trade_id if trade else 0,
                "b": "0",
                "a": "0",
                "m": bool(trade and trade.maker),
                "R": bool(meta.get("reduceOnly")),
                "wt": "CONTRACT_PRICE",
                "ot": "MARKET" if o.kind == "market" else "LIMIT",
                "ps": meta.get("positionSide", "BOTH"),
                "cp": False,
                "rp": "0",
                "pP": False,
                "si": 0,
                "ss": 0,
                "V": "NONE",
                "pm": "NONE",
                "gtd": 0,
            },
        }
        await self.send_user(event)

    async def report_accepted(self, order: ReplicaOrder) -> None:
        await self.order_event(order, "NEW")

    async def report_fill(self, trade: ReplicaTrade) -> None:
        side_key, (qty, entry) = self.book_trade(trade)
        await self.order_event(trade.order, "TRADE", trade)
        market = self.markets[trade.order.symbol]
        mark = self.mark_price(market.symbol)
        now = self.now_ms()
        position = {
            "s": market.symbol,
            "pa": self.fmt_qty(market, qty),
            "ep": format(entry, "f"),
            "bep": format(entry, "f"),
            "cr": "0",
            "up": format(((mark - entry) * qty).quantize(Decimal("0.00000001")), "f"),
            "mt": "cross" if self.margin_type[market.symbol] == "CROSSED" else "isolated",
            "iw": "0",
            "ps": side_key,
        }
        balance = {
            "a": "USDT",
            "wb": format(self.wallet, "f"),
            "cw": format(self.wallet, "f"),
            "bc": "0",
        }
        await self.send_user(
            {
                "e": "ACCOUNT_UPDATE",
                "E": now,
                "T": trade.ts_ms,
                "a": {"m": "ORDER", "B": [balance], "P": [position]},
            }
        )

    async def report_expired(self, order: ReplicaOrder) -> None:
        await self.order_event(order, "EXPIRED")

    async def publish_book(self, market: ReplicaMarket) -> None:
        changes = market.take_changes()
        if not changes or self.recording is not None:
            return  # serving a recording, the recorded events are the depth stream
        previous = self.update_id[market.symbol]
        # An event's ids start at the previous event's last, so the snapshot's
        # lastUpdateId always lies within the first event to apply (U <= id <= u).
        first, last = previous, previous + len(changes)
        self.update_id[market.symbol] = last
        if self.faults.take_skip():
            return
        now = self.now_ms()
        payload = {
            "e": "depthUpdate",
            "E": now,
            "T": now,
            "s": market.symbol,
            "U": first,
            "u": last,
            "pu": self.last_published.get(market.symbol, previous),
            "b": [
                [self.fmt_price(market, p), self.fmt_qty(market, q)]
                for s, p, q in changes
                if s == "buy"
            ],
            "a": [
                [self.fmt_price(market, p), self.fmt_qty(market, q)]
                for s, p, q in changes
                if s == "sell"
            ],
        }
        self.last_published[market.symbol] = last
        await self._broadcast(f"{market.symbol.lower()}@depth", payload)

    async def publish_trade(
        self, market: ReplicaMarket, trade: ReplicaTrade, *, taker_side: str
    ) -> None:
        await self._broadcast(
            f"{market.symbol.lower()}@trade",
            {
                "e": "trade",
                "E": self.now_ms(),
                "T": trade.ts_ms,
                "s": market.symbol,
                "t": trade.trade_id,
                "p": self.fmt_price(market, trade.price),
                "q": self.fmt_qty(market, trade.qty),
                "X": "MARKET",
                "m": taker_side == "sell",  # a seller took the bid: the buyer was maker
            },
        )

    # -- recording playback ---------------------------------------------------------------
    async def recorded_depth(self, symbol: str, market: ReplicaMarket, limit: int) -> web.Response:
        """The recorded snapshot as recorded while nothing changed it; else the book the
        recorded events built, answered when the next recorded event comes with that
        event's ``U`` as ``lastUpdateId``: futures ids are shared across symbols, so the
        first event after a snapshot must contain its id (``U <= lastUpdateId <= u``),
        as every snapshot of the venue's does."""
        ready = self._ready_event(symbol)
        if not ready.is_set() or self._snapshot_text[symbol][0] == self.update_id[symbol]:
            return await super().recorded_depth(symbol, market, limit)
        waiter: asyncio.Future[web.Response] = asyncio.get_running_loop().create_future()
        self._depth_waiters.setdefault(symbol, []).append((waiter, limit))
        try:
            return await asyncio.wait_for(waiter, 30)
        except TimeoutError:
            return self.fapi_error(-1003, "The recording has no further depth event.", 503)

    async def play_record(self, record: Record) -> None:
        native, _, kind = record.stream.partition("@")
        waiters = self._depth_waiters.pop(native.upper(), []) if kind.startswith("depth") else []
        if waiters:
            market = self.markets[native.upper()]
            first = json.loads(record.raw)["U"]
            for waiter, limit in waiters:
                if not waiter.done():
                    waiter.set_result(self.json_answer(self.depth_body(market, limit, first)))
        await super().play_record(record)

    # -- routes -------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        self.add_fapi_routes(app.router)
        app.router.add_get("/ws/{streams:.*}", self._user_or_market)
        app.router.add_get("/stream", self._user_or_market)

    def forget_socket(self, ws: web.WebSocketResponse) -> None:
        super().forget_socket(ws)
        self._user_sockets.pop(ws, None)

    async def _user_or_market(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info.get("streams", "")
        if key not in self.listen_keys:
            return await self._ws_streams(request)
        if not self.listen_keys[key]:
            raise web.HTTPBadRequest(text="listen key expired")
        ws = await self.open_socket(request)
        self._user_sockets[ws] = key

        async def on_text(text: str) -> None:
            return None  # the user stream takes no requests

        await self.read_loop(ws, on_text)
        return ws

    def new_listen_key(self) -> str:
        """The account's active key, or a new one when it has none valid."""
        for key, ok in self.listen_keys.items():
            if ok:
                return key
        key = secrets.token_urlsafe(48)[:64]
        self.listen_keys[key] = True
        return key
