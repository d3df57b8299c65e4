"""The sending side of the MQTT bus: ``publish`` queues, ``_pump`` hands the queue to
paho as frames (consecutive messages of one topic share a batch frame, signed as they
leave), and the socket is written directly from the event loop, with the QoS 1 window
and the QoS 0 write-out tracked for ``flush`` and the statistics."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge.plugins.distributed.mqtt_state import _MqttCore, _Outgoing
from quoteforge.plugins.distributed.topics import (
    ROOT,
    Delivery,
    parse_topic,
    retained_by_policy,
    validate_topic,
)

if TYPE_CHECKING:
    import paho.mqtt.client as paho

__all__: list[str] = []


_NO_POLICY = Delivery(qos=0, retain=False)


class _MqttSender(_MqttCore):
    """Publishing and the write path of one bus."""

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

        Topics of the quoteforge scheme get at least their kind's QoS and retain flag;
        ``retain=True`` on one of the project's topics that are never retained is a
        ValueError (every receiver would refuse it as a replay). QoS 0 messages are
        dropped while the broker is away; QoS 1 messages are kept (up to
        ``max_queued``) and sent after the reconnect. A QoS 1 message without a
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
        if retain and not delivery.retain and not retained_by_policy(topic):
            raise ValueError(
                f"retain=True on {topic!r}: of quoteforge's topics only heartbeat/ and state/ "
                "are retained; receivers refuse a retained message on any other as a replay"
            )
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
