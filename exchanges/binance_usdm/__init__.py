"""Binance USDⓈ-M perpetual futures (``type: binance_usdm``, extra ``binance``): the
adapter, its account and user-stream side, its rate governor and the ``flatten``
command that closes a run's positions with reduce-only orders."""

from quoteforge.exchanges.binance_usdm.adapter import BinanceUsdm, create_binance_usdm
from quoteforge.exchanges.binance_usdm.venue import BinanceUsdmParams, usdm_instrument

__all__ = ["BinanceUsdm", "BinanceUsdmParams", "create_binance_usdm", "usdm_instrument"]
