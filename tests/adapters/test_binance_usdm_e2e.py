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
import yaml
from binance_usdm_runs import EXAMPLES, long_qty, overrides, wait_for

from quoteforge.engine import Run
from quoteforge.exchanges.binance_usdm.flatten import FlattenError, flatten, flatten_main
from quoteforge.exchanges.testing.binance_usdm_replica import BinanceUsdmReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS
from quoteforge.manifest import load_manifest
from quoteforge.registry import PluginRegistry


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
    # The report: the position as the final inventory, and the funding.
    from quoteforge.plugins.report.metrics import analytics
    from quoteforge.plugins.report.rundata import load_run

    market = analytics(load_run(run_dir))["usdm:ETHUSDT"]
    assert market.funding == pytest.approx(float(paid))
    assert market.final_inventory == pytest.approx(float(held))
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
            sets = [*overrides(replica, "8s"), "strategies.mm.params.spread_bps=3"]
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


STRATEGY_PARAMS = {
    "avellaneda_stoikov": {
        "order_size": 0.01,
        "gamma": 0.05,
        "horizon": "infinite",
        "k": 0.3,
        "a": 0.5,
        "estimate_intensity": False,
        "vol_window_s": 5,
        "vol_min_samples": 2,
        "max_inventory": 10,
    },
    "ladder": {
        "levels": 3,
        "min_spacing_ticks": 2,
        "spacing_vol_factor": 0.5,
        "vol_horizon_s": 2,
        "size_growth": 0.6,
        "participation": 0.2,
        "min_total_size": 0.03,
        "max_total_size": 0.1,
        "max_position": 1,
    },
}


@pytest.mark.parametrize("strategy", sorted(STRATEGY_PARAMS))
def test_inventory_strategies_run_unchanged_on_the_position(
    strategy: str, registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Avellaneda-Stoikov and the ladder quote on USDⓈ-M as on spot: a fill of a bid
    makes the run's position (signed base quantity) long, which they read where spot
    strategies read inventory, and they go on quoting without halting."""

    async def scenario() -> tuple[Run, Decimal]:
        replica = BinanceUsdmReplica(ping_interval=0.1)
        await replica.start()
        monkeypatch.setenv("USDM_KEY", replica.api_key)
        monkeypatch.setenv("USDM_SECRET", replica.api_secret)
        try:
            manifest = {
                "run": {"name": f"usdm-{strategy}", "mode": "live", "duration": "6s"},
                "exchanges": {
                    "usdm": {
                        "type": "binance_usdm",
                        "params": {
                            **FAST_PARAMS,
                            "rest_url": replica.url,
                            "ws_url": replica.ws_url,
                        },
                        "secrets": {"api_key": "${USDM_KEY}", "api_secret": "${USDM_SECRET}"},
                    }
                },
                "strategies": {
                    "s": {
                        "type": strategy,
                        "exchange": "usdm",
                        "symbols": "ETHUSDT",
                        "params": STRATEGY_PARAMS[strategy],
                    }
                },
                "report": {"html": False, "png": False},
            }
            path = tmp_path / f"{strategy}.yaml"
            path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
            loaded = load_manifest(path, registry)
            run = Run(loaded, registry, run_dir=tmp_path / strategy)
            task = asyncio.create_task(run.run())

            async def churn() -> None:  # a moving book: the models estimate volatility
                while not task.done():
                    await replica.churn("ETHUSDT", 3)
                    await asyncio.sleep(0.1)

            churner = asyncio.create_task(churn())
            held = await fill_a_bid(replica)
            lots = int(held * 1000)
            await wait_for(lambda: run.portfolio.position_lots("usdm:ETHUSDT") == lots, "long")
            await wait_for(lambda: bool(replica.orders("ETHUSDT")), "quotes still working", 5)
            await task
            await churner
            return run, held
        finally:
            await replica.stop()

    run, held = asyncio.run(scenario())
    assert not any(srt.halted for srt in run.strategies.values())
    with (tmp_path / strategy / "summary.csv").open() as fh:
        assert Decimal(next(csv.DictReader(fh))["inventory"]) == held


def test_funding_is_back_in_the_pnl_after_a_resume(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Funding booked before a restart comes back from the journal on ``--resume``
    (once: the venue's income history reports it again, under the same id)."""
    run_dir = tmp_path / "resumed"

    async def scenario() -> tuple[Decimal, Decimal, Decimal]:
        replica = BinanceUsdmReplica(ping_interval=0.1)
        await replica.start()
        try:
            monkeypatch.setenv("BINANCE_USDM_API_KEY", replica.api_key)
            monkeypatch.setenv("BINANCE_USDM_API_SECRET", replica.api_secret)
            manifest = EXAMPLES / "binance_usdm_testnet.yaml"
            first = Run(
                load_manifest(manifest, registry, overrides=overrides(replica)),
                registry,
                run_dir=run_dir,
            )
            task = asyncio.create_task(first.run())
            await fill_a_bid(replica)
            paid = await replica.pay_funding("ETHUSDT", "0.0001")
            await wait_for(lambda: first.portfolio.funding("usdm:ETHUSDT") == paid, "funding")
            first.kill("restart")
            await asyncio.wait_for(task, 30)
            again = Run(
                load_manifest(manifest, registry, overrides=overrides(replica)),
                registry,
                run_dir=run_dir,
                resume=True,
            )
            task = asyncio.create_task(again.run())
            await wait_for(lambda: hasattr(again, "portfolio"), "the resumed run started")
            await asyncio.sleep(1.0)  # reconciliation asks the income history again
            booked = again.portfolio.funding("usdm:ETHUSDT")
            pnl = again.portfolio.pnl("usdm:ETHUSDT", Decimal("2600"))
            again.kill("done")
            await asyncio.wait_for(task, 30)
            return paid, booked, pnl
        finally:
            await replica.stop()

    paid, booked, pnl = asyncio.run(scenario())
    assert paid < 0 and booked == paid
    assert pnl != 0


def test_flatten_in_hedge_mode_says_which_offsetting_sides_remain(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In hedge mode the run's bid opens LONG and its ask opens SHORT. The run's position
    is their net; flatten closes the net with reduce-only orders, and the sides that then
    offset each other stay open: the result is not flat and names them."""
    run_dir = tmp_path / "hedged"

    async def scenario() -> tuple[Any, dict[tuple[str, str], list[Decimal]]]:
        replica = BinanceUsdmReplica(ping_interval=0.1, position_mode="hedge")
        await replica.start()
        try:
            monkeypatch.setenv("BINANCE_USDM_API_KEY", replica.api_key)
            monkeypatch.setenv("BINANCE_USDM_API_SECRET", replica.api_secret)
            sets = [*overrides(replica), "exchanges.usdm.params.position_mode=hedge"]
            loaded = load_manifest(EXAMPLES / "binance_usdm_testnet.yaml", registry, overrides=sets)
            run = Run(loaded, registry, run_dir=run_dir)
            task = asyncio.create_task(run.run())
            await fill_a_bid(replica)
            await wait_for(
                lambda: any(o.side == "sell" for o in replica.orders("ETHUSDT")), "an ask"
            )
            ask = next(o for o in replica.orders("ETHUSDT") if o.side == "sell")
            await replica.fill_order(ask.client_id)
            key = ("ETHUSDT", "SHORT")
            await wait_for(lambda: replica.positions.get(key, [0])[0] < 0, "a short side")
            run.kill("test")
            await asyncio.wait_for(task, 30)
            result = await flatten(run_dir, loaded, registry, timeout_s=10)
            return result, {k: list(v) for k, v in replica.positions.items()}
        finally:
            await replica.stop()

    result, sides = asyncio.run(scenario())
    held_long, held_short = sides[("ETHUSDT", "LONG")][0], sides[("ETHUSDT", "SHORT")][0]
    assert held_long == -held_short > 0, "the net was closed; equal opposite sides are left"
    assert result.after == {"usdm:ETHUSDT": 0} and not result.flat
    assert result.hedged == [
        f"usdm:ETHUSDT: LONG {held_long} and SHORT {-held_short} remain open (hedge mode): "
        "the run's position is their net, which no reduce-only order closes further; "
        "close them on the venue"
    ]


def test_flatten_refuses_while_the_run_goes_on_as_another_user(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started by another user (a service account) answers ``kill(pid, 0)`` with
    EPERM: it is alive, and flatten must not trade beside it."""
    monkeypatch.setenv("BINANCE_USDM_API_KEY", "k")
    monkeypatch.setenv("BINANCE_USDM_API_SECRET", "s")
    loaded = load_manifest(EXAMPLES / "binance_usdm_testnet.yaml", registry)
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "r1", "pid": 4_000_000}))

    def not_ours(pid: int, sig: int) -> None:
        assert (pid, sig) == (4_000_000, 0)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("os.kill", not_ours)
    with pytest.raises(FlattenError, match=r"still going \(pid 4000000, another user's\)"):
        asyncio.run(flatten(tmp_path, loaded, registry))
