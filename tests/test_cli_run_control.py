"""``quoteforge kill`` and ``quoteforge reset``: commands of the run_control_cli plugin that
act on a running run through its folder; ``reset`` names only what the run can reset
and never leaves a request behind for a run that will not read it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from brokers import require_shared_broker

from quoteforge.cli import main
from quoteforge.engine import RESET_FILE, Run
from quoteforge.manifest import load_manifest
from quoteforge.plugins.plugins_cli import plugin_rows
from quoteforge.registry import PluginRegistry

MANIFEST = """\
run: {name: ctl, duration: 1h, seed: 3}
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
    params: {spread_bps: 4, order_size: 0.05}
breakers: {max_drawdown: 1000000}
report: {html: false, png: false}
"""


def run_folder(tmp_path: Path, **info: object) -> Path:
    """A run folder as a run writes it: the manifest copy and run.json."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.yaml").write_text(MANIFEST)
    fields = {"run_id": "ctl-1", "pid": os.getpid(), "overrides": [], **info}
    (run_dir / "run.json").write_text(json.dumps(fields))
    return run_dir


def test_kill_and_reset_are_plugin_commands(
    registry: PluginRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = {(r["kind"], r["name"]): r for r in plugin_rows(registry)}
    for name in ("kill", "reset"):
        assert rows[("command", name)]["plugin"] == "run_control_cli"
    with pytest.raises(SystemExit) as exited:
        main(["reset", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage: quoteforge reset [-h] [--breaker BREAKER] run" in out


def test_kill_and_reset_refuse_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kill", str(tmp_path)]) == 2
    assert main(["reset", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("is not a run folder (no run.json)") == 2


@pytest.mark.parametrize("who", ["nonsense", "sim:ETH/USDT", "kraken:BTC/USDT", "drawdwn"])
def test_reset_refuses_a_name_the_run_does_not_have(
    who: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = run_folder(tmp_path)
    assert main(["reset", str(run_dir), "--breaker", who]) == 2
    err = capsys.readouterr().err
    assert f"quoteforge reset: no breaker or market {who!r} in run ctl-1" in err
    assert "all, run, a breaker kind (pnl_floor, " in err and "market key (sim:BTC/USDT)" in err
    assert not (run_dir / RESET_FILE).exists()


@pytest.mark.parametrize("who", ["all", "run", "drawdown", "sim:BTC/USDT"])
def test_reset_of_a_running_run_writes_the_request(
    who: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = run_folder(tmp_path)
    assert main(["reset", str(run_dir), "--breaker", who]) == 0
    assert f"breaker reset ({who}) requested" in capsys.readouterr().out
    assert (run_dir / RESET_FILE).read_text() == f"{who}\n"


def test_reset_of_a_finished_run_is_refused_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = run_folder(tmp_path, finished_at="2026-12-07T08:00:00", stop_reason="duration")
    assert main(["reset", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "run ctl-1 already finished (duration): nothing to reset" in err
    assert not (run_dir / RESET_FILE).exists()


def test_reset_of_a_run_whose_process_is_gone_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    child = [sys.executable, "-c", "import os; print(os.getpid())"]
    gone = subprocess.run(child, text=True, capture_output=True, check=True)
    run_dir = run_folder(tmp_path, pid=int(gone.stdout))
    assert main(["reset", str(run_dir), "--breaker", "drawdown"]) == 1
    err = capsys.readouterr().err
    assert f"its process {int(gone.stdout)} is gone" in err and "--resume" in err
    assert not (run_dir / RESET_FILE).exists()


def test_a_running_run_takes_the_reset_request(registry: PluginRegistry, tmp_path: Path) -> None:
    path = tmp_path / "ctl.yaml"
    path.write_text(MANIFEST)
    run_dir = tmp_path / "live"
    run = Run(load_manifest(path, registry), registry, run_dir=run_dir, manifest_path=path)

    async def scenario() -> tuple[int, int]:
        task = asyncio.create_task(run.run())
        while not (run_dir / "run.json").exists():
            await asyncio.sleep(0.05)
        refused = main(["reset", str(run_dir), "--breaker", "sim:NOPE/USDT"])
        code = main(["reset", str(run_dir), "--breaker", "sim:BTC/USDT"])
        for _ in range(60):  # the run polls its folder four times a second
            await asyncio.sleep(0.05)
            if not (run_dir / RESET_FILE).exists():
                break
        assert not (run_dir / RESET_FILE).exists(), "the run did not read the request"
        run.request_stop("test done")
        await task
        return refused, code

    assert asyncio.run(scenario()) == (2, 0)
    # Once the run has finished, a reset is refused and no file is left for nobody.
    assert main(["reset", str(run_dir)]) == 1
    assert not (run_dir / RESET_FILE).exists()


def test_kill_reset_of_a_one_process_run_says_nothing_is_latched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = run_folder(tmp_path)
    assert main(["kill", str(run_dir), "--reset"]) == 2
    err = capsys.readouterr().err
    assert "run ctl-1 ran in one process" in err and "nothing is latched" in err
    assert not (run_dir / "KILL").exists()


def test_kill_reset_names_what_the_bus_section_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the bus is reached: a variable it names and the environment lacks is said,
    with the file; the venues' keys are not asked for."""
    monkeypatch.delenv("QF_TEST_BUS_PASSWORD", raising=False)
    run_dir = run_folder(tmp_path, role="execution", name="ctl")
    text = MANIFEST.replace(
        "type: sim\n    params:", 'type: sim\n    secrets: {api_key: "${NOPE}"}\n    params:'
    )
    text += 'bus: {type: mqtt, params: {port: 1, password: "${QF_TEST_BUS_PASSWORD}"}}\n'
    (run_dir / "manifest.yaml").write_text(text)
    assert main(["kill", str(run_dir), "--reset"]) == 2
    err = capsys.readouterr().err
    assert "manifest.yaml" in err and "QF_TEST_BUS_PASSWORD is not set" in err
    assert "NOPE" not in err


def test_kill_reset_reaches_the_broker_the_nodes_were_given_with_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder's manifest names an unreachable broker; the node ran with
    --set bus.params.port=1883 (kept in its run.json): the reset goes there."""
    port = require_shared_broker()
    run_dir = run_folder(
        tmp_path,
        role="execution",
        name=f"ctl{uuid.uuid4().hex[:8]}",
        overrides=[f"bus.params.port={port}"],
    )
    bus = "bus: {type: mqtt, params: {host: 127.0.0.1, port: 1, insecure: true}}\n"
    (run_dir / "manifest.yaml").write_text(MANIFEST + bus)
    assert main(["kill", str(run_dir), "--reset"]) == 0, capsys.readouterr().err
    assert "no kill switch was latched; nothing to clear" in capsys.readouterr().out
