"""What the dashboard knows about a run: a reader that tails a run folder's trace.jsonl
and journal as they grow, and the JSON snapshot the page polls."""

from __future__ import annotations

import json
import math
import sqlite3
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from quoteforge.journal import JournalRecord, OrderStates
from quoteforge.plugins.report.dashboard_control import CONTROL_FILE

__all__ = ["JOURNAL_FILE", "TRACE_FILE", "DashboardError", "MarketView", "RunFolderTail", "display"]

TRACE_FILE = "trace.jsonl"
JOURNAL_FILE = "journal.sqlite"
_TERMINAL = {"filled", "cancelled", "rejected", "expired"}
_ORDER_KINDS = ("order", "order_update", "fill")
RECENT_FILLS = 50
_TICK_FIELDS = ("mid", "bid", "ask", "our_bid", "our_ask", "inventory", "pnl")


class DashboardError(Exception):
    """The dashboard cannot show this path; the message says what it expects."""


def display(kind: str, value: float | int | None) -> str:
    """How the page shows a number (the same text the JSON API sends)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if kind == "money":
        return f"{value:,.2f}"
    if kind == "count":
        return f"{int(value):,}"
    return f"{value:,.6g}"


@dataclass
class MarketView:
    """Everything the dashboard knows about one market so far."""

    key: str
    ticks: dict[str, list[Any]] = field(
        default_factory=lambda: {name: [] for name in ("t", "state", *_TICK_FIELDS)}
    )
    last: dict[str, Any] = field(default_factory=dict)
    fills: list[tuple[int, str, float, float]] = field(default_factory=list)  # all, like ticks
    fill_count: int = 0
    volume: float = 0.0
    notional: float = 0.0
    inventory_lots: int = 0
    resyncs: int = 0
    book_state: str = "-"
    breaker: str = "ok"
    halted: bool = False
    orders_placed: int = 0
    #: Working orders by client id, each the order's whole state (OrderStates) when last seen.
    open_orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Price of one tick and size of one lot, learned from the first fill seen both in the
    #: trace (prices) and the journal (ticks, lots); None until then.
    tick: Decimal | None = None
    lot: Decimal | None = None

    @property
    def venue(self) -> str:
        return self.key.split(":", 1)[0]

    @property
    def quote(self) -> str:
        symbol = self.key.split(":", 1)[-1]
        return symbol.split("/", 1)[1].split(":", 1)[0] if "/" in symbol else "quote currency"


class RunFolderTail:
    """Reads a run folder incrementally: each ``poll()`` consumes only what was appended
    since the last one (a half-written last line waits for the next poll)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.exists():
            raise DashboardError(
                f"{path}: no such file or folder; pass a run folder or its {JOURNAL_FILE}"
            )
        if path.is_dir():
            run_dir = path
            journal = path / JOURNAL_FILE
        elif path.suffix in (".sqlite", ".db", ".sqlite3"):
            run_dir = path.parent
            journal = path
        elif path.name == TRACE_FILE:
            run_dir = path.parent
            journal = path.parent / JOURNAL_FILE
        else:
            raise DashboardError(
                f"{path}: expected a run folder (holding {TRACE_FILE}) or a journal file "
                f"({JOURNAL_FILE})"
            )
        self.run_dir = run_dir
        self.trace_path = run_dir / TRACE_FILE
        self.journal_path = journal
        started = any(
            (run_dir / name).exists() for name in (TRACE_FILE, "run.json", "manifest.yaml")
        )
        # A run that is just starting has no trace yet; anything else is a wrong folder.
        if path.is_dir() and not started and not journal.exists():
            raise DashboardError(
                f"{path}: not a run folder (no {TRACE_FILE}, {JOURNAL_FILE} or run.json); "
                "pass the folder a run writes, e.g. runs/quickstart-20260101-000000-abc123"
            )
        self.markets: dict[str, MarketView] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=500)
        self.event_count = 0
        self.alert_count = 0
        self.info: dict[str, Any] = {}
        self.latest_t = 0
        self.first_t: int | None = None
        self.bad_lines = 0
        self._offset = 0
        self._journal_seq = 0
        self._order_states = OrderStates()
        self._grid_known = False
        self._trace_fills: dict[str, tuple[float, float]] = {}  # fill id -> trace price, qty
        self.recent_fills: deque[dict[str, Any]] = deque(maxlen=RECENT_FILLS)

    # -- reading ---------------------------------------------------------------------------
    def poll(self) -> bool:
        """Read what was appended since the last poll; True when anything was new."""
        fresh = self._read_run_info()
        fresh = self._read_trace() or fresh
        return self._read_journal() or fresh

    @property
    def has_trace(self) -> bool:
        return self.trace_path.exists()

    def _read_grid(self) -> None:
        """Each market's tick and lot from the control API's control.json (written while
        a run serves it), so journaled ticks and lots show as prices and sizes."""
        try:
            info = json.loads((self.run_dir / CONTROL_FILE).read_text(encoding="utf-8"))
            grids = dict(info.get("markets") or {})
        except (OSError, ValueError, TypeError, AttributeError):
            return
        for key, grid in grids.items():
            view = self._market(str(key))
            try:
                view.tick = Decimal(str(grid["tick_size"]))
                view.lot = Decimal(str(grid["lot_size"]))
            except (InvalidOperation, KeyError, TypeError):
                continue
            self._grid_known = True

    def _read_run_info(self) -> bool:
        if not self._grid_known:
            self._read_grid()
        path = self.run_dir / "run.json"
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False  # absent, or being rewritten right now: next poll
        changed = info != self.info
        self.info = info
        return changed

    def _read_trace(self) -> bool:
        try:
            size = self.trace_path.stat().st_size
        except OSError:
            return False
        if size < self._offset:
            # The file was replaced (a new run in the same folder): start over.
            self._reset()
        if size == self._offset:
            return False
        with self.trace_path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(size - self._offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return False
        self._offset += end + 1
        for line in chunk[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(record, dict):
                self._apply(record)
        return True

    def _reset(self) -> None:
        self.markets.clear()
        self.events.clear()
        self.event_count = self.alert_count = 0
        self.latest_t = 0
        self.first_t = None
        self._offset = 0
        self.recent_fills.clear()
        self._trace_fills.clear()

    def _market(self, key: str) -> MarketView:
        view = self.markets.get(key)
        if view is None:
            view = self.markets[key] = MarketView(key)
        return view

    def _apply(self, record: dict[str, Any]) -> None:
        kind = record.get("type")
        t = record.get("t")
        if not isinstance(t, int):
            self.bad_lines += 1
            return
        self.latest_t = max(self.latest_t, t)
        if self.first_t is None or t < self.first_t:
            self.first_t = t
        market = record.get("market")
        if kind == "tick" and isinstance(market, str):
            view = self._market(market)
            view.ticks["t"].append(t)
            view.ticks["state"].append(record.get("state"))
            for name in _TICK_FIELDS:
                view.ticks[name].append(record.get(name))
            view.last = record
            view.book_state = str(record.get("state") or "-")
        elif kind == "fill" and isinstance(market, str):
            view = self._market(market)
            price, qty = float(record.get("price") or 0), float(record.get("qty") or 0)
            side = str(record.get("side"))
            view.fills.append((t, side, price, qty))
            view.fill_count += 1
            view.volume += qty
            view.notional += price * qty
            if view.tick is None:
                self._trace_fills[f"{market}|{record.get('fill_id')}"] = (price, qty)
            self.recent_fills.append(
                {
                    "t": t,
                    "market": market,
                    "side": side,
                    "price": display("number", price),
                    "qty": display("number", qty),
                    "fee": display("money", record.get("fee")),
                    "liquidity": record.get("liquidity"),
                    "client_id": record.get("client_id"),
                    "strategy": record.get("strategy"),
                }
            )
        elif kind == "event":
            self._apply_event(t, market, str(record.get("event")), str(record.get("detail", "")))

    def _apply_event(self, t: int, market: Any, event: str, detail: str) -> None:
        self.event_count += 1
        self.events.append({"t": t, "market": market, "event": event, "detail": detail})
        views = [self._market(market)] if isinstance(market, str) else []
        if event == "book_state" and views:
            transition = detail.split(":", 1)[0]
            new = transition.split("->")[-1].strip()
            views[0].book_state = new or views[0].book_state
            if new == "RESYNCING":
                views[0].resyncs += 1
        elif event == "reconnect" and views:
            views[0].resyncs += 1
        elif event == "alert":
            self.alert_count += 1
            kind = detail.split(":", 1)[0]
            if kind in ("breaker", "kill"):
                # A run-wide trip (no market) stops every market.
                for view in views or self.markets.values():
                    view.breaker = f"TRIPPED ({kind})"
        elif event == "breaker_reset":
            for view in views or self.markets.values():
                view.breaker = "ok"
        elif event == "strategy_halted" and views:
            views[0].halted = True

    def _read_journal(self) -> bool:
        if not self.journal_path.exists():
            return False
        try:
            conn = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True, timeout=1)
        except sqlite3.Error:
            return False
        fresh = False
        try:
            while True:
                rows = conn.execute(
                    "SELECT seq, event_id, kind, ts_ns, market, payload FROM journal "
                    "WHERE seq > ? "
                    "ORDER BY seq LIMIT 20000",
                    (self._journal_seq,),
                ).fetchall()
                if not rows:
                    break
                fresh = True
                for seq, event_id, kind, ts_ns, market, payload in rows:
                    self._journal_seq = seq
                    try:
                        data = json.loads(payload)
                    except ValueError:
                        self.bad_lines += 1
                        continue
                    if kind in _ORDER_KINDS:
                        self._apply_order(JournalRecord(event_id, kind, int(ts_ns), market, data))
                    self._apply_journal(kind, int(ts_ns), market, data)
        except sqlite3.Error:
            pass  # no table yet, or the writer holds a lock: the next poll goes on
        finally:
            conn.close()
        return fresh

    def _apply_order(self, record: JournalRecord) -> None:
        """Follow each order's whole state through the journal's order records (the
        kernel's materializer: later records hold only what changed)."""
        try:
            state = self._order_states.apply(record)
        except (ValueError, KeyError, TypeError):
            self.bad_lines += 1
            return
        if state is None or not record.market:
            return
        view = self._market(record.market)
        cid = str(state["client_id"])
        if record.kind == "order":
            view.orders_placed += 1
        if str(state.get("status")) in _TERMINAL:
            view.open_orders.pop(cid, None)
        else:
            view.open_orders[cid] = dict(state)
        fill = record.payload.get("fill")
        if view.tick is None and isinstance(fill, dict):
            seen = self._trace_fills.pop(f"{record.market}|{fill.get('fill_id')}", None)
            if seen is not None:
                view.tick, view.lot = (
                    _unit(seen[0], fill.get("price_ticks")),
                    _unit(seen[1], fill.get("qty_lots")),
                )

    def _apply_journal(self, kind: str, ts_ns: int, market: str, data: dict[str, Any]) -> None:
        fill = data.get("fill")
        if kind == "fill" and isinstance(fill, dict) and market and not self.has_trace:
            # Journal only (no trace): prices in ticks and sizes in lots, as journaled.
            view = self._market(market)
            lots = int(fill.get("qty_lots", 0))
            side, price = str(fill.get("side")), float(fill.get("price_ticks", 0))
            view.inventory_lots += (1 if side == "buy" else -1) * lots
            view.fill_count += 1
            view.volume += lots
            view.fills.append((ts_ns, side, price, lots))
            self.recent_fills.append(
                {
                    "t": ts_ns,
                    "market": market,
                    "side": side,
                    "price": f"{int(price):,} ticks",
                    "qty": f"{lots:,} lots",
                    "fee": str(fill.get("fee", "-")),
                    "liquidity": fill.get("liquidity"),
                    "client_id": fill.get("client_id"),
                    "strategy": fill.get("strategy"),
                }
            )
            view.ticks["t"].append(ts_ns)
            view.ticks["inventory"].append(view.inventory_lots)
            self.latest_t = max(self.latest_t, ts_ns)
            if self.first_t is None:
                self.first_t = ts_ns

    # -- output ----------------------------------------------------------------------------
    def snapshot(self, max_points: int = 1500) -> dict[str, Any]:
        """The JSON the page polls: series thinned to ``max_points`` per market."""
        if max_points < 2:
            raise ValueError(f"max_points must be at least 2, got {max_points}")
        markets = []
        for key in sorted(self.markets):
            view = self.markets[key]
            last = view.last
            values = {
                "pnl": last.get("pnl"),
                "realized": last.get("realized"),
                "fees": last.get("fees"),
                "inventory": last.get("inventory") if self.has_trace else view.inventory_lots,
                "mid": last.get("mid"),
                "fills": view.fill_count,
                "volume": view.volume,
                "notional": view.notional if self.has_trace else None,
                "open_orders": len(view.open_orders),
                "orders": view.orders_placed,
                "resyncs": view.resyncs,
            }
            kinds = {"pnl": "money", "realized": "money", "fees": "money", "notional": "money"}
            kinds |= dict.fromkeys(("fills", "open_orders", "orders", "resyncs"), "count")
            shown = {name: display(kinds.get(name, "number"), v) for name, v in values.items()}
            picks = _thin({"t": list(range(len(view.fills)))}, max_points)["t"]  # whole run
            markets.append(
                {
                    "market": key,
                    "slug": _slug(key),
                    "values": values,
                    "display": shown,
                    "book_state": view.book_state,
                    "breaker": view.breaker,
                    "halted": view.halted,
                    "series": _thin(view.ticks, max_points),
                    "fills": [list(view.fills[i]) for i in picks],
                    "stale": _stale_spans(view.ticks["t"], view.ticks["state"]),
                    "orders": [_order_row(view, o) for o in _by_price(view.open_orders)],
                }
            )
        info = self.info
        status = "finished" if info.get("finished_at") else ("running" if info else "unknown")
        return {
            "run_id": info.get("run_id", self.run_dir.name),
            "name": info.get("name"),
            "mode": info.get("mode"),
            "status": status,
            "stop_reason": info.get("stop_reason"),
            "source": "trace" if self.has_trace else "journal",
            "units": "quote asset, base units" if self.has_trace else "ticks and lots",
            "first_t": self.first_t,
            "latest_t": self.latest_t,
            "markets": markets,
            "venues": self._venues(),
            "totals": self._totals(),
            "recent_fills": list(self.recent_fills)[::-1],
            "events": list(self.events)[-200:][::-1],
            "event_count": self.event_count,
            "alert_count": self.alert_count,
            "bad_lines": self.bad_lines,
        }

    def _venues(self) -> list[dict[str, Any]]:
        """Per venue: its books' states (the connection as the run sees it: a venue whose
        books are all LIVE is connected and in sync), resyncs and working orders."""
        venues: dict[str, dict[str, Any]] = {}
        for key in sorted(self.markets):
            view = self.markets[key]
            v = venues.setdefault(
                view.venue,
                {"venue": view.venue, "books": {}, "resyncs": 0, "open_orders": 0},
            )
            v["books"][key.split(":", 1)[-1]] = view.book_state
            v["resyncs"] += view.resyncs
            v["open_orders"] += len(view.open_orders)
        for v in venues.values():
            states = set(v["books"].values())
            v["state"] = (
                "live"
                if states == {"LIVE"}
                else "unknown"
                if states <= {"-"}
                else "degraded: "
                + ", ".join(f"{s} {st}" for s, st in v["books"].items() if st != "LIVE")
            )
        return list(venues.values())

    def _totals(self) -> list[dict[str, Any]]:
        """PnL, fees, fills, notional and working orders added up per quote currency (the
        only figures that add up across markets)."""
        groups: dict[str, list[MarketView]] = {}
        for view in self.markets.values():
            groups.setdefault(view.quote if self.has_trace else "ticks and lots", []).append(view)
        rows = []
        for quote, views in sorted(groups.items()):
            values = {
                "pnl": _sum(v.last.get("pnl") for v in views),
                "fees": _sum(v.last.get("fees") for v in views),
                "fills": sum(v.fill_count for v in views),
                "notional": _sum(v.notional for v in views) if self.has_trace else None,
                "open_orders": sum(len(v.open_orders) for v in views),
            }
            kinds = {"fills": "count", "open_orders": "count"}
            rows.append(
                {
                    "quote": quote,
                    "markets": len(views),
                    "values": values,
                    "display": {k: display(kinds.get(k, "money"), x) for k, x in values.items()},
                }
            )
        return rows


def _sum(values: Iterable[Any]) -> float | None:
    present = [float(v) for v in values if isinstance(v, int | float)]
    return math.fsum(present) if present else None


def _unit(value: float, units: Any) -> Decimal | None:
    """One tick (lot) from a trace value and the same value in ticks (lots)."""
    try:
        n = int(units)
        return (Decimal(repr(value)) / n).normalize() if n else None
    except (InvalidOperation, TypeError, ValueError):
        return None


def _by_price(orders: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Asks from the highest down, then bids from the highest down (a book's layout)."""
    return sorted(
        orders.values(),
        key=lambda o: (o.get("side") != "sell", -(o.get("price_ticks") or 0), o["client_id"]),
    )


def _order_row(view: MarketView, order: dict[str, Any]) -> dict[str, Any]:
    ticks, lots = order.get("price_ticks"), order.get("qty_lots") or 0
    filled = order.get("filled_lots") or 0
    if view.tick is not None and view.lot is not None and ticks is not None:
        price = format(view.tick * ticks, "f")
        qty, done = format(view.lot * lots, "f"), format(view.lot * filled, "f")
    else:  # no fill yet to learn the grid from: as journaled
        price = "-" if ticks is None else f"{ticks:,} ticks"
        qty, done = f"{lots:,} lots", f"{filled:,} lots"
    return {
        "client_id": order["client_id"],
        "market": view.key,
        "strategy": order.get("strategy"),
        "side": order.get("side"),
        "price": price,
        "qty": qty,
        "filled": done,
        "status": order.get("status"),
    }


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in key)


def _thin(series: dict[str, list[Any]], max_points: int) -> dict[str, list[Any]]:
    n = len(series["t"])
    if n <= max_points:
        return {name: list(values) for name, values in series.items() if len(values) == n}
    step = math.ceil(n / max_points)
    picks = list(range(0, n, step))
    if picks[-1] != n - 1:
        picks.append(n - 1)
    return {name: [values[i] for i in picks] for name, values in series.items() if len(values) == n}


def _stale_spans(times: list[int], states: list[Any]) -> list[list[int]]:
    """Intervals during which the book was not LIVE."""
    spans: list[list[int]] = []
    start: int | None = None
    for t, state in zip(times, states, strict=False):
        if state not in (None, "LIVE"):
            if start is None:
                start = t
        elif start is not None:
            spans.append([start, t])
            start = None
    if start is not None and times:
        spans.append([start, times[-1]])
    return spans
