"""Kraken spot websocket v2 ``book`` channel: snapshot then updates, truncated to the
subscribed depth, each checked against Kraken's CRC32 of the top 10 levels."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pydantic import Field, field_validator

from quoteforge.book.l2 import BookState
from quoteforge.book.source import BookSource, BookSourceParams, Outcome
from quoteforge.book.wire import strip_checksum_digits
from quoteforge.model import Side

__all__ = ["KRAKEN_DEPTHS", "KrakenBookParams", "KrakenBookSource", "kraken_checksum"]

KRAKEN_DEPTHS = (10, 25, 100, 500, 1000)
CHECKSUM_LEVELS = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_BUY = Side.BUY
_SELL = Side.SELL


class KrakenBookParams(BookSourceParams):
    depth: int = Field(10, description="Subscribed book depth: 10, 25, 100, 500 or 1000.")
    verify_checksum: bool = Field(True, description="Check Kraken's CRC32 on every message.")

    @field_validator("depth")
    @classmethod
    def _known_depth(cls, value: int) -> int:
        if value not in KRAKEN_DEPTHS:
            raise ValueError(f"depth must be one of {KRAKEN_DEPTHS}, got {value}")
        return value


def kraken_checksum(asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> int:
    """Kraken's book checksum from wire texts: asks best (lowest) first, then bids
    best (highest) first, at most 10 of each, each level as price then quantity with
    the point removed and leading zeros stripped; CRC32 as an unsigned integer."""
    parts = [strip_checksum_digits(p) + strip_checksum_digits(q) for p, q in asks[:10]]
    parts += [strip_checksum_digits(p) + strip_checksum_digits(q) for p, q in bids[:10]]
    return zlib.crc32("".join(parts).encode("ascii"))


def _decode(raw: str | bytes) -> Any:
    # Numbers stay as their wire text: the checksum depends on trailing zeros.
    try:
        return json.loads(raw, parse_float=str, parse_int=str)
    except RecursionError:
        # A book message is 4 levels deep; the decoder recurses once per level.
        raise ValueError("nested deeper than the decoder goes") from None


class KrakenBookSource(BookSource):
    """Kraken v2 ``book`` for one symbol.

    A ``snapshot`` message replaces the book; each ``update`` applies all its levels
    in order (qty 0 removes), then the book is cut to the subscribed depth, because
    Kraken does not send deletions for levels pushed out of range. The checksum of
    the top 10 levels is computed from the wire text kept per level. A mismatch
    marks the book RESYNCING and calls ``on_resync`` (resubscribe); updates are
    dropped until the next snapshot.
    """

    protocol: ClassVar[str] = "kraken_v2"
    Params: ClassVar[type[KrakenBookParams]] = KrakenBookParams

    def __init__(
        self,
        *args: Any,
        depth: int = 10,
        verify_checksum: bool = True,
        wire_symbol: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if depth not in KRAKEN_DEPTHS:
            raise ValueError(f"{self.book.key}: depth must be one of {KRAKEN_DEPTHS}, got {depth}")
        self.depth = depth
        self.verify_checksum = verify_checksum
        self.wire_symbol = wire_symbol or self.book.symbol
        # ticks -> checksum text of the level ("<price digits><qty digits>").
        self._bid_text: dict[int, str] = {}
        self._ask_text: dict[int, str] = {}

    # -- wire ----------------------------------------------------------------------------
    def on_message(self, raw: str | bytes, recv_ns: int | None = None) -> Outcome:
        self.stats.messages += 1
        try:
            outcome = self._read(raw, recv_ns)
        except MemoryError:
            raise
        except Exception as exc:  # nothing a venue sends may escape
            raise self._unreadable(exc, raw, "book message") from None
        if outcome is Outcome.APPLIED and self.on_update is not None:
            self.on_update(self.book)
        return outcome

    def _read(self, raw: str | bytes, recv_ns: int | None) -> Outcome:
        try:
            msg = _decode(raw)
        except ValueError as exc:
            raise self._malformed(f"book message is not JSON ({exc})", raw) from None
        if type(msg) is not dict:
            raise self._malformed("book message must be a JSON object", raw)
        if msg.get("channel") != "book":
            self.stats.ignored += 1
            return Outcome.IGNORED
        kind = msg.get("type")
        data = msg.get("data")
        if kind not in ("snapshot", "update") or type(data) is not list:
            raise self._malformed("book message needs type snapshot|update and a data list", msg)
        now = self._now(recv_ns)
        outcome = Outcome.IGNORED
        for entry in data:
            if type(entry) is not dict:
                raise self._malformed("book data entries must be objects", msg)
            if entry.get("symbol") != self.wire_symbol:
                continue
            apply = self._snapshot if kind == "snapshot" else self._update
            outcome = apply(entry, now)
            if outcome is Outcome.RESYNC:
                break
        if outcome is Outcome.IGNORED:
            self.stats.ignored += 1
        return outcome

    def on_snapshot(self, raw: str | bytes, recv_ns: int | None = None) -> Outcome:
        """Same as ``on_message``: Kraken delivers snapshots on the stream itself."""
        return self.on_message(raw, recv_ns)

    def checksum(self) -> int:
        """The checksum of the local book, as Kraken computes it."""
        book = self.book
        bid_text, ask_text = self._bid_text, self._ask_text
        parts = [ask_text[p] for p, _ in book.top(_SELL, CHECKSUM_LEVELS)]
        parts += [bid_text[p] for p, _ in book.top(_BUY, CHECKSUM_LEVELS)]
        return zlib.crc32("".join(parts).encode("ascii"))

    # -- internals -----------------------------------------------------------------------
    def reset_stream(self) -> None:
        self._bid_text.clear()
        self._ask_text.clear()

    def _levels(self, entry: dict[str, Any], name: str) -> list[tuple[int, int, str]]:
        levels = entry.get(name, [])
        if type(levels) is not list:
            raise self._malformed(f"book '{name}' must be a list", entry)
        pc, qc = self._price, self._qty
        out = []
        try:
            for level in levels:
                p = level["price"]
                q = level["qty"]
                out.append((pc(p), qc(q), strip_checksum_digits(p) + strip_checksum_digits(q)))
        except (KeyError, TypeError, ValueError) as exc:
            raise self._malformed(
                f"bad level in '{name}' ({exc}); levels are {{'price': .., 'qty': ..}}", entry
            ) from None
        return out

    def _checksum_of(self, entry: dict[str, Any]) -> int | None:
        value = entry.get("checksum")
        if value is None:
            if self.verify_checksum:  # Kraken sends one with every snapshot and update
                raise self._malformed("book message without its 'checksum'", entry)
            return None
        try:
            checksum = int(value)
        except (TypeError, ValueError):
            raise self._malformed("book 'checksum' must be an integer", entry) from None
        if not 0 <= checksum < 1 << 32:
            raise self._malformed("book 'checksum' must be an unsigned 32-bit integer", entry)
        return checksum

    def _timestamp_ns(self, entry: dict[str, Any], default: int) -> int:
        text = entry.get("timestamp")
        if not isinstance(text, str):
            return default
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            raise self._malformed("book 'timestamp' must be RFC 3339", entry) from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return (stamp - _EPOCH) // _ONE_US * 1000

    def _snapshot(self, entry: dict[str, Any], now: int) -> Outcome:
        bids = self._levels(entry, "bids")
        asks = self._levels(entry, "asks")
        expected = self._checksum_of(entry)
        ts_ns = self._timestamp_ns(entry, now)
        self.stats.snapshots += 1
        book = self.book
        book.apply_snapshot([(p, q) for p, q, _ in bids], [(p, q) for p, q, _ in asks], ts_ns)
        self._bid_text = {p: t for p, q, t in bids if q > 0}
        self._ask_text = {p: t for p, q, t in asks if q > 0}
        self._cut()
        if not self._verify(expected) or self._resync_if_crossed():
            return Outcome.RESYNC
        self._mark_live("snapshot applied")
        self.states.last_message_ns = now
        self.stats.applied += 1
        return Outcome.APPLIED

    def _update(self, entry: dict[str, Any], now: int) -> Outcome:
        if self._needs_snapshot:
            self.stats.dropped += 1
            return Outcome.DROPPED
        bids = self._levels(entry, "bids")
        asks = self._levels(entry, "asks")
        expected = self._checksum_of(entry)
        ts_ns = self._timestamp_ns(entry, now)
        book = self.book
        book._apply_keyed([(p, q) for p, q, _ in bids], [(-p, q) for p, q, _ in asks], ts_ns)
        for levels, text in ((bids, self._bid_text), (asks, self._ask_text)):
            for p, q, t in levels:
                if q > 0:
                    text[p] = t
                else:
                    text.pop(p, None)
        self._cut()
        if not self._verify(expected) or self._resync_if_crossed():
            return Outcome.RESYNC
        self.states.last_message_ns = now
        self.stats.applied += 1
        if book.state is not BookState.LIVE:
            self._mark_live("updates resumed with a matching checksum")
        return Outcome.APPLIED

    def _cut(self) -> None:
        removed_bids, removed_asks = self.book.truncate(self.depth)
        for p in removed_bids:
            del self._bid_text[p]
        for p in removed_asks:
            del self._ask_text[p]

    def _verify(self, expected: int | None) -> bool:
        if not self.verify_checksum or expected is None:
            return True
        computed = self.checksum()
        if computed == expected:
            return True
        self.stats.checksum_failures += 1
        self._request_resync(
            f"checksum mismatch: Kraken sent {expected}, local book gives {computed}"
        )
        return False
