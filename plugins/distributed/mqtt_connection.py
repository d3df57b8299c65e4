"""The connection of the MQTT bus to its broker: aiomqtt keeps the session (TLS,
credentials, last will, subscriptions) and reconnects with jittered backoff, while the
per-message paths run on its paho client, whose socket is wrapped for fewer reads and
whose write notifications are taken over (see ``mqtt_send``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge.plugins.distributed.mqtt_receive import _MqttReceiver
from quoteforge.plugins.distributed.mqtt_send import _MqttSender

if TYPE_CHECKING:
    import aiomqtt
    import paho.mqtt.client as paho

__all__ = ["BusConnectError"]

# MQTT 3.1.1 CONNACK codes 4/5 and their MQTT 5 equivalents (paho reports either).
_AUTH_REFUSED = {4, 5, 134, 135}
_READ_CHUNK = 65536


class BusConnectError(ConnectionError):
    """The broker refused this node (bad credentials or not authorised)."""


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


class _MqttConnection(_MqttSender, _MqttReceiver):
    """Connecting, reconnecting and serving one bus's broker connection."""

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
