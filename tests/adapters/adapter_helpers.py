"""Shared set-up for the adapter tests: a replica plus a connected adapter."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from quoteforge.clock import LiveClock
from quoteforge.exchange import VenueContext
from quoteforge.exchanges.binance.adapter import BinanceParams, BinanceSpot
from quoteforge.exchanges.ccxt_base import CcxtSpotAdapter
from quoteforge.exchanges.kraken.adapter import KrakenParams, KrakenSpot
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS, Harness, RecordingSink, VenueKit
from quoteforge.exchanges.testing.kraken_replica import KrakenReplica


def binance_adapter(
    replica: BinanceReplica, params: dict[str, Any], ctx: VenueContext
) -> BinanceSpot:
    return BinanceSpot(BinanceParams(rest_url=replica.url, ws_url=replica.ws_url, **params), ctx)


BINANCE_KIT = VenueKit(
    venue="binance",
    symbol="BTCUSDT",
    make_replica=lambda: BinanceReplica(ping_interval=0.1),
    make_adapter=binance_adapter,
    features=frozenset({"sequence", "replace"}),
    # A request whose answer was lost is resent only after its recvWindow: a short one
    # keeps the tests that lose answers quick.
    params={"recv_window_ms": 1000},
)


def kraken_adapter(replica: KrakenReplica, params: dict[str, Any], ctx: VenueContext) -> KrakenSpot:
    return KrakenSpot(
        KrakenParams(
            rest_url=replica.url,
            ws_url=replica.public_ws_url,
            private_ws_url=replica.private_ws_url,
            **params,
        ),
        ctx,
    )


KRAKEN_KIT = VenueKit(
    venue="kraken",
    symbol="BTC/USD",
    make_replica=lambda: KrakenReplica(ping_interval=0.1),
    make_adapter=kraken_adapter,
    compare_depth=10,
    features=frozenset({"sequence", "checksum"}),
)


def spot_of(h: Harness) -> CcxtSpotAdapter:
    """The harness's adapter as the spot adapter both kits make (Binance and Kraken)."""
    assert isinstance(h.adapter, CcxtSpotAdapter)
    return h.adapter


def binance_of(h: Harness) -> BinanceSpot:
    """The harness's adapter as the Binance spot adapter ``BINANCE_KIT`` makes."""
    assert isinstance(h.adapter, BinanceSpot)
    return h.adapter


def kraken_of(h: Harness) -> KrakenSpot:
    """The harness's adapter as the Kraken spot adapter ``KRAKEN_KIT`` makes."""
    assert isinstance(h.adapter, KrakenSpot)
    return h.adapter


@contextlib.asynccontextmanager
async def running(
    kit: VenueKit,
    *,
    replica: Any = None,
    secrets: dict[str, str] | None = None,
    wait_live: bool = True,
    symbols: tuple[str, ...] | None = None,
    outlives: bool = False,
    **params: Any,
) -> AsyncIterator[Harness]:
    """Start (or reuse) a replica, connect an adapter with fast parameters (on the kit's
    symbol, or ``symbols``). ``outlives``: the replica is running already and goes on
    after this adapter closes (one process of a bot that restarts)."""
    replica = replica or kit.make_replica()
    if not outlives:
        await replica.start()
    sink = RecordingSink()
    ctx = VenueContext(
        name=kit.venue,
        clock=LiveClock(),
        seed=1,
        mode="live",
        symbols=list(symbols or (kit.symbol,)),
        secrets=secrets
        if secrets is not None
        else {"api_key": replica.api_key, "api_secret": replica.api_secret},
    )
    adapter = kit.make_adapter(replica, {**FAST_PARAMS, **kit.params, **params}, ctx)
    try:
        await adapter.connect(sink)
        harness = Harness(kit, replica, adapter, sink)
        if wait_live:
            await harness.wait_book_matches()
        yield harness
    finally:
        await adapter.close()
        if not outlives:
            await replica.stop()


def compact(message: object) -> str:
    """A message as the venue writes it: no spaces."""
    return json.dumps(message, separators=(",", ":"))
