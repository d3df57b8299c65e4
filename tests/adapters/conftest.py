"""Adapter tests run against the local replica venues on 127.0.0.1 only."""

from quoteforge.exchanges.testing.conformance import venue_harness

__all__ = ["venue_harness"]
