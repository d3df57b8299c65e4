"""Real Binance USDⓈ-M user-data-stream messages through the adapter.

``tests/fixtures/real/binance/usdm_user_stream.jsonl`` holds seven messages Binance sent
to real accounts in 2021 (sources, commits and licences in that folder's README). The
replica puts each on the adapter's user stream byte for byte; what the adapter makes of
them (order reports, the fill, the hedge-mode position) is checked field by field
against the text, read at the precision the venue sent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from loguru import logger

from quoteforge.clock import LiveClock
from quoteforge.exchange import VenueContext
from quoteforge.exchanges.binance_usdm import BinanceUsdm, BinanceUsdmParams
from quoteforge.exchanges.testing.binance_replica_rest import BinanceSymbol
from quoteforge.exchanges.testing.binance_usdm_replica import BinanceUsdmReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS, DerivativesRecordingSink
from quoteforge.model import Liquidity, OrderStatus, Side

REAL = Path(__file__).resolve().parent.parent / "fixtures" / "real" / "binance"
FIXTURE = REAL / "usdm_user_stream.jsonl"
MESSAGES = FIXTURE.read_text(encoding="utf-8").splitlines()
(HEDGE_ACCOUNT, HEDGE_NEW, CONFIG, DOT_CANCELED, GRT_NEW, GRT_FILLED, GRT_REDUCE) = MESSAGES

# The symbols' grids as Binance had them then (the messages' own digits fit them).
SYMBOLS = {
    "CHZUSDT": BinanceSymbol("CHZ", "USDT", "0.00001", "1", "5", "0.45800"),
    "SANDUSDT": BinanceSymbol("SAND", "USDT", "0.00001", "1", "5", "0.63400"),
    "DOTUSDT": BinanceSymbol("DOT", "USDT", "0.001", "0.1", "5", "23.000"),
    "GRTUSDT": BinanceSymbol("GRT", "USDT", "0.00001", "1", "5", "0.76800"),
    "BTCUSDT": BinanceSymbol("BTC", "USDT", "0.10", "0.001", "100", "59000.00"),
}


class Account:
    def __init__(
        self, replica: BinanceUsdmReplica, adapter: BinanceUsdm, sink: DerivativesRecordingSink
    ) -> None:
        self.replica = replica
        self.adapter = adapter
        self.sink = sink
        self.warnings: list[str] = []

    async def push(self, raw: str) -> None:
        await self.replica.send_user_text(raw)

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    def update(self, client_id: str) -> Any:
        return self.sink.last(client_id)


@asynccontextmanager
async def account(
    symbols: list[str], position_mode: str, **overrides: Any
) -> AsyncIterator[Account]:
    replica = BinanceUsdmReplica(
        {s: SYMBOLS[s] for s in symbols}, ping_interval=0.1, position_mode=position_mode
    )
    await replica.start()
    ctx = VenueContext(
        name="binance_usdm",
        clock=LiveClock(),
        seed=1,
        mode="live",
        symbols=symbols,
        secrets={"api_key": replica.api_key, "api_secret": replica.api_secret},
    )
    params = BinanceUsdmParams(
        rest_url=replica.url,
        ws_url=replica.ws_url,
        position_mode=position_mode,
        **{**FAST_PARAMS, **overrides},
    )
    adapter = BinanceUsdm(params, ctx)
    sink = DerivativesRecordingSink()
    acct = Account(replica, adapter, sink)
    sink_id = logger.add(acct.warnings.append, level="WARNING", format="{message}")
    try:
        await adapter.connect(sink)
        yield acct
    finally:
        logger.remove(sink_id)
        await adapter.close()
        await replica.stop()


async def test_real_order_reports_and_a_fill_are_read_at_the_venues_precision() -> None:
    async with account(["DOTUSDT", "GRTUSDT"], "one_way") as a:
        for raw in (DOT_CANCELED, GRT_NEW, GRT_FILLED, GRT_REDUCE):
            await a.push(raw)
        await a.until(lambda: a.update("web_055cCwQDrbfL4riYpzDT") is not None, "the last")

        cancelled = a.update("web_2F1nPfgmy53m5J4Hh9of")
        assert cancelled.status is OrderStatus.CANCELLED
        assert cancelled.exchange_id == "5595810084"
        assert (cancelled.price_ticks, cancelled.qty_lots, cancelled.filled_lots) == (
            23_000,  # "p":"23" at 0.001
            1_986,  # "q":"198.6" at 0.1
            0,
        )
        assert cancelled.ts_ns == 1_622_142_325_687_000_000  # E, the event time

        new = a.update("web_zf9zndTx6Ih1tuU0paEB")
        assert new.status is OrderStatus.OPEN
        assert (new.price_ticks, new.qty_lots, new.exchange_id) == (75_919, 12, "1697404867")

        # A market order: price "0" is no price; the fill carries the traded price.
        filled = a.update("web_TF7zjup9BmWWFluoSz6M")
        assert filled.status is OrderStatus.FILLED
        assert (filled.price_ticks, filled.qty_lots, filled.filled_lots) == (None, 10, 10)
        [fill] = a.sink.fills
        assert fill.fill_id == "GRTUSDT:69281933"
        assert fill.client_id == "web_TF7zjup9BmWWFluoSz6M"
        assert (fill.side, fill.price_ticks, fill.qty_lots) == (Side.BUY, 76_867, 10)
        assert fill.fee == Decimal("0.00307468") and fill.fee_asset == "USDT"
        assert fill.liquidity is Liquidity.TAKER  # "m":false
        assert fill.ts_ns == 1_622_143_071_600_000_000  # T, the trade time

        reducing = a.update("web_055cCwQDrbfL4riYpzDT")
        assert reducing.status is OrderStatus.OPEN
        assert (reducing.price_ticks, reducing.qty_lots) == (None, 12)
        assert not [w for w in a.warnings if "bad" in w]


async def test_a_real_hedge_mode_account_update_is_the_net_of_its_sides() -> None:
    async with account(["CHZUSDT", "SANDUSDT"], "hedge") as a:
        # The venue's own state agrees with the message, so a positionRisk poll that the
        # new position triggers (for its liquidation price) reports the same amount.
        a.replica.positions[("CHZUSDT", "LONG")] = [Decimal("2684"), Decimal("0.45855")]
        streamed = 1_617_859_763_511_000_000
        await a.push(HEDGE_ACCOUNT)
        await a.until(
            lambda: any(p.ts_ns == streamed for p in a.sink.positions), "the streamed position"
        )
        [position] = [p for p in a.sink.positions if p.ts_ns == streamed]
        # Rows: BOTH at 0 (the one-way row, empty) and LONG 2684 @ 0.45855.
        assert position.symbol == "CHZUSDT"
        assert position.qty_lots == 2_684
        assert position.entry_price == Decimal("0.45855")
        assert position.unrealized_pnl == Decimal("2.03986684")

        await a.push(HEDGE_NEW)
        await a.push(CONFIG)  # a leverage change on a symbol not traded here: no effect
        await a.until(lambda: a.update("electron_6LyJZ9KPgmRbhKfFamx3") is not None, "the order")
        order = a.update("electron_6LyJZ9KPgmRbhKfFamx3")
        assert order.status is OrderStatus.OPEN
        assert order.exchange_id == "315803079"
        assert (order.price_ticks, order.qty_lots) == (63_428, 1_000)  # "0.63428", "1000"
        await asyncio.sleep(0.1)
        assert not [w for w in a.warnings if "bad" in w]


async def test_a_real_leverage_change_on_the_account_is_said_and_kept() -> None:
    async with account(["BTCUSDT"], "one_way", leverage=10) as a:
        assert a.adapter.leverage == {"BTCUSDT": 10}  # set at start, as the manifest asks
        await a.push(CONFIG)  # BTCUSDT to 19, by hand or another program
        await a.until(lambda: a.adapter.leverage["BTCUSDT"] == 19, "the new leverage")
        [said] = [w for w in a.warnings if "leverage of BTCUSDT" in w]
        assert "changed at the venue from 10 to 19 while the run trades" in said
        # With a position open, the new leverage moves its liquidation price: the
        # adapter asks the venue for it again.
        a.replica.positions[("BTCUSDT", "BOTH")] = [Decimal("0.002"), Decimal("59000")]
        await a.adapter.refresh_positions()
        asked = a.replica.request_log.count(("GET", "/fapi/v2/positionRisk"))
        await a.push(CONFIG.replace('"l":19', '"l":20'))
        await a.until(
            lambda: a.replica.request_log.count(("GET", "/fapi/v2/positionRisk")) > asked,
            "positionRisk asked again",
        )
        assert a.adapter.leverage["BTCUSDT"] == 20
        # Multi-assets mode (written from Binance's documentation: no real capture).
        await a.push('{"e":"ACCOUNT_CONFIG_UPDATE","T":1,"E":2,"ai":{"j":true}}')
        await a.until(lambda: any("multi-assets" in w for w in a.warnings), "the mode")
        assert not [w for w in a.warnings if "bad" in w]


def test_the_fixture_is_the_recorded_text_unchanged() -> None:
    """Seven single-line JSON texts, in Binance's own compact spelling."""
    assert len(MESSAGES) == 7
    for raw in MESSAGES:
        assert raw == json.dumps(json.loads(raw), separators=(",", ":"))
