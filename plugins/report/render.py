"""Run reports: read a run folder (summary.csv, trace.jsonl), compute market-making analytics,
and write a self-contained HTML report with one PNG chart per market.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import html
import itertools
import json
import math
import os
import re
import sys
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from quoteforge.model import Side

__all__ = [
    "DEFAULT_HORIZONS_S",
    "MANIFEST_FILE",
    "SUMMARY_COLUMNS",
    "SUMMARY_FILE",
    "TRACE_FILE",
    "MarketAnalytics",
    "Markout",
    "NotARunFolderError",
    "ReportError",
    "RunData",
    "RunFormatError",
    "SummaryRow",
    "TickSeries",
    "TraceEvent",
    "TraceFill",
    "analytics",
    "load_run",
    "market_slug",
    "report_main",
    "write_report",
]

MANIFEST_FILE = "manifest.yaml"
SUMMARY_FILE = "summary.csv"
TRACE_FILE = "trace.jsonl"
REPORT_FILE = "report.html"
CHARTS_DIR = "charts"

SUMMARY_COLUMNS = (
    "market",
    "mid",
    "spread",
    "inventory",
    "pnl",
    "fill_count",
    "notional",
    "max_drawdown",
)
DEFAULT_HORIZONS_S: tuple[float, ...] = (1.0, 5.0, 60.0)
ADVERSE_HORIZON_S = 5.0
LIVE = "LIVE"
EVENT_KINDS = ("book_state", "breaker", "reconnect", "risk_refusal", "kill")

_NS = 1_000_000_000
# Plotly serialises every point; past a few thousand per series the HTML gets heavy and
# slow to open, while a min/max envelope keeps what the eye needs (extremes and gaps).
_MAX_PLOT_POINTS = 4000
_MAX_SHADED_SPANS = 200
_MAX_EVENT_ROWS = 200

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


class ReportError(Exception):
    """Base class for errors raised while reading a run folder or writing its report."""


class NotARunFolderError(ReportError):
    """The path given is not a run folder (or is missing the file the report needs)."""


class RunFormatError(ReportError, ValueError):
    """A record in a run file is malformed; ``path`` and ``line`` say where."""

    def __init__(self, path: Path, line: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        super().__init__(f"{path}, line {line}: {problem}")


# ---------------------------------------------------------------------------------------
# Run data
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryRow:
    """One row of ``summary.csv``: the engine's end-of-run figures for one market."""

    market: str
    mid: float
    spread: float
    inventory: float
    pnl: float
    fill_count: int
    notional: float
    max_drawdown: float


@dataclass(frozen=True)
class TraceFill:
    """One of our fills as recorded in ``trace.jsonl``."""

    t: int
    market: str
    side: Side
    price: float
    qty: float
    fee: float
    liquidity: str | None = None
    client_id: str = ""
    strategy: str = ""


@dataclass(frozen=True)
class TraceEvent:
    """A run event (book state change, breaker, reconnect, risk refusal, kill)."""

    t: int
    market: str | None
    event: str
    detail: str = ""


@dataclass(frozen=True, eq=False)
class TickSeries:
    """The sampled tick records of one market as column arrays, sorted by time.

    Missing prices (``null`` in the trace) are NaN; ``t`` is in nanoseconds.
    """

    market: str
    t: IntArray
    mid: FloatArray
    bid: FloatArray
    ask: FloatArray
    our_bid: FloatArray
    our_ask: FloatArray
    inventory: FloatArray
    pnl: FloatArray
    realized: FloatArray
    unrealized: FloatArray
    fees: FloatArray
    spread: FloatArray
    state: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.t)

    @property
    def live(self) -> npt.NDArray[np.bool_]:
        return np.fromiter((s == LIVE for s in self.state), dtype=bool, count=len(self.state))

    @property
    def drawdown(self) -> FloatArray:
        """Distance below the best PnL so far, measured from the run's starting PnL of 0."""
        if not len(self.pnl):
            return np.zeros(0)
        pnl = np.where(np.isnan(self.pnl), -np.inf, self.pnl)
        peak = np.maximum.accumulate(np.maximum(pnl, 0.0))
        return np.where(np.isnan(self.pnl), np.nan, peak - self.pnl)


@dataclass
class RunData:
    """Everything the report reads from one run folder."""

    run_dir: Path
    summary: dict[str, SummaryRow]
    ticks: dict[str, TickSeries]
    fills: dict[str, list[TraceFill]]
    events: list[TraceEvent]
    has_summary: bool = True
    partial_last_line: bool = False
    unknown_records: dict[str, int] = field(default_factory=dict)

    @property
    def markets(self) -> list[str]:
        """Markets in summary order, then in order of first appearance in the trace."""
        seen: dict[str, None] = dict.fromkeys(self.summary)
        for name in (*self.ticks, *self.fills):
            seen.setdefault(name, None)
        for event in self.events:
            if event.market is not None:
                seen.setdefault(event.market, None)
        return list(seen)

    @property
    def t0(self) -> int | None:
        """Earliest time in the trace (ns), the origin of every chart's time axis."""
        starts = [int(s.t[0]) for s in self.ticks.values() if len(s)]
        starts += [fills[0].t for fills in self.fills.values() if fills]
        starts += [e.t for e in self.events[:1]]
        return min(starts) if starts else None


def load_run(run_dir: str | os.PathLike[str]) -> RunData:
    """Read ``summary.csv`` and ``trace.jsonl`` from a run folder.

    A run that is still being written is fine: a last trace line without its newline that
    does not parse is ignored, and a missing ``summary.csv`` gives an empty summary.
    Raises :class:`NotARunFolderError` if the folder holds no run, and
    :class:`RunFormatError` (file and line) for a malformed record.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise NotARunFolderError(
            f"{root} is not a directory; pass the run folder the engine wrote "
            f"(it holds {MANIFEST_FILE}, {SUMMARY_FILE} and {TRACE_FILE})"
        )
    trace_path = root / TRACE_FILE
    summary_path = root / SUMMARY_FILE
    if not trace_path.is_file():
        present = [n for n in (MANIFEST_FILE, SUMMARY_FILE) if (root / n).is_file()]
        if present:
            raise NotARunFolderError(
                f"{root} has {' and '.join(present)} but no {TRACE_FILE}; the run has not "
                "written its trace yet, or the file was removed"
            )
        raise NotARunFolderError(
            f"{root} is not a run folder: it has none of {MANIFEST_FILE}, {SUMMARY_FILE}, "
            f"{TRACE_FILE}; pass the folder a run wrote (for example runs/<run-id>)"
        )
    has_summary = summary_path.is_file()
    summary = _read_summary(summary_path) if has_summary else {}
    ticks, fills, events, partial, unknown = _read_trace(trace_path)
    return RunData(
        run_dir=root,
        summary=summary,
        ticks=ticks,
        fills=fills,
        events=events,
        has_summary=has_summary,
        partial_last_line=partial,
        unknown_records=unknown,
    )


def _read_summary(path: Path) -> dict[str, SummaryRow]:
    rows: dict[str, SummaryRow] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return rows
        header = [h.strip() for h in header]
        missing = [c for c in SUMMARY_COLUMNS if c not in header]
        if missing:
            raise RunFormatError(
                path,
                1,
                f"header lacks column(s) {', '.join(missing)}; expected "
                f"{','.join(SUMMARY_COLUMNS)}",
            )
        index = {name: header.index(name) for name in SUMMARY_COLUMNS}
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise RunFormatError(path, line, f"{len(row)} fields, the header has {len(header)}")
            cells = {name: row[i].strip() for name, i in index.items()}
            market = cells["market"]
            if not market:
                raise RunFormatError(path, line, "empty 'market'; expected venue:symbol")
            if market in rows:
                raise RunFormatError(path, line, f"market {market!r} appears twice")
            values = {
                name: _csv_float(path, line, name, cells[name])
                for name in SUMMARY_COLUMNS
                if name not in ("market", "fill_count")
            }
            fill_count = _csv_float(path, line, "fill_count", cells["fill_count"])
            if not fill_count.is_integer() or fill_count < 0:
                raise RunFormatError(
                    path, line, f"'fill_count' must be a whole number >= 0, got {fill_count!r}"
                )
            rows[market] = SummaryRow(market=market, fill_count=int(fill_count), **values)
    return rows


def _csv_float(path: Path, line: int, column: str, text: str) -> float:
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise RunFormatError(
            path, line, f"column {column!r} must be a number, got {text!r}"
        ) from None


_TICK_PRICE_FIELDS = ("mid", "bid", "ask", "our_bid", "our_ask", "spread")
_TICK_VALUE_FIELDS = ("inventory", "pnl", "realized", "unrealized", "fees")


class _TickColumns:
    __slots__ = ("columns", "state", "t")

    def __init__(self) -> None:
        self.t: list[int] = []
        self.columns: dict[str, list[float]] = {
            name: [] for name in (*_TICK_PRICE_FIELDS, *_TICK_VALUE_FIELDS)
        }
        self.state: list[str] = []

    def to_series(self, market: str) -> TickSeries:
        t = np.asarray(self.t, dtype=np.int64)
        # A stable sort keeps the written order for equal timestamps.
        order = np.argsort(t, kind="stable")
        cols = {name: np.asarray(v, dtype=np.float64)[order] for name, v in self.columns.items()}
        return TickSeries(
            market=market, t=t[order], state=tuple(self.state[i] for i in order), **cols
        )


def _iter_lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """Yield (line number, text, whether the line lacks its newline) without loading it all."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            complete = raw.endswith(b"\n")
            yield number, raw.decode("utf-8", errors="replace"), not complete


def _read_trace(
    path: Path,
) -> tuple[
    dict[str, TickSeries], dict[str, list[TraceFill]], list[TraceEvent], bool, dict[str, int]
]:
    ticks: dict[str, _TickColumns] = {}
    fills: dict[str, list[TraceFill]] = {}
    events: list[TraceEvent] = []
    unknown: Counter[str] = Counter()
    partial = False
    for number, raw, is_tail in _iter_lines(path):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            if is_tail:
                # The engine may be mid-write; the rest of this line has not arrived yet.
                partial = True
                continue
            raise RunFormatError(path, number, f"not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise RunFormatError(
                path, number, f"expected a JSON object, got {type(record).__name__}"
            )
        kind = record.get("type")
        if kind == "tick":
            _add_tick(ticks, record, path, number)
        elif kind == "fill":
            fill = _parse_fill(record, path, number)
            fills.setdefault(fill.market, []).append(fill)
        elif kind == "event":
            events.append(_parse_event(record, path, number))
        elif isinstance(kind, str):
            # Newer engines may add record types; an older report must still open the run.
            unknown[kind] += 1
        else:
            raise RunFormatError(
                path, number, "missing or non-text 'type'; expected 'tick', 'fill' or 'event'"
            )
    for market_fills in fills.values():
        market_fills.sort(key=lambda f: f.t)
    events.sort(key=lambda e: e.t)
    series = {market: cols.to_series(market) for market, cols in ticks.items()}
    return series, fills, events, partial, dict(unknown)


def _field(record: dict[str, Any], name: str, path: Path, line: int) -> Any:
    if name not in record:
        kind = record.get("type")
        raise RunFormatError(path, line, f"{kind} record lacks field {name!r}")
    return record[name]


def _time(record: dict[str, Any], path: Path, line: int) -> int:
    value = _field(record, "t", path, line)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RunFormatError(path, line, f"'t' must be integer nanoseconds, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise RunFormatError(path, line, f"'t' must be integer nanoseconds, got {value!r}")
        value = int(value)
    return value


def _market(record: dict[str, Any], path: Path, line: int, *, nullable: bool = False) -> Any:
    value = record.get("market") if nullable else _field(record, "market", path, line)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value:
        raise RunFormatError(
            path, line, f"'market' must be text like 'sim:BTC/USDT', got {value!r}"
        )
    return value


def _number(
    record: dict[str, Any], name: str, path: Path, line: int, *, nullable: bool = False
) -> float:
    value = _field(record, name, path, line)
    if value is None and nullable:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        expected = "a number or null" if nullable else "a number"
        raise RunFormatError(path, line, f"{name!r} must be {expected}, got {value!r}")
    return float(value)


def _add_tick(
    ticks: dict[str, _TickColumns], record: dict[str, Any], path: Path, line: int
) -> None:
    t = _time(record, path, line)
    market = _market(record, path, line)
    prices = [_number(record, n, path, line, nullable=True) for n in _TICK_PRICE_FIELDS]
    values = [_number(record, n, path, line) for n in _TICK_VALUE_FIELDS]
    state = _field(record, "state", path, line)
    if not isinstance(state, str):
        raise RunFormatError(path, line, f"'state' must be text such as 'LIVE', got {state!r}")
    cols = ticks.get(market)
    if cols is None:
        cols = ticks[market] = _TickColumns()
    cols.t.append(t)
    for name, value in zip(
        (*_TICK_PRICE_FIELDS, *_TICK_VALUE_FIELDS), (*prices, *values), strict=True
    ):
        cols.columns[name].append(value)
    cols.state.append(state)


def _parse_fill(record: dict[str, Any], path: Path, line: int) -> TraceFill:
    t = _time(record, path, line)
    market = _market(record, path, line)
    side_text = _field(record, "side", path, line)
    if side_text not in ("buy", "sell"):
        raise RunFormatError(path, line, f"'side' must be 'buy' or 'sell', got {side_text!r}")
    price = _number(record, "price", path, line)
    qty = _number(record, "qty", path, line)
    if not price > 0 or not qty > 0:
        raise RunFormatError(
            path, line, f"fill 'price' and 'qty' must be > 0, got price={price} qty={qty}"
        )
    fee = _number(record, "fee", path, line)
    liquidity = record.get("liquidity")
    if liquidity not in (None, "maker", "taker"):
        raise RunFormatError(
            path, line, f"'liquidity' must be 'maker', 'taker' or null, got {liquidity!r}"
        )
    client_id = record.get("client_id") or ""
    strategy = record.get("strategy") or ""
    return TraceFill(
        t=t,
        market=market,
        side=Side.parse(side_text),
        price=price,
        qty=qty,
        fee=fee,
        liquidity=liquidity,
        client_id=str(client_id),
        strategy=str(strategy),
    )


def _parse_event(record: dict[str, Any], path: Path, line: int) -> TraceEvent:
    t = _time(record, path, line)
    market = _market(record, path, line, nullable=True)
    event = _field(record, "event", path, line)
    if not isinstance(event, str) or not event:
        raise RunFormatError(
            path, line, f"'event' must be text such as {', '.join(EVENT_KINDS)}; got {event!r}"
        )
    detail = record.get("detail")
    return TraceEvent(t=t, market=market, event=event, detail="" if detail is None else str(detail))


# ---------------------------------------------------------------------------------------
# Analytics
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Markout:
    """Average markout of fills at one horizon.

    Per fill: ``side * (mid(t + h) - price)``, with ``mid(t + h)`` the first tick sample at
    or after ``t + h``; positive means the market moved our way. ``count`` fills had a
    sample that late (fills closer than ``h`` to the end are left out).
    """

    horizon_s: float
    count: int
    mean: float | None
    mean_bps: float | None


@dataclass(frozen=True)
class MarketAnalytics:
    """Market-making figures for one market, computed from the trace.

    - ``spread_capture``: mean of ``side * (mid_at_fill - price)`` where ``mid_at_fill`` is
      the last tick sample at or before the fill; ``spread_capture_bps`` relative to that
      mid; ``spread_capture_total`` the quantity-weighted sum in quote currency.
    - ``fills_per_quoted_minute``: fill ratio = fills / minutes with at least one of our
      quotes out, where a sampling interval counts as quoted if its opening tick shows a
      quote of ours.
    - ``quote_uptime``: share of ticks with both our bid and ask out among ticks whose
      book state was LIVE (``None`` if the book was never LIVE).
    - ``adverse_selection_share``: share of fills with a negative 5 s markout among fills
      that have one.
    - ``fees_paid`` sums positive fees, ``rebates_earned`` the negated negative ones.
    - ``max_drawdown`` and ``final_pnl`` come from the sampled PnL series (the summary holds
      the engine's exact end-of-run values).
    """

    market: str
    fill_count: int
    buy_count: int
    sell_count: int
    maker_count: int
    volume: float
    notional: float
    markouts: tuple[Markout, ...]
    spread_capture: float | None
    spread_capture_bps: float | None
    spread_capture_total: float
    quoted_seconds: float
    fills_per_quoted_minute: float | None
    tick_count: int
    live_ticks: int
    quote_uptime: float | None
    adverse_selection_share: float | None
    fees_paid: float
    rebates_earned: float
    max_drawdown: float | None
    final_pnl: float | None
    final_inventory: float | None
    event_counts: dict[str, int]

    @property
    def net_fees(self) -> float:
        return self.fees_paid - self.rebates_earned

    def markout(self, horizon_s: float) -> Markout:
        for m in self.markouts:
            if m.horizon_s == horizon_s:
                return m
        have = ", ".join(f"{m.horizon_s:g}" for m in self.markouts)
        raise KeyError(f"no markout at {horizon_s:g} s; computed horizons: {have}")


_EMPTY_F = np.zeros(0, dtype=np.float64)
_EMPTY_I = np.zeros(0, dtype=np.int64)


def analytics(
    run: RunData,
    *,
    horizons_s: Sequence[float] = DEFAULT_HORIZONS_S,
    adverse_horizon_s: float = ADVERSE_HORIZON_S,
) -> dict[str, MarketAnalytics]:
    """Compute :class:`MarketAnalytics` for every market of the run."""
    for h in (*horizons_s, adverse_horizon_s):
        if not h > 0:
            raise ValueError(f"markout horizons must be > 0 seconds, got {h!r}")
    events = Counter((e.market, e.event) for e in run.events)
    result: dict[str, MarketAnalytics] = {}
    for market in run.markets:
        counts = dict(sorted((kind, n) for (m, kind), n in events.items() if m == market))
        result[market] = _market_analytics(
            market,
            run.ticks.get(market),
            run.fills.get(market, []),
            horizons_s,
            adverse_horizon_s,
            counts,
        )
    return result


def _market_analytics(
    market: str,
    ticks: TickSeries | None,
    fills: list[TraceFill],
    horizons_s: Sequence[float],
    adverse_horizon_s: float,
    event_counts: dict[str, int],
) -> MarketAnalytics:
    if ticks is not None and len(ticks):
        valid = ~np.isnan(ticks.mid)
        mid_t, mid_v = ticks.t[valid], ticks.mid[valid]
    else:
        mid_t, mid_v = _EMPTY_I, _EMPTY_F

    f_t = np.fromiter((f.t for f in fills), dtype=np.int64, count=len(fills))
    f_side = np.fromiter((int(f.side) for f in fills), dtype=np.float64, count=len(fills))
    f_px = np.fromiter((f.price for f in fills), dtype=np.float64, count=len(fills))
    f_qty = np.fromiter((f.qty for f in fills), dtype=np.float64, count=len(fills))
    f_fee = np.fromiter((f.fee for f in fills), dtype=np.float64, count=len(fills))

    markouts = tuple(_markout(h, f_t, f_side, f_px, mid_t, mid_v) for h in horizons_s)
    adverse_values, _ = _markout_values(adverse_horizon_s, f_t, f_side, f_px, mid_t, mid_v)
    adverse = float(np.mean(adverse_values < 0.0)) if len(adverse_values) else None

    # Mid at the fill: the latest sample at or before it (what the quoter could see).
    at = np.searchsorted(mid_t, f_t, side="right") - 1
    has_mid = at >= 0
    if has_mid.any():
        mid_at_fill = mid_v[at[has_mid]]
        capture = f_side[has_mid] * (mid_at_fill - f_px[has_mid])
        spread_capture: float | None = float(capture.mean())
        spread_capture_bps: float | None = float((capture / mid_at_fill).mean() * 1e4)
        capture_total = float((capture * f_qty[has_mid]).sum())
    else:
        spread_capture = spread_capture_bps = None
        capture_total = 0.0

    quoted_s = 0.0
    tick_count = live_count = 0
    uptime: float | None = None
    max_dd: float | None = None
    final_pnl: float | None = None
    final_inv: float | None = None
    if ticks is not None and len(ticks):
        tick_count = len(ticks)
        any_quote = ~np.isnan(ticks.our_bid) | ~np.isnan(ticks.our_ask)
        both_quotes = ~np.isnan(ticks.our_bid) & ~np.isnan(ticks.our_ask)
        quoted_s = float(np.diff(ticks.t)[any_quote[:-1]].sum()) / _NS
        live = ticks.live
        live_count = int(live.sum())
        if live_count:
            uptime = float((live & both_quotes).sum() / live_count)
        drawdown = ticks.drawdown
        if not np.all(np.isnan(drawdown)):
            max_dd = float(np.nanmax(drawdown))
        final_pnl = float(ticks.pnl[-1])
        final_inv = float(ticks.inventory[-1])

    return MarketAnalytics(
        market=market,
        fill_count=len(fills),
        buy_count=int((f_side > 0).sum()),
        sell_count=int((f_side < 0).sum()),
        maker_count=sum(1 for f in fills if f.liquidity == "maker"),
        volume=float(f_qty.sum()),
        notional=float((f_qty * f_px).sum()),
        markouts=markouts,
        spread_capture=spread_capture,
        spread_capture_bps=spread_capture_bps,
        spread_capture_total=capture_total,
        quoted_seconds=quoted_s,
        fills_per_quoted_minute=len(fills) / (quoted_s / 60.0) if quoted_s > 0 else None,
        tick_count=tick_count,
        live_ticks=live_count,
        quote_uptime=uptime,
        adverse_selection_share=adverse,
        fees_paid=float(f_fee[f_fee > 0].sum()),
        rebates_earned=float(-f_fee[f_fee < 0].sum()),
        max_drawdown=max_dd,
        final_pnl=final_pnl,
        final_inventory=final_inv,
        event_counts=event_counts,
    )


def _markout_values(
    horizon_s: float,
    f_t: IntArray,
    f_side: FloatArray,
    f_px: FloatArray,
    mid_t: IntArray,
    mid_v: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Per-fill markouts at one horizon and the prices of the fills that have one."""
    target = f_t + round(horizon_s * _NS)
    at = np.searchsorted(mid_t, target, side="left")
    ok = at < len(mid_t)
    return f_side[ok] * (mid_v[at[ok]] - f_px[ok]), f_px[ok]


def _markout(
    horizon_s: float,
    f_t: IntArray,
    f_side: FloatArray,
    f_px: FloatArray,
    mid_t: IntArray,
    mid_v: FloatArray,
) -> Markout:
    values, prices = _markout_values(horizon_s, f_t, f_side, f_px, mid_t, mid_v)
    if not len(values):
        return Markout(horizon_s, 0, None, None)
    return Markout(
        horizon_s,
        len(values),
        float(values.mean()),
        float((values / prices).mean() * 1e4),
    )


# ---------------------------------------------------------------------------------------
# Report writing
# ---------------------------------------------------------------------------------------


def market_slug(market: str) -> str:
    """File-name-safe spelling of a market: ``sim:BTC/USDT`` -> ``sim-btc-usdt``."""
    slug = re.sub(r"[^a-z0-9._]+", "-", market.lower()).strip("-.")
    return slug or "market"


def _slugs(markets: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    used: set[str] = set()
    for market in markets:
        base = market_slug(market)
        slug, n = base, 2
        while slug in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug)
        out[market] = slug
    return out


def write_report(
    run_dir: str | os.PathLike[str], *, png: bool = True, html: bool = True
) -> list[Path]:
    """Write ``report.html`` and ``charts/<market-slug>.png`` into the run folder.

    Returns the paths written (HTML first). Every file is written to a temporary name and
    renamed into place, so a reader never sees half a report.
    """
    run = load_run(run_dir)
    stats = analytics(run)
    slugs = _slugs(run.markets)
    written: list[Path] = []
    if html:
        target = run.run_dir / REPORT_FILE
        _write_atomic(target, _render_html(run, stats, slugs).encode("utf-8"))
        written.append(target)
    if png:
        charts = run.run_dir / CHARTS_DIR
        charts.mkdir(exist_ok=True)
        for market in run.markets:
            target = charts / f"{slugs[market]}.png"
            _write_atomic(target, _render_png(run, market, stats[market]))
            written.append(target)
    return written


def _write_atomic(target: Path, data: bytes) -> None:
    # Opened by name (not mkstemp) so the file gets the usual umask-based permissions.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("xb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class _Panels:
    """Series for one market's charts, on a common time axis (seconds since run start)."""

    x: FloatArray
    ticks: TickSeries | None
    drawdown: FloatArray
    buys: tuple[FloatArray, FloatArray]
    sells: tuple[FloatArray, FloatArray]
    not_live: list[tuple[float, float]]


def _panels(run: RunData, market: str) -> _Panels:
    t0 = run.t0 or 0
    ticks = run.ticks.get(market)
    if ticks is not None and len(ticks):
        x = (ticks.t - t0) / _NS
        drawdown = ticks.drawdown
        not_live = _spans(x, ~ticks.live)
    else:
        ticks = None
        x, drawdown, not_live = _EMPTY_F, _EMPTY_F, []
    fills = run.fills.get(market, [])

    def pick(side: Side) -> tuple[FloatArray, FloatArray]:
        chosen = [f for f in fills if f.side is side]
        xs = np.array([(f.t - t0) / _NS for f in chosen], dtype=np.float64)
        ys = np.array([f.price for f in chosen], dtype=np.float64)
        return xs, ys

    return _Panels(x, ticks, drawdown, pick(Side.BUY), pick(Side.SELL), not_live)


def _chart_note(p: _Panels) -> str:
    if p.ticks is None:
        return "no tick samples for this market in the trace"
    if not p.ticks.live.any():
        return "book never LIVE: no market data, no quotes"
    return ""


def _spans(x: FloatArray, mask: npt.NDArray[np.bool_]) -> list[tuple[float, float]]:
    """Time intervals where ``mask`` holds; each runs to the next sample (or the end)."""
    if not mask.any():
        return []
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    end = len(x) - 1
    spans = [(float(x[a]), float(x[min(int(b), end)])) for a, b in zip(starts, stops, strict=True)]
    if len(spans) > _MAX_SHADED_SPANS:
        # Many short outages: one covering span per group keeps the chart readable.
        groups = np.array_split(np.arange(len(spans)), _MAX_SHADED_SPANS)
        spans = [(spans[g[0]][0], spans[g[-1]][1]) for g in groups]
    return spans


def _envelope(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """At most about ``_MAX_PLOT_POINTS`` points keeping each bucket's min, max and gaps."""
    n = len(x)
    if n <= _MAX_PLOT_POINTS:
        return x, y
    edges = np.linspace(0, n, _MAX_PLOT_POINTS // 3 + 1).astype(np.int64)
    keep: list[int] = [0, n - 1]
    for a, b in itertools.pairwise(edges):
        chunk = y[a:b]
        nan = np.isnan(chunk)
        if nan.all():
            keep.append(int(a))
            continue
        keep.append(int(a + np.nanargmin(chunk)))
        keep.append(int(a + np.nanargmax(chunk)))
        if nan.any():
            keep.append(int(a + np.argmax(nan)))
    idx = np.unique(np.asarray(keep, dtype=np.int64))
    return x[idx], y[idx]


_PANEL_TITLES = (
    "Mid, market bid/ask, our quotes and fills",
    "Inventory",
    "PnL",
    "Spread",
    "Drawdown",
)
_COLORS = {
    "mid": "#1f4e79",
    "market": "#a0a0a0",
    "our_bid": "#2e8b57",
    "our_ask": "#c0392b",
    "buy": "#1e9e4a",
    "sell": "#d63c2f",
    "inventory": "#6a3d9a",
    "pnl": "#1f4e79",
    "realized": "#2e8b57",
    "unrealized": "#e08e0b",
    "fees": "#c0392b",
    "spread": "#7f7f7f",
    "our_spread": "#1f77b4",
    "drawdown": "#c0392b",
    "not_live": "#f4d03f",
}


def _figure(run: RunData, market: str) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    p = _panels(run, market)
    fig = make_subplots(
        rows=5,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.04,
        subplot_titles=_PANEL_TITLES,
        row_heights=[0.32, 0.17, 0.19, 0.16, 0.16],
    )

    def line(row: int, y: FloatArray, name: str, color: str, **kw: Any) -> None:
        xs, ys = _envelope(p.x, y)
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, name=name, mode="lines", line={"color": color, "width": 1.4}, **kw
            ),
            row=row,
            col=1,
        )

    if p.ticks is not None:
        tk = p.ticks
        line(1, tk.bid, "market bid", _COLORS["market"], opacity=0.6)
        line(1, tk.ask, "market ask", _COLORS["market"], opacity=0.6)
        line(1, tk.mid, "mid", _COLORS["mid"])
        line(1, tk.our_bid, "our bid", _COLORS["our_bid"], line_shape="hv")
        line(1, tk.our_ask, "our ask", _COLORS["our_ask"], line_shape="hv")
        line(2, tk.inventory, "inventory", _COLORS["inventory"], line_shape="hv")
        line(3, tk.pnl, "PnL", _COLORS["pnl"])
        line(3, tk.realized, "realized", _COLORS["realized"])
        line(3, tk.unrealized, "unrealized", _COLORS["unrealized"])
        line(3, tk.fees, "fees", _COLORS["fees"])
        line(4, tk.spread, "market spread", _COLORS["spread"])
        line(4, tk.our_ask - tk.our_bid, "our spread", _COLORS["our_spread"])
        line(5, p.drawdown, "drawdown", _COLORS["drawdown"], fill="tozeroy")
    for (xs, ys), name, symbol, color in (
        (p.buys, "buy fills", "triangle-up", _COLORS["buy"]),
        (p.sells, "sell fills", "triangle-down", _COLORS["sell"]),
    ):
        if len(xs):
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    name=name,
                    mode="markers",
                    marker={"symbol": symbol, "color": color, "size": 8},
                ),
                row=1,
                col=1,
            )
    for x0, x1 in p.not_live:
        fig.add_vrect(
            x0=x0,
            x1=x1,
            fillcolor=_COLORS["not_live"],
            opacity=0.25,
            line_width=0,
            layer="below",
            row="all",
            col=1,
        )
    note = _chart_note(p)
    if note:
        fig.add_annotation(
            text=note, xref="x domain", yref="y domain", x=0.5, y=0.5, showarrow=False
        )
    fig.update_xaxes(title_text="seconds since run start", row=5, col=1)
    fig.update_layout(
        template="plotly_white",
        height=1150,
        margin={"l": 70, "r": 30, "t": 90, "b": 50},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.035, "x": 0},
        hovermode="x unified",
    )
    return fig


def _render_png(run: RunData, market: str, stats: MarketAnalytics) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = _panels(run, market)
    fig = Figure(figsize=(12, 14), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(
        5, 1, sharex=True, gridspec_kw={"height_ratios": [0.32, 0.17, 0.19, 0.16, 0.16]}
    )
    pnl_text = "n/a" if stats.final_pnl is None else _fmt(stats.final_pnl)
    fig.suptitle(f"{market}: {stats.fill_count} fills, final PnL {pnl_text}", fontsize=14)
    for ax, title in zip(axes, _PANEL_TITLES, strict=True):
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(True, alpha=0.3)
        for i, (x0, x1) in enumerate(p.not_live):
            label = "book not LIVE" if i == 0 and ax is axes[0] else None
            ax.axvspan(x0, x1, color=_COLORS["not_live"], alpha=0.25, lw=0, label=label)
    note = _chart_note(p)
    if note:
        axes[0].text(0.5, 0.5, note, ha="center", va="center", transform=axes[0].transAxes)
    if p.ticks is not None:
        tk, x = p.ticks, p.x
        ax = axes[0]
        ax.plot(x, tk.bid, color=_COLORS["market"], lw=0.8, label="market bid/ask")
        ax.plot(x, tk.ask, color=_COLORS["market"], lw=0.8)
        ax.plot(x, tk.mid, color=_COLORS["mid"], lw=1.2, label="mid")
        ax.step(x, tk.our_bid, where="post", color=_COLORS["our_bid"], lw=1, label="our bid")
        ax.step(x, tk.our_ask, where="post", color=_COLORS["our_ask"], lw=1, label="our ask")
        axes[1].step(x, tk.inventory, where="post", color=_COLORS["inventory"], lw=1.2)
        for name in ("pnl", "realized", "unrealized", "fees"):
            label = "PnL" if name == "pnl" else name
            axes[2].plot(x, getattr(tk, name), color=_COLORS[name], lw=1.2, label=label)
        axes[2].legend(loc="upper left", fontsize=8)
        axes[3].plot(x, tk.spread, color=_COLORS["spread"], lw=1, label="market spread")
        axes[3].plot(
            x, tk.our_ask - tk.our_bid, color=_COLORS["our_spread"], lw=1, label="our spread"
        )
        axes[3].legend(loc="upper left", fontsize=8)
        axes[4].fill_between(x, 0, np.nan_to_num(p.drawdown), color=_COLORS["drawdown"], alpha=0.3)
        axes[4].plot(x, p.drawdown, color=_COLORS["drawdown"], lw=1)
    for (xs, ys), label, marker, color in (
        (p.buys, "buy fills", "^", _COLORS["buy"]),
        (p.sells, "sell fills", "v", _COLORS["sell"]),
    ):
        if len(xs):
            axes[0].scatter(xs, ys, marker=marker, color=color, s=28, zorder=3, label=label)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(loc="upper left", fontsize=8, ncol=3)
    axes[4].set_xlabel("seconds since run start")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(value: float | int | None, digits: int = 6) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "n/a"
    text = f"{value:.{digits}g}"
    return "0" if text == "-0" else text


def _with_bps(value: float | None, bps: float | None) -> str:
    return "n/a" if value is None else f"{_fmt(value)} ({_fmt(bps, 4)} bps)"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _analytics_rows(a: MarketAnalytics) -> list[tuple[str, str]]:
    rows = [
        ("Final PnL (sampled)", _fmt(a.final_pnl)),
        ("Max drawdown (sampled)", _fmt(a.max_drawdown)),
        ("Final inventory", _fmt(a.final_inventory)),
        (
            "Fills (buy / sell, maker)",
            f"{a.fill_count} ({a.buy_count} / {a.sell_count}, {a.maker_count} maker)",
        ),
        ("Volume / notional", f"{_fmt(a.volume)} / {_fmt(a.notional)}"),
    ]
    for m in a.markouts:
        rows.append(
            (
                f"Markout {m.horizon_s:g} s (n={m.count})",
                _with_bps(m.mean, m.mean_bps),
            )
        )
    rows += [
        (
            "Spread capture per fill",
            _with_bps(a.spread_capture, a.spread_capture_bps),
        ),
        ("Spread capture total", _fmt(a.spread_capture_total)),
        ("Adverse selection (5 s markout < 0)", _pct(a.adverse_selection_share)),
        ("Fills per quoted minute", _fmt(a.fills_per_quoted_minute, 4)),
        ("Quoted time", f"{a.quoted_seconds:.0f} s"),
        (
            "Quote uptime (both sides, book LIVE)",
            _pct(a.quote_uptime)
            if a.quote_uptime is not None
            else f"n/a (book never LIVE in {a.tick_count} ticks)",
        ),
        ("Fees paid", _fmt(a.fees_paid)),
        ("Rebates earned", _fmt(a.rebates_earned)),
    ]
    if a.event_counts:
        rows.append(("Events", ", ".join(f"{k}: {n}" for k, n in sorted(a.event_counts.items()))))
    return rows


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px;
       color: #222; max-width: 1400px; }
h1 { margin-bottom: 4px; } .meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f5f8; }
section.market { border-top: 2px solid #1f4e79; margin-top: 32px; padding-top: 8px; }
.note { color: #8a6d00; } .chart { width: 100%; }
nav a { margin-right: 12px; }
"""


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _time_label(run: RunData, t: int) -> str:
    t0 = run.t0 or 0
    return f"{(t - t0) / _NS:.3f}"


def _events_table(run: RunData, events: list[TraceEvent]) -> str:
    if not events:
        return ""
    shown = events[:_MAX_EVENT_ROWS]
    rows = [(_time_label(run, e.t), e.event, e.detail) for e in shown]
    more = (
        f'<p class="note">{len(events) - len(shown)} more events are in {TRACE_FILE}.</p>'
        if len(events) > len(shown)
        else ""
    )
    return "<h3>Events</h3>" + _table(("t (s)", "event", "detail"), rows, "events") + more


def _render_html(run: RunData, stats: dict[str, MarketAnalytics], slugs: dict[str, str]) -> str:
    import plotly.offline

    markets = run.markets
    title = f"quoteforge run report: {run.run_dir.resolve().name}"
    meta = [f"{len(markets)} market(s)"]
    t0 = run.t0
    # Engine clocks are epoch-based in paper/live runs; small values are simulated time.
    if t0 is not None and t0 >= 946_684_800 * _NS:
        start = dt.datetime.fromtimestamp(t0 / _NS, tz=dt.UTC)
        meta.append(f"start {start.isoformat(timespec='seconds')}")
    notes: list[str] = []
    if not run.has_summary:
        notes.append(f"{SUMMARY_FILE} has not been written yet (run in progress?).")
    if run.partial_last_line:
        notes.append(f"The last line of {TRACE_FILE} was incomplete and was left out.")
    if run.unknown_records:
        kinds = ", ".join(f"{k} ({n})" for k, n in sorted(run.unknown_records.items()))
        notes.append(f"Record types this report does not read: {kinds}.")

    summary_rows = [
        (
            r.market,
            _fmt(r.mid, 10),
            _fmt(r.spread, 10),
            _fmt(r.inventory, 10),
            _fmt(r.pnl, 10),
            str(r.fill_count),
            _fmt(r.notional, 10),
            _fmt(r.max_drawdown, 10),
        )
        for r in run.summary.values()
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        # Inline plotly.js so the report opens offline and can be mailed as one file.
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(" · ".join(meta))}</p>',
        "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes),
        "<nav>"
        + "".join(f'<a href="#market-{slugs[m]}">{html.escape(m)}</a>' for m in markets)
        + "</nav>",
        '<section id="summary"><h2>Summary</h2>',
        _table(SUMMARY_COLUMNS, summary_rows, "summary")
        if summary_rows
        else f'<p class="note">No {SUMMARY_FILE} rows.</p>',
        _events_table(run, [e for e in run.events if e.market is None]),
        "</section>",
    ]
    for market in markets:
        slug = slugs[market]
        a = stats[market]
        fig = _figure(run, market)
        chart = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"chart-{slug}",
            config={"displaylogo": False, "responsive": True},
        )
        parts += [
            f'<section class="market" id="market-{slug}" data-market="{html.escape(market)}">',
            f"<h2>{html.escape(market)}</h2>",
            _table(("metric", "value"), _analytics_rows(a), "analytics"),
            '<p class="meta">Time in seconds since run start; shaded spans: book not LIVE.</p>',
            f'<div class="chart">{chart}</div>',
            _events_table(run, [e for e in run.events if e.market == market]),
            "</section>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def report_main(argv: list[str]) -> int:
    """``quoteforge report RUN_DIR``: write the run's report and print where it went."""
    parser = argparse.ArgumentParser(
        prog="quoteforge report",
        description="Write report.html and charts/<market>.png into a run folder.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by a run")
    parser.add_argument("--no-html", action="store_true", help="skip report.html")
    parser.add_argument("--no-png", action="store_true", help="skip the PNG charts")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else 2
    try:
        paths = write_report(args.run_dir, png=not args.no_png, html=not args.no_html)
    except NotARunFolderError as exc:
        print(f"quoteforge report: error: {exc}", file=sys.stderr)
        return 2
    except ReportError as exc:
        print(f"quoteforge report: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        # plotly and matplotlib come with the report extra, not with the core.
        print(
            f"quoteforge report: error: {exc.name or exc} is not installed; "
            'install it with: pip install "quoteforge[report]"',
            file=sys.stderr,
        )
        return 1
    if not paths:
        print("quoteforge report: nothing to write (both --no-html and --no-png given)")
    for path in paths:
        print(path)
    return 0
