"""Live dashboard of a run folder: a small local web app that tails trace.jsonl and the
journal as they grow and charts PnL, inventory, our quotes against the book, fills,
book state and alerts per market (``quoteforge dashboard RUN_DIR``).

The page shows positions and PnL, so the app answers only requests addressed to a name
it serves (Host) and coming from its own page (Origin, Sec-Fetch-Site): a web page on
another site cannot read it through DNS rebinding or a cross-origin fetch. It listens on
loopback unless told otherwise."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import sqlite3
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "LOOPBACK_NAMES",
    "DashboardError",
    "MarketView",
    "RunFolderTail",
    "create_app",
    "dashboard_main",
    "display",
]

INSTALL_HINT = 'pip install "quoteforge[dashboard]"'
TRACE_FILE = "trace.jsonl"
JOURNAL_FILE = "journal.sqlite"
DEFAULT_PORT = 8765
#: Host names every dashboard answers to: the loopback addresses and ``localhost``.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_TERMINAL = {"filled", "cancelled", "rejected", "expired"}
_TICK_FIELDS = ("mid", "bid", "ask", "our_bid", "our_ask", "inventory", "pnl")


class DashboardError(Exception):
    """The dashboard cannot show this path; the message says what it expects."""


def display(kind: str, value: float | int | None) -> str:
    """How the page shows a number (the same text the JSON API sends)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if kind == "money":
        return f"{value:,.2f}"
    if kind == "count":
        return f"{int(value):,}"
    return f"{value:,.6g}"


@dataclass
class MarketView:
    """Everything the dashboard knows about one market so far."""

    key: str
    ticks: dict[str, list[Any]] = field(
        default_factory=lambda: {name: [] for name in ("t", "state", *_TICK_FIELDS)}
    )
    last: dict[str, Any] = field(default_factory=dict)
    fills: list[tuple[int, str, float, float]] = field(default_factory=list)  # all, like ticks
    fill_count: int = 0
    volume: float = 0.0
    notional: float = 0.0
    inventory_lots: int = 0
    resyncs: int = 0
    book_state: str = "-"
    breaker: str = "ok"
    halted: bool = False
    orders_placed: int = 0
    open_orders: set[str] = field(default_factory=set)


class RunFolderTail:
    """Reads a run folder incrementally: each ``poll()`` consumes only what was appended
    since the last one (a half-written last line waits for the next poll)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.exists():
            raise DashboardError(
                f"{path}: no such file or folder; pass a run folder or its {JOURNAL_FILE}"
            )
        if path.is_dir():
            run_dir = path
            journal = path / JOURNAL_FILE
        elif path.suffix in (".sqlite", ".db", ".sqlite3"):
            run_dir = path.parent
            journal = path
        elif path.name == TRACE_FILE:
            run_dir = path.parent
            journal = path.parent / JOURNAL_FILE
        else:
            raise DashboardError(
                f"{path}: expected a run folder (holding {TRACE_FILE}) or a journal file "
                f"({JOURNAL_FILE})"
            )
        self.run_dir = run_dir
        self.trace_path = run_dir / TRACE_FILE
        self.journal_path = journal
        started = any(
            (run_dir / name).exists() for name in (TRACE_FILE, "run.json", "manifest.yaml")
        )
        # A run that is just starting has no trace yet; anything else is a wrong folder.
        if path.is_dir() and not started and not journal.exists():
            raise DashboardError(
                f"{path}: not a run folder (no {TRACE_FILE}, {JOURNAL_FILE} or run.json); "
                "pass the folder a run writes, e.g. runs/quickstart-20260101-000000-abc123"
            )
        self.markets: dict[str, MarketView] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=500)
        self.event_count = 0
        self.alert_count = 0
        self.info: dict[str, Any] = {}
        self.latest_t = 0
        self.first_t: int | None = None
        self.bad_lines = 0
        self._offset = 0
        self._journal_seq = 0
        self._order_market: dict[str, str] = {}

    # -- reading ---------------------------------------------------------------------------
    def poll(self) -> bool:
        """Read what was appended since the last poll; True when anything was new."""
        fresh = self._read_run_info()
        fresh = self._read_trace() or fresh
        return self._read_journal() or fresh

    @property
    def has_trace(self) -> bool:
        return self.trace_path.exists()

    def _read_run_info(self) -> bool:
        path = self.run_dir / "run.json"
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False  # absent, or being rewritten right now: next poll
        changed = info != self.info
        self.info = info
        return changed

    def _read_trace(self) -> bool:
        try:
            size = self.trace_path.stat().st_size
        except OSError:
            return False
        if size < self._offset:
            # The file was replaced (a new run in the same folder): start over.
            self._reset()
        if size == self._offset:
            return False
        with self.trace_path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(size - self._offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return False
        self._offset += end + 1
        for line in chunk[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(record, dict):
                self._apply(record)
        return True

    def _reset(self) -> None:
        self.markets.clear()
        self.events.clear()
        self.event_count = self.alert_count = 0
        self.latest_t = 0
        self.first_t = None
        self._offset = 0

    def _market(self, key: str) -> MarketView:
        view = self.markets.get(key)
        if view is None:
            view = self.markets[key] = MarketView(key)
        return view

    def _apply(self, record: dict[str, Any]) -> None:
        kind = record.get("type")
        t = record.get("t")
        if not isinstance(t, int):
            self.bad_lines += 1
            return
        self.latest_t = max(self.latest_t, t)
        if self.first_t is None or t < self.first_t:
            self.first_t = t
        market = record.get("market")
        if kind == "tick" and isinstance(market, str):
            view = self._market(market)
            view.ticks["t"].append(t)
            view.ticks["state"].append(record.get("state"))
            for name in _TICK_FIELDS:
                view.ticks[name].append(record.get(name))
            view.last = record
            view.book_state = str(record.get("state") or "-")
        elif kind == "fill" and isinstance(market, str):
            view = self._market(market)
            price, qty = float(record.get("price") or 0), float(record.get("qty") or 0)
            side = str(record.get("side"))
            view.fills.append((t, side, price, qty))
            view.fill_count += 1
            view.volume += qty
            view.notional += price * qty
        elif kind == "event":
            self._apply_event(t, market, str(record.get("event")), str(record.get("detail", "")))

    def _apply_event(self, t: int, market: Any, event: str, detail: str) -> None:
        self.event_count += 1
        self.events.append({"t": t, "market": market, "event": event, "detail": detail})
        views = [self._market(market)] if isinstance(market, str) else []
        if event == "book_state" and views:
            transition = detail.split(":", 1)[0]
            new = transition.split("->")[-1].strip()
            views[0].book_state = new or views[0].book_state
            if new == "RESYNCING":
                views[0].resyncs += 1
        elif event == "reconnect" and views:
            views[0].resyncs += 1
        elif event == "alert":
            self.alert_count += 1
            kind = detail.split(":", 1)[0]
            if kind in ("breaker", "kill"):
                # A run-wide trip (no market) stops every market.
                for view in views or self.markets.values():
                    view.breaker = f"TRIPPED ({kind})"
        elif event == "breaker_reset":
            for view in views or self.markets.values():
                view.breaker = "ok"
        elif event == "strategy_halted" and views:
            views[0].halted = True

    def _read_journal(self) -> bool:
        if not self.journal_path.exists():
            return False
        try:
            conn = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True, timeout=1)
        except sqlite3.Error:
            return False
        fresh = False
        try:
            while True:
                rows = conn.execute(
                    "SELECT seq, kind, ts_ns, market, payload FROM journal WHERE seq > ? "
                    "ORDER BY seq LIMIT 20000",
                    (self._journal_seq,),
                ).fetchall()
                if not rows:
                    break
                fresh = True
                for seq, kind, ts_ns, market, payload in rows:
                    self._journal_seq = seq
                    try:
                        data = json.loads(payload)
                    except ValueError:
                        self.bad_lines += 1
                        continue
                    self._apply_journal(kind, int(ts_ns), market, data)
        except sqlite3.Error:
            pass  # no table yet, or the writer holds a lock: the next poll goes on
        finally:
            conn.close()
        return fresh

    def _apply_journal(self, kind: str, ts_ns: int, market: str, data: dict[str, Any]) -> None:
        order = data.get("order")
        if isinstance(order, dict) and market:
            view = self._market(market)
            cid = str(order.get("client_id"))
            if cid not in self._order_market:
                self._order_market[cid] = market
                view.orders_placed += 1
            if str(order.get("status")) in _TERMINAL:
                view.open_orders.discard(cid)
            else:
                view.open_orders.add(cid)
        fill = data.get("fill")
        if kind == "fill" and isinstance(fill, dict) and market and not self.has_trace:
            # Journal only (no trace): prices in ticks and sizes in lots, as journaled.
            view = self._market(market)
            lots = int(fill.get("qty_lots", 0))
            side, price = str(fill.get("side")), float(fill.get("price_ticks", 0))
            view.inventory_lots += (1 if side == "buy" else -1) * lots
            view.fill_count += 1
            view.volume += lots
            view.fills.append((ts_ns, side, price, lots))
            view.ticks["t"].append(ts_ns)
            view.ticks["inventory"].append(view.inventory_lots)
            self.latest_t = max(self.latest_t, ts_ns)
            if self.first_t is None:
                self.first_t = ts_ns

    # -- output ----------------------------------------------------------------------------
    def snapshot(self, max_points: int = 1500) -> dict[str, Any]:
        """The JSON the page polls: series thinned to ``max_points`` per market."""
        if max_points < 2:
            raise ValueError(f"max_points must be at least 2, got {max_points}")
        markets = []
        for key in sorted(self.markets):
            view = self.markets[key]
            last = view.last
            values = {
                "pnl": last.get("pnl"),
                "realized": last.get("realized"),
                "fees": last.get("fees"),
                "inventory": last.get("inventory") if self.has_trace else view.inventory_lots,
                "mid": last.get("mid"),
                "fills": view.fill_count,
                "volume": view.volume,
                "notional": view.notional if self.has_trace else None,
                "open_orders": len(view.open_orders),
                "orders": view.orders_placed,
                "resyncs": view.resyncs,
            }
            kinds = {"pnl": "money", "realized": "money", "fees": "money", "notional": "money"}
            kinds |= dict.fromkeys(("fills", "open_orders", "orders", "resyncs"), "count")
            shown = {name: display(kinds.get(name, "number"), v) for name, v in values.items()}
            picks = _thin({"t": list(range(len(view.fills)))}, max_points)["t"]  # whole run
            markets.append(
                {
                    "market": key,
                    "slug": _slug(key),
                    "values": values,
                    "display": shown,
                    "book_state": view.book_state,
                    "breaker": view.breaker,
                    "halted": view.halted,
                    "series": _thin(view.ticks, max_points),
                    "fills": [list(view.fills[i]) for i in picks],
                    "stale": _stale_spans(view.ticks["t"], view.ticks["state"]),
                }
            )
        info = self.info
        status = "finished" if info.get("finished_at") else ("running" if info else "unknown")
        return {
            "run_id": info.get("run_id", self.run_dir.name),
            "name": info.get("name"),
            "mode": info.get("mode"),
            "status": status,
            "stop_reason": info.get("stop_reason"),
            "source": "trace" if self.has_trace else "journal",
            "units": "quote asset, base units" if self.has_trace else "ticks and lots",
            "first_t": self.first_t,
            "latest_t": self.latest_t,
            "markets": markets,
            "events": list(self.events)[-200:][::-1],
            "event_count": self.event_count,
            "alert_count": self.alert_count,
            "bad_lines": self.bad_lines,
        }


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in key)


def _thin(series: dict[str, list[Any]], max_points: int) -> dict[str, list[Any]]:
    n = len(series["t"])
    if n <= max_points:
        return {name: list(values) for name, values in series.items() if len(values) == n}
    step = math.ceil(n / max_points)
    picks = list(range(0, n, step))
    if picks[-1] != n - 1:
        picks.append(n - 1)
    return {name: [values[i] for i in picks] for name, values in series.items() if len(values) == n}


def _stale_spans(times: list[int], states: list[Any]) -> list[list[int]]:
    """Intervals during which the book was not LIVE."""
    spans: list[list[int]] = []
    start: int | None = None
    for t, state in zip(times, states, strict=False):
        if state not in (None, "LIVE"):
            if start is None:
                start = t
        elif start is not None:
            spans.append([start, t])
            start = None
    if start is not None and times:
        spans.append([start, times[-1]])
    return spans


# -- web app ----------------------------------------------------------------------------------


def _plotly_js() -> bytes:
    try:
        from importlib.resources import files

        return (files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        from plotly.offline import get_plotlyjs

        return str(get_plotlyjs()).encode("utf-8")


def host_name(value: str) -> str | None:
    """The host of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), lowered;
    None when it is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        name = value[1:end]
    else:
        name, sep, port = value.partition(":")
        if sep and not port.isdigit():
            return None
    return name.rstrip(".") or None


def origin_host(origin: str) -> str | None:
    """The host of an ``Origin`` header of our own scheme; None for anything else."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if parts.scheme != "http" or not host:
        return None
    return host.rstrip(".")


def served_names(extra: Iterable[str]) -> frozenset[str]:
    names = set(LOOPBACK_NAMES)
    for name in extra:
        try:
            host: str | None = str(ipaddress.ip_address(name.strip().strip("[]")))
        except ValueError:
            host = host_name(name)
        if host is None:
            raise ValueError(f"not a host name or address: {name!r}")
        names.add(host)
    return frozenset(names)


def create_app(
    source: RunFolderTail | str | Path,
    *,
    poll_interval: float = 1.0,
    allowed_hosts: Iterable[str] = (),
) -> web.Application:
    """The dashboard app: ``/`` (the page), ``/api/state`` (JSON), ``/plotly.min.js``.

    Requests are answered only when their ``Host`` is a loopback name or one of
    ``allowed_hosts``, and, when the browser says where they come from (``Origin``,
    ``Sec-Fetch-Site``), only from the dashboard's own page; anything else gets 403.
    """
    from aiohttp import web

    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
    served = served_names(allowed_hosts)
    listed = ", ".join(sorted(served))

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        host = host_name(request.headers.get("Host", ""))
        if host is None or host not in served:
            raise web.HTTPForbidden(
                text=f"this dashboard does not answer to host {request.host!r}; it serves "
                f"{listed} (start it with --allow-host NAME to add a name)\n"
            )
        origin = request.headers.get("Origin")
        if origin is not None and origin_host(origin) not in served:
            raise web.HTTPForbidden(text=f"cross-origin request from {origin!r} refused\n")
        site = request.headers.get("Sec-Fetch-Site", "same-origin")
        navigation = request.headers.get("Sec-Fetch-Mode") == "navigate"
        if site not in ("same-origin", "none") and not navigation:
            raise web.HTTPForbidden(text=f"{site} request refused\n")
        response = await handler(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    tail = source if isinstance(source, RunFolderTail) else RunFolderTail(source)
    lock = asyncio.Lock()
    plotly_js: list[bytes] = []
    page = _PAGE.replace("__POLL_MS__", str(int(poll_interval * 1000))).replace(
        "__TITLE__", _html_escape(tail.run_dir.name)
    )

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    async def state(request: web.Request) -> web.Response:
        try:
            max_points = int(request.query.get("max_points", "1500"))
        except ValueError:
            raise web.HTTPBadRequest(text="max_points must be an integer, e.g. 1500") from None
        async with lock:
            # Parsing a large new chunk of trace must not stall a run in the same loop.
            await asyncio.to_thread(tail.poll)
            try:
                body = tail.snapshot(max_points)
            except ValueError as exc:
                raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response(body, dumps=lambda o: json.dumps(o, allow_nan=False))

    async def script(request: web.Request) -> web.Response:
        if not plotly_js:
            plotly_js.append(await asyncio.to_thread(_plotly_js))
        return web.Response(
            body=plotly_js[0],
            content_type="application/javascript",
            headers={"Cache-Control": "max-age=86400"},
        )

    app = web.Application(middlewares=[guard])
    app.router.add_get("/", index)
    app.router.add_get("/api/state", state)
    app.router.add_get("/plotly.min.js", script)
    return app


def _html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def dashboard_main(argv: list[str] | None = None) -> int:
    """``quoteforge dashboard RUN_DIR_OR_JOURNAL [--port N] [--host H --expose]
    [--allow-host NAME] [--poll S]``."""
    parser = argparse.ArgumentParser(
        prog="quoteforge dashboard",
        description="Serve a live dashboard of a run folder (it follows the run as it grows).",
    )
    parser.add_argument("path", type=Path, help="run folder, or its journal.sqlite")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default %(default)s; the page shows positions and PnL, "
        "so keep it on loopback and reach it through an SSH tunnel; any other interface "
        "needs --expose)",
    )
    parser.add_argument(
        "--expose",
        action="store_true",
        help="allow --host to be an interface other than loopback (anyone who can reach "
        "it sees positions and PnL)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests addressed to this host name (the Host header), e.g. the "
        "name of the machine when exposed; loopback names are always served",
    )
    parser.add_argument("--poll", type=float, default=1.0, help="page refresh, seconds")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"--port must be 1..65535, got {args.port}", file=sys.stderr)
        return 2
    if args.poll <= 0:
        print(f"--poll must be a positive number of seconds, got {args.poll}", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and not args.expose:
        print(
            f"--host {args.host} is not a loopback address: the dashboard shows positions "
            "and PnL to anyone who reaches it. Add --expose to listen there anyway, or keep "
            "the default and use an SSH tunnel (ssh -L 8765:127.0.0.1:8765 HOST)",
            file=sys.stderr,
        )
        return 2
    allowed = list(args.allow_host)
    if not is_loopback(args.host) and args.host not in ("0.0.0.0", "::", ""):
        allowed.append(args.host)  # requests to the address we listen on are ours
    try:
        served_names(allowed)
    except ValueError as exc:
        print(f"--allow-host: {exc}", file=sys.stderr)
        return 2
    try:
        import aiohttp  # noqa: F401
        import plotly  # noqa: F401
    except ImportError as exc:
        print(f"the dashboard needs: {INSTALL_HINT} ({exc})", file=sys.stderr)
        return 1
    try:
        tail = RunFolderTail(args.path)
    except DashboardError as exc:
        print(f"dashboard: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(tail, args.host, args.port, args.poll, allowed))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(
            f"dashboard: cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
            "pick another with --port",
            file=sys.stderr,
        )
        return 1
    return 0


async def _serve(
    tail: RunFolderTail, host: str, port: int, poll: float, allowed_hosts: list[str]
) -> None:
    from aiohttp import web

    app = create_app(tail, poll_interval=poll, allowed_hosts=allowed_hosts)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        shown = f"[{host}]" if ":" in host else host
        print(f"dashboard of {tail.run_dir} at http://{shown}:{port}/  (Ctrl-C to stop)")
        if host in ("0.0.0.0", "::") and not allowed_hosts:
            print(
                "listening on every interface, but only loopback names are answered; "
                "add --allow-host NAME for the name others use to reach this machine"
            )
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>quoteforge · __TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
 header{background:#1d2330;color:#fff;padding:10px 18px;display:flex;gap:18px;
  align-items:baseline;flex-wrap:wrap}
 header h1{font-size:18px;margin:0} header .meta{opacity:.8}
 main{padding:12px 18px}
 section.market{background:#fff;border:1px solid #dde1e8;border-radius:6px;margin:0 0 14px;
  padding:10px 12px}
 section.market h2{font-size:16px;margin:0 0 6px;display:flex;gap:10px;align-items:center}
 table.stats{border-collapse:collapse;margin-bottom:4px} .stats th,.stats td{padding:2px 10px;
  text-align:right;white-space:nowrap} .stats th{font-weight:600;color:#5a6272;font-size:12px}
 .badge{font-size:12px;padding:1px 8px;border-radius:10px;color:#fff;background:#7a8190}
 .badge.LIVE,.badge.ok{background:#2f9e44} .badge.STALE,.badge.tripped,.badge.halted{
  background:#e03131} .badge.RESYNCING,.badge.SYNCING{background:#f08c00}
 .chart{height:430px} #events{width:100%;border-collapse:collapse;background:#fff}
 #events td,#events th{border-bottom:1px solid #eceef2;padding:3px 8px;text-align:left;
  font-size:13px} #events tr.alert td{color:#c92a2a;font-weight:600}
 .empty{color:#7a8190}
</style>
<script src="/plotly.min.js"></script>
</head><body>
<header><h1 id="run-id">__TITLE__</h1><span class="meta" id="run-meta">loading…</span>
<span class="meta" id="run-clock"></span></header>
<main><div id="markets"><p class="empty">Waiting for the first samples…</p></div>
<h2>Alerts and events <span class="meta" id="event-count"></span></h2>
<table id="events"><thead><tr><th>time</th><th>market</th><th>event</th><th>detail</th></tr>
</thead><tbody></tbody></table></main>
<script>
"use strict";
const POLL_MS = __POLL_MS__;
const COLUMNS = [["pnl","PnL"],["realized","realized"],["fees","fees"],
  ["inventory","inventory"],["mid","mid"],["fills","fills"],["volume","volume"],
  ["notional","notional"],["open_orders","open orders"],["orders","orders"],
  ["resyncs","resyncs"]];
const iso = t => new Date(t / 1e6).toISOString();
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function section(m) {
  const s = el("section", {class: "market", id: "market-" + m.slug});
  const h = el("h2", {}, m.market);
  h.append(el("span", {class: "badge", id: "state-" + m.slug}),
           el("span", {class: "badge", id: "breaker-" + m.slug}), el("small", {id: "fn-"+m.slug}));
  const table = el("table", {class: "stats"});
  const head = el("tr"), row = el("tr");
  for (const [key, label] of COLUMNS) {
    head.append(el("th", {}, label));
    row.append(el("td", {id: key + "-" + m.slug, class: "value-" + key}));
  }
  table.append(head, row);
  s.append(h, table, el("div", {class: "chart", id: "chart-" + m.slug}));
  return s;
}
function figure(m) {
  const x = m.series.t.map(iso), s = m.series;
  const line = (y, name, color, axis, dash) => ({x, y, name, type: "scatter",
    mode: "lines", yaxis: axis, line: {color, width: 1.5, dash: dash || "solid",
    shape: "hv"}, connectgaps: false});
  const traces = [];
  if (s.bid) traces.push(line(s.bid, "book bid", "#74c0fc", "y"),
    line(s.ask, "book ask", "#ffa8a8", "y"), line(s.our_bid, "our bid", "#1864ab", "y",
    "dot"), line(s.our_ask, "our ask", "#c92a2a", "y", "dot"));
  for (const [side, color, symbol] of [["buy", "#2f9e44", "triangle-up"],
                                       ["sell", "#e8590c", "triangle-down"]]) {
    const f = m.fills.filter(r => r[1] === side);
    traces.push({x: f.map(r => iso(r[0])), y: f.map(r => r[2]), name: side + " fills",
      type: "scatter", mode: "markers", yaxis: "y",
      marker: {color, symbol, size: 6, opacity: 0.75}});
  }
  traces.push(line(s.inventory, "inventory", "#5f3dc4", "y2"));
  if (s.pnl) traces.push(line(s.pnl, "PnL", "#2b8a3e", "y3"));
  const shapes = m.stale.map(([a, b]) => ({type: "rect", xref: "x", yref: "paper",
    x0: iso(a), x1: iso(b), y0: 0, y1: 1, fillcolor: "#e03131", opacity: 0.12,
    line: {width: 0}}));
  const layout = {margin: {l: 60, r: 20, t: 10, b: 45}, showlegend: true,
    legend: {orientation: "h", y: -0.08}, shapes, hovermode: "x",
    xaxis: {type: "date", anchor: "y3"},
    yaxis: {domain: [0.46, 1], title: {text: "price"}},
    yaxis2: {domain: [0.24, 0.42], title: {text: "inventory"}},
    yaxis3: {domain: [0, 0.2], title: {text: "PnL"}}};
  return {traces, layout};
}
function render(state) {
  document.getElementById("run-id").textContent = state.run_id;
  const meta = [state.mode || "", state.status,
                state.stop_reason ? "(" + state.stop_reason + ")" : "",
                "source: " + state.source, "units: " + state.units];
  document.getElementById("run-meta").textContent = meta.filter(Boolean).join(" · ");
  if (state.latest_t) document.getElementById("run-clock").textContent =
    "run clock " + iso(state.latest_t).replace("T", " ").replace("Z", " UTC");
  const box = document.getElementById("markets");
  if (state.markets.length && box.querySelector(".empty")) box.textContent = "";
  for (const m of state.markets) {
    let s = document.getElementById("market-" + m.slug);
    if (!s) { s = section(m); box.append(s); }
    for (const [key] of COLUMNS)
      document.getElementById(key + "-" + m.slug).textContent = m.display[key];
    const st = document.getElementById("state-" + m.slug);
    st.textContent = m.book_state; st.className = "badge " + m.book_state;
    const br = document.getElementById("breaker-" + m.slug);
    const halted = m.halted ? "strategy halted" : "";
    br.textContent = halted || ("breaker " + m.breaker);
    br.className = "badge " + (m.halted ? "halted" : (m.breaker === "ok" ? "ok" : "tripped"));
    const f = figure(m);
    Plotly.react("chart-" + m.slug, f.traces, f.layout, {displaylogo: false,
      responsive: true});
    document.getElementById("fn-" + m.slug).textContent = m.fills.length < m.values.fills
      ? `fills thinned over the whole run: ${m.fills.length} of ${m.values.fills} shown` : "";
  }
  const body = document.querySelector("#events tbody");
  body.textContent = "";
  for (const e of state.events) {
    const tr = el("tr", {class: e.event === "alert" ? "alert" : ""});
    tr.append(el("td", {}, iso(e.t).slice(11, 23)), el("td", {}, e.market || "(run)"),
              el("td", {}, e.event), el("td", {}, e.detail));
    body.append(tr);
  }
  document.getElementById("event-count").textContent =
    state.event_count + " events, " + state.alert_count + " alerts";
  document.body.dataset.updated = String(state.latest_t);
}
async function poll() {
  try {
    const resp = await fetch("/api/state");
    if (resp.ok) render(await resp.json());
  } catch (err) {
    document.getElementById("run-meta").textContent = "dashboard unreachable: " + err;
  }
  setTimeout(poll, POLL_MS);
}
poll();
</script></body></html>
"""
