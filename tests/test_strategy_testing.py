"""The shipped ``run_strategy`` fixture (quoteforge.plugins.strategy_testing): it runs a
registered strategy or a class defined in a test on the simulated venue and returns its
fills, trace and summary; bad inputs are refused with messages that say what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from quoteforge import Market, Quote, Strategy, StrategyContext, StrategyParams
from quoteforge.manifest import ManifestError
from quoteforge.plugins.strategy_testing import RunStrategy, StrategyRun
from quoteforge.registry import PluginError, load_registry

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "third_party_strategy"


class TouchParams(StrategyParams):
    size: float = Field(0.01, gt=0, description="Quote size, base units.")
    fail_after: int = Field(0, ge=0, description="Raise in on_book after this many calls.")


class TouchQuoter(Strategy):
    """Joins the best bid and ask with a fixed size and records every handler call."""

    Params = TouchParams
    params: TouchParams

    def __init__(self, ctx: StrategyContext, params: TouchParams) -> None:
        super().__init__(ctx, params)
        self.calls: list[str] = []
        self.books = 0

    def on_start(self, **kwargs: Any) -> None:
        self.calls.append("on_start")

    def on_book(self, market: Market, **kwargs: Any) -> list[Quote] | None:
        self.books += 1
        if self.params.fail_after and self.books > self.params.fail_after:
            raise ValueError("touch quoter gave up")
        if not self.calls or self.calls[-1] != "on_book":
            self.calls.append("on_book")
        bid, ask = market.book.best_bid(), market.book.best_ask()
        if bid is None or ask is None:
            return []
        lots = market.lots(self.params.size)
        quotes = [market.bid(bid[0], lots), market.ask(ask[0], lots)]
        return [q for q in quotes if q is not None]

    def on_fill(self, market: Market, fill: Any, **kwargs: Any) -> None:
        self.calls.append("on_fill")

    def on_stop(self, **kwargs: Any) -> None:
        self.calls.append("on_stop")


PMM = {"spread_bps": 4, "order_size": 0.05}


def test_a_registered_strategy_runs_and_its_fills_and_trace_come_back(
    run_strategy: RunStrategy,
) -> None:
    result = run_strategy("pure_market_making", PMM, duration="60s", seed=1)
    assert isinstance(result, StrategyRun)
    assert not result.halted and result.halt_reason == ""
    assert result.stop_reason == "duration reached"
    assert result.fills, "pure_market_making made no fill in a minute"
    assert all(f.strategy == "strategy" and f.market == "sim:BTC/USDT" for f in result.fills)
    assert all(isinstance(f.price_ticks, int) and f.qty_lots > 0 for f in result.fills)
    assert [f.ts_ns for f in result.fills] == sorted(f.ts_ns for f in result.fills)
    (row,) = result.summary
    assert row["market"] == "sim:BTC/USDT" and row["fill_count"] == len(result.fills)
    # The trace is the run's trace.jsonl: a sample per second and a record per fill.
    assert len(result.ticks("sim:BTC/USDT")) >= 59
    assert len([r for r in result.trace if r["type"] == "fill"]) == len(result.fills)
    assert (result.run_dir / "trace.jsonl").exists()
    assert (result.run_dir / "summary.csv").exists()
    assert result.manifest["strategies"]["strategy"]["type"] == "pure_market_making"
    assert type(result.strategy).__name__ == "PureMarketMaking"


def test_the_same_seed_gives_the_same_fills_and_another_seed_others(
    run_strategy: RunStrategy,
) -> None:
    def fills(seed: int) -> list[tuple[int, int, int]]:
        run = run_strategy("pure_market_making", PMM, duration="30s", seed=seed)
        return [(int(f.side), f.price_ticks, f.qty_lots) for f in run.fills]

    assert fills(3) == fills(3)
    assert fills(3) != fills(4)


def test_a_class_defined_in_a_test_runs_without_an_entry_point(
    run_strategy: RunStrategy,
) -> None:
    result = run_strategy(
        TouchQuoter,
        {"size": 0.02},
        market={
            "tick_size": "0.5",
            "lot_size": "0.01",
            "initial_price": 2000,
            "flow": {"arrival_rate": 3.0, "reach": 5.0, "size": 0.05},
        },
        symbol="ETH/USDT",
        duration="40s",
        seed=2,
    )
    assert not result.halted, result.halt_reason
    assert result.fills and all(f.market == "sim:ETH/USDT" for f in result.fills)
    assert all(f.qty_lots <= 2 for f in result.fills)  # 0.02 ETH in lots of 0.01
    strategy = result.strategy
    assert isinstance(strategy, TouchQuoter)
    # The lifecycle: on_start first, on_stop last, fills in between.
    assert strategy.calls[0] == "on_start" and strategy.calls[1] == "on_book"
    assert strategy.calls[-1] == "on_stop" and "on_fill" in strategy.calls
    assert result.manifest["strategies"]["strategy"]["type"] == "touch_quoter"
    # Registered for that run only: the process-wide registry never saw it.
    assert "touch_quoter" not in load_registry().types("strategy")


def test_a_strategy_that_raises_is_halted_and_the_reason_comes_back(
    run_strategy: RunStrategy,
) -> None:
    result = run_strategy(TouchQuoter, {"fail_after": 5}, duration="20s")
    assert result.halted
    assert "touch quoter gave up" in result.halt_reason
    assert result.events("strategy_halted")
    strategy = result.strategy
    assert isinstance(strategy, TouchQuoter)
    assert strategy.books == 6  # never called again after it raised
    assert "on_stop" not in strategy.calls  # a halted strategy gets no on_stop
    last_tick = result.ticks()[-1]
    assert last_tick["our_bid"] is None and last_tick["our_ask"] is None  # quotes pulled


def test_bad_inputs_are_refused_with_what_to_fix(run_strategy: RunStrategy) -> None:
    with pytest.raises(TypeError, match=r"registered strategy type name .* or a quoteforge"):
        run_strategy(42, {})  # type: ignore[arg-type]
    with pytest.raises(ManifestError, match="unknown strategy type 'no_such_strategy'") as info:
        run_strategy("no_such_strategy", {})
    assert any("the manifest run_strategy built" in note for note in info.value.__notes__)
    with pytest.raises(ManifestError, match="spred_bps"):
        run_strategy("pure_market_making", {"spred_bps": 4, "order_size": 0.05})
    with pytest.raises(ValueError, match=r"either as market=.* not both"):
        run_strategy(TouchQuoter, market={"initial_price": 10}, exchange={"markets": {}})
    with pytest.raises(ValueError, match="manifest= may not hold 'strategies'"):
        run_strategy(TouchQuoter, manifest={"strategies": {}})

    class OldQuoter(TouchQuoter):
        interface_version = 1

    with pytest.raises(PluginError, match="written for strategy interface 1"):
        run_strategy(OldQuoter)


def test_manifest_sections_reach_the_run(run_strategy: RunStrategy) -> None:
    """Risk checks from ``manifest=`` apply: a position limit below one quote's size
    refuses every order, so nothing fills."""
    result = run_strategy(
        "pure_market_making",
        PMM,
        duration="20s",
        manifest={
            "risk": {"position": {"type": "max_position", "params": {"max_position": 0.01}}},
            "run": {"sample_interval": "2s"},
        },
    )
    assert result.fills == []
    assert 9 <= len(result.ticks()) <= 11


async def test_the_fixture_works_in_an_async_test(run_strategy: RunStrategy) -> None:
    result = run_strategy("pure_market_making", PMM, duration="10s")
    assert result.stop_reason == "duration reached"


def _guide_block(heading: str) -> str:
    """The first Python block after ``heading`` in docs/strategies/authoring.md."""
    text = (ROOT / "docs" / "strategies" / "authoring.md").read_text(encoding="utf-8")
    after = text.split(heading, 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_guides_strategy_and_its_test_work_as_written(run_strategy: RunStrategy) -> None:
    """The strategy of docs/strategies/authoring.md runs, and the assertions of its
    "Testing a strategy" example hold."""
    namespace: dict[str, Any] = {"__name__": "guide_example"}
    exec(compile(_guide_block("## A complete strategy"), "authoring.md", "exec"), namespace)
    join = namespace["JoinTheTouch"]
    result = run_strategy(join, {"size": 0.02, "max_position": 0.1}, duration="2m", seed=7)
    assert not result.halted, result.halt_reason
    assert {f.side.name for f in result.fills} == {"BUY", "SELL"}
    assert all(abs(t["inventory"]) <= 0.1 + 1e-9 for t in result.ticks())
    assert 'run_strategy(JoinTheTouch, {"size": 0.02, "max_position": 0.1},' in (
        _guide_block("## Testing a strategy")
    )


def test_pytest_finds_the_fixture_through_its_entry_point() -> None:
    names = {ep.value for ep in metadata.entry_points(group="pytest11")}
    assert "quoteforge.plugins.strategy_testing" in names, "reinstall: pip install -e .[dev]"


def test_the_third_party_example_tests_its_strategy_with_the_fixture(tmp_path: Path) -> None:
    """The example package's own tests, run as its author would (``pytest`` in its
    folder): they get ``run_strategy`` from the installed plugin, with no conftest."""
    assert not list(EXAMPLE.rglob("conftest.py"))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")]),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
