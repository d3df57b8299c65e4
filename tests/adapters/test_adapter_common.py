"""Behaviour both live adapters share: secrets, lifetimes, credentials, registration."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from adapter_helpers import BINANCE_KIT, KRAKEN_KIT, running, spot_of
from loguru import logger

from quoteforge.exchanges.testing.conformance import VenueKit
from quoteforge.model import OrderStatus, Side

KITS = [pytest.param(BINANCE_KIT, id="binance"), pytest.param(KRAKEN_KIT, id="kraken")]


@pytest.mark.parametrize("kit", KITS)
async def test_secrets_never_reach_logs_or_reprs(kit: VenueKit) -> None:
    lines: list[str] = []
    handler = logger.add(lines.append, level="DEBUG", format="{message} {extra} {exception}")
    try:
        async with running(kit) as h:
            key, secret = h.replica.api_key, h.replica.api_secret
            await h.replica.fail_http(503, path=h.replica.order_path)
            await h.place(
                h.order(Side.BUY), until=lambda u: u.status is OrderStatus.OPEN, timeout=8
            )
            await h.replica.drop_connections()
            await h.wait_book_matches()
            adapter = spot_of(h)
            texts = [repr(adapter), repr(adapter.params), repr(adapter.ctx), str(adapter)]
    finally:
        logger.remove(handler)
    assert lines, "the run logged nothing: the capture is not working"
    for text in lines + texts:
        assert key not in text and secret not in text


@pytest.mark.parametrize("kit", KITS)
async def test_scheduled_reconnect_before_the_connection_lifetime(kit: VenueKit) -> None:
    async with running(kit, max_connection_age_s=0.4) as h:
        await h.wait_for(
            lambda: spot_of(h).sockets[0].scheduled_reconnects >= 2, "two scheduled reconnects"
        )
        await h.replica.churn(h.symbol, 5, seed=4)
        await h.wait_book_matches()
        assert (await h.place(h.order(Side.BUY))).status is OrderStatus.OPEN


@pytest.mark.parametrize("kit", KITS)
async def test_without_credentials_market_data_runs_and_orders_are_refused(kit: VenueKit) -> None:
    async with running(kit, secrets={}) as h:
        update = await h.place(h.order(Side.BUY))
        assert update.status is OrderStatus.REJECTED and "credentials" in update.reason
        await h.replica.churn(h.symbol, 5, seed=2)
        await h.wait_book_matches()


@pytest.mark.parametrize("kit", KITS)
async def test_close_is_prompt_and_idempotent_with_streams_running(kit: VenueKit) -> None:
    async with running(kit) as h:
        started = time.monotonic()
        await h.adapter.close()
        await h.adapter.close()
        assert time.monotonic() - started < 2


@pytest.mark.parametrize("module", ["binance", "kraken"])
def test_registration_lists_the_adapter_without_importing_ccxt(module: str) -> None:
    code = (
        "import sys; sys.modules['ccxt'] = None\n"
        f"import quoteforge.exchanges.{module}.adapter as m\n"
        "seen = []\n"
        "m.quoteforge_register_exchanges(lambda name, factory, **kw: seen.append((name, kw)))\n"
        f"assert seen[0][0] == {module!r} and seen[0][1]['requires'] == ('ccxt',), seen\n"
        "assert not any(k.startswith('ccxt') and sys.modules[k] is not None for k in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", ["binance", "kraken"])
async def test_connect_without_ccxt_names_the_pip_command(module: str) -> None:
    code = (
        "import asyncio, sys\n"
        "sys.modules['ccxt'] = None; sys.modules['ccxt.async_support'] = None\n"
        "from quoteforge.clock import LiveClock\n"
        "from quoteforge.exchange import VenueContext\n"
        f"import quoteforge.exchanges.{module}.adapter as m\n"
        f"a = m.create_{module}({{}}, VenueContext('x', LiveClock(), 1, 'live', ['BTC/USD']))\n"
        "try:\n"
        "    asyncio.run(a.connect(None))\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert 'pip install "quoteforge[' in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("kit", KITS)
async def test_a_start_outlives_two_unanswered_reads(kit: VenueKit) -> None:
    """The venue's clock and instruments are read at the start; a read the venue leaves
    unanswered (the adapter's request time-out is 0.5 s) is asked again 0.5, then 1 s
    later, so two slow answers in a row do not stop a run from starting."""
    replica = kit.make_replica()
    await replica.time_out(count=2, delay=1.0)  # armed before running() starts it
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        async with running(kit, replica=replica) as h:
            assert h.adapter.instruments
    finally:
        logger.remove(handler)
    asked_again = [line for line in lines if "failed (unknown: no answer" in line]
    assert len(asked_again) == 2, lines
    assert all(line.endswith("); asking again\n") for line in asked_again)
