"""The live example manifests run end to end against the local venue replicas: quotes
placed, fills received, journal written, nothing left open; the Binance one also over a
replica serving a real recording (the venue's real bytes as its market data)."""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from quoteforge.engine import Run
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS
from quoteforge.exchanges.testing.kraken_replica import KrakenReplica
from quoteforge.manifest import load_manifest
from quoteforge.registry import PluginRegistry

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
REAL_BTCUSDT = EXAMPLES / "data" / "btcusdt_binance_20240808.jsonl.gz"


def overrides(venue: str, urls: dict[str, str]) -> list[str]:
    items = [f"exchanges.{venue}.params.{k}={v}" for k, v in {**FAST_PARAMS, **urls}.items()]
    # The starter tier's per-pair counter is small: a shutdown right after a burst of
    # cancels may have to wait for it to decay, hence the longer cancel timeout.
    return [
        *items,
        "run.duration=6s",
        "run.cancel_timeout=20s",
        "report.html=false",
        "report.png=false",
    ]


async def drive(run: Run, replica: Any, symbol: str) -> None:
    """Fill some of our resting orders at the replica while the run goes on, as takers
    on the venue would."""
    task = asyncio.create_task(run.run())
    filled = 0
    while not task.done():
        await asyncio.sleep(0.4)
        for order in replica.orders(symbol):
            if filled < 6:
                half = (order.qty / 2).quantize(Decimal("0.00000001"))
                await replica.fill_order(order.client_id, half if filled % 2 else None)
                filled += 1
                break
    await task


@pytest.mark.parametrize("venue", ["binance", "kraken"])
def test_example_manifest_against_replica(
    venue: str, registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> Run:
        if venue == "binance":
            replica: Any = BinanceReplica(ping_interval=0.1)
            manifest, symbol = EXAMPLES / "binance_testnet.yaml", "BTCUSDT"
        else:
            replica = KrakenReplica(ping_interval=0.1)
            manifest, symbol = EXAMPLES / "kraken.yaml", "BTC/USD"
        await replica.start()
        try:
            prefix = venue.upper()
            monkeypatch.setenv(f"{prefix}_API_KEY", replica.api_key)
            monkeypatch.setenv(f"{prefix}_API_SECRET", replica.api_secret)
            if venue == "binance":
                urls = {"rest_url": replica.url, "ws_url": replica.ws_url, "testnet": "false"}
            else:
                # The example runs on the starter tier, whose per-pair counter (cancels
                # of young orders cost +8) a burst of fills exhausts in seconds; the test
                # account is on the pro tier so shutdown is not throttled.
                urls = {
                    "rest_url": replica.url,
                    "ws_url": replica.public_ws_url,
                    "private_ws_url": replica.private_ws_url,
                    "tier": "pro",
                }
            loaded = load_manifest(manifest, registry, overrides=overrides(venue, urls))
            run = Run(loaded, registry, run_dir=tmp_path / venue)
            await drive(run, replica, symbol)
            placed = replica.orders(symbol, open_only=False)
            assert placed, "the strategy placed quotes at the venue"
            assert replica.orders(symbol) == [], "shutdown cancelled every open order"
            return run
        finally:
            await replica.stop()

    run = asyncio.run(scenario())
    with (tmp_path / venue / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    fills = int(rows[0]["fill_count"])
    assert fills > 0
    conn = sqlite3.connect(tmp_path / venue / "journal.sqlite")
    try:
        journaled = conn.execute("SELECT count(*) FROM journal WHERE kind='fill'").fetchone()[0]
    finally:
        conn.close()
    assert journaled == fills
    assert run.orders.all_working() == []


def test_binance_example_over_a_real_recording(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/binance_testnet.yaml against a replica whose market data is six minutes
    of real BTCUSDT traffic played four times faster: the book goes LIVE on the real
    snapshot and stays LIVE, the strategy's quotes rest in the real market, recorded
    trades fill them, and shutdown leaves nothing open. The example quotes 8 bps from
    the mid, wider than any move of this calm minute, so the run quotes closer."""

    async def scenario() -> tuple[Run, BinanceReplica]:
        replica = BinanceReplica(ping_interval=0.1, recording=REAL_BTCUSDT, speed=4.0)
        await replica.start()
        try:
            monkeypatch.setenv("BINANCE_API_KEY", replica.api_key)
            monkeypatch.setenv("BINANCE_API_SECRET", replica.api_secret)
            urls = {"rest_url": replica.url, "ws_url": replica.ws_url, "testnet": "false"}
            sets = [
                *overrides("binance", urls),
                "run.duration=15s",
                "strategies.mm.params.spread_bps=0.5",
                "strategies.mm.params.level_spacing_bps=0.5",
                "strategies.mm.params.refresh_tolerance_bps=0.2",
                # The fault tests' 0.6 s silence limit would take a busy test machine's
                # pause for a dead socket; this test is about the book staying LIVE.
                "exchanges.binance.params.silence_timeout_s=5",
            ]
            loaded = load_manifest(EXAMPLES / "binance_testnet.yaml", registry, overrides=sets)
            run = Run(loaded, registry, run_dir=tmp_path / "real")
            await run.run()
            assert replica.orders("BTCUSDT", open_only=False), "quotes placed"
            assert replica.orders("BTCUSDT") == [], "shutdown cancelled every open order"
            return run, replica
        finally:
            await replica.stop()

    run, replica = asyncio.run(scenario())
    assert replica.played > 1000, "the run went on over real traffic"
    assert replica.recorded_fills > 0, "recorded trades filled our quotes"
    with (tmp_path / "real" / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert int(rows[0]["fill_count"]) == replica.recorded_fills
    # LIVE from the first snapshot it could bridge, and no state change after that. A
    # loaded machine may join the stream after it moved past the first snapshot: Binance's
    # procedure then fetches another (a retry while syncing, not a resync), and LIVE may
    # come after the trace opened.
    depth_calls = [p for m, p in replica.request_log if p == "/api/v3/depth"]
    assert 1 <= len(depth_calls) <= 3, depth_calls
    events = [json.loads(line) for line in (tmp_path / "real" / "trace.jsonl").open()]
    states = [e["detail"] for e in events if e.get("event") == "book_state"]
    assert len(states) <= 1 and all(s.startswith("SYNCING->LIVE") for s in states), states
    assert run.orders.all_working() == []


def test_periodic_reconciliation_cancels_our_orphans_only(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order with our client-id prefix that the run does not know (a previous life's,
    say) is cancelled by the periodic check; another bot's order on the account is not."""
    from quoteforge.clock import LiveClock
    from quoteforge.exchange import PlaceOrder, VenueContext
    from quoteforge.exchanges.binance.adapter import BinanceParams, BinanceSpot
    from quoteforge.exchanges.testing.conformance import RecordingSink
    from quoteforge.model import Order, Side, TimeInForce

    async def scenario() -> tuple[list[str], list[str]]:
        replica = BinanceReplica(ping_interval=0.1)
        await replica.start()
        try:
            monkeypatch.setenv("BINANCE_API_KEY", replica.api_key)
            monkeypatch.setenv("BINANCE_API_SECRET", replica.api_secret)
            urls = {"rest_url": replica.url, "ws_url": replica.ws_url, "testnet": "false"}
            sets = [*overrides("binance", urls), "run.reconcile_interval=1s", "run.duration=5s"]
            loaded = load_manifest(EXAMPLES / "binance_testnet.yaml", registry, overrides=sets)
            run = Run(loaded, registry, run_dir=tmp_path / "periodic")
            task = asyncio.create_task(run.run())
            await asyncio.sleep(1.5)
            ctx = VenueContext(
                "binance",
                LiveClock(),
                1,
                "live",
                ["BTCUSDT"],
                secrets={"api_key": replica.api_key, "api_secret": replica.api_secret},
            )
            other = BinanceSpot(
                BinanceParams(rest_url=replica.url, ws_url=replica.ws_url, **FAST_PARAMS), ctx
            )
            await other.connect(RecordingSink())
            inst = other.instruments["BTCUSDT"]
            low = inst.price_to_ticks("40000")
            for cid in ("binanc-orphan-1", "otherbot-1"):
                other.submit(
                    [
                        PlaceOrder(
                            Order(
                                cid,
                                "binance",
                                "BTCUSDT",
                                Side.BUY,
                                inst.qty_to_lots("0.001"),
                                low,
                                tif=TimeInForce.POST_ONLY,
                            )
                        )
                    ]
                )
            await asyncio.sleep(0.5)
            # A deposit nobody traded for: the periodic check reports the balance drift.
            replica.account.credit("BTC", Decimal("0.5"))
            await task
            await other.close()
            open_ids = [o.client_id for o in replica.orders("BTCUSDT")]
            all_ids = [o.client_id for o in replica.orders("BTCUSDT", open_only=False)]
            return open_ids, all_ids
        finally:
            await replica.stop()

    open_ids, all_ids = asyncio.run(scenario())
    trace = (tmp_path / "periodic" / "trace.jsonl").read_text()
    assert '"event":"balance_drift"' in trace
    assert "BTC 0.5" in trace
    assert "binanc-orphan-1" in all_ids
    assert "binanc-orphan-1" not in open_ids  # ours, unknown to the run: cancelled
    assert open_ids == ["otherbot-1"]  # another bot's order: left alone


def test_fresh_live_start_cancels_orders_a_previous_life_left_open(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quoteforge.clock import LiveClock
    from quoteforge.exchange import PlaceOrder, VenueContext
    from quoteforge.exchanges.binance.adapter import BinanceParams, BinanceSpot
    from quoteforge.exchanges.testing.conformance import RecordingSink
    from quoteforge.model import Order, Side, TimeInForce

    async def scenario() -> list[str]:
        replica = BinanceReplica(ping_interval=0.1)
        await replica.start()
        try:
            ctx = VenueContext(
                "binance",
                LiveClock(),
                1,
                "live",
                ["BTCUSDT"],
                secrets={"api_key": replica.api_key, "api_secret": replica.api_secret},
            )
            earlier = BinanceSpot(
                BinanceParams(rest_url=replica.url, ws_url=replica.ws_url, **FAST_PARAMS), ctx
            )
            await earlier.connect(RecordingSink())
            inst = earlier.instruments["BTCUSDT"]
            earlier.submit(
                [
                    PlaceOrder(
                        Order(
                            "binanc-lastlife-1",
                            "binance",
                            "BTCUSDT",
                            Side.SELL,
                            inst.qty_to_lots("0.001"),
                            inst.price_to_ticks("60000"),
                            tif=TimeInForce.POST_ONLY,
                        )
                    )
                ]
            )
            await asyncio.sleep(0.5)
            await earlier.close()
            assert [o.client_id for o in replica.orders("BTCUSDT")] == ["binanc-lastlife-1"]
            monkeypatch.setenv("BINANCE_API_KEY", replica.api_key)
            monkeypatch.setenv("BINANCE_API_SECRET", replica.api_secret)
            urls = {"rest_url": replica.url, "ws_url": replica.ws_url, "testnet": "false"}
            sets = [*overrides("binance", urls), "run.reconcile_interval=null", "run.duration=2s"]
            loaded = load_manifest(EXAMPLES / "binance_testnet.yaml", registry, overrides=sets)
            await Run(loaded, registry, run_dir=tmp_path / "fresh").run()
            return [
                o.client_id
                for o in replica.orders("BTCUSDT", open_only=False)
                if o.client_id == "binanc-lastlife-1" and o.status == "canceled"
            ]
        finally:
            await replica.stop()

    assert asyncio.run(scenario()) == ["binanc-lastlife-1"]
