"""bench/hftbacktest_compare.py: answers --help and names the extra without hftbacktest,
and, where hftbacktest is installed, runs both tools on a slice of the real recording."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "hftbacktest_compare.py"
REAL = ROOT / "tests" / "fixtures" / "real" / "binance" / "usdm_ethusdt_20240808.gz"


def test_help_needs_no_hftbacktest() -> None:
    blocked = (
        "import runpy, sys; sys.modules['hftbacktest'] = None; sys.argv = [sys.argv[1], '--help'];"
        " runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocked, str(SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hftbacktest" in result.stdout and "--data" in result.stdout


def test_without_hftbacktest_it_names_the_extra(tmp_path: Path) -> None:
    blocked = (
        "import runpy, sys; sys.modules['hftbacktest'] = None; sys.argv = sys.argv[1:];"
        " runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    out = tmp_path / "r.json"
    result = subprocess.run(
        [sys.executable, "-c", blocked, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "pip install 'quoteforge[bench]'" in result.stderr
    assert not out.exists()


def test_both_tools_run_the_same_real_slice(tmp_path: Path) -> None:
    pytest.importorskip("hftbacktest")
    pytest.importorskip("numba")
    data = tmp_path / "slice.gz"
    with gzip.open(REAL, "rb") as src, gzip.open(data, "wb") as dst:
        for i, line in enumerate(src):
            if i >= 6000:
                break
            dst.write(line)
    out = tmp_path / "r.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(data), "--repeats", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    raw = results["raw_messages"]
    assert raw["depth"] > 0 and raw["trade"] > 0
    qf, hbt = results["quoteforge"], results["hftbacktest"]
    # quoteforge replays every depth diff and trade of the slice (the snapshot too).
    assert qf["records"] == raw["depth"] + raw["trade"] + 1
    assert qf["stop_reason"] == "binance: end of recorded data"
    assert hbt["feeds"] > 0 and hbt["event_rows"] > raw["depth"]
    for side in (qf, hbt):
        assert side["loop_s"] > 0 and side["records_per_s"] > 0
    assert results["ratios"]["loop_quoteforge_over_hftbacktest"] > 0
