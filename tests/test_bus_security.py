"""The bus of a split run is a trust boundary: signed frames, refused forgeries and
replays, split runs that will not start unprotected, and the shipped ACL, on a broker set
up as examples/distributed/ says (passwords, TLS, mosquitto.acl)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from brokers import SecureBroker, require_shared_broker
from loguru import logger
from node_rigs import journal_records, wait_until, write_manifest
from pydantic import SecretStr, ValidationError
from split_nodes import Nodes

from quoteforge.exchange import PlaceOrder
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.model import Order, OrderType, Side, TimeInForce
from quoteforge.plugins.bus_mqtt import BusConnectError, MqttBus, MqttParams, MqttTlsParams
from quoteforge.plugins.distributed.nodes import load_node_manifest, run_node
from quoteforge.plugins.distributed.remote import intent_payload
from quoteforge.plugins.distributed.topics import (
    FrameSigner,
    FrameVerifier,
    SignatureError,
    TopicKind,
    TopicScheme,
    strip_signature,
)
from quoteforge.registry import PluginRegistry

KEY = b"0123456789abcdef0123456789abcdef"
FRAME = b'{"v":1,"id":"a:1","src":"a","seq":1,"ts":1,"p":{"x":1}}'
T = TopicScheme("run1")


@pytest.fixture
async def buses() -> AsyncIterator[list[MqttBus]]:
    made: list[MqttBus] = []
    yield made
    for bus in made:
        await bus.close()


async def started(made: list[MqttBus], params: MqttParams, run: str) -> MqttBus:
    bus = MqttBus(params, run)
    made.append(bus)
    await bus.start()
    return bus


def refusal(verifier: FrameVerifier, topic: str, data: bytes, **kw: Any) -> str:
    with pytest.raises(SignatureError) as info:
        verifier.open(topic, data, **kw)
    return info.value.reason


# ---------------------------------------------------------------------------------------
# Signed frames (no broker)
# ---------------------------------------------------------------------------------------


def test_a_signed_frame_opens_only_on_its_topic_unchanged_and_once() -> None:
    signer = FrameSigner(KEY, "k1", "exec.1")
    verifier = FrameVerifier({"k1": KEY})
    signed = signer.sign(T.intent("mm"), FRAME)
    assert signed.startswith(b"QFS1 k1 exec.1 1 ") and signed.endswith(b"\n" + FRAME)

    # Moved to another topic, a kill or another strategy's intents: refused.
    assert refusal(verifier, T.kill(), signed) == "bad_signature"
    assert refusal(verifier, T.intent("mm2"), signed) == "bad_signature"
    # Any changed byte of the frame or of the signed header: refused.
    assert refusal(verifier, T.intent("mm"), signed.replace(b'"x":1', b'"x":2')) == (
        "bad_signature"
    )
    assert refusal(verifier, T.intent("mm"), signed.replace(b" 1 ", b" 7 ", 1)) == ("bad_signature")
    assert verifier.open(T.intent("mm"), signed) == FRAME
    assert refusal(verifier, T.intent("mm"), signed) == "replayed"
    assert refusal(verifier, T.intent("mm"), FRAME) == "unsigned"
    assert refusal(verifier, T.intent("mm"), b"QFS1 k1 x\n" + FRAME) == "malformed"
    other = FrameSigner(b"another key, just as long", "k2", "exec.1").sign(T.intent("mm"), FRAME)
    assert refusal(verifier, T.intent("mm"), other) == "unknown_key"
    wrong = FrameSigner(b"another key, just as long", "k1", "exec.1").sign(T.intent("mm"), FRAME)
    assert refusal(verifier, T.intent("mm"), wrong) == "bad_signature"
    assert verifier.refused == {
        "unsigned": 1,
        "malformed": 1,
        "unknown_key": 1,
        "bad_signature": 5,
        "stale": 0,
        "replayed": 1,
    }


def test_frames_out_of_order_pass_once_and_old_ones_are_refused() -> None:
    signer = FrameSigner(KEY, "k1", "s.1")
    verifier = FrameVerifier({"k1": KEY}, max_age_s=30, window=8)
    frames = [signer.sign("t", FRAME) for _ in range(20)]
    for i in (2, 0, 1, 5, 3):  # counters 3, 1, 2, 6, 4
        verifier.open("t", frames[i])
    for i in (0, 1, 2, 3, 5):
        assert refusal(verifier, "t", frames[i]) == "replayed"
    verifier.open("t", frames[4])  # counter 5, still missing: passes
    verifier.open("t", frames[19])  # counter 20: counters below 12 now fall out
    assert refusal(verifier, "t", frames[6]) == "replayed"  # counter 7: too far back
    verifier.open("t", frames[15])  # counter 16: in the window, never seen
    # A frame sent 31 s ago (or ahead: a clock out of step) is refused whoever sent it.
    now = time.time_ns()
    late = FrameSigner(KEY, "k1", "s.2").sign("t", FRAME, now_ns=now - 31 * 10**9)
    assert refusal(verifier, "t", late) == "stale"
    early = FrameSigner(KEY, "k1", "s.3").sign("t", FRAME, now_ns=now + 31 * 10**9)
    assert refusal(verifier, "t", early) == "stale"
    # Retained values come back on every subscription: their signature is still checked.
    assert verifier.open("t", late, retained=True) == FRAME
    assert refusal(verifier, "t2", late, retained=True) == "bad_signature"


def test_the_limits_of_age_window_and_senders_are_inclusive() -> None:
    """A frame exactly max_age_s old passes, a nanosecond older is stale; a counter
    exactly ``window`` behind the highest is still tracked (passes once); ``senders``
    senders are all remembered, and the least recently heard one is forgotten only
    when one more sender appears."""
    t = 1_700_000_000 * 10**9
    age = 30 * 10**9
    signer = FrameSigner(KEY, "k1", "s.1")
    verifier = FrameVerifier({"k1": KEY}, max_age_s=30, window=8, senders=2)
    first = signer.sign("t", FRAME, now_ns=t)
    assert verifier.open("t", first, now_ns=t + age) == FRAME
    old = signer.sign("t", FRAME, now_ns=t)
    assert refusal(verifier, "t", old, now_ns=t + age + 1) == "stale"
    ahead = signer.sign("t", FRAME, now_ns=t + age)
    assert verifier.open("t", ahead, now_ns=t) == FRAME  # 30 s ahead: a clock in step enough

    frames = [signer.sign("t", FRAME, now_ns=t) for _ in range(9)]  # counters 4 to 12
    verifier.open("t", frames[8], now_ns=t)  # counter 12
    assert verifier.open("t", frames[0], now_ns=t) == FRAME  # counter 4: 8 behind
    assert refusal(verifier, "t", frames[0], now_ns=t) == "replayed"

    second = FrameSigner(KEY, "k1", "s.2").sign("t", FRAME, now_ns=t)
    verifier.open("t", second, now_ns=t)
    assert refusal(verifier, "t", frames[8], now_ns=t) == "replayed"  # s.1 still known
    assert refusal(verifier, "t", second, now_ns=t) == "replayed"
    third = FrameSigner(KEY, "k1", "s.3").sign("t", FRAME, now_ns=t)
    verifier.open("t", third, now_ns=t)  # s.1, heard least recently, is forgotten
    assert verifier.open("t", frames[8], now_ns=t) == FRAME  # ... and pushes out s.2
    assert refusal(verifier, "t", third, now_ns=t) == "replayed"
    assert refusal(verifier, "t", frames[8], now_ns=t) == "replayed"


def test_keys_of_exactly_the_minimum_length_sign_and_a_keyless_bus_strips() -> None:
    """A key of MIN_KEY_BYTES is enough (one byte less is refused); a bus without a
    key reads the frame inside a signed one, and leaves anything else as it is."""
    key = b"k" * 16
    signed = FrameSigner(key, "k1", "s.1").sign("t", FRAME)
    assert FrameVerifier({"k1": key}).open("t", signed) == FRAME
    with pytest.raises(ValueError, match="at least 16"):
        FrameSigner(key[:-1], "k1", "s.1")
    with pytest.raises(ValueError, match="at least 16"):
        FrameVerifier({"k1": key[:-1]})
    assert strip_signature(signed) == FRAME
    assert strip_signature(bytearray(signed)) == FRAME
    assert strip_signature(FRAME) == FRAME
    assert strip_signature(b"QFS1 k1 s.1 1 2 ab") == b"QFS1 k1 s.1 1 2 ab"  # no frame in it


def test_a_last_will_passes_once_whatever_its_age() -> None:
    signer = FrameSigner(KEY, "k1", "s.1")
    verifier = FrameVerifier({"k1": KEY}, max_age_s=1)
    will = signer.sign_will(T.heartbeat("strategy"), FRAME)
    later = time.time_ns() + 3600 * 10**9
    assert verifier.open(T.heartbeat("strategy"), will, now_ns=later) == FRAME
    assert refusal(verifier, T.heartbeat("strategy"), will, now_ns=later) == "replayed"


def test_keys_must_be_long_and_the_params_say_what_is_unprotected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        FrameSigner(b"short", "k1", "s")
    with pytest.raises(ValidationError, match=r"signing_key is shorter than 16 bytes.*openssl"):
        MqttParams(signing_key=SecretStr("short"))
    problems = MqttParams(host="10.1.2.3").security_problems()
    assert len(problems) == 3
    assert "anonymously" in problems[0]
    assert "10.1.2.3 is not on this machine" in problems[1] and "tls.ca_file" in problems[1]
    assert "not signed" in problems[2] and "QUOTEFORGE_BUS_KEY" in problems[2]
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    sound = MqttParams(
        host="10.1.2.3",
        username="strategy",
        password=SecretStr("pw"),
        tls=MqttTlsParams(ca_file=ca),
        signing_key=SecretStr(KEY.decode()),
    )
    assert sound.security_problems() == []
    assert KEY.decode() not in repr(sound)


# ---------------------------------------------------------------------------------------
# Split runs refuse an unprotected bus
# ---------------------------------------------------------------------------------------


def unprotected_manifest(
    path: Path, secure_broker: SecureBroker, monkeypatch: pytest.MonkeyPatch, **bus: Any
) -> Path:
    for name, value in secure_broker.env("strategy").items():
        monkeypatch.setenv(name, value)
    path, _ = write_manifest(path, port=secure_broker.port, duration=5)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in bus.items():
        if value is None:
            data["bus"]["params"].pop(key, None)
        else:
            data["bus"]["params"][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def node_errors(
    registry: PluginRegistry, path: Path, run_dir: Path, role: str = "strategy"
) -> tuple[int, list[str]]:
    loaded, _ = load_node_manifest(path, registry)
    messages: list[str] = []
    sink = logger.add(messages.append, level="ERROR", format="{message}")
    try:
        code = await run_node(loaded, registry, role, run_dir, path, install_signals=False)
    finally:
        logger.remove(sink)
    return code, messages


@pytest.mark.parametrize(
    ("bus", "expected"),
    [
        ({"username": None, "password": None}, "connects anonymously"),
        ({"signing_key": None}, "not signed: set signing_key"),
        ({"tls": None, "host": "192.0.2.7"}, "192.0.2.7 is not on this machine"),
    ],
    ids=["anonymous", "unsigned", "plain-tcp-remote"],
)
async def test_a_split_node_refuses_to_start_on_an_unprotected_bus(
    bus: dict[str, Any],
    expected: str,
    registry: PluginRegistry,
    secure_broker: SecureBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = unprotected_manifest(tmp_path / "m.yaml", secure_broker, monkeypatch, **bus)
    code, messages = await node_errors(registry, path, tmp_path / "run")
    assert code == 2
    assert "refuses to trade over an unprotected bus" in messages[0]
    assert expected in messages[0] and "bus.params.insecure: true" in messages[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["signing_key", "password"])
async def test_a_secret_written_in_the_manifest_is_refused(
    name: str,
    registry: PluginRegistry,
    secure_broker: SecureBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Refused when the manifest is read, for a node as for `quoteforge run` and `validate`,
    # in every mode: the manifest is copied into the run folder.
    literal = "written-into-the-file-0123456789"
    path = unprotected_manifest(tmp_path / "m.yaml", secure_broker, monkeypatch, **{name: literal})
    with pytest.raises(ManifestError) as refused:
        load_node_manifest(path, registry)
    message = str(refused.value)
    assert f"bus.params.{name}: a secret must come from the environment" in message
    assert literal not in message
    with pytest.raises(ManifestError, match=f"bus.params.{name} \\(from --set\\): a secret"):
        load_manifest(path, registry, overrides=[f"bus.params.{name}={literal}"])
    assert not (tmp_path / "run").exists()


async def test_insecure_lets_a_node_start_and_warns_at_every_start(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = require_shared_broker()  # the anonymous test broker
    monkeypatch.delenv("QF_MQTT_CA", raising=False)
    path, _ = write_manifest(tmp_path / "m.yaml", port=port, duration=1, clock="wall")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in ("tls", "username", "password", "signing_key"):
        data["bus"]["params"].pop(key)
    data["bus"]["params"]["insecure"] = True
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    loaded, _ = load_node_manifest(path, registry)
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    try:
        for start in range(2):
            code = await asyncio.wait_for(
                run_node(
                    loaded,
                    registry,
                    "monitor",
                    tmp_path / f"run{start}",
                    path,
                    install_signals=False,
                ),
                30,
            )
            assert code == 0
    finally:
        logger.remove(sink)
    insecure = [w for w in warnings if w.startswith("INSECURE split run")]
    assert len(insecure) == 4, warnings  # anonymous and unsigned, at each of two starts
    assert sum("anonymously" in w for w in insecure) == 2
    assert sum("not signed" in w for w in insecure) == 2


# ---------------------------------------------------------------------------------------
# The broker and the shipped ACL
# ---------------------------------------------------------------------------------------


async def test_the_broker_refuses_anonymous_clients_and_wrong_passwords(
    secure_broker: SecureBroker,
) -> None:
    run = f"t{uuid.uuid4().hex[:10]}"
    with pytest.raises(BusConnectError, match=r"refused bus .* \(user None\)"):
        await MqttBus(secure_broker.params(None), run).start()
    wrong = secure_broker.params("strategy", password=SecretStr("not-the-password"))
    with pytest.raises(BusConnectError, match=r"\(user 'strategy'\): .*Not authorized"):
        await MqttBus(wrong, run).start()


async def test_only_the_strategy_role_can_publish_intents(
    secure_broker: SecureBroker, buses: list[MqttBus]
) -> None:
    run = f"t{uuid.uuid4().hex[:10]}"
    t = TopicScheme(run)
    execution = await started(buses, secure_broker.params("execution"), run)
    got: list[str] = []
    execution.subscribe(t.all_of(TopicKind.INTENT), lambda topic, p: got.append(p["by"]))
    await execution.flush(5)
    # Every role but the strategy holds the key and a password; the ACL keeps them out.
    for role in ("marketdata", "monitor", "execution", "strategy"):
        bus = (
            execution
            if role == "execution"
            else await started(buses, secure_broker.params(role), run)
        )
        bus.publish(t.intent("mm"), {"by": role})
        await bus.flush(5)
    await wait_until(lambda: "strategy" in got, 5, "the strategy's intent")
    await asyncio.sleep(0.3)
    assert got == ["strategy"]
    assert execution.stats.refused_total == 0


# ---------------------------------------------------------------------------------------
# A running split run under forged, unsigned and replayed messages
# ---------------------------------------------------------------------------------------


class Watcher:
    """Follows the execution node's heartbeats (its refusal counts) as the monitor user,
    and records raw intent frames as they crossed the broker."""

    def __init__(self, broker: SecureBroker, run: str) -> None:
        self.bus = MqttBus(broker.params("monitor"), run)
        self.scheme = TopicScheme(run)
        self.beat: dict[str, Any] = {}

    async def start(self) -> None:
        await self.bus.start()
        self.bus.subscribe(self.scheme.heartbeat("execution"), self._on_beat)
        await self.bus.flush(5)

    def _on_beat(self, topic: str, payload: dict[str, Any]) -> None:
        if payload.get("status") == "online":
            self.beat = payload

    def refused(self, reason: str) -> int:
        return int(self.beat.get("refused_by", {}).get(reason, 0))


def taker_buy(client_id: str) -> tuple[dict[str, Any], str]:
    """An intent to buy 1.0 ETH at once, the order an intruder would send."""
    order = Order(
        client_id,
        "sim",
        "ETH/USDT",
        Side.BUY,
        1000,  # lots of 0.001
        220_000,  # 2200.00: through the whole book
        OrderType.LIMIT,
        TimeInForce.IOC,
        strategy="mm_eth",
        created_ns=time.time_ns(),
    )
    return intent_payload(PlaceOrder(order), "mm_eth", 1)


async def settled(count: Callable[[], int], quiet_s: float = 1.0, limit_s: float = 15.0) -> int:
    """``count()`` once it stopped changing for ``quiet_s`` (at most ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    value, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = count()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return value


def mentions(run_dir: Path, client_id: str) -> int:
    try:
        records = journal_records(run_dir)
    except Exception:  # no table yet
        return 0
    return sum(client_id in json.dumps(r.payload) for r in records)


def tls_client(broker: SecureBroker, role: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=role,
        password=broker.passwords[role],
        tls_params=aiomqtt.TLSParameters(ca_certs=str(broker.ca)),
        identifier=f"raw-{role}-{uuid.uuid4().hex[:6]}",
    )


@pytest.mark.slow
async def test_messages_without_the_key_neither_trade_nor_stop_and_replays_are_refused(
    secure_broker: SecureBroker, nodes: Nodes, buses: list[MqttBus], tmp_path: Path
) -> None:
    # Wall clock: the execution node applies intents as they arrive on intent/<strategy>.
    manifest, run = write_manifest(
        tmp_path / "m.yaml", port=secure_broker.port, duration=600, clock="wall"
    )
    t = TopicScheme(run)
    watcher = Watcher(secure_broker, run)
    buses.append(watcher.bus)
    await watcher.start()
    nodes.start(manifest, "execution", "strategy", "monitor")
    exec_dir = nodes.dir("execution")
    await wait_until(lambda: bool(watcher.beat), 20, "the execution node's heartbeat")
    await wait_until(lambda: mentions(exec_dir, "mm_btc") > 0, 20, "the strategy trading")

    # An intruder with the strategy's broker password, which the ACL lets publish
    # intents and the kill switch, but without the bus key.
    intruder = await started(buses, secure_broker.params("strategy", signed=False), run)
    payload, msg_id = taker_buy("forged-1")
    intruder.publish(t.intent("mm_eth"), payload, msg_id=msg_id)
    intruder.publish(t.kill(), {"reason": "forged kill", "node": "monitor"})
    await intruder.flush(5)
    await wait_until(lambda: watcher.refused("unsigned") >= 2, 10, "two unsigned refusals")
    await asyncio.sleep(1.0)
    assert mentions(exec_dir, "forged-1") == 0
    assert all(proc.poll() is None for proc in nodes.procs.values()), "a node stopped"

    # The same intent signed with the key is applied: the refusal was the signature's.
    async with tls_client(secure_broker, "monitor") as spy:
        await spy.subscribe(t.intent("mm_eth"), qos=1)
        signer = await started(buses, secure_broker.params("strategy"), run)
        signed_payload, signed_id = taker_buy("signed-1")
        signer.publish(t.intent("mm_eth"), signed_payload, msg_id=signed_id)
        await signer.flush(5)
        captured: bytes | None = None
        async with asyncio.timeout(10):
            async for message in spy.messages:
                data = bytes(message.payload)
                if b"signed-1" in data:
                    captured = data
                    break
    assert captured is not None and captured.startswith(b"QFS1 ")
    await wait_until(lambda: mentions(exec_dir, "signed-1") > 0, 10, "the signed intent journaled")
    # The taker's order, its report and its fill are journaled one after another: count
    # them once the count holds still for a second.
    applied = await settled(lambda: mentions(exec_dir, "signed-1"))

    # The captured frame, replayed by a client with the strategy's password, after the
    # broker restarted and every node reconnected: refused, applied no second time.
    replayed_before = watcher.refused("replayed")
    secure_broker.kill()
    await asyncio.sleep(0.5)
    secure_broker.start()
    await wait_until(
        lambda: "reconnected to MQTT broker" in nodes.log("execution"), 20, "a reconnect"
    )
    await watcher.bus.flush(10)
    async with tls_client(secure_broker, "strategy") as replayer:
        await replayer.publish(t.intent("mm_eth"), captured, qos=1)
    await wait_until(
        lambda: watcher.refused("replayed") > replayed_before, 15, "the replay refused"
    )
    await asyncio.sleep(1.0)
    assert mentions(exec_dir, "signed-1") == applied
    assert mentions(exec_dir, "forged-1") == 0
    assert all(proc.poll() is None for proc in nodes.procs.values()), "a node stopped"
    assert "refused a frame on" in nodes.log("execution")

    # The operator sees it on the monitor: the refusals the execution node reported.
    def monitor_refused() -> int:
        try:
            table = json.loads((nodes.dir("monitor") / "monitor.json").read_text())
        except (OSError, ValueError):
            return 0
        return int(table["nodes"].get("execution", {}).get("refused", 0))

    await wait_until(lambda: monitor_refused() >= 3, 10, "the monitor showing refusals")
    assert "bus frames refused" in nodes.log("monitor")


# ---------------------------------------------------------------------------------------
# Signed buses over the broker: last wills and retained values
# ---------------------------------------------------------------------------------------


async def test_a_signed_last_will_and_retained_values_reach_signed_peers(
    buses: list[MqttBus], tmp_path: Path
) -> None:
    port = require_shared_broker()
    run = f"t{uuid.uuid4().hex[:10]}"
    client_id = f"doomed-{run}"
    key = KEY.decode()
    script = tmp_path / "node.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio
            from pydantic import SecretStr
            from quoteforge.plugins.bus_mqtt import MqttBus, MqttParams

            async def main():
                params = MqttParams(
                    port={port}, client_id={client_id!r}, keepalive=2,
                    signing_key=SecretStr({key!r}),
                )
                bus = MqttBus(params, {run!r})
                await bus.start()
                await bus.flush(5)
                print("ready", flush=True)
                await asyncio.sleep(60)

            asyncio.run(main())
            """
        )
    )

    def signed_params(signed: bool = True) -> MqttParams:
        return MqttParams(
            port=port,
            heartbeat_interval_s=0,
            connect_timeout_s=3,
            close_timeout_s=1,
            signing_key=SecretStr(key) if signed else None,
        )

    topic = TopicScheme(run).heartbeat(client_id)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.strip() == b"ready"
        watcher = await started(buses, signed_params(), run)
        beats: list[dict[str, Any]] = []
        watcher.subscribe(topic, lambda t, p: beats.append(p))
        await wait_until(lambda: len(beats) == 1, 5, "the retained online heartbeat")
        assert beats[0]["status"] == "online"
        # An unsigned "offline" on the same topic is refused; the real will is not.
        unsigned = await started(buses, signed_params(signed=False), run)
        unsigned.publish(topic, {"status": "offline", "node": client_id})
        await unsigned.flush(5)
        await wait_until(lambda: watcher.stats.refused["unsigned"] == 1, 5, "unsigned refused")
        proc.kill()
        await wait_until(lambda: len(beats) == 2, 10, "the last will")
        assert beats[1]["status"] == "offline" and beats[1]["reason"] == "connection lost"
        # A node joining later gets the retained will, signed long before it was sent.
        late = await started(buses, signed_params(), run)
        late_beats: list[dict[str, Any]] = []
        late.subscribe(topic, lambda t, p: late_beats.append(p))
        await wait_until(lambda: bool(late_beats), 5, "the retained will")
        assert late_beats[0]["reason"] == "connection lost"
        assert late.stats.refused_total == 0
        assert watcher.stats.refused_total == 1
    finally:
        proc.kill()
        proc.wait()
