"""Split runs: the market-data, strategy, execution and monitor nodes of one manifest,
each in its own process, talking over a network bus (``quoteforge run M --node ROLE``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from loguru import logger
from pydantic import BaseModel

from quoteforge.book import BookState, L2Book
from quoteforge.bus import Bus
from quoteforge.clock import NS, LiveClock, SimClock, TimerHandle
from quoteforge.engine import (
    KILL_FILE,
    Run,
    _epoch_ns,
    freeze_startup_objects,
    run_manifest,
    stop_signals,
)
from quoteforge.exchange import (
    CancelAll,
    CancelOrder,
    ExchangeAdapter,
    OrderAction,
    PlaceOrder,
    ReplaceOrder,
    VenueContext,
)
from quoteforge.gate import OrderGate
from quoteforge.journal import Journal, JournalRecord
from quoteforge.manifest import (
    LoadedManifest,
    Manifest,
    NodeSettings,
    PluginSpec,
    load_manifest,
)
from quoteforge.model import (
    Fill,
    Offer,
    Order,
    OrderStatus,
    OrderUpdate,
    Side,
    TimeInForce,
)
from quoteforge.orders import OrderManager, fill_to_dict
from quoteforge.plugins.distributed.remote import (
    LOCKSTEP_RETRY_S,
    IntentError,
    LockstepClock,
    LockstepFollower,
    MarketDataPublisher,
    ReconcileResponder,
    RemoteVenue,
    ReplayBuffer,
    book_sync,
    clock_topics,
    fill_payload,
    instrument_from_dict,
    intent_from_payload,
    offer_to_wire,
    update_payload,
    update_to_wire,
)
from quoteforge.plugins.distributed.topics import (
    ParsedTopic,
    TopicError,
    TopicKind,
    TopicScheme,
    decode_symbol,
    parse_topic,
)
from quoteforge.portfolio import Portfolio
from quoteforge.registry import PluginRegistry
from quoteforge.risk import RiskChain, RiskRefusal, RiskView
from quoteforge.strategy import Market

__all__ = [
    "ROLES",
    "SIMULATED_VENUE_TYPES",
    "NodeError",
    "NodeSettings",
    "bus_security_problems",
    "is_lockstep",
    "load_node_manifest",
    "node_settings",
    "run_node",
]

ROLES = ("marketdata", "strategy", "execution", "monitor", "all")
SPLIT_ROLES = ("marketdata", "strategy", "execution", "monitor")

#: Venue types whose matching engine lives inside the adapter: orders must reach the
#: process that also makes their market data, so the execution node hosts them whole.
SIMULATED_VENUE_TYPES = frozenset({"sim", "replay"})

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class NodeError(RuntimeError):
    """A split run that cannot start as configured."""


def node_settings(loaded: LoadedManifest) -> NodeSettings:
    """The manifest's ``nodes:`` section (defaults when absent)."""
    return loaded.manifest.nodes


def load_node_manifest(
    source: str | Path, registry: PluginRegistry, *, overrides: list[str] | None = None
) -> tuple[LoadedManifest, NodeSettings]:
    """Load a manifest and its node settings."""
    loaded = load_manifest(source, registry, overrides=overrides)
    return loaded, loaded.manifest.nodes


def is_simulated(registry: PluginRegistry, spec: PluginSpec) -> bool:
    """Whether a venue's matching engine runs inside its adapter (see SIMULATED_VENUE_TYPES)."""
    if spec.type in SIMULATED_VENUE_TYPES:
        return True
    factory = registry.get("exchange", spec.type).factory
    return bool(getattr(factory, "simulated_venue", False))


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


def _market_data_host(registry: PluginRegistry, spec: PluginSpec) -> str:
    return "execution" if is_simulated(registry, spec) else "marketdata"


def _symbols_by_venue(manifest: Manifest) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {name: [] for name in manifest.exchanges}
    for spec in manifest.strategies.values():
        if "*" not in spec.symbols:
            out[spec.exchange].extend(spec.symbols)
    return out


def _node_bus(
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
    m = loaded.manifest
    params = loaded.params_of("bus")
    fields = type(params).model_fields
    updates: dict[str, Any] = {}
    if "node" in fields:
        updates["node"] = role
    if "heartbeat_interval_s" in fields:
        updates["heartbeat_interval_s"] = float(settings.heartbeat) if heartbeats else 0.0
    if "client_id" in fields and getattr(params, "client_id", None):
        updates["client_id"] = f"{getattr(params, 'client_id', '')}-{role}"
    # One manifest for every node, one broker user per role (the ACL's): "{role}" in the
    # user name is this node's role.
    username = getattr(params, "username", None)
    if isinstance(username, str) and "{role}" in username:
        updates["username"] = username.replace("{role}", user or role)
    factory = registry.get("bus", m.bus.type).factory
    bus: Bus = factory(params.model_copy(update=updates), m.run.name)
    return bus


def _check_split(loaded: LoadedManifest, role: str) -> str | None:
    m = loaded.manifest
    if role not in ROLES:
        return f"unknown node role {role!r}: expected one of {', '.join(ROLES)}"
    if role == "all":
        return None
    if m.bus.type == "inprocess":
        return (
            f"--node {role} needs a network bus, but the manifest's bus is 'inprocess', "
            "which reaches only its own process: set `bus: {type: mqtt, params: {host: ..., "
            "port: ...}}` in the manifest, or run every role in one process with --node all"
        )
    if m.run.mode == "backtest":
        return (
            f"--node {role}: a backtest replays recorded data in virtual time and runs in "
            "one process; use --node all"
        )
    params = loaded.params_of("bus")
    for name, variable in (("signing_key", "QUOTEFORGE_BUS_KEY"), ("password", "QF_MQTT_PASSWORD")):
        secret = getattr(params, name, None)
        if secret is not None and secret.get_secret_value() not in loaded.secrets:
            return (
                f"bus.params.{name} is written in the manifest: a secret must come from the "
                f"environment; write {name}: ${{{variable}}} and export {variable} on every "
                "node, never the value itself"
            )
    problems = bus_security_problems(loaded)
    if problems and not getattr(params, "insecure", False):
        return (
            f"--node {role} refuses to trade over an unprotected bus: "
            + "; ".join(problems)
            + ". See docs/security.md; for a throwaway test broker only, set "
            "bus.params.insecure: true"
        )
    return None


def bus_security_problems(loaded: LoadedManifest) -> list[str]:
    """Why the manifest's bus is unfit for a split run: anonymous, unencrypted to another
    machine, or unsigned (the backend's ``security_problems()``). A backend that cannot
    say counts as unprotected."""
    m = loaded.manifest
    params = loaded.params_of("bus")
    check = getattr(params, "security_problems", None)
    if check is None:
        return [f"bus {m.bus.type!r} does not report how it authenticates nodes and messages"]
    return list(check())


async def run_node(
    loaded: LoadedManifest,
    registry: PluginRegistry,
    role: str,
    run_dir: Path,
    manifest_path: Path | None = None,
    *,
    settings: NodeSettings | None = None,
    install_signals: bool = True,
) -> int:
    """Run one node of a manifest until its duration passes, a stop signal or the kill
    switch; returns a process exit code (0 ok, 1 failed, 2 refused configuration).

    ``role`` is marketdata, strategy, execution, monitor, or ``all`` for the whole run in
    this process (the in-process engine). Every other role needs a network bus.
    """
    problem = _check_split(loaded, role)
    if problem is not None:
        logger.error("{}", problem)
        return EXIT_USAGE
    if role == "all":
        await run_manifest(
            loaded,
            registry,
            run_dir=run_dir,
            manifest_path=manifest_path,
            install_signals=install_signals,
        )
        return EXIT_OK
    for problem in bus_security_problems(loaded):
        # Only reached with insecure: true (_check_split refuses otherwise).
        logger.warning("INSECURE split run, bus.params.insecure is set: {}", problem)
    settings = settings if settings is not None else node_settings(loaded)
    node: _Node | _StrategyNode
    if role == "strategy":
        node = _StrategyNode(loaded, registry, run_dir, settings, manifest_path)
    else:
        cls = {"marketdata": _MarketDataNode, "execution": _ExecutionNode, "monitor": _MonitorNode}
        node = cls[role](loaded, registry, run_dir, settings, manifest_path)
    with stop_signals(node.request_stop, node.kill, enabled=install_signals):
        try:
            reason = await node.run()
        except Exception as exc:
            logger.opt(exception=exc).error("{} node failed: {}", role, exc)
            return EXIT_ERROR
    logger.info("{} node stopped: {}", role, reason)
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# Peer sessions: notice reconnects so QoS 1 streams can be replayed
# ---------------------------------------------------------------------------------------


class _Sessions:
    """Announces this node's connection count (retained ``state/node-<role>``) and calls
    ``on_peer_reconnect(role)`` when a peer that was connected before connects again."""

    def __init__(
        self,
        bus: Bus,
        scheme: TopicScheme,
        role: str,
        on_peer_reconnect: Callable[[str], None],
    ) -> None:
        self.bus = bus
        self.scheme = scheme
        self.role = role
        self.instance = secrets.token_hex(6)
        self._on_peer_reconnect = on_peer_reconnect
        self._peers: dict[str, tuple[str, int]] = {}
        self._announced = 0
        self._task: asyncio.Task[None] | None = None

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
                self._announced = connects
                try:
                    self.bus.publish(
                        self.scheme.node_session(self.role),
                        {"role": self.role, "instance": self.instance, "connects": connects},
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


class _Node:
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
        self.bus = _node_bus(loaded, registry, self.role, settings)
        self.sessions = _Sessions(self.bus, self.scheme, self.role, self.on_peer_reconnect)
        self.log = logger.bind(component=f"node:{self.role}", run=self.manifest.run.name)
        self.stop_reason = ""
        self.killed = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.info: dict[str, Any] = {}
        self._execution_seen = False

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> str:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_info(started=True)
        await self.bus.start()
        self.bus.subscribe(self.scheme.kill(), self._on_kill_message)
        self.bus.subscribe(self.scheme.breaker(), self._on_breaker_message)
        try:
            await self.start()
            freeze_startup_objects()
            self.sessions.start()
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(self._watch_kill_file()))
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
                self._write_info(started=False)
        return self.stop_reason

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

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self.log.info("stopping: {}", reason)
            self._stop.set()

    def kill(self, source: str) -> None:
        """The kill switch, pulled here: tell every node, then act on it locally."""
        if not self.killed:
            self.bus.publish(self.scheme.kill(), {"reason": source, "node": self.role}, qos=1)
        self.on_kill(source)

    def on_kill(self, source: str) -> None:
        if self.killed:
            return
        self.killed = True
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

    async def _watch_kill_file(self) -> None:
        kill_file = self.run_dir / KILL_FILE
        while True:
            await asyncio.sleep(0.25)
            if kill_file.exists():
                reason = kill_file.read_text(encoding="utf-8").strip() or "kill file"
                self.kill(f"file: {reason}")
                return

    def _write_info(self, *, started: bool) -> None:
        path = self.run_dir / "run.json"
        if started:
            self.info = {
                "run_id": self.run_dir.name,
                "name": self.manifest.run.name,
                "role": self.role,
                "mode": self.manifest.run.mode,
                "seed": self.manifest.run.seed,
                "manifest": str(self.manifest_path) if self.manifest_path else None,
                "started_at": datetime.now(UTC).isoformat(),
                "pid": os.getpid(),
            }
            (self.run_dir / "manifest.yaml").write_text(self.loaded.text, encoding="utf-8")
        else:
            self.info["finished_at"] = datetime.now(UTC).isoformat()
            self.info["stop_reason"] = self.stop_reason
        path.write_text(json.dumps(self.info, indent=2), encoding="utf-8")


def _venue_context(node: _Node, name: str, symbols: list[str], role: str) -> VenueContext:
    m = node.manifest
    return VenueContext(
        name=name,
        clock=node.clock,
        seed=m.run.seed,
        mode=m.run.mode,
        symbols=symbols,
        extra={"run_dir": node.run_dir, "duration": m.run.duration, "role": role},
    )


class _PublishingSink:
    """The sink of a venue hosted by the market-data node: market data goes on the bus;
    an adapter in the market-data role has no orders, so order events are ignored."""

    def __init__(self, publisher: MarketDataPublisher) -> None:
        self.publisher = publisher

    def on_book(self, book: L2Book) -> None:
        self.publisher.on_book(book)

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        self.publisher.on_book_state(book, old, new, reason)

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        self.publisher.on_trade(venue, symbol, price_ticks, qty_lots, aggressor, ts_ns)

    def on_order_update(self, update: OrderUpdate) -> None:
        return None

    def on_fill(self, fill: Fill) -> None:
        return None

    def on_offer(self, offer: Offer) -> None:
        return None


# ---------------------------------------------------------------------------------------
# Market-data node
# ---------------------------------------------------------------------------------------


class _MarketDataNode(_Node):
    """Hosts the market-data side of every live venue and publishes its books and trades.

    Simulated venues are market data and matching engine at once: the execution node
    hosts and publishes them.
    """

    role = "marketdata"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.publisher = MarketDataPublisher(
            self.bus,
            self.scheme,
            depth=self.settings.book_depth,
            snapshot_interval_s=float(self.settings.snapshot_interval),
        )
        self.venues: dict[str, ExchangeAdapter] = {}

    async def start(self) -> None:
        m = self.manifest
        sink = _PublishingSink(self.publisher)
        symbols = _symbols_by_venue(m)
        for name, spec in m.exchanges.items():
            if is_simulated(self.registry, spec):
                continue
            ctx = _venue_context(self, name, symbols[name], "marketdata")
            params = self.loaded.params_of("exchanges", name)
            adapter = self.registry.get("exchange", spec.type).factory(params, ctx)
            await adapter.connect(sink)
            self.venues[name] = adapter
            self.publisher.publish_instruments(name, adapter.instruments)
            for book in adapter.books.values():
                self.publisher.on_book_state(book, book.state.value, book.state.value, "start")
        self.publisher.start()
        if not self.venues:
            self.log.info(
                "every venue of this manifest is simulated: the execution node hosts and "
                "publishes them; this node only keeps its heartbeat"
            )
        self.info["venues"] = sorted(self.venues)

    async def stop(self) -> None:
        await self.publisher.stop()
        for venue in self.venues.values():
            with contextlib.suppress(Exception):
                await venue.close()
        self.info["books_published"] = self.publisher.books_published


# ---------------------------------------------------------------------------------------
# Execution node
# ---------------------------------------------------------------------------------------


class _RecordingJournal(Journal):
    """Passes records to the real journal and remembers their ids, so a published
    order report or fill carries the id of the journal event it belongs to."""

    def __init__(self, inner: Journal) -> None:
        self.inner = inner
        self.appended: list[JournalRecord] = []

    async def open(self) -> None:
        await self.inner.open()

    def append(self, record: JournalRecord) -> None:
        self.appended.append(record)
        self.inner.append(record)

    async def flush(self) -> None:
        await self.inner.flush()

    async def close(self) -> None:
        await self.inner.close()

    def read(self, kinds: tuple[str, ...] | None = None) -> Any:
        return self.inner.read(kinds)

    def take(self) -> list[JournalRecord]:
        taken, self.appended = self.appended, []
        return taken


@dataclass
class _StrategyWatch:
    """What the execution node knows about the strategy node's liveness."""

    seen: bool = False
    online: bool = False
    departed: bool = False  # said goodbye: no breaker for its silence
    last_online: float = 0.0
    tripped: bool = False
    blocked: dict[str, str] = field(default_factory=dict)  # strategy -> why it may not place


class _LockstepDriver:
    """The execution node's side of a lock-step simulation (see ``LockstepFollower``).

    The node's ``SimClock`` runs the simulated venues one event at a time. Whatever an
    event hands to the node's sink for the strategy engine (books, book states, trades,
    order reports, fills, offers) is collected, each preceded by the changes of any book
    since it was last sent, and after the event the collected step goes to the strategy
    node; the clock does not move until the answer arrived and was applied: timers the
    engine set become placeholders in this clock's queue (their place in the queue is
    the one the engine's own timers have in a one-process run), cancelled timers are
    removed, and intents go to the venues as they would from the engine. An event that
    hands nothing over needs no round trip. The loop mirrors ``Run._drive_sim`` and
    ``Run._cancel_everything``, so the same manifest and seed give the same fills.
    """

    def __init__(self, node: _ExecutionNode, clock: SimClock, bus: Bus) -> None:
        self.node = node
        self.clock = clock
        self.bus = bus
        self.step_topic, self.ack_topic = clock_topics(node.scheme)
        self.instance = secrets.token_hex(6)
        self.outbox: list[list[Any]] = []
        self.step = 0
        self.steps_sent = 0
        self.strategy = ""  # instance of the strategy node taking part
        self.hello = asyncio.Event()
        self.detached = ""  # why the strategy node no longer takes part
        self.working = 0  # the strategy engine's working orders, as of its last answer
        self._answer: asyncio.Future[dict[str, Any] | None] | None = None
        self._pending: dict[str, Any] | None = None
        self._done: dict[str, Any] | None = None
        self._attempt = itertools.count(1)
        self._timers: dict[int, TimerHandle] = {}
        self._books: dict[str, L2Book] = {}
        self._sent: dict[str, tuple[Any, tuple[dict[int, int], dict[int, int]]]] = {}

    async def start(self) -> None:
        await self.bus.start()
        self.bus.subscribe(self.ack_topic, self._on_answer)

    async def close(self) -> None:
        await self.bus.close()

    # -- what the venues hand over ------------------------------------------------------------
    def track(self, book: L2Book) -> None:
        self._books.setdefault(book.key, book)

    def deliver(self, code: str, venue: str, data: Any) -> None:
        if self.detached:
            return
        self._sync_books()
        self.outbox.append([code, venue, self.clock.now_ns(), data])

    def _sync_books(self) -> None:
        for key, book in self._books.items():
            mark = (
                book.state,
                book.version,
                book.top_version,
                book.update_count,
                book.ts_ns,
            )
            sent = self._sent.get(key)
            if sent is not None and sent[0] == mark:
                continue
            data, levels = book_sync(book, sent[1] if sent is not None else None)
            self._sent[key] = (mark, levels)
            self.outbox.append(["y", book.venue, self.clock.now_ns(), data])

    def _fire(self, timer_id: int) -> None:
        self._timers.pop(timer_id, None)
        self.deliver("t", "", timer_id)

    # -- the exchange with the strategy node -----------------------------------------------------
    def _on_answer(self, topic: str, payload: dict[str, Any]) -> None:
        if "hello" in payload:
            instance = str(payload["hello"])
            if not self.strategy:
                self.strategy = instance
                self.hello.set()
            elif instance == self.strategy and self._pending is not None:
                self._publish(self._pending)
            elif instance != self.strategy:
                self.node.log.error(
                    "lock step: a second strategy node ({}) said hello; this run follows {}",
                    instance,
                    self.strategy,
                )
            return
        if payload.get("src") != self.strategy:
            return
        if "stop" in payload:
            self.node.request_stop(f"strategy node: {payload['stop']}")
            return
        answer = self._answer
        if answer is not None and not answer.done() and int(payload.get("k", -1)) == self.step:
            answer.set_result(payload)

    def _publish(self, payload: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):
            self.bus.publish(
                self.step_topic,
                payload,
                qos=0,
                msg_id=f"clock:{self.instance}:{payload['k']}:{next(self._attempt)}",
            )

    async def exchange(self, *, end: str | None = None, done: bool = False) -> None:
        """Send what was collected as the next step and apply the answer."""
        if self.detached:
            self.outbox.clear()
            return
        self.step += 1
        payload: dict[str, Any] = {"k": self.step, "t": self.clock.now_ns(), "ev": self.outbox}
        if end is not None:
            payload["end"] = end
        if done:
            payload["done"] = True
        self.outbox = []
        self.steps_sent += 1
        if done:
            self._done = payload
            self._publish(payload)
            return
        answer = self._answer = asyncio.get_running_loop().create_future()
        self._pending = payload
        self._publish(payload)
        while True:
            try:
                result = await asyncio.wait_for(asyncio.shield(answer), LOCKSTEP_RETRY_S)
                break
            except TimeoutError:
                if answer.done():
                    result = answer.result()
                    break
                self._publish(payload)  # lost at a restarting broker, or just slow
        self._pending = None
        self._answer = None
        if result is not None:
            self._apply(result)

    def detach(self, reason: str) -> None:
        """The strategy node is gone: stop waiting for it; collect nothing more."""
        if self.detached:
            return
        self.detached = reason
        self.outbox.clear()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(None)

    def _apply(self, answer: dict[str, Any]) -> None:
        self.working = int(answer.get("working", 0))
        clock = self.clock
        for op in answer.get("ops", ()):
            kind = op[0]
            if kind == "timer":
                self._timers[op[1]] = clock.call_at(op[2], self._fire, op[1])
            elif kind == "cancel":
                handle = self._timers.pop(op[1], None)
                if handle is not None:
                    handle.cancel()
            elif kind == "intent":
                self.node.apply_intent(op[1], "lock step")

    async def _flush(self) -> None:
        while self.outbox and not self.detached:
            await self.exchange()

    # -- the run ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Drive the run from the first step to the strategy engine's last order."""
        node = self.node
        node.log.info("lock step: waiting for the strategy node")
        stop = asyncio.ensure_future(node._stop.wait())
        hello = asyncio.ensure_future(self.hello.wait())
        await asyncio.wait({stop, hello}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        hello.cancel()
        if not self.hello.is_set():
            self.detach("stopped before the strategy node came")
            return
        node.log.info("lock step: strategy node {} joined; virtual time starts", self.strategy)
        await self.exchange()  # the first step: the books as the venues connected
        clock = self.clock
        duration = node.manifest.run.duration
        far = clock.now_ns() + int(float(duration) * NS) if duration is not None else 2**62
        advance = duration is not None
        ran_total = 0
        # As Run._drive_sim: slices of 2000 events, the end checked after each slice.
        while not node._stop.is_set() and not self.detached:
            ran = clock.run_until(far, max_events=1, advance=advance)
            if self.outbox:
                await self._flush()
            ran_total += ran
            if (not ran or ran_total % 2000 == 0) and (
                clock.now_ns() >= far or clock.next_time() is None
            ):
                break
        if self.detached:
            return
        reason = node.stop_reason or "duration reached"
        # As Run._cancel_everything: the engine pulls its quotes, then the clock runs in
        # 10 ms steps until none is working or the cancel timeout passed.
        await self.exchange(end=reason)
        deadline = clock.now_ns() + int(float(node.manifest.run.cancel_timeout) * NS)
        while self.working and clock.now_ns() < deadline and not self.detached:
            if clock.next_time() is None:
                break
            await self._run_until(min(deadline, clock.now_ns() + 10_000_000))
        await self.exchange(done=True)
        self.detach("run finished")

    def repeat_done(self) -> None:
        """Send the last step (the one that says the run is done) again."""
        if self._done is not None:
            self._publish(self._done)

    async def _run_until(self, end_ns: int) -> None:
        clock = self.clock
        while clock.run_until(end_ns, max_events=1):
            if self.outbox:
                await self._flush()


class _ExecutionNode(_Node):
    """Hosts the trading side of every venue (simulated venues whole): takes intents,
    checks new orders against the risk chain with positions from its own fills, sends
    them to the venue, journals every event (the record of truth) and publishes every
    order report and fill."""

    role = "execution"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lockstep: _LockstepDriver | None = None
        if is_lockstep(self.loaded, self.registry):
            # Every venue is simulated: they run in virtual time, driven from here.
            sim_clock = SimClock(_epoch_ns())
            self.clock = sim_clock
            # The steps have a connection of their own (see remote.clock_topics).
            clock_bus = _node_bus(
                self.loaded,
                self.registry,
                f"{self.role}-clock",
                self.settings,
                heartbeats=False,
                user=self.role,
            )
            self.lockstep = _LockstepDriver(self, sim_clock, clock_bus)
        self._early_cancels: set[str] = set()
        self.replay = ReplayBuffer(lambda: self.bus, window_s=float(self.settings.replay_window))
        self.watch = _StrategyWatch()
        self.stopping = False
        self.fills = 0
        self.refusals = 0
        self._last_refusal = ""
        self.strategies = set(self.manifest.strategies)
        m = self.manifest
        inner = self.registry.get("journal", m.journal.type).factory(
            self.loaded.params_of("journal"), self.run_dir
        )
        self.journal = _RecordingJournal(inner)
        self.journal_open = False
        prefix = "".join(c for c in m.run.name if c.isalnum())[:6] or "qf"
        # This manager never makes client ids: it adopts the strategy node's orders.
        self.orders = OrderManager(self.journal, self.clock, id_prefix=prefix)
        self.publisher = MarketDataPublisher(
            self.bus,
            self.scheme,
            depth=self.settings.book_depth,
            snapshot_interval_s=float(self.settings.snapshot_interval),
        )
        self.venues: dict[str, ExchangeAdapter] = {}
        # The strategy node's reconciliation questions, answered by the real adapters.
        self.reconciler = ReconcileResponder(lambda: self.bus, self.scheme, self.venues)
        self.md_venues: set[str] = set()
        self.portfolio = Portfolio({})
        self.markets: dict[str, Market] = {}

    # -- start ------------------------------------------------------------------------------
    async def start(self) -> None:
        m = self.manifest
        reg = self.registry
        self.run_dir.mkdir(parents=True, exist_ok=True)
        await self.journal.open()
        self.journal_open = True
        if self.lockstep is not None:
            await self.lockstep.start()
        symbols = _symbols_by_venue(m)
        for name, spec in m.exchanges.items():
            whole = is_simulated(reg, spec)
            ctx = _venue_context(self, name, symbols[name], "all" if whole else "execution")
            params = self.loaded.params_of("exchanges", name)
            self.venues[name] = reg.get("exchange", spec.type).factory(params, ctx)
            if whole:
                self.md_venues.add(name)
        for venue in self.venues.values():
            await venue.connect(self)
        # Before the instruments go out: a strategy node starts asking once it has them.
        self.reconciler.start()
        instruments = {}
        for name, venue in self.venues.items():
            for symbol, inst in venue.instruments.items():
                instruments[f"{name}:{symbol}"] = inst
        self.portfolio = Portfolio(instruments)
        for venue in self.venues.values():
            for symbol, book in venue.books.items():
                inst = venue.instruments[symbol]
                self.markets[inst.key] = Market(inst, book, _position_of(self.portfolio, inst.key))
        checks = [
            reg.get("risk", spec.type).factory(name, self.loaded.params_of("risk", name))
            for name, spec in m.risk.items()
        ]
        self.risk = RiskChain(checks, self._on_refusal)
        self.view = RiskView(
            position_lots=self.portfolio.position_lots,
            open_lots=lambda key, sign: self.orders.open_lots(key, Side(sign)),
            open_order_count=self.orders.open_count,
            now_ns=self.clock.now_ns,
            markets=self.markets,
        )
        # Intents were planned by the strategy node's policy: no policy stage here.
        self.gate = OrderGate(
            risk=self.risk,
            risk_view=self.view,
            breakers=None,
            orders=self.orders,
            policy=None,
            position_lots=self.portfolio.position_lots,
            now_ns=self.clock.now_ns,
            is_halted=lambda s: bool(self.watch.blocked.get(s) or self.watch.blocked.get("*")),
        )
        for name, venue in self.venues.items():
            self.publisher.publish_instruments(name, venue.instruments)
            if name in self.md_venues:
                for book in venue.books.values():
                    self.publisher.on_book_state(book, book.state.value, book.state.value, "start")
                    if self.lockstep is not None:
                        self.lockstep.track(book)
        self.publisher.start()
        self.journal.append(
            JournalRecord(
                f"run-start-{self.run_dir.name}",
                "run",
                self.clock.now_ns(),
                "",
                {"event": "start", "role": self.role, "mode": m.run.mode, "seed": m.run.seed},
            )
        )
        self.journal.take()
        self.bus.subscribe(self.scheme.all_of(TopicKind.INTENT), self._on_intent)
        self.bus.subscribe(self.scheme.heartbeat("strategy"), self._on_strategy_heartbeat)
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch_strategy()))
        self.log.info(
            "hosting {} venue(s) ({} with their market data): {}{}",
            len(self.venues),
            len(self.md_venues),
            ", ".join(sorted(self.venues)),
            "; virtual time in lock step with the strategy node" if self.lockstep else "",
        )

    # -- venue sink --------------------------------------------------------------------------
    def on_book(self, book: L2Book) -> None:
        if self.lockstep is not None:
            # The strategy node gets every update in its step; observers get the
            # periodic snapshots.
            self.lockstep.track(book)
            self.lockstep.deliver("b", book.venue, book.symbol)
        elif book.venue in self.md_venues:
            self.publisher.on_book(book)

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        if self.lockstep is not None:
            self.lockstep.track(book)
            self.lockstep.deliver("s", book.venue, [book.symbol, old, new, reason])
        if book.venue in self.md_venues:
            self.publisher.on_book_state(book, old, new, reason)

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        if self.lockstep is not None:
            self.lockstep.deliver(
                "x", venue, [symbol, price_ticks, qty_lots, int(aggressor), ts_ns]
            )
        if venue in self.md_venues:
            self.publisher.on_trade(venue, symbol, price_ticks, qty_lots, aggressor, ts_ns)

    def on_offer(self, offer: Offer) -> None:
        if self.lockstep is not None:
            self.lockstep.deliver("w", offer.venue, offer_to_wire(offer))

    def on_order_update(self, update: OrderUpdate) -> None:
        if self.lockstep is not None:
            self.lockstep.deliver("o", update.venue, update_to_wire(update))
        order = self.orders.apply_update(update)
        records = self.journal.take()
        event_id = next(
            (
                r.event_id
                for r in reversed(records)
                if (r.payload.get("order") or {}).get("client_id") == update.client_id
            ),
            None,
        )
        if event_id is None:
            # Not a state change here (a FILLED report after the fill that completed the
            # order, or an order this node does not know): still every node's business.
            event_id = (
                f"{update.venue}:{update.client_id}:report:{update.status.value}:"
                f"{update.filled_lots}:{update.ts_ns}"
            )
            order = self.orders.get(update.client_id)
        self.replay.publish(
            self.scheme.order(update.venue), update_payload(update, order), event_id
        )

    def on_fill(self, fill: Fill) -> None:
        if self.lockstep is not None:
            self.lockstep.deliver("f", fill.venue, fill_payload(fill))
        if self.orders.has_fill(fill.venue, fill.fill_id):
            return
        try:
            self.orders.apply_fill(fill)
        except ValueError as exc:
            self.journal.take()
            self.log.error("fill refused by the order manager: {}", exc)
            return
        self.journal.take()
        self.portfolio.apply_fill(fill)
        self.fills += 1
        self.replay.publish(
            self.scheme.fill(fill.venue), fill_payload(fill), f"{fill.venue}:fill:{fill.fill_id}"
        )

    # -- intents -----------------------------------------------------------------------------
    def _on_intent(self, topic: str, payload: dict[str, Any]) -> None:
        if self.lockstep is not None:
            self.log.error("lock step: intent on {} ignored (intents come with the steps)", topic)
            return
        self.apply_intent(payload, topic)

    def apply_intent(self, payload: dict[str, Any], source: str) -> None:
        """Check, register and forward one intent of the strategy node."""
        try:
            strategy, action = intent_from_payload(payload)
        except IntentError as exc:
            self.log.error("{} from {}", exc, source)
            return
        if isinstance(action, PlaceOrder):
            self._place(strategy, action.order)
        elif isinstance(action, CancelOrder):
            self._cancel([action.client_id], action.venue, action.symbol)
        elif isinstance(action, ReplaceOrder):
            self._replace(strategy, action)
        else:
            self._cancel_all(strategy, action)

    def _cancelled_before_placed(self, order: Order) -> bool:
        """A cancel for this order overtook its place/replace intent (a replay after a
        broker restart can reorder them): adopt it and report it cancelled unsent."""
        if order.client_id not in self._early_cancels:
            return False
        self._early_cancels.discard(order.client_id)
        if self._adopt(order):
            self.on_order_update(
                OrderUpdate(
                    order.venue,
                    order.client_id,
                    OrderStatus.CANCELLED,
                    self.clock.now_ns(),
                    reason="cancelled before it reached the venue",
                    symbol=order.symbol,
                )
            )
        return True

    def _place(self, strategy: str, order: Order) -> None:
        if self.orders.get(order.client_id) is not None:
            return  # the same intent again (e.g. replayed after a reconnect)
        order.strategy = order.strategy or strategy
        if self._cancelled_before_placed(order):
            return
        refusal = self._gate(order)
        if not self._adopt(order):
            return
        if refusal is not None:
            self._reject(order, refusal)
            return
        self.venues[order.venue].submit([PlaceOrder(order)])

    def _replace(self, strategy: str, action: ReplaceOrder) -> None:
        new = action.new
        if self.orders.get(new.client_id) is not None:
            return
        new.strategy = new.strategy or strategy
        if self._cancelled_before_placed(new):
            self._cancel([action.old_client_id], new.venue, new.symbol)
            return
        refusal = self._gate(new)
        old = self.orders.get(action.old_client_id)
        if refusal is not None:
            if self._adopt(new):
                self._reject(new, refusal)
            self._cancel([action.old_client_id], new.venue, new.symbol)
            return
        if old is None or old.status.is_terminal:
            # Unknown here (or already done): the venue decides about the old order.
            if not self._adopt(new):
                return
        else:
            try:
                self.orders.request_replace(action.old_client_id, new)
            except ValueError:
                if not self._adopt(new):
                    return
        self.journal.take()
        self.venues[new.venue].submit([ReplaceOrder(action.old_client_id, new)])

    def _adopt(self, order: Order) -> bool:
        """Register (and journal) an order the strategy node made; False if invalid."""
        try:
            self.orders.adopt(order)
        except ValueError as exc:
            self.log.error("intent for order {} refused: {}", order.client_id, exc)
            return False
        finally:
            self.journal.take()
        return True

    def _cancel(self, client_ids: list[str], venue: str, symbol: str) -> None:
        actions: list[OrderAction] = []
        for client_id in client_ids:
            known = self.orders.get(client_id)
            if known is not None and known.status.is_terminal:
                continue
            if known is None:
                # Not placed here (yet): if its place intent arrives later, it is not sent.
                self._early_cancels.add(client_id)
            if known is None or self.orders.request_cancel(client_id) is not None:
                actions.append(CancelOrder(client_id, venue, symbol))
        self.journal.take()
        adapter = self.venues.get(venue)
        if actions and adapter is not None:
            adapter.submit(actions)

    def _cancel_all(self, strategy: str, action: CancelAll) -> None:
        self._cancel_orders(
            [
                o
                for o in self.orders.all_working()
                if o.venue == action.venue
                and o.strategy == strategy
                and action.symbol in (None, o.symbol)
            ]
        )

    def _cancel_orders(self, orders: list[Order]) -> int:
        by_market: dict[tuple[str, str], list[str]] = {}
        for order in orders:
            by_market.setdefault((order.venue, order.symbol), []).append(order.client_id)
        for (venue, symbol), ids in by_market.items():
            self._cancel(ids, venue, symbol)
        return len(orders)

    def _gate(self, order: Order) -> str | None:
        """Why a new order must not reach the venue, or None: the kernel's order gate
        (kill and stop, halted strategies, risk, the instrument's rules) with this
        node's positions and working orders."""
        if order.venue not in self.venues:
            return f"venue {order.venue!r} is not hosted by this execution node"
        market = self.markets.get(order.market)
        if market is None:
            return f"market {order.market} is not hosted by this execution node"
        if self.stopping:
            self.gate.close("the execution node is stopping")
        price = order.price_ticks
        if price is None:
            price = (
                market.book.best_ask_ticks()
                if order.side is Side.BUY
                else market.book.best_bid_ticks()
            )
            if price is None:
                return "a market order needs a book to be checked against"
        refused = self.gate.check(
            market,
            order.strategy,
            order.side,
            price,
            order.qty_lots,
            level=order.level,
            post_only=order.tif is TimeInForce.POST_ONLY,
        )
        if not refused:
            return None
        blocked = self.watch.blocked.get(order.strategy) or self.watch.blocked.get("*")
        if blocked:
            return blocked
        if refused.startswith("refused by risk"):
            refused = self._last_refusal  # the chain reported the check and its numbers
        return f"refused at the execution node: {refused}"

    def _reject(self, order: Order, reason: str) -> None:
        self.on_order_update(
            OrderUpdate(
                order.venue,
                order.client_id,
                OrderStatus.REJECTED,
                self.clock.now_ns(),
                reason=reason,
                symbol=order.symbol,
            )
        )

    def _on_refusal(self, refusal: RiskRefusal) -> None:
        self.refusals += 1
        self._last_refusal = str(refusal)
        if self.refusals <= 20 or self.refusals % 1000 == 0:
            self.log.info("risk: {} (refusal #{})", refusal, self.refusals)

    # -- strategy liveness ---------------------------------------------------------------------
    def _on_strategy_heartbeat(self, topic: str, payload: dict[str, Any]) -> None:
        w = self.watch
        if payload.get("status") == "online":
            w.seen = True
            w.online = True
            w.departed = False
            w.last_online = time.monotonic()
            if w.tripped:
                w.tripped = False
                w.blocked.pop("*", None)
                self.log.info("strategy node is back: its intents are accepted again")
            return
        w.online = False
        if w.seen and payload.get("reason") == "closed":
            w.departed = True
            if self.lockstep is not None:
                self.lockstep.detach("the strategy node closed")
            # A goodbye: the node pulled its quotes before closing; cancel what is left.
            left = self._cancel_orders(self._strategy_orders())
            if left:
                self.log.warning("strategy node closed with {} order(s) open: cancelled", left)

    def _strategy_orders(self) -> list[Order]:
        return [o for o in self.orders.all_working() if o.strategy in self.strategies]

    async def _watch_strategy(self) -> None:
        grace = float(self.settings.strategy_grace)
        period = max(0.05, min(0.25, grace / 4))
        while True:
            await asyncio.sleep(period)
            w = self.watch
            silent = time.monotonic() - w.last_online
            if w.seen and not (w.tripped or w.departed) and silent > grace:
                self._strategy_lost(grace)

    def _strategy_lost(self, grace: float) -> None:
        w = self.watch
        w.tripped = True
        reason = f"strategy node heartbeat lost for more than {grace:g}s"
        w.blocked["*"] = f"refused at the execution node: {reason}"
        cancelled = self._cancel_orders(self._strategy_orders())
        if self.lockstep is not None:
            self.lockstep.detach(reason)
        message = f"{reason}: cancelled {cancelled} open order(s) at the venues"
        self.log.warning("BREAKER strategy_lost: {}", message)
        now = self.clock.now_ns()
        self.journal.append(
            JournalRecord(
                f"breaker-strategy-lost-{now}",
                "breaker",
                now,
                "",
                {"kind": "strategy_lost", "message": message, "cancelled": cancelled},
            )
        )
        self.journal.take()
        self.bus.publish(
            self.scheme.breaker(),
            {
                "kind": "strategy_lost",
                "severity": "critical",
                "action": "alert",
                "node": self.role,
                "strategies": sorted(self.strategies),
                "cancelled": cancelled,
                "message": message,
                "ts_ns": now,
            },
            qos=1,
        )

    def on_breaker(self, payload: dict[str, Any]) -> None:
        super().on_breaker(payload)
        if payload.get("node") == self.role or payload.get("action") != "halt":
            return
        names = payload.get("strategies") or ["*"]
        for name in names:
            self.watch.blocked[str(name)] = (
                f"refused at the execution node: breaker {payload.get('kind', '')}: "
                f"{payload.get('message', '')}"
            )
        halted = self._cancel_orders(
            [o for o in self.orders.all_working() if "*" in names or o.strategy in names]
        )
        self.log.warning("breaker halt: cancelled {} order(s)", halted)

    # -- peers ---------------------------------------------------------------------------------
    def on_peer_reconnect(self, role: str) -> None:
        if role in ("strategy", "monitor"):
            sent = self.replay.replay()
            self.log.info("{} node reconnected: {} order report(s)/fill(s) republished", role, sent)

    # -- kill and stop -----------------------------------------------------------------------------
    def on_kill(self, source: str) -> None:
        if self.killed:
            return
        self.stopping = True
        cancelled = self._cancel_orders(self.orders.all_working())
        for venue in self.venues.values():
            venue.submit([CancelAll(venue.name)])
        now = self.clock.now_ns()
        self.journal.append(
            JournalRecord(f"kill-{self.run_dir.name}", "breaker", now, "", {"kill": source})
        )
        self.journal.take()
        self.log.warning(
            "kill switch: cancelling {} order(s) and everything at the venues", cancelled
        )
        super().on_kill(source)

    async def wait(self) -> None:
        if self.lockstep is not None:
            await self._drive_lockstep(self.lockstep)
            if self._stop.is_set():
                return
        else:
            await super().wait()
        if self._stop.is_set():
            return
        # Serve the strategy node while it winds down: it cancels its quotes through us.
        linger = self.settings.linger
        limit = (
            float(linger)
            if linger is not None
            else float(self.settings.strategy_grace) + float(self.manifest.run.cancel_timeout)
        )
        deadline = time.monotonic() + limit
        ticks = 0
        while time.monotonic() < deadline and not self._stop.is_set():
            if not self.watch.seen or not self.watch.online:
                break
            await asyncio.sleep(0.1)
            ticks += 1
            if self.lockstep is not None and ticks % 10 == 0:
                self.lockstep.repeat_done()  # in case the last step was lost (QoS 0)

    async def _drive_lockstep(self, driver: _LockstepDriver) -> None:
        await driver.run()
        if driver.detached != "run finished" and not self._stop.is_set():
            # The strategy node is gone mid-run: its orders were cancelled; let the
            # venue confirm that in virtual time, then end the run (it cannot go on).
            await self._settle(float(self.manifest.run.cancel_timeout))
            self.request_stop(f"lock step ended: {driver.detached}")
        else:
            self.stop_reason = self.stop_reason or "duration reached"
        self.info["lockstep_steps"] = driver.steps_sent

    async def _settle(self, timeout_s: float) -> None:
        """Run the simulated venues in virtual time until no order of ours is working
        (at most ``timeout_s`` of virtual time): a lock-step run whose strategy node has
        finished or gone."""
        assert isinstance(self.clock, SimClock)
        clock = self.clock
        deadline = clock.now_ns() + int(timeout_s * NS)
        while self.orders.all_working() and clock.now_ns() < deadline:
            if clock.next_time() is None:
                break
            clock.run_until(min(deadline, clock.now_ns() + 10_000_000))
            await asyncio.sleep(0)

    async def stop(self) -> None:
        self.stopping = True
        if not self.journal_open:
            return
        if self.lockstep is not None:
            self.lockstep.detach("the execution node is stopping")
        self._cancel_orders(self.orders.all_working())
        timeout = float(self.manifest.run.cancel_timeout)
        deadline = time.monotonic() + timeout
        if self.lockstep is not None:
            await self._settle(timeout)
        else:
            while self.orders.all_working() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        left = self.orders.all_working()
        if left:
            self.log.warning("{} order(s) unconfirmed after cancel: cancelling all", len(left))
            for venue in self.venues.values():
                with contextlib.suppress(Exception):
                    await venue.cancel_all()
        open_left = 0
        with (self.run_dir / "venue_fills.jsonl").open("w", encoding="utf-8") as fh:
            for name, venue in self.venues.items():
                try:
                    open_now = await venue.fetch_open_orders()
                    venue_fills = await venue.fetch_fills(0)
                except Exception as exc:
                    self.log.error("{}: cannot read open orders/fills at stop: {}", name, exc)
                    continue
                if open_now is None or venue_fills is None:
                    self.log.warning("{}: the adapter cannot report open orders/fills", name)
                open_left += len(open_now or ())
                for fill in venue_fills or ():
                    fh.write(json.dumps(fill_to_dict(fill)) + "\n")
        await self.publisher.stop()
        await self.reconciler.close()
        if self.lockstep is not None:
            await self.lockstep.close()
        for venue in self.venues.values():
            with contextlib.suppress(Exception):
                await venue.close()
        now = self.clock.now_ns()
        self.journal.append(
            JournalRecord(
                f"run-stop-{self.run_dir.name}",
                "run",
                now,
                "",
                {"event": "stop", "role": self.role, "reason": self.stop_reason},
            )
        )
        await self.journal.close()
        self.info.update(
            {
                "fills": self.fills,
                "risk_refusals": self.refusals,
                "open_orders_left": open_left,
                "unconfirmed_orders": [o.client_id for o in left],
                "replayed": self.replay.replayed,
            }
        )


def _position_of(portfolio: Portfolio, key: str) -> Callable[[], int]:
    return lambda: portfolio.position_lots(key)


# ---------------------------------------------------------------------------------------
# Strategy node
# ---------------------------------------------------------------------------------------


class _StrategyRun(Run):
    """The normal engine with the node's bus, remote venues, and a kill switch that is
    pulled for every node."""

    stop_reason: str

    def __init__(
        self,
        *args: Any,
        node_bus: Bus,
        scheme: TopicScheme,
        on_started: Callable[[], None],
        lockstep: LockstepFollower | None = None,
        **kwargs: Any,
    ) -> None:
        self._node_bus = node_bus
        self._scheme = scheme
        self._on_started = on_started
        self._lockstep = lockstep
        super().__init__(*args, **kwargs)
        if lockstep is not None:
            lockstep.working = lambda: len(self.orders.all_working())
            lockstep.on_end = self.request_stop

    async def start(self) -> None:
        await super().start()
        self._on_started()

    def _build(self) -> None:
        super()._build()
        # Node topics live under the manifest's run name; the bus must be this node's.
        self.bus = self._node_bus

    def _write_run_files(self) -> None:
        super()._write_run_files()
        path = self.run_dir / "run.json"
        info = json.loads(path.read_text(encoding="utf-8"))
        info["role"] = "strategy"
        path.write_text(json.dumps(info, indent=2), encoding="utf-8")

    def kill(self, source: str) -> None:
        if not self.killed and not source.startswith("bus:"):
            self.bus.publish(self._scheme.kill(), {"reason": source, "node": "strategy"}, qos=1)
        super().kill(source)

    # -- lock step: the execution node's clock decides when the run ends ----------------------
    async def _drive_live(self) -> None:
        follower = self._lockstep
        if follower is None:
            await super()._drive_live()
            return
        stopped = asyncio.ensure_future(self._stop.wait())
        ended = asyncio.ensure_future(follower.ended.wait())
        try:
            await asyncio.wait({stopped, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not follower.ended.is_set():
                # Stopped here (signal, kill switch): the run ends at the driver's time.
                follower.request_end(self.stop_reason)
                await ended
        finally:
            stopped.cancel()
            ended.cancel()
        self.stop_reason = self.stop_reason or follower.end_reason

    async def _cancel_everything(self) -> None:
        follower = self._lockstep
        if follower is None:
            await super()._cancel_everything()
            return
        # As in one process: pull every quote now; the driver runs the venues until no
        # order is working (or the cancel timeout passed) and says when it is done.
        for mr in self.markets.values():
            self._execute(mr, [], record_wanted=False)
        follower.answer_end()
        await follower.done.wait()
        left = self.orders.all_working()
        if left:
            self.log.warning(
                "{} orders still unconfirmed after cancel: {}",
                len(left),
                ", ".join(o.client_id for o in left[:10]),
            )

    def on_breaker(self, payload: dict[str, Any]) -> None:
        if payload.get("node") == "strategy":
            return
        message = f"{payload.get('node', '?')} node: {payload.get('message', '')}"
        severity = str(payload.get("severity", "warning"))
        self.alert("breaker", message, severity=severity)
        if payload.get("action") != "halt":
            return
        names = payload.get("strategies") or list(self.strategies)
        for name in names:
            srt = self.strategies.get(str(name))
            if srt is None or srt.halted:
                continue
            srt.halted = True
            for mr in srt.markets.values():
                self._execute(mr, [], record_wanted=False)


class _StrategyNode:
    """Runs the manifest's strategies with venues reached over the bus."""

    role = "strategy"

    def __init__(
        self,
        loaded: LoadedManifest,
        registry: PluginRegistry,
        run_dir: Path,
        settings: NodeSettings,
        manifest_path: Path | None,
    ) -> None:
        m = loaded.manifest
        self.settings = settings
        self.scheme = TopicScheme(m.run.name)
        self.bus = _node_bus(loaded, registry, self.role, settings)
        self.replay = ReplayBuffer(lambda: self.bus, window_s=float(settings.replay_window))
        self.sessions = _Sessions(self.bus, self.scheme, self.role, self.on_peer_reconnect)
        self.remote: dict[str, RemoteVenue] = {}
        clock: LiveClock | LockstepClock = LiveClock()
        self.lockstep: LockstepFollower | None = None
        if is_lockstep(loaded, registry):
            # Virtual time from the execution node, starting where a one-process run does.
            clock = LockstepClock(_epoch_ns())
            # The steps have a connection of their own (see remote.clock_topics).
            clock_bus = _node_bus(
                loaded, registry, f"{self.role}-clock", settings, heartbeats=False, user=self.role
            )
            self.lockstep = LockstepFollower(
                lambda: self.bus,
                self.scheme,
                clock,
                clock_bus=clock_bus,
                silence_s=float(settings.connect_timeout),
            )

        def venue_factory(
            name: str, spec: PluginSpec, params: BaseModel, ctx: VenueContext
        ) -> ExchangeAdapter:
            strategies = [n for n, s in m.strategies.items() if s.exchange == name]
            venue = RemoteVenue(
                ctx,
                lambda: self.bus,
                self.scheme,
                strategies,
                host_role=_market_data_host(registry, spec),
                stale_after_s=float(settings.stale_after),
                connect_timeout_s=float(settings.connect_timeout),
                replay=self.replay,
                lockstep=self.lockstep,
            )
            self.remote[name] = venue
            return venue

        self.run_obj = _StrategyRun(
            loaded,
            registry,
            run_dir=run_dir,
            clock=clock,
            manifest_path=manifest_path,
            venue_factory=venue_factory,
            node_bus=self.bus,
            scheme=self.scheme,
            on_started=self._started,
            lockstep=self.lockstep,
        )

    def _started(self) -> None:
        run = self.run_obj
        self.bus.subscribe(self.scheme.breaker(), lambda topic, payload: run.on_breaker(payload))
        self.sessions.start()
        if self.lockstep is not None:
            self.lockstep.started()

    def request_stop(self, reason: str = "stop requested") -> None:
        self.run_obj.request_stop(reason)

    def kill(self, source: str) -> None:
        self.run_obj.kill(source)

    def on_peer_reconnect(self, role: str) -> None:
        if role == "execution":
            sent = self.replay.replay()
            logger.info("execution node reconnected: {} intent(s) republished", sent)

    async def run(self) -> str:
        try:
            return await self.run_obj.run()
        finally:
            if self.lockstep is not None:
                await self.lockstep.close()
            await self.sessions.stop()


# ---------------------------------------------------------------------------------------
# Monitor node
# ---------------------------------------------------------------------------------------


@dataclass
class _MarketView:
    tick: Decimal | None = None
    lot: Decimal | None = None
    bid: int | None = None
    ask: int | None = None
    state: str = "-"
    book_seen: float = 0.0
    position_lots: int = 0
    fills: int = 0
    working: dict[str, tuple[Side, int | None]] = field(default_factory=dict)


class _MonitorNode(_Node):
    """Watches a whole run and prints a live table; trades nothing."""

    role = "monitor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.markets: dict[str, _MarketView] = {}
        self.nodes: dict[str, tuple[str, float]] = {}
        # Bus frames each node refused (forged, unsigned, replayed), from its heartbeats.
        self.refused: dict[str, int] = {}
        self.alerts: list[str] = []
        self.fill_ids: set[str] = set()

    async def start(self) -> None:
        self.bus.subscribe(self.scheme.everything(), self._on_message)
        self._tasks.append(asyncio.get_running_loop().create_task(self._print_loop()))

    async def stop(self) -> None:
        self._print()

    def _view(self, venue: str, symbol: str) -> _MarketView:
        key = f"{venue}:{symbol}"
        view = self.markets.get(key)
        if view is None:
            view = self.markets[key] = _MarketView()
        return view

    def _on_message(self, topic: str, payload: dict[str, Any]) -> None:
        try:
            parsed = parse_topic(topic)
        except TopicError:
            return
        handler = _MONITOR_HANDLERS.get(parsed.kind)
        if handler is not None:
            handler(self, parsed, payload)

    def _on_book(self, parsed: ParsedTopic, payload: dict[str, Any]) -> None:
        assert parsed.venue is not None and parsed.symbol is not None
        view = self._view(parsed.venue, parsed.symbol)
        self._apply_book(view, payload)

    def _apply_book(self, view: _MarketView, payload: dict[str, Any]) -> None:
        bids, asks = payload.get("bids") or [], payload.get("asks") or []
        view.bid = int(bids[0][0]) if bids else None
        view.ask = int(asks[0][0]) if asks else None
        view.state = str(payload.get("state", "-"))
        view.book_seen = time.monotonic()

    def _on_state(self, parsed: ParsedTopic, payload: dict[str, Any]) -> None:
        name = parsed.name or ""
        if name.startswith("instruments-"):
            for data in payload.get("instruments", []):
                inst = instrument_from_dict(data)
                view = self._view(inst.venue, inst.symbol)
                view.tick, view.lot = inst.tick_size, inst.lot_size
        elif name.startswith("book-") and "bids" in payload:
            parts = name.split("-", 2)
            if len(parts) == 3:
                view = self._view(parts[1], decode_symbol(parts[2]))
                self._apply_book(view, payload)

    def _on_order(self, parsed: ParsedTopic, payload: dict[str, Any]) -> None:
        order = payload.get("order") or {}
        symbol = payload.get("symbol") or ""
        if not symbol or parsed.venue is None:
            return
        view = self._view(parsed.venue, symbol)
        client_id = str(payload.get("client_id"))
        if (
            OrderStatus(payload["status"]).is_terminal
            or OrderStatus(order.get("status", payload["status"])).is_terminal
        ):
            view.working.pop(client_id, None)
        elif order:
            view.working[client_id] = (Side.parse(order["side"]), order.get("price_ticks"))

    def _on_fill(self, parsed: ParsedTopic, payload: dict[str, Any]) -> None:
        fill_id = f"{payload.get('venue')}:{payload.get('fill_id')}"
        if fill_id in self.fill_ids:
            return
        self.fill_ids.add(fill_id)
        view = self._view(str(payload["venue"]), str(payload["symbol"]))
        view.fills += 1
        view.position_lots += int(Side.parse(payload["side"])) * int(payload["qty_lots"])

    def _on_heartbeat(self, parsed: ParsedTopic, payload: dict[str, Any]) -> None:
        self.nodes[parsed.name or "?"] = (str(payload.get("status", "?")), time.monotonic())
        refused = payload.get("refused")
        if type(refused) is int:
            self.refused[parsed.name or "?"] = refused

    def _on_control(self, parsed: ParsedTopic, payload: dict[str, Any]) -> None:
        text = payload.get("message") or payload.get("reason") or ""
        self.alerts.append(f"{parsed.name} from {payload.get('node', '?')}: {text}")
        del self.alerts[:-10]

    async def _print_loop(self) -> None:
        while True:
            await asyncio.sleep(float(self.settings.monitor_interval))
            self._print()

    def table(self) -> dict[str, Any]:
        """The monitor's current view as plain data (also written to monitor.json)."""
        now = time.monotonic()
        stale_after = float(self.settings.stale_after)
        markets = {}
        for key, v in sorted(self.markets.items()):
            tick = v.tick or Decimal(0)
            mid = (
                float((Decimal(v.bid + v.ask) / 2) * tick)
                if v.bid is not None and v.ask is not None and v.tick
                else None
            )
            bids = [p for s, p in v.working.values() if s is Side.BUY and p is not None]
            asks = [p for s, p in v.working.values() if s is Side.SELL and p is not None]
            markets[key] = {
                "mid": mid,
                "our_bid": float(max(bids) * tick) if bids and v.tick else None,
                "our_ask": float(min(asks) * tick) if asks and v.tick else None,
                "open_orders": len(v.working),
                "position": float(v.position_lots * v.lot) if v.lot else v.position_lots,
                "fills": v.fills,
                "book": v.state,
                "stale": v.state != BookState.LIVE.value
                or (v.book_seen > 0 and now - v.book_seen > stale_after),
            }
        nodes = {
            role: {
                "status": status,
                "age_s": round(now - seen, 1),
                "refused": self.refused.get(role, 0),
            }
            for role, (status, seen) in sorted(self.nodes.items())
        }
        return {"markets": markets, "nodes": nodes, "alerts": list(self.alerts)}

    def _print(self) -> None:
        data = self.table()
        (self.run_dir / "monitor.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
        print(format_monitor(data), flush=True)


def format_monitor(data: dict[str, Any]) -> str:
    """The monitor table as text."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.6g}"
        return str(value)

    cols = ["market", "mid", "our_bid", "our_ask", "open_orders", "position", "fills", "book"]
    rows = [cols] + [
        [key] + [cell(m[c]) + ("!" if c == "book" and m["stale"] else "") for c in cols[1:]]
        for key, m in data["markets"].items()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    beats = ", ".join(
        f"{role} {n['status']} ({n['age_s']:g}s ago"
        + (f", {n['refused']} bus frames refused)" if n.get("refused") else ")")
        for role, n in data["nodes"].items()
    )
    lines.append(f"nodes: {beats or 'none heard yet'}")
    lines.extend(f"alert: {a}" for a in data["alerts"][-3:])
    return "\n".join(lines)


_MONITOR_HANDLERS: dict[TopicKind, Callable[[_MonitorNode, ParsedTopic, dict[str, Any]], None]] = {
    TopicKind.BOOK: _MonitorNode._on_book,
    TopicKind.STATE: _MonitorNode._on_state,
    TopicKind.ORDER: _MonitorNode._on_order,
    TopicKind.FILL: _MonitorNode._on_fill,
    TopicKind.HEARTBEAT: _MonitorNode._on_heartbeat,
    TopicKind.CONTROL: _MonitorNode._on_control,
}
