"""One execution node per run (plugins/distributed/execution_instances.py): a new execution
node cancels the orders of its run a dead one left resting at the venue (at its start,
and whatever the venue still lists at its stop), and a second execution node refuses to
start while another instance of the run is online.

Real ExecutionNodes in this process on the shared test broker; the resting orders live
at the local Binance replica, which outlives the nodes as a venue does."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from brokers import require_shared_broker
from loguru import logger

from quoteforge.exchange import PlaceOrder
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS
from quoteforge.model import Order, OrderStatus, Side
from quoteforge.plugins.bus_mqtt import MqttBus, MqttParams
from quoteforge.plugins.distributed.execution_node import ExecutionNode
from quoteforge.plugins.distributed.nodes import load_node_manifest, run_node
from quoteforge.plugins.distributed.topics import TopicScheme
from quoteforge.plugins.distributed.wire import intent_payload
from quoteforge.registry import PluginRegistry

REPO = Path(__file__).resolve().parents[1]
BINANCE = REPO / "examples" / "binance_testnet.yaml"
SIM = REPO / "examples" / "distributed" / "sim_nodes.yaml"
SYMBOL = "BTCUSDT"
INSECURE_BUS = {"host": "127.0.0.1", "insecure": True, "connect_timeout_s": 3}


def manifest(path: Path, source: Path, port: int, replica: BinanceReplica | None = None) -> Path:
    """``source`` on the anonymous shared broker with fast node timings; the Binance
    example pointed at ``replica``."""
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    data["run"].update({"name": f"r{uuid.uuid4().hex[:10]}", "duration": 60, "cancel_timeout": 3})
    if replica is not None:
        data["exchanges"]["binance"]["params"].update(
            {**FAST_PARAMS, "rest_url": replica.url, "ws_url": replica.ws_url, "testnet": False}
        )
    data["bus"] = {"type": "mqtt", "params": {**INSECURE_BUS, "port": port}}
    data["nodes"] = {"heartbeat": 0.5, "strategy_grace": 2, "stale_after": 2, "clock": "wall"}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


class Watcher:
    """A bus client of the run: order reports, execution heartbeats and sessions."""

    def __init__(self, port: int, run: str) -> None:
        self.bus = MqttBus(MqttParams(port=port, heartbeat_interval_s=0), run)
        self.scheme = TopicScheme(run)
        self.reports: dict[str, list[str]] = {}
        self.heartbeats: list[dict[str, Any]] = []
        self.sessions: list[dict[str, Any]] = []

    async def start(self, venue: str) -> None:
        await self.bus.start()
        self.bus.subscribe(self.scheme.order(venue), self._on_order)
        self.bus.subscribe(
            self.scheme.heartbeat("execution"), lambda t, p: self.heartbeats.append(p)
        )
        self.bus.subscribe(
            self.scheme.node_session("execution"), lambda t, p: self.sessions.append(p)
        )
        await self.bus.flush(5)

    def _on_order(self, topic: str, payload: dict[str, Any]) -> None:
        self.reports.setdefault(payload["client_id"], []).append(payload["status"])


async def crashed(node: ExecutionNode) -> None:
    """The node's process as SIGKILL leaves it: it is gone from the bus (here with a
    goodbye, put right below by the retained "online" its last will has not yet
    replaced) and nothing of it cancels anything; its venue connection stays for the
    test to place through."""
    await node.sessions.stop()
    for task in node._tasks:
        task.cancel()
    await asyncio.gather(*node._tasks, return_exceptions=True)
    await node.publisher.stop()
    await node.reconciler.close()
    await node.bus.close()
    node.replay.publish = lambda *args: None  # type: ignore[method-assign]


def far_bid(node: ExecutionNode, replica: BinanceReplica, client_id: str) -> Order:
    """A resting buy 3% under the venue's best bid, under the run's client-id scheme."""
    [inst] = node.venues["binance"].instruments.values()
    best = replica.book(SYMBOL)["bids"][0][0]
    price = int(best * Decimal("0.97") / inst.tick_size)
    lots = int(Decimal("0.001") / inst.lot_size)
    return Order(client_id, "binance", inst.symbol, Side.BUY, lots, price, strategy="mm")


def open_at(replica: BinanceReplica) -> set[str]:
    return {o.client_id for o in replica.orders(SYMBOL)}


async def test_a_new_execution_node_cancels_the_orders_a_dead_one_left_at_the_venue(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = require_shared_broker()
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    monkeypatch.setenv("BINANCE_API_KEY", replica.api_key)
    monkeypatch.setenv("BINANCE_API_SECRET", replica.api_secret)
    path = manifest(tmp_path / "m.yaml", BINANCE, port, replica)
    loaded, settings = load_node_manifest(path, registry)
    watcher = Watcher(port, loaded.manifest.run.name)
    await watcher.start("binance")
    dead = ExecutionNode(loaded, registry, tmp_path / "dead", settings, path)
    new = ExecutionNode(loaded, registry, tmp_path / "new", settings, path)
    prefix = dead.orders.id_prefix
    running: asyncio.Task[str] | None = None
    try:
        await dead.bus.start()
        await dead.start()
        dead.sessions.start()
        orphan = f"{prefix}-s1-1"
        payload, _ = intent_payload(PlaceOrder(far_bid(dead, replica, orphan)), "mm", 1)
        dead.apply_intent(payload, "test")
        await until(lambda: orphan in open_at(replica), "the order resting at the venue")
        await crashed(dead)
        watcher.bus.publish(
            watcher.scheme.heartbeat("execution"),
            {"status": "online", "node": "execution", "client_id": "dead"},
            qos=1,
            retain=True,
        )
        # A new execution process: it takes the silent "online" for a dead node, starts,
        # and cancels the order its run left resting, telling the strategy node so.
        running = asyncio.get_running_loop().create_task(new.run())
        await until(
            lambda: any(s.get("run_dir") == str(new.run_dir) for s in watcher.sessions),
            "the new node's session",
            15,
        )
        await until(lambda: orphan not in open_at(replica), "the orphan cancelled", 10)
        await until(
            lambda: OrderStatus.CANCELLED.value in watcher.reports.get(orphan, []),
            "its cancel report on the bus",
        )
        # An order of the run the new node never knew, listed at its stop: cancelled too.
        late = f"{prefix}-s1-2"
        dead.venues["binance"].submit([PlaceOrder(far_bid(dead, replica, late))])
        await until(lambda: late in open_at(replica), "a second orphan resting")
        new.request_stop("test over")
        assert await asyncio.wait_for(running, 20) == "test over"
        assert open_at(replica) == set()
        info = json.loads((tmp_path / "new" / "run.json").read_text(encoding="utf-8"))
        assert info["open_orders_left"] == 0
    finally:
        if running is not None and not running.done():
            new.request_stop("test failed")
            await asyncio.gather(running, return_exceptions=True)
        for venue in dead.venues.values():
            await venue.close()
        await watcher.bus.close()
        await replica.stop()


async def test_a_second_execution_node_refuses_to_start_beside_a_live_one(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    port = require_shared_broker()
    path = manifest(tmp_path / "m.yaml", SIM, port)
    loaded, settings = load_node_manifest(path, registry)
    watcher = Watcher(port, loaded.manifest.run.name)
    await watcher.start("sim")
    first = ExecutionNode(loaded, registry, tmp_path / "first", settings, path)
    running = asyncio.get_running_loop().create_task(first.run())
    errors: list[str] = []
    sink = logger.add(errors.append, level="ERROR", format="{message}")
    try:
        await until(lambda: bool(watcher.sessions), "the first node's session", 15)
        beats = len(watcher.heartbeats)
        code = await run_node(
            loaded,
            registry,
            "execution",
            tmp_path / "second",
            path,
            settings=settings,
            install_signals=False,
        )
        assert code == 2
        [message] = [e for e in errors if "refused to start" in e]
        assert "\n" not in message.strip()
        assert f"another execution node of run {loaded.manifest.run.name!r} is online" in message
        assert str(tmp_path / "first") in message  # names the running instance
        assert "stop it first" in message
        info = json.loads((tmp_path / "second" / "run.json").read_text(encoding="utf-8"))
        assert info["stop_reason"].startswith("refused: ")
        assert not (tmp_path / "second" / "journal.sqlite").exists()
        # The running node is untouched: its heartbeat never said offline, it still runs.
        await until(lambda: len(watcher.heartbeats) > beats, "the first node's next heartbeat")
        assert all(b["status"] == "online" for b in watcher.heartbeats)
        assert not running.done()
    finally:
        logger.remove(sink)
        first.request_stop("test over")
        await asyncio.wait_for(running, 20)
        await watcher.bus.close()
