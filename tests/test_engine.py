"""End-to-end runs on the simulated exchange: outputs, determinism, failure handling,
live parameter changes and graceful shutdown."""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest
from own_strategies import register_strategy

import quoteforge
from quoteforge.assembly import build_bus
from quoteforge.clock import NS, SimClock
from quoteforge.engine import Run, run_manifest
from quoteforge.manifest import load_manifest
from quoteforge.registry import PluginRegistry
from quoteforge.strategies.pure_market_making import PureMarketMaking, PureMarketMakingParams
from quoteforge.strategy import Market

ROOT = Path(__file__).resolve().parent.parent

BASE = """\
run:
  name: e2e
  duration: {duration}
  seed: {seed}
exchanges:
  sim:
    type: sim
    params:
      markets:
        BTC/USDT:
          tick_size: "0.01"
          lot_size: "0.0001"
          initial_price: 30000
          process: {{model: brownian, sigma: 0.0001}}
          flow: {{arrival_rate: 3.0, reach: 15.0, size: 0.05}}
          liquidity: {{levels: 5, distance: 20.0, spacing: 5.0, size: 0.2}}
          outages: {outages}
        YES/USD:
          kind: binary
          tick_size: "0.01"
          lot_size: "1"
          initial_price: 0.5
          process: {{model: jump, sigma: 0.004}}
          flow: {{arrival_rate: 2.0, reach: 0.03, size: 30}}
          liquidity: {{levels: 4, distance: 0.03, spacing: 0.01, size: 100}}
strategies:
  mm:
    type: {strategy}
    exchange: sim
    symbols: BTC/USDT
    params:
      {{spread_bps: 4, order_size: 0.05, levels: 2, inventory_limit: 1.0, inventory_skew_bps: 3}}
  mm_yes:
    type: pure_market_making
    exchange: sim
    symbols: YES/USD
    params: {{spread_bps: 300, order_size: 30, refresh_tolerance_bps: 50}}
risk:
  position:
    type: max_position
    params: {{max_position: 5000}}
report: {{html: false, png: false}}
"""


def manifest_text(
    duration: str = "90s", seed: int = 1, strategy: str = "pure_market_making", outages: str = "[]"
) -> str:
    return BASE.format(duration=duration, seed=seed, strategy=strategy, outages=outages)


def run_text(registry: PluginRegistry, text: str, run_dir: Path) -> Run:
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(text)
    loaded = load_manifest(path, registry)
    return asyncio.run(
        run_manifest(loaded, registry, run_dir=run_dir, manifest_path=path, install_signals=False)
    )


def read_summary(run_dir: Path) -> dict[str, dict[str, str]]:
    with (run_dir / "summary.csv").open() as fh:
        return {row["market"]: row for row in csv.DictReader(fh)}


def journal_rows(run_dir: Path, *kinds: str) -> list[dict[str, Any]]:
    """Journal payloads of the given kinds, in append order."""
    import sqlite3

    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        rows = conn.execute("SELECT kind, payload FROM journal ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(p) for kind, p in rows if kind in kinds]


def test_run_writes_outputs_and_fills_every_market(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    run = run_text(registry, manifest_text(), tmp_path / "r1")
    summary = read_summary(tmp_path / "r1")
    assert set(summary) == {"sim:BTC/USDT", "sim:YES/USD"}
    for row in summary.values():
        assert int(row["fill_count"]) > 0
        assert float(row["notional"]) > 0
    assert (tmp_path / "r1" / "manifest.yaml").read_text().startswith("run:")
    trace = [json.loads(line) for line in (tmp_path / "r1" / "trace.jsonl").open()]
    ticks = [r for r in trace if r["type"] == "tick"]
    fills = [r for r in trace if r["type"] == "fill"]
    assert len(ticks) >= 2 * 89  # one sample per second per market
    assert len(fills) == sum(int(r["fill_count"]) for r in summary.values())
    # Every fill is journaled exactly once, and nothing is left working at the end.
    journaled = journal_rows(tmp_path / "r1", "fill")
    assert len(journaled) == len(fills)
    assert len({j["fill"]["fill_id"] for j in journaled}) == len(journaled)
    assert run.orders.all_working() == []
    # Binary contracts are quoted and filled strictly inside (0, 1).
    yes = [f for f in fills if f["market"] == "sim:YES/USD"]
    assert yes and all(0 < f["price"] < 1 for f in yes)


def test_same_seed_same_run_different_seed_different_run(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    run_text(registry, manifest_text(seed=5), tmp_path / "a")
    run_text(registry, manifest_text(seed=5), tmp_path / "b")
    run_text(registry, manifest_text(seed=6), tmp_path / "c")
    a = (tmp_path / "a" / "trace.jsonl").read_text()
    b = (tmp_path / "b" / "trace.jsonl").read_text()
    c = (tmp_path / "c" / "trace.jsonl").read_text()
    # Client ids carry a per-process component; everything else must match exactly.
    strip = lambda text: [  # noqa: E731
        {k: v for k, v in json.loads(line).items() if k != "client_id"}
        for line in text.splitlines()
    ]
    assert strip(a) == strip(b)
    assert read_summary(tmp_path / "a") == read_summary(tmp_path / "b")
    assert strip(a) != strip(c)


class Exploding(PureMarketMaking):
    """Quotes like the pure market maker for a while, then raises inside on_book."""

    def __init__(self, ctx: Any, params: Any) -> None:
        super().__init__(ctx, params)
        self.calls = 0

    def on_book(self, market: Market, **kwargs: Any) -> list[quoteforge.Quote] | None:
        self.calls += 1
        if self.calls > 200:
            raise ZeroDivisionError("strategy bug")
        return super().on_book(market)


def test_strategy_exception_halts_that_strategy_only(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    register_strategy(registry, "exploding_test_strategy", Exploding)
    run = run_text(registry, manifest_text(strategy="exploding_test_strategy"), tmp_path / "x")
    assert run.strategies["mm"].halted
    assert not run.strategies["mm_yes"].halted
    trace = [json.loads(line) for line in (tmp_path / "x" / "trace.jsonl").open()]
    halted = [r for r in trace if r["type"] == "event" and r["event"] == "strategy_halted"]
    assert halted and "strategy bug" in halted[0]["detail"]
    # After the halt, the broken strategy's market has no quotes; the other keeps going.
    t_halt = halted[0]["t"]
    later = [r for r in trace if r["type"] == "tick" and r["t"] > t_halt + 1_000_000_000]
    btc = [r for r in later if r["market"] == "sim:BTC/USDT"]
    assert btc and all(r["our_bid"] is None and r["our_ask"] is None for r in btc)
    yes_fills = [
        r for r in trace if r["type"] == "fill" and r["market"] == "sim:YES/USD" and r["t"] > t_halt
    ]
    assert yes_fills


def test_quotes_are_pulled_while_book_is_stale(registry: PluginRegistry, tmp_path: Path) -> None:
    outages = "[{at: 30s, duration: 20s}]"
    run_text(registry, manifest_text(outages=outages), tmp_path / "o")
    trace = [json.loads(line) for line in (tmp_path / "o" / "trace.jsonl").open()]
    events = [r for r in trace if r["type"] == "event" and r["event"] == "book_state"]
    assert any("LIVE->STALE" in e["detail"] for e in events)
    assert any("RESYNCING->LIVE" in e["detail"] for e in events)
    start = trace[0]["t"]
    btc = [r for r in trace if r["type"] == "tick" and r["market"] == "sim:BTC/USDT"]
    during = [r for r in btc if start + 32e9 <= r["t"] <= start + 49e9]
    after = [r for r in btc if r["t"] >= start + 52e9]
    assert during and all(r["state"] == "STALE" for r in during)
    assert all(r["our_bid"] is None and r["our_ask"] is None for r in during)
    assert any(r["our_bid"] is not None and r["our_ask"] is not None for r in after)


def spread_bps(run: Run) -> float:
    params = run.strategies["mm"].strategy.params
    assert isinstance(params, PureMarketMakingParams)
    return params.spread_bps


def test_live_param_change_applies_and_bad_change_is_refused(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(manifest_text(duration="1h"))
    loaded = load_manifest(path, registry)
    run = Run(loaded, registry, run_dir=tmp_path / "live", manifest_path=path)

    async def scenario() -> None:
        task = asyncio.create_task(run.run())
        await asyncio.sleep(0.5)
        path.write_text(manifest_text(duration="1h").replace("spread_bps: 4,", "spread_bps: 9,"))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if spread_bps(run) == 9:
                break
        assert spread_bps(run) == 9
        path.write_text(manifest_text(duration="1h").replace("spread_bps: 4,", "spread_bps: -3,"))
        await asyncio.sleep(0.8)
        assert spread_bps(run) == 9  # refused, old kept
        run.request_stop("test done")
        await task

    asyncio.run(scenario())
    trace = [json.loads(line) for line in (tmp_path / "live" / "trace.jsonl").open()]
    kinds = [r["event"] for r in trace if r["type"] == "event"]
    assert "params_applied" in kinds and "params_refused" in kinds
    assert run.stop_reason == "test done"


def test_sigint_stops_cleanly_cancelling_orders(tmp_path: Path) -> None:
    manifest = tmp_path / "long.yaml"
    manifest.write_text(manifest_text(duration="24h"))
    out = tmp_path / "sig"
    proc = subprocess.Popen(
        [sys.executable, "-m", "quoteforge.cli", "run", str(manifest), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "trace.jsonl").exists():
        time.sleep(0.1)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    info = json.loads((out / "run.json").read_text())
    assert info["stop_reason"] == "signal SIGINT"
    assert "sim:BTC/USDT" in stdout  # the summary table was printed
    # Every order the run placed ended in a terminal state, journaled before exit.
    final: dict[str, str] = {}
    for row in journal_rows(out, "order", "order_update", "fill"):
        order = row.get("order")
        if order:
            final[order["client_id"]] = order["status"]
    assert final
    open_states = {"pending_new", "open", "partially_filled", "pending_cancel", "pending_replace"}
    assert [cid for cid, status in final.items() if status in open_states] == []


def _final_order_states(run_dir: Path) -> dict[str, str]:
    final: dict[str, str] = {}
    for row in journal_rows(run_dir, "order", "order_update", "fill"):
        order = row.get("order")
        if order:
            final[order["client_id"]] = order["status"]
    return final


OPEN_STATES = {"pending_new", "open", "partially_filled", "pending_cancel", "pending_replace"}


def test_kill_command_cancels_everything_and_stops(tmp_path: Path) -> None:
    manifest = tmp_path / "long.yaml"
    manifest.write_text(manifest_text(duration="24h"))
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "quoteforge.cli", "run", str(manifest), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "trace.jsonl").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    killer = subprocess.run(
        [sys.executable, "-m", "quoteforge.cli", "kill", str(out), "--reason", "desk says stop"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "kill switch sent" in killer.stdout
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    info = json.loads((out / "run.json").read_text())
    # The signal carries the operator's reason (it said only "signal SIGUSR1"); the
    # KILL file, polled, may come first.
    assert info["stop_reason"] in (
        "kill switch: quoteforge kill: desk says stop",
        "kill switch: file: desk says stop",
    )
    assert "ALERT kill [critical]" in stderr
    final = _final_order_states(out)
    assert final
    assert [c for c, s in final.items() if s in OPEN_STATES] == []
    # A second kill of a finished run is harmless and says so.
    again = subprocess.run(
        [sys.executable, "-m", "quoteforge.cli", "kill", str(out)], capture_output=True, text=True
    )
    assert again.returncode == 0
    assert "already finished" in again.stdout


def test_kill_from_the_bus(registry: PluginRegistry, tmp_path: Path) -> None:
    path = tmp_path / "bus.yaml"
    path.write_text(manifest_text(duration="1h"))
    loaded = load_manifest(path, registry)
    run = Run(loaded, registry, run_dir=tmp_path / "bus", manifest_path=path)

    async def scenario() -> None:
        task = asyncio.create_task(run.run())
        while not run.markets:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        run.bus.publish(f"quoteforge/{run.topic_run}/control/kill", {"reason": "risk desk"})
        await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    assert run.killed
    assert run.stop_reason == "kill switch: bus: risk desk"
    assert run.orders.all_working() == []
    assert any(a.kind == "kill" for a in run.alerts)


def test_a_run_is_composed_through_its_extension_points(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    """What a split run's strategy node uses instead of subclassing Run: a bus of its
    own, extra run.json fields, a driver that ends and winds down the run, and callbacks
    when the run has started and when its kill switch is pulled."""
    path = tmp_path / "x.yaml"
    path.write_text(manifest_text(duration="1h"))
    loaded = load_manifest(path, registry)
    bus = build_bus(loaded, registry)
    seen: list[str] = []
    working_at_kill: list[int] = []

    class Driver:
        async def drive(self, run: Run) -> None:
            assert isinstance(run.clock, SimClock)
            run.clock.run_until(run.clock.now_ns() + 5 * NS)
            working_at_kill.append(len(run.orders.all_working()))
            run.kill("probe")
            assert run.stop_requested
            await run.wait_stopped()

        async def cancel_everything(self, run: Run) -> None:
            seen.append("cancel")
            run.pull_quotes()
            assert isinstance(run.clock, SimClock)
            run.clock.run_until(run.clock.now_ns() + NS)

    run = Run(
        loaded,
        registry,
        run_dir=tmp_path / "x",
        manifest_path=path,
        bus=bus,
        run_info={"role": "probe"},
        driver=Driver(),
        on_started=lambda r: seen.append(f"started {r.run_id}"),
        on_kill=lambda source: seen.append(f"kill {source}"),
    )
    asyncio.run(run.run())
    assert run.bus is bus
    assert seen == ["started x", "kill probe", "cancel"]
    assert working_at_kill[0] > 0
    assert run.orders.all_working() == []
    assert run.stop_reason == "kill switch: probe"
    info = json.loads((tmp_path / "x" / "run.json").read_text())
    assert info["role"] == "probe"
    assert info["stop_reason"] == "kill switch: probe"


def test_breaker_halts_latches_and_resets(registry: PluginRegistry, tmp_path: Path) -> None:
    text = manifest_text(duration="90s", outages="[{at: 20s, duration: 10s}]") + (
        "breakers: {stale_after_s: 2, mode: halt, latch: true}\n"
    )
    path = tmp_path / "brk.yaml"
    path.write_text(text)
    loaded = load_manifest(path, registry)
    run = Run(loaded, registry, run_dir=tmp_path / "brk")
    start = run.clock.now_ns()
    cleared: list[Any] = []
    run.clock.call_at(start + 60 * 10**9, lambda: cleared.extend(run.reset_breakers("all")))
    asyncio.run(run.run())
    assert [t.kind for t in cleared] == ["stale_data"]
    trace = [json.loads(line) for line in (tmp_path / "brk" / "trace.jsonl").open()]
    alerts = [r for r in trace if r["type"] == "event" and r["event"] == "alert"]
    assert any("breaker" in a["detail"] and "HALT" in a["detail"] for a in alerts)
    # The stale-data trip is per market. Latched: no BTC quotes between the trip and the
    # reset, although its book is LIVE again from 30 s; quoting resumes after the reset.
    ticks = [r for r in trace if r["type"] == "tick"]
    btc = [r for r in ticks if r["market"] == "sim:BTC/USDT"]
    halted = [r for r in btc if start + 33e9 <= r["t"] <= start + 59e9]
    after = [r for r in ticks if r["t"] >= start + 62e9]
    assert halted
    assert all(r["our_bid"] is None and r["our_ask"] is None for r in halted)
    assert any(r["our_bid"] is not None for r in after if r["market"] == "sim:BTC/USDT")
    assert any(r["our_bid"] is not None for r in after if r["market"] == "sim:YES/USD")
    kinds = journal_rows(tmp_path / "brk", "breaker")
    assert kinds and kinds[0]["mode"] == "halt"


def test_reduce_breaker_only_lets_position_reducing_quotes_through(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    # The floor trips (and latches) as soon as the run starts: a first sample below it.
    text = manifest_text(duration="60s") + "breakers: {pnl_floor: 0, mode: reduce}\n"
    path = tmp_path / "red.yaml"
    path.write_text(text)

    def below_the_floor(run: Run) -> None:
        assert run.breakers is not None
        run.breakers.on_sample(run.clock.now_ns(), {}, Decimal("-1"))

    run = Run(
        load_manifest(path, registry),
        registry,
        run_dir=tmp_path / "red",
        on_started=below_the_floor,
    )
    asyncio.run(run.run())
    assert run.breakers is not None
    assert run.breakers.state() == "reduce"
    [tripped] = [r.ts_ns for r in run.journal.read(("breaker",))]
    trace = [json.loads(line) for line in (tmp_path / "red" / "trace.jsonl").open()]
    assert tripped < trace[0]["t"] + 30 * NS, "it tripped early in the run"
    checked = 0
    for r in trace:
        if r["type"] != "tick" or r["t"] < tripped + 2 * NS:
            continue
        checked += 1
        # Flat: nothing reduces, so nothing is quoted; long: only asks; short: only bids.
        if r["inventory"] == 0:
            assert r["our_bid"] is None and r["our_ask"] is None
        elif r["inventory"] > 0:
            assert r["our_bid"] is None
        else:
            assert r["our_ask"] is None
    assert checked > 10


def test_a_strategy_can_hold_markets_on_several_exchanges(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    base = manifest_text(duration="30s")
    second = (
        base.split("exchanges:\n", 1)[1]
        .split("strategies:\n", 1)[0]
        .replace("  sim:\n", "  sim_b:\n", 1)
    )
    text = base.replace("strategies:\n", second + "strategies:\n", 1).replace(
        "    symbols: BTC/USDT\n", "    symbols: [BTC/USDT, 'sim_b:BTC/USDT']\n", 1
    )
    run = run_text(registry, text, tmp_path / "two")
    assert set(run.strategies["mm"].markets) == {"sim:BTC/USDT", "sim_b:BTC/USDT"}
    summary = read_summary(tmp_path / "two")
    assert int(summary["sim_b:BTC/USDT"]["fill_count"]) > 0
    bad = text.replace("'sim_b:BTC/USDT'", "'sim_c:BTC/USDT'")
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    with pytest.raises(Exception, match="no exchange 'sim_c' for 'sim_c:BTC/USDT'"):
        load_manifest(path, registry)


class Unwinder(PureMarketMaking):
    """Starts a TWAP buying 0.2 BTC over 20 s on its first book, and quotes nothing."""

    def __init__(self, ctx: Any, params: Any) -> None:
        super().__init__(ctx, params)
        self.algo: Any = None

    def on_book(self, market: Market, **kwargs: Any) -> list[quoteforge.Quote] | None:
        if self.algo is None:
            lots = market.instrument.qty_to_lots("0.2")
            self.algo = self.ctx.execute(
                "twap", market, quoteforge.Side.BUY, lots, duration_s=20, slices=4, band_bps=20
            )
        return []


def test_execution_algorithm_gets_its_fills_from_the_engine(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    register_strategy(registry, "twap_test_strategy", Unwinder)
    run = run_text(
        registry, manifest_text(duration="40s", strategy="twap_test_strategy"), tmp_path / "tw"
    )
    strategy = run.strategies["mm"].strategy
    assert isinstance(strategy, Unwinder)
    assert strategy.algo is not None
    assert strategy.algo.done
    assert strategy.algo.filled_lots == 2000
    assert run.portfolio.position("sim:BTC/USDT") == Decimal("0.2")


class _HeldSim:
    """A simulated venue whose open-order list, asked by the start-up reconciliation of
    a live run, is answered only when the test says so; meanwhile its books move."""

    released: ClassVar[asyncio.Event] = asyncio.Event()
    submitted_while_held: ClassVar[list[object]] = []

    @staticmethod
    def build(params: Any, ctx: Any) -> Any:
        from quoteforge.exchanges.sim.venue import SimExchange

        class Held(SimExchange):
            async def fetch_open_orders(self) -> Any:
                await _HeldSim.released.wait()
                return await super().fetch_open_orders()

            def submit(self, actions: Any) -> None:
                if not _HeldSim.released.is_set():
                    _HeldSim.submitted_while_held.extend(actions)
                super().submit(actions)

        return Held(params, ctx)

    @quoteforge.hookimpl
    def quoteforge_register_exchanges(self, register: Any) -> None:
        from quoteforge.exchanges.sim.venue import SimParams

        register("held_sim", self.build, params=SimParams, description="sim, reconciled late")


def test_no_strategy_hears_or_quotes_before_the_start_up_reconciliation(
    tmp_path: Path,
) -> None:
    """A live run reconciles with its venues before its strategies start (orders an
    earlier life left open are cancelled first). Books that go on moving meanwhile reach
    no strategy and cause no order; once reconciled, the strategies start and quote."""
    registry = PluginRegistry()
    registry.load_entry_points()
    registry.register_module(_HeldSim(), "held_sim")
    path = tmp_path / "m.yaml"
    path.write_text(
        BASE.format(duration="3s", seed=3, outages="[]", strategy="pure_market_making")
        .replace("type: sim", "type: held_sim")
        .replace("name: e2e", "name: e2e\n  mode: live"),
        encoding="utf-8",
    )
    loaded = load_manifest(path, registry, overrides=["report.html=false", "report.png=false"])
    run = Run(loaded, registry, run_dir=tmp_path / "run")
    _HeldSim.released = asyncio.Event()
    _HeldSim.submitted_while_held = []

    async def scenario() -> None:
        task = asyncio.create_task(run.run())
        await asyncio.sleep(1.0)  # the books move; the reconciliation waits
        moved = run.venues["sim"].books["BTC/USDT"].ts_ns
        await asyncio.sleep(0.5)
        assert run.venues["sim"].books["BTC/USDT"].ts_ns != moved
        assert _HeldSim.submitted_while_held == []
        assert run.orders.all_orders() == []
        _HeldSim.released.set()
        await task

    asyncio.run(scenario())
    assert run.orders.all_orders(), "once reconciled, the strategy quoted"
