"""A run folder as the report reads it: ``summary.csv`` and ``trace.jsonl`` parsed into
column arrays and records, with errors that name the file and line of a bad record.

This is the report's only reader of the run's files; the analytics, the charts and the
HTML page all start from the :class:`RunData` it returns.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from quoteforge.clock import NS
from quoteforge.model import Side
from quoteforge.runfiles import SUMMARY_COLUMNS

__all__ = [
    "EMPTY_F",
    "EMPTY_I",
    "EVENT_KINDS",
    "LIVE",
    "MANIFEST_FILE",
    "NS",
    "OPTIONAL_SUMMARY_COLUMNS",
    "SUMMARY_COLUMNS",
    "SUMMARY_FILE",
    "TRACE_FILE",
    "FloatArray",
    "IntArray",
    "NotARunFolderError",
    "ReportError",
    "RunData",
    "RunFormatError",
    "SummaryRow",
    "TickSeries",
    "TraceEvent",
    "TraceFill",
    "load_run",
]

MANIFEST_FILE = "manifest.yaml"
SUMMARY_FILE = "summary.csv"
TRACE_FILE = "trace.jsonl"

# Columns a summary.csv written before they existed lacks: read as missing (NaN).
OPTIONAL_SUMMARY_COLUMNS = ("quoted_spread", "fees")
LIVE = "LIVE"
EVENT_KINDS = ("book_state", "breaker", "reconnect", "risk_refusal", "kill")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
# The series of a market with no samples (or no fills): one shared empty array each.
EMPTY_F: FloatArray = np.zeros(0, dtype=np.float64)
EMPTY_I: IntArray = np.zeros(0, dtype=np.int64)


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
    """One row of ``summary.csv``: the engine's end-of-run figures for one market
    (README "Run folder" and docs/report.md say what each column means)."""

    market: str
    mid: float
    spread: float
    inventory: float
    pnl: float
    fill_count: int
    notional: float
    max_drawdown: float
    quoted_spread: float = math.nan
    fees: float = math.nan


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
    #: Funding received minus paid (perpetuals); zeros in traces without it.
    funding: FloatArray

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
    try:
        return _parse_summary(path)
    except UnicodeDecodeError:
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise RunFormatError(
                path, line, f"not UTF-8 text ({exc.reason}); the engine writes UTF-8 CSV"
            ) from None
        raise


def _parse_summary(path: Path) -> dict[str, SummaryRow]:
    rows: dict[str, SummaryRow] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return rows
        header = [h.strip() for h in header]
        missing = [
            c for c in SUMMARY_COLUMNS if c not in header and c not in OPTIONAL_SUMMARY_COLUMNS
        ]
        if missing:
            raise RunFormatError(
                path,
                1,
                f"header lacks column(s) {', '.join(missing)}; expected "
                f"{','.join(SUMMARY_COLUMNS)}",
            )
        index = {name: header.index(name) for name in SUMMARY_COLUMNS if name in header}
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
                for name in index
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
    __slots__ = ("columns", "funding", "state", "t")

    def __init__(self) -> None:
        self.t: list[int] = []
        self.columns: dict[str, list[float]] = {
            name: [] for name in (*_TICK_PRICE_FIELDS, *_TICK_VALUE_FIELDS)
        }
        self.state: list[str] = []
        self.funding: list[float] = []

    def to_series(self, market: str) -> TickSeries:
        t = np.asarray(self.t, dtype=np.int64)
        # A stable sort keeps the written order for equal timestamps.
        order = np.argsort(t, kind="stable")
        cols = {name: np.asarray(v, dtype=np.float64)[order] for name, v in self.columns.items()}
        return TickSeries(
            market=market,
            t=t[order],
            state=tuple(self.state[i] for i in order),
            funding=np.asarray(self.funding, dtype=np.float64)[order],
            **cols,
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
    # Perpetuals' funding; traces of spot runs (and older ones) have none.
    cols.funding.append(_number(record, "funding", path, line) if "funding" in record else 0.0)


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
