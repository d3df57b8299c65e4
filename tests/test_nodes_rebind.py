"""A strategy node that rebinds to another execution session reconciles with it: the
execution node A pauses past its dead-after, a new execution node B starts (its sweep
cancels A's orders) and the strategy node quotes through it; A wakes, its earlier claim
goes on, B cancels its orders and stops, and the strategy node binds A again. What each
session reported while the other was bound was refused, and intents to a session that
had not subscribed yet were lost: on each rebind the strategy node asks the newly bound
session for its open orders and fills, ends the orders not open there and quotes again.
The Binance example as node processes against the local Binance replica."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest
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

TERMINAL = {"filled", "cancelled", "rejected", "expired"}


def working_orders(run_dir: Path) -> set[str]:
    """The client ids the strategy node's journal holds as working now."""
    try:
        conn = sqlite3.connect(run_dir / "journal.sqlite")
    except sqlite3.Error:
        return set()
    try:
        rows = conn.execute(
            "SELECT payload FROM journal WHERE kind IN ('order', 'order_update') ORDER BY seq"
        )
        status: dict[str, str] = {}
        for (text,) in rows:
            order = json.loads(text).get("order") or {}
            if order.get("client_id") and order.get("status"):
                status[order["client_id"]] = str(order["status"]).lower()
        return {cid for cid, s in status.items() if s not in TERMINAL}
    except sqlite3.OperationalError:
        return set()
    finally:
        conn.close()


@pytest.mark.slow
async def test_a_strategy_node_rebinding_reconciles_with_the_new_execution_session(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    async with running_replica() as replica:
        try:
            m = split_binance_manifest(tmp_path / "m.yaml", replica, secure_broker.port)
            await start_split(nodes, replica, m)
            a = nodes.procs["execution"]
            a.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(3.0)  # past the claim's dead-after (stale_after + 0.25 s)
                nodes.start(m, "execution", env=credentials(replica), name="second")
                await until(
                    lambda: (
                        "intents are now taken" in nodes.log("second")
                        or "order reports, fills and books are now taken" in nodes.log("strategy")
                    ),
                    15,
                    "the strategy node bound to the new execution node",
                    nodes,
                )
                await asyncio.sleep(3.0)
            finally:
                a.send_signal(signal.SIGCONT)
            woke = {o.client_id for o in replica.orders(SYMBOL, open_only=False)}
            # A's earlier claim goes on: B stops, the strategy node binds A again.
            assert (await nodes.wait(15, "second")) == {"second": 2}, nodes.log("second")

            def agree() -> bool:
                venue = {o.client_id for o in replica.orders(SYMBOL)}
                return len(venue) >= 2 and working_orders(nodes.dir("strategy")) == venue

            # Its working orders are the venue's, and it quotes through A again.
            try:
                await until(agree, 15, "the strategy node's working orders = the venue's", nodes)
            except AssertionError:
                venue = sorted(o.client_id for o in replica.orders(SYMBOL))
                held = sorted(working_orders(nodes.dir("strategy")))
                raise AssertionError(f"venue {venue}; strategy {held}") from None
            assert {o.client_id for o in replica.orders(SYMBOL)} - woke, "no new quote"
            assert "reconciling this node's orders and fills" in nodes.log("strategy")
            # Heartbeats A read late after its pause are no clock skew.
            assert "clocks disagree" not in nodes.log("execution")
            nodes.procs["strategy"].terminate()
            assert (await nodes.wait(30, "strategy")) == {"strategy": 0}, nodes.log("strategy")
            assert "still unconfirmed after cancel" not in nodes.log("strategy")
            deadline = time.monotonic() + 5
            while replica.orders(SYMBOL) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert replica.orders(SYMBOL) == []
        finally:
            for proc in nodes.procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
