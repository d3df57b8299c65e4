"""The conformance scenarios against the Kraken replica."""

from __future__ import annotations

from typing import Any

import pytest
from adapter_helpers import KRAKEN_KIT

from quoteforge.exchanges.testing.conformance import SCENARIOS, Harness, VenueKit, needs


@pytest.fixture
def conformance_kit() -> VenueKit:
    return KRAKEN_KIT


@pytest.mark.parametrize(
    "scenario",
    [s for s in SCENARIOS if needs(s) is None or needs(s) in KRAKEN_KIT.features],
    ids=lambda s: s.__name__,
)
async def test_kraken_conformance(venue_harness: Harness, scenario: Any) -> None:
    await scenario(venue_harness)
