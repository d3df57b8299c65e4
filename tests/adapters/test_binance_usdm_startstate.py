"""What the USDⓈ-M account holds when a run starts: refused under the default
``start_position: require_flat``; under ``adopt`` booked from positionRisk as the market's
opening position (journaled, kind ``opening``), so position, average price and unrealized
PnL agree with the venue while realized PnL starts at zero; and kept through a resume,
where the venue's position then includes the run's own fills."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
from binance_usdm_runs import EXAMPLES, long_qty, overrides, wait_for

from quoteforge.engine import Run
from quoteforge.exchanges.testing.binance_usdm_replica import BinanceUsdmReplica
from quoteforge.manifest import load_manifest
from quoteforge.registry import PluginRegistry

MANIFEST = EXAMPLES / "binance_usdm_testnet.yaml"
KEY = "usdm:ETHUSDT"
ADOPT = "exchanges.usdm.params.start_position=adopt"


def openings(run_dir: Path) -> list[tuple[str, dict[str, object]]]:
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        rows = conn.execute("SELECT market, payload FROM journal WHERE kind='opening'")
        return [(market, json.loads(payload)) for market, payload in rows.fetchall()]
    finally:
        conn.close()


async def fill_a_bid(replica: BinanceUsdmReplica) -> tuple[Decimal, Decimal]:
    """Someone sells into one of our bids: its (price, quantity)."""
    await wait_for(lambda: any(o.side == "buy" for o in replica.orders("ETHUSDT")), "a bid")
    bid = next(o for o in replica.orders("ETHUSDT") if o.side == "buy")
    price, qty = bid.price, bid.remaining
    assert price is not None
    await replica.fill_order(bid.client_id)
    return price, qty


def test_a_position_at_start_is_refused_by_default(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        replica = BinanceUsdmReplica(ping_interval=0.1)
        replica.positions[("ETHUSDT", "BOTH")] = [Decimal("0.25"), Decimal("2480.5")]
        await replica.start()
        try:
            monkeypatch.setenv("BINANCE_USDM_API_KEY", replica.api_key)
            monkeypatch.setenv("BINANCE_USDM_API_SECRET", replica.api_secret)
            loaded = load_manifest(MANIFEST, registry, overrides=overrides(replica))
            run = Run(loaded, registry, run_dir=tmp_path / "refused")
            with pytest.raises(ValueError, match=r"holds 0\.25 ETHUSDT \(entry 2480\.5\).*adopt"):
                await asyncio.wait_for(run.run(), 30)
            assert replica.orders("ETHUSDT") == [], "nothing was quoted"
        finally:
            await replica.stop()

    asyncio.run(scenario())


def test_an_adopted_position_is_the_opening_position_and_survives_a_resume(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "adopted"
    mark = Decimal("2600")

    async def scenario() -> dict[str, Decimal]:
        replica = BinanceUsdmReplica(ping_interval=0.1)
        replica.positions[("ETHUSDT", "BOTH")] = [Decimal("-0.25"), Decimal("2480.5")]
        await replica.start()
        out: dict[str, Decimal] = {}
        try:
            monkeypatch.setenv("BINANCE_USDM_API_KEY", replica.api_key)
            monkeypatch.setenv("BINANCE_USDM_API_SECRET", replica.api_secret)
            sets = [*overrides(replica), ADOPT]
            first = Run(
                load_manifest(MANIFEST, registry, overrides=sets), registry, run_dir=run_dir
            )
            task = asyncio.create_task(first.run())
            await wait_for(lambda: hasattr(first, "portfolio"), "the run started")
            pf = first.portfolio
            await wait_for(lambda: pf.position_lots(KEY) == -250, "the opening position")
            out["avg"] = pf.average_price(KEY) or Decimal(0)
            out["unrealized"] = pf.unrealized(KEY, mark)
            out["realized"] = pf.realized(KEY)
            out["fills"] = Decimal(pf.fill_count(KEY))
            # One of our bids fills: it buys back part of the short, at the bid.
            price, bought = await fill_a_bid(replica)
            out["price"] = price
            held = Decimal("-0.25") + bought
            await wait_for(lambda: long_qty(replica) == held, "the venue's position")
            lots = int(held * 1000)
            await wait_for(lambda: pf.position_lots(KEY) == lots, "the run saw the fill")
            out["realized_after"] = pf.realized(KEY)
            out["bought"] = bought
            first.kill("restart")
            await asyncio.wait_for(task, 30)
            # The resumed run takes its opening position from the journal, not the venue
            # (whose position now includes the first life's fill): no double count.
            again = Run(
                load_manifest(MANIFEST, registry, overrides=sets),
                registry,
                run_dir=run_dir,
                resume=True,
            )
            task = asyncio.create_task(again.run())
            await wait_for(lambda: hasattr(again, "portfolio"), "the resumed run started")
            await asyncio.sleep(0.5)
            out["resumed_lots"] = Decimal(again.portfolio.position_lots(KEY))
            out["venue_lots"] = long_qty(replica) * 1000
            out["resumed_avg"] = again.portfolio.average_price(KEY) or Decimal(0)
            out["resumed_realized"] = again.portfolio.realized(KEY)
            again.kill("done")
            await asyncio.wait_for(task, 30)
        finally:
            await replica.stop()
        return out

    out = asyncio.run(scenario())
    assert out["avg"] == Decimal("2480.5") and out["realized"] == 0 and out["fills"] == 0
    # A short of 0.25 from 2480.5 at a mark of 2600: what the venue reports as unrealized.
    assert out["unrealized"] == Decimal("-29.875")
    # Buying back part of the short realizes (entry - price) on what was bought back.
    assert out["realized_after"] == (Decimal("2480.5") - out["price"]) * out["bought"] != 0
    assert out["resumed_lots"] == out["venue_lots"] == (Decimal("-0.25") + out["bought"]) * 1000
    assert out["resumed_avg"] == Decimal("2480.5")
    assert out["resumed_realized"] == out["realized_after"]
    assert openings(run_dir) == [(KEY, {"qty_lots": -250, "entry_price": "2480.5"})]
