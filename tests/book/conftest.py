"""Instruments shared by the order-book tests."""

from __future__ import annotations

from decimal import Decimal

import pytest

from quoteforge.model import Instrument


@pytest.fixture
def btcusdt() -> Instrument:
    return Instrument("binance", "BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.00001"))


@pytest.fixture
def kraken_btcusd() -> Instrument:
    return Instrument("kraken", "BTC/USD", "BTC", "USD", Decimal("0.1"), Decimal("0.00000001"))
