"""The speed caches of ``pure_market_making`` decide exactly as full pricing does where
float rounding is largest: prices of millions to billions of ticks quoted a few ticks
wide, with tolerances of a few ticks, the shape of the backtest bench's active case.

``test_pure_market_making.py`` checks the same at a price of 10,000 ticks, where the
anchor's float margin is never close; the anchor works out its slack from the tolerance
itself (no tick kept back), so it is pinned here near its bound.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from quoteforge.book import BookState, L2Book
from quoteforge.model import Instrument, Quote
from quoteforge.strategies._pmm_cache import QuoteCache
from quoteforge.strategies.pure_market_making import PureMarketMaking, PureMarketMakingParams
from quoteforge.strategy import Market, StrategyContext


class _Position:
    def __init__(self) -> None:
        self.lots = 0

    def __call__(self) -> int:
        return self.lots


class _NoShortcuts(QuoteCache):
    """Never answers: every refresh prices every level and compares."""

    def recall(self, key: str, params: Any, ref: float, ratio: float) -> None:
        return None

    def already_kept(self, key: str, working: list[Quote]) -> bool:
        return False

    def holds(
        self, key: str, working: list[Quote], params: Any, ratio: float, center: float
    ) -> bool:
        return False


class _CountingAnchor(QuoteCache):
    def __init__(self) -> None:
        super().__init__()
        self.held = 0

    def holds(
        self, key: str, working: list[Quote], params: Any, ratio: float, center: float
    ) -> bool:
        held = super().holds(key, working, params, ratio, center)
        self.held += held
        return held


def _decide_alike(
    params: PureMarketMakingParams,
    tick: str,
    start_ticks: int,
    steps: list[tuple[int, int, int]],
) -> int:
    """Drive a cached and an uncached strategy through the same book moves and fills;
    assert the same decision at every step; return how often the anchor answered."""
    inst = Instrument("sim", "BTC/USDT", "BTC", "USDT", Decimal(tick), Decimal("0.00001"))
    book = L2Book(inst)
    pos = _Position()
    market = Market(inst, book, pos)
    cached, uncached = _CountingAnchor(), _NoShortcuts()
    makers = []
    for cache in (cached, uncached):
        ctx = StrategyContext(
            "mm", {market.key: market}, lambda: 0, lambda k, q: None, lambda d, f: None, 0
        )
        maker = PureMarketMaking(ctx, params)
        maker._cache = cache
        makers.append(maker)
    bid = start_ticks
    for i, (move, width, fill_lots) in enumerate(steps):
        bid += move
        book.apply_snapshot([(bid, 1000)], [(bid + width, 1000)])
        book.state = BookState.LIVE
        if fill_lots:
            pos.lots += fill_lots
            for maker in makers:
                maker.on_fill(market, None)  # type: ignore[arg-type]
        fast, slow = (maker.on_book(market) for maker in makers)
        assert fast == slow, f"step {i}: {fast} != {slow}"
    return cached.held


@settings(max_examples=200, deadline=None)
@given(
    start=st.sampled_from([6_500_000, 6_512_345, 99_999_999, 1_234_567_891]),
    tick=st.sampled_from(["0.01", "0.001", "0.1"]),
    levels=st.integers(1, 3),
    # A few ticks of spread and tolerance at these prices (1e-4 bps is 0.065 ticks at
    # 6.5 million ticks): the tolerance's bound is reached by moves of one to a few ticks.
    spread_ticks=st.sampled_from([1, 3, 10]),
    spacing_ticks=st.sampled_from([0, 1, 4]),
    tolerance_ticks=st.sampled_from([1.0, 1.5, 2.0, 3.25, 4.0, 7.999]),
    skew=st.sampled_from([0.0, 0.01]),
    steps=st.lists(
        st.tuples(
            st.integers(-6, 6), st.integers(1, 4), st.sampled_from([0, 0, 0, 0, 3000, -5000])
        ),
        min_size=1,
        max_size=80,
    ),
)
def test_anchor_decides_alike_at_large_tick_counts(
    start: int,
    tick: str,
    levels: int,
    spread_ticks: int,
    spacing_ticks: int,
    tolerance_ticks: float,
    skew: float,
    steps: list[tuple[int, int, int]],
) -> None:
    bps_per_tick = 1e4 / start
    params = PureMarketMakingParams(
        order_size=0.05,
        levels=levels,
        spread_bps=spread_ticks * bps_per_tick,
        level_spacing_bps=spacing_ticks * bps_per_tick,
        refresh_tolerance_bps=tolerance_ticks * bps_per_tick,
        inventory_limit=1.0,
        inventory_skew_bps=skew,
    )
    _decide_alike(params, tick, start, steps)


def test_the_anchor_answers_moves_up_to_its_bound() -> None:
    """The bench's shape (6.5 million ticks, 3.25 ticks of tolerance): the anchor
    answers small wanders, and every answer is the decision full pricing makes."""
    bps_per_tick = 1e4 / 6_500_000
    params = PureMarketMakingParams(
        order_size=0.05,
        levels=2,
        spread_bps=3 * bps_per_tick,
        level_spacing_bps=3 * bps_per_tick,
        refresh_tolerance_bps=3.25 * bps_per_tick,
        inventory_limit=1.0,
        inventory_skew_bps=0.01,
    )
    wander = [(1, 2, 0), (1, 2, 0), (-2, 2, 0), (2, 2, 0), (-1, 1, 0), (3, 2, 0), (-3, 2, 0)]
    steps = wander + [(4, 2, 0), (-4, 2, 0)] + wander + [(0, 2, 3000)] + wander * 3
    assert _decide_alike(params, "0.01", 6_500_000, steps) > 0
