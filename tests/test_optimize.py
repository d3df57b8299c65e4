"""quoteforge optimize: the space file, the objectives, TPE studies in SQLite, pruning
during a run, walk-forward over the real recording, and the shipped example."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from quoteforge.engine import run_manifest
from quoteforge.manifest import load_manifest
from quoteforge.plugins.optimize import (
    OptimizeError,
    optimize_main,
    run_optimize,
    run_walk_forward,
    storage_url,
)
from quoteforge.plugins.optimize_objectives import Measures, objective_value
from quoteforge.plugins.optimize_space import SpaceError, load_space, overrides_for
from quoteforge.plugins.optimize_windows import cut_windows
from quoteforge.registry import PluginRegistry

ROOT = Path(__file__).resolve().parent.parent
RECORDING = ROOT / "examples" / "data" / "btcusdt_binance_20240808.jsonl.gz"

MANIFEST = """\
run: {name: opt, duration: 30s, seed: 3, sample_interval: 1s, watch_manifest: false}
exchanges:
  sim:
    type: sim
    params:
      markets:
        BTC/USDT:
          tick_size: "0.01"
          lot_size: "0.0001"
          initial_price: 30000
          process: {model: brownian, sigma: 0.0001}
          flow: {arrival_rate: 3.0, reach: 15.0, size: 0.05}
          liquidity: {levels: 5, distance: 20.0, spacing: 5.0, size: 0.2}
strategies:
  mm:
    type: pure_market_making
    exchange: sim
    symbols: BTC/USDT
    params: {spread_bps: 4, order_size: 0.05, inventory_limit: 1.0}
report: {html: false, png: false}
"""

SPACE = """\
params:
  strategies.mm.params.spread_bps: {type: float, low: 0.5, high: 40, log: true}
  strategies.mm.params.levels: {type: int, low: 1, high: 3}
"""


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "opt.yaml"
    path.write_text(MANIFEST)
    return path


def _space(tmp_path: Path, text: str = SPACE) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# -- the space file ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("a.b: {type: float, lo: 1, high: 2}", r"unknown field 'lo' \(did you mean 'low'\?\)"),
        ("a.b: {type: flaot, low: 1, high: 2}", r"type must be one of .*did you mean 'float'"),
        ("a.b: {type: float, low: 5, high: 2}", r"a\.b: bad range: low \(5\) must be below"),
        ("a.b: {type: float, low: 0, high: 2, log: true}", r"log range needs low > 0"),
        ("a.b: {type: int, low: 1.5, high: 4}", r"whole number"),
        ("a.b: {type: float, low: 1, high: 2, step: 0.5, log: true}", r"step or log, not both"),
        ("a.b: {type: float, low: 1}", r"high is missing"),
        ("a.b: {type: categorical, choices: []}", r"choices must be a non-empty list"),
        ("a.b: {type: categorical, choices: [x, x]}", r"listed twice"),
    ],
)
def test_space_format_errors_name_the_parameter(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(SpaceError, match=message):
        load_space(_space(tmp_path, "params:\n  " + body + "\n"))


def test_space_file_shape_errors(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"unknown top-level key 'param' \(did you mean"):
        load_space(_space(tmp_path, "params: {a.b: {type: int, low: 1, high: 2}}\nparam: 1\n"))
    with pytest.raises(SpaceError, match="a mapping with 'params:'"):
        load_space(_space(tmp_path, "- 1\n"))
    with pytest.raises(SpaceError, match="not a dotted manifest path"):
        load_space(_space(tmp_path, "params: {'a..b': {type: int, low: 1, high: 2}}\n"))
    good = load_space(_space(tmp_path))
    assert [(p.key, p.type, p.low, p.high, p.log) for p in good] == [
        ("strategies.mm.params.spread_bps", "float", 0.5, 40, True),
        ("strategies.mm.params.levels", "int", 1, 3, False),
    ]


def test_unknown_manifest_key_and_refused_value_are_caught_before_any_trial(
    manifest: Path, tmp_path: Path, registry: PluginRegistry
) -> None:
    out = tmp_path / "never"
    space = _space(
        tmp_path, "params:\n  strategies.mm.params.spred_bps: {type: float, low: 1, high: 2}\n"
    )
    with pytest.raises(OptimizeError, match=r"spred_bps.*did you mean 'spread_bps'"):
        run_optimize(manifest, space, trials=2, out=out, registry=registry)
    space = _space(
        tmp_path, "params:\n  strategies.mm.params.levels: {type: int, low: 0, high: 2}\n"
    )
    with pytest.raises(OptimizeError, match=r"levels.*\[at strategies\.mm\.params\.levels=0\]"):
        run_optimize(manifest, space, trials=2, out=out, registry=registry)
    assert not out.exists()


def test_usage_errors_exit_2(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = str(_space(tmp_path))
    assert optimize_main([str(manifest), "--space", space, "--objective", "profit"]) == 2
    assert "choose one of pnl, sharpe, pnl_dd, fill_ratio" in capsys.readouterr().err
    assert optimize_main([str(manifest), "--space", space, "--trials", "0"]) == 2
    assert "--trials must be >= 1" in capsys.readouterr().err
    with pytest.raises(OptimizeError, match="expected a database URL"):
        storage_url("study.db", tmp_path)
    with pytest.raises(OptimizeError, match="--sampler must be one of tpe, random"):
        run_optimize(manifest, Path(space), out=tmp_path / "never", sampler="grid")
    with pytest.raises(OptimizeError, match="--prune-every must be >= 1"):
        run_optimize(manifest, Path(space), out=tmp_path / "never", prune_every=0)
    assert not (tmp_path / "never").exists()


# -- objectives --------------------------------------------------------------------------
def test_objective_formulas() -> None:
    m = Measures(pnl=[1.0, 3.0, 2.0, -1.0, 4.0], fills=7, orders=10, filled_orders=4)
    steps = [1.0, 2.0, -1.0, -3.0, 5.0]
    assert objective_value("pnl", m) == 4.0
    assert m.max_drawdown == 4.0  # peak 3 -> -1
    assert objective_value("pnl_dd", m, penalty=0.5) == 4.0 - 0.5 * 4.0
    expected = statistics.fmean(steps) / statistics.stdev(steps)
    assert objective_value("sharpe", m) == pytest.approx(expected)
    assert objective_value("fill_ratio", m) == 0.4
    flat = Measures(pnl=[0.0, 0.0, 0.0])
    assert objective_value("sharpe", flat) == 0.0 and objective_value("fill_ratio", flat) == 0.0
    with pytest.raises(ValueError, match="unknown objective"):
        objective_value("profit", m)


# -- studies ---------------------------------------------------------------------------------
def test_tpe_study_in_sqlite_measures_each_run_and_continues(
    manifest: Path, tmp_path: Path, registry: PluginRegistry
) -> None:
    out = tmp_path / "study"
    space = _space(tmp_path)
    outcome = run_optimize(
        manifest, space, trials=4, out=out, registry=registry, pruner="none", report=False
    )
    assert (out / "study.db").exists() and outcome.storage.startswith("sqlite:///")
    rows = outcome.rows
    assert len(rows) == 4 and all(r["state"] == "complete" for r in rows)
    assert [r["value"] for r in rows] == sorted((r["value"] for r in rows), reverse=True)
    assert outcome.best_value == rows[0]["value"]
    assert outcome.best_params == {
        "strategies.mm.params.spread_bps": rows[0]["strategies.mm.params.spread_bps"],
        "strategies.mm.params.levels": rows[0]["strategies.mm.params.levels"],
    }
    for row in rows:
        # Each trial is a normal run; its objective is its own summary's PnL.
        run_dir = Path(row["run_dir"])
        summary = _csv(run_dir / "summary.csv")
        assert row["value"] == pytest.approx(sum(float(s["pnl"]) for s in summary), abs=1e-9)
        assert row["fill_count"] == sum(int(s["fill_count"]) for s in summary)
        manifest_used = (run_dir / "run.json").read_text()
        assert f"strategies.mm.params.levels={row['strategies.mm.params.levels']}" in manifest_used
        assert row["samples"] == 31  # 30 one-second samples and the final one
    assert len({r["strategies.mm.params.spread_bps"] for r in rows}) == 4
    # Measuring inside the run does not change it: a plain run of the best values agrees.
    loaded = load_manifest(manifest, registry, overrides=overrides_for(outcome.best_params))
    plain = asyncio.run(
        run_manifest(loaded, registry, run_dir=tmp_path / "plain", install_signals=False)
    )
    assert plain.summary_rows()[0]["pnl"] == pytest.approx(rows[0]["value"], abs=1e-9)
    assert plain.summary_rows()[0]["fill_count"] == rows[0]["fill_count"]
    table = _csv(outcome.table)
    assert [int(r["trial"]) for r in table] == [r["trial"] for r in rows]
    # The same study again with a higher target runs only the missing trials.
    more = run_optimize(
        manifest, space, trials=6, out=out, registry=registry, pruner="none", report=False
    )
    assert len(more.rows) == 6 and sorted(r["trial"] for r in more.rows) == list(range(6))
    with pytest.raises(OptimizeError, match="maximises pnl, not sharpe"):
        run_optimize(
            manifest,
            space,
            objective="sharpe",
            trials=6,
            out=out,
            registry=registry,
            study=outcome.name,
            report=False,
        )


def test_hopeless_trials_are_pruned_during_the_run(
    manifest: Path, tmp_path: Path, registry: PluginRegistry
) -> None:
    out = tmp_path / "pruned"
    outcome = run_optimize(
        manifest,
        _space(tmp_path),
        trials=8,
        out=out,
        registry=registry,
        prune_startup=2,
        prune_warmup=5,
        prune_every=5,
        report=False,
    )
    pruned = [r for r in outcome.rows if r["state"] == "pruned"]
    complete = [r for r in outcome.rows if r["state"] == "complete"]
    assert pruned and complete
    for row in pruned:
        # Stopped early: fewer samples than a whole run, the reason in run.json.
        assert row["samples"] < 31
        info = json.loads((Path(row["run_dir"]) / "run.json").read_text())
        assert info["stop_reason"].startswith("pruned at sample")
        assert row["note"] == info["stop_reason"]


def _mids(run_dir: Path) -> dict[int, float]:
    """A backtest's book mid by whole seconds since its start."""
    ticks = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    ticks = [t for t in ticks if t["type"] == "tick" and t["mid"] is not None]
    start = ticks[0]["t"] - 1_000_000_000  # the first sample is one interval in
    return {(t["t"] - start) // 1_000_000_000: t["mid"] for t in ticks}


@pytest.mark.skipif(not RECORDING.exists(), reason="the real recording is not in the checkout")
def test_walk_forward_windows_continue_the_recorded_book(
    tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    windows = cut_windows(RECORDING, "binance_spot", 3, tmp_path / "w")
    assert [w.label for w in windows] == ["0s..115s", "115s..231s", "231s..346s"]
    first = [json.loads(line) for line in windows[1].path.read_text().splitlines()[:1]]
    assert first[0]["stream"].startswith("rest:/api/v3/depth")
    manifest = ROOT / "examples" / "optimize_backtest.yaml"
    space = _space(
        tmp_path,
        "params:\n  strategies.mm.params.spread_bps: {type: float, low: 0.5, high: 5, log: true}\n",
    )
    fixed = ["exchanges.binance.params.latency.jitter_ms=0"]
    path, folds = run_walk_forward(
        manifest,
        space,
        3,
        trials=2,
        out=tmp_path / "wf",
        fixed=fixed,
        registry=registry,
        pruner="none",
        report=importlib.util.find_spec("plotly") is not None,
    )
    assert [f["fold"] for f in folds] == [0, 1] and path.exists()
    if importlib.util.find_spec("plotly") is not None:
        # The top page holds the folds' table and links each fold's own study report.
        page = (tmp_path / "wf" / "optimize.html").read_text()
        assert "<h2>Walk-forward</h2>" in page and "115s..231s" in page
        for i in (0, 1):
            assert f'href="fold{i}/optimize.html"' in page
            fold_page = (tmp_path / "wf" / f"fold{i}" / "optimize.html").read_text()
            assert f"-wf{i}: maximise pnl" in fold_page and "Trials (best first)" in fold_page
    for fold in folds:
        assert fold["train_value"] is not None and math.isfinite(fold["test_value"])
        summary = _csv(Path(fold["run_dir"]) / "summary.csv")
        assert fold["test_value"] == pytest.approx(float(summary[0]["pnl"]), abs=1e-9)
    # The test window's book is the recorded book: its mids are the whole recording's at
    # the same recorded instants (windows start on whole seconds; no latency jitter).
    loaded = load_manifest(manifest, registry, overrides=fixed)
    asyncio.run(run_manifest(loaded, registry, run_dir=tmp_path / "whole", install_signals=False))

    whole = _mids(tmp_path / "whole")
    window = _mids(Path(folds[0]["run_dir"]))  # fold 0 is tested on window 1, from 115 s
    compared = [(mid, whole[k + 115]) for k, mid in window.items() if k + 115 in whole]
    assert len(compared) > 100
    assert all(a == b for a, b in compared)


def test_the_example_study_writes_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("plotly")
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(ROOT)
    out = tmp_path / "example"
    code = optimize_main(
        [
            "examples/optimize_backtest.yaml",
            "--space",
            "examples/optimize/space.yaml",
            "--objective",
            "pnl_dd",
            "--trials",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "best pnl_dd" in text and "parameter importance" in text
    page = (out / "optimize.html").read_text()
    assert "Parameter importance" in page and "spread_bps" in page
    shares = json.loads(
        page.split('id="importance-data">', 1)[1].split("</script>", 1)[0].replace("&quot;", '"')
    )
    assert sum(shares.values()) == pytest.approx(1.0)
    assert (out / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(out / "optimize_backtest-pnl_dd.csv") > 0


def test_two_workers_share_one_study_on_postgresql(
    manifest: Path, tmp_path: Path, pg_dsn: str
) -> None:
    """Two worker processes (as on two machines) fill one study in PostgreSQL."""
    optuna = pytest.importorskip("optuna")
    study = f"qf-test-{uuid.uuid4().hex[:10]}"
    space = _space(tmp_path)
    env = {**os.environ, "QUOTEFORGE_PROGRESS": "0"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "quoteforge.plugins.optimize",
                str(manifest),
                "--space",
                str(space),
                "--trials",
                "6",
                "--storage",
                pg_dsn,
                "--study",
                study,
                "--seed",
                str(seed),
                "--out",
                str(tmp_path / f"w{seed}"),
                "--pruner",
                "none",
                "--no-report",
                "--set",
                "run.duration=10s",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for seed in (1, 2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    url = storage_url(pg_dsn, tmp_path)
    try:
        assert [w.returncode for w in workers] == [0, 0], outputs
        trials = optuna.load_study(study_name=study, storage=url).get_trials()
        done = [t for t in trials if t.state.name == "COMPLETE"]
        # Each worker stops once the shared study holds 6; the other's last trial may
        # still be running then, so 6 or 7.
        assert 6 <= len(done) <= 7
        assert len({t.number for t in done}) == len(done)
        by_worker = {Path(t.user_attrs["run_dir"]).parent.parent.name for t in done}
        assert by_worker == {"w1", "w2"}
        for t in done:
            summary = _csv(Path(t.user_attrs["run_dir"]) / "summary.csv")
            assert t.value == pytest.approx(float(summary[0]["pnl"]), abs=1e-9)
        # Each worker's table lists the whole study.
        for out in ("w1", "w2"):
            assert len(_csv(tmp_path / out / f"{study}.csv")) >= 6
    finally:
        optuna.delete_study(study_name=study, storage=url)


SHARED_USDM = ROOT.parent / "shared" / "data" / "hftbacktest-binance" / "usdm_ethusdt_20240808.gz"
FUTURES_MANIFEST = """\
run: {name: fut, mode: backtest, duration: null, seed: 7, sample_interval: 1s}
exchanges:
  binance:
    type: replay
    params:
      protocol: binance_futures
      markets:
        ETH/USDT: {tick_size: "0.01", qty_step: "0.001"}
      latency: {market_data_ms: 5, order_ms: 10, jitter_ms: 0}
strategies:
  mm:
    type: pure_market_making
    exchange: binance
    symbols: ETH/USDT
    params: {spread_bps: 0.5, order_size: 0.5, inventory_limit: 5}
report: {html: false, png: false}
"""


def test_futures_windows_continue_the_recorded_book(
    tmp_path: Path, registry: PluginRegistry
) -> None:
    """Real USD-M traffic: every window after the first starts LIVE from its rebuilt
    snapshot and shows the whole recording's book at the same instants."""
    if not SHARED_USDM.is_file():
        message = f"{SHARED_USDM} is not here (the shared data folder sits beside the repository)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    from quoteforge.plugins.data_import import import_recording

    recording = tmp_path / "usdm.jsonl.gz"
    import_recording(
        "hftbacktest", [SHARED_USDM], recording, keep=["depth", "trade"], progress=False
    )
    windows = cut_windows(recording, "binance_futures", 3, tmp_path / "w")
    manifest = tmp_path / "fut.yaml"
    manifest.write_text(FUTURES_MANIFEST)
    runs = {}
    for name, data in [("whole", recording), ("w1", windows[1].path), ("w2", windows[2].path)]:
        loaded = load_manifest(manifest, registry, overrides=[f"run.data={data}"])
        run = asyncio.run(
            run_manifest(loaded, registry, run_dir=tmp_path / name, install_signals=False)
        )
        assert run.stop_reason.endswith("end of recorded data")
        runs[name] = _mids(tmp_path / name)
    for i in (1, 2):
        offset = int(windows[i].label.split("s", 1)[0])
        window = runs[f"w{i}"]
        assert len(window) >= 110  # LIVE from its first sample to the end
        assert all(mid == runs["whole"][k + offset] for k, mid in window.items())


def test_a_failing_trial_is_reported_and_the_study_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    space = _space(
        tmp_path,
        "params:\n  run.data: {type: categorical, choices: "
        "[examples/data/ethusdt_binance.jsonl, missing/nothing.jsonl]}\n",
    )
    out = tmp_path / "failing"
    args = ["examples/backtest.yaml", "--space", str(space), "--trials", "6", "--out", str(out)]
    assert optimize_main([*args, "--no-report", "--set", "report.html=false"]) == 1
    captured = capsys.readouterr()
    assert "trial(s) failed, e.g.: ValueError: replay exchange 'binance'" in captured.err
    assert "Traceback" not in captured.err
    rows = _csv(out / "backtest-pnl.csv")
    failed = [r for r in rows if r["state"] == "fail"]
    complete = [r for r in rows if r["state"] == "complete"]
    assert failed and complete and len(rows) == 6
    assert all("missing/nothing.jsonl" in r["run.data"] for r in failed)
    assert all("not found" in r["note"] for r in failed)
    assert rows[: len(complete)] == complete  # completed trials first


def test_a_trial_on_a_recording_that_breaks_off_fails_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partial backtest has no objective value to trust: its trial fails, saying the
    data broke off, and the study goes on with the whole recording's trials."""
    monkeypatch.chdir(ROOT)
    lines = (ROOT / "examples/data/ethusdt_binance.jsonl").read_text().splitlines(keepends=True)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("".join(lines[:200]) + "not a recording line\n" + "".join(lines[200:]))
    space = _space(
        tmp_path,
        "params:\n  run.data: {type: categorical, choices: "
        f"[examples/data/ethusdt_binance.jsonl, {damaged}]}}\n",
    )
    out = tmp_path / "partial"
    args = ["examples/backtest.yaml", "--space", str(space), "--trials", "6", "--out", str(out)]
    assert optimize_main([*args, "--no-report", "--set", "report.html=false"]) == 1
    err = capsys.readouterr().err
    assert "trial(s) failed, e.g.: partial run: binance: recording unreadable" in err
    rows = _csv(out / "backtest-pnl.csv")
    failed = [r for r in rows if r["state"] == "fail"]
    assert failed and len(failed) < len(rows)
    assert all(r["run.data"] == str(damaged) for r in failed)
    assert all("partial run: binance: recording unreadable" in r["note"] for r in failed)
    assert all("damaged.jsonl:201" in r["note"] for r in failed)
