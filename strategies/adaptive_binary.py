"""Adaptive market making for binary (prediction-market) contracts priced in (0, 1):
a mid learned from order flow, spreads that widen with flow imbalance and inventory.

A venue that sells an event as two tokens (Polymarket's YES and NO, whose instruments
name each other as ``complement``) is quoted as one two-sided market when the strategy
has both: buying NO at p is selling YES at 1 - p, the position is the combined one
(YES held minus NO held), and each side is quoted on the token that does not cross the
other: a held token is sold to reduce, otherwise the opposite token is bought."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, model_validator

import quoteforge
from quoteforge.model import InstrumentKind, Quote, Side, market_key
from quoteforge.strategies.signals import TradeFlowImbalance
from quoteforge.strategy import Market, Quotes, Strategy, StrategyContext, StrategyParams

__all__ = ["AdaptiveBinary", "AdaptiveBinaryParams", "binary_quote_ticks"]


class AdaptiveBinaryParams(StrategyParams):
    """Parameters of ``adaptive_binary``; prices are probabilities in (0, 1)."""

    order_size: float = Field(
        gt=0, le=1e9, description="Quote size in contracts at zero inventory."
    )
    base_spread: float = Field(
        0.04, gt=0, lt=1, description="Bid-ask width with balanced flow and no inventory."
    )
    min_spread: float = Field(0.01, gt=0, lt=1, description="Narrowest bid-ask width.")
    max_spread: float = Field(0.20, gt=0, lt=1, description="Widest bid-ask width.")
    imbalance_window: int = Field(
        50, ge=1, description="Public trades in the buy/sell imbalance window."
    )
    imbalance_widening: float = Field(
        1.0,
        ge=0,
        description="Spread grows by this fraction of base_spread at fully one-sided flow.",
    )
    inventory_limit: float = Field(
        gt=0,
        le=1e9,
        description="Largest absolute position in contracts; the growing side stops there.",
    )
    inventory_widening: float = Field(
        0.5, ge=0, description="Spread grows by this fraction of base_spread at the limit."
    )
    inventory_skew: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="Quotes shift against inventory by this much (price) at the limit.",
    )
    learning_rate: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Weight of each public trade's price in the learned mid.",
    )
    reversion: float = Field(
        0.0,
        ge=0,
        description="Pull of the learned mid toward the prior, per second "
        "(m -> prior + (m - prior)*exp(-reversion*dt)).",
    )
    prior: float = Field(0.5, gt=0, lt=1, description="Probability the mid reverts to.")
    priors: dict[str, float] = Field(
        default_factory=dict,
        description="Per-market priors keyed by symbol or venue:symbol; others use prior.",
    )
    recenter_threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="abs(position)/inventory_limit from which the learned mid is re-anchored "
        "to the book and only the reducing side is quoted.",
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> AdaptiveBinaryParams:
        if not self.min_spread <= self.base_spread <= self.max_spread:
            raise ValueError(
                f"spreads must satisfy min_spread <= base_spread <= max_spread, got "
                f"{self.min_spread} <= {self.base_spread} <= {self.max_spread}"
            )
        for key, value in self.priors.items():
            if not 0 < value < 1:
                raise ValueError(f"priors[{key!r}] must be strictly between 0 and 1, got {value}")
        return self


def binary_quote_ticks(
    bid: float,
    ask: float,
    tick: float,
    best_bid: int | None = None,
    best_ask: int | None = None,
    drop_first: Side = Side.BUY,
) -> tuple[int | None, int | None]:
    """Bid and ask ticks for model prices on a binary grid with ``tick``.

    Rounded passively (bid down, ask up), kept strictly inside (0, 1), never at or
    through the opposite touch, and bid < ask; a side that cannot satisfy all of this
    is None. When only one side can stay, ``drop_first`` says which one goes.
    """
    top = round(1 / tick) - 1  # highest tick strictly below 1
    bid_t: int | None = math.floor(round(bid / tick, 9)) if math.isfinite(bid) else None
    ask_t: int | None = math.ceil(round(ask / tick, 9)) if math.isfinite(ask) else None
    if bid_t is not None:
        bid_t = min(max(bid_t, 1), top - 1)
        if best_ask is not None:
            bid_t = min(bid_t, best_ask - 1)
        if bid_t < 1:
            bid_t = None
    if ask_t is not None:
        ask_t = max(min(ask_t, top), 2)
        if best_bid is not None:
            ask_t = max(ask_t, best_bid + 1)
        if ask_t > top:
            ask_t = None
    if bid_t is not None and ask_t is not None and bid_t >= ask_t:
        if drop_first is Side.BUY:
            bid_t = None
        else:
            ask_t = None
    return bid_t, ask_t


@dataclass
class _MarketState:
    mid: float
    prior: float
    flow: TradeFlowImbalance
    last_ns: int


class AdaptiveBinary(Strategy):
    """Market making on binary contracts with a mid learned from order flow."""

    Params = AdaptiveBinaryParams
    interface_version = 2

    def __init__(self, ctx: StrategyContext, params: BaseModel) -> None:
        if not isinstance(params, AdaptiveBinaryParams):
            raise TypeError(
                f"adaptive_binary needs AdaptiveBinary.Params, got {type(params).__name__}"
            )
        super().__init__(ctx, params)
        self.p: AdaptiveBinaryParams = params
        self._states: dict[str, _MarketState] = {}

    def on_start(self, **kwargs: Any) -> None:
        for market in self.ctx.markets.values():
            self._check_binary(market)

    def on_params(self, params: BaseModel, **kwargs: Any) -> None:
        assert isinstance(params, AdaptiveBinaryParams)
        old_window = self.p.imbalance_window
        super().on_params(params)
        self.p = params
        for key, state in self._states.items():
            market = self.ctx.markets.get(key)
            if market is not None:
                state.prior = self._prior(market)
            if params.imbalance_window != old_window:
                state.flow = TradeFlowImbalance(window_count=params.imbalance_window)

    @staticmethod
    def _check_binary(market: Market) -> None:
        inst = market.instrument
        if inst.kind is not InstrumentKind.BINARY:
            raise ValueError(
                f"adaptive_binary quotes binary contracts; {market.key} is {inst.kind.value}: "
                "give the instrument kind 'binary' or use another strategy"
            )
        if round(1 / inst.tick_size) < 3:
            raise ValueError(
                f"{market.key}: tick_size {inst.tick_size} leaves no room for a bid below an "
                "ask inside (0, 1); it must be at most 1/3"
            )

    def _prior(self, market: Market) -> float:
        priors = self.p.priors
        return priors.get(market.key, priors.get(market.symbol, self.p.prior))

    def _state(self, market: Market) -> _MarketState:
        state = self._states.get(market.key)
        if state is None:
            self._check_binary(market)
            prior = self._prior(market)
            book_mid = market.book.mid()
            state = _MarketState(
                mid=book_mid if book_mid is not None else prior,
                prior=prior,
                flow=TradeFlowImbalance(window_count=self.p.imbalance_window),
                last_ns=self.ctx.now_ns(),
            )
            self._states[market.key] = state
        return state

    def _revert(self, state: _MarketState, now_ns: int) -> None:
        dt = (now_ns - state.last_ns) / 1e9
        if dt > 0 and self.p.reversion > 0:
            state.mid = state.prior + (state.mid - state.prior) * math.exp(-self.p.reversion * dt)
        state.last_ns = max(state.last_ns, now_ns)

    def learned_mid(self, market: Market) -> float:
        return self._state(market).mid

    def imbalance(self, market: Market) -> float:
        return self._state(market).flow.value

    # -- handlers -----------------------------------------------------------------------
    def pair(self, market: Market) -> tuple[Market, Market] | None:
        """The two tokens of ``market``'s event as (primary, complement) when this
        strategy quotes both, else None. The primary's prices are the pair's."""
        other = market.instrument.complement
        twin = self.ctx.markets.get(market_key(market.venue, other)) if other else None
        if twin is None:
            return None
        return (market, twin) if market.symbol < twin.symbol else (twin, market)

    def on_trade(
        self, market: Market, price_ticks: int, qty_lots: int, aggressor: Side, **kwargs: Any
    ) -> None:
        pair = self.pair(market)
        if pair is not None and market is pair[1]:
            # A trade of the complement at p is a trade of the primary at 1 - p.
            top = round(1 / market.instrument.tick_size)
            market, price_ticks, aggressor = pair[0], top - price_ticks, aggressor.opposite
        state = self._state(market)
        now = self.ctx.now_ns()
        self._revert(state, now)
        inst = market.instrument
        price = inst.ticks_to_float(price_ticks)
        state.mid += self.p.learning_rate * (price - state.mid)
        state.flow.update(now, inst.lots_to_float(qty_lots), aggressor)

    def on_book(self, market: Market, **kwargs: Any) -> Quotes | None:
        pair = self.pair(market)
        if pair is None:
            return self._quotes(market, market.position_lots)
        primary, twin = pair
        net = primary.position_lots - twin.position_lots
        wanted = self._quotes(primary, net)
        top = round(1 / primary.instrument.tick_size)
        mine: list[Quote] = []
        theirs: list[Quote] = []
        for quote in wanted:
            # The side that grows the primary's exposure sells the complement we hold,
            # else buys the primary; the other side sells the primary we hold, else buys
            # the complement. Never two tokens on one side: the pair cannot cross itself.
            buys_exposure = quote.side is Side.BUY
            held = twin.position_lots if buys_exposure else primary.position_lots
            token = twin if buys_exposure else primary
            lots = primary.instrument.floor_to_step(min(quote.qty_lots, held))
            if held > 0 and lots > 0:
                price = top - quote.price_ticks if token is twin else quote.price_ticks
                placed = Quote(Side.SELL, price, lots, quote.level, quote.post_only)
            elif buys_exposure:
                token, placed = primary, quote
            else:
                token = twin
                placed = Quote(
                    Side.BUY, top - quote.price_ticks, quote.qty_lots, quote.level, quote.post_only
                )
            (mine if token is market else theirs).append(placed)
        self.ctx.set_quotes(twin if market is primary else primary, theirs)
        return mine

    def _quotes(self, market: Market, position_lots: int) -> list[Quote]:
        state = self._state(market)
        self._revert(state, self.ctx.now_ns())
        p = self.p
        inst = market.instrument
        tick = float(inst.tick_size)
        position = inst.lots_to_float(position_lots)  # base units, for the maths
        u = max(-1.0, min(1.0, position / p.inventory_limit))
        defensive = abs(u) >= p.recenter_threshold
        if defensive:
            # One-sided fills up to the limit say our learned mid was wrong: trust the
            # book again instead of averaging further into the position.
            anchor = market.book.microprice()
            if anchor is not None:
                state.mid = anchor
        state.mid = min(max(state.mid, tick), 1.0 - tick)

        spread = p.base_spread * (
            1.0 + p.imbalance_widening * abs(state.flow.value) + p.inventory_widening * abs(u)
        )
        spread = min(max(spread, p.min_spread), p.max_spread)
        centre = state.mid - p.inventory_skew * u
        bid_ticks, ask_ticks = binary_quote_ticks(
            centre - spread / 2,
            centre + spread / 2,
            tick,
            market.book.best_bid_ticks(),
            market.book.best_ask_ticks(),
            drop_first=Side.BUY if position > 0 else Side.SELL,
        )

        # The side that grows |position| shrinks as 1/(1 + |position|/order_size) and
        # never carries the position past the limit; the reducing side keeps full size.
        grow = p.order_size / (1.0 + abs(position) / p.order_size)
        room = max(0.0, p.inventory_limit - abs(position))
        grow = min(grow, room)
        bid_size = grow if position >= 0 else p.order_size
        ask_size = grow if position <= 0 else p.order_size
        if defensive:
            if position > 0:
                bid_size = 0.0
            elif position < 0:
                ask_size = 0.0

        quotes: list[Quote] = []
        if bid_ticks is not None and (lots := inst.round_qty(bid_size)) > 0:
            quotes.append(Quote(Side.BUY, bid_ticks, lots))
        if ask_ticks is not None and (lots := inst.round_qty(ask_size)) > 0:
            quotes.append(Quote(Side.SELL, ask_ticks, lots))
        return quotes


@quoteforge.hookimpl
def quoteforge_register_strategies(register: Any) -> None:
    register("adaptive_binary", AdaptiveBinary)
