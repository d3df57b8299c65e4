"""A fill made at the venue as the kill switch is pulled reaches both journals of a
split run: the Binance example as three node processes over the secured Mosquitto (the
shipped ACL), against the local Binance replica.

The venue's user stream is silent at that moment, so the fill is only visible over REST.
On the kill the execution node cancels everything at once, then, before it closes its
venues, looks for fills since its start that it has not journaled (journals and
publishes them) and answers the strategy node's final reconciliation until that node
has said goodbye. Before, it closed its venues as soon as it heard the kill: neither
journal had the fill and the strategy node's final reconciliation failed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from brokers import SecureBroker
from split_nodes import Nodes
from test_nodes_real_venue import (
    SYMBOL,
    journal_kinds,
    running_replica,
    split_binance_manifest,
    start_split,
)

pytestmark = pytest.mark.slow


async def test_a_fill_made_at_the_kill_while_the_user_stream_is_silent_reaches_both_journals(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    async with running_replica() as replica:
        manifest = split_binance_manifest(tmp_path / "m.yaml", replica, secure_broker.port)
        await start_split(nodes, replica, manifest)
        assert journal_kinds(nodes.dir("execution"), "fill") == 0

        # The user stream goes silent, a taker fills one of our quotes, and the kill
        # switch is pulled on the strategy node (as ``quoteforge kill`` does) at once.
        await replica.go_silent(3.0)
        order = replica.orders(SYMBOL)[0]
        await replica.fill_order(order.client_id)
        os.kill(nodes.procs["strategy"].pid, signal.SIGUSR1)

        codes = await nodes.wait(40)
        assert codes == {"strategy": 0, "execution": 0, "marketdata": 0}
        for role in ("strategy", "execution", "marketdata"):
            assert "kill switch" in nodes.info(role)["stop_reason"], nodes.log(role)
        assert replica.orders(SYMBOL) == []  # the kill still cancels everything

        # The fill is in the record of truth and in the strategy node's journal, and the
        # strategy node's final reconciliation got its answers.
        assert journal_kinds(nodes.dir("execution"), "fill") == 1, nodes.log("execution")
        assert journal_kinds(nodes.dir("strategy"), "fill") == 1, nodes.log("strategy")
        assert nodes.info("execution")["fills"] == 1
        assert "final reconciliation failed" not in nodes.log("strategy")
        assert "ExchangeClosedByUser" not in nodes.log("strategy")


async def test_a_kill_whose_cancels_the_venue_refuses_ends_the_execution_node_with_exit_1(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    """The venue answers 500 to every order request from the kill on: the execution node
    cannot confirm its orders closed, nor read the venue's open orders at stop. It
    counts them as open (it said 0) and exits 1, as a run in one process does; so does
    the strategy node, which cannot confirm them closed either."""
    async with running_replica() as replica:
        manifest = split_binance_manifest(tmp_path / "m.yaml", replica, secure_broker.port)
        await start_split(nodes, replica, manifest)
        quotes = len(replica.orders(SYMBOL))
        for path in ("/api/v3/order", "/api/v3/openOrders", "/api/v3/myTrades"):
            await replica.fail_http(500, count=100_000, path=path)
        os.kill(nodes.procs["strategy"].pid, signal.SIGUSR1)
        codes = await nodes.wait(90)
        assert codes["execution"] == 1, nodes.log("execution")[-3000:]
        assert len(replica.orders(SYMBOL)) == quotes  # the venue kept them
        info = nodes.info("execution")
        assert info["open_orders_left"] == quotes
        assert f"execution node: {quotes} order(s) not confirmed closed" in nodes.log("execution")
        assert "kill switch: cancelling" in nodes.log("execution")
        # The strategy node cannot confirm them either: it says so and exits 1 too.
        assert codes["strategy"] == 1 and nodes.info("strategy")["orders_left_open"] == quotes
        assert codes["marketdata"] == 0
