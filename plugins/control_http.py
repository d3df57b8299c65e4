"""HTTP control API of a running run: scripts and chat bots pause and resume a strategy,
pull quotes, pull the kill switch, reset latched breakers and change a strategy's params
while the run trades (``docs/operations.md``, "Control API").

Off unless ``QUOTEFORGE_CONTROL_TOKEN`` is set in the run's environment. The server then
starts inside the run's process when the run starts (``quoteforge_run_started``) and stops
with it; it listens on ``QUOTEFORGE_CONTROL_ADDR`` (default ``127.0.0.1:0``: a free
loopback port) and writes where in ``<run_dir>/control.json`` (mode 0600, without the
token). A non-loopback address also needs ``QUOTEFORGE_CONTROL_EXPOSE=1``.

Every request needs ``Authorization: Bearer <token>`` (401 otherwise, and nothing
changes) and a ``Host`` the server answers to (403 otherwise, as the dashboard checks it:
a web page cannot reach the API through DNS rebinding). Every action is journaled as a
``control`` record: who (``QUOTEFORGE_CONTROL_WHO``, default ``api``), what, when and the
result; never the token. Actions go through the run's own methods, so the order gate's
kill and halt logic applies to them exactly as to everything else.

Handlers run in the run's event loop between two turns of the run, never concurrently
with it. In a split run the strategy node (the engine) serves the API: its cancels go to
the execution node as signed intents and its kill switch as the bus's kill message. The
dashboard's buttons call it through ``quoteforge.plugins.report.dashboard_control``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from quoteforge import hookimpl
from quoteforge.journal import JournalRecord
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.plugins.report.dashboard_control import CONTROL_FILE
from quoteforge.plugins.report.dashboard_guard import (
    host_name,
    is_loopback,
    origin_host,
    served_names,
)

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "CONTROL_FILE",
    "ENV_ADDR",
    "ENV_ALLOW_HOSTS",
    "ENV_EXPOSE",
    "ENV_TOKEN",
    "ENV_WHO",
    "MIN_TOKEN_LENGTH",
    "ControlServer",
    "ControlSettings",
    "control_server_of",
    "create_control_app",
    "openapi_document",
    "quoteforge_run_started",
    "quoteforge_run_stopped",
    "settings_from_env",
]

ENV_TOKEN = "QUOTEFORGE_CONTROL_TOKEN"
ENV_ADDR = "QUOTEFORGE_CONTROL_ADDR"
ENV_EXPOSE = "QUOTEFORGE_CONTROL_EXPOSE"
ENV_WHO = "QUOTEFORGE_CONTROL_WHO"
ENV_ALLOW_HOSTS = "QUOTEFORGE_CONTROL_ALLOW_HOSTS"
MIN_TOKEN_LENGTH = 16
INSTALL_HINT = 'pip install "quoteforge[dashboard]"'


class ControlSettingsError(ValueError):
    """The control API's environment is unusable; the message says which variable."""


@dataclass(frozen=True)
class ControlSettings:
    """Where the control API listens, its token and who its actions are journaled as."""

    token: str
    host: str = "127.0.0.1"
    port: int = 0
    who: str = "api"
    allow_hosts: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never show the token
        return f"ControlSettings(host={self.host!r}, port={self.port}, who={self.who!r})"


def _parse_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ControlSettingsError(
            f"{ENV_ADDR}={text!r} is not HOST:PORT; write e.g. 127.0.0.1:8766, or "
            "127.0.0.1:0 for a free port ([::1]:8766 for IPv6)"
        )
    return host, int(port)


def settings_from_env(environ: dict[str, str] | None = None) -> ControlSettings | None:
    """The control API's settings from the environment; None when ``QUOTEFORGE_CONTROL_*``
    asks for no API at all. Raises ControlSettingsError when the variables are set but
    unusable (no or short token, bad address, non-loopback address without the flag)."""
    env = dict(os.environ if environ is None else environ)
    token = env.get(ENV_TOKEN, "")
    asked = any(env.get(name) for name in (ENV_TOKEN, ENV_ADDR, ENV_EXPOSE, ENV_ALLOW_HOSTS))
    if not asked:
        return None
    if not token:
        raise ControlSettingsError(
            f"{ENV_ADDR}/{ENV_EXPOSE} is set but {ENV_TOKEN} is not: the control API needs "
            f"a token; export {ENV_TOKEN} with a random secret (e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    if len(token) < MIN_TOKEN_LENGTH or token != token.strip():
        raise ControlSettingsError(
            f"{ENV_TOKEN} must be at least {MIN_TOKEN_LENGTH} characters without surrounding "
            "spaces; use a random secret, e.g. from `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`"
        )
    host, port = _parse_addr(env.get(ENV_ADDR) or "127.0.0.1:0")
    expose = env.get(ENV_EXPOSE, "")
    if expose not in ("", "0", "1"):
        raise ControlSettingsError(f"{ENV_EXPOSE} must be 1 (or unset), got {expose!r}")
    if not is_loopback(host) and expose != "1":
        raise ControlSettingsError(
            f"{ENV_ADDR}={host}:{port} is not a loopback address: anyone who can reach it "
            f"may try the token. Set {ENV_EXPOSE}=1 to bind it anyway (behind a firewall "
            "or TLS proxy), or use 127.0.0.1"
        )
    allow = tuple(h for h in env.get(ENV_ALLOW_HOSTS, "").split(",") if h.strip())
    try:
        served_names(allow)
    except ValueError as exc:
        raise ControlSettingsError(f"{ENV_ALLOW_HOSTS}: {exc}") from None
    who = env.get(ENV_WHO, "").strip() or "api"
    return ControlSettings(token=token, host=host, port=port, who=who, allow_hosts=allow)


# -- the API --------------------------------------------------------------------------------

_ERROR = {
    "description": "refused; `error` says why and what to do",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}
_RESULT = {
    "description": "done; `result` says what happened",
    "content": {"application/json": {"schema": {"type": "object"}}},
}
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "the strategy's name in the manifest",
    "schema": {"type": "string"},
}


def _op(summary: str, body: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": _RESULT,
            "401": {**_ERROR, "description": "missing or wrong token; nothing changed"},
            "403": {**_ERROR, "description": "Host or Origin this server does not answer"},
            "409": {**_ERROR, "description": "the run is stopping; nothing changed"},
        },
        **extra,
    }
    if body is not None:
        op["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": body}},
        }
        op["responses"]["400"] = {**_ERROR, "description": "the body is not a JSON object"}
        op["responses"]["422"] = {**_ERROR, "description": "the body's values are refused"}
    return op


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every endpoint the control API serves."""
    empty: dict[str, Any] = {"type": "object", "additionalProperties": False}
    named = {"parameters": [_NAME]}
    not_found = {**_ERROR, "description": "no strategy of that name"}
    paths: dict[str, Any] = {
        "/openapi.json": {"get": _op("This document.")},
        "/state": {
            "get": _op(
                "Strategies (halted or not), markets (book state, best prices, position, "
                "working orders) and breakers in force."
            )
        },
        "/kill": {
            "post": _op(
                "The kill switch: halt every strategy, cancel every order, stop the run.",
                empty,
            )
        },
        "/pull-quotes": {
            "post": _op(
                "Cancel the working quotes of one strategy (or all); it quotes again at its "
                "next decision (pause it to keep it out).",
                {
                    "type": "object",
                    "properties": {"strategy": {"type": "string"}},
                    "additionalProperties": False,
                },
            )
        },
        "/breakers/reset": {
            "post": _op(
                "Reset latched breakers: `all` (default), `run`, a breaker kind or a market.",
                {
                    "type": "object",
                    "properties": {"target": {"type": "string", "default": "all"}},
                    "additionalProperties": False,
                },
            )
        },
        "/orders/{client_id}/cancel": {
            "post": _op(
                "Cancel one working order by its client id, through the order manager as "
                "the execution policy cancels a quote; its strategy may quote again at its "
                "next decision (pause it to keep it out).",
                empty,
                parameters=[
                    {
                        "name": "client_id",
                        "in": "path",
                        "required": True,
                        "description": "the order's client id (GET /state lists the working ones)",
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
        "/strategies/{name}/pause": {
            "post": _op(
                "Halt a strategy: its quotes are pulled and the order gate refuses its new "
                "orders until it is resumed.",
                empty,
                **named,
            )
        },
        "/strategies/{name}/resume": {
            "post": _op("Let a paused (or halted) strategy quote again.", empty, **named)
        },
        "/strategies/{name}/params": {
            "post": _op(
                "Change strategy params, validated exactly like a manifest edit "
                "(`strategies.<name>.params.<key>`); refused with the manifest's message "
                "(422) and the running params kept.",
                {"type": "object", "minProperties": 1},
                **named,
            )
        },
    }
    for path, item in paths.items():
        if path.startswith("/strategies/"):
            item["post"]["responses"]["404"] = not_found
    paths["/pull-quotes"]["post"]["responses"]["404"] = not_found
    cancel = paths["/orders/{client_id}/cancel"]["post"]["responses"]
    cancel["404"] = {**_ERROR, "description": "no order with that client id"}
    cancel["409"] = {**_ERROR, "description": "the order is no longer working; nothing sent"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "quoteforge run control",
            "version": "1",
            "description": "Control of one running quoteforge run. Every request needs "
            f"`Authorization: Bearer <{ENV_TOKEN}>`; every action is journaled.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def _decimal_str(value: Any) -> str:
    return format(value.normalize(), "f")


def run_state(run: Any) -> dict[str, Any]:
    """What ``GET /state`` answers: the run, its strategies, markets and breakers."""
    working: dict[str, int] = {}
    orders = []
    for order in run.orders.all_working():
        working[order.market] = working.get(order.market, 0) + 1
        orders.append(
            {
                "client_id": order.client_id,
                "market": order.market,
                "strategy": order.strategy,
                "side": order.side.name.lower(),
                "status": order.status.value,
            }
        )
    markets = {}
    for key, mr in run.markets.items():
        inst = mr.instrument
        best = {}
        for side, level in (("best_bid", mr.book.best_bid()), ("best_ask", mr.book.best_ask())):
            best[side] = None if level is None else _decimal_str(level[0] * inst.tick_size)
        markets[key] = {
            "strategy": mr.owner.name,
            "book_state": mr.book.state.name,
            **best,
            "position": _decimal_str(run.portfolio.position(key)),
            "working_orders": working.get(key, 0),
        }
    breakers = run.breakers
    return {
        "run_id": run.run_id,
        "mode": run.mode,
        "killed": run.killed,
        "stopping": run.stop_requested,
        "stop_reason": run.stop_reason,
        "strategies": {
            name: {
                "type": srt.type,
                "halted": srt.halted,
                "errors": srt.errors,
                "markets": list(srt.markets),
            }
            for name, srt in run.strategies.items()
        },
        "markets": markets,
        "orders": orders,
        "breakers": None
        if breakers is None
        else {
            "state": breakers.state(),
            "trips": [
                {
                    "kind": t.kind,
                    "mode": t.mode,
                    "market": t.market,
                    "reason": t.reason,
                    "ts_ns": t.ts_ns,
                }
                for t in breakers.trips
            ],
        },
    }


def _breakers_holding(run: Any, strategy: str) -> str:
    """The breaker trips in force on strategy ``strategy``'s markets (its own or
    run-wide), as ``kind on market`` items; "" when none."""
    breakers = run.breakers
    if breakers is None:
        return ""
    markets = set(run.strategies[strategy].markets)
    held = [t for t in breakers.trips if t.market is None or t.market in markets]
    return ", ".join(f"{t.kind} ({t.mode}) on {t.market or 'the whole run'}" for t in held)


class _RefusedError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_control_app(run: Any, settings: ControlSettings) -> web.Application:
    """The control API over ``run`` (see the module docstring and ``openapi_document``)."""
    from aiohttp import web

    names = list(settings.allow_hosts)
    if not is_loopback(settings.host) and settings.host not in ("0.0.0.0", "::"):
        names.append(settings.host)
    served = served_names(names)
    listed = ", ".join(sorted(served))
    expected = f"Bearer {settings.token}".encode()
    who = settings.who
    seq = [0]

    def error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        host = host_name(request.headers.get("Host", ""))
        if host is None or host not in served:
            return error(
                403,
                f"this control API does not answer to host {request.host!r}; it serves "
                f"{listed} (add a name with {ENV_ALLOW_HOSTS})",
            )
        origin = request.headers.get("Origin")
        if origin is not None and origin_host(origin) not in served:
            return error(403, f"cross-origin request from {origin!r} refused")
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            logger.warning(
                "control API: {} {} refused: missing or wrong token",
                request.method,
                request.path,
            )
            return error(
                401,
                f"missing or wrong token: send the header 'Authorization: Bearer <{ENV_TOKEN}>'",
            )
        response = await handler(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def journal(what: str, body: dict[str, Any] | None, status: int, result: Any) -> None:
        seq[0] += 1
        now = run.clock.now_ns()
        run.journal.append(
            JournalRecord(
                f"control-{run.run_id}-{seq[0]}-{time.time_ns()}",
                "control",
                now,
                "",
                {
                    "who": who,
                    "what": what,
                    "request": body,
                    "when": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "status": status,
                    "result": result,
                },
            )
        )

    async def body_of(request: web.Request, allowed: set[str] | None) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise _RefusedError(400, f"the body is not JSON: {exc}") from None
        except RecursionError:
            raise _RefusedError(
                400, "the body is not JSON this API reads: nested too deep"
            ) from None
        if not isinstance(body, dict):
            raise _RefusedError(400, f"the body must be a JSON object, got {type(body).__name__}")
        if allowed is not None:
            unknown = sorted(set(body) - allowed)
            if unknown:
                known = ", ".join(sorted(allowed)) or "nothing"
                raise _RefusedError(422, f"unknown field(s) {unknown}: this action takes {known}")
        return body

    def strategy_of(request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in run.strategies:
            raise _RefusedError(
                404, f"no strategy {name!r}; this run has {', '.join(sorted(run.strategies))}"
            )
        return name

    def action(what: str, allowed: set[str] | None, act: Any) -> Any:
        async def handle(request: web.Request) -> web.Response:
            label = what.format(**request.match_info)
            body: dict[str, Any] | None = None
            try:
                body = await body_of(request, allowed)
                if run.stop_requested:
                    raise _RefusedError(
                        409, f"the run is stopping ({run.stop_reason}); nothing changed"
                    )
                result = act(request, body)
            except _RefusedError as refused:
                if not run.stop_requested:
                    journal(label, body, refused.status, str(refused))
                logger.warning("control API: {} by {} refused: {}", label, who, refused)
                return error(refused.status, str(refused))
            journal(label, body, 200, result)
            logger.warning("control API: {} by {}: {}", label, who, result)
            return web.json_response({"result": result})

        return handle

    def kill(request: web.Request, body: dict[str, Any]) -> str:
        run.kill(f"control API ({who})")
        # The cancels are sent, not yet confirmed (a split run's execution node may even
        # be out of reach): say what is still working, for the caller to check.
        working = len(run.orders.all_working())
        return (
            "kill switch pulled: every order is being cancelled and the run stops; "
            f"{working} order(s) not yet confirmed cancelled (GET /state shows them; "
            "check the venue if they stay)"
        )

    def pull(request: web.Request, body: dict[str, Any]) -> str:
        strategy = body.get("strategy")
        if strategy is not None and not isinstance(strategy, str):
            raise _RefusedError(422, "strategy must be a string: one strategy's name, or left out")
        if strategy is not None and strategy not in run.strategies:
            raise _RefusedError(
                404,
                f"no strategy {strategy!r}; this run has {', '.join(sorted(run.strategies))}",
            )
        run.pull_quotes(strategy)
        return f"quotes of {strategy or 'every strategy'} pulled"

    def reset(request: web.Request, body: dict[str, Any]) -> str:
        target = body.get("target", "all")
        if not isinstance(target, str):
            raise _RefusedError(
                422, "target must be a string: all, run, a breaker kind or a market"
            )
        if run.breakers is None:
            raise _RefusedError(
                409,
                f"nothing to reset ({target!r}): this run has no breakers (add a breakers: "
                "section to the manifest to have them)",
            )
        try:
            cleared = run.reset_breakers(target)
        except ValueError as exc:
            raise _RefusedError(422, str(exc)) from None
        return f"{len(cleared)} breaker trip(s) reset"

    def cancel(request: web.Request, body: dict[str, Any]) -> str:
        cid = request.match_info["client_id"]
        try:
            market = run.cancel_order(cid, f"control API ({who})")
        except KeyError:
            raise _RefusedError(
                404, f"no order {cid!r} in this run; GET /state lists the working orders"
            ) from None
        except ValueError as exc:
            raise _RefusedError(409, str(exc)) from None
        return f"order {cid!r} on {market}: cancel sent"

    def pause(request: web.Request, body: dict[str, Any]) -> str:
        name = strategy_of(request)
        run.pause_strategy(name, f"control API ({who})")
        return f"strategy {name!r} paused: its quotes are pulled"

    def resume(request: web.Request, body: dict[str, Any]) -> str:
        name = strategy_of(request)
        try:
            run.resume_strategy(name, f"control API ({who})")
        except ValueError as exc:
            raise _RefusedError(409, str(exc)) from None
        held = _breakers_holding(run, name)
        if held:
            return (
                f"strategy {name!r} resumed, but breaker(s) still hold its markets: "
                f"{held}; POST /breakers/reset releases them"
            )
        return f"strategy {name!r} resumed"

    def params(request: web.Request, body: dict[str, Any]) -> str:
        name = strategy_of(request)
        return _set_params(run, name, body)

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def state(request: web.Request) -> web.Response:
        return web.json_response(run_state(run))

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/state", state)
    app.router.add_post("/kill", action("kill", set(), kill))
    app.router.add_post("/pull-quotes", action("pull-quotes", {"strategy"}, pull))
    app.router.add_post("/breakers/reset", action("breakers/reset", {"target"}, reset))
    app.router.add_post(
        "/orders/{client_id}/cancel", action("orders/{client_id}/cancel", set(), cancel)
    )
    app.router.add_post("/strategies/{name}/pause", action("strategies/{name}/pause", set(), pause))
    app.router.add_post(
        "/strategies/{name}/resume", action("strategies/{name}/resume", set(), resume)
    )
    app.router.add_post(
        "/strategies/{name}/params", action("strategies/{name}/params", None, params)
    )
    return app


def _set_params(run: Any, name: str, body: dict[str, Any]) -> str:
    """Apply ``body`` as ``strategies.<name>.params.<key>`` overrides through the run's
    manifest reload, so they are validated and applied exactly like a manifest edit (of
    the file when the run watches it, else of the manifest it started with)."""
    if not body:
        raise _RefusedError(
            422, 'send the params to change as a JSON object, e.g. {"spread_bps": 5}'
        )
    if run.manifest_path is None:
        raise _RefusedError(
            409, "this run was started without a manifest file; params cannot be reloaded"
        )
    if run.strategies[name].halted:
        raise _RefusedError(
            409,
            f"strategy {name!r} is halted (paused, or after an error): resume it, then "
            "change its params",
        )
    bad = [k for k in body if not k or "=" in k or k.strip() != k]
    if bad:
        raise _RefusedError(422, f"not a param name: {bad}")
    prefix = f"strategies.{name}.params."
    edits = [f"{prefix}{key}={json.dumps(value)}" for key, value in body.items()]
    replaced = {e.split("=", 1)[0] for e in edits}
    before = list(run.loaded.overrides)
    merged = [o for o in before if o.split("=", 1)[0] not in replaced] + edits
    # A run that does not watch its file runs the manifest it started with: an edit
    # waiting in the file is not applied along with these keys.
    text = None if run.manifest.run.watch_manifest else run.loaded.text
    try:
        fresh = load_manifest(run.manifest_path, run.registry, overrides=merged, text=text)
    except ManifestError as exc:
        raise _RefusedError(
            422, str(exc).replace("(from --set)", "(from the control API)")
        ) from None
    key = f"strategies.{name}"
    wanted = fresh.plugin_params.get(key)
    run.loaded.overrides[:] = merged
    changed = run.reload_params(text)
    if run.loaded.plugin_params.get(key) != wanted:
        run.loaded.overrides[:] = before
        why = run.params_refused.pop(name, "") or "the manifest changed meanwhile; see the log"
        raise _RefusedError(409, f"strategy {name!r} did not take the new params: {why}")
    if name not in changed:
        return f"strategy {name!r} already runs with these params: {wanted}"
    return f"strategy {name!r} now runs with {wanted}"


# -- the server in the run's process ---------------------------------------------------------


class ControlServer:
    """The control API of one run, listening while the run runs.

    The socket is bound synchronously (a taken port is reported at start-up); the aiohttp
    runner starts in a task of the run's loop. ``close()`` is synchronous, as the
    run-stopped hook needs: it stops listening at once and finishes the shutdown in the
    loop.
    """

    def __init__(self, run: Any, settings: ControlSettings) -> None:
        from aiohttp import web

        self.run = run
        self.settings = settings
        self.sock = socket.create_server(
            (settings.host, settings.port),
            family=socket.AF_INET6 if ":" in settings.host else socket.AF_INET,
            backlog=64,
        )
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()[:2]
        self.runner = web.AppRunner(
            create_control_app(run, settings), handle_signals=False, access_log=None
        )
        self._server: asyncio.Server | None = None
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] = self._loop.create_task(self._serve())
        self._cleanup: asyncio.Task[None] | None = None
        self.file = Path(run.run_dir) / CONTROL_FILE
        self._write_file()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _write_file(self) -> None:
        info = {
            "url": self.url,
            "host": self.host,
            "port": self.port,
            "pid": os.getpid(),
            "openapi": f"{self.url}/openapi.json",
            "token_env": ENV_TOKEN,
            # The grid of each market, so the dashboard shows journaled ticks as prices.
            "markets": {
                key: {
                    "tick_size": _decimal_str(mr.instrument.tick_size),
                    "lot_size": _decimal_str(mr.instrument.lot_size),
                }
                for key, mr in self.run.markets.items()
            },
        }
        fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)

    async def _serve(self) -> None:
        await self.runner.setup()
        handler = self.runner.server
        assert handler is not None  # set by setup()
        server = await self._loop.create_server(handler, sock=self.sock)
        if self._closed:
            server.close()
            await self.runner.cleanup()
            return
        self._server = server

    def close(self) -> None:
        """Stop listening and remove control.json; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.file.unlink(missing_ok=True)
        if self._server is not None:
            self._server.close()
            self._cleanup = self._loop.create_task(self.runner.cleanup())
        elif self._task.done():
            self.sock.close()
        # else: _serve is still starting and cleans up when it gets there


_SERVERS: dict[int, ControlServer] = {}


def control_server_of(run: Any) -> ControlServer | None:
    """The control API of ``run``, or None when it serves none."""
    return _SERVERS.get(id(run))


@hookimpl
def quoteforge_run_started(run: Any) -> None:
    try:
        settings = settings_from_env()
    except ControlSettingsError as exc:
        logger.error("control API not started: {}", exc)
        return
    if settings is None:
        return
    try:
        import aiohttp  # noqa: F401
    except ModuleNotFoundError:
        logger.error("control API not started: it needs aiohttp: {}", INSTALL_HINT)
        return
    try:
        server = ControlServer(run, settings)
    except OSError as exc:
        logger.error(
            "control API not started: cannot listen on {}:{}: {}",
            settings.host,
            settings.port,
            exc,
        )
        return
    _SERVERS[id(run)] = server
    try:
        exposed = not ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        exposed = not is_loopback(settings.host)
    if exposed:
        logger.warning(
            "control API listening on {} beyond loopback ({}=1): anyone who reaches it may "
            "try the token",
            server.url,
            ENV_EXPOSE,
        )
    logger.info(
        "control API listening on {} (its address is in {}; token from {})",
        server.url,
        server.file,
        ENV_TOKEN,
    )


@hookimpl
def quoteforge_run_stopped(run: Any, summary: list[dict[str, Any]]) -> None:
    server = _SERVERS.pop(id(run), None)
    if server is not None:
        server.close()
