"""``quoteforge run`` refuses what it cannot do with one line naming the cause: a log level
that does not exist, a run folder that cannot be made or already holds a run, a setting
the manifest could not check; a traceback is kept for errors nobody expected."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from quoteforge.cli import main

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
SHORT = ["--set", "run.duration=2s", "--set", "report.html=false", "--set", "report.png=false"]


def test_an_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", str(QUICKSTART), "--log-level", "FOO"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --log-level: invalid choice: 'FOO'" in err
    assert "'DEBUG'" in err and "Traceback" not in err


@pytest.mark.parametrize("where", ["afile", "afile/sub", "out_dir"])
def test_a_run_folder_that_cannot_be_made_is_named_in_one_line(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder\n")
    if where == "out_dir":  # the default folder, under run.out_dir
        args = ["--set", f"run.out_dir={blocker}/runs"]
    else:
        args = ["--out", str(tmp_path / where)]
    assert main(["run", str(QUICKSTART), *args, *SHORT]) == 2
    err = capsys.readouterr().err
    assert "quoteforge run: cannot create the run folder" in err
    assert str(blocker) in err
    assert "Traceback" not in err and "Errno" not in err
    assert blocker.read_text() == "not a folder\n"


def journal_rows(run_dir: Path) -> int:
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        count: int = conn.execute("SELECT count(*) FROM journal").fetchone()[0]
    finally:
        conn.close()
    return count


def test_out_refuses_a_folder_holding_another_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main(["run", str(QUICKSTART), "--out", str(run_dir), "--quiet", *SHORT]) == 0
    info, rows = (run_dir / "run.json").read_text(), journal_rows(run_dir)
    capsys.readouterr()
    seeded = [*SHORT, "--set", "run.seed=99"]
    assert main(["run", str(QUICKSTART), "--out", str(run_dir), "--quiet", *seeded]) == 2
    err = capsys.readouterr().err
    assert f"--out {run_dir} is not empty" in err
    assert "give another --out" in err and f"quoteforge run --resume {run_dir}" in err
    assert "run folder:" not in err  # refused before anything starts
    # The first run is untouched: no events of the second merged into its journal.
    assert (run_dir / "run.json").read_text() == info
    assert journal_rows(run_dir) == rows


def test_out_takes_an_empty_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "ready"
    run_dir.mkdir()
    assert main(["run", str(QUICKSTART), "--out", str(run_dir), "--quiet", *SHORT]) == 0
    assert json.loads((run_dir / "run.json").read_text())["stop_reason"] == "duration reached"


def test_a_setting_that_fails_at_start_is_one_message_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backtest = ROOT / "examples" / "backtest.yaml"
    out = ["--out", str(tmp_path / "run"), "--quiet", "--set", "run.data=nowhere.jsonl"]
    assert main(["run", str(backtest), *out]) == 1
    err = capsys.readouterr().err
    assert "run failed: replay exchange 'binance': recording 'nowhere.jsonl' not found" in err
    assert "Traceback" not in err
