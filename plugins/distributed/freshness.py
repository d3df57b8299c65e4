"""Whether a strategy node's mirrored books still show the market of now, and whether a
node's "online" heartbeat still speaks for a node that lives.

Two things tell that books may not: the node's own pause (a paused host, a blocked event
loop), noticed before any message of that time is applied (``NodePause``), and the age of
a book message, read off the wall-clock time its publisher stamps on it
(``book_message_problem``). A heartbeat carries its send time too: a retained "online"
left by a node that died before its last will went out is told by its age
(``heartbeat_age_over``), and a live one tells how far the clocks disagree
(``ClockSkew``).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from loguru import logger

from quoteforge.book import L2Book
from quoteforge.plugins.distributed.codec import RETAINED_DELIVERY, RETAINED_KEY

__all__ = [
    "RETAINED",
    "BookMirror",
    "ClockSkew",
    "NodePause",
    "PauseListener",
    "book_message_problem",
    "heartbeat_age_over",
    "keep",
    "mark_age_over",
    "was_retained",
]

NS = 1_000_000_000

#: The key marking a kept copy of a payload that arrived retained (``keep``). The ``$``
#: keeps it apart from every payload field; the codec refuses to send a payload with it.
RETAINED = RETAINED_KEY


def was_retained(payload: Mapping[str, Any]) -> bool:
    """Whether ``payload`` arrived as a retained value, one the broker held rather than
    one published now: the MQTT bus is delivering it so (``RETAINED_DELIVERY``), or it
    is a copy ``keep`` marked."""
    return RETAINED_DELIVERY.get() or payload.get(RETAINED) is True


def keep(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` as a handler keeps it to judge later, marked when it arrived retained
    (the delivery's mark holds only while the handler runs)."""
    return {**payload, RETAINED: True} if RETAINED_DELIVERY.get() else payload


class BookMirror:
    """One market's book as a strategy node mirrors it from the node hosting it
    (``remote.RemoteVenue``), with what tells whether it shows the market of now."""

    __slots__ = (
        "book",
        "fresh_from_ns",
        "last_n",
        "last_pub",
        "last_seen_ns",
        "reason",
        "told_late",
    )

    def __init__(self, book: L2Book) -> None:
        self.book = book
        self.last_pub = ""
        self.last_n = 0
        self.last_seen_ns = 0
        self.reason = ""
        # Once this node knew itself behind (its pause, a message read late), a book
        # message published before then (wall clock, ns) does not make the book LIVE.
        self.fresh_from_ns = 0
        self.told_late = False  # a message read late was logged since the book was LIVE


class PauseListener(Protocol):
    def node_paused(self, gap_ns: int) -> None:
        """This node did not run for ``gap_ns``: what arrived meanwhile waits unread."""


class NodePause:
    """When the event loop of this process last ran, shared by every mirror on it.

    Each message a mirror handles (``seen``) and each turn of its watch (``ticked``)
    marks the loop as running; a gap longer than a listener's limit is reported to that
    listener (``node_paused``) by whichever comes first after it. After a pause the
    event loop runs the timers that came due before it reads its sockets (a wait cut
    short by a stop and continue returns no events), so a watch's turn usually comes
    first; a message comes first when the loop was blocked with data waiting. Either way
    the listeners hear of the gap before a message of that time is applied.
    """

    _of_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, NodePause]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.ran_ns = time.monotonic_ns()
        self.noted_ns = 0  # when a gap was last reported to the listeners (monotonic)
        self._listeners: weakref.WeakKeyDictionary[PauseListener, int] = weakref.WeakKeyDictionary()
        self._shortest_ns = 0

    @classmethod
    def of_running_loop(cls) -> NodePause:
        """The one instance of the running event loop (one pause stops every mirror)."""
        loop = asyncio.get_running_loop()
        found = cls._of_loop.get(loop)
        if found is None:
            found = cls._of_loop[loop] = cls()
        return found

    def join(self, listener: PauseListener, limit_ns: int) -> None:
        """Tell ``listener`` of every gap longer than ``limit_ns``."""
        self._listeners[listener] = limit_ns
        self._shortest_ns = min(self._listeners.values())

    def leave(self, listener: PauseListener) -> None:
        self._listeners.pop(listener, None)
        self._shortest_ns = min(self._listeners.values(), default=0)

    def seen(self) -> None:
        """A message is being handled (call before applying it)."""
        now = time.monotonic_ns()
        gap = now - self.ran_ns
        self.ran_ns = now
        if gap > self._shortest_ns:
            self._report(gap, now)

    ticked = seen  # a timer ran: the same mark

    def _report(self, gap: int, now: int) -> None:
        listeners = list(self._listeners.items())
        if listeners:
            self.noted_ns = now
        for listener, limit_ns in listeners:
            if gap > limit_ns:
                listener.node_paused(gap)


def book_message_problem(sent_ns: int, now_ns: int, limit_ns: int) -> str | None:
    """Why a book message its publisher stamped ``sent_ns`` (wall clock, ns) cannot
    stand for the book of ``now_ns`` (this node's wall clock), or None.

    ``limit_ns`` is ``nodes.stale_after``, the same bound the mirrors put on a silence.
    The age is read off two machines' clocks, which are taken to agree to well within it
    (NTP keeps them within milliseconds); clocks further apart than that make every
    message look too old (or too new), so the books never go LIVE and the reason says
    so, as ``nodes.intent_max_age`` refuses every order at the execution node then.
    """
    age = now_ns - sent_ns
    if age > limit_ns:
        return (
            f"book message published {age / NS:.1f} s ago, longer than nodes.stale_after "
            f"({limit_ns / NS:g} s): read late (this node paused, or a slow link or broker), "
            "or the nodes' clocks disagree (synchronise them: NTP)"
        )
    if age < -limit_ns:
        return (
            f"book message stamped {-age / NS:.1f} s ahead of this node's clock, more than "
            f"nodes.stale_after ({limit_ns / NS:g} s): the nodes' clocks disagree; "
            "synchronise them (NTP)"
        )
    return None


def heartbeat_age_over(beat: Mapping[str, Any], limit_s: float) -> float | None:
    """How many seconds ago the sender of the retained heartbeat ``beat`` sent it (its
    ``sent_ns``, wall clock), when that is longer than ``limit_s``: the role's bound for
    a silence (``stale_after``, ``strategy_grace``, a claim's dead-after). None when it
    is younger, carries no time (a node of an older version), or arrived live.

    Only a retained heartbeat can be old: the one a broker holds is the retained last
    word of a node that died before its last will went out (or of a broker that kept
    it). A heartbeat published now (live, even one forwarding a retained publish) shows
    its sender alive whatever its ``sent_ns`` says: a clock out of step must not make a
    live node look dead (``ClockSkew`` warns of that clock instead). The age of a
    retained one is read off two machines' clocks, which must agree to well within the
    bound (NTP); one stamped ahead of this node's clock is not judged old.
    """
    if not was_retained(beat):
        return None
    return _age_over(beat.get("sent_ns"), limit_s)


def mark_age_over(mark: Mapping[str, Any], limit_s: float) -> float | None:
    """The same for a claim mark (its ``ts_ns``): only a retained one can be old."""
    if not was_retained(mark):
        return None
    return _age_over(mark.get("ts_ns") or 0, limit_s)


def _age_over(sent: Any, limit_s: float) -> float | None:
    if sent is None or isinstance(sent, bool):
        return None
    try:
        age_s = (time.time_ns() - int(sent)) / NS
    except (TypeError, ValueError):
        return None
    return age_s if age_s > limit_s else None


class ClockSkew:
    """Warns, once per sender session, when live heartbeats' ``sent_ns`` differ from
    this node's wall clock by more than ``limit_s`` (half of ``nodes.stale_after``) for
    at least ``limit_s`` of this node's running time: heartbeats read late (after this
    node's own pause, from a slow broker) differ only while their backlog is read.

    A live heartbeat is taken for a sign of life whatever its time, but the same clocks
    judge every book message (``book_message_problem``) and every intent
    (``nodes.intent_max_age``): clocks apart by ``stale_after`` keep the books STALE and
    by ``intent_max_age`` refuse every order. Half way there, the operator hears of it.
    """

    def __init__(self, limit_s: float, reader: str, log: Any = logger) -> None:
        self.limit_ns = int(limit_s * NS)
        self.reader = reader
        self.log = log
        self._told: set[str] = set()
        self._over_since: dict[str, int] = {}  # session -> first heartbeat over (monotonic)

    def note(self, beat: Mapping[str, Any], sender: str) -> None:
        """A heartbeat of the ``sender`` role arrived: warn if it arrived live and its
        clock has been out of step with this node's (once per sender session)."""
        sent = beat.get("sent_ns")
        if type(sent) is not int or was_retained(beat):
            return
        diff = sent - time.time_ns()
        session = str(beat.get("session") or sender)
        if abs(diff) <= self.limit_ns:
            self._over_since.pop(session, None)
            return
        now = time.monotonic_ns()
        since = self._over_since.setdefault(session, now)
        if now - since < self.limit_ns or session in self._told:
            return
        self._told.add(session)
        self.log.warning(
            "the {} node's clock (session {}) is {:.1f} s {} this {} node's, more than half "
            "of nodes.stale_after ({:g} s): the nodes' clocks disagree; synchronise them "
            "(NTP). Heartbeats still count, but clocks apart by stale_after keep the books "
            "STALE and by nodes.intent_max_age refuse every order",
            sender,
            session,
            abs(diff) / NS,
            "ahead of" if diff > 0 else "behind",
            self.reader,
            2 * self.limit_ns / NS,
        )
