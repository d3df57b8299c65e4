"""The command line: validate, manifest schema, exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quoteforge.cli import format_summary, main

ROOT = Path(__file__).resolve().parent.parent


def test_validate_ok_and_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ROOT / "examples" / "quickstart.yaml")]) == 0
    assert "ok — mode sim, 1 exchange(s), 3 strategy(ies)" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "examples" / "quickstart.yaml")
        .read_text()
        .replace("spread_bps: 4", "spread_bps: -4")
    )
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "manifest refused:" in err
    assert "strategies.mm.params.spread_bps: Input should be greater than 0" in err


def test_validate_with_override(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", str(ROOT / "examples" / "quickstart.yaml"), "--set", "run.mode=warp"])
    assert code == 2
    assert "run.mode (from --set)" in capsys.readouterr().err


def test_manifest_schema_is_json_schema_with_plugin_params(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["manifest", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"run", "exchanges", "strategies", "risk"} <= set(schema["properties"])
    plugins = schema["x-quoteforge-plugin-params"]
    pmm = plugins["strategy:pure_market_making"]
    assert pmm["properties"]["spread_bps"]["description"]
    assert pmm["additionalProperties"] is False
    assert "exchange:sim" in plugins


def test_run_requires_manifest_or_resume(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert "give a MANIFEST or --resume RUN_DIR" in capsys.readouterr().err


def test_resume_of_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_only_the_strategy_node_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A split run's strategy node resumes its run folder (its journal holds the orders
    and the position); the other nodes start again fresh."""
    (tmp_path / "run.json").write_text(json.dumps({"mode": "live", "role": "execution"}))
    (tmp_path / "manifest.yaml").write_text("run: {name: x}\n")
    assert main(["run", "--resume", str(tmp_path), "--node", "execution"]) == 2
    assert "only the strategy node resumes" in capsys.readouterr().err
    assert main(["node", "marketdata", str(tmp_path / "manifest.yaml"), "--resume"]) == 2
    assert "--resume is for the strategy node" in capsys.readouterr().err
    assert main(["node", "strategy", "m.yaml", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_summary_table_format() -> None:
    text = format_summary(
        [
            {
                "market": "sim:A/B",
                "mid": 100.5,
                "spread": 0.01,
                "inventory": -1.0,
                "pnl": 2.5,
                "fill_count": 3,
                "notional": 301.5,
                "max_drawdown": 0.5,
            },
            {
                "market": "sim:C/D",
                "mid": None,
                "spread": None,
                "inventory": 0.0,
                "pnl": 0.0,
                "fill_count": 0,
                "notional": 0.0,
                "max_drawdown": 0.0,
            },
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == [
        "market",
        "mid",
        "spread",
        "inventory",
        "pnl",
        "fill_count",
        "notional",
        "max_drawdown",
    ]
    assert lines[2].startswith("sim:A/B") and "100.5" in lines[2]
    assert lines[3].split()[1] == "-"  # a market with no book shows a dash, not "None"


def test_validate_refuses_hostile_files_with_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quickstart = (ROOT / "examples" / "quickstart.yaml").read_text()
    bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    bomb += [
        f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    cases = {
        "bomb.yaml": ("\n".join(bomb) + "\n").encode(),
        "deep.yaml": quickstart.encode() + b"x: " + b"[" * 1000 + b"]" * 1000 + b"\n",
        "latin1.yaml": quickstart.replace("name: quickstart", "name: caf\xe9").encode("latin-1"),
        "list.yaml": b"- run\n",
        "inf.yaml": quickstart.replace("spread_bps: 4", "spread_bps: .inf").encode(),
        "escape.yaml": quickstart.replace("name: quickstart", "name: ../../../x").encode(),
    }
    expected = {
        "bomb.yaml": "YAML aliases expand to more than 10000 values",
        "deep.yaml": "nested more than 64 levels deep",
        "latin1.yaml": "not UTF-8 text (byte 0xe9",
        "list.yaml": "a manifest is a mapping",
        "inf.yaml": "is not a finite number",
        "escape.yaml": "run.name: Value error, a run name may hold",
    }
    assert "name: quickstart" in quickstart and "spread_bps: 4" in quickstart
    for name, raw in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        assert main(["validate", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"manifest refused:\n{path}:"), err
        assert expected[name] in err and "Traceback" not in err
        # run refuses the same way, before a run folder exists
        assert main(["run", str(path), "--out", str(tmp_path / f"run-{name}")]) == 2
        assert expected[name] in capsys.readouterr().err
        assert not (tmp_path / f"run-{name}").exists()
