"""The strategy a learning environment trades through: ``gym_agent``.

It quotes one bid and one ask around the mid price. Where they go is its *plan*:
the distance of each side from the mid in basis points and the size of each side in
lots. ``quoteforge.gym.MarketMakingEnv`` sets a new plan at every step from the
agent's action; run on its own (``quoteforge run``), the strategy keeps the plan its
params give, a fixed spread, which is the baseline a learned policy has to beat.

Its quotes take the engine's one order path like any strategy's (kill/halt,
breakers, risk, execution policy, order manager): the plan only says what is wanted.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

import quoteforge
from quoteforge.registry import Register
from quoteforge.strategy import Market, Quotes, Speed, Strategy, StrategyContext, StrategyParams

__all__ = ["GymAgent", "GymAgentParams", "QuotePlan"]


class GymAgentParams(StrategyParams):
    order_size: float = Field(gt=0, le=1e9, description="Size of each quote, in base units.")
    inventory_limit: float = Field(
        gt=0,
        le=1e12,
        description="Largest position either way, in base units: at the limit the side "
        "that would grow it is not quoted. The environment's inventory feature is the "
        "position divided by this.",
    )
    half_spread_bps: float = Field(
        5.0,
        ge=0,
        le=100_000,
        description="Distance of each quote from the mid, in basis points, until the "
        "environment sets another (a plain run keeps it).",
    )
    skew_bps: float = Field(
        0.0,
        ge=-100_000,
        le=100_000,
        description="Shift of both quotes, in basis points: positive lowers them (leans "
        "to selling), until the environment sets another.",
    )
    min_half_spread_bps: float = Field(
        0.0, ge=0, le=100_000, description="The action's smallest half spread (action -1)."
    )
    max_half_spread_bps: float = Field(
        20.0, gt=0, le=100_000, description="The action's largest half spread (action +1)."
    )
    max_skew_bps: float = Field(
        10.0, ge=0, le=100_000, description="The action's largest skew either way (action ±1)."
    )

    @model_validator(mode="after")
    def _ranges(self) -> GymAgentParams:
        if self.min_half_spread_bps > self.max_half_spread_bps:
            raise ValueError(
                f"min_half_spread_bps ({self.min_half_spread_bps}) must not exceed "
                f"max_half_spread_bps ({self.max_half_spread_bps})"
            )
        if self.inventory_limit < self.order_size:
            raise ValueError(
                f"inventory_limit ({self.inventory_limit}) must be at least order_size "
                f"({self.order_size}), or no quote would ever be placed"
            )
        return self


class QuotePlan:
    """What the agent quotes: each side's distance from the mid (basis points; a bid
    ``bid_bps`` below, an ask ``ask_bps`` above, negative crosses the mid) and size
    (lots; 0 leaves that side out)."""

    __slots__ = ("ask_bps", "ask_lots", "bid_bps", "bid_lots")

    def __init__(self, bid_bps: float, ask_bps: float, bid_lots: int, ask_lots: int) -> None:
        self.bid_bps = float(bid_bps)
        self.ask_bps = float(ask_bps)
        self.bid_lots = int(bid_lots)
        self.ask_lots = int(ask_lots)

    def __repr__(self) -> str:
        return (
            f"QuotePlan(bid {self.bid_bps:g} bps x {self.bid_lots}, "
            f"ask {self.ask_bps:g} bps x {self.ask_lots})"
        )


class GymAgent(Strategy):
    """Quotes its current ``QuotePlan`` around the mid of its one market, passively:
    a bid never at or above the best ask, an ask never at or below the best bid, and
    never a side that would take the position past ``inventory_limit``."""

    Params = GymAgentParams
    speed = Speed(on_book="best_prices")  # quotes move with the mid only
    params: GymAgentParams

    def __init__(self, ctx: StrategyContext, params: GymAgentParams) -> None:
        super().__init__(ctx, params)
        if len(ctx.markets) != 1:
            raise ValueError(
                f"strategy {ctx.name!r} (gym_agent) trades exactly one market, got "
                f"{len(ctx.markets)}: give it one symbol"
            )
        #: The one market this agent quotes.
        self.market: Market = next(iter(ctx.markets.values()))
        #: Lots of one quote (``order_size``) and of the position limit.
        self.order_lots = self.market.lots(params.order_size)
        self.limit_lots = self.market.lots(params.inventory_limit)
        if self.order_lots <= 0:
            raise ValueError(
                f"strategy {ctx.name!r}: order_size {params.order_size} is below the "
                f"market's order step {self.market.instrument.qty_step}"
            )
        self.plan = self.spread_plan(params.half_spread_bps, params.skew_bps)

    def spread_plan(self, half_spread_bps: float, skew_bps: float) -> QuotePlan:
        """A plan quoting ``order_size`` on both sides, ``half_spread_bps`` from the mid,
        both shifted down by ``skew_bps``."""
        return QuotePlan(
            half_spread_bps + skew_bps,
            half_spread_bps - skew_bps,
            self.order_lots,
            self.order_lots,
        )

    def set_plan(self, plan: QuotePlan) -> None:
        """Quote ``plan`` from now on, starting at once (through the order gate)."""
        self.plan = plan
        quotes = self.wanted(self.market)
        if quotes is not None:
            self.ctx.set_quotes(self.market, quotes)

    def wanted(self, market: Market) -> Quotes | None:
        """The quotes the plan asks for on the current book; None without a two-sided
        book."""
        book = market.book
        bid_best, ask_best = book.best_bid_ticks(), book.best_ask_ticks()
        if bid_best is None or ask_best is None:
            return None
        mid = (bid_best + ask_best) / 2
        plan = self.plan
        position = market.position_lots
        # Passive: a bid below the best ask, an ask above the best bid, never crossed.
        bid_ticks = min(math.floor(mid * (1 - plan.bid_bps / 1e4)), ask_best - 1)
        ask_ticks = max(math.ceil(mid * (1 + plan.ask_bps / 1e4)), bid_best + 1)
        if ask_ticks <= bid_ticks:
            ask_ticks = bid_ticks + 1
        quotes: Quotes = []
        if plan.bid_lots > 0 and position < self.limit_lots:
            bid = market.bid(bid_ticks, min(plan.bid_lots, self.limit_lots - position))
            if bid is not None:
                quotes.append(bid)
        if plan.ask_lots > 0 and position > -self.limit_lots:
            ask = market.ask(ask_ticks, min(plan.ask_lots, self.limit_lots + position))
            if ask is not None:
                quotes.append(ask)
        return quotes

    def on_book(self, market: Market, **kwargs: Any) -> Quotes | None:
        return self.wanted(market)


@quoteforge.hookimpl
def quoteforge_register_strategies(register: Register) -> None:
    register("gym_agent", GymAgent)
