"""The report of an optimisation study (``quoteforge optimize``): ``optimize.html`` with
the trials table (best first), the parameter-importance chart and, for a walk-forward,
the folds; and ``importance.png``, the same chart for places that show no HTML.

Importance is Optuna's fANOVA estimate: each parameter's share of the variance of the
objective over the completed trials (the shares add up to 1). It needs two completed
trials with different values; before that the page says so.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["importance_png", "write_study_report"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
tr.pruned td { color: #888; } tr.fail td { color: #b00; }
.note { color: #555; font-style: italic; }
"""
_MAX_ROWS = 500


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k.rsplit('.', 1)[-1]}={_cell(v)}" for k, v in value.items())
    return str(value)


def _table(columns: Sequence[str], rows: Sequence[dict[str, Any]], row_class: str = "") -> str:
    head = "".join(f"<th>{html.escape(c.rsplit('.', 1)[-1])}</th>" for c in columns)
    body = []
    for row in rows[:_MAX_ROWS]:
        cls = html.escape(str(row.get(row_class, ""))) if row_class else ""
        cells = "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns)
        body.append(f'<tr class="{cls}">{cells}</tr>')
    more = (
        f'<p class="note">{len(rows) - _MAX_ROWS} more rows are in the CSV table.</p>'
        if len(rows) > _MAX_ROWS
        else ""
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def importance_png(importances: dict[str, float], title: str) -> bytes:
    """A horizontal bar per parameter, the most important on top."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(importances)[::-1]
    fig = Figure(figsize=(8, 1.2 + 0.45 * max(1, len(names))), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    bars = ax.barh(names, [importances[n] for n in names], color="#1f77b4")
    ax.bar_label(bars, fmt="%.2f", padding=3, fontsize=9)
    ax.set_xlabel("share of the objective's variance (fANOVA)")
    ax.set_xlim(0, 1)
    fig.suptitle(title, fontsize=11)
    ax.grid(True, axis="x", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _importance_div(importances: dict[str, float]) -> str:
    import plotly.graph_objects as go

    names = list(importances)[::-1]
    fig = go.Figure(
        go.Bar(x=[importances[n] for n in names], y=names, orientation="h"),
        layout={
            "height": 120 + 40 * len(names),
            "margin": {"l": 20, "r": 20, "t": 10, "b": 40},
            "xaxis": {"title": {"text": "share of the objective's variance"}, "range": [0, 1]},
        },
    )
    div: str = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id="importance",
        config={"displaylogo": False, "responsive": True},
    )
    return div


def write_study_report(
    out: Path,
    study: str,
    rows: list[dict[str, Any]],
    params: list[str],
    importances: dict[str, float],
    *,
    objective: str,
    walk_forward: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """Write ``optimize.html`` and (with importances) ``importance.png`` into ``out``."""
    import plotly.offline

    written: list[Path] = []
    title = f"quoteforge study {study}: maximise {objective}"
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row.get("state"))] = counts.get(str(row.get("state")), 0) + 1
    meta = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no trials"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>",
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{html.escape(meta)}; value of a pruned trial: its last '
        "intermediate value.</p>",
    ]
    if walk_forward:
        cols = [
            "fold",
            "train",
            "test",
            "train_value",
            "test_value",
            "pnl",
            "fill_count",
            "best_params",
        ]
        parts += [
            "<h2>Walk-forward</h2>",
            '<p class="note">Each fold optimises on its train window and runs the best '
            "parameters on the next (test) window; trials below are the last fold's.</p>",
            _table(cols, walk_forward),
            '<p class="note">Each fold\'s study: '
            + ", ".join(
                f'<a href="fold{int(row["fold"])}/optimize.html">fold {int(row["fold"])}</a>'
                for row in walk_forward
            )
            + ".</p>",
        ]
    parts.append("<h2>Parameter importance</h2>")
    if importances:
        parts.append(_importance_div(importances))
        png = out / "importance.png"
        png.write_bytes(importance_png(importances, f"{study}: what moves {objective}"))
        written.append(png)
        parts.append(
            '<script type="application/json" id="importance-data">'
            + html.escape(json.dumps(importances))
            + "</script>"
        )
    else:
        parts.append(
            '<p class="note">Not computed: it needs two completed trials with different values.</p>'
        )
    columns = [
        "trial",
        "state",
        "value",
        *params,
        "pnl",
        "sharpe",
        "pnl_dd",
        "fill_ratio",
        "max_drawdown",
        "fill_count",
        "note",
    ]
    parts += ["<h2>Trials (best first)</h2>", _table(columns, rows, "state"), "</body></html>"]
    page = out / "optimize.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    written.insert(0, page)
    return written
