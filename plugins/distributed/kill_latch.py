"""The kill switch of a split run, latched at the broker (``state/kill``, retained).

``control/kill`` reaches the nodes connected when it is sent: it is QoS 1 but not
retained, and a node reconnects with a clean session. A node cut off from the broker at
that moment (a paused host, a network split) would never hear it and trade on. So every
node that pulls the kill switch, or hears it, also sets the latch: a retained
``{"state": "killed", ...}`` on ``state/kill`` that the broker hands to every node when
it subscribes, on every (re)connect. A running node that hears it acts as on the kill
switch; a node starting for the run refuses to start (``latch_refusal``) until an
operator clears the latch with ``quoteforge kill RUN_DIR --reset`` (``clear_latch``),
which replaces it with a retained ``{"state": "reset", ...}``.

On a signed bus the latch and its reset are signed like every frame, so a client without
the run's key can neither set nor clear it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from loguru import logger

from quoteforge.bus import Bus
from quoteforge.plugins.distributed.topics import TopicScheme

__all__ = [
    "KillLatch",
    "clear_latch",
    "describe_latch",
    "is_latched",
    "latch_refusal",
    "latch_topic",
    "undelivered_kill_message",
]

NS = 1_000_000_000
#: How long a reset waits for its own message to come back from the broker.
ECHO_TIMEOUT_S = 10.0


def latch_topic(scheme: TopicScheme) -> str:
    """The retained topic holding the run's latched kill switch: ``state/kill``."""
    return scheme.state("kill")


def is_latched(payload: Mapping[str, Any]) -> bool:
    return payload.get("state") == "killed"


def describe_latch(payload: Mapping[str, Any], now_ns: int | None = None) -> str:
    """``pulled at 2026-12-07 18:50:03 UTC (3.2 min ago) on the strategy node: operator``."""
    sent = payload.get("sent_ns")
    when = "at an unknown time"
    if isinstance(sent, int) and not isinstance(sent, bool):
        stamp = datetime.fromtimestamp(sent / NS, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        age = ((now_ns if now_ns is not None else time.time_ns()) - sent) / NS
        ago = f"{age:.0f}s" if abs(age) < 120 else f"{age / 60:.1f} min"
        when = f"at {stamp} ({ago} ago)"
    return f"pulled {when} on the {payload.get('node', '?')} node: {payload.get('reason', '?')}"


def latch_refusal(run: str, payload: Mapping[str, Any], run_dir: str | None) -> str:
    """Why a node of ``run`` must not start while its kill switch is latched, and how to
    clear it, in one line."""
    folder = run_dir or "<a run folder of this run>"
    return (
        f"the kill switch of run {run!r} is latched at the broker ({describe_latch(payload)}): "
        "a killed run stays stopped until an operator clears it. Check the venues' open "
        f"orders and positions, then run `quoteforge kill {folder} --reset` and start "
        "the nodes again"
    )


def undelivered_kill_message(run: str, node: str, queued: int, waited_s: float) -> str:
    """What a node says when it stops after the kill switch with the kill not handed to
    the broker (the broker stayed away): who may still be trading."""
    head = (
        f"the kill switch of run {run!r} did NOT reach the broker: the {node} node waited "
        f"{waited_s:g}s for it and stops with {queued} message(s) undelivered, and the "
        "latch is not set. "
    )
    if node == "execution":
        return head + (
            "This node cancelled its orders at the venues itself, but the other nodes "
            "never heard the kill: stop the strategy node before it quotes through "
            "another execution node"
        )
    return head + (
        "Nodes cut off from this one never heard it; the execution node cancels the "
        "strategy node's orders on its own once it has heard nothing of it for "
        "nodes.strategy_grace: check the venues' open orders now"
    )


class KillLatch:
    """One node's side of the latch: ``listen`` subscribes ``state/kill`` (the broker
    hands the retained value over again at each reconnect) and calls ``on_latched(source)``
    when it says killed; ``latch(reason)`` sets it, unless the node heard it set."""

    def __init__(
        self,
        bus: Callable[[], Bus],
        scheme: TopicScheme,
        node: str,
        session: str,
        on_latched: Callable[[str], None],
    ) -> None:
        self._bus = bus
        self.scheme = scheme
        self.topic = latch_topic(scheme)
        self.node = node
        self.session = session
        self._on_latched = on_latched
        #: The latch as this node last heard it (None before any).
        self.heard: dict[str, Any] | None = None
        self.set_here = False

    def listen(self) -> None:
        self._bus().subscribe(self.topic, self._on_message)

    def latch(self, reason: str) -> None:
        """Set the latch (once per node; not again over one this node heard set)."""
        if self.set_here or (self.heard is not None and is_latched(self.heard)):
            return
        self.set_here = True
        mark = {
            "state": "killed",
            "reason": reason,
            "node": self.node,
            "session": self.session,
            "sent_ns": time.time_ns(),
            "id": secrets.token_hex(8),
        }
        self._bus().publish(self.topic, mark, qos=1, retain=True)

    def _on_message(self, topic: str, payload: dict[str, Any]) -> None:
        self.heard = payload
        if is_latched(payload) and payload.get("session") != self.session:
            self._on_latched(f"bus: latched kill switch, {describe_latch(payload)}")


async def clear_latch(bus: Bus, scheme: TopicScheme, by: str) -> dict[str, Any] | None:
    """Clear the latch of ``scheme``'s run on the started ``bus``: publish a retained
    reset and wait until it comes back (everything the broker held came before it).
    Returns the latch it replaced, or None when none was set. ``TimeoutError`` when the
    reset does not come back (a broker out of reach, or an ACL refusing the write)."""
    topic = latch_topic(scheme)
    nonce = secrets.token_hex(8)
    before: list[dict[str, Any]] = []
    echoed = asyncio.Event()

    def heard(_topic: str, payload: dict[str, Any]) -> None:
        if payload.get("nonce") == nonce:
            echoed.set()
        elif not echoed.is_set():
            before.append(payload)

    bus.subscribe(topic, heard)
    flush = getattr(bus, "flush", None)
    if flush is not None:
        with contextlib.suppress(TimeoutError):
            await flush(ECHO_TIMEOUT_S)
    reset = {"state": "reset", "by": by, "sent_ns": time.time_ns(), "nonce": nonce}
    bus.publish(topic, reset, qos=1, retain=True)
    await asyncio.wait_for(echoed.wait(), ECHO_TIMEOUT_S)
    latched = next((p for p in reversed(before) if is_latched(p)), None)
    if latched is not None:
        logger.info("kill switch of run {!r} cleared: {}", scheme.run, describe_latch(latched))
    return latched
