"""A split run on a real venue's wire: the Binance example as three node processes (market
data, strategy, execution) over the secured Mosquitto, against the local Binance replica.

With a simulated venue the execution node hosts everything (test_nodes.py); with a real
one the books come from the market-data node and the orders go through the execution
node, which alone holds the credentials. Here quotes reach the venue, a fill made at the
venue reaches the strategy node's journal, when the execution node is stopped the
strategy node stops quoting (no order reaches the venue without it), and a new
execution node process brings the quotes back. An execution node whose host pauses sends
no order priced on the book of before the pause; a strategy node whose host pauses places
none either, and the nodes may start in any order."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from brokers import SecureBroker
from split_nodes import Nodes

from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS

REPO = Path(__file__).resolve().parents[1]
BINANCE = REPO / "examples" / "binance_testnet.yaml"
SPLIT = REPO / "examples" / "distributed" / "sim_nodes.yaml"
SYMBOL = "BTCUSDT"


def split_binance_manifest(path: Path, replica: BinanceReplica, port: int) -> Path:
    """The Binance example pointed at the replica, with the split example's bus (TLS,
    per-role users, signing key) on this test's broker and fast node timings."""
    data = yaml.safe_load(BINANCE.read_text(encoding="utf-8"))
    split = yaml.safe_load(SPLIT.read_text(encoding="utf-8"))
    data["run"].update({"name": f"t{uuid.uuid4().hex[:10]}", "duration": 30, "cancel_timeout": 3})
    data["exchanges"]["binance"]["params"].update(
        {**FAST_PARAMS, "rest_url": replica.url, "ws_url": replica.ws_url, "testnet": False}
    )
    data["bus"] = split["bus"]
    data["bus"]["params"].update(
        {"port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "connect_timeout_s": 3}
    )
    data["nodes"] = {"heartbeat": 0.5, "strategy_grace": 2, "stale_after": 2}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@asynccontextmanager
async def running_replica() -> AsyncIterator[BinanceReplica]:
    """The local Binance replica, started for the block and stopped after it."""
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    try:
        yield replica
    finally:
        await replica.stop()


def journal_kinds(run_dir: Path, kind: str) -> int:
    try:
        conn = sqlite3.connect(run_dir / "journal.sqlite")
    except sqlite3.Error:
        return 0
    try:
        return int(conn.execute("SELECT count(*) FROM journal WHERE kind=?", (kind,)).fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not created yet
    finally:
        conn.close()


async def until(condition: Any, timeout: float, what: str, nodes: Nodes) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {r}\n{nodes.log(r)[-1500:]}" for r in nodes.procs)
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        await asyncio.sleep(0.1)


def credentials(replica: BinanceReplica) -> dict[str, str]:
    """The environment the execution node reads the replica account's keys from."""
    return {"BINANCE_API_KEY": replica.api_key, "BINANCE_API_SECRET": replica.api_secret}


async def paused_while_the_market_moves(
    nodes: Nodes,
    role: str,
    replica: BinanceReplica,
    step: Decimal,
    for_s: float,
    pulled: Callable[[], Awaitable[None]],
) -> None:
    """Pause the ``role`` node's host (SIGSTOP); once ``pulled`` has seen its quotes
    gone, move the market ``step`` (2%) up, then twice that (4% by the time it wakes:
    only that price may be quoted); wake it ``for_s`` after the pause (SIGCONT)."""
    book = replica.book(SYMBOL)
    pid = nodes.procs[role].pid
    os.kill(pid, signal.SIGSTOP)
    paused = time.monotonic()
    try:
        await pulled()
        await replica.set_book(SYMBOL, shifted(book["bids"], step), shifted(book["asks"], step))
        await asyncio.sleep(0.5)
        await replica.set_book(
            SYMBOL, shifted(book["bids"], 2 * step), shifted(book["asks"], 2 * step)
        )
        await asyncio.sleep(max(0.3, paused + for_s - time.monotonic()))
    finally:
        os.kill(pid, signal.SIGCONT)


async def start_split(
    nodes: Nodes, replica: BinanceReplica, manifest: Path, env: dict[str, str] | None = None
) -> None:
    """The three nodes, until the strategy quotes at the venue and has finished starting
    (its first reconciliation with the execution node); ``env`` adds to theirs."""
    nodes.start(
        manifest, "execution", "marketdata", "strategy", env={**credentials(replica), **(env or {})}
    )
    await until(lambda: len(replica.orders(SYMBOL)) >= 2, 15, "quotes at the venue", nodes)
    started = "reconciled with the venues"
    await until(lambda: started in nodes.log("strategy"), 15, "strategy started", nodes)


async def stop_as_an_operator(nodes: Nodes, replica: BinanceReplica) -> None:
    """The strategy node first (it pulls its quotes through the execution node and
    reconciles with it): nothing is left open at the venue; then the other two."""
    nodes.procs["strategy"].terminate()
    assert (await nodes.wait(30, "strategy")) == {"strategy": 0}, nodes.log("strategy")
    assert replica.orders(SYMBOL) == []
    assert "ERROR" not in nodes.log("strategy")
    for role in ("execution", "marketdata"):
        nodes.procs[role].terminate()
    assert (await nodes.wait(30)) == {"execution": 0, "strategy": 0, "marketdata": 0}


@pytest.mark.slow
async def test_three_nodes_trade_a_real_venue_and_quote_only_with_an_execution_node(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    try:
        manifest = split_binance_manifest(tmp_path / "m.yaml", replica, secure_broker.port)
        await start_split(nodes, replica, manifest)
        # A taker at the venue fills one of our quotes: the report reaches both journals.
        order = replica.orders(SYMBOL)[0]
        await replica.fill_order(order.client_id, (order.qty / 2).quantize(Decimal("1e-8")))
        for role in ("execution", "strategy"):
            await until(lambda r=role: journal_kinds(nodes.dir(r), "fill") >= 1, 10, "fill", nodes)
        assert journal_kinds(nodes.dir("marketdata"), "fill") == 0  # no orders there

        # The execution node stops: it cancels its orders at the venue and says goodbye.
        nodes.procs["execution"].terminate()
        assert (await nodes.wait(20, "execution")) == {"execution": 0}
        assert replica.orders(SYMBOL) == []
        placed = len(replica.orders(SYMBOL, open_only=False))
        await until(
            lambda: "no order reaches the venue" in nodes.log("strategy"),
            10,
            "the strategy node's books STALE",
            nodes,
        )
        await asyncio.sleep(1.5)  # books keep coming from the market-data node meanwhile
        assert len(replica.orders(SYMBOL, open_only=False)) == placed
        assert "execution node offline (closed)" in nodes.log("strategy")

        # A new execution node process: the strategy quotes again once it listens.
        nodes.dir("execution").rename(tmp_path / "node-execution-first")
        (tmp_path / "execution.log").rename(tmp_path / "execution-first.log")
        nodes.start(manifest, "execution", env=credentials(replica))
        await until(lambda: len(replica.orders(SYMBOL)) >= 2, 20, "quotes again", nodes)
        assert len(replica.orders(SYMBOL, open_only=False)) > placed
        await stop_as_an_operator(nodes, replica)
    finally:
        await replica.stop()


@pytest.mark.slow
async def test_a_killed_strategy_node_resumes_with_the_fills_made_while_it_was_down(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    """The strategy node is SIGKILLed while it quotes; the execution node cancels its
    orders after strategy_grace, but one fills at the venue before that. Resumed from
    its run folder, the strategy node asks the execution node for the fills it missed
    and books that one: its journal and position match the venue's, and it quotes
    again, one set of quotes."""
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    try:
        manifest = split_binance_manifest(tmp_path / "m.yaml", replica, secure_broker.port)
        await start_split(nodes, replica, manifest)
        nodes.procs["strategy"].kill()
        nodes.procs["strategy"].wait()
        order = next(o for o in replica.orders(SYMBOL) if o.side == "buy")
        await replica.fill_order(order.client_id)
        await until(lambda: journal_kinds(nodes.dir("execution"), "fill") == 1, 10, "fill", nodes)
        await until(lambda: replica.orders(SYMBOL) == [], 15, "the breaker's cancels", nodes)
        assert journal_kinds(nodes.dir("strategy"), "fill") == 0

        nodes.start(manifest, "strategy", env=credentials(replica), resume=True)
        await until(lambda: len(replica.orders(SYMBOL)) >= 2, 20, "quotes again", nodes)
        assert journal_kinds(nodes.dir("strategy"), "fill") == 1
        info = nodes.info("strategy")
        assert len(info["resumed"]) == 1, info
        conn = sqlite3.connect(nodes.dir("strategy") / "journal.sqlite")
        try:
            (payload,) = conn.execute("SELECT payload FROM journal WHERE kind='fill'").fetchone()
        finally:
            conn.close()
        assert order.client_id in payload
        await asyncio.sleep(1.0)
        assert len(replica.orders(SYMBOL)) <= 4  # one set of quotes (two a side)
        await stop_as_an_operator(nodes, replica)
    finally:
        await replica.stop()


@pytest.mark.slow
async def test_a_broker_restart_in_a_real_venue_split_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    """The broker dies for a second and comes back without its retained values: every
    node reconnects, what the strategy node sent meanwhile is replayed to the execution
    node, and trading goes on. A fill after the restart reaches both journals, no order
    reaches the venue twice, and the operator's stop leaves nothing open."""
    broker = SecureBroker(tmp_path / "broker")
    broker.start()
    nodes = Nodes(tmp_path, broker)
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    try:
        await start_split(
            nodes, replica, split_binance_manifest(tmp_path / "m.yaml", replica, broker.port)
        )

        broker.kill()
        await asyncio.sleep(1.0)
        broker.start()
        for role in ("execution", "marketdata", "strategy"):
            await until(
                lambda r=role: "reconnected to MQTT broker" in nodes.log(r), 15, "reconnects", nodes
            )
        placed = len(replica.orders(SYMBOL, open_only=False))
        order = replica.orders(SYMBOL)[0]
        await replica.fill_order(order.client_id)  # the position moves: the strategy requotes
        for role in ("execution", "strategy"):
            await until(lambda r=role: journal_kinds(nodes.dir(r), "fill") >= 1, 15, "fill", nodes)
        await until(
            lambda: len(replica.orders(SYMBOL, open_only=False)) > placed, 15, "requotes", nodes
        )

        await stop_as_an_operator(nodes, replica)
        ids = [o.client_id for o in replica.orders(SYMBOL, open_only=False)]
        assert len(ids) == len(set(ids))
        # The one fill the venue made, booked once on each side despite the replays.
        assert journal_kinds(nodes.dir("strategy"), "fill") == 1
        assert journal_kinds(nodes.dir("execution"), "fill") == 1
    finally:
        nodes.stop_all()
        broker.kill()
        await replica.stop()


def shifted(levels: list[tuple[Decimal, Decimal]], by: Decimal) -> list[tuple[str, str]]:
    return [(str(price + by), str(qty)) for price, qty in levels]


SPREAD = Decimal("0.05")  # quotes 5% from the mid: a 2% move crosses none of them


def quoted_at(orders: list[Any], mid: Decimal) -> list[Any]:
    """The orders quoted on a book whose mid was ``mid`` (within 0.5%)."""
    found = []
    for o in orders:
        implied = o.price / (1 - SPREAD) if o.side == "buy" else o.price / (1 + SPREAD)
        if abs(implied - mid) <= mid * Decimal("0.005"):
            found.append(o)
    return found


@pytest.mark.slow
# Needs the strategy node to requote within the pause's first 2 s (before its books go
# STALE): a machine loaded past its cores can delay that, leaving nothing to refuse.
@pytest.mark.flaky(reruns=1)
async def test_a_paused_execution_node_sends_no_order_priced_on_the_book_of_before(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    """The execution node's host pauses (SIGSTOP): its broker connection stays open, so
    the broker sends no last will for up to 1.5x the keepalive, and the intents the
    strategy node makes as the market moves wait for it. After ``stale_after`` without
    its heartbeat the strategy node marks its books STALE and pulls its quotes. When the
    host resumes, the waiting places and replaces are older than ``intent_max_age``:
    refused unsent, their old orders pulled. The quotes come back at the price of now;
    no order ever reached the venue at the price of the pause, and the execution node
    does not take its own pause for the strategy node's silence."""
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    try:
        manifest = split_binance_manifest(tmp_path / "m.yaml", replica, secure_broker.port)
        data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
        data["nodes"]["intent_max_age"] = 1
        data["strategies"]["mm"]["params"]["spread_bps"] = float(SPREAD * 10_000)
        manifest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        await start_split(nodes, replica, manifest)
        book = replica.book(SYMBOL)
        bid, ask = book["bids"][0][0], book["asks"][0][0]
        mid = (bid + ask) / 2
        step = (mid * Decimal("0.02")).quantize(bid)  # 2% on the price grid
        assert len(quoted_at(replica.orders(SYMBOL), mid)) >= 2

        os.kill(nodes.procs["execution"].pid, signal.SIGSTOP)
        paused = time.monotonic()
        try:
            # The market moves 2% up: the strategy node requotes, for nobody.
            await replica.set_book(SYMBOL, shifted(book["bids"], step), shifted(book["asks"], step))
            await until(
                lambda: "no execution heartbeat for" in nodes.log("strategy"),
                10,
                "the strategy node's books STALE",
                nodes,
            )
            # stale_after (2 s) from the last heartbeat heard, which came up to one
            # heartbeat (0.5 s) before the pause.
            assert time.monotonic() - paused >= 1.5
            # 4% up by the time it wakes: only this price may be quoted.
            await replica.set_book(
                SYMBOL, shifted(book["bids"], 2 * step), shifted(book["asks"], 2 * step)
            )
            await asyncio.sleep(max(0.0, paused + 3.5 - time.monotonic()))
        finally:
            os.kill(nodes.procs["execution"].pid, signal.SIGCONT)

        now = mid + 2 * step
        await until(
            lambda: len(quoted_at(replica.orders(SYMBOL), now)) >= 2,
            30,
            "quotes at the price of now",
            nodes,
        )
        log = nodes.log("strategy")  # the refusals come back as rejections
        assert "refused at the execution node: made " in log
        assert "longer than nodes.intent_max_age (1 s) allows" in log
        assert "execution node heard again" in log
        # The execution node knows it was paused: the strategy node's heartbeats of that
        # time are read before its silence is judged (no false strategy_lost breaker).
        assert "this node did not run for 3." in nodes.log("execution")
        assert "strategy_lost" not in nodes.log("execution")
        ever = replica.orders(SYMBOL, open_only=False)
        assert quoted_at(ever, mid + step) == []  # nothing of the pause's book
        assert len(quoted_at(ever, mid)) + len(quoted_at(ever, now)) == len(ever)
        assert quoted_at(replica.orders(SYMBOL), now) == replica.orders(SYMBOL)
        await stop_as_an_operator(nodes, replica)
    finally:
        await replica.stop()


def near(orders: list[Any], mid: Decimal) -> list[Any]:
    """The orders quoted on a book whose mid was ``mid``: the example's quotes sit
    within 0.2% of the mid, so 0.5% tells a 2% move apart."""
    return [o for o in orders if abs(o.price - mid) <= mid * Decimal("0.005")]


@pytest.mark.slow
async def test_a_paused_strategy_node_places_no_order_priced_on_the_book_of_before(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    """The strategy node's host pauses (SIGSTOP) for longer than ``strategy_grace``: the
    execution node cancels its quotes at the venue, and the market moves 2%, then 4%,
    while it sleeps. On waking, the node reads the messages of the pause in order, the
    cancel reports before the newer books; every book goes STALE before any of them is
    applied, and LIVE again only with a book message published since. So no report of
    the pause requotes on the book of before, no order ever reaches the venue priced on
    a book of the pause (quoting without post-only, such an order would take: a trade
    nobody decided on the book of now), and the quotes come back at the price of now."""
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    try:
        manifest = split_binance_manifest(tmp_path / "m.yaml", replica, secure_broker.port)
        data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
        data["strategies"]["mm"]["params"]["post_only"] = False
        manifest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        await start_split(nodes, replica, manifest)
        book = replica.book(SYMBOL)
        bid, ask = book["bids"][0][0], book["asks"][0][0]
        mid = (bid + ask) / 2
        step = (mid * Decimal("0.02")).quantize(bid)  # 2% on the price grid
        before = {o.client_id for o in replica.orders(SYMBOL, open_only=False)}
        assert len(near(replica.orders(SYMBOL), mid)) >= 2

        async def pulled() -> None:
            await until(
                lambda: "BREAKER strategy_lost" in nodes.log("execution"),
                10,
                "the execution node's breaker",
                nodes,
            )
            await until(lambda: replica.orders(SYMBOL) == [], 5, "quotes cancelled", nodes)

        await paused_while_the_market_moves(nodes, "strategy", replica, step, 4.0, pulled)

        now = mid + 2 * step
        await until(
            lambda: len(near(replica.orders(SYMBOL), now)) >= 2,
            15,
            "quotes at the price of now",
            nodes,
        )
        ever = [o for o in replica.orders(SYMBOL, open_only=False) if o.client_id not in before]
        assert near(ever, mid) == [] and near(ever, mid + step) == []  # nothing of the pause
        assert len(near(ever, now)) == len(ever)
        assert [o.client_id for o in ever if o.filled] == []  # no stale quote taken
        assert "book STALE (this node did not run for " in nodes.log("strategy")
        assert near(replica.orders(SYMBOL), now) == replica.orders(SYMBOL)
        await stop_as_an_operator(nodes, replica)
    finally:
        await replica.stop()


@pytest.mark.slow
async def test_the_nodes_may_start_in_any_order(
    nodes: Nodes, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    """The strategy node of a live run reconciles with the execution node before it
    quotes. Started first, it waits for that node's session (up to connect_timeout),
    longer than a reconciliation question's own 10 s, and quotes once it is there."""
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    try:
        manifest = split_binance_manifest(tmp_path / "m.yaml", replica, secure_broker.port)
        nodes.start(manifest, "marketdata", "strategy", env=credentials(replica))
        await until(
            lambda: "waiting up to 30s for the execution node" in nodes.log("strategy"),
            15,
            "the strategy node waiting",
            nodes,
        )
        await asyncio.sleep(11)
        assert replica.orders(SYMBOL, open_only=False) == []
        assert nodes.procs["strategy"].poll() is None
        nodes.start(manifest, "execution", env=credentials(replica))
        await until(lambda: len(replica.orders(SYMBOL)) >= 2, 20, "quotes at the venue", nodes)
        assert "reconciled with the venues" in nodes.log("strategy")
        await stop_as_an_operator(nodes, replica)
    finally:
        await replica.stop()
