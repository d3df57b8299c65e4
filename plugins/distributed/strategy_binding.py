"""One strategy session per execution node: the strategy session an execution node takes
intents from, that session's liveness (the ``strategy_lost`` breaker and the goodbye act
on it alone) and which session placed each order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from quoteforge.model import Order, OrderStatus
from quoteforge.orders import OrderManager
from quoteforge.plugins.distributed.execution_instances import INSTANCE_FIELDS, describe_instance
from quoteforge.plugins.distributed.freshness import ClockSkew, heartbeat_age_over


@dataclass
class StrategyWatch:
    """What the execution node knows about the liveness of the strategy session it is
    bound to."""

    seen: bool = False  # an "online" heartbeat of the bound session was heard
    online: bool = False
    departed: bool = False  # said goodbye: no breaker for its silence
    last_online: float = 0.0
    tripped: bool = False
    blocked: dict[str, str] = field(default_factory=dict)  # strategy -> why it may not place


#: The field of a REJECTED order report that marks the refusal of an intent because the
#: execution node takes intents from another strategy session (see ``refused_mark_of``).
REFUSED_MARK = "strategy_refused"


def refused_mark_of(report: Mapping[str, Any], session: str) -> dict[str, Any] | None:
    """The mark of ``report`` when it is a REJECTED order report saying the execution node
    refused an intent of strategy session ``session`` because it is bound to another
    (``{"session": <refused>, "bound": <bound>, "bound_instance": <where it runs>}``),
    else None: reports of other orders, and refusals of other sessions, are not this
    node's business."""
    mark = report.get(REFUSED_MARK)
    if not isinstance(mark, Mapping) or report.get("status") != OrderStatus.REJECTED.value:
        return None
    if not session or str(mark.get("session") or "") != session or mark.get("bound") == session:
        return None
    return dict(mark)


def refused_node_message(run: str, mark: Mapping[str, Any]) -> str:
    """Why a strategy node whose intents the execution node refuses stops, and what to do."""
    return (
        f"the execution node of run {run!r} takes intents from another strategy session "
        f"({mark.get('bound_instance') or mark.get('bound')}) and refused this node's orders "
        f"(session {mark.get('session')}): two strategy nodes of one run would trade through "
        "the one execution node and cancel each other's orders; this node stopped quoting "
        "and stops: if the other node is the one you want, leave it; otherwise stop it "
        "(quoteforge kill <its run folder>, or SIGTERM) and start this one again"
    )


def session_of(payload: Mapping[str, Any]) -> str:
    """The strategy session a heartbeat or intent names (``""`` when it names none)."""
    return str(payload.get("session") or "")


class StrategyBinding:
    """The one strategy session an execution node takes intents from.

    Strategy heartbeats and intents name the session of the strategy node that sent them
    (``session``; a message without one counts as the session ``""``). The node binds
    to the first session whose "online" heartbeat it hears; before that, intents of any
    session are taken (nothing is known yet). While the bound session is alive, another
    session's intents are refused (``admit`` says no; counted in ``refused``) and its
    "online" heartbeats ignored: the first time, an error names both sessions and
    ``on_conflict(message, session)`` raises the alert. Another session's "offline" is
    none of this node's business: its goodbye cancels nothing here. A retained "online"
    heartbeat sent longer than ``grace_s`` ago (its ``sent_ns``: the last word of a node
    that died) is no sign of life: it binds nothing and keeps nothing alive. One heard
    live is, whatever its ``sent_ns`` (a clock out of step is warned of: ``ClockSkew``).

    The bound session ends when it says goodbye (its orders are cancelled at once), when
    its heartbeat says "offline" (its last will), or when it sent no "online" heartbeat
    for ``grace_s`` (``watch`` then trips the node's ``strategy_lost`` breaker, which
    cancels its orders). The next session heard, by heartbeat or intent, is bound then
    (a restarted strategy node), and the orders other sessions left working are
    cancelled: nobody manages them any more.
    """

    def __init__(
        self,
        run: str,
        grace_s: float,
        orders: OrderManager,
        strategies: Collection[str],
        cancel: Callable[[list[Order]], int],
        *,
        on_conflict: Callable[[str, str], None] | None = None,
        on_goodbye: Callable[[], None] | None = None,
        log: Any = logger,
        clock: Callable[[], float] = time.monotonic,
        skew_limit_s: float | None = None,
    ) -> None:
        if grace_s <= 0:
            raise ValueError(f"grace_s must be > 0, got {grace_s}")
        self.run = run
        self.grace_s = grace_s
        self.orders = orders
        self.strategies = set(strategies)
        self.cancel = cancel
        self.on_conflict = on_conflict
        self.on_goodbye = on_goodbye
        self.log = log
        self._clock = clock
        # A live heartbeat counts whatever its time; clocks this far apart are warned of
        # (half of nodes.stale_after, which the books' and intents' ages need).
        self.skew = ClockSkew(skew_limit_s or grace_s / 2, "execution", log=log)
        self.watch = StrategyWatch()
        self.bound: str | None = None
        #: Intents of another session refused while the bound one was alive.
        self.refused = 0
        self._heard = 0.0  # when the bound session was bound or last said "online"
        self._gone = False  # its heartbeat said "offline" since
        self._placed: dict[str, str] = {}  # client id -> session whose intent placed it
        self._kept = 0  # entries in _placed after the last pruning
        self._details: dict[str, dict[str, Any]] = {}
        self._reported: set[str] = set()
        self._old_told: set[str] = set()  # sessions whose old heartbeat was logged

    # -- state -----------------------------------------------------------------------------
    def alive(self) -> bool:
        """Whether the bound session is alive: no goodbye, no "offline", no breaker, and
        heard within ``grace_s``."""
        w = self.watch
        return (
            self.bound is not None
            and not (self._gone or w.departed or w.tripped)
            and self._clock() - self._heard <= self.grace_s
        )

    def describe(self, session: str | None) -> str:
        """A strategy session as an operator finds it (bus client, pid and host, run
        folder: what its heartbeats and ``state/node-strategy`` said)."""
        name = session or "(none named)"
        return describe_instance({**self._details.get(session or "", {}), "session": name})

    def orders_of(self, session: str | None) -> list[Order]:
        """The working orders that the intents of ``session`` placed."""
        return [
            o
            for o in self.orders.all_working()
            if o.strategy in self.strategies and self._placed.get(o.client_id, "") == session
        ]

    def refusal(self, session: str) -> str:
        """The reason of the REJECTED report for an order of a refused session."""
        return (
            f"refused at the execution node: it takes intents from strategy session "
            f"{self.bound} of this run, not from {session or '(none named)'}: two strategy "
            "nodes of one run would cancel each other's orders; stop one of them"
        )

    def refusal_mark(self, session: str) -> dict[str, Any]:
        """The mark of the REJECTED report for an order of a refused session, by which
        that session's strategy node knows to stop (``refused_mark_of``)."""
        where = self.describe(self.bound)
        return {REFUSED_MARK: {"session": session, "bound": self.bound, "bound_instance": where}}

    # -- messages --------------------------------------------------------------------------
    def on_announce(self, topic: str, payload: dict[str, Any]) -> None:
        """A strategy node's ``state/node-strategy``: where its session runs."""
        self._note(str(payload.get("instance") or ""), payload)

    def on_heartbeat(self, topic: str, payload: dict[str, Any]) -> None:
        session = session_of(payload)
        self._note(session, payload)
        w = self.watch
        if payload.get("status") == "online":
            age_s = heartbeat_age_over(payload, self.grace_s)
            if age_s is not None:
                # The retained last word of a strategy node that died before its last
                # will went out: no sign of life.
                if session in self._old_told:
                    return
                self._old_told.add(session)
                self.log.info(
                    "strategy session {}: 'online' heartbeat sent {:.1f}s ago, longer than "
                    "{:g}s: not taken for alive",
                    session or "(none named)",
                    age_s,
                    self.grace_s,
                )
                return
            self.skew.note(payload, "strategy")
            if session != self.bound:
                if self.alive():
                    self._report(session, "is online")
                    return
                self._bind(session)
            w.seen = w.online = True
            w.departed = self._gone = False
            w.last_online = self._heard = self._clock()
            if w.tripped:
                w.tripped = False
                w.blocked.pop("*", None)
                self.log.info("strategy node is back: its intents are accepted again")
            return
        if session != self.bound:
            return  # another session's goodbye or last will: not this node's business
        w.online = False
        self._gone = True
        if payload.get("reason") == "closed":
            w.departed = True
            if self.on_goodbye is not None:
                self.on_goodbye()
            # A goodbye: the node pulled its quotes before closing; cancel what is left.
            left = self.cancel(self.orders_of(session))
            if left:
                self.log.warning("strategy node closed with {} order(s) open: cancels sent", left)

    def admit(self, payload: Mapping[str, Any]) -> bool:
        """Whether an intent may be applied: it is the bound session's, or none is bound
        yet, or the bound one is gone (its sender is bound then)."""
        session = session_of(payload)
        if self.bound is None or session == self.bound:
            return True
        if not self.alive():
            self._bind(session)
            return True
        self.refused += 1
        self._report(session, "sends intents")
        return False

    def placed(self, client_id: str, payload: Mapping[str, Any]) -> None:
        """The order ``client_id`` was placed by the intent ``payload``."""
        if len(self._placed) > 2 * self._kept + 1024:
            working = {o.client_id for o in self.orders.all_working()}
            self._placed = {c: s for c, s in self._placed.items() if c in working}
            self._kept = len(self._placed)
        self._placed[client_id] = session_of(payload)

    # -- the watch -------------------------------------------------------------------------
    async def watch_silence(self, on_lost: Callable[[float], None]) -> None:
        """Call ``on_lost(grace_s)`` when the bound session, heard online before, sent no
        "online" heartbeat for ``grace_s`` (and did not say goodbye)."""
        grace = self.grace_s
        period = max(0.05, min(0.25, grace / 4))
        while True:
            slept = time.monotonic()
            await asyncio.sleep(period)
            late = time.monotonic() - slept - period
            if late > max(period, 0.1):
                # This node did not run (its host paused, its loop blocked): heartbeats
                # of that time wait unread, so the silence is judged after they are read.
                self.log.warning(
                    "this node did not run for {:.1f} s (a paused host or a blocked event "
                    "loop); the strategy node's heartbeat is judged again once its "
                    "messages of that time are read",
                    late + period,
                )
                continue
            w = self.watch
            silent = self._clock() - w.last_online
            if w.seen and not (w.tripped or w.departed) and silent > grace:
                on_lost(grace)

    # -- internals -------------------------------------------------------------------------
    def _bind(self, session: str) -> None:
        previous, w = self.bound, self.watch
        if w.departed:
            why = "said goodbye"
        elif self._gone:
            why = "went offline without a goodbye"
        else:
            why = f"was silent for more than {self.grace_s:g}s"
        self.bound = session
        self._heard = self._clock()
        self._gone = False
        w.seen = w.online = w.departed = w.tripped = False
        w.blocked.pop("*", None)
        # Whatever another session left working has nobody to manage it any more.
        stray = [
            o
            for o in self.orders.all_working()
            if o.strategy in self.strategies and self._placed.get(o.client_id, "") != session
        ]
        cancelled = self.cancel(stray) if stray else 0
        left = f"; cancelled {cancelled} order(s) other sessions left open" if cancelled else ""
        if previous is not None:
            self.log.info(
                "strategy session {} {}: intents are now taken from session {} ({}){}",
                previous or "(none named)",
                why,
                session or "(none named)",
                self.describe(session),
                left,
            )
        elif cancelled:
            self.log.warning(
                "intents are taken from strategy session {} ({}){}",
                session or "(none named)",
                self.describe(session),
                left,
            )

    def _note(self, session: str, details: Mapping[str, Any]) -> None:
        known = self._details.setdefault(session, {})
        known.update({k: details[k] for k in INSTANCE_FIELDS if details.get(k) is not None})

    def _report(self, session: str, doing: str) -> None:
        if session in self._reported:
            return
        self._reported.add(session)
        message = (
            f"a second strategy session of run {self.run!r} {doing} "
            f"({self.describe(session)}) while the one this execution node is bound to "
            f"({self.describe(self.bound)}) is alive: two strategy nodes would trade "
            "through one execution node and cancel each other's orders; the second one's "
            "intents are refused (its new orders reported REJECTED, its cancels ignored) "
            f"and this node keeps to session {self.bound}: stop the second strategy node "
            "(quoteforge kill <its run folder>, or SIGTERM)"
        )
        self.log.error("{}", message)
        if self.on_conflict is not None:
            try:
                self.on_conflict(message, session)
            except Exception:
                self.log.opt(exception=True).error("strategy session conflict: alert failed")
