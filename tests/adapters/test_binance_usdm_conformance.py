"""The conformance scenarios against the Binance USDⓈ-M replica, the futures-only
behaviour (reduce-only, listen-key expiry, positions, funding, batch orders, modify,
position mode), and the recorded scenarios over the real USDⓈ-M recording."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from quoteforge.clock import LiveClock
from quoteforge.exchange import PlaceOrder, VenueContext
from quoteforge.exchanges.binance_usdm import BinanceUsdm, BinanceUsdmParams
from quoteforge.exchanges.testing.binance_usdm_replica import BinanceUsdmReplica
from quoteforge.exchanges.testing.conformance import (
    FAST_PARAMS,
    RECORDED_SCENARIOS,
    SCENARIOS,
    DerivativesRecordingSink,
    Harness,
    RecordingSink,
    VenueKit,
    needs,
    recorded_venue_harness,
)
from quoteforge.model import REDUCE_ONLY, OrderStatus, OrderType, Side, TimeInForce

__all__ = ["recorded_venue_harness"]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RECORDING = FIXTURES / "real" / "binance" / "usdm_ethusdt_20240808.gz"


def usdm_adapter(
    replica: BinanceUsdmReplica, params: dict[str, Any], ctx: VenueContext
) -> BinanceUsdm:
    return BinanceUsdm(
        BinanceUsdmParams(rest_url=replica.url, ws_url=replica.ws_url, **params), ctx
    )


USDM_KIT = VenueKit(
    venue="binance_usdm",
    symbol="ETHUSDT",
    make_replica=lambda: BinanceUsdmReplica(ping_interval=0.1),
    make_adapter=usdm_adapter,
    features=frozenset({"sequence", "listen_key"}),
    params={"user_silence_timeout_s": 0.6, "leverage": 10, "margin_type": "CROSSED"},
    make_recording_replica=lambda path, speed: BinanceUsdmReplica(
        ping_interval=0.1, recording=path, speed=speed
    ),
    recording=RECORDING,
)


@pytest.fixture
def conformance_kit(request: pytest.FixtureRequest) -> VenueKit:
    return USDM_KIT


@pytest.mark.parametrize(
    "scenario",
    [s for s in SCENARIOS if needs(s) is None or needs(s) in USDM_KIT.features],
    ids=lambda s: s.__name__,
)
async def test_binance_usdm_conformance(venue_harness: Harness, scenario: Any) -> None:
    await scenario(venue_harness)


@pytest.mark.parametrize("scenario", RECORDED_SCENARIOS, ids=lambda s: s.__name__)
async def test_binance_usdm_over_the_real_recording(
    recorded_venue_harness: Harness, scenario: Any
) -> None:
    await scenario(recorded_venue_harness)


# ---------------------------------------------------------------------------------------
# Futures-only behaviour
# ---------------------------------------------------------------------------------------


async def futures_harness(replica: BinanceUsdmReplica, **overrides: Any) -> Harness:
    await replica.start()
    ctx = VenueContext(
        name="binance_usdm",
        clock=LiveClock(),
        seed=1,
        mode="live",
        symbols=["ETHUSDT"],
        secrets={"api_key": replica.api_key, "api_secret": replica.api_secret},
    )
    adapter = usdm_adapter(replica, {**FAST_PARAMS, **USDM_KIT.params, **overrides}, ctx)
    sink = DerivativesRecordingSink()
    await adapter.connect(sink)
    harness = Harness(USDM_KIT, replica, adapter, sink)
    await harness.wait_book_matches()
    return harness


def usdm(h: Harness) -> BinanceUsdm:
    """The harness's adapter, a ``BinanceUsdm`` as ``usdm_adapter`` makes it."""
    assert isinstance(h.adapter, BinanceUsdm)
    return h.adapter


def derivatives_sink(h: Harness) -> DerivativesRecordingSink:
    """The sink ``futures_harness`` connects, with the positions and funding it saw."""
    assert isinstance(h.sink, DerivativesRecordingSink)
    return h.sink


def new_listen_key(adapter: BinanceUsdm, old: str) -> Callable[[], bool]:
    return lambda: adapter.listen_key != old


def has_fill(h: Harness, client_id: str) -> Callable[[], bool]:
    return lambda: bool(h.sink.fills_of(client_id))


async def close(h: Harness) -> None:
    await h.adapter.close()
    await h.replica.stop()


async def buy_position(h: Harness, lots: int) -> None:
    """Take ``lots`` from the replica's asks: a long position."""
    order = h.order(Side.BUY, lots=lots, kind=OrderType.MARKET)
    await h.place(order, until=lambda u: u.status is OrderStatus.FILLED)
    await h.wait_for(
        lambda: (
            usdm(h).positions.get("ETHUSDT") is not None
            and usdm(h).positions["ETHUSDT"].qty_lots == lots
        ),
        "long position",
    )


async def test_reduce_only_is_respected_and_positions_reported() -> None:
    h = await futures_harness(BinanceUsdmReplica(ping_interval=0.1))
    try:
        sink = derivatives_sink(h)
        growing = h.order(
            Side.BUY, lots=10, tif=TimeInForce.IOC, price=h.replica_levels("sell")[0][0]
        )
        growing.extra[REDUCE_ONLY] = True
        refused = await h.place(growing)
        assert refused.status is OrderStatus.REJECTED and "-2022" in refused.reason
        await buy_position(h, 30)
        position = usdm(h).positions["ETHUSDT"]
        assert position.liquidation_price is not None or await _liq(h)
        assert sink.positions and sink.positions[-1].qty_lots == 30
        closing = h.order(Side.SELL, lots=30, kind=OrderType.MARKET)
        closing.extra[REDUCE_ONLY] = True
        done = await h.place(closing, until=lambda u: u.status.is_terminal)
        assert done.status is OrderStatus.FILLED
        await h.wait_for(lambda: usdm(h).positions["ETHUSDT"].qty_lots == 0, "flat")
        assert h.replica.order_meta[closing.client_id]["reduceOnly"] is True
    finally:
        await close(h)


async def _liq(h: Harness) -> bool:
    await h.wait_for(
        lambda: usdm(h).positions["ETHUSDT"].liquidation_price is not None,
        "liquidation price from positionRisk",
    )
    return True


async def test_listen_key_expiry_is_survived_with_and_without_the_event() -> None:
    h = await futures_harness(BinanceUsdmReplica(ping_interval=0.1))
    try:
        adapter = usdm(h)
        for notify in (True, False):
            old = adapter.listen_key
            await h.replica.expire_listen_key(notify=notify)
            # With the event the key is renewed at once; without it the stream goes
            # silent (pings only stop when the key dies here) and the keep-alive or
            # the silence check finds it gone.
            if not notify:
                await h.replica.go_silent(1.0)
            await h.wait_for(new_listen_key(adapter, old), "a new listen key", 10)
            await h.replica.resume()
            await h.wait_for(
                lambda: adapter._user_socket is not None and adapter._user_socket.is_up,
                "user stream back",
                10,
            )
            order = h.order(Side.BUY)
            update = await h.place(order)
            assert update.status is OrderStatus.OPEN
            await h.replica.fill_order(order.client_id)
            await h.wait_for(has_fill(h, order.client_id), "the fill arrives on the new key", 10)
        assert adapter.counters["listen_key_renewals"] >= 2
        assert adapter.counters["reconciliations"] >= 1
    finally:
        await close(h)


async def test_funding_reaches_the_sink_once_with_its_symbol() -> None:
    h = await futures_harness(BinanceUsdmReplica(ping_interval=0.1))
    try:
        sink = derivatives_sink(h)
        await buy_position(h, 50)
        await h.replica.publish_mark("ETHUSDT", "2600.00")
        paid = await h.replica.pay_funding("ETHUSDT", "0.0001")
        assert paid == Decimal("-0.01300000")  # 0.05 ETH x 2600 x 0.0001, a long pays
        await h.wait_for(lambda: bool(sink.funding), "funding event")
        await asyncio.sleep(0.2)
        assert [(f.symbol, f.amount, f.asset) for f in sink.funding] == [
            ("ETHUSDT", Decimal("-0.01300000"), "USDT")
        ]
        assert usdm(h).positions["ETHUSDT"].mark_price == Decimal("2600.00")
    finally:
        await close(h)


async def test_batch_orders_and_modify() -> None:
    h = await futures_harness(BinanceUsdmReplica(ping_interval=0.1))
    try:
        adapter = usdm(h)
        orders = [h.order(Side.BUY, price=h.passive_price(Side.BUY, 40 + i)) for i in range(7)]
        adapter.submit([PlaceOrder(o) for o in orders])
        for o in orders:
            await h.wait_for(h.status_is(o.client_id, OrderStatus.OPEN), o.client_id)
        batch_calls = [p for m, p in h.replica.request_log if p == "/fapi/v1/batchOrders"]
        assert len(batch_calls) == 2  # 5 + 2
        first = orders[0]
        assert first.price_ticks is not None
        new_price = first.price_ticks - 3
        await adapter.modify(first.client_id, new_price, first.qty_lots)
        held = next(o for o in h.replica.orders("ETHUSDT") if o.client_id == first.client_id)
        assert held.price == h.instrument.ticks_to_price(new_price)
    finally:
        await close(h)


async def test_position_mode_mismatch_refuses_to_start() -> None:
    replica = BinanceUsdmReplica(ping_interval=0.1, position_mode="hedge")
    with pytest.raises(ValueError, match="hedge position mode but the manifest says"):
        await futures_harness(replica)
    await replica.stop()


async def test_hedge_mode_sends_position_sides() -> None:
    h = await futures_harness(
        BinanceUsdmReplica(ping_interval=0.1, position_mode="hedge"), position_mode="hedge"
    )
    try:
        await buy_position(h, 20)
        assert h.replica.positions[("ETHUSDT", "LONG")][0] == Decimal("0.020")
        closing = h.order(Side.SELL, lots=20, kind=OrderType.MARKET)
        closing.extra[REDUCE_ONLY] = True
        await h.place(closing, until=lambda u: u.status.is_terminal)
        assert h.replica.positions[("ETHUSDT", "LONG")][0] == 0
        assert h.replica.order_meta[closing.client_id]["positionSide"] == "LONG"
    finally:
        await close(h)


def test_kit_replaces_the_recording_path() -> None:
    kit = dataclasses.replace(USDM_KIT, recording=RECORDING)
    assert kit.recording is not None and kit.recording.is_file()


async def test_a_spot_venue_refuses_a_reduce_only_order_clearly() -> None:
    from quoteforge.exchanges.binance.adapter import BinanceParams, BinanceSpot
    from quoteforge.exchanges.testing.binance_replica import BinanceReplica

    replica = BinanceReplica(ping_interval=0.1)
    await replica.start()
    ctx = VenueContext(
        name="binance",
        clock=LiveClock(),
        seed=1,
        mode="live",
        symbols=["BTCUSDT"],
        secrets={"api_key": replica.api_key, "api_secret": replica.api_secret},
    )
    adapter = BinanceSpot(
        BinanceParams(rest_url=replica.url, ws_url=replica.ws_url, **FAST_PARAMS), ctx
    )
    try:
        sink = RecordingSink()
        await adapter.connect(sink)
        h = Harness(USDM_KIT, replica, adapter, sink)
        h.symbol = "BTCUSDT"
        order = h.order(Side.SELL, price=adapter.instruments["BTCUSDT"].price_to_ticks("60000"))
        order.extra[REDUCE_ONLY] = True
        refused = await h.place(order)
        assert refused.status is OrderStatus.REJECTED
        assert "spot market: reduce-only orders need a position" in refused.reason
        assert replica.accepted == []
    finally:
        await adapter.close()
        await replica.stop()


async def test_both_binance_venues_refuse_a_client_id_binance_would_refuse() -> None:
    """One rule, kept in the family base: an id Binance rejects is refused before
    anything is sent, with the rule in the reason, on futures as on spot."""
    h = await futures_harness(BinanceUsdmReplica(ping_interval=0.1))
    try:
        order = h.order(Side.BUY, price=100_000)
        order.client_id = "has space"
        refused = await h.place(order)
        assert refused.status is OrderStatus.REJECTED
        assert refused.reason.endswith("must match [a-zA-Z0-9_-]{1,36} on Binance")
        assert h.replica.accepted == []
    finally:
        await close(h)
    from quoteforge.exchanges.binance.family import check_client_id
    from quoteforge.exchanges.ccxt_base import VenueCallError

    check_client_id("qf-" + "a" * 33)  # 36 characters: the longest Binance takes
    with pytest.raises(VenueCallError, match="must match"):
        check_client_id("x" * 37)


async def test_hedge_mode_reports_the_net_of_long_and_short() -> None:
    """In hedge mode a buy opens LONG and a sell opens SHORT, each with its own entry; the
    venue reports them as separate rows (stream and REST). The run's position is their
    net, at the cost-weighted entry that makes its unrealized PnL the sum of the sides'
    at any mark; the stream and positionRisk agree."""
    h = await futures_harness(
        BinanceUsdmReplica(ping_interval=0.1, position_mode="hedge"), position_mode="hedge"
    )
    try:
        await buy_position(h, 20)  # LONG 0.020
        selling = h.order(Side.SELL, lots=5, kind=OrderType.MARKET)  # opens SHORT 0.005
        await h.place(selling, until=lambda u: u.status is OrderStatus.FILLED)
        long_qty, long_entry = h.replica.positions[("ETHUSDT", "LONG")]
        short_qty, short_entry = h.replica.positions[("ETHUSDT", "SHORT")]
        assert (long_qty, short_qty) == (Decimal("0.020"), Decimal("-0.005"))
        entry = (long_qty * long_entry + short_qty * short_entry) / (long_qty + short_qty)
        adapter = h.adapter
        assert isinstance(adapter, BinanceUsdm)

        def reported() -> bool:
            p = adapter.positions.get("ETHUSDT")
            return p is not None and p.qty_lots == 15 and p.entry_price == entry

        await h.wait_for(reported, "the net from the stream")
        streamed = adapter.positions["ETHUSDT"]
        await adapter.refresh_positions()
        polled = adapter.positions["ETHUSDT"]
        assert (polled.qty_lots, polled.entry_price) == (15, entry)
        mark = polled.mark_price
        assert mark is not None
        # The venue rounds each side's unrealized PnL to 8 decimals; the net entry makes the
        # net position's PnL the sides' sum at any mark (to Decimal's 28 digits).
        sides = (long_qty * (mark - long_entry)) + (short_qty * (mark - short_entry))
        assert abs(polled.unrealized_pnl - sides) <= Decimal("0.00000002")
        assert abs(Decimal("0.015") * (mark - entry) - sides) < Decimal("1e-20")
        assert streamed.qty_lots == polled.qty_lots
    finally:
        await close(h)


@pytest.mark.parametrize("start_position", ["require_flat", "adopt"])
async def test_opposite_hedge_sides_at_start_are_refused_naming_both(start_position: str) -> None:
    replica = BinanceUsdmReplica(ping_interval=0.1, position_mode="hedge")
    replica.positions[("ETHUSDT", "LONG")] = [Decimal("0.3"), Decimal("2500")]
    replica.positions[("ETHUSDT", "SHORT")] = [Decimal("-0.1"), Decimal("2550")]
    h = await futures_harness(replica, position_mode="hedge", start_position=start_position)
    try:
        with pytest.raises(ValueError, match="in hedge mode as the run starts") as refused:
            await usdm(h).start_positions(lambda s: 0, [], resumed=False)
        message = str(refused.value)
        assert "LONG 0.300 (entry 2500) and SHORT 0.100 (entry 2550) of ETHUSDT" in message
        assert "close one side, or both, first" in message
        assert replica.accepted == []
    finally:
        await close(h)


async def test_one_hedge_side_at_start_is_adopted_at_its_own_entry() -> None:
    replica = BinanceUsdmReplica(ping_interval=0.1, position_mode="hedge")
    replica.positions[("ETHUSDT", "SHORT")] = [Decimal("-0.1"), Decimal("2550.25")]
    h = await futures_harness(replica, position_mode="hedge", start_position="adopt")
    try:
        held = await usdm(h).start_positions(lambda s: 0, [], resumed=False)
        assert [(p.symbol, p.qty_lots, p.entry_price) for p in held] == [
            ("ETHUSDT", -100, Decimal("2550.25"))
        ]
    finally:
        await close(h)
