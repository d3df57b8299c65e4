"""The message bus: one interface, an in-process backend here and MQTT as a plugin.

Topics are ``/``-separated with MQTT wildcards in subscriptions (``+`` one level, ``#``
the rest). Payloads are dicts of JSON-compatible values. A message published with a
``msg_id`` is delivered to a subscriber at most once per id, so a redelivered order
intent or fill is applied once whatever the backend does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["Bus", "Handler", "InProcessBus", "topic_matches"]

Handler = Callable[[str, dict[str, Any]], None]


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` this level and below)."""
    if pattern == topic:
        return True
    p_parts = pattern.split("/")
    t_parts = topic.split("/")
    for i, part in enumerate(p_parts):
        if part == "#":
            return True
        if i >= len(t_parts):
            return False
        if part != "+" and part != t_parts[i]:
            return False
    return len(p_parts) == len(t_parts)


class SeenIds:
    """A bounded memory of message ids already applied (exactly-once on redelivery)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def first_time(self, msg_id: str) -> bool:
        if msg_id in self._ids:
            return False
        self._ids[msg_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True


class Bus(ABC):
    """Base class of bus backends."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def publish(
        self,
        topic: str,
        payload: dict[str, Any],
        *,
        qos: int = 0,
        retain: bool = False,
        msg_id: str | None = None,
    ) -> None:
        """Send ``payload`` on ``topic``; never blocks."""

    @abstractmethod
    def subscribe(self, pattern: str, handler: Handler) -> None:
        """Call ``handler(topic, payload)`` for every message matching ``pattern``."""


class InProcessParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class InProcessBus(Bus):
    """Synchronous delivery inside one process: the default, and the fastest."""

    Params = InProcessParams

    def __init__(self, params: BaseModel | None = None, run_id: str = "") -> None:
        self._exact: dict[str, list[Handler]] = {}
        self._wild: list[tuple[str, Handler]] = []
        self._retained: dict[str, dict[str, Any]] = {}
        self._seen = SeenIds()
        self._route_cache: dict[str, list[Handler]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._exact.clear()
        self._wild.clear()
        self._route_cache.clear()

    def subscribe(self, pattern: str, handler: Handler) -> None:
        if "+" in pattern or "#" in pattern:
            self._wild.append((pattern, handler))
        else:
            self._exact.setdefault(pattern, []).append(handler)
        self._route_cache.clear()
        for topic, payload in list(self._retained.items()):
            if topic_matches(pattern, topic):
                handler(topic, payload)

    def _routes(self, topic: str) -> list[Handler]:
        routes = self._route_cache.get(topic)
        if routes is None:
            routes = list(self._exact.get(topic, ()))
            routes.extend(h for p, h in self._wild if topic_matches(p, topic))
            self._route_cache[topic] = routes
        return routes

    def publish(
        self,
        topic: str,
        payload: dict[str, Any],
        *,
        qos: int = 0,
        retain: bool = False,
        msg_id: str | None = None,
    ) -> None:
        if msg_id is not None and not self._seen.first_time(msg_id):
            return
        if retain:
            self._retained[topic] = payload
        for handler in self._routes(topic):
            handler(topic, payload)
