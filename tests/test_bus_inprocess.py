"""The in-process bus as a registered backend: wildcards, retained values, msg ids."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from quoteforge.bus import Bus, InProcessBus, InProcessParams
from quoteforge.plugins import bus_inprocess
from quoteforge.plugins.distributed.topics import TopicScheme
from quoteforge.registry import PluginRegistry


@pytest.fixture
async def bus() -> Bus:
    registry = PluginRegistry()
    record = registry.register_module(bus_inprocess, name="bus_inprocess")
    assert record.loaded, record.error
    reg = registry.get("bus", "inprocess")
    instance = reg.factory(reg.params(), "run1")
    await instance.start()
    return instance


def test_registered_with_a_closed_schema() -> None:
    registry = PluginRegistry()
    registry.register_module(bus_inprocess, name="bus_inprocess")
    reg = registry.get("bus", "inprocess")
    assert reg.params is InProcessParams
    assert reg.requires == ()
    assert "one process" in reg.description
    with pytest.raises(ValidationError, match="extra"):
        InProcessParams(host="x")  # type: ignore[call-arg]


async def test_factory_builds_an_inprocess_bus(bus: Bus) -> None:
    assert isinstance(bus, InProcessBus)


async def test_wildcards_route_only_matching_topics(bus: Bus) -> None:
    t = TopicScheme("run1")
    books: list[str] = []
    everything: list[str] = []
    bus.subscribe("quoteforge/run1/book/+/BTC-USDT", lambda topic, p: books.append(topic))
    bus.subscribe(t.everything(), lambda topic, p: everything.append(topic))
    bus.publish(t.book("binance", "BTC/USDT"), {})
    bus.publish(t.book("binance", "ETH/USDT"), {})
    bus.publish(t.fill("binance"), {})
    bus.publish("quoteforge/run2/fill/binance", {})
    assert books == [t.book("binance", "BTC/USDT")]
    assert everything == [
        t.book("binance", "BTC/USDT"),
        t.book("binance", "ETH/USDT"),
        t.fill("binance"),
    ]


async def test_retained_last_value_reaches_a_late_subscriber(bus: Bus) -> None:
    t = TopicScheme("run1")
    bus.publish(t.state("risk"), {"v": 1}, retain=True)
    bus.publish(t.state("risk"), {"v": 2}, retain=True)
    got: list[dict[str, Any]] = []
    bus.subscribe("quoteforge/run1/state/#", lambda topic, p: got.append(p))
    assert got == [{"v": 2}]


async def test_a_msg_id_is_applied_once(bus: Bus) -> None:
    t = TopicScheme("run1")
    got: list[int] = []
    bus.subscribe(t.intent("mm1"), lambda topic, p: got.append(p["n"]))
    bus.publish(t.intent("mm1"), {"n": 1}, qos=1, msg_id="a")
    bus.publish(t.intent("mm1"), {"n": 2}, qos=1, msg_id="a")
    bus.publish(t.intent("mm1"), {"n": 3}, qos=1, msg_id="b")
    assert got == [1, 3]
