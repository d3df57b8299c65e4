"""The Polymarket replica's REST API in the CLOB's wire format: markets, books (with the
venue's hash), tick size, neg-risk, time, balances, and the authenticated order entry,
cancels, open orders and trades. Every authenticated call checks the L2 headers (API
key, passphrase, address, HMAC-SHA256 over timestamp, method, path and body) and every
order's EIP-712 signature (the signer recovered with eth-account), so a wrong key is
refused as the venue refuses it. Heartbeats (``POST /v1/heartbeats``; see
``heartbeat_paths``) are the venue's dead man's switch: once started, every open order
is cancelled when none came for ``heartbeat_timeout_s``. ``PolymarketReplica``
(polymarket_replica.py) adds the websocket channels and the order engine behind both."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import uuid
from abc import abstractmethod
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from quoteforge.exchanges.polymarket.wire import import_eth_account
from quoteforge.exchanges.testing.faults import ReplicaMarket, ReplicaOrder
from quoteforge.exchanges.testing.replica import ReplicaServer

__all__ = [
    "END_CURSOR",
    "TRADES_PAGE",
    "PolyCondition",
    "PolymarketRest",
    "cursor_page",
    "new_credentials",
    "order_id_of",
    "trade_matches",
]

ONE = Decimal(1)
SCALE = Decimal(1_000_000)

# How the CLOB pages GET /data/trades, from its documentation: the API reference's
# example answer (docs.polymarket.com, "Get trades") is ``{"limit": 100, "next_cursor":
# "MTAw", "count", "data"}``, "MTAw" being base64 of "100", the offset of the next page;
# py-clob-client starts at "MA==" ("0") and stops at "LTE=" ("-1"), its END_CURSOR.
# The docs name the filters (id, market, asset_id, maker address, before, after) but not
# the order of the rows nor whether before/after include their second: the replica keeps
# the trades in the order they were made and includes both bounds.
TRADES_PAGE = 100
FIRST_CURSOR, END_CURSOR = "MA==", "LTE="


def cursor_page(rows: list[dict[str, Any]], cursor: str, size: int) -> dict[str, Any] | None:
    """The page of ``rows`` at ``cursor`` (base64 of an offset) as the CLOB answers it,
    its ``next_cursor`` the next page's offset or ``END_CURSOR`` after the last; None
    for a cursor that is not one."""
    try:
        start = int(base64.b64decode(cursor or FIRST_CURSOR, validate=True).decode())
    except ValueError:
        return None
    page = rows[start : start + size] if start >= 0 else []
    end = start + len(page)
    following = base64.b64encode(str(end).encode()).decode()
    return {
        "data": page,
        "next_cursor": following if page and end < len(rows) else END_CURSOR,
        "limit": size,
        "count": len(page),
    }


def trade_matches(trade: dict[str, Any], query: Any) -> bool:
    """Whether a trade passes the documented filters of ``GET /data/trades``."""
    for name in ("id", "market", "asset_id"):
        if query.get(name) and str(trade.get(name)) != query[name]:
            return False
    maker = str(query.get("maker_address", "")).lower()
    if maker and all(
        str(m.get("maker_address", "")).lower() != maker for m in trade.get("maker_orders", [])
    ):
        return False
    at = int(trade["match_time"])
    return int(query.get("after") or 0) <= at <= int(query.get("before") or at)


def new_credentials() -> dict[str, str]:
    """A fresh wallet key and API key triple for a replica account."""
    import_eth_account()
    from eth_account import Account

    account = Account.create()
    return {
        "private_key": account.key.hex(),
        "address": account.address,
        "api_key": secrets.token_hex(16),
        "api_secret": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "passphrase": secrets.token_hex(16),
    }


@dataclass
class PolyCondition:
    """One binary market: its condition id, the YES and NO token ids and its state."""

    alias: str
    condition_id: str
    yes: str
    no: str
    tick: Decimal
    min_size: Decimal
    neg_risk: bool = False
    closed: bool = False
    winner: str = ""  # token id that paid 1
    last_trade: Decimal = Decimal("0.5")
    ts_ms: int = 0
    token_ts: dict[str, int] = field(default_factory=dict)

    def outcome(self, token: str) -> str:
        return "Yes" if token == self.yes else "No"


def _hash_struct(order: dict[str, Any], chain_id: int, neg_risk: bool) -> tuple[bytes, bytes]:
    import_eth_account()
    from py_clob_client.config import get_contract_config
    from py_order_utils.builders.base_builder import BaseBuilder
    from py_order_utils.model.order import Order

    side = order["side"]
    struct = Order(
        salt=int(order["salt"]),
        maker=order["maker"],
        signer=order["signer"],
        taker=order["taker"],
        tokenId=int(order["tokenId"]),
        makerAmount=int(order["makerAmount"]),
        takerAmount=int(order["takerAmount"]),
        expiration=int(order["expiration"]),
        nonce=int(order["nonce"]),
        feeRateBps=int(order["feeRateBps"]),
        side=0 if side in ("BUY", 0, "0") else 1,
        signatureType=int(order["signatureType"]),
    )
    exchange = get_contract_config(chain_id, neg_risk).exchange
    domain = BaseBuilder(exchange, chain_id, None, None).domain_separator
    return domain.hash_struct(), struct.hash_struct()


def order_id_of(order: dict[str, Any], chain_id: int, neg_risk: bool) -> str:
    """The venue's id of a signed order: its EIP-712 hash."""
    from eth_utils import keccak

    domain, struct = _hash_struct(order, chain_id, neg_risk)
    return "0x" + keccak(b"\x19\x01" + domain + struct).hex().removeprefix("0x")


def recover_signer(order: dict[str, Any], chain_id: int, neg_risk: bool) -> str:
    """The address that signed ``order`` (eth-account's recovery of the EIP-712 hash)."""
    import_eth_account()
    from eth_account import Account
    from eth_account.messages import SignableMessage

    domain, struct = _hash_struct(order, chain_id, neg_risk)
    message = SignableMessage(version=b"\x01", header=domain, body=struct)
    return str(Account.recover_message(message, signature=bytes.fromhex(order["signature"][2:])))


class PolymarketRest(ReplicaServer):
    """The REST half of the Polymarket replica (see the module docstring)."""

    venue = "polymarket"
    order_path = "/order"
    chain_id = 137

    conditions: dict[str, PolyCondition]
    creds: dict[str, str]
    trade_log: list[dict[str, Any]]
    #: Our outcome tokens: token id -> [size, average price] (``hold`` seeds it).
    holdings: dict[str, list[Decimal]]
    #: How long the venue waits for the next heartbeat before it cancels every open order
    #: (10 s at Polymarket; tests shorten it).
    heartbeat_timeout_s: float = 10.0
    #: The id the next heartbeat must carry (None: heartbeats not started), the replica's
    #: ms by which it must come, and how often the timeout ran out.
    heartbeat_id: str | None = None
    heartbeat_deadline_ms: int = 0
    heartbeats_lapsed: int = 0
    #: Where heartbeats are served: the official client's path; the API reference names
    #: ``/heartbeats`` (set before ``start``).
    heartbeat_paths: tuple[str, ...] = ("/v1/heartbeats",)
    #: Trades a ``GET /data/trades`` page holds (see ``TRADES_PAGE``).
    trades_page: int = TRADES_PAGE

    # -- provided by the websocket half -------------------------------------------------
    @abstractmethod
    def token(self, token_id: str) -> tuple[PolyCondition, bool]:
        """The condition of ``token_id`` and whether it is the NO token."""

    @abstractmethod
    def book_rows(
        self, token_id: str
    ) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """Bids and asks of a token, best first, as (price, size)."""

    @abstractmethod
    async def place(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One ``POST /order`` entry: HTTP status and answer."""

    @abstractmethod
    async def cancel_ids(self, ids: list[str]) -> dict[str, Any]:
        """Cancel orders by id: ``{"canceled": [...], "not_canceled": {...}}``."""

    @abstractmethod
    def order_row(self, order: ReplicaOrder) -> dict[str, Any]:
        """An order as ``GET /data/order`` shows it."""

    # -- routes ------------------------------------------------------------------------
    def add_rest_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/time", self._time)
        r.add_get("/markets/{cid}", self._get_market)
        r.add_get("/book", self._book)
        r.add_get("/tick-size", self._tick_size)
        r.add_get("/neg-risk", self._neg_risk)
        r.add_get("/balance-allowance", self._authed(self._balance))
        r.add_get("/positions", self._data_positions)  # the data API's, public
        r.add_post("/order", self._authed(self._post_order))
        r.add_post("/orders", self._authed(self._post_orders))
        r.add_delete("/order", self._authed(self._delete_order))
        r.add_delete("/orders", self._authed(self._delete_orders))
        r.add_delete("/cancel-all", self._authed(self._cancel_all))
        r.add_delete("/cancel-market-orders", self._authed(self._cancel_market))
        for path in self.heartbeat_paths:
            r.add_post(path, self._authed(self._heartbeat))
        r.add_get("/data/order/{id}", self._authed(self._get_order))
        r.add_get("/data/orders", self._authed(self._get_orders))
        r.add_get("/data/trades", self._authed(self._get_trades))

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, text=json.dumps(data), content_type="application/json")

    def error_response(self, status: int, body: str, headers: dict[str, str]) -> web.Response:
        return web.Response(
            status=status,
            text=body or json.dumps({"error": f"HTTP {status}"}),
            headers=headers,
            content_type="application/json",
        )

    def _authed(self, handler: Any) -> Any:
        async def check(request: web.Request) -> web.StreamResponse:
            body = await request.text()
            why = self.check_headers(request.method, request.path, body, request.headers)
            if why:
                return self._json({"error": f"Unauthorized/Invalid api key ({why})"}, 401)
            return await handler(request, body)

        return check

    def check_headers(self, method: str, path: str, body: str, headers: Any) -> str:
        """Why the L2 headers of a request are wrong, or empty when they are right."""
        creds = self.creds
        if headers.get("POLY_API_KEY") != creds["api_key"]:
            return "unknown API key"
        if headers.get("POLY_PASSPHRASE") != creds["passphrase"]:
            return "wrong passphrase"
        if str(headers.get("POLY_ADDRESS", "")).lower() != creds["address"].lower():
            return "address does not own the key"
        message = f"{headers.get('POLY_TIMESTAMP', '')}{method}{path}{body}"
        digest = hmac.new(
            base64.urlsafe_b64decode(creds["api_secret"]), message.encode(), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(
            base64.urlsafe_b64encode(digest).decode(), str(headers.get("POLY_SIGNATURE", ""))
        ):
            return "bad HMAC signature"
        return ""

    def check_order(self, order: dict[str, Any], neg_risk: bool) -> str:
        """Why a signed order is refused (signature, signer, owner), or empty."""
        try:
            signer = recover_signer(order, self.chain_id, neg_risk)
        except (KeyError, TypeError, ValueError) as exc:
            return f"invalid order signature ({type(exc).__name__})"
        if signer.lower() != str(order.get("signer", "")).lower():
            return "invalid order signature: the signer did not sign it"
        if signer.lower() != self.creds["address"].lower():
            return "the order's signer does not own the API key"
        return ""

    # -- public -------------------------------------------------------------------------
    async def _time(self, request: web.Request) -> web.Response:
        return web.Response(text=str(self.now_ms() // 1000))

    def market_json(self, cond: PolyCondition) -> dict[str, Any]:
        return {
            "condition_id": cond.condition_id,
            "question_id": "0x" + hashlib.sha256(cond.alias.encode()).hexdigest(),
            "market_slug": cond.alias,
            "active": not cond.closed,
            "closed": cond.closed,
            "accepting_orders": not cond.closed,
            "enable_order_book": True,
            "minimum_order_size": int(cond.min_size)
            if cond.min_size % 1 == 0
            else str(cond.min_size),
            "minimum_tick_size": float(cond.tick),
            "neg_risk": cond.neg_risk,
            "maker_base_fee": 0,
            "taker_base_fee": 0,
            "tokens": [
                {"token_id": t, "outcome": cond.outcome(t), "winner": cond.winner == t}
                for t in (cond.yes, cond.no)
            ],
        }

    async def _get_market(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        for cond in self.conditions.values():
            if cond.condition_id == cid:
                return self._json(self.market_json(cond))
        return self._json({"error": "market not found"}, 404)

    def summary(self, token_id: str) -> dict[str, Any]:
        """``GET /book`` of a token, hashed as the venue hashes it."""
        from py_clob_client.clob_types import OrderBookSummary, OrderSummary
        from py_clob_client.utilities import generate_orderbook_summary_hash

        cond, _ = self.token(token_id)
        bids, asks = self.book_rows(token_id)
        book = OrderBookSummary(
            market=cond.condition_id,
            asset_id=token_id,
            timestamp=str(cond.token_ts.get(token_id, cond.ts_ms)),
            bids=[OrderSummary(price=_t(p), size=_t(q)) for p, q in reversed(bids)],
            asks=[OrderSummary(price=_t(p), size=_t(q)) for p, q in reversed(asks)],
            min_order_size=_t(cond.min_size),
            neg_risk=cond.neg_risk,
            tick_size=_t(cond.tick),
            last_trade_price=_t(cond.last_trade if token_id == cond.yes else ONE - cond.last_trade),
        )
        generate_orderbook_summary_hash(book)
        return {
            "market": book.market,
            "asset_id": book.asset_id,
            "timestamp": book.timestamp,
            "hash": book.hash,
            "bids": [{"price": o.price, "size": o.size} for o in book.bids or []],
            "asks": [{"price": o.price, "size": o.size} for o in book.asks or []],
            "min_order_size": book.min_order_size,
            "tick_size": book.tick_size,
            "neg_risk": book.neg_risk,
            "last_trade_price": book.last_trade_price,
        }

    async def _book(self, request: web.Request) -> web.Response:
        token_id = request.query.get("token_id", "")
        try:
            return self._json(self.summary(token_id))
        except KeyError:
            return self._json({"error": "No orderbook exists for the requested token id"}, 404)

    async def _tick_size(self, request: web.Request) -> web.Response:
        cond, _ = self.token(request.query.get("token_id", ""))
        return self._json({"minimum_tick_size": float(cond.tick)})

    async def _neg_risk(self, request: web.Request) -> web.Response:
        cond, _ = self.token(request.query.get("token_id", ""))
        return self._json({"neg_risk": cond.neg_risk})

    # -- authenticated ------------------------------------------------------------------
    async def _balance(self, request: web.Request, body: str) -> web.Response:
        if request.query.get("asset_type") == "CONDITIONAL":
            free = self.holdings.get(request.query.get("token_id", ""), [Decimal(0)])[0]
        else:
            free = self.account.free.get("USDC", Decimal(0)) + self.account.locked.get(
                "USDC", Decimal(0)
            )
        return self._json({"balance": str(int(free * SCALE)), "allowance": str(10**18)})

    async def _data_positions(self, request: web.Request) -> web.Response:
        """The data API's ``GET /positions?user=&market=``: our tokens with their size and
        average price (JSON numbers, as the data API sends them)."""
        if request.query.get("user", "").lower() != self.creds["address"].lower():
            return self._json([])
        wanted = set(filter(None, request.query.get("market", "").split(",")))
        rows = []
        for token_id, (size, avg) in self.holdings.items():
            cond, _ = self.token(token_id)
            if size and (not wanted or cond.condition_id in wanted):
                rows.append(
                    f'{{"proxyWallet": "{self.creds["address"]}", "asset": "{token_id}", '
                    f'"conditionId": "{cond.condition_id}", "size": {_t(size)}, '
                    f'"avgPrice": {_t(avg)}, "outcome": "{cond.outcome(token_id)}"}}'
                )
        return web.Response(text="[" + ", ".join(rows) + "]", content_type="application/json")

    async def _post_order(self, request: web.Request, body: str) -> web.Response:
        status, answer = await self.place(json.loads(body))
        return self._json(answer, status)

    async def _post_orders(self, request: web.Request, body: str) -> web.Response:
        entries = json.loads(body)
        if not isinstance(entries, list) or not 1 <= len(entries) <= 15:
            return self._json({"error": "a batch is a list of 1 to 15 orders"}, 400)
        return self._json([(await self.place(entry))[1] for entry in entries])

    async def _delete_order(self, request: web.Request, body: str) -> web.Response:
        return self._json(await self.cancel_ids([str(json.loads(body).get("orderID", ""))]))

    async def _delete_orders(self, request: web.Request, body: str) -> web.Response:
        return self._json(await self.cancel_ids([str(i) for i in json.loads(body)]))

    async def _cancel_all(self, request: web.Request, body: str) -> web.Response:
        ids = [o.venue_id for o in self.orders()]
        return self._json(await self.cancel_ids(ids))

    async def _cancel_market(self, request: web.Request, body: str) -> web.Response:
        spec = json.loads(body or "{}")
        asset = str(spec.get("asset_id", ""))
        market = str(spec.get("market", ""))
        ids = []
        for order in self.orders():
            row = self.order_row(order)
            if (not asset or row["asset_id"] == asset) and (not market or row["market"] == market):
                ids.append(order.venue_id)
        return self._json(await self.cancel_ids(ids))

    async def _heartbeat(self, request: web.Request, body: str) -> web.Response:
        """The first heartbeat carries ``heartbeat_id: null`` and starts the switch; each
        later one must carry the id of the last answer, within ``heartbeat_timeout_s``.
        Any other id is refused with the id expected (null once the chain has lapsed),
        from which a client resynchronises, as at the venue."""
        try:
            spec = json.loads(body or "{}")
            sent = spec["heartbeat_id"] if isinstance(spec, dict) else ...
        except (ValueError, KeyError):
            sent = ...
        if sent is ... or (sent is not None and not isinstance(sent, str)):
            return self._json({"error": "Invalid payload: heartbeat_id is required"}, 400)
        if sent != self.heartbeat_id:
            return self._json(
                {"error_msg": "Invalid Heartbeat ID", "heartbeat_id": self.heartbeat_id}, 400
            )
        if self.heartbeat_id is None:
            self.spawn(self._heartbeat_watch())
        self.heartbeat_id = str(uuid.uuid4())
        self.heartbeat_deadline_ms = self.now_ms() + int(self.heartbeat_timeout_s * 1000)
        return self._json({"status": "ok", "heartbeat_id": self.heartbeat_id})

    async def _heartbeat_watch(self) -> None:
        """Checked every 10 ms: a heartbeat overdue cancels every open order and ends
        the chain (the next one starts a new one with ``heartbeat_id: null``)."""
        while self.heartbeat_id is not None:
            await asyncio.sleep(0.01)
            if self.now_ms() >= self.heartbeat_deadline_ms:
                self.heartbeat_id = None
                self.heartbeat_deadline_ms = 0
                self.heartbeats_lapsed += 1
                await self.cancel_ids([o.venue_id for o in self.orders()])

    def _find(self, order_id: str) -> ReplicaOrder | None:
        for market in self.markets.values():
            for order in market.orders.values():
                if order.venue_id == order_id:
                    return order
        return None

    async def _get_order(self, request: web.Request, body: str) -> web.Response:
        order = self._find(request.match_info["id"])
        return self._json(None if order is None else self.order_row(order))

    async def _get_orders(self, request: web.Request, body: str) -> web.Response:
        rows = [self.order_row(o) for o in self.orders()]
        asset = request.query.get("asset_id")
        rows = [r for r in rows if not asset or r["asset_id"] == asset]
        return self._json({"data": rows, "next_cursor": "LTE=", "limit": 500, "count": len(rows)})

    async def _get_trades(self, request: web.Request, body: str) -> web.Response:
        query = request.query
        if any(not query.get(k, "0").isdigit() for k in ("after", "before")):
            return self._json({"error": "invalid after or before"}, 400)
        rows = [t for t in self.trade_log if trade_matches(t, query)]
        page = cursor_page(rows, query.get("next_cursor", ""), self.trades_page)
        if page is None:
            return self._json({"error": "invalid next_cursor"}, 400)
        return self._json(page)

    def replica_market(self, token_id: str) -> ReplicaMarket:
        cond, _ = self.token(token_id)
        return self.markets[cond.yes]


def _t(value: Decimal) -> str:
    """A decimal as the venue writes it: plain, no trailing zeros."""
    return format(value.normalize(), "f")
