"""The webhook alert channel against a local HTTP endpoint, fed by real simulated runs."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from loguru import logger
from own_strategies import register_strategy

import quoteforge
from quoteforge.engine import Alert, Run
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.plugins import alert_webhook
from quoteforge.plugins.alert_webhook import WebhookChannel, WebhookParams
from quoteforge.registry import PluginRegistry
from quoteforge.strategies.pure_market_making import PureMarketMaking
from quoteforge.strategy import Market

MANIFEST = """\
run: {{name: alerts, duration: {duration}, seed: 4}}
exchanges:
  sim:
    type: sim
    params:
      markets:
        BTC/USDT:
          tick_size: "0.01"
          lot_size: "0.0001"
          initial_price: 30000
          flow: {{arrival_rate: 3.0, reach: 15.0, size: 0.05}}
          outages: [{{at: 10s, duration: 8s}}]
        ETH/USDT:
          tick_size: "0.01"
          lot_size: "0.001"
          initial_price: 2000
          flow: {{arrival_rate: 2.0, reach: 1.2, size: 0.8}}
strategies:
  mm:
    type: pure_market_making
    exchange: sim
    symbols: BTC/USDT
    params: {{spread_bps: 4, order_size: 0.05}}
  boom:
    type: {eth_strategy}
    exchange: sim
    symbols: ETH/USDT
    params: {{spread_bps: 5, order_size: 0.8}}
report: {{html: false, png: false}}
alerting: {{stale_after: 2s}}
alerts:
  ops:
    type: webhook
    params:
{webhook}
"""


class ExplodesLater(PureMarketMaking):
    """Quotes like the pure market maker, then raises inside on_book."""

    def __init__(self, ctx: Any, params: Any) -> None:
        super().__init__(ctx, params)
        self.calls = 0

    def on_book(self, market: Market, **kwargs: Any) -> list[quoteforge.Quote] | None:
        self.calls += 1
        if self.calls > 100:
            raise ArithmeticError("pricing model diverged")
        return super().on_book(market)


def use_plugins(registry: PluginRegistry) -> None:
    if not registry.pm.is_registered(alert_webhook):
        registry.register_module(alert_webhook, "alert_webhook")
    register_strategy(registry, "explodes_later_for_alerts", ExplodesLater)


@dataclass
class Endpoint:
    """A local webhook receiver; ``script`` decides each response's status."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    attempts: int = 0
    script: Callable[[int], int] = lambda attempt: 200
    delay: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        status = self.script(self.attempts)
        if self.delay:
            await asyncio.sleep(self.delay)
        body = await request.json()
        if status == 200:
            self.received.append(body)
            self.headers.append(dict(request.headers))
        return web.Response(status=status, text="ok" if status == 200 else "no")


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint()
    app = web.Application()
    app.router.add_post("/hook/{token}", ep.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ep.url = f"http://127.0.0.1:{port}/hook/s3cr3t-path"
    yield ep
    await runner.cleanup()


def build_run(
    registry: PluginRegistry,
    tmp_path: Path,
    webhook: dict[str, Any],
    *,
    duration: str = "30s",
    eth_strategy: str = "explodes_later_for_alerts",
) -> Run:
    use_plugins(registry)
    lines = "\n".join(f"      {k}: {json.dumps(v)}" for k, v in webhook.items())
    text = MANIFEST.format(duration=duration, eth_strategy=eth_strategy, webhook=lines)
    path = tmp_path / "alerts.yaml"
    path.write_text(text)
    loaded = load_manifest(path, registry)
    return Run(loaded, registry, run_dir=tmp_path / "run")


def capture_errors() -> tuple[list[str], int]:
    messages: list[str] = []
    return messages, logger.add(lambda m: messages.append(str(m)), level="ERROR")


async def test_alerts_of_a_sim_run_reach_the_webhook(
    registry: PluginRegistry, tmp_path: Path, endpoint: Endpoint
) -> None:
    run = build_run(
        registry, tmp_path, {"url": endpoint.url, "headers": {"X-Team": "market-making"}}
    )
    reason = await run.run()
    assert reason == "duration reached"
    kinds = [a.kind for a in run.alerts]
    assert "stale_book" in kinds and "strategy_halted" in kinds
    by_message = {b["message"]: b for b in endpoint.received}
    assert len(endpoint.received) == len(run.alerts) == len(by_message)
    for alert in run.alerts:
        body = by_message[alert.message]
        assert body["kind"] == alert.kind
        assert body["severity"] == alert.severity
        assert body["market"] == alert.market
        assert body["run_id"] == run.run_id == "run"
        assert body["ts_ns"] == alert.ts_ns
        assert datetime.fromisoformat(body["time"]).timestamp() == pytest.approx(
            alert.ts_ns / 1e9, abs=1e-6
        )
    stale = next(b for b in endpoint.received if b["kind"] == "stale_book")
    assert stale["market"] == "sim:BTC/USDT"
    halted = next(b for b in endpoint.received if b["kind"] == "strategy_halted")
    assert "boom" in halted["message"] and "pricing model diverged" in halted["message"]
    assert all(h["X-Team"] == "market-making" for h in endpoint.headers)
    assert all(h["Content-Type"] == "application/json" for h in endpoint.headers)


async def test_a_flaky_endpoint_gets_the_alert_after_retries(
    registry: PluginRegistry, tmp_path: Path, endpoint: Endpoint
) -> None:
    endpoint.script = lambda attempt: 503 if attempt <= 2 else 200
    run = build_run(
        registry,
        tmp_path,
        {"url": endpoint.url, "retries": 3, "backoff": 0.01, "kinds": ["stale_book"]},
    )
    await run.run()
    assert [a.kind for a in run.alerts].count("stale_book") == 1
    assert endpoint.attempts == 3
    assert [b["kind"] for b in endpoint.received] == ["stale_book"]


async def test_failing_endpoints_are_logged_and_the_run_goes_on(
    registry: PluginRegistry, tmp_path: Path, endpoint: Endpoint
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/hook/s3cr3t-path"
    errors, sink = capture_errors()
    try:
        run = build_run(
            registry, tmp_path, {"url": dead, "retries": 2, "backoff": 0.01, "timeout": 0.5}
        )
        reason = await run.run()
    finally:
        logger.remove(sink)
    assert reason == "duration reached"
    assert all(r["fill_count"] > 0 for r in run.summary_rows() if r["market"] == "sim:BTC/USDT")
    channel = run.alert_channels[0]
    assert isinstance(channel, WebhookChannel)
    assert channel.failed == len(run.alerts) >= 2 and channel.sent == 0
    undelivered = [m for m in errors if "not delivered to webhook" in m]
    assert len(undelivered) == len(run.alerts)
    assert "connection failed" in undelivered[0]
    # The URL path may be a secret: only scheme, host and port are logged.
    assert all("s3cr3t-path" not in m for m in errors)


async def test_a_slow_endpoint_times_out_and_is_retried(endpoint: Endpoint) -> None:
    endpoint.delay = 0.3
    endpoint.script = lambda attempt: 200
    channel = WebhookChannel(WebhookParams(url=endpoint.url, timeout=0.1, retries=1, backoff=0.01))
    alert = Alert("breaker", "critical", "drawdown limit hit", 1_767_225_600 * 10**9, "sim:X/Y")
    errors, sink = capture_errors()
    try:
        delivered = await channel.send(alert)
    finally:
        logger.remove(sink)
    assert delivered is False
    assert endpoint.attempts == 2
    assert any("no answer within 0.1s" in m for m in errors)


async def test_a_rejected_request_is_not_retried(endpoint: Endpoint) -> None:
    endpoint.script = lambda attempt: 401
    channel = WebhookChannel(WebhookParams(url=endpoint.url, retries=3, backoff=0.01))
    alert = Alert("kill", "critical", "kill switch", 1_767_225_600 * 10**9)
    errors, sink = capture_errors()
    try:
        assert await channel.send(alert) is False
    finally:
        logger.remove(sink)
    assert endpoint.attempts == 1
    assert any("HTTP 401 (not retried" in m for m in errors)


def test_a_bad_webhook_url_is_refused_before_the_run(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    with pytest.raises(ManifestError, match=r"alerts\.ops\.params\.url: .*http:// or https://"):
        build_run(registry, tmp_path, {"url": "hooks.example.com/x"})
    with pytest.raises(ManifestError, match=r"alerts\.ops\.params\.retry: unknown key"):
        build_run(registry, tmp_path, {"url": "https://hooks.example.com/x", "retry": 2})


def test_header_values_never_show_in_params_repr() -> None:
    params = WebhookParams(
        url="https://hooks.example.com/x", headers={"Authorization": "Bearer abcdef123456"}
    )
    assert "abcdef123456" not in repr(params) and "abcdef123456" not in str(params)
    assert "abcdef123456" not in params.model_dump_json()
