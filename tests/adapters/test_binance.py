"""Binance adapter behaviour beyond the shared scenarios: recovery internals, signing,
clock skew, secrets, scheduled reconnects, rate-limit headers, registration."""

from __future__ import annotations

import gzip
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import BINANCE_KIT, binance_of, compact, running

from quoteforge.exchange import PlaceOrder
from quoteforge.exchanges.binance.adapter import BinanceParams, quoteforge_register_exchanges
from quoteforge.exchanges.ccxt_base import VenueCallError
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.model import OrderStatus, Side, TimeInForce

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "binance_rest"


async def test_instruments_have_the_exact_venue_grid() -> None:
    async with running(BINANCE_KIT) as h:
        inst = h.instrument
        # Quantities are counted at baseAssetPrecision (what the venue sends), orders
        # go out on the LOT_SIZE step.
        assert (inst.tick_size, inst.lot_size) == (Decimal("0.01"), Decimal("1E-8"))
        assert inst.qty_step == Decimal("0.00001")
        assert (inst.min_qty, inst.min_notional) == (Decimal("0.00001"), Decimal("5"))
        assert (inst.base, inst.quote, inst.venue) == ("BTC", "USDT", "binance")


async def test_a_fill_finer_than_the_order_step_is_read_at_the_venue_precision() -> None:
    """Taking a resting order of someone else's that is finer than today's step (orders
    placed before a step change rest on): the stream, REST and balances all carry the
    8-decimal quantity, and it is booked exactly."""
    async with running(BINANCE_KIT) as h:
        inst = h.instrument
        ask_ticks = h.replica_levels("sell")[0][0]
        await h.replica.set_level(h.symbol, "sell", inst.ticks_to_price(ask_ticks), "0.00012345")
        await h.wait_book_matches()
        assert h.book.lots_at(Side.SELL, ask_ticks) == 12_345
        held = (await binance_of(h).fetch_balances()).get("BTC", Decimal(0))
        order = h.order(Side.BUY, price=ask_ticks, lots=inst.qty_to_lots("0.001"))
        order.tif = TimeInForce.IOC
        assert inst.check_order(order.price_ticks, order.qty_lots) is None
        last = await h.place(order, until=lambda u: u.status.is_terminal)
        assert last.status is OrderStatus.EXPIRED
        await h.wait_for(lambda: bool(h.sink.fills_of(order.client_id)), "the fill")
        (fill,) = h.sink.fills_of(order.client_id)
        assert inst.lots_to_qty(fill.qty_lots) == Decimal("0.00012345")
        rest = [f for f in await binance_of(h).fetch_fills(0) if f.fill_id == fill.fill_id]
        assert [f.qty_lots for f in rest] == [12_345]
        now = (await binance_of(h).fetch_balances()).get("BTC", Decimal(0))
        fee = fill.fee if fill.fee_asset == "BTC" else Decimal(0)
        assert now - held == Decimal("0.00012345") - fee


async def test_timeout_after_processing_is_looked_up_and_never_resent() -> None:
    async with running(BINANCE_KIT) as h:
        await h.replica.time_out(after_processing=True, delay=2.0, path=h.replica.order_path)
        order = h.order(Side.BUY)
        await h.place(order, until=lambda u: u.status is OrderStatus.OPEN, timeout=8)
        assert binance_of(h).counters["resends"] == 0
        assert h.accepted(order.client_id) == 1


async def test_timeout_before_processing_resends_exactly_once_after_lookups() -> None:
    async with running(BINANCE_KIT) as h:
        await h.replica.time_out(after_processing=False, delay=1.0, path=h.replica.order_path)
        order = h.order(Side.BUY)
        await h.place(order, until=lambda u: u.status is OrderStatus.OPEN, timeout=8)
        assert binance_of(h).counters["lookups"] >= 2
        assert binance_of(h).counters["resends"] == 1
        assert h.accepted(order.client_id) == 1


async def test_429_waits_for_retry_after_before_the_order_goes_again() -> None:
    async with running(BINANCE_KIT) as h:
        await h.replica.fail_http(429, retry_after=1, path=h.replica.order_path)
        started = time.monotonic()
        order = h.order(Side.SELL)
        await h.place(order, until=lambda u: u.status is OrderStatus.OPEN, timeout=8)
        assert time.monotonic() - started >= 0.95
        assert binance_of(h).governor.limit_hits == 1
        assert h.accepted(order.client_id) == 1


async def test_418_ban_blocks_every_request_until_it_ends() -> None:
    async with running(BINANCE_KIT) as h:
        await h.replica.fail_http(418, retry_after=1, path=h.replica.order_path)
        first, second = h.order(Side.BUY), h.order(Side.SELL)
        h.adapter.submit([PlaceOrder(first)])
        await h.wait_for(lambda: binance_of(h).governor.bans == 1, "ban seen")
        started = time.monotonic()
        await h.place(second, until=lambda u: u.status is OrderStatus.OPEN, timeout=8)
        # The second order was held back by the ban, not sent into it.
        assert time.monotonic() - started >= 0.5
        await h.wait_for(
            lambda: getattr(h.sink.last(first.client_id), "status", None) is OrderStatus.OPEN,
            "first open",
        )


async def test_weight_headers_drive_the_governor() -> None:
    async with running(BINANCE_KIT) as h:
        await h.place(h.order(Side.BUY))
        governor = binance_of(h).governor
        # The replica counts weight per minute as Binance does; the adapter follows it.
        assert governor.weight.used >= h.replica._weight.used > 0
        assert governor.orders_10s.used >= 1


async def test_weight_limit_from_exchange_info_is_respected() -> None:
    replica = BinanceReplica(ping_interval=0.1, weight_limit=200)
    async with running(BINANCE_KIT, replica=replica) as h:
        governor = binance_of(h).governor
        assert governor.weight.limit == int(200 * 0.9)


async def test_wrong_secret_fails_the_signature_check_and_is_reported() -> None:
    """At the start (the user-stream subscription is signed): the run does not begin on
    keys the venue refuses (test_startup_faults.py: and closes what it opened)."""
    replica = BinanceReplica(ping_interval=0.1)
    with pytest.raises(VenueCallError, match="Signature for this request") as info:
        async with running(
            BINANCE_KIT,
            replica=replica,
            secrets={"api_key": replica.api_key, "api_secret": "0" * 64},
        ):
            pass
    assert info.value.kind == "auth"
    assert replica.orders("BTCUSDT", open_only=False) == []


async def test_venue_clock_ahead_is_measured_at_start() -> None:
    replica = BinanceReplica(ping_interval=0.1)
    await replica.skew_clock(7_000)
    async with running(BINANCE_KIT, replica=replica) as h:
        assert abs(binance_of(h).time_offset_ms - 7_000) < 500
        assert (await h.place(h.order(Side.BUY))).status is OrderStatus.OPEN


async def test_clock_jump_during_run_is_recovered_by_a_time_resync() -> None:
    async with running(BINANCE_KIT) as h:
        await h.replica.skew_clock(-9_000)  # venue now 9 s behind: our stamps are "future"
        order = h.order(Side.SELL)
        assert (await h.place(order, timeout=8)).status is OrderStatus.OPEN
        assert binance_of(h).counters["time_syncs"] >= 2
        assert h.accepted(order.client_id) == 1


async def test_public_trades_reach_the_sink_with_the_aggressor() -> None:
    async with running(BINANCE_KIT) as h:
        bid_ticks, bid_lots = h.replica_levels("buy")[0]
        order = h.order(Side.SELL, price=bid_ticks, lots=bid_lots, tif=TimeInForce.IOC)
        await h.place(order, until=lambda u: u.status.is_terminal)
        await h.wait_for(lambda: bool(h.sink.trades), "public trade")
        _, symbol, price, lots, aggressor, _ = h.sink.trades[0]
        assert (symbol, price, lots, aggressor) == ("BTCUSDT", bid_ticks, bid_lots, Side.SELL)


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


@pytest.mark.parametrize(
    ("fixture", "path"),
    [
        ("exchangeInfo.json", "/api/v3/exchangeInfo?symbol=BTCUSDT"),
        ("depth.json", "/api/v3/depth?symbol=BTCUSDT&limit=5"),
    ],
)
async def test_replica_speaks_the_recorded_wire_shapes(fixture: str, path: str) -> None:
    import aiohttp

    recorded = json.loads((FIXTURES / fixture).read_text())
    async with (
        BinanceReplica() as replica,
        aiohttp.ClientSession() as session,
        session.get(replica.url + path) as resp,
    ):
        served = await resp.json()
        assert "X-MBX-USED-WEIGHT-1M" in resp.headers
    served_shape, recorded_shape = _shape(served), _shape(recorded)
    if fixture == "exchangeInfo.json":
        # Filter lists differ per symbol; compare the symbol's own keys.
        for shape in (served_shape, recorded_shape):
            shape["symbols"][0].pop("filters")
    assert served_shape == recorded_shape


async def test_execution_report_has_the_recorded_shape() -> None:
    recorded = json.loads((FIXTURES / "executionReport.json").read_text())
    async with running(BINANCE_KIT) as h:
        frames: list[dict[str, Any]] = []
        adapter = binance_of(h)
        original = adapter._on_user_text

        def keep(raw: str, recv_ns: int) -> None:
            frames.append(json.loads(raw))
            original(raw, recv_ns)

        assert adapter._user_socket is not None
        adapter._user_socket._on_text = keep
        await h.place(h.order(Side.BUY))
        await h.wait_for(lambda: bool(frames), "an executionReport")
    assert set(frames[0]) == set(recorded)
    assert set(frames[0]["event"]) == set(recorded["event"])


def test_registered_params_refuse_unknown_keys() -> None:
    seen: list[tuple[str, Any, dict[str, Any]]] = []
    quoteforge_register_exchanges(lambda name, factory, **kw: seen.append((name, factory, kw)))
    params = seen[0][2]["params"]
    assert params is BinanceParams
    with pytest.raises(ValueError, match="api_secret"):
        params.model_validate({"api_secret": "x"})


@pytest.mark.parametrize(
    ("field", "garbled"), [("n", "NaN"), ("L", "x"), ("l", "-1.0"), ("m", "false")]
)
async def test_a_garbled_trade_report_is_not_booked_and_the_fill_comes_over_rest(
    field: str, garbled: str
) -> None:
    async with running(BINANCE_KIT) as h:
        adapter = binance_of(h)
        original = adapter._on_user_text
        garbling: list[str] = []

        def in_transit(raw: str, recv_ns: int) -> None:
            msg = json.loads(raw)
            event = msg.get("event") or {}
            if event.get("x") == "TRADE" and not garbling:
                garbling.append(json.dumps(event))
                event[field] = garbled
            original(json.dumps(msg), recv_ns)

        assert adapter._user_socket is not None
        adapter._user_socket._on_text = in_transit
        order = h.order(Side.BUY)
        await h.place(order)
        await h.replica.fill_order(order.client_id)
        await h.wait_for(lambda: bool(h.sink.fills_of(order.client_id)), "the fill over REST")
        await h.wait_for(lambda: adapter.counters["reconciliations"] >= 1, "a reconciliation")
        (fill,) = h.sink.fills_of(order.client_id)
        assert fill.qty_lots == order.qty_lots and fill.price_ticks == order.price_ticks
        assert fill.fee.is_finite() and garbling
        last = h.sink.last(order.client_id)
        assert last is not None and last.status is OrderStatus.FILLED


async def test_a_trade_message_that_cannot_be_read_as_sent_is_dropped() -> None:
    async with running(BINANCE_KIT) as h:
        adapter = binance_of(h)
        good = {"e": "trade", "s": "BTCUSDT", "p": "30000.00", "q": "0.01", "T": 1, "m": True}
        bad = [{"m": "false"}, {"p": "-30000.00"}, {"q": "0"}, {"T": "soon"}, {"p": "Infinity"}]
        before = len(h.sink.trades)
        for change in bad:
            frame = {"stream": "btcusdt@trade", "data": {**good, **change}}
            adapter._on_market_text(compact(frame), time.time_ns())
        adapter._on_market_text('{"stream":"btcusdt@trade","data":[1]}', time.time_ns())
        adapter._on_market_text('{"stream":"btcusdt@trade","data":', time.time_ns())
        assert len(h.sink.trades) == before
        adapter._on_market_text(compact({"stream": "btcusdt@trade", "data": good}), 0)
        assert h.sink.trades[-1][2:5] == (3_000_000, h.instrument.qty_to_lots("0.01"), Side.SELL)


async def test_every_trade_of_the_real_recording_passes_the_checks() -> None:
    """The trade checks against real bytes: all 9,757 trades of the recorded BTCUSDT
    hour (examples/data, from hftbacktest's public Binance capture) reach the run, each
    with its price, size and aggressor as sent."""
    recording = Path(__file__).resolve().parents[2] / "examples" / "data"
    with gzip.open(recording / "btcusdt_binance_20240808.jsonl.gz", "rt") as fh:
        rows = [r for r in map(json.loads, fh) if r["stream"] == "btcusdt@trade"]
    async with running(BINANCE_KIT) as h:
        adapter = binance_of(h)
        before = len(h.sink.trades)
        for row in rows:  # on the wire as the combined stream carries it
            adapter._on_market_text(f'{{"stream":"btcusdt@trade","data":{row["raw"]}}}', 0)
        got = h.sink.trades[before:]
    assert len(rows) == 9_757 and len(got) == len(rows)
    first = json.loads(rows[0]["raw"])
    side = Side.SELL if first["m"] else Side.BUY
    assert got[0][2:5] == (
        h.instrument.price_to_ticks(first["p"]),
        h.instrument.qty_to_lots(first["q"]),
        side,
    )
