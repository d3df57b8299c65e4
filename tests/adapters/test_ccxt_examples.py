"""examples/ccxt_paper.yaml runs end to end with ccxt pointed at the Binance replica:
the book goes LIVE through ccxt.pro, the strategy quotes on it (paper orders, simulated
locally), and nothing reaches the replica's order book."""

from __future__ import annotations

import asyncio
import csv
import sqlite3
from pathlib import Path

import yaml

from quoteforge.engine import Run
from quoteforge.exchanges.ccxt.venues import replica_urls
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS
from quoteforge.manifest import load_manifest
from quoteforge.registry import PluginRegistry

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "ccxt_paper.yaml"


def test_ccxt_paper_example_against_the_binance_replica(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    async def scenario() -> tuple[Run, BinanceReplica]:
        replica = BinanceReplica(ping_interval=0.1)
        await replica.start()
        try:
            data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
            params = data["exchanges"]["binance"]["params"]
            params.update(FAST_PARAMS, urls=replica_urls("binance", replica))
            data["run"]["duration"] = "5s"
            data["report"] = {"html": False, "png": False}
            loaded = load_manifest(EXAMPLE, registry, text=yaml.safe_dump(data))
            run = Run(loaded, registry, run_dir=tmp_path / "paper")
            task = asyncio.create_task(run.run())
            while not task.done():  # a moving market
                await asyncio.sleep(0.3)
                await replica.churn("BTCUSDT", 5, seed=int(replica.now_ms()) % 1000)
            await task
            return run, replica
        finally:
            await replica.stop()

    run, replica = asyncio.run(scenario())
    assert replica.orders("BTCUSDT", open_only=False) == [], "paper orders never reach the venue"
    with (tmp_path / "paper" / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and rows[0]["market"].endswith("BTC/USDT")
    assert float(rows[0]["quoted_spread"] or 0) > 0, "the strategy quoted on the ccxt book"
    conn = sqlite3.connect(tmp_path / "paper" / "journal.sqlite")
    try:
        orders = conn.execute("SELECT count(*) FROM journal WHERE kind='order'").fetchone()[0]
    finally:
        conn.close()
    assert orders >= 4, "two levels a side were quoted (paper orders)"
    trace = (tmp_path / "paper" / "trace.jsonl").read_text(encoding="utf-8")
    assert "SYNCING->LIVE: ccxt book received" in trace
    assert run.orders.all_working() == []
