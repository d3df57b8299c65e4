"""Run reports: read a run folder (summary.csv, trace.jsonl), compute market-making analytics,
and write a self-contained HTML report with one PNG chart per market.

This module writes the files and runs the ``report`` command; the work is done by
:mod:`~quoteforge.plugins.report.rundata` (reading the run folder),
:mod:`~quoteforge.plugins.report.metrics` (analytics),
:mod:`~quoteforge.plugins.report.charts` (the panels both charts draw),
:mod:`~quoteforge.plugins.report.png` (matplotlib) and
:mod:`~quoteforge.plugins.report.page` (the HTML page and its plotly figures). The names
below stay importable from here, the module the docs name for the Python API.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

from quoteforge.plugins.report.metrics import (
    DEFAULT_HORIZONS_S,
    MarketAnalytics,
    Markout,
    analytics,
)
from quoteforge.plugins.report.page import render_html
from quoteforge.plugins.report.png import render_png
from quoteforge.plugins.report.rundata import (
    MANIFEST_FILE,
    SUMMARY_COLUMNS,
    SUMMARY_FILE,
    TRACE_FILE,
    NotARunFolderError,
    ReportError,
    RunData,
    RunFormatError,
    SummaryRow,
    TickSeries,
    TraceEvent,
    TraceFill,
    load_run,
)

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

REPORT_FILE = "report.html"
CHARTS_DIR = "charts"


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
    return _write_run(load_run(run_dir), png=png, html=html)


def _write_run(run: RunData, *, png: bool, html: bool) -> list[Path]:
    stats = analytics(run)
    slugs = _slugs(run.markets)
    written: list[Path] = []
    if html:
        target = run.run_dir / REPORT_FILE
        _write_atomic(target, render_html(run, stats, slugs).encode("utf-8"))
        written.append(target)
    if png:
        charts = run.run_dir / CHARTS_DIR
        charts.mkdir(exist_ok=True)
        for market in run.markets:
            target = charts / f"{slugs[market]}.png"
            _write_atomic(target, render_png(run, market, stats[market]))
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
        run = load_run(args.run_dir)
        if not run.markets and not run.events:
            # Asked for by hand, an empty report would pass for a run that traded nothing.
            raise NotARunFolderError(
                f"{run.run_dir} holds no market data: {TRACE_FILE} has no records and "
                f"{SUMMARY_FILE} no markets; the run ended before it started, or the files "
                "were emptied. Pass a run folder that has run"
            )
        paths = _write_run(run, png=not args.no_png, html=not args.no_html)
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
