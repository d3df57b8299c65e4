"""examples/polymarket.yaml end to end against the Polymarket replica: adaptive_binary
quotes the YES and NO tokens as one market, inside (0, 1) on the venue's tick, resting
orders fill, the combined position is in the portfolio and the report, every fill is
journaled, nothing is left open, and no secret reaches the run folder."""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from quoteforge.engine import Run, run_manifest
from quoteforge.exchanges.testing.conformance import FAST_PARAMS
from quoteforge.exchanges.testing.polymarket_replica import PolymarketReplica
from quoteforge.manifest import load_manifest
from quoteforge.registry import PluginRegistry

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "polymarket.yaml"
YES, NO = "event/YES", "event/NO"


def test_polymarket_example_against_the_replica(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> tuple[Run, PolymarketReplica, list[dict[str, str]]]:
        replica = PolymarketReplica(ping_interval=0.1, markets={"event": "0.50"})
        await replica.start()
        try:
            for name, value in replica.secrets.items():
                monkeypatch.setenv(f"POLYMARKET_{name.upper()}", value)
            params = {
                **FAST_PARAMS,
                "rest_url": replica.url,
                "ws_url": replica.market_ws_url,
                "private_ws_url": replica.user_ws_url,
                "markets.event": f"'{replica.condition_id('event')}'",
            }
            sets = [f"exchanges.polymarket.params.{k}={v}" for k, v in params.items()]
            sets += ["run.duration=6s", "run.cancel_timeout=10s", "report.png=false"]
            loaded = load_manifest(EXAMPLE, registry, overrides=sets)
            task = asyncio.create_task(
                run_manifest(loaded, registry, run_dir=tmp_path / "run", install_signals=False)
            )
            filled = 0
            seen: list[dict[str, str]] = []
            while not task.done():
                await asyncio.sleep(0.4)
                for symbol in (YES, NO):
                    for order in replica.orders(symbol):
                        seen.append(replica.order_row(order))
                        if filled < 6:
                            await replica.fill_order(order.client_id, Decimal(5))
                            filled += 1
            run = await task
            assert replica.orders("event") == [], "shutdown cancelled every open order"
            return run, replica, seen
        finally:
            await replica.stop()

    run, replica, seen = asyncio.run(scenario())
    tokens = {row["asset_id"] for row in seen}
    cond = replica.conditions["event"]
    assert tokens == {cond.yes, cond.no}, "both tokens quoted"
    for row in seen:
        price = Decimal(row["price"])
        assert 0 < price < 1 and price % Decimal("0.01") == 0, row
    # One market from two sides: never a YES bid at or above 1 - (our NO bid).
    yes_bids = [
        Decimal(r["price"]) for r in seen if r["asset_id"] == cond.yes and r["side"] == "BUY"
    ]
    no_bids = [Decimal(r["price"]) for r in seen if r["asset_id"] == cond.no and r["side"] == "BUY"]
    if yes_bids and no_bids:
        assert max(yes_bids) + min(no_bids) < 1 or min(yes_bids) + max(no_bids) < 1
    with (tmp_path / "run" / "summary.csv").open() as fh:
        rows = {r["market"]: r for r in csv.DictReader(fh)}
    fills = sum(int(r["fill_count"]) for r in rows.values())
    assert fills > 0
    conn = sqlite3.connect(tmp_path / "run" / "journal.sqlite")
    try:
        journaled = conn.execute("SELECT count(*) FROM journal WHERE kind='fill'").fetchone()[0]
    finally:
        conn.close()
    assert journaled == fills
    yes_key, no_key = f"polymarket:{YES}", f"polymarket:{NO}"
    combined = run.portfolio.combined_position(yes_key)
    assert combined == run.portfolio.position(yes_key) - run.portfolio.position(no_key)
    assert float(combined) == float(rows[yes_key]["inventory"]) - float(rows[no_key]["inventory"])
    # The report, as `quoteforge run` writes it at the end (the report plugin's hook).
    registry.pm.hook.quoteforge_write_report(run_dir=tmp_path / "run", html=True, png=False)
    report = (tmp_path / "run" / "report.html").read_text()
    assert "combined position" in report
    shown = f"<td>polymarket:event</td><td>YES {float(rows[yes_key]['inventory']):g}"
    assert shown in report.replace(",", ""), "the report shows the combined position"
    assert run.orders.all_working() == []
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in replica.secrets.values():
                assert value.encode() not in data, f"a secret reached {path.name}"


def test_a_market_resolving_during_a_run_is_booked_and_closes_the_position(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example trading, then its market resolves (YES wins): every token held is
    settled at 1 (YES) or 0 (NO) through the run's fill path, so both positions end flat,
    the settlements are journaled, and the PnL is exactly the cash the run paid and got."""

    async def scenario() -> PolymarketReplica:
        replica = PolymarketReplica(ping_interval=0.1, markets={"event": "0.50"})
        await replica.start()
        try:
            for name, value in replica.secrets.items():
                monkeypatch.setenv(f"POLYMARKET_{name.upper()}", value)
            params = {
                **FAST_PARAMS,
                "rest_url": replica.url,
                "ws_url": replica.market_ws_url,
                "private_ws_url": replica.user_ws_url,
                "markets.event": f"'{replica.condition_id('event')}'",
                "resolution_poll_s": 0.5,
            }
            sets = [f"exchanges.polymarket.params.{k}={v}" for k, v in params.items()]
            sets += ["run.duration=6s", "run.cancel_timeout=10s", "report.png=false"]
            loaded = load_manifest(EXAMPLE, registry, overrides=sets)
            task = asyncio.create_task(
                run_manifest(loaded, registry, run_dir=tmp_path / "run", install_signals=False)
            )
            filled: set[str] = set()
            while not task.done():
                await asyncio.sleep(0.3)
                for symbol in (YES, NO):
                    for order in replica.orders(symbol):
                        if symbol not in filled:
                            await replica.fill_order(order.client_id)
                            filled.add(symbol)
                if filled == {YES, NO} and not replica.conditions["event"].closed:
                    await asyncio.sleep(0.5)
                    await replica.resolve("event", "YES")
            await task
            return replica
        finally:
            await replica.stop()

    replica = asyncio.run(scenario())
    assert replica.conditions["event"].closed
    with (tmp_path / "run" / "summary.csv").open() as fh:
        rows = {r["market"]: r for r in csv.DictReader(fh)}
    assert float(rows[f"polymarket:{YES}"]["inventory"]) == 0
    assert float(rows[f"polymarket:{NO}"]["inventory"]) == 0
    events = [json.loads(line) for line in (tmp_path / "run" / "trace.jsonl").open()]
    fills = [e for e in events if e.get("type") == "fill"]
    settled = {e["market"]: e["price"] for e in fills if e["fill_id"].startswith("resolution:")}
    assert settled == {f"polymarket:{YES}": 1, f"polymarket:{NO}": 0}
    cash = sum((1 if e["side"] == "sell" else -1) * e["price"] * e["qty"] for e in fills)
    pnl = sum(float(r["pnl"]) for r in rows.values())
    assert pnl == pytest.approx(cash, abs=1e-9)
    conn = sqlite3.connect(tmp_path / "run" / "journal.sqlite")
    try:
        journaled = conn.execute(
            "SELECT count(*) FROM journal WHERE kind='fill' AND payload LIKE '%resolution:%'"
        ).fetchone()[0]
    finally:
        conn.close()
    assert journaled == 2
