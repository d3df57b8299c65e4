"""Avellaneda-Stoikov market making: inventory-skewed quotes around a reservation price,
with a finite-horizon form and the Guéant-Lehalle-Fernandez-Tapia infinite-horizon form."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

import quoteforge
from quoteforge.model import Fill, Quote, Side
from quoteforge.strategies.signals import FillIntensityEstimator, RealizedVolatility
from quoteforge.strategy import Market, Quotes, Strategy, StrategyContext, StrategyParams

__all__ = [
    "AvellanedaStoikov",
    "QuotePrices",
    "finite_horizon_quotes",
    "glft_coefficients",
    "infinite_horizon_quotes",
    "inventory_sizes",
    "optimal_spread",
    "reservation_price",
]


# ---------------------------------------------------------------------------------------
# Pricing (pure functions: no Market needed, usable from study scripts)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuotePrices:
    """Model prices before rounding to the tick grid (price units)."""

    reservation: float
    bid: float
    ask: float

    @property
    def spread(self) -> float:
        return self.ask - self.bid


def _check_model(gamma: float, sigma: float, k: float) -> None:
    if not gamma > 0:
        raise ValueError(f"gamma (risk aversion) must be > 0, got {gamma}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if not k > 0:
        raise ValueError(f"k (fill intensity decay) must be > 0, got {k}")


def reservation_price(mid: float, q: float, gamma: float, sigma: float, tau: float) -> float:
    """``r = s - q*gamma*sigma^2*tau``: the price at which holding ``q`` more or less is
    indifferent, ``tau`` seconds before the horizon."""
    return mid - q * gamma * sigma * sigma * tau


def optimal_spread(gamma: float, sigma: float, tau: float, k: float) -> float:
    """Total finite-horizon spread ``gamma*sigma^2*tau + (2/gamma)*ln(1 + gamma/k)``."""
    _check_model(gamma, sigma, k)
    return gamma * sigma * sigma * tau + (2.0 / gamma) * math.log1p(gamma / k)


def finite_horizon_quotes(
    mid: float,
    q: float,
    gamma: float,
    sigma: float,
    tau: float,
    k: float,
    symmetric: bool = False,
) -> QuotePrices:
    """Avellaneda-Stoikov (2008) quotes: the optimal spread centred on the reservation
    price, or on the mid when ``symmetric`` (same width, no inventory skew)."""
    if tau < 0:
        raise ValueError(f"tau (time to horizon) must be >= 0, got {tau}")
    half = optimal_spread(gamma, sigma, tau, k) / 2.0
    r = reservation_price(mid, q, gamma, sigma, tau)
    centre = mid if symmetric else r
    return QuotePrices(r, centre - half, centre + half)


def glft_coefficients(gamma: float, sigma: float, k: float, a: float) -> tuple[float, float]:
    """``(c1, c2)`` of the Guéant-Lehalle-Fernandez-Tapia (2013) asymptotic quotes:
    ``c1 = (1/gamma)*ln(1 + gamma/k)`` and
    ``c2 = sqrt(sigma^2*gamma/(2*k*A) * (1 + gamma/k)^(1 + k/gamma))``."""
    _check_model(gamma, sigma, k)
    if not a > 0:
        raise ValueError(f"A (fill intensity at the mid) must be > 0, got {a}")
    c1 = math.log1p(gamma / k) / gamma
    # (1+x)^(1+1/x) computed in log space: it stays near e, but the power overflows.
    growth = math.exp((1.0 + k / gamma) * math.log1p(gamma / k))
    c2 = math.sqrt(sigma * sigma * gamma / (2.0 * k * a) * growth)
    return c1, c2


def infinite_horizon_quotes(
    mid: float,
    q: float,
    gamma: float,
    sigma: float,
    k: float,
    a: float,
    symmetric: bool = False,
) -> QuotePrices:
    """Stationary quotes of Guéant, Lehalle and Fernandez-Tapia (2013), the limit of the
    Avellaneda-Stoikov problem far from the horizon:
    bid depth ``c1 + (2q+1)/2*c2`` and ask depth ``c1 - (2q-1)/2*c2``, so the total
    spread is ``2*c1 + c2`` and the quotes are centred on ``r = s - q*c2``."""
    c1, c2 = glft_coefficients(gamma, sigma, k, a)
    r = mid - q * c2
    half = c1 + c2 / 2.0
    centre = mid if symmetric else r
    return QuotePrices(r, centre - half, centre + half)


def inventory_sizes(order_size: float, q: float, eta: float) -> tuple[float, float]:
    """``(bid size, ask size)``: the side that would grow the inventory shrinks as
    ``order_size*exp(-eta*|q|)``; the side that reduces it keeps ``order_size``."""
    if q > 0:
        return order_size * math.exp(-eta * q), order_size
    if q < 0:
        return order_size, order_size * math.exp(eta * q)
    return order_size, order_size


# ---------------------------------------------------------------------------------------
# Strategy
# ---------------------------------------------------------------------------------------


class AvellanedaStoikovParams(StrategyParams):
    """Parameters of ``avellaneda_stoikov`` (units: price units, seconds, base units)."""

    order_size: float = Field(
        gt=0, le=1e9, description="Quote size in base units at zero inventory."
    )
    gamma: float = Field(
        0.1, gt=0, description="Risk aversion: larger skews and widens more per unit held."
    )
    horizon: Literal["finite", "infinite"] = Field(
        "finite",
        description="finite: Avellaneda-Stoikov with tau = time left in the session; "
        "infinite: Guéant-Lehalle-Fernandez-Tapia stationary quotes.",
    )
    horizon_s: float = Field(
        3600.0,
        gt=0,
        le=315_360_000,
        description="Session length T in seconds (finite horizon); the session restarts "
        "every horizon_s seconds from the run start.",
    )
    variant: Literal["inventory", "symmetric"] = Field(
        "inventory",
        description="inventory: centre on the reservation price; symmetric: same total "
        "spread centred on the mid (no skew), for comparison.",
    )
    sigma: float | None = Field(
        None,
        gt=0,
        description="Volatility in price units per sqrt(second); None estimates it online "
        "from mid returns over vol_window_s.",
    )
    vol_window_s: float = Field(
        300.0,
        gt=0,
        le=315_360_000,
        description="Window of the online volatility estimate, seconds.",
    )
    vol_min_samples: int = Field(
        20, ge=2, description="Mid returns needed before the online volatility is used."
    )
    k: float = Field(
        1.5,
        ge=1e-9,
        le=1e9,
        description="Fill intensity decay per price unit of depth (fixed, or the start "
        "value when estimate_intensity).",
    )
    a: float = Field(
        1.0,
        ge=1e-6,
        le=1e9,
        description="Fill intensity A at zero depth, fills per second (fixed, or the start "
        "value when estimate_intensity); used by the infinite horizon.",
    )
    estimate_intensity: bool = Field(
        True, description="Re-estimate A and k online from the depth of our own fills."
    )
    intensity_min_fills: int = Field(
        30, ge=2, description="Fills needed before the estimated A and k replace a and k."
    )
    intensity_half_life_s: float | None = Field(
        3600.0,
        gt=0,
        le=315_360_000,
        description="Half-life of fill observations; None keeps all of them.",
    )
    inventory_unit: Literal["order_size", "base"] = Field(
        "order_size",
        description="Unit of q in the formulas: multiples of order_size, or base units.",
    )
    size_decay: float = Field(
        0.5,
        ge=0,
        description="eta: the inventory-growing side is sized order_size*exp(-eta*abs(q)).",
    )
    max_inventory: float = Field(
        10.0,
        gt=0,
        le=1e9,
        description="abs(q) (in inventory_unit) at which the inventory-growing side is pulled.",
    )
    min_spread_ticks: int = Field(
        1, ge=1, description="Narrowest distance between our bid and ask, in ticks."
    )


@dataclass
class _MarketState:
    vol: RealizedVolatility
    intensity: FillIntensityEstimator
    last_ns: int | None = None
    quote_mid: float | None = None
    bid_depth: float | None = None
    ask_depth: float | None = None


class AvellanedaStoikov(Strategy):
    """Avellaneda-Stoikov market making with online volatility and fill intensity."""

    Params = AvellanedaStoikovParams
    interface_version = 2

    def __init__(self, ctx: StrategyContext, params: BaseModel) -> None:
        if not isinstance(params, AvellanedaStoikovParams):
            raise TypeError(
                f"avellaneda_stoikov needs AvellanedaStoikov.Params, got {type(params).__name__}"
            )
        super().__init__(ctx, params)
        self.p: AvellanedaStoikovParams = params
        self._states: dict[str, _MarketState] = {}
        self._start_ns: int | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def on_start(self, **kwargs: Any) -> None:
        self._start_ns = self.ctx.now_ns()

    def on_params(self, params: BaseModel, **kwargs: Any) -> None:
        assert isinstance(params, AvellanedaStoikovParams)
        old = self.p
        super().on_params(params)
        self.p = params
        if (old.vol_window_s, old.vol_min_samples, old.intensity_half_life_s) != (
            params.vol_window_s,
            params.vol_min_samples,
            params.intensity_half_life_s,
        ):
            self._states.clear()  # estimator windows changed: start them afresh

    def _state(self, market: Market) -> _MarketState:
        state = self._states.get(market.key)
        if state is None:
            p = self.p
            state = _MarketState(
                vol=RealizedVolatility(p.vol_window_s, "abs", p.vol_min_samples),
                intensity=FillIntensityEstimator(
                    float(market.instrument.tick_size),
                    p.intensity_half_life_s,
                    p.intensity_min_fills,
                ),
            )
            self._states[market.key] = state
        return state

    # -- model inputs -------------------------------------------------------------------
    def inventory(self, market: Market) -> float:
        """q in the unit the formulas use (``inventory_unit``)."""
        position = market.instrument.lots_to_float(market.position_lots)
        if self.p.inventory_unit == "order_size":
            return position / self.p.order_size
        return position

    def sigma(self, market: Market) -> float | None:
        if self.p.sigma is not None:
            return self.p.sigma
        return self._state(market).vol.sigma()

    def intensity(self, market: Market) -> tuple[float, float]:
        """``(A, k)`` in use: the online estimate once there are enough fills."""
        if self.p.estimate_intensity:
            fit = self._state(market).intensity.estimate()
            if fit is not None:
                return fit
        return self.p.a, self.p.k

    def time_left(self) -> float:
        """tau: seconds left in the current session (finite horizon)."""
        now = self.ctx.now_ns()
        if self._start_ns is None:
            self._start_ns = now
        elapsed = (now - self._start_ns) / 1e9
        return self.p.horizon_s - math.fmod(elapsed, self.p.horizon_s)

    def model_prices(self, market: Market, mid: float) -> QuotePrices | None:
        sigma = self.sigma(market)
        if sigma is None:
            return None
        a, k = self.intensity(market)
        q = self.inventory(market)
        symmetric = self.p.variant == "symmetric"
        if self.p.horizon == "finite":
            return finite_horizon_quotes(
                mid, q, self.p.gamma, sigma, self.time_left(), k, symmetric
            )
        return infinite_horizon_quotes(mid, q, self.p.gamma, sigma, k, a, symmetric)

    # -- handlers -----------------------------------------------------------------------
    def on_book(self, market: Market, **kwargs: Any) -> Quotes | None:
        book = market.book
        mid = book.mid()
        if mid is None:
            return []
        state = self._state(market)
        now = self.ctx.now_ns()
        state.vol.update(now, mid)
        if state.last_ns is not None and now > state.last_ns:
            seconds = (now - state.last_ns) / 1e9
            for depth in (state.bid_depth, state.ask_depth):
                if depth is not None:
                    state.intensity.observe_exposure(depth, seconds, now)
        state.last_ns = now

        prices = self.model_prices(market, mid)
        if prices is None:
            state.bid_depth = state.ask_depth = None
            return []
        quotes = self._to_quotes(market, prices)
        state.quote_mid = mid
        tick = float(market.instrument.tick_size)
        state.bid_depth = state.ask_depth = None
        for quote in quotes:
            depth = abs(quote.price_ticks * tick - mid)
            if quote.side is Side.BUY:
                state.bid_depth = depth
            else:
                state.ask_depth = depth
        return quotes

    def _to_quotes(self, market: Market, prices: QuotePrices) -> list[Quote]:
        inst = market.instrument
        q = self.inventory(market)
        bid_size, ask_size = inventory_sizes(self.p.order_size, q, self.p.size_decay)
        bid_ticks = inst.round_price(prices.bid, Side.BUY) if prices.bid > 0 else None
        ask_ticks = inst.round_price(prices.ask, Side.SELL)
        if bid_ticks is not None and ask_ticks - bid_ticks < self.p.min_spread_ticks:
            # Widen around the model centre, giving the extra tick to the ask side.
            centre = (bid_ticks + ask_ticks) // 2
            bid_ticks = centre - self.p.min_spread_ticks // 2
            ask_ticks = bid_ticks + self.p.min_spread_ticks
        # Post-only quotes must stay passive: never at or through the other side's touch.
        best_bid, best_ask = market.book.best_bid_ticks(), market.book.best_ask_ticks()
        if bid_ticks is not None and best_ask is not None:
            bid_ticks = min(bid_ticks, best_ask - 1)
        if best_bid is not None:
            ask_ticks = max(ask_ticks, best_bid + 1)
        quotes: list[Quote] = []
        if bid_ticks is not None and bid_ticks >= inst.min_price_ticks and q < self.p.max_inventory:
            lots = inst.round_qty(bid_size)
            if lots > 0:
                quotes.append(Quote(Side.BUY, bid_ticks, lots))
        top = inst.max_price_ticks
        if (top is None or ask_ticks <= top) and q > -self.p.max_inventory:
            lots = inst.round_qty(ask_size)
            if lots > 0:
                quotes.append(Quote(Side.SELL, ask_ticks, lots))
        return quotes

    def on_fill(self, market: Market, fill: Fill, **kwargs: Any) -> None:
        state = self._state(market)
        if state.quote_mid is None:
            return
        price = fill.price_ticks * float(market.instrument.tick_size)
        # Our clock, not the venue's fill time, so fills and exposure share one timeline.
        state.intensity.observe_fill(abs(price - state.quote_mid), self.ctx.now_ns())


@quoteforge.hookimpl
def quoteforge_register_strategies(register: Any) -> None:
    register("avellaneda_stoikov", AvellanedaStoikov)
