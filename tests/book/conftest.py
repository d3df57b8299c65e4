"""Instruments shared by the order-book tests, and the two book implementations.

Every test in this folder runs twice: on the compiled hot loops (``quoteforge.book.fast``
and the Binance text reader ``quoteforge.exchanges.binance.fast``, when the C extensions
are built) and on the interpreted path, so both are held to the same expectations.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from quoteforge.book import fast, l2
from quoteforge.exchanges.binance import book as binance
from quoteforge.model import Instrument
from quoteforge.plugins import consumer_book as consumer


@pytest.fixture(autouse=True, params=["compiled", "interpreted"])
def book_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Selects the implementation the book modules call (both share the same state)."""
    if request.param == "compiled":
        if not fast.COMPILED:
            pytest.skip("the C extension quoteforge.book._fastbook is not built here")
    else:
        monkeypatch.setattr(binance, "_apply_depth_text", None)
        monkeypatch.setattr(l2, "_apply_diff", None)
        monkeypatch.setattr(l2, "_top_levels", None)
        monkeypatch.setattr(consumer, "_consumer_top", None)
    return str(request.param)


@pytest.fixture
def btcusdt() -> Instrument:
    return Instrument("binance", "BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.00001"))


@pytest.fixture
def kraken_btcusd() -> Instrument:
    return Instrument("kraken", "BTC/USD", "BTC", "USD", Decimal("0.1"), Decimal("0.00000001"))
