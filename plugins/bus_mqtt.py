"""MQTT bus backend: nodes of one run on several machines talk through a broker.

Built on aiomqtt (connection, TLS, authentication, last will, subscriptions), with the
per-message path (publish, write, receive) on its paho client directly: consecutive
messages of one topic published close together travel as one batch frame, and
received frames are dispatched without a queue or a task. Messages travel in the
``quoteforge.plugins.distributed.topics`` envelope. See ``docs/distributed.md`` for
topics, QoS policy, encoding, batching and security.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import math
import random
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from quoteforge import hookimpl
from quoteforge.bus import Bus, Handler, SeenIds, topic_matches
from quoteforge.plugins.distributed.topics import (
    MIN_KEY_BYTES,
    REFUSAL_REASONS,
    ROOT,
    Codec,
    DecodeError,
    Delivery,
    Envelope,
    FrameSigner,
    FrameVerifier,
    GapDetector,
    SignatureError,
    TopicScheme,
    parse_topic,
    strip_signature,
    validate_filter,
    validate_topic,
)

if TYPE_CHECKING:
    import aiomqtt
    import paho.mqtt.client as paho

    from quoteforge.registry import Register

__all__ = [
    "BusConnectError",
    "GapListener",
    "MqttBus",
    "MqttParams",
    "MqttStats",
    "MqttTlsParams",
    "quoteforge_register_bus_backends",
]

GapListener = Callable[[str, str, int], None]
"""Called as ``listener(topic, source, missing)`` when QoS 0 messages were lost."""

# MQTT 3.1.1 CONNACK codes 4/5 and their MQTT 5 equivalents (paho reports either).
_AUTH_REFUSED = {4, 5, 134, 135}
_READ_CHUNK = 65536


class BusConnectError(ConnectionError):
    """The broker refused this node (bad credentials or not authorised)."""


class MqttTlsParams(BaseModel):
    """TLS settings for the broker connection."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    ca_file: Path | None = Field(
        default=None,
        description="PEM file with the CA certificate(s) that signed the broker's "
        "certificate; the system trust store when unset",
    )
    cert_file: Path | None = Field(
        default=None,
        description="PEM client certificate, for brokers that authenticate clients by TLS",
    )
    key_file: Path | None = Field(
        default=None, description="PEM private key of cert_file (omit when cert_file holds the key)"
    )
    insecure: bool = Field(
        default=False,
        description="do not check that the broker's certificate names its host; for test "
        "brokers with self-made certificates only",
    )

    @model_validator(mode="after")
    def _files_exist(self) -> MqttTlsParams:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"tls.{name} {str(path)!r} does not exist or is not a file")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("tls.key_file is set without tls.cert_file: set both or neither")
        return self


class MqttParams(BaseModel):
    """Parameters of the ``mqtt`` bus backend."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    host: str = Field(default="127.0.0.1", description="broker host name or IP address")
    port: int = Field(
        default=1883, ge=1, le=65535, description="broker TCP port (8883 is usual for TLS)"
    )
    username: str | None = Field(
        default=None,
        description="user name for broker authentication; in a split run '{role}' stands "
        "for the node's role (marketdata, strategy, execution, monitor)",
    )
    password: SecretStr | None = Field(
        default=None, description="password for broker authentication; use ${ENV_VAR} in manifests"
    )
    tls: MqttTlsParams | None = Field(
        default=None, description="TLS settings; plain TCP when unset"
    )
    client_id: str | None = Field(
        default=None,
        description="MQTT client id, unique per node; a random one when unset (required "
        "with clean_session: false)",
    )
    clean_session: bool = Field(
        default=True,
        description="false keeps this node's subscriptions and its queued QoS 1 messages "
        "at the broker while it is away (needs a fixed client_id)",
    )
    node: str | None = Field(
        default=None, description="name in this node's heartbeat topic; the client id when unset"
    )
    keepalive: int = Field(
        default=30,
        ge=2,
        le=65535,
        description="seconds between MQTT pings; a dead link is noticed after 1.5x this",
    )
    connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=315_360_000,
        description="seconds to wait for the broker when connecting",
    )
    reconnect_min_s: float = Field(
        default=0.2, gt=0, le=315_360_000, description="first reconnect delay in seconds"
    )
    reconnect_max_s: float = Field(
        default=10.0,
        gt=0,
        le=315_360_000,
        description="longest reconnect delay; the delay doubles up to this",
    )
    reconnect_jitter: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="fraction of each reconnect delay that is random, so that many nodes "
        "do not reconnect in lockstep",
    )
    max_queued: int = Field(
        default=100_000,
        ge=1,
        description="messages buffered while the broker is slow or away; QoS 1 messages "
        "beyond this are dropped with a warning",
    )
    max_inflight: int = Field(
        default=1000,
        ge=1,
        le=65535,
        description="QoS 1 MQTT publishes (single messages or batch frames) sent but not "
        "yet acknowledged",
    )
    batch_max_messages: int = Field(
        default=256,
        ge=1,
        description="most messages of one topic sent together in one batch frame; 1 sends "
        "every message alone, in the single-envelope form older quoteforge versions read",
    )
    batch_max_bytes: int = Field(
        default=65536,
        ge=1,
        description="a batch frame is closed before it grows past this many bytes (a "
        "single larger message still travels alone)",
    )
    linger_us: int = Field(
        default=100,
        ge=0,
        le=1_000_000,
        description="a message published less than this many microseconds after the "
        "previous send waits until then, to leave together with what follows; a message "
        "after a quiet spell leaves at once. Bounds MQTT publishes to about 1/linger per "
        "second under a steady stream; 0 sends at every event-loop pass",
    )
    dedup_capacity: int = Field(
        default=100_000,
        ge=1,
        description="message ids remembered to apply each message at most once",
    )
    heartbeat_interval_s: float = Field(
        default=5.0,
        ge=0,
        le=315_360_000,
        description="seconds between heartbeats on heartbeat/<node>; 0 disables",
    )
    close_timeout_s: float = Field(
        default=3.0,
        ge=0,
        le=315_360_000,
        description="seconds close() waits for queued messages to reach the broker",
    )
    signing_key: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key shared by the nodes of a run: every frame is signed "
        "with it and frames not signed with it are refused. Write ${QUOTEFORGE_BUS_KEY} "
        f"(at least {MIN_KEY_BYTES} bytes, e.g. openssl rand -hex 32), never the key itself",
    )
    key_id: str = Field(
        default="k1",
        pattern=r"^[A-Za-z0-9._:@-]{1,64}$",
        description="name of signing_key, sent with every signed frame; change it with "
        "the key so a node holding the old key says so clearly",
    )
    max_age_s: float = Field(
        default=60.0,
        gt=0,
        le=315_360_000,
        description="signed frames sent more than this many seconds from this machine's "
        "clock are refused as replays; covers clock skew and time queued at the broker",
    )
    insecure: bool = Field(
        default=False,
        description="let a split run connect anonymously, over plain TCP to another "
        "machine, or without signing_key; for throwaway test brokers only (warned at "
        "every start)",
    )

    @field_validator("client_id", "node")
    @classmethod
    def _one_level(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/+#\x00")):
            raise ValueError(
                f"{value!r} must be non-empty without '/', '+' or '#' (it becomes a topic level)"
            )
        return value

    @field_validator("signing_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(
                f"signing_key is shorter than {MIN_KEY_BYTES} bytes: use a random key, "
                "e.g. export QUOTEFORGE_BUS_KEY=$(openssl rand -hex 32)"
            )
        return value

    def security_problems(self) -> list[str]:
        """What makes this connection unfit for a split run that trades: anonymous
        access, plain TCP to another machine, or unsigned messages. Empty when sound."""
        problems: list[str] = []
        if self.username is None and (self.tls is None or self.tls.cert_file is None):
            problems.append(
                "the bus connects anonymously: set username and password "
                "(username: '{role}', password: ${QF_MQTT_PASSWORD}) or a TLS client "
                "certificate (tls.cert_file)"
            )
        if self.tls is None and not _is_loopback(self.host):
            problems.append(
                f"the broker {self.host} is not on this machine and the connection is plain "
                "TCP: set tls.ca_file (and port 8883) so credentials and orders are encrypted"
            )
        if self.signing_key is None:
            problems.append(
                "bus messages are not signed: set signing_key: ${QUOTEFORGE_BUS_KEY} and "
                "export the same random key on every node (openssl rand -hex 32)"
            )
        return problems

    @model_validator(mode="after")
    def _consistent(self) -> MqttParams:
        if self.password is not None and self.username is None:
            raise ValueError("password is set without username: set both or neither")
        if not self.clean_session and self.client_id is None:
            raise ValueError(
                "clean_session: false needs a fixed client_id, so the broker can find this "
                "node's session again after a reconnect"
            )
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) is larger than reconnect_max_s "
                f"({self.reconnect_max_s})"
            )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    __slots__ = ("data", "qos", "retain", "topic")

    def __init__(self, topic: str, data: bytes, qos: int, retain: bool) -> None:
        self.topic = topic
        self.data = data
        self.qos = qos
        self.retain = retain


class _BufferedSocket:
    """The broker socket as paho sees it, reads served from a buffer.

    paho reads every packet with two or three ``recv`` calls (type byte, length bytes,
    body); here one ``recv`` per socket wakeup fills the buffer and the rest are slices
    of it. ``pending()`` is how aiomqtt's reader already asks TLS sockets for bytes read
    but not yet used, so it keeps reading packets until the buffer is empty.
    """

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            buf = self._sock.recv(size if size > _READ_CHUNK else _READ_CHUNK)
            if not buf:
                return buf
            self._buf = buf
            pos = 0
        end = pos + size
        self._pos = end if end < len(buf) else len(buf)
        return buf[pos:end]

    def send(self, data: bytes | bytearray) -> int:
        return self._sock.send(data)

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)  # ssl.SSLSocket has it
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@functools.cache
def _matcher_type() -> type:
    from paho.mqtt.matcher import MQTTMatcher

    class CallbackFilters(MQTTMatcher):
        """paho's table of per-filter message callbacks, which the bus leaves empty.

        paho looks every received message up in it, and the lookup builds a recursive
        closure each time: a reference cycle, garbage that only the cyclic collector
        frees, whose runs then pause the event loop. Empty, the lookup answers at once.
        """

        def iter_match(self, topic: str) -> Any:
            if not self._root._children:
                return ()
            return super().iter_match(topic)

    return CallbackFilters


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


_NO_POLICY = Delivery(qos=0, retain=False)


class MqttBus(Bus):
    """Bus over an MQTT broker: QoS 1 messages survive broker outages, every message
    id is applied once, and subscriptions come back after a reconnect."""

    Params = MqttParams

    def __init__(self, params: MqttParams | None = None, run_id: str = "") -> None:
        self.params = params if params is not None else MqttParams()
        self.topics = TopicScheme(run_id or "default")
        self.client_id = self.params.client_id or f"qf-{secrets.token_hex(6)}"
        self.node = self.params.node or self.client_id
        # Distinct per bus instance so a restarted publisher starts a fresh sequence
        # instead of looking like a stream of duplicates.
        self.source = f"{self.client_id}.{secrets.token_hex(3)}"
        self.stats = MqttStats()
        self._signer: FrameSigner | None = None
        self._verifier: FrameVerifier | None = None
        if self.params.signing_key is not None:
            key = self.params.signing_key.get_secret_value().encode()
            # The signer's name is fresh per bus instance: a restarted node counts its
            # frames from 1 again without looking like a replay of its earlier self.
            sender = re.sub(r"[^A-Za-z0-9._:@-]", "_", self.client_id)[:48]
            self._signer = FrameSigner(key, self.params.key_id, f"{sender}.{secrets.token_hex(4)}")
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

    # -- public API ---------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def signed(self) -> bool:
        """Whether this bus signs what it sends and refuses what is not signed."""
        return self._signer is not None

    @property
    def queued(self) -> int:
        """Messages waiting to be handed to the broker."""
        return len(self._queue)

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

    def publish(
        self,
        topic: str,
        payload: dict[str, Any],
        *,
        qos: int = 0,
        retain: bool = False,
        msg_id: str | None = None,
    ) -> None:
        """Queue ``payload`` for ``topic``; never blocks.

        Topics of the quoteforge scheme get at least their kind's QoS and retain flag.
        QoS 0 messages are dropped while the broker is away; QoS 1 messages are kept
        (up to ``max_queued``) and sent after the reconnect. A QoS 1 message without a
        ``msg_id`` gets one, so a redelivery is still applied once.
        """
        if self._closed:
            raise RuntimeError(f"publish on {topic!r}: the bus is closed")
        delivery = self._policy.get(topic)
        if delivery is None:
            delivery = self._policy_for(topic)
        if delivery.qos > qos:
            qos = delivery.qos
        elif qos not in (0, 1, 2):
            raise ValueError(f"qos {qos!r} on {topic!r}: MQTT QoS is 0, 1 or 2")
        retain = retain or delivery.retain
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        if msg_id is None and qos:
            msg_id = f"{self.source}:{next(self._ids)}"
        data = self._codec.encode(payload, msg_id=msg_id, seq=seq, source=self.source)
        if not qos and self._paho is None:  # not connected
            self.stats.dropped_disconnected += 1
            return
        if len(self._queue) >= self.params.max_queued:
            self._overflow(topic)
            return
        self._queue.append(_Outgoing(topic, data, qos, retain))
        self._idle.clear()
        if not self._pump_scheduled and self._paho is not None:
            # Sent at the next loop pass, together with whatever else this pass
            # publishes (same-topic neighbours share one batch frame); while the bus is
            # busy, at linger_us after the last send, together with what came meanwhile.
            self._pump_scheduled = True
            loop: asyncio.AbstractEventLoop = self._loop  # type: ignore[assignment]
            due = self._last_send + self._linger
            if loop.time() >= due:
                loop.call_soon(self._pump)
            else:
                loop.call_at(due, self._pump)

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

    # -- publishing internals -----------------------------------------------------------
    def _policy_for(self, topic: str) -> Delivery:
        validate_topic(topic)
        delivery = parse_topic(topic).delivery if topic.startswith(ROOT + "/") else _NO_POLICY
        self._policy[topic] = delivery
        return delivery

    def _overflow(self, topic: str) -> None:
        self.stats.dropped_overflow += 1
        if not self._overflowing:
            self._overflowing = True
            state = "is too slow" if self.connected else "is unreachable"
            logger.warning(
                "MQTT publish buffer of bus {} is full ({} messages; broker {}:{} {}): "
                "dropping new messages, first on {!r}; raise max_queued or fix the broker",
                self.client_id,
                self.params.max_queued,
                self.params.host,
                self.params.port,
                state,
                topic,
            )

    def _heartbeat(self, status: str, reason: str = "") -> dict[str, Any]:
        beat: dict[str, Any] = {"status": status, "node": self.node, "client_id": self.client_id}
        if reason:
            beat["reason"] = reason
        if status == "online":
            beat["queued"] = len(self._queue)
            if self._verifier is not None:
                refused = self._verifier.refused
                beat["refused"] = sum(refused.values())
                beat["refused_by"] = {reason: n for reason, n in refused.items() if n}
        return beat

    def _pump(self) -> None:
        """Hand queued messages to paho as frames and write them out, until the queue is
        empty, the socket is full or the QoS 1 window is.

        Consecutive queued messages with the same topic and QoS share one batch frame;
        retained messages always travel alone, so a late subscriber gets exactly the last
        value. Messages stay in our queue while the socket is full, so a burst coalesces
        into a few large frames instead of many small ones.
        """
        self._pump_scheduled = False
        client = self._paho
        if client is None or self._subscribing or self._pending_filters:
            return  # _control_loop pumps again once the subscriptions are in place
        queue = self._queue
        inflight = self._inflight
        window = self.params.max_inflight
        batch_messages = self.params.batch_max_messages
        batch_bytes = self.params.batch_max_bytes
        self._pumping = True
        sent = False
        try:
            while True:
                if client.want_write() and not self._flush_socket(client):
                    break  # the socket is full: _on_writable pumps again
                if not queue:
                    break
                first = queue[0]
                if first.qos and len(inflight) >= window:
                    self._window_full = True
                    break  # _on_publish pumps again when an acknowledgement arrives
                frame = [queue.popleft()]
                if not first.retain and batch_messages > 1:
                    topic, qos = first.topic, first.qos
                    size = len(first.data)
                    while queue and len(frame) < batch_messages:
                        nxt = queue[0]
                        if nxt.topic != topic or nxt.qos != qos or nxt.retain:
                            break
                        size += len(nxt.data) + 1
                        if size > batch_bytes:
                            break
                        frame.append(queue.popleft())
                data = (
                    first.data
                    if len(frame) == 1
                    else self._codec.encode_batch([m.data for m in frame])
                )
                if self._signer is not None:
                    # Signed as it leaves: a frame sent again after a reconnect gets a
                    # fresh counter and time, so receivers take it as new, not a replay.
                    data = self._signer.sign(first.topic, data)
                info = client.publish(first.topic, data, first.qos, first.retain)
                if info.rc:
                    # The connection is going away; _on_disconnected sorts the queue out.
                    queue.extendleft(reversed(frame))
                    break
                self.stats.frames_published += 1
                sent = True
                if first.qos:
                    if not inflight:
                        client.on_publish = self._on_publish
                    inflight[info.mid] = frame
                else:
                    self._unwritten.append((info, len(frame)))
        finally:
            self._pumping = False
        if sent and self._loop is not None:
            self._last_send = self._loop.time()
        if client is self._paho:
            self._reap_written(client)
            self._check_idle()

    def _flush_socket(self, client: paho.Client) -> bool:
        """Write what paho holds; False (and the socket watched) when some is left."""
        try:
            client.loop_write()
        except Exception as exc:
            self._broken(exc)
            return False
        if client.want_write():
            self._watch_writable(client)
            return False
        return True

    def _write(self, client: paho.Client) -> None:
        self._flush_socket(client)
        if client is self._paho:
            self._reap_written(client)
            self._check_idle()

    def _reap_written(self, client: paho.Client) -> None:
        unwritten = self._unwritten
        if not unwritten:
            return
        if not client.want_write():
            self.stats.published += sum(n for _, n in unwritten)
            unwritten.clear()
            return
        while unwritten and unwritten[0][0].is_published():
            self.stats.published += unwritten.popleft()[1]

    def _watch_writable(self, client: paho.Client) -> None:
        sock = client.socket()
        if sock is None or self._loop is None:
            return
        fd = sock.fileno()
        if fd != self._writer_fd:
            self._loop.add_writer(fd, self._on_writable, client)
            self._writer_fd = fd

    def _on_writable(self, client: paho.Client) -> None:
        if self._flush_socket(client) and self._queue and client is self._paho:
            self._pump()
        elif client is self._paho:
            self._reap_written(client)
            self._check_idle()

    def _write_soon(self, client: paho.Client) -> None:
        self._write_scheduled = False
        self._write(client)

    # paho calls these when it has bytes to send and when it has sent them all. They
    # replace aiomqtt's, which wake the loop through its self-pipe and register the
    # socket with the selector for every burst of packets; writing directly at the next
    # loop pass (or right away, in _pump) saves both.
    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() != self._loop_thread:
            # paho connects in an executor thread: the CONNECT packet comes from there.
            loop.call_soon_threadsafe(self._write, client)
        elif not self._pumping and not self._write_scheduled:
            self._write_scheduled = True
            loop.call_soon(self._write_soon, client)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        loop = self._loop
        fd = sock.fileno()
        if loop is None or fd < 0:
            return
        if threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._unwatch_writable, fd)
        else:
            self._unwatch_writable(fd)

    def _unwatch_writable(self, fd: int) -> None:
        if fd == self._writer_fd and self._loop is not None:
            self._loop.remove_writer(fd)
            self._writer_fd = -1

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        """paho: a QoS 1 frame was acknowledged (or a QoS 0 frame written)."""
        frame = self._inflight.pop(mid, None)
        if frame is None:
            return
        self.stats.published += len(frame)
        if not self._inflight:
            # Unset while nothing awaits an acknowledgement: paho builds two objects for
            # every call, QoS 0 frames included.
            client.on_publish = None
        if self._window_full and not self._pump_scheduled and self._loop is not None:
            self._window_full = False
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)
        self._check_idle()

    def _broken(self, exc: BaseException) -> None:
        """A write failed outside paho's own error handling: drop the connection."""
        logger.warning("bus {} lost its MQTT connection while writing: {!r}", self.client_id, exc)
        disconnected = getattr(self._client, "_disconnected", None)
        if isinstance(disconnected, asyncio.Future) and not disconnected.done():
            disconnected.set_exception(exc)

    def _check_idle(self) -> None:
        if (
            self._queue
            or self._inflight
            or self._unwritten
            or self._pending_filters
            or self._subscribing
        ):
            return
        if self._overflowing:
            self._overflowing = False
            logger.info(
                "MQTT publish buffer of bus {} drained; {} message(s) were dropped in total",
                self.client_id,
                self.stats.dropped_overflow,
            )
        self._idle.set()

    async def _control_loop(self, client: aiomqtt.Client) -> None:
        """Send subscriptions (publishing waits for them, so that a subscribe followed by
        a publish is in place at the broker before the publish arrives)."""
        while True:
            if self._pending_filters:
                self._subscribing = True
                try:
                    await self._subscribe_at_broker(client)
                finally:
                    self._subscribing = False
                continue
            self._wakeup.clear()
            if self._queue:
                self._pump()
            self._check_idle()
            await self._wakeup.wait()

    async def _subscribe_at_broker(self, client: aiomqtt.Client) -> None:
        filters = list(dict.fromkeys(self._pending_filters))
        self._pending_filters = []
        try:
            granted = await client.subscribe([(f, 1) for f in filters])
        except BaseException:
            self._pending_filters[:0] = filters
            raise
        for pattern, code in zip(filters, granted, strict=False):
            value = getattr(code, "value", code)
            if isinstance(value, int) and value >= 0x80:
                logger.error(
                    "MQTT broker refused the subscription {!r} of bus {} (user {!r}): check "
                    "the broker ACL",
                    pattern,
                    self.client_id,
                    self.params.username,
                )

    # -- receiving internals ------------------------------------------------------------
    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        """paho: a PUBLISH arrived; dispatch it right here, on the event loop."""
        try:
            self._deliver(message.topic, message.payload, message.qos, message.retain)
        except Exception:
            # Never let it reach paho: it would drop the connection over one message.
            logger.opt(exception=True).error("bus {} failed to deliver", self.client_id)

    def _deliver(self, topic: str, data: bytes | bytearray, qos: int, retained: bool) -> None:
        verifier = self._verifier
        if verifier is not None:
            try:
                data = verifier.open(topic, data, retained=retained)
            except SignatureError as exc:
                self._refused(topic, exc)
                return
        elif data[:4] == b"QFS1":
            data = strip_signature(data)
        try:
            items = self._codec.decode_frame(data)
        except DecodeError as exc:
            self._undecodable(topic, exc)
            return
        stats = self.stats
        stats.frames_received += 1
        routes = self._routes.get(topic)
        if routes is None:
            routes = [h for p, h in self._handlers if topic_matches(p, topic)]
            self._routes[topic] = routes
        for envelope in items:
            if not isinstance(envelope, Envelope):
                self._undecodable(topic, envelope)
                continue
            # A retained value arriving because of a (re)subscription is a repeat by
            # design, not a redelivery: it bypasses the duplicate and gap checks.
            if not retained:
                if not qos:
                    missing = self._gaps.observe(envelope.source, topic, envelope.seq)
                    if missing:
                        if missing < 0:
                            stats.duplicates += 1
                            continue
                        stats.gaps += 1
                        stats.missed += missing
                        for listener in self._gap_listeners:
                            self._call_safely(listener, topic, envelope.source, missing)
                if envelope.msg_id is not None and not self._seen.first_time(envelope.msg_id):
                    stats.duplicates += 1
                    continue
            stats.received += 1
            payload = envelope.payload
            for handler in routes:
                try:
                    handler(topic, payload)
                except Exception:
                    self._handler_failed(handler, topic)

    def _refused(self, topic: str, exc: SignatureError) -> None:
        held = self._log_limit.allow(f"refused:{exc.reason}")
        if held is not None:
            logger.warning(
                "bus {} refused a frame on {!r}: {} ({}; {} more {} refusals not logged, "
                "{} refused in all)",
                self.client_id,
                topic,
                exc.reason,
                exc,
                held,
                exc.reason,
                self.stats.refused_total,
            )

    def _undecodable(self, topic: str, exc: DecodeError) -> None:
        self.stats.decode_errors += 1
        held = self._log_limit.allow("decode:" + topic)
        if held is not None:
            logger.warning(
                "bus {} dropped an undecodable message on {!r}: {} ({} more not logged)",
                self.client_id,
                topic,
                exc,
                held,
            )

    def _call_safely(self, func: Callable[..., None], *args: Any) -> None:
        try:
            func(*args)
        except Exception:
            self._handler_failed(func, args[0])

    def _handler_failed(self, func: Callable[..., None], topic: str) -> None:
        """Count and log (rate-limited) the exception being handled."""
        self.stats.handler_errors += 1
        name = getattr(func, "__qualname__", repr(func))
        held = self._log_limit.allow(f"handler:{name}")
        if held is not None:
            logger.opt(exception=True).error(
                "bus handler {} failed on {!r} ({} more failures not logged)",
                name,
                topic,
                held,
            )

    async def _receive_loop(self, client: aiomqtt.Client) -> None:
        # Messages are dispatched by _on_message; iterating is how aiomqtt reports the
        # connection going away.
        async for message in client.messages:
            self._deliver(message.topic.value, message.payload, message.qos, message.retain)

    async def _heartbeat_loop(self) -> None:
        topic = self.topics.heartbeat(self.node)
        while True:
            await asyncio.sleep(self.params.heartbeat_interval_s)
            self.publish(topic, self._heartbeat("online"))

    # -- connection ---------------------------------------------------------------------
    def _make_client(self, aiomqtt_module: Any) -> aiomqtt.Client:
        p = self.params
        tls_params = None
        tls_insecure = None
        if p.tls is not None:
            tls_params = aiomqtt_module.TLSParameters(
                ca_certs=str(p.tls.ca_file) if p.tls.ca_file else None,
                certfile=str(p.tls.cert_file) if p.tls.cert_file else None,
                keyfile=str(p.tls.key_file) if p.tls.key_file else None,
            )
            tls_insecure = p.tls.insecure
        will_topic = self.topics.heartbeat(self.node)
        will_payload = self._codec.encode(
            self._heartbeat("offline", "connection lost"), msg_id=None, seq=0, source=self.source
        )
        if self._signer is not None:
            will_payload = self._signer.sign_will(will_topic, will_payload)
        client: aiomqtt.Client = aiomqtt_module.Client(
            p.host,
            p.port,
            username=p.username,
            password=p.password.get_secret_value() if p.password is not None else None,
            identifier=self.client_id,
            will=aiomqtt_module.Will(will_topic, will_payload, qos=1, retain=True),
            clean_session=p.clean_session,
            keepalive=p.keepalive,
            timeout=p.connect_timeout_s,
            # The window is ours (_pump stops at max_inflight unacknowledged frames).
            # paho's own limit would re-scan every unacknowledged message on every
            # acknowledgement, to find queued ones to send.
            max_inflight_messages=0,
            tls_params=tls_params,
            tls_insecure=tls_insecure,
        )
        # The per-message path runs on the paho client (see _pump and _on_message);
        # aiomqtt keeps the connection, its errors, subscriptions and the will.
        inner = client._client
        inner.on_socket_open = self._socket_opener(inner.on_socket_open)
        inner.on_message = self._on_message
        inner._on_message_filtered = _matcher_type()()
        inner.on_publish = None
        inner.on_socket_register_write = self._on_register_write
        inner.on_socket_unregister_write = self._on_unregister_write
        return client

    @staticmethod
    def _socket_opener(aiomqtt_open: Any) -> Any:
        def on_socket_open(client: paho.Client, userdata: Any, sock: Any) -> None:
            if isinstance(sock, socket.socket):  # TCP or TLS; not a websocket
                # Without this, Nagle's algorithm holds small publishes back until the
                # previous segment is acknowledged: tens of milliseconds on a quiet link.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock = _BufferedSocket(sock)
                client._sock = sock
            aiomqtt_open(client, userdata, sock)

        return on_socket_open

    async def _run(self) -> None:
        import aiomqtt

        attempt = 0
        while not self._stop.is_set():
            client = self._make_client(aiomqtt)
            reason = ""
            try:
                async with client:
                    attempt = 0
                    self._on_connected(client)
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                reason = str(exc) or type(exc).__name__
                code = getattr(getattr(exc, "rc", None), "value", getattr(exc, "rc", None))
                if code in _AUTH_REFUSED:
                    error = BusConnectError(
                        f"MQTT broker {self.params.host}:{self.params.port} refused bus "
                        f"{self.client_id} (user {self.params.username!r}): {reason}; check "
                        "username/password and the broker's password file and ACL"
                    )
                    if self._first_outcome is not None and not self._first_outcome.done():
                        self._resolve_first(error)  # start() is waiting: fail it
                        return
                    logger.error("{}", error)
            finally:
                self._on_disconnected()
            if self._stop.is_set():
                return
            delay = min(self.params.reconnect_max_s, self.params.reconnect_min_s * 2**attempt)
            delay *= 1 - self.params.reconnect_jitter * self._rng.random()
            attempt += 1
            logger.warning(
                "MQTT broker {}:{} {} ({}); bus {} retries in {:.2f}s with {} message(s) queued",
                self.params.host,
                self.params.port,
                "connection lost" if self._ever_connected else "unreachable",
                reason or "disconnected",
                self.client_id,
                delay,
                len(self._queue),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def _on_connected(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._paho = client._client
        self.stats.connects += 1
        if self._ever_connected:
            logger.info("bus {} reconnected to MQTT broker", self.client_id)
        self._ever_connected = True
        # Every filter is sent again: a clean session starts with none at the broker.
        self._pending_filters = list(self._filters)
        self._connected.set()
        self._resolve_first(None)
        self.publish(self.topics.heartbeat(self.node), self._heartbeat("online"))

    def _on_disconnected(self) -> None:
        self._connected.clear()
        self._paho = None
        self._client = None
        self._pump_scheduled = False
        self._window_full = False
        if self._writer_fd >= 0:
            self._unwatch_writable(self._writer_fd)
        # QoS 0 frames paho had not written yet are lost with the connection; QoS 1
        # frames not acknowledged go back to the front of the queue, oldest first, and
        # are sent again after the reconnect (receivers drop what they already have).
        for info, count in self._unwritten:
            if info.is_published():
                self.stats.published += count
            else:
                self.stats.dropped_disconnected += count
        self._unwritten.clear()
        if self._inflight:
            retry = [m for frame in self._inflight.values() for m in frame]
            self._inflight.clear()
            self._queue.extendleft(reversed(retry))
        # Book and trade messages queued for a connection that is gone are stale now.
        stale = sum(1 for m in self._queue if not m.qos)
        if stale:
            self.stats.dropped_disconnected += stale
            self._queue = deque(m for m in self._queue if m.qos)
        self._check_idle()  # nothing left to send: flush() need not wait for a reconnect

    def _resolve_first(self, error: BaseException | None) -> None:
        first = self._first_outcome
        if first is not None and not first.done():
            if error is None:
                first.set_result(None)
            else:
                first.set_exception(error)

    async def _serve(self, client: aiomqtt.Client) -> None:
        tasks = [
            asyncio.ensure_future(self._receive_loop(client)),
            asyncio.ensure_future(self._control_loop(client)),
            asyncio.ensure_future(self._stop.wait()),
        ]
        if self.params.heartbeat_interval_s > 0:
            tasks.append(asyncio.ensure_future(self._heartbeat_loop()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _stop_runner(self) -> None:
        self._stop.set()
        runner = self._runner
        if runner is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(runner), self.params.connect_timeout_s)
        except TimeoutError:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        except Exception:
            logger.opt(exception=True).debug("bus {} runner ended with an error", self.client_id)


@hookimpl
def quoteforge_register_bus_backends(register: Register) -> None:
    register(
        "mqtt",
        MqttBus,
        params=MqttParams,
        description="MQTT broker bus (Mosquitto, EMQX) for nodes on several machines",
        requires=("aiomqtt",),
    )
