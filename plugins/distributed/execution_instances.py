"""One execution node and one strategy node per run: the claim a starting node makes
for its run's role (refused beside a live instance or a rival that claimed after it), the
strategy node's binding to one execution session, and the sweep that cancels the orders
of the run a dead instance left resting at the venues.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger

from quoteforge.bus import Bus
from quoteforge.exchange import CancelOrder, ExchangeAdapter, OrderAction
from quoteforge.plugins.distributed.codec import RETAINED_DELIVERY
from quoteforge.plugins.distributed.freshness import ClockSkew, heartbeat_age_over, keep
from quoteforge.plugins.distributed.kill_latch import is_latched, latch_refusal, latch_topic
from quoteforge.plugins.distributed.topics import TopicScheme

#: How many heartbeat intervals a retained "online" heartbeat may go without a fresh one
#: before it is taken for the last word of a node that died (its last will not yet sent).
SILENT_HEARTBEATS = 2.5
#: How long a node that won the claim keeps others from starting with its "won" mark
#: alone, before its heartbeat says it is online (a few milliseconds later, normally).
CLAIM_HOLD_S = 10.0
#: How long a starting node waits for the broker to hand its own claim back.
CLAIM_ECHO_TIMEOUT_S = 5.0
#: The fields of a claim (and of a session) that name an instance to an operator.
INSTANCE_FIELDS = ("client_id", "session", "pid", "host", "run_dir")


#: Why a role has one instance per run, for the refusals.
WHY_ONE = {
    "execution": "two would send every order twice",
    "strategy": "two would trade through the one execution node and cancel each other's orders",
    "marketdata": "the strategy node would quote on whichever one's books came last",
}
#: What becomes of the orders of an instance that died, for the start beside it.
DEAD_ORDERS = {
    "execution": "its orders at the venues are cancelled",
    "strategy": "the execution node has cancelled its orders",
    "marketdata": "it had no orders",
}


def claim_topic(scheme: TopicScheme, role: str = "execution") -> str:
    """The retained ``state/claim-<role>``: the claims of starting nodes of the role,
    then the winner's "won" and "online" marks."""
    return scheme.state(f"claim-{role}")


def describe_instance(details: Mapping[str, Any]) -> str:
    """A node instance as an operator finds it: bus client, session, pid and host, run
    folder (what ``details`` knows of them)."""
    where = []
    if details.get("client_id"):
        where.append(f"bus client {details['client_id']}")
    session = details.get("session") or details.get("instance")
    if session:
        where.append(f"session {session}")
    if details.get("host") or details.get("pid"):
        where.append(f"pid {details.get('pid', '?')} on {details.get('host', '?')}")
    if details.get("run_dir"):
        where.append(f"run folder {details['run_dir']}")
    return ", ".join(where) or "no details given"


def refusal_message(run: str, instance: str, role: str = "execution") -> str:
    return (
        f"another {role} node of run {run!r} is online ({instance}); {WHY_ONE[role]}: "
        "stop it first (quoteforge kill <its run folder>, or SIGTERM) or wait until its "
        "heartbeat says offline, then start this one again"
    )


def rival_message(run: str, rival: Mapping[str, Any], role: str = "execution") -> str:
    return (
        f"another {role} node of run {run!r} claimed the {role} role at the same moment, "
        f"after this one ({describe_instance(rival)}); it goes on and this one stops, as "
        f"{WHY_ONE[role]}: if that node is the one you want, leave it; otherwise stop it "
        "(quoteforge kill <its run folder>, or SIGTERM) and start this one again"
    )


def held_message(run: str, holder: Mapping[str, Any], age_s: float, role: str = "execution") -> str:
    return (
        f"another {role} node of run {run!r} won the {role} role {age_s:.1f}s ago "
        f"({describe_instance(holder)}) and is coming online; {WHY_ONE[role]}: if it "
        "runs, leave it or stop it first (quoteforge kill <its run folder>); if it died "
        f"while starting, start this one again after {CLAIM_HOLD_S - age_s:.0f}s"
    )


class RoleClaim:
    """One starting node's claim to its run's ``role`` (``execution``, or ``strategy``
    in a wall-clock run): one instance of each per run.

    MQTT has no compare-and-set, so the claim relies on the order in which the broker
    hands out the messages of one topic, the same for every subscriber: each starting
    node subscribes to the retained ``state/claim-<role>`` (and to the role's heartbeat
    and session), then publishes its claim there (QoS 1, retained, a random
    nonce). The broker hands back, before the node's own claim, the retained value and
    every claim made before it; after it, every claim made later. A node that hears
    another claim after its own within ``settle_s`` lost: the last claim wins, so of
    nodes starting together exactly one goes on, and every one of them knows which. The
    winner marks the role "won" at once (a node claiming later hears it and stops) and
    "online" once its bus is up, from which point its heartbeat speaks for it: a
    retained "online" heartbeat is believed when a fresh one follows within
    ``dead_after_s`` (a node that was killed leaves "online" retained until the broker
    sends its last will, 1.5 keepalives later); one sent longer than ``dead_after_s``
    ago (its ``sent_ns``) is taken for dead at once. A heartbeat heard live refuses the
    start whatever its ``sent_ns``: only a retained one is judged by its age, so clocks
    out of step never let a second node start beside a live one. A claim or mark left
    by a node that died never blocks a restart: an old claim is ignored, a "won" mark
    holds for ``CLAIM_HOLD_S`` at most, and an "online" one defers to the heartbeat.

    ``probe`` is a connection of its own whose heartbeats and last will go under another
    name: this node's own heartbeat on ``heartbeat/<role>`` would overwrite the live
    instance's retained one (and its goodbye would make the other nodes take that
    instance for gone). On a signed bus every claim is signed with the run's key like
    any frame, so a client without it can neither claim nor mark the role.
    """

    def __init__(
        self,
        probe: Bus,
        scheme: TopicScheme,
        me: Mapping[str, Any],
        *,
        heartbeat_s: float,
        dead_after_s: float | None = None,
        settle_s: float = 0.4,
        role: str = "execution",
    ) -> None:
        if role not in WHY_ONE:
            raise ValueError(f"no claim for role {role!r}: expected one of {', '.join(WHY_ONE)}")
        self.probe = probe
        self.scheme = scheme
        self.role = role
        self.topic = claim_topic(scheme, role)
        self.nonce = secrets.token_hex(8)
        #: When this node first claimed the role (wall clock): every mark and heartbeat
        #: of it carries it, so that of two instances that both run (one started while
        #: the broker had lost its retained values) the earlier claim goes on.
        self.claimed_ns = time.time_ns()
        self.me = {k: me[k] for k in INSTANCE_FIELDS if me.get(k) is not None}
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = max(SILENT_HEARTBEATS * heartbeat_s, dead_after_s or 0.0)
        self.settle_s = settle_s
        self._claims: list[dict[str, Any]] = []  # heard on the claim topic, broker order
        self._beats: list[dict[str, Any]] = []
        self._session: dict[str, Any] = {}
        self._echo = asyncio.Event()
        self._claims_before = 0  # claim-topic messages heard before this node's own
        self._beats_before = 0  # heartbeats heard before it: the retained one
        self._latch: dict[str, Any] | None = None  # the run's kill latch, if retained

    def mark(self, state: str) -> dict[str, Any]:
        """This node's claim (``claiming``) or mark (``won``, ``online``)."""
        return {
            "state": state,
            "nonce": self.nonce,
            "ts_ns": time.time_ns(),
            "claimed_ns": self.claimed_ns,
            **self.me,
        }

    async def decide(self) -> str | None:
        """Claim the role: None when this node may start (its "won" mark is out), else
        why it must not, in one line naming the other instance and what to do."""
        probe = self.probe
        probe.subscribe(self.scheme.node_session(self.role), self._on_session)
        probe.subscribe(self.scheme.heartbeat(self.role), self._on_beat)
        probe.subscribe(self.topic, self._on_claim)
        probe.subscribe(latch_topic(self.scheme), self._on_latch)
        await self._flush()
        probe.publish(self.topic, self.mark("claiming"), qos=1, retain=True)
        try:
            await asyncio.wait_for(self._echo.wait(), CLAIM_ECHO_TIMEOUT_S)
        except TimeoutError:
            return (
                f"this node's claim to the {self.role} role of run {self.scheme.run!r} did "
                f"not come back from the broker within {CLAIM_ECHO_TIMEOUT_S:g}s on "
                f"{self.topic!r}: check that the broker is reachable and that its ACL lets "
                f"the {self.role} user read state/# and write {self.topic.split('/', 2)[-1]} "
                "(examples/distributed/mosquitto.acl), then start this node again"
            )
        # The retained latch came before the echo: a killed run stays stopped.
        if self._latch is not None and is_latched(self._latch):
            return latch_refusal(self.scheme.run, self._latch, self.me.get("run_dir"))
        refusal = await self._watch()
        if refusal is None:
            probe.publish(self.topic, self.mark("won"), qos=1, retain=True)
            await self._flush()
        return refusal

    async def _watch(self) -> str | None:
        now = time.monotonic()
        # At least a heartbeat and a margin: a broker that lost its retained values
        # (restarted without persistence) holds no heartbeat of a node that runs, whose
        # next one then tells of it (the node reconnects within its backoff, though: the
        # run-time check of ``SessionRivals`` settles what slips through).
        settle_end = now + max(self.settle_s, self.heartbeat_s + max(0.25, self.heartbeat_s / 2))
        dead_end = now + self.dead_after_s
        retained = self._beats[: self._beats_before]
        online = bool(retained) and retained[-1].get("status") == "online"
        beat_age = heartbeat_age_over(retained[-1], self.dead_after_s) if online else None
        # Not waited for when its own send time says it fell silent that long ago; a
        # heartbeat heard live after it refuses whatever its sent_ns says (only a
        # retained one is judged by its age: clocks out of step are no dead node).
        live = online and beat_age is None
        while True:
            fresh = self._beats[self._beats_before :]
            alive = [
                b
                for b in fresh
                if b.get("status") == "online" and heartbeat_age_over(b, self.dead_after_s) is None
            ]
            if alive:
                where = dict(self._session)
                where["client_id"] = alive[-1].get("client_id", "?")
                where.setdefault("session", alive[-1].get("session"))
                return refusal_message(self.scheme.run, describe_instance(where), self.role)
            t = time.monotonic()
            if t >= settle_end and (not live or fresh or t >= dead_end):
                break
            await asyncio.sleep(0.05)
        held = self._held()
        if held is not None:
            holder, age_s = held
            return held_message(self.scheme.run, holder, age_s, self.role)
        later = [c for c in self._claims[self._claims_before :] if c.get("nonce") != self.nonce]
        if later:
            return rival_message(self.scheme.run, later[-1], self.role)
        if online and not self._beats[self._beats_before :]:
            logger.warning(
                "a previous {} node of run {!r} (bus client {}) left 'online' without a "
                "goodbye and {}: taken for dead; {}",
                self.role,
                self.scheme.run,
                retained[-1].get("client_id", "?"),
                f"has been silent for {self.dead_after_s:g}s"
                if beat_age is None
                else f"sent its last heartbeat {beat_age:.1f}s ago",
                DEAD_ORDERS[self.role],
            )
        return None

    def _held(self) -> tuple[dict[str, Any], float] | None:
        """The "won" mark of another node heard before this node's claim, while it holds."""
        for claim in reversed(self._claims[: self._claims_before]):
            if claim.get("state") != "won" or claim.get("nonce") == self.nonce:
                continue
            age_s = (time.time_ns() - int(claim.get("ts_ns", 0))) / 1e9
            # Both ways: a mark from the future is a clock out of step, not a licence.
            if abs(age_s) < CLAIM_HOLD_S:
                return claim, max(age_s, 0.0)
        return None

    async def _flush(self) -> None:
        flush = getattr(self.probe, "flush", None)
        if flush is not None:
            with contextlib.suppress(Exception):
                await flush(5)

    def _on_session(self, topic: str, payload: dict[str, Any]) -> None:
        self._session.update(payload)

    def _on_beat(self, topic: str, payload: dict[str, Any]) -> None:
        self._beats.append(keep(payload))  # judged later: only a retained one by its age

    def _on_latch(self, topic: str, payload: dict[str, Any]) -> None:
        if not self._echo.is_set():
            self._latch = payload

    def _on_claim(self, topic: str, payload: dict[str, Any]) -> None:
        self._claims.append(keep(payload))
        if (
            not self._echo.is_set()
            and payload.get("nonce") == self.nonce
            and payload.get("state") == "claiming"
        ):
            # Everything the broker had (retained values, earlier claims) came before.
            self._claims_before = len(self._claims) - 1
            self._beats_before = len(self._beats)
            self._echo.set()


#: The execution node's claim (the name the execution node has always used).
ExecutionClaim = RoleClaim


#: The messages of an execution session the strategy node counts when it refuses them.
REFUSED_KINDS = ("order", "fill", "book", "trade", "answer")
#: What a strategy node takes from a session of each role it binds, for the messages.
BOUND_MESSAGES = {
    "execution": "order reports, fills and books",
    "marketdata": "books, trades and heartbeats",
}


class ExecutionBinding:
    """The one execution session a strategy node takes order reports, fills, books,
    trades and reconciliation answers from.

    The node binds to the first execution session it hears (its session announcement,
    heartbeat or any message: the execution node puts its session id in each). While
    that session is alive, a message of another one is refused: the first time with an
    error naming both sessions and a call to ``on_conflict`` (the strategy node raises
    an alert), every time counted in ``refused`` by kind; its fills are never booked.
    The bound session is gone once it says so (an "offline" heartbeat: a goodbye or its
    last will), once its "online" heartbeat is older than ``grace_s`` by its send time
    (a retained one of a node that died), or stays silent longer than ``grace_s``, the
    silence after which the strategy node takes an execution node for lost; the next
    session heard is bound then: a restarted execution node is taken. A message without
    a session id (not from an execution node) is left to the caller's other checks. When
    the node binds to a session whose announcement (``state/node-execution``) it refused
    earlier, it hands that announcement to the ``listen`` callbacks again: the session
    went on since.

    With ``role="marketdata"`` it is the one market-data session whose books, trades and
    heartbeats the strategy node takes (the market-data node puts its session in each):
    the same rules, another role (``MarketDataBinding``).
    """

    def __init__(
        self,
        run: str,
        grace_s: float,
        *,
        on_conflict: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        role: str = "execution",
    ) -> None:
        if grace_s <= 0:
            raise ValueError(f"grace_s must be > 0, got {grace_s}")
        if role not in BOUND_MESSAGES:
            raise ValueError(f"no binding for role {role!r}")
        self.role = role
        self.kind = "market-data" if role == "marketdata" else role
        self.run = run
        self.grace_s = grace_s
        self.on_conflict = on_conflict
        self._clock = clock
        self.bound: str | None = None
        self._heard = 0.0
        self._gone = False
        self._gone_why = "said goodbye"  # how the bound session was last taken for gone
        self._details: dict[str, dict[str, Any]] = {}
        self._announced: dict[str, dict[str, Any]] = {}  # the last announcement of each
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._reported: set[str] = set()
        kinds = REFUSED_KINDS if role == "execution" else ("book", "trade", "heartbeat")
        self.refused: dict[str, int] = dict.fromkeys(kinds, 0)
        # Live heartbeats count whatever their time; clocks apart are warned of.
        self.skew = ClockSkew(grace_s / 2, "strategy")

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def alive(self) -> bool:
        """Whether the bound session is alive: it did not say goodbye and was heard
        within ``grace_s``."""
        return (
            self.bound is not None
            and not self._gone
            and self._clock() - self._heard <= self.grace_s
        )

    def listen(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(announcement)`` when the node binds to a session whose
        announcement it heard (and refused) before."""
        self._listeners.append(callback)

    def admit(self, session: Any, kind: str, details: Mapping[str, Any] | None = None) -> bool:
        """Whether a message of ``kind`` from execution session ``session`` may be
        applied; binds the session when none is bound or the bound one is gone."""
        if not session:
            return True
        session = str(session)
        if details:
            known = self._details.setdefault(session, {})
            known.update({k: details[k] for k in INSTANCE_FIELDS if details.get(k) is not None})
            if kind == "session":
                self._announced[session] = dict(details)
        now = self._clock()
        # A retained value (an announcement, a snapshot) may be all that is left of a
        # session that stopped: it binds, but shows no life; a live message does.
        heard = -math.inf if RETAINED_DELIVERY.get() else now
        if session == self.bound:
            # A goodbye is undone by the session's own "online" heartbeat only (it
            # reconnected), not by a retained message of it handed out again.
            if kind == "heartbeat":
                self._gone = False
            if not self._gone:
                self._heard = max(self._heard, heard)
            return True
        if self.alive():
            self._refuse(session, kind)
            return False
        previous, gone, never = self.bound, self._gone, self._heard == -math.inf
        self.bound = session
        self._heard = heard
        self._gone = False
        if previous is not None:
            silent = f"was silent for more than {self.grace_s:g}s"
            logger.info(
                "{} session {} {}: {} are now taken from session {} ({})",
                self.kind,
                previous,
                self._gone_why
                if gone
                else "was known only from a retained value"
                if never
                else silent,
                BOUND_MESSAGES[self.role],
                session,
                self.describe(session),
            )
        announcement = self._announced.get(session)
        if kind != "session" and announcement is not None:
            for callback in list(self._listeners):
                callback(announcement)
        return True

    def heartbeat(self, payload: Mapping[str, Any]) -> bool:
        """Whether an execution heartbeat concerns the bound session (or cannot tell):
        an "online" one is admitted as any message; an "offline" one of the bound
        session ends it, another session's is none of this node's business. An "online"
        retained one sent longer than ``grace_s`` ago (its ``sent_ns``) speaks for no
        live session: the last word of a node that died before its last will went out.
        It binds nothing; the bound session's ends that session as its last will would
        (its next fresh heartbeat undoes that). One heard live is fresh whatever its
        ``sent_ns``: a clock ahead or behind by more than half of ``grace_s`` is warned
        of once (``ClockSkew``)."""
        session = payload.get("session")
        if payload.get("status") == "online":
            age_s = heartbeat_age_over(payload, self.grace_s)
            if age_s is None:
                self.skew.note(payload, self.kind)
                return self.admit(session, "heartbeat", payload)
            if not session or str(session) != self.bound:
                return False
            if not self._gone:
                self._gone = True
                self._gone_why = f"sent its last heartbeat {age_s:.1f}s before it was read"
                logger.info(
                    "{} session {} {}, longer than {:g}s: taken for gone; the next "
                    "session heard is bound",
                    self.kind,
                    self.bound,
                    self._gone_why,
                    self.grace_s,
                )
            return True
        if not session or self.bound is None:
            return True
        if str(session) != self.bound:
            return False
        self._gone = True
        self._gone_why = "said goodbye" if payload.get("reason") == "closed" else "went offline"
        return True

    def describe(self, session: str) -> str:
        return describe_instance({"session": session, **self._details.get(session, {})})

    def _refuse(self, session: str, kind: str) -> None:
        if kind in self.refused:
            self.refused[kind] += 1
        if session in self._reported:
            return
        self._reported.add(session)
        assert self.bound is not None
        venues = " and check the venues for orders it placed" if self.role == "execution" else ""
        message = (
            f"a second {self.kind} session of run {self.run!r} is on the bus "
            f"({self.describe(session)}) while the one this node is bound to "
            f"({self.describe(self.bound)}) is alive: {WHY_ONE[self.role]}; the second "
            f"one's {BOUND_MESSAGES[self.role]} are refused (never applied) and this node "
            f"keeps to session {self.bound}: stop the second node (quoteforge kill <its run "
            f"folder>, or SIGTERM){venues}"
        )
        logger.error("{}", message)
        if self.on_conflict is not None:
            try:
                self.on_conflict(message)
            except Exception:
                logger.opt(exception=True).error("{} session conflict: alert failed", self.kind)


async def cancel_listed_orders(
    venues: Mapping[str, ExchangeAdapter],
    prefix: str,
    skip: Callable[[str], bool],
    *,
    wait_s: float = 0.0,
    what: str = "",
) -> int:
    """Cancel every open order the venues list whose client id carries the run's
    ``prefix`` (``<prefix>-...``), except those ``skip(client_id)`` keeps; with
    ``wait_s``, ask again until none is listed (cancels are sent once each) or the time
    passed. Returns how many orders were sent a cancel. The reports come back through
    the adapters' sinks, as for any cancel."""
    ours = f"{prefix}-"
    sent: set[str] = set()
    deadline = time.monotonic() + wait_s
    while True:
        listed = 0
        for name, venue in venues.items():
            try:
                open_now = await venue.fetch_open_orders()
            except Exception as exc:
                logger.error("{}: cannot read the open orders {}: {}", name, what, exc)
                continue
            if open_now is None:
                continue  # the adapter cannot tell
            actions: list[OrderAction] = []
            for update in open_now:
                cid = update.client_id
                if not cid.startswith(ours) or skip(cid):
                    continue
                listed += 1
                if cid not in sent:
                    sent.add(cid)
                    actions.append(CancelOrder(cid, name, update.symbol or ""))
            if actions:
                logger.warning(
                    "{}: {} open order(s) of this run {}: cancelling {}",
                    name,
                    len(actions),
                    what,
                    ", ".join(a.client_id for a in actions if isinstance(a, CancelOrder)),
                )
                venue.submit(actions)
        if not listed or time.monotonic() >= deadline:
            return len(sent)
        await asyncio.sleep(0.2)
