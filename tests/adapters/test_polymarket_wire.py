"""Malformed Polymarket messages: a user-channel event, a market-channel event, a book
message or a REST /book answer that cannot be read is logged and skipped, the rest of its
frame is still read, nothing of it is booked, and no loop or socket ends because of it."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from loguru import logger
from polymarket_orders import YES, connected, order, placed, rest_summary, wait_for

from quoteforge.book import BookState
from quoteforge.book.wire import BookMessageError
from quoteforge.exchanges.polymarket import PolymarketBookSource, PolymarketClob
from quoteforge.model import Instrument, InstrumentKind, OrderStatus, Side


@contextlib.contextmanager
def warnings_logged() -> Iterator[list[str]]:
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.rstrip("\n")), level="WARNING", format="{message}")
    try:
        yield seen
    finally:
        logger.remove(sink)


async def resting_buy(adapter: PolymarketClob, sink: Any) -> tuple[str, str]:
    """A resting YES bid of ours: its client id and the venue's order id."""
    o = order(adapter, YES, Side.BUY, "0.40")
    assert await placed(adapter, sink, o) is OrderStatus.OPEN
    last = sink.last(o.client_id)
    assert last is not None and last.exchange_id
    return o.client_id, last.exchange_id


def trade(trade_id: str, order_id: str, token: str, **fields: Any) -> dict[str, Any]:
    """A user-channel ``trade`` event in which our order ``order_id`` took 2 at 0.40."""
    return {
        "event_type": "trade",
        "type": "TRADE",
        "id": trade_id,
        "asset_id": token,
        "taker_order_id": order_id,
        "side": "BUY",
        "price": "0.40",
        "size": "2",
        "fee_rate_bps": "100",
        "status": "MATCHED",
        "match_time": str(int(time.time())),
        "trader_side": "TAKER",
        "maker_orders": [],
        **fields,
    }


BAD_TRADES: list[tuple[dict[str, Any], str]] = [
    ({"price": "abc"}, "price 'abc' is not a number"),
    ({"price": "Infinity"}, "price 'Infinity' is not a finite number"),
    ({"price": "-0.5"}, "price '-0.5' outside (0, 1)"),
    ({"price": "1.5"}, "price '1.5' outside (0, 1)"),
    ({"price": "0.405"}, "price '0.405' is off the tick 0.01"),
    ({"size": "-10"}, "size '-10' is not > 0"),
    ({"size": "0"}, "size '0' is not > 0"),
    ({"fee_rate_bps": "abc"}, "fee_rate_bps 'abc' is not a number"),
    ({"fee_rate_bps": "NaN"}, "fee_rate_bps 'NaN' is not a finite number"),
    ({"fee_rate_bps": "-5"}, "fee_rate_bps '-5' outside 0 to 10000"),
    ({"match_time": "Infinity"}, "match_time 'Infinity' is not a finite number"),
    ({"match_time": "1e30"}, "match_time '1e30' is not a time in seconds up to now"),
    ({"maker_orders": "abc"}, "maker_orders 'abc' is not a list"),
    ({"maker_orders": [1]}, "maker_orders entry 1 is not an object"),
    ({"side": "UP"}, "side 'UP' is not BUY or SELL"),
    ({"id": None}, "id None is not a trade id"),
]


@pytest.mark.parametrize(("fields", "why"), BAD_TRADES, ids=[w for _, w in BAD_TRADES])
async def test_a_malformed_trade_is_skipped_and_the_rest_of_its_frame_booked(
    fields: dict[str, Any], why: str
) -> None:
    async with connected() as (_, adapter, sink):
        client_id, order_id = await resting_buy(adapter, sink)
        token = adapter.tokens[YES].token_id
        bad = trade("bad-1", order_id, token, **fields)
        good = trade("good-1", order_id, token)
        with warnings_logged() as warnings:
            adapter._on_user_text(json.dumps([bad, good]), time.time_ns())
        inst = adapter.instruments[YES]
        fills = sink.fills_of(client_id)
        assert [f.fill_id for f in fills] == [f"good-1:{order_id.lower()}"]
        assert fills[0].price_ticks == 40 and fills[0].qty_lots == inst.qty_to_lots(2)
        assert fills[0].fee == Decimal("0.008")  # 1% of min(0.4, 0.6) x 2
        assert adapter.held_lots(YES) == inst.qty_to_lots(2)
        skipped = f"polymarket: trade event {bad['id']} skipped: {why}"
        assert skipped in warnings, warnings
        # Reconciliation still asks for the trades since the good one's time.
        asked: list[dict[str, str]] = []
        call = adapter.call

        async def recording(method: str, path: str, **kw: Any) -> Any:
            if path == "/data/trades":
                asked.append(kw.get("query") or {})
            return await call(method, path, **kw)

        adapter.call = recording  # type: ignore[method-assign]
        await adapter.reconcile_orders()
        assert asked and 0 < int(asked[0]["after"]) <= time.time()


async def test_a_malformed_fill_of_a_maker_order_of_ours_is_not_booked() -> None:
    async with connected() as (_, adapter, sink):
        client_id, order_id = await resting_buy(adapter, sink)
        token = adapter.tokens[YES].token_id
        ours = {"order_id": order_id, "asset_id": token, "price": "0.40", "side": "BUY"}
        frame = [
            trade("bad-1", "0xother", token, maker_orders=[{**ours, "matched_amount": "-3"}]),
            trade("good-1", "0xother", token, maker_orders=[{**ours, "matched_amount": "3"}]),
            "not an event",
        ]
        with warnings_logged() as warnings:
            adapter._on_user_text(json.dumps(frame), time.time_ns())
            adapter._on_user_text("{not json", time.time_ns())
        assert [(f.fill_id, f.qty_lots) for f in sink.fills_of(client_id)] == [
            (f"good-1:{order_id.lower()}", adapter.instruments[YES].qty_to_lots(3))
        ]
        assert "polymarket: trade event bad-1 skipped: matched_amount '-3' is not > 0" in warnings
        assert any("user event 'not an event' skipped" in w for w in warnings)
        assert any("user channel sent non-JSON" in w for w in warnings)


BAD_ORDERS: list[tuple[dict[str, Any], str]] = [
    ({"original_size": "-10"}, "original_size '-10' is not > 0"),
    ({"size_matched": "11"}, "size_matched '11' exceeds original_size '10'"),
    ({"status": "SUSPENDED"}, "status 'SUSPENDED' is not an order status the venue documents"),
    ({"price": "Infinity"}, "price 'Infinity' is not a finite number"),
    ({"price": "1e400"}, "price '1e400' outside (0, 1)"),
]


@pytest.mark.parametrize(("fields", "why"), BAD_ORDERS, ids=[w for _, w in BAD_ORDERS])
async def test_a_malformed_order_event_is_skipped_and_the_rest_of_its_frame_reported(
    fields: dict[str, Any], why: str
) -> None:
    async with connected() as (_, adapter, sink):
        client_id, order_id = await resting_buy(adapter, sink)
        event = {
            "event_type": "order",
            "type": "UPDATE",
            "id": order_id,
            "asset_id": adapter.tokens[YES].token_id,
            "status": "LIVE",
            "original_size": "10",
            "price": "0.40",
        }
        before = len(sink.updates)
        bad = {**event, "size_matched": "1", **fields}
        good = {**event, "size_matched": "2"}
        with warnings_logged() as warnings:
            adapter._on_user_text(json.dumps([bad, good]), time.time_ns())
        inst = adapter.instruments[YES]
        new = [
            (u.status, u.filled_lots, u.qty_lots, u.price_ticks)
            for u in sink.updates[before:]
            if u.client_id == client_id
        ]
        assert new == [
            (OrderStatus.PARTIALLY_FILLED, inst.qty_to_lots(2), inst.qty_to_lots(10), 40)
        ]
        assert f"polymarket: order event {order_id} skipped: {why}" in warnings, warnings


async def test_market_events_that_cannot_be_read_are_skipped() -> None:
    async with connected() as (_, adapter, sink):
        token = adapter.tokens[YES].token_id
        last = {"event_type": "last_trade_price", "asset_id": token, "side": "BUY", "size": "5"}
        frame = [
            {**last, "price": "Infinity"},
            {**last, "price": "0.5", "size": "-5"},
            {"event_type": "tick_size_change", "asset_id": token, "new_tick_size": "NaN"},
            {"event_type": "tick_size_change", "asset_id": token, "new_tick_size": "0.02"},
            {"event_type": "price_change", "price_changes": "abc"},
            {**last, "price": "0.45", "timestamp": "1700000000000"},
        ]
        trades = len(sink.trades)
        with warnings_logged() as warnings:
            adapter._on_market_text(json.dumps(frame), time.time_ns())
        inst = adapter.instruments[YES]
        assert [t[1:4] for t in sink.trades[trades:]] == [(YES, 45, inst.qty_to_lots(5))]
        assert adapter.venue_tick[YES] == Decimal("0.01")
        assert any("price 'Infinity' is not a finite number" in w for w in warnings)
        assert any("size '-5' is not > 0" in w for w in warnings)
        assert any("new_tick_size 'NaN'" in w for w in warnings)
        assert any("new_tick_size '0.02' is not a tick the venue uses" in w for w in warnings)


async def test_a_bad_rest_book_answer_does_not_end_the_snapshot_checks() -> None:
    async with connected(snapshot_check_s=0.05) as (_, adapter, _sink):
        source = adapter._sources[YES]
        answers = [0]
        call = adapter.call

        async def bad_books(method: str, path: str, **kw: Any) -> Any:
            if path != "/book":
                return await call(method, path, **kw)
            answers[0] += 1
            if answers[0] > 4:
                return await call(method, path, **kw)
            # At the book's own timestamp, so it is compared: a level without its size
            # (the venue's hash cannot be computed), or a price as a JSON number.
            if answers[0] % 2:
                level: dict[str, Any] = {"price": "0.40"}
                digest = "x"
            else:
                level, digest = {"price": 0.4, "size": "1"}, ""
            return json.dumps(
                {"timestamp": source.last_timestamp, "hash": digest, "bids": [level], "asks": []}
            )

        adapter.call = bad_books  # type: ignore[method-assign]
        with warnings_logged() as warnings:
            await wait_for(lambda: answers[0] >= 8)
        assert any("malformed REST /book answer" in w and "'size'" in w for w in warnings)
        assert any("'price' must be a decimal string" in w for w in warnings)
        assert source.state is BookState.LIVE  # a bad answer says nothing of the book


# -- the book source on its own -----------------------------------------------------------


def source() -> PolymarketBookSource:
    inst = Instrument(
        "polymarket",
        YES,
        YES,
        "USDC",
        Decimal("0.01"),
        Decimal("0.000001"),
        kind=InstrumentKind.BINARY,
        qty_step=Decimal("0.01"),
    )
    return PolymarketBookSource(inst, asset_id="t1")


def book(bids: list[Any], asks: list[Any]) -> str:
    return json.dumps(
        {
            "event_type": "book",
            "asset_id": "t1",
            "bids": [{"price": p, "size": s} for p, s in bids],
            "asks": [{"price": p, "size": s} for p, s in asks],
            "timestamp": "1",
        }
    )


def change(price: Any, size: Any, side: str = "SELL") -> str:
    entry = {"asset_id": "t1", "price": price, "size": size, "side": side}
    return json.dumps({"event_type": "price_change", "timestamp": "2", "price_changes": [entry]})


def test_book_numbers_sent_as_json_numbers_are_refused() -> None:
    src = source()
    # Read through a float, 0.50000000000000001 would be 0.5.
    with pytest.raises(BookMessageError, match="'price' must be a decimal string"):
        src.on_message(book([("0.40", "10")], []).replace('"0.40"', "0.50000000000000001"))
    assert src.state is not BookState.LIVE and src.book.best_bid() is None
    src.on_message(book([("0.40", "10")], [("0.60", "10")]))
    assert src.state is BookState.LIVE
    with pytest.raises(BookMessageError, match="'size' must be a decimal string"):
        src.on_message(change("0.55", 3))
    assert src.book.best_ask_ticks() == 60 and src.state is BookState.RESYNCING


@pytest.mark.parametrize("price", ["1.5", "0", "0.00", "100"])
def test_book_prices_outside_0_1_are_refused(price: str) -> None:
    src = source()
    with pytest.raises(BookMessageError, match=r"price \S+ outside \(0, 1\]"):
        src.on_message(book([("0.40", "10")], [(price, "10")]))
    assert src.state is not BookState.LIVE and src.book.best_ask_ticks() is None
    src.on_message(book([("0.40", "10")], [("0.60", "10"), ("1", "5")]))  # 1 is a price
    assert src.state is BookState.LIVE and src.book.best_ask_ticks() == 60
    with pytest.raises(BookMessageError, match=r"price \S+ outside \(0, 1\]"):
        src.on_message(change(price, "3"))
    assert src.book.top(Side.SELL, 5) == [(60, 10_000_000), (100, 5_000_000)]


def test_rest_book_answers_that_cannot_be_read_raise_the_sources_error() -> None:
    src = source()
    summary = rest_summary()
    assert src.on_snapshot(json.dumps(summary)).value == "applied"
    for bad in (
        {**summary, "bids": [{"price": "0.4"}]},  # hashed: the hash cannot be computed
        {**summary, "hash": "", "bids": [{"price": "0.4"}]},
        {**summary, "hash": "", "bids": "abc"},
        {**summary, "hash": "", "asks": [{"price": "1.5", "size": "1"}]},
    ):
        with pytest.raises(BookMessageError):
            src.compare_snapshot(bad)
    with pytest.raises(BookMessageError, match="must be a JSON object"):
        src.compare_snapshot([1])  # type: ignore[arg-type]
    assert src.state is BookState.LIVE and src.compare_snapshot(summary) is True
    for raw in ("{not json", "[1]", json.dumps({**summary, "bids": [{"price": "0.4"}]}), "null"):
        with pytest.raises(BookMessageError):
            src.on_snapshot(raw)
    assert src.state is BookState.RESYNCING and src.book.best_bid_ticks() == 40
