"""End to end on the USDⓈ-M replica: examples/binance_usdm_testnet.yaml (pure market
making) quotes, gets filled into a long position, is paid funding, survives the user
stream's listen key expiring, is killed (orders cancelled, the position left alone),
and ``quoteforge flatten`` then closes the position with reduce-only orders through the
order gate; the journal, summary and trace hold the position, funding and flatten."""

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
from quoteforge.exchanges.binance_usdm.flatten import FlattenError, flatten, flatten_main
from quoteforge.exchanges.testing.binance_usdm_replica import BinanceUsdmReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS
from quoteforge.manifest import load_manifest
from quoteforge.registry import PluginRegistry

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def overrides(replica: BinanceUsdmReplica, duration: str = "30s") -> list[str]:
    params = {**FAST_PARAMS, "rest_url": replica.url, "ws_url": replica.ws_url}
    return [
        *(f"exchanges.usdm.params.{k}={v}" for k, v in params.items()),
        "exchanges.usdm.params.testnet=false",
        f"run.duration={duration}",
        "run.cancel_timeout=20s",
        "report.html=false",
        "report.png=false",
    ]


async def wait_for(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


def long_qty(replica: BinanceUsdmReplica) -> Decimal:
    return replica.positions.get(("ETHUSDT", "BOTH"), [Decimal(0)])[0]


async def fill_a_bid(replica: BinanceUsdmReplica) -> Decimal:
    """Someone sells into one of our bids; returns the quantity (the strategy shrinks
    the side that grows its position, so sizes vary)."""
    await wait_for(lambda: any(o.side == "buy" for o in replica.orders("ETHUSDT")), "a bid")
    bid = next(o for o in replica.orders("ETHUSDT") if o.side == "buy")
    qty = bid.remaining
    await replica.fill_order(bid.client_id)
    return qty


def test_pure_market_making_on_usdm_then_kill_then_flatten(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "usdm"

    async def scenario() -> tuple[BinanceUsdmReplica, Any, Decimal, Decimal]:
        replica = BinanceUsdmReplica(ping_interval=0.1)
        await replica.start()
        try:
            monkeypatch.setenv("BINANCE_USDM_API_KEY", replica.api_key)
            monkeypatch.setenv("BINANCE_USDM_API_SECRET", replica.api_secret)
            sets = overrides(replica)
            loaded = load_manifest(EXAMPLES / "binance_usdm_testnet.yaml", registry, overrides=sets)
            run = Run(loaded, registry, run_dir=run_dir)
            task = asyncio.create_task(run.run())
            held = await fill_a_bid(replica)
            held += await fill_a_bid(replica)
            await wait_for(lambda: long_qty(replica) == held, "a long position")
            lots = int(held * 1000)
            await replica.publish_mark("ETHUSDT", "2600.00")
            paid = await replica.pay_funding("ETHUSDT", "0.0001")  # a long pays
            before = held
            # The user stream's key expires: the fill after it still reaches the run.
            await replica.expire_listen_key()
            await asyncio.sleep(0.5)
            held += await fill_a_bid(replica)
            lots = int(held * 1000)
            await wait_for(lambda: long_qty(replica) == held, "a longer position")
            await wait_for(
                lambda: run.portfolio.position_lots("usdm:ETHUSDT") == lots, "the run saw 3 fills"
            )
            await wait_for(lambda: run.portfolio.funding("usdm:ETHUSDT") == paid, "funding")
            run.kill("test")
            await asyncio.wait_for(task, 30)
            assert replica.orders("ETHUSDT") == [], "the kill cancelled every order"
            assert long_qty(replica) == held, "the kill closed no position"
            paper = load_manifest(
                EXAMPLES / "binance_usdm_paper.yaml", registry, overrides=sets[:-4]
            )
            with pytest.raises(FlattenError, match="paper run holds no venue positions"):
                await flatten(run_dir, paper, registry)
            result = await flatten(run_dir, loaded, registry, timeout_s=10)
            assert result.before == {"usdm:ETHUSDT": lots} and result.flat, result
            assert long_qty(replica) == 0, "flatten closed the position at the venue"
            for cid in result.orders:
                assert replica.order_meta[cid]["reduceOnly"] is True
            assert paid == -(before * 2600 * Decimal("0.0001")).quantize(Decimal("1e-8"))
            return replica, run, held, paid
        finally:
            await replica.stop()

    _, run, held, paid = asyncio.run(scenario())
    adapter_counters = run.venues["usdm"].counters
    assert adapter_counters["listen_key_renewals"] >= 1
    with (run_dir / "summary.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert Decimal(row["inventory"]) == held  # the position, signed
    assert int(row["fill_count"]) == 3
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        kinds = dict(conn.execute("SELECT kind, count(*) FROM journal GROUP BY kind").fetchall())
        funding = [
            json.loads(p)
            for (p,) in conn.execute("SELECT payload FROM journal WHERE kind='funding'")
        ]
        flattens = [
            json.loads(p)
            for (p,) in conn.execute("SELECT payload FROM journal WHERE kind='flatten'")
        ]
    finally:
        conn.close()
    assert kinds["fill"] == 3 + 1  # three quotes, one flatten order
    assert funding == [{"amount": str(paid), "asset": "USDT", "id": "9000000"}]
    assert kinds["position"] >= 1
    assert flattens[-1]["after_kill"] is True and flattens[-1]["after"] == {"usdm:ETHUSDT": 0}
    events = [json.loads(line) for line in (run_dir / "trace.jsonl").open()]
    assert any(e.get("event") == "funding" for e in events)
    # The command itself refuses what it cannot do, with the reason.
    assert flatten_main([str(tmp_path / "nothing")]) == 1


def test_paper_example_over_the_real_usdm_recording(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    """examples/binance_usdm_paper.yaml against the replica serving six minutes of real
    ETHUSDT USDⓈ-M traffic: the book goes LIVE on the real snapshot and pu-chained diffs
    and stays LIVE, the strategy quotes, and no order reaches the venue (paper fills)."""
    recording = (
        Path(__file__).resolve().parent.parent
        / "fixtures"
        / "real"
        / "binance"
        / "usdm_ethusdt_20240808.gz"
    )

    async def scenario() -> BinanceUsdmReplica:
        replica = BinanceUsdmReplica(ping_interval=0.1, recording=recording, speed=4.0)
        await replica.start()
        try:
            sets = [*overrides(replica, "8s"), "strategies.mm.params.spread_bps=0.5"]
            loaded = load_manifest(EXAMPLES / "binance_usdm_paper.yaml", registry, overrides=sets)
            await Run(loaded, registry, run_dir=tmp_path / "paper").run()
            return replica
        finally:
            await replica.stop()

    replica = asyncio.run(scenario())
    assert replica.played > 500, "the run went on over real traffic"
    assert replica.accepted == [], "paper orders never reach the venue"
    events = [json.loads(line) for line in (tmp_path / "paper" / "trace.jsonl").open()]
    states = [e["detail"] for e in events if e.get("event") == "book_state"]
    assert all(s.startswith("SYNCING->LIVE") for s in states), states
    ticks = [e for e in events if e.get("type") == "tick" and e.get("our_bid") is not None]
    assert ticks, "the strategy quoted on the real book"
