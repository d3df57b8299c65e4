"""Cross-venue taking: edges after fees, per-venue allocation, hedging unmatched legs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from quoteforge.book import BookState, L2Book
from quoteforge.engine import run_manifest
from quoteforge.manifest import load_manifest
from quoteforge.model import (
    Fill,
    Instrument,
    Liquidity,
    Order,
    OrderStatus,
    OrderUpdate,
    Side,
)
from quoteforge.registry import PluginRegistry
from quoteforge.strategies import cross_venue_taker
from quoteforge.strategies.cross_venue_taker import CrossVenueTaker, CrossVenueTakerParams
from quoteforge.strategy import Market, StrategyContext

ROOT = Path(__file__).resolve().parents[2]
A = Instrument("a", "BTC/USDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.001"))
B = Instrument("b", "BTC/USDT", "BTC", "USDT", Decimal("0.1"), Decimal("0.01"))


class Venues:
    """Two venues' books, positions and the orders a strategy takes."""

    def __init__(self, a: Instrument = A, b: Instrument = B) -> None:
        self.positions = {a.key: 0, b.key: 0}
        self.books = {a.key: L2Book(a), b.key: L2Book(b)}
        for book in self.books.values():
            book.state = BookState.LIVE
        self.markets = {
            i.key: Market(i, self.books[i.key], self.position_of(i.key)) for i in (a, b)
        }
        self.taken: list[Order] = []
        self.refuse = False
        self.t = 100.0

    def position_of(self, key: str) -> Callable[[], int]:
        return lambda: self.positions[key]

    def take(self, market: Market, side: Side, price: int, lots: int, offer: Any) -> Order | None:
        if self.refuse:
            return None
        order = Order(f"c{len(self.taken)}", market.venue, market.symbol, side, lots, price)
        self.taken.append(order)
        return order

    def strategy(self, **params: Any) -> CrossVenueTaker:
        ctx = StrategyContext(
            "xv",
            self.markets,
            lambda: int(self.t * 1e9),
            lambda k, q: None,
            lambda d, f: None,
            0,
            take=self.take,
        )
        defaults: dict[str, Any] = {"order_size": 1.0, "max_position": 5.0, "min_edge_bps": 5}
        defaults.update(params)
        return CrossVenueTaker(ctx, CrossVenueTakerParams(**defaults))

    def answer(self, strategy: CrossVenueTaker, order: Order, filled: int) -> None:
        """The venue fills ``filled`` lots of an IOC order and cancels the rest."""
        key = f"{order.venue}:{order.symbol}"
        market = self.markets[key]
        if filled:
            self.positions[key] += int(order.side) * filled
            fill = Fill(
                order.venue, order.symbol, f"f-{order.client_id}", order.client_id, order.side,
                order.price_ticks or 0, filled, Decimal(0), "USDT", Liquidity.TAKER, 0,
            )  # fmt: skip
            strategy.on_fill(market, fill)
        status = OrderStatus.FILLED if filled == order.qty_lots else OrderStatus.CANCELLED
        strategy.on_order_update(market, OrderUpdate(order.venue, order.client_id, status, 0))


def cross(v: Venues, ask_a: str = "100.00", bid_b: str = "100.20", size_b: int = 500) -> None:
    """Venue a offers at ``ask_a``, venue b bids ``bid_b``; both are otherwise wide."""
    v.books[A.key].apply_snapshot([(9000, 10_000)], [(A.price_to_ticks(ask_a), 2000)])
    v.books[B.key].apply_snapshot([(B.price_to_ticks(bid_b), size_b)], [(1100, 1000)])


def test_takes_a_cross_wider_than_fees_and_edge() -> None:
    v = Venues()
    cross(v)  # 20 bps gross
    strategy = v.strategy(taker_fee_bps={"a:BTC/USDT": 5, "b:BTC/USDT": 5})
    chance = strategy.best_opportunity()
    assert chance is not None and (chance.buy, chance.sell) == (A.key, B.key)
    assert chance.edge_bps == pytest.approx(10.0, abs=0.05)  # 20 minus two 5 bps fees
    strategy.on_book(v.markets[A.key])
    buy, sell = v.taken
    assert (buy.venue, buy.side, buy.price_ticks, buy.qty_lots) == ("a", Side.BUY, 10000, 1000)
    assert (sell.venue, sell.side, sell.price_ticks, sell.qty_lots) == ("b", Side.SELL, 1002, 100)


def test_legs_are_whole_order_steps_when_books_show_finer_sizes() -> None:
    # Both venues report 8 decimals; a takes orders in 0.001 steps, b in 0.01.
    fine = Decimal("0.00000001")
    a = Instrument("a", "BTC/USDT", "BTC", "USDT", Decimal("0.01"), fine, qty_step=Decimal("0.001"))
    b = Instrument("b", "BTC/USDT", "BTC", "USDT", Decimal("0.1"), fine, qty_step=Decimal("0.01"))
    v = Venues(a, b)
    v.books[a.key].apply_snapshot([(9000, 10**8)], [(10000, a.qty_to_lots("0.51234567"))])
    v.books[b.key].apply_snapshot([(1002, b.qty_to_lots("0.37654321"))], [(1100, 10**8)])
    v.strategy().on_book(v.markets[a.key])
    buy, sell = v.taken
    # 0.37654321 bid on b: 0.37 is what both venues' steps allow.
    assert (buy.venue, a.lots_to_qty(buy.qty_lots)) == ("a", Decimal("0.37"))
    assert (sell.venue, b.lots_to_qty(sell.qty_lots)) == ("b", Decimal("0.37"))
    assert a.check_order(buy.price_ticks, buy.qty_lots) is None
    assert b.check_order(sell.price_ticks, sell.qty_lots) is None


def test_no_trade_when_fees_eat_the_edge() -> None:
    v = Venues()
    cross(v)
    strategy = v.strategy(taker_fee_bps={"a:BTC/USDT": 8, "b:BTC/USDT": 8})
    assert strategy.best_opportunity() is None  # 20 - 16 = 4 bps < 5
    strategy.on_book(v.markets[A.key])
    assert v.taken == []


def test_size_is_bounded_by_the_bid_depth_and_max_position() -> None:
    v = Venues()
    cross(v, size_b=30)  # 0.3 BTC bid on b
    strategy = v.strategy()
    strategy.on_book(v.markets[A.key])
    assert [o.qty_lots for o in v.taken] == [300, 30]
    v = Venues()
    cross(v)
    v.positions[A.key] = 4800  # 4.8 long on a, 4.8 short on b: room for 0.2 more
    v.positions[B.key] = -480
    strategy = v.strategy()
    strategy.on_book(v.markets[A.key])
    assert v.taken[0].qty_lots == 200 and v.taken[1].qty_lots == 20


def test_buy_leg_walks_no_further_than_the_slippage_cap() -> None:
    v = Venues()
    v.books[A.key].apply_snapshot(
        [(9000, 10_000)], [(10000, 400), (10005, 400), (10050, 5000)]
    )  # fmt: skip
    v.books[B.key].apply_snapshot([(1003, 500)], [(1100, 1000)])
    strategy = v.strategy(max_slippage_bps=6)
    strategy.on_book(v.markets[A.key])
    buy, sell = v.taken
    # 100.05 is within 6 bps of 100.00, 100.50 is not: 0.8 bought, 0.8 sold.
    assert (buy.price_ticks, buy.qty_lots) == (10005, 800)
    assert sell.qty_lots == 80


def test_partial_fill_of_one_leg_is_hedged() -> None:
    v = Venues()
    cross(v)
    strategy = v.strategy()
    strategy.on_book(v.markets[A.key])
    buy, sell = v.taken
    v.answer(strategy, buy, 1000)  # bought 1.0 on a
    strategy.on_book(v.markets[A.key])
    assert len(v.taken) == 2  # the sell leg is still in flight: wait for it
    v.answer(strategy, sell, 40)  # sold only 0.4 on b: 0.6 long unmatched
    assert strategy.net_position() == Decimal("0.6")
    v.books[B.key].apply_snapshot([(1001, 1000)], [(1100, 1000)])  # the cross closed
    v.t += 0.1  # inside the cooldown: hedges do not wait for it
    strategy.on_book(v.markets[B.key])
    hedge = v.taken[2]
    assert (hedge.venue, hedge.side, hedge.price_ticks, hedge.qty_lots) == (
        "b",
        Side.SELL,
        1001,
        60,
    )
    v.answer(strategy, hedge, 60)
    assert strategy.net_position() == 0
    strategy.on_book(v.markets[B.key])
    assert len(v.taken) == 3  # flat and no edge: nothing more


def test_cooldown_spaces_trades_and_a_refusal_sends_nothing_more() -> None:
    v = Venues()
    cross(v)
    strategy = v.strategy(cooldown_s=1)
    strategy.on_book(v.markets[A.key])
    buy, sell = v.taken
    v.answer(strategy, buy, 1000)
    v.answer(strategy, sell, 100)
    strategy.on_book(v.markets[A.key])
    assert len(v.taken) == 2
    v.t += 1
    v.refuse = True  # risk refuses the buy leg: no sell leg goes out alone
    strategy.on_book(v.markets[A.key])
    assert len(v.taken) == 2 and len(strategy.inflight) == 0


def test_orders_without_an_answer_are_forgotten_after_the_timeout() -> None:
    v = Venues()
    cross(v)
    strategy = v.strategy(order_timeout_s=5, cooldown_s=0)
    strategy.on_book(v.markets[A.key])
    assert len(strategy.inflight) == 2
    v.t += 6
    strategy.on_book(v.markets[A.key])
    assert len(v.taken) == 4


def test_bad_params_and_legs_are_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError, match="exceeds max_position"):
        CrossVenueTakerParams(order_size=2, max_position=1)
    with pytest.raises(ValidationError, match="taker_fee_bps"):
        CrossVenueTakerParams(order_size=1, max_position=1, taker_fee_bps={"a": -1})
    v = Venues()
    with pytest.raises(ValueError, match="at least two legs"):
        v.strategy(legs=["a:BTC/USDT"])
    with pytest.raises(ValueError, match="add its symbol"):
        v.strategy(legs=["a:BTC/USDT", "c:BTC/USDT"])


def test_example_manifest_takes_and_stays_hedged(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register_module(cross_venue_taker)  # a no-op once the entry point provides it
    monkeypatch.chdir(ROOT)
    loaded = load_manifest(
        ROOT / "examples" / "cross_venue_taker.yaml",
        registry,
        overrides=["run.duration=30s", "run.watch_manifest=false"],
    )
    run = asyncio.run(run_manifest(loaded, registry, run_dir=tmp_path, install_signals=False))
    rows = {r["market"]: r for r in run.summary_rows()}
    # Two exchanges, one pair: the strategy takes on both.
    assert rows["venue_a:BTC/USDT"]["fill_count"] > 0
    assert rows["venue_b:BTC/USDT"]["fill_count"] > 0
    strategy = run.strategies["xv"].strategy
    assert isinstance(strategy, CrossVenueTaker)
    assert not run.strategies["xv"].halted
    # Every trade bought on one market and sold on the other: net flat, legs bounded.
    assert abs(strategy.net_position()) < Decimal("0.05")
    for market in strategy.legs.values():
        assert abs(market.qty(market.position_lots)) <= Decimal("0.5")
