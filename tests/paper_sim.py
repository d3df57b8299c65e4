"""The simulated venue paper-wrapped (``paper_sim``): a paper run's plumbing on a small
simulated market, for tests that need a paper run without a network."""

from __future__ import annotations

from typing import Any

import quoteforge
from quoteforge.exchange import ExchangeAdapter, VenueContext
from quoteforge.exchanges.paper import wrap_for_paper
from quoteforge.exchanges.sim.venue import SimExchange, SimParams
from quoteforge.registry import PluginRegistry, Register

#: One simulated ETH/USDT market.
MARKET: dict[str, Any] = {
    "tick_size": "0.01",
    "lot_size": "0.001",
    "initial_price": 2000,
    "process": {"model": "brownian", "sigma": 0.0002},
    "flow": {"arrival_rate": 4.0, "reach": 1.0, "size": 0.5},
    "liquidity": {"levels": 6, "distance": 0.5, "spacing": 0.2, "size": 2.0},
}
SYMBOL = "ETH/USDT"


class PaperSimPlugin:
    """Registers ``paper_sim``: the sim venue wrapped for paper trading."""

    @staticmethod
    def build(params: SimParams, ctx: VenueContext) -> ExchangeAdapter:
        return wrap_for_paper(
            SimExchange(params, ctx),
            {"latency": {"market_data_ms": 1, "order_ms": 5, "jitter_ms": 1}},
            ctx,
        )

    @quoteforge.hookimpl
    def quoteforge_register_exchanges(self, register: Register) -> None:
        register("paper_sim", self.build, params=SimParams, description="sim, paper-wrapped")


def paper_sim_registry() -> PluginRegistry:
    """The installed plugins and ``paper_sim``."""
    registry = PluginRegistry()
    registry.load_entry_points()
    registry.register_module(PaperSimPlugin(), "paper_sim")
    return registry
