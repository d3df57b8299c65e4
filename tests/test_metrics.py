"""The Prometheus endpoint: scraped over HTTP during a simulated run, every value equals
the run's own state at that moment."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

from quoteforge.clock import NS, SimClock
from quoteforge.engine import Run
from quoteforge.latency import LatencyHistogram
from quoteforge.manifest import load_manifest
from quoteforge.plugins import metrics_prometheus
from quoteforge.plugins.metrics_prometheus import METRIC_NAMES, metrics_server_of
from quoteforge.registry import PluginRegistry

MANIFEST = """\
run: {{name: metrics, duration: {duration}, seed: 3}}
exchanges:
  sim:
    type: sim
    params:
      maker_fee_bps: -0.5
      markets:
        BTC/USDT:
          tick_size: "0.01"
          lot_size: "0.0001"
          initial_price: 30000
          process: {{model: brownian, sigma: 0.0001}}
          flow: {{arrival_rate: 3.0, reach: 15.0, size: 0.05}}
          liquidity: {{levels: 5, distance: 20.0, spacing: 5.0, size: 0.2}}
          outages: [{{at: 20s, duration: 10s}}]
        YES/USD:
          kind: binary
          tick_size: "0.01"
          lot_size: "1"
          initial_price: 0.5
          process: {{model: jump, sigma: 0.004}}
          flow: {{arrival_rate: 2.0, reach: 0.03, size: 30}}
          liquidity: {{levels: 4, distance: 0.03, spacing: 0.01, size: 100}}
strategies:
  mm:
    type: pure_market_making
    exchange: sim
    symbols: BTC/USDT
    params: {{spread_bps: 4, order_size: 0.05, levels: 2, inventory_limit: 1.0}}
  mm_yes:
    type: pure_market_making
    exchange: sim
    symbols: YES/USD
    params: {{spread_bps: 300, order_size: 30, refresh_tolerance_bps: 50}}
risk:
  position: {{type: max_position, params: {{max_position: 45}}}}
report: {{html: false, png: false}}
alerting: {{stale_after: 3s}}
{metrics}
"""


def use_plugin(registry: PluginRegistry, module: Any, name: str) -> None:
    """Register a plugin module of this distribution unless its entry point already did."""
    if not registry.pm.is_registered(module):
        registry.register_module(module, name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_run(registry: PluginRegistry, tmp_path: Path, metrics: str, duration: str = "1h") -> Run:
    use_plugin(registry, metrics_prometheus, "metrics_prometheus")
    path = tmp_path / "metrics.yaml"
    path.write_text(MANIFEST.format(duration=duration, metrics=metrics))
    loaded = load_manifest(path, registry)
    return Run(loaded, registry, run_dir=tmp_path / "run")


@contextlib.contextmanager
def frozen(clock: SimClock) -> Iterator[None]:
    """Hold virtual time still: the run keeps serving the loop but its driver processes
    no event, so its state cannot move between the scrape and the comparison."""
    real = clock.run_until

    def held(end_ns: int, max_events: int | None = None, **kwargs: Any) -> int:
        if max_events is None:  # not the driver (shutdown's cancel wait): let it run
            return real(end_ns, **kwargs)
        return 0

    with mock.patch.object(clock, "run_until", held):
        yield


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def labels(market: str, strategy: str, **extra: str) -> tuple[tuple[str, str], ...]:
    venue, symbol = market.split(":", 1)
    base = {"market": market, "venue": venue, "symbol": symbol, "strategy": strategy, **extra}
    return tuple(sorted(base.items()))


async def wait_for(
    predicate: Any, what: str, task: asyncio.Task[Any] | None = None, timeout: float = 30.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if task is not None and task.done():
            task.result()  # the run ended early: raise its error
            raise AssertionError(f"the run ended before {what}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def journal(run_dir: Path) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Order creation times by client id, and every fill in the order it was applied."""
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        rows = conn.execute("SELECT kind, payload FROM journal ORDER BY seq").fetchall()
    finally:
        conn.close()
    created: dict[str, int] = {}
    fills = []
    for kind, payload in rows:
        data = json.loads(payload)
        order = data.get("order")
        if order and kind == "order":  # an order's first record holds the whole order
            created[order["client_id"]] = order["created_ns"]
        if kind == "fill":
            fills.append(data["fill"])
    return created, fills


async def test_scrape_during_a_sim_run_equals_the_run_state(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    port = free_port()
    run = make_run(registry, tmp_path, f"metrics: {{port: {port}}}")
    task = asyncio.create_task(run.run())
    await wait_for(
        lambda: run.started_ns and metrics_server_of(run) is not None, "the run start", task
    )
    server = metrics_server_of(run)
    assert server is not None and server.url == f"http://127.0.0.1:{port}/metrics"
    assert isinstance(run.clock, SimClock)
    clock = run.clock
    # Past the outage and the stale alert, with fills in both markets.
    await wait_for(
        lambda: (
            clock.now_ns() - run.started_ns > 45 * NS
            and all(run.portfolio.fill_count(k) for k in run.markets)
        ),
        "45 virtual seconds with fills",
        task,
    )
    with frozen(clock):
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await resp.text()
            async with session.get(f"http://127.0.0.1:{port}/nothing") as resp:
                assert resp.status == 404
            async with session.post(server.url) as resp:
                assert resp.status == 405
        rows = {r["market"]: r for r in run.summary_rows()}
        counts = {k: run.portfolio.fill_count(k) for k in run.markets}
        state = {
            k: (mr.book.state.value, run.orders.open_count(k), mr.owner.name)
            for k, mr in run.markets.items()
        }
        t2q = (run.tick_to_quote.count, run.tick_to_quote.sum_ns)
        alerts = [(a.kind, a.severity) for a in run.alerts]
        refusals = run.refusals
        now = clock.now_ns()
    run.request_stop("scraped")
    await task
    # After the run the endpoint is gone.
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(server.url)

    m = parse(text)
    families = {f.name for f in text_string_to_metric_families(text)}
    assert families == {n.removesuffix("_total") for n in METRIC_NAMES}
    assert m[("quoteforge_run_clock_seconds", ())] == now / NS
    assert m[("quoteforge_run_info", (("mode", "sim"), ("name", "metrics"), ("run_id", "run")))]
    created, journal_fills = journal(tmp_path / "run")
    for key, row in rows.items():
        book_state, open_orders, strategy = state[key]
        lab = labels(key, strategy)
        assert m[("quoteforge_fills_total", lab)] == counts[key] == row["fill_count"]
        assert m[("quoteforge_traded_notional_total", lab)] == row["notional"]
        assert m[("quoteforge_pnl", lab)] == row["pnl"]
        assert m[("quoteforge_inventory", lab)] == row["inventory"]
        assert m[("quoteforge_mid_price", lab)] == row["mid"]
        assert m[("quoteforge_open_orders", lab)] == open_orders
        realized, unrealized = (
            m[("quoteforge_pnl_realized", lab)],
            m[("quoteforge_pnl_unrealized", lab)],
        )
        fees = m[("quoteforge_fees", lab)]
        assert realized + unrealized - fees == pytest.approx(row["pnl"], abs=1e-9)
        for s in ("SYNCING", "LIVE", "STALE", "RESYNCING"):
            want = 1.0 if s == book_state else 0.0
            assert m[("quoteforge_book_state", labels(key, strategy, state=s))] == want
        assert m[("quoteforge_book_staleness_seconds", lab)] >= 0
        # The first fills of this market in the journal are exactly those scraped.
        applied = [f for f in journal_fills if f"{f['venue']}:{f['symbol']}" == key]
        applied = applied[: counts[key]]
        inst = run.markets[key].instrument
        volume = inst.lots_to_float(sum(f["qty_lots"] for f in applied))
        assert m[("quoteforge_traded_volume_total", lab)] == volume
        expected = LatencyHistogram()
        for f in applied:
            expected.record(f["ts_ns"] - created[f["client_id"]])
        cumulative = [n for _, n in expected.buckets_seconds()[:-1]] + [expected.count]
        scraped = sorted(
            (float(dict(lbl)["le"]), v)
            for (name, lbl), v in m.items()
            if name == "quoteforge_quote_to_fill_seconds_bucket" and dict(lbl)["market"] == key
        )
        assert [v for _, v in scraped] == cumulative
        assert scraped[-1][0] == float("inf")
        assert m[("quoteforge_quote_to_fill_seconds_count", lab)] == counts[key]
        assert m[("quoteforge_quote_to_fill_seconds_sum", lab)] == pytest.approx(
            expected.sum_ns / NS, rel=1e-12
        )
    assert m[("quoteforge_tick_to_quote_seconds_count", ())] == t2q[0]
    assert m[("quoteforge_tick_to_quote_seconds_sum", ())] == t2q[1] / NS
    assert m[("quoteforge_risk_refusals_total", ())] == refusals
    assert m[("quoteforge_reconnects_total", ())] == 0
    assert m[("quoteforge_breaker_trips_total", ())] == 0
    assert ("stale_book", "warning") in alerts
    for kind, severity in set(alerts):
        key2 = ("quoteforge_alerts_total", (("kind", kind), ("severity", severity)))
        assert m[key2] == alerts.count((kind, severity))
    for name in ("mm", "mm_yes"):
        halted = (
            "quoteforge_strategy_halted",
            (("strategy", name), ("type", "pure_market_making")),
        )
        assert m[halted] == 0


class _VenueWithBudget:
    """Reports a rate-limit budget the way a live adapter would."""

    @staticmethod
    def rate_limit_usage() -> dict[str, float]:
        return {"weight_1m": 0.25, "orders_10s": 0.5}


def test_adapter_rate_limit_usage_is_exposed(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(registry, tmp_path, "", duration="5s")
    asyncio.run(run.run())
    collector = metrics_prometheus.RunCollector(run)
    without = parse(metrics_prometheus.scrape(collector).decode())
    assert not [k for k in without if k[0] == "quoteforge_rate_limit_used"]
    monkeypatch.setattr(
        run.venues["sim"], "rate_limit_usage", _VenueWithBudget.rate_limit_usage, raising=False
    )
    with_budget = parse(metrics_prometheus.scrape(collector).decode())
    assert (
        with_budget[("quoteforge_rate_limit_used", (("limit", "weight_1m"), ("venue", "sim")))]
        == 0.25
    )
    assert (
        with_budget[("quoteforge_rate_limit_used", (("limit", "orders_10s"), ("venue", "sim")))]
        == 0.5
    )


def test_no_port_no_endpoint(registry: PluginRegistry, tmp_path: Path) -> None:
    run = make_run(registry, tmp_path, "", duration="5s")
    seen: list[Any] = []

    async def scenario() -> None:
        task = asyncio.create_task(run.run())
        await wait_for(lambda: run.started_ns, "the run start", task)
        seen.append(metrics_server_of(run))
        await task

    asyncio.run(scenario())
    assert seen == [None]


def test_a_taken_port_is_logged_and_the_run_goes_on(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    messages: list[str] = []
    sink = logger.add(lambda msg: messages.append(str(msg)), level="ERROR")
    try:
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            run = make_run(registry, tmp_path, f"metrics: {{port: {port}}}", duration="10s")
            reason = asyncio.run(run.run())
    finally:
        logger.remove(sink)
    assert reason == "duration reached"
    assert any(f"cannot listen on 127.0.0.1:{port}" in m and "metrics.port" in m for m in messages)
    assert sum(r["fill_count"] for r in run.summary_rows()) > 0


ROOT = Path(__file__).resolve().parent.parent


def test_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads((ROOT / "examples" / "grafana_dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    used = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for expr in exprs
        for name in re.findall(r"quoteforge_[a-z_]+", expr)
    }
    assert used and used <= set(METRIC_NAMES), used - set(METRIC_NAMES)


def test_every_metric_is_documented() -> None:
    docs = (ROOT / "docs" / "observability.md").read_text()
    missing = [name for name in METRIC_NAMES if f"`{name}`" not in docs]
    assert missing == []
