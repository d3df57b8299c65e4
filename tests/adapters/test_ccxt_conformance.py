"""The conformance scenarios through ``type: ccxt`` against the Binance, Kraken and OKX
replicas, ccxt's URLs pointed at them: every scenario ccxt can see. The ones left out,
and why, are in ``SKIPPED`` (and docs/venues/ccxt.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from quoteforge.exchange import VenueContext
from quoteforge.exchanges.ccxt.adapter import CcxtParams, CcxtVenue
from quoteforge.exchanges.ccxt.venues import replica_urls
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import SCENARIOS, Harness, VenueKit, needs
from quoteforge.exchanges.testing.kraken_replica import KrakenReplica
from quoteforge.exchanges.testing.okx_replica import OkxReplica


def ccxt_adapter(exchange: str) -> Any:
    def make(replica: Any, params: dict[str, Any], ctx: VenueContext) -> CcxtVenue:
        passphrase = getattr(replica, "passphrase", None)
        if passphrase is not None:  # OKX keys come with a passphrase
            ctx = dataclasses.replace(ctx, secrets={**ctx.secrets, "password": passphrase})
        return CcxtVenue(
            CcxtParams(exchange=exchange, urls=replica_urls(exchange, replica), **params), ctx
        )

    return make


def kraken_rest_replica() -> KrakenReplica:
    replica = KrakenReplica(ping_interval=0.1)
    # ccxt places orders over REST: the order-entry faults go to AddOrder.
    replica.order_path = "/0/private/AddOrder"
    return replica


CCXT_BINANCE_KIT = VenueKit(
    venue="binance",
    symbol="BTCUSDT",  # the venue's market id: the adapter takes it as well as BTC/USDT
    make_replica=lambda: BinanceReplica(ping_interval=0.1),
    make_adapter=ccxt_adapter("binance"),
    features=frozenset({"sequence", "replace"}),
)

CCXT_KRAKEN_KIT = VenueKit(
    venue="kraken",
    symbol="BTC/USD",
    make_replica=kraken_rest_replica,
    make_adapter=ccxt_adapter("kraken"),
    compare_depth=10,
    params={"book_depth": 10, "rate_limit_ms": 50},
    features=frozenset(),
)

CCXT_OKX_KIT = VenueKit(
    venue="okx",
    symbol="BTC/USDT",
    make_replica=lambda: OkxReplica(ping_interval=0.1),
    make_adapter=ccxt_adapter("okx"),
    features=frozenset({"sequence"}),
)

SKIPPED: dict[str, str] = {
    # Kraken's v2 book has no sequence numbers: a missed update shows only in the CRC32
    # checksum, which ccxt does not check (it keeps levels as floats, so it cannot).
    "kraken/sequence_gap_resyncs": "ccxt checks no Kraken checksum",
    "kraken/corrupt_checksum_resyncs": "ccxt checks no Kraken checksum",
    "binance/corrupt_checksum_resyncs": "Binance books carry no checksum",
    # OKX accepts a post-only order that would take and cancels it (cancelSource 31):
    # the order is reported OPEN then CANCELLED, never REJECTED.
    "okx/post_only_would_cross_is_rejected": "OKX cancels, not refuses, a crossing post-only",
}


def kit_scenarios(kit: VenueKit) -> list[Any]:
    return [
        pytest.param(kit, s, id=f"{kit.venue}/{s.__name__}")
        for s in SCENARIOS
        if f"{kit.venue}/{s.__name__}" not in SKIPPED
        and (needs(s) is None or needs(s) in kit.features)
    ]


@pytest.fixture
def conformance_kit(request: pytest.FixtureRequest) -> VenueKit:
    kit: VenueKit = request.param
    return kit


@pytest.mark.parametrize(
    ("conformance_kit", "scenario"),
    kit_scenarios(CCXT_BINANCE_KIT) + kit_scenarios(CCXT_KRAKEN_KIT) + kit_scenarios(CCXT_OKX_KIT),
    indirect=["conformance_kit"],
)
async def test_ccxt_conformance(venue_harness: Harness, scenario: Any) -> None:
    await scenario(venue_harness)
