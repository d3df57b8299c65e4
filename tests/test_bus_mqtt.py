"""Topic scheme, envelope encoding and the MQTT bus against a real Mosquitto broker."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import aiomqtt
import pytest
from brokers import Broker, make_tls_files, require_shared_broker
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger
from pydantic import SecretStr, ValidationError

from quoteforge.plugins import bus_mqtt
from quoteforge.plugins.bus_mqtt import BusConnectError, MqttBus, MqttParams, MqttTlsParams
from quoteforge.plugins.distributed.topics import (
    Codec,
    DecodeError,
    EncodeError,
    Envelope,
    GapDetector,
    TopicError,
    TopicKind,
    TopicScheme,
    decode,
    decode_frame,
    decode_symbol,
    delivery_for,
    encode,
    encode_batch,
    encode_symbol,
    parse_topic,
    validate_filter,
)
from quoteforge.registry import PluginRegistry

Backend = Literal["orjson", "json"]

REPO = Path(__file__).resolve().parents[1]
ACL_FILE = REPO / "examples" / "distributed" / "mosquitto.acl"


def run_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def fast(**overrides: Any) -> MqttParams:
    """Params that notice outages and reconnect quickly, as tests need."""
    values: dict[str, Any] = {
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.3,
        "connect_timeout_s": 3.0,
        "heartbeat_interval_s": 0,
        "close_timeout_s": 1.0,
    }
    values.update(overrides)
    return MqttParams(**values)


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture(scope="session")
def shared_broker() -> int:
    return require_shared_broker()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    brokers: list[Broker] = []

    def make(extra_config: str = "") -> Broker:
        workdir = tmp_path / f"broker{len(brokers)}"
        workdir.mkdir()
        broker = Broker(workdir, extra_config)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.kill()


@pytest.fixture
async def buses() -> AsyncIterator[list[MqttBus]]:
    """Buses made by a test; closed afterwards whatever happened."""
    made: list[MqttBus] = []
    yield made
    for bus in made:
        await bus.close()


async def started(made: list[MqttBus], params: MqttParams, run: str) -> MqttBus:
    bus = MqttBus(params, run)
    made.append(bus)
    await bus.start()
    return bus


# ---------------------------------------------------------------------------------------
# Topic scheme
# ---------------------------------------------------------------------------------------


def test_topic_builders_follow_the_documented_scheme() -> None:
    t = TopicScheme("run1")
    assert t.book("binance", "BTC/USDT") == "quoteforge/run1/book/binance/BTC-USDT"
    assert t.trade("kraken", "XBT/EUR") == "quoteforge/run1/trade/kraken/XBT-EUR"
    assert t.intent("mm1") == "quoteforge/run1/intent/mm1"
    assert t.order("binance") == "quoteforge/run1/order/binance"
    assert t.fill("binance") == "quoteforge/run1/fill/binance"
    assert t.kill() == "quoteforge/run1/control/kill"
    assert t.breaker() == "quoteforge/run1/control/breaker"
    assert t.heartbeat("md-1") == "quoteforge/run1/heartbeat/md-1"
    assert t.state("risk") == "quoteforge/run1/state/risk"
    assert t.all_of(TopicKind.BOOK) == "quoteforge/run1/book/+/+"
    assert t.everything() == "quoteforge/run1/#"


def test_parse_topic_names_the_parts() -> None:
    parsed = parse_topic("quoteforge/run1/book/binance/BTC-USDT")
    assert (parsed.run, parsed.kind, parsed.venue, parsed.symbol) == (
        "run1",
        TopicKind.BOOK,
        "binance",
        "BTC/USDT",
    )
    assert parse_topic("quoteforge/r/control/kill").name == "kill"
    assert parse_topic("quoteforge/r/intent/mm1").delivery == delivery_for(TopicKind.INTENT)


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("other/run1/book/a/b", "not a quoteforge topic"),
        ("quoteforge/run1/books/a/b", "unknown kind 'books'"),
        (
            "quoteforge/run1/book/binance",
            "a book topic is 'quoteforge/<run>/book/<venue>/<symbol>'",
        ),
        ("quoteforge/run1/fill/a/b", "a fill topic is"),
    ],
)
def test_parse_topic_rejects_malformed_topics(topic: str, message: str) -> None:
    with pytest.raises(TopicError, match=message):
        parse_topic(topic)


def test_builders_reject_levels_that_would_break_the_topic() -> None:
    with pytest.raises(TopicError, match=r"venue 'bin/ance' contains '/'"):
        TopicScheme("r").order("bin/ance")
    with pytest.raises(TopicError, match="run id is empty"):
        TopicScheme("")
    with pytest.raises(TopicError, match="may not start with"):
        TopicScheme("$SYS")


def test_qos_policy_per_kind() -> None:
    assert delivery_for(TopicKind.BOOK).qos == 0
    assert delivery_for(TopicKind.TRADE).qos == 0
    for kind in (TopicKind.INTENT, TopicKind.ORDER, TopicKind.FILL, TopicKind.CONTROL):
        assert delivery_for(kind).qos == 1
        assert not delivery_for(kind).retain
    assert delivery_for(TopicKind.STATE).retain


@given(st.text(min_size=1).filter(lambda s: "\x00" not in s))
def test_symbol_encoding_round_trips_and_stays_one_level(symbol: str) -> None:
    level = encode_symbol(symbol)
    assert not any(c in level for c in "/+#")
    assert decode_symbol(level) == symbol


def test_symbol_encoding_keeps_dashes_apart_from_slashes() -> None:
    assert encode_symbol("BTC-PERP") == "BTC%2DPERP"
    assert decode_symbol(encode_symbol("BTC-PERP")) == "BTC-PERP"
    assert parse_topic(TopicScheme("r").book("v", "ETH/USD-PERP")).symbol == "ETH/USD-PERP"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("a/#/b", "'#' must be a whole level and the last one"), ("a/b+", r"'\+' must be a whole")],
)
def test_invalid_filters_are_refused(pattern: str, message: str) -> None:
    with pytest.raises(TopicError, match=message):
        validate_filter(pattern)


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------

decimals = st.decimals(allow_nan=False, allow_infinity=False)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | decimals
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text().filter(lambda k: not k.startswith("$")), inner, max_size=4)
    ),
    max_leaves=12,
)
payloads = st.dictionaries(st.text().filter(lambda k: not k.startswith("$")), values, max_size=6)


def same(a: Any, b: Any) -> bool:
    """Equal, and Decimals are Decimals with the very same digits and exponent."""
    if isinstance(a, Decimal):
        return isinstance(b, Decimal) and a.as_tuple() == b.as_tuple()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=200)
@given(payloads, st.sampled_from(["orjson", "json"]), st.sampled_from(["orjson", "json"]))
def test_payload_round_trips_exactly_across_backends(
    payload: dict[str, Any], writer: Backend, reader: Backend
) -> None:
    data = Codec(writer).encode(payload, msg_id="m1", seq=7, source="s", sent_ns=123)
    envelope = Codec(reader).decode(data)
    assert (envelope.version, envelope.msg_id, envelope.seq, envelope.sent_ns) == (1, "m1", 7, 123)
    assert envelope.source == "s"
    assert same(payload, envelope.payload)


def test_decimal_travels_as_tagged_string() -> None:
    data = encode({"px": Decimal("65000.10")}, msg_id=None, seq=1, source="md", sent_ns=5)
    assert b'"p":{"px":{"$dec":"65000.10"}}' in data
    assert decode(data).payload["px"].as_tuple() == Decimal("65000.10").as_tuple()


def test_unknown_envelope_version_is_refused_clearly() -> None:
    data = encode({"a": 1}, msg_id=None, seq=1).replace(b'"v":1', b'"v":3')
    with pytest.raises(DecodeError, match=r"unsupported envelope version 3.*reads version 1"):
        decode(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[1]", "expected a JSON object"),
        (b'{"v":1,"id":null}', "lacks field 'src'"),
        (b'{"v":1,"id":null,"src":"s","seq":"1","ts":1,"p":{}}', "wrong types"),
    ],
)
def test_bad_bytes_are_refused_clearly(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(data)


@pytest.mark.parametrize("backend", ["orjson", "json"])
def test_encode_refuses_what_would_not_round_trip(backend: Backend) -> None:
    codec = Codec(backend)
    with pytest.raises(EncodeError, match=r"payload\.a\[1\] is not a finite float|not JSON"):
        codec.encode({"a": [1.0, float("nan")]}, msg_id=None, seq=1)
    with pytest.raises(EncodeError, match="Decimal NaN is not finite"):
        codec.encode({"a": Decimal("NaN")}, msg_id=None, seq=1)
    with pytest.raises(EncodeError, match='reserved "\\$dec"'):
        codec.encode({"a": {"$dec": "1"}}, msg_id=None, seq=1)
    with pytest.raises(EncodeError, match="cannot encode bytes value"):
        codec.encode({"a": b"x"}, msg_id=None, seq=1)


@pytest.mark.parametrize("writer", ["orjson", "json"])
@pytest.mark.parametrize("reader", ["orjson", "json"])
def test_batch_frame_round_trips_every_envelope_in_order(writer: Backend, reader: Backend) -> None:
    w, r = Codec(writer), Codec(reader)
    sent: list[tuple[dict[str, Any], str | None, int]] = [
        ({"n": 1, "px": Decimal("65000.10")}, "f-1", 7),
        ({"n": 2, "legs": [{"qty": Decimal("0.00000001")}]}, None, 8),
        ({"n": 3}, "f-3", 9),
    ]
    parts = [w.encode(p, msg_id=i, seq=q, source="exec", sent_ns=q * 10) for p, i, q in sent]
    frame = w.encode_batch(parts)
    assert frame.startswith(b'{"v":2,"b":[{"v":1,')
    got = r.decode_frame(frame)
    assert [(e.msg_id, e.seq, e.sent_ns, e.source) for e in got if isinstance(e, Envelope)] == [
        ("f-1", 7, 70, "exec"),
        (None, 8, 80, "exec"),
        ("f-3", 9, 90, "exec"),
    ]
    assert all(
        isinstance(e, Envelope) and same(p, e.payload)
        for (p, _, _), e in zip(sent, got, strict=True)
    )
    # A single message is a frame of one, in the version 1 form older readers know.
    assert r.decode_frame(parts[0]) == [r.decode(parts[0])]


def test_a_malformed_item_spoils_only_itself() -> None:
    good = [encode({"n": n}, msg_id=None, seq=n, source="md") for n in (1, 3)]
    bad = b'{"v":1,"id":null,"src":"md","seq":"2","ts":1,"p":{}}'
    items = decode_frame(encode_batch([good[0], bad, b"[1]", good[1]]))
    assert [type(i).__name__ for i in items] == [
        "Envelope",
        "DecodeError",
        "DecodeError",
        "Envelope",
    ]
    assert "batch frame item 1 of 4: envelope fields have wrong types" in str(items[1])
    assert "batch frame item 2 of 4" in str(items[2])
    assert [i.payload["n"] for i in items if isinstance(i, Envelope)] == [1, 3]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"v":2,"b":[]}', "batch frame has no envelopes"),
        (b'{"v":2}', "batch frame has no envelopes"),
        (b'{"v":2,"b":{}}', "batch frame has no envelopes"),
        (b'{"v":9,"b":[]}', "unsupported envelope version 9"),
        (b'{"v":2,"b":[', "not valid JSON"),
    ],
)
def test_unreadable_batch_frames_are_refused_clearly(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_frame(data)


def test_decode_points_batch_frames_to_decode_frame() -> None:
    frame = encode_batch([encode({"n": 1}, msg_id=None, seq=1)])
    with pytest.raises(DecodeError, match="use decode_frame"):
        decode(frame)
    with pytest.raises(EncodeError, match="at least one message"):
        encode_batch([])


# ---------------------------------------------------------------------------------------
# Gap detection
# ---------------------------------------------------------------------------------------


@given(st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=80))
def test_gap_detector_counts_every_lost_and_repeated_number(received: list[int]) -> None:
    detector = GapDetector()
    results = [detector.observe("src", "topic", seq) for seq in received]
    first = received[0]
    highest = first
    expected_missed = 0
    expected_dups = 0
    for seq in received[1:]:
        if seq <= highest:
            expected_dups += 1
        else:
            expected_missed += seq - highest - 1
            highest = seq
    assert results[0] == 0
    assert detector.missed == expected_missed == sum(r for r in results if r > 0)
    assert detector.duplicates == expected_dups == results.count(GapDetector.DUPLICATE)


def test_gap_detector_keeps_streams_apart_and_bounded() -> None:
    detector = GapDetector(capacity=2)
    assert detector.observe("a", "t", 1) == 0
    assert detector.observe("b", "t", 5) == 0
    assert detector.observe("a", "t", 3) == 1
    detector.observe("c", "t", 1)  # evicts the least recently active stream ("b")
    assert detector.observe("b", "t", 9) == 0


# ---------------------------------------------------------------------------------------
# Parameters and registration
# ---------------------------------------------------------------------------------------


def test_params_refuse_unknown_and_inconsistent_settings(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="hostname"):
        MqttParams(hostname="x")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="password is set without username"):
        MqttParams(password=SecretStr("pw"))
    with pytest.raises(ValidationError, match="clean_session: false needs a fixed client_id"):
        MqttParams(clean_session=False)
    with pytest.raises(ValidationError, match="reconnect_min_s"):
        MqttParams(reconnect_min_s=5, reconnect_max_s=1)
    with pytest.raises(ValidationError, match=r"tls\.ca_file .* does not exist"):
        MqttTlsParams(ca_file=tmp_path / "missing.pem")
    with pytest.raises(ValidationError, match="without '/'"):
        MqttParams(client_id="a/b")


def test_password_never_shows_in_repr_or_logs() -> None:
    params = MqttParams(username="u", password=SecretStr("hunter2"))
    assert "hunter2" not in repr(params)
    assert "hunter2" not in str(params.model_dump())
    assert "hunter2" not in repr(MqttBus(params, "r").params)


def test_mqtt_backend_registers_with_its_requirement() -> None:
    registry = PluginRegistry()
    record = registry.register_module(bus_mqtt, name="bus_mqtt")
    assert record.loaded, record.error
    reg = registry.get("bus", "mqtt")
    assert reg.requires == ("aiomqtt",)
    assert reg.params is MqttParams
    bus = reg.factory(MqttParams(), "run7")
    assert isinstance(bus, MqttBus)
    assert bus.topics.run == "run7"


async def test_publish_refuses_bad_topics_and_closed_bus() -> None:
    bus = MqttBus(fast(), run_id())
    with pytest.raises(TopicError, match="wildcard"):
        bus.publish("a/+/b", {})
    with pytest.raises(TopicError, match="a book topic is"):
        bus.publish("quoteforge/r/book/x", {})
    with pytest.raises(EncodeError, match="payload must be a dict"):
        bus.publish("a/b", [1, 2])  # type: ignore[arg-type]
    await bus.close()
    with pytest.raises(RuntimeError, match="the bus is closed"):
        bus.publish("a/b", {})


# ---------------------------------------------------------------------------------------
# Against the shared broker
# ---------------------------------------------------------------------------------------


async def test_wildcard_subscriptions_receive_exactly_their_topics(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = run_id()
    t = TopicScheme(run)
    pub = await started(buses, fast(), run)
    sub = await started(buses, fast(), run)
    btc_books: list[str] = []
    fills: list[str] = []
    sub.subscribe(f"quoteforge/{run}/book/+/BTC-USDT", lambda topic, p: btc_books.append(topic))
    sub.subscribe(f"quoteforge/{run}/fill/#", lambda topic, p: fills.append(topic))
    await sub.flush(5)
    pub.publish(t.book("binance", "BTC/USDT"), {"n": 1})
    pub.publish(t.book("kraken", "BTC/USDT"), {"n": 2})
    pub.publish(t.book("binance", "ETH/USDT"), {"n": 3})
    pub.publish(t.fill("binance"), {"n": 4})
    pub.publish(t.order("binance"), {"n": 5})
    pub.publish(t.fill("kraken"), {"n": 6})
    await pub.flush(5)
    await wait_for(lambda: len(fills) == 2 and len(btc_books) == 2)
    await asyncio.sleep(0.1)
    assert btc_books == [t.book("binance", "BTC/USDT"), t.book("kraken", "BTC/USDT")]
    assert fills == [t.fill("binance"), t.fill("kraken")]


async def test_order_topics_travel_at_qos1_even_when_asked_for_qos0(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = run_id()
    t = TopicScheme(run)
    pub = await started(buses, fast(), run)
    async with aiomqtt.Client("127.0.0.1", shared_broker) as raw:
        await raw.subscribe(f"quoteforge/{run}/#", qos=1)
        pub.publish(t.order("sim"), {"id": "o1"}, qos=0)
        pub.publish(t.book("sim", "BTC/USDT"), {"b": []}, qos=0)
        seen: dict[str, int] = {}
        async with asyncio.timeout(5):
            async for message in raw.messages:
                if "/heartbeat/" not in message.topic.value:
                    seen[message.topic.value] = message.qos
                if len(seen) == 2:
                    break
    assert seen == {t.order("sim"): 1, t.book("sim", "BTC/USDT"): 0}


async def test_decimal_payload_round_trips_over_the_broker(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = run_id()
    t = TopicScheme(run)
    pub = await started(buses, fast(), run)
    sub = await started(buses, fast(), run)
    got: list[dict[str, Any]] = []
    sub.subscribe(t.fill("sim"), lambda topic, p: got.append(p))
    await sub.flush(5)
    sent = {
        "price": Decimal("65000.10"),
        "qty": Decimal("0.00000001"),
        "fee": Decimal("-1.5E-7"),
        "legs": [{"px": Decimal("123456789.123456789012345")}],
        "side": "buy",
    }
    pub.publish(t.fill("sim"), sent)
    await wait_for(lambda: len(got) == 1)
    assert same(sent, got[0])


async def test_retained_state_reaches_a_late_subscriber(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = run_id()
    t = TopicScheme(run)
    pub = await started(buses, fast(), run)
    pub.publish(t.state("denylist"), {"symbols": ["A/B"]})
    pub.publish(t.state("denylist"), {"symbols": ["C/D"]})
    await pub.flush(5)
    late = await started(buses, fast(), run)
    got: list[dict[str, Any]] = []
    late.subscribe(f"quoteforge/{run}/state/+", lambda topic, p: got.append(p))
    await wait_for(lambda: len(got) == 1)
    await asyncio.sleep(0.1)
    assert got == [{"symbols": ["C/D"]}]
    pub.publish(t.state("denylist"), {"symbols": []})  # replace the retained value
    await wait_for(lambda: len(got) == 2)
    assert got[-1] == {"symbols": []}


async def test_a_redelivered_msg_id_is_applied_once(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = run_id()
    t = TopicScheme(run)
    pub = await started(buses, fast(), run)
    sub = await started(buses, fast(), run)
    applied: list[str] = []
    sub.subscribe(t.intent("mm1"), lambda topic, p: applied.append(p["n"]))
    await sub.flush(5)
    pub.publish(t.intent("mm1"), {"n": "first"}, msg_id="intent-1")
    pub.publish(t.intent("mm1"), {"n": "again"}, msg_id="intent-1")
    # A transport-level redelivery: the very same bytes arriving a second time.
    raw_bytes = encode({"n": "raw"}, msg_id="intent-2", seq=1, source="other")
    async with aiomqtt.Client("127.0.0.1", shared_broker) as raw:
        for _ in range(2):
            await raw.publish(t.intent("mm1"), raw_bytes, qos=1)
    pub.publish(t.intent("mm1"), {"n": "last"}, msg_id="intent-3")
    await wait_for(lambda: "last" in applied)
    await asyncio.sleep(0.1)
    assert applied == ["first", "raw", "last"]
    assert sub.stats.duplicates == 2


async def test_gaps_on_qos0_book_topics_are_reported(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = run_id()
    t = TopicScheme(run)
    topic = t.book("sim", "BTC/USDT")
    sub = await started(buses, fast(), run)
    gaps: list[tuple[str, str, int]] = []
    books: list[int] = []
    sub.add_gap_listener(lambda tp, src, missing: gaps.append((tp, src, missing)))
    sub.subscribe(topic, lambda tp, p: books.append(p["n"]))
    await sub.flush(5)
    async with aiomqtt.Client("127.0.0.1", shared_broker) as raw:
        for seq in (1, 2, 5, 5, 6):
            await raw.publish(topic, encode({"n": seq}, msg_id=None, seq=seq, source="md"))
    await wait_for(lambda: books[-1:] == [6])
    assert books == [1, 2, 5, 6]
    assert gaps == [(topic, "md", 2)]
    assert (sub.stats.gaps, sub.stats.missed, sub.stats.duplicates) == (1, 2, 1)


async def test_failing_handlers_and_garbage_never_stop_delivery(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = run_id()
    t = TopicScheme(run)
    pub = await started(buses, fast(), run)
    sub = await started(buses, fast(), run)
    good: list[int] = []

    def broken(topic: str, payload: dict[str, Any]) -> None:
        raise ZeroDivisionError("strategy bug")

    sub.subscribe(t.fill("sim"), broken)
    sub.subscribe(t.fill("sim"), lambda topic, p: good.append(p["n"]))
    await sub.flush(5)
    async with aiomqtt.Client("127.0.0.1", shared_broker) as raw:
        await raw.publish(t.fill("sim"), b"\x00garbage", qos=1)
    for n in range(3):
        pub.publish(t.fill("sim"), {"n": n})
    await wait_for(lambda: len(good) == 3)
    assert good == [0, 1, 2]
    assert sub.stats.handler_errors == 3
    assert sub.stats.decode_errors == 1


async def test_messages_of_one_pass_share_frames_and_keep_their_order(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = run_id()
    t = TopicScheme(run)
    book, fill = t.book("sim", "BTC/USDT"), t.fill("sim")
    pub = await started(buses, fast(batch_max_messages=50), run)
    sub = await started(buses, fast(), run)
    seen: list[tuple[str, int]] = []
    sub.subscribe(book, lambda topic, p: seen.append((topic, p["n"])))
    sub.subscribe(fill, lambda topic, p: seen.append((topic, p["n"])))
    gaps: list[int] = []
    sub.add_gap_listener(lambda topic, source, missing: gaps.append(missing))
    await sub.flush(5)
    await pub.flush(5)
    frames_before = pub.stats.frames_published
    sent: list[tuple[str, int]] = []
    for n in range(300):  # one event-loop pass; a fill now and then splits the run
        topic = fill if n % 97 == 96 else book
        pub.publish(topic, {"n": n})
        sent.append((topic, n))
    await pub.flush(5)
    await wait_for(lambda: len(seen) == len(sent))
    assert seen == sent
    assert gaps == []
    frames = pub.stats.frames_published - frames_before
    # Books 0-95, 97-192, 194-289 and 291-299 cut at 50 messages: 7 frames; 3 fills.
    assert frames == 10
    assert sub.stats.frames_received < sub.stats.received


@pytest.mark.parametrize(("linger_us", "frames"), [(1_000_000, 2), (0, 3)])
async def test_a_busy_bus_lingers_so_later_messages_share_a_frame(
    shared_broker: int, buses: list[MqttBus], linger_us: int, frames: int
) -> None:
    run = run_id()
    t = TopicScheme(run)
    pub = await started(buses, fast(linger_us=linger_us), run)
    sub = await started(buses, fast(), run)
    got: list[int] = []
    sub.subscribe(t.fill("sim"), lambda topic, p: got.append(p["n"]))
    await sub.flush(5)
    await asyncio.sleep(linger_us / 1e6)  # quiet: the online heartbeat was the last send
    before = pub.stats.frames_published
    pub.publish(t.fill("sim"), {"n": 1})  # after a quiet spell: leaves at the next pass
    await pub.flush(5)
    pub.publish(t.fill("sim"), {"n": 2})  # busy: waits for linger_us after the last send
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    pub.publish(t.fill("sim"), {"n": 3})  # a later pass, still within linger_us
    await pub.flush(5)
    await wait_for(lambda: len(got) == 3)
    assert got == [1, 2, 3]
    assert pub.stats.frames_published - before == frames


async def test_receiving_leaves_no_cyclic_garbage(shared_broker: int, buses: list[MqttBus]) -> None:
    # Cycles are freed only by the cyclic collector, whose full runs pause the loop.
    run = run_id()
    t = TopicScheme(run)
    pub = await started(buses, fast(batch_max_messages=1, linger_us=0), run)
    sub = await started(buses, fast(), run)
    got: list[int] = []
    sub.subscribe(t.book("sim", "A/B"), lambda topic, p: got.append(p["n"]))
    await sub.flush(5)
    gc.collect()
    gc.disable()
    try:
        for n in range(300):
            pub.publish(t.book("sim", "A/B"), {"n": n})
            await asyncio.sleep(0)
        await wait_for(lambda: len(got) == 300)
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert sub.stats.frames_received >= 300
    assert unreachable < 100  # paho's callback lookup alone used to leave 6 per message


async def test_batch_frames_respect_the_size_limits_on_the_wire(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = run_id()
    t = TopicScheme(run)
    pub = await started(buses, fast(batch_max_messages=1000, batch_max_bytes=2000), run)
    single = await started(buses, fast(batch_max_messages=1), run)
    async with aiomqtt.Client("127.0.0.1", shared_broker) as raw:
        await raw.subscribe(f"quoteforge/{run}/book/#")
        for n in range(40):
            pub.publish(t.book("sim", "A/B"), {"n": n, "pad": "x" * 100})
        for n in range(5):
            single.publish(t.book("sim", "C/D"), {"n": n})
        sizes: dict[str, list[int]] = {"A-B": [], "C-D": []}
        counts: dict[str, int] = {"A-B": 0, "C-D": 0}
        async with asyncio.timeout(5):
            async for message in raw.messages:
                assert isinstance(message.payload, bytes)
                symbol = message.topic.value.rsplit("/", 1)[1]
                sizes[symbol].append(len(message.payload))
                counts[symbol] += len(decode_frame(message.payload))
                if counts == {"A-B": 40, "C-D": 5}:
                    break
    assert max(sizes["A-B"]) <= 2000
    assert len(sizes["A-B"]) < 40
    assert len(sizes["C-D"]) == 5  # batch_max_messages=1: every message alone


async def test_a_redelivered_batch_is_applied_once_per_message(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = run_id()
    t = TopicScheme(run)
    sub = await started(buses, fast(), run)
    applied: list[int] = []
    sub.subscribe(t.fill("sim"), lambda topic, p: applied.append(p["n"]))
    await sub.flush(5)
    frame = encode_batch(
        [encode({"n": n}, msg_id=f"fill-{n}", seq=n, source="exec") for n in (1, 2, 3)]
    )
    overlapping = encode_batch(
        [encode({"n": n}, msg_id=f"fill-{n}", seq=n, source="exec") for n in (3, 4)]
    )
    async with aiomqtt.Client("127.0.0.1", shared_broker) as raw:
        for data in (frame, frame, overlapping):  # a transport-level redelivery, then more
            await raw.publish(t.fill("sim"), data, qos=1)
    await wait_for(lambda: 4 in applied)
    await asyncio.sleep(0.1)
    assert applied == [1, 2, 3, 4]
    assert sub.stats.duplicates == 4


async def test_malformed_frames_cost_only_their_bad_parts(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = run_id()
    t = TopicScheme(run)
    topic = t.book("sim", "BTC/USDT")
    sub = await started(buses, fast(), run)
    books: list[int] = []
    gaps: list[int] = []
    sub.subscribe(topic, lambda tp, p: books.append(p["n"]))
    sub.add_gap_listener(lambda tp, src, missing: gaps.append(missing))
    await sub.flush(5)

    def env(n: int) -> bytes:
        return encode({"n": n}, msg_id=None, seq=n, source="md")

    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        async with aiomqtt.Client("127.0.0.1", shared_broker) as raw:
            await raw.publish(topic, encode_batch([env(1), b'{"v":1}', env(2)]))
            await raw.publish(topic, b'{"v":2,"b":[]}')
            await raw.publish(topic, encode_batch([env(5), env(6)]))
            await raw.publish(topic, env(7))
        await wait_for(lambda: books[-1:] == [7])
    finally:
        logger.remove(sink)
    assert books == [1, 2, 5, 6, 7]
    assert gaps == [2]  # 3 and 4 never came
    assert sub.stats.decode_errors == 2
    assert any("batch frame item 1 of 3: envelope lacks field 'id'" in w for w in warnings)


async def test_heartbeat_online_then_offline_on_close(
    shared_broker: int, buses: list[MqttBus]
) -> None:
    run = run_id()
    node = await started(buses, fast(client_id=f"node-{run}"), run)
    watcher = await started(buses, fast(), run)
    beats: list[dict[str, Any]] = []
    watcher.subscribe(node.topics.heartbeat(node.node), lambda topic, p: beats.append(p))
    await wait_for(lambda: len(beats) == 1)
    assert beats[0]["status"] == "online"
    await node.close()
    await wait_for(lambda: len(beats) == 2)
    assert beats[1] == {
        "status": "offline",
        "node": node.node,
        "client_id": node.client_id,
        "reason": "closed",
    }


async def test_last_will_says_offline_when_a_node_dies(
    shared_broker: int, buses: list[MqttBus], tmp_path: Path
) -> None:
    run = run_id()
    client_id = f"doomed-{run}"
    script = tmp_path / "node.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, sys
            from quoteforge.plugins.bus_mqtt import MqttBus, MqttParams

            async def main():
                bus = MqttBus(MqttParams(client_id={client_id!r}, keepalive=2), {run!r})
                await bus.start()
                await bus.flush(5)
                print("ready", flush=True)
                await asyncio.sleep(60)

            asyncio.run(main())
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.strip() == b"ready"
        watcher = await started(buses, fast(), run)
        beats: list[dict[str, Any]] = []
        watcher.subscribe(TopicScheme(run).heartbeat(client_id), lambda t, p: beats.append(p))
        await wait_for(lambda: len(beats) == 1)
        assert beats[0]["status"] == "online"
        proc.kill()
        await wait_for(lambda: len(beats) == 2)
        assert beats[1]["status"] == "offline"
        assert beats[1]["reason"] == "connection lost"
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------
# Against a private broker: outages and ACLs
# ---------------------------------------------------------------------------------------


async def test_qos1_messages_survive_a_broker_restart_exactly_once(
    make_broker: Callable[..., Broker], buses: list[MqttBus], tmp_path: Path
) -> None:
    store = tmp_path / "persist"
    store.mkdir()
    broker = make_broker(
        f"allow_anonymous true\npersistence true\npersistence_location {store}/\n"
        "autosave_interval 1\n"
    )
    broker.start()
    run = run_id()
    t = TopicScheme(run)
    sub = await started(
        buses, fast(port=broker.port, client_id=f"exec-{run}", clean_session=False), run
    )
    pub = await started(buses, fast(port=broker.port), run)
    applied: list[int] = []
    sub.subscribe(f"quoteforge/{run}/fill/+", lambda topic, p: applied.append(p["n"]))
    await sub.flush(5)
    subscribed_at = time.time()
    for n in range(50):
        pub.publish(t.fill("sim"), {"n": n})
    await wait_for(lambda: len(applied) == 50)
    # The broker restores the subscriber's session from its last autosave.
    db = store / "mosquitto.db"
    await wait_for(lambda: db.exists() and db.stat().st_mtime > subscribed_at + 0.5, 5)

    broker.kill()
    await wait_for(lambda: not pub.connected and not sub.connected)
    for n in range(50, 100):
        pub.publish(t.fill("sim"), {"n": n})
    assert pub.queued >= 50
    broker.start()

    await wait_for(lambda: len(applied) >= 100, 10)
    for n in range(100, 110):  # the subscription is still in place after the restart
        pub.publish(t.fill("sim"), {"n": n})
    await wait_for(lambda: len(applied) >= 110)
    await asyncio.sleep(0.2)
    assert applied == list(range(110))
    assert pub.stats.connects == 2
    assert sub.stats.connects == 2


async def test_subscriptions_come_back_on_a_fresh_broker(
    make_broker: Callable[..., Broker], buses: list[MqttBus]
) -> None:
    broker = make_broker()
    broker.start()
    run = run_id()
    t = TopicScheme(run)
    sub = await started(buses, fast(port=broker.port), run)
    got: list[int] = []
    sub.subscribe(t.intent("mm1"), lambda topic, p: got.append(p["n"]))
    await sub.flush(5)
    broker.kill()
    await wait_for(lambda: not sub.connected)
    broker.start()  # no persistence: the broker knows nothing of the old subscription
    await sub.wait_connected(5)
    await sub.flush(5)
    pub = await started(buses, fast(port=broker.port), run)
    pub.publish(t.intent("mm1"), {"n": 1})
    await wait_for(lambda: got == [1])


async def test_full_buffer_drops_new_messages_with_a_warning(
    make_broker: Callable[..., Broker], buses: list[MqttBus]
) -> None:
    broker = make_broker()  # never started: the broker is away
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        bus = await started(
            buses, fast(port=broker.port, max_queued=5, connect_timeout_s=0.2), run_id()
        )
        t = bus.topics
        for n in range(8):
            bus.publish(t.order("sim"), {"n": n})
        bus.publish(t.book("sim", "A/B"), {"n": 0})
    finally:
        logger.remove(sink)
    assert bus.queued == 5
    assert bus.stats.dropped_overflow == 3
    assert bus.stats.dropped_disconnected == 1
    assert sum("publish buffer of bus" in w and "is full" in w for w in warnings) == 1


@pytest.mark.parametrize("use_tls", [True, False], ids=["tls", "tcp"])
async def test_batches_and_large_messages_cross_the_broker_whole(
    make_broker: Callable[..., Broker], buses: list[MqttBus], tmp_path: Path, use_tls: bool
) -> None:
    tls = None
    if use_tls:
        ca, cert, key = make_tls_files(tmp_path)
        broker = make_broker(f"allow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
        tls = MqttTlsParams(ca_file=ca)
    else:
        broker = make_broker()
    broker.start()
    run = run_id()
    t = TopicScheme(run)
    pub = await started(buses, fast(port=broker.port, tls=tls), run)
    sub = await started(buses, fast(port=broker.port, tls=tls), run)
    got: list[tuple[str, int, int]] = []

    def record(topic: str, payload: dict[str, Any]) -> None:
        got.append((topic, payload["n"], len(payload["pad"])))

    sub.subscribe(t.fill("sim"), record)
    sub.subscribe(t.book("sim", "A/B"), record)
    await sub.flush(5)
    sent: list[tuple[str, int, int]] = []
    for n in range(200):  # batch frames of QoS 1 fills and QoS 0 books
        topic = t.fill("sim") if n < 100 else t.book("sim", "A/B")
        pad = 300_000 if n in (50, 150) else 10  # larger than a read buffer
        pub.publish(topic, {"n": n, "pad": "x" * pad})
        sent.append((topic, n, pad))
    await pub.flush(10)
    await wait_for(lambda: len(got) >= len(sent), 10)
    assert got == sent
    assert sub.stats.frames_received < len(sent)


async def test_acl_lets_each_role_publish_only_its_own_topics(
    make_broker: Callable[..., Broker], buses: list[MqttBus], tmp_path: Path
) -> None:
    passwd = tmp_path / "passwd"
    for i, user in enumerate(("execution", "strategy", "monitor")):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run(
            ["mosquitto_passwd", *flags, str(passwd), user, f"{user}-pw"],
            check=True,
            capture_output=True,
        )
    broker = make_broker(f"allow_anonymous false\npassword_file {passwd}\nacl_file {ACL_FILE}\n")
    broker.start()
    run = run_id()
    t = TopicScheme(run)

    def as_user(user: str) -> MqttParams:
        return fast(
            port=broker.port,
            username=user,
            password=SecretStr(f"{user}-pw"),
            client_id=f"{user}-{run}",
        )

    monitor = await started(buses, as_user("monitor"), run)
    execution = await started(buses, as_user("execution"), run)
    strategy = await started(buses, as_user("strategy"), run)
    seen: list[tuple[str, str]] = []
    monitor.subscribe(t.everything(), lambda topic, p: seen.append((topic, p.get("by", ""))))
    await monitor.flush(5)

    strategy.publish(t.order("sim"), {"by": "strategy"})  # denied by the ACL
    strategy.publish(t.intent("mm1"), {"by": "strategy"})
    execution.publish(t.order("sim"), {"by": "execution"})
    await wait_for(lambda: (t.order("sim"), "execution") in seen)
    await wait_for(lambda: (t.intent("mm1"), "strategy") in seen)
    await asyncio.sleep(0.2)
    orders = [by for topic, by in seen if topic == t.order("sim")]
    assert orders == ["execution"]

    intruder = MqttBus(
        fast(port=broker.port, username="strategy", password=SecretStr("wrong")), run
    )
    with pytest.raises(
        BusConnectError, match=r"refused bus .* \(user 'strategy'\): .*Not authorized"
    ):
        await intruder.start()
