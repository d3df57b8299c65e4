"""Polymarket fills read over REST (``GET /data/trades``) when the adapter reconciles,
after a restart or a user channel that was down: every page of trades (the CLOB pages
by ``next_cursor``, 100 trades a page on the replica, as its API reference shows), each
of the run's fills booked once, and trades of orders the run does not know left out."""

from __future__ import annotations

from decimal import Decimal

from polymarket_orders import NO, YES, connected, order, placed, wait_for
from test_polymarket_startstate import adapter_on

from quoteforge.exchanges.testing.polymarket_replica import PolymarketReplica
from quoteforge.exchanges.testing.polymarket_replica_rest import (
    END_CURSOR,
    TRADES_PAGE,
    cursor_page,
    trade_matches,
)
from quoteforge.model import Order, Side

OURS, THEIRS = 130, 40  # one share a trade: 170 trades, two pages
TRADES = ("GET", "/data/trades")


async def test_a_restart_books_each_fill_of_every_page_once_and_no_strangers() -> None:
    """The first process leaves two orders resting and dies; the next one is handed only
    one of them (the other is another program's on the same account). Both fill a
    share at a time, interleaved, while no process runs."""
    replica = PolymarketReplica(ping_interval=0.1)
    await replica.start()
    try:
        first, first_sink = await adapter_on(replica)
        replica.label_orders(first.client_id_of)
        ours = order(first, YES, Side.BUY, "0.40", qty=str(OURS))
        theirs = order(first, NO, Side.BUY, "0.40", qty=str(THEIRS))
        await placed(first, first_sink, ours)
        await placed(first, first_sink, theirs)
        tracked = first.tracked(ours.client_id)
        assert tracked is not None and tracked.exchange_id
        await first.close()
        for i in range(OURS):
            await replica.fill_order(ours.client_id, Decimal(1))
            if i < THEIRS:
                await replica.fill_order(theirs.client_id, Decimal(1))
        assert len(replica.trade_log) == OURS + THEIRS > TRADES_PAGE
        journaled = Order(
            ours.client_id, "polymarket", YES, Side.BUY, ours.qty_lots, ours.price_ticks,
            exchange_id=tracked.exchange_id,
        )  # fmt: skip
        second, sink = await adapter_on(replica)
        try:
            second.know_orders([journaled])
            asked = replica.request_log.count(TRADES)
            await second.reconcile_orders()
            pages = replica.request_log.count(TRADES) - asked
            booked = list(sink.fills)
            await second.reconcile_orders()  # the same trades again: nothing new
        finally:
            await second.close()
    finally:
        await replica.stop()
    assert pages == 2
    assert sink.fills == booked
    assert {f.client_id for f in booked} == {ours.client_id}
    assert len(booked) == len({f.fill_id for f in booked}) == OURS
    lot = second.instruments[YES].qty_to_lots(1)
    assert {(f.symbol, f.side, f.qty_lots) for f in booked} == {(YES, Side.BUY, lot)}


async def test_a_user_channel_down_while_trades_come_is_made_good_from_every_page() -> None:
    """One fill comes over the user channel; the rest come while the venue is out of
    reach. The reconnect reads the trades since the last fill it saw (``after``), page
    by page, and books each once: the one already booked is not booked again."""
    async with connected() as (replica, adapter, sink):
        ours = order(adapter, YES, Side.BUY, "0.40", qty=str(OURS))
        await placed(adapter, sink, ours)
        await replica.fill_order(ours.client_id, Decimal(1))
        await wait_for(lambda: len(sink.fills_of(ours.client_id)) == 1)
        asked = replica.request_log.count(TRADES)
        await replica.down_for(0.5)
        for _ in range(OURS - 1):
            await replica.fill_order(ours.client_id, Decimal(1))
        await wait_for(lambda: len(sink.fills_of(ours.client_id)) == OURS, 10)
        assert replica.request_log.count(TRADES) - asked >= 2
        fills = sink.fills_of(ours.client_id)
    assert len({f.fill_id for f in fills}) == OURS
    assert sum(f.qty_lots for f in fills) == ours.qty_lots


def test_the_replica_pages_and_filters_trades_as_the_clob_documents() -> None:
    """The cursor is base64 of the next page's offset (the docs' example: "MTAw" after
    a page of 100), "LTE=" after the last; the documented filters narrow the rows."""
    rows = [
        {
            "id": str(i),
            "asset_id": "yes" if i % 2 else "no",
            "match_time": str(i),
            "maker_orders": [{"maker_address": "0xAB" if i < 3 else "0xcd"}],
        }
        for i in range(250)
    ]
    first = cursor_page(rows, "", TRADES_PAGE)
    assert first is not None and first["next_cursor"] == "MTAw" and first["count"] == 100
    last = cursor_page(rows, "MjAw", TRADES_PAGE)
    assert last is not None and last["next_cursor"] == END_CURSOR and last["count"] == 50
    assert last["data"] == rows[200:]
    assert cursor_page(rows, "not a cursor", TRADES_PAGE) is None
    window = {"after": "10", "before": "15", "asset_id": "yes"}
    assert [r["id"] for r in rows if trade_matches(r, window)] == ["11", "13", "15"]
    assert [r["id"] for r in rows if trade_matches(r, {"maker_address": "0xab"})] == [
        "0",
        "1",
        "2",
    ]
    assert [r["id"] for r in rows if trade_matches(r, {"id": "7"})] == ["7"]
