"""Kraken fills read over REST carry the client id of their order, also in a new process.

Kraken's ``TradesHistory`` rows name the order (``ordertxid``) but not its ``cl_ord_id``;
the adapter asks ``QueryOrders`` for the orders it never saw, so the reconciliation can
tell this run's fills from other trades on the account.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any

from adapter_helpers import KRAKEN_KIT, kraken_of, running
from loguru import logger

from quoteforge.exchanges.testing.conformance import Harness
from quoteforge.exchanges.testing.kraken_replica import KrakenReplica
from quoteforge.model import Side

QUERY_ORDERS = ("POST", "/0/private/QueryOrders")


def life(replica: KrakenReplica) -> contextlib.AbstractAsyncContextManager[Harness]:
    """One process of the bot: a new adapter on a replica that outlives it."""
    return running(KRAKEN_KIT, replica=replica, outlives=True)


async def other_client_order(replica: KrakenReplica, client_id: str, price: str) -> None:
    """An order of another program on the same account, placed and filled while no
    adapter of ours is running."""
    await replica.add_order(
        {
            "symbol": "BTC/USD",
            "side": "sell",
            "order_type": "limit",
            "order_qty": "0.0002",
            "limit_price": price,
            "cl_ord_id": client_id,
        }
    )
    await replica.fill_order(client_id)


async def test_a_new_process_reads_the_client_ids_of_fills_made_while_it_was_down() -> None:
    async with KrakenReplica(ping_interval=0.1) as replica:
        async with life(replica) as first:
            order = first.order(Side.BUY)
            await first.place(order)
        # The bot is down: its order fills, and another program on the account trades.
        await replica.fill_order(order.client_id)
        await other_client_order(replica, "desk-7", "50100.0")
        async with life(replica) as second:
            fills = await kraken_of(second).fetch_fills(0)
    by_client = {f.client_id: f for f in fills}
    assert set(by_client) == {order.client_id, "desk-7"}
    ours = by_client[order.client_id]
    assert (ours.side, ours.qty_lots, ours.price_ticks) == (
        Side.BUY,
        order.qty_lots,
        order.price_ticks,
    )
    assert by_client["desk-7"].side is Side.SELL


async def test_unknown_orders_are_asked_in_batches_of_50_and_once_each() -> None:
    async with KrakenReplica(ping_interval=0.1) as replica:
        for i in range(51):
            await other_client_order(replica, f"old-{i}", f"{50100 + i}.0")
        async with life(replica) as h:
            adapter = kraken_of(h)
            fills = await adapter.fetch_fills(0)
            again = await adapter.fetch_fills(0)
    assert sorted(len(batch) for batch in replica.queried_txids) == [1, 50]
    assert len({t for batch in replica.queried_txids for t in batch}) == 51
    assert {f.client_id for f in fills} == {f"old-{i}" for i in range(51)}
    assert [f.client_id for f in again] == [f.client_id for f in fills]


async def test_a_failed_order_lookup_leaves_the_order_unnamed_warns_and_asks_again() -> None:
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        async with KrakenReplica(ping_interval=0.1) as replica:
            await other_client_order(replica, "desk-9", "50100.0")
            async with life(replica) as h:
                await replica.fail_http(503, path=QUERY_ORDERS[1])
                [fill] = await kraken_of(h).fetch_fills(0)
                [later] = await kraken_of(h).fetch_fills(0)
    finally:
        logger.remove(handler)
    # Unnamed, not "" (which would be a settlement of the run's own holdings); the next
    # read asks again, and the venue answers this time.
    assert fill.client_id.startswith("order:")
    assert later.client_id == "desk-9"
    assert fill.qty_lots == h.instrument.qty_to_lots(Decimal("0.0002"))
    assert replica.request_log.count(QUERY_ORDERS) == 2
    assert any("QueryOrders" in line for line in lines)


async def test_more_than_one_page_of_trades_is_read_whole_each_trade_once() -> None:
    """``TradesHistory`` answers 50 trades a call, the most recent first: 120 trades made
    while the bot was down come back in three pages, each with its client id."""
    async with KrakenReplica(ping_interval=0.1) as replica:
        for i in range(120):
            await other_client_order(replica, f"old-{i}", f"{50100 + i}.0")
        async with life(replica) as h:
            fills = await kraken_of(h).fetch_fills(0)
    assert sorted(f.client_id for f in fills) == sorted(f"old-{i}" for i in range(120))
    assert len({f.fill_id for f in fills}) == 120
    assert replica.trades_history_calls == [0, 50, 100]
    # Every unknown order was asked of QueryOrders once, in batches of at most 50.
    assert sorted(len(batch) for batch in replica.queried_txids) == [20, 50, 50]


async def test_a_trade_made_while_paging_shifts_the_pages_without_losing_one() -> None:
    """A trade that arrives between two pages pushes the older rows one place down: the
    row at the page boundary comes twice and is kept once; none is skipped."""
    async with KrakenReplica(ping_interval=0.1) as replica:
        for i in range(60):
            await other_client_order(replica, f"old-{i}", f"{50100 + i}.0")
        async with life(replica) as h:
            adapter = kraken_of(h)
            read = adapter._rest

            async def trade_after_the_first_page(method: str, params: Any = None) -> Any:
                answer = await read(method, params)
                if method == "private_post_tradeshistory" and params.get("ofs") == 0:
                    await other_client_order(replica, "late", "50500.0")
                return answer

            adapter._rest = trade_after_the_first_page  # type: ignore[method-assign]
            fills = await adapter.fetch_fills(0)
    ids = [f.client_id for f in fills]
    assert len(ids) == len(set(ids))
    assert set(ids) - {"late"} == {f"old-{i}" for i in range(60)}
    # The second page started one row early (a repeat), and a third found nothing more.
    assert replica.trades_history_calls == [0, 50, 61]
