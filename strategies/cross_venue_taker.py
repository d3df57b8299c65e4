"""Cross-venue taking: buy where one market's ask is below another's bid by more than the
fees and an edge, and hedge any leg that filled alone so the net position stays flat.

The strategy's markets are venues of one asset, merged into a ``ConsumerBook``; the buy
leg is allocated over every venue but the sell venue by the ``SmartOrderRouter`` within
a slippage cap, the sell leg takes the best bid. Our immediate-or-cancel orders in
flight are held in a ``TraderBook``; nothing new is sent until they are all answered.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from pydantic import Field, model_validator

import quoteforge
from quoteforge.book import BookState
from quoteforge.model import Fill, OrderUpdate, Side
from quoteforge.plugins.consumer_book import ConsumerBook
from quoteforge.plugins.routing import SmartOrderRouter
from quoteforge.registry import Register
from quoteforge.strategies.trader_book import TraderBook
from quoteforge.strategy import Market, Quotes, Strategy, StrategyParams

__all__ = ["CrossVenueTaker", "CrossVenueTakerParams", "Opportunity"]

_BPS = Decimal(10_000)


class CrossVenueTakerParams(StrategyParams):
    legs: list[str] | None = Field(
        None,
        description="Markets (symbols or exchange:symbol keys of this strategy) that are the "
        "venues of one asset; default: every market of the strategy. At least two.",
    )
    order_size: float = Field(
        gt=0, le=1e9, description="Most base units bought and sold per trade."
    )
    min_edge_bps: float = Field(
        5.0,
        ge=0,
        le=1_000_000,
        description="Take only when the bid beats the ask by at least this, after both "
        "taker fees, in basis points of the ask.",
    )
    taker_fee_bps: dict[str, float] = Field(
        default_factory=dict,
        description="Taker fee per leg (symbol or key) in bps; default: the instrument's.",
    )
    max_slippage_bps: float = Field(
        5.0,
        ge=0,
        le=1_000_000,
        description="Most the buy leg may walk beyond the best ask, in bps.",
    )
    hedge_slippage_bps: float = Field(
        30.0,
        ge=0,
        le=1_000_000,
        description="Most a hedge of an unmatched leg may walk beyond the best price, bps.",
    )
    max_position: float = Field(
        gt=0,
        le=1e9,
        description="Bound on each leg's position and on the net position, base units.",
    )
    cooldown_s: float = Field(
        0.5, ge=0, le=315_360_000, description="Seconds between trades (hedges do not wait)."
    )
    order_timeout_s: float = Field(
        10.0,
        gt=0,
        le=315_360_000,
        description="Forget an order in flight that got no final answer after this long.",
    )

    @model_validator(mode="after")
    def _sizes(self) -> CrossVenueTakerParams:
        if self.order_size > self.max_position:
            raise ValueError(
                f"order_size {self.order_size} exceeds max_position {self.max_position}; "
                "lower order_size or raise max_position"
            )
        for leg, fee in self.taker_fee_bps.items():
            if not 0 <= fee < 10_000:
                raise ValueError(f"taker_fee_bps[{leg!r}] must be in [0, 10000), got {fee}")
        return self

    def manifest_problems(self, manifest: Any, spec: Any) -> list[tuple[tuple[str, ...], str]]:
        """What the manifest around these params makes unrunnable (checked by validate)."""
        legs = self.legs if self.legs is not None else spec.symbols
        if "*" not in legs and len(set(legs)) < 2:
            where = ("params", "legs") if self.legs is not None else ("symbols",)
            return [(where, f"cross_venue_taker needs at least two legs, got {list(legs)}")]
        return []


class Opportunity:
    """A cross between two legs: buy at ``ask`` on ``buy``, sell at ``bid`` on ``sell``."""

    __slots__ = ("ask_ticks", "bid_lots", "bid_ticks", "buy", "edge_bps", "sell")

    def __init__(
        self, buy: str, sell: str, ask_ticks: int, bid_ticks: int, bid_lots: int, edge_bps: float
    ) -> None:
        self.buy = buy
        self.sell = sell
        self.ask_ticks = ask_ticks
        self.bid_ticks = bid_ticks
        self.bid_lots = bid_lots
        self.edge_bps = edge_bps

    def __repr__(self) -> str:
        return f"Opportunity(buy={self.buy}, sell={self.sell}, edge={self.edge_bps:.2f}bps)"


def _lcm_step(steps: list[Decimal]) -> Decimal:
    """Smallest size that is a whole number of order steps on every leg."""
    places = max(-int(s.as_tuple().exponent) for s in steps)
    scale = Decimal(10) ** places
    return Decimal(math.lcm(*(int(s * scale) for s in steps))) / scale


class CrossVenueTaker(Strategy):
    """Takes crossed prices between venues and keeps the net position flat."""

    Params = CrossVenueTakerParams
    interface_version = 2
    params: CrossVenueTakerParams

    def __init__(self, ctx: quoteforge.StrategyContext, params: CrossVenueTakerParams) -> None:
        super().__init__(ctx, params)
        self.inflight = TraderBook()
        self._sent_at: dict[str, float] = {}
        self._last_trade = -math.inf
        self._configure(params)

    def _find(self, name: str, what: str) -> str:
        markets = self.ctx.markets
        if name in markets:
            return name
        for key, market in markets.items():
            if market.symbol == name:
                return key
        known = ", ".join(sorted(markets)) or "none"
        raise ValueError(
            f"strategy {self.ctx.name!r}: {what} {name!r} is not one of its markets ({known}); "
            "add its symbol to the strategy's symbols"
        )

    def _configure(self, params: CrossVenueTakerParams) -> None:
        keys = (
            [self._find(n, "leg") for n in params.legs]
            if params.legs is not None
            else list(self.ctx.markets)
        )
        if len(set(keys)) < 2:
            raise ValueError(
                f"strategy {self.ctx.name!r}: cross_venue_taker needs at least two legs, got "
                f"{keys}; list two or more markets of the same asset in symbols"
            )
        self.legs: dict[str, Market] = {k: self.ctx.markets[k] for k in dict.fromkeys(keys)}
        fees = {
            self._find(n, "taker_fee_bps key"): Decimal(str(v)) / _BPS
            for n, v in (params.taker_fee_bps.items())
        }
        self.fees = {k: fees.get(k, m.instrument.taker_fee) for k, m in self.legs.items()}
        self.book = self._consumer(list(self.legs))
        self.router = SmartOrderRouter(self.book, self.fees)
        # The buy leg of a trade never uses the sell venue: one router per excluded leg.
        self._buy_routers = {
            sell: SmartOrderRouter(
                book := self._consumer([k for k in self.legs if k != sell]),
                {k: self.fees[k] for k in book.venues},
            )
            for sell in self.legs
        }
        # Trade sizes every leg can send: a whole number of order steps on each.
        self.size_step = _lcm_step([m.instrument.qty_step for m in self.legs.values()])

    def _consumer(self, keys: list[str]) -> ConsumerBook:
        book = ConsumerBook(self.ctx.name)
        for key in keys:
            book.add(self.legs[key].book, name=key)
        return book

    def on_params(self, params: Any, **kwargs: Any) -> None:
        self._configure(params)
        self.params = params

    # -- reading ---------------------------------------------------------------------------
    def net_position(self) -> Decimal:
        """Sum of the legs' positions, base units."""
        return sum(
            (m.instrument.lots_to_qty(m.position_lots) for m in self.legs.values()), Decimal(0)
        )

    def best_opportunity(self) -> Opportunity | None:
        """The pair of legs with the largest fee-adjusted edge of at least ``min_edge_bps``."""
        best: Opportunity | None = None
        live = [k for k in self.legs if k in self.book.venues and self._live(k)]
        for buy in live:
            ask = self.legs[buy].book.best_ask()
            if ask is None:
                continue
            buy_inst = self.legs[buy].instrument
            cost = buy_inst.ticks_to_price(ask[0]) * (1 + self.fees[buy])
            for sell in live:
                if sell == buy:
                    continue
                bid = self.legs[sell].book.best_bid()
                if bid is None:
                    continue
                proceeds = self.legs[sell].instrument.ticks_to_price(bid[0]) * (1 - self.fees[sell])
                edge = float((proceeds - cost) / cost * _BPS)
                if edge >= self.params.min_edge_bps and (best is None or edge > best.edge_bps):
                    best = Opportunity(buy, sell, ask[0], bid[0], bid[1], edge)
        return best

    def _live(self, key: str) -> bool:
        return self.legs[key].book.state is BookState.LIVE

    # -- acting ----------------------------------------------------------------------------
    def on_book(self, market: Market, **kwargs: Any) -> Quotes | None:
        self.evaluate()
        return None

    def evaluate(self) -> None:
        """Hedge an unmatched position, else take the best crossing if there is one."""
        now = self.ctx.now()
        for cid in [c for c, t in self._sent_at.items() if now - t >= self.params.order_timeout_s]:
            self._forget(cid)
        if len(self.inflight):
            return  # a trade or hedge is still being answered: its fills decide what is next
        if self._hedge():
            return
        if now - self._last_trade < self.params.cooldown_s:
            return
        chance = self.best_opportunity()
        if chance is not None:
            self._trade(chance, now)

    def _hedge(self) -> bool:
        net = self.net_position()
        qty = (abs(net) // self.book.qty_step) * self.book.qty_step
        if qty <= 0:
            return False
        side = Side.SELL if net > 0 else Side.BUY
        route = self.router.route(side, qty, Decimal(str(self.params.hedge_slippage_bps)))
        sent = False
        for child in route.children:
            sent |= self._send(self.legs[child.venue], side, child.price_ticks, child.qty_lots)
        return sent

    def _room(self, market: Market, side: Side) -> Decimal:
        limit = Decimal(str(self.params.max_position))
        position = market.instrument.lots_to_qty(market.position_lots)
        return max(Decimal(0), limit - position if side is Side.BUY else limit + position)

    def _trade(self, chance: Opportunity, now: float) -> None:
        p = self.params
        sell = self.legs[chance.sell]
        size = min(
            Decimal(str(p.order_size)),
            sell.instrument.lots_to_qty(chance.bid_lots),
            self._room(sell, Side.SELL),
            min(self._room(self.legs[k], Side.BUY) for k in self.legs if k != chance.sell),
        )
        size = (size // self.size_step) * self.size_step
        if size <= 0:
            return
        # The buy leg may walk only as far as the edge above the minimum allows.
        cap = min(Decimal(str(p.max_slippage_bps)), Decimal(str(chance.edge_bps - p.min_edge_bps)))
        route = self._buy_routers[chance.sell].route(Side.BUY, size, max(cap, Decimal(0)))
        bought = Decimal(0)
        for child in route.children:
            if self._send(self.legs[child.venue], Side.BUY, child.price_ticks, child.qty_lots):
                bought += child.qty
        # What was bought, in whole order steps of the sell venue.
        step = sell.instrument.qty_step
        sell_lots = sell.instrument.qty_to_lots((bought // step) * step)
        if sell_lots > 0:
            self._send(sell, Side.SELL, chance.bid_ticks, sell_lots)
        self._last_trade = now

    def _send(self, market: Market, side: Side, price_ticks: int, lots: int) -> bool:
        order = self.ctx.take(market, side, price_ticks, lots)
        if order is None:
            return False
        self.inflight.add(
            order.client_id, market.venue, market.symbol, side, price_ticks, lots, visible_ahead=0
        )
        self._sent_at[order.client_id] = self.ctx.now()
        return True

    def _forget(self, client_id: str) -> None:
        self._sent_at.pop(client_id, None)
        if client_id in self.inflight:
            self.inflight.remove(client_id)

    def on_order_update(self, market: Market, update: OrderUpdate, **kwargs: Any) -> None:
        if update.status.is_terminal:
            self._forget(update.client_id)

    def on_fill(self, market: Market, fill: Fill, **kwargs: Any) -> None:
        if fill.client_id in self.inflight:
            left = self.inflight.get(fill.client_id).lots
            self.inflight.fill(fill.client_id, min(fill.qty_lots, left))
            if fill.client_id not in self.inflight:
                self._sent_at.pop(fill.client_id, None)


@quoteforge.hookimpl
def quoteforge_register_strategies(register: Register) -> None:
    register("cross_venue_taker", CrossVenueTaker)
