"""Lock step, the execution node's side: the simulated venues of a split ``sim`` run
move in virtual time, one event at a time, each answered by the strategy node.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from typing import TYPE_CHECKING, Any

from quoteforge.book import L2Book
from quoteforge.bus import Bus
from quoteforge.clock import NS, SimClock, TimerHandle
from quoteforge.plugins.distributed.remote import (
    LOCKSTEP_RETRY_S,
    book_sync,
    clock_topics,
)

if TYPE_CHECKING:
    from quoteforge.plugins.distributed.execution_node import ExecutionNode


class LockstepDriver:
    """The execution node's side of a lock-step simulation (see ``LockstepFollower``).

    The node's ``SimClock`` runs the simulated venues one event at a time. Whatever an
    event hands to the node's sink for the strategy engine (books, book states, trades,
    order reports, fills, offers) is collected, each preceded by the changes of any book
    since it was last sent, and after the event the collected step goes to the strategy
    node; the clock does not move until the answer arrived and was applied: timers the
    engine set become placeholders in this clock's queue (their place in the queue is
    the one the engine's own timers have in a one-process run), cancelled timers are
    removed, and intents go to the venues as they would from the engine. An event that
    hands nothing over needs no round trip. The loop mirrors ``Run._drive_sim`` and
    ``Run._cancel_everything``, so the same manifest and seed give the same fills.
    """

    def __init__(self, node: ExecutionNode, clock: SimClock, bus: Bus) -> None:
        self.node = node
        self.clock = clock
        self.bus = bus
        self.step_topic, self.ack_topic = clock_topics(node.scheme)
        self.instance = secrets.token_hex(6)
        self.outbox: list[list[Any]] = []
        self.step = 0
        self.steps_sent = 0
        self.strategy = ""  # instance of the strategy node taking part
        self.hello = asyncio.Event()
        self.detached = ""  # why the strategy node no longer takes part
        self.working = 0  # the strategy engine's working orders, as of its last answer
        self._answer: asyncio.Future[dict[str, Any] | None] | None = None
        self._pending: dict[str, Any] | None = None
        self._done: dict[str, Any] | None = None
        self._attempt = itertools.count(1)
        self._timers: dict[int, TimerHandle] = {}
        self._books: dict[str, L2Book] = {}
        self._sent: dict[str, tuple[Any, tuple[dict[int, int], dict[int, int]]]] = {}

    async def start(self) -> None:
        await self.bus.start()
        self.bus.subscribe(self.ack_topic, self._on_answer)

    async def close(self) -> None:
        await self.bus.close()

    # -- what the venues hand over ------------------------------------------------------------
    def track(self, book: L2Book) -> None:
        self._books.setdefault(book.key, book)

    def deliver(self, code: str, venue: str, data: Any) -> None:
        if self.detached:
            return
        self._sync_books()
        self.outbox.append([code, venue, self.clock.now_ns(), data])

    def _sync_books(self) -> None:
        for key, book in self._books.items():
            mark = (
                book.state,
                book.version,
                book.top_version,
                book.update_count,
                book.ts_ns,
            )
            sent = self._sent.get(key)
            if sent is not None and sent[0] == mark:
                continue
            data, levels = book_sync(book, sent[1] if sent is not None else None)
            self._sent[key] = (mark, levels)
            self.outbox.append(["y", book.venue, self.clock.now_ns(), data])

    def _fire(self, timer_id: int) -> None:
        self._timers.pop(timer_id, None)
        self.deliver("t", "", timer_id)

    # -- the exchange with the strategy node -----------------------------------------------------
    def _on_answer(self, topic: str, payload: dict[str, Any]) -> None:
        if "hello" in payload:
            instance = str(payload["hello"])
            if not self.strategy:
                self.strategy = instance
                self.hello.set()
            elif instance == self.strategy and self._pending is not None:
                self._publish(self._pending)
            elif instance != self.strategy:
                self.node.log.error(
                    "lock step: a second strategy node ({}) said hello; this run follows {}",
                    instance,
                    self.strategy,
                )
            return
        if payload.get("src") != self.strategy:
            return
        if "stop" in payload:
            self.node.request_stop(f"strategy node: {payload['stop']}")
            return
        answer = self._answer
        if answer is not None and not answer.done() and int(payload.get("k", -1)) == self.step:
            answer.set_result(payload)

    def _publish(self, payload: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):
            self.bus.publish(
                self.step_topic,
                payload,
                qos=0,
                msg_id=f"clock:{self.instance}:{payload['k']}:{next(self._attempt)}",
            )

    async def exchange(self, *, end: str | None = None, done: bool = False) -> None:
        """Send what was collected as the next step and apply the answer."""
        if self.detached:
            self.outbox.clear()
            return
        self.step += 1
        payload: dict[str, Any] = {"k": self.step, "t": self.clock.now_ns(), "ev": self.outbox}
        if end is not None:
            payload["end"] = end
        if done:
            payload["done"] = True
        self.outbox = []
        self.steps_sent += 1
        if done:
            self._done = payload
            self._publish(payload)
            return
        answer = self._answer = asyncio.get_running_loop().create_future()
        self._pending = payload
        self._publish(payload)
        while True:
            try:
                result = await asyncio.wait_for(asyncio.shield(answer), LOCKSTEP_RETRY_S)
                break
            except TimeoutError:
                if answer.done():
                    result = answer.result()
                    break
                self._publish(payload)  # lost at a restarting broker, or just slow
        self._pending = None
        self._answer = None
        if result is not None:
            self._apply(result)

    def detach(self, reason: str) -> None:
        """The strategy node is gone: stop waiting for it; collect nothing more."""
        if self.detached:
            return
        self.detached = reason
        self.outbox.clear()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(None)

    def _apply(self, answer: dict[str, Any]) -> None:
        self.working = int(answer.get("working", 0))
        clock = self.clock
        for op in answer.get("ops", ()):
            kind = op[0]
            if kind == "timer":
                self._timers[op[1]] = clock.call_at(op[2], self._fire, op[1])
            elif kind == "cancel":
                handle = self._timers.pop(op[1], None)
                if handle is not None:
                    handle.cancel()
            elif kind == "intent":
                self.node.apply_intent(op[1], "lock step")

    async def _flush(self) -> None:
        while self.outbox and not self.detached:
            await self.exchange()

    # -- the run ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Drive the run from the first step to the strategy engine's last order."""
        node = self.node
        node.log.info("lock step: waiting for the strategy node")
        stop = asyncio.ensure_future(node.wait_stopped())
        hello = asyncio.ensure_future(self.hello.wait())
        await asyncio.wait({stop, hello}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        hello.cancel()
        if not self.hello.is_set():
            self.detach("stopped before the strategy node came")
            return
        node.log.info("lock step: strategy node {} joined; virtual time starts", self.strategy)
        await self.exchange()  # the first step: the books as the venues connected
        clock = self.clock
        duration = node.manifest.run.duration
        far = clock.now_ns() + int(float(duration) * NS) if duration is not None else 2**62
        advance = duration is not None
        ran_total = 0
        # As Run._drive_sim: slices of 2000 events, the end checked after each slice.
        while not node.stop_requested and not self.detached:
            ran = clock.run_until(far, max_events=1, advance=advance)
            if self.outbox:
                await self._flush()
            ran_total += ran
            if (not ran or ran_total % 2000 == 0) and (
                clock.now_ns() >= far or clock.next_time() is None
            ):
                break
        if self.detached:
            return
        reason = node.stop_reason or "duration reached"
        # As Run._cancel_everything: the engine pulls its quotes, then the clock runs in
        # 10 ms steps until none is working or the cancel timeout passed.
        await self.exchange(end=reason)
        deadline = clock.now_ns() + int(float(node.manifest.run.cancel_timeout) * NS)
        while self.working and clock.now_ns() < deadline and not self.detached:
            if clock.next_time() is None:
                break
            await self._run_until(min(deadline, clock.now_ns() + 10_000_000))
        await self.exchange(done=True)
        self.detach("run finished")

    async def drive(self) -> None:
        """Run the lock step to its end; a strategy node gone mid-run ends the run, once
        the venues confirmed in virtual time the cancels of its orders."""
        node = self.node
        await self.run()
        if self.detached != "run finished" and not node.stop_requested:
            await self.settle(float(node.manifest.run.cancel_timeout))
            node.request_stop(f"lock step ended: {self.detached}")
        else:
            node.stop_reason = node.stop_reason or "duration reached"
        node.info["lockstep_steps"] = self.steps_sent

    async def settle(self, timeout_s: float) -> None:
        """Run the simulated venues in virtual time until no order of the node is working
        (at most ``timeout_s`` of virtual time): a lock-step run whose strategy node has
        finished or gone."""
        clock, orders = self.clock, self.node.orders
        deadline = clock.now_ns() + int(timeout_s * NS)
        while orders.all_working() and clock.now_ns() < deadline:
            if clock.next_time() is None:
                break
            clock.run_until(min(deadline, clock.now_ns() + 10_000_000))
            await asyncio.sleep(0)

    def repeat_done(self) -> None:
        """Send the last step (the one that says the run is done) again."""
        if self._done is not None:
            self._publish(self._done)

    async def _run_until(self, end_ns: int) -> None:
        clock = self.clock
        while clock.run_until(end_ns, max_events=1):
            if self.outbox:
                await self._flush()
