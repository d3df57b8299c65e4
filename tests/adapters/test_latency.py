"""``quoteforge latency`` against the replica venues: REST and websocket round trips, and
with ``--orders`` real post-only orders acknowledged, cancelled, none left open."""

from __future__ import annotations

import asyncio
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from quoteforge.clock import SimClock
from quoteforge.exchange import ExchangeAdapter, VenueContext
from quoteforge.exchanges.binance.adapter import BinanceParams, BinanceSpot
from quoteforge.exchanges.ccxt_base import LatencyEndpoints
from quoteforge.exchanges.kraken.adapter import KrakenParams, KrakenSpot
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.kraken_replica import KrakenReplica
from quoteforge.model import Instrument
from quoteforge.plugins.latency_probe import (
    LatencyError,
    Measure,
    _rate_room_s,
    latency_main,
    percentile,
    venue_endpoints,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SAMPLES = 4


def manifest(venue: str, replica: Any) -> str:
    if venue == "binance":
        params = f'rest_url: "{replica.url}", ws_url: "{replica.ws_url}"'
        symbol = "BTCUSDT"
    else:
        params = (
            f'rest_url: "{replica.url}", ws_url: "{replica.public_ws_url}", '
            f'private_ws_url: "{replica.private_ws_url}"'
        )
        symbol = "BTC/USD"
    return f"""
run: {{name: lat, mode: live}}
exchanges:
  {venue}:
    type: {venue}
    params: {{{params}, request_timeout_s: 2}}
    secrets: {{api_key: "${{QF_LAT_KEY}}", api_secret: "${{QF_LAT_SECRET}}"}}
strategies:
  mm:
    {{type: pure_market_making, exchange: {venue}, symbols: "{symbol}", params: {{order_size: 1}}}}
"""


@pytest.mark.parametrize("venue", ["binance", "kraken"])
@pytest.mark.parametrize("orders", [False, True], ids=["network", "orders"])
async def test_latency_against_the_replica(
    venue: str,
    orders: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    replica: Any = BinanceReplica(ping_interval=5) if venue == "binance" else KrakenReplica()
    symbol = "BTCUSDT" if venue == "binance" else "BTC/USD"
    await replica.start()
    try:
        path = tmp_path / "m.yaml"
        path.write_text(manifest(venue, replica))
        if orders:
            monkeypatch.setenv("QF_LAT_KEY", replica.api_key)
            monkeypatch.setenv("QF_LAT_SECRET", replica.api_secret)
        # Without --orders the keys are not needed (the variables are not even set).
        argv = [str(path), "--samples", str(SAMPLES), "--interval", "0", "--json"]
        argv += [str(tmp_path / "lat.json"), *(["--orders"] if orders else [])]
        code = await asyncio.to_thread(latency_main, argv)
        best_bid = replica.book(symbol, 1)["bids"][0][0]
        placed = replica.orders(symbol, open_only=False)
        still_open = replica.orders(symbol)
        rest_calls = [p for _, p in replica.request_log if p.endswith(("/time", "/Time"))]
    finally:
        await replica.stop()

    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "lat.json").read_text())
    measures = report["venues"][venue]["measures"]
    expected = {"rest_rtt", "ws_ping"} | ({"order_ack", "cancel_ack"} if orders else set())
    assert set(measures) == expected
    for name in expected:
        m = measures[name]
        assert m["n"] == SAMPLES and m["errors"] == 0, (name, m)
        assert 0 < m["min_ms"] <= m["p50_ms"] <= m["p99_ms"] <= m["max_ms"] < 5_000
    # One warm-up request, then the samples; a time endpoint, nothing heavier.
    assert len(rest_calls) >= SAMPLES + 1
    table = capsys.readouterr().out
    assert "p50 ms" in table and f"{venue}  rest_rtt" in table
    if orders:
        assert len(placed) == SAMPLES
        assert still_open == [], "every probe order was cancelled"
        assert all(o.status == "canceled" and o.tif == "post_only" for o in placed)
        assert all(o.price is not None and o.price < best_bid * Decimal("0.95") for o in placed)
        assert report["left_open"] == []
    else:
        assert placed == []


def test_orders_need_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(manifest("binance", BinanceReplica()))
    for name in [k for k, v in os.environ.items() if not v.strip()]:
        monkeypatch.delenv(name)  # the message lists the environment's empty variables
    monkeypatch.setenv("QF_LAT_KEY", "")
    monkeypatch.setenv("QF_LAT_SECRET", "")
    # Empty keys in a live manifest are refused with the manifest, naming the variable...
    assert latency_main([str(path), "--orders", "--samples", "1"]) == 2
    assert "(one of QF_LAT_KEY, QF_LAT_SECRET) is set to an empty string" in (
        capsys.readouterr().err
    )
    # ... and so are keys left out on purpose (secrets: {}).
    keyless = ["--set", "exchanges.binance.secrets={}"]
    assert latency_main([str(path), "--orders", "--samples", "1", *keyless]) == 2
    assert "needs the secret(s) api_key, api_secret" in capsys.readouterr().err


def test_a_simulated_venue_has_nothing_to_measure(capsys: pytest.CaptureFixture[str]) -> None:
    assert latency_main([str(EXAMPLES / "quickstart.yaml"), "--samples", "1"]) == 2
    err = capsys.readouterr().err
    assert "exchange 'sim' is of type 'sim', which has no wire feed to measure" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samples", "0"], "--samples must be at least 1, got 0"),
        (["--offset-bps", "0"], "--offset-bps must be between 1 and 9999"),
        (["--timeout", "0"], "--timeout must be positive"),
    ],
)
def test_bad_arguments_are_named(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert latency_main([str(EXAMPLES / "binance_testnet.yaml"), *args]) == 2
    assert message in capsys.readouterr().err


def test_percentiles_are_nearest_rank_over_the_samples() -> None:
    ordered = list(range(1, 101))
    assert percentile(ordered, 0.5) == 50
    assert percentile(ordered, 0.99) == 99
    assert percentile([7], 0.99) == 7
    m = Measure("v", "rest_rtt", "url", samples_ns=[3_000_000, 1_000_000, 2_000_000])
    s = m.summary()
    assert (s["min_ms"], s["p50_ms"], s["max_ms"]) == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


async def test_probe_orders_pass_the_manifests_risk_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probe's orders go through the order gate: a manifest whose fat-finger check
    refuses them sends nothing to the venue and says why."""
    replica = BinanceReplica(ping_interval=5)
    await replica.start()
    try:
        path = tmp_path / "m.yaml"
        path.write_text(
            manifest("binance", replica)
            + "risk:\n  tiny: {type: max_order_notional, params: {max_notional: 1}}\n"
        )
        monkeypatch.setenv("QF_LAT_KEY", replica.api_key)
        monkeypatch.setenv("QF_LAT_SECRET", replica.api_secret)
        argv = [str(path), "--samples", "2", "--interval", "0", "--orders"]
        await asyncio.to_thread(latency_main, argv)
        placed = replica.orders("BTCUSDT", open_only=False)
    finally:
        await replica.stop()
    assert placed == []
    err = capsys.readouterr().err
    assert "tiny refused BUY on binance:BTCUSDT" in err
    assert "cannot send a probe order (refused by risk" in err


# -- the probe asks the adapter, never its class ---------------------------------------------


class _Venue(ExchangeAdapter):
    """An adapter of no built-in type, for what the probe asks of any venue."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.instruments = {}
        self.books = {}

    async def connect(self, sink: Any) -> None:
        pass

    def submit(self, actions: Any) -> None:
        pass

    async def close(self) -> None:
        pass


class _ProbedVenue(_Venue):
    def latency_endpoints(self) -> tuple[str, str]:
        return ("http://127.0.0.1:9/time", "ws://127.0.0.1:9/ws")

    def latency_order_wait_s(self, symbol: str) -> float:
        return 1.5 if symbol == "XY" else 0.0


def _ctx(name: str, symbols: list[str]) -> VenueContext:
    return VenueContext(name, SimClock(), 1, "live", symbols)


def test_the_probe_asks_the_adapter_for_its_endpoints() -> None:
    binance = BinanceSpot(
        BinanceParams(rest_url="http://127.0.0.1:1/", ws_url="ws://127.0.0.1:2"),
        _ctx("binance", ["BTC/USDT"]),
    )
    assert venue_endpoints(binance) == LatencyEndpoints(
        "http://127.0.0.1:1/api/v3/time", "ws://127.0.0.1:2/ws/btcusdt@trade"
    )
    kraken = KrakenSpot(KrakenParams(rest_url="http://127.0.0.1:3"), _ctx("kraken", ["BTC/USD"]))
    assert venue_endpoints(kraken) == LatencyEndpoints(
        "http://127.0.0.1:3/0/public/Time", "wss://ws.kraken.com/v2"
    )
    # Any adapter that names its endpoints is measured, whatever its class.
    assert venue_endpoints(_ProbedVenue("mine")) == LatencyEndpoints(
        "http://127.0.0.1:9/time", "ws://127.0.0.1:9/ws"
    )


def test_a_venue_without_endpoints_is_named_clearly() -> None:
    with pytest.raises(LatencyError, match=r"exchange 'other' \(_Venue\): no latency probe"):
        venue_endpoints(_Venue("other"))
    nameless = BinanceSpot(BinanceParams(), _ctx("binance", []))
    with pytest.raises(LatencyError, match="give it a symbol to open a stream of"):
        venue_endpoints(nameless)


def test_the_wait_for_the_rate_governor_is_asked_of_the_adapter() -> None:
    instrument = Instrument("binance", "BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.001"))
    binance = BinanceSpot(BinanceParams(), _ctx("binance", ["BTCUSDT"]))
    assert _rate_room_s(binance, instrument) == 0.0
    binance.governor.on_retry_after(3.0)
    assert _rate_room_s(binance, instrument) == pytest.approx(3.0)
    mine = Instrument("mine", "XY", "X", "Y", Decimal("0.01"), Decimal("0.001"))
    assert _rate_room_s(_ProbedVenue("mine"), mine) == 1.5
    assert _rate_room_s(_Venue("other"), mine) == 0.0
