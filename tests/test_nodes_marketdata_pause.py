"""A paused market-data node of a real-venue split run: the Binance example as three node
processes over the secured Mosquitto, against the local Binance replica, with the
market-data node's host paused (SIGSTOP) for longer than ``stale_after`` while the
market moves 2%, then 4%.

On waking, the node's timers come due before its sockets are read, so its periodic
snapshot would go out first, stamped now, with the book of before the pause. The node
notices its own pause first: its books go out STALE, and LIVE again only once the venue
has brought each up to date, whether the adapter drops its silent socket and resyncs
(the replica's fast timings) or keeps it and reads the backlog (Binance's own 60 s
silence limit), which brings a book up to date only with an update the venue made
after the pause. Quoting without post-only, an order priced on the book of before
would take at the venue: none is ever placed, and nothing trades."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from brokers import SecureBroker
from split_nodes import Nodes
from test_nodes_real_venue import (
    SYMBOL,
    journal_kinds,
    near,
    shifted,
    split_binance_manifest,
    start_split,
    stop_as_an_operator,
    until,
)

from quoteforge.exchanges.testing.binance_replica import BinanceReplica


@pytest.mark.slow
@pytest.mark.parametrize(
    ("silence_timeout_s", "moves_on", "why"),
    [
        # The review's timings: the adapter may take its pause for a silent socket and
        # resync, or read the backlog first; either way the book comes back.
        pytest.param(0.6, False, "", id="fast adapter timings"),
        # Binance's own silence limit: the socket stays up, the adapter reads the
        # backlog. A quiet market after it: the book comes back once it has been
        # unchanged for stale_after; a market that moves on: with the venue's update.
        pytest.param(60.0, False, "read all the venue sent", id="quiet after the pause"),
        pytest.param(60.0, True, "an update the venue made since", id="moving after the pause"),
    ],
)
async def test_a_paused_market_data_node_publishes_no_book_of_before_as_live(
    nodes: Nodes,
    secure_broker: SecureBroker,
    tmp_path: Path,
    silence_timeout_s: float,
    moves_on: bool,
    why: str,
) -> None:
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    try:
        manifest = split_binance_manifest(tmp_path / "m.yaml", replica, secure_broker.port)
        data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
        data["strategies"]["mm"]["params"]["post_only"] = False
        data["exchanges"]["binance"]["params"]["silence_timeout_s"] = silence_timeout_s
        data["run"]["duration"] = 60
        manifest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        await start_split(nodes, replica, manifest)
        book = replica.book(SYMBOL)
        bid, ask = book["bids"][0][0], book["asks"][0][0]
        mid = (bid + ask) / 2
        step = (mid * Decimal("0.02")).quantize(bid)  # 2% on the price grid
        before = {o.client_id for o in replica.orders(SYMBOL, open_only=False)}
        fills_before = (
            journal_kinds(nodes.dir("strategy"), "fill"),
            journal_kinds(nodes.dir("execution"), "fill"),
        )
        assert len(near(replica.orders(SYMBOL), mid)) >= 2

        marketdata = nodes.procs["marketdata"].pid
        os.kill(marketdata, signal.SIGSTOP)
        paused = time.monotonic()
        try:
            # stale_after (2 s) without a book message or heartbeat: quotes pulled.
            await until(lambda: replica.orders(SYMBOL) == [], 10, "quotes pulled", nodes)
            await replica.set_book(SYMBOL, shifted(book["bids"], step), shifted(book["asks"], step))
            await asyncio.sleep(0.5)
            # 4% up by the time it wakes: only this price may be quoted.
            await replica.set_book(
                SYMBOL, shifted(book["bids"], 2 * step), shifted(book["asks"], 2 * step)
            )
            await asyncio.sleep(max(0.3, paused + 5.0 - time.monotonic()))
        finally:
            os.kill(marketdata, signal.SIGCONT)

        now = mid + 2 * step
        if moves_on:
            # What the node read meanwhile is the venue's backlog: no quote on it.
            await asyncio.sleep(0.5)
            new = [o for o in replica.orders(SYMBOL, open_only=False) if o.client_id not in before]
            assert new == [], "an order placed on the backlog's book"
            nudge = (mid * Decimal("0.001")).quantize(bid)  # 0.1%: still the price of now
            await replica.set_book(
                SYMBOL,
                shifted(book["bids"], 2 * step + nudge),
                shifted(book["asks"], 2 * step + nudge),
            )
        await until(
            lambda: len(near(replica.orders(SYMBOL), now)) >= 2,
            20,
            "quotes at the price of now",
            nodes,
        )
        ever = [o for o in replica.orders(SYMBOL, open_only=False) if o.client_id not in before]
        assert near(ever, mid) == [] and near(ever, mid + step) == []  # nothing of before
        assert len(near(ever, now)) == len(ever)
        assert [o.client_id for o in ever if o.filled] == []  # no stale quote taken
        assert (
            journal_kinds(nodes.dir("strategy"), "fill"),
            journal_kinds(nodes.dir("execution"), "fill"),
        ) == fills_before
        # The market-data node noticed its pause and said what brought its book back.
        md_log = nodes.log("marketdata")
        assert "this node did not run for " in md_log
        assert "published STALE until the venue has brought each up to date" in md_log
        assert "up to date after this node's pause" in md_log
        if why:
            assert f"up to date after this node's pause ({why}" in md_log
        await stop_as_an_operator(nodes, replica)
        assert nodes.info("marketdata")["pauses"] == 1
    finally:
        await replica.stop()
