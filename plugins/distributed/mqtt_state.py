"""The state of one MQTT bus instance, shared by its parts: the sender
(``mqtt_send``), the receiver (``mqtt_receive``) and the connection
(``mqtt_connection``), which ``quoteforge.plugins.bus_mqtt.MqttBus`` puts together.

It is one object, not several talking to each other, because the per-message paths
(publish, pump, deliver) read a dozen of these fields each time and must not pay for
an extra indirection.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quoteforge.bus import Handler, SeenIds
from quoteforge.plugins.distributed.mqtt_params import MqttParams
from quoteforge.plugins.distributed.signing import (
    REFUSAL_REASONS,
    FrameSigner,
    FrameVerifier,
    sender_name,
)
from quoteforge.plugins.distributed.topics import Codec, Delivery, GapDetector, TopicScheme

if TYPE_CHECKING:
    import aiomqtt
    import paho.mqtt.client as paho

__all__ = ["GapListener", "MqttStats"]

GapListener = Callable[[str, str, int], None]
"""Called as ``listener(topic, source, missing)`` when QoS 0 messages were lost."""


@dataclass
class MqttStats:
    """Counters of one bus instance since it was created. ``published`` and
    ``received`` count messages; ``frames_*`` count MQTT publishes, each a single
    message or a batch frame of several. ``refused`` counts received frames refused by
    the signature check, per reason (see
    ``quoteforge.plugins.distributed.topics.REFUSAL_REASONS``)."""

    published: int = 0
    received: int = 0
    frames_published: int = 0
    frames_received: int = 0
    duplicates: int = 0
    gaps: int = 0
    missed: int = 0
    dropped_disconnected: int = 0
    dropped_overflow: int = 0
    decode_errors: int = 0
    handler_errors: int = 0
    connects: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSAL_REASONS, 0))

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())


class _Outgoing:
    """One queued message: its envelope bytes and how it travels."""

    __slots__ = ("data", "qos", "retain", "topic")

    def __init__(self, topic: str, data: bytes, qos: int, retain: bool) -> None:
        self.topic = topic
        self.data = data
        self.qos = qos
        self.retain = retain


class _RateLimitedLog:
    """At most one log line per key and interval, counting what it held back."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self._interval = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> int | None:
        """The number of suppressed lines since the last one, or None to stay quiet."""
        now = time.monotonic()
        last, held = self._last.get(key, (-math.inf, 0))
        if now - last >= self._interval:
            self._last[key] = (now, 0)
            return held
        self._last[key] = (last, held + 1)
        return None


class _MqttCore:
    """What one bus instance knows: its parameters, names, signer and verifier, the
    outgoing queue, the subscriptions and handlers, and the live connection."""

    def __init__(self, params: MqttParams | None = None, run_id: str = "") -> None:
        self.params = params if params is not None else MqttParams()
        self.topics = TopicScheme(run_id or "default")
        self.client_id = self.params.client_id or f"qf-{secrets.token_hex(6)}"
        self.node = self.params.node or self.client_id
        # Distinct per bus instance so a restarted publisher starts a fresh sequence
        # instead of looking like a stream of duplicates.
        self.source = f"{self.client_id}.{secrets.token_hex(3)}"
        self.stats = MqttStats()
        #: Added to every heartbeat and the last will (set before ``start``): a node's
        #: session id, so peers tell whose heartbeat or goodbye they read.
        self.heartbeat_fields: dict[str, Any] = {}
        self._signer: FrameSigner | None = None
        self._verifier: FrameVerifier | None = None
        if self.params.signing_key is not None:
            key = self.params.signing_key.get_secret_value().encode()
            # The signer's name is fresh per bus instance (see sender_name).
            self._signer = FrameSigner(key, self.params.key_id, sender_name(self.client_id))
            self._verifier = FrameVerifier(
                {self.params.key_id: key}, max_age_s=self.params.max_age_s
            )
            self.stats.refused = self._verifier.refused
        self._codec = Codec()
        self._queue: deque[_Outgoing] = deque()
        self._handlers: list[tuple[str, Handler]] = []
        self._filters: dict[str, None] = {}
        self._pending_filters: list[str] = []
        self._routes: dict[str, list[Handler]] = {}
        self._policy: dict[str, Delivery] = {}
        self._seq: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._seen = SeenIds(self.params.dedup_capacity)
        self._gaps = GapDetector()
        self._gap_listeners: list[GapListener] = []
        self._log_limit = _RateLimitedLog()
        self._rng = random.Random()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()
        # The paho client of the live connection; None while disconnected.
        self._paho: paho.Client | None = None
        self._client: aiomqtt.Client | None = None
        # QoS 1 frames handed to paho and not acknowledged yet, by MQTT message id, in
        # the order they were sent; QoS 0 frames handed over and maybe not written yet.
        self._inflight: dict[int, list[_Outgoing]] = {}
        self._unwritten: deque[tuple[paho.MQTTMessageInfo, int]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._pump_scheduled = False
        self._pumping = False
        self._window_full = False
        self._linger = self.params.linger_us / 1e6
        self._last_send = -math.inf
        self._write_scheduled = False
        self._writer_fd = -1
        self._subscribing = False
        self._overflowing = False
        self._closed = False
        self._ever_connected = False
        self._first_outcome: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _heartbeat(self, status: str, reason: str = "") -> dict[str, Any]:
        beat: dict[str, Any] = {
            **self.heartbeat_fields,
            "status": status,
            "node": self.node,
            "client_id": self.client_id,
        }
        if reason:
            beat["reason"] = reason
        if status == "online":
            # A retained "online" outlives a node that died before its last will went
            # out: the send time lets a reader judge it by its age (freshness).
            beat["sent_ns"] = time.time_ns()
            beat["queued"] = len(self._queue)
            if self._verifier is not None:
                refused = self._verifier.refused
                beat["refused"] = sum(refused.values())
                beat["refused_by"] = {reason: n for reason, n in refused.items() if n}
        return beat
