"""The live adapters build their books with the book source registered under the name
their params give (plugin kind ``book_source``), so a plugin's source replaces the
built-in one by name; the run hands its registry's sources over in ``ctx.extra``."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from adapter_helpers import BINANCE_KIT, KRAKEN_KIT

from quoteforge import hookimpl
from quoteforge.clock import LiveClock, SimClock
from quoteforge.exchange import VenueContext
from quoteforge.exchanges.binance.adapter import BinanceParams, BinanceSpot
from quoteforge.exchanges.binance.book import BinanceSpotBookSource
from quoteforge.exchanges.binance_usdm.adapter import BinanceUsdm
from quoteforge.exchanges.binance_usdm.venue import BinanceUsdmParams
from quoteforge.exchanges.ccxt_base import book_source_factory
from quoteforge.exchanges.kraken.adapter import KrakenParams, KrakenSpot
from quoteforge.exchanges.kraken.book import KrakenBookSource
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS, Harness, RecordingSink, VenueKit
from quoteforge.exchanges.testing.kraken_replica import KrakenReplica
from quoteforge.plugins import book_sources
from quoteforge.registry import PluginRegistry, Register


class TaggedBinance(BinanceSpotBookSource):
    """A plugin's own Binance book source: the built-in one, counting what it builds."""

    built: ClassVar[list[TaggedBinance]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        TaggedBinance.built.append(self)


class TaggedKraken(KrakenBookSource):
    built: ClassVar[list[TaggedKraken]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        TaggedKraken.built.append(self)


class _TaggedPlugin:
    @hookimpl
    def quoteforge_register_book_sources(self, register: Register) -> None:
        register("tagged_binance", TaggedBinance, description="Binance, counted.")
        register("tagged_kraken", TaggedKraken, description="Kraken, counted.")


def _run_registry_sources() -> dict[str, Any]:
    """What a run hands its venues: every book source its registry holds."""
    registry = PluginRegistry()
    for module, name in ((book_sources, "book_sources"), (_TaggedPlugin(), "tagged")):
        record = registry.register_module(module, name)
        assert record.loaded, record.error
    return {name: reg.factory for name, reg in registry.types("book_source").items()}


@pytest.mark.parametrize(
    ("kit", "kind", "tagged"),
    [(BINANCE_KIT, "tagged_binance", TaggedBinance), (KRAKEN_KIT, "tagged_kraken", TaggedKraken)],
    ids=["binance", "kraken"],
)
async def test_a_registered_source_replaces_the_built_in_by_name(
    kit: VenueKit, kind: str, tagged: Any
) -> None:
    tagged.built.clear()
    replica = kit.make_replica()
    assert isinstance(replica, (BinanceReplica, KrakenReplica))
    await replica.start()
    ctx = VenueContext(
        name=kit.venue,
        clock=LiveClock(),
        seed=1,
        mode="live",
        symbols=[kit.symbol],
        secrets={"api_key": replica.api_key, "api_secret": replica.api_secret},
        extra={"book_sources": _run_registry_sources()},
    )
    adapter = kit.make_adapter(replica, {**FAST_PARAMS, **kit.params, "book_source": kind}, ctx)
    try:
        await adapter.connect(RecordingSink())
        harness = Harness(kit, replica, adapter, RecordingSink())
        assert [source.book for source in tagged.built] == [adapter.books[kit.symbol]]
        await harness.wait_book_matches()
    finally:
        await adapter.close()
        await replica.stop()


def test_the_built_in_sources_come_from_the_process_registry() -> None:
    ctx = VenueContext("binance", SimClock(), 1, "live", ["BTCUSDT"])
    assert book_source_factory(ctx, "binance_spot") is BinanceSpotBookSource
    assert book_source_factory(ctx, "kraken_v2") is KrakenBookSource
    with pytest.raises(ValueError, match="unknown book_source type 'nope'; installed: "):
        book_source_factory(ctx, "nope")


def test_an_unknown_source_fails_when_the_adapter_is_built() -> None:
    ctx = VenueContext(
        "binance",
        SimClock(),
        1,
        "live",
        ["BTCUSDT"],
        extra={"book_sources": _run_registry_sources()},
    )
    with pytest.raises(ValueError, match=r"no book source 'nope' is registered; registered: "):
        BinanceSpot(BinanceParams(book_source="nope"), ctx)
    assert isinstance(BinanceSpot(BinanceParams(), ctx), BinanceSpot)


def test_only_the_built_in_sources_say_their_books_carry_the_venues_time() -> None:
    """A market-data node trusts a book's ``ts_ns`` as the venue's time after a pause of
    its own only where the adapter says so (``book_ts_venue_time``): the built-in Binance
    and Kraken sources stamp the venue's time; a plugin's source put in by name, which
    may stamp the local time, is not assumed to."""
    sources = _run_registry_sources()
    ctx = VenueContext(
        "binance", SimClock(), 1, "live", ["BTCUSDT"], extra={"book_sources": sources}
    )
    assert BinanceSpot(BinanceParams(), ctx).book_ts_venue_time is True
    assert BinanceSpot(BinanceParams(book_source="tagged_binance"), ctx).book_ts_venue_time is False
    usdm_ctx = VenueContext(
        "binance_usdm", SimClock(), 1, "live", ["BTCUSDT"], extra={"book_sources": sources}
    )
    assert BinanceUsdm(BinanceUsdmParams(), usdm_ctx).book_ts_venue_time is True
    kraken_ctx = VenueContext(
        "kraken", SimClock(), 1, "live", ["BTC/USD"], extra={"book_sources": sources}
    )
    assert KrakenSpot(KrakenParams(), kraken_ctx).book_ts_venue_time is True
    kraken = KrakenSpot(KrakenParams(book_source="tagged_kraken"), kraken_ctx)
    assert kraken.book_ts_venue_time is False
