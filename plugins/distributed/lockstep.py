"""Lock step: the strategy node of a simulation follows the execution node's clock.

The execution node hosts the simulated venues and their ``SimClock`` and drives the
run; the strategy node runs its engine on a ``LockstepClock`` and answers each step
through a ``LockstepFollower``, so a split simulation makes the same decisions at the
same virtual times as a one-process run. ``clock_topics`` names the two topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge.bus import Bus
from quoteforge.clock import Clock, TimerHandle
from quoteforge.model import Side
from quoteforge.plugins.distributed.topics import TopicScheme
from quoteforge.plugins.distributed.wire import (
    apply_book_sync,
    fill_from_payload,
    host_offline_reason,
    offer_from_wire,
    update_from_wire,
)

if TYPE_CHECKING:
    from quoteforge.plugins.distributed.remote import RemoteVenue

__all__ = [
    "CLOCK_ROOT",
    "LOCKSTEP_RETRY_S",
    "LockstepClock",
    "LockstepFollower",
    "clock_topics",
]

CLOCK_ROOT = "quoteforge-clock"


def clock_topics(scheme: TopicScheme) -> tuple[str, str]:
    """The two topics of a lock-step run: the driver's steps and the follower's answers,
    ``quoteforge-clock/<run>/step`` and ``.../ack``.

    They travel at QoS 0, outside the ``quoteforge/`` tree whose kinds set a QoS floor:
    a step and its answer alternate, one message in flight, so a QoS 1 acknowledgement
    would make the broker send two small packets in a row to one client, and the
    second would wait for the first's delayed TCP ACK (about 40 ms per step on a broker
    without ``set_tcp_nodelay``). A lost step or answer is sent again after
    ``LOCKSTEP_RETRY_S``; steps are numbered, so a repeat is harmless.
    """
    return f"{CLOCK_ROOT}/{scheme.run}/step", f"{CLOCK_ROOT}/{scheme.run}/ack"


LOCKSTEP_RETRY_S = 1.0  # resend an unanswered hello or step this often (wall time)


class _LockstepTimer(TimerHandle):
    __slots__ = ("_clock", "_id")

    def __init__(self, clock: LockstepClock, timer_id: int) -> None:
        super().__init__()
        self._clock = clock
        self._id = timer_id

    def cancel(self) -> None:
        if not self.cancelled:
            super().cancel()
            self._clock._cancel(self._id)


class LockstepClock(Clock):
    """Virtual time owned by another process: the clock of a strategy node that follows
    the ``SimClock`` of the execution node hosting the simulated venues.

    The driver sets the time (``advance``) before it hands over each event. Timers do
    not run by themselves: every ``call_at`` and every cancel is recorded, in call order,
    as an operation (``("timer", id, when)``, ``("cancel", id)``) that the driver puts
    into its own event queue at the place the timer has in a one-process run; when the
    driver's queue reaches it, the driver asks for ``fire(id)``. Other parts of the node
    record their operations too (``record``), so that everything the node does reaches
    the driver in the order it happened.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._ids = itertools.count(1)
        self._timers: dict[int, tuple[TimerHandle, Callable[..., Any], tuple[Any, ...]]] = {}
        self._ops: list[tuple[Any, ...]] = []

    @property
    def is_virtual(self) -> bool:
        return True

    def now_ns(self) -> int:
        return self._now

    def advance(self, now_ns: int) -> None:
        """The driver's time; virtual time never goes back."""
        if now_ns > self._now:
            self._now = now_ns

    def call_at(self, when_ns: int, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        timer_id = next(self._ids)
        handle = _LockstepTimer(self, timer_id)
        self._timers[timer_id] = (handle, fn, args)
        self._ops.append(("timer", timer_id, max(when_ns, self._now)))
        return handle

    def _cancel(self, timer_id: int) -> None:
        if self._timers.pop(timer_id, None) is not None:
            self._ops.append(("cancel", timer_id))

    def fire(self, timer_id: int) -> bool:
        """Run a timer the driver reached; False if it was cancelled (or is unknown)."""
        entry = self._timers.pop(timer_id, None)
        if entry is None or entry[0].cancelled:
            return False
        entry[1](*entry[2])
        return True

    @property
    def pending_timers(self) -> int:
        return len(self._timers)

    def record(self, op: tuple[Any, ...]) -> None:
        """Add one operation of this node to the stream for the driver."""
        self._ops.append(op)

    def take_ops(self) -> list[tuple[Any, ...]]:
        """The operations recorded since the last call, oldest first."""
        ops, self._ops = self._ops, []
        return ops


class LockstepFollower:
    """The strategy node's side of a lock-step simulation.

    The execution node hosts the simulated venues and their ``SimClock``. Every event
    that reaches the strategy engine in a one-process run (book, book state, trade,
    order report, fill, offer, and the engine's own timers) is sent as one step
    (``clock_topics``), stamped with its virtual time; this follower applies it to the
    mirrors, hands it to the engine exactly as the venue made it, and answers the step
    with everything the engine did meanwhile, in order: timers
    set and cancelled, and intents. The driver puts these into its own event queue at
    the place a one-process run would, so the venue sees the same actions at the same
    virtual times and draws the same random numbers. Steps are numbered: a repeated
    step is answered again, an old one ignored.
    """

    def __init__(
        self,
        bus: Callable[[], Bus],
        scheme: TopicScheme,
        clock: LockstepClock,
        *,
        clock_bus: Bus | None = None,
        host_role: str = "execution",
        silence_s: float = 30.0,
    ) -> None:
        self._bus = bus
        # Steps and answers: on a connection of their own when given (see clock_topics).
        self._clock_bus = clock_bus
        self.scheme = scheme
        self.clock = clock
        self.host_role = host_role
        self.step_topic, self.ack_topic = clock_topics(scheme)
        self.instance = secrets.token_hex(6)
        self.venues: dict[str, RemoteVenue] = {}
        self.working: Callable[[], int] = lambda: 0
        self.on_end: Callable[[str], None] = lambda reason: None
        self.last_step = 0
        self._last_answer: dict[str, Any] | None = None
        self._held: int | None = None  # a step answered later (the first, the end)
        self._welcome: list[list[Any]] | None = None
        self._welcomed = asyncio.Event()
        self.ended = asyncio.Event()
        self.done = asyncio.Event()
        self.end_reason = ""
        self.lost = ""
        self._attempt = itertools.count(1)
        self._hello: asyncio.Task[None] | None = None
        self._subscribed = False
        self.steps = 0
        self.silence_s = silence_s
        self._heard = time.monotonic()

    def attach(self, venue: RemoteVenue) -> None:
        self.venues[venue.name] = venue

    # -- start ------------------------------------------------------------------------------
    async def _subscribe(self) -> None:
        if self._subscribed:
            return
        self._subscribed = True
        bus = self._bus()
        steps = bus
        if self._clock_bus is not None:
            await self._clock_bus.start()
            steps = self._clock_bus
        steps.subscribe(self.step_topic, self._on_step)
        bus.subscribe(self.scheme.heartbeat(self.host_role), self._on_host_heartbeat)
        self._hello = asyncio.get_running_loop().create_task(self._say_hello())

    async def _say_hello(self) -> None:
        while not self._welcomed.is_set():
            self._publish({"hello": self.instance})
            await asyncio.sleep(LOCKSTEP_RETRY_S)
        # Then watch the driver: a step (or a repeat) comes at least every
        # LOCKSTEP_RETRY_S while it lives and the broker is reachable.
        while not self.done.is_set():
            await asyncio.sleep(LOCKSTEP_RETRY_S)
            silent = time.monotonic() - self._heard
            if silent > self.silence_s and self._held is None:
                self.lose(f"no step from the {self.host_role} node for {silent:.0f}s")

    async def welcome(self, venue: RemoteVenue, timeout_s: float) -> None:
        """Wait for the driver's first step and apply what it says about ``venue``
        (its books as the venue connected, and their state changes)."""
        await self._subscribe()
        try:
            await asyncio.wait_for(self._welcomed.wait(), timeout_s)
        except TimeoutError:
            raise RuntimeError(
                f"venue {venue.name!r}: no first step of the lock-step run on "
                f"{self.step_topic!r} after {timeout_s:g}s; is the {self.host_role} node of "
                f"run {self.scheme.run!r} running (same manifest, same bus)?"
            ) from None
        if self.lost:
            raise RuntimeError(f"venue {venue.name!r}: {self.lost}")
        for event in self._welcome or ():
            if event[1] == venue.name:
                self.clock.advance(event[2])
                venue.lockstep_event(event[0], event[3])

    def started(self) -> None:
        """The engine has started: answer the first step with what it did."""
        self._welcome = None
        self._answer_held()

    # -- steps -------------------------------------------------------------------------------
    def _on_step(self, topic: str, payload: dict[str, Any]) -> None:
        k = int(payload["k"])
        self._heard = time.monotonic()
        if k <= self.last_step:
            answer = self._last_answer
            if answer is not None and answer["k"] == k:
                self._publish(answer)  # our answer was lost: send it again
            return
        if k != self.last_step + 1:
            logger.error("lock step: step {} after step {}: ignored", k, self.last_step)
            return
        self.last_step = k
        self.steps += 1
        self.clock.advance(int(payload["t"]))
        events = payload.get("ev") or []
        if k == 1:
            # The venues are connecting: each RemoteVenue takes its part in connect().
            self._welcome = events
            self._held = k
            self._welcomed.set()
            return
        venues = self.venues
        clock = self.clock
        for code, venue, t, data in events:
            clock.advance(t)
            if code == "t":
                clock.fire(data)
                continue
            target = venues.get(venue)
            if target is not None:
                target.lockstep_event(code, data)
        if payload.get("done"):
            self.done.set()
            return
        end = payload.get("end")
        if end is not None:
            self._held = k
            self.end_reason = str(end)
            self.ended.set()
            self.on_end(self.end_reason)
            return
        self._answer(k)

    def _answer(self, k: int) -> None:
        answer = {
            "k": k,
            "ops": [list(op) for op in self.clock.take_ops()],
            "working": self.working(),
            "src": self.instance,
        }
        self._last_answer = answer
        self._publish(answer)

    def _answer_held(self) -> None:
        if self._held is not None:
            k, self._held = self._held, None
            self._answer(k)

    def answer_end(self) -> None:
        """The engine has pulled its quotes after the end step: answer it."""
        self._answer_held()

    def intent(self, payload: dict[str, Any]) -> None:
        self.clock.record(("intent", payload))

    def request_end(self, reason: str) -> None:
        """This node wants to stop: ask the driver to end the run at its current time."""
        self._publish({"stop": reason, "src": self.instance})

    def _publish(self, payload: dict[str, Any]) -> None:
        bus = self._clock_bus if self._clock_bus is not None else self._bus()
        with contextlib.suppress(RuntimeError):  # the bus closed: the node is stopping
            bus.publish(
                self.ack_topic,
                payload,
                qos=0,
                msg_id=f"clock-ack:{self.instance}:{payload.get('k', 0)}:{next(self._attempt)}",
            )

    # -- the driver's liveness --------------------------------------------------------------------
    def _on_host_heartbeat(self, topic: str, payload: dict[str, Any]) -> None:
        if payload.get("status") == "online" or not self._welcomed.is_set() or self.done.is_set():
            return  # retained from an earlier run, or the run is over: not news
        self.lose(host_offline_reason(self.host_role, payload))

    def lose(self, reason: str) -> None:
        """The driver is gone: nothing will advance the clock any more."""
        if self.lost:
            return
        self.lost = reason
        logger.warning("lock step: {}", reason)
        self.end_reason = self.end_reason or reason
        for event in (self._welcomed, self.ended, self.done):
            event.set()
        self.on_end(reason)

    async def close(self) -> None:
        if self._hello is not None:
            self._hello.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._hello
            self._hello = None
        if self._clock_bus is not None and self._subscribed:
            await self._clock_bus.close()


def apply_lockstep_event(venue: RemoteVenue, code: str, data: Any) -> None:
    """One event of a lock-step run handed to ``venue``'s sink exactly as the venue made it."""
    sink = venue.sink
    if code == "y":
        book = venue.books.get(data[0])
        if book is not None:
            apply_book_sync(book, data)
        return
    if sink is None:
        return
    if code == "b":
        book = venue.books.get(data)
        if book is not None:
            sink.on_book(book)
    elif code == "s":
        book = venue.books.get(data[0])
        if book is not None:
            sink.on_book_state(book, data[1], data[2], data[3])
    elif code == "o":
        sink.on_order_update(update_from_wire(venue.name, data))
    elif code == "f":
        sink.on_fill(fill_from_payload(data))
    elif code == "x":
        symbol, price, qty, aggressor, ts_ns = data
        sink.on_trade(venue.name, symbol, price, qty, Side(aggressor), ts_ns)
    elif code == "w":
        sink.on_offer(offer_from_wire(venue.name, data))
