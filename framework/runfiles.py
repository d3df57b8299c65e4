"""A run's folder and process: run.json, manifest.yaml, trace.jsonl, summary.csv, the
KILL and RESET_BREAKERS control files, stop signals.

Written by the engine (``quoteforge.engine.Run``); the control files and signals are
shared with the nodes of a split run, so every process of a run obeys them alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from quoteforge.assembly import MarketRuntime
from quoteforge.model import Side
from quoteforge.orders import OrderManager
from quoteforge.portfolio import Portfolio

KILL_FILE = "KILL"
RESET_FILE = "RESET_BREAKERS"

SUMMARY_COLUMNS = (
    "market",
    "mid",
    "spread",
    "quoted_spread",
    "inventory",
    "pnl",
    "fees",
    "fill_count",
    "notional",
    "max_drawdown",
)


def new_run_dir(base: Path, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return base / f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"


def write_run_info(
    run_dir: Path,
    fields: dict[str, Any],
    *,
    resume: bool,
    manifest_text: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Start run.json: ``fields`` plus the start time and pid, and a copy of the manifest.
    A resumed run keeps its file and notes when it was resumed. ``extra`` fields (a
    node's role...) are added either way."""
    path = run_dir / "run.json"
    if resume and path.exists():
        info = json.loads(path.read_text(encoding="utf-8"))
        info.setdefault("resumed", []).append(datetime.now(UTC).isoformat())
        info["pid"] = os.getpid()
        info["overrides"] = fields.get("overrides", info.get("overrides"))  # merged
        info.pop("finished_at", None)
    else:
        (run_dir / "manifest.yaml").write_text(manifest_text, encoding="utf-8")
        info = {**fields, "started_at": datetime.now(UTC).isoformat(), "pid": os.getpid()}
    info.update(extra or {})
    path.write_text(json.dumps(info, indent=2), encoding="utf-8")


def finish_run_info(run_dir: Path, **fields: Any) -> None:
    """End run.json: the finish time and ``fields`` (stop reason, counts)."""
    path = run_dir / "run.json"
    info = json.loads(path.read_text(encoding="utf-8"))
    info["finished_at"] = datetime.now(UTC).isoformat()
    info.update(fields)
    path.write_text(json.dumps(info, indent=2), encoding="utf-8")


class TraceWriter:
    """trace.jsonl: one JSON object per line (ticks, fills, events), buffered."""

    def __init__(self, path: Path, *, append: bool) -> None:
        self.path = path
        self._fh = path.open("a" if append else "w", encoding="utf-8", buffering=1 << 16)

    def write(self, record: dict[str, Any]) -> None:
        try:
            line = orjson.dumps(record).decode()
        except TypeError:  # an int beyond 64 bits, a key that is not text: the slow way
            line = json.dumps(record, separators=(",", ":"))
        self._fh.write(line + "\n")

    def close(self) -> None:
        self._fh.close()


@functools.cache
def _decimals(step: Decimal) -> int:
    """Digits after the point of a grid step: 0.01 -> 2, 0.5 -> 1, 10 -> 0."""
    exponent = step.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def on_grid(units: int, step: Decimal) -> float:
    """``units`` steps of a price or quantity grid as the float nearest that exact
    decimal (``2000.1``, never ``2000.1000000000001``), for trace.jsonl."""
    return round(units * float(step), _decimals(step))


def _mark(mr: MarketRuntime) -> Decimal | None:
    mid = mr.book.mid_ticks()
    if mid is None:
        return None
    return mr.instrument.tick_size * Decimal(str(mid))


def sample_markets(
    markets: dict[str, MarketRuntime],
    portfolio: Portfolio,
    orders: OrderManager,
    now: int,
    trace: TraceWriter,
) -> dict[str, Decimal]:
    """Write one tick record per market (book, our quotes, inventory, PnL) and track
    each market's drawdown; returns the exact PnL of each market."""
    pnl_by_market: dict[str, Decimal] = {}
    pf = portfolio
    for key, mr in markets.items():
        inst = mr.instrument
        book = mr.book
        mark = _mark(mr)
        realized = pf.realized(key)
        fees = pf.fees(key)
        unrealized = pf.unrealized(key, mark) if mark is not None else Decimal(0)
        funding = pf.funding(key)  # perpetuals: received minus paid
        exact_pnl = realized + unrealized - fees + funding
        pnl_by_market[key] = exact_pnl
        pnl = float(exact_pnl)
        mr.peak_pnl = max(mr.peak_pnl, pnl)
        mr.max_drawdown = max(mr.max_drawdown, mr.peak_pnl - pnl)
        bid, ask = book.best_bid_ticks(), book.best_ask_ticks()
        our_bid = our_ask = None
        for order in orders.working(inst.venue, inst.symbol):
            if order.price_ticks is None:
                continue
            if order.side is Side.BUY and (our_bid is None or order.price_ticks > our_bid):
                our_bid = order.price_ticks
            elif order.side is Side.SELL and (our_ask is None or order.price_ticks < our_ask):
                our_ask = order.price_ticks
        spread = book.spread_ticks()
        tick = inst.tick_size
        if spread is not None:
            mr.spread_sum += spread * inst.ticks_to_float(1)
            mr.spread_samples += 1
        if our_bid is not None and our_ask is not None:
            mr.quoted_spread_sum += (our_ask - our_bid) * inst.ticks_to_float(1)
            mr.quoted_spread_samples += 1
        trace.write(
            {
                "type": "tick",
                "t": now,
                "market": key,
                "mid": float(mark) if mark is not None else None,
                "bid": on_grid(bid, tick) if bid is not None else None,
                "ask": on_grid(ask, tick) if ask is not None else None,
                "our_bid": on_grid(our_bid, tick) if our_bid is not None else None,
                "our_ask": on_grid(our_ask, tick) if our_ask is not None else None,
                "inventory": float(pf.position(key)),
                "pnl": pnl,
                "realized": float(realized),
                "unrealized": float(unrealized),
                "fees": float(fees),
                "funding": float(funding),
                "spread": on_grid(spread, tick) if spread is not None else None,
                "state": book.state.value,
            }
        )
    return pnl_by_market


def _mean(total: float, count: int, step: Decimal) -> float | None:
    # One digit finer than the grid: a mean falls between ticks.
    return round(total / count, _decimals(step) + 1) if count else None


def summary_rows(markets: dict[str, MarketRuntime], portfolio: Portfolio) -> list[dict[str, Any]]:
    """One summary row per market (the columns of ``SUMMARY_COLUMNS``). ``spread`` and
    ``quoted_spread`` are means over the tick samples (taken every sample interval, so
    time-weighted): the market's best ask minus best bid whenever both sides had orders,
    ours whenever both our bid and our ask were out; ``fees`` is their effect on PnL
    (negative paid, positive rebates earned)."""
    rows = []
    pf = portfolio
    for key, mr in markets.items():
        mark = _mark(mr)
        pnl = (
            pf.pnl(key, mark)
            if mark is not None
            else pf.realized(key) - pf.fees(key) + pf.funding(key)
        )
        tick = mr.instrument.tick_size
        rows.append(
            {
                "market": key,
                "mid": float(mark) if mark is not None else None,
                "spread": _mean(mr.spread_sum, mr.spread_samples, tick),
                "quoted_spread": _mean(mr.quoted_spread_sum, mr.quoted_spread_samples, tick),
                "inventory": float(pf.position(key)),
                "pnl": float(pnl),
                "fees": float(-pf.fees(key)) + 0.0,
                "fill_count": pf.fill_count(key),
                "notional": float(pf.notional(key)),
                "max_drawdown": max(mr.max_drawdown, mr.peak_pnl - float(pnl)),
            }
        )
    return rows


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.10g}"
    return "" if value is None else value


def write_summary(run_dir: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """summary.csv; returns the report files written (summary and trace)."""
    path = run_dir / "summary.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row[k]) for k in SUMMARY_COLUMNS})
    return [path, run_dir / "trace.jsonl"]


async def watch_run_files(
    run_dir: Path,
    kill: Callable[[str], None],
    *,
    reset: Callable[[str], None] | None = None,
    manifest_path: Path | None = None,
    reload: Callable[[], object] | None = None,
) -> None:
    """Poll the run folder's KILL file (``kill``), RESET_BREAKERS file (``reset``, with
    its text, ``all`` when empty) and, when given, the manifest file (``reload`` when it
    changes); returns once killed."""
    last = None
    if manifest_path is not None:
        with contextlib.suppress(OSError):
            last = manifest_path.stat().st_mtime_ns
    kill_file = run_dir / KILL_FILE
    reset_file = run_dir / RESET_FILE
    while True:
        await asyncio.sleep(0.25)
        if kill_file.exists():
            reason = kill_file.read_text(encoding="utf-8").strip() or "kill file"
            kill(f"file: {reason}")
            return
        if reset is not None and reset_file.exists():
            who = reset_file.read_text(encoding="utf-8").strip() or "all"
            reset_file.unlink()
            reset(who)
        if manifest_path is None or reload is None:
            continue
        try:
            mtime = manifest_path.stat().st_mtime_ns
        except OSError:
            continue
        if mtime != last:
            last = mtime
            reload()


@contextlib.contextmanager
def stop_signals(
    request_stop: Callable[[str], None], kill: Callable[[str], None], *, enabled: bool = True
) -> Iterator[None]:
    """SIGINT and SIGTERM stop cleanly, SIGUSR1 is the kill switch, while the block runs."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    handlers = (
        (signal.SIGINT, request_stop),
        (signal.SIGTERM, request_stop),
        (signal.SIGUSR1, kill),
    )
    if enabled:
        for sig, handler in handlers:
            try:
                loop.add_signal_handler(sig, handler, f"signal {sig.name}")
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass  # not the main thread, or a platform without signals
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
