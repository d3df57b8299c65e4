"""Reconciliation across the bus: the strategy node asks the execution node, which
holds the real adapter, for a venue's open orders, fills or balances.

``reconcile_topics`` names the question and answer topics of a venue;
``ReconcileResponder`` is the execution node's side. The asking side is
``RemoteVenue.fetch_open_orders`` / ``fetch_fills`` / ``fetch_balances``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from loguru import logger

from quoteforge.bus import Bus
from quoteforge.exchange import ExchangeAdapter
from quoteforge.plugins.distributed.topics import TopicScheme
from quoteforge.plugins.distributed.wire import fill_payload, update_payload

__all__ = [
    "RECONCILE_RETRY_S",
    "RECONCILE_ROOT",
    "RECONCILE_TIMEOUT_S",
    "RECONCILE_WHAT",
    "ReconcileError",
    "ReconcileResponder",
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
