"""volatility_guard: denylist with hysteresis, unwinding wrapper and risk check."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypedDict

import pytest
from pydantic import ValidationError

import quoteforge.strategies.avellaneda_stoikov as as_module
import quoteforge.strategies.volatility_guard as vg_module
from quoteforge.model import Quote, Side
from quoteforge.registry import PluginError, PluginRegistry
from quoteforge.risk import RiskChain, RiskRefusal, RiskView
from quoteforge.strategies.avellaneda_stoikov import AvellanedaStoikov
from quoteforge.strategies.volatility_guard import (
    DENYLIST_TOPIC,
    VolatilityGuard,
    VolatilityGuardCheck,
    VolatilityGuarded,
)

if TYPE_CHECKING:
    from conftest import Desk

    from quoteforge.strategy import Market

NS = 1_000_000_000


class GuardSettingsDict(TypedDict):
    """The guard's settings as keyword arguments (``VolatilityGuard(**GUARD)``)."""

    threshold: float
    release_threshold: float
    window_s: float
    min_samples: int


GUARD: GuardSettingsDict = {
    "threshold": 0.05,
    "release_threshold": 0.02,
    "window_s": 60.0,
    "min_samples": 5,
}
AS_PARAMS: dict[str, Any] = {
    "order_size": 1.0,
    "gamma": 0.1,
    "sigma": 0.5,
    "k": 1.5,
    "horizon": "infinite",
    "estimate_intensity": False,
}


def _swing(desk: Desk, market: Market, low: int, high: int, seconds: int, after: Any) -> None:
    """Move the mid between ``low`` and ``high`` ticks once a second; call ``after``."""
    for i in range(seconds):
        desk.advance(1)
        mid = high if i % 2 else low
        desk.book(market, [(mid - 100, 5000)], [(mid + 100, 5000)])
        after()


def test_guard_denylists_above_threshold_with_hysteresis() -> None:
    published: list[tuple[str, Any]] = []
    guard = VolatilityGuard(**GUARD, publish=lambda t, p: published.append((t, p)))
    t = 0

    def feed(low: float, high: float, seconds: int) -> None:
        nonlocal t
        for i in range(seconds):
            t += NS
            guard.update("sim:X", t, high if i % 2 else low)

    feed(100.0, 100.01, 30)
    assert not guard.is_denied("sim:X")
    feed(100.0, 102.0, 10)  # ~2 % moves every second
    assert guard.is_denied("sim:X")
    assert published[-1][0] == DENYLIST_TOPIC
    assert published[-1][1]["markets"] == ["sim:X"]
    assert published[-1][1]["denied"] is True
    # 0.5 % moves: about 3.9 % over 60 s, between release (2 %) and threshold (5 %)
    feed(100.0, 100.5, 120)
    sigma = guard.sigma("sim:X")
    assert sigma is not None
    assert 0.02 < sigma < 0.05
    assert guard.is_denied("sim:X")  # hysteresis keeps it denied
    fresh = VolatilityGuard(**GUARD)
    for i in range(120):
        fresh.update("sim:Y", (i + 1) * NS, 100.5 if i % 2 else 100.0)
    assert not fresh.is_denied("sim:Y")  # the same volatility does not denylist
    feed(100.0, 100.01, 120)
    assert not guard.is_denied("sim:X")
    released = published[-1][1]
    assert released["markets"] == []
    assert released["market"] == "sim:X"
    assert released["denied"] is False
    assert released["sigma"] < released["threshold"] == 0.02
    assert released["ts_ns"] <= t
    assert len(published) == 2


def test_guard_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="release_threshold"):
        VolatilityGuard(threshold=0.01, release_threshold=0.02)
    with pytest.raises(ValidationError, match="threshold"):
        VolatilityGuard(threshold=0)


def _wrapped(desk: Desk, **params: Any) -> tuple[VolatilityGuarded, AvellanedaStoikov]:
    ctx = desk.ctx("guarded")
    inner = AvellanedaStoikov(ctx, AvellanedaStoikov.Params(**AS_PARAMS))
    settings = {"strategy": "avellaneda_stoikov", "params": AS_PARAMS, "guard": GUARD}
    settings.update(params)
    wrapper = VolatilityGuarded(ctx, VolatilityGuarded.Params(**settings), inner=inner)
    wrapper.on_start()
    return wrapper, inner


def _sides(quotes: list[Quote] | None) -> dict[Side, Quote]:
    assert quotes is not None
    return {q.side: q for q in quotes}


def test_wrapper_passes_quotes_through_on_calm_markets(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(9900, 5000)], [(10100, 5000)], 1000)
    wrapper, inner = _wrapped(desk)
    _swing(desk, market, 10000, 10001, 10, lambda: wrapper.on_book(market))
    assert wrapper.on_book(market) == inner.on_book(market)
    assert not wrapper.guard.is_denied(market.key)


def test_wrapper_unwinds_on_a_denylisted_market(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(9900, 5000)], [(10100, 5000)])
    wrapper, inner = _wrapped(desk, unwind_spread_factor=0.5)
    _swing(desk, market, 10000, 10200, 10, lambda: wrapper.on_book(market))
    assert wrapper.guard.is_denied(market.key)
    assert desk.published[-1][0] == "state/denylist"
    assert desk.published[-1][1]["markets"] == [market.key]

    assert wrapper.on_book(market) == []  # flat: nothing may add inventory

    desk.positions[market.key] = 3000  # long 3.0
    own_ask = _sides(inner.on_book(market))[Side.SELL].price_ticks
    mid = market.book.mid_ticks()
    assert mid is not None
    quotes = wrapper.on_book(market)
    assert quotes == [Quote(Side.SELL, math.ceil(mid + 0.5 * (own_ask - mid)), 3000)]
    assert quotes[0].price_ticks < own_ask  # narrower than the strategy's own spread

    desk.positions[market.key] = -2000
    own_bid = _sides(inner.on_book(market))[Side.BUY].price_ticks
    quotes = wrapper.on_book(market)
    assert quotes == [Quote(Side.BUY, math.floor(mid + 0.5 * (own_bid - mid)), 2000)]


def test_wrapper_builds_the_inner_strategy_from_the_registry(desk: Desk) -> None:
    desk.market(desk.instrument(), [(9900, 5000)], [(10100, 5000)])
    registry = PluginRegistry()
    for module in (as_module, vg_module):
        assert registry.register_module(module).loaded
    assert registry.get("strategy", "volatility_guard").factory is VolatilityGuarded
    assert registry.get("risk", "volatility_guard").factory is VolatilityGuardCheck
    params = VolatilityGuarded.Params(strategy="avellaneda_stoikov", params=AS_PARAMS, guard=GUARD)
    wrapper = VolatilityGuarded(desk.ctx(), params, registry=registry)
    assert isinstance(wrapper.inner, AvellanedaStoikov)

    bad = VolatilityGuarded.Params(
        strategy="avellaneda_stoikov", params={**AS_PARAMS, "gamma": -1}, guard=GUARD
    )
    with pytest.raises(ValueError, match="params of wrapped strategy 'avellaneda_stoikov'"):
        VolatilityGuarded(desk.ctx(), bad, registry=registry)
    unknown = VolatilityGuarded.Params(strategy="nope", guard=GUARD)
    with pytest.raises(PluginError, match="unknown strategy type 'nope'"):
        VolatilityGuarded(desk.ctx(), unknown, registry=registry)


def test_wrapper_forwards_new_params(desk: Desk) -> None:
    desk.market(desk.instrument(), [(9900, 5000)], [(10100, 5000)])
    registry = PluginRegistry()
    registry.register_module(as_module)
    params = VolatilityGuarded.Params(strategy="avellaneda_stoikov", params=AS_PARAMS, guard=GUARD)
    wrapper = VolatilityGuarded(desk.ctx(), params, registry=registry)
    wrapper.on_params(
        VolatilityGuarded.Params(
            strategy="avellaneda_stoikov",
            params={**AS_PARAMS, "gamma": 0.3},
            guard={**GUARD, "threshold": 0.1},
        )
    )
    assert isinstance(wrapper.inner, AvellanedaStoikov)
    assert wrapper.inner.p.gamma == 0.3
    assert wrapper.guard.threshold == 0.1


def _view(desk: Desk) -> RiskView:
    return RiskView(
        position_lots=lambda key: desk.positions[key],
        open_lots=lambda key, side: 0,
        open_order_count=lambda key: 0,
    )


def test_risk_check_refuses_inventory_increasing_quotes_when_denylisted(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(9900, 5000)], [(10100, 5000)], 3000)
    check = VolatilityGuardCheck("volatility_guard", VolatilityGuardCheck.Params(**GUARD))
    view = _view(desk)
    buy = Quote(Side.BUY, 9990, 1000)

    _swing(desk, market, 10000, 10001, 10, lambda: check.check(market, buy, view))
    assert check.check(market, buy, view) is None  # calm: anything passes

    _swing(desk, market, 10000, 10200, 10, lambda: check.check(market, buy, view))
    reason = check.check(market, buy, view)
    assert reason is not None
    assert "sim:BTCUSDT is denylisted for volatility" in reason
    assert "BUY 1000 lots would add inventory to a position of +3000 lots" in reason
    assert "falls below 0.02" in reason
    assert check.check(market, Quote(Side.SELL, 10100, 3000), view) is None
    flip = check.check(market, Quote(Side.SELL, 10100, 3001), view)
    assert flip is not None
    assert "SELL 3001 lots" in flip

    desk.positions[market.key] = 0
    assert check.check(market, Quote(Side.SELL, 10100, 1), view) is not None


def test_risk_check_in_a_chain_names_itself(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(9900, 5000)], [(10100, 5000)], -2000)
    check = VolatilityGuardCheck("volatility_guard", VolatilityGuardCheck.Params(**GUARD))
    refusals: list[RiskRefusal] = []
    chain = RiskChain([check], refusals.append)
    view = _view(desk)
    wanted = [Quote(Side.BUY, 9990, 2000), Quote(Side.SELL, 10010, 500)]
    _swing(desk, market, 10000, 10200, 10, lambda: chain.filter(market, wanted, view))
    refusals.clear()
    assert chain.filter(market, wanted, view) == [Quote(Side.BUY, 9990, 2000)]
    assert [r.check for r in refusals] == ["volatility_guard"]
    assert str(refusals[0]).startswith("volatility_guard refused SELL on sim:BTCUSDT")
