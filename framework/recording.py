"""Recorded market data: one JSON line per received message, and a reader that replays
several recordings merged in receive-time order without loading them whole."""

from __future__ import annotations

import gzip
import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

if TYPE_CHECKING:
    from quoteforge.clock import Clock

__all__ = ["Record", "RecordingError", "RecordingWriter", "merge_recordings", "read_recording"]


class RecordingError(ValueError):
    """A recording line that cannot be read; the message names file and line."""


@dataclass(frozen=True, slots=True)
class Record:
    """One received message: local receive time (ns), venue, stream, payload text."""

    t_ns: int
    venue: str
    stream: str
    raw: str

    def to_line(self) -> str:
        return json.dumps(
            {"t": self.t_ns, "venue": self.venue, "stream": self.stream, "raw": self.raw},
            separators=(",", ":"),
            ensure_ascii=False,
        )


def _open(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return cast(IO[str], gzip.open(path, mode + "t", encoding="utf-8"))
    return path.open(mode, encoding="utf-8")


class RecordingWriter:
    """Appends records to a ``.jsonl`` (or ``.jsonl.gz``) file.

    Each line is ``{"t": ns, "venue": .., "stream": .., "raw": "<payload text>"}``;
    the payload is kept as the exact text received, so replaying it exercises the
    same parsing (and checksums) as the live feed. Lines are buffered; ``flush()``
    pushes them to the OS, ``close()`` (or leaving the ``with`` block) both.
    """

    def __init__(self, path: str | Path, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.clock = clock
        self.count = 0
        self._file = _open(self.path, "a")

    def write(self, venue: str, stream: str, raw: str | bytes, t_ns: int | None = None) -> Record:
        """Record one message; ``t_ns`` defaults to the clock's time."""
        if t_ns is None:
            if self.clock is None:
                raise ValueError(f"{self.path}: give t_ns or construct the writer with a clock")
            t_ns = self.clock.now_ns()
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        record = Record(t_ns, venue, stream, text)
        self._file.write(record.to_line() + "\n")
        self.count += 1
        return record

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


try:  # orjson parses a recording line several times faster than the stdlib
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a core dependency
    _loads = json.loads  # type: ignore[assignment]


def read_recording(path: str | Path) -> Iterator[Record]:
    """The records of one file, in file order, one line at a time."""
    source = Path(path)
    with _open(source, "r") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = _loads(line)
                record = Record(int(row["t"]), str(row["venue"]), str(row["stream"]), row["raw"])
            except (ValueError, KeyError, TypeError) as exc:
                raise RecordingError(
                    f"{source}:{number}: not a recording line ({exc}); expected "
                    '{"t": ns, "venue": .., "stream": .., "raw": ..}'
                ) from None
            if not isinstance(record.raw, str):
                raise RecordingError(f"{source}:{number}: 'raw' must be the payload text")
            yield record


def _checked(path: Path, records: Iterator[Record]) -> Iterator[Record]:
    last = None
    for number, record in enumerate(records, 1):
        if last is not None and record.t_ns < last:
            raise RecordingError(
                f"{path}: record {number} goes back in time ({record.t_ns} < {last}); "
                "a recording must be in receive order to be merged"
            )
        last = record.t_ns
        yield record


def _ordered(path: Path, index: int) -> Iterator[tuple[int, int, int, Record]]:
    for number, record in enumerate(_checked(path, read_recording(path))):
        yield record.t_ns, index, number, record


def merge_recordings(paths: Iterable[str | Path]) -> Iterator[Record]:
    """All records of ``paths`` in receive-time order (a heap merge: one pending line
    per file in memory). Equal times keep the order of ``paths``, then file order."""
    streams = [_ordered(Path(path), index) for index, path in enumerate(paths)]
    for _, _, _, record in heapq.merge(*streams):
        yield record
