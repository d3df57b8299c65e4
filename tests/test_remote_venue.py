"""The strategy node's ``RemoteVenue`` on an in-process bus, one promise at a time: what
``connect`` asks of the hosting node and says when it is missing, which strategy's
topic each intent travels on, how ``close`` drains the order and fill streams, lock
step, and the reconciliation questions. The mirrored books and their staleness are in
test_nodes.py; reconciliation over a real broker in test_split_reconcile.py."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal
from typing import Any

import pytest
from canned_venue import BALANCES, FILLS, UPDATES, CannedVenue
from loguru import logger
from node_rigs import MirrorSink, mirror_rig, wait_until

from quoteforge.book import BookState, L2Book
from quoteforge.bus import InProcessBus
from quoteforge.clock import LiveClock
from quoteforge.exchange import CancelAll, CancelOrder, PlaceOrder, ReplaceOrder, VenueContext
from quoteforge.model import Fill, Instrument, Liquidity, Order, Side
from quoteforge.plugins.distributed.remote import (
    LockstepClock,
    LockstepFollower,
    MarketDataPublisher,
    ReconcileError,
    ReconcileResponder,
    RemoteVenue,
    book_sync,
    fill_payload,
    reconcile_topics,
)
from quoteforge.plugins.distributed.topics import TopicKind, TopicScheme

BTC, ETH = "BTC/USDT", "ETH/USDT"


def instrument(symbol: str, tick: str = "0.01") -> Instrument:
    base, quote = symbol.split("/")
    return Instrument("sim", symbol, base, quote, Decimal(tick), Decimal("0.001"))


def hosting(bus: InProcessBus, scheme: TopicScheme, *symbols: str) -> MarketDataPublisher:
    """The execution node's publisher, having listed ``symbols`` (retained)."""
    publisher = MarketDataPublisher(bus, scheme, depth=1, snapshot_interval_s=0)
    publisher.publish_instruments("sim", {s: instrument(s) for s in symbols})
    return publisher


def venue_on(
    bus: InProcessBus,
    scheme: TopicScheme,
    symbols: list[str],
    strategies: list[str] | None = None,
    **kw: Any,
) -> RemoteVenue:
    ctx = VenueContext("sim", LiveClock(), 0, "sim", symbols)
    return RemoteVenue(ctx, lambda: bus, scheme, strategies or ["mm"], host_role="execution", **kw)


def fill_of(fill_id: str) -> Fill:
    return Fill(
        "sim", BTC, fill_id, "mm-1-1", Side.BUY, 100, 3, Decimal("0.0003"), "USDT",
        Liquidity.MAKER, 8, strategy="mm",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# connect
# ---------------------------------------------------------------------------------------


async def test_connect_without_a_hosting_node_says_which_node_to_start_and_closes_cleanly() -> None:
    bus, scheme = InProcessBus(), TopicScheme("unit")
    venue = venue_on(bus, scheme, [BTC], connect_timeout_s=0.2)
    sink = MirrorSink()
    where = re.escape(repr(scheme.instruments("sim")))
    with pytest.raises(
        RuntimeError,
        match=rf"venue 'sim': no instruments on {where} after 0\.2s; "
        r"start the execution node of run 'unit' \(same manifest, same bus\)",
    ):
        await venue.connect(sink)
    await venue.close()  # what a node does after a failed start
    assert venue.sink is None


async def test_connect_refuses_markets_the_hosting_node_does_not_list() -> None:
    bus, scheme = InProcessBus(), TopicScheme("unit")
    hosting(bus, scheme, BTC)
    venue = venue_on(bus, scheme, [BTC, ETH], connect_timeout_s=1)
    with pytest.raises(
        RuntimeError, match=r"the execution node does not host ETH/USDT; it lists: BTC/USDT"
    ):
        await venue.connect(MirrorSink())
    assert venue.books == {}


@pytest.mark.parametrize(
    ("asked", "mirrored"), [([ETH], {ETH}), ([], {BTC, ETH})], ids=["named", "all"]
)
async def test_connect_mirrors_the_markets_named_or_else_every_one_listed(
    asked: list[str], mirrored: set[str]
) -> None:
    bus, scheme = InProcessBus(), TopicScheme("unit")
    hosting(bus, scheme, BTC, ETH)
    venue = venue_on(bus, scheme, asked, connect_timeout_s=1)
    await venue.connect(MirrorSink())
    try:
        assert set(venue.instruments) == {BTC, ETH}
        assert set(venue.books) == mirrored
        assert all(venue.books[s].instrument == instrument(s) for s in mirrored)
    finally:
        await venue.close()


async def test_public_trades_reach_the_run_for_the_mirrored_markets_only() -> None:
    bus, scheme = InProcessBus(), TopicScheme("unit")
    publisher = hosting(bus, scheme, BTC, ETH)
    venue = venue_on(bus, scheme, [ETH], connect_timeout_s=1)
    sink = MirrorSink()
    await venue.connect(sink)
    publisher.on_trade("sim", BTC, 101, 2, Side.BUY, 9)
    publisher.on_trade("sim", ETH, 55, 4, Side.SELL, 10)
    assert sink.trades == [("sim", ETH, 55, 4, Side.SELL, 10)]
    await venue.close()


async def test_an_instrument_changed_on_the_bus_keeps_the_first_version_and_says_so() -> None:
    rig = await mirror_rig(60)
    messages: list[str] = []
    sink = logger.add(messages.append, level="ERROR", format="{message}")
    try:
        rig.publisher.publish_instruments("sim", {BTC: instrument(BTC, "0.1")})
        rig.publisher.publish_instruments("sim", {BTC: instrument(BTC), ETH: instrument(ETH)})
    finally:
        logger.remove(sink)
    # The books and strategies hold the first version; a new market is known from now on.
    assert rig.venue.instruments == {BTC: rig.inst, ETH: instrument(ETH)}
    assert rig.venue.books[BTC].instrument == rig.inst
    assert len(messages) == 1
    changed = f"({rig.inst} -> {instrument(BTC, '0.1')})"
    assert f"venue sim: instrument BTC/USDT changed on the bus {changed}" in messages[0]
    assert "restart the strategy node" in messages[0]
    await rig.venue.close()


# ---------------------------------------------------------------------------------------
# submit: one intent per action, on the topic of the strategy that owns the order
# ---------------------------------------------------------------------------------------


async def test_each_intent_travels_under_the_strategy_that_owns_its_order() -> None:
    """A place goes under its order's strategy, or the node's first; a replace under its
    new order's, or else the old order's; a cancel under its order's, or the first
    strategy's when the order is unknown; a cancel-all once under every strategy, each
    time it is asked for."""
    bus, scheme = InProcessBus(), TopicScheme("unit")
    hosting(bus, scheme, BTC)
    venue = venue_on(bus, scheme, [BTC], ["a", "b"], connect_timeout_s=1)
    await venue.connect(MirrorSink())
    sent: list[tuple[str, str, str]] = []

    def record(topic: str, payload: dict[str, Any]) -> None:
        assert topic == scheme.intent(payload["strategy"])
        key = payload.get("client_id") or payload.get("order", {}).get("client_id") or ""
        sent.append((payload["strategy"], payload["action"], key))

    bus.subscribe(scheme.all_of(TopicKind.INTENT), record)

    def order(client_id: str, strategy: str) -> Order:
        return Order(client_id, "sim", BTC, Side.BUY, 3, 100, strategy=strategy)

    venue.submit(
        [
            PlaceOrder(order("b-1", "b")),
            PlaceOrder(order("x-1", "")),
            ReplaceOrder("b-1", order("b-2", "")),
            CancelOrder("b-2", "sim", BTC),
            CancelOrder("b-1", "sim", BTC),
            CancelOrder("gone-1", "sim", BTC),
            ReplaceOrder("x-1", order("x-2", "b")),
            CancelOrder("x-2", "sim", BTC),
            CancelAll("sim", BTC),
            CancelAll("sim"),
        ]
    )
    assert sent == [
        ("b", "place", "b-1"),
        ("a", "place", "x-1"),
        ("b", "replace", "b-2"),
        ("b", "cancel", "b-2"),
        ("b", "cancel", "b-1"),
        ("a", "cancel", "gone-1"),
        ("b", "replace", "x-2"),
        ("b", "cancel", "x-2"),
        ("a", "cancel_all", ""),
        ("b", "cancel_all", ""),
        ("a", "cancel_all", ""),
        ("b", "cancel_all", ""),
    ]
    assert venue.intents_sent == len(sent)
    await venue.close()


async def test_a_venue_no_strategy_trades_files_its_intents_under_unassigned() -> None:
    """A place and a cancel-all alike: the execution node then refuses the order under a
    strategy the run does not define, and the cancel-all reaches it too."""
    bus, scheme = InProcessBus(), TopicScheme("unit")
    hosting(bus, scheme, BTC)
    ctx = VenueContext("sim", LiveClock(), 0, "sim", [BTC])
    venue = RemoteVenue(ctx, lambda: bus, scheme, [], host_role="execution")
    await venue.connect(MirrorSink())
    sent: list[tuple[str, str]] = []
    bus.subscribe(scheme.all_of(TopicKind.INTENT), lambda t, p: sent.append((t, p["action"])))
    order = Order("x-1", "sim", BTC, Side.BUY, 3, 100)
    venue.submit([PlaceOrder(order), CancelAll("sim", BTC)])
    topic = scheme.intent("unassigned")
    assert sent == [(topic, "place"), (topic, "cancel_all")]
    assert venue.intents_sent == 2
    await venue.close()


# ---------------------------------------------------------------------------------------
# close: drain the order and fill streams, then let go of the sink
# ---------------------------------------------------------------------------------------


async def test_close_still_hands_on_a_fill_that_trails_the_last_order_report() -> None:
    rig = await mirror_rig(60)
    bus, scheme, venue, sink = rig.bus, rig.scheme, rig.venue, rig.sink
    report = {"venue": "sim", "client_id": "mm-1-1", "status": "filled", "ts_ns": 5, "symbol": BTC}
    bus.publish(scheme.order("sim"), report, msg_id="u1")
    closing = asyncio.ensure_future(venue.close())
    await asyncio.sleep(0.2)
    bus.publish(scheme.fill("sim"), fill_payload(fill_of("f-1")), msg_id="f1")
    await closing
    assert venue.sink is None
    bus.publish(scheme.fill("sim"), fill_payload(fill_of("f-2")), msg_id="f2")
    assert [f.fill_id for f in sink.fills] == ["f-1"]
    assert [u.client_id for u in sink.updates] == ["mm-1-1"]


async def test_close_lets_go_of_the_sink_once_the_streams_have_been_quiet() -> None:
    """Half a second after the last report the stream counts as quiet: a fill later than
    that no longer reaches the run, however long ``close`` could have waited."""
    rig = await mirror_rig(60)
    bus, scheme, venue, sink = rig.bus, rig.scheme, rig.venue, rig.sink
    report = {"venue": "sim", "client_id": "mm-1-1", "status": "open", "ts_ns": 5, "symbol": BTC}
    bus.publish(scheme.order("sim"), report, msg_id="u1")
    await asyncio.sleep(0.25)
    closing = asyncio.ensure_future(venue.close())
    await asyncio.sleep(0.5)  # 0.75 s after the report
    bus.publish(scheme.fill("sim"), fill_payload(fill_of("f-late")), msg_id="f1")
    await closing
    assert sink.fills == [] and venue.sink is None


# ---------------------------------------------------------------------------------------
# Lock step: the books come with the first step, intents go with the answers
# ---------------------------------------------------------------------------------------


async def test_in_lock_step_books_come_from_the_first_step_and_intents_go_with_the_answer() -> None:
    bus, scheme = InProcessBus(), TopicScheme("unit")
    publisher = hosting(bus, scheme, BTC)
    clock = LockstepClock(0)
    follower = LockstepFollower(lambda: bus, scheme, clock)
    venue = venue_on(bus, scheme, [BTC], ["a", "b"], connect_timeout_s=2, lockstep=follower)
    hellos: list[dict[str, Any]] = []
    bus.subscribe(follower.ack_topic, lambda topic, payload: hellos.append(payload))
    intents: list[dict[str, Any]] = []
    bus.subscribe(scheme.all_of(TopicKind.INTENT), lambda topic, payload: intents.append(payload))
    source = L2Book(instrument(BTC))
    source.apply_snapshot([(100, 5)], [(101, 3)], 1)
    source.state = BookState.LIVE
    sync, _ = book_sync(source, None)
    sink = MirrorSink()
    connecting = asyncio.ensure_future(venue.connect(sink))
    try:
        await wait_until(lambda: bool(hellos), 2, "the follower listens for steps")
        assert not connecting.done()  # connect waits for the first step
        bus.publish(follower.step_topic, {"k": 1, "t": 50, "ev": [["y", "sim", 50, sync]]})
        await connecting
        book = venue.books[BTC]
        assert (book.best_bid(), book.best_ask()) == ((100, 5), (101, 3))
        assert book.state is BookState.LIVE and clock.now_ns() == 50
        # Book messages on the bus are not the lock-step run's: the mirror ignores them.
        source.apply_snapshot([(90, 1)], [(91, 1)], 2)
        publisher.on_book_state(source, "LIVE", "LIVE", "start")
        assert book.best_bid() == (100, 5) and sink.books == 0

        order = Order("b-1", "sim", BTC, Side.BUY, 3, 100, strategy="b")
        venue.submit([PlaceOrder(order), CancelAll("sim", BTC)])
        assert intents == []  # nothing on the intent topics
        ops = clock.take_ops()
        assert [(op[0], op[1]["action"], op[1]["strategy"]) for op in ops] == [
            ("intent", "place", "b"),
            ("intent", "cancel_all", "a"),
            ("intent", "cancel_all", "b"),
        ]
        assert venue.intents_sent == 3
        await venue.close()
        assert venue.sink is None
    finally:
        connecting.cancel()
        await follower.close()


# ---------------------------------------------------------------------------------------
# Reconciliation questions
# ---------------------------------------------------------------------------------------


async def test_reconciliation_answers_arrive_well_within_a_short_timeout() -> None:
    bus, scheme = InProcessBus(), TopicScheme("unit")
    canned = CannedVenue("sim")
    responder = ReconcileResponder(lambda: bus, scheme, {"sim": canned})
    responder.start()
    venue = venue_on(bus, scheme, [BTC], reconcile_timeout_s=0.5)
    try:
        assert await venue.fetch_open_orders() == UPDATES
        assert await venue.fetch_fills(1234) == FILLS
        assert await venue.fetch_balances() == BALANCES
        assert canned.since == [1234]
    finally:
        await responder.close()


async def test_an_answer_delivered_twice_or_meant_for_another_node_is_ignored() -> None:
    """QoS 1 delivers at least once, and every strategy node asking about a venue hears
    every answer about it: only the first answer to this node's question counts."""
    bus, scheme = InProcessBus(), TopicScheme("unit")
    ask, answers = reconcile_topics(scheme, "sim")
    questions: list[dict[str, Any]] = []

    def execution_node(topic: str, question: dict[str, Any]) -> None:
        questions.append(question)
        bus.publish(answers, {"id": "other-node-1", "what": "balances", "balances": {"BTC": "9"}})
        for _ in range(2):
            bus.publish(
                answers, {"id": question["id"], "what": "balances", "balances": {"BTC": "1.5"}}
            )

    bus.subscribe(ask, execution_node)
    venue = venue_on(bus, scheme, [BTC], reconcile_timeout_s=1)
    assert await venue.fetch_balances() == {"BTC": Decimal("1.5")}
    assert await venue.fetch_balances() == {"BTC": Decimal("1.5")}
    assert [q["what"] for q in questions] == ["balances", "balances"]
    assert questions[0]["id"] != questions[1]["id"]


async def test_the_first_question_waits_for_the_execution_node_to_announce_itself() -> None:
    """The nodes of a split run may start in any order: a live run's start-up
    reconciliation (the first question) waits up to ``connect_timeout_s`` for the
    execution node's session, longer than the answer's own timeout. An execution node
    that said offline is awaited in its next session, not its last one sent again; the
    node answers once it listens, as the real one announces its session then."""
    rig = await mirror_rig(60, announce=False)
    bus, scheme, venue = rig.bus, rig.scheme, rig.venue
    venue.reconcile_timeout_s, venue.connect_timeout_s = 0.2, 5
    session = scheme.node_session("execution")
    bus.publish(session, {"instance": "a", "connects": 1})  # an earlier life
    bus.publish(scheme.heartbeat("execution"), {"status": "offline", "reason": "lost"})
    asking = asyncio.ensure_future(venue.fetch_open_orders())
    await asyncio.sleep(0.5)  # twice the answer's timeout
    bus.publish(session, {"instance": "a", "connects": 1})  # the same session again
    await asyncio.sleep(0.3)
    assert not asking.done()
    responder = ReconcileResponder(lambda: bus, scheme, {"sim": CannedVenue("sim")})
    responder.start()
    bus.publish(session, {"instance": "b", "connects": 1})
    try:
        assert await asyncio.wait_for(asking, 2) == UPDATES
        assert await venue.fetch_balances() == BALANCES  # later questions do not wait
    finally:
        await responder.close()
        await venue.close()


async def test_an_execution_node_that_never_comes_is_named_after_the_connect_timeout() -> None:
    rig = await mirror_rig(60, announce=False)
    venue = rig.venue
    venue.connect_timeout_s = 0.3
    messages: list[str] = []
    sink = logger.add(messages.append, level="INFO", format="{message}")
    try:
        with pytest.raises(ReconcileError) as caught:
            await venue.fetch_open_orders()
    finally:
        logger.remove(sink)
        await venue.close()
    assert str(caught.value) == (
        "venue 'sim': cannot ask the execution node for open_orders: it has not announced a "
        "session on 'quoteforge/unit/state/node-execution' within 0.3s (nodes.connect_timeout); "
        "start the execution node of run 'unit' (same manifest, same bus)"
    )
    assert any("waiting up to 0.3s for the execution node" in m for m in messages)
