"""The venue's dead man's switch on the USDⓈ-M replica (``auto_cancel_after_s``: POST
/fapi/v1/countdownCancelAll): the USDⓈ-M example runs as its own ``quoteforge run``
process; frozen (SIGSTOP) for longer than the countdown, its orders are cancelled by the
venue; woken, it hears of the cancels and quotes again; stopped, it stops the countdown,
so that it cannot cancel the orders of the next run on the account."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from binance_usdm_runs import EXAMPLES, overrides, wait_for

from quoteforge.exchanges.testing.binance_usdm_replica import BinanceUsdmReplica

COUNTDOWN_S = 3  # renewed every 0.75 s: 800 of the 2,400 request weight a minute


def start_run(tmp_path: Path, replica: BinanceUsdmReplica) -> subprocess.Popen[bytes]:
    sets = [
        *overrides(replica, duration="60s"),
        f"exchanges.usdm.params.auto_cancel_after_s={COUNTDOWN_S}",
    ]
    args = [
        sys.executable,
        "-m",
        "quoteforge.cli",
        "run",
        str(EXAMPLES / "binance_usdm_testnet.yaml"),
    ]
    for item in sets:
        args += ["--set", item]
    args += ["--out", str(tmp_path / "run"), "--quiet"]
    env = {
        **os.environ,
        "BINANCE_USDM_API_KEY": replica.api_key,
        "BINANCE_USDM_API_SECRET": replica.api_secret,
    }
    log = (tmp_path / "run.log").open("wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)


@pytest.mark.slow
async def test_a_frozen_bot_has_its_orders_cancelled_by_the_venue(tmp_path: Path) -> None:
    replica = BinanceUsdmReplica(ping_interval=0.1)
    await replica.start()
    proc = start_run(tmp_path, replica)
    try:
        await wait_for(lambda: len(replica.orders("ETHUSDT")) >= 2, "quotes", timeout=30)
        assert "ETHUSDT" in replica.countdowns  # armed at start
        armed = replica.countdowns["ETHUSDT"]
        await asyncio.sleep(1.0)
        assert replica.countdowns["ETHUSDT"] > armed  # renewed
        quoted = {o.client_id for o in replica.orders("ETHUSDT")}

        os.kill(proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            await wait_for(lambda: replica.orders("ETHUSDT") == [], "the venue cancels", 10)
            assert time.monotonic() - frozen >= COUNTDOWN_S - 1  # not before it ran out
            assert replica.countdowns_fired == ["ETHUSDT"]
        finally:
            os.kill(proc.pid, signal.SIGCONT)

        # Awake: the cancel reports reach the run, which quotes again (and re-arms).
        await wait_for(
            lambda: any(o.client_id not in quoted for o in replica.orders("ETHUSDT")),
            "quotes again",
            timeout=20,
        )
        await wait_for(lambda: "ETHUSDT" in replica.countdowns, "armed again", 5)

        proc.send_signal(signal.SIGINT)  # the operator's Ctrl-C
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert replica.orders("ETHUSDT") == []
        assert replica.countdowns == {}  # stopped with the run
        assert replica.countdowns_fired == ["ETHUSDT"]
        log = (tmp_path / "run.log").read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await replica.stop()
