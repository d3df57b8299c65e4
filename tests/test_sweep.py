"""Parameter sweeps: grid parsing, validation before any run, parallel runs, one table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from quoteforge.plugins.sweep import (
    GridAxis,
    SweepError,
    expand_grid,
    parse_grid,
    run_sweep,
    sweep_main,
)
from quoteforge.registry import PluginRegistry

MANIFEST = """\
run: {name: swp, duration: 20s, seed: 1, sample_interval: 5s, watch_manifest: false}
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


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "swp.yaml"
    path.write_text(MANIFEST)
    return path


def test_parse_grid_values_and_ranges() -> None:
    assert parse_grid("a.b=1,2, 3") == GridAxis("a.b", ("1", "2", "3"))
    assert parse_grid("run.seed=3..5") == GridAxis("run.seed", ("3", "4", "5"), is_range=True)
    for bad, message in [
        ("run.seed", "expected KEY=v1,v2"),
        ("=1,2", "dotted path"),
        ("a..b=1", "dotted path"),
        ("run.seed=5..3", "is empty"),
        ("a=1,,2", "empty value"),
        ("a=1,1", "listed twice"),
    ]:
        with pytest.raises(SweepError, match=message):
            parse_grid(bad)


def test_expand_grid_is_the_cartesian_product() -> None:
    combos = expand_grid([parse_grid("x=1,2"), parse_grid("y=a,b,c")])
    assert len(combos) == 6
    assert combos[0] == {"x": "1", "y": "a"} and combos[-1] == {"x": "2", "y": "c"}
    with pytest.raises(SweepError, match="given twice: x"):
        expand_grid([parse_grid("x=1"), parse_grid("x=2")])


def test_two_by_two_grid_gives_four_runs_in_one_table(
    manifest: Path, tmp_path: Path, registry: PluginRegistry
) -> None:
    out = tmp_path / "out"
    path, rows = run_sweep(
        manifest,
        [parse_grid("strategies.mm.params.spread_bps=4,8"), parse_grid("run.seed=1..2")],
        jobs=2,
        out=out,
        registry=registry,
    )
    runs = [r for r in rows if r["kind"] == "run"]
    assert len(runs) == 4
    assert {(r["strategies.mm.params.spread_bps"], r["run.seed"]) for r in runs} == {
        ("4", "1"),
        ("4", "2"),
        ("8", "1"),
        ("8", "2"),
    }
    assert all(r["market"] == "sim:BTC/USDT" and r["fill_count"] > 0 for r in runs)
    # Each run is a normal run with its own folder.
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 4
    assert all((f / "summary.csv").exists() and (f / "journal.sqlite").exists() for f in folders)
    # A wider spread is a different run: the seeds alone do not decide the outcome.
    by = {(r["strategies.mm.params.spread_bps"], r["run.seed"]): r["pnl"] for r in runs}
    assert by[("4", "1")] != by[("8", "1")]
    # Mean and sd over the seeds, per spread.
    with path.open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows)
    means = [r for r in table if r["kind"] == "mean"]
    assert sorted(r["strategies.mm.params.spread_bps"] for r in means) == ["4", "8"]
    for mean in means:
        spread = mean["strategies.mm.params.spread_bps"]
        pnls = [by[(spread, "1")], by[(spread, "2")]]
        assert float(mean["pnl"]) == pytest.approx(sum(pnls) / 2, rel=1e-6)
        assert mean["runs"] == "2"


def test_a_bad_key_is_refused_before_anything_runs(
    manifest: Path, tmp_path: Path, registry: PluginRegistry
) -> None:
    out = tmp_path / "never"
    expected = r"(?s)nothing was run.*spred_bps.*unknown key.*in 6 of 6 combinations"
    with pytest.raises(SweepError, match=expected):
        run_sweep(
            manifest,
            [parse_grid("run.seed=1..3"), parse_grid("strategies.mm.params.spred_bps=4,8")],
            out=out,
            registry=registry,
        )
    assert not out.exists()


def test_one_bad_value_among_good_ones_is_refused(
    manifest: Path, tmp_path: Path, registry: PluginRegistry
) -> None:
    out = tmp_path / "never"
    expected = r"(?s)in 1 of 2 combinations, e\.g\. \[strategies\.mm\.params\.spread_bps=-1\]"
    with pytest.raises(SweepError, match=expected):
        run_sweep(
            manifest,
            [parse_grid("strategies.mm.params.spread_bps=4,-1")],
            out=out,
            registry=registry,
        )
    assert not out.exists()


def test_sweep_main_reports_usage_errors(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sweep_main([str(manifest), "--grid", "run.sed=1,2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "sweep refused" in err and "run.sed" in err and "unknown key" in err
    assert sweep_main([str(manifest)]) == 2
    assert "at least one --grid" in capsys.readouterr().err


def test_sweep_main_prints_the_table(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = sweep_main(
        [
            str(manifest),
            "--grid",
            "run.seed=1..2",
            "--set",
            "run.duration=5s",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "sim:BTC/USDT" in text and "mean" in text and "2 runs" in text
    assert (tmp_path / "o" / "sweep.csv").exists()


def test_dask_cluster_gives_the_same_table_as_local_processes(
    manifest: Path, tmp_path: Path, registry: PluginRegistry
) -> None:
    distributed = pytest.importorskip("distributed")
    axes = [parse_grid("strategies.mm.params.spread_bps=4,8"), parse_grid("run.seed=1..2")]
    local_path, local_rows = run_sweep(
        manifest, axes, jobs=2, out=tmp_path / "local", registry=registry
    )
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        dask_path, dask_rows = run_sweep(
            manifest,
            axes,
            out=tmp_path / "dask",
            registry=registry,
            backend="dask",
            scheduler=cluster.scheduler_address,
        )
    assert len([r for r in dask_rows if r["kind"] == "run"]) == 4
    assert dask_rows == local_rows  # same seeds, same runs, same table
    assert dask_path.read_text() == local_path.read_text()
    folders = sorted(p.name for p in (tmp_path / "dask").iterdir() if p.is_dir())
    assert folders == sorted(p.name for p in (tmp_path / "local").iterdir() if p.is_dir())


def test_sweep_main_starts_a_local_dask_cluster(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("distributed")
    args = [str(manifest), "--grid", "run.seed=1..2", "--set", "run.duration=5s"]
    assert sweep_main([*args, "--out", str(tmp_path / "l")]) == 0
    capsys.readouterr()
    code = sweep_main([*args, "--backend", "dask", "--jobs", "2", "--out", str(tmp_path / "d")])
    assert code == 0
    assert "2 runs" in capsys.readouterr().out
    assert (tmp_path / "d" / "sweep.csv").read_text() == (tmp_path / "l" / "sweep.csv").read_text()


def test_dask_backend_usage_errors(
    manifest: Path, tmp_path: Path, registry: PluginRegistry
) -> None:
    axes = [parse_grid("run.seed=1..2")]
    with pytest.raises(SweepError, match="--scheduler is the address of a Dask cluster"):
        run_sweep(manifest, axes, out=tmp_path / "x", registry=registry, scheduler="tcp://h:1")
    with pytest.raises(SweepError, match="--backend 'ray': choose one of local, dask"):
        run_sweep(manifest, axes, out=tmp_path / "x", registry=registry, backend="ray")
    pytest.importorskip("distributed")
    with pytest.raises(SweepError, match="expected an address like tcp://"):
        run_sweep(
            manifest,
            axes,
            out=tmp_path / "x",
            registry=registry,
            backend="dask",
            scheduler="localhost",
        )


def test_a_run_whose_recording_breaks_off_is_an_error_row_kept_out_of_the_means(
    tmp_path: Path, registry: PluginRegistry
) -> None:
    root = Path(__file__).resolve().parent.parent
    lines = (root / "examples/data/ethusdt_binance.jsonl").read_text().splitlines(keepends=True)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("".join(lines[:200]) + "not a recording line\n" + "".join(lines[200:]))
    _, rows = run_sweep(
        root / "examples" / "backtest.yaml",
        [parse_grid(f"run.data={root / 'examples/data/ethusdt_binance.jsonl'},{damaged}")],
        out=tmp_path / "out",
        fixed=["report.html=false", "report.png=false"],
        registry=registry,
    )
    [error] = [r for r in rows if r["kind"] == "error"]
    assert error["run.data"] == str(damaged)
    assert error["error"].startswith("partial run: binance: recording unreadable: ")
    [whole] = [r for r in rows if r["kind"] == "run"]
    assert whole["fill_count"] > 0
