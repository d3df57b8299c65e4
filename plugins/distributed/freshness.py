"""Whether a strategy node's mirrored books still show the market of now, and whether a
node's "online" heartbeat still speaks for a node that lives.

Two things tell that books may not: the node's own pause (a paused host, a blocked event
loop), noticed before any message of that time is applied (``NodePause``), and the age of
a book message, read off the wall-clock time its publisher stamps on it
(``book_message_problem``). A heartbeat carries its send time too: a retained "online"
left by a node that died before its last will went out is told by its age
(``heartbeat_age_over``).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from quoteforge.book import L2Book

__all__ = [
    "BookMirror",
    "NodePause",
    "PauseListener",
    "book_message_problem",
    "heartbeat_age_over",
]

NS = 1_000_000_000


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
    """How many seconds ago the sender of heartbeat ``beat`` sent it (its ``sent_ns``,
    wall clock), when that is longer than ``limit_s``: the role's bound for a silence
    (``stale_after``, ``strategy_grace``, a claim's dead-after). None when it is younger,
    or carries no time (a node of an older version: taken as today, fresh).

    Such a heartbeat no longer says its sender lives: every live node sends one each
    ``nodes.heartbeat``, so the newest one a broker holds for a live node is younger
    than the bound. An old one is the retained last word of a node that died before its
    last will went out (or of a broker that kept it), or one read very late. The age is
    read off two machines' clocks, which must agree to well within the bound (NTP), as
    for a book message's ``sent_ns``. A heartbeat stamped ahead of this node's clock is
    not judged old: a clock out of step must not make a live node look dead.
    """
    sent = beat.get("sent_ns")
    if sent is None or isinstance(sent, bool):
        return None
    try:
        age_s = (time.time_ns() - int(sent)) / NS
    except (TypeError, ValueError):
        return None
    return age_s if age_s > limit_s else None
