"""The HTML report page: the run's summary, then per market its analytics table, an
interactive plotly figure and its events, in one file that opens offline.

The figure draws the panels described in :mod:`quoteforge.plugins.report.charts` (the
same as the PNG); long series are thinned to a min/max envelope, since plotly writes
every point into the page.
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from quoteforge.plugins.report.charts import (
    COLORS,
    PANEL_HEIGHTS,
    PANEL_TITLES,
    X_TITLE,
    Formats,
    axis_titles,
    chart_note,
    fill_marks,
    fmt,
    fmt_fixed,
    fmt_money,
    formats,
    lines,
    panels,
)
from quoteforge.plugins.report.metrics import MarketAnalytics
from quoteforge.plugins.report.rundata import (
    NS,
    SUMMARY_COLUMNS,
    SUMMARY_FILE,
    TRACE_FILE,
    FloatArray,
    RunData,
    SummaryRow,
    TraceEvent,
)

__all__ = ["render_html"]

# Plotly serialises every point; past a few thousand per series the HTML gets heavy and
# slow to open, while a min/max envelope keeps what the eye needs (extremes and gaps).
_MAX_PLOT_POINTS = 4000
_MAX_EVENT_ROWS = 200


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


def _figure(run: RunData, market: str) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    p = panels(run, market)
    f = formats(run, market)
    # Hover values at the instrument's grid (prices, quantities) or to the cent.
    hover = (f.price_d3, f.qty_d3, ",.2f", f",.{f.price_decimals + 1}f", ",.2f")
    fig = make_subplots(
        rows=5,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.04,
        subplot_titles=PANEL_TITLES,
        row_heights=list(PANEL_HEIGHTS),
    )
    for line in lines(p):
        xs, ys = _envelope(p.x, line.y)
        style: dict[str, Any] = {}
        if line.faint:
            style["opacity"] = 0.6
        if line.step:
            style["line_shape"] = "hv"
        if line.fill:
            style["fill"] = "tozeroy"
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                name=line.name,
                mode="lines",
                line={"color": line.color, "width": 1.4},
                hovertemplate=f"%{{y:{hover[line.panel]}}}",
                **style,
            ),
            row=line.panel + 1,
            col=1,
        )
    for marks in fill_marks(p):
        fig.add_trace(
            go.Scatter(
                x=marks.x,
                y=marks.y,
                name=marks.name,
                mode="markers",
                marker={
                    "symbol": "triangle-up" if marks.up else "triangle-down",
                    "color": marks.color,
                    "size": 8,
                },
                hovertemplate=f"%{{y:{f.price_d3}}}",
            ),
            row=1,
            col=1,
        )
    for x0, x1 in p.not_live:
        fig.add_vrect(
            x0=x0,
            x1=x1,
            fillcolor=COLORS["not_live"],
            opacity=0.25,
            line_width=0,
            layer="below",
            row="all",
            col=1,
        )
    note = chart_note(p)
    if note:
        fig.add_annotation(
            text=note, xref="x domain", yref="y domain", x=0.5, y=0.5, showarrow=False
        )
    fig.update_xaxes(title_text=X_TITLE, row=5, col=1)
    for row, title in enumerate(axis_titles(f), start=1):
        # Plain numbers with thousands separators (plotly's default writes 1.2M, 30k).
        fig.update_yaxes(title_text=title, tickformat=",~r", row=row, col=1)
    fig.update_layout(
        template="plotly_white",
        height=1200,
        margin={"l": 90, "r": 30, "t": 40, "b": 130},
        # Below the x axis: at the top the legend sat under plotly's toolbar.
        legend={"orientation": "h", "yanchor": "top", "y": -0.06, "x": 0},
        hovermode="x unified",
    )
    return fig


def _with_bps(value: float | None, bps: float | None) -> str:
    return "n/a" if value is None else f"{fmt(value)} ({fmt(bps, 4)} bps)"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _analytics_rows(a: MarketAnalytics, f: Formats) -> list[tuple[str, str]]:
    q, b = f.quote, f.base
    rows = [
        (f"Final PnL (sampled, {q})", fmt_money(a.final_pnl)),
        (f"Max drawdown (sampled, {q})", fmt_money(a.max_drawdown)),
        (f"Final inventory ({b})", f.qty(a.final_inventory)),
        (
            "Fills (buy / sell, maker)",
            f"{a.fill_count:,} ({a.buy_count:,} / {a.sell_count:,}, {a.maker_count:,} maker)",
        ),
        (f"Volume ({b}) / notional ({q})", f"{f.qty(a.volume)} / {fmt_money(a.notional)}"),
    ]
    for m in a.markouts:
        rows.append(
            (
                f"Markout {m.horizon_s:g} s (n={m.count:,}, {q})",
                _with_bps(m.mean, m.mean_bps),
            )
        )
    rows += [
        (
            f"Spread capture per fill ({q})",
            _with_bps(a.spread_capture, a.spread_capture_bps),
        ),
        (f"Spread capture total ({q})", fmt_money(a.spread_capture_total)),
        ("Adverse selection (5 s markout < 0)", _pct(a.adverse_selection_share)),
        ("Fills per quoted minute", fmt(a.fills_per_quoted_minute, 4)),
        ("Quoted time", f"{a.quoted_seconds:.0f} s"),
        (
            "Quote uptime (both sides, book LIVE)",
            _pct(a.quote_uptime)
            if a.quote_uptime is not None
            else f"n/a (book never LIVE in {a.tick_count} ticks)",
        ),
        (f"Fees paid ({q})", fmt_money(a.fees_paid)),
        (f"Rebates earned ({q})", fmt_money(a.rebates_earned)),
        (f"Fees (− paid, + rebate; {q})", fmt_money(a.rebates_earned - a.fees_paid)),
    ]
    if a.funding:  # perpetuals: the inventory above is the signed position
        rows.append((f"Funding (+ received, − paid; {q})", fmt_money(a.funding)))
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


# The summary table's header: summary.csv's columns, money columns with their meaning.
_SUMMARY_HEAD = tuple(
    "fees (− paid, + rebate)" if c == "fees" else c.replace("_", " ") for c in SUMMARY_COLUMNS
)


def _summary_rows(run: RunData) -> list[tuple[str, ...]]:
    """summary.csv's rows, each figure at its market's grid (prices, quantities) or to the
    cent (amounts), then a total row per quote currency (one when all markets share it):
    PnL, fees, fills and notional add up; prices, inventories and drawdowns do not."""
    rows: list[tuple[str, ...]] = []
    by_quote: dict[str, list[SummaryRow]] = {}
    for r in run.summary.values():
        f = formats(run, r.market)
        by_quote.setdefault(f.quote, []).append(r)
        mean = f.price_decimals + 1  # mids and mean spreads fall between ticks
        rows.append(
            (
                r.market,
                fmt_fixed(r.mid, mean),
                fmt_fixed(r.spread, mean),
                fmt_fixed(r.quoted_spread, mean),
                f.qty(r.inventory),
                fmt_money(r.pnl),
                fmt_money(r.fees),
                f"{r.fill_count:,}",
                fmt_money(r.notional),
                fmt_money(r.max_drawdown),
            )
        )
    if len(rows) < 2:
        return rows
    for quote, group in sorted(by_quote.items()):
        if len(by_quote) == 1:
            label = f"total ({len(group)} markets, {quote})"
        else:
            label = f"total {quote} ({len(group)} market{'s' if len(group) > 1 else ''})"
        rows.append(
            (
                label,
                "",
                "",
                "",
                "",
                fmt_money(math.fsum(r.pnl for r in group)),
                fmt_money(math.fsum(r.fees for r in group)),
                f"{sum(r.fill_count for r in group):,}",
                fmt_money(math.fsum(r.notional for r in group)),
                "",
            )
        )
    return rows


def _binary_pairs(run: RunData) -> list[tuple[str, ...]]:
    """Events traded as two outcome tokens (``<event>/<OUTCOME>`` on one venue, prices in
    (0, 1): Polymarket's YES and NO): each token's inventory and the combined position,
    the first outcome's minus the other's (YES first), since holding NO is being short YES."""
    groups: dict[str, list[SummaryRow]] = {}
    for r in run.summary.values():
        event, sep, _ = r.market.rpartition("/")
        if sep and event and (math.isnan(r.mid) or 0 < r.mid < 1):
            groups.setdefault(event, []).append(r)
    rows: list[tuple[str, ...]] = []
    for event, pair in sorted(groups.items()):
        if len(pair) != 2:
            continue
        pair.sort(key=lambda r: (not r.market.upper().endswith("/YES"), r.market))
        first, second = pair
        f = formats(run, first.market)
        rows.append(
            (
                event,
                f"{first.market.rpartition('/')[2]} {f.qty(first.inventory)}",
                f"{second.market.rpartition('/')[2]} {f.qty(second.inventory)}",
                f.qty(first.inventory - second.inventory),
            )
        )
    return rows


def _time_label(run: RunData, t: int) -> str:
    t0 = run.t0 or 0
    return f"{(t - t0) / NS:.3f}"


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


def render_html(run: RunData, stats: dict[str, MarketAnalytics], slugs: dict[str, str]) -> str:
    """The report page; ``slugs`` name each market's anchor and chart element."""
    import plotly.offline

    markets = run.markets
    title = f"quoteforge run report: {run.run_dir.resolve().name}"
    meta = [f"{len(markets)} market(s)"]
    t0 = run.t0
    # Engine clocks are epoch-based in paper/live runs; small values are simulated time.
    if t0 is not None and t0 >= 946_684_800 * NS:
        start = dt.datetime.fromtimestamp(t0 / NS, tz=dt.UTC)
        meta.append(f"start {start.isoformat(timespec='seconds')}")
    notes: list[str] = []
    if not run.has_summary:
        notes.append(f"{SUMMARY_FILE} has not been written yet (run in progress?).")
    if run.partial_last_line:
        notes.append(f"The last line of {TRACE_FILE} was incomplete and was left out.")
    if run.unknown_records:
        kinds = ", ".join(f"{k} ({n})" for k, n in sorted(run.unknown_records.items()))
        notes.append(f"Record types this report does not read: {kinds}.")

    summary_rows = _summary_rows(run)
    pairs = _binary_pairs(run)
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
        _table(_SUMMARY_HEAD, summary_rows, "summary")
        if summary_rows
        else f'<p class="note">No {SUMMARY_FILE} rows.</p>',
        _table(("event", "outcome", "other outcome", "combined position"), pairs, "summary")
        if pairs
        else "",
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
            _table(("metric", "value"), _analytics_rows(a, formats(run, market)), "analytics"),
            '<p class="meta">Time in seconds since run start; shaded spans: book not LIVE.</p>',
            f'<div class="chart">{chart}</div>',
            _events_table(run, [e for e in run.events if e.market == market]),
            "</section>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)
