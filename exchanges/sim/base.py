"""What every simulated venue shares: order reports and fills on their way to the run,
action dispatch, venue-profile refusals, book-state announcements and the reconcile
answers.

The five simulated venues (``sim``, ``offer_sim``, ``as_model``, ``replay`` and the fill
simulator behind paper trading) differ in how they match and in when a message reaches
the run (their latency models), not in what a report or a fill says or how it is
delivered. ``OrderReports`` writes those messages once; each venue passes the delivery
time it computed on the run clock, so every venue keeps its own latency draws, in its
own order, and a seed gives the same run as before.

``OrderReports`` is composed rather than inherited because the fill simulator is not an
adapter (paper trading and ``replay`` wrap it and share its reports), while
``SimulatedVenue`` is the adapter base of the venues that own their markets.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from decimal import Decimal
from typing import Any, ClassVar, Generic, TypeVar

from loguru import logger

from quoteforge.book import BookState, L2Book
from quoteforge.clock import Clock
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
from quoteforge.exchanges.profiles import ProfileParams, Refusal, VenueLimits, describe_limits
from quoteforge.model import Fill, Instrument, Liquidity, Order, OrderStatus, OrderUpdate

__all__ = ["BPS", "ActionDispatch", "OrderReports", "SimulatedVenue"]

#: One basis point: fee rates are given in bps of notional.
BPS = Decimal("0.0001")

_OPEN = OrderStatus.OPEN
_PARTIAL = OrderStatus.PARTIALLY_FILLED
_REJECTED = OrderStatus.REJECTED

P = TypeVar("P", bound=ProfileParams)


class OrderReports:
    """A simulated venue's reports about our orders and its fills, delivered to the
    run's sink at the time the venue's latency model chose.

    ``fills`` is what the venue's trade-history endpoint would list (the reconcile
    answer to "fills since"); fill ids are ``<symbol>-<n>`` with one counter per venue,
    so they are unique across its markets. Messages scheduled before the sink is
    detached (``sink = None`` at close) are dropped when their time comes.
    """

    __slots__ = ("_fill_seq", "clock", "fills", "sink", "venue")

    def __init__(self, venue: str, clock: Clock) -> None:
        self.venue = venue
        self.clock = clock
        self.sink: VenueSink | None = None
        self.fills: list[Fill] = []
        self._fill_seq = itertools.count(1)

    def update(
        self,
        client_id: str,
        status: OrderStatus,
        filled: int,
        reason: str,
        when: int,
        price_ticks: int | None = None,
        qty_lots: int | None = None,
    ) -> None:
        """Report ``status`` of our order ``client_id`` (``filled`` lots so far), stamped
        now, to reach the run at ``when``."""
        update = OrderUpdate(
            self.venue,
            client_id,
            status,
            self.clock.now_ns(),
            exchange_id=client_id,
            filled_lots=filled,
            price_ticks=price_ticks,
            qty_lots=qty_lots,
            reason=reason,
        )
        self.clock.call_at(when, self._deliver_update, update)

    def fill(
        self,
        instrument: Instrument,
        order: Order,
        price_ticks: int,
        lots: int,
        fee: Decimal,
        liquidity: Liquidity,
        ts_ns: int,
        when: int,
    ) -> Fill:
        """Record a fill of ``lots`` of ``order`` at ``price_ticks`` (traded at ``ts_ns``,
        fee in the quote asset) and send it to reach the run at ``when``."""
        symbol = instrument.symbol
        fill = Fill(
            venue=self.venue,
            symbol=symbol,
            fill_id=f"{symbol}-{next(self._fill_seq)}",
            client_id=order.client_id,
            side=order.side,
            price_ticks=price_ticks,
            qty_lots=lots,
            fee=fee,
            fee_asset=instrument.quote,
            liquidity=liquidity,
            ts_ns=ts_ns,
            strategy=order.strategy,
        )
        self.fills.append(fill)
        self.clock.call_at(when, self._deliver_fill, fill)
        return fill

    def working(
        self,
        client_id: str,
        filled: int,
        price_ticks: int | None,
        qty_lots: int,
        now_ns: int,
        symbol: str = "",
    ) -> OrderUpdate:
        """One line of the open-orders answer: a working order as the venue lists it."""
        return OrderUpdate(
            self.venue,
            client_id,
            _PARTIAL if filled else _OPEN,
            now_ns,
            exchange_id=client_id,
            filled_lots=filled,
            price_ticks=price_ticks,
            qty_lots=qty_lots,
            symbol=symbol,
        )

    def since(self, since_ns: int) -> list[Fill]:
        """Our fills at or after ``since_ns`` (the reconcile answer)."""
        return [f for f in self.fills if f.ts_ns >= since_ns]

    def _deliver_update(self, update: OrderUpdate) -> None:
        if self.sink is not None:
            self.sink.on_order_update(update)

    def _deliver_fill(self, fill: Fill) -> None:
        if self.sink is not None:
            self.sink.on_fill(fill)


class ActionDispatch(ABC):
    """Carries out an order action that reached the matching: a replace is a cancel
    followed by a place, as the simulated venues match it.

    Each venue that matches orders itself implements the three ``execute_*`` methods;
    ``_carry_out`` calls them once an action has reached the venue (after its entry
    latency and the venue profile's limits); the run calls ``submit``, never these."""

    @abstractmethod
    def execute_place(self, order: Order) -> None:
        """A new order reaches the matching. Venues implement it."""

    @abstractmethod
    def execute_cancel(self, client_id: str, symbol: str) -> None:
        """A cancel reaches the matching (a no-op when the order is gone already: its
        own report settles the pending cancel). Venues implement it."""

    @abstractmethod
    def execute_cancel_all(self, symbol: str | None) -> None:
        """A cancel-all for ``symbol`` (None: every market) reaches the matching. Venues
        implement it."""

    def _carry_out(self, action: OrderAction) -> None:
        if isinstance(action, PlaceOrder):
            self.execute_place(action.order)
        elif isinstance(action, CancelOrder):
            self.execute_cancel(action.client_id, action.symbol)
        elif isinstance(action, ReplaceOrder):
            self.execute_cancel(action.old_client_id, action.new.symbol)
            self.execute_place(action.new)
        elif isinstance(action, CancelAll):
            self.execute_cancel_all(action.symbol)


class SimulatedVenue(ExchangeAdapter, Generic[P]):
    """The adapter base of the simulated venues: params and context, the sink and the
    reports that go to it, the venue profile's limits, and the reconcile answer for
    fills. Subclasses build their markets, set ``limits`` and call ``_start`` (or
    ``_attach``) when connecting; those that match orders themselves add
    ``ActionDispatch``."""

    #: A simulated venue sends nothing to a real exchange.
    simulated: ClassVar[bool] = True

    def __init__(self, params: P, ctx: VenueContext, reports: OrderReports | None = None) -> None:
        self.params = params
        self.ctx = ctx
        self.name = ctx.name
        self.clock: Clock = ctx.clock
        self.sink: VenueSink | None = None
        self.start_ns = 0
        self.reports = reports if reports is not None else OrderReports(self.name, self.clock)
        #: The venue profile's limits as this venue enforces them (None: an idealised venue).
        self.limits: VenueLimits | None = None

    # -- adapter contract ----------------------------------------------------------------
    async def close(self) -> None:
        self._attach(None)
        if self.limits is not None:
            logger.info(self.limits.summary(self.name))

    async def fetch_fills(self, since_ns: int) -> list[Fill]:
        return self.reports.since(since_ns)

    # -- for subclasses ------------------------------------------------------------------
    def _attach(self, sink: VenueSink | None) -> None:
        """Where market data, order reports and fills go (None: nowhere, after close)."""
        self.sink = sink
        self.reports.sink = sink

    def _start(self, sink: VenueSink) -> None:
        """The start of ``connect``: attach the sink, mark the start of the venue's run
        time and say which venue profile the simulation models."""
        self._attach(sink)
        self.start_ns = self.clock.now_ns()
        logger.info(describe_limits(self.name, self.params))

    def _set_state(self, book: L2Book, state: BookState, reason: str) -> None:
        """Move ``book`` to ``state`` and tell the run (nothing when it is there already)."""
        old = book.state
        if old is state:
            return
        book.state = state
        if self.sink is not None:
            self.sink.on_book_state(book, old.value, state.value, reason)

    @abstractmethod
    def report_at(self, market: Any) -> int:
        """When a report about an order on ``market`` (the venue's own market object,
        or None) reaches the run: the venue's latency model. Every venue implements it;
        ``_report`` and ``_refused`` stamp their reports with it."""

    def _report(
        self,
        client_id: str,
        status: OrderStatus,
        filled: int,
        reason: str = "",
        market: Any = None,
    ) -> None:
        self.reports.update(client_id, status, filled, reason, self.report_at(market))

    def _refused(self, refusal: Refusal, filled: int | None, market: Any = None) -> None:
        """Report a request the venue profile's limits refused, as the venue would: a new
        order REJECTED; a refused cancel answered with the order still live, ``filled``
        lots done (None: the order is gone already and its own report settles the
        cancel)."""
        if not refusal.live:
            self._report(refusal.client_id, _REJECTED, 0, refusal.reason, market)
        elif filled is not None:
            status = _PARTIAL if filled else _OPEN
            self._report(refusal.client_id, status, filled, refusal.reason, market)

    def _closed(self, client_id: str) -> None:
        if self.limits is not None:
            self.limits.closed(client_id)

    def _rejected(self, client_id: str) -> None:
        if self.limits is not None:
            self.limits.rejected(client_id, self.clock.now_ns())
