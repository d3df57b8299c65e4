"""A broker that restarts without persistence loses every retained value: the claims,
sessions, heartbeats, instruments and book snapshots of the nodes running. These tests
run the nodes of a wall-clock split run in this process on a Mosquitto of their own
(on a free loopback port: they kill and restart it) and check what the nodes make of
the loss: a second execution node started meanwhile wins its claim, then stops once it
hears the first one, which claimed the role earlier (plugins/distributed/session_rivals.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker
from node_rigs import journal_records
from test_execution_node_restart import until
from test_execution_node_single import split_run

from quoteforge.plugins.bus_inprocess import InProcessBus
from quoteforge.plugins.bus_mqtt import MqttBus, MqttParams
from quoteforge.plugins.distributed.execution_instances import claim_topic
from quoteforge.plugins.distributed.node_base import Sessions
from quoteforge.plugins.distributed.session_rivals import SessionRivals
from quoteforge.plugins.distributed.topics import TopicScheme
from quoteforge.registry import PluginRegistry

#: The running nodes reconnect 4 s after the loss (a realistic backoff), long after a
#: node started meanwhile has claimed its role on the empty broker.
SLOW_RECONNECT = (
    "bus.params.reconnect_min_s=4",
    "bus.params.reconnect_max_s=4",
    "bus.params.reconnect_jitter=0",
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    made = Broker(workdir)
    made.start()
    try:
        yield made
    finally:
        made.kill()


def restart(broker: Broker) -> None:
    """Kill the broker and start it again on its port, with nothing retained."""
    broker.kill()
    broker.start()


def adopted(run_dir: Path) -> set[str]:
    """The client ids of the orders an execution node took from intents (journal)."""
    return {
        str(r.payload["order"]["client_id"])
        for r in journal_records(run_dir, "order")
        if isinstance(r.payload.get("order"), dict)
    }


async def test_a_second_execution_node_started_during_a_broker_loss_stops_for_the_first(
    registry: PluginRegistry, tmp_path: Path, broker: Broker
) -> None:
    async with split_run(registry, tmp_path, *SLOW_RECONNECT, port=broker.port) as split:
        watcher = split.watcher
        breakers: list[dict[str, Any]] = []
        watcher.bus.subscribe(split.scheme.breaker(), lambda t, p: breakers.append(p))
        first = split.start("execution", "a")
        strategy = split.start("strategy", "s")
        await until(lambda: len(watcher.reports) >= 2, "the strategy node quoting", 30)
        [session_a] = {s["instance"] for s in watcher.sessions}

        restart(broker)
        second = split.start("execution", "b")
        # Nothing retained and the others away: it wins its claim, and starts.
        await until(lambda: (split.tmp / "b" / "journal.sqlite").exists(), "b started", 15)
        # The first one claimed the role earlier: once they hear each other, it goes on.
        assert await asyncio.wait_for(second, 30) == 2
        assert not first.done() and not strategy.done()
        info_b = split.run_info("b")
        assert info_b["stop_reason"].startswith("refused: another execution node")
        assert "claimed the execution role before this one" in info_b["stop_reason"]
        assert session_a in info_b["stop_reason"]  # names the one that goes on
        [session_b] = {s["instance"] for s in watcher.sessions} - {session_a}
        [error] = [e for e in split.errors if "claimed the role after this one" in e]
        assert session_b in error  # the first names the one that stops
        await until(
            lambda: any(b["kind"] == "execution_conflict" for b in breakers), "the alert", 10
        )
        [alert] = [b for b in breakers if b["kind"] == "execution_conflict"]
        assert alert["severity"] == "critical" and alert["node"] == "execution"
        # b's announcement replaced a's retained one; a, going on, publishes its own again.
        announced = await retained(broker, split.name, split.scheme.node_session("execution"))
        assert announced["instance"] == session_a

        # The first one trades on: the strategy node's orders reach it again.
        before = set(watcher.reports)
        await until(lambda: len(set(watcher.reports) - before) >= 2, "quoting again", 30)
        split.kill()
        assert await asyncio.wait_for(first, 30) == 0
        assert await asyncio.wait_for(strategy, 30) == 0
        # No intent was acted on by both: each is addressed to one execution session.
        assert adopted(split.tmp / "a")
        assert not adopted(split.tmp / "a") & adopted(split.tmp / "b")


async def test_the_nodes_publish_their_retained_values_again_after_a_broker_loss(
    registry: PluginRegistry, tmp_path: Path, broker: Broker
) -> None:
    """Instruments, claims and book snapshots are retained values: a broker restarted
    without persistence lost them, and each node publishes its own again once it is
    back, so that a strategy node started afterwards finds the instruments."""
    async with split_run(registry, tmp_path, port=broker.port) as split:
        watcher, scheme = split.watcher, split.scheme
        execution = split.start("execution", "a")
        strategy = split.start("strategy", "s")
        await until(lambda: len(watcher.reports) >= 2, "the strategy node quoting", 30)
        restart(broker)
        await until(
            lambda: any(s.get("connects") == 2 for s in watcher.sessions), "reconnected", 15
        )
        await asyncio.sleep(0.5)
        probe = MqttBus(MqttParams(port=broker.port, heartbeat_interval_s=0), split.name)
        heard: dict[str, dict[str, Any]] = {}
        topics = [
            scheme.instruments("sim"),
            claim_topic(scheme, "execution"),
            claim_topic(scheme, "strategy"),
            scheme.book_snapshot("sim", "BTC/USDT"),
        ]
        await probe.start()
        try:

            def keep(topic: str, payload: dict[str, Any]) -> None:
                heard.setdefault(topic, payload)

            for topic in topics:
                probe.subscribe(topic, keep)
            # Retained values come at once; instruments and claims are sent no other time.
            await until(lambda: len(heard) == len(topics), f"retained {topics}", 0.8)
        finally:
            await probe.close()
        assert heard[claim_topic(scheme, "execution")]["state"] == "online"
        assert heard[claim_topic(scheme, "strategy")]["state"] == "online"
        split.kill()
        assert await asyncio.wait_for(execution, 30) == 0
        assert await asyncio.wait_for(strategy, 30) == 0


async def retained(broker: Broker, run: str, topic: str) -> dict[str, Any]:
    """The value the broker holds on ``topic``, as a node subscribing now reads it."""
    probe = MqttBus(MqttParams(port=broker.port, heartbeat_interval_s=0), run)
    heard: list[dict[str, Any]] = []
    await probe.start()
    try:
        probe.subscribe(topic, lambda t, p: heard.append(p))
        await until(lambda: bool(heard), f"the retained {topic}", 5)
    finally:
        await probe.close()
    return heard[-1]


async def test_a_second_market_data_node_started_during_a_broker_loss_stops_for_the_first(
    registry: PluginRegistry, tmp_path: Path, broker: Broker
) -> None:
    """The market-data role has the same run-time rule as the execution role: of two
    live market-data nodes, the one that claimed the role first goes on."""
    async with split_run(registry, tmp_path, *SLOW_RECONNECT, port=broker.port) as split:
        breakers: list[dict[str, Any]] = []
        split.watcher.bus.subscribe(split.scheme.breaker(), lambda t, p: breakers.append(p))
        first = split.start("marketdata", "m1")
        await until(lambda: (split.tmp / "m1" / "run.json").exists(), "m1 started", 15)
        first_session = await retained(broker, split.name, split.scheme.node_session("marketdata"))
        restart(broker)
        second = split.start("marketdata", "m2")
        # Nothing retained and the first away: it wins its claim and starts; once they
        # hear each other, it stops (exit 2) and names the first.
        assert await asyncio.wait_for(second, 30) == 2
        assert not first.done()
        # run.json keeps the --set values the node ran with (quoteforge kill --reset
        # reaches the broker they name).
        assert split.run_info("m2")["overrides"] == list(SLOW_RECONNECT)
        reason = split.run_info("m2")["stop_reason"]
        assert reason.startswith("refused: another marketdata node")
        assert first_session["instance"] in reason
        await until(
            lambda: any(b["kind"] == "marketdata_conflict" for b in breakers), "the alert", 10
        )
        announced = await retained(broker, split.name, split.scheme.node_session("marketdata"))
        assert announced["instance"] == first_session["instance"]
        split.kill()
        assert await asyncio.wait_for(first, 30) == 0


async def test_the_earlier_claim_publishes_its_retained_values_again_when_it_wins() -> None:
    """The loser's announcement may have replaced the winner's retained one at the
    broker: the winner publishes its own again (once per rival); the loser does not."""
    bus = InProcessBus()
    await bus.start()
    scheme = TopicScheme("r")
    announced: list[dict[str, Any]] = []
    bus.subscribe(scheme.node_session("execution"), lambda t, p: announced.append(p))
    sessions = Sessions(bus, scheme, "execution", lambda role: None)
    republished: list[str] = []
    sessions.on_reconnect(lambda: republished.append("claim mark"))
    sessions.start()
    lost: list[str] = []
    rivals = SessionRivals(
        "r", "execution", sessions.instance, 100, 2.0,
        lambda message, rival: lost.append(message), on_won=sessions.republish,
    )  # fmt: skip
    try:
        await until(lambda: len(announced) == 1, "the first announcement", 2)
        later = {"status": "online", "session": "b", "claimed_ns": 200, "sent_ns": time.time_ns()}
        rivals.on_heartbeat(scheme.heartbeat("execution"), later)
        await until(lambda: len(announced) == 2, "the announcement again", 2)
        assert announced[1]["instance"] == sessions.instance
        assert republished == ["claim mark"] and lost == []
        rivals.on_heartbeat(scheme.heartbeat("execution"), later)  # the same rival again
        await asyncio.sleep(0.3)
        assert len(announced) == 2
        earlier = {"status": "online", "session": "c", "claimed_ns": 50, "sent_ns": time.time_ns()}
        rivals.on_heartbeat(scheme.heartbeat("execution"), earlier)
        assert len(lost) == 1
        await asyncio.sleep(0.3)
        assert len(announced) == 2  # the loser republishes nothing
    finally:
        await sessions.stop()
        await bus.close()
