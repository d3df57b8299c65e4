"""offer_taker: edge and staleness rules, inventory limits, edge adaptation, the volatility
denylist, and end-to-end runs on the offer_sim venue."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from own_strategies import register_strategy

from quoteforge.book import BookState, L2Book
from quoteforge.engine import run_manifest
from quoteforge.exchanges.sim import offer_sim as offers_module
from quoteforge.manifest import load_manifest
from quoteforge.model import Fill, Instrument, Liquidity, Offer, OrderStatus, OrderUpdate, Side
from quoteforge.registry import PluginRegistry
from quoteforge.strategies import offer_taker as offer_taker_module
from quoteforge.strategies.offer_taker import OfferTaker, OfferTakerParams
from quoteforge.strategy import Market, StrategyContext

NS = 1_000_000_000
T0 = 1_800_000_000 * NS


class _Order:
    def __init__(self, client_id: str) -> None:
        self.client_id = client_id


class Desk:
    """Markets with real books and positions, a settable clock, and a take() that records."""

    def __init__(self) -> None:
        self.now = T0
        self.positions: dict[str, int] = {}
        self.markets: dict[str, Market] = {}
        self.takes: list[tuple[str, Side, int, int, str | None]] = []
        self.published: list[tuple[str, Any]] = []
        self.refuse = False

    def add(
        self, ticker: str, mid_ticks: int, position: int = 0, lot: str = "1", step: str = "0"
    ) -> Market:
        inst = Instrument(
            "offers", ticker, ticker, "USD", Decimal("0.01"), Decimal(lot), qty_step=Decimal(step)
        )
        book = L2Book(inst)
        book.state = BookState.LIVE
        key = inst.key
        self.positions[key] = position
        market = Market(inst, book, lambda: self.positions[key])
        self.markets[key] = market
        self.set_mid(ticker, mid_ticks)
        return market

    def set_mid(self, ticker: str, mid_ticks: int, ts_ns: int | None = None) -> None:
        book = self.markets[f"offers:{ticker}"].book
        book.apply_snapshot([(mid_ticks - 1, 100)], [(mid_ticks + 1, 100)], ts_ns or self.now)

    def _take(
        self, market: Market, side: Side, price: int, lots: int, offer_id: str | None
    ) -> _Order | None:
        if self.refuse:
            return None
        self.takes.append((market.symbol, side, price, lots, offer_id))
        return _Order(f"c{len(self.takes)}")

    def context(self) -> StrategyContext:
        return StrategyContext(
            name="taker",
            markets=self.markets,
            now_ns=lambda: self.now,
            set_quotes=lambda key, quotes: None,
            schedule=lambda delay, fn: None,
            seed=1,
            publish=lambda topic, payload: self.published.append((topic, payload)),
            take=self._take,
        )

    def taker(self, **params: Any) -> OfferTaker:
        params.setdefault("order_size", 10)
        params.setdefault("max_position", 100)
        return OfferTaker(self.context(), OfferTakerParams(**params))


_ids = iter(range(1, 10**9))


def offer(ticker: str, side: Side, price_ticks: int, lots: int = 5, ts: int = T0) -> Offer:
    return Offer("offers", ticker, f"o{next(_ids)}", side, price_ticks, lots, ts, ts + NS)


def market_of(desk: Desk, ticker: str) -> Market:
    return desk.markets[f"offers:{ticker}"]


# -- the edge ---------------------------------------------------------------------------------


def test_takes_an_offer_at_the_edge_and_not_one_tick_inside() -> None:
    desk = Desk()
    m = desk.add("AAA", 10_000)  # reference 100.00
    taker = desk.taker(edge=0.01, min_edge=0.005, max_edge=0.02)
    taker.on_offer(m, offer("AAA", Side.SELL, 9_901))  # 99.01: only 0.99 % cheap
    taker.on_offer(m, offer("AAA", Side.BUY, 10_099))  # bid 100.99: 0.99 % rich
    assert desk.takes == []
    buy_offer = offer("AAA", Side.SELL, 9_900)
    taker.on_offer(m, buy_offer)
    sell_offer = offer("AAA", Side.BUY, 10_100)
    taker.on_offer(m, sell_offer)
    assert desk.takes == [
        ("AAA", Side.BUY, 9_900, 5, buy_offer.offer_id),
        ("AAA", Side.SELL, 10_100, 5, sell_offer.offer_id),
    ]


def test_takes_are_whole_order_steps_of_offers_finer_than_the_step() -> None:
    desk = Desk()
    # Offers come in lots of 0.001, orders go in steps of 0.01 (10 lots).
    m = desk.add("AAA", 10_000, lot="0.001", step="0.01")
    taker = desk.taker(edge=0.01, min_edge=0.005, max_edge=0.02, order_size=0.105)
    taker.on_offer(m, offer("AAA", Side.SELL, 9_900, lots=37))
    taker.on_offer(m, offer("AAA", Side.SELL, 9_900, lots=250))  # capped at the order size
    taker.on_offer(m, offer("AAA", Side.SELL, 9_900, lots=7))  # less than one step
    assert [t[3] for t in desk.takes] == [30, 100]
    assert all(m.instrument.check_order(t[2], t[3]) is None for t in desk.takes)


@settings(max_examples=300, deadline=None)
@given(
    ref=st.integers(min_value=100, max_value=1_000_000),
    rel=st.floats(min_value=-0.05, max_value=0.05),
    side=st.sampled_from([Side.BUY, Side.SELL]),
    edge=st.floats(min_value=0.001, max_value=0.04),
    age_ms=st.integers(min_value=0, max_value=5_000),
)
def test_never_takes_below_the_edge_or_on_a_stale_price(
    ref: int, rel: float, side: Side, edge: float, age_ms: int
) -> None:
    desk = Desk()
    m = desk.add("AAA", ref)
    desk.set_mid("AAA", ref, ts_ns=T0 - age_ms * 1_000_000)
    taker = desk.taker(
        edge=edge, min_edge=0.001, max_edge=0.04, max_staleness="2s", max_position=10**9
    )
    price = max(1, round(ref * (1 + rel)))
    taker.on_offer(m, offer("AAA", side, price))
    fresh = age_ms <= 2_000
    reference = ref * 0.01
    px = price * 0.01
    good = px <= reference * (1 - edge) if side is Side.SELL else px >= reference * (1 + edge)
    assert bool(desk.takes) == (fresh and good)
    for _, our_side, taken_px, _, _ in desk.takes:
        assert our_side is side.opposite
        assert taken_px == price
    if not fresh:
        assert taker.stats.stale == 1


@pytest.mark.parametrize("ref", [10**16 + 3, 3 * 10**17 + 7])
def test_the_edge_rule_holds_exactly_for_huge_prices(ref: int) -> None:
    # Beyond 2**53 ticks neighbouring tick counts share one float price.
    desk = Desk()
    m = desk.add("AAA", ref)
    taker = desk.taker(edge=0.01, min_edge=0.005, max_edge=0.02, max_position=10**9)
    reference = ref * 0.01
    for side, centre in ((Side.SELL, ref * 0.99), (Side.BUY, ref * 1.01)):
        for step in range(-40, 41):
            price = int(centre) + step * 97
            before = len(desk.takes)
            taker.on_offer(m, offer("AAA", side, price))
            px = price * 0.01
            good = px <= reference * 0.99 if side is Side.SELL else px >= reference * 1.01
            assert (len(desk.takes) > before) == good, (side, price)


def test_a_stale_reference_is_never_used_however_good_the_offer() -> None:
    desk = Desk()
    m = desk.add("AAA", 10_000)
    taker = desk.taker(max_staleness="500ms")
    desk.now = T0 + 501_000_000
    taker.on_offer(m, offer("AAA", Side.SELL, 5_000))  # half price, but the price is old
    assert desk.takes == []
    assert taker.stats.stale == 1
    desk.set_mid("AAA", 10_000, ts_ns=desk.now)
    taker.on_offer(m, offer("AAA", Side.SELL, 5_000))
    assert len(desk.takes) == 1


def test_no_reference_price_means_no_take() -> None:
    desk = Desk()
    m = desk.add("AAA", 10_000)
    m.book.state = BookState.STALE
    taker = desk.taker()
    taker.on_offer(m, offer("AAA", Side.SELL, 5_000))
    assert desk.takes == []
    assert taker.stats.no_price == 1


def test_a_new_reference_price_is_used_from_the_next_offer_on() -> None:
    desk = Desk()
    m = desk.add("AAA", 10_000)
    taker = desk.taker(edge=0.01, min_edge=0.005, max_edge=0.02, max_position=10**6)
    taker.on_offer(m, offer("AAA", Side.SELL, 9_950))  # 0.5 % cheap: not enough
    assert desk.takes == []
    desk.set_mid("AAA", 10_060)  # the reference moves up, same time stamp
    taker.on_offer(m, offer("AAA", Side.SELL, 9_950))  # now 1.09 % cheap
    assert len(desk.takes) == 1
    # A level change alone (no new book time) moves the mid too: 101.00 -> 100.50.
    m.book.set_level(Side.SELL, 10_061, 0)
    m.book.set_level(Side.SELL, 10_051, 100)
    m.book.set_level(Side.BUY, 10_059, 0)
    m.book.set_level(Side.BUY, 10_049, 100)
    taker.on_offer(m, offer("AAA", Side.SELL, 9_950))  # 0.995 % cheap: not taken
    assert len(desk.takes) == 1
    taker.on_offer(m, offer("AAA", Side.SELL, 9_949))
    assert len(desk.takes) == 2


def test_new_params_apply_to_the_next_offer() -> None:
    desk = Desk()
    m = desk.add("AAA", 10_000)
    taker = desk.taker(edge=0.01, min_edge=0.005, max_edge=0.02, max_staleness="2s")
    taker.on_offer(m, offer("AAA", Side.SELL, 9_930))  # 0.7 % cheap
    assert desk.takes == []
    taker.on_params(taker.p.model_copy(update={"edge": 0.006}))
    taker.on_offer(m, offer("AAA", Side.SELL, 9_930))
    assert len(desk.takes) == 1
    desk.now += 1_500_000_000  # the reference is now 1.5 s old
    taker.on_offer(m, offer("AAA", Side.SELL, 9_930))
    assert len(desk.takes) == 2
    taker.on_params(taker.p.model_copy(update={"max_staleness": 1.0}))
    taker.on_offer(m, offer("AAA", Side.SELL, 9_000))
    assert len(desk.takes) == 2
    assert taker.stats.stale == 1


# -- inventory ----------------------------------------------------------------------------------


def test_inventory_limit_counts_position_and_takes_in_flight() -> None:
    desk = Desk()
    m = desk.add("AAA", 10_000, position=80)
    taker = desk.taker(max_position=100, order_size=50)
    taker.on_offer(m, offer("AAA", Side.SELL, 9_000, lots=40))
    assert desk.takes[-1][3] == 20  # only the room left to the limit
    taker.on_offer(m, offer("AAA", Side.SELL, 9_000, lots=40))
    assert len(desk.takes) == 1  # the 20 in flight use the room up
    assert taker.stats.limit_skips == 1
    # Selling reduces the position: allowed up to the short limit.
    taker.on_offer(m, offer("AAA", Side.BUY, 11_000, lots=500))
    assert desk.takes[-1][1:4] == (Side.SELL, 11_000, 50)


def test_notional_limit_uses_the_reference_price() -> None:
    desk = Desk()
    m = desk.add("AAA", 50_000)  # 500.00
    taker = desk.taker(max_position=None, max_notional=10_000, order_size=1_000)
    taker.on_offer(m, offer("AAA", Side.SELL, 40_000, lots=1_000))
    assert desk.takes[-1][3] == 20  # 20 x 500 = 10 000


def test_a_lost_take_frees_its_room() -> None:
    desk = Desk()
    m = desk.add("AAA", 10_000, position=90)
    taker = desk.taker(max_position=100)
    taker.on_offer(m, offer("AAA", Side.SELL, 9_000))
    taker.on_order_update(
        m, OrderUpdate("offers", "c1", OrderStatus.EXPIRED, T0, reason="offer already taken")
    )
    taker.on_offer(m, offer("AAA", Side.SELL, 9_000))
    assert [t[3] for t in desk.takes] == [5, 5]
    assert taker.stats.lost == 1


# -- edge adaptation ------------------------------------------------------------------------------


def _race(desk: Desk, taker: OfferTaker, m: Market, won: bool) -> None:
    taker.on_offer(m, offer("AAA", Side.SELL, 5_000))
    client_id = f"c{len(desk.takes)}"
    if won:
        fill = Fill(
            "offers",
            "AAA",
            f"f{client_id}",
            client_id,
            Side.BUY,
            5_000,
            5,
            Decimal(0),
            "USD",
            Liquidity.TAKER,
            desk.now,
        )
        taker.on_fill(m, fill)
        taker.on_order_update(m, OrderUpdate("offers", client_id, OrderStatus.FILLED, desk.now))
    else:
        taker.on_order_update(
            m,
            OrderUpdate(
                "offers", client_id, OrderStatus.EXPIRED, desk.now, reason="offer already taken"
            ),
        )


@settings(max_examples=40, deadline=None)
@given(outcomes=st.lists(st.booleans(), min_size=1, max_size=400))
def test_edge_stays_within_bounds_whatever_the_outcomes(outcomes: list[bool]) -> None:
    desk = Desk()
    m = desk.add("AAA", 10_000)
    taker = desk.taker(
        edge=0.01, min_edge=0.004, max_edge=0.02, adapt_window=10, max_position=10**9
    )
    for won in outcomes:
        _race(desk, taker, m, won)
        assert 0.004 <= taker.edge <= 0.02
    assert taker.stats.won == sum(outcomes)
    assert taker.stats.lost == len(outcomes) - sum(outcomes)


def test_losing_races_thins_the_edge_and_winning_widens_it() -> None:
    desk = Desk()
    m = desk.add("AAA", 10_000)
    taker = desk.taker(
        edge=0.01, min_edge=0.004, max_edge=0.02, adapt_window=10, max_position=10**9
    )
    for _ in range(200):
        _race(desk, taker, m, won=False)
    assert taker.edge == pytest.approx(0.004)
    for _ in range(400):
        _race(desk, taker, m, won=True)
    assert taker.edge == pytest.approx(0.02)
    assert taker.stats.edge_changes > 10


def test_thinner_edge_takes_offers_the_wide_edge_refused() -> None:
    desk = Desk()
    m = desk.add("AAA", 10_000)
    taker = desk.taker(edge=0.01, min_edge=0.004, max_edge=0.02, adapt_window=5, max_position=10**9)
    taker.on_offer(m, offer("AAA", Side.SELL, 9_950))  # 0.5 % cheap
    assert desk.takes == []
    for _ in range(100):
        _race(desk, taker, m, won=False)
    before = len(desk.takes)
    taker.on_offer(m, offer("AAA", Side.SELL, 9_950))
    assert len(desk.takes) == before + 1


# -- volatility denylist ------------------------------------------------------------------------


def _shake(desk: Desk, taker: OfferTaker, m: Market, steps: int, jump: int) -> None:
    """Reference prices alternating by ``jump`` ticks, one per second, each seen by an
    offer the taker ignores (priced at the reference)."""
    mid = 10_000
    for i in range(steps):
        desk.now += NS
        mid = 10_000 + (jump if i % 2 else -jump)
        desk.set_mid(m.symbol, mid, ts_ns=desk.now)
        taker.on_offer(m, offer(m.symbol, Side.SELL, mid, ts=desk.now))


def test_denylisted_ticker_takes_no_new_inventory_and_unwinds_at_a_narrower_edge() -> None:
    desk = Desk()
    m = desk.add("VOL", 10_000, position=0)
    guard = {"threshold": 0.02, "window_s": 30, "min_samples": 5}
    taker = desk.taker(
        edge=0.01, min_edge=0.004, max_edge=0.02, guard=guard, unwind_edge_factor=0.25
    )
    _shake(desk, taker, m, steps=20, jump=200)  # +-2 % a second
    assert taker.guard is not None
    assert taker.guard.is_denied(m.key)
    assert desk.published and desk.published[-1][1]["denied"] is True
    mid = 10_000 + 200  # last reference
    desk.takes.clear()
    # Flat: even a 5 % discount is not taken.
    taker.on_offer(m, offer("VOL", Side.SELL, int(mid * 0.95), ts=desk.now))
    taker.on_offer(m, offer("VOL", Side.BUY, int(mid * 1.05), ts=desk.now))
    assert desk.takes == []
    # Long 30: a bid at +0.3 % (edge 1 % x 0.25 = 0.25 %) unwinds; adding is refused.
    desk.positions[m.key] = 30
    taker.on_offer(m, offer("VOL", Side.SELL, int(mid * 0.90), ts=desk.now))
    assert desk.takes == []
    taker.on_offer(m, offer("VOL", Side.BUY, round(mid * 1.003), lots=50, ts=desk.now))
    assert desk.takes == [("VOL", Side.SELL, round(mid * 1.003), 10, desk.takes[0][4])]
    # ...but never more than the position: 10 in flight + 20 more, then nothing.
    taker.p = taker.p.model_copy(update={"order_size": 100})
    taker.on_offer(m, offer("VOL", Side.BUY, round(mid * 1.003), lots=50, ts=desk.now))
    taker.on_offer(m, offer("VOL", Side.BUY, round(mid * 1.003), lots=50, ts=desk.now))
    assert [t[3] for t in desk.takes] == [10, 20]
    assert taker.stats.unwinds == 2
    # An unwind below the narrow edge is refused too.
    desk.positions[m.key] = 60
    taker.on_offer(m, offer("VOL", Side.BUY, round(mid * 1.001), ts=desk.now))
    assert len(desk.takes) == 2


def test_calm_ticker_is_not_denylisted() -> None:
    desk = Desk()
    m = desk.add("CALM", 10_000)
    taker = desk.taker(guard={"threshold": 0.02, "window_s": 30, "min_samples": 5})
    _shake(desk, taker, m, steps=20, jump=1)
    assert taker.guard is not None
    assert not taker.guard.is_denied(m.key)
    taker.on_offer(m, offer("CALM", Side.SELL, 9_000, ts=desk.now))
    assert len(desk.takes) == 1


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match=r"edge \(0.05\) must lie in \[min_edge, max_edge\]"):
        OfferTakerParams(order_size=1, max_position=1, edge=0.05)
    with pytest.raises(ValueError, match="set max_position or max_notional"):
        OfferTakerParams(order_size=1)
    with pytest.raises(ValueError, match="target_win_rate"):
        OfferTakerParams(order_size=1, max_position=1, target_win_rate=(0.9, 0.1))


# -- end to end on offer_sim ---------------------------------------------------------------


@pytest.fixture(scope="module")
def offers_registry(registry: PluginRegistry) -> PluginRegistry:
    for module in (offers_module, offer_taker_module):
        registry.register_module(module)  # a no-op once the entry points provide them
    return registry


MANIFEST = """\
run: {{name: taker, duration: {duration}, seed: {seed}, sample_interval: 30s}}
exchanges:
  offers:
    type: offer_sim
    params:
      tickers: 300
      offers: {{rate: 800, noise: 0.01, bias: 0.002}}
      competitors: {{edge: 0.006, share: 0.9, reaction_ms: 5, min_reaction_ms: 3}}
      latency: {{market_data_ms: 2, order_ms: 5, jitter_ms: 1}}
strategies:
  taker:
    type: offer_taker
    exchange: offers
    symbols: ["*"]
    params: {{order_size: 100, max_notional: 20000, edge: 0.01, min_edge: 0.004}}
report: {{html: false, png: false}}
"""


def _run(registry: PluginRegistry, tmp_path: Path, seed: int = 4, duration: str = "20s") -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"m{seed}.yaml"
    path.write_text(MANIFEST.format(seed=seed, duration=duration))
    loaded = load_manifest(path, registry)
    return asyncio.run(
        run_manifest(loaded, registry, run_dir=tmp_path / f"r{seed}", install_signals=False)
    )


def test_end_to_end_takes_wins_and_loses_races(
    offers_registry: PluginRegistry, tmp_path: Path
) -> None:
    run = _run(offers_registry, tmp_path)
    taker: OfferTaker = run.strategies["taker"].strategy
    venue = run.venues["offers"]
    rows = run.summary_rows()
    fills = sum(r["fill_count"] for r in rows)
    assert venue.offers_sent > 10_000
    assert fills == venue.taken_by_us > 0
    assert venue.lost_races > 0 and taker.stats.lost > 0
    assert taker.stats.won == fills
    assert 0.004 <= taker.edge <= 0.03
    # Offers are taken only when cheap (rich) against the mid: the book is marked up.
    assert sum(r["pnl"] for r in rows) > 0
    # Nothing in flight is left counted against the limits.
    assert all(t.pending_buy == 0 and t.pending_sell == 0 for t in taker._tickers.values())
    limit_lots = 20_000 / 5  # max_notional / lowest price
    assert all(abs(r["inventory"]) <= limit_lots for r in rows)


def test_end_to_end_is_reproducible(offers_registry: PluginRegistry, tmp_path: Path) -> None:
    a = _run(offers_registry, tmp_path / "a", seed=9, duration="5s")
    b = _run(offers_registry, tmp_path / "b", seed=9, duration="5s")
    assert a.summary_rows() == b.summary_rows()
    assert a.strategies["taker"].strategy.stats.as_dict() == (
        b.strategies["taker"].strategy.stats.as_dict()
    )


class FragileTaker(OfferTaker):
    """An offer taker whose 500th ``on_offer`` raises; counts the offers it is shown
    and when its last order was made."""

    def __init__(self, ctx: StrategyContext, params: OfferTakerParams) -> None:
        super().__init__(ctx, params)
        self.shown = 0

    def on_offer(self, market: Market, offer: Offer, **kwargs: Any) -> None:
        self.shown += 1
        if self.shown == 500:
            raise RuntimeError("taker told to fail")
        super().on_offer(market, offer, **kwargs)


def test_a_taker_that_raises_is_halted_and_shown_no_more_offers(
    offers_registry: PluginRegistry, tmp_path: Path
) -> None:
    register_strategy(offers_registry, "fragile_taker", FragileTaker)
    path = tmp_path / "fragile.yaml"
    path.write_text(
        MANIFEST.format(seed=4, duration="5s").replace("type: offer_taker", "type: fragile_taker")
    )
    loaded = load_manifest(path, offers_registry)
    run = asyncio.run(
        run_manifest(loaded, offers_registry, run_dir=tmp_path / "run", install_signals=False)
    )
    srt = run.strategies["taker"]
    taker = srt.strategy
    assert isinstance(taker, FragileTaker)
    assert srt.halted and srt.errors == 1
    assert taker.shown == 500  # the venue kept offering (thousands more); none reached it
    venue = run.venues["offers"]
    assert isinstance(venue, offers_module.OfferSimExchange)
    assert venue.offers_sent > 2_000
    halted = [a for a in run.alerts if a.kind == "strategy_halted"]
    assert len(halted) == 1 and "on_offer" in halted[0].message
    # Nothing was ordered after the halt.
    assert all(o.created_ns <= halted[0].ts_ns for o in run.orders.all_orders())
