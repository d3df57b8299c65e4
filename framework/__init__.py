"""quoteforge: a plugin framework for market-making and execution bots.

Plugin authors need only this namespace::

    import quoteforge

    @quoteforge.hookimpl
    def quoteforge_register_strategies(register):
        register("my_strategy", MyStrategy)
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

from quoteforge.model import (
    Fill,
    Instrument,
    InstrumentKind,
    Liquidity,
    Offer,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Quote,
    Side,
    TimeInForce,
)
from quoteforge.strategy import Market, Strategy, StrategyContext, StrategyParams

hookimpl = pluggy.HookimplMarker("quoteforge")

try:
    __version__ = version("quoteforge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "Fill",
    "Instrument",
    "InstrumentKind",
    "Liquidity",
    "Market",
    "Offer",
    "Order",
    "OrderStatus",
    "OrderType",
    "OrderUpdate",
    "Quote",
    "Side",
    "Strategy",
    "StrategyContext",
    "StrategyParams",
    "TimeInForce",
    "__version__",
    "hookimpl",
]
