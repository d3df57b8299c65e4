"""Registers the in-process bus, the default backend of a run in one process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quoteforge import hookimpl
from quoteforge.bus import InProcessBus, InProcessParams

if TYPE_CHECKING:
    from quoteforge.registry import Register


@hookimpl
def quoteforge_register_bus_backends(register: Register) -> None:
    register(
        "inprocess",
        lambda params, run_id: InProcessBus(params, run_id),
        params=InProcessParams,
        description="synchronous delivery inside one process (default, no broker)",
    )
