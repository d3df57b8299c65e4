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
    paused_while_the_market_moves,
    shifted,
    split_binance_manifest,
    start_split,
    stop_as_an_operator,
    until,
)

from quoteforge.book import BookState, L2Book
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.model import Instrument
from quoteforge.plugins.bus_inprocess import InProcessBus
from quoteforge.plugins.distributed.publishers import MarketDataPublisher
from quoteforge.plugins.distributed.topics import TopicScheme

NS = 1_000_000_000


async def backlog_after_a_pause(venue_time: bool, stamp: str) -> list[str]:
    """The book states a publisher sends from its node's pause on, when the first backlog
    message (made by the venue during the pause) is read: stamped with the venue's time
    of it (``stamp="venue"``) or with the local time it was applied (``"local"``)."""
    bus = InProcessBus()
    await bus.start()
    scheme = TopicScheme("r")
    states: list[str] = []
    bus.subscribe(scheme.book("v", "BTC/USDT"), lambda t, p: states.append(str(p["state"])))
    pub = MarketDataPublisher(bus, scheme, depth=1, snapshot_interval_s=60, stale_after_s=2.0)
    pub.venue_time_stamps("v", venue_time)
    book = L2Book(Instrument("v", "BTC/USDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.001")))
    book.apply_snapshot([(5_000_000, 10)], [(5_000_100, 10)], time.time_ns())
    book.state = BookState.LIVE
    pub.track(book)
    pub.start()
    try:
        await asyncio.sleep(0.05)
        paused_ns = time.time_ns() - 5 * NS
        states.clear()
        pub.node_paused(5 * NS)  # it wakes now, after 5 s: the book goes out STALE
        ts = time.time_ns() if stamp == "local" else paused_ns + NS
        book.apply_deltas([(5_000_000, 12)], [], ts)
        pub.on_book(book)
        await asyncio.sleep(0.05)
        if stamp == "venue-after":  # an update the venue made after the wake
            book.apply_deltas([(5_000_000, 13)], [], time.time_ns())
            pub.on_book(book)
            await asyncio.sleep(0.05)
    finally:
        await pub.stop()
        await bus.close()
    return states


@pytest.mark.parametrize(
    ("venue_time", "stamp", "live"),
    [
        # A locally stamped source (ccxt: the time it applied the message): the backlog
        # read after the wake looks "made now", so no stamp releases it; it stays
        # withheld until a resync or a quiet market (stale_after unchanged).
        pytest.param(False, "local", False, id="local stamps: withheld"),
        pytest.param(False, "venue-after", False, id="undeclared: no stamp releases"),
        # A source declaring venue-time stamps: the backlog is dated in the pause...
        pytest.param(True, "venue", False, id="venue stamps: backlog withheld"),
        # ...and the venue's first update after the wake releases it.
        pytest.param(True, "venue-after", True, id="venue stamps: update since"),
    ],
)
async def test_a_withheld_book_is_released_by_its_stamp_only_where_it_is_the_venues(
    venue_time: bool, stamp: str, live: bool
) -> None:
    states = [s.lower() for s in await backlog_after_a_pause(venue_time, stamp)]
    assert states[0] == "stale", states
    assert states[1:] == (["live"] if live else []), states


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
        # Binance stamps its books with the venue's event time (E): an update dated
        # after the wake brings the book back (the adapter class declares it; the test
        # sets book_ts_venue_time on it until it does).
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

        async def pulled() -> None:
            # stale_after (2 s) without a book message or heartbeat: quotes pulled.
            await until(lambda: replica.orders(SYMBOL) == [], 10, "quotes pulled", nodes)

        await paused_while_the_market_moves(nodes, "marketdata", replica, step, 5.0, pulled)

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
