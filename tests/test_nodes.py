"""Split runs: marketdata, strategy, execution and monitor nodes as separate processes
talking through a real Mosquitto broker, plus the wire forms and the remote venue."""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from brokers import SecureBroker, require_shared_broker
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger
from node_rigs import (
    GRACE,
    HEARTBEAT,
    MirrorSink,
    Observer,
    journal_records,
    mirror_rig,
    wait_until,
    working_after,
    write_manifest,
)
from split_nodes import Nodes

from quoteforge.book import BookState, L2Book
from quoteforge.cli import main
from quoteforge.clock import LiveClock
from quoteforge.engine import run_manifest
from quoteforge.exchange import (
    CancelAll,
    CancelOrder,
    OrderAction,
    PlaceOrder,
    ReplaceOrder,
    VenueContext,
)
from quoteforge.journal import JournalRecord
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.model import (
    Fill,
    Instrument,
    InstrumentKind,
    Liquidity,
    Offer,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
)
from quoteforge.plugins.bus_mqtt import MqttBus
from quoteforge.plugins.distributed.nodes import load_node_manifest, run_node
from quoteforge.plugins.distributed.remote import (
    IntentError,
    LockstepClock,
    MarketDataPublisher,
    RemoteVenue,
    apply_book_sync,
    book_sync,
    fill_payload,
    instrument_from_dict,
    instrument_to_dict,
    intent_from_payload,
    intent_payload,
    offer_from_wire,
    offer_to_wire,
    update_from_wire,
    update_to_wire,
)
from quoteforge.plugins.distributed.topics import TopicKind, TopicScheme, decode, encode
from quoteforge.registry import PluginRegistry

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def has_fills(run_dir: Path) -> bool:
    """Whether a running node's journal holds a fill yet (it may not have a table yet)."""
    try:
        return bool(journal_records(run_dir, "fill"))
    except sqlite3.OperationalError:
        return False


def fill_keys(records: list[JournalRecord]) -> collections.Counter[tuple[str, int, int]]:
    return collections.Counter(
        (r.payload["fill"]["client_id"], r.payload["fill"]["ts_ns"], r.payload["fill"]["qty_lots"])
        for r in records
        if r.kind == "fill"
    )


def trace_fill_keys(
    run_dir: Path, lot_sizes: dict[str, Decimal]
) -> collections.Counter[tuple[str, int, int]]:
    keys: collections.Counter[tuple[str, int, int]] = collections.Counter()
    with (run_dir / "trace.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["type"] == "fill":
                lots = int((Decimal(repr(rec["qty"])) / lot_sizes[rec["market"]]).to_integral())
                keys[(rec["client_id"], rec["t"], lots)] += 1
    return keys


def fills_per_market(records: list[JournalRecord]) -> collections.Counter[str]:
    return collections.Counter(r.market for r in records if r.kind == "fill")


LOT_SIZES = {"sim:BTC/USDT": Decimal("0.0001"), "sim:ETH/USDT": Decimal("0.001")}


def fill_dicts(records: list[JournalRecord]) -> list[dict[str, Any]]:
    """Every fill of a journal, in journal order, as the venue made it."""
    return [r.payload["fill"] for r in records if r.kind == "fill"]


def decisions(records: list[JournalRecord]) -> list[tuple[str, str, int, str, Any]]:
    """A journal without its run start/stop records (they name the run folder)."""
    return [(r.event_id, r.kind, r.ts_ns, r.market, r.payload) for r in records if r.kind != "run"]


async def run_in_one_process(manifest: Path, registry: PluginRegistry, out: Path) -> Path:
    """The same manifest in one process: the in-process bus, virtual time, same seed."""
    data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    data.pop("nodes")
    data["bus"] = {"type": "inprocess"}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    loaded, _ = load_node_manifest(path, registry)
    await run_manifest(loaded, registry, run_dir=out, install_signals=False)
    return out


@pytest.fixture
async def observers() -> AsyncIterator[list[Observer]]:
    made: list[Observer] = []
    yield made
    for obs in made:
        await obs.bus.close()


# ---------------------------------------------------------------------------------------
# Wire forms (no broker)
# ---------------------------------------------------------------------------------------

orders = st.builds(
    Order,
    client_id=st.from_regex(r"[a-z0-9]{1,6}-[a-z0-9]{1,10}-[a-z0-9]{1,6}", fullmatch=True),
    venue=st.sampled_from(["sim", "binance"]),
    symbol=st.sampled_from(["BTC/USDT", "ETH-PERP/USD"]),
    side=st.sampled_from(list(Side)),
    qty_lots=st.integers(1, 2**53),
    price_ticks=st.integers(1, 2**62),
    order_type=st.just(OrderType.LIMIT),
    tif=st.sampled_from(list(TimeInForce)),
    strategy=st.sampled_from(["mm", "mm_eth"]),
    level=st.integers(-1, 10),
    created_ns=st.integers(0, 2**63 - 1),
)


@settings(max_examples=150, deadline=None)
@given(order=orders, new=orders, which=st.integers(0, 3))
def test_intents_carry_orders_exactly_through_the_wire(
    order: Order, new: Order, which: int
) -> None:
    new.venue, new.symbol = order.venue, order.symbol
    actions: list[OrderAction] = [
        PlaceOrder(order),
        CancelOrder(order.client_id, order.venue, order.symbol),
        ReplaceOrder(order.client_id, new),
        CancelAll(order.venue, order.symbol),
    ]
    action = actions[which]
    payload, msg_id = intent_payload(action, order.strategy, 7)
    wire = decode(encode(payload, msg_id=msg_id, seq=1))
    strategy, back = intent_from_payload(wire.payload)
    assert strategy == order.strategy
    assert back == action
    if isinstance(back, PlaceOrder):
        assert type(back.order.price_ticks) is int and type(back.order.qty_lots) is int
    # The same action always travels under the same id, so a republish is applied once.
    assert intent_payload(action, order.strategy, 7)[1] == msg_id


def test_a_malformed_intent_names_what_is_wrong() -> None:
    with pytest.raises(IntentError, match="unknown intent action 'buy'"):
        intent_from_payload({"action": "buy", "strategy": "mm"})
    with pytest.raises(IntentError, match="malformed intent"):
        intent_from_payload({"action": "cancel", "strategy": "mm", "venue": "sim"})


def test_instruments_round_trip_with_exact_sizes() -> None:
    inst = Instrument(
        "sim",
        "RAIN/USD",
        "RAIN",
        "USD",
        Decimal("0.01"),
        Decimal("1"),
        min_notional=Decimal("5.00"),
        kind=InstrumentKind.BINARY,
        maker_fee=Decimal("-0.00005"),
    )
    wire = decode(encode({"i": instrument_to_dict(inst)}, msg_id=None, seq=1))
    assert instrument_from_dict(wire.payload["i"]) == inst


def test_load_node_manifest_reads_and_checks_the_nodes_section(
    registry: PluginRegistry,
    tmp_path: Path,
    secure_broker: SecureBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in secure_broker.env("strategy").items():
        monkeypatch.setenv(name, value)
    path, _ = write_manifest(tmp_path / "m.yaml", port=secure_broker.port, duration=5)
    loaded, node_settings = load_node_manifest(path, registry)
    assert node_settings.strategy_grace == GRACE and node_settings.heartbeat == HEARTBEAT
    assert "nodes:" in loaded.text  # the run folder keeps the manifest as written
    bad = path.read_text().replace("strategy_grace:", "strategy_grase:")
    path.write_text(bad)
    with pytest.raises(ManifestError, match=r"nodes\.strategy_grase.*strategy_grace"):
        load_node_manifest(path, registry)


async def test_split_roles_refuse_the_in_process_bus(
    registry: PluginRegistry, tmp_path: Path, secure_broker: SecureBroker
) -> None:
    path, _ = write_manifest(tmp_path / "m.yaml", port=secure_broker.port, duration=5)
    text = path.read_text().replace("type: mqtt", "type: inprocess")
    data = yaml.safe_load(text)
    data["bus"].pop("params")
    path.write_text(yaml.safe_dump(data))
    loaded, _ = load_node_manifest(path, registry)
    messages: list[str] = []
    sink = logger.add(messages.append, level="ERROR", format="{message}")
    try:
        code = await run_node(loaded, registry, "strategy", tmp_path / "run", path)
        unknown = await run_node(loaded, registry, "trader", tmp_path / "run", path)
    finally:
        logger.remove(sink)
    assert (code, unknown) == (2, 2)
    assert "needs a network bus" in messages[0] and "type: mqtt" in messages[0]
    assert "unknown node role 'trader'" in messages[1]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setting", "value"), [("stale_after", 1.0), ("strategy_grace", 0.8), ("stale_after", 0.2)]
)
async def test_split_roles_refuse_silence_limits_within_two_heartbeats(
    registry: PluginRegistry,
    tmp_path: Path,
    secure_broker: SecureBroker,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    value: float,
) -> None:
    """A silence judged against a limit of two heartbeats or less ends in false alarms:
    books STALE, or the strategy's orders cancelled, between two heartbeats. Refused at
    start, naming the setting, the heartbeat and the way out."""
    path, _ = write_manifest(tmp_path / "m.yaml", port=secure_broker.port, duration=5)
    data = yaml.safe_load(path.read_text())
    data["nodes"][setting] = value  # the heartbeat is HEARTBEAT (0.5 s)
    path.write_text(yaml.safe_dump(data))
    for name, text in secure_broker.env("execution").items():
        monkeypatch.setenv(name, text)
    loaded, _ = load_node_manifest(path, registry)
    messages: list[str] = []
    sink = logger.add(messages.append, level="ERROR", format="{message}")
    try:
        code = await run_node(loaded, registry, "execution", tmp_path / "run", path)
    finally:
        logger.remove(sink)
    assert code == 2
    assert messages[0].rstrip("\n") == (
        f"nodes.{setting} ({value:g}s) must be longer than two heartbeats (nodes.heartbeat "
        f"0.5s): a silence is judged against it, so one late heartbeat would look like a lost "
        f"node; raise nodes.{setting} above 1s or send heartbeats more often"
    )
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------
# A run in one process on a network bus: it obeys a kill on quoteforge/<run>/control/kill
# ---------------------------------------------------------------------------------------


def one_process_manifest(
    path: Path, port: int, mode: str, *, duration: float = 5, **bus: Any
) -> tuple[Path, str]:
    """The example manifest on ``port`` in ``mode``; ``bus`` sets (None: removes) bus
    params."""
    path, name = write_manifest(path, port=port, duration=duration)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["run"]["mode"] = mode
    for key, value in bus.items():
        if value is None:
            data["bus"]["params"].pop(key, None)
        else:
            data["bus"]["params"][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path, name


UNPROTECTED = {"tls": None, "username": None, "password": None, "signing_key": None}


@pytest.mark.parametrize(
    ("bus", "expected"),
    [
        ({"username": None, "password": None}, "connects anonymously"),
        ({"signing_key": None}, "not signed: set signing_key"),
        ({"tls": None, "host": "192.0.2.7"}, "192.0.2.7 is not on this machine"),
    ],
    ids=["anonymous", "unsigned", "plain-tcp-remote"],
)
def test_a_live_run_in_one_process_refuses_an_unprotected_bus(
    bus: dict[str, Any],
    expected: str,
    registry: PluginRegistry,
    secure_broker: SecureBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused when the manifest loads, so `quoteforge run` (no --node) neither makes a
    run folder nor connects; the protected bus of the example loads in live mode too."""
    for name, value in secure_broker.env("strategy").items():
        monkeypatch.setenv(name, value)
    protected, _ = one_process_manifest(tmp_path / "ok.yaml", secure_broker.port, "live")
    assert load_manifest(protected, registry).manifest.run.mode == "live"
    path, _ = one_process_manifest(tmp_path / "m.yaml", secure_broker.port, "live", **bus)
    refusal = r"bus\.params: a live run refuses to trade over an unprotected bus: .*insecure: true"
    with pytest.raises(ManifestError, match=refusal) as refused:
        load_manifest(path, registry)
    assert expected in str(refused.value)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    for mode in ("sim", "paper"):  # no real order to stop: warned at start instead
        load_manifest(path, registry, overrides=[f"run.mode={mode}"])
    load_manifest(path, registry, overrides=["bus.params.insecure=true"])


async def test_run_node_holds_a_live_run_in_one_process_to_the_bus_checks(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    """``run_node(..., "all")`` checks the bus itself too, whatever made the loaded
    params (a network backend without a check of its own when the manifest loads)."""
    port = require_shared_broker()
    path, _ = one_process_manifest(
        tmp_path / "m.yaml", port, "live", duration=1, insecure=True, **UNPROTECTED
    )
    loaded, _ = load_node_manifest(path, registry)
    loaded.plugin_params["bus"] = loaded.params_of("bus").model_copy(update={"insecure": False})
    messages: list[str] = []
    sink = logger.add(messages.append, level="ERROR", format="{message}")
    try:
        code = await run_node(
            loaded, registry, "all", tmp_path / "run", path, install_signals=False
        )
    finally:
        logger.remove(sink)
    assert code == 2
    assert messages[0].startswith("a live run refuses to trade over an unprotected bus: ")
    assert "anonymously" in messages[0] and "not signed" in messages[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("mode", "insecure", "prefix"),
    [
        ("live", True, "INSECURE one-process run, bus.params.insecure is set: "),
        (
            "sim",
            False,
            "one-process sim run on an unprotected bus: anyone who can publish on "
            "quoteforge/{name}/control/kill stops it: ",
        ),
    ],
    ids=["live-insecure", "sim"],
)
async def test_a_run_in_one_process_on_an_unprotected_bus_warns_at_every_start(
    mode: str,
    insecure: bool,
    prefix: str,
    registry: PluginRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = require_shared_broker()  # the anonymous test broker
    monkeypatch.delenv("QF_MQTT_CA", raising=False)
    bus = {**UNPROTECTED, "insecure": insecure or None}
    path, name = one_process_manifest(tmp_path / "m.yaml", port, mode, duration=1, **bus)
    loaded, _ = load_node_manifest(path, registry)
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    try:
        for start in range(2):
            run_dir = tmp_path / f"run{start}"
            code = await asyncio.wait_for(
                run_node(loaded, registry, "all", run_dir, path, install_signals=False), 60
            )
            assert code == 0
    finally:
        logger.remove(sink)
    said = [w for w in warnings if w.startswith(prefix.format(name=name))]
    assert len(said) == 4, warnings  # anonymous and unsigned, at each of two starts
    assert sum("anonymously" in w for w in said) == 2
    assert sum("not signed" in w for w in said) == 2


async def test_remote_venue_mirrors_books_and_goes_stale_when_the_publisher_is_silent() -> None:
    rig = await mirror_rig(0.3, secrets={"key": "k"})
    bus, scheme, publisher, ctx, venue, sink = (
        rig.bus, rig.scheme, rig.publisher, rig.ctx, rig.venue, rig.sink,
    )  # fmt: skip
    source = rig.live_source([(100, 5), (99, 7)])
    assert ctx.secrets == {}  # nothing secret reaches the strategy node
    mirror = venue.books["BTC/USDT"]
    assert mirror.state is BookState.SYNCING
    publisher.on_book_state(source, "LIVE", "LIVE", "start")
    assert mirror.state is BookState.LIVE and sink.states[-1][:2] == ("SYNCING", "LIVE")
    assert (mirror.best_bid(), mirror.best_ask(), mirror.depth(Side.BUY)) == ((100, 5), (101, 3), 1)
    source.set_level(Side.SELL, 101, 0)
    source.set_level(Side.SELL, 102, 9)
    publisher.on_book(source)
    await asyncio.sleep(0)  # book messages are coalesced per event-loop pass
    assert mirror.best_ask() == (102, 9) and sink.books == 1
    await wait_until(lambda: mirror.state is BookState.STALE, 5, "mirror goes STALE")
    assert "no book message and no execution heartbeat" in sink.states[-1][2]
    publisher.on_book(source)
    await asyncio.sleep(0)
    assert mirror.state is BookState.LIVE
    bus.publish(scheme.heartbeat("execution"), {"status": "offline", "reason": "connection lost"})
    assert mirror.state is BookState.STALE and "connection lost" in sink.states[-1][2]

    sent: list[dict[str, Any]] = []
    bus.subscribe(scheme.intent("mm"), lambda topic, payload: sent.append(payload))
    order = Order("mm-1-1", "sim", "BTC/USDT", Side.BUY, 3, 100, strategy="mm")
    venue.submit([PlaceOrder(order), CancelOrder("mm-1-1", "sim", "BTC/USDT")])
    assert [p["action"] for p in sent] == ["place", "cancel"]
    assert sent[0]["order"]["price_ticks"] == 100 and sent[0]["order"]["qty_lots"] == 3
    bus.publish(
        scheme.order("sim"),
        {"venue": "sim", "client_id": "mm-1-1", "status": "open", "ts_ns": 5, "symbol": "BTC/USDT"},
        msg_id="u1",
    )
    assert sink.updates[-1].status is OrderStatus.OPEN
    await venue.close()


async def test_the_book_mirror_keeps_the_newest_message_of_each_publisher() -> None:
    """Live updates and retained snapshots reach the mirror on two topics, in any order:
    per publisher only a newer message counts; a restarted publisher (a new id) counts
    from its first message; a message that repeats the mirror's levels changes its time,
    not the strategy's view; a publisher book that is not LIVE makes the mirror STALE
    and its next LIVE message makes it LIVE again. Nothing counts while the host is
    offline."""
    rig = await mirror_rig(60, depth=2)
    bus, scheme, venue, sink = rig.bus, rig.scheme, rig.venue, rig.sink
    mirror = venue.books["BTC/USDT"]
    live, retained = scheme.book("sim", "BTC/USDT"), scheme.book_snapshot("sim", "BTC/USDT")

    def send(topic: str, pub: str, n: int, bid: int, state: str = "LIVE", ts: int = 0) -> None:
        payload = {
            "bids": [[bid, 5]], "asks": [[bid + 2, 4]], "state": state,
            "ts_ns": ts or n, "pub": pub, "n": n,
        }  # fmt: skip
        bus.publish(topic, payload)

    # A host going offline before any data leaves the mirror SYNCING, said nowhere, and
    # what it published before (retained) does not count until it is back.
    bus.publish(scheme.heartbeat("execution"), {"status": "offline", "reason": "lost"})
    send(retained, "a", 2, 100)
    assert mirror.state is BookState.SYNCING and sink.states == []
    bus.publish(scheme.heartbeat("execution"), {"status": "online"})
    bus.publish(scheme.node_session("execution"), {"instance": "x", "connects": 2})
    send(live, "a", 2, 100)
    assert mirror.state is BookState.LIVE and mirror.best_bid() == (100, 5)
    assert sink.states == [("SYNCING", "LIVE", "snapshot from the bus")] and sink.books == 0
    send(retained, "a", 1, 90)  # the retained snapshot of an older moment
    send(live, "a", 2, 91)  # the same message again
    assert mirror.best_bid() == (100, 5) and sink.books == 0
    send(retained, "a", 3, 101)
    assert mirror.best_bid() == (101, 5) and mirror.ts_ns == 3 and sink.books == 1
    send(live, "b", 1, 102)  # the publisher restarted: its count starts again
    assert mirror.best_bid() == (102, 5) and sink.books == 2
    send(live, "b", 2, 102, ts=77)  # the same levels: a new time, no book event
    assert mirror.ts_ns == 77 and sink.books == 2
    send(live, "b", 3, 103, state="RESYNCING")
    send(live, "b", 4, 103, state="RESYNCING")  # still not LIVE: no second STALE
    assert mirror.state is BookState.STALE and mirror.best_bid() == (102, 5)
    send(live, "b", 5, 104)
    assert mirror.state is BookState.LIVE and mirror.best_bid() == (104, 5)
    assert sink.states == [
        ("SYNCING", "LIVE", "snapshot from the bus"),
        ("LIVE", "STALE", "publisher book RESYNCING"),
        ("STALE", "LIVE", "snapshot from the bus"),
    ]
    assert sink.books == 2
    await venue.close()


async def test_a_mirror_stays_live_while_its_publisher_or_host_speaks() -> None:
    """Within ``stale_after_s`` of a book message or of the hosting node's heartbeat the
    mirror stays LIVE; after that long without either it goes STALE, naming the silence."""
    rig = await mirror_rig(0.3)
    bus, scheme, publisher, venue, sink = rig.bus, rig.scheme, rig.publisher, rig.venue, rig.sink
    source = rig.live_source()
    mirror = venue.books["BTC/USDT"]
    publisher.on_book_state(source, "LIVE", "LIVE", "start")
    assert mirror.state is BookState.LIVE
    for _ in range(8):  # heartbeats only, each within the bound
        await asyncio.sleep(0.1)
        bus.publish(scheme.heartbeat("execution"), {"status": "online"})
        assert mirror.state is BookState.LIVE
    for k in range(8):  # book messages only
        await asyncio.sleep(0.1)
        source.set_level(Side.BUY, 100, 6 + k)
        publisher.on_book(source)
        assert mirror.state is BookState.LIVE
    await asyncio.sleep(0)
    last = time.monotonic()
    await wait_until(lambda: mirror.state is BookState.STALE, 5, "mirror goes STALE")
    assert time.monotonic() - last >= 0.3
    assert sink.states[1:] == [("LIVE", "STALE", sink.states[-1][2])]
    assert "no book message and no execution heartbeat for" in sink.states[-1][2]
    await venue.close()


async def test_without_the_execution_node_the_books_of_a_market_data_host_go_stale() -> None:
    """A real venue's books come from the market-data node, its orders go through the
    execution node: until that one has announced its session (it listens to intents
    then), and while it is offline, the books are not LIVE (the engine places nothing),
    whatever the market-data node publishes; its next session and the next book message
    make them LIVE. Its last session sent again (retained, to a new subscriber) is not a
    return."""
    rig = await mirror_rig(60, host_role="marketdata", announce=False)
    bus, scheme, publisher, venue, sink = rig.bus, rig.scheme, rig.publisher, rig.venue, rig.sink
    source = rig.live_source()
    mirror = venue.books["BTC/USDT"]
    session = scheme.node_session("execution")
    publisher.on_book_state(source, "SYNCING", "LIVE", "start")
    bus.publish(scheme.heartbeat("execution"), {"status": "online"})  # not subscribed yet
    publisher.on_book_state(source, "LIVE", "LIVE", "update")
    assert mirror.state is BookState.SYNCING and sink.states == []
    bus.publish(session, {"role": "execution", "instance": "a", "connects": 1})
    publisher.on_book_state(source, "LIVE", "LIVE", "start")
    assert mirror.state is BookState.LIVE
    bus.publish(scheme.heartbeat("execution"), {"status": "offline", "reason": "closed"})
    assert mirror.state is BookState.STALE
    assert sink.states[-1][2] == "execution node offline (closed): no order reaches the venue"
    for bid in (5, 6):
        source.set_level(Side.BUY, 100, bid)
        publisher.on_book_state(source, "LIVE", "LIVE", "update")
        bus.publish(scheme.heartbeat("marketdata"), {"status": "online"})
    assert mirror.state is BookState.STALE and mirror.best_bid() == (100, 5)
    bus.publish(session, {"role": "execution", "instance": "a", "connects": 1})  # again
    bus.publish(scheme.heartbeat("execution"), {"status": "online"})
    source.set_level(Side.BUY, 100, 7)
    publisher.on_book_state(source, "LIVE", "LIVE", "update")
    assert mirror.state is BookState.STALE
    bus.publish(session, {"role": "execution", "instance": "a", "connects": 2})  # back
    assert mirror.state is BookState.STALE  # until a book message says how it is now
    source.set_level(Side.BUY, 100, 7)
    publisher.on_book_state(source, "LIVE", "LIVE", "update")
    assert mirror.state is BookState.LIVE and mirror.best_bid() == (100, 7)
    assert [state[:2] for state in sink.states] == [
        ("SYNCING", "LIVE"), ("LIVE", "STALE"), ("STALE", "LIVE"),
    ]  # fmt: skip
    await venue.close()


async def test_a_silent_execution_node_makes_the_books_of_a_market_data_host_stale() -> None:
    """An execution node that froze (a paused host, a dead link the broker has not
    noticed yet) stays "online" at the broker until its last will, up to 1.5x the MQTT
    keepalive later. Its heartbeats stop, though: after ``stale_after_s`` without one
    the books go STALE, naming the silence, and no book message counts meanwhile; its
    next heartbeat (the same session: the process only paused) and the next book message
    make them LIVE again."""
    rig = await mirror_rig(0.3, host_role="marketdata")
    bus, scheme, publisher, venue, sink = rig.bus, rig.scheme, rig.publisher, rig.venue, rig.sink
    source = rig.live_source()
    mirror = venue.books["BTC/USDT"]
    publisher.on_book_state(source, "SYNCING", "LIVE", "start")
    assert mirror.state is BookState.LIVE
    for k in range(6):  # the execution node beats; the market-data node publishes
        await asyncio.sleep(0.1)
        bus.publish(scheme.heartbeat("execution"), {"status": "online"})
        source.set_level(Side.BUY, 100, 6 + k)
        publisher.on_book(source)
        await asyncio.sleep(0)
        assert mirror.state is BookState.LIVE
    last_beat = time.monotonic()
    for k in range(8):  # book messages only: the execution node went quiet
        await asyncio.sleep(0.1)
        source.set_level(Side.BUY, 100, 20 + k)
        publisher.on_book(source)
        await asyncio.sleep(0)
        if mirror.state is BookState.STALE:
            break
    assert mirror.state is BookState.STALE
    assert time.monotonic() - last_beat >= 0.3
    assert sink.states[-1][2].startswith("no execution heartbeat for ")
    assert sink.states[-1][2].endswith("(limit 300 ms): no order reaches the venue")
    stale_bid = mirror.best_bid()
    source.set_level(Side.BUY, 100, 40)
    publisher.on_book(source)
    await asyncio.sleep(0)
    assert mirror.state is BookState.STALE and mirror.best_bid() == stale_bid
    bus.publish(scheme.heartbeat("execution"), {"status": "online"})  # it woke up
    assert mirror.state is BookState.STALE  # until a book message says how it is now
    source.set_level(Side.BUY, 100, 41)
    publisher.on_book(source)
    await asyncio.sleep(0)
    assert mirror.state is BookState.LIVE and mirror.best_bid() == (100, 41)
    assert [state[:2] for state in sink.states] == [
        ("SYNCING", "LIVE"), ("LIVE", "STALE"), ("STALE", "LIVE"),
    ]  # fmt: skip
    await venue.close()


async def test_a_strategy_node_never_quotes_on_the_last_book_of_a_host_that_is_down(
    secure_broker: SecureBroker,
) -> None:
    """A host that crashed leaves, retained at the broker, its instruments, its session,
    its last LIVE book snapshot and its last will ("offline"). A strategy node starting
    then must not take that book for today's: it stays unusable, without a book shown to
    the strategy, until the host is back (a new session) and publishes again."""
    run = f"t{uuid.uuid4().hex[:10]}"
    scheme = TopicScheme(run)
    inst = Instrument("sim", "BTC/USDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.001"))
    source = L2Book(inst)
    source.apply_snapshot([(100, 5)], [(101, 3)], 1)
    source.state = BookState.LIVE
    host = MqttBus(secure_broker.params("execution"), run)
    await host.start()
    publisher = MarketDataPublisher(host, scheme, depth=1, snapshot_interval_s=0)
    publisher.publish_instruments("sim", {inst.symbol: inst})
    session = {"role": "execution", "instance": "a", "connects": 1}
    host.publish(scheme.node_session("execution"), session, qos=1, retain=True)
    publisher.on_book_state(source, "SYNCING", "LIVE", "start")  # retained snapshot
    offline = {"status": "offline", "reason": "connection lost"}
    host.publish(scheme.heartbeat("execution"), offline, qos=1, retain=True)  # its will
    await host.flush(5)
    await host.close()

    bus = MqttBus(secure_broker.params("strategy"), run)
    await bus.start()
    ctx = VenueContext("sim", LiveClock(), 0, "sim", ["BTC/USDT"])
    venue = RemoteVenue(ctx, lambda: bus, scheme, ["mm"], host_role="execution", stale_after_s=60)
    sink = MirrorSink()
    try:
        await venue.connect(sink)
        mirror = venue.books["BTC/USDT"]
        await asyncio.sleep(0.5)  # the retained messages have arrived
        assert mirror.state is BookState.SYNCING and sink.states == [] and sink.books == 0

        host = MqttBus(secure_broker.params("execution"), run)  # the host is back
        await host.start()
        host.publish(scheme.heartbeat("execution"), {"status": "online"}, qos=1, retain=True)
        session = {"role": "execution", "instance": "b", "connects": 1}
        host.publish(scheme.node_session("execution"), session, qos=1, retain=True)
        await host.flush(5)
        publisher = MarketDataPublisher(host, scheme, depth=1, snapshot_interval_s=0)
        source.set_level(Side.BUY, 100, 9)
        publisher.on_book_state(source, "SYNCING", "LIVE", "start")
        await wait_until(lambda: mirror.state is BookState.LIVE, 5, "mirror LIVE again")
        assert mirror.best_bid() == (100, 9)
    finally:
        await venue.close()
        await bus.close()
        await host.close()


# ---------------------------------------------------------------------------------------
# Lock step: the follower's clock and the book mirrors (no broker)
# ---------------------------------------------------------------------------------------


def test_lockstep_clock_reports_its_timers_and_runs_only_what_the_driver_fires() -> None:
    clock = LockstepClock(1_000)
    ran: list[str] = []
    first = clock.call_later(50, ran.append, "first")
    clock.record(("intent", {"action": "place"}))
    second = clock.call_at(10, ran.append, "second")  # in the past: due now
    first.cancel()
    first.cancel()  # a second cancel is not another operation
    assert clock.take_ops() == [
        ("timer", 1, 1_050),
        ("intent", {"action": "place"}),
        ("timer", 2, 1_000),
        ("cancel", 1),
    ]
    assert clock.take_ops() == []
    assert ran == []  # nothing runs by itself
    clock.advance(1_020)
    clock.advance(900)  # virtual time never goes back
    assert clock.now_ns() == 1_020
    assert clock.fire(1) is False and clock.fire(2) is True and clock.fire(2) is False
    assert ran == ["second"]
    second.cancel()  # after it ran: nothing to report
    assert clock.take_ops() == [] and clock.pending_timers == 0


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.lists(
            st.tuples(st.sampled_from(list(Side)), st.integers(90, 110), st.integers(0, 5)),
            max_size=8,
        ),
        min_size=1,
        max_size=12,
    )
)
def test_a_book_sync_makes_the_mirror_equal_counters_included(
    steps: list[list[tuple[Side, int, int]]],
) -> None:
    inst = Instrument("sim", "BTC/USDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.001"))
    source, mirror = L2Book(inst), L2Book(inst)
    sent = None
    for i, changes in enumerate(steps):
        for side, price, lots in changes:
            if (side is Side.BUY and price > 100) or (side is Side.SELL and price <= 100):
                continue  # keep the book uncrossed
            source.set_level(side, price, lots)
        source.ts_ns = i
        source.update_count += 1
        source.state = BookState.LIVE if i % 3 else BookState.STALE
        data, sent = book_sync(source, sent)
        apply_book_sync(mirror, decode(encode({"d": data}, msg_id=None, seq=1)).payload["d"])
        for side in Side:
            assert list(mirror.levels(side)) == list(source.levels(side))
            assert mirror.top(side, 5) == source.top(side, 5)
            assert mirror.side_top_version(side) == source.side_top_version(side)
        assert (mirror.version, mirror.top_version, mirror.update_count, mirror.ts_ns) == (
            source.version,
            source.top_version,
            source.update_count,
            source.ts_ns,
        )
        assert mirror.state is source.state


async def test_a_lockstep_mirror_hands_on_each_event_exactly_as_the_venue_made_it() -> None:
    """In a lock-step run the execution node sends the venue's events in order: book
    syncs, book changes, state changes, trades, order reports, fills. The strategy
    node's remote venue hands each to the run as the venue did; events of a symbol it
    does not mirror are dropped."""
    rig = await mirror_rig(60)
    venue, sink = rig.venue, rig.sink
    source = rig.live_source()
    sync, _ = book_sync(source, None)
    venue.lockstep_event("y", sync)
    venue.lockstep_event("y", ["ETH/USDT", *sync[1:]])  # not mirrored: dropped
    mirror = venue.books["BTC/USDT"]
    assert (mirror.best_bid(), mirror.best_ask(), mirror.state) == (
        (100, 5), (101, 3), BookState.LIVE,
    )  # fmt: skip
    venue.lockstep_event("b", "BTC/USDT")
    venue.lockstep_event("b", "ETH/USDT")
    assert sink.shown == [mirror]
    venue.lockstep_event("s", ["BTC/USDT", "LIVE", "STALE", "gap"])
    venue.lockstep_event("s", ["ETH/USDT", "LIVE", "STALE", "a gap elsewhere"])
    assert sink.states == [("LIVE", "STALE", "gap")]
    venue.lockstep_event("x", ["BTC/USDT", 101, 2, int(Side.BUY), 9])
    assert sink.trades == [("sim", "BTC/USDT", 101, 2, Side.BUY, 9)]
    update = OrderUpdate("sim", "mm-1-1", OrderStatus.OPEN, 7, "x1", 0, 100, 3, "", "BTC/USDT")
    venue.lockstep_event("o", update_to_wire(update))
    assert sink.updates == [update]
    fill = Fill(
        "sim", "BTC/USDT", "t-1", "mm-1-1", Side.BUY, 100, 3, Decimal("0.0003"), "USDT",
        Liquidity.MAKER, 8, strategy="mm",
    )  # fmt: skip
    venue.lockstep_event("f", fill_payload(fill))
    assert sink.fills == [fill]
    offer = Offer("sim", "BTC/USDT", "of-1", Side.SELL, 101, 4, 5, 9)
    venue.lockstep_event("w", offer_to_wire(offer))
    assert sink.offers == [offer]
    await venue.close()


def test_order_reports_and_offers_travel_exactly_as_the_venue_made_them() -> None:
    update = OrderUpdate(
        "sim", "mm-1-1", OrderStatus.PARTIALLY_FILLED, 7, "x1", 3, 100, 9, "why", ""
    )
    wire = decode(encode({"u": update_to_wire(update)}, msg_id=None, seq=1)).payload["u"]
    assert update_from_wire("sim", wire) == update
    offer = Offer("sim", "BTC/USDT", "of-1", Side.SELL, 101, 4, 5, 9)
    wire = decode(encode({"o": offer_to_wire(offer)}, msg_id=None, seq=1)).payload["o"]
    assert offer_from_wire("sim", wire) == offer


# ---------------------------------------------------------------------------------------
# Nodes as processes
# ---------------------------------------------------------------------------------------


def check_split_run(
    nodes: Nodes, *, every_market: bool = True
) -> tuple[list[JournalRecord], list[JournalRecord]]:
    """What every split run guarantees, whatever its clock: each fill of the venue once in
    the execution journal and once at the strategy node, every order placed by the
    strategy node reached the execution node, nothing left open. Returns the journals of
    the execution and strategy nodes."""
    exec_dir, strat_dir = nodes.dir("execution"), nodes.dir("strategy")
    exec_records = journal_records(exec_dir)
    strat_records = journal_records(strat_dir)
    venue_ids = sorted(
        json.loads(line)["fill_id"]
        for line in (exec_dir / "venue_fills.jsonl").read_text().splitlines()
        if line
    )
    exec_ids = [r.payload["fill"]["fill_id"] for r in exec_records if r.kind == "fill"]
    strat_ids = [r.payload["fill"]["fill_id"] for r in strat_records if r.kind == "fill"]
    assert sorted(exec_ids) == sorted(strat_ids) == venue_ids
    assert len(set(exec_ids)) == len(exec_ids)
    assert trace_fill_keys(strat_dir, LOT_SIZES) == fill_keys(exec_records)
    # Quotes were placed and filled in every market, and nothing is left open anywhere.
    if every_market:
        assert set(fills_per_market(exec_records)) == set(LOT_SIZES)
    assert {r.market for r in exec_records if r.kind == "order"} == set(LOT_SIZES)
    assert working_after(exec_records) == [] and working_after(strat_records) == []
    assert nodes.info("execution")["open_orders_left"] == 0
    # Every order the strategy made reached the execution node, and no other.
    assert {r.payload["order"]["client_id"] for r in strat_records if r.kind == "order"} == {
        r.payload["order"]["client_id"] for r in exec_records if r.kind == "order"
    }
    return exec_records, strat_records


def check_same_as_one_process(
    nodes: Nodes, single_dir: Path, exec_records: list[JournalRecord]
) -> None:
    """A lock-step run and the one-process run of the same manifest and seed: the same
    fills (ids, order ids, prices, sizes, fees, times), the same journal at the strategy
    node (every order, report and risk decision) and the same trace."""
    single = journal_records(single_dir)
    strat_dir = nodes.dir("strategy")
    strat_records = journal_records(strat_dir)
    assert len(fill_dicts(single)) >= 10
    assert fill_dicts(exec_records) == fill_dicts(single)
    assert fill_dicts(strat_records) == fill_dicts(single)
    assert decisions(strat_records) == decisions(single)
    strat_trace = (strat_dir / "trace.jsonl").read_text(encoding="utf-8").splitlines()
    assert strat_trace == (single_dir / "trace.jsonl").read_text(encoding="utf-8").splitlines()
    assert nodes.info("execution")["lockstep_steps"] > 100


@pytest.mark.slow
async def test_three_node_sim_run_gives_exactly_the_fills_of_one_process(
    secure_broker: SecureBroker, nodes: Nodes, registry: PluginRegistry, tmp_path: Path
) -> None:
    manifest, _ = write_manifest(tmp_path / "split.yaml", port=secure_broker.port, duration=10)
    nodes.start(manifest, "execution", "marketdata", "strategy")
    codes = await nodes.wait(60)
    assert codes == {"execution": 0, "marketdata": 0, "strategy": 0}, nodes.log("strategy")
    exec_records, _ = check_split_run(nodes)
    assert nodes.info("execution")["stop_reason"] == "duration reached"
    assert "finished the lock-step run" in nodes.info("marketdata")["stop_reason"]

    single_dir = await run_in_one_process(manifest, registry, tmp_path / "single")
    check_same_as_one_process(nodes, single_dir, exec_records)


@pytest.mark.slow
async def test_stopping_the_strategy_node_ends_a_lockstep_run_at_the_drivers_time(
    secure_broker: SecureBroker, nodes: Nodes, tmp_path: Path
) -> None:
    manifest, _ = write_manifest(tmp_path / "m.yaml", port=secure_broker.port, duration=600)
    nodes.start(manifest, "execution", "strategy")
    await wait_until(lambda: has_fills(nodes.dir("execution")), 20, "a first fill")
    nodes.procs["strategy"].send_signal(signal.SIGTERM)
    assert await nodes.wait(20) == {"execution": 0, "strategy": 0}
    exec_records, strat_records = check_split_run(nodes, every_market=False)
    assert "signal SIGTERM" in nodes.info("execution")["stop_reason"]
    assert "signal SIGTERM" in nodes.info("strategy")["stop_reason"]
    # Both journals end at the same virtual moment, long before the 600 s were up.
    last = {max(r.ts_ns for r in records) for records in (exec_records, strat_records)}
    first = min(r.ts_ns for r in exec_records)
    assert len(last) == 1 and last.pop() - first < 600 * 10**9
    assert not any(r.kind == "breaker" for r in exec_records)


# The same race as the kill-switch test below: a replace intent in flight when the run
# ends can stay unanswered in the strategy node's journal (seen once in several runs).
@pytest.mark.flaky(reruns=1)
@pytest.mark.slow
@pytest.mark.parametrize("clock", ["auto", "wall"])
async def test_broker_restart_loses_and_doubles_nothing(
    clock: str, nodes: Nodes, registry: PluginRegistry, tmp_path: Path
) -> None:
    broker = SecureBroker(tmp_path / "broker")
    broker.start()
    nodes.broker = broker
    lockstep = clock == "auto"
    try:
        # In lock step the run lasts as long as the nodes need for 20 s of virtual time.
        manifest, _ = write_manifest(
            tmp_path / "m.yaml", port=broker.port, duration=20 if lockstep else 11, clock=clock
        )
        nodes.start(manifest, "execution", "strategy")
        exec_dir = nodes.dir("execution")
        await wait_until(lambda: has_fills(exec_dir), 15, "first fill at the execution node")
        broker.kill()
        restarted_ns = time.time_ns()
        running = {role: proc.poll() is None for role, proc in nodes.procs.items()}
        await asyncio.sleep(1.0)
        broker.start()
        codes = await nodes.wait(60)
    finally:
        broker.kill()
    assert running == {"execution": True, "strategy": True}, "the broker died mid-run"
    assert codes == {"execution": 0, "strategy": 0}, nodes.log("execution")[-3000:]
    exec_records, _ = check_split_run(nodes)
    assert "reconnected to MQTT broker" in nodes.log("strategy")
    assert "reconnected to MQTT broker" in nodes.log("execution")
    if lockstep:
        # Trading went on after the restart exactly as if nothing had happened.
        single_dir = await run_in_one_process(manifest, registry, tmp_path / "single")
        check_same_as_one_process(nodes, single_dir, exec_records)
    else:
        assert any(r.ts_ns > restarted_ns for r in exec_records if r.kind == "fill"), (
            "trading resumed after the restart"
        )


@pytest.mark.slow
@pytest.mark.parametrize("clock", ["auto", "wall"])
async def test_a_killed_strategy_node_has_its_orders_cancelled_after_the_grace(
    clock: str, secure_broker: SecureBroker, nodes: Nodes, observers: list[Observer], tmp_path: Path
) -> None:
    # Long enough (in virtual time too) not to end before the strategy node is killed.
    manifest, run = write_manifest(
        tmp_path / "m.yaml", port=secure_broker.port, duration=600, clock=clock
    )
    obs = Observer(secure_broker, run)
    observers.append(obs)
    await obs.start()
    nodes.start(manifest, "execution", "strategy")
    await wait_until(lambda: len(obs.working) >= 4, 40, "the strategy has quotes working")
    nodes.procs["strategy"].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await wait_until(lambda: bool(obs.breakers), GRACE + 5, "a strategy_lost breaker")
    tripped, breaker = obs.breakers[0]
    assert breaker["kind"] == "strategy_lost" and breaker["node"] == "execution"
    # Not before the grace (less the heartbeat the node may have sent just before dying).
    assert tripped - killed >= GRACE - HEARTBEAT - 0.1
    await wait_until(lambda: not obs.working, 10, "every working order cancelled")
    assert obs.cancelled
    # A lock-step run cannot go on without its strategy node: the execution node ends
    # it once the venue has confirmed the cancels; a wall-clock one waits for a signal.
    if clock == "wall":
        nodes.procs["execution"].send_signal(signal.SIGTERM)
    assert await nodes.wait(15, "execution") == {"execution": 0}
    if clock == "auto":
        assert "strategy node heartbeat lost" in nodes.info("execution")["stop_reason"]
    exec_records = journal_records(nodes.dir("execution"))
    assert working_after(exec_records) == []
    assert any(r.kind == "breaker" and r.payload["kind"] == "strategy_lost" for r in exec_records)
    assert nodes.info("execution")["open_orders_left"] == 0


# Four processes racing a kill on a loaded machine: in about one full-suite run in three
# the test's own bus observer misses a cancel report the strategy node did receive, or
# the strategy node's journal keeps an intent the stopped execution node never answered.
# One more try keeps CI honest about real breakage while that race is investigated.
@pytest.mark.flaky(reruns=1)
@pytest.mark.slow
@pytest.mark.parametrize("clock", ["auto", "wall"])
async def test_kill_switch_from_any_node_stops_every_node(
    clock: str, secure_broker: SecureBroker, nodes: Nodes, observers: list[Observer], tmp_path: Path
) -> None:
    manifest, run = write_manifest(
        tmp_path / "m.yaml", port=secure_broker.port, duration=600, clock=clock
    )
    obs = Observer(secure_broker, run)
    observers.append(obs)
    await obs.start()
    nodes.start(manifest, "execution", "marketdata", "strategy", "monitor")
    await wait_until(lambda: len(obs.working) >= 4, 40, "the strategy has quotes working")
    await wait_until(
        lambda: (nodes.dir("marketdata") / "run.json").exists(), 5, "market-data node up"
    )
    # The operator's command, aimed at the market-data node's run folder.
    result = subprocess.run(
        [sys.executable, "-m", "quoteforge.cli", "kill", str(nodes.dir("marketdata"))],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    codes = await nodes.wait(20)
    assert set(codes.values()) == {0}
    await wait_until(lambda: not obs.working, 10, "every cancel report seen on the bus")
    for role in ("execution", "marketdata", "strategy", "monitor"):
        assert "kill switch" in nodes.info(role)["stop_reason"], role
    assert nodes.info("execution")["open_orders_left"] == 0
    exec_records = journal_records(nodes.dir("execution"))
    assert working_after(exec_records) == []
    assert working_after(journal_records(nodes.dir("strategy"))) == []
    assert any(r.kind == "breaker" and "kill" in r.payload for r in exec_records)
    table = json.loads((nodes.dir("monitor") / "monitor.json").read_text())
    assert {"execution", "strategy", "marketdata"} <= set(table["nodes"])
    assert table["markets"]["sim:BTC/USDT"]["mid"] is not None


async def test_orders_asked_for_right_after_a_pause_are_not_sent_on_the_book_of_before() -> None:
    """A timer that came due while the node did not run (a strategy's refresh) runs
    before anything else and asks for orders on the book of before the pause: the pause
    is noticed first, the places and replaces are not sent (each reported REJECTED
    naming the pause), the cancels are, and the books are STALE until a book message
    published since is read."""
    rig = await mirror_rig(0.3)
    bus, scheme, publisher, venue, sink = rig.bus, rig.scheme, rig.publisher, rig.venue, rig.sink
    source = rig.live_source()
    mirror = venue.books["BTC/USDT"]
    publisher.on_book_state(source, "SYNCING", "LIVE", "start")
    assert mirror.state is BookState.LIVE
    sent: list[str] = []
    bus.subscribe(scheme.all_of(TopicKind.INTENT), lambda t, p: sent.append(p["action"]))

    def order(client_id: str) -> Order:
        return Order(client_id, "sim", "BTC/USDT", Side.BUY, 3, 100, strategy="mm")

    try:
        await asyncio.sleep(0.01)
        time.sleep(0.5)  # the node does not run, for longer than stale_after
        venue.submit(
            [
                PlaceOrder(order("mm-1-1")),
                ReplaceOrder("mm-0-1", order("mm-1-2")),
                CancelOrder("mm-0-2", "sim", "BTC/USDT"),
            ]
        )
        assert sent == ["cancel"]
        assert mirror.state is BookState.STALE
        await asyncio.sleep(0)
        refused = {u.client_id: u for u in sink.updates}
        assert set(refused) == {"mm-1-1", "mm-1-2"}
        assert all(u.status is OrderStatus.REJECTED for u in refused.values())
        assert all("this node did not run for 0." in u.reason for u in refused.values())
        # A book message published since the pause: LIVE again, and orders go out.
        source.set_level(Side.BUY, 100, 7)
        publisher.on_book_state(source, "LIVE", "LIVE", "update")
        assert mirror.state is BookState.LIVE
        venue.submit([PlaceOrder(order("mm-1-3"))])
        assert sent == ["cancel", "place"]
    finally:
        await venue.close()


async def test_a_strategy_node_that_did_not_run_reads_before_it_judges_a_silence() -> None:
    """A paused host or a blocked event loop: when the mirror's watch wakes that late,
    the heartbeats of that time still wait unread (here: handed on right after it). The
    silence is judged only after they are read, so the books stay LIVE."""
    rig = await mirror_rig(0.3, host_role="marketdata")
    bus, scheme, publisher, venue, sink = rig.bus, rig.scheme, rig.publisher, rig.venue, rig.sink
    source = rig.live_source()
    mirror = venue.books["BTC/USDT"]
    publisher.on_book_state(source, "SYNCING", "LIVE", "start")
    assert mirror.state is BookState.LIVE
    messages: list[str] = []
    log = logger.add(messages.append, level="WARNING", format="{message}")
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(0.01)  # the watch sleeps
        for role in ("marketdata", "execution"):
            # Handed on a loop pass after the watch wakes, as what a socket read is.
            beat = functools.partial(bus.publish, scheme.heartbeat(role), {"status": "online"})
            loop.call_later(0.5, loop.call_soon, beat)
        time.sleep(0.8)  # the node does not run, for longer than stale_after
        await asyncio.sleep(0.05)
        assert mirror.state is BookState.LIVE, sink.states
        assert any("this node did not run for 0." in m for m in messages), messages
        await wait_until(lambda: mirror.state is BookState.STALE, 5, "a real silence")
    finally:
        logger.remove(log)
        await venue.close()
