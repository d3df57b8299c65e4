"""The quoting engine (``quoteforge.quoting``): its answers to a venue that refuses
orders and to an execution policy that holds changes back, and its latency measures.
A refused quote is not resent in a loop; quotes held back are planned again when the
policy can send them; tick-to-quote and tick-to-orders time book events only.

Runs on the simulated venue, through the shipped ``run_strategy`` fixture or a ``Run``
of the quickstart manifest. The backoff strategy quotes a post-only bid through the
ask, which the venue refuses ("post-only order would cross"), and records when each
refusal reached it.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from quoteforge import Market, Quote, Strategy, StrategyContext, StrategyParams
from quoteforge.engine import Run
from quoteforge.manifest import load_manifest
from quoteforge.model import OrderStatus, OrderUpdate
from quoteforge.plugins.strategy_testing import RunStrategy
from quoteforge.registry import PluginRegistry

ROOT = Path(__file__).resolve().parent.parent


class CrossParams(StrategyParams):
    #: From this time (run seconds) on, also rest a bid the venue accepts.
    behave_after: float = 1e9
    #: Between behave_after and this time, quote only the resting bid.
    cross_again_after: float = 1e9


class CrossingBid(Strategy):
    """Quotes a post-only bid five ticks through the best ask, which the venue refuses;
    from ``behave_after`` on also a bid ten dollars under the best bid at that moment
    (level 0, accepted, never moved), and between ``behave_after`` and
    ``cross_again_after`` only that one. Records every order report with its run time."""

    Params = CrossParams
    params: CrossParams

    def __init__(self, ctx: StrategyContext, params: CrossParams) -> None:
        super().__init__(ctx, params)
        self.reports: list[tuple[float, OrderStatus, str]] = []
        self.t0: float | None = None
        self.resting: int | None = None

    def _elapsed(self) -> float:
        now = self.ctx.now()
        if self.t0 is None:
            self.t0 = now
        return now - self.t0

    def on_book(self, market: Market, **kwargs: Any) -> list[Quote] | None:
        bid, ask = market.book.best_bid_ticks(), market.book.best_ask_ticks()
        if bid is None or ask is None:
            return []
        t = self._elapsed()
        lots = market.lots(0.01)
        wanted = []
        if t >= self.params.behave_after:
            if self.resting is None:
                self.resting = bid - 1000
            wanted.append(market.bid(self.resting, lots, level=0))
        if not self.params.behave_after <= t < self.params.cross_again_after:
            wanted.append(market.bid(ask + 5, lots, level=len(wanted)))
        return [q for q in wanted if q is not None]

    def on_order_update(self, market: Market, update: OrderUpdate, **kwargs: Any) -> None:
        self.reports.append((self._elapsed(), update.status, update.reason or ""))


def _refusals(strategy: Strategy) -> list[float]:
    assert isinstance(strategy, CrossingBid)
    return [t for t, status, _ in strategy.reports if status is OrderStatus.REJECTED]


def test_a_refused_quote_is_resent_at_once_twice_then_after_a_doubling_pause(
    run_strategy: RunStrategy,
) -> None:
    result = run_strategy(CrossingBid, {}, duration="90s", seed=3)
    assert not result.halted
    assert isinstance(result.strategy, CrossingBid)
    reasons = {reason for _, status, reason in result.strategy.reports if status.is_terminal}
    assert reasons and all(r.startswith("post-only order would cross at ") for r in reasons)
    times = _refusals(result.strategy)
    # A post-only order refused because the market moved through it is routine: the
    # first two are quoted again at once (the venue's answer takes its latency, no pause).
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps[0] < 0.1 and gaps[1] < 0.1, gaps
    # From the third in a row the engine pauses 0.1 s doubling per refusal (0.4, 0.8,
    # ... 25.6 s, then 30 s at most); each gap is the pause plus the venue's latency.
    pauses = [min(30.0, 0.1 * 2 ** (k - 1)) for k in range(3, 11)]
    for gap, pause in zip(gaps[2:], pauses, strict=False):
        assert pause <= gap < pause + 0.1, (gaps, pauses)
    # 90 s hold the two quick refusals, then the pauses up to 25.6 s (51 s together),
    # then one of 30 s: 11 orders, not one per book change.
    assert len(times) == 11, gaps
    # The tenth in a row raises an alert, once.
    alerts = [e for e in result.events("alert") if "rejections" in e.get("detail", "")]
    assert len(alerts) == 1
    assert "10 orders rejected in a row" in alerts[0]["detail"]


def test_an_accepted_order_ends_the_streak_and_its_pause(run_strategy: RunStrategy) -> None:
    """Refusals from the start build a long streak; the resting bid accepted after 5 s
    ends it. From 20 s the crossing bid comes back beside the resting one (which is never
    moved or cancelled): its first two refusals are quoted again at once, as a new
    streak's are, with no pause carried over."""
    result = run_strategy(
        CrossingBid, {"behave_after": 5.0, "cross_again_after": 20.0}, duration="30s", seed=3
    )
    assert isinstance(result.strategy, CrossingBid)
    reports = result.strategy.reports
    early = [t for t in _refusals(result.strategy) if t < 5.0]
    assert len(early) >= 6  # paused 0.4, 0.8, 1.6 s... by then
    before = [(t, status) for t, status, _ in reports if t < 20.0]
    opened = [t for t, status in before if status is OrderStatus.OPEN]
    assert len(opened) == 1 and 5.0 <= opened[0] < 12.0, reports
    assert {status for _, status in before} == {OrderStatus.REJECTED, OrderStatus.OPEN}
    later = [t for t in _refusals(result.strategy) if t >= 20.0]
    assert len(later) >= 3
    assert later[1] - later[0] < 0.1 and later[2] - later[1] < 0.1, later
    assert later[3] - later[2] >= 0.4  # the third in a row pauses again


class Ladder(Strategy):
    """Wants four bids, far from the touch, once; says "no change" (None) after that.
    Records when each order was acknowledged."""

    def __init__(self, ctx: StrategyContext, params: StrategyParams) -> None:
        super().__init__(ctx, params)
        self.asked = 0
        self.opened: list[float] = []
        self.t0: float | None = None

    def on_book(self, market: Market, **kwargs: Any) -> list[Quote] | None:
        if self.t0 is None:
            self.t0 = self.ctx.now()
        self.asked += 1
        bid = market.book.best_bid_ticks()
        if self.asked > 1 or bid is None:
            return None
        quotes = [market.bid(bid - 500 * (k + 1), market.lots(0.01), level=k) for k in range(4)]
        return [q for q in quotes if q is not None]

    def on_order_update(self, market: Market, update: OrderUpdate, **kwargs: Any) -> None:
        if update.status is OrderStatus.OPEN and self.t0 is not None:
            self.opened.append(self.ctx.now() - self.t0)


def test_quotes_held_back_by_the_order_rate_go_out_when_it_allows(
    run_strategy: RunStrategy,
) -> None:
    """The policy sends one order a second; the strategy asks for four once and never
    again: the engine plans again each time the policy can send, from what the strategy
    last wanted, until all four rest."""
    result = run_strategy(
        Ladder,
        {},
        duration="10s",
        seed=1,
        manifest={
            "execution": {
                "type": "minimal_diff",
                "params": {"max_orders_per_second": 1, "burst_s": 1},
            }
        },
    )
    assert isinstance(result.strategy, Ladder)
    times = result.strategy.opened
    assert len(times) == 4, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Each goes out when the bucket has a token again, not at the next book event.
    assert all(abs(gap - 1.0) < 0.01 for gap in gaps), gaps


def test_latency_is_timed_from_book_events_only(registry: PluginRegistry, tmp_path: Path) -> None:
    """Tick-to-orders times every book event that asked a strategy, tick-to-quote each
    quoting decision made on one; requotes after fills and order reports are not ticks.
    The kept samples and the histograms the metrics export agree."""
    loaded = load_manifest(
        ROOT / "examples" / "quickstart.yaml",
        registry,
        overrides=["run.duration=20s", "report.html=false", "report.png=false"],
    )
    run = Run(loaded, registry, run_dir=tmp_path / "run")
    run.latency_samples = {"tick_to_quote": [], "tick_to_orders": []}
    asyncio.run(run.run())
    orders, quote = run.latency_samples["tick_to_orders"], run.latency_samples["tick_to_quote"]
    assert len(orders) == run.tick_to_orders.count > 100
    assert sum(orders) == run.tick_to_orders.sum_ns
    assert len(quote) == run.tick_to_quote.count and sum(quote) == run.tick_to_quote.sum_ns
    # A decision is part of its tick: at most one per tick and market, each shorter than
    # the tick's whole path (strategy, plan, order manager, journal, venue hand-over).
    assert 0 < len(quote) <= len(orders)
    assert all(0 < ns < 1_000_000_000 for ns in orders + quote)
    assert max(quote) <= max(orders) and sum(quote) < sum(orders)
    fills = sum(run.portfolio.fill_count(key) for key in run.markets)
    assert fills > 0  # fills and order reports requoted too, untimed
