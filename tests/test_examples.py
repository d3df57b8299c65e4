"""Every example manifest validates, and the offline ones run in a short form, trade, and
stay within their venue profile's limits."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import yaml

from quoteforge.engine import run_manifest
from quoteforge.exchanges.sim import as_model, offer_sim
from quoteforge.manifest import load_manifest, parse_duration
from quoteforge.registry import PluginRegistry
from quoteforge.strategies import offer_taker

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SHORT_S = 30.0
OFFLINE_MODES = ("sim", "backtest")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@pytest.fixture(scope="module")
def examples_registry(registry: PluginRegistry) -> PluginRegistry:
    for module in (offer_sim, as_model, offer_taker):
        registry.register_module(module)  # a no-op once the entry points provide them
    return registry


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Manifests name their data files relative to the repository, as the README runs them.
    monkeypatch.chdir(ROOT)


def _fake_secrets(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENV.findall(path.read_text(encoding="utf-8")):
        monkeypatch.setenv(name, f"example-{name.lower()}")


def test_the_examples_cover_every_strategy(examples_registry: PluginRegistry) -> None:
    used = set()
    for path in EXAMPLES:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        used |= {spec["type"] for spec in data["strategies"].values()}
    shipped = {
        "avellaneda_stoikov",
        "adaptive_binary",
        "ladder",
        "volatility_guard",
        "offer_taker",
        "pure_market_making",
        "cross_venue_taker",
    }
    assert shipped <= used


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates(
    path: Path, examples_registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_secrets(path, monkeypatch)
    loaded = load_manifest(path, examples_registry)
    assert loaded.manifest.strategies


OFFLINE = [
    p
    for p in EXAMPLES
    if yaml.safe_load(p.read_text(encoding="utf-8")).get("run", {}).get("mode", "sim")
    in OFFLINE_MODES
]


@pytest.mark.parametrize("path", OFFLINE, ids=[p.name for p in OFFLINE])
def test_offline_example_runs_short_and_trades(
    path: Path,
    examples_registry: PluginRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_secrets(path, monkeypatch)
    declared = yaml.safe_load(path.read_text(encoding="utf-8"))["run"].get("duration")
    # A study's own horizon may be shorter than the short form; never lengthen a run.
    short = SHORT_S if declared is None else min(SHORT_S, parse_duration(declared))
    loaded = load_manifest(
        path,
        examples_registry,
        overrides=[f"run.duration={short}s", "run.watch_manifest=false"],
    )
    run = asyncio.run(
        run_manifest(loaded, examples_registry, run_dir=tmp_path / "run", install_signals=False)
    )
    rows = run.summary_rows()
    assert rows
    # Each example quotes within its venue profile's limits: nothing refused by them.
    for name, venue in run.venues.items():
        limits = getattr(venue, "limits", None)
        if limits is not None:
            assert limits.refused_total == 0, (
                f"{path.name}: venue {name} refused {dict(limits.refused)} by the "
                f"{limits.profile.name} limits"
            )
    traded = {r["market"] for r in rows if r["fill_count"] > 0}
    assert traded, f"{path.name}: no fills in {short:g}s"
    if len(rows) <= 10:
        # Market makers quote every market they are given: each one trades.
        assert traded == {r["market"] for r in rows}
    assert (tmp_path / "run" / "summary.csv").exists()
