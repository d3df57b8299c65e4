"""Bad inputs to the research and data commands (sweep, optimize, record, data import,
report): each is refused on one line with a non-zero exit, never a traceback and never
an empty or wrong result."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from quoteforge.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BACKTEST = str(EXAMPLES / "backtest.yaml")


# -- sweep -------------------------------------------------------------------------------


def test_sweep_unimportable_plugin_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["sweep", BACKTEST, "--grid", "run.seed=1,2", "--plugin", "no_such_mod_qf"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--plugin no_such_mod_qf: cannot import it" in err
    assert "Traceback" not in err


def test_sweep_out_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("x", encoding="utf-8")
    code = main(
        [
            "sweep",
            BACKTEST,
            "--grid",
            "run.seed=1,2",
            "--set",
            "run.duration=2s",
            "--out",
            str(taken),
        ]
    )
    assert code == 2
    assert f"--out {taken}: cannot create the sweep folder" in capsys.readouterr().err


def test_sweep_scheduler_with_a_bad_scheme_is_refused_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            BACKTEST,
            "--grid",
            "run.seed=1,2",
            "--backend",
            "dask",
            "--scheduler",
            "http://127.0.0.1:1",
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert "unknown scheme 'http'" in capsys.readouterr().err
    assert not out.exists()


def test_sweep_unknown_over_key_is_refused_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            BACKTEST,
            "--grid",
            "run.seed=1,2",
            "--set",
            "run.duration=2s",
            "--over",
            "nope",
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert "--over nope: not a --grid key (run.seed)" in capsys.readouterr().err
    assert not out.exists()  # nothing ran


# -- optimize ----------------------------------------------------------------------------


def test_optimize_float_range_on_an_integer_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "params:\n  strategies.mm.params.levels: {type: float, low: 1, high: 3}\n",
        encoding="utf-8",
    )
    out = tmp_path / "study"
    code = main(
        [
            "optimize",
            str(EXAMPLES / "optimize_backtest.yaml"),
            "--space",
            str(space),
            "--trials",
            "1",
            "--out",
            str(out),
            "--no-report",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "the search space does not fit the manifest, nothing was run" in err
    assert "strategies.mm.params.levels" in err and "valid integer" in err
    assert not out.exists()


# -- data import -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty.txt", "empty.gz"])
def test_data_import_of_an_empty_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    source = tmp_path / name
    source.write_bytes(gzip.compress(b"") if name.endswith(".gz") else b"")
    out = tmp_path / "out.jsonl"
    code = main(["data", "import", "hftbacktest", str(source), "--out", str(out)])
    assert code == 1
    assert "the input holds no lines (an empty file)" in capsys.readouterr().err
    assert not out.exists()


def test_data_import_with_every_line_bad_is_refused_even_when_skipping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bad.txt"
    source.write_text("hello\nworld\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = main(
        ["data", "import", "hftbacktest", str(source), "--out", str(out), "--skip-bad-lines"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "no record: 2 of 2 lines were bad" in err
    assert not out.exists()


# -- record ------------------------------------------------------------------------------


def test_record_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["record", BACKTEST, "--out", "x.jsonl", "--log-level", "LOUD"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "argument --log-level: invalid choice: 'LOUD'" in err
    assert "Traceback" not in err


def test_record_out_that_is_a_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "rec.jsonl"
    folder.mkdir()
    code = main(["record", BACKTEST, "--out", str(folder), "--append"])
    assert code == 2
    assert f"--out {folder} is a folder" in capsys.readouterr().err


# -- report ------------------------------------------------------------------------------


def test_report_of_an_empty_run_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "manifest.yaml").write_text("run: {name: x}\n", encoding="utf-8")
    (tmp_path / "trace.jsonl").write_text("", encoding="utf-8")
    code = main(["report", str(tmp_path)])
    assert code == 2
    assert "holds no market data" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_report_summary_that_is_not_utf8_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "trace.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "summary.csv").write_bytes(b"market,mid\n\xff\xfe\n")
    code = main(["report", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "summary.csv, line 2: not UTF-8 text" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "grids",
    [
        ["run.seed=1..100000000"],  # built up front, it exhausted the memory: killed, no word
        ["run.seed=1..400", "strategies.mm.params.spread_bps=1..400"],
    ],
)
def test_a_grid_of_too_many_runs_is_refused_before_it_is_built(
    grids: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sweep", BACKTEST, "--out", str(tmp_path / "sweep")]
    for grid in grids:
        args += ["--grid", grid]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "runs, over the 100,000 a sweep runs" in err and "quoteforge optimize" in err
    assert not (tmp_path / "sweep").exists()
