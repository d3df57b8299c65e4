"""Parameter sweeps: run a manifest over a cartesian grid of ``--set`` overrides in
parallel processes, or on a Dask cluster (``--backend dask``, see
:mod:`quoteforge.plugins.sweep_dask`), and collect every run's summary into one table
(``sweep.csv``)."""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib
import itertools
import math
import multiprocessing
import os
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quoteforge import hookimpl
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.progress import Progress
from quoteforge.registry import PluginRegistry, RegisterCommand, load_registry
from quoteforge.runfiles import SUMMARY_COLUMNS as RUN_SUMMARY_COLUMNS

__all__ = ["GridAxis", "SweepError", "expand_grid", "parse_grid", "run_sweep", "sweep_main"]

#: The run summary's columns after "market" (quoteforge.runfiles writes summary.csv).
SUMMARY_COLUMNS = tuple(c for c in RUN_SUMMARY_COLUMNS if c != "market")
_NUMERIC = ("inventory", "pnl", "fees", "fill_count", "notional", "max_drawdown")
BACKENDS = ("local", "dask")
_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")
#: The most runs one grid may make: each is a run folder; beyond this, search instead.
MAX_RUNS = 100_000


class SweepError(Exception):
    """A sweep that cannot start; the message says what to fix."""


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid KEY=...`` axis: a manifest key path and its values (YAML text)."""

    key: str
    values: tuple[str, ...]
    is_range: bool = False


def parse_grid(item: str) -> GridAxis:
    """``KEY=v1,v2,...`` or ``KEY=a..b`` (inclusive integer range, e.g. seeds)."""
    if "=" not in item:
        raise SweepError(f"--grid {item!r}: expected KEY=v1,v2,... or KEY=a..b")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise SweepError(f"--grid {item!r}: the key must be a dotted path like run.seed")
    match = _RANGE.match(raw)
    if match:
        low, high = int(match.group(1)), int(match.group(2))
        if high < low:
            raise SweepError(f"--grid {item!r}: range {low}..{high} is empty (write low..high)")
        if high - low >= MAX_RUNS:
            raise SweepError(_too_many(high - low + 1, f"--grid {item!r}"))
        return GridAxis(key, tuple(str(v) for v in range(low, high + 1)), is_range=True)
    values = tuple(v.strip() for v in raw.split(","))
    if not raw.strip() or any(v == "" for v in values):
        raise SweepError(f"--grid {item!r}: empty value; write KEY=v1,v2 with no blank entries")
    if len(set(values)) != len(values):
        raise SweepError(f"--grid {item!r}: a value is listed twice")
    return GridAxis(key, values)


def expand_grid(axes: list[GridAxis]) -> list[dict[str, str]]:
    """Every combination, the first axis varying slowest."""
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise SweepError(f"--grid key given twice: {', '.join(dup)}; list all values once")
    runs = math.prod(len(a.values) for a in axes)
    if runs > MAX_RUNS:
        raise SweepError(_too_many(runs, "the --grid axes together"))
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(a.values for a in axes))
    ]


def _too_many(runs: int, what: str) -> str:
    return (
        f"{what} make {runs:,} runs, over the {MAX_RUNS:,} a sweep runs (one folder each): "
        "narrow the grid, or search the space with quoteforge optimize"
    )


@dataclass
class _Job:
    index: int
    values: dict[str, str]
    overrides: list[str]
    run_dir: Path


@dataclass
class _Result:
    index: int
    values: dict[str, str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""
    error: str = ""
    seconds: float = 0.0


def _import_plugins(modules: list[str], registry: PluginRegistry) -> None:
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise SweepError(
                f"--plugin {name}: cannot import it ({exc}); give an importable module name"
            ) from None
        record = registry.register_module(module, name)
        if not record.loaded and "already registered" not in record.error:
            raise SweepError(f"--plugin {name}: {record.error}")


_worker_registry: PluginRegistry | None = None


def init_worker(plugins: list[str], in_child: bool = True) -> None:
    """Prepare a process that runs sweep jobs: quiet logs, no per-run bars, plugins."""
    global _worker_registry
    from quoteforge.logs import configure_logging

    configure_logging("ERROR")
    if in_child:
        os.environ["QUOTEFORGE_PROGRESS"] = "0"  # one bar for the sweep, none per run
    _worker_registry = load_registry()
    _import_plugins(plugins, _worker_registry)


def run_job(manifest: str, text: str, job: _Job) -> _Result:
    """One run of the sweep; a failure is reported in the result, never raised."""
    from quoteforge.engine import run_manifest

    registry = _worker_registry if _worker_registry is not None else load_registry()
    started = time.perf_counter()
    result = _Result(job.index, job.values)
    try:
        loaded = load_manifest(manifest, registry, overrides=job.overrides, text=text)
        run = asyncio.run(
            run_manifest(loaded, registry, run_dir=job.run_dir, install_signals=False)
        )
        result.rows = run.summary_rows()
        result.stop_reason = run.stop_reason
        partial = run.run_info.get("incomplete")
        if partial:  # its data broke off: an error row, kept out of the means
            result.error = f"partial run: {partial}"
    except Exception as exc:  # one failed run is reported, the sweep goes on
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - started
    return result


def _slug(values: dict[str, str]) -> str:
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items()]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", ",".join(parts))[:80]


def run_sweep(
    manifest: Path,
    axes: list[GridAxis],
    *,
    jobs: int = 1,
    out: Path | None = None,
    fixed: list[str] | None = None,
    plugins: list[str] | None = None,
    over: list[str] | None = None,
    registry: PluginRegistry | None = None,
    backend: str = "local",
    scheduler: str | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Validate every combination, run them, write ``sweep.csv``; returns (path, rows).

    ``backend`` is ``local`` (``jobs`` processes) or ``dask`` (the cluster at
    ``scheduler``, else a LocalCluster of ``jobs`` workers); both give the same table.
    ``over`` names the axes aggregated over (default: ``run.seed`` when swept, else
    every ``a..b`` range axis): mean and sd rows are added per combination of the others.
    """
    if not axes:
        raise SweepError("give at least one --grid KEY=v1,v2,...")
    if jobs < 1:
        raise SweepError(f"--jobs must be >= 1, got {jobs}")
    if backend not in BACKENDS:
        raise SweepError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if scheduler is not None and backend != "dask":
        raise SweepError("--scheduler is the address of a Dask cluster: add --backend dask")
    if scheduler is not None:
        from quoteforge.plugins.sweep_dask import check_scheduler

        check_scheduler(scheduler)
    keys = [a.key for a in axes]
    unknown = [k for k in over or () if k not in keys]
    if unknown:
        raise SweepError(f"--over {', '.join(unknown)}: not a --grid key ({', '.join(keys)})")
    fixed = list(fixed or [])
    plugins = list(plugins or [])
    registry = registry if registry is not None else load_registry()
    _import_plugins(plugins, registry)
    try:
        text = manifest.read_text(encoding="utf-8")
    except OSError as exc:
        raise SweepError(f"{manifest}: cannot read ({exc})") from None
    combos = expand_grid(axes)
    # Validate everything before anything runs: a typo in one value must not surface
    # after an hour of runs.
    # The same mistake usually breaks many combinations: report each once, with a count.
    problems: dict[str, list[str]] = {}
    name = "sweep"
    for values in combos:
        overrides = fixed + [f"{k}={v}" for k, v in values.items()]
        try:
            loaded = load_manifest(manifest, registry, overrides=overrides, text=text)
            name = loaded.manifest.run.name
        except ManifestError as exc:
            label = ", ".join(f"{k}={v}" for k, v in values.items())
            for line in str(exc).splitlines():
                problems.setdefault(line.replace(f"{manifest}:", "").strip(), []).append(label)
    if problems:
        lines = [
            f"  {message}\n    in {len(labels)} of {len(combos)} combinations, e.g. [{labels[0]}]"
            for message, labels in problems.items()
        ]
        raise SweepError(
            f"{manifest}: the grid has invalid combinations, nothing was run:\n" + "\n".join(lines)
        )
    if out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        base = load_manifest(manifest, registry, overrides=fixed, text=text).manifest.run.out_dir
        out = Path(base) / f"sweep-{name}-{stamp}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(f"--out {out}: cannot create the sweep folder ({exc})") from None
    if backend == "dask":
        out = out.resolve()  # workers may run elsewhere: no path relative to here
    width = len(str(len(combos)))
    job_list = [
        _Job(
            i,
            values,
            fixed + [f"{k}={v}" for k, v in values.items()],
            out / f"{i:0{width}d}-{_slug(values)}",
        )
        for i, values in enumerate(combos)
    ]
    results: list[_Result] = []
    with Progress(len(job_list), desc="sweep", unit="run") as progress:
        if backend == "dask":
            from quoteforge.plugins.sweep_dask import run_on_dask

            def done(result: _Result) -> None:
                results.append(result)
                progress.update(1)

            run_on_dask(
                str(manifest),
                text,
                job_list,
                plugins,
                scheduler=scheduler,
                workers=jobs,
                done=done,
            )
        elif jobs == 1:
            init_worker(plugins, in_child=False)
            saved = os.environ.get("QUOTEFORGE_PROGRESS")
            os.environ["QUOTEFORGE_PROGRESS"] = "0"
            try:
                for job in job_list:
                    results.append(run_job(str(manifest), text, job))
                    progress.update(1)
            finally:
                if saved is None:
                    os.environ.pop("QUOTEFORGE_PROGRESS", None)
                else:
                    os.environ["QUOTEFORGE_PROGRESS"] = saved
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=jobs, mp_context=ctx, initializer=init_worker, initargs=(plugins,)
            ) as pool:
                futures = [pool.submit(run_job, str(manifest), text, job) for job in job_list]
                for future in as_completed(futures):
                    results.append(future.result())
                    progress.update(1)
    results.sort(key=lambda r: r.index)
    if over is None:
        over = ["run.seed"] if "run.seed" in keys else [a.key for a in axes if a.is_range]
    rows = _table(results, keys, over)
    path = out / "sweep.csv"
    columns = ["kind", "run", *keys, "market", *SUMMARY_COLUMNS, "runs", "error"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _fmt(row.get(c)) for c in columns})
    return path, rows


def _table(results: list[_Result], keys: list[str], over: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for res in results:
        base = {"run": res.index, **res.values}
        if res.error:
            rows.append({"kind": "error", **base, "error": res.error})
            continue
        for summary in res.rows:
            rows.append({"kind": "run", **base, **summary, "runs": 1})
        if len(res.rows) > 1:
            total: dict[str, Any] = {"kind": "total", **base, "market": "*", "runs": 1}
            for col in ("pnl", "fill_count", "notional"):
                total[col] = sum(r[col] for r in res.rows)
            rows.append(total)
    # Aggregates across the `over` axes, per combination of the other axes and market.
    group_keys = [k for k in keys if k not in over]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if row["kind"] not in ("run", "total"):
            continue
        ident = (*(row[k] for k in group_keys), row["market"])
        groups.setdefault(ident, []).append(row)
    for ident, members in groups.items():
        labels = dict(zip([*group_keys, "market"], ident, strict=True))
        mean_row: dict[str, Any] = {"kind": "mean", **labels, "runs": len(members)}
        sd_row: dict[str, Any] = {"kind": "sd", **labels, "runs": len(members)}
        for col in _NUMERIC:
            values = [float(m[col]) for m in members if m.get(col) is not None]
            if not values:
                continue
            mean_row[col] = statistics.fmean(values)
            sd_row[col] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.extend((mean_row, sd_row))
    return rows


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    return "" if value is None else value


def format_table(rows: list[dict[str, Any]], keys: list[str], limit: int = 60) -> str:
    """The table printed at the end: every row for small sweeps, else the aggregates."""
    shown = (
        rows if len(rows) <= limit else [r for r in rows if r["kind"] in ("mean", "sd", "error")]
    )
    cols = ["kind", "run", *keys, "market", "inventory", "pnl", "fill_count", "runs"]

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.4f}"
        return str(v)

    table = [cols] + [[cell(r.get(c)) for c in cols] for r in shown]
    widths = [max(len(t[i]) for t in table) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(t, widths, strict=True)) for t in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(shown) < len(rows):
        lines.append(f"({len(rows) - len(shown)} per-run rows are in sweep.csv)")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quoteforge sweep",
        description="Run a manifest over a grid of parameter values in parallel processes "
        "or on a Dask cluster.",
    )
    p.add_argument("manifest", type=Path)
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2|A..B",
        help="an axis, e.g. strategies.mm.params.spread_bps=4,8 or run.seed=1..20",
    )
    p.add_argument(
        "--set",
        dest="fixed",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override applied to every run",
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="parallel processes or local Dask workers (1)"
    )
    p.add_argument(
        "--backend",
        default="local",
        choices=BACKENDS,
        help="local: a pool of processes (default); dask: a Dask distributed cluster",
    )
    p.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="with --backend dask: the cluster's scheduler (default: a LocalCluster)",
    )
    p.add_argument("--out", type=Path, help="sweep folder (default <run.out_dir>/sweep-...)")
    p.add_argument(
        "--over",
        action="append",
        default=None,
        metavar="KEY",
        help="axis to aggregate over (default run.seed, else the a..b ranges)",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="also register this plugin module (not installed through an entry point)",
    )
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    return p


def sweep_main(argv: list[str] | None = None) -> int:
    """``quoteforge sweep MANIFEST --grid KEY=v1,v2 [--grid ...] [--jobs N] [--out DIR]``."""
    from quoteforge.logs import configure_logging

    args = _parser().parse_args(argv)
    configure_logging("WARNING")
    try:
        axes = [parse_grid(g) for g in args.grid]
        started = time.perf_counter()
        path, rows = run_sweep(
            args.manifest,
            axes,
            jobs=args.jobs,
            out=args.out,
            fixed=args.fixed,
            plugins=args.plugin,
            over=args.over,
            backend=args.backend,
            scheduler=args.scheduler,
        )
    except SweepError as exc:
        print(f"sweep refused: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(format_table(rows, [a.key for a in axes]))
        runs = len({r["run"] for r in rows if r["kind"] in ("run", "error")})
        print(f"\n{runs} runs in {time.perf_counter() - started:.1f}s; table: {path}")
    return 1 if any(r["kind"] == "error" for r in rows) else 0


@hookimpl
def quoteforge_register_commands(register: RegisterCommand) -> None:
    register(
        "sweep",
        sweep_main,
        help="run a parameter grid in parallel processes or on a Dask cluster into one table",
    )


if __name__ == "__main__":
    raise SystemExit(sweep_main())
