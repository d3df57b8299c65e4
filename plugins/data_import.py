"""``quoteforge data import``: third-party market-data recordings converted into the
project's recording format (``quoteforge.exchanges.recording``), so a backtest replays them.

Two formats, for Binance spot and USDⓈ-M futures:

- ``hftbacktest``: the collector files of the hftbacktest project, one line per received
  message, ``<local receive time, ns> <raw JSON>``. A combined-stream message
  (``{"stream": .., "data": ..}``) becomes a record on that stream whose payload is the
  ``data`` text exactly as received; a REST depth snapshot (``{"lastUpdateId": ..}``)
  becomes a record on ``rest:/api/v3/depth?symbol=..`` (``/fapi/v1/depth`` when it
  carries the futures fields ``E``/``T``). Other lines (subscription answers) are skipped.
- ``tardis``: Tardis.dev CSV datasets, ``incremental_book_L2`` and ``trades``, told apart
  by their header. Tardis keeps no update ids, so the book rows are turned back into the
  venue's wire messages with synthesised ids: the rows of a snapshot become one REST
  depth snapshot, each later group of rows with the same ``local_timestamp`` one
  ``depthUpdate`` whose ids continue the previous one without a hole (USDⓈ-M: ``pu`` is
  the previous ``u``, the first event after a snapshot covers the snapshot's id). A new
  snapshot in the middle of a file (the collector reconnected) is a new REST snapshot the
  replay applies in place of the book. Trades become ``trade`` messages (``m``, the buyer
  was the maker, is Tardis ``side`` = ``sell``: the seller took).

The output is written to a temporary file beside ``--out`` and renamed at the end, so a
failed import never leaves half a recording. A malformed line stops the import with
``FILE:LINE: what was expected``; ``--skip-bad-lines`` counts and reports them instead.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import heapq
import io
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, cast

import orjson

from quoteforge import hookimpl
from quoteforge.exchanges.recording import Record
from quoteforge.progress import Progress
from quoteforge.registry import RegisterCommand

__all__ = [
    "FORMATS",
    "DataImportError",
    "ImportReport",
    "data_main",
    "import_recording",
    "read_hftbacktest",
    "read_tardis",
]

FORMATS = ("hftbacktest", "tardis")
_MAX_REPORTED = 10  # bad lines named one by one in the report; the rest are counted


class DataImportError(ValueError):
    """An input that cannot be converted; the message names file, line and what was
    expected."""


@dataclass
class ImportReport:
    """What an import read and wrote."""

    out: Path
    records: int = 0
    lines: int = 0
    ignored: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)
    first_ns: int | None = None
    last_ns: int | None = None
    streams: dict[str, int] = field(default_factory=dict)

    def bad(self, message: str) -> None:
        self.bad_lines += 1
        if len(self.bad_examples) < _MAX_REPORTED:
            self.bad_examples.append(message)

    def summary(self) -> str:
        span = (
            (self.last_ns - self.first_ns) / 1e9
            if self.first_ns is not None and self.last_ns is not None
            else 0.0
        )
        lines = [
            f"wrote {self.records} records ({span:.1f} s of data) from {self.lines} lines "
            f"to {self.out}"
        ]
        for stream, count in sorted(self.streams.items()):
            lines.append(f"  {stream}: {count}")
        if self.ignored:
            lines.append(f"  {self.ignored} messages left out (not market data, or not kept)")
        if self.bad_lines:
            lines.append(f"  {self.bad_lines} bad lines skipped:")
            lines += [f"    {m}" for m in self.bad_examples]
            if self.bad_lines > len(self.bad_examples):
                lines.append(f"    ... and {self.bad_lines - len(self.bad_examples)} more")
        return "\n".join(lines)


class _BadLineError(Exception):
    """One malformed input line; ``--skip-bad-lines`` counts it, otherwise it ends the
    import as a ``DataImportError``."""


# -- reading files -----------------------------------------------------------------------------


class _Input:
    """A text file (gzip-compressed if it ends in .gz) read line by line, with the byte
    position in the file on disk for progress."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._raw: IO[bytes] = path.open("rb")
        except OSError as exc:
            raise DataImportError(f"{path}: cannot read ({exc.strerror or exc})") from None
        binary = (
            cast(IO[bytes], gzip.GzipFile(fileobj=self._raw, mode="rb"))
            if path.suffix == ".gz"
            else self._raw
        )
        self._text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        self.size = os.fstat(self._raw.fileno()).st_size

    def position(self) -> int:
        return self._raw.tell()

    def lines(self) -> Iterator[tuple[int, str]]:
        try:
            yield from enumerate(self._text, 1)
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise DataImportError(f"{self.path}: unreadable ({exc})") from None

    def close(self) -> None:
        self._text.close()
        self._raw.close()


class _Reader:
    """Lines of several inputs, counted for the report and the progress bar; a bad
    line is raised or counted (``skip_bad``)."""

    def __init__(self, paths: list[Path], report: ImportReport, skip_bad: bool) -> None:
        self.inputs = [_Input(p) for p in paths]
        self.report = report
        self.skip_bad = skip_bad
        self.progress: Progress | None = None
        self._done = 0  # bytes of the inputs already finished

    def total(self) -> int:
        return sum(i.size for i in self.inputs)

    def lines(self, index: int) -> Iterator[tuple[int, str]]:
        source = self.inputs[index]
        for number, line in source.lines():
            self.report.lines += 1
            if self.progress is not None and number % 512 == 0:
                self._tick()
            yield number, line
        self._tick()

    def _tick(self) -> None:
        if self.progress is None:
            return
        now = sum(i.position() for i in self.inputs)
        self.progress.update(now - self.progress.n)

    def failed(self, index: int, number: int, what: str) -> None:
        message = f"{self.inputs[index].path}:{number}: {what}"
        if not self.skip_bad:
            raise DataImportError(message)
        self.report.bad(message)

    def close(self) -> None:
        for source in self.inputs:
            source.close()


# -- hftbacktest ---------------------------------------------------------------------------------

_HFT_EXPECTED = 'expected "<receive time in ns> <JSON message>"'


def _hft_record(line: str, symbol: str | None) -> tuple[int, str | None, str, str] | None:
    """(t_ns, symbol or None, stream, raw) of one collector line; None for a message
    that is not market data. ``stream`` of a snapshot is completed by the caller when
    the symbol is known only from other lines."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    stamp, sep, payload = text.partition(" ")
    if not sep or not stamp.isdigit():
        raise _BadLineError(f"{_HFT_EXPECTED}, got {text[:60]!r}")
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _BadLineError(f"the message is not JSON ({exc}); {_HFT_EXPECTED}") from None
    if type(msg) is not dict:
        raise _BadLineError(f"the message must be a JSON object; {_HFT_EXPECTED}")
    t_ns = int(stamp)
    if "lastUpdateId" in msg:
        if type(msg["lastUpdateId"]) is not int or "bids" not in msg or "asks" not in msg:
            raise _BadLineError("a depth snapshot needs an integer lastUpdateId, bids and asks")
        path = "/fapi/v1/depth" if ("T" in msg or "E" in msg) else "/api/v3/depth"
        return t_ns, symbol.upper() if symbol else None, f"rest:{path}", payload
    if "stream" in msg and "data" in msg:
        stream = msg["stream"]
        data = msg["data"]
        if type(stream) is not str or "@" not in stream or type(data) is not dict:
            raise _BadLineError(
                'a combined-stream message needs "stream": "<symbol>@<kind>" and a "data" object'
            )
        prefix = '{"stream":' + orjson.dumps(stream).decode() + ',"data":'
        raw = ""
        if payload.startswith(prefix) and payload.endswith("}"):
            raw = payload[len(prefix) : -1]  # the data text exactly as the venue sent it
        if not raw or _loads_or_none(raw) != data:
            raw = orjson.dumps(data).decode()  # another layout: the same values re-encoded
        return t_ns, stream.partition("@")[0].upper(), stream, raw
    return None  # subscription answers and other control messages


def _loads_or_none(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def read_hftbacktest(
    path: str | Path, *, venue: str = "binance", symbol: str | None = None
) -> Iterator[Record]:
    """The records of one hftbacktest collector file, in file order (a bad line raises
    ``DataImportError``)."""
    report = ImportReport(Path(path))
    reader = _Reader([Path(path)], report, skip_bad=False)
    try:
        yield from _hft_records(reader, 0, venue, symbol)
    finally:
        reader.close()


def _hft_records(reader: _Reader, index: int, venue: str, symbol: str | None) -> Iterator[Record]:
    known: set[str] = {symbol.upper()} if symbol else set()
    # A snapshot before any stream message names the symbol waits, and so does what
    # follows it, until one does: the records keep file order.
    waiting: list[tuple[int, int, str, str]] = []
    for number, line in reader.lines(index):
        try:
            got = _hft_record(line, symbol)
        except _BadLineError as exc:
            reader.failed(index, number, str(exc))
            continue
        if got is None:
            if line.strip():
                reader.report.ignored += 1
            continue
        t_ns, sym, stream, raw = got
        if sym is not None and not stream.startswith("rest:"):
            known.add(sym)
        if not known or waiting:
            waiting.append((number, t_ns, stream, raw))
            if not known:
                continue
            if len(known) > 1:
                raise DataImportError(
                    f"{reader.inputs[index].path}:{waiting[0][0]}: cannot tell which symbol "
                    f"this depth snapshot belongs to (the file has {sorted(known)}); "
                    "give --symbol"
                )
            only = next(iter(known))
            for _, w_t, w_stream, w_raw in waiting:
                if w_stream.startswith("rest:"):
                    w_stream = f"{w_stream}?symbol={only}"
                yield Record(w_t, venue, w_stream, w_raw)
            waiting.clear()
            continue
        if stream.startswith("rest:"):
            if sym is None:
                if len(known) > 1:
                    raise DataImportError(
                        f"{reader.inputs[index].path}:{number}: cannot tell which symbol this "
                        f"depth snapshot belongs to (the file has {sorted(known)}); give --symbol"
                    )
                sym = next(iter(known))
            stream = f"{stream}?symbol={sym}"
        yield Record(t_ns, venue, stream, raw)
    if waiting:
        raise DataImportError(
            f"{reader.inputs[index].path}:{waiting[0][0]}: a depth snapshot, but no stream "
            "message names its symbol; give --symbol"
        )


# -- Tardis.dev CSV -----------------------------------------------------------------------------

_BOOK_COLUMNS = (
    "exchange",
    "symbol",
    "timestamp",
    "local_timestamp",
    "is_snapshot",
    "side",
    "price",
    "amount",
)
_TRADE_COLUMNS = (
    "exchange",
    "symbol",
    "timestamp",
    "local_timestamp",
    "id",
    "side",
    "price",
    "amount",
)
_TARDIS_EXCHANGES = {"binance": False, "binance-futures": True}  # name -> USDⓈ-M
_PLAIN_NUMBER = re.compile(r"\d+(\.\d+)?")


def _number(text: str, name: str) -> str:
    """A non-negative decimal as plain digits (Tardis may write ``1e-05``)."""
    if _PLAIN_NUMBER.fullmatch(text):
        return text
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise _BadLineError(f"{name} must be a decimal number, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise _BadLineError(f"{name} must be a finite number >= 0, got {text!r}")
    return format(value, "f")


def _micros(text: str, name: str) -> int:
    if not text.isdigit():
        raise _BadLineError(f"{name} must be microseconds since the epoch (digits), got {text!r}")
    return int(text)


def _dump(payload: object) -> str:
    return orjson.dumps(payload).decode()


class _TardisBook:
    """One symbol's ``incremental_book_L2`` rows turned back into wire messages."""

    def __init__(self, symbol: str, futures: bool, venue: str) -> None:
        self.symbol = symbol
        self.futures = futures
        self.venue = venue
        self.next_id = 1_000  # synthesised update ids; any start does, they only chain
        self.depth_stream = f"{symbol.lower()}@depth"
        path = "/fapi/v1/depth" if futures else "/api/v3/depth"
        self.snapshot_stream = f"rest:{path}?symbol={symbol}"
        self.synced = False  # a snapshot was seen: updates before the first are dropped
        self.after_snapshot = False

    def snapshot(self, t_us: int, ts_us: int, bids: dict[str, str], asks: dict[str, str]) -> Record:
        # The first event after a futures snapshot must cover its id (U <= id <= u);
        # after a spot snapshot it must be the id that follows.
        last_id = self.next_id if self.futures else self.next_id - 1
        body: dict[str, Any] = {"lastUpdateId": last_id}
        if self.futures:
            body["E"] = ts_us // 1000
            body["T"] = ts_us // 1000
        body["bids"] = [[p, q] for p, q in sorted(bids.items(), key=_price_key, reverse=True)]
        body["asks"] = [[p, q] for p, q in sorted(asks.items(), key=_price_key)]
        self.synced = True
        self.after_snapshot = True
        return Record(t_us * 1000, self.venue, self.snapshot_stream, _dump(body))

    def update(self, t_us: int, ts_us: int, bids: list[list[str]], asks: list[list[str]]) -> Record:
        first = self.next_id
        self.next_id += 1
        event_ms = ts_us // 1000
        msg: dict[str, Any] = {"e": "depthUpdate", "E": event_ms}
        if self.futures:
            msg["T"] = event_ms
        msg["s"] = self.symbol
        msg["U"] = first
        msg["u"] = first
        if self.futures:
            msg["pu"] = first - 1
        msg["b"] = bids
        msg["a"] = asks
        self.after_snapshot = False
        return Record(t_us * 1000, self.venue, self.depth_stream, _dump(msg))


def _price_key(item: tuple[str, str]) -> Decimal:
    return Decimal(item[0])


def _header(reader: _Reader, index: int, first: str) -> list[str]:
    columns = [c.strip() for c in first.strip().split(",")]
    if tuple(columns[:8]) in (_BOOK_COLUMNS, _TRADE_COLUMNS):
        return columns
    raise DataImportError(
        f"{reader.inputs[index].path}:1: expected a Tardis CSV header, "
        f"incremental_book_L2 ({','.join(_BOOK_COLUMNS)}) or trades "
        f"({','.join(_TRADE_COLUMNS)}); got {first.strip()[:120]!r}"
    )


def _tardis_rows(reader: _Reader, index: int) -> tuple[bool, Iterator[tuple[int, list[str]]]]:
    """(is a book file, its data rows as (line number, fields))."""
    lines = reader.lines(index)
    first = next(lines, None)
    if first is None:
        raise DataImportError(f"{reader.inputs[index].path}: empty file; expected a Tardis CSV")
    columns = _header(reader, index, first[1])
    book = tuple(columns[:8]) == _BOOK_COLUMNS
    width = len(columns)

    def rows() -> Iterator[tuple[int, list[str]]]:
        for number, line in lines:
            if not line.strip():
                continue
            fields = next(csv.reader([line]))
            if len(fields) != width:
                reader.failed(
                    index,
                    number,
                    f"expected {width} comma-separated fields ({','.join(columns)}), "
                    f"got {len(fields)}",
                )
                continue
            yield number, fields

    return book, rows()


def _exchange(name: str) -> bool:
    try:
        return _TARDIS_EXCHANGES[name]
    except KeyError:
        raise _BadLineError(
            f"exchange {name!r} is not supported; expected one of {sorted(_TARDIS_EXCHANGES)}"
        ) from None


def _tardis_book_records(
    reader: _Reader, index: int, rows: Iterator[tuple[int, list[str]]], venue: str
) -> Iterator[Record]:
    books: dict[str, _TardisBook] = {}
    group_key: tuple[str, int, bool] | None = None
    group_ts = 0
    bids_snap: dict[str, str] = {}
    asks_snap: dict[str, str] = {}
    bids: list[list[str]] = []
    asks: list[list[str]] = []
    last_t = -1
    last_line = 0

    def flush() -> Record | None:
        if group_key is None:
            return None
        symbol, t_us, snapshot = group_key
        book = books[symbol]
        if snapshot:
            return book.snapshot(t_us, group_ts, bids_snap, asks_snap)
        if not book.synced:
            reader.report.ignored += len(bids) + len(asks)
            return None
        return book.update(t_us, group_ts, bids, asks)

    for number, fields in rows:
        try:
            futures = _exchange(fields[0])
            symbol = fields[1].upper()
            ts_us = _micros(fields[2], "timestamp")
            t_us = _micros(fields[3], "local_timestamp")
            flag = fields[4].lower()
            if flag not in ("true", "false"):
                raise _BadLineError(f"is_snapshot must be true or false, got {fields[4]!r}")
            side = fields[5].lower()
            if side not in ("bid", "ask"):
                raise _BadLineError(f"side must be bid or ask, got {fields[5]!r}")
            price = _number(fields[6], "price")
            amount = _number(fields[7], "amount")
            _check_arrival_order(t_us, last_t, last_line)
        except _BadLineError as exc:
            reader.failed(index, number, str(exc))
            continue
        last_t, last_line = t_us, number
        snapshot = flag == "true"
        book = books.get(symbol)
        if book is None:
            book = books[symbol] = _TardisBook(symbol, futures, venue)
        key = (symbol, t_us, snapshot)
        if snapshot and group_key is not None and group_key[0] == symbol and group_key[2]:
            key = group_key  # a snapshot's rows are one message even across timestamps
        if key != group_key:
            record = flush()
            if record is not None:
                yield record
            group_key = key
            group_ts = ts_us
            bids_snap, asks_snap, bids, asks = {}, {}, [], []
        if snapshot:
            (bids_snap if side == "bid" else asks_snap)[price] = amount
        else:
            (bids if side == "bid" else asks).append([price, amount])
    record = flush()
    if record is not None:
        yield record


def _check_arrival_order(t_us: int, last_t: int, last_line: int) -> None:
    """Tardis rows must come in the order they arrived (``local_timestamp``)."""
    if t_us < last_t:
        raise _BadLineError(
            f"local_timestamp {t_us} goes back in time (line {last_line} had {last_t}); "
            "rows must be in arrival order"
        )


def _tardis_trade_records(
    reader: _Reader, index: int, rows: Iterator[tuple[int, list[str]]], venue: str
) -> Iterator[Record]:
    last_t = -1
    last_line = 0
    for number, fields in rows:
        try:
            _exchange(fields[0])
            symbol = fields[1].upper()
            ts_us = _micros(fields[2], "timestamp")
            t_us = _micros(fields[3], "local_timestamp")
            trade_id: int | str = int(fields[4]) if fields[4].isdigit() else fields[4]
            side = fields[5].lower()
            if side not in ("buy", "sell"):
                raise _BadLineError(
                    f"side must be buy or sell (the aggressor), got {fields[5]!r}; Binance "
                    "always says which side took"
                )
            price = _number(fields[6], "price")
            amount = _number(fields[7], "amount")
            _check_arrival_order(t_us, last_t, last_line)
        except _BadLineError as exc:
            reader.failed(index, number, str(exc))
            continue
        last_t, last_line = t_us, number
        event_ms = ts_us // 1000
        msg = {
            "e": "trade",
            "E": event_ms,
            "s": symbol,
            "t": trade_id,
            "p": price,
            "q": amount,
            "T": event_ms,
            "m": side == "sell",  # the seller took, so the buyer was the maker
            "M": True,
        }
        yield Record(t_us * 1000, venue, f"{symbol.lower()}@trade", _dump(msg))


def read_tardis(
    paths: Iterable[str | Path], *, venue: str = "binance", skip_bad_lines: bool = False
) -> Iterator[Record]:
    """The records converted from Tardis CSV files, merged in arrival order."""
    files = [Path(p) for p in paths]
    report = ImportReport(Path())
    reader = _Reader(files, report, skip_bad_lines)
    try:
        yield from _merged(_tardis_streams(reader, venue))
    finally:
        reader.close()


def _tardis_streams(reader: _Reader, venue: str) -> list[Iterator[Record]]:
    streams = []
    for index in range(len(reader.inputs)):
        book, rows = _tardis_rows(reader, index)
        make = _tardis_book_records if book else _tardis_trade_records
        streams.append(make(reader, index, rows, venue))
    return streams


def _merged(streams: list[Iterator[Record]]) -> Iterator[Record]:
    """Records of several time-ordered streams in time order; ties keep the order of
    the inputs, then file order."""
    if len(streams) == 1:
        yield from streams[0]
        return

    def keyed(index: int, stream: Iterator[Record]) -> Iterator[tuple[int, int, int, Record]]:
        for n, record in enumerate(stream):
            yield record.t_ns, index, n, record

    for _, _, _, record in heapq.merge(*(keyed(i, s) for i, s in enumerate(streams))):
        yield record


# -- the import ----------------------------------------------------------------------------------


def import_recording(
    fmt: str,
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    venue: str = "binance",
    symbol: str | None = None,
    skip_bad_lines: bool = False,
    keep: Iterable[str] | None = None,
    progress: bool = True,
) -> ImportReport:
    """Convert ``paths`` (format ``fmt``: hftbacktest or tardis) into one recording at
    ``out`` (``.jsonl``, or ``.jsonl.gz`` compressed); returns what was done. ``keep``:
    only streams of these kinds (``depth``, ``trade``, ``bookTicker``...; REST snapshots
    are always kept). Raises ``DataImportError`` (nothing written) on a bad input."""
    if fmt not in FORMATS:
        raise DataImportError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    files = [Path(p) for p in paths]
    if not files:
        raise DataImportError("no input files given")
    for path in files:
        if not path.is_file():
            raise DataImportError(f"{path}: no such file")
    target = Path(out)
    if target.resolve() in {p.resolve() for p in files}:
        raise DataImportError(
            f"{target}: the output would overwrite an input; choose another --out"
        )
    if not target.parent.is_dir():
        raise DataImportError(f"{target.parent}: no such directory for --out")
    report = ImportReport(target)
    reader = _Reader(files, report, skip_bad_lines)
    temp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        streams: list[Iterator[Record]]
        if fmt == "hftbacktest":
            streams = [_hft_records(reader, i, venue, symbol) for i in range(len(files))]
        else:
            streams = _tardis_streams(reader, venue)
        shown = None if progress else io.StringIO()  # not a terminal: silent
        with (
            Progress(reader.total(), desc=f"import {fmt}", unit="B", stream=shown) as bar,
            _open_out(temp, target.suffix == ".gz") as handle,
        ):
            reader.progress = bar
            records = _merged(streams)
            if keep is not None:
                records = _kept(records, tuple(keep), report)
            _write(handle, records, report)
        if not report.records:
            raise DataImportError(_nothing_written(report, fmt, keep))
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        reader.close()
    return report


def _nothing_written(report: ImportReport, fmt: str, keep: Iterable[str] | None) -> str:
    """Why an import found no record: an empty recording replays nothing."""
    if not report.lines:
        return f"the input holds no lines (an empty file); expected a {fmt} recording"
    first, kinds = (report.bad_examples or [""])[0], ",".join(keep or ())
    if report.bad_lines:
        return f"no record: {report.bad_lines} of {report.lines} lines were bad (first: {first})"
    if keep is not None and report.ignored:
        return f"--keep {kinds} left none of the {report.ignored} messages: keep depth,trade..."
    return f"no market data in {report.lines} lines; expected a {fmt} recording"


def _kept(
    records: Iterator[Record], kinds: tuple[str, ...], report: ImportReport
) -> Iterator[Record]:
    for record in records:
        stream = record.stream
        if stream.startswith("rest:") or stream.partition("@")[2].startswith(kinds):
            yield record
        else:
            report.ignored += 1


def _open_out(path: Path, compress: bool) -> IO[str]:
    if compress:
        return io.TextIOWrapper(gzip.open(path, "wb"), encoding="utf-8", newline="\n")
    return path.open("w", encoding="utf-8", newline="\n")


def _write(handle: IO[str], records: Iterator[Record], report: ImportReport) -> None:
    write = handle.write
    streams = report.streams
    last = None
    for record in records:
        t = record.t_ns
        if last is not None and t < last:
            raise DataImportError(
                f"record {report.records + 1} ({record.stream}) goes back in time "
                f"({t} < {last}); the input is not in receive order"
            )
        last = t
        if report.first_ns is None:
            report.first_ns = t
        write(record.to_line())
        write("\n")
        report.records += 1
        kind = _stream_kind(record.stream)
        streams[kind] = streams.get(kind, 0) + 1
    report.last_ns = last


def _stream_kind(stream: str) -> str:
    if stream.startswith("rest:"):
        return stream.partition("?")[0]
    return "@" + stream.partition("@")[2] if "@" in stream else stream


# -- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quoteforge data",
        description="Market-data files: convert third-party recordings for backtests.",
    )
    sub = p.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    imp = sub.add_parser(
        "import",
        help="convert hftbacktest or Tardis.dev files into a quoteforge recording",
        description="Convert third-party recordings into a quoteforge recording "
        "(replayed by the 'replay' exchange in a backtest).",
    )
    imp.add_argument(
        "format",
        choices=FORMATS,
        metavar="FORMAT",
        help="hftbacktest (collector files: '<ns> <JSON>' lines) or tardis "
        "(incremental_book_L2 and trades CSV)",
    )
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE", help="input files (.gz ok)")
    imp.add_argument(
        "--out", required=True, type=Path, metavar="RECORDING", help="output .jsonl or .jsonl.gz"
    )
    imp.add_argument(
        "--venue", default="binance", help="venue name written on each record (default binance)"
    )
    imp.add_argument(
        "--symbol",
        help="hftbacktest: the symbol of the depth snapshots (default: from the streams)",
    )
    imp.add_argument(
        "--keep",
        metavar="KIND[,KIND]",
        help="only these stream kinds, e.g. depth,trade (REST snapshots are always kept)",
    )
    imp.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip malformed lines and report how many, instead of stopping at the first",
    )
    return p


def data_main(argv: list[str]) -> int:
    """``quoteforge data ...``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        report = import_recording(
            args.format,
            args.files,
            args.out,
            venue=args.venue,
            symbol=args.symbol,
            skip_bad_lines=args.skip_bad_lines,
            keep=[k.strip() for k in args.keep.split(",") if k.strip()] if args.keep else None,
        )
    except DataImportError as exc:
        print(f"quoteforge data import: {exc}\nnothing written to {args.out}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


@hookimpl
def quoteforge_register_commands(register: RegisterCommand) -> None:
    register(
        "data",
        data_main,
        help="market-data files: 'data import' converts hftbacktest or Tardis.dev recordings",
    )
