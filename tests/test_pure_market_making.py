"""Quoting rules of the pure market-making strategy, through its public interface."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger
from own_strategies import register_strategy
from pydantic import ValidationError

from quoteforge.book import BookState, L2Book
from quoteforge.engine import Run, run_manifest
from quoteforge.exchanges.replay import ReplayExchange
from quoteforge.manifest import load_manifest
from quoteforge.model import Fill, Instrument, Liquidity, OrderStatus, Quote, Side
from quoteforge.registry import PluginRegistry
from quoteforge.strategies._pmm_cache import QuoteCache
from quoteforge.strategies.pure_market_making import PureMarketMaking, PureMarketMakingParams
from quoteforge.strategy import Market, Speed, StrategyContext

INST = Instrument("sim", "BTC/USDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.001"))


class Position:
    def __init__(self) -> None:
        self.lots = 0

    def __call__(self) -> int:
        return self.lots


def make(mid: float = 100.0, **params: object) -> tuple[PureMarketMaking, Market, Position, L2Book]:
    book = L2Book(INST)
    ticks = round(mid / 0.01)
    book.apply_snapshot([(ticks - 5, 1000)], [(ticks + 5, 1000)])
    book.state = BookState.LIVE
    pos = Position()
    market = Market(INST, book, pos)
    ctx = StrategyContext(
        "mm", {market.key: market}, lambda: 0, lambda k, q: None, lambda d, f: None, 0
    )
    defaults: dict[str, object] = {"order_size": 1.0, "spread_bps": 10}
    defaults.update(params)
    strategy = PureMarketMaking(ctx, PureMarketMakingParams(**defaults))
    return strategy, market, pos, book


def prices(quotes: list, side: Side) -> list[float]:
    return [q.price_ticks * 0.01 for q in quotes if q.side is side]


def test_symmetric_levels_around_mid() -> None:
    strategy, market, _, _ = make(levels=3, level_spacing_bps=5, level_size_increment=0.5)
    quotes = strategy.on_book(market)
    assert quotes is not None
    assert prices(quotes, Side.BUY) == pytest.approx([99.90, 99.85, 99.80])
    assert prices(quotes, Side.SELL) == pytest.approx([100.10, 100.15, 100.20])
    assert [q.qty_lots for q in quotes if q.side is Side.BUY] == [1000, 1500, 2000]
    assert all(q.post_only for q in quotes)


def test_bids_round_down_asks_round_up() -> None:
    strategy, market, _, book = make(spread_bps=1)
    book.apply_snapshot([(10000, 5)], [(10001, 5)])  # mid 100.005
    quotes = strategy.on_book(market)
    assert quotes is not None
    # Wanted 99.995 and 100.015: passive rounding never quotes tighter than asked.
    assert [q.price_ticks for q in quotes] == [9999, 10002]


def test_inventory_skews_prices_and_sizes_against_the_position() -> None:
    strategy, market, pos, _ = make(inventory_limit=10, inventory_skew_bps=20)
    flat = strategy.wanted_quotes(market)
    pos.lots = 5000  # long 5 of a 10 limit: half skew
    long = strategy.wanted_quotes(market)
    assert prices(long, Side.BUY)[0] < prices(flat, Side.BUY)[0]
    assert prices(long, Side.SELL)[0] < prices(flat, Side.SELL)[0]
    # The centre moved down by 10 bps = half of the 20 bps skew.
    shift = prices(flat, Side.SELL)[0] - prices(long, Side.SELL)[0]
    assert shift == pytest.approx(100 * 10e-4, abs=0.011)
    buy_size = next(q.qty_lots for q in long if q.side is Side.BUY)
    sell_size = next(q.qty_lots for q in long if q.side is Side.SELL)
    assert buy_size == 500 and sell_size == 1000  # the growing side shrinks
    pos.lots = 10_000  # at the limit: no more bids at all
    assert prices(strategy.wanted_quotes(market), Side.BUY) == []
    pos.lots = -10_000
    assert prices(strategy.wanted_quotes(market), Side.SELL) == []


def test_inventory_target_is_the_neutral_point() -> None:
    strategy, market, pos, _ = make(inventory_limit=10, inventory_skew_bps=20, inventory_target=3)
    pos.lots = 3000
    quotes = strategy.wanted_quotes(market)
    assert prices(quotes, Side.BUY) == pytest.approx([99.90])
    assert prices(quotes, Side.SELL) == pytest.approx([100.10])


def test_refresh_tolerance_keeps_quotes_until_price_moves_enough() -> None:
    strategy, market, _, book = make(refresh_tolerance_bps=5)
    assert strategy.on_book(market) is not None
    book.apply_snapshot([(9997, 1000)], [(10007, 1000)])  # mid +1 tick = 1 bps
    book.state = BookState.LIVE
    assert strategy.on_book(market) is None
    book.apply_snapshot([(10005, 1000)], [(10015, 1000)])  # mid +10 ticks = 10 bps
    quotes = strategy.on_book(market)
    assert quotes is not None and prices(quotes, Side.BUY)[0] == pytest.approx(
        99.99
    )  # 99.9999 floored


def test_fill_forces_a_requote_even_within_tolerance() -> None:
    strategy, market, pos, _ = make(
        refresh_tolerance_bps=50, inventory_limit=10, inventory_skew_bps=5
    )
    assert strategy.on_book(market) is not None
    pos.lots = 1000
    strategy.on_fill(market, None)  # type: ignore[arg-type]
    assert strategy.on_book(market) is not None


def test_price_band() -> None:
    strategy, market, _, _ = make(price_ceiling=99.5)
    quotes = strategy.on_book(market)
    assert quotes is not None and prices(quotes, Side.BUY) == [] and prices(quotes, Side.SELL)
    strategy, market, _, _ = make(price_floor=100.5)
    quotes = strategy.on_book(market)
    assert quotes is not None and prices(quotes, Side.SELL) == [] and prices(quotes, Side.BUY)


def test_empty_book_pulls_quotes() -> None:
    strategy, market, _, book = make()
    book.clear()
    assert strategy.on_book(market) == []


def test_a_book_side_emptied_after_quotes_were_kept_pulls_them() -> None:
    """Quotes kept within tolerance (priced, not only anchored: a price limit is set),
    then one side of the book empties: there is no reference price, so the quotes go;
    they were kept, the pricing of before taken for this one."""
    strategy, market, _, book = make(refresh_tolerance_bps=5, price_ceiling=1000)
    assert strategy.on_book(market)
    book.apply_snapshot([(9997, 1000)], [(10007, 1000)])  # mid +1 tick: within tolerance
    book.state = BookState.LIVE
    assert strategy.on_book(market) is None
    book.apply_snapshot([(9997, 1000)], [])  # the asks are gone: no mid
    book.state = BookState.LIVE
    assert strategy.on_book(market) == []


def test_a_size_the_venue_would_refuse_is_said_once_per_side() -> None:
    # A bot whose every quote is below the venue's minimums quotes nothing: it says so,
    # once per side, naming the venue's rule and the fix.
    inst = Instrument(
        "sim", "BTC/USDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.001"),
        min_notional=Decimal("5"),
    )  # fmt: skip
    book = L2Book(inst)
    book.apply_snapshot([(9995, 1000)], [(10005, 1000)])  # mid 100
    book.state = BookState.LIVE
    pos = Position()
    market = Market(inst, book, pos)
    ctx = StrategyContext(
        "mm", {market.key: market}, lambda: 0, lambda k, q: None, lambda d, f: None, 0
    )
    params = PureMarketMakingParams(order_size=0.04, spread_bps=10, inventory_limit=1)
    strategy = PureMarketMaking(ctx, params)
    said: list[str] = []
    sink = logger.add(said.append, level="WARNING", format="{message}")
    try:
        assert strategy.wanted_quotes(market) == []
        move(book, 101)
        assert strategy.wanted_quotes(market) == []
        assert [m.split(" is refused")[0] for m in said] == [
            "mm on sim:BTC/USDT: no buy is quoted: 0.04 of BTC at 99.9",
            "mm on sim:BTC/USDT: no sell is quoted: 0.04 of BTC at 100.1",
        ]
        assert "(notional 3.996 below minimum 5); raise order_size" in said[0]
        # Shrunk by the inventory skew (a long position): the bid's absence is the rule.
        said.clear()
        strategy.on_params(
            PureMarketMakingParams(order_size=0.06, spread_bps=10, inventory_limit=1)
        )
        pos.lots = 500  # 0.5 BTC long: the bid shrinks to 0.03, below the minimum
        quotes = strategy.wanted_quotes(market)
        assert [q.side for q in quotes] == [Side.SELL]
        assert said == []
        # Below the order step: it rounds to nothing.
        pos.lots = 0
        strategy.on_params(PureMarketMakingParams(order_size=0.0004, spread_bps=10))
        assert strategy.wanted_quotes(market) == []
        assert "0.0004 of BTC" in said[0] and "rounds down to 0 at the order step 0.001" in said[0]
    finally:
        logger.remove(sink)


def test_bad_params_are_refused_with_reason() -> None:
    with pytest.raises(ValidationError, match="inventory_skew_bps needs inventory_limit"):
        PureMarketMakingParams(order_size=1, inventory_skew_bps=5)
    with pytest.raises(ValidationError, match="price_floor must be below price_ceiling"):
        PureMarketMakingParams(order_size=1, price_floor=10, price_ceiling=9)
    with pytest.raises(ValidationError, match="extra"):
        PureMarketMakingParams(order_size=1, sprd=3)  # type: ignore[call-arg]


# -- timers, ages, targets, bands, hanging orders and reference markets ------------------

INST_B = Instrument("sim", "BTC/USDC", "BTC", "USDC", Decimal("0.01"), Decimal("0.001"))
NS = 1_000_000_000


class Desk:
    """A settable clock, captured timers and captured set_quotes calls."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.timers: list[tuple[float, object]] = []
        self.sent: list[tuple[str, list]] = []

    def schedule(self, delay_ns: int, fn: object) -> None:
        self.timers.append((self.t + delay_ns / NS, fn))

    def advance(self, seconds: float) -> None:
        """Move the clock, firing due timers in time order (timers may re-arm)."""
        end = self.t + seconds
        while True:
            due = sorted((t, i) for i, (t, _) in enumerate(self.timers) if t <= end)
            if not due:
                break
            at, index = due[0]
            _, fn = self.timers.pop(index)
            self.t = at
            fn()  # type: ignore[operator]
        self.t = end


def book_at(inst: Instrument, mid: float) -> L2Book:
    book = L2Book(inst)
    ticks = round(mid / 0.01)
    book.apply_snapshot([(ticks - 5, 1000)], [(ticks + 5, 1000)])
    book.state = BookState.LIVE
    return book


def timed(
    mid: float = 100.0, symbols: tuple[Instrument, ...] = (INST,), **params: object
) -> tuple[PureMarketMaking, dict[str, Market], Desk, Position]:
    desk = Desk()
    pos = Position()
    markets = {i.key: Market(i, book_at(i, mid), pos) for i in symbols}
    ctx = StrategyContext(
        "mm",
        markets,
        lambda: int(desk.t * NS),
        lambda k, q: desk.sent.append((k, q)),
        desk.schedule,
        0,
    )
    defaults: dict[str, object] = {"order_size": 1.0, "spread_bps": 10}
    defaults.update(params)
    strategy = PureMarketMaking(ctx, PureMarketMakingParams(**defaults))
    strategy.on_start()
    return strategy, markets, desk, pos


def move(book: L2Book, mid: float) -> None:
    ticks = round(mid / 0.01)
    book.apply_snapshot([(ticks - 5, 1000)], [(ticks + 5, 1000)])


def fill(side: Side, price_ticks: int, lots: int) -> Fill:
    return Fill(
        "sim", "BTC/USDT", f"f{price_ticks}{lots}", "c1", side, price_ticks, lots,
        Decimal(0), "USDT", Liquidity.MAKER, 0,
    )  # fmt: skip


def test_defaults_start_no_timer() -> None:
    _, _, desk, _ = timed()
    assert desk.timers == []


def test_order_refresh_time_requotes_within_tolerance() -> None:
    strategy, markets, desk, _ = timed(refresh_tolerance_bps=50, order_refresh_time=10)
    market = markets[INST.key]
    first = strategy.on_book(market)
    assert first is not None and prices(first, Side.BUY) == pytest.approx([99.90])
    move(market.book, 100.2)  # 20 bps: inside the tolerance, on_book keeps the quotes
    assert strategy.on_book(market) is None
    desk.advance(5)
    assert desk.sent == []  # not yet due
    desk.advance(6)
    assert len(desk.sent) == 1
    key, quotes = desk.sent[0]
    assert key == INST.key and prices(quotes, Side.BUY) == pytest.approx([100.0998], abs=0.01)


def test_max_order_age_cancels_then_replaces_at_the_same_price() -> None:
    strategy, markets, desk, _ = timed(max_order_age=4)
    market = markets[INST.key]
    quotes = strategy.on_book(market)
    assert quotes is not None and len(quotes) == 2
    desk.advance(3)
    assert desk.sent == []
    desk.advance(2)
    # First the aged orders are pulled, then the same quotes come back as new orders.
    assert [q for _, q in desk.sent] == [[], quotes]
    desk.sent.clear()
    desk.advance(2)
    assert desk.sent == []  # the replacement starts a fresh age
    desk.advance(3)
    assert [q for _, q in desk.sent] == [[], quotes]


def test_changed_quote_restarts_its_age() -> None:
    strategy, markets, desk, _ = timed(max_order_age=4, refresh_tolerance_bps=0)
    market = markets[INST.key]
    strategy.on_book(market)
    desk.advance(3)
    move(market.book, 101.0)
    assert strategy.on_book(market) is not None
    desk.advance(2)  # 5 s since the first quote, 2 s since the new one
    assert desk.sent == []


def test_inventory_target_base_pct_sets_the_target_from_portfolio_value() -> None:
    strategy, markets, _, pos = timed(
        inventory_target_base_pct=0.75,
        base_balance=1.0,
        quote_balance=100.0,
        inventory_limit=1.0,
        inventory_skew_bps=20,
    )
    market = markets[INST.key]
    # Value 1 * 100 + 100 = 200; 75% in base is 1.5 BTC: half a BTC more than held.
    assert strategy.target_position(market) == pytest.approx(0.5)
    assert strategy.inventory_ratio(market) == pytest.approx(-0.5)
    quotes = strategy.wanted_quotes(market)
    assert prices(quotes, Side.BUY)[0] > 99.90  # skewed up to buy toward the target
    # Buying 0.5 at 100 spends 50 USDT: the position now sits on the target.
    pos.lots = 500
    strategy.on_fill(market, fill(Side.BUY, 10000, 500))
    assert strategy.target_position(market) == pytest.approx(0.5)
    assert strategy.inventory_ratio(market) == pytest.approx(0.0)


def test_inventory_target_base_pct_needs_balances_and_limit() -> None:
    with pytest.raises(ValidationError, match="base_balance"):
        PureMarketMakingParams(order_size=1, inventory_target_base_pct=0.5, inventory_limit=1)
    with pytest.raises(ValidationError, match="needs inventory_limit"):
        PureMarketMakingParams(order_size=1, inventory_target_base_pct=0.5, base_balance=1)


def test_minimum_spread_pulls_a_side_that_would_be_inside_it() -> None:
    strategy, markets, _, pos = timed(spread_bps=10, minimum_spread_bps=10)
    market = markets[INST.key]
    assert len(strategy.wanted_quotes(market)) == 2  # exactly at the minimum: kept
    strategy, markets, _, pos = timed(
        spread_bps=10, minimum_spread_bps=8, inventory_limit=10, inventory_skew_bps=10
    )
    market = markets[INST.key]
    pos.lots = 5000  # skew 5 bps down: the ask at 5 bps from the mid is inside 8 bps
    quotes = strategy.wanted_quotes(market)
    assert prices(quotes, Side.SELL) == []
    assert prices(quotes, Side.BUY) == pytest.approx([99.85])


def test_moving_price_band_follows_a_slow_ewma() -> None:
    strategy, markets, desk, _ = timed(price_band_bps=100, price_band_ewma_s=60)
    market = markets[INST.key]
    assert len(strategy.wanted_quotes(market)) == 2  # the EWMA starts at the mid
    desk.advance(1)
    move(market.book, 103.0)  # a jump: the band (about 99..101) is still around 100
    quotes = strategy.wanted_quotes(market)
    assert prices(quotes, Side.BUY) == []
    assert prices(quotes, Side.SELL) == pytest.approx([103.11])
    desk.advance(600)  # ten time constants later the band has caught up
    assert len(strategy.wanted_quotes(market)) == 2
    move(market.book, 97.0)
    quotes = strategy.wanted_quotes(market)
    assert prices(quotes, Side.SELL) == [] and len(prices(quotes, Side.BUY)) == 1


def test_hanging_order_keeps_its_price_until_it_fills() -> None:
    strategy, markets, _, _ = timed(hanging_orders=True, hanging_orders_cancel_age=60)
    market = markets[INST.key]
    quotes = strategy.on_book(market)
    assert quotes is not None
    ask = next(q for q in quotes if q.side is Side.SELL)
    strategy.on_fill(market, fill(Side.BUY, 9990, 1000))
    move(market.book, 99.0)
    quotes = strategy.on_book(market)
    assert quotes is not None
    assert prices(quotes, Side.BUY) == pytest.approx([98.90])  # re-centred
    assert ask in quotes  # the ask still works at 100.10
    assert strategy.hanging(market) == [ask]
    strategy.on_fill(market, fill(Side.SELL, ask.price_ticks, 400))
    assert strategy.hanging(market) == [ask]  # part of it traded: still hanging
    strategy.on_fill(market, fill(Side.SELL, ask.price_ticks, 600))
    assert strategy.hanging(market) == []
    quotes = strategy.on_book(market)
    assert quotes is not None and prices(quotes, Side.SELL) == pytest.approx([99.10])


def test_hanging_order_is_recentred_after_its_cancel_age() -> None:
    strategy, markets, desk, _ = timed(hanging_orders=True, hanging_orders_cancel_age=20)
    market = markets[INST.key]
    strategy.on_book(market)
    strategy.on_fill(market, fill(Side.SELL, 10010, 1000))
    move(market.book, 101.0)
    quotes = strategy.on_book(market)
    assert quotes is not None and prices(quotes, Side.BUY) == pytest.approx([99.90])
    desk.advance(25)  # the timer notices the age without any book change
    assert strategy.hanging(market) == []
    assert desk.sent and prices(desk.sent[-1][1], Side.BUY) == pytest.approx([100.89])


def test_venue_reference_quotes_one_market_from_another_book() -> None:
    strategy, markets, desk, _ = timed(
        symbols=(INST, INST_B), reference="venue", reference_market="BTC/USDT"
    )
    ref, quoted = markets[INST.key], markets[INST_B.key]
    assert strategy.quoted_markets == [INST_B.key]
    move(ref.book, 110.0)
    assert strategy.on_book(ref) == []  # never quotes the reference market
    assert len(desk.sent) == 1
    key, quotes = desk.sent[0]
    assert key == INST_B.key
    assert prices(quotes, Side.BUY) == pytest.approx([109.89])  # from 110, not 100
    assert strategy.on_book(quoted) is None  # the quoted market's own book moved nothing


def test_venue_reference_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="add its symbol to the strategy's symbols"):
        timed(reference="venue", reference_market="binance:BTCUSDT")
    with pytest.raises(ValidationError, match="needs reference_market"):
        PureMarketMakingParams(order_size=1, reference="venue")
    with pytest.raises(ValidationError, match="bus"):
        PureMarketMakingParams(order_size=1, reference="external")
    with pytest.raises(ValueError, match="read, never quoted"):
        timed(
            symbols=(INST, INST_B),
            reference="venue",
            reference_market="BTC/USDT",
            quote_symbols=["BTC/USDT", "BTC/USDC"],
        )


E2E = """\
run: {{name: pmm_age, duration: 20s, seed: 3}}
exchanges:
  sim:
    type: sim
    params:
      markets:
        BTC/USDT:
          tick_size: "0.01"
          lot_size: "0.0001"
          initial_price: 30000
          process: {{model: brownian, sigma: 0.00001}}
          flow: {{arrival_rate: 1.0, reach: 5.0, size: 0.01}}
          liquidity: {{levels: 3, distance: 5.0, spacing: 2.0, size: 0.2}}
strategies:
  mm:
    type: pure_market_making
    exchange: sim
    symbols: BTC/USDT
    params: {{spread_bps: 300, order_size: 0.01, refresh_tolerance_bps: 1000, {extra}}}
report: {{html: false, png: false}}
"""


def run_pmm(tmp_path: Path, registry: PluginRegistry, extra: str) -> Run:
    path = tmp_path / "pmm.yaml"
    path.write_text(E2E.format(extra=extra))
    loaded = load_manifest(path, registry)
    return asyncio.run(
        run_manifest(loaded, registry, run_dir=tmp_path / "run", install_signals=False)
    )


def test_max_order_age_replaces_resting_orders_end_to_end(
    tmp_path: Path, registry: PluginRegistry
) -> None:
    run = run_pmm(tmp_path, registry, "max_order_age: 4")
    orders = run.orders.all_orders()
    bids = [o for o in orders if o.side is Side.BUY]
    # 20 s at a 4 s age: the bid was re-placed several times at (nearly) one price,
    # each earlier order cancelled by the venue rather than left working.
    assert len(bids) >= 4
    assert {o.status for o in bids[:-1]} == {OrderStatus.CANCELLED}
    ticks = [o.price_ticks for o in bids if o.price_ticks is not None]
    assert len(ticks) == len(bids)  # limit orders, each with a price
    assert max(ticks) - min(ticks) < 100
    assert len({o.client_id for o in bids}) == len(bids)


def test_without_max_order_age_the_same_orders_keep_resting(
    tmp_path: Path, registry: PluginRegistry
) -> None:
    run = run_pmm(tmp_path, registry, "inventory_target: 0")
    bids = [o for o in run.orders.all_orders() if o.side is Side.BUY]
    assert len(bids) == 1


def test_only_the_best_prices_matter_when_quoting_from_the_mid() -> None:
    assert make()[0].speed == Speed(on_book="best_prices")
    assert make(reference="microprice")[0].speed == Speed(on_book="best_levels")
    assert make(price_band_bps=10)[0].speed == Speed(on_book="best_levels")
    assert make(hanging_orders=True)[0].speed == Speed(on_book="best_levels")


class _PmmSeeingSizes(PureMarketMaking):
    """The same strategy, called on every change of the best levels' sizes too."""

    @property
    def speed(self) -> Speed:
        return Speed(on_book="best_levels")


def _replay_fills(run: Run) -> list[tuple[str, Side, int, int, int]]:
    venue = run.venues["binance"]
    assert isinstance(venue, ReplayExchange)
    return [(f.client_id, f.side, f.price_ticks, f.qty_lots, f.ts_ns) for f in venue.fills.fills]


def test_skipping_size_only_changes_leaves_the_backtest_unchanged(
    tmp_path: Path, registry: PluginRegistry
) -> None:
    register_strategy(registry, "pmm_seeing_sizes", _PmmSeeingSizes)
    examples = Path(__file__).resolve().parent.parent / "examples"
    data = examples / "data" / "ethusdt_binance.jsonl"
    text = (examples / "backtest.yaml").read_text(encoding="utf-8")
    text = text.replace(
        "data: examples/data/ethusdt_binance.jsonl", f"data: {json.dumps(str(data))}"
    )
    runs = []
    for kind in ("pure_market_making", "pmm_seeing_sizes"):
        path = tmp_path / f"{kind}.yaml"
        path.write_text(text.replace("type: pure_market_making", f"type: {kind}"))
        loaded = load_manifest(path, registry)
        runs.append(
            asyncio.run(
                run_manifest(
                    loaded,
                    registry,
                    run_dir=tmp_path / kind,
                    manifest_path=path,
                    install_signals=False,
                )
            )
        )
    mid_only, seeing_sizes = runs
    fills = [_replay_fills(run) for run in runs]
    assert fills[0] and fills[0] == fills[1]
    assert [o.client_id for o in mid_only.orders.all_orders()] == [
        o.client_id for o in seeing_sizes.orders.all_orders()
    ]
    # The strategy was asked less often: only when a best price moved (or after fills).
    assert 0 < mid_only.tick_to_orders.count < seeing_sizes.tick_to_orders.count


class _NoShortcuts(QuoteCache):
    """A quote cache that never answers: no anchor holds, nothing is remembered."""

    def recall(self, key: str, params: Any, ref: float, ratio: float) -> None:
        return None

    def already_kept(self, key: str, working: list[Quote]) -> bool:
        return False

    def holds(
        self, key: str, working: list[Quote], params: Any, ratio: float, center: float
    ) -> bool:
        return False


class _CountingCache(QuoteCache):
    """The strategy's own cache, counting the answers each shortcut gave."""

    def __init__(self) -> None:
        super().__init__()
        self.answered = {"anchor": 0, "memo": 0, "kept": 0}

    def recall(self, key: str, params: Any, ref: float, ratio: float) -> list[Quote] | None:
        known = super().recall(key, params, ref, ratio)
        self.answered["memo"] += known is not None
        return known

    def already_kept(self, key: str, working: list[Quote]) -> bool:
        kept = super().already_kept(key, working)
        self.answered["kept"] += kept
        return kept

    def holds(
        self, key: str, working: list[Quote], params: Any, ratio: float, center: float
    ) -> bool:
        held = super().holds(key, working, params, ratio, center)
        self.answered["anchor"] += held
        return held


def _decisions_with_and_without_caches(
    params: PureMarketMakingParams, min_notional: str, steps: list[tuple[int, int, int]]
) -> dict[str, int]:
    """Drive the strategy and a copy of it without speed caches through the same book
    moves and fills; assert they decide alike at every step; return how often each
    shortcut answered for the cached one."""
    inst = Instrument(
        "sim",
        "BTC/USDT",
        "BTC",
        "USDT",
        Decimal("0.01"),
        Decimal("0.001"),
        min_notional=Decimal(min_notional),
    )
    book = L2Book(inst)
    pos = Position()
    market = Market(inst, book, pos)
    makers = []
    for cache in (_CountingCache(), _NoShortcuts()):
        ctx = StrategyContext(
            "mm", {market.key: market}, lambda: 0, lambda k, q: None, lambda d, f: None, 0
        )
        maker = PureMarketMaking(ctx, params)
        maker._cache = cache
        makers.append(maker)
    bid = 10_000
    for i, (move, width, fill_lots) in enumerate(steps):
        bid += move
        book.apply_snapshot([(bid, 1000)], [(bid + width, 1000)])
        book.state = BookState.LIVE
        if fill_lots:
            pos.lots += fill_lots
            for strategy in makers:
                strategy.on_fill(market, None)  # type: ignore[arg-type]
        fast, slow = (strategy.on_book(market) for strategy in makers)
        assert fast == slow, f"step {i}: {fast} != {slow}"
    return makers[0]._cache.answered  # type: ignore[attr-defined]


@settings(max_examples=150, deadline=None)
@given(
    levels=st.integers(1, 3),
    spread=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    spacing=st.sampled_from([0.0, 1.0, 4.0]),
    tolerance=st.sampled_from([0.0, 0.3, 1.0, 2.0, 8.0]),
    skew=st.sampled_from([0.0, 5.0, 30.0]),
    min_notional=st.sampled_from(["0", "5", "99.5"]),
    steps=st.lists(
        st.tuples(st.integers(-40, 40), st.integers(1, 12), st.sampled_from([0, 0, 0, 400, -700])),
        min_size=1,
        max_size=60,
    ),
)
def test_refresh_shortcut_changes_no_decision(
    levels: int,
    spread: float,
    spacing: float,
    tolerance: float,
    skew: float,
    min_notional: str,
    steps: list[tuple[int, int, int]],
) -> None:
    """Keeping quotes without pricing them (centre within the worked-out slack) and the
    remembered pricings give exactly the decisions of pricing and comparing on every
    refresh, through random mids, spreads, position changes and fills."""
    params = PureMarketMakingParams(
        order_size=1.0,
        levels=levels,
        spread_bps=spread,
        level_spacing_bps=spacing,
        refresh_tolerance_bps=tolerance,
        inventory_limit=3.0,
        inventory_skew_bps=skew,
    )
    _decisions_with_and_without_caches(params, min_notional, steps)


def test_each_refresh_shortcut_is_taken_and_decides_alike() -> None:
    """Markets wandering within and out of the tolerance, with a fill: the anchor (wide
    tolerance), the memo and the kept mark (two ticks of tolerance, too narrow for an
    anchor) each answer some refreshes, and every decision is the one full pricing
    makes (the property test above would pass vacuously otherwise)."""
    wander = [(1, 2, 0), (-1, 2, 0), (2, 2, 0), (-2, 2, 0), (1, 2, 0), (0, 2, 0), (-1, 2, 0)]
    steps = wander + [(12, 2, 0), (-12, 2, 0)] + wander + [(0, 2, 400)] + wander * 2
    answered: dict[str, int] = {}
    for tolerance in (8.0, 2.0):
        params = PureMarketMakingParams(
            order_size=1.0,
            levels=2,
            spread_bps=3.0,
            level_spacing_bps=1.0,
            refresh_tolerance_bps=tolerance,
            inventory_limit=3.0,
            inventory_skew_bps=5.0,
        )
        for name, count in _decisions_with_and_without_caches(params, "0", steps).items():
            answered[name] = answered.get(name, 0) + count
    assert min(answered.values()) > 0, answered
