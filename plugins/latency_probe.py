"""``quoteforge latency``: REST round trip, websocket ping and (with ``--orders``) order
acknowledgement times per venue, measured from the host a bot would run on."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import secrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quoteforge.book import L2Book
from quoteforge.exchange import CancelOrder, ExchangeAdapter, PlaceOrder
from quoteforge.exchanges.ccxt_base import LatencyEndpoints
from quoteforge.gate import OrderGate
from quoteforge.manifest import LoadedManifest, ManifestError, load_manifest
from quoteforge.model import Instrument, Order, OrderStatus, OrderUpdate, Side, TimeInForce
from quoteforge.plugins.record import (
    RecordError,
    build_market_data_venues,
    load_market_data_manifest,
)
from quoteforge.registry import PluginRegistry, load_registry
from quoteforge.risk import RiskChain, RiskView
from quoteforge.strategy import Market

__all__ = [
    "LatencyError",
    "LatencyReport",
    "Measure",
    "latency_main",
    "measure_latency",
    "percentile",
    "venue_endpoints",
]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
MS = 1_000_000


class LatencyError(Exception):
    """A measurement that cannot run; the message says what is wrong and how to fix it."""


def percentile(sorted_ns: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list (``q`` in 0..1); exact, no buckets."""
    if not sorted_ns:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q * len(sorted_ns)))
    return sorted_ns[rank - 1]


@dataclass
class Measure:
    """The samples of one measure (``rest_rtt``, ``ws_ping``, ``order_ack``,
    ``cancel_ack``) at one venue, and why any attempt failed."""

    venue: str
    name: str
    endpoint: str
    samples_ns: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"endpoint": self.endpoint, "n": len(self.samples_ns)}
        if self.samples_ns:
            ordered = sorted(self.samples_ns)
            out.update(
                p50_ms=percentile(ordered, 0.50) / MS,
                p99_ms=percentile(ordered, 0.99) / MS,
                min_ms=ordered[0] / MS,
                max_ms=ordered[-1] / MS,
            )
        out["errors"] = len(self.errors)
        if self.errors:
            out["first_error"] = self.errors[0]
        out["samples_ms"] = [ns / MS for ns in self.samples_ns]
        return out


@dataclass
class LatencyReport:
    host: str
    started_at: str
    samples: int
    orders: bool
    measures: list[Measure] = field(default_factory=list)
    venue_types: dict[str, str] = field(default_factory=dict)
    left_open: list[str] = field(default_factory=list)
    """Client ids of probe orders the venue still showed open at the end (should be none)."""

    @property
    def ok(self) -> bool:
        return not self.left_open and all(m.samples_ns for m in self.measures)

    def to_json(self) -> dict[str, Any]:
        venues: dict[str, Any] = {}
        for m in self.measures:
            entry = venues.setdefault(
                m.venue, {"type": self.venue_types.get(m.venue, ""), "measures": {}}
            )
            entry["measures"][m.name] = m.summary()
        return {
            "host": self.host,
            "started_at": self.started_at,
            "samples": self.samples,
            "orders": self.orders,
            "venues": venues,
            "left_open": self.left_open,
        }

    def table(self) -> str:
        head = ("venue", "measure", "n", "p50 ms", "p99 ms", "min ms", "max ms", "errors")
        rows: list[tuple[str, ...]] = [head]
        for m in self.measures:
            s = m.summary()
            if m.samples_ns:
                stats = [f"{s[k]:.2f}" for k in ("p50_ms", "p99_ms", "min_ms", "max_ms")]
            else:
                stats = ["-"] * 4
            rows.append((m.venue, m.name, str(s["n"]), *stats, str(s["errors"])))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join(
            "  ".join(
                v.ljust(w) if i < 2 else v.rjust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in rows
        )


# -- endpoints -------------------------------------------------------------------------------


def venue_endpoints(venue: ExchangeAdapter) -> LatencyEndpoints:
    """The endpoints the adapter itself would use (testnet, replica or live URLs), as its
    ``latency_endpoints()`` names them: the probe asks the venue, whatever its type."""
    ask = getattr(venue, "latency_endpoints", None)
    if ask is None:
        raise LatencyError(
            f"exchange {venue.name!r} ({type(venue).__name__}): no latency probe for this "
            "venue type: its adapter does not name endpoints (latency_endpoints())"
        )
    try:
        endpoints = ask()
    except NotImplementedError as exc:
        raise LatencyError(
            f"exchange {venue.name!r} ({type(venue).__name__}): no latency probe for this "
            f"venue type: {exc}"
        ) from None
    except ValueError as exc:
        raise LatencyError(str(exc)) from None
    try:
        rest_url, ws_url = endpoints
    except (TypeError, ValueError):
        raise LatencyError(
            f"exchange {venue.name!r}: latency_endpoints() returned {endpoints!r}, not "
            "(rest_url, ws_url)"
        ) from None
    return LatencyEndpoints(str(rest_url), str(ws_url))


# -- REST and websocket probes -------------------------------------------------------------------


async def probe_rest(
    session: Any, url: str, measure: Measure, samples: int, interval_s: float, timeout_s: float
) -> None:
    """``samples`` GETs of ``url`` on one kept-alive connection; the first request (TCP
    and TLS set-up) is not counted."""
    import aiohttp

    limit = aiohttp.ClientTimeout(total=timeout_s)

    async def once() -> int:
        start = time.perf_counter_ns()
        async with session.get(url, timeout=limit) as response:
            await response.read()
            if response.status != 200:
                raise LatencyError(f"HTTP {response.status}")
        return time.perf_counter_ns() - start

    try:
        await once()
    except (LatencyError, aiohttp.ClientError, TimeoutError) as exc:
        measure.errors.append(f"warm-up: {_describe(exc)}")
    for i in range(samples):
        if i:
            await asyncio.sleep(interval_s)
        try:
            measure.samples_ns.append(await once())
        except (LatencyError, aiohttp.ClientError, TimeoutError) as exc:
            measure.errors.append(_describe(exc))


async def probe_ws_ping(
    session: Any, url: str, measure: Measure, samples: int, interval_s: float, timeout_s: float
) -> None:
    """Open ``url``, send ``samples`` ping frames one at a time and time each pong."""
    import aiohttp

    try:
        ws = await asyncio.wait_for(
            session.ws_connect(url, autoping=False, heartbeat=None), timeout_s
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        measure.errors.append(f"connect: {_describe(exc)}")
        return
    waiting: dict[bytes, asyncio.Future[int]] = {}

    async def read() -> None:
        # Pongs are stamped as they are read, not when the waiting task resumes.
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.PONG:
                future = waiting.pop(bytes(msg.data), None)
                if future is not None and not future.done():
                    future.set_result(time.perf_counter_ns())
            elif msg.type is aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)

    reader = asyncio.create_task(read())
    loop = asyncio.get_running_loop()
    try:
        for i in range(samples):
            if i:
                await asyncio.sleep(interval_s)
            if reader.done():
                measure.errors.append("the venue closed the websocket")
                break
            payload = f"qf{i}".encode()
            future: asyncio.Future[int] = loop.create_future()
            waiting[payload] = future
            start = time.perf_counter_ns()
            try:
                await ws.ping(payload)
                measure.samples_ns.append(await asyncio.wait_for(future, timeout_s) - start)
            except (TimeoutError, ConnectionError, RuntimeError) as exc:
                waiting.pop(payload, None)
                measure.errors.append(f"no pong: {_describe(exc)}")
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        with contextlib.suppress(Exception):
            await ws.close()


# -- order acknowledgements --------------------------------------------------------------------


class _OrderWatch:
    """The sink of the order probe: stamps every order report as it arrives."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[OrderUpdate, int]] = {}
        self._waiters: list[tuple[str, Callable[[OrderUpdate], bool], asyncio.Future[Any]]] = []

    def on_order_update(self, update: OrderUpdate) -> None:
        stamp = time.perf_counter_ns()
        self.last[update.client_id] = (update, stamp)
        for client_id, wanted, future in list(self._waiters):
            if client_id == update.client_id and wanted(update) and not future.done():
                future.set_result((update, stamp))

    async def wait(
        self, client_id: str, wanted: Callable[[OrderUpdate], bool], timeout_s: float
    ) -> tuple[OrderUpdate, int]:
        seen = self.last.get(client_id)
        if seen is not None and wanted(seen[0]):
            return seen
        future: asyncio.Future[tuple[OrderUpdate, int]] = asyncio.get_running_loop().create_future()
        waiter = (client_id, wanted, future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._waiters.remove(waiter)

    def on_book(self, book: Any) -> None:
        pass

    def on_book_state(self, book: Any, old: str, new: str, reason: str) -> None:
        pass

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        pass

    def on_fill(self, fill: Any) -> None:
        pass

    def on_offer(self, offer: Any) -> None:
        pass


def _acked(update: OrderUpdate) -> bool:
    return update.status is not OrderStatus.PENDING_NEW


def _finished(update: OrderUpdate) -> bool:
    return update.status.is_terminal


def _rate_room_s(venue: ExchangeAdapter, instrument: Instrument) -> float:
    """How long until the adapter's rate governor lets a place + cancel through without
    waiting: that wait is ours, not the venue's, so it stays outside the timing. Asked
    of the adapter (``latency_order_wait_s``); 0 for one that does not pace itself."""
    wait = getattr(venue, "latency_order_wait_s", None)
    return float(wait(instrument.symbol)) if wait is not None else 0.0


def _probe_order(
    instrument: Instrument, best_bid: int, offset_bps: int, client_id: str, gate: OrderGate
) -> Order:
    price = max(instrument.min_price_ticks, best_bid * (10_000 - offset_bps) // 10_000)
    px = instrument.ticks_to_price(price)
    # The smallest order the venue takes (whole order steps), with a margin over the
    # minimum notional.
    need = max(instrument.min_qty, instrument.min_notional * 11 / 10 / px)
    lots = max(1, math.ceil(need / instrument.qty_step)) * instrument.step_lots
    market = gate.risk_view.markets[instrument.key]
    refused = gate.check(market, "latency", Side.BUY, price, lots, post_only=True)
    if refused:
        raise LatencyError(f"{instrument.key}: cannot send a probe order ({refused})")
    return Order(
        client_id, instrument.venue, instrument.symbol, Side.BUY, lots, price,
        tif=TimeInForce.POST_ONLY,
    )  # fmt: skip


def _probe_gate(risk: RiskChain, instrument: Instrument, book: L2Book) -> OrderGate:
    """The order gate a probe order passes: the manifest's risk checks and the
    instrument's rules (no strategy, no position: the probe holds nothing)."""
    market = Market(instrument, book, lambda: 0)
    view = RiskView(
        position_lots=lambda key: 0,
        open_lots=lambda key, sign: 0,
        open_order_count=lambda key: 0,
        markets={instrument.key: market},
    )
    return OrderGate(
        risk=risk,
        risk_view=view,
        breakers=None,
        orders=None,
        policy=None,
        position_lots=lambda key: 0,
        now_ns=time.time_ns,
    )


async def probe_orders(
    venue: ExchangeAdapter,
    symbol: str,
    acks: Measure,
    cancels: Measure,
    samples: int,
    *,
    interval_s: float,
    offset_bps: int,
    timeout_s: float,
    risk: RiskChain | None = None,
) -> list[str]:
    """Place ``samples`` post-only buys of ``symbol``, ``offset_bps`` under the best bid,
    through the order gate (``risk``: the manifest's checks) and the adapter; time each
    acknowledgement and cancel. Returns the probe orders the venue still shows open at
    the end (none, unless a cancel was lost)."""
    watch = _OrderWatch()
    ours: list[str] = []
    tag = secrets.token_hex(3)
    try:
        await asyncio.wait_for(venue.connect(watch), timeout_s * 3)
        book = venue.books[symbol]
        deadline = time.monotonic() + timeout_s * 3
        while book.best_bid_ticks() is None:
            if time.monotonic() > deadline:
                raise LatencyError(f"{venue.name}: no book for {symbol} to price probe orders")
            await asyncio.sleep(0.02)
        instrument = venue.instruments[symbol]
        gate = _probe_gate(risk or RiskChain([], lambda refusal: None), instrument, book)
        rejected_in_a_row = 0
        for i in range(samples):
            if i:
                await asyncio.sleep(interval_s)
            room = _rate_room_s(venue, instrument)
            if room > 0:
                await asyncio.sleep(room)
            best_bid = book.best_bid_ticks()
            if best_bid is None:
                acks.errors.append("book empty")
                continue
            order = _probe_order(instrument, best_bid, offset_bps, f"lat{tag}{i:04d}", gate)
            ours.append(order.client_id)
            start = time.perf_counter_ns()
            venue.submit([PlaceOrder(order)])
            try:
                update, stamp = await watch.wait(order.client_id, _acked, timeout_s)
            except TimeoutError:
                acks.errors.append(f"no acknowledgement within {timeout_s:g}s")
                continue
            if update.status.is_terminal:
                acks.errors.append(f"{update.status.value}: {update.reason or 'no reason given'}")
                rejected_in_a_row += 1
                if rejected_in_a_row >= 3:
                    acks.errors.append("stopped after 3 refusals in a row")
                    break
                continue
            rejected_in_a_row = 0
            acks.samples_ns.append(stamp - start)
            start = time.perf_counter_ns()
            venue.submit([CancelOrder(order.client_id, venue.name, symbol)])
            try:
                update, stamp = await watch.wait(order.client_id, _finished, timeout_s)
                cancels.samples_ns.append(stamp - start)
            except TimeoutError:
                cancels.errors.append(f"no cancel acknowledgement within {timeout_s:g}s")
        return await _clean_up(venue, watch, ours, symbol, timeout_s)
    finally:
        with contextlib.suppress(Exception):
            await venue.close()


async def _clean_up(
    venue: ExchangeAdapter, watch: _OrderWatch, ours: list[str], symbol: str, timeout_s: float
) -> list[str]:
    """Cancel every probe order not known finished, then ask the venue which of ours it
    still holds open. Only our own client ids: other orders on the account stay."""
    pending = [c for c in ours if c not in watch.last or not watch.last[c][0].status.is_terminal]
    if pending:
        venue.submit([CancelOrder(c, venue.name, symbol) for c in pending])
        for client_id in pending:
            with contextlib.suppress(TimeoutError):
                await watch.wait(client_id, _finished, timeout_s)
    open_now = await venue.fetch_open_orders() or []  # None: the venue cannot tell
    return sorted({u.client_id for u in open_now} & set(ours))


# -- the whole measurement -----------------------------------------------------------------------


def _risk_chain(loaded: LoadedManifest, registry: PluginRegistry) -> RiskChain:
    """The manifest's risk checks, for the probe orders; a refusal is printed."""
    checks = [
        registry.get("risk", spec.type).factory(name, loaded.params_of("risk", name))
        for name, spec in loaded.manifest.risk.items()
    ]
    return RiskChain(checks, lambda refusal: print(f"risk: {refusal}", file=sys.stderr))


async def measure_latency(
    venues: dict[str, ExchangeAdapter],
    *,
    samples: int = 20,
    orders: bool = False,
    interval_s: float = 0.5,
    offset_bps: int = 1000,
    timeout_s: float = 5.0,
    venue_types: dict[str, str] | None = None,
    risk: RiskChain | None = None,
) -> LatencyReport:
    """Measure every venue in turn (one at a time, so they do not share the link). Probe
    orders pass the order gate with ``risk``, the manifest's risk checks."""
    import aiohttp

    if samples < 1:
        raise LatencyError("--samples must be at least 1")
    if orders:
        for name, venue in venues.items():
            if not getattr(venue, "has_credentials", False):
                raise LatencyError(
                    f"exchange {name!r}: --orders places real orders and needs the venue's "
                    "API keys: give secrets api_key and api_secret in the manifest (as "
                    "${ENV_VAR}) and export them"
                )
    report = LatencyReport(
        host=socket.gethostname(),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        samples=samples,
        orders=orders,
        venue_types=dict(venue_types or {}),
    )
    endpoints = {name: venue_endpoints(venue) for name, venue in venues.items()}
    for name, venue in venues.items():
        where = endpoints[name]
        rest = Measure(name, "rest_rtt", where.rest_url)
        ping = Measure(name, "ws_ping", where.ws_url)
        report.measures += [rest, ping]
        async with aiohttp.ClientSession() as session:
            await probe_rest(session, where.rest_url, rest, samples, interval_s, timeout_s)
            await probe_ws_ping(session, where.ws_url, ping, samples, interval_s, timeout_s)
        if orders:
            acks = Measure(name, "order_ack", "place post-only order")
            cancels = Measure(name, "cancel_ack", "cancel order")
            report.measures += [acks, cancels]
            try:
                left = await probe_orders(
                    venue,
                    _first_symbol(venue),
                    acks,
                    cancels,
                    samples,
                    interval_s=interval_s,
                    offset_bps=offset_bps,
                    timeout_s=timeout_s,
                    risk=risk,
                )
            except (LatencyError, TimeoutError, ValueError, ConnectionError) as exc:
                acks.errors.append(_describe(exc))
            else:
                report.left_open += [f"{name}:{c}" for c in left]
    return report


def _first_symbol(venue: ExchangeAdapter) -> str:
    ctx = getattr(venue, "ctx", None)
    symbols = list(ctx.symbols) if ctx is not None else []
    if not symbols:
        raise LatencyError(f"exchange {venue.name!r}: no symbol to place probe orders on")
    return symbols[0]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quoteforge latency",
        description="Measure REST round trip, websocket ping and (with --orders) order "
        "acknowledgement times to each exchange of a manifest, from this host.",
    )
    p.add_argument("manifest", type=Path, help="the manifest whose exchanges to measure")
    p.add_argument("--samples", type=int, default=20, help="samples per measure (default 20)")
    p.add_argument(
        "--orders",
        action="store_true",
        help="also place and cancel REAL post-only orders far from the market (needs keys)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument(
        "--interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="pause between samples, to stay far inside rate limits (default 0.5)",
    )
    p.add_argument(
        "--offset-bps",
        type=int,
        default=1000,
        help="how far under the best bid probe orders rest, in bps (default 1000 = 10%%)",
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per sample (default 5)"
    )
    p.add_argument(
        "--venue",
        dest="venues",
        action="append",
        default=[],
        metavar="NAME",
        help="measure only this exchange of the manifest (repeatable; default: all)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a manifest value, e.g. exchanges.binance.params.testnet=false",
    )
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    return p


def latency_main(argv: list[str] | None = None) -> int:
    """``quoteforge latency MANIFEST [--samples N] [--orders] [--json FILE]``."""
    args = _parser().parse_args(argv)
    from quoteforge.logs import configure_logging

    configure_logging(args.log_level)
    problems = []
    if args.samples < 1:
        problems.append(f"--samples must be at least 1, got {args.samples}")
    if args.interval < 0:
        problems.append(f"--interval cannot be negative, got {args.interval}")
    if args.timeout <= 0:
        problems.append(f"--timeout must be positive, got {args.timeout}")
    if not 0 < args.offset_bps < 10_000:
        problems.append(f"--offset-bps must be between 1 and 9999, got {args.offset_bps}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return EXIT_USAGE
    registry = load_registry()
    try:
        if args.orders:
            loaded = load_manifest(args.manifest, registry, overrides=args.overrides)
        else:
            loaded = load_market_data_manifest(args.manifest, registry, args.overrides)
        venues = build_market_data_venues(
            loaded,
            registry,
            only=args.venues,
            manifest_path=args.manifest,
            command="latency",
            verb="measure",
            with_secrets=args.orders,
        )
        for venue in venues.values():
            venue_endpoints(venue)
    except ManifestError as exc:
        print(f"manifest refused:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RecordError, LatencyError) as exc:
        print(f"quoteforge latency: {exc}", file=sys.stderr)
        return EXIT_USAGE
    types = {name: loaded.manifest.exchanges[name].type for name in venues}
    try:
        report = asyncio.run(
            measure_latency(
                venues,
                samples=args.samples,
                orders=args.orders,
                interval_s=args.interval,
                offset_bps=args.offset_bps,
                timeout_s=args.timeout,
                venue_types=types,
                risk=_risk_chain(loaded, registry),
            )
        )
    except LatencyError as exc:
        print(f"quoteforge latency: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"latency from {report.host} ({report.started_at}), {args.samples} samples per measure")
    print(report.table())
    for measure in report.measures:
        if measure.errors:
            print(f"{measure.venue} {measure.name}: {measure.errors[0]}", file=sys.stderr)
    if report.left_open:
        print(
            "WARNING: probe orders still open at the venue, cancel them by hand: "
            + ", ".join(report.left_open),
            file=sys.stderr,
        )
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"--json {args.json}: {exc}", file=sys.stderr)
            return EXIT_ERROR
    return EXIT_OK if report.ok else EXIT_ERROR


# The command registration is appended here, apart from the probe, with its own imports.
from quoteforge import hookimpl  # noqa: E402
from quoteforge.registry import RegisterCommand  # noqa: E402


@hookimpl
def quoteforge_register_commands(register: RegisterCommand) -> None:
    register(
        "latency",
        latency_main,
        help="measure REST, websocket and order-ack latency (p50/p99) to each venue",
    )
