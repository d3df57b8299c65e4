"""Prometheus metrics of a running run, served at ``http://host:port/metrics``.

Values are read from the run's own state when a scraper asks, inside the event loop,
so nothing is computed per tick and every scrape is one consistent snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge import hookimpl
from quoteforge.book import BookState
from quoteforge.clock import NS
from quoteforge.latency import LatencyHistogram
from quoteforge.model import Fill

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

__all__ = [
    "METRIC_NAMES",
    "MetricsServer",
    "RunCollector",
    "metrics_server_of",
    "quoteforge_fill",
    "quoteforge_run_started",
    "quoteforge_run_stopped",
    "scrape",
]

INSTALL_HINT = 'pip install "quoteforge[metrics]"'

#: Every metric family this plugin exposes (``docs/observability.md`` describes each).
METRIC_NAMES = (
    "quoteforge_run_info",
    "quoteforge_run_clock_seconds",
    "quoteforge_fills_total",
    "quoteforge_traded_volume_total",
    "quoteforge_traded_notional_total",
    "quoteforge_pnl",
    "quoteforge_pnl_realized",
    "quoteforge_pnl_unrealized",
    "quoteforge_fees",
    "quoteforge_inventory",
    "quoteforge_mid_price",
    "quoteforge_open_orders",
    "quoteforge_quote_to_fill_seconds",
    "quoteforge_tick_to_quote_seconds",
    "quoteforge_book_state",
    "quoteforge_book_staleness_seconds",
    "quoteforge_strategy_halted",
    "quoteforge_reconnects_total",
    "quoteforge_rate_limit_used",
    "quoteforge_risk_refusals_total",
    "quoteforge_breaker_trips_total",
    "quoteforge_alerts_total",
)

_MARKET_LABELS = ("market", "venue", "symbol", "strategy")


class RunCollector:
    """A prometheus_client collector over one run; quote-to-fill latency and traded
    volume are the only figures it accumulates itself (from ``quoteforge_fill``)."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.quote_to_fill: dict[str, LatencyHistogram] = {}
        self.volume_lots: dict[str, int] = {}

    def on_fill(self, fill: Fill) -> None:
        key = fill.market
        self.volume_lots[key] = self.volume_lots.get(key, 0) + fill.qty_lots
        order = self.run.orders.get(fill.client_id)
        if order is None or not order.created_ns:
            return  # an orphan fill: no quote of ours to measure from
        hist = self.quote_to_fill.get(key)
        if hist is None:
            hist = self.quote_to_fill[key] = LatencyHistogram()
        hist.record(fill.ts_ns - order.created_ns)

    def describe(self) -> list[Any]:
        # Empty: describing would otherwise run a full collect at registration time.
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        run = self.run
        now_ns = run.clock.now_ns()
        manifest = run.manifest

        info = GaugeMetricFamily(
            "quoteforge_run_info",
            "The run being observed (value is always 1).",
            labels=("run_id", "name", "mode"),
        )
        info.add_metric((run.run_id, manifest.run.name, run.mode), 1)
        yield info
        yield GaugeMetricFamily(
            "quoteforge_run_clock_seconds",
            "The run clock (virtual in sim and backtest), seconds since the epoch.",
            value=now_ns / NS,
        )

        def market_family(
            kind: Callable[..., Any], name: str, doc: str, extra: tuple[str, ...] = ()
        ) -> Any:
            return kind(name, doc, labels=(*_MARKET_LABELS, *extra))

        fills = market_family(CounterMetricFamily, "quoteforge_fills", "Our fills.")
        volume = market_family(
            CounterMetricFamily, "quoteforge_traded_volume", "Traded quantity, base units."
        )
        notional = market_family(
            CounterMetricFamily,
            "quoteforge_traded_notional",
            "Traded notional (price x quantity, both sides), quote asset.",
        )
        pnl = market_family(
            GaugeMetricFamily,
            "quoteforge_pnl",
            "PnL (realized + unrealized - fees) at the mid, quote asset.",
        )
        realized = market_family(
            GaugeMetricFamily, "quoteforge_pnl_realized", "Realized PnL (average cost)."
        )
        unrealized = market_family(
            GaugeMetricFamily, "quoteforge_pnl_unrealized", "Unrealized PnL at the mid."
        )
        fees = market_family(
            GaugeMetricFamily, "quoteforge_fees", "Fees paid (negative: rebates received)."
        )
        inventory = market_family(
            GaugeMetricFamily, "quoteforge_inventory", "Signed position, base units."
        )
        mid = market_family(GaugeMetricFamily, "quoteforge_mid_price", "Book mid price.")
        open_orders = market_family(
            GaugeMetricFamily, "quoteforge_open_orders", "Our working orders."
        )
        q2f = market_family(
            HistogramMetricFamily,
            "quoteforge_quote_to_fill_seconds",
            "Time from placing an order to each of its fills (run clock).",
        )
        state = market_family(
            GaugeMetricFamily,
            "quoteforge_book_state",
            "1 for the book's current state, 0 for the others.",
            ("state",),
        )
        staleness = market_family(
            GaugeMetricFamily,
            "quoteforge_book_staleness_seconds",
            "Run-clock seconds since the book last changed.",
        )

        pf = run.portfolio
        for key, mr in run.markets.items():
            inst = mr.instrument
            labels = (key, inst.venue, inst.symbol, mr.owner.name)
            mid_ticks = mr.book.mid_ticks()
            mark = inst.tick_size * Decimal(str(mid_ticks)) if mid_ticks is not None else None
            fills.add_metric(labels, pf.fill_count(key))
            volume.add_metric(labels, inst.lots_to_float(self.volume_lots.get(key, 0)))
            notional.add_metric(labels, float(pf.notional(key)))
            r, f = pf.realized(key), pf.fees(key)
            u = pf.unrealized(key, mark) if mark is not None else Decimal(0)
            # The same formula summary.csv uses, so both agree to the last digit.
            total = pf.pnl(key, mark) if mark is not None else r - f
            pnl.add_metric(labels, float(total))
            realized.add_metric(labels, float(r))
            unrealized.add_metric(labels, float(u))
            fees.add_metric(labels, float(f))
            inventory.add_metric(labels, float(pf.position(key)))
            if mark is not None:
                mid.add_metric(labels, float(mark))
            open_orders.add_metric(labels, run.orders.open_count(key))
            hist = self.quote_to_fill.get(key)
            if hist is not None:
                q2f.add_metric(labels, _buckets(hist), sum_value=hist.sum_ns / NS)
            for s in BookState:
                state.add_metric((*labels, s.value), 1 if mr.book.state is s else 0)
            last = mr.book.ts_ns or run.started_ns
            staleness.add_metric(labels, max(0, now_ns - last) / NS)
        yield from (fills, volume, notional, pnl, realized, unrealized, fees, inventory, mid)
        yield from (open_orders, q2f, state, staleness)

        t2q = HistogramMetricFamily(
            "quoteforge_tick_to_quote_seconds",
            "Wall time from a book update to the strategy's quotes reaching the venue.",
        )
        t2q.add_metric((), _buckets(run.tick_to_quote), sum_value=run.tick_to_quote.sum_ns / NS)
        yield t2q

        halted = GaugeMetricFamily(
            "quoteforge_strategy_halted",
            "1 when the strategy was halted after an exception.",
            labels=("strategy", "type"),
        )
        for name, srt in run.strategies.items():
            halted.add_metric((name, srt.type), 1 if srt.halted else 0)
        yield halted

        yield CounterMetricFamily(
            "quoteforge_reconnects", "Venue reconnections during the run.", value=run.reconnects
        )
        usage = GaugeMetricFamily(
            "quoteforge_rate_limit_used",
            "Share of each venue rate-limit budget in use, as the adapter reports it.",
            labels=("venue", "limit"),
        )
        for venue_name, adapter in run.venues.items():
            report = getattr(adapter, "rate_limit_usage", None)
            if report is None:
                continue
            try:
                values = report()
            except Exception as exc:  # a broken adapter must not break the scrape
                logger.warning("rate_limit_usage() of venue {} failed: {}", venue_name, exc)
                continue
            for limit, used in sorted(values.items()):
                usage.add_metric((venue_name, str(limit)), float(used))
        yield usage
        yield CounterMetricFamily(
            "quoteforge_risk_refusals",
            "Quotes a risk check refused.",
            value=run.refusals,
        )
        alerts: dict[tuple[str, str], int] = {}
        for alert in run.alerts:
            alerts[(alert.kind, alert.severity)] = alerts.get((alert.kind, alert.severity), 0) + 1
        yield CounterMetricFamily(
            "quoteforge_breaker_trips",
            "Circuit-breaker trips (alerts of kind 'breaker').",
            value=sum(n for (kind, _), n in alerts.items() if kind == "breaker"),
        )
        by_kind = CounterMetricFamily(
            "quoteforge_alerts", "Alerts raised, by kind and severity.", labels=("kind", "severity")
        )
        for (kind, severity), n in sorted(alerts.items()):
            by_kind.add_metric((kind, severity), n)
        yield by_kind


def _buckets(hist: LatencyHistogram) -> list[tuple[str, float]]:
    # The last bucket of LatencyHistogram also holds everything above it, so it becomes
    # +Inf rather than a finite bound it does not respect.
    cumulative = hist.buckets_seconds()[:-1]
    out = [(repr(bound), float(count)) for bound, count in cumulative]
    out.append(("+Inf", float(hist.count)))
    return out


def scrape(collector: Collector) -> bytes:
    """The Prometheus text exposition of ``collector`` right now."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


class _MetricsProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: answers a single GET, then closes."""

    MAX_REQUEST = 16 * 1024

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timeout: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(transport)
        loop = asyncio.get_running_loop()
        self.timeout = loop.call_later(self.server.request_timeout, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.connections.discard(self.transport)
        if self.timeout is not None:
            self.timeout.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > self.MAX_REQUEST:
                self._respond(431, b"request headers too large\n")
            return
        request_line = self.buffer.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._respond(400, b"bad request\n")
            return
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self._respond(405, b"only GET is served here\n", extra=b"Allow: GET, HEAD\r\n")
            return
        if target == "/metrics":
            try:
                body = self.server.render()
            except Exception as exc:
                logger.opt(exception=exc).error("metrics scrape failed: {}", exc)
                self._respond(500, b"metrics scrape failed; see the run log\n")
                return
            self._respond(200, body, head=method == "HEAD", content_type=_CONTENT_TYPE)
        elif target == "/":
            self._respond(200, b"quoteforge metrics: see /metrics\n", head=method == "HEAD")
        else:
            self._respond(404, b"not found; metrics are at /metrics\n")

    def _respond(
        self,
        status: int,
        body: bytes,
        *,
        head: bool = False,
        content_type: str = "text/plain; charset=utf-8",
        extra: bytes = b"",
    ) -> None:
        assert self.transport is not None
        reason = _REASONS.get(status, "Error")
        header = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        ).encode("latin-1")
        self.transport.write(header + extra + b"\r\n" + (b"" if head else body))
        self.transport.close()


_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


class MetricsServer:
    """The ``/metrics`` endpoint, served from the run's event loop.

    A plain asyncio server rather than a web framework or prometheus_client's threaded
    server: scrapes then run between two turns of the run, never concurrently with it,
    and ``close()`` is synchronous, which the run-stopped hook needs.
    """

    request_timeout = 10.0

    def __init__(self, render: Callable[[], bytes], host: str, port: int) -> None:
        self.render = render
        self.connections: set[asyncio.Transport] = set()
        # Bound here, synchronously: a taken port is reported at start-up, and scrapers
        # that connect before the loop turns wait in the backlog instead of failing.
        self.sock = socket.create_server((host, port), backlog=64)
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()[:2]
        self._server: asyncio.Server | None = None
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _MetricsProtocol(self), sock=self.sock)
        if self._closed:
            server.close()
            return
        self._server = server

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop listening and drop open connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        elif not self._task.done():
            self._task.cancel()
            self.sock.close()
        for transport in list(self.connections):
            transport.close()


_RUNS: weakref.WeakKeyDictionary[Any, tuple[RunCollector, MetricsServer]] = (
    weakref.WeakKeyDictionary()
)


def metrics_server_of(run: Any) -> MetricsServer | None:
    """The metrics endpoint of ``run``, or None when it serves none."""
    entry = _RUNS.get(run)
    return entry[1] if entry else None


@hookimpl
def quoteforge_run_started(run: Any) -> None:
    spec = run.manifest.metrics
    if spec.port is None:
        return
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        run.log.error(
            "metrics.port is set but prometheus_client is missing; install it with: {}",
            INSTALL_HINT,
        )
        return
    collector = RunCollector(run)
    try:
        server = MetricsServer(lambda: scrape(collector), spec.host, spec.port)
    except OSError as exc:
        run.log.error(
            "metrics endpoint not started: cannot listen on {}:{} ({}); choose a free "
            "port with metrics.port",
            spec.host,
            spec.port,
            exc.strerror or exc,
        )
        return
    _RUNS[run] = (collector, server)
    run.log.info("metrics at {}", server.url)


@hookimpl
def quoteforge_fill(run: Any, fill: Fill) -> None:
    entry = _RUNS.get(run)
    if entry is not None:
        entry[0].on_fill(fill)


@hookimpl
def quoteforge_run_stopped(run: Any, summary: list[dict[str, Any]]) -> None:
    entry = _RUNS.pop(run, None)
    if entry is not None:
        with contextlib.suppress(OSError):
            entry[1].close()
