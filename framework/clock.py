"""Clocks: wall time for live and paper runs, virtual time for simulations and backtests.

Everything that needs the time or a timer asks the run's clock, so the same engine,
strategies and venues run unchanged in virtual time, where a seeded run is
reproducible event for event.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

__all__ = ["Clock", "LiveClock", "SimClock", "TimerHandle"]

NS = 1_000_000_000


class TimerHandle:
    """A scheduled callback; ``cancel()`` stops it from running."""

    __slots__ = ("_cancelled", "_inner")

    def __init__(self, inner: asyncio.TimerHandle | None = None) -> None:
        self._cancelled = False
        self._inner = inner

    def cancel(self) -> None:
        self._cancelled = True
        if self._inner is not None:
            self._inner.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled


class Clock(ABC):
    """The time source and timer service of a run."""

    @abstractmethod
    def now_ns(self) -> int:
        """Current time in nanoseconds since the epoch (virtual in simulations)."""

    @abstractmethod
    def call_at(self, when_ns: int, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``fn(*args)`` at ``when_ns`` (immediately if that is in the past)."""

    def call_later(self, delay_ns: int, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        return self.call_at(self.now_ns() + max(0, delay_ns), fn, *args)

    def run_inline(self, when_ns: int) -> bool:
        """Called from inside a running callback by an event source whose next event is
        at ``when_ns``: True when the clock has moved there and the caller may run that
        event at once instead of scheduling it, because it would be the next event to
        run anyway. Only a virtual clock ever says yes."""
        return False

    @property
    def is_virtual(self) -> bool:
        return False


class LiveClock(Clock):
    """Wall-clock time; timers run on the asyncio event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now_ns(self) -> int:
        return time.time_ns()

    def call_at(self, when_ns: int, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        delay = max(0.0, (when_ns - time.time_ns()) / NS)
        return TimerHandle(self._get_loop().call_later(delay, fn, *args))


class SimClock(Clock):
    """Discrete-event virtual time: callbacks run in (time, scheduling order).

    Two events at the same nanosecond run in the order they were scheduled, which makes
    a seeded simulation reproducible.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._queue: list[tuple[int, int, TimerHandle, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        # Inside run_until: its bound and how many more events it may run (run_inline).
        self._until = -1
        self._left = 0

    @property
    def is_virtual(self) -> bool:
        return True

    def now_ns(self) -> int:
        return self._now

    def call_at(self, when_ns: int, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        handle = TimerHandle()
        heapq.heappush(self._queue, (max(when_ns, self._now), next(self._seq), handle, fn, args))
        return handle

    def next_time(self) -> int | None:
        return self._queue[0][0] if self._queue else None

    def run_inline(self, when_ns: int) -> bool:
        """Yes when nothing queued runs at or before ``when_ns`` (a queued event at the
        same time was scheduled first, so it goes first), ``when_ns`` is within the
        bound of the running ``run_until`` and its ``max_events`` allow one more event;
        the clock then moves to ``when_ns`` and counts the event as run."""
        if when_ns > self._until or self._left <= 0:
            return False
        queue = self._queue
        if queue and queue[0][0] <= when_ns:
            return False
        if when_ns > self._now:
            self._now = when_ns
        self._left -= 1
        return True

    def run_until(self, end_ns: int, max_events: int | None = None, advance: bool = True) -> int:
        """Run every event due at or before ``end_ns``; returns how many ran.

        With ``max_events`` it stops early so a caller can interleave other work (signal
        handling, file watching) in long simulations; call again to continue. Events a
        callback ran through ``run_inline`` count as events.
        """
        queue = self._queue
        pop = heapq.heappop
        ran = 0
        limit = max_events if max_events is not None else 1 << 62
        outer = (self._until, self._left)
        self._until = end_ns
        try:
            while queue and queue[0][0] <= end_ns:
                when, _, handle, fn, args = pop(queue)
                if handle._cancelled:
                    continue
                self._now = when
                self._left = limit - ran - 1
                fn(*args)
                ran = limit - self._left
                if ran >= limit:
                    return ran
        finally:
            self._until, self._left = outer
        if advance and (not queue or queue[0][0] > end_ns):
            self._now = max(self._now, end_ns)
        return ran
