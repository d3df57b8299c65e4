"""One execution node per run: the check a starting execution node makes for another live
instance of its run, and the sweep that cancels the orders of the run a dead instance
left resting at the venues.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger

from quoteforge.bus import Bus
from quoteforge.exchange import CancelOrder, ExchangeAdapter, OrderAction
from quoteforge.plugins.distributed.topics import TopicScheme

#: How many heartbeat intervals a retained "online" heartbeat may go without a fresh one
#: before it is taken for the last word of a node that died (its last will not yet sent).
SILENT_HEARTBEATS = 2.5


async def live_execution_instance(
    probe: Bus, scheme: TopicScheme, heartbeat_s: float, *, settle_s: float = 0.4
) -> str | None:
    """Describe the execution instance of this run that is online now, or None.

    ``probe`` is a connection of its own whose heartbeats and last will go under another
    name: this node's own heartbeat on ``heartbeat/execution`` would overwrite the live
    instance's retained one (and its goodbye would make the strategy node take that
    instance for gone). The broker hands the retained heartbeat and session over first;
    an "online" heartbeat is believed only when a fresh one follows within
    ``SILENT_HEARTBEATS`` intervals: a node that was killed leaves "online" retained until
    the broker sends its last will (1.5 keepalives later)."""
    beats: list[dict[str, Any]] = []
    session: dict[str, Any] = {}
    probe.subscribe(scheme.node_session("execution"), lambda t, p: session.update(p))
    probe.subscribe(scheme.heartbeat("execution"), lambda t, p: beats.append(p))
    flush = getattr(probe, "flush", None)
    if flush is not None:
        with contextlib.suppress(Exception):
            await flush(5)
    # Retained values follow the subscription's acknowledgement (``flush`` waited for
    # it), and a live instance always has its heartbeat retained: ``settle_s`` is the
    # broker's hand-over on loopback or a LAN, not a heartbeat interval.
    deadline = time.monotonic() + settle_s
    while not beats and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if not beats or beats[-1].get("status") != "online":
        return None
    retained = len(beats)
    deadline = time.monotonic() + SILENT_HEARTBEATS * heartbeat_s
    while time.monotonic() < deadline:
        if len(beats) > retained:
            break
        await asyncio.sleep(0.05)
    fresh = beats[retained:]
    if not fresh or fresh[-1].get("status") != "online":
        logger.warning(
            "a previous execution node of run {!r} (bus client {}) left 'online' without "
            "a goodbye and has been silent for {:g}s: taken for dead; its orders at the "
            "venues are cancelled",
            scheme.run,
            beats[-1].get("client_id", "?"),
            SILENT_HEARTBEATS * heartbeat_s,
        )
        return None
    where = [f"bus client {fresh[-1].get('client_id', '?')}"]
    if session.get("instance"):
        where.append(f"session {session['instance']}")
    if session.get("host") or session.get("pid"):
        where.append(f"pid {session.get('pid', '?')} on {session.get('host', '?')}")
    if session.get("run_dir"):
        where.append(f"run folder {session['run_dir']}")
    return ", ".join(where)


def refusal_message(run: str, instance: str) -> str:
    return (
        f"another execution node of run {run!r} is online ({instance}); two would send "
        "every order twice: stop it first (quoteforge kill <its run folder>, or SIGTERM) "
        "or wait until its heartbeat says offline, then start this one again"
    )


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
