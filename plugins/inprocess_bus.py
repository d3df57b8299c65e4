"""Registers the in-process bus (``type: inprocess``), the default backend."""

from __future__ import annotations

from pydantic import BaseModel

import quoteforge
from quoteforge.bus import InProcessBus, InProcessParams
from quoteforge.registry import Register


def _build(params: BaseModel, run_id: str) -> InProcessBus:
    return InProcessBus(params, run_id)


@quoteforge.hookimpl
def quoteforge_register_bus_backends(register: Register) -> None:
    register(
        "inprocess",
        _build,
        params=InProcessParams,
        description="In-process bus: synchronous delivery inside one process (default).",
    )
