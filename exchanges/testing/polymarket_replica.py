"""A local replica of Polymarket's CLOB: REST (polymarket_replica_rest.py), the ``market``
channel (``book``, ``price_change`` with best bid/ask, ``last_trade_price``,
``tick_size_change``, ``market_resolved``) and the authenticated ``user`` channel
(``order``, ``trade``), with the conformance kit's faults.

Each market is one book seen from two sides, as on the venue: the YES token's book is
kept, and the NO token's is its mirror (a NO bid at p is a YES ask at 1 - p), so an
order on either token trades against both. The venue has no client order ids: the
replica names orders by their hash, and ``label_orders`` lets a test name them by the
adapter's client ids (the control API only, never the wire).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from aiohttp import web

from quoteforge.exchanges.testing.faults import (
    OrderRejectedError,
    ReplicaMarket,
    ReplicaOrder,
    ReplicaTrade,
)
from quoteforge.exchanges.testing.polymarket_replica_rest import (
    ONE,
    SCALE,
    PolyCondition,
    PolymarketRest,
    _t,
    new_credentials,
    order_id_of,
)

__all__ = ["PolyCondition", "PolymarketReplica"]

REJECT = {
    "post_only": "INVALID_POST_ONLY_ORDER: invalid post-only order: order crosses book",
    "tick_size": "INVALID_ORDER_MIN_TICK_SIZE",
    "lot_size": "INVALID_ORDER_MIN_SIZE",
    "insufficient_funds": "INVALID_ORDER_NOT_ENOUGH_BALANCE",
    "duplicate": "INVALID_ORDER_DUPLICATED",
}


class PolymarketReplica(PolymarketRest):
    """Polymarket's CLOB on 127.0.0.1 (see the module docstring). ``markets`` maps a
    short name to its mid; each gets a condition id, two token ids and a seeded book."""

    def __init__(
        self,
        *,
        markets: dict[str, str] | None = None,
        tick: str = "0.01",
        min_size: str = "5",
        levels: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.creds = new_credentials()
        self.conditions: dict[str, PolyCondition] = {}
        self._tokens: dict[str, tuple[PolyCondition, bool]] = {}
        self.trade_log: list[dict[str, Any]] = []
        self.holdings = {}
        self._market_ws: dict[web.WebSocketResponse, set[str]] = {}
        self._user_ws: dict[web.WebSocketResponse, set[str]] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._label: Callable[[str], str | None] | None = None
        self._clock_ms = 0
        for alias, mid in (markets or {"rain-nyc": "0.50"}).items():
            self.add_condition(alias, Decimal(mid), Decimal(tick), Decimal(min_size), levels)

    # -- set-up -------------------------------------------------------------------------
    @property
    def api_key(self) -> str:
        return self.creds["api_key"]

    @property
    def api_secret(self) -> str:
        return self.creds["api_secret"]

    @property
    def secrets(self) -> dict[str, str]:
        """The secrets an adapter needs for this replica's account."""
        return {k: self.creds[k] for k in ("private_key", "api_key", "api_secret", "passphrase")}

    @property
    def market_ws_url(self) -> str:
        return f"{self.ws_url}/ws/market"

    @property
    def user_ws_url(self) -> str:
        return f"{self.ws_url}/ws/user"

    def add_condition(
        self, alias: str, mid: Decimal, tick: Decimal, min_size: Decimal, levels: int
    ) -> PolyCondition:
        digest = hashlib.sha256(alias.encode()).hexdigest()
        cond = PolyCondition(
            alias=alias,
            condition_id="0x" + digest,
            yes=str(int(digest[:30], 16)),
            no=str(int(digest[30:60], 16)),
            tick=tick,
            min_size=min_size,
            last_trade=mid,
        )
        self.conditions[alias] = cond
        self._tokens[cond.yes] = (cond, False)
        self._tokens[cond.no] = (cond, True)
        self.account.credit("USDC", Decimal(10) ** 9)
        self.account.credit(cond.yes, Decimal(10) ** 9)
        market = ReplicaMarket(
            cond.yes,
            cond.yes,
            "USDC",
            tick=tick,
            lot=Decimal("0.01"),
            account=self.account,
            maker_fee=Decimal(0),
            taker_fee=Decimal(0),
            fee_in_received_asset=False,
        )
        self.add_market(cond.yes, market, mid=mid, levels=levels, lots=(1000, 20000))
        return cond

    def label_orders(self, name: Callable[[str], str | None]) -> None:
        """Name orders by what ``name(order_id)`` returns (an adapter's client id) in the
        control API (``orders``, ``fill_order``, ``accepted``); the wire is unchanged."""
        self._label = name

    def hold(self, symbol: str, size: str | Decimal, avg_price: str | Decimal) -> None:
        """Our account holds ``size`` tokens of ``symbol`` (``rain-nyc/NO``, a token id),
        bought at ``avg_price`` on average: from before a run started."""
        self.holdings[self._token_of(symbol)] = [Decimal(size), Decimal(avg_price)]

    def condition_id(self, alias: str) -> str:
        return self.conditions[alias].condition_id

    def token(self, token_id: str) -> tuple[PolyCondition, bool]:
        return self._tokens[token_id]

    def normalize_symbol(self, symbol: str) -> str:
        """A token id, an adapter symbol (``rain-nyc/YES``) or a market name -> the key
        of the market's (YES) book."""
        if symbol in self._tokens:
            return self._tokens[symbol][0].yes
        alias = symbol.rpartition("/")[0] or symbol
        if alias in self.conditions:
            return self.conditions[alias].yes
        return symbol

    def _is_no(self, symbol: str) -> bool:
        if symbol in self._tokens:
            return self._tokens[symbol][1]
        return symbol.upper().endswith("/NO")

    # -- control API on both sides ---------------------------------------------------------
    def book(
        self, symbol: str, depth: int | None = None
    ) -> dict[str, list[tuple[Decimal, Decimal]]]:
        bids, asks = self.book_rows(self._token_of(symbol))
        return {"bids": bids[:depth] if depth else bids, "asks": asks[:depth] if depth else asks}

    def _token_of(self, symbol: str) -> str:
        cond = self._tokens[self.normalize_symbol(symbol)][0]
        return cond.no if self._is_no(symbol) else cond.yes

    def book_rows(
        self, token_id: str
    ) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        cond, flipped = self.token(token_id)
        market = self.markets[cond.yes]
        bids, asks = market.depth("buy"), market.depth("sell")
        if not flipped:
            return bids, asks
        return [(ONE - p, q) for p, q in asks], [(ONE - p, q) for p, q in bids]

    async def set_level(
        self, symbol: str, side: str, price: str | Decimal, qty: str | Decimal
    ) -> None:
        if self._is_no(symbol):
            side, price = ("sell" if side == "buy" else "buy"), ONE - Decimal(price)
        await super().set_level(self.normalize_symbol(symbol), side, price, qty)

    def orders(self, symbol: str | None = None, *, open_only: bool = True) -> list[ReplicaOrder]:
        found = super().orders(
            self.normalize_symbol(symbol) if symbol else None, open_only=open_only
        )
        if symbol is None or symbol in self.markets:
            return found
        token = self._token_of(symbol)
        return [o for o in found if self._meta[o.venue_id]["asset_id"] == token]

    async def resolve(self, alias: str, winner: str = "YES") -> None:
        """The market resolves: ``winner`` (YES or NO) pays 1. Open orders are cancelled,
        the market endpoint shows it closed with the winner, and ``market_resolved`` goes
        out on the market channel."""
        cond = self.conditions[alias]
        await self.cancel_ids([o.venue_id for o in self.orders(cond.yes)])
        cond.closed = True
        cond.winner = cond.yes if winner.upper() == "YES" else cond.no
        await self._publish(
            cond,
            {
                "event_type": "market_resolved",
                "market": cond.condition_id,
                "assets_ids": [cond.yes, cond.no],
                "winning_asset_id": cond.winner,
                "winning_outcome": cond.outcome(cond.winner),
                "timestamp": str(self._next_ts(cond)),
            },
        )

    async def change_tick(self, alias: str, tick: str) -> None:
        """The venue moves the market to another tick size (``tick_size_change``)."""
        cond = self.conditions[alias]
        old, cond.tick = cond.tick, Decimal(tick)
        self.markets[cond.yes].tick = cond.tick
        ts = str(self._next_ts(cond))
        for token in (cond.yes, cond.no):
            await self._publish(
                cond,
                {
                    "event_type": "tick_size_change",
                    "asset_id": token,
                    "market": cond.condition_id,
                    "old_tick_size": _t(old),
                    "new_tick_size": _t(cond.tick),
                    "timestamp": ts,
                },
            )

    # -- order entry ------------------------------------------------------------------------
    async def place(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        order = body.get("order") or {}
        try:
            cond, flipped = self.token(str(order.get("tokenId")))
        except KeyError:
            return 400, {"success": False, "errorMsg": "INVALID_ORDER: unknown token id"}
        why = self.check_order(order, cond.neg_risk)
        if why:
            return 400, {"success": False, "errorMsg": why}
        if body.get("owner") != self.creds["api_key"]:
            return 400, {"success": False, "errorMsg": "the owner is not this API key"}
        order_id = order_id_of(order, self.chain_id, cond.neg_risk)
        if order_id in self._meta:
            return 400, {"success": False, "errorMsg": REJECT["duplicate"]}
        if cond.closed:
            return 400, {"success": False, "errorMsg": "MARKET_NOT_READY: the market is closed"}
        reason = self.faults.take_reject()
        if reason is not None:
            return 400, {"success": False, "errorMsg": reason or REJECT["insufficient_funds"]}
        side = str(order["side"]).upper()
        maker, taker = Decimal(order["makerAmount"]), Decimal(order["takerAmount"])
        shares, usdc = (taker, maker) if side == "BUY" else (maker, taker)
        size, price = shares / SCALE, usdc / shares
        kind = str(body.get("orderType", "GTC"))
        if price % cond.tick or not 0 < price < 1:
            return 400, {
                "success": False,
                "errorMsg": f"{REJECT['tick_size']}: {price} off {cond.tick}",
            }
        if size % Decimal("0.01") or size < cond.min_size:
            return 400, {"success": False, "errorMsg": f"{REJECT['lot_size']}: {size}"}
        yes_side = ("sell" if side == "BUY" else "buy") if flipped else side.lower()
        yes_price = ONE - price if flipped else price
        tif = "ioc" if kind in ("FAK", "FOK") else ("post_only" if body.get("postOnly") else "gtc")
        market = self.markets[cond.yes]
        if kind == "FOK" and self._available(market, yes_side, yes_price) < size:
            return 400, {"success": False, "errorMsg": "FOK_ORDER_NOT_FILLED_ERROR"}
        token = cond.no if flipped else cond.yes
        label = self._label(order_id) if self._label is not None else None
        rorder = ReplicaOrder(
            order_id=len(self._meta) + 1,
            client_id=label or order_id,
            symbol=cond.yes,
            side=yes_side,
            kind="limit",
            tif=tif,
            price=yes_price,
            qty=size,
            created_ms=self.now_ms(),
            venue_id=order_id,
        )
        self._meta[order_id] = {
            "asset_id": token,
            "flipped": flipped,
            "side": side,
            "price": price,
            "type": kind,
            "expiration": str(order.get("expiration", "0")),
            "cond": cond,
        }
        try:
            await self._execute(market, rorder)
        except OrderRejectedError as exc:
            del self._meta[order_id]
            return 400, {"success": False, "errorMsg": REJECT.get(exc.code, str(exc))}
        filled_usdc = rorder.quote_filled if not flipped else rorder.filled - rorder.quote_filled
        making, taking = (
            (filled_usdc, rorder.filled) if side == "BUY" else (rorder.filled, filled_usdc)
        )
        status = {"filled": "matched", "expired": "unmatched" if not rorder.filled else "matched"}
        return 200, {
            "success": True,
            "errorMsg": "",
            "orderID": order_id,
            "status": status.get(rorder.status, "live"),
            "makingAmount": _t(making) if rorder.filled else "",
            "takingAmount": _t(taking) if rorder.filled else "",
        }

    @staticmethod
    def _available(market: ReplicaMarket, side: str, limit: Decimal) -> Decimal:
        book = market.levels["sell" if side == "buy" else "buy"]
        return sum(
            (q for p, q in book.items() if (p <= limit if side == "buy" else p >= limit)),
            Decimal(0),
        )

    async def cancel_ids(self, ids: list[str]) -> dict[str, Any]:
        canceled, not_canceled = [], {}
        for order_id in ids:
            order = self._find(order_id)
            if order is None or not order.is_open:
                not_canceled[order_id] = "order not found or not open"
                continue
            market = self.markets[order.symbol]
            market.cancel(order.client_id, self.now_ms())
            canceled.append(order_id)
            await self._order_event(order, "CANCELLATION")
            await self.publish_book(market)
        return {"canceled": canceled, "not_canceled": not_canceled}

    def order_row(self, order: ReplicaOrder) -> dict[str, Any]:
        meta = self._meta[order.venue_id]
        cond: PolyCondition = meta["cond"]
        status = {"canceled": "CANCELED", "filled": "MATCHED", "expired": "CANCELED"}
        return {
            "id": order.venue_id,
            "status": status.get(order.status, "LIVE"),
            "owner": self.creds["api_key"],
            "maker_address": self.creds["address"],
            "market": cond.condition_id,
            "asset_id": meta["asset_id"],
            "side": meta["side"],
            "original_size": _t(order.qty),
            "size_matched": _t(order.filled),
            "price": _t(meta["price"]),
            "outcome": cond.outcome(meta["asset_id"]),
            "expiration": meta["expiration"],
            "order_type": meta["type"],
            "associate_trades": [],
            "created_at": order.created_ms // 1000,
        }

    # -- what goes on the wire -------------------------------------------------------------
    def _next_ts(self, cond: PolyCondition) -> int:
        self._clock_ms = max(self._clock_ms + 1, self.now_ms())
        cond.ts_ms = self._clock_ms
        return self._clock_ms

    async def report_accepted(self, order: ReplicaOrder) -> None:
        await self._order_event(order, "PLACEMENT")

    async def report_expired(self, order: ReplicaOrder) -> None:
        await self._order_event(order, "CANCELLATION")

    async def report_fill(self, trade: ReplicaTrade) -> None:
        order = trade.order
        meta = self._meta[order.venue_id]
        cond: PolyCondition = meta["cond"]
        price = ONE - trade.price if meta["flipped"] else trade.price
        ours = {
            "order_id": order.venue_id,
            "owner": self.creds["api_key"],
            "maker_address": self.creds["address"],
            "matched_amount": _t(trade.qty),
            "price": _t(price),
            "asset_id": meta["asset_id"],
            "outcome": cond.outcome(meta["asset_id"]),
            "side": meta["side"],
            "fee_rate_bps": "0",
        }
        other_side = "SELL" if meta["side"] == "BUY" else "BUY"
        row: dict[str, Any] = {
            "event_type": "trade",
            "type": "TRADE",
            "id": secrets.token_hex(8) + f"-{trade.trade_id}",
            "market": cond.condition_id,
            "asset_id": meta["asset_id"],
            "size": _t(trade.qty),
            "price": _t(price),
            "fee_rate_bps": "0",
            "status": "MATCHED",
            "match_time": str(trade.ts_ms // 1000),
            "last_update": str(trade.ts_ms // 1000),
            "outcome": cond.outcome(meta["asset_id"]),
            "owner": self.creds["api_key"],
            "timestamp": str(trade.ts_ms // 1000),
        }
        # The other side of the match: an order of another account.
        other = {
            **ours,
            "order_id": "0x" + secrets.token_hex(32),
            "owner": "someone-else",
            "maker_address": "0x" + secrets.token_hex(20),
            "side": other_side,
        }
        if trade.maker:
            row.update(
                side=other_side,
                taker_order_id=other["order_id"],
                maker_orders=[ours],
                trader_side="MAKER",
            )
        else:
            row.update(
                side=meta["side"],
                taker_order_id=order.venue_id,
                maker_orders=[other],
                trader_side="TAKER",
            )
        cond.last_trade = trade.price
        self._hold_more(meta["asset_id"], trade.qty if meta["side"] == "BUY" else -trade.qty, price)
        self.trade_log.append({k: v for k, v in row.items() if k not in ("event_type", "type")})
        await self._user_send(cond, row)
        await self._order_event(order, "UPDATE")

    def _hold_more(self, token_id: str, qty: Decimal, price: Decimal) -> None:
        size, avg = self.holdings.get(token_id, [Decimal(0), Decimal(0)])
        if qty > 0:  # a buy moves the average; a sell keeps it
            avg = (size * avg + qty * price) / (size + qty)
        size += qty
        self.holdings[token_id] = [size, avg if size else Decimal(0)]

    async def _order_event(self, order: ReplicaOrder, kind: str) -> None:
        row = self.order_row(order)
        cond: PolyCondition = self._meta[order.venue_id]["cond"]
        await self._user_send(
            cond,
            {**row, "event_type": "order", "type": kind, "timestamp": str(self.now_ms() // 1000)},
        )

    async def _user_send(self, cond: PolyCondition, event: dict[str, Any]) -> None:
        text = json.dumps(event)
        for ws, markets in list(self._user_ws.items()):
            if not markets or cond.condition_id in markets:
                await self.send_text(ws, text)

    async def _publish(self, cond: PolyCondition, event: dict[str, Any]) -> None:
        text = json.dumps(event)
        for ws, assets in list(self._market_ws.items()):
            if assets & {cond.yes, cond.no}:
                await self.send_text(ws, text)

    async def publish_trade(
        self, market: ReplicaMarket, trade: ReplicaTrade, *, taker_side: str
    ) -> None:
        cond, _ = self.token(market.symbol)
        ts = str(self._next_ts(cond))
        for token, price, side in (
            (cond.yes, trade.price, taker_side),
            (cond.no, ONE - trade.price, "sell" if taker_side == "buy" else "buy"),
        ):
            await self._publish(
                cond,
                {
                    "event_type": "last_trade_price",
                    "asset_id": token,
                    "market": cond.condition_id,
                    "price": _t(price),
                    "size": _t(trade.qty),
                    "side": side.upper(),
                    "fee_rate_bps": "0",
                    "timestamp": ts,
                },
            )

    async def publish_book(self, market: ReplicaMarket) -> None:
        changes = market.take_changes()
        if not changes:
            return
        cond, _ = self.token(market.symbol)
        ts = self._next_ts(cond)
        for token in (cond.yes, cond.no):
            cond.token_ts[token] = ts
        if self.faults.take_skip():
            return  # applied, never sent: a gap
        entries = []
        for token, flipped in ((cond.yes, False), (cond.no, True)):
            bids, asks = self.book_rows(token)
            best_bid = _t(bids[0][0]) if bids else "0"
            best_ask = _t(asks[0][0]) if asks else "1"
            for side, price, qty in changes:
                if flipped:
                    side, price = ("sell" if side == "buy" else "buy"), ONE - price
                entries.append(
                    {
                        "asset_id": token,
                        "price": _t(price),
                        "size": _t(qty),
                        "side": "BUY" if side == "buy" else "SELL",
                        "hash": secrets.token_hex(20),
                        "best_bid": best_bid,
                        "best_ask": best_ask,
                    }
                )
        await self._publish(
            cond,
            {
                "market": cond.condition_id,
                "price_changes": entries,
                "timestamp": str(ts),
                "event_type": "price_change",
            },
        )

    def _book_event(self, token: str) -> dict[str, Any]:
        summary = self.summary(token)
        return {
            "event_type": "book",
            "asset_id": token,
            "market": summary["market"],
            "bids": summary["bids"],
            "asks": summary["asks"],
            "timestamp": summary["timestamp"],
            "hash": summary["hash"],
        }

    # -- websockets ---------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        self.add_rest_routes(app)
        app.router.add_get("/ws/market", self._ws_market)
        app.router.add_get("/ws/user", self._ws_user)

    def forget_socket(self, ws: web.WebSocketResponse) -> None:
        self._market_ws.pop(ws, None)
        self._user_ws.pop(ws, None)

    async def _ws_market(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self.open_socket(request)
        self._market_ws[ws] = set()

        async def on_text(text: str) -> None:
            if text == "PING":
                await self.send_text(ws, "PONG")
                return
            msg = json.loads(text)
            ids = [str(a) for a in msg.get("assets_ids") or [] if str(a) in self._tokens]
            if msg.get("operation") == "unsubscribe":
                self._market_ws[ws].difference_update(ids)
                return
            self._market_ws[ws].update(ids)
            events = [self._book_event(token) for token in ids]
            if events:
                await self.send_text(ws, json.dumps(events))

        await self.read_loop(ws, on_text)
        return ws

    async def _ws_user(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self.open_socket(request)

        async def on_text(text: str) -> None:
            if text == "PING":
                await self.send_text(ws, "PONG")
                return
            msg = json.loads(text)
            auth = msg.get("auth") or {}
            if "auth" in msg:
                creds = self.creds
                if (auth.get("apiKey"), auth.get("secret"), auth.get("passphrase")) != (
                    creds["api_key"],
                    creds["api_secret"],
                    creds["passphrase"],
                ):
                    await ws.close(code=4001, message=b"invalid credentials")
                    return
                self._user_ws[ws] = set()
            if ws in self._user_ws:
                self._user_ws[ws].update(str(m) for m in msg.get("markets") or [])

        await self.read_loop(ws, on_text)
        return ws
