"""Shared builders for strategy tests: real instruments, books, markets and contexts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from quoteforge.book import L2Book
from quoteforge.model import Instrument, InstrumentKind, Quote
from quoteforge.strategy import Market, StrategyContext

NS = 1_000_000_000


class Desk:
    """A tiny trading desk: markets with real books, positions, a settable clock, and
    a context that records what strategies publish and set."""

    def __init__(self) -> None:
        self.now_ns = 1_700_000_000 * NS
        self.positions: dict[str, int] = {}
        self.markets: dict[str, Market] = {}
        self.published: list[tuple[str, Any]] = []
        self.set: dict[str, list[Quote]] = {}
        self.timers: list[tuple[int, Any]] = []

    def instrument(
        self,
        symbol: str = "BTCUSDT",
        tick: str = "0.01",
        lot: str = "0.001",
        kind: InstrumentKind = InstrumentKind.SPOT,
    ) -> Instrument:
        return Instrument(
            venue="sim",
            symbol=symbol,
            base=symbol[:3],
            quote=symbol[3:] or "USD",
            tick_size=Decimal(tick),
            lot_size=Decimal(lot),
            kind=kind,
        )

    def market(
        self,
        instrument: Instrument,
        bids: list[tuple[int, int]],
        asks: list[tuple[int, int]],
        position_lots: int = 0,
    ) -> Market:
        book = L2Book(instrument)
        book.apply_snapshot(bids, asks, self.now_ns)
        key = instrument.key
        self.positions[key] = position_lots
        market = Market(instrument, book, lambda: self.positions[key])
        self.markets[key] = market
        return market

    def book(
        self, market: Market, bids: list[tuple[int, int]], asks: list[tuple[int, int]]
    ) -> None:
        market.book.apply_snapshot(bids, asks, self.now_ns)

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * NS)

    def ctx(self, name: str = "test") -> StrategyContext:
        return StrategyContext(
            name=name,
            markets=self.markets,
            now_ns=lambda: self.now_ns,
            set_quotes=lambda key, quotes: self.set.__setitem__(key, quotes),
            schedule=lambda delay, fn: self.timers.append((self.now_ns + delay, fn)),
            seed=1,
            publish=lambda topic, payload: self.published.append((topic, payload)),
        )


@pytest.fixture
def desk() -> Desk:
    return Desk()


@pytest.fixture
def make_desk() -> type[Desk]:
    """A fresh desk per call, for property tests that run many examples in one test."""
    return Desk
