"""The one shape of a live spot adapter over ccxt: REST through ccxt's implicit API,
websockets, reconnects, order-action sequencing and unknown-status recovery done here.

A venue subclasses ``CcxtSpotAdapter`` and fills in the methods marked *required* below;
``docs/adapters.md`` is the guide. ccxt is imported only when an adapter connects, so
listing the plugin never needs it.

Required venue methods::

    _client_config() -> dict                 ccxt constructor config (urls, options)
    _load_instruments() -> dict[str, Instrument]
    _start_streams() -> None                 start ManagedSocket tasks (market + private)
    _place(order: TrackedOrder) -> None      send one new order; raise VenueCallError
    _cancel(order: TrackedOrder) -> None
    _lookup(order: TrackedOrder) -> OrderUpdate | None   by client id; None = not found
    _cancel_symbol(symbol: str) -> None      cancel every order of ours on a symbol
    _classify(status, body) -> VenueCallError

Optional (working defaults here): ``_replace`` (cancel then place), ``_reconcile``,
``_sync_time``, ``fetch_open_orders``, ``fetch_balances``, ``fetch_fills``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import random
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from quoteforge.exchange import (
    CancelAll,
    CancelOrder,
    ExchangeAdapter,
    OrderAction,
    PlaceOrder,
    ReplaceOrder,
    VenueContext,
    VenueSink,
)
from quoteforge.model import (
    Fill,
    Instrument,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
)

if TYPE_CHECKING:
    import aiohttp

    from quoteforge.book import BookState, L2Book

__all__ = [
    "Backoff",
    "CcxtSpotAdapter",
    "CcxtSpotParams",
    "ManagedSocket",
    "TrackedOrder",
    "VenueCallError",
    "dumps_exact",
    "require_ccxt",
]

NS = 1_000_000_000


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


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


@dataclass
class VenueCallError(Exception):
    """A REST or websocket call that failed, classified for what to do next.

    ``kind``: ``rejected`` (venue refused; do not retry), ``unknown`` (may or may not
    have happened: look it up), ``rate_limited`` (not done; retry after
    ``retry_after_s``), ``not_found``, ``clock`` (timestamp outside the venue's window:
    resync time, retry) or ``auth``.
    """

    kind: str
    message: str
    code: str = ""
    retry_after_s: float = 0.0
    payload: Any = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}" + (f" (code {self.code})" if self.code else "")


_last_response: contextvars.ContextVar[tuple[int, dict[str, str], str] | None] = (
    contextvars.ContextVar("quoteforge_last_response", default=None)
)


# ---------------------------------------------------------------------------------------
# Reconnect backoff and sockets
# ---------------------------------------------------------------------------------------


class Backoff:
    """Exponential backoff with full jitter: delay n is uniform in [0, min(max, base*2^n)],
    floored at a tenth of the base so reconnects never spin."""

    def __init__(self, base_s: float, max_s: float, rng: random.Random) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.rng = rng
        self.attempt = 0

    def next_delay(self) -> float:
        cap = min(self.max_s, self.base_s * (2**self.attempt))
        self.attempt += 1
        return max(self.base_s / 10, self.rng.uniform(0, cap))

    def reset(self) -> None:
        self.attempt = 0


class ManagedSocket:
    """A websocket that stays up: connects, hands frames to ``on_text``, treats silence
    as a dead link, reconnects early before the venue's lifetime limit, and backs off
    with jitter between attempts. It never raises out of ``run``."""

    def __init__(
        self,
        name: str,
        url: Callable[[], str],
        *,
        session: Callable[[], aiohttp.ClientSession],
        on_open: Callable[[ManagedSocket], Awaitable[None]],
        on_text: Callable[[str, int], Awaitable[None] | None],
        on_down: Callable[[str], None],
        backoff: Backoff,
        silence_timeout_s: float,
        max_age_s: float,
    ) -> None:
        self.name = name
        self._url = url
        self._session = session
        self._on_open = on_open
        self._on_text = on_text
        self._on_down = on_down
        self.backoff = backoff
        self.silence_timeout_s = silence_timeout_s
        self.max_age_s = max_age_s
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ready = asyncio.Event()
        self.connects = 0
        self.drops = 0
        self.scheduled_reconnects = 0
        self.last_reason = ""
        self._closing = False

    @property
    def is_up(self) -> bool:
        return self.ws is not None and not self.ws.closed and self.ready.is_set()

    async def send(self, text: str) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            raise ConnectionError(f"{self.name}: socket is not connected")
        await ws.send_str(text)

    async def request(self, text: str, match: Callable[[Any], bool], timeout: float) -> Any:
        """Send ``text`` while opening and wait for the JSON reply ``match`` accepts;
        other frames meanwhile go to ``on_text`` as usual."""
        import aiohttp

        ws = self.ws
        if ws is None or ws.closed:
            raise ConnectionError(f"{self.name}: socket is not connected")
        await ws.send_str(text)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no answer within {timeout:.1f}s")
            msg = await asyncio.wait_for(ws.receive(), remaining)
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    data = None
                if data is not None and match(data):
                    return data
                result = self._on_text(msg.data, time.time_ns())
                if result is not None:
                    await result
            elif msg.type is aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is not aiohttp.WSMsgType.PONG:
                raise ConnectionError(f"{self.name}: socket closed while opening ({msg.type.name})")

    async def close(self) -> None:
        self._closing = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def run(self) -> None:
        import aiohttp

        while not self._closing:
            reason = "closed"
            try:
                self.ws = await self._session().ws_connect(
                    self._url(),
                    autoping=False,
                    heartbeat=None,
                    max_msg_size=1 << 24,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                )
                self.connects += 1
                opened = time.monotonic()
                await self._on_open(self)
                self.ready.set()
                reason = await self._read(opened)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure means: down, retry later
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self.ready.clear()
                if self.ws is not None and not self.ws.closed:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self.ws.close(), 1.0)
            if self._closing:
                break
            self.drops += 1
            self.last_reason = reason
            try:
                self._on_down(reason)
            except Exception:
                logger.exception("{}: on_down handler failed", self.name)
            if reason.startswith("scheduled"):
                self.scheduled_reconnects += 1
                continue
            delay = self.backoff.next_delay()
            logger.warning("{}: down ({}); reconnecting in {:.2f}s", self.name, reason, delay)
            await asyncio.sleep(delay)

    async def _read(self, opened: float) -> str:
        import aiohttp

        ws = self.ws
        assert ws is not None
        got_data = False
        while True:
            age_left = self.max_age_s - (time.monotonic() - opened)
            if age_left <= 0:
                return "scheduled reconnect before the connection lifetime ends"
            timeout = min(self.silence_timeout_s, age_left)
            try:
                msg = await asyncio.wait_for(ws.receive(), timeout)
            except TimeoutError:
                if time.monotonic() - opened >= self.max_age_s:
                    return "scheduled reconnect before the connection lifetime ends"
                return f"silent for {self.silence_timeout_s:.1f}s"
            if msg.type is aiohttp.WSMsgType.TEXT:
                if not got_data:
                    got_data = True
                    self.backoff.reset()
                result = self._on_text(msg.data, time.time_ns())
                if result is not None:
                    await result
            elif msg.type is aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is aiohttp.WSMsgType.PONG:
                continue
            elif msg.type is aiohttp.WSMsgType.BINARY:
                result = self._on_text(msg.data.decode(), time.time_ns())
                if result is not None:
                    await result
            else:
                return f"socket closed ({msg.type.name})"


# ---------------------------------------------------------------------------------------
# Order tracking
# ---------------------------------------------------------------------------------------

_RANK = {
    OrderStatus.PENDING_NEW: 0,
    OrderStatus.OPEN: 1,
    OrderStatus.PENDING_CANCEL: 1,
    OrderStatus.PENDING_REPLACE: 1,
    OrderStatus.PARTIALLY_FILLED: 2,
}


@dataclass
class TrackedOrder:
    """What the adapter remembers of one order to sequence actions and recover."""

    order: Order
    instrument: Instrument
    status: OrderStatus = OrderStatus.PENDING_NEW
    filled_lots: int = 0
    exchange_id: str | None = None
    placed_ns: int = 0
    resends: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def client_id(self) -> str:
        return self.order.client_id

    @property
    def symbol(self) -> str:
        return self.order.symbol

    def price_text(self) -> str:
        if self.order.price_ticks is None:
            raise ValueError(f"order {self.client_id} has no price")
        return format(self.instrument.ticks_to_price(self.order.price_ticks), "f")

    def qty_text(self) -> str:
        return format(self.instrument.lots_to_qty(self.order.qty_lots), "f")


# ---------------------------------------------------------------------------------------
# The adapter base
# ---------------------------------------------------------------------------------------


class CcxtSpotAdapter(ExchangeAdapter):
    """Shared behaviour of the ccxt-backed spot adapters (see the module docstring)."""

    venue_id: str = ""
    ccxt_id: str = ""
    secret_keys: tuple[str, str] = ("api_key", "api_secret")
    MAX_TRACKED = 20_000

    def __init__(self, params: CcxtSpotParams, ctx: VenueContext) -> None:
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
        self._chains: dict[str, asyncio.Task[Any]] = {}
        self._orders: dict[str, TrackedOrder] = {}
        self._seen_fills: set[str] = set()
        self._last_update: dict[str, tuple[int, int, OrderStatus]] = {}
        self._closed = False
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

    # -- required venue methods ------------------------------------------------------------
    @abstractmethod
    def _client_config(self) -> dict[str, Any]:
        """ccxt constructor config: ``urls`` overrides and ``options``."""

    @abstractmethod
    async def _load_instruments(self) -> dict[str, Instrument]:
        """Instruments for ``ctx.symbols`` from the venue's market list (exact grid)."""

    @abstractmethod
    async def _start_streams(self) -> None:
        """Start the market-data and private sockets (``self._spawn_socket``)."""

    @abstractmethod
    async def _place(self, order: TrackedOrder) -> None:
        """Send one new order; report what the venue answered; raise ``VenueCallError``."""

    @abstractmethod
    async def _cancel(self, order: TrackedOrder) -> None:
        """Cancel one order by client id; raise ``VenueCallError``."""

    @abstractmethod
    async def _lookup(self, order: TrackedOrder) -> OrderUpdate | None:
        """The venue's view of an order by client id; None when the venue has no such order."""

    @abstractmethod
    async def _cancel_symbol(self, symbol: str) -> None:
        """Cancel every open order of ours on ``symbol``."""

    @abstractmethod
    def _classify(self, status: int, body: str) -> VenueCallError:
        """Turn an HTTP error answer into a ``VenueCallError``."""

    # -- optional venue methods --------------------------------------------------------------
    async def _replace(self, old: TrackedOrder, new: TrackedOrder) -> None:
        """Cancel ``old`` then place ``new`` (venues with an atomic call override this)."""
        await self._cancel_checked(old)
        await self._place_checked(new)

    async def _reconcile(self) -> None:
        """After the private stream was down: recover what it may have missed."""
        self.counters["reconciliations"] += 1
        for tracked in list(self._orders.values()):
            if tracked.status.is_terminal:
                continue
            try:
                update = await self._lookup(tracked)
            except VenueCallError as exc:
                logger.warning(
                    "{}: reconcile lookup of {} failed: {}", self.name, tracked.client_id, exc
                )
                continue
            if update is not None:
                self._emit_update(update)

    async def _sync_time(self) -> None:
        """Measure the venue clock offset (venues with signed timestamps override)."""

    # -- lifecycle ---------------------------------------------------------------------------
    async def connect(self, sink: VenueSink) -> None:
        self.sink = sink
        self._client = self._make_client()
        await self._sync_time()
        self.instruments = await self._load_instruments()
        await self._start_streams()

    def _make_client(self) -> Any:
        ccxt_async = require_ccxt()
        cls = getattr(ccxt_async, self.ccxt_id)
        config = {
            "enableRateLimit": False,  # our governor paces requests from the venue's own counts
            "timeout": int(self.params.request_timeout_s * 1000),
            **self._client_config(),
        }
        if self.has_credentials:
            config["apiKey"] = self._api_key
            config["secret"] = self._api_secret
        client = cls(config)
        # ccxt logs request headers (the API key) at DEBUG through stdlib logging.
        quiet = logging.getLogger(f"quoteforge.exchanges.{self.venue_id}.ccxt")
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
            status = int(code) if code is not None else 0
            hdrs = dict(headers or {})
            _last_response.set((status, hdrs, body or ""))
            self._observe_response(status, hdrs)
            return original(code, reason, url, method, headers, body, request_headers, request_body)

        client.on_rest_response = on_rest_response
        return client

    def _observe_response(self, status: int, headers: dict[str, str]) -> None:
        """Hook for the rate-limit governor (every REST response passes here)."""

    def _get_session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
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

    def _spawn(self, coro: Awaitable[Any], name: str = "") -> asyncio.Task[Any]:
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
        self._spawn(sock.run(), f"{self.name}/{name}")
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
            error = self._classify(status, body)
            raise error from None
        except (TimeoutError, OSError) as exc:
            raise VenueCallError("unknown", f"no answer: {type(exc).__name__}") from None

    # -- submit: sequenced per client id, never blocking ----------------------------------------
    def submit(self, actions: Sequence[OrderAction]) -> None:
        for action in actions:
            if isinstance(action, PlaceOrder):
                keys = [action.order.client_id]
            elif isinstance(action, CancelOrder):
                keys = [action.client_id]
            elif isinstance(action, ReplaceOrder):
                keys = [action.old_client_id, action.new.client_id]
            elif isinstance(action, CancelAll):
                keys = []
            else:
                raise TypeError(f"unknown order action {action!r}")
            waits = [self._chains[k] for k in keys if k in self._chains]
            if isinstance(action, CancelAll):
                waits = list(self._chains.values())
            task = self._spawn(self._run_action(action, waits), f"{self.name}/action")
            for key in keys:
                self._chains[key] = task
            task.add_done_callback(functools.partial(self._unchain, tuple(keys)))

    def _unchain(self, keys: Iterable[str], task: asyncio.Task[Any]) -> None:
        for key in keys:
            if self._chains.get(key) is task:
                del self._chains[key]

    async def _run_action(self, action: OrderAction, waits: list[asyncio.Task[Any]]) -> None:
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)
        try:
            if isinstance(action, PlaceOrder):
                tracked = self._track(action.order)
                if tracked is not None:
                    await self._place_checked(tracked)
            elif isinstance(action, CancelOrder):
                tracked = self._orders.get(action.client_id) or self._adopt(
                    action.client_id, action.symbol
                )
                if tracked is not None:
                    await self._cancel_checked(tracked)
            elif isinstance(action, ReplaceOrder):
                old = self._orders.get(action.old_client_id)
                new = self._track(action.new)
                if new is None:
                    return
                if old is None or old.status.is_terminal:
                    await self._place_checked(new)
                else:
                    await self._replace(old, new)
            elif isinstance(action, CancelAll):
                symbols = [action.symbol] if action.symbol else list(self.instruments)
                for symbol in symbols:
                    await self._with_rate_retry(functools.partial(self._cancel_symbol, symbol))
        except VenueCallError as exc:
            logger.warning("{}: {} failed: {}", self.name, type(action).__name__, exc)
        except Exception:
            logger.exception("{}: {} failed unexpectedly", self.name, type(action).__name__)

    def _track(self, order: Order) -> TrackedOrder | None:
        instrument = self.instruments.get(order.symbol)
        reason = ""
        if instrument is None:
            reason = (
                f"unknown symbol {order.symbol!r}; connected symbols: {sorted(self.instruments)}"
            )
        elif not self.has_credentials:
            reason = (
                f"{self.name}: no API credentials; give secrets "
                f"{self.secret_keys[0]!r} and {self.secret_keys[1]!r}"
            )
        elif order.order_type is OrderType.LIMIT and order.price_ticks is None:
            reason = "a limit order needs price_ticks"
        else:
            reason = (
                instrument.check_order(
                    order.price_ticks if order.order_type is OrderType.LIMIT else None,
                    order.qty_lots,
                )
                or ""
            )
        if order.client_id in self._orders and not self._orders[order.client_id].status.is_terminal:
            reason = f"client id {order.client_id!r} is already working; ids must be unique"
        if reason:
            self._emit(
                OrderUpdate(
                    self.name,
                    order.client_id,
                    OrderStatus.REJECTED,
                    self.clock.now_ns(),
                    reason=reason,
                )
            )
            return None
        assert instrument is not None
        if len(self._orders) >= self.MAX_TRACKED:
            self._forget_finished()
        tracked = TrackedOrder(order, instrument, placed_ns=self.clock.now_ns())
        self._orders[order.client_id] = tracked
        return tracked

    def _forget_finished(self) -> None:
        """Drop finished orders so a long run's memory stays flat; their fills stay
        de-duplicated through ``_seen_fills``."""
        for client_id in [c for c, t in self._orders.items() if t.status.is_terminal]:
            del self._orders[client_id]
            self._last_update.pop(client_id, None)

    def _adopt(self, client_id: str, symbol: str) -> TrackedOrder | None:
        """Track an order sent before this adapter started (known from reconciliation)
        so it can be cancelled by client id."""
        instrument = self.instruments.get(symbol)
        if instrument is None:
            self._emit(
                OrderUpdate(
                    self.name,
                    client_id,
                    OrderStatus.REJECTED,
                    self.clock.now_ns(),
                    reason=f"unknown symbol {symbol!r}",
                )
            )
            return None
        order = Order(client_id, self.name, symbol, Side.BUY, 0, None)
        tracked = TrackedOrder(order, instrument, status=OrderStatus.OPEN)
        self._orders[client_id] = tracked
        return tracked

    async def _with_rate_retry(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """Retry a call refused by a rate limit (it did not happen) after Retry-After."""
        waited = 0.0
        while True:
            try:
                return await call()
            except VenueCallError as exc:
                if exc.kind == "clock":
                    await self._sync_time()
                    return await call()
                if exc.kind != "rate_limited":
                    raise
                self.counters["rate_limited"] += 1
                wait = max(exc.retry_after_s, 0.05)
                if waited + wait > self.params.max_rate_wait_s:
                    raise
                waited += wait
                await asyncio.sleep(wait)

    async def _place_checked(self, tracked: TrackedOrder) -> None:
        try:
            await self._with_rate_retry(lambda: self._place(tracked))
        except VenueCallError as exc:
            if exc.kind == "unknown":
                self.counters["unknown"] += 1
                await self._resolve_unknown(tracked, str(exc))
            else:
                self.counters["rejected"] += 1
                self._emit(
                    OrderUpdate(
                        self.name,
                        tracked.client_id,
                        OrderStatus.REJECTED,
                        self.clock.now_ns(),
                        reason=str(exc),
                    )
                )

    async def _cancel_checked(self, tracked: TrackedOrder) -> None:
        if tracked.status.is_terminal:
            return
        for attempt in range(3):
            try:
                await self._with_rate_retry(lambda: self._cancel(tracked))
                return
            except VenueCallError as exc:
                if exc.kind == "not_found":
                    update = await self._lookup_quietly(tracked)
                    self._emit(
                        update
                        or OrderUpdate(
                            self.name,
                            tracked.client_id,
                            OrderStatus.CANCELLED,
                            self.clock.now_ns(),
                            reason="the venue does not know this order",
                        )
                    )
                    return
                if exc.kind != "unknown":
                    self._emit(
                        OrderUpdate(
                            self.name,
                            tracked.client_id,
                            tracked.status,
                            self.clock.now_ns(),
                            reason=f"cancel refused: {exc}",
                        )
                    )
                    return
                # Cancels are idempotent: retry after a pause, then ask the venue.
                await asyncio.sleep(self.params.lookup_interval_s * (2**attempt))
        update = await self._lookup_quietly(tracked)
        if update is not None:
            self._emit(update)

    async def _lookup_quietly(self, tracked: TrackedOrder) -> OrderUpdate | None:
        try:
            return await self._with_rate_retry(lambda: self._lookup(tracked))
        except VenueCallError:
            return None

    async def _resolve_unknown(self, tracked: TrackedOrder, why: str) -> None:
        """The venue may or may not have the order: ask by client id before any resend.

        Two "not found" answers a pause apart mean it was never placed; only then is it
        sent again, with the same client id, so a late original is refused as a duplicate
        rather than doubling the position.
        """
        logger.warning(
            "{}: order {} status unknown ({}); looking it up", self.name, tracked.client_id, why
        )
        delay = self.params.lookup_interval_s
        not_found = 0
        for _ in range(self.params.order_lookups):
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.params.reconnect_max_s)
            if tracked.status is not OrderStatus.PENDING_NEW:
                return  # the private stream has told us already
            self.counters["lookups"] += 1
            try:
                update = await self._with_rate_retry(lambda: self._lookup(tracked))
            except VenueCallError as exc:
                logger.info("{}: lookup of {} failed: {}", self.name, tracked.client_id, exc)
                continue
            if update is not None:
                self._emit(update)
                return
            not_found += 1
            if not_found < 2:
                continue
            if tracked.resends >= 1:
                break
            tracked.resends += 1
            self.counters["resends"] += 1
            logger.warning(
                "{}: order {} was not placed; sending it again", self.name, tracked.client_id
            )
            try:
                await self._with_rate_retry(lambda: self._place(tracked))
                return
            except VenueCallError as exc:
                if exc.kind != "unknown":
                    self._emit(
                        OrderUpdate(
                            self.name,
                            tracked.client_id,
                            OrderStatus.REJECTED,
                            self.clock.now_ns(),
                            reason=str(exc),
                        )
                    )
                    return
                not_found = 0
        if tracked.status is OrderStatus.PENDING_NEW:
            self._emit(
                OrderUpdate(
                    self.name,
                    tracked.client_id,
                    OrderStatus.REJECTED,
                    self.clock.now_ns(),
                    reason=f"status unknown after {self.params.order_lookups} lookups ({why}); "
                    "reconciliation will pick it up if it exists",
                )
            )

    # -- events to the run ---------------------------------------------------------------------
    def _emit(self, update: OrderUpdate) -> None:
        self._emit_update(update)

    def _emit_update(self, update: OrderUpdate) -> None:
        """Forward an order report unless it repeats or goes back on one already sent
        (REST answers and stream events describe the same transitions)."""
        filled = update.filled_lots if update.filled_lots is not None else -1
        rank = 3 if update.status.is_terminal else _RANK.get(update.status, 1)
        last = self._last_update.get(update.client_id)
        tracked = self._orders.get(update.client_id)
        if last is not None:
            last_rank, last_filled, last_status = last
            if last_status.is_terminal:
                if filled <= last_filled:
                    return
                update = OrderUpdate(
                    update.venue,
                    update.client_id,
                    last_status,
                    update.ts_ns,
                    update.exchange_id,
                    update.filled_lots,
                    update.price_ticks,
                    update.qty_lots,
                    update.reason,
                )
                rank = 3
            elif rank < last_rank or (
                rank == last_rank and filled <= last_filled and update.status is last_status
            ):
                return
        self._last_update[update.client_id] = (
            rank,
            max(filled, last[1] if last else -1),
            update.status,
        )
        if tracked is not None:
            tracked.status = update.status
            if update.filled_lots is not None:
                tracked.filled_lots = max(tracked.filled_lots, update.filled_lots)
            if update.exchange_id:
                tracked.exchange_id = update.exchange_id
        if self.sink is not None:
            try:
                self.sink.on_order_update(update)
            except Exception:
                logger.exception("{}: sink.on_order_update failed", self.name)

    def _emit_fill(self, fill: Fill) -> None:
        if fill.fill_id in self._seen_fills:
            self.counters["duplicate_fills"] += 1
            return
        self._seen_fills.add(fill.fill_id)
        if self.sink is not None:
            try:
                self.sink.on_fill(fill)
            except Exception:
                logger.exception("{}: sink.on_fill failed", self.name)

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

    # -- helpers for venues ----------------------------------------------------------------------
    def tracked(self, client_id: str) -> TrackedOrder | None:
        return self._orders.get(client_id)

    @staticmethod
    def tif_of(order: Order) -> TimeInForce:
        return order.tif
