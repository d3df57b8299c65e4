"""Kraken spot: the adapter (``type: kraken``), its book source with the CRC32 checksum,
and its rate-limit governor (extra ``kraken``)."""

from quoteforge.exchanges.kraken.adapter import KrakenParams, KrakenSpot, create_kraken
from quoteforge.exchanges.kraken.book import KrakenBookSource, kraken_checksum

__all__ = ["KrakenBookSource", "KrakenParams", "KrakenSpot", "create_kraken", "kraken_checksum"]
