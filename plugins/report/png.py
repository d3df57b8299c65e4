"""A market's chart as a PNG (``charts/<market>.png``), drawn with matplotlib.

The PNG is for places that show no HTML (a chat, a pull request, an e-mail preview): the
same panels as the HTML figure (see :mod:`quoteforge.plugins.report.charts`), at full
resolution since a raster's size does not grow with the number of points.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from quoteforge.plugins.report.charts import (
    COLORS,
    PANEL_HEIGHTS,
    PANEL_TITLES,
    X_TITLE,
    axis_titles,
    chart_note,
    fill_marks,
    fmt_money,
    formats,
    lines,
    panels,
)
from quoteforge.plugins.report.metrics import MarketAnalytics
from quoteforge.plugins.report.rundata import RunData

__all__ = ["render_png"]

# Panels whose lines are told apart by a legend (inventory and drawdown hold one line).
_LEGEND_PANELS = (2, 3)


def render_png(run: RunData, market: str, stats: MarketAnalytics) -> bytes:
    """The PNG bytes of one market's chart, titled with its fill count and final PnL."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    p = panels(run, market)
    fig = Figure(figsize=(12, 14), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(5, 1, sharex=True, gridspec_kw={"height_ratios": list(PANEL_HEIGHTS)})
    f = formats(run, market)
    pnl_text = "n/a" if stats.final_pnl is None else f"{fmt_money(stats.final_pnl)} {f.quote}"
    fig.suptitle(f"{market}: {stats.fill_count:,} fills, final PnL {pnl_text}", fontsize=14)
    # Plain numbers with thousands separators: no "1e6" or "+2.0004e3" offset labels.
    plain = FuncFormatter(lambda v, _pos: f"{v:,.10g}")
    for ax, title, ytitle in zip(axes, PANEL_TITLES, axis_titles(f), strict=True):
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_ylabel(ytitle, fontsize=9)
        ax.yaxis.set_major_formatter(plain)
        ax.grid(True, alpha=0.3)
        for i, (x0, x1) in enumerate(p.not_live):
            label = "book not LIVE" if i == 0 and ax is axes[0] else None
            ax.axvspan(x0, x1, color=COLORS["not_live"], alpha=0.25, lw=0, label=label)
    note = chart_note(p)
    if note:
        axes[0].text(0.5, 0.5, note, ha="center", va="center", transform=axes[0].transAxes)
    chart_lines = lines(p)
    for line in chart_lines:
        ax = axes[line.panel]
        style: dict[str, Any] = {"color": line.color, "lw": line.width, "label": line.png_legend}
        if line.fill:
            ax.fill_between(p.x, 0, np.nan_to_num(line.y), color=line.color, alpha=0.3)
        if line.step:
            ax.step(p.x, line.y, where="post", **style)
        else:
            ax.plot(p.x, line.y, **style)
    if chart_lines:
        for panel in _LEGEND_PANELS:
            axes[panel].legend(loc="upper left", fontsize=8)
    for marks in fill_marks(p):
        axes[0].scatter(
            marks.x,
            marks.y,
            marker="^" if marks.up else "v",
            color=marks.color,
            s=28,
            zorder=3,
            label=marks.name,
        )
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(loc="upper left", fontsize=8, ncol=3)
    axes[4].set_xlabel(X_TITLE)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
