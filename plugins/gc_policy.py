"""``run.gc``: when Python's cyclic garbage collector runs during a run.

CPython collects its young generation after every 700 new container objects. A quoting
decision makes a few hundred (quotes, orders, plans, journal records), so one decision in
a few paid a collection, 90-190 µs on a running bot's heap: most of tick-to-quote's p99
(``bench/tick_to_quote_bench.py``, docs/operations.md).

- ``between_events`` (the default of paper and live runs): the start-up heap is frozen
  and Python's automatic collector is off while the run runs. After a decision that left
  a collection due by CPython's own thresholds, it runs once the decision's orders were
  handed on: inline on a virtual clock, with ``call_soon`` on a real one, behind the sends
  the decision queued. On a real clock a backstop every ``BACKSTOP_S`` collects what
  events without a decision (order reports, fills, quiet books) left. The middle
  generation follows CPython's counts; a full collection runs at most every
  ``FULL_EVERY_S`` of run time (CPython's own rule, a quarter of the old generation
  being new, cannot be read from Python). The stop gives Python its collector back.
- ``automatic`` (the default of sim and backtest runs): Python's own schedule; a
  real-time run still freezes the start-up heap (and unfreezes it when it stops).

The cost of a collection is not gone, it is moved: an event that arrives while one runs
waits for it.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from quoteforge import hookimpl
from quoteforge.clock import NS, Clock

__all__ = ["GcPolicy", "freeze_startup_objects"]


def freeze_startup_objects() -> None:
    """After one last collection, keep what start-up made (modules, plugins, instruments,
    books) out of every later garbage collection: a full collection otherwise walks those
    tens of thousands of objects each time. Called by real-time runs and split nodes;
    once is enough (a strategy node's run has frozen the heap before the node asks): the
    full collection before a freeze is not repeated."""
    if gc.get_freeze_count():
        return
    gc.collect()
    gc.freeze()


class GcPolicy:
    """The garbage collector of one run: ``between_events`` or ``automatic`` (the module)."""

    BACKSTOP_S = 0.1
    FULL_EVERY_S = 60

    def __init__(self, clock: Clock, *, between_events: bool = True) -> None:
        self.clock = clock
        self.between_events = between_events
        #: Collections run, by generation.
        self.collections = [0, 0, 0]
        #: Set to a list to keep every collection's pause in nanoseconds (the bench).
        self.pauses_ns: list[int] | None = None
        self._due = gc.get_threshold()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backstop: asyncio.TimerHandle | None = None
        self._scheduled = False
        self._running = False
        self._was_enabled = True
        self._last_full = 0

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Freeze the start-up heap; between events, take over from Python's collector."""
        if self._running:
            return
        freeze_startup_objects()
        self._running = True
        if not self.between_events:
            return
        self._due = gc.get_threshold()
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._last_full = self.clock.now_ns()
        if not self.clock.is_virtual:
            self._loop = asyncio.get_running_loop()
            self._backstop = self._loop.call_later(self.BACKSTOP_S, self._tick)

    def after_decision(self) -> None:
        """Called by the engine once a decision's orders were handed to the venues."""
        if self._scheduled or not self.between_events or gc.get_count()[0] < self._due[0]:
            return
        if self._loop is None:
            self.collect()
        else:
            self._scheduled = True
            self._loop.call_soon(self.collect)

    def collect(self) -> None:
        """Collect the generations that are due, if any."""
        self._scheduled = False
        young, middle, old = gc.get_count()
        if not (self._running and self.between_events) or young < self._due[0]:
            return
        generation = 1 if middle >= self._due[1] else 0
        now = self.clock.now_ns()
        if generation and old >= self._due[2] and now - self._last_full >= self.FULL_EVERY_S * NS:
            generation, self._last_full = 2, now
        start = time.perf_counter_ns()
        gc.collect(generation)
        if self.pauses_ns is not None:
            self.pauses_ns.append(time.perf_counter_ns() - start)
        self.collections[generation] += 1

    def _tick(self) -> None:
        self.collect()
        if self._running and self._loop is not None:
            self._backstop = self._loop.call_later(self.BACKSTOP_S, self._tick)

    def stop(self) -> None:
        """Python's automatic collector as it was before ``start``; the heap unfrozen."""
        if not self._running:
            return
        self._running = False
        if self._backstop is not None:
            self._backstop.cancel()
        gc.unfreeze()
        if self.between_events and self._was_enabled:
            gc.enable()


@hookimpl
def quoteforge_run_started(run: Any) -> None:
    virtual = run.clock.is_virtual
    between = (run.manifest.run.gc or ("automatic" if virtual else "between_events")) == (
        "between_events"
    )
    if (between or not virtual) and getattr(run, "gc_policy", None) is None:
        run.gc_policy = GcPolicy(run.clock, between_events=between)
        run.gc_policy.start()
