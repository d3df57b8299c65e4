"""The receiving side of the MQTT bus: each PUBLISH paho reads is checked (signature,
and a retained value only where the topic's policy retains), decoded (single or batch
frame), filtered (duplicates, QoS 0 gaps) and handed to the matching handlers right on
the event loop, without a queue or a task; failures are counted and logged at a
bounded rate."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge.bus import topic_matches
from quoteforge.plugins.distributed.codec import RETAINED_DELIVERY
from quoteforge.plugins.distributed.mqtt_state import _MqttCore
from quoteforge.plugins.distributed.topics import (
    DecodeError,
    Envelope,
    SignatureError,
    retained_by_policy,
    strip_signature,
)

if TYPE_CHECKING:
    import aiomqtt
    import paho.mqtt.client as paho

__all__: list[str] = []


_NOT_RETAINED = (
    "arrived retained on a topic whose messages are never retained (only heartbeat/ and "
    "state/ are): a copy put back at the broker"
)


class _MqttReceiver(_MqttCore):
    """Delivery of received frames to the handlers of one bus."""

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
        if retained and not retained_by_policy(topic):
            # Retained frames skip the age, counter and duplicate checks (they are old
            # by nature); where nothing is ever retained, one is a copy someone put back.
            self.stats.refused["replayed"] += 1
            self._refused(topic, SignatureError("replayed", _NOT_RETAINED))
            return
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
            # Handlers judge the age of a retained value only (``was_retained``): one
            # published now is fresh whatever clock stamped it.
            mark = RETAINED_DELIVERY.set(True) if retained else None
            try:
                for handler in routes:
                    try:
                        handler(topic, payload)
                    except Exception:
                        self._handler_failed(handler, topic)
            finally:
                if mark is not None:
                    RETAINED_DELIVERY.reset(mark)

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
