"""Order tracking of a live adapter: order actions sequenced per client id without
blocking, one report per transition, de-duplicated fills, and the recovery of orders
whose status a failed call left unknown (look up by client id before any resend).

``OrderTracking`` is the half of ``quoteforge.exchanges.ccxt_base.CcxtSpotAdapter`` that
knows orders but not connections: it asks the venue only through the public order
methods a venue implements (``send_place``, ``send_cancel``, ``lookup_order``,
``send_cancel_all``, optionally ``send_replace``, ``reconcile_orders`` and ``sync_time``)
and reports through the run's sink. ``VenueCallError`` is how those
methods say what happened, so the recovery here can decide what to do next.
"""

from __future__ import annotations

import asyncio
import functools
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger

from quoteforge.exchange import (
    CancelAll,
    CancelOrder,
    ExchangeAdapter,
    OrderAction,
    PlaceOrder,
    ReplaceOrder,
    VenueSink,
)
from quoteforge.model import (
    Fill,
    Instrument,
    InstrumentKind,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
)

if TYPE_CHECKING:
    from quoteforge.clock import Clock
    from quoteforge.exchanges.ccxt_base import CcxtSpotParams

__all__ = ["OrderTracking", "TrackedOrder", "VenueCallError", "VenueStartError"]

T = TypeVar("T")

CANCEL_TRIES = 3
"""Tries of a cancel whose outcome is unknown before the order is looked up (a pause of
``lookup_interval_s`` after the first, doubling)."""
CANCEL_RETRY_MAX_S = 2.0
"""Longest pause between the tries of a cancel still unconfirmed after its first round
(``reconnect_max_s`` when that is shorter): how late, at most, it goes out once the venue
answers again."""
CANCEL_LOOKUP_EVERY = 4
"""A cancel retried in the background looks the order up after this many unanswered
tries (the cancel's own answer, or the private stream, usually closes it first)."""


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


class VenueStartError(VenueCallError, ValueError):
    """The venue refused a start for a reason the manifest's values decide: its keys
    (``auth``) or a rate-limit wait longer than ``max_rate_wait_s`` (``rate_limited``).
    A ``ValueError`` too: the command line says it in one line, without a traceback."""


_LIVE = (OrderStatus.PENDING_NEW, OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED)
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


class OrderTracking(ExchangeAdapter):
    """Order actions, reports and recovery shared by the live adapters (see the module
    docstring). The adapter provides the attributes declared here, the task runner
    ``spawn_task`` and ``has_credentials``; a venue subclass implements the abstract
    order methods (``send_*``, ``lookup_order``) and may override the optional ones.
    The run never calls them: it calls ``submit``, and this class sequences, retries and
    recovers around them."""

    MAX_TRACKED = 20_000

    # Provided by the adapter (``CcxtSpotAdapter.__init__``).
    clock: Clock
    params: CcxtSpotParams
    sink: VenueSink | None
    secret_keys: tuple[str, str]
    counters: dict[str, int]
    _closed: bool

    def __init__(self) -> None:
        self._chains: dict[str, asyncio.Task[Any]] = {}
        self._cancel_keepers: dict[str, asyncio.Task[Any]] = {}
        """Client id -> the task sending its unconfirmed cancel again (``_keep_cancelling``)."""
        self._orders: dict[str, TrackedOrder] = {}
        self._seen_fills: set[str] = set()
        self._last_update: dict[str, tuple[int, int, OrderStatus]] = {}

    @property
    @abstractmethod
    def has_credentials(self) -> bool:
        """Whether the adapter can trade (API key and secret given)."""

    @abstractmethod
    def spawn_task(self, coro: Awaitable[Any], name: str = "") -> asyncio.Task[Any]:
        """Run ``coro`` as a task the adapter owns (cancelled by ``close``); the adapter
        base implements it."""

    # -- required venue methods: every venue implements these ------------------------------
    # Called from the per-order action chains (with rate-limit retry and unknown-status
    # recovery around them), never directly by the run.
    @abstractmethod
    async def send_place(self, order: TrackedOrder) -> None:
        """Send one new order; report what the venue answered; raise ``VenueCallError``.
        Venues implement it."""

    @abstractmethod
    async def send_cancel(self, order: TrackedOrder) -> None:
        """Cancel one order by client id; raise ``VenueCallError``. Venues implement it."""

    @abstractmethod
    async def lookup_order(self, order: TrackedOrder) -> OrderUpdate | None:
        """The venue's view of an order by client id; None when the venue has no such
        order. Venues implement it; recovery and reconciliation call it."""

    @abstractmethod
    async def send_cancel_all(self, symbol: str) -> None:
        """Cancel every open order of ours on ``symbol`` (one ``CancelAll`` action runs it
        per symbol). Venues implement it."""

    # -- optional venue methods: working defaults, venues override ---------------------------
    async def send_replace(self, old: TrackedOrder, new: TrackedOrder) -> None:
        """Cancel ``old`` then place ``new`` (venues with an atomic call override this).
        ``new`` is not placed when the cancel was refused: ``old`` still works."""
        if await self._cancel_checked(old):
            await self._place_checked(new)
        else:
            self.report_rejected(new.client_id, f"replace of {old.client_id}: cancel refused")

    async def reconcile_orders(self) -> None:
        """After the private stream was down: recover what it may have missed. The
        default looks up every working order; venues call it when their private stream
        reconnects and may override it (calling this one) to recover more."""
        self.counters["reconciliations"] += 1
        await self.look_up_each([t for t in self._orders.values() if not t.status.is_terminal])

    async def look_up_each(self, orders: list[TrackedOrder]) -> None:
        """Look each of ``orders`` up at the venue and report what it says (a failed
        lookup is logged; the order is left as it is)."""
        for tracked in orders:
            try:
                update = await self.lookup_order(tracked)
            except VenueCallError as exc:
                logger.warning(
                    "{}: reconcile lookup of {} failed: {}", self.name, tracked.client_id, exc
                )
                continue
            if update is not None:
                self._emit_update(update)

    def resend_wait_s(self, tracked: TrackedOrder) -> float:
        """Seconds until the last place request of ``tracked``, whose answer was lost, can
        no longer execute at the venue: ``_resolve_unknown`` resends no sooner, after one
        more lookup. The default, 0, suits venues that refuse a client id used before
        (there, two lookups a pause apart decide); venues with a request window override it.
        """
        return 0.0

    async def sync_time(self) -> None:
        """Measure the venue clock offset: ``connect`` calls it first, and again when the
        venue says a timestamp was outside its window. The default does nothing; venues
        with signed timestamps override it."""

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
            task = self.spawn_task(self._run_action(action, waits), f"{self.name}/action")
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
                new = self._track(action.new)
                if new is None:
                    return
                # An order of an earlier life (adopted by reconciliation) is not tracked
                # here yet: adopt it too, or it would keep resting beside its replacement.
                old = self._orders.get(action.old_client_id) or self._adopt(
                    action.old_client_id, action.new.symbol, action.new.side
                )
                if old is None or old.status.is_terminal:
                    await self._place_checked(new)
                else:
                    await self.send_replace(old, new)
            elif isinstance(action, CancelAll):
                symbols = [action.symbol] if action.symbol else list(self.instruments)
                for symbol in symbols:
                    await self._with_rate_retry(functools.partial(self.send_cancel_all, symbol))
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
        elif order.reduce_only and instrument.kind is not InstrumentKind.PERPETUAL:
            reason = f"{order.symbol} is a spot market: reduce-only orders need a position"
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
            self.report_rejected(order.client_id, reason)
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

    def _adopt(self, client_id: str, symbol: str, side: Side = Side.BUY) -> TrackedOrder | None:
        """Track an order sent before this adapter started (known from reconciliation)
        so it can be cancelled, or replaced, by client id."""
        instrument = self.instruments.get(symbol)
        if instrument is None:
            self.report_rejected(client_id, f"unknown symbol {symbol!r}")
            return None
        order = Order(client_id, self.name, symbol, side, 0, None)
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
                    await self.sync_time()
                    return await call()
                if exc.kind != "rate_limited":
                    raise
                self.counters["rate_limited"] += 1
                wait = max(exc.retry_after_s, 0.05)
                if waited + wait > self.params.max_rate_wait_s:
                    raise
                waited += wait
                await asyncio.sleep(wait)

    async def _read_patiently(
        self, read: Callable[[], Awaitable[T]], what: str, *, silences: int = 0
    ) -> T:
        """``read()`` (idempotent) asked again after a rate limit's ``Retry-After``
        (429, or 418: this IP is banned), never sooner, while the waits stay within
        ``max_rate_wait_s`` in all; a longer wait is refused with a ``rate_limited``
        error that names it and what to do. ``silences``: how many times a read that got
        no answer (``unknown``) is asked again, 0.5 s then 1 s... later."""
        waited, pause, silent = 0.0, 0.5, 0
        while True:
            try:
                return await read()
            except VenueCallError as exc:
                if exc.kind == "rate_limited":
                    self.counters["rate_limited"] += 1
                    wait = max(exc.retry_after_s, 0.05)
                    if waited + wait > self.params.max_rate_wait_s:
                        raise self._rate_wait_refused(exc, what, wait) from None
                    logger.warning(
                        "{}: reading {} refused ({}); asking again in {:.1f}s, as the venue said",
                        self.name,
                        what,
                        exc,
                        wait,
                    )
                    waited += wait
                    await asyncio.sleep(wait)
                    continue
                if exc.kind != "unknown" or silent >= silences:
                    raise
                silent += 1
                logger.warning("{}: reading {} failed ({}); asking again", self.name, what, exc)
            await asyncio.sleep(pause)
            pause *= 2

    def _rate_wait_refused(self, exc: VenueCallError, what: str, wait: float) -> VenueCallError:
        """The error for a read whose rate-limit wait is longer than allowed."""
        banned = exc.code == "418" or "418" in exc.message
        why = "the venue banned this IP (HTTP 418)" if banned else "the venue's rate limit was hit"
        until = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + wait))
        return VenueCallError(
            "rate_limited",
            f"{self.name}: reading {what}: {why} and it asks us to wait {wait:.0f}s, more than "
            f"max_rate_wait_s ({self.params.max_rate_wait_s:g}s) allows; start again after "
            f"{until} (requests sent sooner make a ban longer), or raise "
            f"exchanges.{self.name}.params.max_rate_wait_s",
            exc.code,
            wait,
            exc.payload,
        )

    async def _place_checked(self, tracked: TrackedOrder) -> None:
        try:
            await self._with_rate_retry(lambda: self.send_place(tracked))
        except VenueCallError as exc:
            if exc.kind == "unknown":
                self.counters["unknown"] += 1
                await self._resolve_unknown(tracked, str(exc))
            else:
                self.counters["rejected"] += 1
                self.report_rejected(tracked.client_id, str(exc))

    async def _cancel_checked(self, tracked: TrackedOrder) -> bool:
        """Cancel ``tracked``; False when the venue refused the cancel (the order works on
        and the run has been told so).

        A cancel whose outcome stays unknown (no answer, 5xx) is sent again a pause apart
        (``CANCEL_TRIES`` in all), then the order is looked up. When that does not show it
        closed, it may still rest at the venue: the cancel is never dropped but handed to
        ``_keep_cancelling``, in the background so that the order's action chain, and a
        ``CancelAll`` waiting on it, go on; True is returned then, as for a cancel sent."""
        keeper = self._cancel_keepers.get(tracked.client_id)
        if keeper is not None and not keeper.done():
            return True  # already being sent again until the venue confirms it
        pause = self.params.lookup_interval_s
        why = ""
        for _ in range(CANCEL_TRIES):
            if tracked.status.is_terminal:
                return True
            try:
                outcome = await self._try_cancel(tracked)
            except VenueCallError as exc:
                why = str(exc)
            else:
                return outcome
            # Cancels are idempotent: send it again after a pause.
            await asyncio.sleep(pause)
            pause *= 2
        if await self._cancel_looked_up(tracked):
            return True
        self.counters["cancel_retries"] = self.counters.get("cancel_retries", 0) + 1
        logger.warning(
            "{}: cancel of order {} on {} not confirmed after {} tries and a lookup ({}); "
            "it may still be open at the venue: the adapter keeps retrying it until the "
            "venue confirms the order closed",
            self.name,
            tracked.client_id,
            tracked.symbol,
            CANCEL_TRIES,
            why or "no answer",
        )
        task = self.spawn_task(
            self._keep_cancelling(tracked, pause, time.monotonic()),
            f"{self.name}/cancel/{tracked.client_id}",
        )
        self._cancel_keepers[tracked.client_id] = task
        task.add_done_callback(functools.partial(self._keeper_done, tracked.client_id))
        return True

    def _keeper_done(self, client_id: str, task: asyncio.Task[Any]) -> None:
        if self._cancel_keepers.get(client_id) is task:
            del self._cancel_keepers[client_id]

    async def _keep_cancelling(self, tracked: TrackedOrder, pause: float, since: float) -> None:
        """Send the cancel of ``tracked`` again, the pauses doubling up to
        ``CANCEL_RETRY_MAX_S`` (or ``reconnect_max_s`` when shorter), until the venue
        confirms the order closed (cancel answered, "no such order", or a lookup that
        finds it closed), a report closes it (private stream, reconciliation,
        ``CancelAll``), the venue refuses the cancel (the run is told), or the adapter
        closes (``close`` cancels this task). Each try is one request bounded by
        ``request_timeout_s`` and the rate limits as any other; every
        ``CANCEL_LOOKUP_EVERY`` unanswered tries the order is looked up too."""
        cap = min(CANCEL_RETRY_MAX_S, self.params.reconnect_max_s)
        pause = min(pause, cap)
        tries = 0
        while not tracked.status.is_terminal and not self._closed:
            await asyncio.sleep(pause)
            pause = min(pause * 2, cap)
            if tracked.status.is_terminal or self._closed:
                break
            tries += 1
            try:
                if not await self._try_cancel(tracked):
                    return  # refused: reported to the run, which manages the order again
                break
            except VenueCallError as exc:
                logger.debug(
                    "{}: cancel of {} still unanswered: {}", self.name, tracked.client_id, exc
                )
            if tries % CANCEL_LOOKUP_EVERY == 0 and await self._cancel_looked_up(tracked):
                break
        if self._closed:
            return
        logger.info(
            "{}: cancel of order {} on {} confirmed after {:.1f}s of retries ({} more tries)",
            self.name,
            tracked.client_id,
            tracked.symbol,
            time.monotonic() - since,
            tries,
        )

    async def _try_cancel(self, tracked: TrackedOrder) -> bool:
        """Send the cancel of ``tracked`` once: True when the venue took it or no longer
        has the order (reported), False when it refused it (reported to the run as a
        refusal); a ``VenueCallError`` of kind ``unknown`` when the outcome is not known.
        A rate limit's wait is waited out here: the cancel still has to happen."""
        while True:
            try:
                await self._with_rate_retry(lambda: self.send_cancel(tracked))
                return True
            except VenueCallError as exc:
                if exc.kind == "not_found":
                    self._emit_looked_up(tracked, await self._lookup_quietly(tracked))
                    return True
                if exc.kind == "rate_limited":
                    # Not sent (a ban or a full window): the cancel still has to happen, so
                    # it waits the limit out; the order stays PENDING_CANCEL, still ours.
                    wait = max(exc.retry_after_s, self.params.lookup_interval_s)
                    logger.warning(
                        "{}: cancel of {} refused by the rate limit ({}); sending it again "
                        "in {:.1f}s",
                        self.name,
                        tracked.client_id,
                        exc,
                        wait,
                    )
                    await asyncio.sleep(wait)
                    if tracked.status.is_terminal:
                        return True
                    continue
                if exc.kind != "unknown":
                    self.report_refused(tracked, f"cancel refused: {exc}")
                    return False
                raise

    async def _cancel_looked_up(self, tracked: TrackedOrder) -> bool:
        """Look up ``tracked``, whose cancel is unanswered, and report what the venue
        says: True when the order is closed (or the venue has no such order), False when
        it may still be open (found working, or the lookup failed too)."""
        if tracked.status.is_terminal:
            return True
        self.counters["lookups"] += 1
        try:
            update = await self._with_rate_retry(lambda: self.lookup_order(tracked))
        except VenueCallError as exc:
            logger.info(
                "{}: lookup of {} (cancel unanswered) failed: {}", self.name, tracked.client_id, exc
            )
            return False
        self._emit_looked_up(tracked, update)
        return update is None or update.status.is_terminal or tracked.status.is_terminal

    def _emit_looked_up(self, tracked: TrackedOrder, update: OrderUpdate | None) -> None:
        """Report what a lookup of ``tracked`` found; nothing found: the venue does not
        know the order, so it is reported cancelled."""
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

    async def _lookup_quietly(self, tracked: TrackedOrder) -> OrderUpdate | None:
        try:
            return await self._with_rate_retry(lambda: self.lookup_order(tracked))
        except VenueCallError:
            return None

    async def _resolve_unknown(self, tracked: TrackedOrder, why: str) -> None:
        """The venue may or may not have the order: ask by client id before any resend.

        Two "not found" answers a pause apart, the last one asked once the lost request
        can no longer execute (``resend_wait_s``), mean it was never placed; only then is
        it sent again, with the same client id. A venue may refuse a duplicate client id
        only among its open orders (Binance): a late original of an IOC order would then
        execute beside its resend, doubling the position.
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
            wait_s = self.resend_wait_s(tracked)  # before the lookup, which must come after
            self.counters["lookups"] += 1
            try:
                update = await self._with_rate_retry(lambda: self.lookup_order(tracked))
            except VenueCallError as exc:
                logger.info("{}: lookup of {} failed: {}", self.name, tracked.client_id, exc)
                continue
            if update is not None:
                self._emit(update)
                return
            not_found += 1
            if not_found < 2:
                continue
            if wait_s > 0:
                logger.info(
                    "{}: order {} not found, but its request can still execute for {:.2f}s: "
                    "one more lookup then",
                    self.name,
                    tracked.client_id,
                    wait_s,
                )
                self.counters["resend_waits"] = self.counters.get("resend_waits", 0) + 1
                delay, not_found = wait_s + 0.01, 1
                continue
            if tracked.resends >= 1:
                break
            tracked.resends += 1
            self.counters["resends"] += 1
            logger.warning(
                "{}: order {} was not placed; sending it again", self.name, tracked.client_id
            )
            try:
                await self._with_rate_retry(lambda: self.send_place(tracked))
                return
            except VenueCallError as exc:
                if exc.kind != "unknown":
                    self.report_rejected(tracked.client_id, str(exc))
                    return
                not_found = 0
        if tracked.status is OrderStatus.PENDING_NEW:
            self.report_rejected(
                tracked.client_id,
                f"status unknown after {self.params.order_lookups} lookups ({why}); "
                "reconciliation will pick it up if it exists",
            )

    # -- events to the run ---------------------------------------------------------------------
    def _emit(self, update: OrderUpdate) -> None:
        self._emit_update(update)

    def report_rejected(self, client_id: str, reason: str) -> None:
        """Report an order as ``REJECTED`` now, with the reason (refused locally, by the
        venue, or given up after its status stayed unknown)."""
        self._emit_update(
            OrderUpdate(
                self.name, client_id, OrderStatus.REJECTED, self.clock.now_ns(), reason=reason
            )
        )

    def report_cancelled(self, tracked: TrackedOrder) -> None:
        """Report a tracked order as ``CANCELLED`` now, with what it had filled (a venue
        whose cancel answer is the confirmation)."""
        self._emit_update(
            OrderUpdate(
                self.name,
                tracked.client_id,
                OrderStatus.CANCELLED,
                self.clock.now_ns(),
                exchange_id=tracked.exchange_id,
                filled_lots=tracked.filled_lots,
            )
        )

    def report_refused(self, tracked: TrackedOrder, reason: str) -> None:
        """Report that the venue refused a cancel (or replace) of ``tracked``: its live
        status again, with ``reason``, which the run reads as the refusal (the order
        leaves PENDING_CANCEL and is managed again). It repeats the last report on
        purpose, so it bypasses the de-duplication of ``_emit_update``."""
        status = tracked.status if tracked.status in _LIVE else OrderStatus.OPEN
        if status is OrderStatus.OPEN and tracked.filled_lots:
            status = OrderStatus.PARTIALLY_FILLED
        now = self.clock.now_ns()
        self._forward(OrderUpdate(self.name, tracked.client_id, status, now, reason=reason))

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
        self._forward(update)

    def _forward(self, update: OrderUpdate) -> None:
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

    # -- helpers for venues ----------------------------------------------------------------------
    def tracked(self, client_id: str) -> TrackedOrder | None:
        return self._orders.get(client_id)

    @staticmethod
    def tif_of(order: Order) -> TimeInForce:
        return order.tif
