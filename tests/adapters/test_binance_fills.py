"""Binance fills read over REST (spot ``myTrades``, USDⓈ-M ``userTrades``): every page of
them, each trade once, each with the client id of its order, also for more orders than
one lookup batch and more trades than one page (1000 a call)."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from adapter_helpers import BINANCE_KIT, binance_of, running
from test_binance_usdm_conformance import futures_harness, usdm

from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.binance_usdm_replica import BinanceUsdmReplica
from quoteforge.exchanges.testing.binance_usdm_replica_rest import USER_TRADES_SPAN_MS
from quoteforge.model import Fill

ORDERS, FILLS_EACH = 60, 19  # 1,140 trades of 60 orders no adapter of this process saw
MY_TRADES = ("GET", "/api/v3/myTrades")
USER_TRADES = ("GET", "/fapi/v1/userTrades")


async def trade_while_down(
    replica: BinanceReplica, symbol: str, price: str, lot: str, fills_each: int = FILLS_EACH
) -> None:
    """Orders of an earlier life (or another program) rest and are filled a lot at a time
    while no adapter runs: ``ORDERS * fills_each`` trades."""
    for i in range(ORDERS):
        await replica.place_order(
            {
                "symbol": symbol,
                "side": "SELL",
                "type": "LIMIT",
                "timeInForce": "GTC",
                "price": price,
                "quantity": str(fills_each * Decimal(lot)),
                "newClientOrderId": f"old-{i}",
            }
        )
        for _ in range(fills_each):
            await replica.fill_order(f"old-{i}", lot)


def check_every_trade_once(fills: list[Fill], fills_each: int = FILLS_EACH) -> None:
    assert len(fills) == ORDERS * fills_each
    assert len({f.fill_id for f in fills}) == len(fills)
    assert Counter(f.client_id for f in fills) == {f"old-{i}": fills_each for i in range(ORDERS)}


async def test_spot_names_the_trades_of_more_than_50_untracked_orders() -> None:
    """One page of trades of 60 orders this process never saw: every order is looked up,
    so none of the run's own trades is taken for another client's (``order:<id>``)."""
    replica = BinanceReplica(ping_interval=0.1)
    await trade_while_down(replica, "BTCUSDT", "70000.00", "0.0001", fills_each=1)
    async with running(BINANCE_KIT, replica=replica) as h:
        fills = await binance_of(h).fetch_fills(0)
    check_every_trade_once(fills, fills_each=1)


async def test_spot_reads_every_page_of_trades_with_every_client_id() -> None:
    replica = BinanceReplica(ping_interval=0.1)
    await trade_while_down(replica, "BTCUSDT", "70000.00", "0.00001")
    async with running(BINANCE_KIT, replica=replica) as h:
        adapter = binance_of(h)
        fills = await adapter.fetch_fills(0)
        lookups = replica.request_log.count(("GET", "/api/v3/order"))
        again = await adapter.fetch_fills(0)
    check_every_trade_once(fills)
    # Two pages (1000, then from the next id), and each order looked up once a process.
    assert replica.request_log.count(MY_TRADES) == 4
    assert lookups == ORDERS
    assert replica.request_log.count(("GET", "/api/v3/order")) == ORDERS
    assert sorted(f.fill_id for f in again) == sorted(f.fill_id for f in fills)


async def test_usdm_reads_every_page_of_trades_with_every_client_id() -> None:
    """USDⓈ-M is read in windows of at most 7 days (the venue refuses wider ones), over the
    6 months it serves; a full window is split until each answer is short."""
    replica = BinanceUsdmReplica(ping_interval=0.1)
    await trade_while_down(replica, "ETHUSDT", "2700.00", "0.001")
    h = await futures_harness(replica)
    try:
        fills = await usdm(h).fetch_fills(0)
        calls = replica.request_log.count(USER_TRADES)
        minute = await usdm(h).fetch_fills((replica.now_ms() - 60_000) * 1_000_000)
        weeks_ms = replica.now_ms() - 3 * USER_TRADES_SPAN_MS - 5
        weeks = await usdm(h).fetch_fills(weeks_ms * 1_000_000)
    finally:
        await h.adapter.close()
        await replica.stop()
    for read in (fills, minute, weeks):
        check_every_trade_once(read)
    assert calls > 180 // 7 + 1  # every 7-day window, and the halves of the full one
