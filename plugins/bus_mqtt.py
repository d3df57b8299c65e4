"""MQTT bus backend: nodes of one run on several machines talk through a broker.

Built on aiomqtt (connection, TLS, authentication, last will, subscriptions), with the
per-message path (publish, write, receive) on its paho client directly: consecutive
messages of one topic published close together travel as one batch frame, and
received frames are dispatched without a queue or a task. Messages travel in the
``quoteforge.plugins.distributed.topics`` envelope. See ``docs/distributed.md`` for
topics, QoS policy, encoding, batching and security.

The bus is put together from parts in ``quoteforge.plugins.distributed``:
``mqtt_params`` (settings, TLS, signing key), ``mqtt_state`` (one instance's state and
counters), ``mqtt_send`` (publishing, batch frames, the write path), ``mqtt_receive``
(verification, decoding, dispatch) and ``mqtt_connection`` (broker session and
reconnects). This module is the entry point that registers the ``mqtt`` backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge import hookimpl
from quoteforge.bus import Bus, Handler
from quoteforge.plugins.distributed.mqtt_connection import BusConnectError, _MqttConnection
from quoteforge.plugins.distributed.mqtt_params import MqttParams, MqttTlsParams
from quoteforge.plugins.distributed.mqtt_state import GapListener, MqttStats
from quoteforge.plugins.distributed.topics import validate_filter

if TYPE_CHECKING:
    from quoteforge.registry import Register

__all__ = [
    "BusConnectError",
    "GapListener",
    "MqttBus",
    "MqttParams",
    "MqttStats",
    "MqttTlsParams",
    "quoteforge_register_bus_backends",
    "quoteforge_run_started",
]


class MqttBus(_MqttConnection, Bus):
    """Bus over an MQTT broker: QoS 1 messages survive broker outages, every message
    id is applied once, and subscriptions come back after a reconnect.

    Created as ``MqttBus(params, run_id)``; the state it starts with is set up in
    ``mqtt_state._MqttCore``, the parts it is made of are listed in this module's
    docstring."""

    Params = MqttParams
    #: How long ``close`` waits for a broker that is away while QoS 1 messages are
    #: queued, before it gives them up (0: not at all). A node that pulled or heard the
    #: kill switch sets it: the kill has to reach the other nodes.
    hold_close_s: float = 0.0

    # -- public API ---------------------------------------------------------------------
    @property
    def signed(self) -> bool:
        """Whether this bus signs what it sends and refuses what is not signed."""
        return self._signer is not None

    @property
    def queued(self) -> int:
        """Messages waiting to be handed to the broker."""
        return len(self._queue)

    @property
    def undelivered(self) -> int:
        """QoS 1 messages the broker has not acknowledged yet (queued or in flight)."""
        return sum(1 for m in self._queue if m.qos > 0) + len(self._inflight)

    async def start(self) -> None:
        """Connect; wait up to ``connect_timeout_s`` for the broker, then keep trying in
        the background. Raises BusConnectError when the broker refuses the credentials."""
        if self._runner is not None:
            return
        if self._closed:
            raise RuntimeError("this MqttBus was closed; create a new one")
        try:
            import aiomqtt  # noqa: F401
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                'the mqtt bus needs aiomqtt: pip install "quoteforge[mqtt]"', name="aiomqtt"
            ) from None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._first_outcome = loop.create_future()
        self._runner = loop.create_task(self._run(), name=f"mqtt-bus-{self.client_id}")
        try:
            await asyncio.wait_for(
                asyncio.shield(self._first_outcome), timeout=self.params.connect_timeout_s
            )
        except TimeoutError:
            self._first_outcome.cancel()
            logger.warning(
                "MQTT broker {}:{} not reachable yet; bus {} keeps retrying and buffers "
                "QoS 1 messages meanwhile",
                self.params.host,
                self.params.port,
                self.client_id,
            )
        except BusConnectError:
            await self._stop_runner()
            self._closed = True
            raise

    async def close(self) -> None:
        """Deliver what is queued (up to ``close_timeout_s``), say offline, disconnect."""
        if self._closed:
            return
        undelivered = self.undelivered
        if self._runner is not None and not self.connected and undelivered and self.hold_close_s:
            logger.warning(
                "MQTT bus {}: the broker is away with {} QoS 1 message(s) undelivered; "
                "waiting up to {:g}s for it before closing",
                self.client_id,
                undelivered,
                self.hold_close_s,
            )
            with contextlib.suppress(TimeoutError):
                await self.wait_connected(self.hold_close_s)
        if self._runner is not None and self.connected:
            self.publish(self.topics.heartbeat(self.node), self._heartbeat("offline", "closed"))
            with contextlib.suppress(TimeoutError):
                await self.flush(self.params.close_timeout_s)
        self._closed = True
        left = sum(1 for m in self._queue if m.qos > 0)
        if left:
            logger.warning(
                "MQTT bus {} closed with {} QoS 1 message(s) not delivered to the broker",
                self.client_id,
                left,
            )
        await self._stop_runner()

    def subscribe(self, pattern: str, handler: Handler) -> None:
        """Call ``handler(topic, payload)`` for every message matching ``pattern``.

        Retained values are (re)sent by the broker on every subscription and reconnect:
        handlers of retained topics must apply them as "replace", never "add".
        """
        validate_filter(pattern)
        self._handlers.append((pattern, handler))
        self._routes.clear()
        self._filters[pattern] = None
        # Sent even when the filter is active already: the broker then re-sends the
        # retained values, which the new handler needs.
        self._pending_filters.append(pattern)
        self._idle.clear()
        self._wakeup.set()

    def add_gap_listener(self, listener: GapListener) -> None:
        """Call ``listener(topic, source, missing)`` when QoS 0 messages were lost, so a
        book consumer can mark its book stale and resynchronise."""
        self._gap_listeners.append(listener)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected to the broker (TimeoutError after ``timeout``)."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every subscription so far is active at the broker and every queued
        message was handed over (QoS 1: acknowledged)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"MQTT bus {self.client_id} not drained after {timeout}s: {len(self._queue)} "
                f"message(s) queued, connected={self.connected}"
            ) from None


@hookimpl
def quoteforge_register_bus_backends(register: Register) -> None:
    register(
        "mqtt",
        MqttBus,
        params=MqttParams,
        description="MQTT broker bus (Mosquitto, EMQX) for nodes on several machines",
        requires=("aiomqtt",),
    )


@hookimpl
def quoteforge_run_started(run: Any) -> None:
    """A run in one process on an MQTT bus stops, cancelling its orders, on any message on
    its ``control/kill`` topic: say at every start who else could send one. A live run
    gets here only with ``insecure: true`` (``MqttParams.manifest_problems`` refuses it
    otherwise); the nodes of a split run check their bus themselves."""
    bus = getattr(run, "bus", None)
    if not isinstance(bus, MqttBus) or getattr(run, "run_info", {}).get("role"):
        return
    if bus.params.insecure:
        prefix = "INSECURE one-process run, bus.params.insecure is set"
    else:
        prefix = (
            f"one-process {run.mode} run on an unprotected bus: anyone who can publish on "
            f"{bus.topics.kill()} stops it"
        )
    for problem in bus.params.security_problems():
        logger.warning("{}: {}", prefix, problem)
