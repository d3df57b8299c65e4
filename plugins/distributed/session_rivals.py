"""Two live instances of one role at run time, which the claim at start did not stop (one
started while the broker had lost its retained values): which of them goes on, and the
intents an execution node must leave to the execution session they are addressed to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger

from quoteforge.plugins.distributed.execution_instances import (
    CLAIM_HOLD_S,
    INSTANCE_FIELDS,
    WHY_ONE,
    describe_instance,
)
from quoteforge.plugins.distributed.freshness import heartbeat_age_over, mark_age_over

#: The field of an intent naming the execution session the strategy node is bound to.
ADDRESS_FIELD = "execution"


def rival_won_message(run: str, role: str, rival: Mapping[str, Any], me: str) -> str:
    """Why this node (session ``me``) stops for ``rival``, which claimed the role first."""
    return (
        f"another {role} node of run {run!r} is online ({describe_instance(rival)}) and "
        f"claimed the {role} role before this one (session {me}; one of them started while "
        f"the broker had lost its retained values): {WHY_ONE[role]}; the earlier claim goes "
        "on, so this node stopped taking orders, cancelled its own and stops: check the "
        "venues, then leave the other node running"
    )


class SessionRivals:
    """Notices, at run time, another live session of this node's ``role``: its fresh
    "online" heartbeat (``on_heartbeat``) or its claim mark (``on_claim``: "won" or
    "online", stamped within ``dead_after_s``).

    Only a retained heartbeat or mark is judged by its age (``heartbeat_age_over``): one
    published now is a live rival whatever its sender's clock says.

    Of two instances that both run, **the earlier original claim goes on**: each claim,
    mark and heartbeat carries ``claimed_ns``, the wall-clock time its node first claimed
    the role, and the smaller (``claimed_ns``, session) wins, so both instances come to
    the same answer. The loser hears of it first through ``on_lost(message, rival)``
    (once); the winner logs an error naming the loser, which stops, and calls
    ``on_won()``: its retained values (announcement, claim mark), which the loser's may
    have replaced, are published again. A rival that names
    no ``claimed_ns`` (a node of an older version, which does not yield) is taken as the
    earlier one: this node yields, and exactly one still trades.
    """

    def __init__(
        self,
        run: str,
        role: str,
        session: str,
        claimed_ns: int,
        dead_after_s: float,
        on_lost: Callable[[str, Mapping[str, Any]], None],
        on_won: Callable[[], None] | None = None,
    ) -> None:
        self.run = run
        self.on_won = on_won
        self.role = role
        self.session = session
        self.claimed_ns = claimed_ns
        self.dead_after_s = dead_after_s
        self.on_lost = on_lost
        self.lost = False
        self._told: set[str] = set()
        self._details: dict[str, dict[str, Any]] = {}  # where each session runs
        #: Intents addressed to another execution session, ignored (``addressed_elsewhere``).
        self.elsewhere = 0

    def on_announce(self, topic: str, payload: dict[str, Any]) -> None:
        """A ``state/node-<role>``: where a session runs, for the messages to name it."""
        known = self._details.setdefault(str(payload.get("instance") or ""), {})
        known.update({k: payload[k] for k in INSTANCE_FIELDS if payload.get(k) is not None})

    def on_heartbeat(self, topic: str, payload: dict[str, Any]) -> None:
        online = payload.get("status") == "online"
        if online and heartbeat_age_over(payload, self.dead_after_s) is None:
            self._heard(payload, "heartbeat")

    def on_claim(self, topic: str, payload: dict[str, Any]) -> None:
        state = payload.get("state")
        if state not in ("won", "online"):
            return  # a node claiming now hears this one and refuses to start
        # Only a retained mark can be old (a live one was published now, whatever clock
        # stamped it); a retained one from the future is a clock out of step.
        limit = CLAIM_HOLD_S if state == "won" else self.dead_after_s
        if mark_age_over(payload, limit) is None:
            self._heard(payload, f"{state} mark")

    def addressed_elsewhere(self, payload: Mapping[str, Any]) -> bool:
        """Whether intent ``payload`` is addressed to another execution session (the one
        its strategy node is bound to): never acted on here, counted in ``elsewhere``. An
        intent naming none (sent before its node bound a session, or by an older
        version) is anybody's: the claim keeps to one execution node then."""
        to = payload.get(ADDRESS_FIELD)
        if not to or str(to) == self.session:
            return False
        self.elsewhere += 1
        if str(to) not in self._told:
            self._told.add(str(to))
            logger.warning(
                "intents of run {!r} addressed to execution session {} (not this one, {}) "
                "are ignored here: the strategy node is bound to that session",
                self.run,
                to,
                self.session,
            )
        return True

    def _heard(self, rival: Mapping[str, Any], how: str) -> None:
        session = str(rival.get("session") or "")
        if not session or session == self.session or self.lost:
            return
        rival = {**self._details.get(session, {}), **rival}
        theirs = (int(rival.get("claimed_ns") or 0), session)
        if theirs < (self.claimed_ns, self.session):
            self.lost = True
            self.on_lost(rival_won_message(self.run, self.role, rival, self.session), rival)
            return
        if f"rival:{session}" in self._told:
            return
        self._told.add(f"rival:{session}")
        if self.on_won is not None:
            self.on_won()
        logger.error(
            "another {} node of run {!r} is online ({}; heard its {}) and claimed the role "
            "after this one: {}; it stops and this one goes on",
            self.role,
            self.run,
            describe_instance(rival),
            how,
            WHY_ONE[self.role],
        )
