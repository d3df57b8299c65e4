"""Kraken adapter behaviour beyond the shared scenarios: instruments, checksums from
wire text, batch_add, amend_order, the per-pair rate counter, signing."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from adapter_helpers import KRAKEN_KIT, compact, kraken_of, running
from loguru import logger

from quoteforge.exchange import CancelOrder, PlaceOrder
from quoteforge.exchanges.ccxt_base import VenueCallError
from quoteforge.exchanges.kraken.adapter import KrakenParams
from quoteforge.exchanges.kraken.book import kraken_checksum
from quoteforge.exchanges.testing.kraken_replica import KrakenReplica
from quoteforge.model import OrderStatus, Side, TimeInForce

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kraken_rest"


async def test_instruments_have_the_exact_venue_grid() -> None:
    async with running(KRAKEN_KIT) as h:
        inst = h.instrument
        assert (inst.tick_size, inst.lot_size) == (Decimal("0.1"), Decimal("1E-8"))
        assert (inst.min_qty, inst.min_notional) == (Decimal("0.0001"), Decimal("0.5"))
        assert (inst.base, inst.quote) == ("BTC", "USD")


async def test_a_fill_at_the_full_wire_precision_is_read_exactly() -> None:
    """Kraken reports quantities with lot_decimals digits; a fill against a resting
    order of 0.00012345 BTC reaches the run, REST and the balances exactly."""
    async with running(KRAKEN_KIT) as h:
        inst = h.instrument
        ask_ticks = h.replica_levels("sell")[0][0]
        await h.replica.set_level(h.symbol, "sell", inst.ticks_to_price(ask_ticks), "0.00012345")
        await h.wait_book_matches()
        assert h.book.lots_at(Side.SELL, ask_ticks) == 12_345
        held = (await kraken_of(h).fetch_balances()).get("BTC", Decimal(0))
        order = h.order(Side.BUY, price=ask_ticks, lots=inst.qty_to_lots("0.001"))
        order.tif = TimeInForce.IOC
        await h.place(order, until=lambda u: u.status.is_terminal)
        await h.wait_for(lambda: bool(h.sink.fills_of(order.client_id)), "the fill")
        (fill,) = h.sink.fills_of(order.client_id)
        assert inst.lots_to_qty(fill.qty_lots) == Decimal("0.00012345")
        rest = [f for f in await kraken_of(h).fetch_fills(0) if f.fill_id == fill.fill_id]
        assert [f.qty_lots for f in rest] == [12_345]
        now = (await kraken_of(h).fetch_balances()).get("BTC", Decimal(0))
        fee = fill.fee if fill.fee_asset == "BTC" else Decimal(0)
        assert now - held == Decimal("0.00012345") - fee


async def test_replica_checksums_agree_with_the_book_rule_on_wire_text() -> None:
    """Two independent implementations of Kraken's CRC32 agree on what the wire says,
    and the quantities keep their trailing zeros."""
    async with (
        KrakenReplica() as replica,
        aiohttp.ClientSession() as session,
        session.ws_connect(replica.public_ws_url) as ws,
    ):
        await ws.send_str(
            json.dumps(
                {
                    "method": "subscribe",
                    "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 25},
                }
            )
        )
        await replica.churn("BTC/USD", 5, seed=1)
        checked = 0
        while checked < 3:
            raw = (await ws.receive()).data
            msg = json.loads(raw, parse_float=str)
            if msg.get("channel") != "book" or msg["type"] != "snapshot":
                continue
            entry = msg["data"][0]
            asks = [(lv["price"], lv["qty"]) for lv in entry["asks"]]
            bids = [(lv["price"], lv["qty"]) for lv in entry["bids"]]
            assert all(len(q.split(".")[1]) == 8 for _, q in asks + bids)
            assert kraken_checksum(asks, bids) == entry["checksum"]
            checked += 3


def test_recorded_book_fixtures_carry_valid_checksums() -> None:
    for name in ("book_snapshot.json",):
        entry = json.loads((FIXTURES / name).read_text(), parse_float=str)["data"][0]
        asks = [(lv["price"], lv["qty"]) for lv in entry["asks"]]
        bids = [(lv["price"], lv["qty"]) for lv in entry["bids"]]
        assert kraken_checksum(asks, bids) == entry["checksum"]


async def test_several_new_orders_of_one_pair_go_as_one_batch() -> None:
    async with running(KRAKEN_KIT) as h:
        orders = [h.order(Side.BUY, price=h.passive_price(Side.BUY, 40 + i)) for i in range(3)]
        h.adapter.submit([PlaceOrder(o) for o in orders])
        for o in orders:
            await h.wait_for(h.status_is(o.client_id, OrderStatus.OPEN), f"{o.client_id} open")
        assert h.replica.ws_requests.count("batch_add") == 1
        assert "add_order" not in h.replica.ws_requests


async def test_a_batch_is_refused_as_a_whole() -> None:
    async with running(KRAKEN_KIT) as h:
        good = h.order(Side.BUY)
        crossing = h.order(
            Side.BUY, price=h.replica_levels("sell")[0][0], tif=TimeInForce.POST_ONLY
        )
        h.adapter.submit([PlaceOrder(good), PlaceOrder(crossing)])
        for o in (good, crossing):
            await h.wait_for(h.status_is(o.client_id, OrderStatus.REJECTED), "rejected")
        assert not h.replica.orders(h.symbol)


async def test_amend_keeps_the_order_and_changes_its_size() -> None:
    async with running(KRAKEN_KIT) as h:
        order = h.order(Side.SELL)
        await h.place(order)
        venue_id = h.replica.orders(h.symbol)[0].venue_id
        await kraken_of(h).amend_order(order.client_id, qty_lots=order.qty_lots * 2)
        await h.wait_for(
            lambda: (
                (u := h.sink.last(order.client_id)) is not None and u.qty_lots == order.qty_lots * 2
            ),
            "amended size reported",
        )
        [resting] = h.replica.orders(h.symbol)
        assert resting.venue_id == venue_id and resting.client_id == order.client_id
        assert resting.qty == h.instrument.lots_to_qty(order.qty_lots * 2)
        await h.wait_book_matches()


async def test_rate_limit_error_fills_the_pair_counter_and_the_order_goes_once() -> None:
    async with running(KRAKEN_KIT) as h:
        await h.replica.fail_http(429, path=h.replica.order_path)
        order = h.order(Side.BUY)
        await h.place(order, until=lambda u: u.status is OrderStatus.OPEN, timeout=8)
        assert kraken_of(h).governor.limit_hits == 1
        assert h.accepted(order.client_id) == 1


async def test_cancelling_a_young_order_costs_the_penalty() -> None:
    async with running(KRAKEN_KIT) as h:
        order = h.order(Side.BUY)
        await h.place(order)
        governor = kraken_of(h).governor
        before = governor.counter("BTC/USD")
        h.adapter.submit([CancelOrder(order.client_id, "kraken", h.symbol)])
        await h.wait_for(h.status_is(order.client_id, OrderStatus.CANCELLED), "cancelled")
        assert governor.counter("BTC/USD") >= before + 7  # +8 under 5 s, minus a little decay


async def test_wrong_secret_is_refused_by_the_signature_check() -> None:
    replica = KrakenReplica(ping_interval=0.1)
    bad = "A" * 88
    # At the start (the websocket token request is signed): the run does not begin on
    # keys the venue refuses (test_startup_faults.py: and closes what it opened).
    with pytest.raises(VenueCallError, match="Invalid signature") as info:
        async with running(
            KRAKEN_KIT,
            replica=replica,
            max_rate_wait_s=0.3,
            secrets={"api_key": replica.api_key, "api_secret": bad},
        ):
            pass
    assert info.value.kind == "auth"
    assert replica.orders("BTC/USD", open_only=False) == []


async def test_balances_and_open_orders_from_rest() -> None:
    async with running(KRAKEN_KIT) as h:
        order = h.order(Side.BUY)
        await h.place(order)
        balances = await kraken_of(h).fetch_balances()
        assert balances["USD"] == Decimal("1000000")
        assert balances["BTC"] == Decimal("100")
        [open_order] = await kraken_of(h).fetch_open_orders()
        assert (open_order.client_id, open_order.status) == (order.client_id, OrderStatus.OPEN)
        assert open_order.price_ticks == order.price_ticks


def test_kraken_has_no_testnet_and_says_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"no test network.*KrakenReplica"):
        KrakenParams(testnet=True)


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


async def test_replica_rest_speaks_the_recorded_shapes() -> None:
    recorded = json.loads((FIXTURES / "AssetPairs.json").read_text())
    async with (
        KrakenReplica() as replica,
        aiohttp.ClientSession() as session,
        session.get(replica.url + "/0/public/AssetPairs?pair=XBTUSD") as resp,
    ):
        served = await resp.json()
    assert _shape(served) == _shape(recorded)


async def test_execution_trade_event_has_the_recorded_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded = json.loads((FIXTURES / "executions_trade.json").read_text())["data"][0]
    async with running(KRAKEN_KIT) as h:
        seen: list[dict[str, Any]] = []
        adapter = kraken_of(h)
        original = adapter._on_execution

        def keep(ev: dict[str, Any]) -> None:
            seen.append(ev)
            original(ev)

        monkeypatch.setattr(adapter, "_on_execution", keep)
        order = h.order(Side.BUY)
        await h.place(order)
        await h.replica.fill_order(order.client_id)
        await h.wait_for(lambda: any(e.get("exec_type") == "trade" for e in seen), "trade")
    trade = next(e for e in seen if e.get("exec_type") == "trade")
    assert set(trade) == set(recorded)


@pytest.mark.parametrize(("field", "garbled"), [("last_qty", "-0.5"), ("fees", "none")])
async def test_a_garbled_trade_is_not_booked_and_the_executions_snapshot_brings_it(
    field: str, garbled: str
) -> None:
    async with running(KRAKEN_KIT) as h:
        adapter = kraken_of(h)
        original = adapter._on_private_text
        garbling: list[str] = []

        def in_transit(raw: str, recv_ns: int) -> None:
            msg = json.loads(raw)
            for event in msg.get("data", []) if isinstance(msg, dict) else []:
                if event.get("exec_type") == "trade" and not garbling:
                    garbling.append(json.dumps(event))
                    event[field] = garbled
            original(json.dumps(msg), recv_ns)

        assert adapter._private is not None
        adapter._private._on_text = in_transit
        order = h.order(Side.BUY)
        await h.place(order)
        connects = adapter._private.connects
        await h.replica.fill_order(order.client_id)
        await h.wait_for(lambda: bool(h.sink.fills_of(order.client_id)), "the fill", 10)
        assert garbling and adapter._private.connects > connects  # subscribed again
        (fill,) = h.sink.fills_of(order.client_id)
        assert fill.qty_lots == order.qty_lots and fill.fee.is_finite()


async def test_a_public_trade_that_cannot_be_read_as_sent_is_dropped() -> None:
    async with running(KRAKEN_KIT) as h:
        adapter = kraken_of(h)
        good = {"symbol": "BTC/USD", "side": "buy", "price": 30000.5, "qty": 0.01}
        bad: list[dict[str, object]] = [{"side": "up"}, {"price": -1}, {"qty": 0}, {"side": None}]
        before = len(h.sink.trades)
        for change in bad:
            frame = {"channel": "trade", "type": "update", "data": [{**good, **change}]}
            adapter._on_public_text(compact(frame), 0)
        adapter._on_public_text('{"channel":"trade","data":', 0)
        adapter._on_public_text('{"channel":"trade","data":"x"}', 0)
        assert len(h.sink.trades) == before
        adapter._on_public_text(compact({"channel": "trade", "data": [good]}), 0)
        assert h.sink.trades[-1][4] is Side.BUY


# Kraken's websocket v2 trade channel, as docs.kraken.com gives it (spot-websocket-v2/trade):
# the subscribe answer names the channel in ``result`` and carries no ``data``.
TRADE_SUBSCRIBED = {
    "method": "subscribe",
    "result": {"channel": "trade", "snapshot": True, "symbol": "BTC/USD"},
    "success": True,
    "time_in": "2023-09-25T09:04:31.742599Z",
    "time_out": "2023-09-25T09:04:31.742648Z",
}
TRADE_UNSUBSCRIBED = {
    "method": "unsubscribe",
    "result": {"channel": "trade", "symbol": "BTC/USD"},
    "success": True,
    "time_in": "2023-09-25T09:04:31.742599Z",
    "time_out": "2023-09-25T09:04:31.742648Z",
}
REFUSED = (
    {  # as documented: no result, the symbol at the top
        "error": "Currency pair not supported XBT/USD",
        "method": "subscribe",
        "success": False,
        "symbol": "XBT/USD",
        "time_in": "2023-09-25T09:04:31.742599Z",
        "time_out": "2023-09-25T09:04:31.742648Z",
    },
    {**TRADE_SUBSCRIBED, "success": False, "error": "EGeneral:Invalid arguments"},
)
TRADE_SNAPSHOT = {
    "channel": "trade",
    "type": "snapshot",
    "data": [
        {
            "symbol": "BTC/USD",
            "side": "sell",
            "price": 30000.5,
            "qty": 0.01,
            "ord_type": "limit",
            "trade_id": 4665846,
            "timestamp": "2023-09-25T07:48:36.925533Z",
        }
    ],
}


async def test_the_trade_channel_answers_are_not_taken_for_unreadable_trades() -> None:
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        async with running(KRAKEN_KIT) as h:
            adapter = kraken_of(h)
            for answer in (TRADE_SUBSCRIBED, TRADE_UNSUBSCRIBED):
                adapter._on_public_text(compact(answer), 0)
            for refused in REFUSED:
                adapter._on_public_text(compact(refused), 0)
            adapter._on_public_text(compact(TRADE_SNAPSHOT), 0)
            assert h.sink.trades[-1][4] is Side.SELL
            # The replica's own answer to the adapter's subscription, and a live trade.
            order = h.order(Side.BUY)
            await h.place(order)
            before = len(h.sink.trades)
            await h.replica.fill_order(order.client_id)
            await h.wait_for(lambda: len(h.sink.trades) > before, "the public trade")
    finally:
        logger.remove(handler)
    assert not [line for line in lines if "unreadable trade" in line]
    assert [line.strip() for line in lines if "refused" in line] == [
        f"kraken: public request refused: {compact(refused)}" for refused in REFUSED
    ]
