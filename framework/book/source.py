"""The shape every venue book source shares: it owns a book and its state machine,
consumes raw wire messages, and says when the book must be resynchronised."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from quoteforge.book.l2 import BookState, L2Book
from quoteforge.book.state import BookStateMachine, StateObserver
from quoteforge.book.wire import BookMessageError, WireDecimalParser, step_decimals
from quoteforge.clock import Clock
from quoteforge.model import Instrument

__all__ = [
    "BookMessageError",
    "BookSource",
    "BookSourceParams",
    "Outcome",
    "ResyncCallback",
    "SourceStats",
    "UpdateCallback",
]


class Outcome(enum.Enum):
    """What ``on_message`` / ``on_snapshot`` did with one message."""

    APPLIED = "applied"  # the book changed and is consistent
    BUFFERED = "buffered"  # kept until a snapshot arrives
    DROPPED = "dropped"  # already covered (duplicate, stale) or useless while resyncing
    RESYNC = "resync"  # integrity failure: a new snapshot was requested
    IGNORED = "ignored"  # not book data (subscription ack, heartbeat, other symbol)


@dataclass(slots=True)
class SourceStats:
    """Counters an adapter can export as metrics."""

    messages: int = 0
    applied: int = 0
    buffered: int = 0
    dropped: int = 0
    ignored: int = 0
    malformed: int = 0
    snapshots: int = 0
    gaps: int = 0
    checksum_failures: int = 0
    crossed: int = 0
    implausible_ids: int = 0
    resyncs: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


ResyncCallback = Callable[["BookSource", str], None]
"""``on_resync(source, reason)``: fetch a snapshot (Binance) or resubscribe (Kraken)."""

UpdateCallback = Callable[[L2Book], None]
"""``on_update(book)``: the book changed and passed the venue's integrity rules."""


class BookSourceParams(BaseModel):
    """Options every book source accepts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    stale_after_ms: float | None = Field(
        5_000.0,
        gt=0,
        description="Mark the book STALE after this long without a message (None: never).",
    )


class BookSource(ABC):
    """Base of the venue book sources. Subclasses implement ``on_message`` and
    ``reset_stream``.

    Construct with an ``Instrument`` (a new ``L2Book`` is made) or an existing book.
    ``on_resync`` is called whenever the source needs a fresh snapshot, including
    the first one; ``needs_snapshot`` says the same thing for polling callers.
    """

    protocol: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = BookSourceParams
    wire_decimals: ClassVar[int | None] = None
    """Most decimals the venue writes in a price or quantity; None: exactly as many as
    the instrument's tick and lot sizes have (texts with more are refused)."""

    def __init__(
        self,
        market: Instrument | L2Book,
        *,
        clock: Clock | None = None,
        stale_after_ms: float | None = 5_000.0,
        on_resync: ResyncCallback | None = None,
        on_update: UpdateCallback | None = None,
    ) -> None:
        self.book = market if isinstance(market, L2Book) else L2Book(market)
        self.instrument = self.book.instrument
        stale_ns = None if stale_after_ms is None else int(stale_after_ms * 1_000_000)
        self.states = BookStateMachine(self.book, clock, stale_ns)
        self.clock = clock
        self.stats = SourceStats()
        self.on_resync = on_resync
        self.on_update = on_update
        self._needs_snapshot = True
        self._snapshot_requested = False
        self._price = self._parser(self.instrument.tick_size, "price")
        self._qty = self._parser(self.instrument.lot_size, "quantity")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.book.key}, {self.book.state.value})"

    def _parser(self, step: Decimal, what: str) -> WireDecimalParser:
        decimals = step_decimals(step)
        if self.wire_decimals is not None:
            decimals = max(decimals, self.wire_decimals)
        return WireDecimalParser(step, what, self.book.key, max_decimals=decimals)

    # -- driving -------------------------------------------------------------------------
    @abstractmethod
    def on_message(self, raw: str | bytes, recv_ns: int | None = None) -> Outcome:
        """Consume one wire message; ``recv_ns`` defaults to the clock's time.

        A malformed message raises ``BookMessageError`` and leaves the book unchanged.
        """

    @property
    def needs_snapshot(self) -> bool:
        """True until a snapshot has been applied, and again after any integrity failure."""
        return self._needs_snapshot

    @property
    def state(self) -> BookState:
        return self.book.state

    def add_observer(self, observer: StateObserver) -> None:
        """``observer(book, old, new, reason)`` on every state transition."""
        self.states.add_observer(observer)

    def feed_down(self, reason: str = "feed down") -> None:
        """The connection dropped: the book goes STALE until ``reconnected()``."""
        self.states.feed_down(reason)

    def reconnected(self, reason: str = "reconnected") -> None:
        """A new connection is up: nothing seen before it can be trusted to chain."""
        self.reset_stream()
        self._request_resync(reason)

    def check_stale(self, now_ns: int | None = None) -> bool:
        """Staleness check against the clock (or ``now_ns``); True when STALE."""
        return self.states.check(now_ns)

    # -- helpers for subclasses ----------------------------------------------------------
    def _now(self, recv_ns: int | None) -> int:
        if recv_ns is not None:
            return recv_ns
        return self.clock.now_ns() if self.clock is not None else 0

    @abstractmethod
    def reset_stream(self) -> None:
        """Forget what chained messages of the previous connection together (sequence
        ids, buffered updates). Venue sources implement it; ``reconnected`` calls it
        before asking for a new snapshot, and callers use ``reconnected``."""

    def _request_resync(self, reason: str, *, count: bool = True) -> None:
        if count:
            self.stats.resyncs += 1
        self._needs_snapshot = True
        self._snapshot_requested = True
        if self.book.state in (BookState.LIVE, BookState.STALE):
            self.states.transition(BookState.RESYNCING, reason)
        if self.on_resync is not None:
            self.on_resync(self, reason)

    def _resync_if_crossed(self, what: str = "book crossed") -> bool:
        """A crossed or locked book is a desync whatever the venue's own checks said (a
        checksum covers only what both sides computed): counted, resync asked. O(1)."""
        bid, ask = self.book.best_bid_ticks(), self.book.best_ask_ticks()
        if bid is None or ask is None or bid < ask:
            return False
        self.stats.crossed += 1
        price = self.instrument.ticks_to_price
        self._request_resync(f"{what}: best bid {price(bid)} >= best ask {price(ask)}")
        return True

    def _request_first_snapshot(self) -> None:
        if not self._snapshot_requested:
            self._snapshot_requested = True
            if self.on_resync is not None:
                self.on_resync(self, "initial snapshot")

    def _mark_live(self, reason: str) -> None:
        self._needs_snapshot = False
        self._snapshot_requested = False
        if self.book.state is not BookState.LIVE:
            self.states.transition(BookState.LIVE, reason)

    def _unreadable(self, exc: Exception, raw: Any, what: str) -> BookMessageError:
        """Whatever went wrong reading a venue message: the book resyncs, and the
        ``BookMessageError`` to raise (an unexpected error is counted as malformed)."""
        if isinstance(exc, BookMessageError):
            error = exc
        else:
            error = self._malformed(f"{what} could not be read ({type(exc).__name__})", raw)
        self._request_resync(f"unreadable {what} ({error})")
        return error

    def _malformed(self, what: str, detail: Any) -> BookMessageError:
        self.stats.malformed += 1
        if isinstance(detail, str | bytes):
            detail = detail[:200]  # the message named, not copied whole
        try:
            text = repr(detail)
        except RecursionError:  # nested deeper than repr() goes
            text = f"<{type(detail).__name__} nested too deep to show>"
        if len(text) > 160:
            text = text[:157] + "..."
        return BookMessageError(f"{self.book.key} ({self.protocol}): {what}: {text}")
