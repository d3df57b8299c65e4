"""Fuzzing ``validate`` over mutated example manifests.

A seeded generator makes ``CASES`` manifests from the examples: keys dropped or renamed,
values replaced by edge values (0, -1, 1e308, .nan, .inf, huge integers, wrong types,
long strings, durations such as "0s"), alias bombs, deep nesting, undecodable bytes,
truncated files. Each case must end in one of two ways:

- refused: a ``ManifestError`` whose every line names the file, never another exception;
- accepted: and then a short simulation of it runs to the end without an error.

The cases run in a child process with a memory cap and a time limit per case, so a case
that hangs or grows without bound fails the test instead of the machine. Running a sim
for every accepted case would not fit the CI budget: the sims run for a seeded sample
of ``SIMS`` accepted cases of the offline examples, each with ``run.duration`` forced to
2 s of virtual time, metrics off and the run folder in a temporary directory.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CASES = 1200
SIMS = 40
SEED = 20261206
CASE_SECONDS = 5.0
SIM_SECONDS = 30.0
MEMORY_BYTES = 3 << 30
OFFLINE_EXCHANGES = {"sim", "replay", "offer_sim", "as_model"}
SIM_OVERRIDES = [
    "run.duration=2s",
    "metrics.port=null",
    "run.watch_manifest=false",
]

#: Kinds of mutation, repeated by weight: most change one value.
MUTATIONS = ["drop", "rename", "edge", "edge", "edge", "scale", "scale", "bomb", "deep", "bytes"]
MUTATIONS += ["truncate"]

EDGE_VALUES: list[Any] = [
    0,
    -1,
    1,
    0.0,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    math.nan,
    math.inf,
    -math.inf,
    2**63,
    2**64 + 1,
    -(2**70),
    10**30,
    True,
    None,
    "",
    "x",
    "x" * 5000,
    "../../../etc",
    "0s",
    "-5s",
    "1e400",
    "9" * 400 + "s",
    "0.0001ms",
    "${QF_FUZZ_UNSET}",
    [],
    {},
    [1, 2, 3],
    {"a": 1},
    b"\x00\xff",
]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        data = data[key]
    return data


def _bomb(depth: int) -> list[Any]:
    level: list[Any] = ["x"] * 9
    for _ in range(depth):
        level = [level] * 9  # one object shared nine times: yaml.dump writes aliases
    return level


def mutate(rng: random.Random, data: dict[str, Any]) -> tuple[str, bytes]:
    """One mutated manifest: (what was done, file bytes)."""
    paths = _paths(data)
    path = rng.choice(paths)
    parent = _parent(data, path)
    kind = rng.choice(MUTATIONS)
    where = ".".join(map(str, path))
    if kind == "drop":
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    elif kind == "rename" and isinstance(parent, dict):
        parent[f"{path[-1]}{rng.choice(['_', 's', 'X', ''])}x"] = parent.pop(path[-1])
    elif kind == "scale":
        # Plausible but extreme: the same value a thousand times larger or smaller, etc.
        value = parent[path[-1]]
        factor = rng.choice([0, 1e-9, 1e-3, 0.5, 2, 1e3, 1e6, 1e12, -1])
        if isinstance(value, bool) or not isinstance(value, int | float):
            value = 1
        parent[path[-1]] = type(value)(value * factor) if math.isfinite(value * factor) else 0
    elif kind == "bomb":
        parent[path[-1]] = _bomb(rng.randint(2, 7))
    elif kind != "deep":
        parent[path[-1]] = rng.choice(EDGE_VALUES)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000)
    raw = text.encode("utf-8")
    if kind == "deep":
        depth = rng.choice([40, 70, 500, 5000])
        raw += f"deep_{rng.randint(0, 9)}: {'[' * depth}1{']' * depth}\n".encode()
    elif kind == "bytes":
        at = rng.randrange(len(raw))
        raw = (
            raw[:at]
            + rng.choice([b"\xff", b"\xc3\x28", b"\x00", b"\x07", b"\xed\xa0\x80"])
            + raw[at:]
        )
    elif kind == "truncate":
        raw = raw[: rng.randrange(len(raw))]
    return f"{kind} {where}", raw


def make_cases(folder: Path) -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    bases = sorted((ROOT / "examples").glob("*.yaml"))
    loaded = {p: yaml.safe_load(p.read_text(encoding="utf-8")) for p in bases}
    cases = []
    for i in range(CASES):
        base = rng.choice(bases)
        data = json.loads(json.dumps(loaded[base]))  # a deep copy, plain types only
        what, raw = mutate(rng, data)
        path = folder / f"case-{i:04d}.yaml"
        path.write_bytes(raw)
        exchanges = loaded[base].get("exchanges") or {}
        offline = all(spec.get("type") in OFFLINE_EXCHANGES for spec in exchanges.values())
        cases.append(
            {"id": i, "path": str(path), "what": f"{base.name}: {what}", "offline": offline}
        )
    return cases


# -- the child process -------------------------------------------------------------------


class _TimeUpError(Exception):
    pass


def _worker(case_file: str, out_dir: str) -> None:
    import asyncio
    import resource
    import signal
    import traceback

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    os.chdir(ROOT)  # manifests name their data files relative to the repository

    def time_up(signum: int, frame: Any) -> None:
        raise _TimeUpError()

    signal.signal(signal.SIGALRM, time_up)
    from quoteforge.engine import Run
    from quoteforge.logs import configure_logging
    from quoteforge.manifest import ManifestError, load_manifest
    from quoteforge.registry import load_registry

    configure_logging("CRITICAL")
    registry = load_registry()
    cases = json.loads(Path(case_file).read_text())
    rng = random.Random(SEED)
    sims_left = SIMS
    for case in cases:
        result: dict[str, Any] = {"id": case["id"], "what": case["what"]}
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        try:
            loaded = load_manifest(case["path"], registry)
            result["outcome"] = "accepted"
        except ManifestError as exc:
            result["outcome"] = "refused"
            result["message"] = str(exc)
        except _TimeUpError:
            result["outcome"] = "error"
            result["message"] = f"validate took longer than {CASE_SECONDS}s"
        except BaseException:
            result["outcome"] = "error"
            result["message"] = traceback.format_exc()[-3000:]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        runnable = (
            result["outcome"] == "accepted"
            and case["offline"]
            and loaded.manifest.run.mode in ("sim", "backtest")
        )
        if runnable and sims_left > 0 and rng.random() < 0.5:
            sims_left -= 1
            signal.setitimer(signal.ITIMER_REAL, SIM_SECONDS)
            try:
                short = load_manifest(case["path"], registry, overrides=SIM_OVERRIDES)
                run_dir = Path(out_dir) / f"run-{case['id']:04d}"
                asyncio.run(Run(short, registry, run_dir=run_dir).run())
                result["sim"] = "ok"
            except _TimeUpError:
                result["sim"] = f"error: the 2 s sim took longer than {SIM_SECONDS}s"
            except BaseException:
                result["sim"] = "error: " + traceback.format_exc()[-3000:]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        result["seconds"] = round(time.monotonic() - started, 3)
        print(json.dumps(result), flush=True)


# -- the test --------------------------------------------------------------------------------


def test_every_mutated_manifest_is_refused_with_a_message_or_runs(tmp_path: Path) -> None:
    cases = make_cases(tmp_path)
    case_file = tmp_path / "cases.json"
    case_file.write_text(json.dumps(cases))
    env = {**os.environ, "BINANCE_API_KEY": "k", "BINANCE_API_SECRET": "s"}
    env |= {"KRAKEN_API_KEY": "k", "KRAKEN_API_SECRET": "s"}
    proc = subprocess.run(
        [sys.executable, __file__, str(case_file), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, (
        f"the fuzz worker died after {len(results)} cases "
        f"(next: {cases[len(results)]['what'] if len(results) < len(cases) else '-'}):\n"
        + proc.stderr[-3000:]
    )
    assert len(results) == CASES
    errors = [r for r in results if r["outcome"] == "error"]
    assert not errors, "\n\n".join(f"{r['what']}:\n{r['message']}" for r in errors[:5])
    for r in results:
        if r["outcome"] == "refused":
            label = cases[r["id"]]["path"]
            lines = r["message"].splitlines()
            assert lines and all(line.startswith(label) for line in lines), r
            assert "Traceback" not in r["message"]
    failed_sims = [r for r in results if r.get("sim", "ok") != "ok"]
    assert not failed_sims, "\n\n".join(f"{r['what']}:\n{r['sim']}" for r in failed_sims[:5])
    outcomes = [r["outcome"] for r in results]
    sims = sum("sim" in r for r in results)
    # The generator is worth something only if both ends are exercised.
    assert outcomes.count("refused") > CASES // 4 and outcomes.count("accepted") > CASES // 20
    assert sims >= SIMS // 2


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
