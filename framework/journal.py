"""The journal contract: an append-only, idempotent log of what happened in a run.

``append`` never blocks the event loop: it hands the record to a writer that makes it
durable in the background, in order. Records carry an ``event_id``; appending the same
id twice stores it once, so a redelivered order event or fill cannot be doubled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Journal", "JournalRecord"]


@dataclass(frozen=True, slots=True)
class JournalRecord:
    event_id: str
    kind: str  # "order", "order_update", "fill", "risk", "breaker", "run", "reconcile"
    ts_ns: int
    market: str
    payload: dict[str, Any]


class Journal(ABC):
    """Base class of journal backends."""

    @abstractmethod
    async def open(self) -> None:
        """Create tables/files and start the background writer."""

    @abstractmethod
    def append(self, record: JournalRecord) -> None:
        """Queue ``record`` for writing; returns at once. Duplicate ids are ignored."""

    @abstractmethod
    async def flush(self) -> None:
        """Wait until every record appended so far is durable."""

    @abstractmethod
    async def close(self) -> None:
        """Flush and release the backend."""

    @abstractmethod
    def read(self, kinds: tuple[str, ...] | None = None) -> Iterator[JournalRecord]:
        """Every durable record in append order (optionally only some kinds)."""
