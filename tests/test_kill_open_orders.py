"""A kill whose cancels the venue keeps refusing: the Binance example in one process, live,
against the local Binance replica, which answers every order and open-orders request
with HTTP 500 from the moment the kill switch is pulled.

The run cannot confirm its orders closed, and says so wherever an operator or a script
looks: the alert says the orders are being cancelled (not that they were), the log
names how many are not confirmed closed, ``run.json`` has ``orders_left_open`` and
``quoteforge run`` exits 1. The same run with a healthy venue exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS

REPO = Path(__file__).resolve().parents[1]
SYMBOL = "BTCUSDT"

pytestmark = pytest.mark.slow


def live_manifest(path: Path, replica: BinanceReplica) -> Path:
    data = yaml.safe_load((REPO / "examples" / "binance_testnet.yaml").read_text())
    data["run"].update({"duration": "60s", "cancel_timeout": "2s"})
    data["exchanges"]["binance"]["params"].update(
        {**FAST_PARAMS, "rest_url": replica.url, "ws_url": replica.ws_url, "testnet": False}
    )
    data["report"] = {"html": False, "png": False}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def killed_run(tmp_path: Path, refuse_cancels: bool) -> tuple[int, str, dict[str, object]]:
    """Run the example until it quotes, pull the kill switch (``quoteforge kill``), and
    return the exit code, stderr and run.json; with ``refuse_cancels`` the venue answers
    500 to every order request from the kill on."""
    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    out = tmp_path / "run"
    env = {
        **os.environ,
        "BINANCE_API_KEY": replica.api_key,
        "BINANCE_API_SECRET": replica.api_secret,
    }
    manifest = live_manifest(tmp_path / "m.yaml", replica)
    cmd = [sys.executable, "-m", "quoteforge.cli", "run", str(manifest), "--out", str(out)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, "--quiet", env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while len(replica.orders(SYMBOL)) < 2 or not (out / "run.json").exists():
            assert time.monotonic() < deadline, "the run never quoted"
            await asyncio.sleep(0.1)
        if refuse_cancels:
            for path in ("/api/v3/order", "/api/v3/openOrders"):
                await replica.fail_http(500, count=10_000, path=path)
        kill = subprocess.run(
            [sys.executable, "-m", "quoteforge.cli", "kill", str(out)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert kill.returncode == 0, kill.stderr
        assert proc.stderr is not None
        err = (await asyncio.wait_for(proc.stderr.read(), 60)).decode()
        code = await asyncio.wait_for(proc.wait(), 10)
        if refuse_cancels:
            assert len(replica.orders(SYMBOL)) >= 2  # the venue kept them
        else:
            assert replica.orders(SYMBOL) == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await replica.stop()
    info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    return code, err, info


async def test_a_kill_the_venue_refuses_to_carry_out_exits_1_naming_the_open_orders(
    tmp_path: Path,
) -> None:
    code, err, info = await killed_run(tmp_path, refuse_cancels=True)
    assert code == 1, err[-3000:]
    assert "kill switch (quoteforge kill: operator): cancelling every order" in err
    assert "every order cancelled" not in err
    left = info["orders_left_open"]
    assert isinstance(left, int) and left >= 2
    assert f"{left} order(s) not confirmed closed at the venues: check them" in err
    assert str(info["stop_reason"]).startswith("kill switch")


async def test_a_kill_the_venue_carries_out_exits_0(tmp_path: Path) -> None:
    code, err, info = await killed_run(tmp_path, refuse_cancels=False)
    assert code == 0, err[-3000:]
    assert "orders_left_open" not in info
    assert "not confirmed closed" not in err
