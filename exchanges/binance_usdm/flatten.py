"""``quoteforge flatten RUN_DIR``: close a finished (or killed) run's positions on its
derivatives venues with reduce-only orders, through the same order gate as every order.

The kill switch only cancels; closing positions is this explicit operator command. It
refuses a run that is still going (two order managers on one account would fight: kill
or stop it first). After a kill it is allowed: the kill stopped the run's own trading,
and a flatten can only shrink positions (reduce-only, checked by the gate and by the
venue). Every flatten is journaled in the run's journal (kind ``flatten``, with
``after_kill``), and its orders are journaled like the run's own.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from quoteforge.assembly import (
    build_journal,
    build_order_manager,
    build_risk,
    build_venue,
    symbols_by_venue,
    venue_context,
)
from quoteforge.book import BookState
from quoteforge.clock import LiveClock
from quoteforge.exchange import ExchangeAdapter, PlaceOrder
from quoteforge.exchanges.binance_usdm.venue import UsdmAccountVenue
from quoteforge.gate import OrderGate
from quoteforge.journal import JournalRecord
from quoteforge.manifest import LoadedManifest, ManifestError, load_manifest
from quoteforge.model import Fill, InstrumentKind, OrderUpdate, Side, VenuePosition
from quoteforge.orders import OrderManager
from quoteforge.registry import PluginRegistry, load_registry
from quoteforge.risk import RiskRefusal, RiskView
from quoteforge.strategy import Market

__all__ = ["FlattenError", "FlattenResult", "flatten", "flatten_main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class FlattenError(RuntimeError):
    """The flatten cannot go ahead (the message says why and what to do)."""


@dataclass
class FlattenResult:
    """What a flatten did per market: position before and after, orders sent."""

    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    orders: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    #: Hedge mode: LONG and SHORT left open that net to zero (no reduce-only order on the
    #: net closes them), one line per market.
    hedged: list[str] = field(default_factory=list)

    @property
    def flat(self) -> bool:
        return not any(self.after.values()) and not self.hedged


class _FlattenSink:
    """Order reports and fills to the order manager; the venue's positions kept."""

    def __init__(self, orders: OrderManager) -> None:
        self.orders = orders
        self.positions: dict[str, VenuePosition] = {}
        self.filled: dict[str, int] = {}

    def on_book(self, book: Any) -> None:
        return None

    def on_book_state(self, book: Any, old: str, new: str, reason: str) -> None:
        return None

    def on_trade(self, *args: Any) -> None:
        return None

    def on_offer(self, offer: Any) -> None:
        return None

    def on_order_update(self, update: OrderUpdate) -> None:
        self.orders.apply_update(update)

    def on_fill(self, fill: Fill) -> None:
        if self.orders.apply_fill(fill) is not None:
            self.filled[fill.market] = self.filled.get(fill.market, 0) + int(fill.side) * (
                fill.qty_lots
            )

    def on_funding(self, funding: Any) -> None:
        return None

    def on_position(self, position: VenuePosition) -> None:
        self.positions[position.market] = position


def _run_state(run_dir: Path) -> dict[str, Any]:
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise FlattenError(f"{run_dir} is not a run folder (no run.json)")
    info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
    pid = info.get("pid")
    if not info.get("finished_at") and isinstance(pid, int) and pid != os.getpid():
        try:
            os.kill(pid, 0)  # PermissionError: it runs, as another user (a service account)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise FlattenError(
                f"run {info.get('run_id')} is still going (pid {pid}, another user's): stop "
                f"it first (quoteforge kill {run_dir}), then flatten"
            ) from None
        else:
            raise FlattenError(
                f"run {info.get('run_id')} is still going (pid {pid}): stop it first "
                f"(quoteforge kill {run_dir}), then flatten"
            )
    return info


async def flatten(
    run_dir: Path,
    loaded: LoadedManifest,
    registry: PluginRegistry,
    *,
    slippage_bps: float = 50.0,
    rounds: int = 3,
    timeout_s: float = 30.0,
    reason: str = "operator",
) -> FlattenResult:
    """Close every position of ``loaded``'s derivatives venues with reduce-only IOC
    orders priced ``slippage_bps`` through the best opposite price, in up to ``rounds``
    rounds, each order through the gate (risk included); journaled in the run's
    journal. Raises ``FlattenError`` when the run cannot be flattened."""
    info = _run_state(run_dir)
    mode = loaded.manifest.run.mode
    if mode != "live":
        raise FlattenError(f"a {mode} run holds no venue positions: nothing to flatten")
    after_kill = "kill" in str(info.get("stop_reason", "")).lower() or (run_dir / "KILL").exists()
    clock = LiveClock()
    journal = build_journal(loaded, registry, run_dir)
    await journal.open()
    orders = build_order_manager(loaded, journal, clock, session=f"fl{int(time.time()) % 10**9}")
    sink = _FlattenSink(orders)
    venues: dict[str, ExchangeAdapter] = {}
    result = FlattenResult()
    symbols = symbols_by_venue(loaded.manifest)
    try:
        for name in loaded.manifest.exchanges:
            ctx = venue_context(loaded, name, clock=clock, run_dir=run_dir, symbols=symbols[name])
            venue = build_venue(loaded, registry, name, ctx)
            await venue.connect(sink)
            if any(i.kind is InstrumentKind.PERPETUAL for i in venue.instruments.values()):
                venues[name] = venue
            else:
                await venue.close()
        journal.append(
            JournalRecord(
                f"flatten:{clock.now_ns()}",
                "flatten",
                clock.now_ns(),
                "",
                {
                    "reason": reason,
                    "after_kill": after_kill,
                    "positions": {k: p.qty_lots for k, p in sink.positions.items()},
                },
            )
        )
        refusals: list[RiskRefusal] = []
        risk = build_risk(loaded, registry, refusals.append)
        start = {k: p.qty_lots for k, p in sink.positions.items()}

        def position(key: str) -> int:
            return start.get(key, 0) + sink.filled.get(key, 0)

        markets = {
            inst.key: Market(inst, venue.books[symbol], functools.partial(position, inst.key))
            for venue in venues.values()
            for symbol, inst in venue.instruments.items()
        }
        view = RiskView(
            position,
            lambda k, s: orders.open_lots(k, Side(s)),
            orders.open_count,
            now_ns=clock.now_ns,
            markets=markets,
            venue_position=lambda k: sink.positions.get(k),
        )
        gate = OrderGate(
            risk=risk,
            risk_view=view,
            breakers=None,
            orders=orders,
            policy=None,
            position_lots=position,
            now_ns=clock.now_ns,
        )
        result.before = {k: position(k) for k in markets}
        for _ in range(rounds):
            sent = []
            for key, market in markets.items():
                held = position(key)
                if not held:
                    continue
                order = await _close_one(gate, market, held, slippage_bps, timeout_s)
                if order is None:
                    result.refused.append(f"{key}: {gate.last_refusal}")
                    continue
                venues[market.venue].submit([PlaceOrder(order)])
                sent.append(order)
                result.orders.append(order.client_id)
            if not sent:
                break
            deadline = time.monotonic() + timeout_s
            while any(not o.status.is_terminal for o in sent) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        result.after = {k: position(k) for k in markets}
        for name, venue in venues.items():
            if isinstance(venue, UsdmAccountVenue) and venue.params.position_mode == "hedge":
                await venue.refresh_positions()
                for symbol, sides in venue.sides.items():
                    held_long, held_short = sides.get("LONG", (0,))[0], sides.get("SHORT", (0,))[0]
                    if held_long and held_short:
                        result.hedged.append(
                            f"{name}:{symbol}: LONG {held_long} and SHORT {-held_short} remain "
                            "open (hedge mode): the run's position is their net, which no "
                            "reduce-only order closes further; close them on the venue"
                        )
        journal.append(
            JournalRecord(
                f"flatten-done:{clock.now_ns()}",
                "flatten",
                clock.now_ns(),
                "",
                {
                    "reason": reason,
                    "after_kill": after_kill,
                    "before": result.before,
                    "after": result.after,
                    "orders": result.orders,
                    "refused": result.refused,
                    "hedged": result.hedged,
                },
            )
        )
        return result
    finally:
        for venue in venues.values():
            await venue.close()
        await journal.close()


async def _close_one(
    gate: OrderGate, market: Market, held: int, slippage_bps: float, timeout_s: float
) -> Any:
    book = market.book
    deadline = time.monotonic() + timeout_s
    while book.state is not BookState.LIVE and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    side = Side.SELL if held > 0 else Side.BUY
    best = book.best_bid_ticks() if side is Side.SELL else book.best_ask_ticks()
    if best is None:
        gate.last_refusal = f"{market.key}: no {'bid' if held > 0 else 'ask'} to close against"
        return None
    through = math.ceil(best * slippage_bps / 10_000)
    price = best - through if side is Side.SELL else best + through
    return gate.take(market, "flatten", side, max(price, 1), abs(held), reduce_only=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quoteforge flatten",
        description="Close a run's positions on its derivatives venues with reduce-only "
        "orders through the order gate (risk included); journaled in the run's journal.",
    )
    parser.add_argument("run", type=Path, help="the run folder (runs/<name>-...)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a manifest value, as for run",
    )
    parser.add_argument(
        "--slippage-bps",
        type=float,
        default=50.0,
        help="how far through the best price the IOC orders may trade",
    )
    parser.add_argument("--rounds", type=int, default=3, help="attempts per position")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per round")
    parser.add_argument("--reason", default="operator", help="recorded in the journal")
    return parser


def flatten_main(argv: list[str] | None = None) -> int:
    """``quoteforge flatten RUN_DIR [--set K=V ...] [--slippage-bps 50]``."""
    args = _parser().parse_args(argv)
    if not 0 < args.slippage_bps < 10_000 or args.rounds < 1 or args.timeout <= 0:
        print("--slippage-bps must be in (0, 10000), --rounds >= 1, --timeout > 0", file=sys.stderr)
        return EXIT_USAGE
    registry = load_registry()
    try:
        loaded = load_manifest(args.run / "manifest.yaml", registry, overrides=args.overrides)
        result = asyncio.run(
            flatten(
                args.run,
                loaded,
                registry,
                slippage_bps=args.slippage_bps,
                rounds=args.rounds,
                timeout_s=args.timeout,
                reason=args.reason,
            )
        )
    except (FlattenError, ManifestError, ValueError) as exc:
        print(f"quoteforge flatten: {exc}", file=sys.stderr)
        return EXIT_ERROR
    for key, before in result.before.items():
        print(f"{key}: {before} -> {result.after.get(key, 0)} lots")
    for why in result.refused:
        logger.warning("refused: {}", why)
        print(f"refused: {why}", file=sys.stderr)
    for left in result.hedged:
        logger.warning("not flat: {}", left)
        print(f"not flat: {left}", file=sys.stderr)
    return EXIT_OK if result.flat else EXIT_ERROR
