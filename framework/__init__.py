"""quoteforge: a plugin framework for market-making and execution bots.

Plugin authors need only this namespace::

    import quoteforge

    @quoteforge.hookimpl
    def quoteforge_register_strategies(register: quoteforge.Register) -> None:
        register("my_strategy", MyStrategy)

Every name a strategy, exchange, risk check, execution policy, journal, bus or book
source author types is importable from here; the modules behind them (``quoteforge.
exchange``, ``quoteforge.risk``, ...) are the kernel's own layout and may move.

``import quoteforge`` stays cheap: the model and strategy API load with it, the other
exported names load from their module on first use (PEP 562 ``__getattr__``), so a
strategy-only process never pays for the registry's logging, the book or asyncio.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

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
from quoteforge.strategy import (
    Market,
    Quotes,
    Speed,
    Strategy,
    StrategyContext,
    StrategyParams,
    check_interface,
)

if TYPE_CHECKING:
    from quoteforge.book import (
        BookMessageError,
        BookSource,
        BookState,
        L2Book,
        Outcome,
    )
    from quoteforge.book.source import BookSourceParams
    from quoteforge.bus import Bus, Handler
    from quoteforge.clock import NS, Clock, TimerHandle
    from quoteforge.exchange import (
        CancelAll,
        CancelOrder,
        ExchangeAdapter,
        OrderAction,
        PlaceOrder,
        ReplaceOrder,
        VenueContext,
        VenueSink,
    )
    from quoteforge.execution import ExecutionPolicy, Plan
    from quoteforge.journal import Journal, JournalRecord
    from quoteforge.manifest import Duration
    from quoteforge.registry import NoParams, PluginError, Register, RegisterCommand
    from quoteforge.risk import RiskCheck, RiskView
    from quoteforge.strategy import INTERFACE_VERSION

hookimpl = pluggy.HookimplMarker("quoteforge")

try:
    __version__ = version("quoteforge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

#: Exported name -> the kernel module it is loaded from on first use.
_LAZY = {
    **dict.fromkeys(
        (
            "BookMessageError",
            "BookSource",
            "BookState",
            "L2Book",
            "Outcome",
        ),
        "quoteforge.book",
    ),
    "BookSourceParams": "quoteforge.book.source",
    **dict.fromkeys(("Bus", "Handler"), "quoteforge.bus"),
    **dict.fromkeys(("NS", "Clock", "TimerHandle"), "quoteforge.clock"),
    **dict.fromkeys(
        (
            "CancelAll",
            "CancelOrder",
            "ExchangeAdapter",
            "OrderAction",
            "PlaceOrder",
            "ReplaceOrder",
            "VenueContext",
            "VenueSink",
        ),
        "quoteforge.exchange",
    ),
    **dict.fromkeys(("ExecutionPolicy", "Plan"), "quoteforge.execution"),
    **dict.fromkeys(("Journal", "JournalRecord"), "quoteforge.journal"),
    "Duration": "quoteforge.manifest",
    **dict.fromkeys(
        ("NoParams", "PluginError", "Register", "RegisterCommand"), "quoteforge.registry"
    ),
    **dict.fromkeys(("RiskCheck", "RiskView"), "quoteforge.risk"),
    "INTERFACE_VERSION": "quoteforge.strategy",
}


def __getattr__(name: str) -> Any:
    """Load an exported name from its module the first time it is asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'quoteforge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "INTERFACE_VERSION",
    "NS",
    "BookMessageError",
    "BookSource",
    "BookSourceParams",
    "BookState",
    "Bus",
    "CancelAll",
    "CancelOrder",
    "Clock",
    "Duration",
    "ExchangeAdapter",
    "ExecutionPolicy",
    "Fill",
    "Handler",
    "Instrument",
    "InstrumentKind",
    "Journal",
    "JournalRecord",
    "L2Book",
    "Liquidity",
    "Market",
    "NoParams",
    "Offer",
    "Order",
    "OrderAction",
    "OrderStatus",
    "OrderType",
    "OrderUpdate",
    "Outcome",
    "PlaceOrder",
    "Plan",
    "PluginError",
    "Quote",
    "Quotes",
    "Register",
    "RegisterCommand",
    "ReplaceOrder",
    "RiskCheck",
    "RiskView",
    "Side",
    "Speed",
    "Strategy",
    "StrategyContext",
    "StrategyParams",
    "TimeInForce",
    "TimerHandle",
    "VenueContext",
    "VenueSink",
    "__version__",
    "check_interface",
    "hookimpl",
]
