"""Helpers for the order-book tests: fixture files and an obvious reference book."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from quoteforge.model import Side

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture_text(venue: str, name: str) -> str:
    return (FIXTURES / venue / name).read_text()


def fixture_lines(venue: str, name: str) -> list[str]:
    return [line for line in fixture_text(venue, name).splitlines() if line.strip()]


class ReferenceBook:
    """The obvious dict model of an L2 book on exact Decimal prices, for comparison."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}

    @classmethod
    def from_binance_snapshot(cls, text: str) -> tuple[ReferenceBook, int]:
        snap = json.loads(text)
        ref = cls()
        ref.bids = {Decimal(p): Decimal(q) for p, q in snap["bids"] if Decimal(q)}
        ref.asks = {Decimal(p): Decimal(q) for p, q in snap["asks"] if Decimal(q)}
        return ref, snap["lastUpdateId"]

    def apply_binance(self, event: dict[str, Any]) -> None:
        for levels, side in ((event["b"], self.bids), (event["a"], self.asks)):
            for p, q in levels:
                if Decimal(q):
                    side[Decimal(p)] = Decimal(q)
                else:
                    side.pop(Decimal(p), None)

    def levels(self, side: Side) -> list[tuple[Decimal, Decimal]]:
        if side is Side.BUY:
            return sorted(self.bids.items(), reverse=True)
        return sorted(self.asks.items())


def book_levels(book: Any, side: Side) -> list[tuple[Decimal, Decimal]]:
    """An L2Book side as exact (price, qty) pairs, best first."""
    inst = book.instrument
    return [(inst.ticks_to_price(p), inst.lots_to_qty(q)) for p, q in book.levels(side)]


def assert_same_book(book: Any, ref: ReferenceBook) -> None:
    for side in (Side.BUY, Side.SELL):
        assert book_levels(book, side) == ref.levels(side), f"{side.name} side differs"
