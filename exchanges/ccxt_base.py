"""The one shape of a live spot adapter over ccxt: REST through ccxt's implicit API,
websockets, reconnects, order-action sequencing and unknown-status recovery done here.

A venue subclasses ``CcxtSpotAdapter`` and implements the public extension points marked
*required* below (they are the venue's side of the contract, called by this base, not by
the run); ``docs/adapters.md`` is the guide. ccxt is imported only when an adapter
connects, so listing the plugin never needs it. The base is three modules: this one
(connection, REST, sockets, market-data events), ``ccxt_orders`` (order actions, reports
and recovery: ``OrderTracking``, ``TrackedOrder``, ``VenueCallError``) and
``ccxt_sockets`` (``ManagedSocket``, ``Backoff``); every name is importable from here.
Each adapter registers a ``VenueFactory(Params, Adapter)`` as its exchange type.

Required venue methods::

    client_config() -> dict                  ccxt constructor config (urls, options)
    load_instruments() -> dict[str, Instrument]
    start_streams() -> None                  start ManagedSocket tasks (market + private)
    send_place(order: TrackedOrder) -> None  send one new order; raise VenueCallError
    send_cancel(order: TrackedOrder) -> None
    lookup_order(order: TrackedOrder) -> OrderUpdate | None   by client id; None = not found
    send_cancel_all(symbol: str) -> None     cancel every order of ours on a symbol
    classify_http_error(status, body) -> VenueCallError

Optional (working defaults here): ``send_replace`` (cancel then place),
``reconcile_orders``, ``sync_time``, ``observe_response``, ``fetch_open_orders``,
``fetch_balances``, ``fetch_fills``, and for ``quoteforge latency``:
``latency_endpoints`` (required by the probe) and ``latency_order_wait_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import random
import re
from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, TypeVar

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from quoteforge.exchange import VenueContext, VenueSink
from quoteforge.exchanges.ccxt_orders import (
    OrderTracking,
    TrackedOrder,
    VenueCallError,
    VenueStartError,
)
from quoteforge.exchanges.ccxt_sockets import Backoff, ManagedSocket
from quoteforge.manifest_read import close_match
from quoteforge.model import Instrument, Side
from quoteforge.registry import PluginError, Register, load_registry

if TYPE_CHECKING:
    import aiohttp

    from quoteforge.book import BookState, L2Book

__all__ = [
    "API_KEY_SECRETS",
    "SIMULATED_MODES",
    "AutoCancelParams",
    "Backoff",
    "CcxtSpotAdapter",
    "CcxtSpotParams",
    "LatencyEndpoints",
    "ManagedSocket",
    "OrderTracking",
    "TrackedOrder",
    "VenueCallError",
    "VenueFactory",
    "book_source_factory",
    "dumps_exact",
    "require_ccxt",
    "simulated_mode_refusal",
    "watch_ccxt_client",
]

NS = 1_000_000_000

#: The secrets the ccxt-backed adapters read: the API key and its secret.
API_KEY_SECRETS = ("api_key", "api_secret")

#: Run modes on a virtual clock, without a live run's start-up and periodic
#: reconciliation: a real venue's adapter would send real orders from them.
SIMULATED_MODES = ("sim", "backtest")

P = TypeVar("P", bound=BaseModel)
V = TypeVar("V")
T = TypeVar("T")


def require_ccxt() -> Any:
    """``ccxt.async_support``, or an ImportError that says how to install it."""
    try:
        import ccxt.async_support as ccxt_async
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            'the live exchange adapters need ccxt: pip install "quoteforge[binance]" '
            '(or "quoteforge[kraken]")',
            name="ccxt",
        ) from exc
    return ccxt_async


def dumps_exact(obj: Any) -> str:
    """JSON text in which ``Decimal`` values are written as numbers with their digits
    exactly as given (venues that take JSON numbers still get no binary rounding)."""
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise ValueError(f"cannot send non-finite number {obj}")
        return format(obj, "f")
    if isinstance(obj, Mapping):
        return (
            "{" + ",".join(f"{json.dumps(str(k))}:{dumps_exact(v)}" for k, v in obj.items()) + "}"
        )
    if isinstance(obj, list | tuple):
        return "[" + ",".join(dumps_exact(v) for v in obj) + "]"
    return json.dumps(obj)


class CcxtSpotParams(BaseModel):
    """Parameters every ccxt-backed spot adapter accepts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    testnet: bool = Field(False, description="Use the venue's test network (where it has one).")
    rest_url: str | None = Field(
        None, description="Base URL of the REST API, e.g. a local replica (http://127.0.0.1:PORT)."
    )
    ws_url: str | None = Field(None, description="Base URL of the public websocket streams.")
    private_ws_url: str | None = Field(
        None, description="URL of the private websocket (user data, trading)."
    )
    request_timeout_s: float = Field(
        10.0, gt=0, le=315_360_000, description="Timeout of one REST request."
    )
    reconnect_initial_s: float = Field(
        0.5, gt=0, le=315_360_000, description="First reconnect delay."
    )
    reconnect_max_s: float = Field(
        30.0, gt=0, le=315_360_000, description="Longest reconnect delay."
    )
    silence_timeout_s: float = Field(
        30.0,
        gt=0,
        le=315_360_000,
        description="A socket with no frame (data, ping, heartbeat) this long is down.",
    )
    max_connection_age_s: float = Field(
        23.5 * 3600,
        gt=0,
        le=315_360_000,
        description="Reconnect before the venue's connection lifetime ends.",
    )
    book_stale_after_s: float | None = Field(
        None,
        gt=0,
        le=315_360_000,
        description="Mark a book STALE after this long without a book message.",
    )
    order_lookups: int = Field(
        8, ge=1, description="Lookups by client id for an order whose status is unknown."
    )
    lookup_interval_s: float = Field(
        0.5, gt=0, le=315_360_000, description="First delay between lookups."
    )
    max_rate_wait_s: float = Field(
        30.0,
        ge=0,
        le=315_360_000,
        description="Longest wait for a rate limit before an action is refused.",
    )
    start_timeout_s: float = Field(
        15.0,
        gt=0,
        le=315_360_000,
        description="How long connect() waits for the private stream to be ready.",
    )

    #: The secrets a live run on this venue needs under ``exchanges.<name>.secrets``,
    #: and those it may also take. None: the venue declares none, so their names are
    #: not checked (a venue's params set them to what its adapter reads).
    required_secrets: ClassVar[tuple[str, ...] | None] = None
    optional_secrets: ClassVar[tuple[str, ...]] = ()

    def secret_names(self) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """(required, optional) secrets of the venue as these params configure it, or
        None when the venue declares none."""
        if self.required_secrets is None:
            return None
        return self.required_secrets, self.optional_secrets

    def manifest_problems(self, manifest: Any, spec: Any) -> list[tuple[tuple[str, ...], str]]:
        """What the manifest around a real venue makes unsafe (checked by validate and
        before every run): a simulated mode, secrets the adapter does not read, and in a
        live run secrets missing or empty. Paper runs need no keys."""
        name = next((n for n, s in manifest.exchanges.items() if s is spec), spec.type)
        mode = manifest.run.mode
        problems: list[tuple[tuple[str, ...], str]] = []
        if mode in SIMULATED_MODES:
            problems.append((("type",), simulated_mode_refusal(name, spec.type, mode)))
        names = self.secret_names()
        accepted = () if names is None else (*names[0], *names[1])
        for key in spec.secrets if names is not None else ():
            if key not in accepted:
                problems.append(
                    (
                        ("secrets", key),
                        f"exchange {name!r} (type {spec.type}) takes no secret {key!r}"
                        f"{close_match(key, accepted)}; its secrets: {', '.join(accepted)}",
                    )
                )
        if mode == "live":
            problems += _live_secret_problems(name, spec, names)
        return problems


def simulated_mode_refusal(name: str, venue_type: str, mode: str) -> str:
    """Why a real venue cannot run in ``mode`` (sim or backtest), and what to use."""
    return (
        f"exchange {name!r} is of type {venue_type!r}, a real venue, and run.mode is "
        f"{mode!r}: its adapter would send real orders to the venue from a run on a "
        "virtual clock, without a live run's reconciliations. For a simulation use type: "
        "sim (docs/sim.md); for a backtest, type: replay on a recording of the venue "
        "(docs/backtest.md); to try the strategy on the venue's live market data without "
        "sending orders, run.mode: paper; run.mode: live trades for real"
    )


def _live_secret_problems(
    name: str, spec: Any, names: tuple[tuple[str, ...], tuple[str, ...]] | None
) -> list[tuple[tuple[str, ...], str]]:
    """A live run's secrets: the block present, every required one given, none empty
    (``secrets: {}`` too is refused: ``quoteforge record`` reads market data as a paper
    run, which needs no keys)."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper() or "VENUE"
    required = names[0] if names is not None else ()
    where = f"exchange {name!r} (type {spec.type})"
    if "secrets" not in spec.model_fields_set:
        wanted = ", ".join(f"{k}: ${{{stem}_{k.upper()}}}" for k in required)
        block = f"secrets: {{{wanted}}}" if wanted else "its secrets"
        return [
            (
                ("secrets",),
                f"run.mode live trades on {where} with its API keys, and it has no secrets: "
                f"add {block} and export those variables; run.mode: paper trades on live "
                "market data without keys",
            )
        ]
    problems: list[tuple[tuple[str, ...], str]] = []
    missing = [k for k in required if k not in spec.secrets]
    if missing:
        problems.append(
            (
                ("secrets",),
                f"a live run on {where} needs the secret(s) {', '.join(missing)}: add "
                + ", ".join(f"{k}: ${{{stem}_{k.upper()}}}" for k in missing)
                + " to its secrets and export those variables",
            )
        )
    for key, value in spec.secrets.items():
        if not value.strip():
            problems.append((("secrets", key), f"secret {key!r} of {where} {_empty_value()}"))
    return problems


def _empty_value() -> str:
    """Why a secret is empty. Secrets are written as ``${VAR}`` only and an unset
    variable is refused by the manifest's reader, so an empty one came from a variable
    set to an empty string: one of the environment's empty variables."""
    empty = sorted(k for k, v in os.environ.items() if not v.strip())
    if len(empty) == 1:
        named = f" ({empty[0]})"
    elif empty:
        named = f" (one of {', '.join(empty[:8])}{', ...' if len(empty) > 8 else ''})"
    else:
        named = ""
    return (
        f"is empty: the environment variable it names{named} is set to an empty string; "
        "export the venue's key in it (a live run refuses every order without it)"
    )


class AutoCancelParams(BaseModel):
    """The venue's dead man's switch, for the adapters of venues that have one."""

    auto_cancel_after_s: float | None = Field(
        None,
        ge=1,
        le=86_400,
        description="The venue's dead man's switch: the venue cancels our open orders when "
        "the adapter has not renewed it for this long (it renews every quarter of it), e.g. "
        "when the bot's host froze; stopped when the run stops. None: off.",
    )


_last_response: contextvars.ContextVar[tuple[int, dict[str, str], str] | None] = (
    contextvars.ContextVar("quoteforge_last_response", default=None)
)


class LatencyEndpoints(NamedTuple):
    """Where ``quoteforge latency`` measures a venue: a cheap public REST call and the
    public market-data websocket, as the adapter itself would reach them (live, testnet
    or replica URLs). Returned by ``CcxtSpotAdapter.latency_endpoints``; a plain tuple so
    the probe (a plugin) and the adapters share it without either importing the other."""

    rest_url: str
    ws_url: str


class VenueFactory(Generic[P, V]):
    """What a live adapter registers as its ``exchange`` type: builds the venue from the
    manifest's params and the run context.

    ``VenueFactory(BinanceParams, BinanceSpot)`` is called by the registry as
    ``factory(spec_params, ctx)``: params already validated (an instance of the params
    model) pass as they are, a mapping (or ``None``: every default) is validated by the
    model first, so a bad manifest value raises pydantic's ``ValidationError`` naming the
    field. ``register`` is the body of the adapter's ``quoteforge_register_exchanges``.
    """

    def __init__(self, params: type[P], venue: Callable[[P, VenueContext], V]) -> None:
        self.params = params
        self.venue = venue

    def __call__(self, spec_params: Any, ctx: VenueContext) -> V:
        params = (
            spec_params
            if isinstance(spec_params, self.params)
            else self.params.model_validate(spec_params or {})
        )
        return self.venue(params, ctx)

    def register(
        self, register: Register, name: str, *, description: str, requires: tuple[str, ...]
    ) -> None:
        """Register this factory as exchange type ``name`` with its params model;
        ``requires`` lists the modules the venue imports when it connects (a missing one
        is reported with its pip command)."""
        register(name, self, params=self.params, description=description, requires=requires)


def watch_ccxt_client(
    client: Any, logger_name: str, on_response: Callable[[int, dict[str, str], str], None]
) -> None:
    """Make a ccxt client safe to log and observable: its own logger (ccxt logs request
    headers, the API key among them, at DEBUG through stdlib logging) is the disabled
    ``logger_name``, and every REST response's status, headers and body go to
    ``on_response`` before ccxt reads the response."""
    quiet = logging.getLogger(logger_name)
    quiet.disabled = True
    client.logger = quiet
    original = client.on_rest_response

    def on_rest_response(
        code: Any,
        reason: Any,
        url: Any,
        method: Any,
        headers: Any,
        body: Any,
        request_headers: Any,
        request_body: Any,
    ) -> Any:
        on_response(int(code) if code is not None else 0, dict(headers or {}), body or "")
        return original(code, reason, url, method, headers, body, request_headers, request_body)

    client.on_rest_response = on_rest_response


def book_source_factory(ctx: VenueContext, kind: str) -> Callable[..., Any]:
    """The book source registered under ``kind`` (plugin kind ``book_source``), so a
    plugin's source registered under its own name replaces a built-in one when a
    manifest names it (the adapters' ``book_source`` param).

    The run's registry when the run hands one over (``ctx.extra["book_sources"]``, a
    mapping of registered name to factory), else the process-wide registry (the one
    ``quoteforge`` commands load). ``ValueError`` names what is registered instead.
    """
    lookup: Mapping[str, Callable[..., Any]] | None = ctx.extra.get("book_sources")
    if lookup is not None:
        factory = lookup.get(kind)
        if factory is None:
            raise ValueError(
                f"exchange {ctx.name!r}: no book source {kind!r} is registered; "
                f"registered: {', '.join(sorted(lookup)) or 'none'}"
            )
        return factory
    try:
        return load_registry().get("book_source", kind).factory
    except PluginError as exc:
        raise ValueError(f"exchange {ctx.name!r}: {exc}") from None


class CcxtSpotAdapter(OrderTracking):
    """Shared behaviour of the ccxt-backed spot adapters (see the module docstring)."""

    venue_id: str = ""
    ccxt_id: str = ""
    secret_keys: tuple[str, str] = API_KEY_SECRETS

    def __init__(self, params: CcxtSpotParams, ctx: VenueContext) -> None:
        if ctx.mode in SIMULATED_MODES:
            # Also refused by the manifest's check; this holds for runs built without one.
            venue = self.venue_id or type(self).__name__
            raise ValueError(simulated_mode_refusal(ctx.name, venue, ctx.mode))
        super().__init__()
        self.params = params
        self.ctx = ctx
        self.name = ctx.name
        self.clock = ctx.clock
        self.instruments: dict[str, Instrument] = {}
        self.books: dict[str, L2Book] = {}
        self.sink: VenueSink | None = None
        key, secret = self.secret_keys
        self._api_key = ctx.secrets.get(key, "")
        self._api_secret = ctx.secrets.get(secret, "")
        self._rng = random.Random(ctx.seed)
        self._client: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._auto_cancel: Callable[[float], Awaitable[None]] | None = None  # the switch
        self.sockets: list[ManagedSocket] = []
        self.time_offset_ms = 0
        self.tap: Callable[[str, str, int], None] | None = None
        """Called with (stream, raw text, receive ns) for every public market-data message
        and REST depth snapshot, before the adapter acts on it (``quoteforge record``)."""
        self.counters: dict[str, int] = {
            "lookups": 0,
            "resends": 0,
            "rate_limited": 0,
            "unknown": 0,
            "rejected": 0,
            "reconciliations": 0,
            "duplicate_fills": 0,
            "time_syncs": 0,
        }

    def __repr__(self) -> str:
        # Never the client or the secrets: reprs end up in logs.
        creds = "with credentials" if self.has_credentials else "public only"
        return f"{type(self).__name__}(name={self.name!r}, symbols={self.ctx.symbols!r}, {creds})"

    @property
    def has_credentials(self) -> bool:
        return bool(self._api_key and self._api_secret)

    def require_credentials(self, what: str) -> None:
        """Raise ``VenueCallError("auth")`` unless the adapter holds its API keys. The
        reconciliation reads call it: without keys the venue cannot be asked, and a live
        run must not take that for "nothing to compare" (its start stops instead)."""
        if not self.has_credentials:
            raise VenueCallError(
                "auth",
                f"{self.name}: no API credentials, so {what} cannot be read from the venue; "
                f"give secrets {self.secret_keys[0]!r} and {self.secret_keys[1]!r} "
                "(run.mode: paper needs none)",
            )

    # -- required venue methods: every venue subclass implements these --------------------
    @abstractmethod
    def client_config(self) -> dict[str, Any]:
        """ccxt constructor config: ``urls`` overrides and ``options``. Venues implement
        it; ``connect`` builds the client from it."""

    @abstractmethod
    async def load_instruments(self) -> dict[str, Instrument]:
        """Instruments for ``ctx.symbols`` from the venue's market list (exact grid).
        Venues implement it; ``connect`` calls it once, after ``sync_time``."""

    @abstractmethod
    async def start_streams(self) -> None:
        """Start the market-data and private sockets (``self._spawn_socket``). Venues
        implement it; ``connect`` calls it last, with the instruments loaded."""

    @abstractmethod
    def classify_http_error(self, status: int, body: str) -> VenueCallError:
        """Turn an HTTP error answer into a ``VenueCallError``. Venues implement it; the
        REST helper calls it for every failed call that is not a rate limit."""

    # -- lifecycle ---------------------------------------------------------------------------
    async def connect(self, sink: VenueSink) -> None:
        async with self._closed_on_failure():
            self.sink = sink
            self._client = self._make_client()
            # One slow answer does not stop a start: each read is asked again 0.5 then
            # 1 s after a silence, and after a rate limit's Retry-After.
            await self._read_patiently(self.sync_time, "the venue's clock", silences=2)
            self.instruments = await self._read_patiently(
                self.load_instruments, "the instruments", silences=2
            )
            await self.start_streams()

    @contextlib.asynccontextmanager
    async def _closed_on_failure(self) -> AsyncIterator[None]:
        """Around a ``connect``: when it fails half-way, ``close`` what it opened (REST
        session, sockets, tasks, ccxt client) before the error goes on; the run never
        closes a venue whose connect raised."""
        try:
            yield
        except BaseException as exc:
            try:
                await self.close()
            except Exception:
                logger.opt(exception=True).debug("{}: closing after a failed start", self.name)
            if isinstance(exc, VenueCallError) and exc.kind in ("auth", "rate_limited"):
                raise VenueStartError(
                    exc.kind, exc.message, exc.code, exc.retry_after_s, exc.payload
                ) from exc
            raise

    def _make_client(self) -> Any:
        ccxt_async = require_ccxt()
        cls = getattr(ccxt_async, self.ccxt_id)
        config = {
            "enableRateLimit": False,  # our governor paces requests from the venue's own counts
            "timeout": int(self.params.request_timeout_s * 1000),
            **self.client_config(),
        }
        if self.has_credentials:
            config["apiKey"] = self._api_key
            config["secret"] = self._api_secret
        client = cls(config)

        def on_response(status: int, headers: dict[str, str], body: str) -> None:
            _last_response.set((status, headers, body))
            self.observe_response(status, headers)

        watch_ccxt_client(client, f"quoteforge.exchanges.{self.venue_id}.ccxt", on_response)
        return client

    def observe_response(self, status: int, headers: dict[str, str]) -> None:
        """Every REST response passes here (status and headers). Venues with a rate-limit
        governor override it to feed the venue's own usage counts; the default does
        nothing."""

    def _get_session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    # -- the venue's dead man's switch ----------------------------------------------------------
    async def start_auto_cancel(
        self,
        after_s: float,
        set_countdown: Callable[[float], Awaitable[None]],
        every_s: float | None = None,
    ) -> None:
        """Arm the venue's dead man's switch with ``set_countdown(after_s)`` (the venue's
        own call, ``AutoCancelParams``), renew it every ``every_s`` (default: a quarter
        of ``after_s``), and stop it with ``set_countdown(0)`` in ``close``."""
        await set_countdown(after_s)
        self._auto_cancel = set_countdown
        every = after_s / 4 if every_s is None else every_s
        self.spawn_task(self._auto_cancel_loop(after_s, every), f"{self.name}/auto-cancel")

    async def _auto_cancel_loop(self, after_s: float, every_s: float) -> None:
        while not self._closed and self._auto_cancel is not None:
            await asyncio.sleep(every_s)
            try:
                await self._auto_cancel(after_s)
            except Exception as exc:  # one failed renewal must not end the switch
                logger.warning(
                    "{}: renewing the auto-cancel countdown failed ({}: {}); the venue "
                    "cancels our orders {:g}s after the last renewal",
                    self.name,
                    type(exc).__name__,
                    exc,
                    after_s,
                )

    async def close(self) -> None:
        if self._auto_cancel is not None and not self._closed:
            # After the run cancelled its orders: a countdown left running would cancel
            # the orders of the next run on this account.
            try:
                await self._auto_cancel(0)
            except VenueCallError as exc:
                logger.warning("{}: could not stop the auto-cancel countdown: {}", self.name, exc)
        self._closed = True
        for sock in self.sockets:
            await sock.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        if self._session is not None:
            await self._session.close()

    def spawn_task(self, coro: Awaitable[Any], name: str = "") -> asyncio.Task[Any]:
        """Run ``coro`` as a task this adapter owns: ``close`` cancels it, and a failure
        is logged rather than lost. Venues use it for their background loops."""
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error(
                "{}: background task {} failed", self.name, task.get_name()
            )

    def _spawn_socket(
        self,
        name: str,
        url: Callable[[], str],
        on_open: Callable[[ManagedSocket], Awaitable[None]],
        on_text: Callable[[str, int], Awaitable[None] | None],
        on_down: Callable[[str], None],
        *,
        silence_timeout_s: float | None = None,
    ) -> ManagedSocket:
        p = self.params
        sock = ManagedSocket(
            f"{self.name}/{name}",
            url,
            session=self._get_session,
            on_open=on_open,
            on_text=on_text,
            on_down=on_down,
            backoff=Backoff(p.reconnect_initial_s, p.reconnect_max_s, self._rng),
            silence_timeout_s=silence_timeout_s or p.silence_timeout_s,
            max_age_s=p.max_connection_age_s,
        )
        self.sockets.append(sock)
        self.spawn_task(sock.run(), f"{self.name}/{name}")
        return sock

    # -- raw tap -----------------------------------------------------------------------------
    def _tap_raw(self, stream: str, raw: str, recv_ns: int) -> None:
        """Hand one public message to ``tap``; a failing tap never stops the feed."""
        tap = self.tap
        if tap is None:
            return
        try:
            tap(stream, raw, recv_ns)
        except Exception:
            logger.exception("{}: raw tap failed on {}", self.name, stream)

    @staticmethod
    def _last_rest_body() -> str | None:
        """The text of the last successful REST answer in this task (kept so a tap records
        snapshots exactly as the venue sent them)."""
        last = _last_response.get()
        if last is None or last[0] != 200 or not isinstance(last[2], str):
            return None
        return last[2]

    # -- REST through ccxt -------------------------------------------------------------------
    async def _rest(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call one ccxt implicit-API method; failures become ``VenueCallError``."""
        ccxt_async = require_ccxt()
        _last_response.set(None)
        try:
            return await getattr(self._client, method)(params or {})
        except ccxt_async.BaseError as exc:
            last = _last_response.get()
            if last is None or last[0] == 0:
                raise VenueCallError("unknown", f"no answer: {type(exc).__name__}") from None
            status, headers, body = last
            if status in (418, 429):
                retry = headers.get("Retry-After") or headers.get("retry-after") or "1"
                try:
                    wait = float(retry)
                except ValueError:
                    wait = 1.0
                raise VenueCallError("rate_limited", f"HTTP {status}", str(status), wait) from None
            error = self.classify_http_error(status, body)
            raise error from None
        except (TimeoutError, OSError) as exc:
            raise VenueCallError("unknown", f"no answer: {type(exc).__name__}") from None

    async def _await_ready(self, ready: asyncio.Event, what: str) -> None:
        """Wait up to ``start_timeout_s`` for a private stream to come up; past that the
        start goes on with a warning (the socket keeps retrying)."""
        try:
            await asyncio.wait_for(ready.wait(), self.params.start_timeout_s)
        except TimeoutError:
            logger.warning(
                "{}: {} not ready after {:.0f}s; it keeps retrying",
                self.name,
                what,
                self.params.start_timeout_s,
            )

    # -- market data to the run -------------------------------------------------------------
    def _open_book_sources(
        self,
        make: Callable[..., Any],
        on_resync: Callable[[Any, str], None],
        venue_args: Callable[[str], dict[str, Any]],
    ) -> dict[str, Any]:
        """A book source (``make``: the venue's ``book_source_factory``) and book per
        symbol, wired to the run (book updates and state changes) and to ``on_resync``;
        ``venue_args(symbol)`` gives the venue's own arguments (wire symbol, depth...)."""
        stale = self.params.book_stale_after_s
        sources = {}
        for symbol, instrument in self.instruments.items():
            source = make(
                instrument,
                clock=self.clock,
                stale_after_ms=None if stale is None else stale * 1000,
                on_resync=on_resync,
                on_update=self._emit_book,
                **venue_args(symbol),
            )
            source.add_observer(self._emit_book_state)
            sources[symbol] = source
            self.books[symbol] = source.book
        return sources

    def _emit_book(self, book: L2Book) -> None:
        if self.sink is not None:
            try:
                self.sink.on_book(book)
            except Exception:
                logger.exception("{}: sink.on_book failed", self.name)

    def _emit_book_state(self, book: L2Book, old: BookState, new: BookState, reason: str) -> None:
        logger.info(
            "{}: book {} {} -> {} ({})", self.name, book.symbol, old.value, new.value, reason
        )
        if self.sink is not None:
            try:
                self.sink.on_book_state(book, old.value, new.value, reason)
            except Exception:
                logger.exception("{}: sink.on_book_state failed", self.name)

    def _emit_trade(
        self, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        if self.sink is not None:
            try:
                self.sink.on_trade(self.name, symbol, price_ticks, qty_lots, aggressor, ts_ns)
            except Exception:
                logger.exception("{}: sink.on_trade failed", self.name)

    # -- asked by the latency probe (``quoteforge latency``) -----------------------------------
    def latency_endpoints(self) -> LatencyEndpoints:
        """The public REST call and websocket the latency probe times for this venue.
        Venues that support the probe override this; ``ValueError`` when the adapter
        cannot name them (no symbol to open a stream of)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not name endpoints for the latency probe"
        )

    def latency_order_wait_s(self, symbol: str) -> float:
        """Seconds until the rate governor lets one new order on ``symbol`` and its cancel
        through without waiting: the probe waits that out before its timer starts, so it
        times the venue, not our pacing. 0 for a venue without a governor."""
        return 0.0
