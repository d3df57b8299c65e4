"""A live start against the local venue replicas when the venue refuses: a 429 at start
is waited out for its ``Retry-After`` and the run quotes; a 418 (ban) longer than
``max_rate_wait_s`` stops the start with a clear error and nothing is sent again; keys
the venue refuses stop the start with a clear auth error and close every HTTP session
the adapter opened."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from adapter_helpers import BINANCE_KIT, KRAKEN_KIT
from ccxt_kits import CCXT_OKX_KIT
from test_binance_usdm_conformance import USDM_KIT
from test_polymarket_conformance import POLYMARKET_KIT

from quoteforge.clock import LiveClock
from quoteforge.engine import Run
from quoteforge.exchange import VenueContext
from quoteforge.exchanges.ccxt_base import VenueCallError
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.binance_usdm_replica import BinanceUsdmReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS, RecordingSink, VenueKit
from quoteforge.manifest import load_manifest
from quoteforge.registry import PluginRegistry

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"

# venue -> (example manifest, its exchange's name, replica, symbol at the replica)
RUNS: dict[str, tuple[str, str, Any, str]] = {
    "binance": ("binance_testnet.yaml", "binance", BinanceReplica, "BTCUSDT"),
    "usdm": ("binance_usdm_testnet.yaml", "usdm", BinanceUsdmReplica, "ETHUSDT"),
}


def timed_requests(replica: Any) -> list[tuple[float, str, str]]:
    """From now on, every REST request the replica gets, as (monotonic time, method,
    path)."""
    seen: list[tuple[float, str, str]] = []

    class Log(list[tuple[str, str]]):
        def append(self, item: tuple[str, str]) -> None:
            seen.append((time.monotonic(), *item))
            super().append(item)

    replica.request_log = Log(replica.request_log)
    return seen


def run_overrides(venue: str, replica: Any) -> list[str]:
    name = RUNS[venue][1]
    params = {**FAST_PARAMS, "rest_url": replica.url, "ws_url": replica.ws_url, "testnet": False}
    return [
        *(f"exchanges.{name}.params.{k}={v}" for k, v in params.items()),
        "run.duration=3s",
        "run.cancel_timeout=20s",
        "report.html=false",
        "report.png=false",
    ]


def set_keys(env: pytest.MonkeyPatch, venue: str, replica: Any) -> None:
    prefix = "BINANCE" if venue == "binance" else "BINANCE_USDM"
    env.setenv(f"{prefix}_API_KEY", replica.api_key)
    env.setenv(f"{prefix}_API_SECRET", replica.api_secret)


OPEN_ORDERS = {"binance": "/api/v3/openOrders", "usdm": "/fapi/v1/openOrders"}


@pytest.mark.parametrize("where", ["first request", "open orders"])
@pytest.mark.parametrize("venue", sorted(RUNS))
def test_a_429_at_start_is_waited_out_and_the_run_quotes(
    venue: str,
    where: str,
    registry: PluginRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the start's first request (the venue clock, in connect) and on the open
    orders the run reads before it quotes (reconciliation)."""
    manifest, _, make_replica, symbol = RUNS[venue]
    path = OPEN_ORDERS[venue] if where == "open orders" else None

    async def scenario() -> tuple[list[tuple[float, str, str]], int]:
        replica = make_replica(ping_interval=0.1)
        await replica.start()
        try:
            set_keys(monkeypatch, venue, replica)
            await replica.fail_http(429, retry_after=1, path=path)
            requests = timed_requests(replica)
            loaded = load_manifest(
                EXAMPLES / manifest, registry, overrides=run_overrides(venue, replica)
            )
            await Run(loaded, registry, run_dir=tmp_path / "run").run()
            return requests, len(replica.orders(symbol, open_only=False))
        finally:
            await replica.stop()

    requests, placed = asyncio.run(scenario())
    assert placed > 0, "the run started and quoted"
    faulted = path or requests[0][2]
    (t0, method, _), (t1, again, _) = [r for r in requests if r[2] == faulted][:2]
    assert again == method, "the refused request is sent again"
    assert t1 - t0 >= 0.95, f"sent again {t1 - t0:.2f}s after the 429 that said 1 s"


CLI = "import sys; from quoteforge.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.parametrize("venue", sorted(RUNS))
def test_a_long_418_at_start_is_a_clear_error_and_nothing_is_sent_again(
    venue: str, tmp_path: Path
) -> None:
    manifest, _, make_replica, _ = RUNS[venue]

    async def scenario() -> tuple[int, str, list[tuple[float, str, str]]]:
        replica = make_replica(ping_interval=0.1)
        await replica.start()
        try:
            await replica.fail_http(418, count=5, retry_after=600)
            requests = timed_requests(replica)
            with pytest.MonkeyPatch.context() as env:
                set_keys(env, venue, replica)
                argv = ["run", str(EXAMPLES / manifest), "--quiet", "--out", str(tmp_path / "r")]
                for item in run_overrides(venue, replica):
                    argv += ["--set", item]
                # A process of its own, as a user runs it: its exit code and stderr.
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", CLI, *argv, stderr=asyncio.subprocess.PIPE
                )
                _, err = await asyncio.wait_for(proc.communicate(), 120)
            await asyncio.sleep(0.3)  # anything sent late would be logged by now
            assert proc.returncode is not None
            return proc.returncode, err.decode(), requests
        finally:
            await replica.stop()

    code, text, requests = asyncio.run(scenario())
    assert code == 1, text
    assert "the venue banned this IP (HTTP 418)" in text, text
    assert "asks us to wait 600s, more than max_rate_wait_s (5s)" in text, text
    assert "or raise exchanges." in text and ".params.max_rate_wait_s" in text, text
    assert "Unclosed" not in text and "Event loop is closed" not in text, text
    assert "Traceback" not in text, "said in one line, as a value to change"
    assert len(requests) == 1, f"nothing is sent during the ban: {requests}"


# -- keys the venue refuses ------------------------------------------------------------------


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[aiohttp.ClientSession]:
    """Every aiohttp client session made from now on (the adapters', ccxt's)."""
    made: list[aiohttp.ClientSession] = []
    real_init = aiohttp.ClientSession.__init__

    def init(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(aiohttp.ClientSession, "__init__", init)
    return made


def wrong(secrets: dict[str, str], key: str) -> dict[str, str]:
    """``secrets`` with ``key`` replaced by another value of the same shape."""
    value = secrets[key]
    if key == "api_secret" and value.endswith("="):  # base64 (Kraken, Polymarket)
        other = base64.urlsafe_b64encode(b"y" * len(base64.urlsafe_b64decode(value))).decode()
    else:
        other = "f" * len(value) if value != "f" * len(value) else "e" * len(value)
    return {**secrets, key: other}


WRONG_KEYS = [
    (BINANCE_KIT, "api_key", {}, r"auth: .*Invalid API-key"),
    (BINANCE_KIT, "api_secret", {}, r"auth: .*Signature for this request is not valid"),
    (USDM_KIT, "api_secret", {}, r"auth: .*Signature for this request is not valid"),
    (KRAKEN_KIT, "api_key", {}, r"auth: .*Invalid key"),
    (CCXT_OKX_KIT, "api_secret", {}, r"okx refused the API keys .*Invalid Sign"),
    (POLYMARKET_KIT, "api_secret", {"heartbeat_interval_s": 2.5}, r"failed: auth: .*401"),
]


@pytest.mark.parametrize(
    ("kit", "key", "params", "error"),
    WRONG_KEYS,
    ids=[f"{k.venue}-{key}" for k, key, _, _ in WRONG_KEYS],
)
async def test_refused_keys_stop_the_start_and_close_every_session(
    kit: VenueKit,
    key: str,
    params: dict[str, Any],
    error: str,
    sessions: list[aiohttp.ClientSession],
) -> None:
    replica: Any = kit.make_replica()
    await replica.start()
    try:
        secrets = getattr(replica, "secrets", None) or {
            "api_key": replica.api_key,
            "api_secret": replica.api_secret,
        }
        ctx = VenueContext(
            kit.venue, LiveClock(), 1, "live", [kit.symbol], secrets=wrong(secrets, key)
        )
        adapter = kit.make_adapter(replica, {**FAST_PARAMS, **kit.params, **params}, ctx)
        started = time.monotonic()
        with pytest.raises((VenueCallError, ValueError), match=error):
            await adapter.connect(RecordingSink())
        assert time.monotonic() - started < FAST_PARAMS["start_timeout_s"], "refused at once"
        assert sessions, "the adapter opened a session before the venue refused"
        assert all(s.closed for s in sessions), "a failed start closes what it opened"
    finally:
        await replica.stop()
