"""The execution node's intent path (plugins/distributed/execution_node.py), one intent at
a time: a real ExecutionNode hosting the simulated venue on the wall clock, on the shared
test broker, with intents handed to ``apply_intent`` as they arrive off the bus.

The split-run tests (test_nodes.py, test_bus_security.py) show the intents travelling
between processes; these pin what the node does with each one: every new order passes
the kernel's gate here too, whoever sent it, and a cancel, replace or cancel-all touches
only what it names. The last test puts the strategy node's side, its RemoteVenue, in
front of the same node."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from brokers import require_shared_broker
from loguru import logger

from quoteforge.clock import NS, LiveClock
from quoteforge.exchange import (
    CancelAll,
    CancelOrder,
    OrderAction,
    PlaceOrder,
    ReplaceOrder,
    VenueContext,
)
from quoteforge.exchanges.testing.conformance import RecordingSink
from quoteforge.model import Order, OrderStatus, OrderType, OrderUpdate, Side, TimeInForce
from quoteforge.orders import fill_to_dict
from quoteforge.plugins.bus_mqtt import MqttBus, MqttParams
from quoteforge.plugins.distributed.execution_node import ExecutionNode
from quoteforge.plugins.distributed.nodes import load_node_manifest
from quoteforge.plugins.distributed.remote import RemoteVenue
from quoteforge.plugins.distributed.wire import intent_payload
from quoteforge.registry import PluginRegistry

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "distributed" / "sim_nodes.yaml"
BTC, ETH = "BTC/USDT", "ETH/USDT"


def node_manifest(path: Path, port: int) -> Path:
    """The example's split run on the wall clock and the anonymous shared test broker."""
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["run"].update({"name": f"x{uuid.uuid4().hex[:10]}", "duration": 60})
    params = data["bus"]["params"]
    for key in ("tls", "username", "password", "signing_key"):
        params.pop(key)
    params.update({"port": port, "insecure": True, "connect_timeout_s": 3})
    data["nodes"].update({"clock": "wall", "heartbeat": 0.5})
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


class Harness:
    """One started execution node and the intents a strategy node would send it."""

    def __init__(self, node: ExecutionNode) -> None:
        self.node = node
        self.seq = 0
        self.errors: list[str] = []

    def send(self, action: OrderAction, strategy: str = "mm_btc") -> None:
        self.seq += 1
        payload, _ = intent_payload(action, strategy, self.seq)
        self.node.apply_intent(payload, "test")

    def publish(self, action: OrderAction, strategy: str) -> None:
        """The intent over the broker, as the strategy node sends it."""
        self.seq += 1
        payload, msg_id = intent_payload(action, strategy, self.seq)
        self.node.bus.publish(self.node.scheme.intent(strategy), payload, qos=1, msg_id=msg_id)

    def order(
        self,
        client_id: str,
        side: Side = Side.BUY,
        *,
        symbol: str = BTC,
        ticks_from_touch: int = 5_000,
        lots: int = 500,
        strategy: str = "mm_btc",
        **kw: Any,
    ) -> Order:
        """A resting limit order ``ticks_from_touch`` ticks behind the touch."""
        book = self.node.markets[f"sim:{symbol}"].book
        if side is Side.BUY:
            best = book.best_bid_ticks()
            assert best is not None
            price = best - ticks_from_touch
        else:
            best = book.best_ask_ticks()
            assert best is not None
            price = best + ticks_from_touch
        return Order(client_id, "sim", symbol, side, lots, price, strategy=strategy, **kw)

    def status(self, client_id: str) -> OrderStatus | None:
        order = self.node.orders.get(client_id)
        return None if order is None else order.status

    def reason(self, client_id: str) -> str:
        order = self.node.orders.get(client_id)
        assert order is not None, f"{client_id} is not registered"
        return order.reason

    async def venue_orders(self) -> dict[str, OrderUpdate]:
        """The orders open at the simulated venue, as it reports them."""
        reported = await self.node.venues["sim"].fetch_open_orders()
        assert reported is not None
        return {o.client_id: o for o in reported}

    async def venue_open(self) -> set[str]:
        return set(await self.venue_orders())

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    async def settle(self, seconds: float = 0.15) -> None:
        """Longer than the venue's order latency (8 ms ± 2): what was sent has arrived."""
        await asyncio.sleep(seconds)

    async def journal(self, kind: str) -> list[dict[str, Any]]:
        await self.node.journal.flush()
        return [r.payload for r in self.node.journal.read((kind,))]


@pytest.fixture
async def ex(registry: PluginRegistry, tmp_path: Path) -> AsyncIterator[Harness]:
    port = require_shared_broker()
    path = node_manifest(tmp_path / "node.yaml", port)
    loaded, settings = load_node_manifest(path, registry)
    node = ExecutionNode(loaded, registry, tmp_path / "run", settings, path)
    harness = Harness(node)
    sink = logger.add(harness.errors.append, level="ERROR", format="{message}")
    await node.bus.start()
    try:
        await node.start()
        node.sessions.start()  # as a node process does: its session says it listens now
        await harness.until(
            lambda: all(m.book.best_bid_ticks() is not None for m in node.markets.values()),
            "both books",
        )
        yield harness
    finally:
        logger.remove(sink)
        try:
            await node.sessions.stop()
            await node.stop()
        finally:
            await node.bus.close()


async def test_a_place_intent_reaches_the_venue_once_however_often_it_is_sent(
    ex: Harness,
) -> None:
    order = ex.order("b1")
    for _ in range(3):  # a republish after a reconnect carries the same order
        ex.send(PlaceOrder(order))
    await ex.until(lambda: ex.status("b1") is OrderStatus.OPEN, "b1 open")
    await ex.settle()
    assert await ex.venue_open() == {"b1"}
    first = [p["order"] for p in await ex.journal("order") if p["order"]["client_id"] == "b1"]
    assert first[0]["strategy"] == "mm_btc" and first[0]["status"] == "pending_new"
    assert ex.errors == []


async def test_an_order_for_a_venue_or_market_not_hosted_here_is_rejected_unsent(
    ex: Harness,
) -> None:
    elsewhere = ex.order("v1")
    elsewhere.venue = "binance"
    ex.send(PlaceOrder(elsewhere))
    unknown = ex.order("m1")
    unknown.symbol = "SOL/USDT"
    ex.send(PlaceOrder(unknown))
    await ex.settle()
    assert ex.status("v1") is ex.status("m1") is OrderStatus.REJECTED
    assert ex.reason("v1") == ("venue 'binance' is not hosted by this execution node")
    assert ex.reason("m1") == ("market sim:SOL/USDT is not hosted by this execution node")
    assert await ex.venue_open() == set()


async def test_risk_refuses_a_new_order_with_the_checks_numbers(ex: Harness) -> None:
    # max_order_notional 10000 in the manifest: 6 ETH at about 2000 is 12000.
    big = ex.order("r1", symbol=ETH, lots=6_000, strategy="mm_eth")
    small = ex.order("r2", symbol=ETH, lots=1_000, strategy="mm_eth")
    ex.send(PlaceOrder(big), "mm_eth")
    ex.send(PlaceOrder(small), "mm_eth")
    await ex.until(lambda: ex.status("r2") is OrderStatus.OPEN, "r2 open")
    assert ex.status("r1") is OrderStatus.REJECTED
    reason = ex.reason("r1")
    assert reason.startswith("refused at the execution node: ")
    assert "max_notional 10000" in reason
    await ex.settle()
    assert await ex.venue_open() == {"r2"}
    assert ex.node.refusals == 1


async def test_after_the_kill_switch_nothing_is_open_and_nothing_new_goes_out(
    ex: Harness,
) -> None:
    ex.send(PlaceOrder(ex.order("k1")))
    ex.send(PlaceOrder(ex.order("k2", Side.SELL)))
    await ex.until(lambda: ex.status("k2") is OrderStatus.OPEN, "k2 open")
    ex.node.on_kill("test")
    assert ex.node.killed and ex.node.stop_requested
    ex.send(PlaceOrder(ex.order("k3")))
    ex.send(ReplaceOrder("k1", ex.order("k4", ticks_from_touch=4_000)))
    await ex.until(
        lambda: (
            ex.status("k1") is OrderStatus.CANCELLED and ex.status("k2") is OrderStatus.CANCELLED
        ),
        "k1 and k2 cancelled",
    )
    await ex.settle()
    assert await ex.venue_open() == set()
    for client_id in ("k3", "k4"):
        assert ex.status(client_id) is OrderStatus.REJECTED
        reason = ex.reason(client_id)
        assert reason.startswith("refused at the execution node: "), reason
    kills = [p for p in await ex.journal("breaker") if "kill" in p]
    assert kills == [{"kill": "test"}]


async def test_a_halt_from_another_node_blocks_and_cancels_only_the_strategies_it_names(
    ex: Harness,
) -> None:
    ex.send(PlaceOrder(ex.order("h1")))
    ex.send(PlaceOrder(ex.order("h2", symbol=ETH, strategy="mm_eth")), "mm_eth")
    await ex.until(lambda: ex.status("h2") is OrderStatus.OPEN, "h2 open")
    await ex.until(lambda: ex.status("h1") is OrderStatus.OPEN, "h1 open")
    # An alert, or this node's own message back off the bus, changes nothing.
    ex.node.on_breaker({"kind": "drawdown", "action": "alert", "node": "strategy"})
    ex.node.on_breaker({"kind": "x", "action": "halt", "node": "execution"})
    assert ex.node.watch.blocked == {}
    ex.node.on_breaker(
        {
            "kind": "drawdown",
            "action": "halt",
            "node": "strategy",
            "strategies": ["mm_btc"],
            "message": "drawdown 5% > 2%",
        }
    )
    ex.send(PlaceOrder(ex.order("h3")))
    ex.send(PlaceOrder(ex.order("h4", symbol=ETH, strategy="mm_eth")), "mm_eth")
    await ex.until(lambda: ex.status("h1") is OrderStatus.CANCELLED, "h1 cancelled")
    await ex.until(lambda: ex.status("h4") is OrderStatus.OPEN, "h4 open")
    assert ex.status("h3") is OrderStatus.REJECTED
    assert ex.reason("h3") == ("refused at the execution node: breaker drawdown: drawdown 5% > 2%")
    await ex.settle()
    assert await ex.venue_open() == {"h2", "h4"}


async def test_a_silent_strategy_node_trips_the_breaker_and_its_return_clears_it(
    ex: Harness,
) -> None:
    bus = ex.node.bus
    topic = ex.node.scheme.heartbeat("strategy")
    bus.publish(topic, {"status": "online", "node": "strategy"}, qos=1)
    await ex.until(lambda: ex.node.watch.online, "the strategy heartbeat")
    heard = time.monotonic()
    ex.send(PlaceOrder(ex.order("s1")))
    await ex.until(lambda: ex.status("s1") is OrderStatus.OPEN, "s1 open")
    # No heartbeat for longer than the grace (5 s in the example manifest): the breaker
    # trips then, not before.
    grace = float(ex.node.settings.strategy_grace)
    await ex.until(lambda: ex.node.watch.tripped, "the breaker", timeout=grace + 5)
    assert time.monotonic() - heard > grace - 0.1  # heard a moment after the node did
    await ex.until(lambda: ex.status("s1") is OrderStatus.CANCELLED, "s1 cancelled")
    ex.send(PlaceOrder(ex.order("s2")))
    assert ex.status("s2") is OrderStatus.REJECTED
    assert "strategy node heartbeat lost for more than 5s" in ex.reason("s2")
    [breaker] = [p for p in await ex.journal("breaker") if p.get("kind") == "strategy_lost"]
    assert breaker["cancelled"] == 1
    bus.publish(topic, {"status": "online", "node": "strategy"}, qos=1)
    await ex.until(lambda: not ex.node.watch.tripped, "the strategy node back")
    ex.send(PlaceOrder(ex.order("s3")))
    await ex.until(lambda: ex.status("s3") is OrderStatus.OPEN, "s3 open")
    await ex.settle()
    assert await ex.venue_open() == {"s3"}


async def test_a_cancel_that_overtakes_its_place_keeps_the_order_from_the_venue(
    ex: Harness,
) -> None:
    order = ex.order("c1")
    ex.send(CancelOrder("c1", "sim", BTC))
    ex.send(PlaceOrder(order))
    assert ex.status("c1") is OrderStatus.CANCELLED
    assert ex.reason("c1") == "cancelled before it reached the venue"
    # The same for a replace whose new order was cancelled first: the old one goes too.
    ex.send(PlaceOrder(ex.order("c2")))
    await ex.until(lambda: ex.status("c2") is OrderStatus.OPEN, "c2 open")
    ex.send(CancelOrder("c3", "sim", BTC))
    ex.send(ReplaceOrder("c2", ex.order("c3", ticks_from_touch=4_000)))
    assert ex.status("c3") is OrderStatus.CANCELLED
    await ex.until(lambda: ex.status("c2") is OrderStatus.CANCELLED, "c2 cancelled")
    await ex.settle()
    assert await ex.venue_open() == set()
    # A cancel of an order already done is not sent again, and is no error.
    ex.send(CancelOrder("c2", "sim", BTC))
    # Nor is a cancel for a venue this node does not host.
    ex.send(CancelOrder("c9", "elsewhere", BTC))
    assert ex.errors == []


async def test_a_replace_moves_the_order_and_a_refused_one_pulls_the_old(ex: Harness) -> None:
    ex.send(PlaceOrder(ex.order("p1", symbol=ETH, strategy="mm_eth")), "mm_eth")
    await ex.until(lambda: ex.status("p1") is OrderStatus.OPEN, "p1 open")
    moved = ex.order("p2", symbol=ETH, strategy="mm_eth", ticks_from_touch=4_000)
    ex.send(ReplaceOrder("p1", moved), "mm_eth")
    await ex.until(lambda: ex.status("p2") is OrderStatus.OPEN, "p2 open")
    await ex.settle()
    assert ex.status("p1") is OrderStatus.CANCELLED
    # The order manager linked the two, as it does in one process.
    p1, p2 = ex.node.orders.get("p1"), ex.node.orders.get("p2")
    assert p1 is not None and p2 is not None
    assert (p1.extra["replaced_by"], p2.extra["replaces"]) == ("p2", "p1")
    assert await ex.venue_open() == {"p2"}
    assert (await ex.venue_orders())["p2"].price_ticks == moved.price_ticks
    too_big = ex.order("p3", symbol=ETH, strategy="mm_eth", lots=6_000)
    ex.send(ReplaceOrder("p2", too_big), "mm_eth")
    assert ex.status("p3") is OrderStatus.REJECTED
    assert "max_notional" in ex.reason("p3")
    await ex.until(lambda: ex.status("p2") is OrderStatus.CANCELLED, "p2 cancelled")
    await ex.settle()
    assert await ex.venue_open() == set()


async def test_an_order_made_longer_ago_than_intent_max_age_never_reaches_the_venue(
    ex: Harness,
) -> None:
    """Intents replayed after an outage were priced on a book that is gone: a place or
    replace made more than ``nodes.intent_max_age`` (5 s here) ago is refused unsent, a
    refused replace pulls the old order, and a fresh intent goes out as usual."""
    now = time.time_ns()
    ex.send(PlaceOrder(ex.order("old", created_ns=now - 6 * NS)))
    assert ex.status("old") is OrderStatus.REJECTED
    reason = ex.reason("old")
    assert "made 6.0 s ago" in reason and "nodes.intent_max_age (5 s)" in reason
    assert "clocks" in reason
    ex.send(PlaceOrder(ex.order("fresh", created_ns=now - 4 * NS)))  # within the bound
    await ex.until(lambda: ex.status("fresh") is OrderStatus.OPEN, "fresh open")
    stale = ex.order("stale", ticks_from_touch=4_000, created_ns=now - 300 * NS)
    ex.send(ReplaceOrder("fresh", stale))
    # Made 300 s ago, read a moment later (a second later on a loaded machine).
    assert ex.status("stale") is OrderStatus.REJECTED
    assert re.search(r"made 30[01]\.\d s ago", ex.reason("stale")), ex.reason("stale")
    await ex.until(lambda: ex.status("fresh") is OrderStatus.CANCELLED, "fresh pulled")
    await ex.settle()
    assert await ex.venue_open() == set()
    updates = await ex.journal("order_update")
    rejected = [u["order"] for u in updates if u["order"]["status"] == "rejected"]
    assert {r["client_id"] for r in rejected} == {"old", "stale"}


async def test_cancel_all_takes_only_that_strategys_orders_on_that_venue_and_symbol(
    ex: Harness,
) -> None:
    ex.send(PlaceOrder(ex.order("a1")))
    ex.send(PlaceOrder(ex.order("a2", Side.SELL)))
    ex.send(PlaceOrder(ex.order("a3", symbol=ETH)))  # mm_btc's, on ETH
    ex.send(PlaceOrder(ex.order("a4", symbol=ETH, strategy="mm_eth")), "mm_eth")
    ex.send(PlaceOrder(ex.order("a5", strategy="mm_eth")), "mm_eth")  # mm_eth's, on BTC
    ids = ("a1", "a2", "a3", "a4", "a5")
    await ex.until(lambda: all(ex.status(i) is OrderStatus.OPEN for i in ids), "all open")
    ex.send(CancelAll("sim", BTC))
    # Requested through the order manager, as in one process: pending until the venue says.
    assert ex.status("a1") is ex.status("a2") is OrderStatus.PENDING_CANCEL
    await ex.until(lambda: ex.status("a2") is OrderStatus.CANCELLED, "a2 cancelled")
    await ex.settle()
    assert await ex.venue_open() == {"a3", "a4", "a5"}
    ex.send(CancelAll("elsewhere", None))
    ex.send(CancelAll("sim", None), "mm_eth")
    await ex.until(lambda: ex.status("a5") is OrderStatus.CANCELLED, "a5 cancelled")
    await ex.settle()
    assert await ex.venue_open() == {"a3"}


async def test_a_malformed_intent_is_logged_with_what_is_wrong_and_changes_nothing(
    ex: Harness,
) -> None:
    ex.send(PlaceOrder(ex.order("g1")))
    await ex.until(lambda: ex.status("g1") is OrderStatus.OPEN, "g1 open")
    ex.node.apply_intent({"action": "buy", "strategy": "mm_btc"}, "intent/x")
    ex.node.apply_intent({"action": "cancel", "strategy": "mm_btc", "venue": "sim"}, "intent/y")
    bad = ex.order("g2")
    bad.qty_lots = 0
    ex.send(PlaceOrder(bad))
    await ex.settle()
    assert "unknown intent action 'buy'" in ex.errors[0] and "intent/x" in ex.errors[0]
    assert "malformed intent" in ex.errors[1] and "intent/y" in ex.errors[1]
    assert "g2" in ex.errors[2] and "qty" in ex.errors[2]
    assert ex.node.orders.get("g2") is None
    assert ex.status("g1") is OrderStatus.OPEN
    assert len(ex.errors) == 3


async def test_a_market_order_is_checked_at_the_touch_it_would_take(ex: Harness) -> None:
    def market(client_id: str, side: Side, lots: int) -> Order:
        order = ex.order(client_id, side, symbol=ETH, lots=lots, strategy="mm_eth")
        order.order_type, order.tif, order.price_ticks = OrderType.MARKET, TimeInForce.IOC, None
        return order

    # max_order_notional 10000: 6 ETH at the touch (about 2000) is over it, 1 ETH is not.
    ex.send(PlaceOrder(market("t1", Side.BUY, 6_000)), "mm_eth")
    ex.send(PlaceOrder(market("t2", Side.SELL, 6_000)), "mm_eth")
    assert ex.status("t1") is ex.status("t2") is OrderStatus.REJECTED
    assert "max_notional" in ex.reason("t2")
    ex.send(PlaceOrder(market("t3", Side.BUY, 1_000)), "mm_eth")
    await ex.until(lambda: ex.status("t3") is OrderStatus.FILLED, "t3 filled")
    assert ex.node.portfolio.position_lots("sim:ETH/USDT") == 1_000
    # The most ETH whose notional at the bid is within 10000 is over it at the ask: a
    # market buy (it would pay the ask) is refused, a market sell (the bid) is not.
    book = ex.node.markets["sim:ETH/USDT"].book
    bid, ask = book.best_bid_ticks(), book.best_ask_ticks()
    assert bid is not None and ask is not None
    lots = 10_000 * 100 * 1_000 // bid  # ticks of 0.01, lots of 0.001
    assert ask * lots > 10_000 * 100 * 1_000 >= bid * lots
    ex.send(PlaceOrder(market("t4", Side.BUY, lots)), "mm_eth")
    ex.send(PlaceOrder(market("t5", Side.SELL, lots)), "mm_eth")
    assert ex.status("t4") is OrderStatus.REJECTED
    assert ex.status("t5") is not OrderStatus.REJECTED


async def test_intents_off_the_broker_take_the_strategy_of_their_topic(ex: Harness) -> None:
    unnamed = ex.order("w1", symbol=ETH, strategy="")
    ex.publish(PlaceOrder(unnamed), "mm_eth")
    await ex.until(lambda: ex.status("w1") is OrderStatus.OPEN, "w1 open off the broker")
    order = ex.node.orders.get("w1")
    assert order is not None and order.strategy == "mm_eth"
    named = ex.order("w2", symbol=ETH, strategy="mm_eth")
    ex.publish(PlaceOrder(named), "mm_eth")
    await ex.until(lambda: ex.status("w2") is OrderStatus.OPEN, "w2 open off the broker")
    moved = ex.order("w3", symbol=ETH, strategy="", ticks_from_touch=4_000)
    ex.publish(ReplaceOrder("w2", moved), "mm_eth")
    await ex.until(lambda: ex.status("w3") is OrderStatus.OPEN, "w3 open off the broker")
    replacement = ex.node.orders.get("w3")
    assert replacement is not None and replacement.strategy == "mm_eth"
    # The strategy's cancel-all takes both: w1 and w3 count as mm_eth's.
    ex.publish(CancelAll("sim", ETH), "mm_eth")
    await ex.until(
        lambda: ex.status("w1") is ex.status("w3") is OrderStatus.CANCELLED, "both cancelled"
    )
    await ex.settle()
    assert await ex.venue_open() == set()


async def test_a_replace_of_an_order_unknown_here_sends_the_new_one_and_the_venue_decides(
    ex: Harness,
) -> None:
    new = ex.order("u2")
    ex.send(ReplaceOrder("u1", new))  # u1 never reached this node
    await ex.until(lambda: ex.status("u2") is OrderStatus.OPEN, "u2 open")
    u2 = ex.node.orders.get("u2")
    assert u2 is not None and "replaces" not in u2.extra  # nothing here to link it to
    await ex.settle()
    assert await ex.venue_open() == {"u2"}
    assert ex.errors == []


async def test_a_replace_racing_a_cancel_of_its_old_order_still_sends_the_new_one(
    ex: Harness,
) -> None:
    ex.send(PlaceOrder(ex.order("q1")))
    await ex.until(lambda: ex.status("q1") is OrderStatus.OPEN, "q1 open")
    ex.send(CancelOrder("q1", "sim", BTC))
    ex.send(ReplaceOrder("q1", ex.order("q2", ticks_from_touch=4_000)))
    # The old order's cancel is in flight, so the replace cannot be linked to it: the
    # new order is registered on its own and sent; the venue settles the old one.
    assert ex.status("q1") is OrderStatus.PENDING_CANCEL
    q2 = ex.node.orders.get("q2")
    assert q2 is not None and "replaces" not in q2.extra
    await ex.until(lambda: ex.status("q2") is OrderStatus.OPEN, "q2 open")
    await ex.until(lambda: ex.status("q1") is OrderStatus.CANCELLED, "q1 cancelled")
    await ex.settle()
    assert await ex.venue_open() == {"q2"}
    assert ex.errors == []


async def test_a_strategy_node_that_says_goodbye_has_its_orders_cancelled_without_a_breaker(
    ex: Harness,
) -> None:
    bus, topic = ex.node.bus, ex.node.scheme.heartbeat("strategy")
    # A goodbye from a node never heard online is not its goodbye.
    bus.publish(topic, {"status": "offline", "reason": "closed", "node": "strategy"}, qos=1)
    ex.send(PlaceOrder(ex.order("d1")))
    ex.send(PlaceOrder(ex.order("d2", Side.SELL)))
    await ex.until(lambda: ex.status("d2") is OrderStatus.OPEN, "d2 open")
    await ex.until(lambda: ex.status("d1") is OrderStatus.OPEN, "d1 open")
    assert not ex.node.watch.departed
    bus.publish(topic, {"status": "online", "node": "strategy"}, qos=1)
    await ex.until(lambda: ex.node.watch.online, "the strategy heartbeat")
    # Offline without a goodbye (its last will, say): the grace decides, nothing yet.
    bus.publish(topic, {"status": "offline", "reason": "lost", "node": "strategy"}, qos=1)
    await ex.until(lambda: not ex.node.watch.online, "offline")
    assert not ex.node.watch.departed and ex.status("d1") is OrderStatus.OPEN
    bus.publish(topic, {"status": "offline", "reason": "closed", "node": "strategy"}, qos=1)
    await ex.until(lambda: ex.node.watch.departed, "the goodbye")
    await ex.until(
        lambda: ex.status("d1") is ex.status("d2") is OrderStatus.CANCELLED, "both cancelled"
    )
    # Its silence after a goodbye is no loss: no breaker, even past the grace.
    await asyncio.sleep(float(ex.node.settings.strategy_grace) + 0.5)
    assert not ex.node.watch.tripped and ex.node.watch.blocked == {}
    assert [p for p in await ex.journal("breaker") if p.get("kind") == "strategy_lost"] == []


async def test_an_order_under_a_strategy_this_run_does_not_define_is_rejected_unsent(
    ex: Harness,
) -> None:
    ex.send(PlaceOrder(ex.order("n1", strategy="mm_btc2")), "mm_btc2")
    ex.send(PlaceOrder(ex.order("n2", strategy="")), "")
    ex.send(PlaceOrder(ex.order("n3", strategy="ghost")), "mm_btc")  # the order's own claim
    ex.send(PlaceOrder(ex.order("n4")))
    ex.send(ReplaceOrder("n4", ex.order("n5", strategy="ghost", ticks_from_touch=4_000)))
    await ex.until(lambda: ex.status("n4") is OrderStatus.CANCELLED, "n4 pulled")
    for client_id, name in (("n1", "mm_btc2"), ("n2", ""), ("n3", "ghost"), ("n5", "ghost")):
        assert ex.status(client_id) is OrderStatus.REJECTED, client_id
        assert ex.reason(client_id) == (
            f"strategy {name!r} is not in this run's manifest (it has mm_btc, mm_eth); "
            "do the nodes run the same manifest?"
        )
    await ex.settle()
    assert await ex.venue_open() == set()


# ---------------------------------------------------------------------------------------
# The strategy node's side: its RemoteVenue against this execution node
# ---------------------------------------------------------------------------------------


async def test_the_strategy_sides_remote_venue_trades_through_the_node_exactly(
    ex: Harness,
) -> None:
    """What a strategy node's engine sees: orders sent as intents, the venue's reports and
    fills back as the venue made them, books mirrored, and a cancel-all sent once per
    strategy of the node."""
    strategy_bus = MqttBus(
        MqttParams(port=require_shared_broker(), heartbeat_interval_s=0, close_timeout_s=1),
        ex.node.scheme.run,
    )
    await strategy_bus.start()
    ctx = VenueContext("sim", LiveClock(), 1, "live", [BTC, ETH], secrets={"k": "v"})
    remote = RemoteVenue(
        ctx, lambda: strategy_bus, ex.node.scheme, ["mm_btc", "mm_eth"], host_role="execution"
    )
    sink = RecordingSink()
    try:
        await remote.connect(sink)
        assert ctx.secrets == {}  # the strategy side never holds keys
        assert set(remote.instruments) == {BTC, ETH}
        assert remote.instruments[BTC] == ex.node.venues["sim"].instruments[BTC]
        await ex.until(lambda: remote.books[BTC].best_bid_ticks() is not None, "a mirrored book")

        resting = ex.order("r1")
        taking = ex.order("r2", symbol=ETH, strategy="mm_eth", lots=1_000)
        taking.order_type, taking.tif, taking.price_ticks = OrderType.MARKET, TimeInForce.IOC, None
        unnamed = ex.order("r3", Side.SELL, strategy="")  # filed under the first strategy
        remote.submit([PlaceOrder(resting), PlaceOrder(taking), PlaceOrder(unnamed)])
        await ex.until(lambda: sink.last("r1") is not None, "r1's report back")
        await ex.until(lambda: sink.fills_of("r2") != [], "r2's fill back")
        await ex.until(lambda: sink.last("r3") is not None, "r3's report back")
        assert sink.last("r1").status is OrderStatus.OPEN  # type: ignore[union-attr]
        node_r3 = ex.node.orders.get("r3")
        assert node_r3 is not None and node_r3.strategy == "mm_btc"
        [fill] = sink.fills_of("r2")
        journaled = [r["fill"] for r in await ex.journal("fill") if r["fill"]["client_id"] == "r2"]
        assert journaled == [fill_to_dict(fill)]  # exactly as the venue made it
        assert remote.intents_sent == 3

        # A replace whose new order names no strategy goes under the old order's.
        remote.submit([PlaceOrder(ex.order("r4", symbol=ETH, strategy="mm_eth"))])
        await ex.until(lambda: ex.status("r4") is OrderStatus.OPEN, "r4 open")
        moved = ex.order("r5", symbol=ETH, strategy="", ticks_from_touch=4_000)
        remote.submit([ReplaceOrder("r4", moved)])
        await ex.until(lambda: ex.status("r5") is OrderStatus.OPEN, "r5 open")
        node_r5 = ex.node.orders.get("r5")
        assert node_r5 is not None and node_r5.strategy == "mm_eth"
        assert remote.intents_sent == 5

        remote.submit([CancelAll("sim", BTC)])  # one intent per strategy of the node
        assert remote.intents_sent == 7
        await ex.until(
            lambda: ex.status("r1") is ex.status("r3") is OrderStatus.CANCELLED, "cancelled"
        )
        await ex.until(
            lambda: sink.last("r1").status is OrderStatus.CANCELLED,  # type: ignore[union-attr]
            "r1's cancel back",
        )
    finally:
        await remote.close()
        await strategy_bus.close()
    assert remote.sink is None
