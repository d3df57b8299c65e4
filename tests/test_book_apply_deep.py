"""The compiled level apply on deep books, as a busy futures market sends them: each diff
inserts and deletes levels all through thousands of levels a side (the compiled path
moves the list's tail itself, so its keys, sizes and change codes must stay exactly
those of the interpreted apply)."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from quoteforge.book import L2Book
from quoteforge.book.fast import COMPILED
from quoteforge.book.wire import WireDecimalParser
from quoteforge.model import Instrument

pytestmark = pytest.mark.skipif(not COMPILED, reason="the book extension is not built")

TICK = Decimal("0.01")
LOT = Decimal("0.001")


def _book() -> L2Book:
    return L2Book(Instrument("v", "ETH/USDT", "ETH", "USDT", tick_size=TICK, lot_size=LOT))


def _text(units: int, decimals: int) -> str:
    whole, frac = divmod(units, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


def _pairs(levels: list[list[str]]) -> list[tuple[int, int]]:
    return [(int(Decimal(p) / TICK), int(Decimal(q) / LOT)) for p, q in levels]


def _state(book: L2Book) -> tuple[object, ...]:
    return (list(book._bid_keys), dict(book._bid_qty), list(book._ask_keys), dict(book._ask_qty))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_deep_inserts_and_deletes_match_the_interpreted_apply(seed: int) -> None:
    rng = random.Random(seed)
    price = WireDecimalParser(TICK, "price", "v").scale_table()
    qty = WireDecimalParser(LOT, "qty", "v").scale_table()
    compiled, interpreted = _book(), _book()
    mid = 268_000  # 2680.00
    depth = 3_000
    bids = [[_text(mid - 1 - i, 2), _text(rng.randint(1, 50_000), 3)] for i in range(depth)]
    asks = [[_text(mid + 1 + i, 2), _text(rng.randint(1, 50_000), 3)] for i in range(depth)]
    for book in (compiled, interpreted):
        assert book._apply_text(bids, asks, price, qty, None) is not None
    for _ in range(300):
        message = []
        for side in (-1, 1):
            chosen = rng.sample(range(1, depth + 500), rng.randint(0, 40))
            levels = []
            for distance in chosen:
                lots = 0 if rng.random() < 0.45 else rng.randint(1, 50_000)
                levels.append([_text(mid + side * distance, 2), _text(lots, 3)])
            message.append(levels)
        b, a = message
        top = compiled._apply_text(b, a, price, qty, None)
        expected = interpreted.apply_deltas(_pairs(b), _pairs(a))
        assert top == expected
        assert _state(compiled) == _state(interpreted)
