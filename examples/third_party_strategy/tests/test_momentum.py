"""Tests of the momentum quoter on quoteforge's simulated venue, with the ``run_strategy``
fixture that quoteforge installs as a pytest plugin (no conftest needed).

Run them from this folder: ``pip install -e . && pytest``."""

from __future__ import annotations

from quoteforge_momentum import MomentumQuoter

from quoteforge.plugins.strategy_testing import RunStrategy

PARAMS = {"half_spread_bps": 4, "order_size": 0.05}


def test_it_quotes_both_sides_and_trades(run_strategy: RunStrategy) -> None:
    result = run_strategy(MomentumQuoter, PARAMS, duration="2m", seed=11)
    assert not result.halted, result.halt_reason
    assert {fill.side.name for fill in result.fills} == {"BUY", "SELL"}
    live = [t for t in result.ticks() if t["our_bid"] is not None]
    assert live and all(t["our_bid"] < t["our_ask"] for t in live)


def test_every_quote_is_its_order_size(run_strategy: RunStrategy) -> None:
    result = run_strategy(MomentumQuoter, PARAMS, duration="1m", seed=11)
    assert result.fills
    # 0.05 BTC in lots of 0.0001: no fill is larger than one quote.
    assert all(0 < fill.qty_lots <= 500 for fill in result.fills)


def test_a_wider_spread_trades_less(run_strategy: RunStrategy) -> None:
    narrow = run_strategy(MomentumQuoter, PARAMS, duration="2m", seed=11)
    wide = run_strategy(MomentumQuoter, {**PARAMS, "half_spread_bps": 20}, duration="2m", seed=11)
    assert len(wide.fills) < len(narrow.fills)
