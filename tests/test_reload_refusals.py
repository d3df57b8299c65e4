"""A hot parameter edit that cannot apply is refused and the strategy goes on quoting with
its running params: what ``validate`` can see (pure_market_making's markets) is refused
with the manifest's message, and what only the strategy sees (its ``on_params`` raising)
is rolled back instead of halting it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from own_strategies import register_strategy

from quoteforge.engine import Run
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.registry import PluginRegistry
from quoteforge.strategies.pure_market_making import PureMarketMaking, PureMarketMakingParams

BASE = """\
run: {{name: hot, duration: 1h, seed: 4}}
exchanges:
  sim:
    type: sim
    params:
      markets:
        BTC/USDT: &market
          tick_size: "0.01"
          lot_size: "0.0001"
          initial_price: 30000
          process: {{model: brownian, sigma: 0.0001}}
          flow: {{arrival_rate: 3.0, reach: 15.0, size: 0.05}}
          liquidity: {{levels: 5, distance: 20.0, spacing: 5.0, size: 0.2}}
        ETH/USDT: *market
strategies:
  mm:
    type: {strategy}
    exchange: sim
    symbols: {symbols}
    params: {{spread_bps: {spread}, order_size: 0.05{extra}}}
report: {{html: false, png: false}}
"""


def manifest(
    strategy: str = "pure_market_making",
    symbols: str = "BTC/USDT",
    spread: int = 4,
    extra: str = "",
) -> str:
    return BASE.format(strategy=strategy, symbols=symbols, spread=spread, extra=extra)


def refused(text: str, registry: PluginRegistry) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest("m.yaml", registry, text=text)
    return str(info.value)


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        (
            ", reference: venue, reference_market: ETH/USDT",
            "strategies.mm.params.reference_market",
            "'ETH/USDT' is not one of its markets (sim:BTC/USDT); add it to the strategy's symbols",
        ),
        (
            ", quote_symbols: [BTC/USDT, sim:SOL/USDT]",
            "strategies.mm.params.quote_symbols.1",
            "'sim:SOL/USDT' is not one of its markets (sim:BTC/USDT); add it to the strategy's",
        ),
    ],
)
def test_validate_refuses_markets_the_strategy_does_not_have(
    extra: str, key: str, message: str, registry: PluginRegistry
) -> None:
    msg = refused(manifest(extra=extra), registry)
    assert msg.startswith(f"m.yaml:20: {key}: {message}")


def test_validate_refuses_quoting_the_reference_market(registry: PluginRegistry) -> None:
    both = "[BTC/USDT, ETH/USDT]"
    extra = ", reference: venue, reference_market: ETH/USDT, quote_symbols: [sim:ETH/USDT]"
    msg = refused(manifest(symbols=both, extra=extra), registry)
    assert "strategies.mm.params.quote_symbols.0: 'sim:ETH/USDT' is the reference_market" in msg


@pytest.mark.parametrize(
    ("symbols", "extra"),
    [
        ("[BTC/USDT, ETH/USDT]", ", reference: venue, reference_market: ETH/USDT"),
        ("[BTC/USDT, ETH/USDT]", ", reference: venue, reference_market: sim:ETH/USDT"),
        ("[BTC/USDT, ETH/USDT]", ", quote_symbols: [sim:BTC/USDT, ETH/USDT]"),
        ("'*'", ", reference: venue, reference_market: ETH/USDT"),  # the venue lists them
    ],
)
def test_validate_takes_the_strategys_own_markets(
    symbols: str, extra: str, registry: PluginRegistry
) -> None:
    loaded = load_manifest("m.yaml", registry, text=manifest(symbols=symbols, extra=extra))
    assert isinstance(loaded.params_of("strategies", "mm"), PureMarketMakingParams)


class PickyMarketMaking(PureMarketMaking):
    """Pure market making that refuses, in ``on_params``, a spread over 50 bps."""

    def on_params(self, params: Any, **kwargs: Any) -> None:
        if params.spread_bps > 50:
            raise ValueError("this desk never quotes wider than 50 bps")
        super().on_params(params, **kwargs)


async def edit_and_wait(run: Run, path: Path, text: str, seconds: float = 1.0) -> None:
    """Write the manifest as an operator would and give the run time to read it."""
    path.write_text(text)
    await asyncio.sleep(seconds)


def spread(run: Run) -> float:
    params = run.strategies["mm"].strategy.params
    assert isinstance(params, PureMarketMakingParams)
    return params.spread_bps


def trace_events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "trace.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "event"]


@pytest.mark.parametrize(
    ("strategy", "bad", "why"),
    [
        (  # validate refuses it: the manifest check runs before the strategy sees it
            "pure_market_making",
            manifest(spread=4, extra=", reference: venue, reference_market: ETH/USDT"),
            "reference_market: 'ETH/USDT' is not one of its markets",
        ),
        (  # only the strategy knows: its on_params raises, the change is rolled back
            "picky_mm",
            manifest("picky_mm", spread=60),
            "strategy 'mm' refused the params change {'spread_bps': 60.0}: this desk never",
        ),
    ],
)
def test_a_refused_hot_edit_keeps_the_strategy_quoting_with_its_params(
    strategy: str, bad: str, why: str, registry: PluginRegistry, tmp_path: Path
) -> None:
    register_strategy(registry, "picky_mm", PickyMarketMaking)
    path = tmp_path / "hot.yaml"
    path.write_text(manifest(strategy))
    run_dir = tmp_path / "run"
    run = Run(load_manifest(path, registry), registry, run_dir=run_dir, manifest_path=path)
    srt_quoting: list[bool] = []

    async def scenario() -> None:
        task = asyncio.create_task(run.run())
        await asyncio.sleep(0.5)
        await edit_and_wait(run, path, bad.replace("picky_mm", strategy))
        srt = run.strategies["mm"]
        srt_quoting.append(not srt.halted and any(mr.wanted for mr in srt.markets.values()))
        assert spread(run) == 4  # the running params
        # Still alive: a good edit afterwards applies.
        await edit_and_wait(run, path, manifest(strategy, spread=9))
        assert spread(run) == 9
        run.request_stop("test done")
        await task

    asyncio.run(scenario())
    assert srt_quoting == [True]
    events = trace_events(run_dir)
    kinds = [e["event"] for e in events]
    assert "strategy_halted" not in kinds
    assert any(e["event"] == "params_refused" and why in e["detail"] for e in events), events
    assert kinds.count("params_applied") == 1
    assert run.stop_reason == "test done"
