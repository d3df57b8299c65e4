"""One execution node per run, when two start at once or one slips through
(plugins/distributed/execution_instances.py): of two execution nodes started at the same
instant exactly one runs and the other refuses, naming it; a strategy node keeps to the
execution session it bound to and never books another session's fills, yet takes the
session of an execution node started after the first said goodbye.

Real nodes in this process on the shared test broker, as in
test_execution_node_restart.py, whose manifest and bus watcher these tests share."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from pathlib import Path

from brokers import require_shared_broker
from loguru import logger
from test_execution_node_restart import SIM, Watcher, manifest, until

from quoteforge.model import Fill, Liquidity, Order, OrderStatus, OrderUpdate
from quoteforge.plugins.distributed.execution_instances import ExecutionBinding
from quoteforge.plugins.distributed.execution_node import ExecutionNode
from quoteforge.plugins.distributed.nodes import load_node_manifest, run_node
from quoteforge.plugins.distributed.strategy_node import StrategyNode
from quoteforge.plugins.distributed.wire import fill_payload, update_payload
from quoteforge.registry import PluginRegistry


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


async def test_of_two_execution_nodes_started_at_the_same_instant_exactly_one_runs(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    port = require_shared_broker()
    path = manifest(tmp_path / "m.yaml", SIM, port)
    loaded, settings = load_node_manifest(path, registry)
    run = loaded.manifest.run.name
    watcher = Watcher(port, run)
    await watcher.start("sim")
    errors: list[str] = []
    sink = logger.add(errors.append, level="ERROR", format="{message}")
    loop = asyncio.get_running_loop()
    nodes = {
        name: loop.create_task(
            run_node(
                loaded,
                registry,
                "execution",
                tmp_path / name,
                path,
                settings=settings,
                install_signals=False,
            )
        )
        for name in ("a", "b")
    }
    try:
        done, _ = await asyncio.wait(nodes.values(), timeout=10, return_when="FIRST_COMPLETED")
        [(loser, task)] = [(n, t) for n, t in nodes.items() if t in done]
        assert task.result() == 2
        winner = "b" if loser == "a" else "a"
        await until(lambda: bool(watcher.sessions), "the winner's session")
        assert {s["run_dir"] for s in watcher.sessions} == {str(tmp_path / winner)}
        [message] = [e for e in errors if "refused to start" in e]
        assert "\n" not in message.strip()
        assert f"another execution node of run {run!r} claimed the execution role" in message
        assert str(tmp_path / winner) in message  # names the instance that goes on
        assert watcher.sessions[-1]["instance"] in message
        assert "stop it" in message
        info = json.loads((tmp_path / loser / "run.json").read_text(encoding="utf-8"))
        assert info["stop_reason"].startswith("refused: ")
        assert not (tmp_path / loser / "journal.sqlite").exists()
        assert not nodes[winner].done()
        # The winner goes on as the run's one execution node, and stops normally.
        watcher.bus.publish(watcher.scheme.kill(), {"reason": "test over", "node": "test"}, qos=1)
        assert await asyncio.wait_for(nodes[winner], 20) == 0
    finally:
        logger.remove(sink)
        for task in nodes.values():
            task.cancel()
        await asyncio.gather(*nodes.values(), return_exceptions=True)
        await watcher.bus.close()


async def test_a_strategy_node_refuses_a_second_execution_session_and_books_none_of_its_fills(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    port = require_shared_broker()
    path = manifest(tmp_path / "m.yaml", SIM, port)
    loaded, settings = load_node_manifest(path, registry)
    watcher = Watcher(port, loaded.manifest.run.name)
    await watcher.start("sim")
    scheme = watcher.scheme
    first = ExecutionNode(loaded, registry, tmp_path / "exec1", settings, path)
    second = ExecutionNode(loaded, registry, tmp_path / "exec2", settings, path)
    strategy = StrategyNode(loaded, registry, tmp_path / "strategy", settings, path)
    run = strategy.run_obj
    errors: list[str] = []
    sink = logger.add(errors.append, level="ERROR", format="{message}")
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(first.run()), loop.create_task(strategy.run())]
    try:
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
        [error] = [e for e in errors if "second execution session" in e]
        assert "intruder" in error and first.session in error  # names both sessions
        assert str(tmp_path / "exec1") in error
        assert strategy.execution.bound == first.session
        # A restart is not a second session: once the first said goodbye, the strategy
        # node takes the next execution node and quotes through it.
        first.request_stop("restart")
        assert await asyncio.wait_for(tasks[0], 15) == "restart"
        tasks[0] = loop.create_task(second.run())
        await until(lambda: strategy.execution.bound == second.session, "the new session", 10)
        await until(
            lambda: any(second.orders.get(o.client_id) for o in run.orders.all_working()),
            "quotes through the new execution node",
            10,
        )
        assert len([a for a in run.alerts if a.kind == "execution_conflict"]) == 1
        strategy.request_stop("test over")
        await asyncio.wait_for(tasks[1], 20)
        info = json.loads((tmp_path / "strategy" / "run.json").read_text(encoding="utf-8"))
        assert info["foreign_execution_refused"]["fill"] == 2
    finally:
        logger.remove(sink)
        strategy.request_stop("test over")
        first.request_stop("test over")
        second.request_stop("test over")
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        await watcher.bus.close()
