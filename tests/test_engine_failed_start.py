"""A run whose start fails after a venue connected closes what the start opened (the
venues, the journal, the bus) before the error goes on: nothing is left holding sockets
or threads in a program that runs bots one after another."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import pytest
from test_engine import BASE

import quoteforge
from quoteforge.engine import Run
from quoteforge.journal import JournalRecord
from quoteforge.manifest import load_manifest
from quoteforge.plugins.journal_sqlite import JournalError
from quoteforge.registry import PluginRegistry


class _RefusingSim:
    """A simulated venue that connects, then fails the start-up reconciliation of a
    live run (its open-order list cannot be read); it notes its closes."""

    closed: ClassVar[list[str]] = []

    @staticmethod
    def build(params: Any, ctx: Any) -> Any:
        from quoteforge.exchanges.sim.venue import SimExchange

        class Refusing(SimExchange):
            async def fetch_open_orders(self) -> Any:
                raise ConnectionError("open orders unreadable")

            async def close(self) -> None:
                _RefusingSim.closed.append(self.name)
                await super().close()

        return Refusing(params, ctx)

    @quoteforge.hookimpl
    def quoteforge_register_exchanges(self, register: Any) -> None:
        from quoteforge.exchanges.sim.venue import SimParams

        register("refusing_sim", self.build, params=SimParams, description="fails its start")


def test_a_start_that_fails_after_a_venue_connected_closes_it(tmp_path: Path) -> None:
    registry = PluginRegistry()
    registry.load_entry_points()
    registry.register_module(_RefusingSim(), "refusing_sim")
    path = tmp_path / "m.yaml"
    path.write_text(
        BASE.format(duration="3s", seed=3, outages="[]", strategy="pure_market_making")
        .replace("type: sim", "type: refusing_sim")
        .replace("name: e2e", "name: e2e\n  mode: live"),
        encoding="utf-8",
    )
    loaded = load_manifest(path, registry, overrides=["report.html=false", "report.png=false"])
    run = Run(loaded, registry, run_dir=tmp_path / "run")
    _RefusingSim.closed = []
    with pytest.raises(ConnectionError, match="open orders unreadable"):
        asyncio.run(run.run())
    assert _RefusingSim.closed == ["sim"]
    # The journal is closed (its writer thread joined): it takes no more records.
    with pytest.raises(JournalError, match="is closed"):
        run.journal.append(JournalRecord("late", "note", 0, "", {}))
