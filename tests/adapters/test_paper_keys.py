"""A paper run never touches the account, even when the manifest gives the venue's keys
(a live manifest switched to ``run.mode: paper`` to try it): its adapters get no keys,
so no signed request goes out. A signed one could act on the whole account: Polymarket
cancels every open order of the account when heartbeats stop, Kraken's
CancelAllOrdersAfter is one countdown per account (arming and disarming it would
disarm a live bot's)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from polymarket_orders import clob_for, example_params

from quoteforge.engine import Run
from quoteforge.exchange import PlaceOrder
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import FAST_PARAMS, RecordingSink
from quoteforge.exchanges.testing.kraken_replica import KrakenReplica
from quoteforge.exchanges.testing.polymarket_replica import PolymarketReplica
from quoteforge.manifest import load_manifest
from quoteforge.model import Order, Side
from quoteforge.registry import PluginRegistry

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
PAPER = ["run.mode=paper", "report.html=false", "report.png=false"]


def export_keys(monkeypatch: pytest.MonkeyPatch, venue: str, key: str, secret: str) -> None:
    """The keys a live example reads from the environment, as a trader exports them."""
    monkeypatch.setenv(f"{venue}_API_KEY", key)
    monkeypatch.setenv(f"{venue}_API_SECRET", secret)


async def paper_run(
    registry: PluginRegistry, manifest: Path, venue: str, params: dict[str, Any], run_dir: Path
) -> None:
    sets = [f"exchanges.{venue}.params.{k}={v}" for k, v in {**FAST_PARAMS, **params}.items()]
    loaded = load_manifest(manifest, registry, overrides=[*sets, *PAPER, "run.duration=2s"])
    assert loaded.manifest.exchanges[venue].secrets  # the keys are in the manifest
    await Run(loaded, registry, run_dir=run_dir).run()


async def test_polymarket_paper_sends_no_heartbeat_and_the_accounts_orders_stay(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = PolymarketReplica(ping_interval=0.1, markets={"event": "0.50"})
    replica.heartbeat_timeout_s = 1.0
    await replica.start()
    try:
        # An order of the account, placed by another client and left resting.
        other = clob_for(replica, "event", ["event/YES"])
        await other.connect(RecordingSink())
        inst = other.instruments["event/YES"]
        lots, ticks = inst.qty_to_lots("10"), inst.price_to_ticks("0.30")
        other.submit(
            [PlaceOrder(Order("manual-1", "polymarket", "event/YES", Side.BUY, lots, ticks))]
        )
        for _ in range(100):
            if replica.orders("event"):
                break
            await asyncio.sleep(0.02)
        await other.close()
        for name, value in replica.secrets.items():
            monkeypatch.setenv(f"POLYMARKET_{name.upper()}", value)
        before = len(replica.request_log)
        params = {**example_params(replica), "heartbeat_interval_s": "0.5"}
        await paper_run(
            registry, EXAMPLES / "polymarket.yaml", "polymarket", params, tmp_path / "r"
        )
        paths = {path for _, path in replica.request_log[before:]}
        assert not {p for p in paths if "heartbeat" in p or p.startswith("/data/")}, paths
        await asyncio.sleep(replica.heartbeat_timeout_s + 0.5)
        assert replica.heartbeats_lapsed == 0
        assert [o.status for o in replica.orders("event", open_only=False)] == ["new"]
    finally:
        await replica.stop()


async def test_kraken_paper_never_arms_the_accounts_countdown(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = KrakenReplica(ping_interval=0.1)
    await replica.start()
    try:
        export_keys(monkeypatch, "KRAKEN", replica.api_key, replica.api_secret)
        params = {
            "rest_url": replica.url,
            "ws_url": replica.public_ws_url,
            "private_ws_url": replica.private_ws_url,
            "tier": "pro",
            "auto_cancel_after_s": 5,
        }
        task = asyncio.create_task(
            paper_run(registry, EXAMPLES / "kraken.yaml", "kraken", params, tmp_path / "r")
        )
        armed = []
        while not task.done():
            armed.append(replica.cancel_after_ms)
            await asyncio.sleep(0.1)
        await task
        assert not any(armed)
        assert not [p for _, p in replica.request_log if p.startswith("/0/private/")]
        assert replica.ws_requests == []
    finally:
        await replica.stop()


async def test_binance_paper_opens_no_user_stream(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = BinanceReplica(ping_interval=0.1)
    signed: list[dict[str, Any]] = []
    check = replica._check_ws_signature

    def spy(params: dict[str, Any]) -> dict[str, Any] | None:
        signed.append(params)
        return check(params)

    replica._check_ws_signature = spy  # type: ignore[method-assign]
    await replica.start()
    try:
        export_keys(monkeypatch, "BINANCE", replica.api_key, replica.api_secret)
        params = {"rest_url": replica.url, "ws_url": replica.ws_url, "testnet": "false"}
        manifest = EXAMPLES / "binance_testnet.yaml"
        await paper_run(registry, manifest, "binance", params, tmp_path / "r")
        assert signed == []
        assert not replica.accepted
    finally:
        await replica.stop()
