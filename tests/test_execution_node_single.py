"""One execution node and one strategy node per run, when two start at once or one slips
through (plugins/distributed/execution_instances.py, strategy_binding.py): of two
execution nodes, or two strategy nodes, started at the same instant exactly one runs and
the other refuses, naming it; a strategy node that slips past the claim stops at the
execution node's first refusal; a strategy node keeps to the execution session it bound
to and never books another session's fills, yet takes the session of an execution node
started after the first said goodbye, or after the first died leaving an old "online"
heartbeat retained; an execution node keeps to the strategy session it bound to, refuses
another session's intents and acts on the bound session's goodbye only.

Real nodes in this process on the shared test broker, as in
test_execution_node_restart.py, whose manifest and bus watcher these tests share."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from brokers import require_shared_broker
from loguru import logger
from node_rigs import journal_records, mirror_rig
from test_execution_node_restart import SIM, Watcher, crashed, manifest, until

from quoteforge.book import BookState
from quoteforge.clock import NS, LiveClock
from quoteforge.exchange import CancelAll, CancelOrder, PlaceOrder, ReplaceOrder, VenueContext
from quoteforge.exchanges.testing.conformance import RecordingSink
from quoteforge.journal import order_states
from quoteforge.manifest import LoadedManifest, NodeSettings
from quoteforge.model import Fill, Liquidity, Order, OrderStatus, OrderUpdate, Side
from quoteforge.orders import OrderManager
from quoteforge.plugins.distributed import strategy_node
from quoteforge.plugins.distributed.codec import RETAINED_DELIVERY
from quoteforge.plugins.distributed.execution_instances import ExecutionBinding, claim_topic
from quoteforge.plugins.distributed.execution_node import ExecutionNode
from quoteforge.plugins.distributed.freshness import RETAINED
from quoteforge.plugins.distributed.node_base import NodeRefusedError, claim_role
from quoteforge.plugins.distributed.nodes import load_node_manifest, run_node
from quoteforge.plugins.distributed.remote import MarketDataPublisher, RemoteVenue
from quoteforge.plugins.distributed.strategy_binding import StrategyBinding
from quoteforge.plugins.distributed.strategy_node import StrategyNode
from quoteforge.plugins.distributed.topics import TopicScheme
from quoteforge.plugins.distributed.wire import fill_payload, update_payload
from quoteforge.registry import PluginRegistry

BTC = "BTC/USDT"


@dataclass
class SplitRun:
    """The example sim manifest as a wall-clock split run on the shared test broker: its
    node settings, a bus watcher of the run and the errors logged meanwhile."""

    registry: PluginRegistry
    tmp: Path
    path: Path
    loaded: LoadedManifest
    settings: NodeSettings
    watcher: Watcher
    errors: list[str]
    #: Every node the test started here, stopped (or cancelled) when the test ends.
    running: list[tuple[ExecutionNode | StrategyNode | None, asyncio.Task[Any]]] = field(
        default_factory=list
    )

    @property
    def name(self) -> str:
        return self.loaded.manifest.run.name

    @property
    def scheme(self) -> TopicScheme:
        return self.watcher.scheme

    def execution(self, folder: str) -> ExecutionNode:
        run_dir = self.tmp / folder
        return ExecutionNode(self.loaded, self.registry, run_dir, self.settings, self.path)

    def strategy(self, folder: str) -> StrategyNode:
        run_dir = self.tmp / folder
        return StrategyNode(self.loaded, self.registry, run_dir, self.settings, self.path)

    def start(self, role: str, folder: str) -> asyncio.Task[int]:
        """A node of ``role`` as ``quoteforge node`` runs it; the task ends with its exit code."""
        node = run_node(
            self.loaded,
            self.registry,
            role,
            self.tmp / folder,
            self.path,
            settings=self.settings,
            install_signals=False,
        )
        task = asyncio.get_running_loop().create_task(node)
        self.running.append((None, task))
        return task

    def run(self, node: ExecutionNode | StrategyNode) -> asyncio.Task[str]:
        """``node`` running; the task ends with its stop reason."""
        task = asyncio.get_running_loop().create_task(node.run())
        self.running.append((node, task))
        return task

    async def stop(self) -> None:
        """Stop every node still running, as a test that failed midway leaves them."""
        for node, task in self.running:
            if node is not None:
                node.request_stop("test over")
            elif not task.done():
                task.cancel()
        tasks = [task for _, task in self.running]
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)

    def kill(self) -> None:
        """The kill switch, pulled on the bus as an operator does."""
        self.watcher.bus.publish(self.scheme.kill(), {"reason": "test over", "node": "test"}, qos=1)

    def run_info(self, folder: str) -> dict[str, Any]:
        return json.loads((self.tmp / folder / "run.json").read_text(encoding="utf-8"))


@contextlib.asynccontextmanager
async def split_run(
    registry: PluginRegistry, tmp_path: Path, *overrides: str, port: int | None = None
) -> AsyncIterator[SplitRun]:
    """A ``SplitRun`` (``overrides`` as ``--set`` gives them) on the shared test broker,
    or on the broker at ``port`` (a test's own); its watcher closes after."""
    port = port or require_shared_broker()
    path = manifest(tmp_path / "m.yaml", SIM, port)
    loaded, settings = load_node_manifest(path, registry, overrides=list(overrides))
    watcher = Watcher(port, loaded.manifest.run.name)
    await watcher.start("sim")
    errors: list[str] = []
    sink = logger.add(errors.append, level="ERROR", format="{message}")
    split = SplitRun(registry, tmp_path, path, loaded, settings, watcher, errors)
    try:
        yield split
    finally:
        try:
            await split.stop()
        finally:
            logger.remove(sink)
            await watcher.bus.close()


@pytest.fixture
async def split(registry: PluginRegistry, tmp_path: Path) -> AsyncIterator[SplitRun]:
    async with split_run(registry, tmp_path) as run:
        yield run


def test_the_binding_keeps_to_one_live_execution_session() -> None:
    now = [0.0]
    conflicts: list[str] = []
    announced: list[str] = []
    binding = ExecutionBinding("r1", 2.0, on_conflict=conflicts.append, clock=lambda: now[0])
    binding.listen(lambda payload: announced.append(payload["instance"]))
    x = {"instance": "x", "run_dir": "/runs/x", "pid": 1, "host": "h"}
    assert binding.admit("x", "session", x)
    assert binding.admit(None, "fill")  # not from an execution node: judged elsewhere
    # Another session while x is alive: refused, counted, reported once.
    assert not binding.admit("y", "session", {"instance": "y", "run_dir": "/runs/y"})
    assert not binding.admit("y", "fill")
    assert not binding.heartbeat({"status": "online", "session": "y", "client_id": "qf-y"})
    assert not binding.heartbeat({"status": "offline", "session": "y"})  # not ours
    assert binding.refused == {"order": 0, "fill": 1, "book": 0, "trade": 0, "answer": 0}
    [conflict] = conflicts
    assert "/runs/x" in conflict and "/runs/y" in conflict
    # x goes quiet longer than the grace: the next session is taken, with the
    # announcement it made while refused.
    now[0] = 1.5
    assert binding.heartbeat({"status": "online", "session": "x"})
    now[0] = 3.4
    assert binding.alive()
    now[0] = 3.6
    assert not binding.alive()
    assert binding.admit("y", "book")
    assert binding.bound == "y" and announced == ["y"]
    # y says goodbye; a retained message of it does not bring it back; x's return does
    # not need to wait for a grace.
    assert binding.heartbeat({"status": "offline", "session": "y", "reason": "closed"})
    assert binding.admit("y", "session", {"instance": "y"})
    assert not binding.alive()
    assert binding.admit("x", "order") and binding.bound == "x"
    assert len(conflicts) == 1


def test_the_strategy_binding_keeps_to_one_live_strategy_session() -> None:
    now = [0.0]
    conflicts: list[tuple[str, str]] = []
    cancelled: list[list[str]] = []
    orders = OrderManager(None, LiveClock(), "t")

    def cancel(working: list[Order]) -> int:
        cancelled.append(sorted(o.client_id for o in working))
        for order in working:  # as the venue confirms it
            orders.apply_update(OrderUpdate("sim", order.client_id, OrderStatus.CANCELLED, 1))
        return len(working)

    binding = StrategyBinding(
        "r1",
        2.0,
        orders,
        ["mm"],
        cancel,
        on_conflict=lambda message, session: conflicts.append((message, session)),
        clock=lambda: now[0],
    )

    def place(client_id: str, session: str) -> bool:
        intent = {"action": "place", "session": session}
        if not binding.admit(intent):
            return False
        binding.placed(client_id, intent)
        orders.adopt(Order(client_id, "sim", BTC, Side.BUY, 1, 100, strategy="mm"))
        return True

    def beat(session: str, status: str = "online", reason: str = "") -> None:
        payload = {"status": status, "session": session, "client_id": f"qf-{session}"}
        binding.on_heartbeat("heartbeat/strategy", payload | ({"reason": reason} if reason else {}))

    binding.on_announce("state/node-strategy", {"instance": "b", "run_dir": "/runs/b"})
    assert place("z1", "")  # nothing bound yet: taken, binds nothing
    beat("a")
    assert binding.bound == "a" and cancelled == [["z1"]]  # nobody manages z1 any more
    assert place("a1", "a")
    # Another session while a is alive: refused, counted, reported once.
    assert not place("b1", "b")
    beat("b")
    assert not place("b2", "b")
    assert binding.bound == "a" and binding.refused == 2
    [(message, session)] = conflicts
    assert session == "b" and "session a" in message and "/runs/b" in message
    beat("b", "offline", "closed")  # not the bound session's goodbye: nothing cancelled
    assert cancelled == [["z1"]] and binding.alive()
    # a goes quiet longer than the grace: b is taken, and a's order cancelled.
    now[0] = 2.1
    assert not binding.alive()
    beat("b")
    assert binding.bound == "b" and cancelled[-1] == ["a1"]
    assert place("b3", "b")
    beat("b", "offline", "closed")
    assert binding.watch.departed and cancelled[-1] == ["b3"]
    assert len(conflicts) == 1


def test_the_bindings_take_an_old_online_heartbeat_for_a_dead_session() -> None:
    """A retained "online" heartbeat sent longer ago than the bound (its sent_ns), as a
    broker keeps it for a node that died before its last will went out, keeps no session
    alive and binds none; one without sent_ns (an older node's) counts as today, and so
    does one heard live, whatever its sent_ns (a sender's clock behind)."""
    long_ago = time.time_ns() - 60 * NS
    dead = {"status": "online", "session": "dead", "sent_ns": long_ago, RETAINED: True}
    skewed = ExecutionBinding("r1", 2.0)
    assert skewed.heartbeat({**dead, RETAINED: False}) and skewed.bound == "dead"
    assert skewed.alive()
    binding = ExecutionBinding("r1", 2.0)
    assert not binding.heartbeat(dead) and binding.bound is None  # binds nothing
    assert binding.admit("dead", "session", {"instance": "dead"})
    assert binding.heartbeat(dead)  # the bound session's: it ends it, as a last will
    assert not binding.alive()
    assert binding.admit("fresh", "session", {"instance": "fresh"})
    assert binding.heartbeat({"status": "online", "session": "fresh", "sent_ns": time.time_ns()})
    assert binding.bound == "fresh" and binding.alive() and binding.refused_total == 0
    # An older node's heartbeat, without a send time: alive, as ever.
    older = ExecutionBinding("r1", 2.0)
    assert older.heartbeat({"status": "online", "session": "old"})
    assert older.alive() and not older.admit("fresh", "session")

    conflicts: list[str] = []
    orders = OrderManager(None, LiveClock(), "t")
    strategies = StrategyBinding(
        "r1", 2.0, orders, ["mm"], lambda working: 0,
        on_conflict=lambda message, session: conflicts.append(session),
    )  # fmt: skip
    beat = {"status": "online", "session": "dead", "sent_ns": long_ago, RETAINED: True}
    strategies.on_heartbeat("heartbeat/strategy", beat)
    assert strategies.bound is None and not strategies.watch.seen
    assert strategies.admit({"action": "place", "session": "fresh"})
    strategies.on_heartbeat("heartbeat/strategy", {"status": "online", "session": "fresh"})
    assert strategies.bound == "fresh" and strategies.alive()
    strategies.on_heartbeat("heartbeat/strategy", beat)  # handed out again: still nothing
    assert strategies.bound == "fresh" and conflicts == [] and strategies.refused == 0


async def test_of_two_execution_nodes_started_at_the_same_instant_exactly_one_runs(
    split: SplitRun,
) -> None:
    nodes = {name: split.start("execution", name) for name in ("a", "b")}
    watcher = split.watcher
    done, _ = await asyncio.wait(nodes.values(), timeout=10, return_when="FIRST_COMPLETED")
    [(loser, task)] = [(n, t) for n, t in nodes.items() if t in done]
    assert task.result() == 2
    winner = "b" if loser == "a" else "a"
    await until(lambda: bool(watcher.sessions), "the winner's session")
    assert {s["run_dir"] for s in watcher.sessions} == {str(split.tmp / winner)}
    [message] = [e for e in split.errors if "refused to start" in e]
    assert "\n" not in message.strip()
    assert f"another execution node of run {split.name!r} claimed the execution role" in message
    assert str(split.tmp / winner) in message  # names the instance that goes on
    assert watcher.sessions[-1]["instance"] in message
    assert "stop it" in message
    assert split.run_info(loser)["stop_reason"].startswith("refused: ")
    assert not (split.tmp / loser / "journal.sqlite").exists()
    assert not nodes[winner].done()
    # The winner goes on as the run's one execution node, and stops normally.
    split.kill()
    assert await asyncio.wait_for(nodes[winner], 20) == 0


async def test_a_strategy_node_refuses_a_second_execution_session_and_books_none_of_its_fills(
    split: SplitRun,
) -> None:
    watcher, scheme = split.watcher, split.scheme
    first = split.execution("exec1")
    second = split.execution("exec2")
    strategy = split.strategy("strategy")
    run = strategy.run_obj
    tasks = [split.run(first), split.run(strategy)]
    # The run builds its order manager as it starts.
    await until(
        lambda: hasattr(run, "orders") and bool(run.orders.all_working()),
        "the strategy's quotes",
        15,
    )
    order: Order = run.orders.all_working()[0]
    book = run.venues["sim"].books[order.symbol]
    # A second execution session (as a node whose start check was bypassed sends
    # them): a fill and a FILLED report for a working order, and a book.
    intruder = {"session": "intruder"}
    fill = Fill(
        "sim",
        order.symbol,
        "intruder-1",
        order.client_id,
        order.side,
        order.price_ticks or 1,
        order.qty_lots,
        Decimal("0"),
        "USDT",
        Liquidity.MAKER,
        time.time_ns(),
        order.strategy,
    )
    report = OrderUpdate(
        "sim",
        order.client_id,
        OrderStatus.FILLED,
        time.time_ns(),
        filled_lots=order.qty_lots,
        symbol=order.symbol,
    )
    for n in (1, 2):
        watcher.bus.publish(
            scheme.fill("sim"), {**fill_payload(fill), "fill_id": f"intruder-{n}", **intruder}
        )
        watcher.bus.publish(scheme.order("sim"), {**update_payload(report, order), **intruder})
        watcher.bus.publish(
            scheme.book("sim", order.symbol),
            {"bids": [[1, 1]], "asks": [[2, 1]], "state": "LIVE", "ts_ns": time.time_ns()}
            | {"pub": "intruder", "n": 10**9 + n, **intruder},
        )
    await until(
        lambda: len([a for a in run.alerts if a.kind == "execution_conflict"]) == 1,
        "the alert about the second execution session",
    )
    await until(lambda: strategy.execution.refused_total >= 6, "every message refused")
    assert strategy.execution.refused == {
        "order": 2,
        "fill": 2,
        "book": 2,
        "trade": 0,
        "answer": 0,
    }
    assert not run.orders.has_fill("sim", "intruder-1")
    assert not run.orders.has_fill("sim", "intruder-2")
    assert run.orders.get(order.client_id).status is not OrderStatus.FILLED  # type: ignore[union-attr]
    assert book.best_bid_ticks() != 1
    [error] = [e for e in split.errors if "second execution session" in e]
    assert "intruder" in error and first.session in error  # names both sessions
    assert str(split.tmp / "exec1") in error
    assert strategy.execution.bound == first.session
    # A restart is not a second session: once the first said goodbye, the strategy
    # node takes the next execution node and quotes through it.
    first.request_stop("restart")
    assert await asyncio.wait_for(tasks[0], 15) == "restart"
    tasks[0] = split.run(second)
    await until(lambda: strategy.execution.bound == second.session, "the new session", 10)
    await until(
        lambda: any(second.orders.get(o.client_id) for o in run.orders.all_working()),
        "quotes through the new execution node",
        10,
    )
    assert len([a for a in run.alerts if a.kind == "execution_conflict"]) == 1
    strategy.request_stop("test over")
    await asyncio.wait_for(tasks[1], 20)
    assert split.run_info("strategy")["foreign_execution_refused"]["fill"] == 2


async def test_a_strategy_node_takes_a_new_execution_node_at_once_beside_a_dead_ones_online(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    """An execution node died before its last will went out: the broker still holds its
    session, instruments, books and an "online" heartbeat it sent a minute ago. A strategy
    node starts on that and binds the dead session; a new execution node starts. Judged
    by its age, that heartbeat speaks for no one: the new node's claim goes through and
    the strategy node takes its session and quotes through it well within stale_after
    (10 s here, which the dead "online" would otherwise hold both of them up for)."""
    async with split_run(registry, tmp_path, "nodes.stale_after=10") as split:
        watcher, scheme = split.watcher, split.scheme
        dead, fresh = split.execution("dead"), split.execution("fresh")
        strategy = split.strategy("strategy")
        await dead.bus.start()
        await dead.start()
        dead.sessions.start()
        try:

            def last_online() -> list[dict[str, Any]]:
                return [
                    b
                    for b in watcher.heartbeats
                    if b.get("session") == dead.session and b["status"] == "online"
                ]

            await until(
                lambda: any(s["instance"] == dead.session for s in watcher.sessions),
                "the dead node's session",
            )
            await until(lambda: bool(last_online()), "the dead node's heartbeat")
            beat = last_online()[-1]
            assert "sent_ns" in beat
            await crashed(dead)
            for venue in dead.venues.values():
                await venue.close()  # a simulated venue dies with its process
        finally:
            await dead.journal.close()
        # As the broker still holds it a minute later: the will never went out.
        beat["sent_ns"] = time.time_ns() - 60 * NS
        watcher.bus.publish(scheme.heartbeat("execution"), beat, qos=1, retain=True)
        await watcher.bus.flush(5)
        quoting = split.run(strategy)
        await until(lambda: strategy.execution.bound == dead.session, "the dead session bound")
        split.run(fresh)
        await until(lambda: strategy.execution.bound == fresh.session, "the new session", 4)
        await until(lambda: bool(fresh.orders.all_working()), "quotes through the new node")
        assert strategy.execution.refused_total == 0
        assert not [e for e in split.errors if "second execution session" in e]
        strategy.request_stop("test over")
        assert await asyncio.wait_for(quoting, 20) == "test over"


async def test_of_two_strategy_nodes_started_at_the_same_instant_exactly_one_runs(
    split: SplitRun,
) -> None:
    announced: list[dict[str, Any]] = []
    watcher, scheme = split.watcher, split.scheme
    watcher.bus.subscribe(scheme.node_session("strategy"), lambda t, p: announced.append(p))
    await watcher.bus.flush(5)
    execution = split.execution("exec")
    serving = split.run(execution)
    await until(lambda: bool(watcher.sessions), "the execution node's session")
    nodes = {name: split.start("strategy", name) for name in ("a", "b")}
    done, _ = await asyncio.wait(nodes.values(), timeout=10, return_when="FIRST_COMPLETED")
    assert done, "neither strategy node refused to start beside the other"
    [(loser, task)] = [(n, t) for n, t in nodes.items() if t in done]
    assert task.result() == 2
    winner = "b" if loser == "a" else "a"
    await until(lambda: bool(announced), "the winner's session")
    assert {a["run_dir"] for a in announced} == {str(split.tmp / winner)}
    [message] = [e for e in split.errors if "refused to start" in e]
    assert "\n" not in message.strip()
    assert f"another strategy node of run {split.name!r} claimed the strategy role" in message
    # Names the instance that goes on: bus client, session, pid and host, run folder.
    assert str(split.tmp / winner) in message
    assert announced[-1]["instance"] in message
    assert "bus client qf-" in message and " pid " in message
    assert "stop it" in message
    info = split.run_info(loser)
    assert info["stop_reason"].startswith("refused: ") and info["role"] == "strategy"
    assert not (split.tmp / loser / "journal.sqlite").exists()
    # The winner trades through the execution node, which is bound to its session.
    await until(lambda: bool(execution.orders.all_working()), "the winner's quotes")
    assert execution.binding.bound == announced[-1]["instance"]
    assert execution.binding.refused == 0
    assert not nodes[winner].done()
    split.kill()
    assert await asyncio.wait_for(nodes[winner], 20) == 0
    await asyncio.wait_for(serving, 20)


async def test_a_strategy_node_that_slips_past_the_claim_stops_at_its_first_refusal(
    split: SplitRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second strategy node gets past the claim (a claim race, a broker that does not
    order): the execution node, bound to the first, reports its orders REJECTED, marked.
    It stops quoting at the first such report: a critical alert and one error naming the
    other session and what to do, its order gate closed, exit code 2 as for a refused
    start; the first node trades on."""
    watcher = split.watcher
    execution = split.execution("exec")
    serving = split.run(execution)
    nodes: dict[str, asyncio.Task[int]] = {}
    await until(lambda: bool(watcher.sessions), "the execution node's session")
    nodes["a"] = split.start("strategy", "a")
    await until(lambda: bool(execution.orders.all_working()), "a's quotes", 15)
    quote_set = len(execution.orders.all_working())
    bound = execution.binding.bound
    assert bound is not None

    async def slipped_past(*args: Any, **kwargs: Any) -> None:
        return None  # as if the claim had gone through

    monkeypatch.setattr(strategy_node, "claim_role", slipped_past)
    nodes["b"] = split.start("strategy", "b")
    assert await asyncio.wait_for(nodes["b"], 20) == 2
    records = journal_records(split.tmp / "b", "order", "order_update", "fill")
    states = order_states(records).values()
    rejected = [s for s in states if s["status"] == OrderStatus.REJECTED.value]
    # Its first quotes, maybe a requote sent before their refusal came back: no loop.
    assert 0 < len(rejected) <= 2 * quote_set
    assert all(s["status"] == OrderStatus.REJECTED.value for s in states)
    [error] = [e for e in split.errors if "refused this node's orders" in e]
    assert "\n" not in error.strip() and error.startswith("strategy node was refused: ")
    assert f"session {bound}" in error and str(split.tmp / "a") in error
    assert "stop it" in error
    info = split.run_info("b")
    assert info["stop_reason"].startswith("refused: ") and bound in info["stop_reason"]
    trace = (split.tmp / "b" / "trace.jsonl").read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in trace]
    [alert] = [e["detail"] for e in events if e.get("event") == "alert"]
    assert alert.startswith("strategy_conflict: ") and f"session {bound}" in alert
    # The first node trades on, through the execution node still bound to it.
    assert not nodes["a"].done() and execution.binding.bound == bound
    assert execution.orders.all_working()
    split.kill()
    assert await asyncio.wait_for(nodes["a"], 20) == 0
    await asyncio.wait_for(serving, 20)


async def test_an_execution_node_refuses_a_second_strategy_sessions_intents(
    split: SplitRun,
) -> None:
    """Two strategy sessions send intents the way a strategy node's RemoteVenue sends
    them: the execution node keeps to the session whose heartbeat it heard first. The
    other's new orders come back REJECTED and never reach the venue, its cancels touch
    nothing, one error and one alert name both; its goodbye cancels nothing. The bound
    session's goodbye cancels its orders, and the other session is taken then."""
    watcher, scheme, errors = split.watcher, split.scheme, split.errors
    breakers: list[dict[str, Any]] = []
    watcher.bus.subscribe(scheme.breaker(), lambda t, p: breakers.append(p))
    await watcher.bus.flush(5)
    node = split.execution("exec")
    loop = asyncio.get_running_loop()
    serving = split.run(node)
    remotes: dict[str, RemoteVenue] = {}
    sinks = {"sa": RecordingSink(), "sb": RecordingSink()}
    beating = True

    def say(session: str, status: str = "online", reason: str = "") -> None:
        beat = {"status": status, "node": "strategy", "session": session}
        beat |= {"client_id": f"qf-{session}"} | ({"reason": reason} if reason else {})
        watcher.bus.publish(scheme.heartbeat("strategy"), beat, qos=1)

    async def heartbeats() -> None:
        while beating:
            say("sa")
            await asyncio.sleep(0.3)

    def status(client_id: str) -> OrderStatus | None:
        order = node.orders.get(client_id)
        return None if order is None else order.status

    def bid(client_id: str) -> Order:
        book = node.markets[f"sim:{BTC}"].book
        best = book.best_bid_ticks()
        assert best is not None
        return Order(client_id, "sim", BTC, Side.BUY, 500, best - 5_000, strategy="mm_btc")

    async def venue_open() -> set[str]:
        listed = await node.venues["sim"].fetch_open_orders()
        assert listed is not None
        return {o.client_id for o in listed}

    beats = loop.create_task(heartbeats())
    try:
        await until(lambda: bool(watcher.sessions), "the execution node's session")
        await until(lambda: bool(node.markets), "the venue hosted")
        await until(lambda: node.markets[f"sim:{BTC}"].book.best_bid_ticks() is not None, "a book")
        for session in ("sa", "sb"):
            where = {"pid": 7, "host": "h", "run_dir": f"/runs/{session}"}
            announcement = {"role": "strategy", "instance": session, "connects": 1, **where}
            watcher.bus.publish(scheme.node_session("strategy"), announcement, qos=1)
            ctx = VenueContext("sim", LiveClock(), 1, "live", [BTC], secrets={})
            remote = RemoteVenue(
                ctx,
                lambda: watcher.bus,
                scheme,
                ["mm_btc", "mm_eth"],
                host_role="execution",
                session=session,
            )
            await remote.connect(sinks[session])
            remotes[session] = remote
        await until(lambda: node.watch.online, "the first session's heartbeat")
        remotes["sa"].submit([PlaceOrder(bid("a1")), PlaceOrder(bid("a2"))])
        await until(lambda: status("a1") is status("a2") is OrderStatus.OPEN, "a1 and a2 open")

        # The second session: a place, a replace and a cancel of the first one's orders,
        # and a cancel-all (one intent per strategy).
        remotes["sb"].submit(
            [
                PlaceOrder(bid("b1")),
                ReplaceOrder("a1", bid("b2")),
                CancelOrder("a2", "sim", BTC),
                CancelAll("sim", BTC),
            ]
        )
        rejected = sinks["sb"]

        def back_rejected(client_id: str) -> bool:
            last = rejected.last(client_id)
            return last is not None and last.status is OrderStatus.REJECTED

        await until(lambda: back_rejected("b1") and back_rejected("b2"), "b1 and b2 rejected")
        reason = rejected.last("b1").reason  # type: ignore[union-attr]
        assert "strategy session sa" in reason and "not from sb" in reason
        await asyncio.sleep(0.3)
        assert await venue_open() == {"a1", "a2"}
        assert status("a1") is status("a2") is OrderStatus.OPEN
        await until(lambda: node.binding.refused == 5, "every intent of sb refused")
        [error] = [e for e in errors if "second strategy session" in e]
        assert "session sb" in error and "session sa" in error  # names both
        assert "/runs/sb" in error and "/runs/sa" in error
        assert "stop the second strategy node" in error
        await until(lambda: any(b["kind"] == "strategy_conflict" for b in breakers), "the alert")
        [alert] = [b for b in breakers if b["kind"] == "strategy_conflict"]
        assert alert["severity"] == "critical" and alert["sessions"] == ["sa", "sb"]

        # The second session's goodbye is not the bound one's: nothing is cancelled.
        say("sb", "offline", "closed")
        await asyncio.sleep(0.5)
        assert status("a1") is status("a2") is OrderStatus.OPEN
        # The bound session's goodbye cancels its orders; the other session is taken then.
        beating = False
        await beats
        say("sa", "offline", "closed")
        await until(lambda: status("a1") is status("a2") is OrderStatus.CANCELLED, "a1, a2 gone")
        remotes["sb"].submit([PlaceOrder(bid("b3"))])
        await until(lambda: status("b3") is OrderStatus.OPEN, "b3 open")
        assert await venue_open() == {"b3"}
        assert node.binding.bound == "sb"
        assert len([e for e in errors if "second strategy session" in e]) == 1
        assert [b["kind"] for b in breakers] == ["strategy_conflict"]
        node.request_stop("test over")
        assert await asyncio.wait_for(serving, 20) == "test over"
        info = split.run_info("exec")
        assert info["foreign_strategy_intents_refused"] == 5
        assert info["strategy_session"] == "sb"
    finally:
        beating = False
        node.request_stop("test over")
        for remote in remotes.values():
            await remote.close()
        await asyncio.gather(serving, beats, return_exceptions=True)


async def test_an_execution_node_leaves_intents_addressed_to_another_execution_session(
    split: SplitRun,
) -> None:
    """A strategy node's intents name the execution session it is bound to: an execution
    node acts on those addressed to it (or to none), and ignores and counts the others;
    another execution node (one started during a broker's loss) never sends them."""
    node = split.execution("exec")
    serving = split.run(node)

    def remote(bound: str) -> RemoteVenue:
        binding = ExecutionBinding(split.name, 30.0)
        assert binding.admit(bound, "session")
        ctx = VenueContext("sim", LiveClock(), 1, "live", [BTC], secrets={})
        scheme, bus = split.scheme, split.watcher.bus
        return RemoteVenue(
            ctx, lambda: bus, scheme, ["mm_btc"], host_role="execution", binding=binding
        )

    def bid(client_id: str) -> PlaceOrder:
        best = node.markets[f"sim:{BTC}"].book.best_bid_ticks()
        assert best is not None
        return PlaceOrder(Order(client_id, "sim", BTC, Side.BUY, 500, best - 5_000))

    try:
        await until(lambda: bool(split.watcher.sessions), "the execution node's session")
        await until(lambda: node.markets[f"sim:{BTC}"].book.best_bid_ticks() is not None, "book")
        remote("e0ther5e55ion").submit([bid("x1"), bid("x2")])
        remote(node.session).submit([bid("m1")])
        await until(lambda: node.orders.get("m1") is not None, "m1 taken")
        await asyncio.sleep(0.3)
        assert node.orders.get("x1") is None and node.orders.get("x2") is None
        assert node.rivals is not None and node.rivals.elsewhere == 2
        node.request_stop("test over")
        assert await asyncio.wait_for(serving, 20) == "test over"
        assert split.run_info("exec")["intents_for_other_execution_sessions"] == 2
    finally:
        node.request_stop("test over")
        await asyncio.gather(serving, return_exceptions=True)


async def test_a_starting_node_refuses_beside_a_fresh_heartbeat_with_nothing_retained(
    split: SplitRun,
) -> None:
    """A broker that lost its retained values holds no heartbeat of the node that runs:
    the claim waits a heartbeat and more, and refuses on the fresh one it hears."""
    bus, topic = split.watcher.bus, split.scheme.heartbeat("execution")
    beating = True
    claiming = asyncio.Event()

    def on_claim(topic: str, payload: dict[str, Any]) -> None:
        if payload["state"] == "claiming":
            claiming.set()

    bus.subscribe(claim_topic(split.scheme), on_claim)
    await bus.flush(5)

    async def heartbeats() -> None:
        await claiming.wait()  # the running node is back just after the claim
        await asyncio.sleep(0.1)
        while beating:
            beat = {"status": "online", "node": "execution", "session": "running1"}
            bus.publish(topic, beat | {"client_id": "qf-x", "sent_ns": time.time_ns()}, qos=1)
            await asyncio.sleep(0.4)  # nodes.heartbeat is 0.5 s here

    beats = asyncio.get_running_loop().create_task(heartbeats())
    try:
        me = {"session": "starting", "client_id": "qf-y"}
        with pytest.raises(NodeRefusedError, match=r"another execution node .* is online"):
            await claim_role(split.loaded, split.registry, split.settings, "execution", me, 2.5)
    finally:
        beating = False
        await beats


async def test_a_strategy_node_keeps_to_one_market_data_session() -> None:
    """Books, trades and heartbeats of a market-data node carry its session: the strategy
    node quotes on one session's books and ignores, counts and reports another's (an
    old node woken from a pause, a second one started), until the bound one is gone."""
    rig = await mirror_rig(60, host_role="marketdata")
    bus, scheme, venue, sink = rig.bus, rig.scheme, rig.venue, rig.sink
    conflicts: list[str] = []
    md = ExecutionBinding("unit", 60.0, on_conflict=conflicts.append, role="marketdata")
    venue.host_binding = md  # as the strategy node gives it (md_binding)
    first = rig.publisher
    first.session = "m1"
    second = MarketDataPublisher(bus, scheme, depth=1, snapshot_interval_s=0, session="m2")
    mirror = venue.books[BTC]

    def beat(session: str, status: str = "online", reason: str = "") -> None:
        payload = {"status": status, "session": session, "sent_ns": time.time_ns()}
        bus.publish(
            scheme.heartbeat("marketdata"), payload | ({"reason": reason} if reason else {})
        )

    beat("m1")
    bus.publish(scheme.heartbeat("execution"), {"status": "online"})
    source = rig.live_source([(100, 5)])
    first.on_book_state(source, "SYNCING", "LIVE", "start")
    assert mirror.state is BookState.LIVE and mirror.best_bid() == (100, 5)
    assert md.bound == "m1"
    # A second market-data session: its books, trades and heartbeats are not taken.
    other = rig.live_source([(100, 9)])
    second.on_book_state(other, "SYNCING", "LIVE", "start")
    second.on_trade("sim", BTC, 100, 1, Side.BUY, 5)
    beat("m2")
    await asyncio.sleep(0)
    assert mirror.state is BookState.LIVE and mirror.best_bid() == (100, 5)
    assert not sink.trades
    assert md.refused == {"book": 2, "trade": 1, "heartbeat": 1}  # live and retained
    [conflict] = conflicts
    assert "second market-data session" in conflict and "m1" in conflict and "m2" in conflict
    # Once the bound session said goodbye, the next one heard is bound.
    beat("m1", "offline", "closed")
    assert mirror.state is BookState.STALE
    beat("m2")
    assert md.bound == "m2"
    second.on_book_state(other, "LIVE", "LIVE", "resync")
    assert mirror.state is BookState.LIVE and mirror.best_bid() == (100, 9)
    await venue.close()


async def test_of_two_market_data_nodes_the_second_refuses_to_start(split: SplitRun) -> None:
    first = split.start("marketdata", "md1")
    online = asyncio.Event()
    topic = claim_topic(split.scheme, "marketdata")

    def on_claim(topic: str, payload: dict[str, Any]) -> None:
        if payload["state"] == "online":
            online.set()

    split.watcher.bus.subscribe(topic, on_claim)
    await asyncio.wait_for(online.wait(), 15)
    second = split.start("marketdata", "md2")
    assert await asyncio.wait_for(second, 15) == 2
    assert split.run_info("md2")["stop_reason"].startswith(
        "refused: another marketdata node of run"
    )
    assert str(split.tmp / "md1") in split.run_info("md2")["stop_reason"]
    assert not first.done()
    split.kill()
    assert await asyncio.wait_for(first, 15) == 0


async def test_an_execution_node_publishes_its_simulated_books_stale_after_its_own_pause(
    split: SplitRun,
) -> None:
    """A wall-clock execution node hosting simulated venues that did not run for longer
    than ``stale_after`` (its event loop blocked here, as a paused host would) sends its
    books STALE before anything else: never the book of before the pause, stamped now."""
    books: list[dict[str, Any]] = []
    for topic in (split.scheme.book("sim", BTC), split.scheme.book_snapshot("sim", BTC)):
        split.watcher.bus.subscribe(topic, lambda t, p: books.append(p))
    node = split.execution("exec")
    serving = split.run(node)
    try:
        await until(lambda: any(b.get("state") == "LIVE" for b in books), "a LIVE book", 15)
        time.sleep(float(split.settings.stale_after) + 0.5)  # the node does not run
        woke_ns = time.time_ns()
        await until(lambda: any(b["sent_ns"] >= woke_ns for b in books), "a book since", 10)
        first = next(b for b in books if b["sent_ns"] >= woke_ns)
        assert first["state"] == "STALE" and first["bids"] == []
        assert node.publisher.pauses == 1
    finally:
        node.request_stop("test over")
        await asyncio.gather(serving, return_exceptions=True)


def test_a_session_known_only_from_a_retained_value_binds_but_shows_no_life() -> None:
    """A fresh strategy node reads the retained announcement of an execution node that
    stopped (its goodbye since replaced by the new node's heartbeat): bound, but not
    alive, so the new session's first live message takes over without a conflict."""
    conflicts: list[str] = []
    binding = ExecutionBinding("r1", 2.0, on_conflict=conflicts.append)
    mark = RETAINED_DELIVERY.set(True)
    try:
        assert binding.admit("old", "session", {"instance": "old", "run_dir": "/runs/old"})
    finally:
        RETAINED_DELIVERY.reset(mark)
    assert binding.bound == "old" and not binding.alive()
    assert binding.heartbeat({"status": "online", "session": "new", "sent_ns": time.time_ns()})
    assert binding.bound == "new" and binding.alive()
    assert conflicts == []
    # A live session is not displaced so: the old one's live word is refused now.
    assert not binding.admit("old", "order")
    assert len(conflicts) == 1
