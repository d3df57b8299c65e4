"""``type: ccxt`` without the conformance kit: ccxt markets mapped to exact
instruments in each precision mode, the ccxt id checks (did you mean, unchecked ids
warn), parameter errors, and reconciliation calls against the replicas."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from adapter_helpers import running
from ccxt_kits import CCXT_BINANCE_KIT, CCXT_KRAKEN_KIT, CCXT_OKX_KIT
from loguru import logger

from quoteforge.clock import LiveClock
from quoteforge.exchange import VenueContext
from quoteforge.exchanges.ccxt.adapter import CcxtParams, CcxtVenue
from quoteforge.exchanges.ccxt.venues import (
    DECIMAL_PLACES,
    SIGNIFICANT_DIGITS,
    TICK_SIZE,
    MarketGridError,
    instrument_from_market,
)
from quoteforge.exchanges.testing.conformance import FAST_PARAMS
from quoteforge.exchanges.testing.okx_replica_fills import fills_page
from quoteforge.model import Order, OrderStatus, Side


def market(price: Any, amount: Any, base: Any = None) -> dict[str, Any]:
    precision = {"price": price, "amount": amount}
    if base is not None:
        precision["base"] = base
    return {
        "symbol": "BTC/USDT",
        "base": "BTC",
        "quote": "USDT",
        "precision": precision,
        "limits": {"amount": {"min": 1e-05}, "cost": {"min": 5.0}},
    }


def test_tick_size_market_is_exact_and_counts_at_the_base_precision() -> None:
    inst = instrument_from_market("v", "BTCUSDT", market(0.01, 1e-05, 1e-08), TICK_SIZE)
    assert inst.tick_size == Decimal("0.01")
    assert inst.qty_step == Decimal("0.00001")
    assert inst.lot_size == Decimal("1E-8")
    assert inst.min_qty == Decimal("0.00001") and inst.min_notional == Decimal(5)
    assert inst.symbol == "BTCUSDT" and inst.base == "BTC" and inst.quote == "USDT"


def test_decimal_places_market_is_exact() -> None:
    inst = instrument_from_market("v", "BTC/USDT", market(1, 8), DECIMAL_PLACES)
    assert inst.tick_size == Decimal("0.1") and inst.lot_size == Decimal("1E-8")


def test_significant_digits_market_is_refused_with_the_way_out() -> None:
    with pytest.raises(MarketGridError, match=r"significant digits.*dedicated adapter"):
        instrument_from_market("v", "BTC/USDT", market(5, 8), SIGNIFICANT_DIGITS)


def test_unknown_ccxt_id_gets_did_you_mean() -> None:
    with pytest.raises(ValueError, match="ccxt has no exchange 'krakken'; did you mean 'kraken'"):
        CcxtParams(exchange="krakken")


def test_native_url_params_are_refused_with_the_ccxt_way() -> None:
    with pytest.raises(ValueError, match="type ccxt takes no rest_url: give urls instead"):
        CcxtParams(exchange="binance", rest_url="http://127.0.0.1:1")


def test_an_unchecked_ccxt_id_warns_and_builds() -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        ctx = VenueContext("bybit", LiveClock(), 1, "live", ["BTC/USDT"])
        venue = CcxtVenue(CcxtParams(exchange="bybit"), ctx)
    finally:
        logger.remove(sink)
    assert venue.profile is None
    assert any("'bybit' has not been checked by quoteforge" in line for line in lines)


async def test_testnet_where_ccxt_has_none_is_refused() -> None:
    ctx = VenueContext("kraken", LiveClock(), 1, "live", ["BTC/USD"])
    venue = CcxtVenue(CcxtParams(exchange="kraken", testnet=True), ctx)
    with pytest.raises(ValueError, match="ccxt has no test network for 'kraken'"):
        venue.make_client(private=False)


async def test_unknown_market_gets_did_you_mean() -> None:
    replica = CCXT_BINANCE_KIT.make_replica()
    await replica.start()
    try:
        ctx = VenueContext("binance", LiveClock(), 1, "live", ["BTC/USDC"], secrets={})
        venue = CCXT_BINANCE_KIT.make_adapter(replica, dict(FAST_PARAMS), ctx)
        try:
            with pytest.raises(ValueError, match="no market 'BTC/USDC'; did you mean 'BTC/USDT'"):
                await venue.connect(_NullSink())
        finally:
            await venue.close()
    finally:
        await replica.stop()


class _NullSink:
    def on_book(self, book: Any) -> None: ...
    def on_book_state(self, book: Any, old: str, new: str, reason: str) -> None: ...
    def on_trade(self, *args: Any) -> None: ...
    def on_order_update(self, update: Any) -> None: ...
    def on_fill(self, fill: Any) -> None: ...
    def on_offer(self, offer: Any) -> None: ...


@pytest.mark.parametrize(
    "kit", [CCXT_BINANCE_KIT, CCXT_KRAKEN_KIT, CCXT_OKX_KIT], ids=lambda k: k.venue
)
async def test_reconciliation_reads_orders_balances_and_fills(kit: Any) -> None:
    async with running(kit) as h:
        order = h.order(Side.BUY)
        await h.place(order)
        await h.replica.fill_order(order.client_id, h.instrument.lots_to_qty(order.qty_lots))
        await h.wait_for(lambda: bool(h.sink.fills_of(order.client_id)), "fill")
        resting = h.order(Side.SELL)
        await h.place(resting)
        open_orders = await h.adapter.fetch_open_orders()
        assert open_orders is not None
        assert [u.client_id for u in open_orders] == [resting.client_id]
        assert open_orders[0].symbol == kit.symbol
        balances = await h.adapter.fetch_balances()
        assert balances is not None and balances[h.instrument.quote] > 0
        fills = await h.adapter.fetch_fills(0)
        assert fills is not None
        streamed = h.sink.fills_of(order.client_id)
        # The same fill over REST as on the stream: id, size and fee (paid: positive).
        assert [(f.fill_id, f.qty_lots, f.fee) for f in fills] == [
            (f.fill_id, f.qty_lots, f.fee) for f in streamed
        ]
        assert streamed[0].fee > 0


def test_plugins_and_the_ccxt_venues_command_name_the_checked_venues(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from quoteforge.exchanges.ccxt.venues import ccxt_venues_main
    from quoteforge.plugins.plugins_cli import plugin_rows
    from quoteforge.registry import load_registry

    rows = {(r["name"], r["kind"]): r for r in plugin_rows(load_registry())}
    assert (
        "checked against replicas: binance, kraken, okx"
        in rows[("ccxt", "exchange")]["description"]
    )
    assert ("ccxt-venues", "command") in rows
    assert ccxt_venues_main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("binance\n  checked: spot, against the Binance replica")
    assert "\nkraken\n  checked: spot, against the Kraken replica" in out
    assert "\nokx\n  checked: spot, against the OKX v5 replica" in out
    assert "other ccxt ids run with a warning (not checked)" in out


async def test_okx_gets_client_ids_it_accepts_and_reports_come_back_under_ours() -> None:
    from quoteforge.exchange import CancelOrder

    async with running(CCXT_OKX_KIT) as h:
        order = h.order(Side.BUY, client_id="mm-run0042-17")
        update = await h.place(order)
        assert update.status is OrderStatus.OPEN, update
        assert [o.client_id for o in h.replica.orders(h.symbol)] == ["mmrun004217"]
        await h.replica.fill_order("mmrun004217", h.instrument.lots_to_qty(order.qty_lots // 2))
        await h.wait_for(lambda: bool(h.sink.fills_of(order.client_id)), "fill under our id")
        h.adapter.submit([CancelOrder(order.client_id, h.adapter.name, h.symbol)])
        await h.wait_for(h.status_is(order.client_id, OrderStatus.CANCELLED), "cancelled")
        assert not h.replica.orders(h.symbol)


async def test_rest_polling_stands_in_for_missing_websockets() -> None:
    """A venue whose ccxt has no watch_* at all: the book is polled with
    fetch_order_book, orders are looked up and our trades fetched over REST."""
    import dataclasses

    from quoteforge.exchanges.ccxt.venues import CHECKED_VENUES

    no_ws = dict.fromkeys(("watchOrderBook", "watchTrades", "watchOrders", "watchMyTrades"), False)

    def make(replica: Any, params: dict[str, Any], ctx: VenueContext) -> CcxtVenue:
        venue = CCXT_BINANCE_KIT.make_adapter(replica, {**params, "poll_interval_s": 0.1}, ctx)
        assert isinstance(venue, CcxtVenue)
        profile = CHECKED_VENUES["binance"]
        venue.profile = dataclasses.replace(profile, has={**profile.has, **no_ws})
        return venue

    kit = dataclasses.replace(CCXT_BINANCE_KIT, make_adapter=make)
    async with running(kit) as h:
        assert isinstance(h.adapter, CcxtVenue)
        assert not h.adapter.market_client.has["watchOrderBook"]
        await h.replica.churn(h.symbol, 10, seed=4)
        await h.wait_book_matches()
        order = h.order(Side.BUY)
        assert (await h.place(order)).status is OrderStatus.OPEN
        await h.replica.fill_order(order.client_id)
        await h.wait_for(h.status_is(order.client_id, OrderStatus.FILLED), "filled, by look-up")
        await h.wait_for(lambda: bool(h.sink.fills_of(order.client_id)), "fill, by fetch")
        assert [f.qty_lots for f in h.sink.fills_of(order.client_id)] == [order.qty_lots]


async def test_a_cancel_all_is_confirmed_by_the_venues_answer() -> None:
    """Binance answers a cancel-all with the orders it cancelled: they are reported
    CANCELLED at once, as a single cancel's answer is, even while the private stream
    is silent and its reports are lost."""
    from quoteforge.exchange import CancelAll

    async with running(CCXT_BINANCE_KIT) as h:
        orders = [h.order(Side.BUY), h.order(Side.SELL)]
        for order in orders:
            await h.place(order)
        await h.replica.go_silent(5.0)
        h.adapter.submit([CancelAll(h.adapter.name, h.symbol)])
        for order in orders:
            await h.wait_for(
                h.status_is(order.client_id, OrderStatus.CANCELLED),
                f"{order.client_id} cancelled from the answer",
                timeout=0.5,
            )
        assert not h.replica.orders(h.symbol)
        await h.replica.resume()


async def test_a_resumed_adapter_tells_the_earlier_lifes_trades_by_their_order_id() -> None:
    """Binance's trade history names the order by the venue's id only: a new process (a
    resume) tells the first life's trades as ours once the run hands it those orders."""
    kit = CCXT_BINANCE_KIT
    async with running(kit) as h:
        order = h.order(Side.BUY)
        await h.place(order)
        await h.replica.fill_order(order.client_id, h.instrument.lots_to_qty(order.qty_lots))
        await h.wait_for(lambda: bool(h.sink.fills_of(order.client_id)), "fill")
        [fill] = h.sink.fills_of(order.client_id)
        exchange_id = next(
            u.exchange_id
            for u in h.sink.updates
            if u.client_id == order.client_id and u.exchange_id
        )
        secrets = {"api_key": h.replica.api_key, "api_secret": h.replica.api_secret}
        ctx = VenueContext(kit.venue, LiveClock(), 1, "live", [kit.symbol], secrets=secrets)
        second = kit.make_adapter(h.replica, {**FAST_PARAMS, **kit.params}, ctx)
        await second.connect(_NullSink())
        try:
            assert isinstance(second, CcxtVenue)
            assert not [f for f in await second.fetch_fills(0) or [] if f.fill_id == fill.fill_id]
            order.exchange_id = exchange_id
            second.know_orders([order])
            again = [f for f in await second.fetch_fills(0) or [] if f.fill_id == fill.fill_id]
            assert [(f.client_id, f.qty_lots) for f in again] == [(order.client_id, fill.qty_lots)]
        finally:
            await second.close()


async def _orders_filled_while_down(kit: Any, replica: Any, orders: int, fills: int) -> list[Order]:
    """Orders of an earlier life rest and are filled ``fills`` times each while no adapter
    runs; returned as the run hands them over at a resume (with the venue's order id)."""
    out = []
    for i in range(orders):
        if kit is CCXT_KRAKEN_KIT:
            qty = "0.0002"
            placed = await replica.add_order(
                {
                    "symbol": kit.symbol,
                    "side": "sell",
                    "order_type": "limit",
                    "order_qty": str(fills * Decimal(qty)),
                    "limit_price": "60000.0",
                    "cl_ord_id": f"old-{i}",
                }
            )
            venue_id = placed.venue_id
        elif kit is CCXT_OKX_KIT:
            qty = "0.00001"
            placed = await replica.place_order(
                {
                    "instId": "BTC-USDT",
                    "side": "sell",
                    "ordType": "limit",
                    "px": "60000.0",
                    "sz": str(fills * Decimal(qty)),
                    "clOrdId": f"old{i}",  # OKX takes letters and digits only
                }
            )
            venue_id = placed.venue_id
        else:
            qty = "0.00001"
            placed = await replica.place_order(
                {
                    "symbol": kit.symbol,
                    "side": "SELL",
                    "type": "LIMIT",
                    "timeInForce": "GTC",
                    "price": "70000.00",
                    "quantity": str(fills * Decimal(qty)),
                    "newClientOrderId": f"old-{i}",
                }
            )
            venue_id = str(placed.order_id)
        for _ in range(fills):
            await replica.fill_order(placed.client_id, qty)
        out.append(
            Order(f"old-{i}", kit.venue, kit.symbol, Side.SELL, fills, 1, exchange_id=venue_id)
        )
    return out


def test_the_okx_replica_pages_fills_by_bill_id_as_documented() -> None:
    """``after`` older than a ``billId``, ``before`` newer (the page next to it),
    ``begin`` by time, at most 100 a page, the most recent first."""
    rows = [{"instId": "BTC-USDT", "billId": str(b), "ts": str(b)} for b in range(1, 251)]

    def bills(**query: str) -> list[int]:
        return [int(r["billId"]) for r in fills_page(rows, query)]

    assert bills() == list(range(250, 150, -1))
    assert bills(after="151") == list(range(150, 50, -1))
    assert bills(before="100", limit="10") == list(range(110, 100, -1))
    assert bills(after="30", before="20") == list(range(29, 20, -1))
    assert bills(begin="240", limit="500") == list(range(250, 239, -1))
    assert bills(instId="ETH-USDT") == []
    with pytest.raises(ValueError, match="after"):
        bills(after="x")


HISTORY_READS = {
    "binance": (("GET", "/api/v3/myTrades"), 2),  # 1000, then from the next id
    "kraken": (("POST", "/0/private/TradesHistory"), 4),  # 50, 50, 20, then none
    "okx": (("GET", "/api/v5/trade/fills-history"), 4),  # 100, 100, 40, then none
}


@pytest.mark.parametrize(
    ("kit", "orders", "fills"),
    [(CCXT_BINANCE_KIT, 60, 19), (CCXT_KRAKEN_KIT, 60, 2), (CCXT_OKX_KIT, 60, 4)],
    ids=["binance", "kraken", "okx"],
)
async def test_fills_read_over_rest_come_from_every_page_each_once(
    kit: Any, orders: int, fills: int
) -> None:
    """More trades than one answer of the venue (Binance 1000, Kraken 50, OKX 100): the
    read pages on as the venue does (Binance ``fromId``, Kraken ``ofs``, OKX ``after``
    the oldest ``billId`` read) and gets every trade once."""
    replica = kit.make_replica()
    known = await _orders_filled_while_down(kit, replica, orders, fills)
    request, reads = HISTORY_READS[kit.venue]
    async with running(kit, replica=replica, rate_limit_ms=5) as h:
        assert isinstance(h.adapter, CcxtVenue)
        h.adapter.know_orders(known)
        asked = replica.request_log.count(request)
        read = await h.adapter.fetch_fills(0)
        assert replica.request_log.count(request) - asked == reads
    assert read is not None
    assert len(read) == orders * fills
    assert len({f.fill_id for f in read}) == len(read)
    assert Counter(f.client_id for f in read) == {f"old-{i}": fills for i in range(orders)}
