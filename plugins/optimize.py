"""Parameter search on Optuna: ``quoteforge optimize MANIFEST --space SPACE.yaml``.

Each trial is a normal run of the manifest (its own run folder) with the values Optuna
proposes for the space file's keys; the objective (see
:mod:`quoteforge.plugins.optimize_objectives`) is measured inside the run, reported every
sample interval, and a trial whose intermediate value is hopeless next to the earlier
trials' is stopped early (pruned). Studies live in an Optuna storage: SQLite in the
study folder by default, or PostgreSQL (``--storage postgresql://...``) so that workers on
several machines share one study. ``--walk-forward K`` cuts the recording into K windows,
optimises on each and reports the best parameters on the next.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib.util
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quoteforge import hookimpl
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.plugins.optimize_objectives import OBJECTIVES, Measures, Probe, objective_value
from quoteforge.plugins.optimize_space import (
    Param,
    SpaceError,
    check_against_manifest,
    load_space,
    overrides_for,
)
from quoteforge.progress import Progress
from quoteforge.registry import PluginRegistry, RegisterCommand, load_registry

__all__ = ["OptimizeError", "StudyOutcome", "optimize_main", "run_optimize", "run_walk_forward"]

_INSTALL = 'pip install "quoteforge[optimize]"'
PRUNERS = ("median", "none")
SAMPLERS = ("tpe", "random")
#: The measures every trial records beside its objective value.
MEASURE_COLUMNS = (
    "pnl",
    "sharpe",
    "pnl_dd",
    "fill_ratio",
    "max_drawdown",
    "fill_count",
    "orders",
    "samples",
)


class OptimizeError(Exception):
    """An optimisation that cannot start; the message says what to fix."""


@dataclass
class Settings:
    """What every study of one ``optimize`` call shares."""

    manifest: Path
    text: str
    space: list[Param]
    objective: str = "pnl"
    trials: int = 20
    fixed: list[str] = field(default_factory=list)
    penalty: float = 1.0
    pruner: str = "median"
    sampler: str = "tpe"
    prune_startup: int = 5
    prune_warmup: int = 30
    prune_every: int = 10
    seed: int | None = None
    storage: str | None = None


@dataclass
class StudyOutcome:
    """One study's result: its table (best first), best values and where it is kept."""

    name: str
    storage: str
    rows: list[dict[str, Any]]
    best_params: dict[str, Any]
    best_value: float | None
    importances: dict[str, float]
    table: Path
    failed: int = 0
    first_error: str = ""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise OptimizeError(f"optimize needs Optuna; install it with: {_INSTALL}") from None
    # Failed trials are reported in the table and at the end, not as tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


def storage_url(storage: str | None, out: Path) -> str:
    """The SQLAlchemy URL of a study's storage: ``OUT/study.db`` (SQLite) by default.
    ``postgresql://`` is served by psycopg 3 (the ``postgres`` extra) when psycopg2 is
    not installed."""
    if storage is None:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    if storage.startswith(("postgresql://", "postgres://")):
        rest = storage.split("://", 1)[1]
        if importlib.util.find_spec("psycopg2") is None:
            if importlib.util.find_spec("psycopg") is None:
                raise OptimizeError(
                    '--storage postgresql:// needs psycopg: pip install "quoteforge[postgres]"'
                )
            return f"postgresql+psycopg://{rest}"
        return f"postgresql://{rest}"
    if "://" not in storage:
        raise OptimizeError(
            f"--storage {storage!r}: expected a database URL, e.g. sqlite:///study.db or "
            "postgresql://user@host:5432/db"
        )
    return storage


def _open_study(optuna: Any, settings: Settings, name: str, url: str) -> Any:
    pruner: Any = optuna.pruners.NopPruner()
    if settings.pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=settings.prune_startup, n_warmup_steps=settings.prune_warmup
        )
    sampler: Any = optuna.samplers.TPESampler(seed=settings.seed)
    if settings.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=settings.seed)
    storage = None
    for attempt in range(3):
        try:
            storage = optuna.storages.RDBStorage(url)
            break
        except Exception as exc:  # SQLAlchemy's connection and URL errors
            # Workers started together race to create the tables: the loser retries.
            if attempt == 2 or "already exists" not in str(exc):
                shown = url.split("@")[-1] if "@" in url else url
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise OptimizeError(f"--storage: cannot open {shown}: {first}") from None
            time.sleep(0.5)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    saved = study.user_attrs.get("objective")
    if saved is None:
        study.set_user_attr("objective", settings.objective)
    elif saved != settings.objective:
        raise OptimizeError(
            f"study {name!r} maximises {saved}, not {settings.objective}; give --objective "
            f"{saved} or another --study name"
        )
    return study


def _trial_runner(
    optuna: Any,
    settings: Settings,
    registry: PluginRegistry,
    out: Path,
    extra: list[str],
) -> Callable[[Any], float]:
    """The objective Optuna calls: one run with the trial's values."""
    from quoteforge.engine import run_manifest

    def objective(trial: Any) -> float:
        values = {p.key: p.suggest(trial) for p in settings.space}
        overrides = settings.fixed + extra + overrides_for(values)
        run_dir = out / "trials" / f"{trial.number:04d}"

        def on_step(step: int, measures: Measures) -> str | None:
            # Every report is a storage write and every check a read: not every sample.
            if settings.pruner == "none" or step % settings.prune_every:
                return None
            value = objective_value(settings.objective, measures, settings.penalty)
            trial.report(value, step)
            if trial.should_prune():
                return f"pruned at sample {step}: {settings.objective} {value:.6g}"
            return None

        probe = Probe(on_step)
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            loaded = load_manifest(
                settings.manifest, registry, overrides=overrides, text=settings.text
            )
            run = asyncio.run(
                run_manifest(
                    loaded,
                    registry,
                    run_dir=run_dir,
                    install_signals=False,
                    on_started=probe.attach,
                    progress_bar=False,
                )
            )
        except Exception as exc:  # the trial fails, the study goes on
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        partial = run.run_info.get("incomplete")
        if partial:  # its data broke off: no objective value to trust
            trial.set_user_attr("error", f"partial run: {partial}")
            raise ValueError(f"partial run: {partial}")
        measures = probe.finish(run)
        trial.set_user_attr("stop_reason", run.stop_reason)
        for key, value in measures.as_dict(settings.penalty).items():
            trial.set_user_attr(key, value)
        if probe.stopped_by:
            raise optuna.TrialPruned(probe.stopped_by)
        return objective_value(settings.objective, measures, settings.penalty)

    return objective


def _finished(study: Any, optuna: Any) -> int:
    done = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    )
    return len(study.get_trials(deepcopy=False, states=done))


def optimize_study(
    settings: Settings,
    registry: PluginRegistry,
    out: Path,
    name: str,
    *,
    extra: list[str] | None = None,
) -> StudyOutcome:
    """Run trials until the study holds ``settings.trials`` finished ones (counting
    other workers' on a shared storage); write ``OUT/NAME.csv``."""
    optuna = _optuna()
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(settings.storage, out)
    study = _open_study(optuna, settings, name, url)
    objective = _trial_runner(optuna, settings, registry, out, list(extra or []))
    states = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    )
    left = settings.trials - _finished(study, optuna)
    best: list[float] = []

    def status() -> str:
        return f"best {settings.objective} {best[-1]:.6g}" if best else "no result yet"

    if left > 0:
        with Progress(left, desc=name, unit="trial", status=status, log_every=30) as bar:

            def done(study: Any, trial: Any) -> None:
                bar.update(1)
                if trial.value is not None and (not best or trial.value > best[-1]):
                    best.append(trial.value)

            study.optimize(
                objective,
                n_trials=left,
                catch=(Exception,),
                callbacks=[optuna.study.MaxTrialsCallback(settings.trials, states=states), done],
            )
    rows, failed, first_error = _table(study, optuna, settings)
    table = out / f"{name}.csv"
    _write_csv(table, rows, settings)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return StudyOutcome(
        name=name,
        storage=url.split("@")[-1] if "@" in url else url,
        rows=rows,
        best_params=dict(study.best_params) if complete else {},
        best_value=float(study.best_value) if complete else None,
        importances=_importances(optuna, study, complete),
        table=table,
        failed=failed,
        first_error=first_error,
    )


def _importances(optuna: Any, study: Any, complete: list[Any]) -> dict[str, float]:
    """Each parameter's share of the objective's variance over the finished trials
    (fANOVA); empty while fewer than two trials have completed."""
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):
        return {}


def _table(study: Any, optuna: Any, settings: Settings) -> tuple[list[dict[str, Any]], int, str]:
    rows: list[dict[str, Any]] = []
    failed, first_error = 0, ""
    for t in study.get_trials(deepcopy=False):
        if t.state.name in ("RUNNING", "WAITING"):
            continue
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower(), "value": t.value}
        if t.state.name == "PRUNED" and t.intermediate_values:
            last = max(t.intermediate_values)
            row["value"] = t.intermediate_values[last]
            row["note"] = t.user_attrs.get("stop_reason", "")
        if t.state.name == "FAIL":
            failed += 1
            row["note"] = t.user_attrs.get("error", "") or "the trial raised an exception"
            first_error = first_error or row["note"]
        row.update({p.key: t.params.get(p.key) for p in settings.space})
        row.update({k: t.user_attrs.get(k) for k in (*MEASURE_COLUMNS, "run_dir")})
        rows.append(row)
    order = {"complete": 0, "pruned": 1, "fail": 2}

    def key(r: dict[str, Any]) -> tuple[int, float]:
        value = r["value"]
        return (order.get(r["state"], 3), -value if value is not None else math.inf)

    rows.sort(key=key)
    return rows, failed, first_error


def _columns(settings: Settings) -> list[str]:
    return [
        "trial",
        "state",
        "value",
        *(p.key for p in settings.space),
        *MEASURE_COLUMNS,
        "run_dir",
        "note",
    ]


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    return "" if value is None else value


def _write_csv(path: Path, rows: list[dict[str, Any]], settings: Settings) -> None:
    columns = _columns(settings)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _fmt(row.get(c)) for c in columns})


def format_rows(rows: list[dict[str, Any]], columns: list[str], limit: int = 10) -> str:
    """A plain-text table of the first ``limit`` rows."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.6g}"
        return str(v)

    shown = rows[:limit]
    heads = [c.rsplit(".", 1)[-1] for c in columns]
    table = [heads] + [[cell(r.get(c)) for c in columns] for r in shown]
    widths = [max(len(t[i]) for t in table) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(t, widths, strict=True)) for t in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(rows) > limit:
        lines.append(f"({len(rows) - limit} more rows in the table file)")
    return "\n".join(lines)


def _prepare(
    manifest: Path,
    space_path: Path,
    registry: PluginRegistry,
    *,
    objective: str,
    trials: int,
    fixed: list[str],
    options: dict[str, Any],
) -> tuple[Settings, Any]:
    if objective not in OBJECTIVES:
        raise OptimizeError(f"--objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if trials < 1:
        raise OptimizeError(f"--trials must be >= 1, got {trials}")
    if options.get("pruner", "median") not in PRUNERS:
        raise OptimizeError(f"--pruner must be one of {', '.join(PRUNERS)}")
    if options.get("sampler", "tpe") not in SAMPLERS:
        raise OptimizeError(f"--sampler must be one of {', '.join(SAMPLERS)}")
    for name in ("prune_startup", "prune_warmup"):
        if options.get(name, 0) < 0:
            raise OptimizeError(f"--{name.replace('_', '-')} must be >= 0")
    if options.get("prune_every", 1) < 1:
        raise OptimizeError("--prune-every must be >= 1 (samples between reports)")
    penalty = options.get("penalty", 1.0)
    if not (math.isfinite(penalty) and penalty >= 0):
        raise OptimizeError(f"--drawdown-penalty must be a number >= 0, got {penalty}")
    try:
        text = manifest.read_text(encoding="utf-8")
    except OSError as exc:
        raise OptimizeError(f"{manifest}: cannot read ({exc})") from None
    try:
        space = load_space(space_path)
        base = load_manifest(manifest, registry, overrides=fixed, text=text)
        check_against_manifest(space, manifest, registry, text=text, fixed=fixed)
    except (SpaceError, ManifestError) as exc:
        raise OptimizeError(str(exc)) from None
    seed = options.get("seed")
    settings = Settings(
        manifest=manifest,
        text=text,
        space=space,
        objective=objective,
        trials=trials,
        fixed=list(fixed),
        penalty=penalty,
        pruner=options.get("pruner", "median"),
        sampler=options.get("sampler", "tpe"),
        prune_startup=options.get("prune_startup", 5),
        prune_warmup=options.get("prune_warmup", 30),
        prune_every=options.get("prune_every", 10),
        seed=seed if seed is not None else base.manifest.run.seed,
        storage=options.get("storage"),
    )
    return settings, base


def _out_dir(out: Path | None, base: Any, kind: str) -> Path:
    if out is not None:
        return out
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path(base.manifest.run.out_dir) / f"{kind}-{base.manifest.run.name}-{stamp}"


def run_optimize(
    manifest: Path,
    space_path: Path,
    *,
    objective: str = "pnl",
    trials: int = 20,
    out: Path | None = None,
    study: str | None = None,
    fixed: list[str] | None = None,
    registry: PluginRegistry | None = None,
    report: bool = True,
    **options: Any,
) -> StudyOutcome:
    """Optimise ``manifest`` over the space file; returns the study's outcome.

    ``options``: ``storage`` (URL), ``sampler`` (tpe|random), ``seed`` (the sampler's;
    default the manifest's run.seed),
    ``pruner`` (median|none), ``prune_startup``, ``prune_warmup`` and ``prune_every``
    (in samples), ``penalty`` (of ``pnl_dd``).
    """
    registry = registry if registry is not None else load_registry()
    fixed = list(fixed or [])
    settings, base = _prepare(
        manifest,
        space_path,
        registry,
        objective=objective,
        trials=trials,
        fixed=fixed,
        options=options,
    )
    out = _out_dir(out, base, "optimize")
    name = study or f"{base.manifest.run.name}-{objective}"
    outcome = optimize_study(settings, registry, out, name)
    if report:
        _write_report(out, outcome, settings)
    return outcome


def _write_report(out: Path, outcome: StudyOutcome, settings: Settings, **extra: Any) -> None:
    try:
        from quoteforge.plugins.report.study import write_study_report
    except ImportError as exc:
        print(f"study report not written ({exc}); {_INSTALL} and the report extra", file=sys.stderr)
        return
    try:
        write_study_report(
            out,
            outcome.name,
            outcome.rows,
            [p.key for p in settings.space],
            outcome.importances,
            objective=settings.objective,
            **extra,
        )
    except ModuleNotFoundError as exc:
        print(
            f'study report not written (missing {exc.name}); pip install "quoteforge[report]"',
            file=sys.stderr,
        )


def run_walk_forward(
    manifest: Path,
    space_path: Path,
    windows: int,
    *,
    objective: str = "pnl",
    trials: int = 20,
    out: Path | None = None,
    study: str | None = None,
    fixed: list[str] | None = None,
    registry: PluginRegistry | None = None,
    report: bool = True,
    **options: Any,
) -> tuple[Path, list[dict[str, Any]]]:
    """Cut the manifest's recording into ``windows`` equal spans of recorded time;
    optimise on each span and run the best parameters on the next. Returns the
    ``walk_forward.csv`` path and its rows (one per fold)."""
    from quoteforge.plugins.optimize_windows import WindowError, cut_windows, replay_source

    registry = registry if registry is not None else load_registry()
    fixed = list(fixed or [])
    settings, base = _prepare(
        manifest,
        space_path,
        registry,
        objective=objective,
        trials=trials,
        fixed=fixed,
        options=options,
    )
    if windows < 2:
        raise OptimizeError(f"--walk-forward needs at least 2 windows, got {windows}")
    out = _out_dir(out, base, "walkforward")
    try:
        source, protocol, data_keys = replay_source(base.manifest)
        cuts = cut_windows(source, protocol, windows, out / "windows")
    except WindowError as exc:
        raise OptimizeError(str(exc)) from None
    name = study or f"{base.manifest.run.name}-{objective}"
    folds: list[dict[str, Any]] = []
    outcomes: list[StudyOutcome] = []
    for i in range(windows - 1):
        train, test = cuts[i], cuts[i + 1]
        train_set = [f"{k}={train.path}" for k in data_keys]
        outcome = optimize_study(
            settings, registry, out / f"fold{i}", f"{name}-wf{i}", extra=train_set
        )
        outcomes.append(outcome)
        if report:  # each fold's own trials and importances, linked from the top page
            _write_report(out / f"fold{i}", outcome, settings)
        row: dict[str, Any] = {
            "fold": i,
            "train": train.label,
            "test": test.label,
            "best_params": outcome.best_params,
            "train_value": outcome.best_value,
        }
        if outcome.best_value is not None:
            test_set = [f"{k}={test.path}" for k in data_keys]
            measures, run_dir = _plain_run(
                settings,
                registry,
                test_set + overrides_for(outcome.best_params),
                out / f"fold{i}" / "test",
            )
            row.update(measures.as_dict(settings.penalty))
            row["test_value"] = objective_value(settings.objective, measures, settings.penalty)
            row["run_dir"] = str(run_dir)
        folds.append(row)
    path = out / "walk_forward.csv"
    columns = [
        "fold",
        "train",
        "test",
        "train_value",
        "test_value",
        *MEASURE_COLUMNS,
        "best_params",
        "run_dir",
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in folds:
            writer.writerow({c: _fmt(row.get(c)) for c in columns})
    if report and outcomes:
        _write_report(out, outcomes[-1], settings, walk_forward=folds)
    return path, folds


def _plain_run(
    settings: Settings, registry: PluginRegistry, extra: list[str], run_dir: Path
) -> tuple[Measures, Path]:
    from quoteforge.engine import run_manifest

    probe = Probe()
    loaded = load_manifest(
        settings.manifest, registry, overrides=settings.fixed + extra, text=settings.text
    )
    run = asyncio.run(
        run_manifest(
            loaded,
            registry,
            run_dir=run_dir,
            install_signals=False,
            on_started=probe.attach,
            progress_bar=False,
        )
    )
    return probe.finish(run), run_dir


def _parser() -> argparse.ArgumentParser:
    objectives = "; ".join(f"{k}: {v}" for k, v in OBJECTIVES.items())
    p = argparse.ArgumentParser(
        prog="quoteforge optimize",
        description="Search a manifest's parameters with Optuna (TPE, pruning, shared studies).",
    )
    p.add_argument("manifest", type=Path)
    p.add_argument("--space", type=Path, required=True, help="the space file (YAML)")
    p.add_argument("--objective", default="pnl", help=f"what to maximise ({objectives})")
    p.add_argument("--trials", type=int, default=20, help="finished trials in the study (20)")
    p.add_argument("--storage", help="study storage URL (default sqlite:///OUT/study.db)")
    p.add_argument("--study", help="study name (default <run.name>-<objective>)")
    p.add_argument("--out", type=Path, help="study folder (default <run.out_dir>/optimize-...)")
    p.add_argument(
        "--set",
        dest="fixed",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override applied to every trial",
    )
    p.add_argument(
        "--sampler",
        default="tpe",
        choices=SAMPLERS,
        help="tpe: Optuna's tree-structured Parzen estimator (default); random: a baseline",
    )
    p.add_argument("--seed", type=int, help="the sampler's seed (default run.seed)")
    p.add_argument(
        "--pruner",
        default="median",
        choices=PRUNERS,
        help="stop trials below the median of earlier ones at the same sample",
    )
    p.add_argument(
        "--prune-startup",
        type=int,
        default=5,
        metavar="N",
        help="trials that are never pruned, at the start (5)",
    )
    p.add_argument(
        "--prune-warmup",
        type=int,
        default=30,
        metavar="N",
        help="samples of every trial before pruning may stop it (30)",
    )
    p.add_argument(
        "--prune-every",
        type=int,
        default=10,
        metavar="N",
        help="report the intermediate value every N samples (10)",
    )
    p.add_argument(
        "--drawdown-penalty",
        type=float,
        default=1.0,
        metavar="L",
        help="lambda of pnl_dd = pnl - L x max drawdown (1)",
    )
    p.add_argument(
        "--walk-forward",
        type=int,
        metavar="K",
        help="cut the recording into K windows: optimise on one, test on the next",
    )
    p.add_argument("--no-report", action="store_true", help="write no optimize.html")
    return p


def optimize_main(argv: list[str] | None = None) -> int:
    """``quoteforge optimize MANIFEST --space SPACE.yaml [--objective ...] [--trials N]``."""
    from quoteforge.logs import configure_logging

    args = _parser().parse_args(argv)
    configure_logging("ERROR")
    started = time.perf_counter()
    options = {
        "storage": args.storage,
        "seed": args.seed,
        "pruner": args.pruner,
        "sampler": args.sampler,
        "prune_startup": args.prune_startup,
        "prune_warmup": args.prune_warmup,
        "prune_every": args.prune_every,
        "penalty": args.drawdown_penalty,
    }
    common: dict[str, Any] = dict(
        objective=args.objective,
        trials=args.trials,
        out=args.out,
        study=args.study,
        fixed=args.fixed,
        report=not args.no_report,
        **options,
    )
    try:
        if args.walk_forward is not None:
            path, folds = run_walk_forward(args.manifest, args.space, args.walk_forward, **common)
            cols = ["fold", "train", "test", "train_value", "test_value", "best_params"]
            print(format_rows(folds, cols, limit=len(folds)))
            print(f"\nwalk-forward in {time.perf_counter() - started:.1f}s; table: {path}")
            return 0
        outcome = run_optimize(args.manifest, args.space, **common)
    except OptimizeError as exc:
        print(f"optimize refused: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\noptimize interrupted: finished trials are kept in the study's storage; the "
            "same command continues it",
            file=sys.stderr,
        )
        return 130
    keys = list(outcome.rows[0].keys()) if outcome.rows else []
    params = [k for k in keys if "." in k]
    print(format_rows(outcome.rows, ["trial", "state", "value", *params, "fill_count"]))
    if outcome.importances:
        shares = ", ".join(f"{k} {v:.2f}" for k, v in outcome.importances.items())
        print(f"\nparameter importance: {shares}")
    print(
        f"\nstudy {outcome.name} ({outcome.storage}): best {args.objective} "
        f"{outcome.best_value if outcome.best_value is not None else '-'} with "
        f"{outcome.best_params}; {time.perf_counter() - started:.1f}s; table: {outcome.table}"
    )
    if outcome.failed:
        print(f"{outcome.failed} trial(s) failed, e.g.: {outcome.first_error}", file=sys.stderr)
        return 1
    return 0


@hookimpl
def quoteforge_register_commands(register: RegisterCommand) -> None:
    register(
        "optimize",
        optimize_main,
        help="search a manifest's parameters with Optuna (pruning, shared studies)",
        requires=("optuna",),
    )


if __name__ == "__main__":
    raise SystemExit(optimize_main())
