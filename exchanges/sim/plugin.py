"""Registers the simulated exchange (``type: sim``) with the kernel."""

from __future__ import annotations

import quoteforge
from quoteforge.exchange import VenueContext
from quoteforge.exchanges.sim.venue import SimExchange, SimParams
from quoteforge.registry import Register


def _build(params: SimParams, ctx: VenueContext) -> SimExchange:
    return SimExchange(params, ctx)


_build.declared_symbols = SimExchange.declared_symbols  # type: ignore[attr-defined]


@quoteforge.hookimpl
def quoteforge_register_exchanges(register: Register) -> None:
    register(
        "sim",
        _build,
        params=SimParams,
        description="Simulated exchange: matching engine, synthetic order flow, latency, fees.",
    )
