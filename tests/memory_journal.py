"""An in-memory journal for tests that inspect what was journaled."""

from __future__ import annotations

from collections.abc import Iterator

from quoteforge.journal import Journal, JournalRecord


class MemoryJournal(Journal):
    """An in-memory journal with the contract's idempotency, for inspecting records."""

    def __init__(self) -> None:
        self.records: list[JournalRecord] = []
        self.ids: set[str] = set()
        self.duplicates: list[str] = []

    async def open(self) -> None:
        return None

    def append(self, record: JournalRecord) -> None:
        if record.event_id in self.ids:
            self.duplicates.append(record.event_id)
            return
        self.ids.add(record.event_id)
        self.records.append(record)

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def read(self, kinds: tuple[str, ...] | None = None) -> Iterator[JournalRecord]:
        return iter([r for r in self.records if kinds is None or r.kind in kinds])
