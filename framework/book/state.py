"""Book state machine: SYNCING -> LIVE -> STALE / RESYNCING -> LIVE, with observers
and a staleness watchdog that reads time from the run's clock (virtual or wall)."""

from __future__ import annotations

from collections.abc import Callable

from loguru import logger

from quoteforge.book.l2 import BookState, L2Book
from quoteforge.clock import Clock, TimerHandle

__all__ = ["ALLOWED_TRANSITIONS", "BookStateMachine", "StateObserver"]

StateObserver = Callable[[L2Book, BookState, BookState, str], None]
"""``observer(book, old, new, reason)``; called after ``book.state`` has changed."""

_S = BookState
ALLOWED_TRANSITIONS: dict[BookState, frozenset[BookState]] = {
    _S.SYNCING: frozenset({_S.LIVE}),
    _S.LIVE: frozenset({_S.STALE, _S.RESYNCING, _S.SYNCING}),
    # STALE -> LIVE only when the next message proves nothing was missed (an unbroken
    # sequence); otherwise the source goes through RESYNCING.
    _S.STALE: frozenset({_S.LIVE, _S.RESYNCING, _S.SYNCING}),
    _S.RESYNCING: frozenset({_S.LIVE, _S.STALE, _S.SYNCING}),
}


class BookStateMachine:
    """Owns ``book.state``: checks every transition and tells the observers.

    ``stale_after_ns`` is the longest silence a LIVE book tolerates; ``check()``
    compares it with ``clock.now_ns()``, so a backtest on a ``SimClock`` goes stale
    in virtual time exactly as a live run does in wall time.
    """

    __slots__ = ("_observers", "_watchdog", "book", "clock", "last_message_ns", "stale_after_ns")

    def __init__(
        self, book: L2Book, clock: Clock | None = None, stale_after_ns: int | None = None
    ) -> None:
        if stale_after_ns is not None and stale_after_ns <= 0:
            raise ValueError(f"stale_after_ns must be > 0 or None, got {stale_after_ns}")
        self.book = book
        self.clock = clock
        self.stale_after_ns = stale_after_ns
        self.last_message_ns = clock.now_ns() if clock is not None else 0
        self._observers: list[StateObserver] = []
        self._watchdog: TimerHandle | None = None

    @property
    def state(self) -> BookState:
        return self.book.state

    def add_observer(self, observer: StateObserver) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: StateObserver) -> None:
        self._observers.remove(observer)

    def transition(self, new: BookState, reason: str) -> bool:
        """Move to ``new``; False when already there. An illegal move raises."""
        old = self.book.state
        if old is new:
            return False
        if new not in ALLOWED_TRANSITIONS[old]:
            allowed = ", ".join(sorted(s.value for s in ALLOWED_TRANSITIONS[old]))
            raise ValueError(
                f"book {self.book.key}: cannot go from {old.value} to {new.value} "
                f"({reason}); from {old.value} the book can go to: {allowed}"
            )
        self.book.state = new
        for observer in tuple(self._observers):
            try:
                observer(self.book, old, new, reason)
            except Exception:  # one bad observer must not stop the market-data feed
                logger.exception("book {} state observer {!r} failed", self.book.key, observer)
        return True

    def now_ns(self) -> int:
        if self.clock is None:
            raise ValueError(
                f"book {self.book.key}: no clock; pass clock= to the state machine or "
                "give now_ns explicitly"
            )
        return self.clock.now_ns()

    # -- staleness -----------------------------------------------------------------------
    def touch(self, now_ns: int) -> None:
        """A message arrived at ``now_ns``."""
        self.last_message_ns = now_ns

    def check(self, now_ns: int | None = None) -> bool:
        """Mark a LIVE book STALE after ``stale_after_ns`` of silence; True when the
        book is STALE after the check."""
        book = self.book
        if book.state is BookState.LIVE and self.stale_after_ns is not None:
            now = self.now_ns() if now_ns is None else now_ns
            silent = now - self.last_message_ns
            if silent > self.stale_after_ns:
                self.transition(
                    BookState.STALE,
                    f"no message for {silent / 1e6:.0f} ms "
                    f"(limit {self.stale_after_ns / 1e6:.0f} ms)",
                )
        return book.state is BookState.STALE

    def feed_down(self, reason: str = "feed down") -> None:
        """The connection carrying this book dropped."""
        if self.book.state in (BookState.LIVE, BookState.RESYNCING):
            self.transition(BookState.STALE, reason)

    def start_watchdog(self, interval_ns: int | None = None) -> None:
        """Run ``check()`` every ``interval_ns`` (default: half the staleness limit) on
        the clock's timers until ``stop_watchdog()``."""
        if self.clock is None or self.stale_after_ns is None:
            raise ValueError(
                f"book {self.book.key}: the watchdog needs both a clock and stale_after_ns"
            )
        self.stop_watchdog()
        every = interval_ns or max(1, self.stale_after_ns // 2)
        clock = self.clock

        def tick() -> None:
            self.check()
            self._watchdog = clock.call_later(every, tick)

        self._watchdog = clock.call_later(every, tick)

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
