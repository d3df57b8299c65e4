"""Reconciliation when the venue cannot be asked directly: adapters without the fetch
methods, and the strategy node of a split run, which asks the execution node (the one
holding the real adapters) over a real Mosquitto broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from brokers import require_shared_broker
from canned_venue import BALANCES, FILLS, UPDATES, CannedVenue
from loguru import logger
from node_rigs import EXAMPLE, Observer, journal_records, wait_until, working_after, write_manifest
from pydantic import BaseModel
from split_nodes import Nodes

from quoteforge.assembly import VenueFactory
from quoteforge.bus import Bus
from quoteforge.clock import LiveClock
from quoteforge.engine import Run
from quoteforge.exchange import ExchangeAdapter, VenueContext
from quoteforge.exchanges.sim.venue import SimExchange, SimParams
from quoteforge.journal import JournalRecord
from quoteforge.manifest import PluginSpec, load_manifest
from quoteforge.model import OrderUpdate
from quoteforge.plugins.bus_mqtt import MqttBus, MqttParams
from quoteforge.plugins.distributed.remote import ReconcileError, ReconcileResponder, RemoteVenue
from quoteforge.plugins.distributed.topics import TopicScheme
from quoteforge.registry import PluginRegistry

CLOSED_BY_RECONCILE = "not open at the venue on reconciliation"


def closed_by_reconciliation(records: list[JournalRecord]) -> set[str]:
    return {
        r.payload["order"]["client_id"]
        for r in records
        if r.kind == "order_update"
        and (r.payload.get("update") or {}).get("reason") == CLOSED_BY_RECONCILE
    }


# ---------------------------------------------------------------------------------------
# An adapter that cannot report its open orders (one process, no broker)
# ---------------------------------------------------------------------------------------


class SilentSim(SimExchange):
    """The simulated venue without reconciliation methods, as a third-party adapter
    might be: the contract's defaults answer "cannot tell"."""

    fetch_open_orders = ExchangeAdapter.fetch_open_orders  # type: ignore[assignment]
    fetch_fills = ExchangeAdapter.fetch_fills  # type: ignore[assignment]
    fetch_balances = ExchangeAdapter.fetch_balances


class NoneOpenSim(SimExchange):
    """A venue that answers, and says no order of ours is open."""

    async def fetch_open_orders(self) -> list[OrderUpdate]:
        return []


def live_sim_manifest(registry: PluginRegistry) -> Any:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data.pop("nodes")
    data["bus"] = {"type": "inprocess"}
    data["run"].update({"mode": "live", "duration": None, "reconcile_interval": None})
    return load_manifest(EXAMPLE, registry, text=yaml.safe_dump(data))


def sim_factory(cls: type[SimExchange]) -> VenueFactory:
    """Makes every exchange of the manifest (all ``sim``) a ``cls``."""

    def make(name: str, spec: PluginSpec, params: BaseModel, ctx: VenueContext) -> SimExchange:
        assert isinstance(params, SimParams)
        return cls(params, ctx)

    return make


async def reconcile_with(
    registry: PluginRegistry, tmp_path: Path, cls: type[SimExchange]
) -> tuple[set[str], dict[str, int], set[str], list[str]]:
    """Working orders before, reconciliation counts, working orders after, warnings."""
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    run = Run(
        live_sim_manifest(registry),
        registry,
        run_dir=tmp_path / cls.__name__,
        clock=LiveClock(),
        venue_factory=sim_factory(cls),
    )
    try:
        await run.start()
        await wait_until(lambda: len(run.orders.all_working()) >= 4, 10, "quotes working")
        await asyncio.sleep(0.2)  # acknowledged by the venue
        before = {o.client_id for o in run.orders.all_working()}
        # A start/stop reconciliation (not periodic): every order is judged, young or not.
        counts = await run.reconcile(since_ns=run.started_ns)
        await run.reconcile(since_ns=run.started_ns)
        after = {o.client_id for o in run.orders.all_working()}
    finally:
        await run.stop()
        logger.remove(sink)
    return before, counts, after, warnings


async def test_reconcile_leaves_alone_the_orders_of_an_adapter_that_cannot_report_them(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    before, counts, after, warnings = await reconcile_with(registry, tmp_path, SilentSim)
    assert counts["closed"] == 0 and counts["adopted"] == 0
    assert before <= after  # nothing closed (the strategy may have added quotes)
    records = journal_records(tmp_path / "SilentSim")
    assert closed_by_reconciliation(records) == set()
    cannot = [w for w in warnings if "cannot report its open orders" in w]
    assert len(cannot) == 1, warnings  # said once, not at every reconciliation

    # The same orders at a venue that answers "none open" are closed: the difference is
    # the adapter saying it cannot tell.
    before, counts, after, _ = await reconcile_with(registry, tmp_path, NoneOpenSim)
    assert counts["closed"] >= len(before) >= 4
    assert not before & after


# ---------------------------------------------------------------------------------------
# Questions to the execution node over the broker
# ---------------------------------------------------------------------------------------


class Blind(CannedVenue):
    fetch_open_orders = ExchangeAdapter.fetch_open_orders
    fetch_fills = ExchangeAdapter.fetch_fills
    fetch_balances = ExchangeAdapter.fetch_balances


def _bus(port: int, run: str) -> MqttBus:
    params = MqttParams(
        port=port,
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
        connect_timeout_s=3,
        heartbeat_interval_s=0,
        close_timeout_s=1,
    )
    return MqttBus(params, run)


@pytest.fixture
async def two_buses() -> AsyncIterator[tuple[Bus, Bus, str]]:
    port = require_shared_broker()
    run = f"r{uuid.uuid4().hex[:10]}"
    strategy, execution = _bus(port, run), _bus(port, run)
    await strategy.start()
    await execution.start()
    yield strategy, execution, run
    await strategy.close()
    await execution.close()


def remote(bus: Bus, run: str, name: str, timeout_s: float = 5.0) -> RemoteVenue:
    ctx = VenueContext(name, LiveClock(), 1, "live", ["BTC/USDT"], secrets={"api_key": "k"})
    return RemoteVenue(
        ctx,
        lambda: bus,
        TopicScheme(run),
        ["mm"],
        host_role="execution",
        reconcile_timeout_s=timeout_s,
    )


async def test_remote_venue_reads_the_execution_nodes_venue_exactly(
    two_buses: tuple[Bus, Bus, str],
) -> None:
    strategy_bus, execution_bus, run = two_buses
    venues: dict[str, ExchangeAdapter] = {
        "sim": CannedVenue("sim"),
        "blind": Blind("blind"),
        "down": CannedVenue("down", fail=True),
    }
    responder = ReconcileResponder(lambda: execution_bus, TopicScheme(run), venues)
    responder.start()
    await execution_bus.flush(5)  # type: ignore[attr-defined]
    sim = remote(strategy_bus, run, "sim")
    # Questions run concurrently; each answer finds its own question.
    orders, fills, balances = await asyncio.gather(
        sim.fetch_open_orders(), sim.fetch_fills(1234), sim.fetch_balances()
    )
    assert orders == UPDATES
    assert fills == FILLS
    assert balances == BALANCES
    assert venues["sim"].since == [1234]  # type: ignore[attr-defined]
    assert sim.ctx.secrets == {}  # the strategy side never holds keys

    blind = remote(strategy_bus, run, "blind")
    assert await blind.fetch_open_orders() is None
    assert await blind.fetch_fills(0) is None
    assert await blind.fetch_balances() is None

    down = remote(strategy_bus, run, "down")
    with pytest.raises(
        ReconcileError, match="could not read open_orders: ConnectionError: REST 503"
    ):
        await down.fetch_open_orders()
    await responder.close()


async def test_a_question_nobody_answers_times_out_with_a_clear_error(
    two_buses: tuple[Bus, Bus, str],
) -> None:
    strategy_bus, _, run = two_buses
    venue = remote(strategy_bus, run, "sim", timeout_s=0.5)
    with pytest.raises(ReconcileError, match=r"no answer .*'open_orders'.* execution node"):
        await venue.fetch_open_orders()


async def test_a_question_asked_before_the_responder_subscribed_is_answered(
    two_buses: tuple[Bus, Bus, str],
) -> None:
    """The first question is lost (nobody listens yet); the repeat is answered."""
    strategy_bus, execution_bus, run = two_buses
    venue = remote(strategy_bus, run, "sim", timeout_s=8)
    asking = asyncio.ensure_future(venue.fetch_open_orders())
    await asyncio.sleep(0.5)
    assert not asking.done()
    ReconcileResponder(lambda: execution_bus, TopicScheme(run), {"sim": CannedVenue("sim")}).start()
    assert await asking == UPDATES


# ---------------------------------------------------------------------------------------
# Split runs: strategy and execution nodes as processes, live semantics, wall clock
# ---------------------------------------------------------------------------------------

# The execution node, with a hook to make its simulated venue lose one order: the test
# writes the client id to the file named by argv[4]; the venue drops the order from its
# book without any report, as a venue that lost it would.
LOSING_RUNNER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from quoteforge.exchanges.sim.venue import SimExchange
    from quoteforge.logs import configure_logging
    from quoteforge.plugins.distributed.nodes import load_node_manifest, run_node
    from quoteforge.registry import load_registry

    manifest, role, out, trigger = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    venues = []
    connect = SimExchange.connect

    async def recording_connect(self, sink):
        venues.append(self)
        await connect(self, sink)

    SimExchange.connect = recording_connect

    async def lose_one_order():
        while not trigger.exists():
            await asyncio.sleep(0.05)
        wanted = trigger.read_text().strip()
        lost = ""
        for venue in venues:
            entry = venue._our_orders.pop(wanted, None)
            if entry is not None and entry[0].engine.cancel(wanted) is not None:
                lost = wanted
        trigger.with_name("lost").write_text(lost)

    async def main():
        configure_logging("INFO")
        registry = load_registry()
        loaded, settings = load_node_manifest(manifest, registry)
        task = asyncio.create_task(lose_one_order())
        try:
            return await run_node(loaded, registry, role, out, Path(manifest), settings=settings)
        finally:
            task.cancel()

    sys.exit(asyncio.run(main()))
    """
)


def live_split_manifest(path: Path, port: int) -> tuple[Path, str]:
    """Live semantics on the wall clock (start, periodic and final reconciliation), a
    check every second, and quotes that stay put (wide tolerance, wide spread, no
    inventory skew) so that orders grow older than the reconciliation grace."""
    path, run = write_manifest(path, port=port, duration=600, clock="wall")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["run"].update({"mode": "live", "duration": None, "reconcile_interval": 1})
    for spec in data["strategies"].values():
        spec["params"].update(
            {"spread_bps": 60, "refresh_tolerance_bps": 500, "inventory_skew_bps": 0}
        )
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path, run


async def stop_strategy_then_execution(nodes: Nodes) -> None:
    nodes.procs["strategy"].send_signal(signal.SIGTERM)
    assert await nodes.wait(30, "strategy") == {"strategy": 0}, nodes.log("strategy")[-3000:]
    nodes.procs["execution"].send_signal(signal.SIGTERM)
    assert await nodes.wait(30, "execution") == {"execution": 0}, nodes.log("execution")[-3000:]


def reconcile_counts(records: list[JournalRecord]) -> list[dict[str, int]]:
    return [r.payload for r in records if r.kind == "reconcile"]


@pytest.fixture
async def observers() -> AsyncIterator[list[Observer]]:
    made: list[Observer] = []
    yield made
    for obs in made:
        await obs.bus.close()


@pytest.mark.slow
async def test_split_periodic_reconciliation_keeps_the_orders_the_venue_has(
    nodes: Nodes, observers: list[Observer], tmp_path: Path
) -> None:
    manifest, run = live_split_manifest(tmp_path / "m.yaml", nodes.broker.port)
    obs = Observer(nodes.broker, run)
    observers.append(obs)
    await obs.start()
    nodes.start(manifest, "execution", "strategy")
    strat_dir = nodes.dir("strategy")

    def checks_with_old_orders() -> int:
        try:
            counts = reconcile_counts(journal_records(strat_dir, "reconcile"))
        except Exception:  # the journal may not have its table yet
            return 0
        return sum(1 for c in counts if c["adopted"] >= 4)

    # Several periodic checks that found our (older than the grace) quotes at the venue.
    await wait_until(lambda: checks_with_old_orders() >= 3, 30, "three periodic checks")
    assert obs.working, "quotes are working at the venue"
    await stop_strategy_then_execution(nodes)

    strat_records = journal_records(strat_dir)
    assert closed_by_reconciliation(strat_records) == set()
    counts = reconcile_counts(strat_records)
    assert len(counts) >= 4  # (start,) three periodic checks or more, final
    assert all(c["closed"] == 0 and c["orphans_cancelled"] == 0 for c in counts), counts
    assert "reconciliation failed" not in nodes.log("strategy")
    assert working_after(strat_records) == []
    assert working_after(journal_records(nodes.dir("execution"))) == []
    assert nodes.info("execution")["open_orders_left"] == 0


@pytest.mark.slow
async def test_split_reconciliation_closes_an_order_the_venue_lost(
    nodes: Nodes, observers: list[Observer], tmp_path: Path
) -> None:
    manifest, run = live_split_manifest(tmp_path / "m.yaml", nodes.broker.port)
    obs = Observer(nodes.broker, run)
    observers.append(obs)
    await obs.start()
    trigger = tmp_path / "lose"
    runner = tmp_path / "losing_runner.py"
    runner.write_text(LOSING_RUNNER, encoding="utf-8")
    nodes.start(manifest, "strategy")
    log = (tmp_path / "execution.log").open("wb")
    nodes.procs["execution"] = subprocess.Popen(
        [
            sys.executable,
            str(runner),
            str(manifest),
            "execution",
            str(nodes.dir("execution")),
            str(trigger),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, **nodes.broker.env("execution")},
    )
    await wait_until(lambda: len(obs.working) >= 4, 30, "the strategy has quotes working")
    victim = sorted(obs.working)[0]
    trigger.write_text(victim, encoding="utf-8")
    await wait_until(lambda: (tmp_path / "lost").exists(), 10, "the venue lost the order")
    assert (tmp_path / "lost").read_text() == victim

    strat_dir = nodes.dir("strategy")

    def closed() -> set[str]:
        try:
            return closed_by_reconciliation(journal_records(strat_dir, "order_update"))
        except Exception:
            return set()

    await wait_until(lambda: victim in closed(), 20, "the lost order closed by reconciliation")
    await asyncio.sleep(1.5)  # one more periodic check
    await stop_strategy_then_execution(nodes)

    strat_records = journal_records(strat_dir)
    # Only the lost order: every other quote was at the venue when checked.
    assert closed_by_reconciliation(strat_records) == {victim}
    assert "periodic reconciliation repaired: {'closed': 1}" in nodes.log("strategy")
    assert working_after(strat_records) == []
    assert nodes.info("execution")["open_orders_left"] == 0
