"""The kill switch of a split run reaches the nodes that were away when it was pulled
(plugins/distributed/kill_latch.py): the Binance example as three node processes over
the secured Mosquitto (the shipped ACL), against the local Binance replica.

``control/kill`` is not retained and nodes reconnect with a clean session, so a node cut
off from the broker at that moment never heard it. Now the kill is latched at the broker
(retained ``state/kill``): an execution node paused past its keepalive hears it as it
reconnects, cancels at the venue and stops; a strategy node whose broker is down when
the kill is pulled holds its exit until the broker has it; a node started while the run
is latched refuses, naming ``quoteforge kill RUN_DIR --reset``, which clears it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from brokers import Broker, SecureBroker
from split_nodes import Nodes
from test_nodes_real_venue import (
    SYMBOL,
    credentials,
    journal_kinds,
    running_replica,
    split_binance_manifest,
    start_split,
    stop_as_an_operator,
    until,
)

from quoteforge.plugins.bus_mqtt import MqttBus, MqttParams
from quoteforge.plugins.distributed.kill_latch import is_latched, latch_topic
from quoteforge.plugins.distributed.topics import TopicScheme

pytestmark = pytest.mark.slow


def fast_keepalive(manifest: Path) -> Path:
    """The broker drops a silent node after 1.5 keepalives: 3 s."""
    data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    data["bus"]["params"]["keepalive"] = 2
    manifest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return manifest


def pull_kill(nodes: Nodes, role: str, secure_broker: SecureBroker) -> None:
    """``quoteforge kill <that node's folder>``, as an operator types it."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "quoteforge.cli",
            "kill",
            str(nodes.dir(role)),
            "--reason",
            "operator",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **secure_broker.env(role)},
    )
    assert done.returncode == 0, done.stderr


def kill_reset(
    folder: Path, secure_broker: SecureBroker, role: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quoteforge.cli", "kill", str(folder), "--reset"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **secure_broker.env(role)},
    )


async def latch_at_broker(secure_broker: SecureBroker, run: str) -> dict[str, object] | None:
    """The retained ``state/kill`` of ``run``, as a node reads it at (re)subscribe."""
    bus = MqttBus(secure_broker.params("monitor"), run)
    heard: list[dict[str, object]] = []
    await bus.start()
    try:
        bus.subscribe(latch_topic(TopicScheme(run)), lambda t, p: heard.append(p))
        await bus.flush(5)
        await asyncio.sleep(0.5)
    finally:
        await bus.close()
    return heard[-1] if heard else None


async def test_an_execution_node_cut_off_when_the_kill_is_pulled_hears_it_as_it_reconnects(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    async with running_replica() as replica:
        manifest = split_binance_manifest(tmp_path / "m.yaml", replica, secure_broker.port)
        await start_split(nodes, replica, fast_keepalive(manifest))
        run = yaml.safe_load(manifest.read_text(encoding="utf-8"))["run"]["name"]
        quotes = replica.orders(SYMBOL)
        assert len(quotes) >= 2

        # The execution node's host pauses past the keepalive: the broker drops it
        # (and sends its last will).
        beats: list[dict[str, object]] = []
        watcher = MqttBus(secure_broker.params("monitor"), run)
        await watcher.start()
        watcher.subscribe(TopicScheme(run).heartbeat("execution"), lambda t, p: beats.append(p))
        pid = nodes.procs["execution"].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await until(
                lambda: any(b.get("status") == "offline" for b in beats), 15, "dropped", nodes
            )
            await watcher.close()
            pull_kill(nodes, "strategy", secure_broker)
            codes = await nodes.wait(30, "strategy", "marketdata")
            # Its orders' cancels had no execution node to go through: not confirmed,
            # so the strategy node says so and exits 1.
            assert codes == {"strategy": 1, "marketdata": 0}
            assert nodes.info("strategy")["orders_left_open"] == len(quotes)
            assert "did NOT reach the broker" not in nodes.log("strategy")
            # It never heard the kill: its quotes stand at the venue.
            assert len(replica.orders(SYMBOL)) == len(quotes)
            latch = await latch_at_broker(secure_broker, run)
            assert latch is not None and is_latched(latch) and latch["node"] == "strategy"
        finally:
            os.kill(pid, signal.SIGCONT)
        woke = time.monotonic()

        # On its reconnect the broker hands it the latch: it cancels and stops at once,
        # not only when the strategy node's grace has run out, and journals the kill.
        assert (await nodes.wait(20, "execution")) == {"execution": 0}
        assert time.monotonic() - woke < 10
        assert replica.orders(SYMBOL) == []
        info = nodes.info("execution")
        assert "latched kill switch" in info["stop_reason"]
        assert "on the strategy node: quoteforge kill: operator" in info["stop_reason"]
        assert journal_kinds(nodes.dir("execution"), "breaker") >= 1

        # A node started for the run now refuses, naming the way out; once cleared it runs.
        first = tmp_path / "node-execution-first"
        nodes.dir("execution").rename(first)
        nodes.start(manifest, "execution", env=credentials(replica))
        assert (await nodes.wait(30, "execution")) == {"execution": 2}
        log = nodes.log("execution")
        assert f"the kill switch of run {run!r} is latched" in log
        assert f"quoteforge kill {nodes.dir('execution')} --reset" in log
        assert not replica.orders(SYMBOL, open_only=True)

        done = kill_reset(first, secure_broker, "execution")
        assert done.returncode == 0, done.stderr
        assert "kill switch cleared" in done.stdout and "on the strategy node" in done.stdout
        again = kill_reset(first, secure_broker, "execution")
        assert "no kill switch was latched" in again.stdout

        nodes.dir("execution").rename(tmp_path / "node-execution-refused")
        for role in ("strategy", "marketdata"):  # the strategy's holds the KILL file
            nodes.dir(role).rename(tmp_path / f"node-{role}-killed")
        await start_split(nodes, replica, manifest)
        await stop_as_an_operator(nodes, replica)


async def test_a_kill_pulled_while_the_broker_is_down_goes_out_when_it_is_back(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    async with running_replica() as replica:
        manifest = split_binance_manifest(tmp_path / "m.yaml", replica, secure_broker.port)
        await start_split(nodes, replica, manifest)
        secure_broker.kill()
        try:
            pull_kill(nodes, "strategy", secure_broker)
            # It cancels, and gives up its final reconciliation, first.
            await until(
                lambda: "the broker is away" in nodes.log("strategy"), 40, "the hold", nodes
            )
            await asyncio.sleep(1.0)
            assert nodes.procs["strategy"].poll() is None  # held: the kill is not out yet
        finally:
            secure_broker.start()  # without the retained values: the latch comes after
        codes = await nodes.wait(40)
        assert codes["execution"] == 0 and codes["marketdata"] == 0
        # The strategy node's cancels waited on the broker past run.cancel_timeout: it
        # could not confirm them, says so and exits 1 (the execution node cancelled them).
        assert codes["strategy"] == 1
        assert nodes.info("strategy")["orders_left_open"] >= 2
        assert "did NOT reach the broker" not in nodes.log("strategy")
        assert replica.orders(SYMBOL) == []
        for role in ("execution", "marketdata"):
            assert "kill switch" in nodes.info(role)["stop_reason"], nodes.log(role)


async def test_a_bus_that_never_gets_its_broker_back_gives_up_after_its_hold(
    tmp_path: Path,
) -> None:
    """The hold is bounded: with the broker gone for good, close returns after it and
    says what was not delivered."""
    broker = Broker(tmp_path)
    broker.start()
    bus = MqttBus(
        MqttParams(port=broker.port, heartbeat_interval_s=0, reconnect_max_s=0.2), "t-hold"
    )
    await bus.start()
    broker.kill()
    await until_disconnected(bus)
    bus.publish(latch_topic(TopicScheme("t-hold")), {"state": "killed"}, qos=1, retain=True)
    bus.hold_close_s = 1.0
    started = time.monotonic()
    await bus.close()
    assert 1.0 <= time.monotonic() - started < 5
    assert bus.undelivered == 1


async def until_disconnected(bus: MqttBus) -> None:
    deadline = time.monotonic() + 10
    while bus.connected:
        assert time.monotonic() < deadline, "the bus never noticed its broker gone"
        await asyncio.sleep(0.05)
