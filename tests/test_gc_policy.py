"""``run.gc``: with ``between_events`` Python's cyclic garbage collector never runs inside
a quoting decision, still collects (after decisions, and on a real clock on a backstop
timer), runs full collections at most once a minute of run time, and gives Python its
collector back when the run stops. The fills do not depend on the mode."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from own_strategies import register_strategy
from paper_sim import MARKET, paper_sim_registry

from quoteforge import Market
from quoteforge.clock import NS, LiveClock, SimClock
from quoteforge.engine import Run, run_manifest
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.plugins.gc_policy import GcPolicy
from quoteforge.registry import load_registry
from quoteforge.strategies.pure_market_making import PureMarketMaking

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


@pytest.fixture
def low_thresholds() -> Iterator[None]:
    """Young collections every 100 new objects instead of 700: many more of them in a
    short run, so where each one lands is measured many times over."""
    before = gc.get_threshold()
    gc.set_threshold(100, before[1], before[2])
    try:
        yield
    finally:
        gc.set_threshold(*before)


class _Collections:
    """Every collection while installed, and whether it began inside a strategy's
    ``on_book`` (the strategy ``Watched`` sets ``inside``)."""

    inside = False

    def __init__(self) -> None:
        self.began_inside: list[bool] = []

    def __enter__(self) -> _Collections:
        gc.callbacks.append(self._seen)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._seen)

    def _seen(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.began_inside.append(_Collections.inside)


class Watched(PureMarketMaking):
    """``pure_market_making`` that marks the time spent deciding its quotes."""

    def on_book(self, market: Market, **kwargs: Any) -> Any:
        _Collections.inside = True
        try:
            return super().on_book(market, **kwargs)
        finally:
            _Collections.inside = False


def quickstart_run(tmp_path: Path, gc_mode: str) -> tuple[Run, _Collections]:
    registry = load_registry()
    register_strategy(registry, "watched_pmm", Watched)
    overrides = [
        "run.duration=40s",
        f"run.gc={gc_mode}",
        "report.html=false",
        "report.png=false",
        *(f"strategies.{name}.type=watched_pmm" for name in ("mm", "mm_eth", "mm_rain")),
    ]
    loaded = load_manifest(QUICKSTART, registry, overrides=overrides)
    run = Run(loaded, registry, run_dir=tmp_path / gc_mode)
    with _Collections() as collections:
        asyncio.run(run.run())
    return run, collections


def test_between_events_collects_only_outside_decisions_and_fills_alike(
    tmp_path: Path, low_thresholds: None
) -> None:
    automatic, in_automatic = quickstart_run(tmp_path, "automatic")
    between, in_between = quickstart_run(tmp_path, "between_events")
    # Python's schedule: collections land inside decisions (what the mode is for). How
    # many varies with the journal's writer thread, whose allocations count too: about 5
    # of some 300 on an idle machine, 3 under load.
    assert automatic.gc_policy is None
    assert sum(in_automatic.began_inside) >= 1
    # Between events: as many collections, none of them inside a decision.
    policy = between.gc_policy
    assert isinstance(policy, GcPolicy) and policy.between_events and not policy.running
    assert sum(policy.collections) >= len(in_automatic.began_inside) // 2
    assert len(in_between.began_inside) >= sum(policy.collections)
    assert not any(in_between.began_inside)
    # The collector is Python's again, nothing left frozen; the trading is the same.
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert between.summary_rows() == automatic.summary_rows()
    assert all(automatic.portfolio.fill_count(key) > 0 for key in automatic.markets)


def _cyclic_garbage() -> weakref.ref[Any]:
    """An object only a reference cycle keeps alive: only the collector frees it."""

    class Node:
        pass

    node = Node()
    node.loop = node  # type: ignore[attr-defined]
    return weakref.ref(node)


def _make_due() -> list[list[int]]:
    """Enough live new containers that a young collection is due."""
    return [[] for _ in range(gc.get_threshold()[0] + 10)]


def test_on_a_real_clock_a_decision_collects_after_its_sends_and_a_backstop_between() -> None:
    async def scenario() -> None:
        policy = GcPolicy(LiveClock())
        policy.start()
        try:
            assert not gc.isenabled()
            garbage, keep = _cyclic_garbage(), _make_due()
            policy.after_decision()
            assert garbage() is not None  # not inside the decision: queued behind it
            await asyncio.sleep(0)
            assert garbage() is None and policy.collections[0] == 1
            # Events without a decision: the backstop collects within BACKSTOP_S.
            garbage, more = _cyclic_garbage(), _make_due()
            await asyncio.sleep(policy.BACKSTOP_S * 3)
            assert garbage() is None and sum(policy.collections) == 2
            del keep, more
        finally:
            policy.stop()
        assert gc.isenabled() and gc.get_freeze_count() == 0

    asyncio.run(scenario())


def test_nothing_is_collected_before_it_is_due() -> None:
    policy = GcPolicy(SimClock())
    policy.start()
    try:
        gc.collect(0)  # an empty young generation
        garbage = _cyclic_garbage()
        policy.after_decision()
        policy.collect()
        assert garbage() is not None and policy.collections == [0, 0, 0]
        keep = _make_due()
        policy.after_decision()  # inline on a virtual clock
        assert garbage() is None and policy.collections == [1, 0, 0]
        del keep
    finally:
        policy.stop()


def test_full_collections_come_at_most_once_a_minute_of_run_time() -> None:
    before = gc.get_threshold()
    gc.set_threshold(20, 2, 2)
    clock = SimClock()
    policy = GcPolicy(clock)
    full: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(clock.now_ns())

    policy.start()
    gc.callbacks.append(seen)
    try:
        kept: list[list[list[int]]] = []
        for _ in range(300):  # five minutes, a young collection due every second
            kept.append([[] for _ in range(25)])
            policy.after_decision()
            clock.run_until(clock.now_ns() + NS)
    finally:
        policy.stop()
        gc.callbacks.remove(seen)
        gc.set_threshold(*before)
    young, middle, old = policy.collections
    assert young + middle + old == 300
    assert middle > old and len(full) == old
    assert old == 4  # due each second, run once a minute: at 62, 122, 182 and 242 s
    assert all(b - a >= 60 * NS for a, b in itertools.pairwise(full))


# -- the defaults, on a real clock and a virtual one ----------------------------------------
PAPER = """\
run: {{name: paper, mode: {mode}, duration: 1s, seed: 4, watch_manifest: false{gc}}}
exchanges:
  venue: {{type: paper_sim, params: {{markets: {{ETH/USDT: {market}}}}}}}
strategies:
  mm:
    type: pure_market_making
    exchange: venue
    symbols: ETH/USDT
    params: {{spread_bps: 2, order_size: 0.5}}
report: {{html: false, png: false}}
"""


@pytest.mark.parametrize(
    ("mode", "gc_mode", "between"),
    [("paper", None, True), ("paper", "automatic", False), ("sim", None, False)],
)
def test_paper_and_live_collect_between_events_by_default(
    tmp_path: Path, mode: str, gc_mode: str | None, between: bool
) -> None:
    registry = paper_sim_registry()
    path = tmp_path / "paper.yaml"
    gc_key = f", gc: {gc_mode}" if gc_mode else ""
    path.write_text(PAPER.format(mode=mode, gc=gc_key, market=json.dumps(MARKET)))
    during: list[bool] = []
    run = asyncio.run(
        run_manifest(
            registry=registry,
            loaded=load_manifest(path, registry),
            run_dir=tmp_path / "run",
            install_signals=False,
            on_started=lambda run: during.append(gc.isenabled()),
        )
    )
    assert run.stop_reason == "duration reached"
    if mode == "sim":
        assert run.gc_policy is None  # Python's schedule, nothing frozen
    else:  # a real clock: the start-up heap frozen, collected between events or not
        assert isinstance(run.gc_policy, GcPolicy) and run.gc_policy.between_events is between
    assert during == [not between]  # off while the run ran, when between events
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_an_unknown_mode_is_refused_naming_the_choices(tmp_path: Path) -> None:
    registry = load_registry()
    with pytest.raises(ManifestError) as refused:
        load_manifest(QUICKSTART, registry, overrides=["run.gc=sometimes"])
    message = str(refused.value)
    assert "run.gc" in message
    assert "'between_events'" in message and "'automatic'" in message
