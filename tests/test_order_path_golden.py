"""The order path gives the same outputs as the recorded golden runs: the benchmark's
active backtest (recorded Binance diffs and trades, quotes requoted and filled) and the
quickstart sim run. Same seeds, same fills, same journal rows (kind, time, market, event
id, payload, in journal order), same trace.jsonl (fills, positions, PnL, our quotes).

A change to the order path (plan, risk, breakers, order manager, venue, acknowledgement,
fill, journal) that changes any of these is a change of behaviour, not a speed-up. When a
behaviour change is intended, record the new digests and say why in the commit:

    python tests/test_order_path_golden.py --record           # the small runs CI checks
    python tests/test_order_path_golden.py --record --full    # also the benchmark's size

``QUOTEFORGE_GOLDEN_FULL=1`` also checks the full-size runs (200k diffs, 10 minutes).

The trace is compared on the fields each record type had when the digests were recorded
(``trace_keys`` in the golden file): a field a later feature adds to the trace is not a
change of the order path, a field that changed or went missing is.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from quoteforge.engine import run_manifest
from quoteforge.manifest import load_manifest
from quoteforge.registry import PluginRegistry, load_registry

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "order_path_golden.json"
sys.path.insert(0, str(ROOT / "bench"))

#: name -> (kind, size): bench events or quickstart duration.
CASES: dict[str, tuple[str, str]] = {
    "backtest_active_20k": ("backtest", "20000"),
    "quickstart_2m": ("quickstart", "2m"),
}
FULL_CASES: dict[str, tuple[str, str]] = {
    "backtest_active_200k": ("backtest", "200000"),
    "quickstart_10m": ("quickstart", "10m"),
}


def trace_keys(trace: bytes) -> dict[str, list[str]]:
    """Per record type, the fields of the trace's records (in first-seen order)."""
    keys: dict[str, list[str]] = {}
    for line in trace.splitlines():
        record = json.loads(line)
        seen = keys.setdefault(record["type"], [])
        seen.extend(k for k in record if k not in seen)
    return keys


def trace_digest(trace: bytes, keys: dict[str, list[str]]) -> str:
    """The trace's records reduced to ``keys`` (a field missing is a difference)."""
    digest = hashlib.sha256()
    for line in trace.splitlines():
        record = json.loads(line)
        fields = keys.get(record["type"], sorted(record))
        row = [record.get(k, "<missing>") for k in fields]
        digest.update(json.dumps([record["type"], row], separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def run_outputs(run_dir: Path, keys: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Digests and counts of what a finished run wrote; ``keys``: the trace fields to
    compare (default: those of this run's trace)."""
    db = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        rows = db.execute(
            "SELECT kind, ts_ns, market, event_id, payload FROM journal ORDER BY seq"
        ).fetchall()
    finally:
        db.close()
    journal = hashlib.sha256()
    kinds: dict[str, int] = {}
    for kind, ts_ns, market, event_id, payload in rows:
        journal.update(f"{kind}\x1f{ts_ns}\x1f{market}\x1f{event_id}\x1f{payload}\x1e".encode())
        kinds[kind] = kinds.get(kind, 0) + 1
    trace = (run_dir / "trace.jsonl").read_bytes()
    keys = trace_keys(trace) if keys is None else keys
    fills = b"\n".join(line for line in trace.splitlines() if line.startswith(b'{"type":"fill"'))
    return {
        "journal_rows": kinds,
        "journal_sha256": journal.hexdigest(),
        "trace_lines": trace.count(b"\n"),
        "trace_sha256": trace_digest(trace, keys),
        "trace_keys": keys,
        "fills": fills.count(b"\n") + 1 if fills else 0,
        "fills_sha256": trace_digest(fills, keys),
    }


def run_backtest(registry: PluginRegistry, events: int, base: Path) -> Path:
    from backtest_bench import STRATEGY, _registry, derive_trades, run_engine, write_recording
    from book_bench import generate

    snapshot, messages = generate(events)
    trades = derive_trades(snapshot, messages, 0.4)
    data = base / "btcusdt.jsonl"
    write_recording(data, snapshot, messages, trades)
    run_dir = base / "run"
    run_engine(_registry(), data, run_dir, "top", strategy=STRATEGY)
    return run_dir


def run_quickstart(registry: PluginRegistry, duration: str, base: Path) -> Path:
    loaded = load_manifest(
        ROOT / "examples" / "quickstart.yaml",
        registry,
        overrides=[f"run.duration={duration}", "report.html=false", "report.png=false"],
    )
    run_dir = base / "run"
    asyncio.run(run_manifest(loaded, registry, run_dir=run_dir, install_signals=False))
    return run_dir


def outputs(
    registry: PluginRegistry, case: tuple[str, str], keys: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    kind, size = case
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "backtest":
            run_dir = run_backtest(registry, int(size), Path(tmp))
        else:
            run_dir = run_quickstart(registry, size, Path(tmp))
        return run_outputs(run_dir, keys)


def _cases() -> list[str]:
    names = list(CASES)
    if os.environ.get("QUOTEFORGE_GOLDEN_FULL") == "1":
        names += list(FULL_CASES)
    return names


@pytest.mark.parametrize("name", _cases())
def test_order_path_outputs_match_the_golden_run(registry: PluginRegistry, name: str) -> None:
    golden = json.loads(GOLDEN.read_text())
    assert name in golden, f"no golden digest for {name}: record it (module docstring)"
    want = golden[name]
    got = outputs(registry, {**CASES, **FULL_CASES}[name], want["trace_keys"])
    # Counts first: a mismatch there says more than a digest.
    for key in ("journal_rows", "fills", "trace_lines"):
        assert got[key] == want[key], f"{name}: {key} {got[key]} != golden {want[key]}"
    assert got == want


def record(full: bool) -> None:
    from quoteforge.logs import configure_logging

    configure_logging("WARNING")
    registry = load_registry()
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    cases = {**CASES, **(FULL_CASES if full else {})}
    for name, case in cases.items():
        golden[name] = outputs(registry, case)
        print(name, json.dumps(golden[name]))
    GOLDEN.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    if "--record" in sys.argv:
        record("--full" in sys.argv)
    else:
        print(__doc__)
