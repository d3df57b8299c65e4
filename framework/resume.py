"""Resuming a run folder: which runs may be resumed, and how a simulated run is.

A live or paper run resumes from its journal and the venues (reconciliation decides
what happened while it was away). A simulated or backtest run has no venue to ask: its
venue lived in the dead process. It is deterministic instead, so ``--resume`` replays it
from its start with the same manifest and seed, checks that every record it produces
again is the record the journal holds, and carries on past the point the first life
reached. The resumed journal is then the journal of an uninterrupted run; a replay that
differs (a changed plugin, data file or version) is refused at the first differing
record, and nothing in the run folder is changed.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from quoteforge.journal import Journal, JournalRecord

__all__ = ["ReplayJournal", "ResumeRefusedError", "check_resumable", "replays_on_resume"]

#: Modes whose runs are deterministic and resume by replaying from the start.
REPLAYED_MODES = frozenset({"sim", "backtest"})


class ResumeRefusedError(RuntimeError):
    """This run folder cannot be resumed; the message says why and what to do."""


def replays_on_resume(mode: str) -> bool:
    return mode in REPLAYED_MODES


def check_resumable(run_dir: Path, *, continue_finished: bool = False) -> dict[str, Any]:
    """The run folder's ``run.json`` when ``run_dir`` may be resumed; otherwise
    ``ResumeRefusedError`` naming the reason and the way out."""
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        raise ResumeRefusedError(f"{run_dir} is not a run folder (no run.json): nothing to resume")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResumeRefusedError(f"{info_path} cannot be read ({exc}): nothing to resume") from None
    if not isinstance(info, dict) or not (run_dir / "manifest.yaml").is_file():
        raise ResumeRefusedError(
            f"{run_dir} is not a complete run folder (run.json, manifest.yaml)"
        )
    finished = info.get("finished_at")
    if finished:
        reason = info.get("stop_reason") or "stopped"
        if replays_on_resume(str(info.get("mode", ""))):
            raise ResumeRefusedError(
                f"run {run_dir.name} ended at {finished} ({reason}); a {info.get('mode')} run "
                "resumes by replaying its first life exactly, which continues only a run that "
                "was interrupted (killed or crashed): start a new run instead"
            )
        if not continue_finished:
            raise ResumeRefusedError(
                f"run {run_dir.name} ended normally at {finished} ({reason}); resuming it "
                "would start trading again. Pass --continue to continue a finished run"
            )
    return info


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _canonical(payload: dict[str, Any]) -> Any:
    """A payload as the journal gives it back (JSON types, Decimals as text)."""
    return json.loads(json.dumps(payload, default=_plain))


class ReplayJournal(Journal):
    """Stands in front of a run's journal while a simulated run replays its first life.

    A record the journal already holds is compared with it and not written again; a new
    record is written. The first record that differs from the journal calls
    ``on_mismatch`` with a description, and from then on nothing more is written.
    """

    def __init__(self, inner: Journal, on_mismatch: Callable[[str], None]) -> None:
        self.inner = inner
        self._on_mismatch = on_mismatch
        self._expected: dict[str, JournalRecord] = {}
        self._seen: set[str] = set()
        self.replayed = 0
        self.mismatch = ""

    async def open(self) -> None:
        await self.inner.open()
        for record in self.inner.read():
            # The journal keeps the first record of an id; later ones were ignored.
            self._expected.setdefault(record.event_id, record)

    @property
    def expected(self) -> int:
        """Records the first life journaled."""
        return len(self._expected)

    def append(self, record: JournalRecord) -> None:
        if self.mismatch:
            return
        event_id = record.event_id
        if event_id in self._seen:
            return  # a repeated id: the journal ignores it, and so does the check
        self._seen.add(event_id)
        old = self._expected.get(event_id)
        if old is None and self.replayed < len(self._expected):
            # The journal holds a prefix of the first life's records: a new one before
            # all of them were produced again means the replay took another path.
            left = len(self._expected) - self.replayed
            self.mismatch = (
                f"the replay wrote {record.kind} record {event_id!r}, which the first life "
                f"did not, before producing {left} of the first life's records again (a "
                "changed manifest, duration or override?)"
            )
            self._on_mismatch(self.mismatch)
            return
        if old is None:
            self.inner.append(record)
            return
        self.replayed += 1
        new = (record.kind, record.ts_ns, record.market, _canonical(record.payload))
        if new != (old.kind, old.ts_ns, old.market, old.payload):
            self.mismatch = (
                f"record {event_id!r} differs from the journal: the first life wrote "
                f"{old.kind} at {old.ts_ns} {old.payload}, the replay {record.kind} at "
                f"{record.ts_ns} {new[3]}"
            )
            self._on_mismatch(self.mismatch)

    async def flush(self) -> None:
        await self.inner.flush()

    async def close(self) -> None:
        await self.inner.close()

    def read(self, kinds: tuple[str, ...] | None = None) -> Iterator[JournalRecord]:
        return self.inner.read(kinds)
