"""The account side of the Binance USDⓈ-M adapter: signed REST through ccxt's ``fapi``
methods, the venue clock, the instruments, the account set-up checked at start
(position mode, leverage, margin type), and the listen-key user data stream with its
keep-alive, expiry handling, positions, mark prices and funding payments.

``BinanceUsdm`` (adapter.py) adds the market data and order entry on top.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

from loguru import logger
from pydantic import Field

from quoteforge.exchange import VenueContext
from quoteforge.exchanges.binance.family import BinanceFamilyAdapter
from quoteforge.exchanges.binance_usdm.ratelimit import BinanceUsdmRateGovernor
from quoteforge.exchanges.ccxt_base import (
    API_KEY_SECRETS,
    AutoCancelParams,
    CcxtSpotParams,
    ManagedSocket,
    VenueCallError,
)
from quoteforge.model import (
    Funding,
    Instrument,
    InstrumentKind,
    Order,
    VenuePosition,
)

__all__ = ["BinanceUsdmParams", "UsdmAccountVenue", "usdm_instrument"]

LIVE_REST = "https://fapi.binance.com"
LIVE_STREAMS = "wss://fstream.binance.com"
TEST_REST = "https://testnet.binancefuture.com"
TEST_STREAMS = "wss://fstream.binancefuture.com"


class BinanceUsdmParams(CcxtSpotParams, AutoCancelParams):
    """Binance USDⓈ-M futures adapter parameters. Secrets ``api_key`` and ``api_secret``
    come from the run's secrets (environment variables), never from here."""

    required_secrets = API_KEY_SECRETS

    position_mode: Literal["one_way", "hedge"] = Field(
        "one_way",
        description="The account's position mode (GET /fapi/v1/positionSide/dual); the "
        "adapter refuses to start when the account is set otherwise.",
    )
    leverage: int | None = Field(
        None, ge=1, le=125, description="Leverage set per symbol at start (None: leave it)."
    )
    margin_type: Literal["CROSSED", "ISOLATED"] | None = Field(
        None, description="Margin type set per symbol at start (None: leave it)."
    )
    start_position: Literal["require_flat", "adopt"] = Field(
        "require_flat",
        description="A position the account holds when a run starts: require_flat refuses "
        "to start; adopt books it (positionRisk quantity and entry price) as the market's "
        "opening position. A resumed run keeps the opening position its journal holds.",
    )
    depth_snapshot_limit: Literal[5, 10, 20, 50, 100, 500, 1000] = Field(
        1000, description="Levels in the REST snapshot that seeds each book."
    )
    depth_interval_ms: Literal[100, 250, 500] = Field(
        100, description="Diff depth stream speed (250 is the stream's default)."
    )
    public_trades: bool = Field(True, description="Subscribe to <symbol>@trade.")
    mark_price_stream: bool = Field(
        True, description="Subscribe to <symbol>@markPrice@1s (mark price, funding rate)."
    )
    listen_key_keepalive_s: float = Field(
        1800.0,
        gt=0,
        le=3000,
        description="Keep-alive (PUT /fapi/v1/listenKey) interval; a key lives 60 min.",
    )
    user_silence_timeout_s: float = Field(
        240.0,
        gt=0,
        le=315_360_000,
        description="The user stream carries pings every 3 min: silent this long, it is "
        "reconnected with a checked (or new) listen key and reconciled.",
    )
    recv_window_ms: int = Field(
        5000, gt=0, le=60000, description="How long a signed request stays valid at the venue."
    )
    time_sync_interval_s: float = Field(
        600.0, gt=0, le=315_360_000, description="How often the venue clock offset is measured."
    )
    rate_headroom: float = Field(
        0.9, gt=0, le=1, description="Share of the venue's rate limits this adapter may use."
    )
    silence_timeout_s: float = Field(
        60.0, gt=0, le=315_360_000, description="A market socket silent this long is down."
    )
    book_source: str = Field(
        "binance_futures",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="The registered book source (plugin kind book_source) that keeps each "
        "book (pu-chained diffs).",
    )


def usdm_instrument(venue: str, symbol: str, info: dict[str, Any]) -> Instrument:
    """The instrument of one ``symbols[]`` entry of ``GET /fapi/v1/exchangeInfo``:
    prices on PRICE_FILTER ``tickSize``, quantities reported at ``quantityPrecision``
    and ordered on LOT_SIZE ``stepSize``, minimum notional from MIN_NOTIONAL."""
    native = info.get("symbol", symbol)
    filters = {f["filterType"]: f for f in info.get("filters", [])}
    price_filter, lot = filters.get("PRICE_FILTER"), filters.get("LOT_SIZE")
    if price_filter is None or lot is None:
        raise ValueError(f"{venue}: {native} has no PRICE_FILTER/LOT_SIZE filter")
    step = Decimal(lot["stepSize"]).normalize()
    digits = info.get("quantityPrecision", -int(step.as_tuple().exponent))
    reported = Decimal(1).scaleb(-int(digits))
    return Instrument(
        venue=venue,
        symbol=symbol,
        base=info["baseAsset"],
        quote=info["quoteAsset"],
        tick_size=Decimal(price_filter["tickSize"]).normalize(),
        lot_size=min(reported, step),
        qty_step=step,
        min_qty=Decimal(lot.get("minQty", "0")).normalize(),
        min_notional=Decimal(filters.get("MIN_NOTIONAL", {}).get("notional", "0")).normalize(),
        kind=InstrumentKind.PERPETUAL,
    )


class UsdmAccountVenue(BinanceFamilyAdapter):
    """Instruments, account set-up and the user data stream of USDⓈ-M (REST, clock and
    market socket from the Binance family base)."""

    venue_id = "binance_usdm"
    ccxt_id = "binanceusdm"
    time_method = "fapipublic_get_time"
    depth_method = "fapipublic_get_depth"
    depth_weights = ((50, 2), (100, 5), (500, 10), (1000, 20))  # by snapshot limit
    trades_method, trades_weight = "fapiprivate_get_usertrades", 5
    # userTrades: startTime and endTime at most 7 days apart, the last 7 days without
    # either, and only the past 6 months (GET /fapi/v1/userTrades).
    trades_span_ms, trades_history_ms = 7 * 86_400_000, 180 * 86_400_000
    exchange_info_method, exchange_info_weight = "fapipublic_get_exchangeinfo", 1
    open_orders_method, open_orders_weight = "fapiprivate_get_openorders", 1
    cancel_method = "fapiprivate_delete_order"
    query_method, query_weight = "fapiprivate_get_order", 1
    # -1125: "This listenKey does not exist."
    not_found_codes = frozenset({-2011, -2013, -1125})
    params: BinanceUsdmParams

    def __init__(self, params: BinanceUsdmParams, ctx: VenueContext) -> None:
        super().__init__(
            params, ctx, BinanceUsdmRateGovernor(ctx.clock, headroom=params.rate_headroom)
        )
        self._user_socket: ManagedSocket | None = None
        self._user_ready = asyncio.Event()
        self._user_opens = 0
        self._key_check: asyncio.Task[Any] | None = None
        self.listen_key = ""
        self.listen_keys_created = 0
        self.listen_key_expiries = 0
        self.positions: dict[str, VenuePosition] = {}
        # symbol -> position side (BOTH; hedge mode: LONG, SHORT) -> its venue row's
        # (amount, entry, unrealized PnL, liquidation price): the run's position is their net.
        self.sides: dict[str, dict[str, tuple[Decimal, Decimal, Decimal, str | None]]] = {}
        self.marks: dict[str, tuple[Decimal, Decimal | None]] = {}  # symbol -> mark, rate
        # symbol -> leverage, as set at start (params.leverage) or last reported by the
        # venue (ACCOUNT_CONFIG_UPDATE); absent: not known here
        self.leverage: dict[str, int] = {}
        self._funding_since_ms = 0
        self.counters.update(listen_key_renewals=0, funding_payments=0)

    # -- URLs --------------------------------------------------------------------------------
    @property
    def rest_base(self) -> str:
        p = self.params
        return (p.rest_url or (TEST_REST if p.testnet else LIVE_REST)).rstrip("/")

    @property
    def streams_base(self) -> str:
        p = self.params
        return (p.ws_url or (TEST_STREAMS if p.testnet else LIVE_STREAMS)).rstrip("/")

    def client_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "options": {
                "defaultType": "future",
                "recvWindow": self.params.recv_window_ms,
                "timeDifference": 0,
                "adjustForTimeDifference": False,
            }
        }
        if self.params.rest_url or self.params.testnet:
            v1, v2 = f"{self.rest_base}/fapi/v1", f"{self.rest_base}/fapi/v2"
            config["urls"] = {
                "api": {
                    "fapiPublic": v1,
                    "fapiPrivate": v1,
                    "fapiPublicV2": v2,
                    "fapiPrivateV2": v2,
                }
            }
        return config

    # -- instruments and account -----------------------------------------------------------
    def instrument_of(self, symbol: str, info: dict[str, Any]) -> Instrument:
        return usdm_instrument(self.name, symbol, info)

    # -- account set-up ------------------------------------------------------------------------
    async def configure_account(self) -> None:
        """Check the position mode against the manifest (refuse to start on a mismatch),
        then set leverage and margin type per symbol where the manifest asks."""
        p = self.params
        dual = await self._read_patiently(
            functools.partial(self._call, "fapiprivate_get_positionside_dual", weight=30),
            "the position mode",
        )
        mode = "hedge" if dual.get("dualSidePosition") in (True, "true") else "one_way"
        if mode != p.position_mode:
            raise ValueError(
                f"{self.name}: the account is in {mode} position mode but the manifest says "
                f"position_mode: {p.position_mode}; change one of them (the venue's setting "
                "is POST /fapi/v1/positionSide/dual, allowed only without open positions)"
            )
        for native in self._native.values():
            if p.margin_type is not None:
                try:
                    await self._call(
                        "fapiprivate_post_margintype",
                        {"symbol": native, "marginType": p.margin_type},
                    )
                except VenueCallError as exc:
                    if exc.code != "-4046":  # "No need to change margin type."
                        raise ValueError(
                            f"{self.name}: cannot set margin type {p.margin_type} on {native}: "
                            f"{exc}"
                        ) from None
            if p.leverage is not None:
                await self._call(
                    "fapiprivate_post_leverage", {"symbol": native, "leverage": p.leverage}
                )
                self.leverage[self._by_native[native]] = p.leverage

    # -- user data stream (listen key) ---------------------------------------------------------
    async def new_listen_key(self) -> str:
        """``POST /fapi/v1/listenKey``: the account's active key (extended) or a new one."""
        data = await self._with_rate_retry(lambda: self._call("fapiprivate_post_listenkey"))
        self.listen_key = str(data["listenKey"])
        self.listen_keys_created += 1
        return self.listen_key

    def user_stream_url(self) -> str:
        return f"{self.streams_base}/ws/{self.listen_key}"

    async def start_user_stream(self) -> None:
        # Funding from before this run belongs to no position of this run (a second
        # of margin for the error of the clock offset).
        self._funding_since_ms = int(time.time() * 1000) + self.time_offset_ms - 1000
        await self.new_listen_key()
        self._user_socket = self._spawn_socket(
            "user",
            self.user_stream_url,
            self._on_user_open,
            self._on_user_text,
            self._on_user_down,
            silence_timeout_s=self.params.user_silence_timeout_s,
        )
        self.spawn_task(self._keepalive_loop(), f"{self.name}/listen-key")
        await self._await_ready(self._user_ready, "user data stream")

    async def _keep_key_alive(self) -> bool:
        """PUT the key; on "does not exist" take a new one. True when it changed."""
        try:
            await self._with_rate_retry(
                lambda: self._call("fapiprivate_put_listenkey", {"listenKey": self.listen_key})
            )
            return False
        except VenueCallError as exc:
            if exc.kind != "not_found":
                raise
        logger.warning("{}: listen key expired; taking a new one", self.name)
        self.counters["listen_key_renewals"] += 1
        await self.new_listen_key()
        return True

    async def _keepalive_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.params.listen_key_keepalive_s)
            try:
                if await self._keep_key_alive():
                    await self._reconnect_user("listen key renewed")
            except VenueCallError as exc:
                logger.warning("{}: listen key keep-alive failed: {}", self.name, exc)

    async def _reconnect_user(self, why: str) -> None:
        sock = self._user_socket
        if sock is not None and sock.ws is not None and not sock.ws.closed:
            logger.info("{}: reconnecting the user stream ({})", self.name, why)
            await sock.ws.close()

    async def _on_user_open(self, sock: ManagedSocket) -> None:
        self._user_opens += 1
        if self._user_opens > 1:
            # A stream that went silent or dropped may have lost its key: check it (and
            # renew it) before trusting the new connection, then recover what was missed.
            if await self._keep_key_alive():
                raise ConnectionError("listen key renewed; reconnecting with the new key")
            self.spawn_task(self.reconcile_orders(), f"{self.name}/reconcile")
        self._user_ready.set()

    def _on_user_down(self, reason: str) -> None:
        if self._user_down_since_ms is None:
            self._user_down_since_ms = int(time.time() * 1000) + self.time_offset_ms
        if self._key_check is None or self._key_check.done():
            # A dead key may be why: check (and renew) it before the next attempt.
            self._key_check = self.spawn_task(self._check_key(), f"{self.name}/listen-key-check")

    async def _check_key(self) -> None:
        try:
            await self._keep_key_alive()
        except VenueCallError as exc:
            logger.warning("{}: listen key check failed: {}", self.name, exc)

    async def _on_user_text(self, raw: str, recv_ns: int) -> None:
        try:
            msg = json.loads(raw)
        except ValueError as exc:
            self.unreadable_execution(raw, exc)
            return
        if not isinstance(msg, dict):
            return
        kind = msg.get("e")
        if kind == "ORDER_TRADE_UPDATE":
            try:
                self._on_order_event(msg["o"], int(msg.get("E", 0)))
            except (LookupError, ValueError, TypeError, ArithmeticError, AttributeError) as exc:
                self.unreadable_execution(msg, exc)
            return
        try:
            if kind == "ACCOUNT_UPDATE":
                await self._on_account_event(msg)
            elif kind == "ACCOUNT_CONFIG_UPDATE":
                self._on_config_event(msg)
            elif kind == "listenKeyExpired":
                self.listen_key_expiries += 1
                if msg.get("listenKey") in (None, self.listen_key):
                    self._on_user_down("listen key expired")
                    self.counters["listen_key_renewals"] += 1
                    await self.new_listen_key()
                    await self._reconnect_user("listenKeyExpired")
        except (LookupError, ValueError, TypeError, ArithmeticError, AttributeError) as exc:
            logger.warning("{}: bad {} event ({}): {!r}", self.name, kind, exc, msg)

    def _on_config_event(self, msg: dict[str, Any]) -> None:
        """A setting changed on the account while the run trades (by hand, or another
        program): a symbol's leverage (``ac``) moves its liquidation price, so it is
        said and the position is asked for again; multi-assets mode (``ai``) is said."""
        if "ac" in msg:
            native = str(msg["ac"]["s"])
            leverage = int(msg["ac"]["l"])
            symbol = self._by_native.get(native)
            if symbol is None:
                return  # a symbol this run does not trade
            before = self.leverage.get(symbol)
            self.leverage[symbol] = leverage
            if before is not None and before != leverage:
                logger.warning(
                    "{}: leverage of {} changed at the venue from {} to {} while the run "
                    "trades (not by this run); the liquidation price moves with it",
                    self.name,
                    native,
                    before,
                    leverage,
                )
            else:
                logger.info("{}: leverage of {} is {} at the venue", self.name, native, leverage)
            position = self.positions.get(symbol)
            if self.has_credentials and position is not None and position.qty_lots:
                self.spawn_task(self.refresh_positions(), f"{self.name}/positions")
        if "ai" in msg:
            logger.warning(
                "{}: the account's multi-assets mode is now {} (changed while the run trades)",
                self.name,
                "on" if msg["ai"].get("j") else "off",
            )

    def _on_order_event(self, o: dict[str, Any], event_ms: int) -> None:
        symbol = self._by_native.get(o["s"])
        if symbol is not None:
            self.on_execution(symbol, o, o["c"], event_ms * 1_000_000)

    async def _on_account_event(self, msg: dict[str, Any]) -> None:
        update = msg["a"]
        ts_ns = int(msg.get("E", 0)) * 1_000_000
        changed = []
        for row in update.get("P", []):
            symbol = self._by_native.get(row["s"])
            if symbol is not None:
                self._set_side(symbol, row.get("ps", "BOTH"), row["pa"], row["ep"], row["up"])
                changed.append(symbol)
        for symbol in dict.fromkeys(changed):
            self._set_position(symbol, *self._net(symbol), None, ts_ns)
        if update.get("m") == "FUNDING_FEE":
            # A crossed position's funding comes without its symbol: the income history
            # names it (and gives each payment its id).
            await self.recover_funding()

    def _set_side(
        self, symbol: str, side: str, qty: str, entry: str, upnl: str, liq: str | None = None
    ) -> None:
        """One venue row: a position side's amount (signed), entry, unrealized PnL and
        liquidation price (None: not in the row; the side's last known one stays)."""
        sides = self.sides.setdefault(symbol, {})
        known = sides.get(side)
        if liq is None and known is not None and known[0] == Decimal(qty):
            liq = known[3]
        sides[side] = (Decimal(qty), Decimal(entry or "0"), Decimal(upnl or "0"), liq)

    def _net(self, symbol: str) -> tuple[str, str, str]:
        """(quantity, entry, unrealized PnL) of the run's one position per market, the
        net of the venue's sides. In hedge mode with LONG and SHORT open, the entry is
        their cost-weighted mean, (long x entry - short x entry) / net: at any mark the
        net position's unrealized PnL is then the sum of the sides'. One side open: its
        own entry, as the venue sends it."""
        open_sides = [v for v in self.sides.get(symbol, {}).values() if v[0]]
        qty = sum((v[0] for v in open_sides), Decimal(0))
        upnl = sum((v[2] for v in open_sides), Decimal(0))
        if len(open_sides) == 1:
            entry = open_sides[0][1]
        else:
            entry = sum((v[0] * v[1] for v in open_sides), Decimal(0)) / qty if qty else Decimal(0)
        return str(qty), str(entry), str(upnl)

    def _net_liquidation(self, symbol: str) -> str | None:
        """The liquidation price of the largest open side (hedge mode: the one that
        carries the net's direction when one side dominates)."""
        open_sides = [v for v in self.sides.get(symbol, {}).values() if v[0]]
        if not open_sides:
            return None
        return max(open_sides, key=lambda v: abs(v[0]))[3]

    def _set_position(
        self, symbol: str, qty: str, entry: str, upnl: str, liq: str | None, ts_ns: int
    ) -> None:
        inst = self.instruments[symbol]
        old = self.positions.get(symbol)
        mark, rate = self.marks.get(symbol, (None, None))
        liquidation = Decimal(liq) if liq not in (None, "", "0") else None
        if liq is None and old is not None and old.qty_lots == inst.qty_to_lots(qty):
            liquidation = old.liquidation_price  # the stream does not carry it
        self._emit_position(
            VenuePosition(
                self.name,
                symbol,
                inst.qty_to_lots(qty),
                Decimal(entry),
                mark,
                Decimal(upnl),
                liquidation,
                ts_ns,
                rate,
            )
        )
        if liq is None and self.has_credentials and Decimal(qty):
            # The liquidation price moves with the position: ask for it.
            self.spawn_task(self.refresh_positions(), f"{self.name}/positions")

    def _emit_position(self, position: VenuePosition) -> None:
        self.positions[position.symbol] = position
        handler = getattr(self.sink, "on_position", None)
        if handler is not None:
            try:
                handler(position)
            except Exception:
                logger.exception("{}: sink.on_position failed", self.name)

    def on_mark_price(self, symbol: str, data: dict[str, Any]) -> None:
        """One ``markPriceUpdate``: mark price and funding rate; the position's
        unrealized PnL follows the mark."""
        mark, rate = Decimal(data["p"]), Decimal(data["r"]) if data.get("r") else None
        self.marks[symbol] = (mark, rate)
        old = self.positions.get(symbol)
        if old is not None and old.qty_lots:
            qty = self.instruments[symbol].lots_to_qty(old.qty_lots)
            self._emit_position(
                VenuePosition(
                    self.name,
                    symbol,
                    old.qty_lots,
                    old.entry_price,
                    mark,
                    (mark - old.entry_price) * qty,
                    old.liquidation_price,
                    int(data.get("E", 0)) * 1_000_000,
                    rate,
                )
            )

    async def refresh_positions(self) -> None:
        """``GET /fapi/v2/positionRisk``: position, entry, mark, unrealized PnL and the
        liquidation price of every symbol of ours (hedge mode: LONG plus SHORT)."""
        rows = await self._read_patiently(
            functools.partial(self._call, "fapiprivatev2_get_positionrisk", weight=5),
            "the positions",
        )
        seen = []
        for row in rows:
            symbol = self._by_native.get(row.get("symbol", ""))
            if symbol is None:
                continue
            if Decimal(row["markPrice"] or "0"):
                self.marks[symbol] = (
                    Decimal(row["markPrice"]),
                    self.marks.get(symbol, (0, None))[1],
                )
            side = row.get("positionSide") or "BOTH"
            liq = row.get("liquidationPrice") or "0"
            self._set_side(
                symbol, side, row["positionAmt"], row["entryPrice"], row["unRealizedProfit"], liq
            )
            seen.append(symbol)
        now = self.clock.now_ns()
        for symbol in dict.fromkeys(seen):
            liq = self._net_liquidation(symbol) or "0"
            self._set_position(symbol, *self._net(symbol), liq, now)

    async def start_positions(
        self, position_lots: Callable[[str], int], orders: list[Order], *, resumed: bool
    ) -> list[VenuePosition]:
        """The positions the account holds as the run starts (positionRisk), for the run
        to book as opening positions; a refusal (``ValueError``) under ``require_flat``.
        A resumed run's opening positions are in its journal: nothing to report then."""
        if resumed or not self.has_credentials:
            return []
        await self.refresh_positions()
        both = [
            f"LONG {sides['LONG'][0]} (entry {sides['LONG'][1]}) and SHORT "
            f"{-sides['SHORT'][0]} (entry {sides['SHORT'][1]}) of {symbol}"
            for symbol, sides in self.sides.items()
            if sides.get("LONG", (0,))[0] and sides.get("SHORT", (0,))[0]
        ]
        if both:
            await self.close()
            raise ValueError(
                f"{self.name}: the account holds {'; '.join(both)} in hedge mode as the run "
                "starts: a run keeps one net position per market and cannot take over two "
                "opposite sides (closing one of them is not a reduce-only order on the net); "
                "close one side, or both, first"
            )
        held = [p for p in self.positions.values() if p.qty_lots]
        if held and self.params.start_position == "require_flat":
            what = ", ".join(
                f"{self.instruments[p.symbol].lots_to_qty(p.qty_lots)} {p.symbol} "
                f"(entry {p.entry_price})"
                for p in held
            )
            await self.close()  # a refused start leaves nothing running
            raise ValueError(
                f"{self.name}: the account holds {what} as the run starts, and "
                "params.start_position is require_flat: close the position first, or set "
                "start_position: adopt to book it as the opening position and quote around it"
            )
        return held

    async def recover_funding(self) -> None:
        """Funding payments since the last one seen (``GET /fapi/v1/income``), each booked
        once by its transaction id."""
        handler = getattr(self.sink, "on_funding", None)
        rows = await self._call(
            "fapiprivate_get_income",
            {"incomeType": "FUNDING_FEE", "startTime": self._funding_since_ms, "limit": 1000},
            weight=30,
        )
        for row in rows:
            symbol = self._by_native.get(row.get("symbol", ""))
            self._funding_since_ms = max(self._funding_since_ms, int(row["time"]))
            if symbol is None or handler is None:
                continue
            self.counters["funding_payments"] += 1
            self._emit_funding(
                handler,
                Funding(
                    self.name,
                    symbol,
                    str(row["tranId"]),
                    Decimal(row["income"]),
                    row["asset"],
                    int(row["time"]) * 1_000_000,
                ),
            )

    def _emit_funding(self, handler: Any, funding: Funding) -> None:
        try:
            handler(funding)
        except Exception:
            logger.exception("{}: sink.on_funding failed", self.name)
