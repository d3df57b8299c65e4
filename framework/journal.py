"""The journal contract: an append-only, idempotent log of what happened in a run.

``append`` never blocks the event loop: it hands the record to a writer that makes it
durable in the background, in order. Records carry an ``event_id``; appending the same
id twice stores it once, so a redelivered order event or fill cannot be doubled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

__all__ = ["ORDER_RECORD_FORMAT", "Journal", "JournalRecord", "OrderStates", "order_states"]


class JournalRecord(NamedTuple):
    """One journal entry. A named tuple: immutable like a frozen dataclass, and built in
    one call (the order path writes several per order)."""

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


#: Order records (kinds order, order_update, fill; docs/journal.md). 1: each held the
#: whole order and ``meta``. 2: the first holds the whole order and ``"format": 2``, later
#: ones what changed (with ``client_id``, ``status``) and ``prior`` when it changed.
ORDER_RECORD_FORMAT = 2
_ORDER_KINDS = frozenset({"order", "order_update", "fill"})


class OrderStates:
    """Rebuilds each order's whole state from order records of either format, fed to
    :meth:`apply` in append order (kinds order, order_update and fill together).
    ``orders``: client id -> ``order_to_dict`` dict; ``meta``: ``prior``, ``event_keys``."""

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.meta: dict[str, dict[str, Any]] = {}

    def apply(self, record: JournalRecord) -> dict[str, Any] | None:
        """The order's whole state after ``record`` (the dict in ``orders``, which later
        records update: copy it to keep it); None for a record about no order."""
        payload = record.payload
        data = payload.get("order") if record.kind in _ORDER_KINDS else None
        if not data:
            return None
        cid = str(data["client_id"])
        if "meta" in payload:  # format 1
            old = payload["meta"] or {}
            self.orders[cid] = state = dict(data)
            self.meta[cid] = {"prior": old.get("prior"), "event_keys": dict(old["event_keys"])}
            return state
        if record.kind == "order" or "format" in payload:  # the whole order
            if payload.get("format") != ORDER_RECORD_FORMAT:
                raise ValueError(
                    f"journal record {record.event_id!r} has order record format "
                    f"{payload.get('format')!r}; this quoteforge reads formats "
                    f"1-{ORDER_RECORD_FORMAT}: read it with the version that wrote it"
                )
            self.orders[cid] = state = dict(data)
            meta: dict[str, Any] = {"prior": None, "event_keys": {}}
            self.meta[cid] = meta
        elif cid in self.orders:
            state, meta = self.orders[cid], self.meta[cid]
            state.update(data)
        else:
            raise ValueError(
                f"journal record {record.event_id!r} changes order {cid!r} whose 'order' "
                "record was not read: read the kinds order, order_update and fill together"
            )
        if "prior" in payload:
            meta["prior"] = payload["prior"]
        stem = f"{state['venue']}:{cid}:"
        if record.kind != "fill" and record.event_id.startswith(stem):
            key, _, seen = record.event_id[len(stem) :].partition("#")
            keys = meta["event_keys"]
            keys[key] = max(keys.get(key, 0), int(seen or 0) + 1)
        return state


def order_states(records: Iterable[JournalRecord]) -> dict[str, dict[str, Any]]:
    """Each order's last state (client id -> ``order_to_dict`` dict) in ``records``."""
    states = OrderStates()
    for record in records:
        states.apply(record)
    return states.orders
