"""Retained replays: a client with broker access but without the bus key captures a
signed frame and re-publishes it retained, so that the broker hands it to every node that
subscribes later. Only heartbeats and state are retained by design; a retained frame on
any other topic is refused, counted and logged, signed or not."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from brokers import require_shared_broker
from loguru import logger
from node_rigs import wait_until
from pydantic import SecretStr

from quoteforge.engine import Run
from quoteforge.manifest import load_manifest
from quoteforge.plugins.bus_mqtt import MqttBus, MqttParams
from quoteforge.plugins.distributed.topics import (
    TopicScheme,
    retained_by_policy,
)
from quoteforge.registry import PluginRegistry

KEY = "0123456789abcdef0123456789abcdef"

MANIFEST = """\
run:
  name: {run}
  mode: sim
  duration: 30d
  seed: 7
exchanges:
  sim:
    type: sim
    params:
      markets:
        BTC/USDT:
          tick_size: "0.01"
          lot_size: "0.0001"
          initial_price: 30000
          process: {{model: brownian, sigma: 0.0001}}
          flow: {{arrival_rate: 2.0, reach: 15.0, size: 0.05}}
          liquidity: {{levels: 5, distance: 20.0, spacing: 5.0, size: 0.2}}
strategies:
  mm:
    type: pure_market_making
    exchange: sim
    symbols: BTC/USDT
    params: {{spread_bps: 4, order_size: 0.05, inventory_limit: 1.0}}
bus:
  type: mqtt
  params:
    host: 127.0.0.1
    port: {port}
    signing_key: ${{QUOTEFORGE_BUS_KEY}}
    heartbeat_interval_s: 0
report: {{html: false, png: false}}
"""


@pytest.fixture
def shared_broker() -> int:
    return require_shared_broker()


@pytest.fixture
async def buses() -> AsyncIterator[list[MqttBus]]:
    made: list[MqttBus] = []
    yield made
    for bus in made:
        await bus.close()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    yield lines
    logger.remove(sink)


def params(port: int, *, signed: bool = True, max_age_s: float = 60.0) -> MqttParams:
    return MqttParams(
        port=port,
        signing_key=SecretStr(KEY) if signed else None,
        max_age_s=max_age_s,
        heartbeat_interval_s=0,
        connect_timeout_s=3,
        close_timeout_s=1,
    )


async def started(made: list[MqttBus], p: MqttParams, run: str) -> MqttBus:
    bus = MqttBus(p, run)
    made.append(bus)
    await bus.start()
    return bus


async def plant_retained_copy(port: int, topic: str, send: Any) -> bytes:
    """What a keyless client with broker access does: capture the frame ``send()`` puts
    on ``topic`` and publish the same bytes again, retained."""
    async with aiomqtt.Client("127.0.0.1", port) as spy:
        await spy.subscribe(topic, qos=1)
        await send()
        async with asyncio.timeout(5):
            async for message in spy.messages:
                frame = bytes(message.payload)
                break
        await spy.publish(topic, frame, qos=1, retain=True)
    return frame


async def clear_retained(port: int, topic: str) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(topic, b"", qos=1, retain=True)


def test_only_heartbeat_and_state_topics_take_retained_values() -> None:
    t = TopicScheme("run1")
    retained = [t.heartbeat("strategy"), t.state("risk"), t.book_snapshot("sim", "BTC/USDT")]
    retained += [t.instruments("sim"), t.node_session("execution")]
    never = [t.kill(), t.breaker(), t.intent("mm"), t.order("sim"), t.fill("sim")]
    never += [t.book("sim", "BTC/USDT"), t.trade("sim", "BTC/USDT")]
    never += ["quoteforge/run1/nonsense/x", "quoteforge/run1"]  # not a topic of the scheme
    never += ["quoteforge-clock/run1/step", "quoteforge-reconcile/run1/answer/sim"]
    assert all(retained_by_policy(topic) for topic in retained)
    assert not any(retained_by_policy(topic) for topic in never)
    assert retained_by_policy("someone/else/topic")  # outside the project: its publisher's


@pytest.mark.parametrize(
    "kind", ["kill", "breaker", "intent", "order", "fill"], ids=lambda kind: kind
)
async def test_a_retained_copy_of_a_signed_frame_is_refused_by_a_later_subscriber(
    kind: str, shared_broker: int, buses: list[MqttBus], warnings: list[str]
) -> None:
    run = f"t{uuid.uuid4().hex[:10]}"
    t = TopicScheme(run)
    topic = {
        "kill": t.kill(),
        "breaker": t.breaker(),
        "intent": t.intent("mm"),
        "order": t.order("sim"),
        "fill": t.fill("sim"),
    }[kind]
    sender = await started(buses, params(shared_broker), run)

    async def send() -> None:
        sender.publish(topic, {"reason": "an operator's kill of an earlier run"}, qos=1)
        await sender.flush(5)

    try:
        frame = await plant_retained_copy(shared_broker, topic, send)
        assert frame.startswith(b"QFS1 ")  # signed, and fresh: well within max_age_s
        late = await started(buses, params(shared_broker), run)
        got: list[dict[str, Any]] = []
        late.subscribe(topic, lambda _, payload: got.append(payload))
        await late.flush(5)
        await wait_until(lambda: late.stats.refused["replayed"] == 1, 5, "the copy refused")
        await asyncio.sleep(0.2)
        assert got == []
        assert late.stats.refused_total == 1 and late.stats.received == 0
        refused = [w for w in warnings if "refused a frame on" in w and topic in w]
        assert len(refused) == 1 and "replayed" in refused[0] and "retained" in refused[0]
        # The subscriber still takes what the key's holders send now.
        sender.publish(topic, {"reason": "now"}, qos=1)
        await wait_until(lambda: got == [{"reason": "now"}], 5, "a fresh frame delivered")
    finally:
        await clear_retained(shared_broker, topic)


async def test_an_unsigned_bus_refuses_a_retained_kill_as_well(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    """Without a key anyone may publish a kill; a retained one would also stop every later
    run of that name the moment it subscribed, long after whoever sent it is gone."""
    run = f"t{uuid.uuid4().hex[:10]}"
    kill = TopicScheme(run).kill()
    sender = await started(buses, params(shared_broker, signed=False), run)

    async def send() -> None:
        sender.publish(kill, {"reason": "left behind"}, qos=1)
        await sender.flush(5)

    try:
        await plant_retained_copy(shared_broker, kill, send)
        late = await started(buses, params(shared_broker, signed=False), run)
        got: list[dict[str, Any]] = []
        late.subscribe(kill, lambda _, payload: got.append(payload))
        await late.flush(5)
        await wait_until(lambda: late.stats.refused["replayed"] == 1, 5, "the copy refused")
        assert got == []
    finally:
        await clear_retained(shared_broker, kill)


async def test_a_bus_does_not_publish_retained_where_every_receiver_refuses_it(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = f"t{uuid.uuid4().hex[:10]}"
    t = TopicScheme(run)
    bus = await started(buses, params(shared_broker), run)
    with pytest.raises(ValueError, match=r"retain=True on .*control/kill.*heartbeat/ and state/"):
        bus.publish(t.kill(), {"reason": "x"}, retain=True)
    with pytest.raises(ValueError, match="retain=True on 'quoteforge-clock/"):
        bus.publish(f"quoteforge-clock/{run}/step", {"k": 1}, retain=True)
    bus.publish(t.state("risk"), {"v": 1}, retain=True)  # retained by design
    bus.publish(f"app/{run}/last", {"v": 1}, retain=True)  # outside the project's topics
    await bus.flush(5)
    await clear_retained(shared_broker, t.state("risk"))
    await clear_retained(shared_broker, f"app/{run}/last")


async def test_retained_heartbeats_and_state_still_reach_a_late_signed_subscriber(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    """Retained by design, they keep the signature-only check: a value set once (the
    instruments of a venue) reaches a node joining long after it was signed."""
    run = f"t{uuid.uuid4().hex[:10]}"
    t = TopicScheme(run)
    wanted: dict[str, dict[str, Any]] = {t.state("instruments-sim"): {"symbols": ["BTC/USDT"]}}
    wanted[t.heartbeat("execution")] = {"status": "online"}
    pub = await started(buses, params(shared_broker), run)
    for topic, payload in wanted.items():
        pub.publish(topic, payload)
    await pub.flush(5)
    try:
        await asyncio.sleep(1.5)  # older than the late subscriber's max_age_s
        late = await started(buses, params(shared_broker, max_age_s=1), run)
        got: dict[str, dict[str, Any]] = {}
        late.subscribe(f"quoteforge/{run}/#", lambda topic, p: got.__setitem__(topic, p))
        await wait_until(lambda: wanted.keys() <= got.keys(), 5, "both retained values")
        assert {topic: got[topic] for topic in wanted} == wanted
        assert late.stats.refused_total == 0
    finally:
        for topic in wanted:
            await clear_retained(shared_broker, topic)


async def test_a_signed_run_starting_after_a_planted_retained_kill_keeps_running(
    shared_broker: int,
    buses: list[MqttBus],
    registry: PluginRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    warnings: list[str],
) -> None:
    """A signed kill of an earlier run of the same name, re-published retained by a
    client without the key: the run that starts next is not stopped by it."""
    run_name = f"t{uuid.uuid4().hex[:10]}"
    kill = TopicScheme(run_name).kill()
    operator = await started(buses, params(shared_broker), run_name)

    async def send() -> None:
        operator.publish(kill, {"reason": "yesterday's operator kill"}, qos=1)
        await operator.flush(5)

    monkeypatch.setenv("QUOTEFORGE_BUS_KEY", KEY)
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(run=run_name, port=shared_broker), encoding="utf-8")
    loaded = load_manifest(path, registry)
    started_up = asyncio.Event()
    run = Run(loaded, registry, run_dir=tmp_path / "run", on_started=lambda r: started_up.set())
    task: asyncio.Task[str] | None = None
    try:
        await plant_retained_copy(shared_broker, kill, send)
        task = asyncio.create_task(run.run())
        await wait_until(lambda: started_up.is_set() or task.done(), 20, "the run started")
        assert isinstance(run.bus, MqttBus)
        bus = run.bus
        await wait_until(
            lambda: bus.stats.refused["replayed"] == 1 or task.done(), 10, "the kill refused"
        )
        await asyncio.sleep(0.3)
        assert not run.killed, run.stop_reason
        assert bus.stats.refused["replayed"] == 1
        assert any("refused a frame on" in w and kill in w for w in warnings)
        run.request_stop("test over")
        await asyncio.wait_for(task, 30)
        assert run.stop_reason == "test over"
    finally:
        if task is not None and not task.done():
            run.request_stop("test over")
            await asyncio.wait_for(task, 30)
        await clear_retained(shared_broker, kill)
