"""Offer taker: takes counterparty offers priced at least an adaptive edge better than a
fresh reference price, with per-ticker inventory limits and a volatility denylist."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field, model_validator

import quoteforge
from quoteforge.manifest import Duration
from quoteforge.model import Fill, Offer, OrderStatus, OrderUpdate, Side
from quoteforge.strategies.pricesource import (
    BookPriceSource,
    BookSourceParams,
    HttpPriceSource,
    PriceSourceParams,
    build_price_source,
)
from quoteforge.strategies.volatility_guard import GuardSettings, VolatilityGuard
from quoteforge.strategy import Market, Strategy, StrategyContext, StrategyParams

__all__ = ["OfferTaker", "OfferTakerParams", "TakerStats"]

_SELL = Side.SELL

# Venue reasons that mean another taker (or the clock) beat us to the offer.
_RACE_LOST = ("taken", "expired")


class OfferTakerParams(StrategyParams):
    """Parameters of ``offer_taker``."""

    edge: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="Starting edge: buy an offer priced <= ref*(1-edge), sell into a bid "
        "offer priced >= ref*(1+edge).",
    )
    min_edge: float = Field(0.003, gt=0, lt=1, description="Thinnest edge the adaptation may use.")
    max_edge: float = Field(0.03, gt=0, lt=1, description="Widest edge the adaptation may use.")
    target_win_rate: tuple[float, float] = Field(
        (0.4, 0.8),
        description="Band of the recent win rate: below it the edge thins (we lose races), "
        "above it the edge widens (we win easily).",
    )
    adapt_window: int = Field(
        50, ge=1, description="Race outcomes averaged (exponentially) by the win rate."
    )
    adapt_step: float = Field(
        0.05, gt=0, lt=1, description="Relative change of the edge per adaptation."
    )
    max_staleness: Duration = Field(
        Duration(2.0), gt=0, description="Never act on a reference price older than this."
    )
    order_size: float = Field(
        gt=0, le=1e9, description="Largest quantity taken from one offer, base units."
    )
    max_position: float | None = Field(
        None, gt=0, le=1e9, description="Inventory limit per ticker in base units (long or short)."
    )
    max_notional: float | None = Field(
        None,
        gt=0,
        le=1e9,
        description="Inventory limit per ticker in quote currency at the reference price.",
    )
    guard: GuardSettings | None = Field(
        None,
        description="Volatility guard on the reference prices: a denylisted ticker takes "
        "no new inventory and only unwinds.",
    )
    unwind_edge_factor: float = Field(
        0.25,
        ge=0,
        le=1,
        description="On a denylisted ticker, offers that reduce the position are taken at "
        "this fraction of the current edge.",
    )
    price_source: PriceSourceParams = Field(
        default_factory=BookSourceParams,
        description="Where reference prices come from: {type: book} or {type: http, url: ...}.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> OfferTakerParams:
        if not self.min_edge <= self.edge <= self.max_edge:
            raise ValueError(
                f"edge ({self.edge}) must lie in [min_edge, max_edge] = "
                f"[{self.min_edge}, {self.max_edge}]"
            )
        low, high = self.target_win_rate
        if not 0 <= low < high <= 1:
            raise ValueError(
                f"target_win_rate must be [low, high] with 0 <= low < high <= 1, got {low}, {high}"
            )
        if self.max_position is None and self.max_notional is None:
            raise ValueError("set max_position or max_notional: a taker needs an inventory limit")
        return self


class TakerStats:
    """Counters of what the taker decided, for reports and tests."""

    __slots__ = (
        "denied_skips",
        "edge_changes",
        "limit_skips",
        "lost",
        "no_price",
        "offers",
        "stale",
        "takes",
        "unwinds",
        "won",
    )

    def __init__(self) -> None:
        self.offers = 0
        self.no_price = 0
        self.stale = 0
        self.takes = 0
        self.unwinds = 0
        self.won = 0
        self.lost = 0
        self.limit_skips = 0
        self.denied_skips = 0
        self.edge_changes = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def _ticks_at_most(bound: float, tick: float) -> int:
    """The highest whole tick count ``t`` with ``t * tick <= bound`` in float arithmetic.

    ``t * tick`` never decreases as ``t`` grows, so ``ticks <= _ticks_at_most(b, tick)``
    answers exactly what the float test ``ticks * tick <= b`` answers."""
    t = math.floor(bound / tick)
    if -_EXACT < t < _EXACT:
        # The quotient is within a tick or two of the answer.
        while (t + 1) * tick <= bound:
            t += 1
        while t * tick > bound:
            t -= 1
        return t
    return _last(lambda n: n * tick <= bound, t)


def _ticks_at_least(bound: float, tick: float) -> int:
    """The lowest whole tick count ``t`` with ``t * tick >= bound`` in float arithmetic."""
    t = math.ceil(bound / tick)
    if -_EXACT < t < _EXACT:
        while (t - 1) * tick >= bound:
            t -= 1
        while t * tick < bound:
            t += 1
        return t
    return _last(lambda n: n * tick < bound, t) + 1


# Beyond 2**52 ticks neighbouring counts can give the same float product: search instead.
_EXACT = 2**52


def _last(holds: Callable[[int], bool], guess: int) -> int:
    """The last integer for which the monotone (true, then false) ``holds`` is true."""
    step = 1
    if holds(guess):
        low = guess
        while holds(low + step):
            low += step
            step *= 2
        high = low + step
    else:
        high = guess
        while not holds(high - step):
            high -= step
            step *= 2
        low = high - step
    while high - low > 1:
        middle = (low + high) // 2
        if holds(middle):
            low = middle
        else:
            high = middle
    return low


# Never returned by a price reader: a ticker holding it has no derived thresholds.
_UNSET: tuple[float, int] = (math.nan, -1)


class _Ticker:
    """Per-ticker state. The reference price last used (``ref``, the reader's tuple)
    comes with what it implies: the worst offer prices still taken, as whole ticks
    (``buy_max`` for a sell offer, ``sell_min`` for a buy offer), and when it turns
    stale. They are worked out again when the reader returns another tuple or when the
    edge or the parameters change (``ref = _UNSET``)."""

    __slots__ = (
        "buy_max",
        "denied",
        "guard_ts",
        "limit",
        "lot",
        "order_lots",
        "pending_buy",
        "pending_sell",
        "price",
        "read",
        "ref",
        "sell_min",
        "stale_at",
        "step",
        "tick",
    )

    def __init__(
        self, tick: float, lot: float, step: int, read: Callable[[], tuple[float, int] | None]
    ) -> None:
        self.tick = tick
        self.denied = False
        self.lot = lot
        # Lots in one order step: offers come at the venue's precision, takes go in steps.
        self.step = step
        self.pending_buy = 0
        self.pending_sell = 0
        self.guard_ts = -1
        self.read = read
        self.ref = _UNSET
        self.price = 0.0
        self.stale_at = 0
        self.buy_max = 0
        self.sell_min = 0
        # Inventory limit at ``price`` and largest take, in lots; -1: work them out.
        self.limit = -1
        self.order_lots = 0


class _Take:
    __slots__ = ("filled", "lots", "side", "ticker")

    def __init__(self, ticker: _Ticker, side: Side, lots: int) -> None:
        self.ticker = ticker
        self.side = side
        self.lots = lots
        self.filled = False


class OfferTaker(Strategy):
    """Takes mispriced offers against a fresh reference price; O(1) work per offer.

    Most offers are refused, so the refusal is the fast path: per ticker, a new reference
    price (or a new edge) is turned once into the worst offer prices still worth taking,
    in whole ticks; an offer then costs a price-source read, a staleness check and one
    integer compare. Everything that depends on the position runs only for the offers
    that pass.
    """

    Params = OfferTakerParams
    interface_version = 2

    def __init__(self, ctx: StrategyContext, params: BaseModel) -> None:
        if not isinstance(params, OfferTakerParams):
            raise TypeError(f"offer_taker needs OfferTaker.Params, got {type(params).__name__}")
        super().__init__(ctx, params)
        self._tickers: dict[str, _Ticker] = {}
        self._p = params
        self._edge = params.edge
        self._configure(params)
        self.stats = TakerStats()
        self.win_rate = 0.5 * sum(params.target_win_rate)
        self._outcomes_since_adapt = 0
        self._pending: dict[str, _Take] = {}
        self.source: BookPriceSource | HttpPriceSource = build_price_source(
            params.price_source, ctx.markets, ctx.now_ns
        )
        self.guard = (
            VolatilityGuard.from_settings(params.guard, ctx.publish)
            if params.guard is not None
            else None
        )
        # Bound once: the decision path runs hundreds of thousands of times a second.
        self._now = ctx.now_ns

    def _configure(self, p: OfferTakerParams) -> None:
        self._stale_ns = int(float(p.max_staleness) * 1e9)
        self._stale_from: int | None = None  # the price time _stale_at was worked out for
        self._stale_at = 0
        self._alpha = 2.0 / (p.adapt_window + 1.0)
        self._adapt_every = max(1, p.adapt_window // 5)
        self._reprice_all()

    def _reprice_all(self) -> None:
        """Forget every ticker's derived thresholds: the next offer works them out again
        from the then current reference price, edge and parameters."""
        for state in self._tickers.values():
            state.ref = _UNSET

    @property
    def p(self) -> OfferTakerParams:
        """The parameters in force."""
        return self._p

    @p.setter
    def p(self, params: OfferTakerParams) -> None:
        self._p = params
        self._configure(params)

    @property
    def edge(self) -> float:
        """The current (adapted) edge."""
        return self._edge

    @edge.setter
    def edge(self, edge: float) -> None:
        if edge != self._edge:
            self._edge = edge
            self._reprice_all()

    # -- lifecycle -------------------------------------------------------------------------
    def on_start(self, **kwargs: Any) -> None:
        self.source.start()

    def on_stop(self, **kwargs: Any) -> None:
        self.source.stop()

    def on_params(self, params: BaseModel, **kwargs: Any) -> None:
        assert isinstance(params, OfferTakerParams)
        if params.price_source != self.p.price_source:
            raise ValueError(
                "offer_taker cannot switch its price_source during a run; restart with the "
                "new manifest"
            )
        old = self.p
        super().on_params(params)
        self.p = params
        if (old.edge, old.min_edge, old.max_edge) != (
            params.edge,
            params.min_edge,
            params.max_edge,
        ):
            self.edge = params.edge
        if params.guard != old.guard:
            for state in self._tickers.values():
                state.guard_ts = -1  # re-evaluate every ticker under the new guard
            if params.guard is None:
                self.guard = None
            elif self.guard is None:
                self.guard = VolatilityGuard.from_settings(params.guard, self.ctx.publish)
            else:
                self.guard.reconfigure(params.guard)

    # -- the decision ----------------------------------------------------------------------
    def on_offer(self, market: Market, offer: Offer, **kwargs: Any) -> None:
        stats = self.stats
        stats.offers += 1
        state = self._tickers.get(offer.symbol)
        if state is None:
            state = self._new_ticker(market, offer.symbol)
        # Notes the offer (an http source refreshes busy tickers first) and reads.
        ref = state.read()
        if ref is not state.ref:
            if not self._reprice(market, state, ref):
                return  # no price, or a stale one
        elif self._now() > state.stale_at:
            stats.stale += 1
            return
        # A SELL offer is one we can buy from; a BUY offer is a bid we can sell into.
        if offer.side is _SELL:
            if offer.price_ticks > state.buy_max:
                if state.denied:
                    stats.denied_skips += 1
                return
            self._consider(market, offer, state, True)
        else:
            if offer.price_ticks < state.sell_min:
                if state.denied:
                    stats.denied_skips += 1
                return
            self._consider(market, offer, state, False)

    def _new_ticker(self, market: Market, ticker: str) -> _Ticker:
        inst = market.instrument
        state = self._tickers[ticker] = _Ticker(
            float(inst.tick_size), float(inst.lot_size), inst.step_lots, self.source.reader(ticker)
        )
        return state

    def _reprice(self, market: Market, state: _Ticker, ref: tuple[float, int] | None) -> bool:
        """A reference price the ticker's thresholds were not worked out for: check it
        is there and fresh, let the guard see it (once per price time), and derive the
        thresholds. False when there is no usable price."""
        if ref is None:
            self.stats.no_price += 1
            return False
        price, ts = ref
        if self._now() - ts > self._stale_ns:
            self.stats.stale += 1
            return False
        # The guard only learns from a new reference price, once per price.
        if ts != state.guard_ts:
            state.guard_ts = ts
            guard = self.guard
            state.denied = guard is not None and guard.update(market.key, ts, price)
        # On a denylisted ticker only offers that shrink the position are taken, at a
        # narrower edge, to get out.
        edge = self._edge * self._p.unwind_edge_factor if state.denied else self._edge
        tick = state.tick
        # Taken: a sell offer at ticks * tick <= price * (1 - edge), a buy offer (a bid)
        # at ticks * tick >= price * (1 + edge); the same float expressions as ever, so
        # the integer thresholds decide exactly as the float compare would.
        state.buy_max = _ticks_at_most(price * (1.0 - edge), tick)
        state.sell_min = _ticks_at_least(price * (1.0 + edge), tick)
        state.price = price
        if ts != self._stale_from:
            # Tickers priced at the same time share one stale_at object (fewer cold
            # reads across thousands of tickers).
            self._stale_from = ts
            self._stale_at = ts + self._stale_ns
        state.stale_at = self._stale_at
        state.limit = -1
        state.ref = ref
        return True

    def _consider(self, market: Market, offer: Offer, state: _Ticker, buying: bool) -> None:
        """An offer past the edge: size it within the inventory room and take it."""
        stats = self.stats
        limit = state.limit
        if limit < 0:
            limit = state.limit = self._limit_lots(state, state.price)
            order_lots = int(self._p.order_size / state.lot + 1e-9)
            state.order_lots = order_lots - order_lots % state.step
        position = market.position_lots
        if state.denied:
            room = -position - state.pending_buy if buying else position - state.pending_sell
            if room <= 0:
                stats.denied_skips += 1
                return
        else:
            if buying:
                room = limit - position - state.pending_buy
            else:
                room = limit + position - state.pending_sell
            if room <= 0:
                stats.limit_skips += 1
                return
        lots = offer.qty_lots
        if room < lots:
            lots = room
        if state.order_lots < lots:
            lots = state.order_lots
        step = state.step
        if step != 1:
            lots -= lots % step  # an offer or the room may be finer than the order step
        if lots <= 0:
            stats.limit_skips += 1
            return
        side = Side.BUY if buying else Side.SELL
        order = self.ctx.take(market, side, offer.price_ticks, lots, offer.offer_id)
        if order is None:
            return  # refused by risk
        stats.takes += 1
        if state.denied:
            stats.unwinds += 1
        if buying:
            state.pending_buy += lots
        else:
            state.pending_sell += lots
        self._pending[order.client_id] = _Take(state, side, lots)

    def _limit_lots(self, state: _Ticker, price: float) -> int:
        p = self._p
        limit = math.inf
        if p.max_position is not None:
            limit = p.max_position
        if p.max_notional is not None:
            limit = min(limit, p.max_notional / price)
        return int(limit / state.lot + 1e-9)

    # -- outcomes --------------------------------------------------------------------------
    # A take is won when any of it fills (a fill may complete the order before its final
    # report arrives) and lost when it ends unfilled because the offer was gone.
    def on_fill(self, market: Market, fill: Fill, **kwargs: Any) -> None:
        entry = self._pending.get(fill.client_id)
        if entry is None:
            return
        self._release(entry, min(fill.qty_lots, entry.lots))
        if not entry.filled:
            entry.filled = True
            self._outcome(True)
        if entry.lots <= 0:
            del self._pending[fill.client_id]

    def on_order_update(self, market: Market, update: OrderUpdate, **kwargs: Any) -> None:
        if not update.status.is_terminal:
            return
        entry = self._pending.pop(update.client_id, None)
        if entry is None:
            return
        self._release(entry, entry.lots)
        if entry.filled:
            return
        if update.status is OrderStatus.FILLED or (update.filled_lots or 0) > 0:
            # The report outran its fill: the fill will not count twice (entry is gone).
            self._outcome(True)
        else:
            reason = update.reason
            if _RACE_LOST[0] in reason or _RACE_LOST[1] in reason:
                self._outcome(False)

    @staticmethod
    def _release(entry: _Take, lots: int) -> None:
        entry.lots -= lots
        if entry.side is Side.BUY:
            entry.ticker.pending_buy -= lots
        else:
            entry.ticker.pending_sell -= lots

    def _outcome(self, won: bool) -> None:
        stats = self.stats
        if won:
            stats.won += 1
        else:
            stats.lost += 1
        self.win_rate += self._alpha * ((1.0 if won else 0.0) - self.win_rate)
        self._outcomes_since_adapt += 1
        if self._outcomes_since_adapt < self._adapt_every:
            return
        self._outcomes_since_adapt = 0
        p = self._p
        low, high = p.target_win_rate
        edge = self._edge
        if self.win_rate < low:
            # Losing races: the offers we want are the ones everybody wants; go thinner.
            edge = max(p.min_edge, edge * (1.0 - p.adapt_step))
        elif self.win_rate > high:
            edge = min(p.max_edge, edge * (1.0 + p.adapt_step))
        if edge != self._edge:
            self.edge = edge
            self.stats.edge_changes += 1


@quoteforge.hookimpl
def quoteforge_register_strategies(register: Any) -> None:
    register("offer_taker", OfferTaker)
