"""Risk check plugins (every refusal with its message, a pass case, the estimators) and
the execution policy's order and cancel rate limits."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from quoteforge.book import BookState, L2Book
from quoteforge.execution import Plan
from quoteforge.model import Instrument, Order, OrderStatus, Quote, Side, TimeInForce
from quoteforge.plugins import risk_checks
from quoteforge.plugins.execution_minimal_diff import MinimalDiff, TokenBucket
from quoteforge.plugins.risk_checks import (
    EwmaGridCovariance,
    EwmaGridVariance,
    MaxOpenOrders,
    MaxTotalNotional,
    PortfolioVar,
    PriceBand,
    SelfTrade,
    VolScaledPosition,
)
from quoteforge.plugins.risk_limits import MaxOrderNotional, MaxPosition
from quoteforge.registry import PluginRegistry
from quoteforge.risk import RiskChain, RiskCheck, RiskRefusal, RiskView
from quoteforge.strategy import Market

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


class Desk:
    """Markets with real books, positions and working orders, and a settable clock."""

    def __init__(self) -> None:
        self.now = T0
        self.positions: dict[str, int] = {}
        self.open: dict[tuple[str, int], int] = {}
        self.counts: dict[str, int] = {}
        self.own_best: dict[tuple[str, int], int] = {}
        self.markets: dict[str, Market] = {}

    def market(
        self, symbol: str = "BTCUSDT", bid: int = 9_999, ask: int = 10_001, lot: str = "0.01"
    ) -> Market:
        inst = Instrument("sim", symbol, symbol[:3], "USDT", Decimal("0.01"), Decimal(lot))
        book = L2Book(inst)
        book.apply_snapshot([(bid, 500)], [(ask, 500)], self.now)
        book.state = BookState.LIVE
        key = inst.key
        self.positions[key] = 0
        market = Market(inst, book, lambda: self.positions[key])
        self.markets[key] = market
        return market

    def view(self) -> RiskView:
        return RiskView(
            position_lots=lambda key: self.positions.get(key, 0),
            open_lots=lambda key, sign: self.open.get((key, sign), 0),
            open_order_count=lambda key: self.counts.get(key, 0),
            now_ns=lambda: self.now,
            markets=self.markets,
            own_best_ticks=lambda key, sign: self.own_best.get((key, sign)),
        )


def chain(*checks: RiskCheck) -> tuple[RiskChain, list[RiskRefusal]]:
    refusals: list[RiskRefusal] = []
    return RiskChain(list(checks), refusals.append), refusals


def bid(ticks: int, lots: int = 1, level: int = 0) -> Quote:
    return Quote(Side.BUY, ticks, lots, level)


def ask(ticks: int, lots: int = 1, level: int = 0) -> Quote:
    return Quote(Side.SELL, ticks, lots, level)


def take(side: Side, ticks: int, lots: int) -> Quote:
    return Quote(side, ticks, lots, level=-1, post_only=False)


# -- registration ----------------------------------------------------------------------


def test_module_registers_every_check_with_a_closed_schema() -> None:
    registry = PluginRegistry()
    record = registry.register_module(risk_checks, "risk_checks")
    assert record.loaded, record.error
    names = set(registry.types("risk"))
    assert names == {
        "price_band",
        "max_open_orders",
        "max_total_notional",
        "self_trade",
        "portfolio_var",
        "vol_scaled_position",
    }
    for name in names:
        schema = registry.get("risk", name).params
        assert schema.model_config.get("extra") == "forbid"
        for field_name, info in schema.model_fields.items():
            assert info.description, f"{name}.{field_name} has no description"
    with pytest.raises(ValidationError, match="fat_finger"):
        PriceBand.Params(fat_finger_bps=0)


# -- price_band ------------------------------------------------------------------------


def test_price_band_refuses_fat_finger_bid_and_ask_with_numbers() -> None:
    desk = Desk()
    market = desk.market(bid=9_990, ask=10_010)  # mid 100.00
    check = PriceBand("band", PriceBand.Params(fat_finger_bps=Decimal(50)))
    view = desk.view()
    reason = check.check(market, bid(10_051), view)
    assert reason == "bid 100.51 is 51.0 bps above mid 100 > fat_finger_bps 50"
    reason = check.check(market, ask(9_940), view)
    assert reason == "ask 99.4 is 60.0 bps below mid 100 > fat_finger_bps 50"
    # At the band edge, and anywhere on the passive side, quotes pass.
    assert check.check(market, bid(10_050), view) is None
    assert check.check(market, ask(9_950), view) is None
    assert check.check(market, bid(5_000), view) is None


def test_price_band_max_distance_refuses_far_quotes_either_side() -> None:
    desk = Desk()
    market = desk.market(bid=9_990, ask=10_010)
    params = PriceBand.Params(fat_finger_bps=Decimal(50), max_distance_bps=Decimal(200))
    check = PriceBand("band", params)
    view = desk.view()
    assert check.check(market, bid(9_800), view) is None
    reason = check.check(market, bid(9_799), view)
    assert reason == "bid 97.99 is 201.0 bps below mid 100 > max_distance_bps 200"
    reason = check.check(market, ask(10_250), view)
    assert reason is not None and "250.0 bps above" in reason and "max_distance_bps 200" in reason
    # Inclusive on the ask side too: exactly 200 bps above passes, a tick more does not.
    assert check.check(market, ask(10_200), view) is None
    reason = check.check(market, ask(10_201), view)
    assert reason == "ask 102.01 is 201.0 bps above mid 100 > max_distance_bps 200"


def test_price_band_without_mid_refuses_unless_allowed() -> None:
    desk = Desk()
    market = desk.market()
    market.book.apply_snapshot([(9_999, 5)], [], T0)
    view = desk.view()
    strict = PriceBand("band", PriceBand.Params(fat_finger_bps=Decimal(10)))
    reason = strict.check(market, bid(9_999), view)
    assert reason is not None and "no mid" in reason and "without_mid: allow" in reason
    lenient = PriceBand("band", PriceBand.Params(fat_finger_bps=Decimal(10), without_mid="allow"))
    assert lenient.check(market, bid(9_999), view) is None


@settings(max_examples=200, deadline=None)
@given(
    best_bid=st.integers(1, 50_000),
    spread=st.integers(1, 500),
    price=st.integers(1, 60_000),
    bps=st.decimals(min_value=Decimal("0.1"), max_value=Decimal(3000), places=1),
    side=st.sampled_from([Side.BUY, Side.SELL]),
)
def test_price_band_matches_exact_rational_band(
    best_bid: int, spread: int, price: int, bps: Decimal, side: Side
) -> None:
    desk = Desk()
    market = desk.market(bid=best_bid, ask=best_bid + spread)
    check = PriceBand("band", PriceBand.Params(fat_finger_bps=bps))
    mid = Fraction(2 * best_bid + spread, 2)
    x = Fraction(bps) / 10_000
    expected = price > mid * (1 + x) if side is Side.BUY else price < mid * (1 - x)
    refused = check.check(market, Quote(side, price, 1), desk.view()) is not None
    assert refused == expected


# -- max_position -------------------------------------------------------------------------


def test_max_position_limit_is_inclusive_and_counts_the_side_that_grows() -> None:
    """Position plus this quote plus the batch already approved on its side, in lots:
    reaching exactly max_position passes, one lot beyond is refused (with the numbers);
    the side that shrinks a long passes however far the long is over the limit."""
    desk = Desk()
    market = desk.market()  # lot 0.01: max_position 1 is 100 lots
    check = MaxPosition("pos", MaxPosition.Params(max_position=Decimal(1)))
    key = market.key
    desk.positions[key] = 60
    view = desk.view()
    assert check.check(market, bid(9_999, 40), view) is None  # 60 + 40 = the limit
    assert check.check(market, bid(9_999, 41), view) == (
        "position would reach 1.01 > max_position 1 (position 0.6, bids 0.41)"
    )
    assert check.check(market, ask(10_001, 160), view) is None  # to -1: the limit, short
    assert check.check(market, ask(10_001, 161), view) is not None
    desk.positions[key] = 150  # over the limit (a fill, a lowered limit)
    assert check.check(market, ask(10_001, 50), desk.view()) is None  # shrinks it
    assert check.check(market, ask(10_001, 300), desk.view()) is None  # flips to -1.5: no larger
    assert check.check(market, ask(10_001, 301), desk.view()) is not None
    assert check.check(market, bid(9_999, 1), desk.view()) is not None  # grows it


def test_max_position_counts_the_quotes_approved_before_in_the_same_set() -> None:
    desk = Desk()
    market = desk.market()
    check = MaxPosition("pos", MaxPosition.Params(max_position=Decimal(1)))
    risk, refusals = chain(check)
    levels = [bid(9_999 - i, 30, i) for i in range(4)] + [ask(10_001 + i, 30, i) for i in range(4)]
    approved = risk.filter(market, levels, desk.view())
    # Three 0.3 bids make 0.9; a fourth would make 1.2. The same for the asks.
    assert [(q.side, q.level) for q in approved] == [
        (side, level) for side in (Side.BUY, Side.SELL) for level in range(3)
    ]
    assert [(r.quote.side, r.quote.level) for r in refusals] == [(Side.BUY, 3), (Side.SELL, 3)]


# -- max_order_notional ----------------------------------------------------------------


@pytest.mark.parametrize("limit", ["500", "500.0049", "0.0001", "123456789.123456789"])
def test_max_order_notional_is_exact_at_the_limit(limit: str) -> None:
    """The check compares price_ticks x lots with the limit in tick x lot units: an
    order worth exactly max_notional passes, one worth one unit (0.01 x 0.01) more is
    refused, whatever the limit's digits."""
    desk = Desk()
    market = desk.market()  # tick 0.01, lot 0.01: one unit is 0.0001
    check = MaxOrderNotional("size", MaxOrderNotional.Params(max_notional=Decimal(limit)))
    units = int(Decimal(limit) / Decimal("0.0001"))  # the largest whole count within it
    for price_ticks in (1, 7, 10_000):
        lots = units // price_ticks
        if lots == 0:
            continue
        at = bid(price_ticks, lots, 0)
        assert check.check(market, at, desk.view()) is None
        over = bid(price_ticks, lots + 1, 0)  # more than one unit over when price_ticks > 1
        reason = check.check(market, over, desk.view())
        expected = market.instrument.notional(price_ticks, lots + 1)
        assert expected > Decimal(limit)
        assert reason == f"order notional {expected} > max_notional {Decimal(limit)}"
    one_over = units + 1  # exactly one unit above the largest allowed count
    assert check.check(market, bid(1, one_over, 0), desk.view()) is not None
    assert check.check(market, bid(1, units, 0), desk.view()) is None


# -- max_open_orders -------------------------------------------------------------------


def test_max_open_orders_counts_only_approved_quotes_of_the_set() -> None:
    desk = Desk()
    market = desk.market()
    limit = MaxOpenOrders("orders", MaxOpenOrders.Params(max_open_orders=3))
    # A later check refuses big orders; those must not use up the open-order budget.
    notional = MaxOrderNotional("size", MaxOrderNotional.Params(max_notional=Decimal(500)))
    risk, refusals = chain(limit, notional)
    quotes = [bid(9_990, 1, 0), bid(9_980, 900, 1), ask(10_010, 1, 0), ask(10_020, 1, 1)]
    quotes.append(bid(9_970, 1, 2))
    approved = risk.filter(market, quotes, desk.view())
    assert approved == [quotes[0], quotes[2], quotes[3]]
    assert [r.check for r in refusals] == ["size", "orders"]
    assert refusals[1].reason == "bid level 2 would be quote 4 on sim:BTCUSDT > max_open_orders 3"
    # A new set starts from zero.
    refusals.clear()
    assert risk.filter(market, quotes[2:4], desk.view()) == quotes[2:4]
    assert refusals == []


def test_max_open_orders_counts_working_orders_for_a_take() -> None:
    desk = Desk()
    market = desk.market()
    check = MaxOpenOrders("orders", MaxOpenOrders.Params(max_open_orders=2))
    desk.counts[market.key] = 1
    assert check.check(market, take(Side.BUY, 10_001, 1), desk.view()) is None
    desk.counts[market.key] = 2
    reason = check.check(market, take(Side.BUY, 10_001, 1), desk.view())
    assert reason == "take would be order 3 working on sim:BTCUSDT > max_open_orders 2"


# -- max_total_notional ----------------------------------------------------------------


def test_max_total_notional_sums_positions_and_orders_over_markets() -> None:
    desk = Desk()
    btc = desk.market("BTCUSDT", 9_999, 10_001, lot="0.01")  # mid 100, 1 lot = 1.00
    eth = desk.market("ETHUSDT", 4_999, 5_001, lot="0.1")  # mid 50, 1 lot = 5.00
    desk.positions[eth.key] = -40  # |-4 ETH| x 50 = 200
    desk.open[(eth.key, 1)] = 10  # 1 ETH bid working = 50
    check = MaxTotalNotional("gross", MaxTotalNotional.Params(max_notional=Decimal(400)))
    view = desk.view()
    assert check.check(btc, bid(9_990, 100), view) is None  # 250 + 99.90
    reason = check.check(btc, bid(9_990, 200), view)  # 250 + 199.80
    assert reason == (
        "total notional would reach 449.80 > max_notional 400 "
        "(sim:BTCUSDT 199.80 incl. this bid 2 @ 99.9, other markets 250.00)"
    )


def test_max_total_notional_values_each_market_whole_and_a_take_with_its_working_orders() -> None:
    desk = Desk()
    btc = desk.market("BTCUSDT", 9_999, 10_001, lot="0.01")  # mid 100, 1 lot = 1.00
    eth = desk.market("ETHUSDT", 4_999, 5_001, lot="0.1")  # mid 50, 1 lot = 5.00
    desk.positions[btc.key] = 100  # 100.00
    desk.open[(btc.key, 1)], desk.open[(btc.key, -1)] = 50, 30  # working: 80.00
    desk.positions[eth.key] = -40  # 200.00
    desk.open[(eth.key, 1)], desk.open[(eth.key, -1)] = 10, 10  # working: 100.00
    view = desk.view()

    def checked(cap: int, quote: Quote) -> str | None:
        check = MaxTotalNotional("gross", MaxTotalNotional.Params(max_notional=Decimal(cap)))
        return check.check(btc, quote, view)

    # A quote replaces the market's working orders: 100.00 held + 9.99 for this bid,
    # with 300.00 on the other market (position and orders on both sides).
    assert checked(410, bid(9_990, 10)) is None
    assert checked(409, bid(9_990, 10)) == (
        "total notional would reach 409.99 > max_notional 409 "
        "(sim:BTCUSDT 109.99 incl. this bid 0.1 @ 99.9, other markets 300.00)"
    )
    # A take adds to them: 100.00 held + 80.00 working + 10.00 taken.
    assert checked(490, take(Side.BUY, 10_000, 10)) is None
    assert checked(489, take(Side.BUY, 10_000, 10)) == (
        "total notional would reach 490.00 > max_notional 489 "
        "(sim:BTCUSDT 190.00 incl. this bid 0.1 @ 100, other markets 300.00)"
    )
    # A post-only order at the take level rests: it is valued as a quote.
    resting = Quote(Side.BUY, 10_000, 10, level=-1, post_only=True)
    assert checked(410, resting) is None


def test_max_total_notional_lets_unwinds_through_and_counts_the_quote_set() -> None:
    desk = Desk()
    btc = desk.market()
    desk.positions[btc.key] = 300  # 300.00 long
    check = MaxTotalNotional("gross", MaxTotalNotional.Params(max_notional=Decimal(250)))
    risk, refusals = chain(check)
    asks = [ask(10_010, 100, 0), ask(10_020, 200, 1), ask(10_030, 1, 2)]
    # Selling up to the position only reduces it; the third ask would add a short order.
    assert risk.filter(btc, [*asks, bid(9_990, 1)], desk.view()) == asks[:2]
    assert "max_notional 250" in refusals[0].reason
    assert refusals[0].quote == asks[2]


def test_max_total_notional_sees_other_markets_after_refresh() -> None:
    desk = Desk()
    btc = desk.market()
    eth = desk.market("ETHUSDT", 4_999, 5_001, lot="0.1")
    check = MaxTotalNotional(
        "gross", MaxTotalNotional.Params(max_notional=Decimal(100), refresh_s=1.0)
    )
    view = desk.view()
    assert check.check(btc, bid(9_990, 50), view) is None
    desk.positions[eth.key] = 20  # 2 ETH = 100 elsewhere, filled without a requote there
    desk.now += NS // 2
    assert check.check(btc, bid(9_990, 50), view) is None  # within refresh_s: not yet seen
    desk.now += NS // 2
    reason = check.check(btc, bid(9_990, 50), view)
    assert reason is not None and "other markets 100.00" in reason
    # A check on the other market refreshes its share at once.
    desk.positions[eth.key] = 0
    assert check.check(eth, ask(5_001, 1), view) is None
    assert check.check(btc, bid(9_990, 50), view) is None


# -- self_trade ------------------------------------------------------------------------


def test_self_trade_refuses_crossing_our_working_order() -> None:
    desk = Desk()
    market = desk.market()
    desk.own_best[(market.key, -1)] = 10_005  # our ask working at 100.05
    check = SelfTrade("stp", SelfTrade.Params())
    view = desk.view()
    assert check.check(market, bid(10_004), view) is None
    reason = check.check(market, bid(10_005), view)
    assert reason == "bid 100.05 would cross our working ask at 100.05"
    lenient = SelfTrade("stp", SelfTrade.Params(allow_lock=True))
    assert lenient.check(market, bid(10_005), view) is None
    reason = lenient.check(market, take(Side.BUY, 10_010, 3), view)
    assert reason == "bid 100.1 would cross our working ask at 100.05"
    # The same on the other side: an ask may lock our bid, never go through it.
    desk.own_best[(market.key, 1)] = 9_995
    assert check.check(market, ask(9_996), view) is None
    assert check.check(market, ask(9_995), view) == (
        "ask 99.95 would cross our working bid at 99.95"
    )
    assert lenient.check(market, ask(9_995), view) is None
    assert lenient.check(market, ask(9_994), view) == (
        "ask 99.94 would cross our working bid at 99.95"
    )


def test_self_trade_refuses_crossing_within_one_quote_set() -> None:
    desk = Desk()
    market = desk.market()
    risk, refusals = chain(SelfTrade("stp", SelfTrade.Params()))
    quotes = [bid(10_000, 1, 0), ask(10_000, 1, 0), ask(10_002, 1, 1)]
    assert risk.filter(market, quotes, desk.view()) == [quotes[0], quotes[2]]
    assert refusals[0].reason == "ask 100 would cross our own bid at 100 in the same quote set"


# -- estimators ------------------------------------------------------------------------


def test_ewma_grid_variance_matches_the_recursion_and_normalises_gaps() -> None:
    est = EwmaGridVariance(interval_s=1.0, half_life_s=10.0)
    lam = 0.5**0.1
    mids = [100.0, 101.0, 99.0, 100.5]
    acc = 0.0
    for i, mid in enumerate(mids):
        est.update(T0 + i * NS, mid)
        if i:
            r = math.log(mid / mids[i - 1])
            acc = lam * acc + (1 - lam) * r * r
    assert est.samples == 3
    assert est.variance == pytest.approx(acc / (1 - lam**3))
    # Between grid points nothing changes; a 4-interval gap counts as one r²/4 sample.
    est.update(T0 + 3 * NS + NS // 2, 150.0)
    assert est.samples == 3
    est.update(T0 + 7 * NS, 102.0)
    r = math.log(102.0 / 100.5)
    assert est.variance == pytest.approx((lam * acc + (1 - lam) * r * r / 4) / (1 - lam**4))
    assert est.sigma(4.0) == pytest.approx(2 * math.sqrt(est.variance))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-0.05, 0.05), st.floats(-0.05, 0.05), st.floats(-0.05, 0.05)),
        min_size=2,
        max_size=40,
    )
)
def test_ewma_grid_covariance_is_symmetric_psd_and_matches_weights(
    returns: list[tuple[float, float, float]],
) -> None:
    est = EwmaGridCovariance(["a", "b", "c"], interval_s=1.0, half_life_s=5.0)
    level = np.array([100.0, 50.0, 10.0])
    est.update(T0, list(level))
    for i, step in enumerate(returns, start=1):
        level = level * np.exp(np.array(step))
        est.update(T0 + i * NS, list(level))
    cov = est.cov
    assert np.allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > -1e-12
    lam = 0.5 ** (1 / 5)
    n = len(returns)
    weights = np.array([(1 - lam) * lam ** (n - 1 - k) for k in range(n)]) / (1 - lam**n)
    r = np.array(returns)
    assert np.allclose(cov, (r * weights[:, None]).T @ r, atol=1e-12)


@pytest.mark.parametrize(("interval", "half_life"), [(0.0, 10.0), (1.0, 0.0), (-1.0, 5.0)])
def test_estimators_need_a_positive_interval_and_half_life(
    interval: float, half_life: float
) -> None:
    for make in (
        lambda: EwmaGridVariance(interval, half_life),
        lambda: EwmaGridCovariance(["a"], interval, half_life),
    ):
        with pytest.raises(ValueError, match="interval_s and half_life_s must be > 0"):
            make()


def test_estimators_skip_missing_and_non_positive_mids() -> None:
    var = EwmaGridVariance(interval_s=1.0, half_life_s=10.0)
    var.update(T0, 100.0)
    for bad in (None, 0.0, -5.0):
        var.update(T0 + NS, bad)  # a book without a mid (or a broken one): no sample
    assert var.samples == 0
    var.update(T0 + NS, 101.0)
    assert var.samples == 1 and var.variance > 0

    cov = EwmaGridCovariance(["a", "b"], interval_s=1.0, half_life_s=10.0)
    cov.update(T0, [100.0, 50.0])
    cov.update(T0 + NS, [101.0, 0.0])  # b's mid is not a price: b has no return
    assert cov.cov[1, 1] == 0.0 and cov.cov[0, 1] == 0.0
    assert cov.cov[0, 0] == pytest.approx(math.log(1.01) ** 2)
    # A gap of four intervals counts as one return spread over the four.
    cov.update(T0 + 5 * NS, [103.0, 50.0])
    lam = 0.5**0.1
    r = math.log(103.0 / 101.0) / 2  # / sqrt(4)
    acc = lam * (1 - lam) * math.log(1.01) ** 2 + (1 - lam) * r * r
    assert cov.cov[0, 0] == pytest.approx(acc / (1 - lam**2))


# -- portfolio_var ---------------------------------------------------------------------


def _walk(desk: Desk, check: RiskCheck, markets: list[Market], paths: list[list[int]]) -> None:
    """Move each market's mid along its path, one grid second per step, checking a tiny
    quote each time so the estimator samples."""
    view = desk.view()
    for step in range(len(paths[0])):
        if step:
            desk.now += NS
        for market, path in zip(markets, paths, strict=True):
            mid = path[step]
            market.book.apply_snapshot([(mid - 1, 500)], [(mid + 1, 500)], desk.now)
        check.check(markets[0], bid(paths[0][step] - 5, 0), view)


def test_portfolio_var_refuses_increase_above_limit_with_numbers() -> None:
    desk = Desk()
    btc = desk.market("BTCUSDT", lot="1")
    eth = desk.market("ETHUSDT", 4_999, 5_001, lot="1")
    rng = np.random.default_rng(7)
    moves = rng.normal(0, 0.01, size=(60, 2))
    moves[:, 1] = 0.8 * moves[:, 0] + 0.6 * moves[:, 1]  # correlated markets
    btc_path = [round(10_000 * math.exp(x)) for x in np.cumsum(moves[:, 0])]
    eth_path = [round(5_000 * math.exp(x)) for x in np.cumsum(moves[:, 1])]
    params = PortfolioVar.Params(
        max_var=Decimal(30), horizon_s=1.0, sample_interval_s=1.0, half_life_s=30, min_samples=20
    )
    check = PortfolioVar("var", params)
    _walk(desk, check, [btc, eth], [btc_path, eth_path])
    view = desk.view()

    # The reference VaR from the sampled mids the estimator saw, computed from scratch.
    mids = np.array([btc_path, eth_path], dtype=float).T
    returns = np.diff(np.log(mids), axis=0)
    lam = 0.5 ** (1 / 30)
    cov = np.zeros((2, 2))
    for r in returns:
        cov = lam * cov + (1 - lam) * np.outer(r, r)
    cov /= 1 - lam ** len(returns)
    assert np.allclose(check.estimator(view).cov, cov)

    desk.positions[eth.key] = 10  # 10 ETH long
    z = 2.3263478740408408
    btc_mid, eth_mid = btc.book.mid(), eth.book.mid()
    assert btc_mid is not None and eth_mid is not None

    def var(btc_lots: int) -> float:
        x = np.array([btc_lots * btc_mid, 10 * eth_mid])
        return z * math.sqrt(x @ cov @ x)

    assert check.current_var(view) == pytest.approx(var(0))
    lots = next(n for n in range(1, 100) if var(n) > 30)
    assert check.check(btc, bid(btc_path[-1] - 1, lots - 1), view) is None
    reason = check.check(btc, bid(btc_path[-1] - 1, lots), view)
    assert reason is not None
    assert reason.startswith(f"portfolio VaR would rise from {var(0):,.2f} to {var(lots):,.2f}")
    assert f"max_var 30 (0.99 over 1s; sim:BTCUSDT position 0 -> {lots} if filled)" in reason
    # Selling BTC against the long ETH hedges it: VaR falls, so the quote passes.
    assert check.check(btc, ask(btc_path[-1] + 1, 5), view) is None


def test_portfolio_var_warm_up_refuses_or_allows() -> None:
    desk = Desk()
    btc = desk.market()
    strict = PortfolioVar("var", PortfolioVar.Params(max_var=Decimal(1), min_samples=5))
    view = desk.view()
    for _ in range(3):
        assert strict.check(btc, bid(9_990, 1), view) is not None
        desk.now += NS
    reason = strict.check(btc, bid(9_990, 1), view)
    assert reason is not None and "not estimated yet (3/5 returns on a 1s grid)" in reason
    loose = PortfolioVar(
        "var", PortfolioVar.Params(max_var=Decimal(1), min_samples=5, before_ready="allow")
    )
    assert loose.check(btc, bid(9_990, 1), view) is None


# -- vol_scaled_position ---------------------------------------------------------------


def test_vol_scaled_position_shrinks_limit_as_volatility_rises() -> None:
    desk = Desk()
    market = desk.market(lot="1")
    params = VolScaledPosition.Params(
        base_position=Decimal(10),
        ref_vol=0.001,
        horizon_s=1.0,
        sample_interval_s=1.0,
        half_life_s=3,
        min_samples=5,
    )
    check = VolScaledPosition("volpos", params)
    view = desk.view()

    def step(mid: int) -> None:
        market.book.apply_snapshot([(mid - 1, 5)], [(mid + 1, 5)], desk.now)
        check.check(market, bid(mid - 2, 0), view)
        desk.now += NS

    for mid in [10_000, 10_000, 10_001, 10_000, 10_001, 10_000]:
        step(mid)  # 1 bp moves: calm, below ref_vol
    assert check.check(market, bid(9_990, 10), view) is None
    reason = check.check(market, bid(9_990, 11), view)
    assert reason == "position would reach 11 > base_position 10"

    for mid in [10_050, 10_000, 10_050, 10_000, 10_050, 10_000]:
        step(mid)  # 50 bp swings
    vol = check.volatility(market, desk.now)
    assert vol is not None and vol > 0.001
    limit = math.floor(10 * 0.001 / vol)
    assert 0 < limit < 10
    assert check.check(market, bid(9_990, limit), view) is None
    reason = check.check(market, bid(9_990, limit + 1), view)
    assert reason == (
        f"position would reach {limit + 1} > vol-scaled limit {limit} "
        f"(base_position 10 x ref_vol 0.001 / vol {vol:.4g} over 1s)"
    )
    # Reducing a long position passes whatever the volatility.
    desk.positions[market.key] = 8
    assert check.check(market, ask(10_010, 8), view) is None


# -- order and cancel rate limits (execution policy) -----------------------------------


class Venue:
    """Applies plans at once, as a venue acknowledging instantly would."""

    def __init__(self) -> None:
        self.working: list[Order] = []
        self.ids = itertools.count()
        self.sent_orders: list[int] = []  # time of every new order (place or replace)
        self.sent_cancels: list[int] = []

    def order(self, quote: Quote) -> Order:
        return Order(
            f"c{next(self.ids)}",
            "sim",
            "BTCUSDT",
            quote.side,
            quote.qty_lots,
            quote.price_ticks,
            level=quote.level,
            status=OrderStatus.OPEN,
        )

    def apply(self, plan: Plan, now: int) -> None:
        for order in plan.cancels:
            self.working.remove(order)
            self.sent_cancels.append(now)
        for old, quote in plan.replaces:
            self.working.remove(old)
            self.working.append(self.order(quote))
            self.sent_orders.append(now)
            self.sent_cancels.append(now)
        for quote in plan.places:
            self.working.append(self.order(quote))
            self.sent_orders.append(now)

    def step(self, policy: MinimalDiff, market: Market, wanted: list[Quote], now: int) -> Plan:
        plan = policy.plan(market, wanted, list(self.working), now)
        cancels = len(self.sent_cancels)
        self.apply(plan, now)
        if not wanted:
            del self.sent_cancels[cancels:]  # pulling everything is exempt from the rate
        return plan


def limit_ticks(orders: list[Order]) -> list[int]:
    """The prices of quote orders (limit orders, so each has one)."""
    ticks = [o.price_ticks for o in orders if o.price_ticks is not None]
    assert len(ticks) == len(orders)
    return ticks


def ladder(center: int, levels: int) -> list[Quote]:
    quotes = [bid(center - 1 - i, 1, i) for i in range(levels)]
    return quotes + [ask(center + 1 + i, 1, i) for i in range(levels)]


def test_order_rate_defers_new_orders_level_zero_first() -> None:
    desk = Desk()
    market = desk.market()
    policy = MinimalDiff(MinimalDiff.Params(max_orders_per_second=2))
    venue = Venue()
    wanted = ladder(10_000, 3)
    plan = venue.step(policy, market, wanted, T0)
    assert [(q.side, q.level) for q in plan.places] == [(Side.BUY, 0), (Side.SELL, 0)]
    assert policy.deferred(market.key) == 4
    assert policy.retry_at_ns(market.key, T0) == T0 + NS // 2
    plan = venue.step(policy, market, wanted, T0 + NS // 2)
    assert [q.level for q in plan.places] == [1]
    plan = venue.step(policy, market, wanted, T0 + 5 * NS)
    assert len(plan.places) == 2  # the bucket holds burst_s x rate = 2, not 9
    plan = venue.step(policy, market, wanted, T0 + 6 * NS)
    assert len(plan.places) == 1 and policy.deferred(market.key) == 0
    assert policy.retry_at_ns(market.key, T0 + 6 * NS) is None
    assert sorted((o.side, o.level) for o in venue.working) == sorted(
        (q.side, q.level) for q in wanted
    )


def test_cancel_rate_pulls_stale_quotes_nearest_the_mid_first() -> None:
    desk = Desk()
    market = desk.market(bid=9_999, ask=10_001)
    policy = MinimalDiff(MinimalDiff.Params(max_cancels_per_second=2))
    venue = Venue()
    venue.step(policy, market, ladder(10_000, 3), T0)
    # The strategy now wants only the outer bid; five quotes are stale.
    keep = [bid(9_997, 1, 2)]
    plan = venue.step(policy, market, keep, T0 + 10 * NS)
    assert sorted(limit_ticks(plan.cancels)) == [9_999, 10_001]
    assert policy.deferred(market.key) == 3
    plan = venue.step(policy, market, keep, T0 + 11 * NS)
    assert sorted(limit_ticks(plan.cancels)) == [9_998, 10_002]
    # Pulling every quote (stale book, halt, stop) is never held back by default.
    venue.step(policy, market, ladder(10_000, 3), T0 + 20 * NS)
    plan = venue.step(policy, market, [], T0 + 20 * NS)
    assert len(plan.cancels) == 6 and venue.working == []
    strict = MinimalDiff(MinimalDiff.Params(max_cancels_per_second=2, limit_pull_all=True))
    venue.step(strict, market, ladder(10_000, 3), T0 + 30 * NS)
    assert len(strict.plan(market, [], list(venue.working), T0 + 30 * NS).cancels) == 2


def test_rate_limited_changes_go_nearest_the_touch_first_whatever_the_input_order() -> None:
    """Cancels nearest the mid first, then replaces and places by level and nearness,
    however the working orders and the wanted quotes happen to be listed."""
    desk = Desk()
    market = desk.market(bid=9_999, ask=10_001)
    policy = MinimalDiff(MinimalDiff.Params(max_cancels_per_second=2, max_orders_per_second=2))
    venue = Venue()
    venue.working = [venue.order(q) for q in reversed(ladder(10_000, 3))]  # far ones first
    plan = venue.step(policy, market, [bid(9_997, 1, 2)], T0)
    assert [o.price_ticks for o in plan.cancels] in ([9_999, 10_001], [10_001, 9_999])
    plan = venue.step(policy, market, [bid(9_997, 1, 2)], T0 + NS)
    assert sorted(limit_ticks(plan.cancels)) == [9_998, 10_002]
    # Replaces: every level moves one tick; two tokens go to level 0.
    fresh = MinimalDiff(MinimalDiff.Params(max_cancels_per_second=2, max_orders_per_second=2))
    venue.working = [venue.order(q) for q in reversed(ladder(10_000, 3))]
    plan = venue.step(fresh, market, list(reversed(ladder(10_001, 3))), T0)
    assert {(q.side, q.level) for _, q in plan.replaces} == {(Side.BUY, 0), (Side.SELL, 0)}
    # Places: the same with nothing working.
    fresh = MinimalDiff(MinimalDiff.Params(max_orders_per_second=2))
    venue.working = []
    plan = venue.step(fresh, market, list(reversed(ladder(10_000, 3))), T0)
    assert {(q.side, q.level) for q in plan.places} == {(Side.BUY, 0), (Side.SELL, 0)}


def test_without_a_mid_rate_limited_places_still_go_level_by_level() -> None:
    desk = Desk()
    market = desk.market()
    market.book.apply_snapshot([(9_999, 5)], [], T0)  # no asks: no mid
    policy = MinimalDiff(MinimalDiff.Params(max_orders_per_second=1))
    plan = policy.plan(market, list(reversed(ladder(10_000, 3))), [], T0)
    assert [q.level for q in plan.places] == [0]


def test_pulling_everything_spends_the_cancel_budget() -> None:
    """Pulling every quote is never held back, but it uses the cancel tokens: a stale
    quote right after waits for the bucket to refill."""
    desk = Desk()
    market = desk.market()
    policy = MinimalDiff(MinimalDiff.Params(max_cancels_per_second=2))
    venue = Venue()
    venue.step(policy, market, ladder(10_000, 3), T0)
    assert len(venue.step(policy, market, [], T0 + 10 * NS).cancels) == 6
    venue.step(policy, market, ladder(10_000, 1), T0 + 10 * NS)
    plan = venue.step(policy, market, [bid(9_999, 1, 0)], T0 + 10 * NS)
    assert plan.cancels == [] and policy.deferred(market.key) == 1
    plan = venue.step(policy, market, [bid(9_999, 1, 0)], T0 + 10 * NS + NS // 2)
    assert [o.price_ticks for o in plan.cancels] == [10_001]


def test_the_quote_diff_leaves_working_takes_alone() -> None:
    """An immediate-or-cancel order at work (a take) is not a quote: no wanted set
    cancels or replaces it."""
    desk = Desk()
    market = desk.market()
    policy = MinimalDiff(MinimalDiff.Params())
    take_order = Order(
        "t1",
        "sim",
        "BTCUSDT",
        Side.BUY,
        5,
        10_001,
        tif=TimeInForce.IOC,
        level=-1,
        status=OrderStatus.OPEN,
    )
    quote_order = Venue().order(bid(9_990, 1, 0))
    plan = policy.plan(market, [], [take_order, quote_order], T0)
    assert plan.cancels == [quote_order] and not plan.replaces
    plan = policy.plan(market, [bid(9_995, 1, -1)], [take_order], T0)
    assert plan.replaces == [] and plan.cancels == [] and len(plan.places) == 1


def test_a_partly_filled_quote_at_its_price_keeps_its_place_in_the_queue() -> None:
    """keep_partial (the default) leaves a partly filled order at the wanted price alone
    rather than topping it up; an order that is merely smaller (nothing filled), one
    whose rest is off the order step, or keep_partial off: replaced to the wanted size."""
    inst = Instrument(
        "sim", "BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.001"), qty_step=Decimal("0.01")
    )
    book = L2Book(inst)
    book.apply_snapshot([(9_999, 500)], [(10_001, 500)], T0)
    book.state = BookState.LIVE
    market = Market(inst, book, lambda: 0)
    wanted = [bid(9_990, 30, 0)]  # 0.03: three steps of 10 lots

    def working(qty: int, filled: int) -> Order:
        return Order(
            "w1",
            "sim",
            "BTCUSDT",
            Side.BUY,
            qty,
            9_990,
            level=0,
            status=OrderStatus.OPEN,
            filled_lots=filled,
        )

    keep = MinimalDiff(MinimalDiff.Params())
    top_up = MinimalDiff(MinimalDiff.Params(keep_partial=False))
    assert not keep.plan(market, wanted, [working(30, 10)], T0)  # 20 left, on the step
    assert not keep.plan(market, wanted, [working(30, 0)], T0)  # untouched, right size
    for policy, order in (
        (top_up, working(30, 10)),
        (keep, working(20, 0)),  # smaller, nothing filled
        (keep, working(30, 3)),  # 27 left: off the step of 10
        (keep, working(40, 0)),  # larger
    ):
        plan = policy.plan(market, wanted, [order], T0)
        assert [(old.client_id, q.qty_lots) for old, q in plan.replaces] == [("w1", 30)], order


def test_the_retry_time_counts_the_fraction_of_a_token_already_there() -> None:
    bucket = TokenBucket(2.0, 1.0, T0)
    assert bucket.take(T0)
    assert bucket.ready_at(T0) == T0 + NS // 2
    assert bucket.ready_at(T0 + NS // 4) == T0 + NS // 2  # half a token back: 0.25 s to go
    assert bucket.ready_at(T0 + NS) == T0 + NS


@pytest.mark.parametrize(("rate", "capacity"), [(0, 1), (-1, 1), (1, 0), (1, -0.5)])
def test_a_token_bucket_needs_a_positive_rate_and_capacity(rate: float, capacity: float) -> None:
    with pytest.raises(ValueError, match="rate > 0 and capacity > 0"):
        TokenBucket(rate, capacity)


def test_replace_without_order_budget_pulls_the_stale_price() -> None:
    desk = Desk()
    market = desk.market()
    policy = MinimalDiff(MinimalDiff.Params(max_orders_per_second=1, max_cancels_per_second=10))
    venue = Venue()
    venue.step(policy, market, [bid(9_990, 1, 0)], T0)
    venue.step(policy, market, [bid(9_990, 1, 0), bid(9_980, 1, 1)], T0 + NS)
    # Both levels move; one order token: level 0 is replaced, level 1 only pulled.
    moved = [bid(9_995, 1, 0), bid(9_985, 1, 1)]
    plan = venue.step(policy, market, moved, T0 + 2 * NS)
    assert [(o.price_ticks, q.price_ticks) for o, q in plan.replaces] == [(9_990, 9_995)]
    assert [o.price_ticks for o in plan.cancels] == [9_980]
    assert policy.deferred(market.key) == 1
    plan = venue.step(policy, market, moved, T0 + 3 * NS)
    assert plan.places == [moved[1]]


def test_without_rates_plans_are_unchanged() -> None:
    desk = Desk()
    market = desk.market()
    policy = MinimalDiff(MinimalDiff.Params())
    venue = Venue()
    plan = venue.step(policy, market, ladder(10_000, 5), T0)
    assert len(plan.places) == 10
    plan = venue.step(policy, market, ladder(10_003, 5), T0)
    assert len(plan.replaces) == 10 and not plan.cancels and not plan.places


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 700), st.integers(9_990, 10_010), st.integers(0, 4)),
        min_size=1,
        max_size=40,
    ),
    order_rate=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    cancel_rate=st.sampled_from([0.5, 2.0, 5.0]),
)
def test_rates_are_never_exceeded_and_quotes_converge(
    steps: list[tuple[int, int, int]], order_rate: float, cancel_rate: float
) -> None:
    desk = Desk()
    market = desk.market()
    params = MinimalDiff.Params(
        max_orders_per_second=order_rate, max_cancels_per_second=cancel_rate, burst_s=2.0
    )
    policy = MinimalDiff(params)
    venue = Venue()
    now = T0
    wanted: list[Quote] = []
    for gap_ms, center, levels in steps:
        now += gap_ms * 1_000_000
        wanted = ladder(center, levels)
        venue.step(policy, market, wanted, now)
    for rate, sent in ((order_rate, venue.sent_orders), (cancel_rate, venue.sent_cancels)):
        capacity = max(1.0, rate * 2.0)
        for i, start in enumerate(sent):
            # Any run of sends from `start` fits the bucket: capacity + refill since start.
            for j in range(i, len(sent)):
                assert j - i + 1 <= capacity + rate * (sent[j] - start) / NS + 1e-9
    if wanted:
        # Left alone long enough, the policy catches up with what is wanted (unless
        # the wanted set is being pulled, which is never held back).
        for _ in range(30):
            now += NS
            venue.step(policy, market, wanted, now)
        assert sorted((o.side, o.level, o.price_ticks) for o in venue.working) == sorted(
            (q.side, q.level, q.price_ticks) for q in wanted
        )
