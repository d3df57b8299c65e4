"""The dashboard's actions on a split run: the strategy node serves the control API, and
its cancels and kill switch reach the execution node over the signed MQTT bus (a local
Mosquitto with passwords, TLS and the shipped ACL, as examples/distributed/ sets up)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from brokers import SecureBroker
from split_nodes import RUNNER

from quoteforge.journal import JournalRecord, order_states
from quoteforge.plugins.control_http import CONTROL_FILE, ENV_TOKEN, ENV_WHO
from quoteforge.plugins.report.dashboard import create_app

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "distributed" / "sim_nodes.yaml"
TOKEN = "split-run-control-token-0123456789"
ROLES = ("execution", "marketdata", "strategy")


def write_manifest(path: Path, port: int) -> Path:
    """The example split run on the wall clock (the nodes wait for the test's actions),
    with this test's broker; the bus stays signed with the run's key."""
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["run"].update({"name": f"d{uuid.uuid4().hex[:10]}", "duration": 600})
    data["run"]["cancel_timeout"] = 3
    data["bus"]["params"].update({"port": port, "reconnect_min_s": 0.05, "connect_timeout_s": 3})
    assert data["bus"]["params"]["signing_key"] == "${QUOTEFORGE_BUS_KEY}"
    data["nodes"].update({"clock": "wall", "heartbeat": 0.5, "stale_after": 2})
    data["nodes"].update({"strategy_grace": 30, "connect_timeout": 15})
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started: dict[str, subprocess.Popen[bytes]] = {}
    yield started
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.1)


def orders_of(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each order's state in a node's journal (read while the node writes it)."""
    path = run_dir / "journal.sqlite"
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    try:
        rows = conn.execute(
            "SELECT event_id, kind, ts_ns, market, payload FROM journal "
            "WHERE kind IN ('order', 'order_update', 'fill') ORDER BY seq"
        ).fetchall()
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    return order_states(JournalRecord(e, k, t, m, json.loads(p)) for e, k, t, m, p in rows)


@pytest.fixture
async def dashboard_of(tmp_path: Path) -> AsyncIterator[Callable[[Path], Any]]:
    runners: list[web.AppRunner] = []

    async def serve(run_dir: Path) -> str:
        runner = web.AppRunner(create_app(run_dir, poll_interval=0.5), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield serve
    for runner in runners:
        await runner.cleanup()


@pytest.mark.slow
async def test_dashboard_actions_on_a_split_run_reach_the_execution_node(
    secure_broker: SecureBroker,
    procs: dict[str, subprocess.Popen[bytes]],
    dashboard_of: Callable[[Path], Any],
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path / "split.yaml", secure_broker.port)
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    dirs = {role: tmp_path / f"node-{role}" for role in ROLES}
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTEFORGE_CONTROL_")}
    for role in ROLES:
        extra = {ENV_TOKEN: TOKEN, ENV_WHO: "desk"} if role == "strategy" else {}
        procs[role] = subprocess.Popen(
            [sys.executable, str(runner), str(manifest), role, str(dirs[role])],
            stdout=(tmp_path / f"{role}.log").open("wb"),
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**env, **secure_broker.env(role), **extra},
        )

    def log(role: str) -> str:
        return (tmp_path / f"{role}.log").read_text(encoding="utf-8", errors="replace")

    def working(role: str) -> dict[str, dict[str, Any]]:
        return {
            cid: o
            for cid, o in orders_of(dirs[role]).items()
            if o["status"] in ("open", "partially_filled")
        }

    await wait_until(
        lambda: (dirs["strategy"] / CONTROL_FILE).exists() or procs["strategy"].poll() is not None,
        "the strategy node's control API",
    )
    assert procs["strategy"].poll() is None, log("strategy")[-3000:]
    # Only the strategy node serves it: the other nodes have no engine to control.
    assert not (dirs["execution"] / CONTROL_FILE).exists()
    await wait_until(lambda: len(working("execution")) >= 4, "quotes working at the venue")
    url = await dashboard_of(dirs["strategy"])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:

        async def post(path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
            async with session.post(f"{url}/api/control/{path}", headers=headers) as resp:
                return resp.status, await resp.json()

        # Without the token nothing reaches the bus.
        before = set(working("execution"))
        status, answer = await post("kill", {})
        assert status == 401 and "no token" in answer["error"]
        await asyncio.sleep(1)
        assert all(p.poll() is None for p in procs.values())
        assert before <= set(orders_of(dirs["execution"]))
        # One order cancelled from the dashboard: the execution node cancels it at the venue.
        async with session.get(f"{url}/api/control/state", headers=auth) as resp:
            state = await resp.json()
        assert resp.status == 200 and state["orders"], state
        at_venue = working("execution")
        victim = next(o["client_id"] for o in state["orders"] if o["client_id"] in at_venue)
        status, answer = await post(f"orders/{victim}/cancel", auth)
        assert status == 200 and "cancel sent" in answer["result"], answer
        await wait_until(
            lambda: orders_of(dirs["execution"])[victim]["status"] == "cancelled",
            "the execution node cancelled the order",
            timeout=15,
        )
        # The kill switch from the dashboard stops every node and leaves nothing open.
        status, answer = await post("kill", auth)
        assert status == 200 and "kill switch" in answer["result"], answer
    deadline = time.monotonic() + 40
    while any(p.poll() is None for p in procs.values()):
        assert time.monotonic() < deadline, {r: log(r)[-2000:] for r in ROLES}
        await asyncio.sleep(0.1)
    assert {role: p.returncode for role, p in procs.items()} == dict.fromkeys(ROLES, 0)
    infos = {r: json.loads((dirs[r] / "run.json").read_text()) for r in ROLES}
    for role in ROLES:
        assert "kill switch" in infos[role]["stop_reason"], (role, infos[role])
    assert infos["execution"]["open_orders_left"] == 0
    assert working("execution") == {}
    # Every frame was signed with the run's key: nothing was refused as unsigned.
    assert "signature" not in log("execution").lower()
    conn = sqlite3.connect(dirs["strategy"] / "journal.sqlite")
    try:
        control = [
            json.loads(p)
            for (p,) in conn.execute("SELECT payload FROM journal WHERE kind = 'control'")
        ]
    finally:
        conn.close()
    assert [(c["who"], c["what"], c["status"]) for c in control] == [
        ("desk", f"orders/{victim}/cancel", 200),
        ("desk", "kill", 200),
    ]
