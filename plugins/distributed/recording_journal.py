"""The execution node's journal: the run's journal, remembering the ids of the records
it was handed since they were last taken."""

from __future__ import annotations

from typing import Any

from quoteforge.journal import Journal, JournalRecord

__all__ = ["RecordingJournal"]


class RecordingJournal(Journal):
    """Passes records to the real journal and remembers their ids, so a published
    order report or fill carries the id of the journal event it belongs to."""

    def __init__(self, inner: Journal) -> None:
        self.inner = inner
        self.appended: list[JournalRecord] = []

    async def open(self) -> None:
        await self.inner.open()

    def append(self, record: JournalRecord) -> None:
        self.appended.append(record)
        self.inner.append(record)

    async def flush(self) -> None:
        await self.inner.flush()

    async def close(self) -> None:
        await self.inner.close()

    def read(self, kinds: tuple[str, ...] | None = None) -> Any:
        return self.inner.read(kinds)

    def take(self) -> list[JournalRecord]:
        taken, self.appended = self.appended, []
        return taken
