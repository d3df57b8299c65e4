"""The conformance kits of ``type: ccxt`` against the Binance, Kraken and OKX replicas,
ccxt's URLs pointed at them: for the ccxt conformance scenarios
(test_ccxt_conformance.py) and the ccxt adapter tests (test_ccxt_adapter.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

from quoteforge.exchange import VenueContext
from quoteforge.exchanges.ccxt.adapter import CcxtParams, CcxtVenue
from quoteforge.exchanges.ccxt.venues import replica_urls
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import VenueKit
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
