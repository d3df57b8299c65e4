"""Execution policies: turn wanted quotes and working orders into the fewest actions.

A policy is a plain object called directly on the hot path with one market's wanted
quotes and our working orders there; it returns a ``Plan``. The order manager turns the
plan into venue actions with client ids and journals them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel

from quoteforge.model import Order, Quote
from quoteforge.registry import NoParams
from quoteforge.strategy import Market

__all__ = ["ExecutionPolicy", "Plan"]


@dataclass(slots=True)
class Plan:
    """What to change on one market: orders to cancel, quotes to place, and orders to
    replace by a quote (cancel/replace in one venue call where the venue has it)."""

    cancels: list[Order] = field(default_factory=list)
    places: list[Quote] = field(default_factory=list)
    replaces: list[tuple[Order, Quote]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.cancels or self.places or self.replaces)


class ExecutionPolicy(ABC):
    """Base class of execution policy plugins."""

    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    @abstractmethod
    def plan(self, market: Market, wanted: list[Quote], working: list[Order], now_ns: int) -> Plan:
        """The changes that make the working orders match ``wanted``."""

    def admit_take(self, market: Market, now_ns: int) -> str | None:
        """Whether an immediate-or-cancel order (a take, an execution algorithm's child)
        may go out on ``market`` now: None, or why not (e.g. the order rate is spent).
        Called by the order gate after risk approved the order; the default admits all."""
        return None
