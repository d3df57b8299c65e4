"""Volatility guard: a per-market denylist driven by rolling realised volatility, usable
as a component, as a wrapper around any strategy, and as a risk check."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import quoteforge
from quoteforge.model import Fill, OrderUpdate, Quote, Side
from quoteforge.risk import RiskCheck, RiskView
from quoteforge.strategies.signals import RealizedVolatility
from quoteforge.strategy import Market, Quotes, Strategy, StrategyContext, StrategyParams

if TYPE_CHECKING:
    from quoteforge.registry import PluginRegistry

__all__ = [
    "DENYLIST_TOPIC",
    "GuardSettings",
    "VolatilityGuard",
    "VolatilityGuardCheck",
    "VolatilityGuardCheckParams",
    "VolatilityGuarded",
    "VolatilityGuardedParams",
]

DENYLIST_TOPIC = "state/denylist"


class GuardSettings(BaseModel):
    """Volatility thresholds shared by the wrapper strategy and the risk check."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    threshold: float = Field(
        gt=0,
        description="Realised volatility of log mid returns over window_s (0.01 = 1 %) at "
        "or above which a market is denylisted.",
    )
    release_threshold: float | None = Field(
        None,
        gt=0,
        description="Volatility below which a denylisted market is released; default "
        "0.8 * threshold (the gap is the hysteresis).",
    )
    window_s: float = Field(
        300.0, gt=0, le=315_360_000, description="Rolling volatility window, seconds."
    )
    min_samples: int = Field(
        20, ge=2, description="Mid returns needed before a market can be denylisted."
    )

    @model_validator(mode="after")
    def _release_below_threshold(self) -> GuardSettings:
        if self.release_threshold is not None and self.release_threshold > self.threshold:
            raise ValueError(
                f"release_threshold ({self.release_threshold}) must be <= threshold "
                f"({self.threshold}) or a market would be released while still too volatile"
            )
        return self


@dataclass
class _Tracked:
    vol: RealizedVolatility
    last_seen: tuple[int, float] | None = None


class VolatilityGuard:
    """Rolling realised volatility per market and the denylist of markets above the
    threshold, with hysteresis; every change of the denylist is published."""

    def __init__(
        self,
        threshold: float,
        release_threshold: float | None = None,
        window_s: float = 300.0,
        min_samples: int = 20,
        publish: Callable[[str, Any], None] | None = None,
    ) -> None:
        settings = GuardSettings(
            threshold=threshold,
            release_threshold=release_threshold,
            window_s=window_s,
            min_samples=min_samples,
        )
        self.threshold = settings.threshold
        self.release_threshold = (
            settings.release_threshold
            if settings.release_threshold is not None
            else 0.8 * settings.threshold
        )
        self.window_s = settings.window_s
        self.min_samples = settings.min_samples
        self.publish = publish
        self._tracked: dict[str, _Tracked] = {}
        self._denied: set[str] = set()

    @classmethod
    def from_settings(
        cls, settings: GuardSettings, publish: Callable[[str, Any], None] | None = None
    ) -> VolatilityGuard:
        return cls(
            settings.threshold,
            settings.release_threshold,
            settings.window_s,
            settings.min_samples,
            publish,
        )

    def reconfigure(self, settings: GuardSettings) -> None:
        """Apply new thresholds; a new window restarts the estimators but the denylist
        is kept, so a volatile market is not released just because its estimate reset."""
        self.threshold = settings.threshold
        self.release_threshold = (
            settings.release_threshold
            if settings.release_threshold is not None
            else 0.8 * settings.threshold
        )
        if (settings.window_s, settings.min_samples) != (self.window_s, self.min_samples):
            self.window_s = settings.window_s
            self.min_samples = settings.min_samples
            self._tracked.clear()

    def _track(self, key: str) -> _Tracked:
        tracked = self._tracked.get(key)
        if tracked is None:
            vol = RealizedVolatility(self.window_s, "log", self.min_samples)
            tracked = self._tracked[key] = _Tracked(vol)
        return tracked

    def update(self, key: str, ts_ns: int, mid: float) -> bool:
        """Add a mid of market ``key``; returns whether the market is denylisted."""
        tracked = self._track(key)
        tracked.vol.update(ts_ns, mid)
        tracked.last_seen = (ts_ns, mid)
        sigma = tracked.vol.window_sigma
        if sigma is not None:
            if key in self._denied:
                if sigma < self.release_threshold:
                    self._denied.discard(key)
                    self._announce(key, False, sigma, ts_ns)
            elif sigma >= self.threshold:
                self._denied.add(key)
                self._announce(key, True, sigma, ts_ns)
        return key in self._denied

    def update_from_book(self, market: Market, now_ns: int | None = None) -> bool:
        """Feed the book's current mid, skipped when neither time nor mid has moved
        since the last call, so calling this once per quote stays cheap."""
        book = market.book
        mid = book.mid()
        if mid is None or mid <= 0:
            return market.key in self._denied
        ts = book.ts_ns if now_ns is None else now_ns
        tracked = self._track(market.key)
        if tracked.last_seen == (ts, mid):
            return market.key in self._denied
        return self.update(market.key, ts, mid)

    def _announce(self, key: str, denied: bool, sigma: float, ts_ns: int) -> None:
        if self.publish is not None:
            self.publish(
                DENYLIST_TOPIC,
                {
                    "markets": sorted(self._denied),
                    "market": key,
                    "denied": denied,
                    "sigma": sigma,
                    "threshold": self.threshold if denied else self.release_threshold,
                    "ts_ns": ts_ns,
                },
            )

    def is_denied(self, key: str) -> bool:
        return key in self._denied

    @property
    def denylist(self) -> frozenset[str]:
        return frozenset(self._denied)

    def sigma(self, key: str) -> float | None:
        """Realised volatility of ``key`` over the window, or None while warming up."""
        tracked = self._tracked.get(key)
        return None if tracked is None else tracked.vol.window_sigma

    def guard_quotes(
        self, market: Market, quotes: list[Quote], unwind_spread_factor: float = 0.5
    ) -> list[Quote]:
        """``quotes`` unchanged on an allowed market. On a denylisted one: nothing when
        flat, else a single quote that unwinds the whole position on the reducing side,
        ``unwind_spread_factor`` times as far from the mid as the strategy's own quote on
        that side (at the touch when the strategy had none), never crossing the book."""
        if market.key not in self._denied:
            return quotes
        position = market.position_lots
        if position == 0:
            return []
        side = Side.SELL if position > 0 else Side.BUY
        sign = int(side)
        book = market.book
        mid = book.mid_ticks()
        own = [q.price_ticks for q in quotes if q.side is side]
        if mid is None:
            if not own:
                return []
            price = min(own) if side is Side.SELL else max(own)
        elif own:
            best = min(own) if side is Side.SELL else max(own)
            target = mid + unwind_spread_factor * (best - mid)
            price = math.ceil(target) if side is Side.SELL else math.floor(target)
        else:
            touch = book.best_ask_ticks() if side is Side.SELL else book.best_bid_ticks()
            if touch is None:
                return []
            price = touch
        # Stay passive: an ask above the best bid, a bid below the best ask.
        opposite = book.best_bid_ticks() if side is Side.SELL else book.best_ask_ticks()
        if opposite is not None:
            price = max(price, opposite + 1) if sign < 0 else min(price, opposite - 1)
        inst = market.instrument
        top = inst.max_price_ticks
        if price < inst.min_price_ticks or (top is not None and price > top):
            return []
        return [Quote(side, price, abs(position))]


# ---------------------------------------------------------------------------------------
# Strategy wrapper
# ---------------------------------------------------------------------------------------


class VolatilityGuardedParams(StrategyParams):
    """Parameters of the ``volatility_guard`` strategy wrapper."""

    strategy: str = Field(description="Registered strategy type to run under the guard.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Parameters of that strategy (its own schema)."
    )
    guard: GuardSettings = Field(description="Volatility thresholds and window.")
    unwind_spread_factor: float = Field(
        0.5,
        gt=0,
        le=1,
        description="On a denylisted market the unwinding quote sits this fraction of the "
        "wrapped strategy's distance from the mid.",
    )

    @model_validator(mode="after")
    def _not_itself(self) -> VolatilityGuardedParams:
        if self.strategy == "volatility_guard":
            raise ValueError("volatility_guard cannot wrap itself: name another strategy type")
        return self

    def wrapped_plugins(self) -> list[tuple[str, str, tuple[str, ...], dict[str, Any]]]:
        """The plugins this one builds from its own params, so the manifest checks their
        params before the run: (kind, type, key path of their params, params)."""
        return [("strategy", self.strategy, ("params",), self.params)]


class VolatilityGuarded(Strategy):
    """Runs another strategy and, on markets too volatile to add risk, quotes only to
    unwind the position; publishes the denylist on ``state/denylist``."""

    Params = VolatilityGuardedParams
    interface_version = 2

    def __init__(
        self,
        ctx: StrategyContext,
        params: BaseModel,
        *,
        inner: Strategy | None = None,
        registry: PluginRegistry | None = None,
    ) -> None:
        if not isinstance(params, VolatilityGuardedParams):
            raise TypeError(
                f"volatility_guard needs VolatilityGuarded.Params, got {type(params).__name__}"
            )
        super().__init__(ctx, params)
        self.p: VolatilityGuardedParams = params
        self._registry = registry
        self.inner = inner if inner is not None else self._build_inner(params)
        self.guard = VolatilityGuard.from_settings(params.guard, ctx.publish)

    def _inner_registration(self, name: str) -> Any:
        if self._registry is None:
            from quoteforge.registry import load_registry

            self._registry = load_registry()
        if name == "volatility_guard":
            raise ValueError("volatility_guard cannot wrap itself: name another strategy type")
        return self._registry.get("strategy", name)

    def _inner_params(self, params: VolatilityGuardedParams) -> BaseModel:
        reg = self._inner_registration(params.strategy)
        try:
            return reg.params.model_validate(params.params)
        except ValidationError as exc:
            raise ValueError(
                f"volatility_guard: params of wrapped strategy {params.strategy!r} are "
                f"invalid: {exc}"
            ) from None

    def _build_inner(self, params: VolatilityGuardedParams) -> Strategy:
        reg = self._inner_registration(params.strategy)
        inner: Strategy = reg.factory(self.ctx, self._inner_params(params))
        return inner

    # -- forwarding ---------------------------------------------------------------------
    def on_start(self, **kwargs: Any) -> None:
        self.inner.on_start(**kwargs)

    def on_book(self, market: Market, **kwargs: Any) -> Quotes | None:
        self.guard.update_from_book(market, self.ctx.now_ns())
        quotes = self.inner.on_book(market, **kwargs)
        if not self.guard.is_denied(market.key):
            return quotes
        return self.guard.guard_quotes(market, quotes or [], self.p.unwind_spread_factor)

    def on_trade(
        self, market: Market, price_ticks: int, qty_lots: int, aggressor: Side, **kwargs: Any
    ) -> None:
        self.inner.on_trade(market, price_ticks, qty_lots, aggressor, **kwargs)

    def on_fill(self, market: Market, fill: Fill, **kwargs: Any) -> None:
        self.inner.on_fill(market, fill, **kwargs)

    def on_order_update(self, market: Market, update: OrderUpdate, **kwargs: Any) -> None:
        self.inner.on_order_update(market, update, **kwargs)

    def on_params(self, params: BaseModel, **kwargs: Any) -> None:
        assert isinstance(params, VolatilityGuardedParams)
        if params.strategy != self.p.strategy:
            raise ValueError(
                f"volatility_guard cannot switch the wrapped strategy from {self.p.strategy!r} "
                f"to {params.strategy!r} during a run; restart with the new manifest"
            )
        inner_params = self._inner_params(params)
        if params.guard != self.p.guard:
            self.guard.reconfigure(params.guard)
        super().on_params(params)
        self.p = params
        self.inner.on_params(inner_params, **kwargs)

    def on_stop(self, **kwargs: Any) -> None:
        self.inner.on_stop(**kwargs)


# ---------------------------------------------------------------------------------------
# Risk check
# ---------------------------------------------------------------------------------------


class VolatilityGuardCheckParams(GuardSettings):
    """Parameters of the ``volatility_guard`` risk check (mids are read from the book,
    timed by the book's own timestamps)."""


class VolatilityGuardCheck(RiskCheck):
    """Refuses quotes that would add inventory on a market whose realised volatility is
    above the threshold; quotes that reduce the position still pass."""

    Params = VolatilityGuardCheckParams

    def __init__(self, name: str, params: BaseModel) -> None:
        if not isinstance(params, VolatilityGuardCheckParams):
            raise TypeError(
                f"volatility_guard check needs VolatilityGuardCheck.Params, "
                f"got {type(params).__name__}"
            )
        super().__init__(name, params)
        self.guard = VolatilityGuard.from_settings(params)

    def check(self, market: Market, quote: Quote, view: RiskView) -> str | None:
        if not self.guard.update_from_book(market):
            return None
        position = view.position_lots(market.key)
        sign = int(quote.side)
        # Lots this quote can trade before it starts adding inventory: all of it when it
        # reduces the position, none of it when it adds to it or the market is flat.
        reducible = abs(position) if position * sign < 0 else 0
        if quote.qty_lots <= reducible:
            return None
        sigma = self.guard.sigma(market.key)
        sigma_text = "n/a" if sigma is None else f"{sigma:.4g}"
        return (
            f"{market.key} is denylisted for volatility ({sigma_text} over "
            f"{self.guard.window_s:g}s, threshold {self.guard.threshold:g}): "
            f"{quote.side.name} {quote.qty_lots} lots would add inventory to a position of "
            f"{position:+d} lots; only quotes that reduce the position pass until volatility "
            f"falls below {self.guard.release_threshold:g}"
        )


@quoteforge.hookimpl
def quoteforge_register_strategies(register: Any) -> None:
    register("volatility_guard", VolatilityGuarded)


@quoteforge.hookimpl
def quoteforge_register_risk_checks(register: Any) -> None:
    register("volatility_guard", VolatilityGuardCheck)
