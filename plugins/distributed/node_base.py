"""What every node of a split run shares: roles, the node bus, peer sessions and the
lifecycle of a node (run.json, the kill switch, stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from loguru import logger
from pydantic import BaseModel

from quoteforge.assembly import (
    build_bus,
)
from quoteforge.bus import Bus
from quoteforge.clock import LiveClock, SimClock
from quoteforge.exchange import (
    makes_simulated_venue,
)
from quoteforge.manifest import (
    LoadedManifest,
    NodeSettings,
    PluginSpec,
)
from quoteforge.plugins.distributed.execution_instances import RoleClaim, claim_topic
from quoteforge.plugins.distributed.kill_latch import KillLatch, undelivered_kill_message
from quoteforge.plugins.distributed.session_rivals import SessionRivals
from quoteforge.plugins.distributed.topics import (
    TopicScheme,
)
from quoteforge.plugins.gc_policy import freeze_startup_objects
from quoteforge.registry import PluginRegistry
from quoteforge.runfiles import (
    KILL_FILE,
    finish_run_info,
    watch_run_files,
    write_run_info,
)

ROLES = ("marketdata", "strategy", "execution", "monitor", "all")
SPLIT_ROLES = ("marketdata", "strategy", "execution", "monitor")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class NodeError(RuntimeError):
    """A split run that cannot start as configured."""


class NodeRefusedError(NodeError):
    """A node that must not start now (another instance of its role runs): the process
    exits with ``EXIT_USAGE`` and this one-line message."""


class NodeRefusedRunningError(NodeRefusedError):
    """A node that started and was then refused by its peer (a strategy node whose
    intents the execution node refuses, bound to another strategy session): it stopped
    quoting and stopped; the process exits with ``EXIT_USAGE``, as at a refused start."""


def is_simulated(registry: PluginRegistry, spec: PluginSpec) -> bool:
    """Whether a venue's matching engine runs inside its adapter (the adapter contract's
    ``simulated``): its orders must reach the process that also makes its market data,
    so the execution node hosts it whole."""
    return makes_simulated_venue(registry.get("exchange", spec.type).factory)


def is_lockstep(loaded: LoadedManifest, registry: PluginRegistry) -> bool:
    """Whether a split run runs in virtual time, in lock step: a ``sim`` run whose
    venues are all simulated (hosted whole by the execution node, on its SimClock),
    unless ``nodes.clock`` is ``wall``."""
    m = loaded.manifest
    return (
        m.nodes.clock == "auto"
        and m.run.mode == "sim"
        and all(is_simulated(registry, s) for s in m.exchanges.values())
    )


def market_data_host(registry: PluginRegistry, spec: PluginSpec) -> str:
    return "execution" if is_simulated(registry, spec) else "marketdata"


def node_bus(
    loaded: LoadedManifest,
    registry: PluginRegistry,
    role: str,
    settings: NodeSettings,
    *,
    heartbeats: bool = True,
    user: str | None = None,
) -> Bus:
    """The bus of one node: heartbeats on ``heartbeat/<role>`` at the node interval, and
    a client id of its own (a manifest's fixed ``client_id`` gets ``-<role>`` appended).
    ``heartbeats=False`` for a node's second connection (``<role>`` names it then, and
    ``user`` is the node's role, whose broker user it logs in as)."""
    heartbeat_s = float(settings.heartbeat) if heartbeats else 0.0
    params = node_bus_params(loaded.params_of("bus"), role, heartbeat_s, user=user)
    return build_bus(loaded, registry, params)


def node_bus_params(
    params: BaseModel, role: str, heartbeat_s: float, *, user: str | None = None
) -> BaseModel:
    """A manifest's bus params as the node of ``role`` uses them (see ``node_bus``)."""
    fields = type(params).model_fields
    updates: dict[str, Any] = {}
    if "node" in fields:
        updates["node"] = role
    if "heartbeat_interval_s" in fields:
        updates["heartbeat_interval_s"] = heartbeat_s
    if "client_id" in fields and getattr(params, "client_id", None):
        updates["client_id"] = f"{getattr(params, 'client_id', '')}-{role}"
    # One manifest for every node, one broker user per role (the ACL's): "{role}" in the
    # user name is this node's role.
    username = getattr(params, "username", None)
    if isinstance(username, str) and "{role}" in username:
        updates["username"] = username.replace("{role}", user or role)
    return params.model_copy(update=updates)


# ---------------------------------------------------------------------------------------
# Peer sessions: notice reconnects so QoS 1 streams can be replayed
# ---------------------------------------------------------------------------------------


class Sessions:
    """Announces this node's connection count (retained ``state/node-<role>``) and calls
    ``on_peer_reconnect(role)`` when a peer that was connected before connects again.

    When this node's own connection comes back, every callback given to ``on_reconnect``
    runs: a broker that restarted without persistence lost the retained values the node
    owns (its claim, instruments, book snapshots), and a node started later reads them
    there. Republishing on the reconnect, not periodically, sends them the moment they
    can have been lost, and at no other time."""

    def __init__(
        self,
        bus: Bus,
        scheme: TopicScheme,
        role: str,
        on_peer_reconnect: Callable[[str], None],
        details: dict[str, Any] | None = None,
    ) -> None:
        self.bus = bus
        # Where the instance runs (pid, host, run folder), for a refusal to name it.
        self.details = dict(details or {})
        self.scheme = scheme
        self.role = role
        self.instance = secrets.token_hex(6)
        self._on_peer_reconnect = on_peer_reconnect
        self._peers: dict[str, tuple[str, int]] = {}
        self._announced = 0
        self._republish: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time this node's connection comes back."""
        self._republish.append(callback)

    def republish(self) -> None:
        """Publish this node's retained values again, as after a reconnect, within the
        watch's next turn (a rival that stopped may have replaced them)."""
        self._announced = -1

    def start(self) -> None:
        for peer in SPLIT_ROLES:
            if peer != self.role:
                self.bus.subscribe(self.scheme.node_session(peer), self._on_peer)
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _connects(self) -> int:
        stats = getattr(self.bus, "stats", None)
        return int(getattr(stats, "connects", 1))

    async def _watch(self) -> None:
        while True:
            connects = self._connects()
            if connects != self._announced and getattr(self.bus, "connected", True):
                again, self._announced = self._announced != 0, connects
                try:
                    for callback in self._republish if again else ():
                        callback()
                    self.bus.publish(
                        self.scheme.node_session(self.role),
                        {
                            **self.details,
                            "role": self.role,
                            "instance": self.instance,
                            "connects": connects,
                        },
                        qos=1,
                        retain=True,
                    )
                except RuntimeError:
                    return  # the bus closed under us: the node is stopping
            await asyncio.sleep(0.05)

    def _on_peer(self, topic: str, payload: dict[str, Any]) -> None:
        role = str(payload.get("role", ""))
        instance = str(payload.get("instance", ""))
        connects = int(payload.get("connects", 0))
        known = self._peers.get(role)
        self._peers[role] = (instance, connects)
        # A new instance is a new process: replaying to it would resend stale intents.
        if known is not None and known[0] == instance and connects > known[1]:
            self._on_peer_reconnect(role)


# ---------------------------------------------------------------------------------------
# Common node machinery
# ---------------------------------------------------------------------------------------


def instance_details(sessions: Sessions, bus: Bus) -> dict[str, Any]:
    """What names a node instance to an operator (in a claim, or a refusal)."""
    return {
        **sessions.details,
        "session": sessions.instance,
        "client_id": getattr(bus, "client_id", None),
    }


async def claim_role(
    loaded: LoadedManifest,
    registry: PluginRegistry,
    settings: NodeSettings,
    role: str,
    me: dict[str, Any],
    dead_after_s: float,
) -> RoleClaim:
    """Claim ``role`` for the run on a connection of its own (see ``RoleClaim``);
    ``NodeRefusedError`` beside a live instance of the role or a rival that claimed after
    this one. A silent instance is taken for dead after ``dead_after_s``."""
    probe = node_bus(loaded, registry, f"{role}-probe", settings, heartbeats=False, user=role)
    await probe.start()
    try:
        scheme = TopicScheme(loaded.manifest.run.name)
        claim = RoleClaim(
            probe,
            scheme,
            me,
            heartbeat_s=float(settings.heartbeat),
            dead_after_s=dead_after_s,
            role=role,
        )
        refusal = await claim.decide()
    finally:
        await probe.close()
    if refusal is not None:
        raise NodeRefusedError(refusal)
    return claim


def hold_for_kill(bus: Bus, settings: NodeSettings) -> None:
    """After the kill switch, a node's bus holds its close up to ``nodes.connect_timeout``
    while the broker is away with messages queued: the kill and its latch must reach
    the other nodes (``kill_delivered`` says afterwards whether they did)."""
    if hasattr(bus, "hold_close_s"):
        bus.hold_close_s = float(settings.connect_timeout)


def kill_delivered(bus: Bus, run: str, node: str) -> bool:
    """Whether a closed bus handed everything to the broker; an error naming what that
    means for the kill switch when not."""
    queued = int(getattr(bus, "undelivered", 0))
    if queued:
        waited = float(getattr(bus, "hold_close_s", 0.0))
        logger.error("{}", undelivered_kill_message(run, node, queued, waited))
    return not queued


class Node:
    """Lifecycle shared by the nodes that do not run the strategy engine."""

    role: ClassVar[str] = ""

    def __init__(
        self,
        loaded: LoadedManifest,
        registry: PluginRegistry,
        run_dir: Path,
        settings: NodeSettings,
        manifest_path: Path | None,
    ) -> None:
        self.loaded = loaded
        self.manifest = loaded.manifest
        self.registry = registry
        self.run_dir = run_dir
        self.settings = settings
        self.manifest_path = manifest_path
        self.scheme = TopicScheme(self.manifest.run.name)
        self.clock: LiveClock | SimClock = LiveClock()
        self.bus = node_bus(loaded, registry, self.role, settings)
        self.sessions = Sessions(
            self.bus,
            self.scheme,
            self.role,
            self.on_peer_reconnect,
            {"pid": os.getpid(), "host": socket.gethostname(), "run_dir": str(run_dir)},
        )
        # Heartbeats and the last will name the session, so peers tell whose they read.
        beat_fields = getattr(self.bus, "heartbeat_fields", None)
        if isinstance(beat_fields, dict):
            beat_fields["session"] = self.sessions.instance
        self.log = logger.bind(component=f"node:{self.role}", run=self.manifest.run.name)
        self.stop_reason = ""
        #: Why a peer refused this node after it started (it stopped: exit 2), or "".
        self.refused_by_peer = ""
        self.killed = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        #: What the node adds to its run.json when it stops.
        self.info: dict[str, Any] = {}
        self._execution_seen = False
        self.claim: RoleClaim | None = None
        self.latch = KillLatch(
            lambda: self.bus, self.scheme, self.role, self.sessions.instance, self.on_kill
        )

    # -- the role's claim --------------------------------------------------------------------
    async def claim_the_role(self, dead_after_s: float) -> None:
        """Claim this node's role for the run before its bus connects (``claim_role``:
        ``NodeRefusedError`` beside a live instance); its heartbeats carry the claim's
        ``claimed_ns`` then, by which two instances that both run tell which goes on."""
        self.claim = await claim_role(
            self.loaded, self.registry, self.settings, self.role,
            instance_details(self.sessions, self.bus), dead_after_s,
        )  # fmt: skip
        beat_fields = getattr(self.bus, "heartbeat_fields", None)
        if isinstance(beat_fields, dict):
            beat_fields["claimed_ns"] = self.claim.claimed_ns

    def watch_rivals(self, on_lost: Callable[[str, Mapping[str, Any]], None]) -> SessionRivals:
        """Notice at run time another live session of this node's role, one the claim at
        start did not stop (``SessionRivals``): the later claim calls ``on_lost`` and
        stops; the earlier one publishes its retained values again."""
        claimed_ns = self.claim.claimed_ns if self.claim is not None else time.time_ns()
        rivals = SessionRivals(
            self.manifest.run.name, self.role, self.sessions.instance, claimed_ns,
            float(self.settings.stale_after), on_lost, on_won=self.sessions.republish,
        )  # fmt: skip
        self.bus.subscribe(self.scheme.heartbeat(self.role), rivals.on_heartbeat)
        self.bus.subscribe(claim_topic(self.scheme, self.role), rivals.on_claim)
        self.bus.subscribe(self.scheme.node_session(self.role), rivals.on_announce)
        return rivals

    def announce_claim(self) -> None:
        """Mark the role "online" (the bus is up: the node's heartbeat speaks for it from
        now on), now and each time the bus reconnects (a broker may have lost it)."""
        topic, claim = claim_topic(self.scheme, self.role), self.claim

        def publish() -> None:
            mark = claim.mark("online") if claim is not None else {"state": "online"}
            if claim is None:  # no claim made (a test bypassing the start check)
                mark |= {"ts_ns": time.time_ns(), **instance_details(self.sessions, self.bus)}
            self.bus.publish(topic, mark, qos=1, retain=True)

        publish()
        self.sessions.on_reconnect(publish)

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> str:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(
            self.run_dir,
            {
                "run_id": self.run_dir.name,
                "name": self.manifest.run.name,
                "role": self.role,
                "mode": self.manifest.run.mode,
                "seed": self.manifest.run.seed,
                "manifest": str(self.manifest_path) if self.manifest_path else None,
                "overrides": list(self.loaded.overrides),
            },
            resume=False,
            manifest_text=self.loaded.text,
        )
        try:
            await self.preflight()
        except NodeRefusedError as exc:
            self.stop_reason = f"refused: {exc}"
            finish_run_info(self.run_dir, **self.info, stop_reason=self.stop_reason)
            raise
        await self.bus.start()
        self.bus.subscribe(self.scheme.kill(), self._on_kill_message)
        self.latch.listen()
        self.bus.subscribe(self.scheme.breaker(), self._on_breaker_message)
        try:
            await self.start()
            freeze_startup_objects()
            self.sessions.start()
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(watch_run_files(self.run_dir, self.kill)))
            await self.wait()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.sessions.stop()
            try:
                await self.stop()
            finally:
                await self.bus.close()
                if self.killed and not kill_delivered(self.bus, self.scheme.run, self.role):
                    self.info["kill_undelivered"] = True
                finish_run_info(self.run_dir, **self.info, stop_reason=self.stop_reason)
        if self.refused_by_peer:
            raise NodeRefusedRunningError(self.refused_by_peer)
        return self.stop_reason

    async def preflight(self) -> None:
        """Checks before the node's bus connects (and announces it); raise ``NodeRefusedError``
        to refuse to start."""

    async def start(self) -> None:
        """Connect what the node hosts and subscribe what it needs."""

    async def stop(self) -> None:
        """Release what the node hosts; the bus is still open."""

    async def wait(self) -> None:
        if self.role != "execution" and is_lockstep(self.loaded, self.registry):
            # run.duration is virtual time, which the execution node keeps: this node
            # lasts until the execution node has finished the run (or a stop).
            self.bus.subscribe(self.scheme.heartbeat("execution"), self._on_execution_heartbeat)
            await self._stop.wait()
            return
        duration = self.manifest.run.duration
        try:
            await asyncio.wait_for(self._stop.wait(), None if duration is None else float(duration))
        except TimeoutError:
            self.stop_reason = self.stop_reason or "duration reached"

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    async def wait_stopped(self) -> None:
        """Return once a stop is requested (a signal, the kill switch, the duration...)."""
        await self._stop.wait()

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self.log.info("stopping: {}", reason)
            self._stop.set()

    def kill(self, source: str) -> None:
        """The kill switch, pulled here: latch it and tell every node (the latch first,
        so that no node hears the kill before it and latches it again), then act on it
        locally."""
        if source == "signal SIGUSR1" and (self.run_dir / KILL_FILE).is_file():  # its --reason
            source = f"quoteforge kill: {(self.run_dir / KILL_FILE).read_text().strip()}"
        if not self.killed:
            self.latch.latch(source)
            self.bus.publish(self.scheme.kill(), {"reason": source, "node": self.role}, qos=1)
        self.on_kill(source)

    def on_kill(self, source: str) -> None:
        if self.killed:
            return
        self.killed = True
        # Latched at the broker for the nodes cut off from it now, and the exit held
        # until the broker has it (see hold_for_kill).
        self.latch.latch(source)
        hold_for_kill(self.bus, self.settings)
        self.log.warning("kill switch ({}): stopping", source)
        self.request_stop(f"kill switch: {source}")

    def on_breaker(self, payload: dict[str, Any]) -> None:
        if payload.get("node") == self.role:
            return
        self.log.warning(
            "breaker from {} node: {} [{}]",
            payload.get("node", "?"),
            payload.get("message", ""),
            payload.get("kind", "breaker"),
        )

    def on_peer_reconnect(self, role: str) -> None:
        """A peer reconnected; nodes with QoS 1 streams replay them here."""

    def _on_execution_heartbeat(self, topic: str, payload: dict[str, Any]) -> None:
        status = payload.get("status")
        if status == "online":
            self._execution_seen = True
        elif self._execution_seen and payload.get("reason") == "closed":
            self.request_stop("the execution node finished the lock-step run")

    # -- plumbing ------------------------------------------------------------------------------
    def _on_kill_message(self, topic: str, payload: dict[str, Any]) -> None:
        self.on_kill(f"bus: {payload.get('reason', 'kill')} (from {payload.get('node', '?')})")

    def _on_breaker_message(self, topic: str, payload: dict[str, Any]) -> None:
        self.on_breaker(payload)
