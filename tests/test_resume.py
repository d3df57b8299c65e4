"""Resume that is exact or refused: a simulated run killed at any point and resumed has
the journal of a run that was never interrupted; a finished run is not traded again; a
replay that differs from the journal is refused and changes nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quoteforge.cli import main
from quoteforge.clock import SimClock
from quoteforge.journal import order_states
from quoteforge.orders import OrderManager, order_to_dict
from quoteforge.plugins.journal_sqlite import SqliteJournal
from quoteforge.resume import ResumeRefusedError, check_resumable
from quoteforge.runfiles import write_run_info

MANIFEST = """\
run: {name: resumable, mode: sim, duration: 300s, seed: 11, sample_interval: 1s}
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
    params: {spread_bps: 4, order_size: 0.05, levels: 2, inventory_limit: 1.0}
risk:
  position: {type: max_position, params: {max_position: 5}}
report: {html: false, png: false}
"""


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "quoteforge.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def journal(run_dir: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        return conn.execute(
            "SELECT event_id, kind, ts_ns, market, payload FROM journal ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def uninterrupted(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[tuple[object, ...]]]:
    base = tmp_path_factory.mktemp("whole")
    manifest = base / "m.yaml"
    manifest.write_text(MANIFEST)
    proc = cli("run", str(manifest), "--out", str(base / "run"), "--quiet")
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    rows = journal(base / "run")
    assert any(r[1] == "fill" for r in rows), "the reference run must trade"
    return manifest, rows


def kill_during_run(manifest: Path, run_dir: Path, after_rows: int | None, delay: float) -> int:
    """Start the manifest and SIGKILL it, either once its journal holds ``after_rows``
    rows or after ``delay`` seconds (whichever is asked). Returns the exit code: -9 when
    the kill landed, 0 when the run ended first."""
    proc = cli("run", str(manifest), "--out", str(run_dir), "--quiet")
    deadline = time.monotonic() + 120
    started = time.monotonic()
    while proc.poll() is None and time.monotonic() < deadline:
        if after_rows is None:
            if time.monotonic() - started >= delay:
                break
        elif (run_dir / "journal.sqlite").exists():
            try:
                if len(journal(run_dir)) >= after_rows:
                    break
            except sqlite3.Error:
                pass  # the writer is creating the table
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    return proc.returncode


def test_killed_sim_runs_resume_to_the_uninterrupted_journal(
    uninterrupted: tuple[Path, list[tuple[object, ...]]], tmp_path: Path
) -> None:
    manifest, whole = uninterrupted
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    outcomes = []
    for attempt in range(3):
        run_dir = tmp_path / f"try{attempt}" / "run"
        run_dir.parent.mkdir()
        # Kill after a random share of the first 60% of the reference journal was
        # written (or, once in a while, before the run folder even exists). The journal's
        # writer commits in batches, so the rows a reader sees lag the run: a kill aimed
        # at the last rows often lands after the run has finished (then the resume is
        # rightly refused, and with three such draws nothing would be resumed).
        share = 0.6 * rng.random()
        kill_during_run(manifest, run_dir, after_rows=max(1, int(share * len(whole))), delay=0)
        before = journal(run_dir) if (run_dir / "journal.sqlite").exists() else []
        proc = cli("run", "--resume", str(run_dir), "--quiet")
        _out, err = proc.communicate(timeout=180)
        context = f"random seed {seed}, attempt {attempt}, killed at {len(before)} rows"
        if proc.returncode == 0:
            assert journal(run_dir) == whole, context
            info = json.loads((run_dir / "run.json").read_text())
            assert info["finished_at"] and info["resumed"], context
            outcomes.append("resumed")
        else:
            # Refused: clean, with the reason, and the run folder as it was.
            assert proc.returncode == 2, context + err[-2000:]
            assert "Traceback" not in err, context + err[-2000:]
            assert "quoteforge run --resume:" in err, context + err[-2000:]
            if before:
                assert journal(run_dir) == before, context
            outcomes.append("refused")
    assert "resumed" in outcomes, f"random seed {seed}: no kill left a resumable run"


# The journal's byte budget per order event. A format-2 record (#19) holds the whole
# order once (17 fields, about 380 bytes of JSON with a 20-character client id) and then
# only what changed: client id, status and the changed fields, plus the venue report's
# non-empty fields (about 230 bytes); a fill adds its 12 fields (about 400 bytes). With
# this run's mix (1 order : 3 changes : 0.25 fills) that is about 265 bytes of payload a
# record, and SQLite adds the row (event id, kind, times, market) and the event-id index,
# about 150 bytes. Format 1 held the whole order and meta every time: about 580 bytes of
# payload and 730 on disk a record.
PAYLOAD_BUDGET = {"order": 420, "order_update": 300, "fill": 440}
MEAN_PAYLOAD_BUDGET = 300
MEAN_DISK_BUDGET = 480


def test_the_journal_stays_within_its_byte_budget_and_rebuilds_every_order(
    uninterrupted: tuple[Path, list[tuple[object, ...]]],
) -> None:
    manifest, rows = uninterrupted
    run_dir = manifest.parent / "run"
    events = [r for r in rows if r[1] in PAYLOAD_BUDGET]
    for event_id, kind, _ts, _market, payload in events:
        assert len(str(payload)) <= PAYLOAD_BUDGET[str(kind)], (event_id, payload)
    payload_bytes = sum(len(str(r[4])) for r in events)
    assert payload_bytes / len(events) <= MEAN_PAYLOAD_BUDGET
    disk = sum(p.stat().st_size for p in run_dir.glob("journal.sqlite*"))
    assert disk / len(rows) <= MEAN_DISK_BUDGET, (disk, len(rows))
    # Fidelity: the order manager rebuilt from the journal holds what the one reader,
    # OrderStates, makes of it, and every order ended as its last venue report says.
    records = list(SqliteJournal(run_dir / "journal.sqlite").read())
    om = OrderManager(None, SimClock(0), "qf")
    assert om.restore(records) == len(events)
    states = order_states(records)
    assert {o.client_id: order_to_dict(o) for o in om.all_orders()} == states
    assert len(states) == sum(1 for r in events if r[1] == "order")
    assert om.all_working() == []


def test_a_finished_sim_run_is_refused_and_left_alone(
    uninterrupted: tuple[Path, list[tuple[object, ...]]], tmp_path: Path
) -> None:
    manifest, whole = uninterrupted
    run_dir = tmp_path / "run"
    assert main(["run", str(manifest), "--out", str(run_dir), "--quiet"]) == 0
    proc = cli("run", "--resume", str(run_dir), "--quiet")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "ended at" in err and "start a new run instead" in err
    assert journal(run_dir) == whole


@pytest.mark.parametrize(
    ("change", "said"),
    [
        # The run folder's manifest is what a resume runs: a changed spread quotes
        # elsewhere, and the first differing record says so.
        ("spread", "differs from the journal"),
        # A duration shorter than the first life reached stops the replay before it has
        # produced the first life again: its stop's cancels are records the first life
        # did not write there. (It used to gain them, a summary and a finish, and could
        # never be resumed again.)
        ("duration", "which the first life did not"),
    ],
)
def test_a_replay_that_differs_is_refused_and_changes_nothing(
    change: str, said: str, uninterrupted: tuple[Path, list[tuple[object, ...]]], tmp_path: Path
) -> None:
    manifest, _ = uninterrupted
    # Ten times as long, so the run cannot end on its own before the kill lands.
    long_run = tmp_path / "long.yaml"
    long_run.write_text(manifest.read_text().replace("duration: 300s", "duration: 3000s"))
    run_dir = tmp_path / "run"
    assert kill_during_run(long_run, run_dir, after_rows=150, delay=0) == -signal.SIGKILL
    before = journal(run_dir)
    trace = (run_dir / "trace.jsonl").read_bytes()
    info = (run_dir / "run.json").read_text()
    assert len(before) > 0
    args = ["run", "--resume", str(run_dir), "--quiet"]
    if change == "spread":
        saved = run_dir / "manifest.yaml"
        saved.write_text(saved.read_text().replace("spread_bps: 4", "spread_bps: 9"))
    else:
        args += ["--set", "run.duration=2s"]
    proc = cli(*args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert "cannot be resumed exactly" in err and said in err
    assert "Traceback" not in err
    assert journal(run_dir) == before
    assert (run_dir / "trace.jsonl").read_bytes() == trace
    assert (run_dir / "run.json").read_text() == info
    assert not (run_dir / "trace.jsonl.replay").exists()
    assert not (run_dir / "summary.csv").exists()
    check_resumable(run_dir)  # still resumable


def test_a_resume_keeps_its_overrides_for_the_next_resume(tmp_path: Path) -> None:
    first = ["run.duration=60s"]
    write_run_info(tmp_path, {"overrides": first}, resume=False, manifest_text=MANIFEST)
    merged = [*first, "strategies.mm.params.spread_bps=40"]  # as `run --resume --set` merges
    write_run_info(tmp_path, {"overrides": merged}, resume=True, manifest_text=MANIFEST)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["overrides"] == merged and len(info["resumed"]) == 1


def test_a_finished_live_run_needs_continue(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text(MANIFEST)
    (tmp_path / "run.json").write_text(
        json.dumps({"mode": "live", "finished_at": "2026-12-01T00:00:00+00:00", "stop_reason": "x"})
    )
    with pytest.raises(ResumeRefusedError, match="Pass --continue to continue a finished run"):
        check_resumable(tmp_path)
    assert check_resumable(tmp_path, continue_finished=True)["mode"] == "live"
    (tmp_path / "run.json").write_text(json.dumps({"mode": "live"}))
    assert check_resumable(tmp_path)["mode"] == "live"  # interrupted: resumable as before


def test_continue_only_goes_with_resume(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    assert main(["run", str(manifest), "--continue"]) == 2
    assert "--continue goes with --resume" in capsys.readouterr().err
