"""Polymarket CLOB ``market`` channel for one outcome token: ``book`` snapshots,
``price_change`` levels checked against the best bid and ask each change carries, and
REST ``/book`` snapshots verified by the venue's hash and compared with the local book."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

from pydantic import Field

from quoteforge.book.l2 import BookState
from quoteforge.book.source import BookSource, BookSourceParams, Outcome
from quoteforge.model import Side

__all__ = ["PolymarketBookParams", "PolymarketBookSource", "book_hash"]

_BUY = Side.BUY
_SELL = Side.SELL


class PolymarketBookParams(BookSourceParams):
    verify_hash: bool = Field(
        True, description="Check the hash of every REST /book snapshot before using it."
    )


def book_hash(summary: dict[str, Any]) -> str:
    """The hash the venue puts on a REST ``/book`` summary: SHA-1 over the compact JSON
    of its fields in the server's order with ``hash`` empty (as the official client
    computes it)."""
    payload = {
        "market": summary.get("market"),
        "asset_id": summary.get("asset_id"),
        "timestamp": summary.get("timestamp"),
        "hash": "",
        "bids": [{"price": o["price"], "size": o["size"]} for o in summary.get("bids") or []],
        "asks": [{"price": o["price"], "size": o["size"]} for o in summary.get("asks") or []],
        "min_order_size": summary.get("min_order_size"),
        "tick_size": summary.get("tick_size"),
        "neg_risk": summary.get("neg_risk"),
        "last_trade_price": summary.get("last_trade_price"),
    }
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class PolymarketBookSource(BookSource):
    """The book of one outcome token.

    A ``book`` event (sent on subscribing and after trades) replaces the book. A
    ``price_change`` entry for our token sets one level's absolute size (0 removes);
    the ``best_bid``/``best_ask`` it carries must then equal the local book's, and the
    book must not be crossed, or the book resyncs (``on_resync``: the adapter
    subscribes again, which brings a fresh ``book``). The websocket ``book`` hash cannot
    be recomputed (the event lacks fields the hash covers); REST snapshots carry all of
    them, and ``compare_snapshot`` checks the local book against one.
    """

    protocol: ClassVar[str] = "polymarket_clob"
    Params: ClassVar[type[PolymarketBookParams]] = PolymarketBookParams
    wire_decimals: ClassVar[int | None] = 6

    def __init__(
        self,
        *args: Any,
        asset_id: str | None = None,
        verify_hash: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.asset_id = asset_id or self.book.symbol
        self.verify_hash = verify_hash
        self.last_timestamp = ""
        """The venue timestamp (ms, as sent) of the last event applied."""
        self.halted = ""
        """Why the book cannot be kept on its grid any more (a finer tick), or empty."""
        self._one = self.instrument.price_to_ticks(1)
        """A price of 1 in ticks: a level's price is in (0, 1]."""

    # -- wire ----------------------------------------------------------------------------
    def on_message(self, raw: str | bytes, recv_ns: int | None = None) -> Outcome:
        """One market-channel frame (an event object or a list of them)."""
        self.stats.messages += 1
        try:
            msg = json.loads(raw)
        except ValueError as exc:
            raise self._unreadable(
                self._malformed(f"not JSON ({exc})", raw), raw, "book message"
            ) from None
        events = msg if isinstance(msg, list) else [msg]
        outcome = Outcome.IGNORED
        for event in events:
            result = self.on_event(event, recv_ns)
            if result is not Outcome.IGNORED:
                outcome = result
        return outcome

    def on_event(self, event: Any, recv_ns: int | None = None) -> Outcome:
        """One decoded market-channel event; the adapter routes each to its token."""
        try:
            outcome = self._read(event, recv_ns)
        except MemoryError:
            raise
        except Exception as exc:
            raise self._unreadable(exc, event, "book event") from None
        if outcome is Outcome.APPLIED and self.on_update is not None:
            self.on_update(self.book)
        return outcome

    def on_snapshot(self, raw: str | bytes, recv_ns: int | None = None) -> Outcome:
        """A REST ``/book`` answer (its hash checked) applied as a snapshot. One that
        cannot be read raises ``BookMessageError`` and the book resyncs."""
        try:
            summary = json.loads(raw)
            if type(summary) is not dict:
                raise self._malformed("a REST /book answer must be a JSON object", raw)
            damaged = (
                self.verify_hash and summary.get("hash") and book_hash(summary) != summary["hash"]
            )
        except MemoryError:
            raise
        except Exception as exc:
            raise self._unreadable(exc, raw, "REST /book answer") from None
        if damaged:
            self.stats.checksum_failures += 1
            self._request_resync("REST /book hash mismatch: the snapshot was damaged")
            return Outcome.RESYNC
        return self.on_event({**summary, "event_type": "book"}, recv_ns)

    def compare_snapshot(self, summary: dict[str, Any]) -> bool | None:
        """Check the local book against a REST ``/book`` summary taken at the same venue
        timestamp: True equal, False differs (the book resyncs), None not comparable
        (another timestamp, a damaged snapshot or a book that is not LIVE). A summary
        that cannot be read raises ``BookMessageError`` (the book is left as it is)."""
        if type(summary) is not dict:
            raise self._malformed("a REST /book answer must be a JSON object", summary)
        if self.book.state is not BookState.LIVE or not self.last_timestamp:
            return None
        if str(summary.get("timestamp", "")) != self.last_timestamp:
            return None
        try:
            if self.verify_hash and summary.get("hash") and book_hash(summary) != summary["hash"]:
                return None
        except (KeyError, TypeError, AttributeError) as exc:
            raise self._malformed(
                f"REST /book levels could not be read ({type(exc).__name__}: {exc}); levels "
                "are {'price': .., 'size': ..}",
                summary,
            ) from None
        bids = self._levels(summary.get("bids"), "bids")
        asks = self._levels(summary.get("asks"), "asks")
        want_bids = sorted(((p, q) for p, q in bids if q), reverse=True)
        want_asks = sorted((p, q) for p, q in asks if q)
        book = self.book
        same = (
            book.top(_BUY, len(want_bids) + 1) == want_bids
            and book.top(_SELL, len(want_asks) + 1) == want_asks
        )
        if not same:
            self.stats.gaps += 1
            self._request_resync("the book differs from the venue's REST snapshot at its timestamp")
        return same

    # -- internals -----------------------------------------------------------------------
    def reset_stream(self) -> None:
        self.last_timestamp = ""

    def halt(self, reason: str) -> None:
        """Stop keeping the book (its quotes are pulled) until the run restarts."""
        self.halted = reason
        self._request_resync(reason)

    def _read(self, event: Any, recv_ns: int | None) -> Outcome:
        if type(event) is not dict:
            raise self._malformed("market events must be JSON objects", event)
        kind = event.get("event_type")
        if self.halted:
            self.stats.dropped += 1
            return Outcome.DROPPED
        if kind == "book":
            if event.get("asset_id") != self.asset_id:
                return self._ignored()
            return self._snapshot(event, self._now(recv_ns))
        if kind == "price_change":
            return self._changes(event, self._now(recv_ns))
        return self._ignored()

    def _ignored(self) -> Outcome:
        self.stats.ignored += 1
        return Outcome.IGNORED

    def _levels(self, levels: Any, name: str) -> list[tuple[int, int]]:
        if levels is None:
            return []
        if type(levels) is not list:
            raise self._malformed(f"book '{name}' must be a list", levels)
        pc, qc = self._price, self._qty
        try:
            out = [
                (pc(_text(lv["price"], "price")), qc(_text(lv["size"], "size"))) for lv in levels
            ]
            # Tuples order by price first: the lowest and highest prices, in C.
            if out and (min(out)[0] <= 0 or max(out)[0] > self._one):
                self._check_prices([p for p, _ in out])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._malformed(
                f"bad level in '{name}' ({exc}); levels are {{'price': .., 'size': ..}}", levels
            ) from None
        return out

    def _check_prices(self, prices: list[int]) -> None:
        """ValueError naming the first price outside (0, 1]."""
        for ticks in prices:
            if not 0 < ticks <= self._one:
                price = self.instrument.ticks_to_price(ticks)
                raise ValueError(f"price {format(price, 'f')} outside (0, 1]")

    def _snapshot(self, event: dict[str, Any], now: int) -> Outcome:
        bids = self._levels(event.get("bids"), "bids")
        asks = self._levels(event.get("asks"), "asks")
        self.stats.snapshots += 1
        self.book.apply_snapshot(bids, asks, now)
        self.last_timestamp = str(event.get("timestamp", ""))
        if self._resync_if_crossed():
            return Outcome.RESYNC
        self._mark_live("book snapshot applied")
        self.states.last_message_ns = now
        self.stats.applied += 1
        return Outcome.APPLIED

    def _changes(self, event: dict[str, Any], now: int) -> Outcome:
        changes = event.get("price_changes")
        if type(changes) is not list:
            raise self._malformed("price_change needs a 'price_changes' list", event)
        ours = [c for c in changes if type(c) is dict and c.get("asset_id") == self.asset_id]
        if not ours:
            return self._ignored()
        if self._needs_snapshot:
            self.stats.dropped += 1
            return Outcome.DROPPED
        bids: list[tuple[int, int]] = []
        asks: list[tuple[int, int]] = []
        pc, qc, one = self._price, self._qty, self._one
        try:
            for change in ours:
                level = (pc(_text(change["price"], "price")), qc(_text(change["size"], "size")))
                if not 0 < level[0] <= one:
                    self._check_prices([level[0]])
                side = str(change["side"]).upper()
                if side == "BUY":
                    bids.append(level)
                elif side == "SELL":
                    asks.append(level)
                else:
                    raise ValueError(f"side {side!r} is not BUY or SELL")
            best = self._best_of(ours[-1])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._malformed(f"bad price_change entry ({exc})", ours) from None
        self.book.apply_deltas(bids, asks, now)
        self.last_timestamp = str(event.get("timestamp", ""))
        self.states.last_message_ns = now
        if self._resync_if_crossed() or not self._best_agrees(best):
            return Outcome.RESYNC
        self.stats.applied += 1
        if self.book.state is not BookState.LIVE:
            self._mark_live("price changes resumed")
        return Outcome.APPLIED

    def _best_of(self, change: dict[str, Any]) -> list[tuple[str, str, int | None]]:
        """The ``best_bid``/``best_ask`` a change carries: name, text and ticks (a price
        of 0, or 1 and above, means that side is empty: None)."""
        top = self.instrument.max_price_ticks
        out = []
        for name in ("best_bid", "best_ask"):
            text = change.get(name)
            if text is None:
                continue
            ticks: int | None = self._price(_text(text, name))
            if ticks is not None and (ticks <= 0 or (top is not None and ticks > top)):
                ticks = None
            out.append((name, text, ticks))
        return out

    def _best_agrees(self, best: list[tuple[str, str, int | None]]) -> bool:
        """The venue's best bid and ask after the change equal ours."""
        book = self.book
        for name, text, ticks in best:
            ours = book.best_bid_ticks() if name == "best_bid" else book.best_ask_ticks()
            if ticks != ours:
                self.stats.gaps += 1
                shown = "none" if ours is None else self.instrument.ticks_to_price(ours)
                self._request_resync(
                    f"{name} mismatch: the venue says {text}, the local book has {shown}"
                )
                return False
        return True


def _text(value: Any, name: str) -> str:
    """A wire decimal string (``.48`` as ``0.48``). The venue writes numbers as strings;
    a JSON number was read through a binary float, so it is refused, not rounded."""
    if type(value) is not str:
        shown = repr(value)[:40]
        raise TypeError(f"'{name}' must be a decimal string, not {type(value).__name__} {shown}")
    return "0" + value if value.startswith(".") else value
