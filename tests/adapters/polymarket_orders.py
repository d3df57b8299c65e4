"""Orders on the Polymarket replica, for the Polymarket adapter tests (test_polymarket*.py,
test_auto_cancel.py): the market's YES and NO tokens, an adapter connected to a replica,
an order on the adapter's grid, placing it and waiting for the venue's first answer,
waiting for a condition, and the parameters that point examples/polymarket.yaml at a
replica."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from quoteforge.book import BookState
from quoteforge.clock import LiveClock
from quoteforge.exchange import PlaceOrder, VenueContext
from quoteforge.exchanges.polymarket import PolymarketClob, PolymarketParams
from quoteforge.exchanges.polymarket.book import book_hash
from quoteforge.exchanges.testing.conformance import FAST_PARAMS, RecordingSink
from quoteforge.exchanges.testing.polymarket_replica import PolymarketReplica
from quoteforge.model import Order, OrderStatus, Side

YES, NO = "rain-nyc/YES", "rain-nyc/NO"


def example_params(replica: PolymarketReplica) -> dict[str, Any]:
    """``exchanges.polymarket.params`` of examples/polymarket.yaml for ``replica``: its
    URLs, its ``event`` market, fast timeouts and no resolution polls."""
    return {
        **FAST_PARAMS,
        "rest_url": replica.url,
        "data_url": replica.url,
        "ws_url": replica.market_ws_url,
        "private_ws_url": replica.user_ws_url,
        "markets.event": f"'{replica.condition_id('event')}'",
        "resolution_poll_s": "null",
    }


def clob_for(
    replica: PolymarketReplica,
    market: str,
    symbols: list[str],
    secrets: dict[str, str] | None = None,
    **params: Any,
) -> PolymarketClob:
    """A live adapter (not connected) on ``replica``'s ``market``: fast timeouts, no
    resolution polls, the replica's keys unless ``secrets`` are given."""
    ctx = VenueContext(
        "polymarket", LiveClock(), 1, "live", symbols, secrets=secrets or replica.secrets
    )
    return PolymarketClob(
        PolymarketParams(
            rest_url=replica.url,
            ws_url=replica.market_ws_url,
            private_ws_url=replica.user_ws_url,
            markets={market: replica.condition_id(market)},
            **{**FAST_PARAMS, "resolution_poll_s": None, **params},
        ),
        ctx,
    )


@contextlib.asynccontextmanager
async def connected(
    replica: PolymarketReplica | None = None,
    secrets: dict[str, str] | None = None,
    **params: Any,
) -> AsyncIterator[tuple[PolymarketReplica, PolymarketClob, RecordingSink]]:
    """An adapter trading YES and NO of the replica's ``rain-nyc``, its books LIVE."""
    replica = replica or PolymarketReplica(ping_interval=0.1)
    await replica.start()
    sink = RecordingSink()
    adapter = clob_for(replica, "rain-nyc", [YES, NO], secrets, **params)
    replica.label_orders(adapter.client_id_of)
    try:
        await adapter.connect(sink)
        await wait_for(lambda: all(b.state is BookState.LIVE for b in adapter.books.values()))
        yield replica, adapter, sink
    finally:
        await adapter.close()
        await replica.stop()


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def order(
    adapter: PolymarketClob, symbol: str, side: Side, price: str, qty: str = "10", **kw: Any
) -> Order:
    inst = adapter.instruments[symbol]
    return Order(
        f"qf-{symbol[-2:]}-{time.monotonic_ns()}",
        "polymarket",
        symbol,
        side,
        inst.qty_to_lots(qty),
        inst.price_to_ticks(price),
        **kw,
    )


async def placed(adapter: PolymarketClob, sink: RecordingSink, o: Order) -> OrderStatus:
    adapter.submit([PlaceOrder(o)])
    await wait_for(
        lambda: (
            (u := sink.last(o.client_id)) is not None and u.status is not OrderStatus.PENDING_NEW
        )
    )
    last = sink.last(o.client_id)
    assert last is not None
    return last.status


def rest_summary() -> dict[str, Any]:
    """A REST ``/book`` answer for token ``t1`` at venue time 7, with its hash."""
    summary: dict[str, Any] = {
        "market": "0xm",
        "asset_id": "t1",
        "timestamp": "7",
        "hash": "",
        "bids": [{"price": "0.4", "size": "10"}],
        "asks": [{"price": "0.6", "size": "12"}],
        "min_order_size": "5",
        "tick_size": "0.01",
        "neg_risk": False,
        "last_trade_price": "0.5",
    }
    summary["hash"] = book_hash(summary)
    return summary
