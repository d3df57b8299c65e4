"""The venues' dead man's switch: Binance USDⓈ-M's ``POST /fapi/v1/countdownCancelAll``
and Kraken's ``CancelAllOrdersAfter`` (``auto_cancel_after_s``), and Polymarket's
heartbeats (``heartbeat_interval_s``), each on its replica. The venue's example runs as
its own ``quoteforge run`` process; frozen (SIGSTOP) for longer than the countdown, its
orders are cancelled by the venue, not before; woken, it hears of the cancels and quotes
again, and renews the countdown; stopped with Ctrl-C, it leaves no order and (where the
venue can stop one) no countdown behind, so that the countdown cannot cancel the orders
of the next run on the account."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from binance_usdm_runs import EXAMPLES, wait_for
from polymarket_orders import example_params

from quoteforge.exchanges.testing.binance_usdm_replica import BinanceUsdmReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS
from quoteforge.exchanges.testing.kraken_replica import KrakenReplica
from quoteforge.exchanges.testing.polymarket_replica import PolymarketReplica

COUNTDOWN_S = 3  # renewed every 0.75 s (USDⓈ-M: 800 of the 2,400 request weight a minute)


@dataclass
class Venue:
    name: str  # the example's exchange
    example: str
    symbol: str  # as the replica names it
    env: str  # prefix of the key variables
    replica: Callable[[], Any]
    urls: Callable[[Any], dict[str, str]]
    armed: Callable[[Any], int]  # the replica's ms the countdown runs out at; 0: off
    fired: Callable[[Any], int]  # how often it ran out


VENUES = [
    Venue(
        "usdm",
        "binance_usdm_testnet.yaml",
        "ETHUSDT",
        "BINANCE_USDM",
        lambda: BinanceUsdmReplica(ping_interval=0.1),
        lambda r: {"rest_url": r.url, "ws_url": r.ws_url, "testnet": "false"},
        lambda r: r.countdowns.get("ETHUSDT", 0),
        lambda r: len(r.countdowns_fired),
    ),
    Venue(
        "kraken",
        "kraken.yaml",
        "BTC/USD",
        "KRAKEN",
        # The tier sets both of Kraken's counters, at the venue and in the adapter: a
        # countdown renewed every 0.75 s is more REST calls than a starter key may make.
        lambda: KrakenReplica(ping_interval=0.1, rest_tier="pro"),
        lambda r: {
            "rest_url": r.url,
            "ws_url": r.public_ws_url,
            "private_ws_url": r.private_ws_url,
            "tier": "pro",  # the starter tier's counter would throttle the shutdown
        },
        lambda r: r.cancel_after_ms,
        lambda r: r.cancel_after_fired,
    ),
]


def start_run(tmp_path: Path, venue: Venue, replica: Any) -> subprocess.Popen[bytes]:
    params = {**FAST_PARAMS, **venue.urls(replica), "auto_cancel_after_s": COUNTDOWN_S}
    sets = [f"exchanges.{venue.name}.params.{k}={v}" for k, v in params.items()]
    sets += ["run.duration=60s", "run.cancel_timeout=20s", "report.html=false"]
    args = [sys.executable, "-m", "quoteforge.cli", "run", str(EXAMPLES / venue.example)]
    for item in sets:
        args += ["--set", item]
    args += ["--out", str(tmp_path / "run"), "--quiet"]
    env = {
        **os.environ,
        f"{venue.env}_API_KEY": replica.api_key,
        f"{venue.env}_API_SECRET": replica.api_secret,
    }
    log = (tmp_path / "run.log").open("wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)


async def stop(proc: subprocess.Popen[bytes], replica: Any) -> None:
    """The run's process killed if a failed check left it running, then the replica."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    await replica.stop()


@pytest.mark.slow
@pytest.mark.parametrize("venue", VENUES, ids=[v.name for v in VENUES])
async def test_a_frozen_bot_has_its_orders_cancelled_by_the_venue(
    tmp_path: Path, venue: Venue
) -> None:
    replica = venue.replica()
    await replica.start()
    proc = start_run(tmp_path, venue, replica)
    try:
        await wait_for(lambda: len(replica.orders(venue.symbol)) >= 2, "quotes", timeout=30)
        armed = venue.armed(replica)
        assert armed  # armed at start
        await asyncio.sleep(1.5)
        assert venue.armed(replica) > armed  # renewed
        quoted = {o.client_id for o in replica.orders(venue.symbol)}

        os.kill(proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            await wait_for(lambda: replica.orders(venue.symbol) == [], "the venue cancels", 10)
            assert time.monotonic() - frozen >= COUNTDOWN_S - 1  # not before it ran out
            assert venue.fired(replica) == 1
        finally:
            os.kill(proc.pid, signal.SIGCONT)

        # Awake: the cancel reports reach the run, which quotes again and renews.
        await wait_for(
            lambda: any(o.client_id not in quoted for o in replica.orders(venue.symbol)),
            "quotes again",
            timeout=20,
        )
        await wait_for(lambda: venue.armed(replica) > 0, "armed again", 5)

        proc.send_signal(signal.SIGINT)  # the operator's Ctrl-C
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert replica.orders(venue.symbol) == []
        assert venue.armed(replica) == 0  # stopped with the run
        assert venue.fired(replica) == 1
        log = (tmp_path / "run.log").read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    finally:
        await stop(proc, replica)


def start_polymarket(tmp_path: Path, replica: PolymarketReplica) -> subprocess.Popen[bytes]:
    params = {**example_params(replica), "heartbeat_interval_s": COUNTDOWN_S / 4}
    sets = [f"exchanges.polymarket.params.{k}={v}" for k, v in params.items()]
    sets += ["run.duration=60s", "run.cancel_timeout=20s", "report.html=false"]
    args = [sys.executable, "-m", "quoteforge.cli", "run", str(EXAMPLES / "polymarket.yaml")]
    for item in sets:
        args += ["--set", item]
    args += ["--out", str(tmp_path / "run"), "--quiet"]
    env = {**os.environ}
    for name, value in replica.secrets.items():
        env[f"POLYMARKET_{name.upper()}"] = value
    log = (tmp_path / "run.log").open("wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)


@pytest.mark.slow
async def test_a_frozen_polymarket_bot_has_its_orders_cancelled_by_its_missed_heartbeats(
    tmp_path: Path,
) -> None:
    replica = PolymarketReplica(ping_interval=0.1, markets={"event": "0.50"})
    replica.heartbeat_timeout_s = COUNTDOWN_S  # the venue's is 10 s
    await replica.start()
    proc = start_polymarket(tmp_path, replica)
    try:
        await wait_for(lambda: len(replica.orders()) >= 2, "quotes", timeout=30)
        first = replica.heartbeat_id
        assert first is not None  # started at connect, before any order
        await asyncio.sleep(1.5)
        assert replica.heartbeat_id not in (None, first)  # beating, each with the last id
        quoted = {o.venue_id for o in replica.orders()}

        os.kill(proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            await wait_for(lambda: replica.orders() == [], "the venue cancels", 10)
            assert time.monotonic() - frozen >= COUNTDOWN_S - 1  # not before it ran out
            assert replica.heartbeats_lapsed == 1
        finally:
            os.kill(proc.pid, signal.SIGCONT)

        # Awake: its old heartbeat id is refused (the chain lapsed), it starts a new one,
        # and it quotes again.
        await wait_for(
            lambda: any(o.venue_id not in quoted for o in replica.orders()),
            "quotes again",
            timeout=20,
        )
        await wait_for(lambda: replica.heartbeat_id is not None, "beating again", 5)
        assert replica.heartbeats_lapsed == 1  # the new chain holds while it runs

        # Its stop sends no more heartbeats (the venue has no call to end them), so the
        # venue's window may run out once more after the run's own cancels: nothing left.
        proc.send_signal(signal.SIGINT)  # the operator's Ctrl-C
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert replica.orders() == []
        log = (tmp_path / "run.log").read_text(encoding="utf-8", errors="replace")
        assert "expects heartbeat id None" in log, log[-3000:]
        assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    finally:
        await stop(proc, replica)
