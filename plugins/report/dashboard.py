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
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quoteforge.plugins.report.dashboard_control import ControlRefusedError, forward
from quoteforge.plugins.report.dashboard_guard import (
    LOOPBACK_NAMES,
    host_name,
    is_loopback,
    origin_host,
    served_names,
)
from quoteforge.plugins.report.dashboard_page import PAGE
from quoteforge.plugins.report.dashboard_tail import (
    DashboardError,
    MarketView,
    RunFolderTail,
    display,
)

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
    "host_name",
    "is_loopback",
    "origin_host",
    "served_names",
]

INSTALL_HINT = 'pip install "quoteforge[dashboard]"'
DEFAULT_PORT = 8765


# -- web app ----------------------------------------------------------------------------------


def _plotly_js() -> bytes:
    try:
        from importlib.resources import files

        return (files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        from plotly.offline import get_plotlyjs

        return str(get_plotlyjs()).encode("utf-8")


def create_app(
    source: RunFolderTail | str | Path,
    *,
    poll_interval: float = 1.0,
    allowed_hosts: Iterable[str] = (),
) -> web.Application:
    """The dashboard app: ``/`` (the page), ``/api/state`` (JSON), ``/plotly.min.js`` and
    ``/api/control/...`` (the page's buttons, passed on with the operator's token to the
    run's control API; see ``dashboard_control``).

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
    page = PAGE.replace("__POLL_MS__", str(int(poll_interval * 1000))).replace(
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

    async def control(request: web.Request) -> web.Response:
        # The still-encoded path after /api/control/, so a client id or name round-trips.
        path = request.raw_path.split("?", 1)[0][len("/api/control/") :]
        body = await request.read() if request.method == "POST" else b""
        try:
            status, answer = await forward(
                tail.run_dir,
                request.method,
                path,
                request.headers.get("Authorization", ""),
                body,
            )
        except ControlRefusedError as refused:
            status, answer = refused.status, {"error": str(refused)}
        return web.json_response(answer, status=status)

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app.router.add_get("/", index)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/control/{path:.+}", control)
    app.router.add_post("/api/control/{path:.+}", control)
    app.router.add_get("/plotly.min.js", script)
    return app


def _html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


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
