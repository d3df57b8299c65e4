"""Built-in order-book sources: the Binance and Kraken integrity rules.

The live adapters look their book source up by these names (their ``book_source``
param, default ``binance_spot`` and ``kraken_v2``), so a plugin that registers its own
source under another name replaces one of these by being named in a manifest."""

from __future__ import annotations

import quoteforge
from quoteforge.exchanges.binance.book import BinanceFuturesBookSource, BinanceSpotBookSource
from quoteforge.exchanges.kraken.book import KrakenBookSource
from quoteforge.registry import Register


@quoteforge.hookimpl
def quoteforge_register_book_sources(register: Register) -> None:
    register(
        "binance_spot",
        BinanceSpotBookSource,
        description="Binance spot <symbol>@depth diffs bridged to a REST snapshot by update id.",
    )
    register(
        "binance_futures",
        BinanceFuturesBookSource,
        description="Binance futures depth diffs chained by pu == previous u.",
    )
    register(
        "kraken_v2",
        KrakenBookSource,
        description="Kraken websocket v2 book channel verified by its CRC32 checksum.",
    )
