"""The strategy node of a split run: the engine (``quoteforge.engine.Run``) with remote
venues, composed through its extension points.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

from loguru import logger
from pydantic import BaseModel

from quoteforge.assembly import (
    sim_epoch_ns,
)
from quoteforge.clock import LiveClock
from quoteforge.engine import Run
from quoteforge.exchange import (
    ExchangeAdapter,
    VenueContext,
)
from quoteforge.manifest import (
    LoadedManifest,
    NodeSettings,
    PluginSpec,
)
from quoteforge.plugins.distributed.execution_instances import (
    ExecutionBinding,
    RoleClaim,
    claim_topic,
)
from quoteforge.plugins.distributed.kill_latch import KillLatch
from quoteforge.plugins.distributed.node_base import (
    NodeRefusedError,
    NodeRefusedRunningError,
    Sessions,
    claim_role,
    hold_for_kill,
    instance_details,
    is_lockstep,
    kill_delivered,
    market_data_host,
    node_bus,
)
from quoteforge.plugins.distributed.remote import (
    LockstepClock,
    LockstepFollower,
    RemoteVenue,
    ReplayBuffer,
)
from quoteforge.plugins.distributed.strategy_binding import (
    refused_mark_of,
    refused_node_message,
)
from quoteforge.plugins.distributed.topics import (
    TopicScheme,
)
from quoteforge.registry import PluginRegistry
from quoteforge.runfiles import finish_run_info, write_run_info


class LockstepRunDriver:
    """Ends and winds down the strategy node's engine in lock step (a ``RunDriver``):
    the execution node's clock decides when the run ends, and it runs the venues until
    the engine's cancels are settled."""

    def __init__(self, follower: LockstepFollower) -> None:
        self.follower = follower

    async def drive(self, run: Run) -> None:
        follower = self.follower
        stopped = asyncio.ensure_future(run.wait_stopped())
        ended = asyncio.ensure_future(follower.ended.wait())
        try:
            await asyncio.wait({stopped, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not follower.ended.is_set():
                # Stopped here (signal, kill switch): the run ends at the driver's time.
                follower.request_end(run.stop_reason)
                await ended
        finally:
            stopped.cancel()
            ended.cancel()
        run.stop_reason = run.stop_reason or follower.end_reason

    async def cancel_everything(self, run: Run) -> None:
        # As in one process: pull every quote now; the driver runs the venues until no
        # order is working (or the cancel timeout passed) and says when it is done.
        run.pull_quotes()
        self.follower.answer_end()
        await self.follower.done.wait()
        left = run.orders.all_working()
        if left:
            run.log.warning(
                "{} orders still unconfirmed after cancel: {}",
                len(left),
                ", ".join(o.client_id for o in left[:10]),
            )


class StrategyNode:
    """Runs the manifest's strategies (the normal engine, ``Run``) with venues reached
    over the bus, this node's bus, and a kill switch that is pulled for every node."""

    role = "strategy"

    def __init__(
        self,
        loaded: LoadedManifest,
        registry: PluginRegistry,
        run_dir: Path,
        settings: NodeSettings,
        manifest_path: Path | None,
        *,
        resume: bool = False,
    ) -> None:
        m = loaded.manifest
        self.resume = resume
        self.loaded = loaded
        self.registry = registry
        self.manifest_path = manifest_path
        self.settings = settings
        self.scheme = TopicScheme(m.run.name)
        self.bus = node_bus(loaded, registry, self.role, settings)
        self.replay = ReplayBuffer(lambda: self.bus, window_s=float(settings.replay_window))
        # Where this instance runs, for a refusal (of a second strategy node) to name it.
        where = {"pid": os.getpid(), "host": socket.gethostname(), "run_dir": str(run_dir)}
        self.sessions = Sessions(
            self.bus, self.scheme, self.role, self.on_peer_reconnect, details=where
        )
        self.claim: RoleClaim | None = None
        self.latch = KillLatch(
            lambda: self.bus, self.scheme, self.role, self.sessions.instance, self.kill
        )
        #: Why the execution node refused this node's intents (it stopped then), or "".
        self.refused = ""
        beat_fields = getattr(self.bus, "heartbeat_fields", None)
        if isinstance(beat_fields, dict):
            beat_fields["session"] = self.sessions.instance
        self.remote: dict[str, RemoteVenue] = {}
        # The execution session this node last reconciled with (the engine's start-up
        # reconciliation, then each rebind: ``_execution_ready``); None before the start.
        self._reconciled_with: str | None = None
        self._rebinds: set[asyncio.Task[None]] = set()
        self.run_dir = run_dir
        # One execution session at a time: another one's fills are never booked. Its
        # silence is judged as the books judge the execution node's (stale_after).
        self.execution = ExecutionBinding(
            m.run.name, float(settings.stale_after), on_conflict=self._execution_conflict
        )
        # One market-data session at a time: another one's books are never quoted on.
        self.market_data = ExecutionBinding(
            m.run.name,
            float(settings.stale_after),
            on_conflict=self._market_data_conflict,
            role="marketdata",
        )
        clock: LiveClock | LockstepClock = LiveClock()
        self.lockstep: LockstepFollower | None = None
        if is_lockstep(loaded, registry):
            # Virtual time from the execution node, starting where a one-process run does.
            clock = LockstepClock(sim_epoch_ns())
            # The steps have a connection of their own (see remote.clock_topics).
            clock_bus = node_bus(
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
                host_role=market_data_host(registry, spec),
                stale_after_s=float(settings.stale_after),
                connect_timeout_s=float(settings.connect_timeout),
                replay=self.replay,
                lockstep=self.lockstep,
                binding=self.execution,
                session=self.sessions.instance,
                md_binding=self.market_data,
            )
            venue.on_execution_ready = self._execution_ready
            self.remote[name] = venue
            return venue

        # Node topics live under the manifest's run name; the bus must be this node's.
        self.run_obj = Run(
            loaded,
            registry,
            run_dir=run_dir,
            clock=clock,
            manifest_path=manifest_path,
            venue_factory=venue_factory,
            bus=self.bus,
            run_info={"role": "strategy"},
            resume=resume,
            driver=LockstepRunDriver(self.lockstep) if self.lockstep is not None else None,
            on_started=self._started,
            on_kill=self._announce_kill,
        )
        if self.lockstep is not None:
            run = self.run_obj
            self.lockstep.working = lambda: len(run.orders.all_working())
            self.lockstep.on_end = run.request_stop

    def _started(self, run: Run) -> None:
        self._reconciled_with = self.execution.bound or ""
        if self.claim is not None:
            # The bus is up and this node's heartbeat speaks for it from now on.
            topic, claim = claim_topic(self.scheme, self.role), self.claim
            self.bus.publish(topic, claim.mark("online"), qos=1, retain=True)
            self.sessions.on_reconnect(
                lambda: self.bus.publish(topic, claim.mark("online"), qos=1, retain=True)
            )
        self.bus.subscribe(self.scheme.breaker(), lambda topic, payload: self.on_breaker(payload))
        self.latch.listen()
        if self.lockstep is None:
            for name in self.remote:  # after the venue's own handler, which binds
                self.bus.subscribe(self.scheme.order(name), self._on_order_report)
        self.sessions.start()
        if self.lockstep is not None:
            self.lockstep.started()

    def _execution_ready(self, session: str) -> None:
        """An execution session announced itself ready to take intents. When it is not
        the one this node last reconciled with (a rebind: the bound one went silent or
        said goodbye and another took over), reconcile with it: reports it sent before
        the rebind were refused here (its sweep's cancels, orders another node
        cancelled), and intents sent to it before it subscribed were lost, so without it
        this node would hold orders as working that are not, and miss fills. Orders not
        open there are ended (their slots quoted again), fills missed are booked."""
        if self._reconciled_with is None or self.lockstep is not None:
            return  # not started yet: the engine's start-up reconciliation comes first
        if not session or session == self._reconciled_with:
            return
        self._reconciled_with = session
        task = asyncio.get_running_loop().create_task(self._reconcile_rebound(session))
        self._rebinds.add(task)
        task.add_done_callback(self._rebinds.discard)

    async def _reconcile_rebound(self, session: str) -> None:
        run = self.run_obj
        logger.info(
            "execution session {} is ready: reconciling this node's orders and fills with "
            "it (a rebind: what the previous session left may have been reported only "
            "to it)",
            session,
        )
        try:
            await run.reconcile(since_ns=run.started_ns)
        except Exception as exc:  # the next periodic reconciliation tries again
            logger.warning(
                "reconciliation with execution session {} after the rebind failed: {}",
                session,
                exc,
            )

    def _announce_kill(self, source: str) -> None:
        """The kill switch: tell every node when pulled here (not heard from the bus),
        latch it at the broker for the nodes cut off from it now (``KillLatch``), and
        hold the exit until the broker has it (``hold_for_kill``)."""
        self.latch.latch(source)  # first: a node hearing the kill has the latch already
        if not source.startswith("bus:"):
            self.bus.publish(self.scheme.kill(), {"reason": source, "node": "strategy"}, qos=1)
        hold_for_kill(self.bus, self.settings)

    def on_breaker(self, payload: dict[str, Any]) -> None:
        """Another node's breaker: alert, and on ``halt`` halt the strategies it names."""
        if payload.get("node") == "strategy":
            return
        run = self.run_obj
        message = f"{payload.get('node', '?')} node: {payload.get('message', '')}"
        severity = str(payload.get("severity", "warning"))
        run.alert("breaker", message, severity=severity)
        if payload.get("action") != "halt":
            return
        names = payload.get("strategies") or list(run.strategies)
        for name in names:
            srt = run.strategies.get(str(name))
            if srt is None or srt.halted:
                continue
            srt.halted = True
            run.pull_quotes(srt.name)

    def _on_order_report(self, topic: str, payload: dict[str, Any]) -> None:
        """The bound execution node refused an order of this session: it takes intents
        from another strategy session. Requoting would only bring more refusals, so
        nothing new goes out from now (the order gate closes, as for the kill switch,
        but for this node alone), a critical alert names the other session, and the
        node stops; ``run`` then raises ``NodeRefusedRunningError`` (exit 2, its
        message logged as an error)."""
        if self.refused or payload.get("session") != self.execution.bound:
            return
        mark = refused_mark_of(payload, self.sessions.instance)
        if mark is None:
            return
        run = self.run_obj
        self.refused = message = refused_node_message(self.scheme.run, mark)
        bound = mark.get("bound")
        run.gate.close(f"refused by the execution node: bound to strategy session {bound}")
        run.alert("strategy_conflict", message, severity="critical")
        run.request_stop(f"refused: {message}")

    def _execution_conflict(self, message: str) -> None:
        self.run_obj.alert("execution_conflict", message, severity="critical")

    def _market_data_conflict(self, message: str) -> None:
        self.run_obj.alert("marketdata_conflict", message, severity="critical")

    def request_stop(self, reason: str = "stop requested") -> None:
        self.run_obj.request_stop(reason)

    def kill(self, source: str) -> None:
        self.run_obj.kill(source)

    def on_peer_reconnect(self, role: str) -> None:
        if role == "execution":
            sent = self.replay.replay()
            logger.info("execution node reconnected: {} intent(s) republished", sent)

    async def preflight(self) -> None:
        """Claim the run's strategy role, on a connection of its own (see ``RoleClaim``):
        refused beside a live strategy node of this run or a rival that claimed after
        this one (two would trade through the one execution node and cancel each other's
        orders). A lock-step run follows the first strategy node that says hello and
        ignores any other: no claim there."""
        if self.lockstep is not None:
            return
        # A silent instance is taken for dead only once the execution node has given it
        # up too (strategy_grace, and half a heartbeat for the messages on their way): it
        # then takes this node's session at once.
        beat = float(self.settings.heartbeat)
        self.claim = await claim_role(
            self.loaded, self.registry, self.settings, self.role,
            instance_details(self.sessions, self.bus),
            float(self.settings.strategy_grace) + beat / 2,
        )  # fmt: skip

    async def run(self) -> str:
        try:
            await self.preflight()
        except NodeRefusedError as exc:
            if self.resume:  # the folder is the run's: left as it was
                raise
            m = self.loaded.manifest
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_run_info(
                self.run_dir,
                {
                    "run_id": self.run_dir.name,
                    "name": m.run.name,
                    "role": self.role,
                    "mode": m.run.mode,
                    "seed": m.run.seed,
                    "manifest": str(self.manifest_path) if self.manifest_path else None,
                    "overrides": list(self.loaded.overrides),
                },
                resume=False,
                manifest_text=self.loaded.text,
            )
            finish_run_info(self.run_dir, stop_reason=f"refused: {exc}")
            raise
        try:
            reason = await self.run_obj.run()
        finally:
            killed = self.run_obj.killed
            undelivered = killed and not kill_delivered(self.bus, self.scheme.run, self.role)
            if self.lockstep is not None:
                await self.lockstep.close()
            await self.sessions.stop()
            refused, md_refused = self.execution.refused, self.market_data.refused
            for binding in (self.execution, self.market_data):
                if binding.refused_total:
                    logger.warning(
                        "refused from a second {} session: {}",
                        binding.kind,
                        ", ".join(f"{n} {kind}(s)" for kind, n in binding.refused.items() if n),
                    )
            if (self.run_dir / "run.json").exists():
                finish_run_info(
                    self.run_dir,
                    execution_session=self.execution.bound,
                    foreign_execution_refused=refused,
                    marketdata_session=self.market_data.bound,
                    foreign_marketdata_refused=md_refused,
                    **({"kill_undelivered": True} if undelivered else {}),
                )
        if self.refused:
            raise NodeRefusedRunningError(self.refused)
        return reason
