"""Avellaneda-Stoikov: pricing formulas and the quoting rules of the strategy."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

import quoteforge.strategies.avellaneda_stoikov as as_module
from quoteforge.model import Fill, Liquidity, Quote, Side
from quoteforge.registry import PluginRegistry
from quoteforge.strategies.avellaneda_stoikov import (
    AvellanedaStoikov,
    finite_horizon_quotes,
    glft_coefficients,
    infinite_horizon_quotes,
    inventory_sizes,
    optimal_spread,
    reservation_price,
)

if TYPE_CHECKING:
    from conftest import Desk

    from quoteforge.strategy import Market

positive = st.floats(0.01, 5.0)


@given(
    mid=st.floats(1.0, 1e5),
    q=st.floats(-20, 20),
    gamma=positive,
    sigma=positive,
    tau=st.floats(0, 1000),
    k=positive,
)
def test_finite_horizon_prices_follow_the_formulas(
    mid: float, q: float, gamma: float, sigma: float, tau: float, k: float
) -> None:
    prices = finite_horizon_quotes(mid, q, gamma, sigma, tau, k)
    skew = q * gamma * sigma**2 * tau
    spread = gamma * sigma**2 * tau + (2 / gamma) * math.log(1 + gamma / k)
    assert prices.reservation == pytest.approx(mid - skew, rel=1e-9, abs=1e-9)
    assert prices.spread == pytest.approx(spread, rel=1e-9)
    assert (prices.bid + prices.ask) / 2 == pytest.approx(prices.reservation, rel=1e-9, abs=1e-6)
    symmetric = finite_horizon_quotes(mid, q, gamma, sigma, tau, k, symmetric=True)
    # bid and ask are mid -/+ half the spread: their mean carries the rounding of the
    # spread's magnitude, which can be far larger than the mid itself.
    assert (symmetric.bid + symmetric.ask) / 2 == pytest.approx(
        mid, rel=1e-12, abs=4e-16 * symmetric.spread
    )
    assert symmetric.spread == pytest.approx(prices.spread, rel=1e-9)


def test_reservation_moves_against_inventory_by_exactly_q_gamma_sigma2_tau() -> None:
    assert reservation_price(100.0, 0, 0.1, 2.0, 30) == 100.0
    assert reservation_price(100.0, 3, 0.1, 2.0, 30) == pytest.approx(100.0 - 3 * 0.1 * 4 * 30)
    assert reservation_price(100.0, -3, 0.1, 2.0, 30) == pytest.approx(100.0 + 3 * 0.1 * 4 * 30)
    assert optimal_spread(0.1, 2.0, 0, 1.5) == pytest.approx(20 * math.log(1 + 0.1 / 1.5))


def test_model_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="gamma"):
        optimal_spread(0.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="k \\(fill intensity decay\\)"):
        optimal_spread(0.1, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="tau"):
        finite_horizon_quotes(100.0, 0, 0.1, 1.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="A \\(fill intensity"):
        glft_coefficients(0.1, 1.0, 1.0, 0.0)


@given(q=st.floats(-10, 10), gamma=positive, sigma=positive, k=positive, a=positive)
def test_infinite_horizon_glft_depths(
    q: float, gamma: float, sigma: float, k: float, a: float
) -> None:
    c1, c2 = glft_coefficients(gamma, sigma, k, a)
    assert c1 == pytest.approx(math.log(1 + gamma / k) / gamma)
    assert c2 == pytest.approx(
        math.sqrt(sigma**2 * gamma / (2 * k * a) * (1 + gamma / k) ** (1 + k / gamma))
    )
    prices = infinite_horizon_quotes(100.0, q, gamma, sigma, k, a)
    assert 100.0 - prices.bid == pytest.approx(c1 + (2 * q + 1) / 2 * c2, rel=1e-9, abs=1e-9)
    assert prices.ask - 100.0 == pytest.approx(c1 - (2 * q - 1) / 2 * c2, rel=1e-9, abs=1e-9)
    symmetric = infinite_horizon_quotes(100.0, q, gamma, sigma, k, a, symmetric=True)
    assert (symmetric.bid + symmetric.ask) / 2 == pytest.approx(100.0)
    assert symmetric.spread == pytest.approx(2 * c1 + c2)


def test_inventory_sizes_decay_on_the_growing_side() -> None:
    assert inventory_sizes(1.0, 0, 0.5) == (1.0, 1.0)
    bid, ask = inventory_sizes(1.0, 2, 0.5)
    assert (bid, ask) == (pytest.approx(math.exp(-1.0)), 1.0)
    bid, ask = inventory_sizes(1.0, -2, 0.5)
    assert (bid, ask) == (1.0, pytest.approx(math.exp(-1.0)))


# -- the strategy ------------------------------------------------------------------------

WIDE_BOOK = ([(9000, 5000)], [(11000, 5000)])  # 90.00 / 110.00, mid 100.00


def _strategy(desk: Desk, **params: object) -> AvellanedaStoikov:
    settings: dict[str, object] = {
        "order_size": 1.0,
        "gamma": 0.1,
        "sigma": 1.0,
        "k": 1.5,
        "horizon_s": 100.0,
        "estimate_intensity": False,
    }
    settings.update(params)
    strategy = AvellanedaStoikov(desk.ctx("as"), AvellanedaStoikov.Params(**settings))
    strategy.on_start()
    return strategy


def _by_side(quotes: list[Quote] | None) -> dict[Side, Quote]:
    assert quotes is not None
    return {q.side: q for q in quotes}


def _wide_market(desk: Desk, position_lots: int = 0) -> Market:
    return desk.market(desk.instrument(lot="0.001"), *WIDE_BOOK, position_lots=position_lots)


def test_quotes_are_the_rounded_model_prices_with_inventory_skew(desk: Desk) -> None:
    market = _wide_market(desk, position_lots=2000)  # 2.0 base = q of 2 order sizes
    strategy = _strategy(desk)
    desk.advance(40)  # tau = 60 s
    quotes = _by_side(strategy.on_book(market))
    model = finite_horizon_quotes(100.0, 2.0, 0.1, 1.0, 60.0, 1.5)
    assert model.reservation == pytest.approx(100.0 - 2 * 0.1 * 1.0 * 60)
    assert quotes[Side.BUY].price_ticks == math.floor(model.bid * 100)
    assert quotes[Side.SELL].price_ticks == math.ceil(model.ask * 100)
    # the side that grows the long position is shrunk: exp(-0.5 * 2) of 1.0 -> 0.367
    assert quotes[Side.BUY].qty_lots == 367
    assert quotes[Side.SELL].qty_lots == 1000


def test_reservation_shift_between_flat_and_long_is_q_gamma_sigma2_tau(desk: Desk) -> None:
    market = _wide_market(desk)
    strategy = _strategy(desk)
    desk.advance(40)
    flat = strategy.model_prices(market, 100.0)
    desk.positions[market.key] = 3000
    long = strategy.model_prices(market, 100.0)
    assert flat is not None
    assert long is not None
    assert flat.reservation - long.reservation == pytest.approx(3 * 0.1 * 1.0**2 * 60)
    assert long.spread == pytest.approx(flat.spread)


def test_inventory_in_base_units(desk: Desk) -> None:
    market = _wide_market(desk, position_lots=2000)
    strategy = _strategy(desk, order_size=0.5, inventory_unit="base")
    assert strategy.inventory(market) == pytest.approx(2.0)
    strategy = _strategy(desk, order_size=0.5)
    assert strategy.inventory(market) == pytest.approx(4.0)


def test_symmetric_variant_is_centred_on_the_mid(desk: Desk) -> None:
    market = _wide_market(desk, position_lots=4000)
    strategy = _strategy(desk, variant="symmetric")
    desk.advance(50)
    quotes = _by_side(strategy.on_book(market))
    centre = (quotes[Side.BUY].price_ticks + quotes[Side.SELL].price_ticks) / 2
    assert abs(centre - 10000) <= 0.5
    spread = optimal_spread(0.1, 1.0, 50.0, 1.5)
    assert (quotes[Side.SELL].price_ticks - quotes[Side.BUY].price_ticks) / 100 == pytest.approx(
        spread, abs=0.02
    )


def test_spread_narrows_toward_the_horizon_and_restarts(desk: Desk) -> None:
    market = _wide_market(desk)
    strategy = _strategy(desk)

    def width() -> int:
        quotes = _by_side(strategy.on_book(market))
        return quotes[Side.SELL].price_ticks - quotes[Side.BUY].price_ticks

    early = width()
    desk.advance(90)
    late = width()
    desk.advance(20)  # 110 s: a new session, tau = 90 s
    restarted = width()
    assert early > late
    assert restarted > late
    assert strategy.time_left() == pytest.approx(90.0)


def test_infinite_horizon_strategy_uses_glft(desk: Desk) -> None:
    market = _wide_market(desk, position_lots=-1000)
    strategy = _strategy(desk, horizon="infinite", a=2.0)
    quotes = _by_side(strategy.on_book(market))
    model = infinite_horizon_quotes(100.0, -1.0, 0.1, 1.0, 1.5, 2.0)
    assert quotes[Side.BUY].price_ticks == math.floor(model.bid * 100)
    assert quotes[Side.SELL].price_ticks == math.ceil(model.ask * 100)


def test_growing_side_is_pulled_at_max_inventory(desk: Desk) -> None:
    market = _wide_market(desk, position_lots=5000)
    strategy = _strategy(desk, max_inventory=5)
    quotes = strategy.on_book(market)
    assert quotes is not None
    assert [q.side for q in quotes] == [Side.SELL]


def test_quotes_never_cross_the_book(desk: Desk) -> None:
    market = desk.market(desk.instrument(), [(9999, 1000)], [(10001, 1000)], position_lots=9000)
    strategy = _strategy(desk, max_inventory=100)
    quotes = _by_side(strategy.on_book(market))
    # a long of 9 pushes the model ask far below the best bid; it stays passive
    assert quotes[Side.SELL].price_ticks == 10000
    assert quotes[Side.BUY].price_ticks < quotes[Side.SELL].price_ticks


def test_online_sigma_waits_for_enough_mid_returns(desk: Desk) -> None:
    market = _wide_market(desk)
    strategy = _strategy(desk, sigma=None, vol_min_samples=5, vol_window_s=60)
    assert strategy.on_book(market) == []
    for i in range(6):
        desk.advance(1)
        mid_shift = 10 if i % 2 == 0 else -10
        desk.book(market, [(9000 + mid_shift, 5000)], [(11000 + mid_shift, 5000)])
        quotes = strategy.on_book(market)
    assert quotes
    sigma = strategy.sigma(market)
    # mids alternate by 0.20 once a second (the first move is 0.10)
    assert sigma == pytest.approx(math.sqrt((0.01 + 5 * 0.04) / 6), rel=1e-6)


def test_fill_depths_feed_the_intensity_estimate(desk: Desk) -> None:
    market = _wide_market(desk)
    strategy = _strategy(desk, estimate_intensity=True, intensity_min_fills=5, horizon="infinite")
    assert strategy.intensity(market) == (1.0, 1.5)
    for n in range(60):
        # inventory changes move the quotes, so depths vary as the estimate needs
        desk.positions[market.key] = (n % 7 - 3) * 1000
        quotes = _by_side(strategy.on_book(market))
        desk.advance(1)
        # the quote nearer the mid is the one that gets filled
        near = min(quotes.values(), key=lambda q: abs(q.price_ticks - 10000))
        strategy.on_fill(
            market,
            Fill(
                "sim",
                "BTCUSDT",
                f"f{n}",
                "c",
                near.side,
                near.price_ticks,
                1,
                Decimal(0),
                "USDT",
                Liquidity.MAKER,
                0,
            ),
        )
    a, k = strategy.intensity(market)
    assert (a, k) != (1.0, 1.5)
    assert a > 0
    assert k > 0


def test_params_are_validated_with_clear_errors() -> None:
    with pytest.raises(ValidationError, match="gamma"):
        AvellanedaStoikov.Params(order_size=1.0, gamma=0)
    with pytest.raises(ValidationError, match="variant"):
        AvellanedaStoikov.Params(order_size=1.0, variant="skewed")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        AvellanedaStoikov.Params(order_size=1.0, gama=0.1)  # type: ignore[call-arg]


def test_registered_through_the_plugin_hook() -> None:
    registry = PluginRegistry()
    record = registry.register_module(as_module, "avellaneda_stoikov")
    assert record.loaded, record.error
    reg = registry.get("strategy", "avellaneda_stoikov")
    assert reg.factory is AvellanedaStoikov
    assert reg.params is AvellanedaStoikov.Params
