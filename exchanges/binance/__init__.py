"""Binance spot and USDⓈ-M futures: the adapter (``type: binance``), its book sources and
rate-limit governor (extra ``binance``)."""

from quoteforge.exchanges.binance.adapter import (
    BinanceParams,
    BinanceSpot,
    create_binance,
    instrument_from_exchange_info,
)
from quoteforge.exchanges.binance.book import BinanceFuturesBookSource, BinanceSpotBookSource

__all__ = [
    "BinanceFuturesBookSource",
    "BinanceParams",
    "BinanceSpot",
    "BinanceSpotBookSource",
    "create_binance",
    "instrument_from_exchange_info",
]
