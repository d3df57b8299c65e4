"""Nodes whose wall clocks disagree, within what the books tolerate (``stale_after``): a
live heartbeat shows its sender alive whatever its ``sent_ns``, so the run trades and
guards as with agreeing clocks, and the skew is warned of once. The Binance example as
three node processes against the local Binance replica, over the secured Mosquitto."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
import yaml
from brokers import SecureBroker
from split_nodes import Nodes
from test_nodes_real_venue import (
    SYMBOL,
    credentials,
    running_replica,
    split_binance_manifest,
    start_split,
    until,
)

from quoteforge.exchanges.testing.binance_replica import BinanceReplica

SKEWED = "clocks disagree; synchronise them (NTP)"


def manifest(tmp_path: Path, replica: BinanceReplica, port: int, **timings: float) -> Path:
    path = split_binance_manifest(tmp_path / "m.yaml", replica, port)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["nodes"].update(timings)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.slow
async def test_an_execution_node_ahead_still_pulls_a_killed_strategy_nodes_quotes(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    # strategy_grace 2 s; the execution node's clock 3 s ahead: every strategy heartbeat
    # looks 3 s old to it, yet each one arrived live and shows the node alive.
    async with running_replica() as replica:
        m = manifest(tmp_path, replica, secure_broker.port)
        nodes.start(m, "execution", env=credentials(replica), clock_skew_s=3.0)
        nodes.start(m, "marketdata", "strategy", env=credentials(replica))
        await until(lambda: len(replica.orders(SYMBOL)) >= 2, 20, "quotes at the venue", nodes)
        # It warns of the skew (once the heartbeats have differed for a while)...
        await until(lambda: SKEWED in nodes.log("execution"), 10, "the skew warned of", nodes)
        assert "the strategy node's clock" in nodes.log("execution")
        nodes.procs["strategy"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        # ...and trips strategy_lost after strategy_grace (2 s) of silence all the same.
        await until(lambda: not replica.orders(SYMBOL), 6, "the quotes pulled", nodes)
        assert time.monotonic() - killed < 6
        assert "BREAKER strategy_lost" in nodes.log("execution")


@pytest.mark.slow
async def test_a_second_execution_node_ahead_does_not_trade_beside_a_live_one(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    async with running_replica() as replica:
        m = manifest(tmp_path, replica, secure_broker.port)
        await start_split(nodes, replica, m)
        working = {o.client_id for o in replica.orders(SYMBOL)}
        # Its clock 3 s ahead: the live node's heartbeats look older than its dead-after.
        nodes.start(m, "execution", env=credentials(replica), name="second", clock_skew_s=3.0)
        assert (await nodes.wait(15, "second")) == {"second": 2}, nodes.log("second")
        assert "node of run" in nodes.log("second") and "is online" in nodes.log("second")
        assert nodes.procs["execution"].poll() is None
        # The first one's quotes stand (or were requoted by it): it still trades.
        await asyncio.sleep(1.0)
        assert replica.orders(SYMBOL), "no quotes left"
        assert working & {o.client_id for o in replica.orders(SYMBOL, open_only=False)}


@pytest.mark.slow
async def test_a_strategy_node_ahead_quotes_and_warns_of_the_skew(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    # 2 s ahead with stale_after 3 s: within what the books tolerate, past half of it.
    async with running_replica() as replica:
        m = manifest(tmp_path, replica, secure_broker.port, stale_after=3)
        nodes.start(m, "execution", "marketdata", env=credentials(replica))
        nodes.start(m, "strategy", env=credentials(replica), clock_skew_s=2.0)
        await until(lambda: len(replica.orders(SYMBOL)) >= 2, 20, "quotes at the venue", nodes)

        def warned() -> list[str]:
            return [x for x in nodes.log("strategy").splitlines() if SKEWED in x]

        # One warning per node it hears (execution, market data), once its heartbeats
        # have differed for a while (not one read late).
        await until(lambda: len(warned()) >= 2, 8, "the skew warned of", nodes)
        assert all("WARNING" in line for line in warned()), warned()
        assert any("execution node's clock" in x and "behind" in x for x in warned())
        assert any("market-data node's clock" in x and "behind" in x for x in warned())
        # Once per session: one line per sending node, not one per heartbeat.
        await asyncio.sleep(1.5)
        assert len(warned()) == 2, warned()
