"""The built-in book-source plugin registers the three venue protocols."""

from __future__ import annotations

from book_helpers import fixture_text

from quoteforge.book import BookState, Outcome
from quoteforge.model import Instrument
from quoteforge.plugins import book_sources
from quoteforge.registry import PluginRegistry


def test_registers_binance_and_kraken_sources(btcusdt: Instrument) -> None:
    registry = PluginRegistry()
    record = registry.register_module(book_sources)
    assert record.loaded, record.error
    types = registry.types("book_source")
    assert sorted(types) == ["binance_futures", "binance_spot", "kraken_v2"]
    reg = registry.get("book_source", "binance_spot")
    params = reg.params(stale_after_ms=250, max_buffer=100)
    source = reg.factory(btcusdt, **params.model_dump())
    assert source.protocol == "binance_spot" and source.max_buffer == 100
    assert source.on_snapshot(fixture_text("binance", "depth_snapshot.json")) is Outcome.APPLIED
    assert source.state is BookState.LIVE
    kraken = registry.get("book_source", "kraken_v2")
    assert "depth must be one of" in str(_error(kraken.params, depth=20))


def _error(schema: type, **values: object) -> Exception:
    try:
        schema(**values)
    except Exception as exc:
        return exc
    raise AssertionError(f"{schema.__name__} accepted {values}")
