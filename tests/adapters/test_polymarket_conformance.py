"""The conformance scenarios against the Polymarket replica."""

from __future__ import annotations

from typing import Any

import pytest

from quoteforge.exchange import VenueContext
from quoteforge.exchanges.polymarket import PolymarketClob, PolymarketParams
from quoteforge.exchanges.testing.conformance import SCENARIOS, Harness, VenueKit, needs
from quoteforge.exchanges.testing.polymarket_replica import PolymarketReplica


def polymarket_adapter(replica: Any, params: dict[str, Any], ctx: VenueContext) -> PolymarketClob:
    adapter = PolymarketClob(
        PolymarketParams(
            rest_url=replica.url,
            ws_url=replica.market_ws_url,
            private_ws_url=replica.user_ws_url,
            markets={"rain-nyc": replica.condition_id("rain-nyc")},
            snapshot_check_s=0.3,
            ping_interval_s=0.2,
            **params,
        ),
        ctx,
    )
    # The venue has no client order ids: the replica's control API names orders by the
    # adapter's client ids so the shared scenarios can refer to them.
    replica.label_orders(adapter.client_id_of)
    return adapter


POLYMARKET_KIT = VenueKit(
    venue="polymarket",
    symbol="rain-nyc/YES",
    make_replica=lambda: PolymarketReplica(ping_interval=0.1),
    make_adapter=polymarket_adapter,
    features=frozenset({"sequence"}),
)


@pytest.fixture
def conformance_kit() -> VenueKit:
    return POLYMARKET_KIT


@pytest.mark.parametrize(
    "scenario",
    [s for s in SCENARIOS if needs(s) is None or needs(s) in POLYMARKET_KIT.features],
    ids=lambda s: s.__name__,
)
async def test_polymarket_conformance(venue_harness: Harness, scenario: Any) -> None:
    await scenario(venue_harness)
