"""Recorded market data: one JSON line per received message, and a reader that replays
several recordings merged in receive-time order without loading them whole."""

from __future__ import annotations

import gzip
import heapq
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

if TYPE_CHECKING:
    from quoteforge.clock import Clock

__all__ = [
    "Record",
    "RecordingError",
    "RecordingWriter",
    "merge_recordings",
    "read_recording",
    "record_batches",
]

#: One record as ``record_batches`` delivers it: (t_ns, venue, stream, raw).
RecordTuple = tuple[int, str, str, str]


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


def _bad_line(source: Path, number: int, exc: Exception) -> RecordingError:
    return RecordingError(
        f"{source}:{number}: not a recording line ({exc}); expected "
        '{"t": ns, "venue": .., "stream": .., "raw": ..}'
    )


def _parse(source: Path, number: int, line: str) -> RecordTuple:
    """One line as (t, venue, stream, raw); the checks and conversions of
    ``read_recording``."""
    try:
        row = _loads(line)
        t = row["t"]
        if type(t) is not int:
            t = int(t)
        venue = row["venue"]
        if type(venue) is not str:
            venue = str(venue)
        stream = row["stream"]
        if type(stream) is not str:
            stream = str(stream)
        raw = row["raw"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _bad_line(source, number, exc) from None
    if not isinstance(raw, str):
        raise RecordingError(f"{source}:{number}: 'raw' must be the payload text")
    return t, venue, stream, raw


def read_recording(path: str | Path) -> Iterator[Record]:
    """The records of one file, in file order, one line at a time."""
    source = Path(path)
    with _open(source, "r") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            yield Record(*_parse(source, number, line))


_BATCH_CHARS = 1 << 20  # about a megabyte of lines per read

_parse_lines: Callable[[list[str], int | None], list[RecordTuple] | None] | None = None
if os.environ.get("QUOTEFORGE_PURE_PYTHON", "").strip().lower() not in ("1", "true", "yes"):
    try:  # the compiled reader of the common line shape (optional, see setup.py)
        from quoteforge.exchanges._fastrec import parse_lines as _parse_lines
    except ImportError:  # built without a C compiler: the interpreted reader serves
        _parse_lines = None


def _file_batches(source: Path) -> Iterator[list[RecordTuple]]:
    """The records of one file in order, a list per read: blank lines skipped, times
    checked to never go back. A bad line ends the stream with ``RecordingError``
    after the good records before it were delivered."""
    last: int | None = None
    number = 0  # lines read so far
    count = 0  # records so far
    loads = _loads
    with _open(source, "r") as handle:
        while True:
            try:
                lines = handle.readlines(_BATCH_CHARS)
            except (UnicodeDecodeError, EOFError, OSError, zlib.error) as exc:
                raise RecordingError(
                    f"{source}: unreadable after line {number} ({exc}): the file is damaged "
                    "(bytes that are not UTF-8 text, or a compressed file cut short); "
                    "record again or cut the file before the damage"
                ) from None
            if not lines:
                return
            # Every line of the common shape, in time order: read in one compiled call.
            # Any other read (a blank or unusual line, time going back) goes the
            # interpreted way below, which accepts what is valid and names what is not.
            batch = _parse_lines(lines, last) if _parse_lines is not None else None
            if batch:
                number += len(lines)
                count += len(batch)
                last = batch[-1][0]
                yield batch
                continue
            batch = []
            append = batch.append
            error: RecordingError | None = None
            for line in lines:
                number += 1
                # The common shape of a line, read without the generic checks; any
                # other line (blank, unusual types, broken) takes the careful path.
                try:
                    row = loads(line)
                    t = row["t"]
                    venue = row["venue"]
                    stream = row["stream"]
                    raw = row["raw"]
                    fast = (
                        type(t) is int
                        and type(venue) is str
                        and type(stream) is str
                        and type(raw) is str
                    )
                except Exception:
                    fast = False
                if not fast:
                    if not line.strip():
                        continue
                    try:
                        t, venue, stream, raw = _parse(source, number, line)
                    except RecordingError as exc:
                        error = exc
                        break
                count += 1
                if last is not None and t < last:
                    error = RecordingError(
                        f"{source}: record {count} goes back in time ({t} < {last}); "
                        "a recording must be in receive order to be merged"
                    )
                    break
                last = t
                append((t, venue, stream, raw))
            if batch:
                yield batch
            if error is not None:
                raise error


def record_batches(
    paths: Iterable[str | Path], venue: str | None = None
) -> Iterator[list[RecordTuple]]:
    """The records of ``paths`` in receive-time order, as ``merge_recordings`` gives
    them, in lists of (t_ns, venue, stream, raw) tuples: one list per read of a
    single file, so a replay loops over plain lists instead of resuming generators.
    ``venue``: only the records of that recorded venue."""
    sources = [Path(path) for path in paths]
    batches = _file_batches(sources[0]) if len(sources) == 1 else _merged_batches(sources)
    if venue is None:
        yield from batches
        return
    for batch in batches:
        kept = [r for r in batch if r[1] == venue]
        if kept:
            yield kept


def _merged_batches(sources: list[Path]) -> Iterator[list[RecordTuple]]:
    def ordered(index: int, source: Path) -> Iterator[tuple[int, int, int, RecordTuple]]:
        number = 0
        for batch in _file_batches(source):
            for record in batch:
                yield record[0], index, number, record
                number += 1

    streams = [ordered(index, source) for index, source in enumerate(sources)]
    batch: list[RecordTuple] = []
    try:
        for _, _, _, record in heapq.merge(*streams):
            batch.append(record)
            if len(batch) >= 4096:
                yield batch
                batch = []
    except RecordingError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


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
