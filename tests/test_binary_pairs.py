"""Binary events sold as two tokens (Instrument.complement): the portfolio's combined
position, and adaptive_binary quoting both tokens as one market without crossing itself."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from quoteforge.book import L2Book
from quoteforge.model import Fill, Instrument, InstrumentKind, Liquidity, Quote, Side
from quoteforge.portfolio import Portfolio
from quoteforge.strategies.adaptive_binary import AdaptiveBinary, AdaptiveBinaryParams
from quoteforge.strategy import Market, StrategyContext

YES, NO = "ev/YES", "ev/NO"


def token(symbol: str, complement: str) -> Instrument:
    return Instrument(
        "pm",
        symbol,
        symbol,
        "USDC",
        Decimal("0.01"),
        Decimal("0.01"),
        kind=InstrumentKind.BINARY,
        complement=complement,
    )


def fill(symbol: str, side: Side, ticks: int, lots: int, n: int) -> Fill:
    return Fill(
        "pm", symbol, f"f{n}", "c", side, ticks, lots, Decimal(0), "USDC", Liquidity.MAKER, n
    )


def test_combined_position_nets_the_complement() -> None:
    pf = Portfolio([token(YES, NO), token(NO, YES)])
    pf.apply_fill(fill(YES, Side.BUY, 40, 3000, 1))  # 30 YES
    pf.apply_fill(fill(NO, Side.BUY, 55, 1000, 2))  # 10 NO
    assert pf.combined_position("pm:ev/YES") == Decimal(20)
    assert pf.combined_position("pm:ev/NO") == Decimal(-20)
    single = Portfolio([token("solo/YES", "")])
    single.apply_fill(fill("solo/YES", Side.BUY, 40, 500, 3))
    assert single.combined_position("pm:solo/YES") == Decimal(5)


class Desk:
    """Two token markets, our positions and what the strategy set on each."""

    def __init__(self, yes_lots: int = 0, no_lots: int = 0) -> None:
        self.positions = {YES: yes_lots, NO: no_lots}
        self.books: dict[str, L2Book] = {}
        self.markets: dict[str, Market] = {}
        for symbol, other in ((YES, NO), (NO, YES)):
            book = L2Book(token(symbol, other))
            self.books[symbol] = book
            market = Market(book.instrument, book, self.position_of(symbol))
            self.markets[market.key] = market
        # One book seen from two sides: YES 0.40 / 0.60, NO 0.40 / 0.60.
        self.books[YES].apply_snapshot([(40, 10_000)], [(60, 10_000)])
        self.books[NO].apply_snapshot([(40, 10_000)], [(60, 10_000)])
        self.set: dict[str, list[Quote]] = {}
        ctx = StrategyContext("ev", self.markets, lambda: 0, self.set.__setitem__, _never, 1)
        params = AdaptiveBinaryParams(order_size=10, inventory_limit=100, base_spread=0.04)
        self.strategy = AdaptiveBinary(ctx, params)

    def position_of(self, symbol: str) -> Callable[[], int]:
        return lambda: self.positions[symbol]

    def quotes(self, symbol: str) -> dict[str, list[Quote]]:
        mine = self.strategy.on_book(self.markets[f"pm:{symbol}"]) or []
        out = {symbol: list(mine)}
        out.update({k.removeprefix("pm:"): v for k, v in self.set.items()})
        return out


def _never(delay_ns: int, fn: Any) -> None:
    raise AssertionError("no timers expected")


def as_yes(symbol: str, q: Quote) -> tuple[Side, int]:
    """A token quote as exposure to YES: buying NO at p is selling YES at 1 - p."""
    if symbol == YES:
        return q.side, q.price_ticks
    return q.side.opposite, 100 - q.price_ticks


def test_flat_pair_bids_yes_and_bids_no_without_crossing() -> None:
    desk = Desk()
    quotes = desk.quotes(YES)
    assert [q.side for q in quotes[YES]] == [Side.BUY]
    assert [q.side for q in quotes[NO]] == [Side.BUY]
    yes_bid = quotes[YES][0].price_ticks
    no_bid = quotes[NO][0].price_ticks
    assert yes_bid + no_bid < 100  # the pair never crosses itself (or costs more than 1)
    exposures = [as_yes(s, q) for s, qs in quotes.items() for q in qs]
    bid = max(p for side, p in exposures if side is Side.BUY)
    ask = min(p for side, p in exposures if side is Side.SELL)
    assert 40 <= bid < ask <= 60


def test_held_tokens_are_sold_to_reduce_and_the_position_is_combined() -> None:
    desk = Desk(yes_lots=2000, no_lots=500)  # 20 YES, 5 NO: long 15 YES
    quotes = desk.quotes(NO)
    sells = {s: q for s, qs in quotes.items() for q in qs if q.side is Side.SELL}
    assert YES in sells and sells[YES].qty_lots <= 2000
    # Long YES: the quotes lean to sell (skewed down from the unskewed mid of 50).
    exposures = [as_yes(s, q) for s, qs in quotes.items() for q in qs]
    ask = min(p for side, p in exposures if side is Side.SELL)
    assert ask <= 52
    assert all(0 < q.price_ticks < 100 for qs in quotes.values() for q in qs)
