"""Acceptance for ``type: ccxt`` (#16): one pure market-making manifest runs on the
dedicated ``binance`` adapter and on ``type: ccxt`` with ``exchange: binance``, each
against a fresh Binance replica driven by the same script, and both runs journal the
same fills (side, price, quantity, liquidity, in order)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from quoteforge.engine import Run
from quoteforge.exchanges.ccxt.venues import replica_urls
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS
from quoteforge.exchanges.testing.faults import ReplicaOrder
from quoteforge.manifest import load_manifest
from quoteforge.registry import PluginRegistry

STRATEGY = {
    "type": "pure_market_making",
    "exchange": "binance",
    "symbols": "BTCUSDT",
    "params": {
        "spread_bps": 2,
        "levels": 2,
        "level_spacing_bps": 2,
        "order_size": 0.002,
        "refresh_tolerance_bps": 1,
        "inventory_limit": 0.05,
        "inventory_skew_bps": 0,
    },
}

FILLS = 4
"""How many of our resting orders the script fills, alternating best bid and best ask."""


def manifest(venue: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "run": {"name": "acceptance", "mode": "live", "duration": "8s"},
            "exchanges": {
                "binance": {
                    **venue,
                    "secrets": {
                        "api_key": "${BINANCE_API_KEY}",
                        "api_secret": "${BINANCE_API_SECRET}",
                    },
                }
            },
            "strategies": {"mm": STRATEGY},
            "execution": {
                "type": "minimal_diff",
                "params": {"max_orders_per_second": 20, "max_cancels_per_second": 20},
            },
            "journal": {"type": "sqlite"},
            "report": {"html": False, "png": False},
        }
    )


def limit_price(order: ReplicaOrder) -> Decimal:
    assert order.price is not None  # our quotes are limit orders
    return order.price


async def script(run: Run, replica: BinanceReplica) -> None:
    """Wait for the four quotes to rest, fill the best bid (or ask) in full, wait for
    the quotes to be back, and so on; then let the run end and cancel."""
    task = asyncio.create_task(run.run())
    filled = 0
    while not task.done():
        await asyncio.sleep(0.05)
        resting = replica.orders("BTCUSDT")
        if filled >= FILLS or len(resting) != 4:
            continue
        side = "buy" if filled % 2 == 0 else "sell"
        ours = [o for o in resting if o.side == side]
        best = max(ours, key=limit_price) if side == "buy" else min(ours, key=limit_price)
        await replica.fill_order(best.client_id)
        filled += 1
        # The quotes come back (the filled level requoted) before the next fill.
        await asyncio.sleep(0.6)
    await task
    assert filled == FILLS, f"the script filled {filled} orders, wanted {FILLS}"


def journaled_fills(run_dir: Path) -> list[tuple[Any, ...]]:
    """Each journaled fill as (fill id, side, price ticks, lots, fee, fee asset,
    liquidity); client ids differ between runs (they carry a run prefix)."""
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        rows = conn.execute("SELECT payload FROM journal WHERE kind='fill' ORDER BY seq").fetchall()
    finally:
        conn.close()
    keys = ("fill_id", "side", "price_ticks", "qty_lots", "fee", "fee_asset", "liquidity")
    fills = [json.loads(payload)["fill"] for (payload,) in rows]
    # Fees compare as numbers: ccxt reads them into floats, so "0.00000200" comes back
    # as 0.000002 (the same amount).
    return [tuple(Decimal(f[k]) if k == "fee" else f[k] for k in keys) for f in fills]


@pytest.mark.slow
def test_ccxt_and_dedicated_binance_make_the_same_fills(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def one(kind: str) -> tuple[list[tuple[Any, ...]], list[Any]]:
        replica = BinanceReplica(ping_interval=0.1, seed=7)
        await replica.start()
        try:
            monkeypatch.setenv("BINANCE_API_KEY", replica.api_key)
            monkeypatch.setenv("BINANCE_API_SECRET", replica.api_secret)
            params: dict[str, Any] = dict(FAST_PARAMS)
            if kind == "binance":
                venue = {
                    "type": "binance",
                    "params": {**params, "rest_url": replica.url, "ws_url": replica.ws_url},
                }
            else:
                venue = {
                    "type": "ccxt",
                    "params": {
                        **params,
                        "exchange": "binance",
                        "urls": replica_urls("binance", replica),
                    },
                }
            loaded = load_manifest(f"{kind}.yaml", registry, text=manifest(venue))
            run = Run(loaded, registry, run_dir=tmp_path / kind)
            await script(run, replica)
            assert replica.orders("BTCUSDT") == [], "shutdown cancelled every open order"
            trades = [(t.order.side, t.price, t.qty) for t in replica.markets["BTCUSDT"].trades]
            return journaled_fills(tmp_path / kind), trades
        finally:
            await replica.stop()

    dedicated, dedicated_trades = asyncio.run(one("binance"))
    generic, generic_trades = asyncio.run(one("ccxt"))
    assert len(dedicated) == FILLS
    assert generic == dedicated
    assert generic_trades == dedicated_trades
    assert all(qty == Decimal("0.002") for _, _, qty in dedicated_trades)


def test_a_ccxt_sequence_gap_pulls_the_quotes_until_the_book_is_back(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gap in Binance's diff stream, seen by ccxt (ChecksumError): the book leaves
    LIVE, the run cancels its quotes at the venue, and quotes again once ccxt has
    rebuilt the book."""

    async def scenario() -> list[str]:
        replica = BinanceReplica(ping_interval=0.1, seed=7)
        await replica.start()
        try:
            monkeypatch.setenv("BINANCE_API_KEY", replica.api_key)
            monkeypatch.setenv("BINANCE_API_SECRET", replica.api_secret)
            venue = {
                "type": "ccxt",
                "params": {
                    **FAST_PARAMS,
                    "exchange": "binance",
                    "urls": replica_urls("binance", replica),
                },
            }
            loaded = load_manifest("gap.yaml", registry, text=manifest(venue))
            run = Run(loaded, registry, run_dir=tmp_path / "gap")
            task = asyncio.create_task(run.run())
            seen: list[str] = []

            async def until(cond: Any, what: str) -> None:
                for _ in range(200):
                    if cond():
                        seen.append(what)
                        return
                    await asyncio.sleep(0.02)
                raise AssertionError(f"timed out waiting for {what}; saw {seen}")

            await until(lambda: len(replica.orders("BTCUSDT")) == 4, "quoting")
            await replica.skip_sequence()
            await replica.churn("BTCUSDT", 3, seed=21)
            await until(lambda: not replica.orders("BTCUSDT"), "quotes pulled")
            await until(lambda: len(replica.orders("BTCUSDT")) == 4, "quoting again")
            await task
            return seen
        finally:
            await replica.stop()

    assert asyncio.run(scenario()) == ["quoting", "quotes pulled", "quoting again"]
    trace = (tmp_path / "gap" / "trace.jsonl").read_text(encoding="utf-8")
    assert "LIVE->RESYNCING: ccxt ChecksumError (checksum check failed)" in trace
    assert "RESYNCING->LIVE: ccxt book received" in trace
