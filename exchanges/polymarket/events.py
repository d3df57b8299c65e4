"""The Polymarket adapter's market-channel events other than books (trades, tick size
changes, resolution notices) and market resolution: a resolved market pays 1 per winning
token and 0 per losing one, booked as a settlement fill that closes what we hold."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge.exchanges.ccxt_orders import OrderTracking, VenueCallError
from quoteforge.exchanges.polymarket.wire import VENUE_TICKS, decimal_of, parse_market, shown
from quoteforge.model import Fill, Instrument, Liquidity, Side

if TYPE_CHECKING:
    from quoteforge.exchanges.polymarket.book import PolymarketBookSource
    from quoteforge.exchanges.polymarket.wire import OutcomeToken

__all__ = ["PolymarketEvents"]


class PolymarketEvents(OrderTracking):
    """Market-channel events and resolution (see the module docstring); a mixin of
    ``PolymarketClob``, which provides the attributes declared here."""

    instruments: dict[str, Instrument]
    tokens: dict[str, OutcomeToken]
    held: dict[str, int]
    held_lots: Callable[[str], int]
    resolved: dict[str, str]
    venue_tick: dict[str, Decimal]
    _by_asset: dict[str, str]
    _sources: dict[str, PolymarketBookSource]
    _closed: bool
    tap: Any
    params: Any
    _tap_raw: Callable[[str, str, int], None]
    _emit_trade: Callable[[str, int, int, Side, int], None]

    call: Callable[..., Awaitable[Any]]  # the adapter's REST call
    deliver_fill: Callable[[Fill], None]  # reports.PolymarketReports.deliver_fill

    def _on_market_text(self, raw: str, recv_ns: int) -> None:
        if raw == "PONG":
            return
        if self.tap is not None:
            self._tap_raw("polymarket:market", raw, recv_ns)
        try:
            msg = json.loads(raw)
        except ValueError:
            logger.warning("{}: market channel sent non-JSON: {!r}", self.name, raw[:200])
            return
        for event in msg if isinstance(msg, list) else [msg]:
            if not isinstance(event, dict):
                continue
            try:
                self._on_market_event(event)
            except (LookupError, TypeError, AttributeError, ArithmeticError, ValueError) as exc:
                # The backstop that keeps one unforeseen event from taking the socket down.
                logger.warning(
                    "{}: market event {} skipped: unreadable ({}: {})",
                    self.name,
                    str(event.get("event_type"))[:40],
                    type(exc).__name__,
                    exc,
                )

    def _on_market_event(self, event: dict[str, Any]) -> None:
        from quoteforge.book.wire import BookMessageError

        kind = event.get("event_type")
        if kind in ("book", "price_change"):
            if kind == "book":
                assets = [event.get("asset_id")]
            else:
                changes = event.get("price_changes")
                changes = changes if isinstance(changes, list) else []
                assets = [c.get("asset_id") for c in changes if isinstance(c, dict)]
            for symbol in dict.fromkeys(self._by_asset.get(str(a), "") for a in assets):
                if symbol:
                    try:
                        self._sources[symbol].on_event(event, self.clock.now_ns())
                    except BookMessageError as exc:
                        logger.warning("{}: dropped malformed book event: {}", self.name, exc)
        elif kind == "last_trade_price":
            self._on_last_trade(event)
        elif kind == "tick_size_change":
            self._on_tick_size_change(event)
        elif kind == "market_resolved":
            self.spawn_task(self._confirm_resolution(), f"{self.name}/resolution-check")

    def _on_last_trade(self, event: dict[str, Any]) -> None:
        symbol = self._by_asset.get(str(event.get("asset_id")))
        if symbol is None:
            return
        inst = self.instruments[symbol]
        try:
            price = decimal_of(event.get("price"), "price")
            if not 0 < price < 1:
                raise ValueError(f"price {shown(event.get('price'))} outside (0, 1)")
            ticks = inst.price_to_ticks(price)
            size = decimal_of(event.get("size"), "size")
            if size <= 0:
                raise ValueError(f"size {shown(event.get('size'))} is not > 0")
            qty = inst.qty_to_lots(size)
            side = Side.parse(str(event.get("side", "BUY")))
        except (ValueError, ArithmeticError) as exc:
            logger.warning("{}: last_trade_price skipped ({}): {}", self.name, exc, shown(event))
            return
        self._emit_trade(symbol, ticks, qty, side, _ms_to_ns(event.get("timestamp")))

    def _on_tick_size_change(self, event: dict[str, Any]) -> None:
        symbol = self._by_asset.get(str(event.get("asset_id")))
        if symbol is None:
            return
        try:
            new = decimal_of(event.get("new_tick_size"), "new_tick_size").normalize()
        except ValueError as exc:
            logger.warning("{}: tick_size_change skipped: {}", self.name, exc)
            return
        if new not in VENUE_TICKS:
            logger.warning(
                "{}: tick_size_change skipped: new_tick_size {} is not a tick the venue uses",
                self.name,
                shown(event.get("new_tick_size")),
            )
            return
        grid = self.instruments[symbol].tick_size
        self.venue_tick[symbol] = new
        if new % grid == 0:
            logger.warning(
                "{}: {} tick size is now {} (was {}): orders off the new grid are refused",
                self.name,
                symbol,
                new,
                event.get("old_tick_size"),
            )
            return
        reason = (
            f"tick size changed to {new}, finer than the run's grid {grid}: the book cannot "
            "be kept exactly; quotes pulled, restart the run to trade on the new tick"
        )
        logger.error("{}: {}: {}", self.name, symbol, reason)
        self._sources[symbol].halt(reason)

    # -- resolution ------------------------------------------------------------------------
    async def _resolution_polls(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.params.resolution_poll_s or 60.0)
            await self.check_resolution()

    async def _confirm_resolution(self, attempts: int = 6, first_wait_s: float = 0.5) -> None:
        """A ``market_resolved`` event: the market endpoint is asked who won, again (0.5,
        1, 2 ... s later) while it cannot be read, so a transient failure does not leave
        the settlement to the next poll (a minute away, or never without polls)."""
        wait = first_wait_s
        for _ in range(attempts):
            if not await self.check_resolution():
                return
            await asyncio.sleep(wait)
            wait *= 2

    async def check_resolution(self) -> int:
        """Ask the market endpoint whether each market resolved; a resolved market pays 1
        per winning token and 0 per losing one: every token we hold is closed by a
        settlement fill at that price (``fill_id`` ``resolution:<condition>:<token>``),
        and its book stops (quotes pulled). Returns how many markets could not be read."""
        failed = 0
        done: set[str] = set()
        for symbol, token in list(self.tokens.items()):
            cid = token.condition_id
            if cid in done or symbol in self.resolved:
                continue
            done.add(cid)
            try:
                data = await self.call("GET", f"/markets/{cid}")
            except VenueCallError as exc:
                logger.info("{}: resolution check of {} failed: {}", self.name, cid, exc)
                failed += 1
                continue
            alias = symbol.rpartition("/")[0]
            _, closed, winners = parse_market(alias, data or {})
            if closed and any(winners.values()):
                self.settle(cid, winners)
        return failed

    def settle(self, condition_id: str, winners: dict[str, bool]) -> None:
        """Book the resolution of ``condition_id`` (``winners``: symbol -> paid 1)."""
        now = self.clock.now_ns()
        for symbol, token in self.tokens.items():
            if token.condition_id != condition_id or symbol in self.resolved:
                continue
            won = winners.get(symbol, False)
            self.resolved[symbol] = "won" if won else "lost"
            inst = self.instruments[symbol]
            held = self.held_lots(symbol)
            if held > 0:
                self.deliver_fill(
                    Fill(
                        venue=self.name,
                        symbol=symbol,
                        fill_id=f"resolution:{condition_id}:{token.token_id}",
                        client_id="",
                        side=Side.SELL,
                        price_ticks=inst.price_to_ticks(1 if won else 0),
                        qty_lots=held,
                        fee=Decimal(0),
                        fee_asset="USDC",
                        liquidity=Liquidity.TAKER,
                        ts_ns=now,
                    )
                )
            logger.warning(
                "{}: {} resolved: {} pays {}", self.name, condition_id, symbol, 1 if won else 0
            )
            self._sources[symbol].halt(f"market resolved ({'won' if won else 'lost'})")


def _ms_to_ns(value: Any) -> int:
    try:
        stamp = int(Decimal(str(value)))
    except (ArithmeticError, ValueError, TypeError):
        return 0
    # The venue writes milliseconds on the market channel, seconds on the user channel.
    return stamp * 1_000_000 if stamp > 10**11 else stamp * 1_000_000_000
