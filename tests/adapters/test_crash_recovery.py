"""Crash recovery: SIGKILL a live run against the Binance replica at random points,
resume the run folder, and prove nothing was lost or duplicated.

The venue (the replica) outlives the bot and keeps trading against our resting orders
while the bot is dead, as a real venue would.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS
from quoteforge.model import Fill, Instrument, Liquidity, Side
from quoteforge.portfolio import Portfolio

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
SYMBOL = "BTCUSDT"


class VenueThread:
    """The replica on its own event loop, with takers hitting our resting orders."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.replica = BinanceReplica(ping_interval=0.2)
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._ready = threading.Event()
        self.takers_on = threading.Event()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        await self.replica.start()
        self._ready.set()
        rng = random.Random(7)
        while not self._stop.is_set():
            await asyncio.sleep(0.25)
            if not self.takers_on.is_set():
                continue
            ours = self.replica.orders(SYMBOL)
            if ours:
                order = rng.choice(ours)
                part = (order.remaining / 2).quantize(Decimal("0.00001"))
                await self.replica.fill_order(order.client_id, part if rng.random() < 0.5 else None)
        await self.replica.stop()

    def __enter__(self) -> VenueThread:
        self._thread.start()
        assert self._ready.wait(10), "replica did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the venue's loop and return its result (thread-safe reads)."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(fn())
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(10)
        return box[0]


@pytest.fixture
def venue() -> Iterator[VenueThread]:
    with VenueThread() as v:
        yield v


def bot(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "quoteforge.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not path.exists():
        time.sleep(0.05)
    assert path.exists(), f"{path} did not appear"


def wait_until_resumed(run_dir: Path, pid: int, lives: int, seconds: float) -> None:
    """Until run.json says process ``pid`` is the ``lives``-th resume of the run."""
    deadline = time.time() + seconds
    info: dict[str, Any] = {}
    while time.time() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            info = json.loads((run_dir / "run.json").read_text())
            if info.get("pid") == pid and len(info.get("resumed", [])) == lives:
                return
        time.sleep(0.05)
    raise AssertionError(f"resume {lives} by pid {pid} never started; run.json: {info}")


def journal_fills(run_dir: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        rows = conn.execute("SELECT payload FROM journal WHERE kind='fill' ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(p)["fill"] for (p,) in rows]


# Two SIGKILLs at random moments of a live run against a threaded replica: timing on a
# loaded machine made it fail once in several full-suite runs; one more try.
@pytest.mark.flaky(reruns=1)
def test_sigkill_at_random_points_then_resume(venue: VenueThread, tmp_path: Path) -> None:
    replica = venue.replica
    env = dict(
        os.environ,
        BINANCE_API_KEY=replica.api_key,
        BINANCE_API_SECRET=replica.api_secret,
    )
    params = {**FAST_PARAMS, "rest_url": replica.url, "ws_url": replica.ws_url, "testnet": False}
    sets = [f"exchanges.binance.params.{k}={v}" for k, v in params.items()]
    sets += ["report.html=false", "report.png=false", "run.cancel_timeout=10s"]
    run_dir = tmp_path / "run"
    flags = [f"--set={s}" for s in sets]
    rng = random.Random(2026)
    venue.takers_on.set()

    resumed = bot(
        [
            "run",
            str(EXAMPLES / "binance_testnet.yaml"),
            "--out",
            str(run_dir),
            "--set=run.duration=60s",
            *flags,
        ],
        env,
    )
    wait_for(run_dir / "trace.jsonl", 30)
    for _life in range(2):
        time.sleep(rng.uniform(1.5, 4.0))
        resumed.send_signal(signal.SIGKILL)  # the first life, then the first resume
        resumed.communicate(timeout=10)
        time.sleep(rng.uniform(0.3, 1.0))  # the venue keeps trading while we are dead
        resumed = bot(["run", "--resume", str(run_dir), "--set=run.duration=60s"], env)
        time.sleep(1.0)
    # The last life ends with a clean stop that cancels everything. It must have started
    # (its signal handlers are in place once it has recorded its resume in run.json).
    wait_until_resumed(run_dir, resumed.pid, lives=2, seconds=60)
    # Takers stop first: a trade after the bot has gone would be for the next life's
    # reconciliation.
    venue.takers_on.clear()
    time.sleep(0.5)
    resumed.send_signal(signal.SIGINT)
    _, stderr = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, stderr

    info = json.loads((run_dir / "run.json").read_text())
    assert len(info["resumed"]) == 2
    assert "reconciled with the venues" in stderr

    venue_trades = venue.call(lambda: list(replica.markets[SYMBOL].trades))
    ours = venue_trades  # the replica records trades of our orders only
    assert len(ours) >= 3, "the venue traded against our orders"
    journaled = journal_fills(run_dir)
    ids = [f["fill_id"] for f in journaled]
    # Every fill the exchange made is in the journal exactly once.
    assert sorted(ids) == sorted(f"{SYMBOL}:{t.trade_id}" for t in ours)
    assert len(set(ids)) == len(ids)
    # No order is open on the exchange, and every order it ever had is one we journaled.
    assert venue.call(lambda: replica.orders(SYMBOL)) == []
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        known = {
            json.loads(p)["order"]["client_id"]
            for (p,) in conn.execute(
                "SELECT payload FROM journal WHERE kind IN ('order','order_update')"
            )
        }
    finally:
        conn.close()
    venue_ids = {o.client_id for o in venue.call(lambda: replica.orders(SYMBOL, open_only=False))}
    assert venue_ids <= known

    # PnL after recovery equals the PnL of an uninterrupted run with the same fills: the
    # venue's own trade list, booked once, gives the same position, fees and PnL.
    market = venue.call(lambda: replica.markets[SYMBOL])
    inst = Instrument("binance", SYMBOL, market.base, market.quote, market.tick, market.lot)
    reference = Portfolio([inst])
    for t in ours:
        reference.apply_fill(
            Fill(
                "binance",
                SYMBOL,
                f"{SYMBOL}:{t.trade_id}",
                t.order.client_id,
                Side.BUY if t.order.side == "buy" else Side.SELL,
                inst.price_to_ticks(t.price),
                inst.qty_to_lots(t.qty),
                t.fee,
                t.fee_asset,
                Liquidity.MAKER if t.maker else Liquidity.TAKER,
                t.ts_ms * 1_000_000,
            )
        )
    with (run_dir / "summary.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert int(row["fill_count"]) == len(ours)
    assert Decimal(row["inventory"]) == reference.position(inst.key)
    mid = Decimal(row["mid"])
    assert float(row["pnl"]) == pytest.approx(float(reference.pnl(inst.key, mid)), abs=1e-6)


def journal_rows(run_dir: Path, kinds: tuple[str, ...]) -> list[tuple[str, str, dict[str, Any]]]:
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        marks = ",".join("?" * len(kinds))
        rows = conn.execute(
            f"SELECT event_id, kind, payload FROM journal WHERE kind IN ({marks}) ORDER BY seq",
            kinds,
        ).fetchall()
    finally:
        conn.close()
    return [(e, k, json.loads(p)) for e, k, p in rows]


def test_a_resumed_run_books_its_own_fills_only_and_keeps_one_set_of_quotes(
    venue: VenueThread, tmp_path: Path
) -> None:
    """An earlier run of the same bot traded on the account and stopped; a new run starts,
    quotes, is killed; while it is down the venue fills one of its orders whole and one in
    part; it is resumed. The new run books exactly its own trades (the fills made while it
    was down on their orders, none of the earlier run's), and after the resume the venue
    holds one set of its quotes, not the first life's beside the second's."""
    replica = venue.replica
    env = dict(os.environ, BINANCE_API_KEY=replica.api_key, BINANCE_API_SECRET=replica.api_secret)
    params = {**FAST_PARAMS, "rest_url": replica.url, "ws_url": replica.ws_url, "testnet": False}
    flags = [f"--set=exchanges.binance.params.{k}={v}" for k, v in params.items()]
    flags += ["--set=report.html=false", "--set=report.png=false", "--set=run.duration=60s"]
    manifest = str(EXAMPLES / "binance_testnet.yaml")

    earlier, run_dir = tmp_path / "earlier", tmp_path / "run"
    first = bot(["run", manifest, "--out", str(earlier), *flags], env)
    wait_for(earlier / "trace.jsonl", 30)
    venue.takers_on.set()
    deadline = time.time() + 20
    while len(venue.call(lambda: replica.markets[SYMBOL].trades)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    venue.takers_on.clear()
    time.sleep(0.3)
    first.send_signal(signal.SIGINT)
    assert first.wait(60) == 0
    earlier_trades = {t.trade_id for t in venue.call(lambda: replica.markets[SYMBOL].trades)}
    assert earlier_trades, "the earlier run traded"

    life = bot(["run", manifest, "--out", str(run_dir), *flags], env)
    wait_for(run_dir / "trace.jsonl", 30)
    deadline = time.time() + 20
    while len(venue.call(lambda: replica.orders(SYMBOL))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # its journal holds the orders
    life.send_signal(signal.SIGKILL)
    life.communicate(timeout=10)
    resting = venue.call(lambda: replica.orders(SYMBOL))
    assert len(resting) >= 2, "the killed life left its quotes resting"
    whole, part = resting[0], resting[1]
    half = (part.remaining / 2).quantize(Decimal("0.00001"))
    for order, qty in ((whole, None), (part, half)):
        asyncio.run_coroutine_threadsafe(
            replica.fill_order(order.client_id, qty), venue.loop
        ).result(5)

    resumed = bot(["run", "--resume", str(run_dir)], env)
    wait_until_resumed(run_dir, resumed.pid, lives=1, seconds=60)
    time.sleep(2.0)  # it reconciled and quotes again
    still_open = venue.call(lambda: replica.orders(SYMBOL))
    resumed.send_signal(signal.SIGINT)
    _, stderr = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, stderr

    # One set of quotes: as many as the first life had out, not twice as many.
    assert len(still_open) <= len(resting), [o.client_id for o in still_open]
    # Its own trades, each once, on their orders; none of the earlier run's.
    trades = venue.call(lambda: list(replica.markets[SYMBOL].trades))
    own = [t for t in trades if t.trade_id not in earlier_trades]
    assert {t.order.client_id for t in own} == {whole.client_id, part.client_id}
    fills = journal_fills(run_dir)
    assert sorted(f["fill_id"] for f in fills) == sorted(f"{SYMBOL}:{t.trade_id}" for t in own)
    assert {f["client_id"] for f in fills} == {whole.client_id, part.client_id}
    states: dict[str, str] = {}
    for _, _, payload in journal_rows(run_dir, ("order", "order_update", "fill")):
        if payload.get("order"):  # a fill record carries its order's change too
            states[payload["order"]["client_id"]] = payload["order"]["status"]
    assert states[whole.client_id] == "filled"
    with (run_dir / "summary.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert int(row["fill_count"]) == len(own)
    # Each life's start and stop are journaled.
    lives = [p["event"] for _, _, p in journal_rows(run_dir, ("run",))]
    assert lives == ["start", "start", "stop"], lives
