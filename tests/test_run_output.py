"""What ``quoteforge run`` tells its operator: the run folder first, progress lines when
stderr is not a terminal (CI, nohup, systemd), the results before the report is written,
and a summary instead of thousands of rows."""

from __future__ import annotations

import csv
import io
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

import quoteforge
from quoteforge.cli import SUMMARY_ROWS, format_summary, main
from quoteforge.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
OFFER_TAKER = ROOT / "examples" / "offer_taker.yaml"
PROGRESS = re.compile(r"INFO +progress quickstart: +(\d+)% ")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator starts it under nohup or CI: stdout and stderr are pipes."""
    env = {k: v for k, v in os.environ.items() if k != "QUOTEFORGE_PROGRESS"}
    return subprocess.run(
        [sys.executable, "-m", "quoteforge.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )


def test_run_without_a_terminal_prints_its_folder_then_progress_lines(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # --progress-every 0.000001: a line at every progress update (every 2,000 events),
    # so the count does not depend on how fast the machine is.
    proc = cli(
        "run", str(QUICKSTART), "--out", str(run_dir), "--set", "run.duration=2m",
        "--progress-every", "0.000001",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr.splitlines()
    assert err[0] == f"run folder: {run_dir}"  # before anything the run logs
    progress = [line for line in err if PROGRESS.search(line)]
    assert len(progress) >= 3, proc.stderr[-3000:]
    percents = [int(PROGRESS.search(line).group(1)) for line in progress]  # type: ignore[union-attr]
    assert percents == sorted(percents) and percents[-1] == 100
    last = progress[-1]
    assert "120/120 s" in last and "sim time 0:02:00" in last
    events = re.search(r"([\d,]+) events, ([\d,]+) fills, ([\d,]+) orders working", last)
    assert events is not None, last
    fills = int(events.group(2).replace(",", ""))
    with (run_dir / "summary.csv").open(newline="") as fh:
        # The last line is written when the duration is reached; the orders pulled after it
        # can still fill.
        assert 0 < fills <= sum(int(row["fill_count"]) for row in csv.DictReader(fh))
    # No bar characters in a log.
    assert "\r" not in proc.stderr and "█" not in proc.stderr
    # The results come before the report is written, and the report says how long it took.
    out = proc.stdout.splitlines()
    assert out[0].split()[:2] == ["market", "mid"] and len(out) == 2 + 3 + 2
    assert out[-1] == f"run folder: {run_dir}  (duration reached)"
    writing = next(i for i, line in enumerate(err) if "writing the report…" in line)
    assert re.search(r"report written in \d+\.\d s \(4 files\)", err[writing + 1]), err[writing:]


def test_quiet_run_prints_only_its_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = cli(
        "run", str(QUICKSTART), "--out", str(run_dir), "--quiet", "--set", "run.duration=30s",
        "--set", "report.html=false", "--set", "report.png=false", "--progress-every", "0.000001",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""
    assert proc.stderr.splitlines()[0] == f"run folder: {run_dir}"
    assert not PROGRESS.search(proc.stderr)
    assert (run_dir / "summary.csv").exists()


def test_progress_every_zero_means_no_progress_lines(tmp_path: Path) -> None:
    proc = cli(
        "run", str(QUICKSTART), "--out", str(tmp_path / "run"), "--set", "run.duration=30s",
        "--set", "report.html=false", "--set", "report.png=false", "--progress-every", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not PROGRESS.search(proc.stderr)
    assert "sim:BTC/USDT" in proc.stdout


def test_a_live_run_logs_progress_in_wall_clock_time(tmp_path: Path) -> None:
    """A live run (the simulated venue in wall-clock time) is not silent for its duration
    either: one line every --progress-every seconds, and one at the end."""
    proc = cli(
        "run", str(QUICKSTART), "--out", str(tmp_path / "run"), "--set", "run.mode=live",
        "--set", "run.duration=1s", "--set", "report.html=false", "--set", "report.png=false",
        "--progress-every", "0.2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if PROGRESS.search(line)]
    assert len(lines) >= 2, proc.stderr[-3000:]
    assert re.search(r"100% 1(\.0)?/1 s .*fills, \d+ orders working$", lines[-1]), lines[-1]
    assert "events" not in lines[-1]  # events are counted in a simulation only


@pytest.mark.parametrize("value", ["-1", "soon", "inf", "nan"])
def test_progress_every_refuses_what_is_not_seconds(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", str(QUICKSTART), "--progress-every", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--progress-every: expected seconds >= 0 (0: never), got {value!r}" in err


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([flag]) == 0
    expected = f"quoteforge {quoteforge.__version__} (Python {platform.python_version()})"
    assert capsys.readouterr().out == expected + "\n"
    proc = cli(flag)
    assert (proc.returncode, proc.stdout) == (0, expected + "\n")


def _row(market: str, pnl: float, fills: int) -> dict[str, Any]:
    return {
        "market": market,
        "mid": 10.0,
        "spread": 0.01,
        "inventory": 0.0,
        "pnl": pnl,
        "fill_count": fills,
        "notional": 10.0 * fills,
        "max_drawdown": 0.0,
    }


def test_many_markets_print_the_top_rows_and_totals() -> None:
    rows = [_row(f"x:M{i:03d}", float(i % 7) - 3.0, i % 4) for i in range(100)]
    rows[57] = _row("x:BIGLOSS", -500.0, 2)
    rows[12] = _row("x:BIGWIN", 400.0, 9)
    text = format_summary(rows, 20, more=Path("runs/r/summary.csv"))
    lines = text.splitlines()
    markets = [line.split()[0] for line in lines[2:22]]
    assert markets[:2] == ["x:BIGLOSS", "x:BIGWIN"]  # by |pnl|, losses too
    assert len(markets) == 20 and all(m.startswith("x:") for m in markets)
    assert lines[22] == "… and 80 more markets in runs/r/summary.csv"
    pnl = sum(r["pnl"] for r in rows)
    fills = sum(r["fill_count"] for r in rows)
    traded = sum(1 for r in rows if r["fill_count"])
    assert lines[23] == f"100 markets ({traded} traded): {fills:,} fills, pnl {pnl:,.6g} (sum)"
    assert len(lines) == 24


def test_few_markets_print_every_row() -> None:
    rows = [_row(f"x:M{i}", float(i), i) for i in range(SUMMARY_ROWS)]
    lines = format_summary(rows, SUMMARY_ROWS).splitlines()
    assert [line.split()[0] for line in lines[2:]] == [f"x:M{i}" for i in range(SUMMARY_ROWS)]


def test_offer_taker_prints_a_summary_not_every_ticker(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = cli(
        "run", str(OFFER_TAKER), "--out", str(run_dir), "--set", "run.duration=10s",
        "--set", "exchanges.offers.params.tickers=300", "--set", "run.sample_interval=5s",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert len(out) == 2 + SUMMARY_ROWS + 2 + 2, proc.stdout
    assert out[2 + SUMMARY_ROWS] == f"… and {300 - SUMMARY_ROWS} more markets in " + str(
        run_dir / "summary.csv"
    )
    assert out[3 + SUMMARY_ROWS].startswith("300 markets (")
    assert len((run_dir / "summary.csv").read_text().splitlines()) == 1 + 300


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_progress_logs_lines_instead_of_a_bar_off_a_terminal() -> None:
    seen: list[str] = []
    sink = logger.add(seen.append, format="{extra[component]} {message}", level="INFO")
    stream = _Pipe()
    try:
        with Progress(10, "job", "s", stream=stream, log_every=1e-9, status=lambda: "7 fills") as p:
            for _ in range(3):
                time.sleep(0.001)  # the clock moves on: every update is due a line
                p.update(2)
    finally:
        logger.remove(sink)
    assert stream.getvalue() == ""  # no bar drawn
    lines = [line.strip() for line in seen]
    assert [line.split()[2] for line in lines] == ["20%", "40%", "60%", "60%"]
    assert all(line.startswith("progress job: ") and line.endswith(", 7 fills") for line in lines)
    assert " 6/10 s [" in lines[-1]


def test_progress_log_every_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="log_every must be seconds > 0 or None"):
            Progress(10, log_every=bad)
    # QUOTEFORGE_PROGRESS=0 (a sweep's workers) silences the lines too.
    monkeypatch.setenv("QUOTEFORGE_PROGRESS", "0")
    assert Progress(10, stream=_Pipe(), log_every=1.0).log_every is None
