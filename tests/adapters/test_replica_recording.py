"""The Binance replica serving a real recording: the live BinanceSpot adapter over the
venue's real bytes, end to end (the conformance kit's recorded scenarios, and what the
replica itself does with the recording)."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from adapter_helpers import BINANCE_KIT, running

from quoteforge.book import BookState
from quoteforge.exchange import CancelOrder, PlaceOrder
from quoteforge.exchanges.binance.book import BinanceSpotBookSource
from quoteforge.exchanges.recording import read_recording
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import (
    RECORDED_SCENARIOS,
    Harness,
    VenueKit,
    recorded_venue_harness,
)
from quoteforge.model import Instrument, Liquidity, Order, Side, TimeInForce
from quoteforge.plugins.data_import import read_hftbacktest

ROOT = Path(__file__).resolve().parent.parent.parent
REAL = ROOT / "examples" / "data" / "btcusdt_binance_20240808.jsonl.gz"
HFT = ROOT / "tests" / "fixtures" / "real" / "binance" / "spot_btcusdt_20240808.gz"

__all__ = ["recorded_venue_harness"]


def recording_replica(recording: Path, speed: float) -> BinanceReplica:
    return BinanceReplica(ping_interval=0.1, recording=recording, speed=speed)


@pytest.fixture(params=[REAL, HFT], ids=["quoteforge-recording", "hftbacktest-file"])
def conformance_kit(request: pytest.FixtureRequest) -> VenueKit:
    return dataclasses.replace(
        BINANCE_KIT, make_recording_replica=recording_replica, recording=request.param
    )


@pytest.mark.parametrize("scenario", RECORDED_SCENARIOS, ids=lambda s: s.__name__)
async def test_binance_over_a_real_recording(
    recorded_venue_harness: Harness, scenario: Any
) -> None:
    await scenario(recorded_venue_harness)


async def test_streams_carry_the_recorded_bytes_and_rest_serves_the_recorded_snapshot() -> None:
    records = list(read_recording(REAL))
    snapshot = next(r for r in records if r.stream.startswith("rest:"))
    diffs = [r.raw for r in records if r.stream.endswith("@depth@100ms")]
    replica = BinanceReplica(ping_interval=0.1, recording=REAL, speed=1.0)
    await replica.start()
    try:
        async with aiohttp.ClientSession() as session:
            # Asked before the recording reaches its snapshot, the depth endpoint waits
            # for it and answers the recording's own snapshot, byte for byte.
            depth = f"{replica.url}/api/v3/depth?symbol=BTCUSDT&limit=1000"
            async with session.get(depth) as resp:
                body = await resp.text()
            assert body == snapshot.raw
            url = f"{replica.ws_url}/stream?streams=btcusdt@depth@100ms"
            async with session.ws_connect(url) as ws:
                texts = [(await ws.receive()).data for _ in range(5)]
            # The venue's text, byte for byte, wrapped as a combined stream names it:
            # consecutive recorded events from wherever the playback was.
            prefix = '{"stream":"btcusdt@depth@100ms","data":'
            assert all(t.startswith(prefix) and t.endswith("}") for t in texts)
            got = [t[len(prefix) : -1] for t in texts]
            start = diffs.index(got[0])
            assert got == diffs[start : start + 5]
    finally:
        await replica.stop()


async def test_depth_after_recorded_diffs_is_the_book_they_built() -> None:
    """Later on, the REST book is the recorded snapshot with every recorded diff that
    follows it applied (the ones the recorder buffered before it included), exactly
    the book Binance's procedure builds from the same bytes; ``lastUpdateId`` is the
    last applied ``u``."""
    replica = BinanceReplica(ping_interval=0.1, recording=HFT, speed=20.0)
    await replica.start()
    try:
        await asyncio.wait_for(replica.playback_done.wait(), 10)
        async with aiohttp.ClientSession() as session:
            depth = f"{replica.url}/api/v3/depth?symbol=BTCUSDT&limit=5000"
            async with session.get(depth) as resp:
                snap = await resp.json()
    finally:
        await replica.stop()
    inst = Instrument(
        "v", "BTCUSDT", "BTC", "USDT", tick_size=Decimal("0.01"), lot_size=Decimal("1e-8")
    )
    source = BinanceSpotBookSource(inst)
    for record in read_hftbacktest(HFT):
        if record.stream.startswith("rest:"):
            source.on_snapshot(record.raw)
        elif "@depth" in record.stream:
            source.on_message(record.raw)
    assert source.book.state is BookState.LIVE and source.stats.gaps == 0
    assert snap["lastUpdateId"] == source.last_update_id

    def levels(side: list[list[str]]) -> list[tuple[int, int]]:
        return [(inst.price_to_ticks(p), inst.qty_to_lots(q)) for p, q in side]

    assert levels(snap["bids"]) == source.book.top(Side.BUY, 5000)
    assert levels(snap["asks"]) == source.book.top(Side.SELL, 5000)
    # Real levels at the venue's 8 decimals, finer than the 0.00001 order step.
    assert any(len(q.rstrip("0").partition(".")[2]) > 5 for _, q in snap["bids"] + snap["asks"])


def limit_ticks(order: Order) -> int:
    assert order.price_ticks is not None  # our bids are limit orders
    return order.price_ticks


async def test_a_recorded_trade_that_reaches_our_bid_fills_it_and_no_other() -> None:
    """The replica fills our resting buy from a recorded sell at or below its price
    (queue-blind, at our price, as maker) and leaves a bid no trade reaches alone."""
    replica = BinanceReplica(ping_interval=0.1, recording=REAL, speed=4.0)
    async with running(BINANCE_KIT, replica=replica, wait_live=False) as h:
        await h.wait_for(lambda: h.book.state is BookState.LIVE, "LIVE", 10)
        inst = h.instrument
        size = inst.qty_to_lots("0.001")
        best = h.book.best_bid()
        assert best is not None
        # 2000 USDT below the market: no recorded trade in the run reaches it.
        far = Order(
            "far-1", "binance", "BTCUSDT", Side.BUY, size, best[0] - 200_000, tif=TimeInForce.GTC
        )
        await h.place(far)
        # Join the best bid, and follow it up while the market rises away from us.
        placed: dict[str, Order] = {}
        for n in range(40):
            if any(h.sink.fills_of(cid) for cid in placed):
                break
            best = h.book.best_bid()
            assert best is not None
            open_ids = {o.client_id for o in replica.orders("BTCUSDT")}
            resting = [o for cid, o in placed.items() if cid in open_ids]
            if not resting or limit_ticks(resting[-1]) < best[0]:
                for old in resting:
                    h.adapter.submit([CancelOrder(old.client_id, "binance", "BTCUSDT")])
                near = Order(
                    f"near-{n}",
                    "binance",
                    "BTCUSDT",
                    Side.BUY,
                    size,
                    best[0],
                    tif=TimeInForce.POST_ONLY,  # refused if the market moved onto it
                )
                placed[near.client_id] = near
                h.adapter.submit([PlaceOrder(near)])
            await asyncio.sleep(0.3)
        filled = [f for cid in placed for f in h.sink.fills_of(cid)]
        assert filled, "a recorded sell reached our bid"
        for fill in filled:
            assert fill.price_ticks == placed[fill.client_id].price_ticks
            assert fill.liquidity is Liquidity.MAKER
        assert h.sink.fills_of("far-1") == []
        assert replica.recorded_fills == len(filled)
        assert "far-1" in [o.client_id for o in replica.orders("BTCUSDT")]
        assert h.book.state is BookState.LIVE


def test_a_missing_recording_or_bad_speed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"recording .*nope\.jsonl not found"):
        BinanceReplica(recording=tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="speed must be > 0"):
        BinanceReplica(recording=REAL, speed=0)
