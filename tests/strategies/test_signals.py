"""Online signals against hand-computed values and synthetic processes."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quoteforge.model import Side
from quoteforge.strategies.signals import (
    EwmaFairValue,
    FillIntensityEstimator,
    OUFairValue,
    RealizedVolatility,
    TradeFlowImbalance,
    Vpin,
    book_imbalance,
    microprice,
)

if TYPE_CHECKING:
    from conftest import Desk

NS = 1_000_000_000


def test_microprice_weights_the_touch_by_the_opposite_size(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(10000, 3), (9999, 5)], [(10002, 1), (10003, 3)])
    # (10000*1 + 10002*3) / 4 = 10001.5 ticks
    assert microprice(market.book) == pytest.approx(100.015)
    # over two levels: bid size 8, ask size 4 -> (10000*4 + 10002*8) / 12
    assert microprice(market.book, levels=2) == pytest.approx((10000 * 4 + 10002 * 8) / 12 / 100)


def test_microprice_of_a_one_sided_book_is_none(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(10000, 3)], [])
    assert microprice(market.book) is None


def test_book_imbalance_over_levels(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(100, 3), (99, 5)], [(101, 2), (102, 10)])
    assert book_imbalance(market.book, 1) == pytest.approx((3 - 2) / 5)
    assert book_imbalance(market.book, 2) == pytest.approx((8 - 12) / 20)
    empty = desk.market(desk.instrument("ETHUSDT"), [], [])
    assert book_imbalance(empty.book) is None
    with pytest.raises(ValueError, match="levels must be >= 1"):
        book_imbalance(market.book, 0)


def test_trade_flow_imbalance_count_window() -> None:
    flow = TradeFlowImbalance(window_count=2)
    flow.update(0, 2.0, Side.BUY)
    flow.update(1, 1.0, Side.SELL)
    assert flow.value == pytest.approx((2 - 1) / 3)
    flow.update(2, 3.0, Side.BUY)  # the first buy leaves the window
    assert flow.value == pytest.approx((3 - 1) / 4)
    assert flow.trades == 2


def test_trade_flow_imbalance_time_window() -> None:
    flow = TradeFlowImbalance(window_s=10)
    flow.update(0, 5.0, Side.SELL)
    flow.update(5 * NS, 1.0, Side.BUY)
    assert flow.value == pytest.approx((1 - 5) / 6)
    flow.update(12 * NS, 1.0, Side.BUY)  # the sell at t=0 is older than 10 s
    assert flow.value == pytest.approx(1.0)
    flow.expire(30 * NS)
    assert flow.value == 0.0
    assert flow.trades == 0


def test_trade_flow_imbalance_needs_exactly_one_window() -> None:
    with pytest.raises(ValueError, match="exactly one of window_s"):
        TradeFlowImbalance()
    with pytest.raises(ValueError, match="exactly one of window_s"):
        TradeFlowImbalance(window_s=1, window_count=1)


def test_vpin_hand_computed_buckets() -> None:
    vpin = Vpin(bucket_volume=10, n_buckets=2)
    assert vpin.value is None
    vpin.update(6, Side.BUY)
    vpin.update(4, Side.SELL)  # bucket 1: |6-4|/10 = 0.2
    assert vpin.value == pytest.approx(0.2)
    vpin.update(15, Side.BUY)  # bucket 2: 10 buys -> 1.0; 5 buys carried into bucket 3
    assert vpin.value == pytest.approx((0.2 + 1.0) / 2)
    vpin.update(5, Side.SELL)  # bucket 3: 5 vs 5 -> 0.0; bucket 1 leaves the window
    assert vpin.value == pytest.approx((1.0 + 0.0) / 2)
    assert vpin.buckets == 2


@given(st.lists(st.tuples(st.floats(0.01, 50), st.booleans()), min_size=1, max_size=60))
def test_vpin_stays_in_unit_interval(trades: list[tuple[float, bool]]) -> None:
    vpin = Vpin(bucket_volume=7.5, n_buckets=5)
    for qty, buy in trades:
        vpin.update(qty, Side.BUY if buy else Side.SELL)
    value = vpin.value
    total = sum(q for q, _ in trades)
    if total < 7.5 * (1 - 1e-9):
        assert value is None
    else:
        assert value is not None
        assert 0.0 <= value <= 1.0


def test_ewma_half_life_is_in_time() -> None:
    ewma = EwmaFairValue(half_life_s=10)
    ewma.update(0, 100.0)
    assert ewma.update(10 * NS, 200.0) == pytest.approx(150.0)
    assert ewma.update(20 * NS, 150.0) == pytest.approx(150.0)
    with pytest.raises(ValueError, match="half_life_s must be > 0"):
        EwmaFairValue(0)


def test_ou_recovers_noiseless_ar1_exactly() -> None:
    mean, b = 50.0, 0.9
    ou = OUFairValue(sample_s=1.0, memory=200, horizon_s=5.0, min_samples=10)
    x = 60.0
    for n in range(60):
        ou.update(n * NS, x)
        x = mean + b * (x - mean)
    assert ou.mean == pytest.approx(mean, rel=1e-6)
    assert ou.theta == pytest.approx(-math.log(b), rel=1e-6)
    last = mean + (60.0 - mean) * b**59
    assert ou.value == pytest.approx(mean + (last - mean) * b**5, rel=1e-6)


def test_ou_estimates_reversion_from_a_noisy_path() -> None:
    rng = random.Random(3)
    theta, mean, sigma, dt = 0.2, 100.0, 0.5, 1.0
    b = math.exp(-theta * dt)
    noise = sigma * math.sqrt((1 - b * b) / (2 * theta))
    ou = OUFairValue(sample_s=dt, memory=5000)
    x = 103.0
    for n in range(5000):
        ou.update(n * NS, x)
        x = mean + b * (x - mean) + rng.gauss(0, noise)
    assert ou.theta == pytest.approx(theta, rel=0.25)
    assert ou.mean == pytest.approx(mean, abs=0.3)


def test_ou_without_reversion_falls_back_to_last_price() -> None:
    ou = OUFairValue(sample_s=1.0, min_samples=5)
    for n in range(20):
        ou.update(n * NS, 100.0 + n)  # a trend: b = 1, no mean to revert to
    assert ou.theta is None
    assert ou.value == 119.0


def test_realized_volatility_is_time_weighted() -> None:
    vol = RealizedVolatility(window_s=60, returns="abs", min_samples=2)
    for t, mid in ((0, 100.0), (1, 101.0), (2, 100.0), (4, 102.0)):
        vol.update(t * NS, mid)
    # squared moves 1 + 1 + 4 over 4 seconds
    assert vol.variance_rate == pytest.approx(6 / 4)
    assert vol.sigma() == pytest.approx(math.sqrt(1.5))
    assert vol.sigma(16) == pytest.approx(math.sqrt(1.5 * 16))


def test_realized_volatility_forgets_outside_the_window() -> None:
    vol = RealizedVolatility(window_s=3, returns="abs", min_samples=2)
    for t, mid in ((0, 100.0), (1, 101.0), (2, 100.0), (4, 102.0)):
        vol.update(t * NS, mid)
    # the move ending at t=1 is older than 3 s at t=4: 1 + 4 over 3 seconds remain
    assert vol.variance_rate == pytest.approx(5 / 3)


def test_realized_volatility_log_returns_and_warm_up() -> None:
    vol = RealizedVolatility(window_s=100, returns="log", min_samples=3)
    vol.update(0, 100.0)
    vol.update(NS, 110.0)
    assert vol.sigma() is None
    vol.update(2 * NS, 100.0)
    vol.update(3 * NS, 100.0)
    expected = 2 * math.log(1.1) ** 2 / 3
    assert vol.variance_rate == pytest.approx(expected)
    with pytest.raises(ValueError, match="positive mid"):
        vol.update(4 * NS, 0.0)


def _simulate_fills(a: float, k: float, seed: int, periods: int = 4000) -> FillIntensityEstimator:
    rng = np.random.default_rng(seed)
    est = FillIntensityEstimator(bin_width=0.01, min_fills=50)
    depths = np.round(rng.uniform(0.0, 3.0, periods), 2)
    durations = rng.exponential(2.0, periods)
    counts = rng.poisson(a * np.exp(-k * depths) * durations)
    for depth, seconds, n in zip(depths, durations, counts, strict=True):
        est.observe_exposure(float(depth), float(seconds))
        for _ in range(int(n)):
            est.observe_fill(float(depth))
    return est


@pytest.mark.parametrize(("a", "k", "seed"), [(2.0, 1.5, 1), (0.8, 3.0, 2), (5.0, 0.7, 3)])
def test_fill_intensity_recovers_a_and_k_from_poisson_fills(a: float, k: float, seed: int) -> None:
    fit = _simulate_fills(a, k, seed).estimate()
    assert fit is not None
    a_hat, k_hat = fit
    assert a_hat == pytest.approx(a, rel=0.1)
    assert k_hat == pytest.approx(k, rel=0.1)


def test_fill_intensity_needs_enough_fills_and_depths() -> None:
    est = FillIntensityEstimator(bin_width=0.01, min_fills=3)
    est.observe_exposure(0.05, 10.0)
    for _ in range(5):
        est.observe_fill(0.05)
    assert est.estimate() is None  # one depth cannot separate A from k
    est.observe_exposure(0.5, 10.0)
    fit = est.estimate()
    assert fit is not None
    assert fit[1] > 0


def test_fill_intensity_forgets_an_old_regime() -> None:
    est = FillIntensityEstimator(bin_width=0.01, half_life_s=600, min_fills=50)
    rng = np.random.default_rng(9)
    t = 0
    for a, k in ((2.0, 0.5), (2.0, 3.0)):
        for _ in range(6000):
            depth = round(float(rng.uniform(0, 2)), 2)
            seconds = float(rng.exponential(1.0))
            t += int(seconds * NS)
            est.observe_exposure(depth, seconds, t)
            for _ in range(int(rng.poisson(a * math.exp(-k * depth) * seconds))):
                est.observe_fill(depth, t)
    fit = est.estimate()
    assert fit is not None
    assert fit[1] == pytest.approx(3.0, rel=0.2)
