"""A test's own strategy classes, registered as a strategy plugin package registers its
strategies (through the ``quoteforge_register_strategies`` hook)."""

from __future__ import annotations

from typing import Any

import quoteforge
from quoteforge.registry import PluginRegistry


def register_strategy(registry: PluginRegistry, name: str, cls: type[Any]) -> None:
    """Register a test's own strategy class as strategy type ``name`` (once per registry),
    through the same hook a strategy plugin package uses."""
    if name in registry.types("strategy"):
        return

    class _Plugin:
        @staticmethod
        @quoteforge.hookimpl
        def quoteforge_register_strategies(register: Any) -> None:
            register(name, cls)

    registry.register_module(_Plugin, f"test_strategy_{name}")
