"""Reconciliation across the bus: the strategy node asks the execution node, which
holds the real adapter, for a venue's open orders, fills or balances.

``reconcile_topics`` names the question and answer topics of a venue;
``ReconcileResponder`` is the execution node's side. The asking side is
``RemoteVenue.fetch_open_orders`` / ``fetch_fills`` / ``fetch_balances``.
``book_fills_after_kill`` is the execution node's own check with the venues on a kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from loguru import logger

from quoteforge.bus import Bus
from quoteforge.exchange import ExchangeAdapter
from quoteforge.model import Fill
from quoteforge.orders import OrderManager
from quoteforge.plugins.distributed.topics import TopicScheme
from quoteforge.plugins.distributed.wire import fill_payload, update_payload

__all__ = [
    "RECONCILE_RETRY_S",
    "RECONCILE_ROOT",
    "RECONCILE_TIMEOUT_S",
    "RECONCILE_WHAT",
    "ReconcileError",
    "ReconcileResponder",
    "book_fills_after_kill",
    "reconcile_topics",
]


class ReconcileError(RuntimeError):
    """A reconciliation question to the execution node got no usable answer."""


RECONCILE_ROOT = "quoteforge-reconcile"
RECONCILE_TIMEOUT_S = 10.0  # how long the strategy node waits for an answer
RECONCILE_RETRY_S = 2.0  # ask again (same question id) this often until answered
RECONCILE_WHAT = ("open_orders", "fills", "balances")


def reconcile_topics(scheme: TopicScheme, venue: str) -> tuple[str, str]:
    """The two topics of a venue's reconciliation questions:
    ``quoteforge-reconcile/<run>/ask/<venue>`` (the strategy node asks) and
    ``.../answer/<venue>`` (the execution node, which holds the real adapter, answers).

    Both travel at QoS 1, never retained; a question carries an id and the answer the
    same id. They sit outside the ``quoteforge/`` tree, whose topic kinds are a closed
    set: observers of ``quoteforge/<run>/#`` do not see the venue's order lists.
    """
    scheme.order(venue)  # checks the venue name as a topic level
    return (
        f"{RECONCILE_ROOT}/{scheme.run}/ask/{venue}",
        f"{RECONCILE_ROOT}/{scheme.run}/answer/{venue}",
    )


class ReconcileResponder:
    """The execution node's side of reconciliation: answers the strategy node's
    questions about a venue with the real adapter's ``fetch_open_orders``,
    ``fetch_fills(since_ns)`` or ``fetch_balances``.

    Answers carry orders as ``update_payload`` and fills as ``fill_payload`` (the forms
    of ``order/<venue>`` and ``fill/<venue>``), balances as exact Decimals. An adapter
    that cannot tell answers ``{"unknown": true}``; an adapter that fails answers
    ``{"error": "..."}``. A repeated question (same id) is answered once per arrival
    from the first answer, without asking the venue again. No credential is ever part
    of an answer: only what the venue reported. With a ``session`` (the execution
    node's) every answer carries it, so the strategy node tells whose answer it reads.
    """

    def __init__(
        self,
        bus: Callable[[], Bus],
        scheme: TopicScheme,
        venues: dict[str, ExchangeAdapter],
        *,
        session: str | None = None,
    ) -> None:
        self._bus = bus
        self.scheme = scheme
        self.venues = venues
        self.session = session
        self._answers: dict[str, dict[str, Any] | None] = {}  # id -> answer, None: asking
        self._tasks: set[asyncio.Task[None]] = set()
        self.answered = 0

    def start(self) -> None:
        """Subscribe to the questions about every hosted venue."""
        bus = self._bus()
        for name in self.venues:
            ask, _ = reconcile_topics(self.scheme, name)
            bus.subscribe(ask, self._handler(name))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _handler(self, venue: str) -> Callable[[str, dict[str, Any]], None]:
        def handle(topic: str, payload: dict[str, Any]) -> None:
            self.on_question(venue, payload)

        return handle

    def on_question(self, venue: str, payload: dict[str, Any]) -> None:
        qid = str(payload.get("id", ""))
        what = payload.get("what")
        if not qid:
            logger.error("reconciliation question without an id on venue {}: ignored", venue)
            return
        if qid in self._answers:
            answer = self._answers[qid]
            if answer is not None:  # our answer was lost: send it again
                self._publish(venue, answer)
            return  # still asking the venue: the answer goes out when it comes
        if what not in RECONCILE_WHAT:
            self._answers[qid] = answer = {
                "id": qid,
                "what": what,
                "error": f"unknown question {what!r}: expected one of {RECONCILE_WHAT}",
            }
            self._publish(venue, answer)
            return
        self._answers[qid] = None
        while len(self._answers) > 256:
            del self._answers[next(iter(self._answers))]
        task = asyncio.get_running_loop().create_task(
            self._answer(venue, qid, str(what), int(payload.get("since_ns", 0)))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, venue: str, qid: str, what: str, since_ns: int) -> None:
        answer: dict[str, Any] = {"id": qid, "what": what}
        adapter = self.venues[venue]
        try:
            if what == "open_orders":
                orders = await adapter.fetch_open_orders()
                if orders is not None:
                    answer["orders"] = [update_payload(u, None) for u in orders]
            elif what == "fills":
                fills = await adapter.fetch_fills(since_ns)
                if fills is not None:
                    answer["fills"] = [fill_payload(f) for f in fills]
            else:
                balances = await adapter.fetch_balances()
                if balances is not None:
                    answer["balances"] = {k: Decimal(v) for k, v in balances.items()}
            if len(answer) == 2:
                answer["unknown"] = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("{}: reconciliation question {} failed: {!r}", venue, what, exc)
            answer["error"] = f"{type(exc).__name__}: {exc}"
        if qid in self._answers:
            self._answers[qid] = answer
        self.answered += 1
        self._publish(venue, answer)

    def _publish(self, venue: str, answer: dict[str, Any]) -> None:
        _, topic = reconcile_topics(self.scheme, venue)
        if self.session is not None:
            answer = {**answer, "session": self.session}
        with contextlib.suppress(RuntimeError):  # the bus closed: the node is stopping
            self._bus().publish(topic, answer, qos=1)


async def book_fills_after_kill(
    venues: Mapping[str, ExchangeAdapter],
    orders: OrderManager,
    since_ns: int,
    on_fill: Callable[[Fill], None],
    timeout_s: float,
) -> int:
    """The execution node's own check with the venues on a kill, before it closes them:
    once the kill's cancels are confirmed (or ``timeout_s`` has passed), the fills each
    venue reports over REST since ``since_ns`` of the orders ``orders`` knows that it has
    not booked go to ``on_fill`` (which journals and publishes them); how many did.

    A fill made as the kill was pulled may have come on no stream (the venue's user
    stream silent at that moment): without this check it would be in neither node's
    journal. A venue that fails or cannot tell is logged and passed over.
    """
    deadline = time.monotonic() + timeout_s
    while orders.all_working() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # a confirmed cancel: that order trades no more
    booked = 0
    for name, venue in venues.items():
        try:
            fills = await asyncio.wait_for(
                venue.fetch_fills(since_ns), max(1.0, deadline - time.monotonic())
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error("{}: cannot read the fills at the kill: {!r}", name, exc)
            continue
        for fill in fills or ():
            if orders.has_fill(fill.venue, fill.fill_id) or orders.get(fill.client_id) is None:
                continue  # booked already, or not an order of this node
            on_fill(fill)
            booked += 1
    if booked:
        logger.warning(
            "kill switch: {} fill(s) the venues' streams had not reported, booked from "
            "their REST answers",
            booked,
        )
    return booked
