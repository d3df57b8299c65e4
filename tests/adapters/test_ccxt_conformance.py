"""The conformance scenarios through ``type: ccxt`` against the Binance, Kraken and OKX
replicas, ccxt's URLs pointed at them: every scenario ccxt can see. The ones left out,
and why, are in ``SKIPPED`` (and docs/venues/ccxt.md)."""

from __future__ import annotations

from typing import Any

import pytest
from ccxt_kits import CCXT_BINANCE_KIT, CCXT_KRAKEN_KIT, CCXT_OKX_KIT

from quoteforge.exchanges.testing.conformance import SCENARIOS, Harness, VenueKit, needs

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
