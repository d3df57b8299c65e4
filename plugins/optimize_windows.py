"""Walk-forward windows: a recording cut into consecutive spans of recorded time, each a
recording of its own that a backtest replays from its first record.

A span that starts inside the recording would begin with depth diffs and no book, so
each window after the first starts with a depth snapshot built from the recording
itself: the snapshot and diffs before the window's start are applied (Binance's rules:
a diff whose ``u`` is not past the book's id is dropped, a gap in ``U``/``pu`` leaves
the book unknown until the next recorded snapshot) and the book is written as a REST
snapshot whose ``lastUpdateId`` is the last applied ``u``, so the window's first diff
continues it exactly. For ``binance_futures`` (whose first diff after a snapshot must
cover its id) the last applied diff is written again after the snapshot; applying it
twice changes nothing, since a diff carries absolute sizes. ``kraken_v2`` recordings
are not cut (their checksummed snapshots are not rebuilt).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

__all__ = ["Window", "WindowError", "cut_windows", "replay_source"]

_PROTOCOLS = ("binance_spot", "binance_futures")
_MAX_LEVELS = 1000  # a REST depth snapshot's deepest answer
_NS = 1_000_000_000
_MAX_PENDING = 1000  # diffs kept while a market waits for its snapshot


class WindowError(Exception):
    """A recording that cannot be cut; the message says why and what to do."""


@dataclass(frozen=True)
class Window:
    """One span of a recording written as its own file."""

    path: Path
    start_ns: int
    end_ns: int
    records: int
    label: str


@dataclass
class _Book:
    stream: str
    venue: str
    last_id: int = 0
    synced: bool = False
    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)
    last_diff: dict[str, Any] | None = None


def replay_source(manifest: Any) -> tuple[Path, str, list[str]]:
    """The one recording the manifest's replay exchanges read, their protocol, and the
    manifest keys that name it (to point them at a window)."""
    sources: set[str] = set()
    protocols: set[str] = set()
    keys: list[str] = []
    for name, spec in manifest.exchanges.items():
        if spec.type != "replay":
            continue
        data = spec.params.get("data")
        if data is None:
            data = manifest.run.data
            if "run.data" not in keys:
                keys.append("run.data")
        else:
            keys.append(f"exchanges.{name}.params.data")
        if not isinstance(data, str):
            raise WindowError(
                f"exchange {name}: walk-forward cuts one recording file; params.data lists "
                f"{len(data) if isinstance(data, list) else 0} (merge them into one first)"
            )
        sources.add(data)
        protocols.add(str(spec.params.get("protocol")))
    if not sources:
        raise WindowError(
            "walk-forward needs a backtest over a recording: the manifest has no replay "
            "exchange (see docs/backtest.md)"
        )
    if len(sources) > 1 or len(protocols) > 1:
        raise WindowError(
            f"walk-forward cuts one recording, the manifest replays {sorted(sources)}"
        )
    protocol = protocols.pop()
    if protocol not in _PROTOCOLS:
        raise WindowError(
            f"walk-forward windows are cut for {' and '.join(_PROTOCOLS)} recordings; "
            f"{protocol} is not supported (its snapshots are not rebuilt)"
        )
    return Path(sources.pop()), protocol, keys


def _read(path: Path) -> list[dict[str, Any]]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    records = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # the replay skips malformed lines too
    except OSError as exc:
        raise WindowError(f"{path}: cannot read the recording ({exc})") from None
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("t"), int)]


def _payload(raw: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return None
    if isinstance(obj, dict) and isinstance(obj.get("data"), dict):
        obj = obj["data"]
    return obj if isinstance(obj, dict) else None


def _set_levels(side: dict[str, str], levels: Any) -> None:
    for price, qty in levels or ():
        if Decimal(qty) == 0:
            side.pop(price, None)
        else:
            side[price] = qty


def _track(
    books: dict[str, _Book],
    pending: dict[str, list[dict[str, Any]]],
    record: dict[str, Any],
    futures: bool,
) -> None:
    stream = str(record.get("stream", ""))
    if stream.startswith("rest:") and "depth" in stream:
        _, _, rest = stream.partition("symbol=")
        symbol = rest.split("&", 1)[0].upper()
        body = _payload(record.get("raw", ""))
        if not symbol or body is None or "lastUpdateId" not in body:
            return
        book = _Book(stream, str(record.get("venue", "")), int(body["lastUpdateId"]), True)
        _set_levels(book.bids, body.get("bids"))
        _set_levels(book.asks, body.get("asks"))
        books[symbol] = book
        # As live: the diffs received while the snapshot was on its way bridge it.
        for waiting in pending.pop(symbol, []):
            _apply(book, waiting, futures)
        return
    if "@depth" not in stream:
        return
    body = _payload(record.get("raw", ""))
    if body is None or "u" not in body:
        return
    symbol = str(body.get("s", "")).upper()
    known = books.get(symbol)
    if known is None or not known.synced:
        queue = pending.setdefault(symbol, [])
        queue.append(record)
        del queue[:-_MAX_PENDING]
        return
    _apply(known, record, futures)


def _apply(book: _Book, record: dict[str, Any], futures: bool) -> None:
    body = _payload(record.get("raw", ""))
    if body is None or "u" not in body:
        return
    first, last = int(body.get("U", 0)), int(body["u"])
    if book.last_diff is None:  # the first diff after the snapshot must bridge it
        if last < book.last_id or (last == book.last_id and not futures):
            return  # older than the snapshot
        ok = first <= book.last_id + (0 if futures else 1)
    else:
        if last <= book.last_id:
            return  # already applied
        # Spot: an overlap is safe (sizes are absolute), a hole is not. Futures: chained.
        ok = int(body.get("pu", -1)) == book.last_id if futures else first <= book.last_id + 1
    if not ok:
        book.synced = False  # a gap: unknown until the next recorded snapshot
        return
    _set_levels(book.bids, body.get("b"))
    _set_levels(book.asks, body.get("a"))
    book.last_id = last
    book.last_diff = record


def _snapshot_records(books: dict[str, _Book], t_ns: int, futures: bool) -> list[dict[str, Any]]:
    out = []
    for book in books.values():
        if not book.synced:
            continue
        bids = sorted(book.bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)
        asks = sorted(book.asks.items(), key=lambda kv: Decimal(kv[0]))
        body = {
            "lastUpdateId": book.last_id,
            "bids": [list(level) for level in bids[:_MAX_LEVELS]],
            "asks": [list(level) for level in asks[:_MAX_LEVELS]],
        }
        raw = json.dumps(body, separators=(",", ":"))
        out.append({"t": t_ns, "venue": book.venue, "stream": book.stream, "raw": raw})
        if futures and book.last_diff is not None:
            out.append({**book.last_diff, "t": t_ns})
    return out


def cut_windows(source: Path, protocol: str, count: int, folder: Path) -> list[Window]:
    """Write ``count`` windows of equal recorded time (boundaries on whole seconds from
    the first record) as ``folder/window-N.jsonl``."""
    if protocol not in _PROTOCOLS:
        raise WindowError(f"cannot cut a {protocol} recording; supported: {', '.join(_PROTOCOLS)}")
    records = _read(source)
    if len(records) < count:
        raise WindowError(f"{source}: {len(records)} records cannot make {count} windows")
    records.sort(key=lambda r: r["t"])
    t0, t1 = records[0]["t"], records[-1]["t"]
    span = (t1 - t0) / count
    if span < _NS:
        raise WindowError(
            f"{source}: {(t1 - t0) / _NS:.1f}s of recorded time cannot make {count} windows "
            "of at least a second"
        )
    folder.mkdir(parents=True, exist_ok=True)
    futures = protocol == "binance_futures"
    books: dict[str, _Book] = {}
    pending: dict[str, list[dict[str, Any]]] = {}
    windows: list[Window] = []
    index = 0
    for n in range(count):
        # Whole seconds from the recording's start: a window's samples then fall at the
        # same recorded instants as the whole recording's.
        start = t0 + _NS * round(n * span / _NS)
        end = t0 + _NS * round((n + 1) * span / _NS) if n < count - 1 else t1 + 1
        lines = _snapshot_records(books, start, futures) if n else []
        while index < len(records) and records[index]["t"] < end:
            record = records[index]
            _track(books, pending, record, futures)
            lines.append(record)
            index += 1
        path = folder / f"window-{n}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for record in lines:
                fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        label = f"{(start - t0) / 1e9:.0f}s..{(min(end, t1) - t0) / 1e9:.0f}s"
        windows.append(Window(path.resolve(), start, end, len(lines), label))
    return windows
