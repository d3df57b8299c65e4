"""The exchange adapter contract shared by the simulated exchange and live venues.

An adapter owns one venue's connections. It feeds the run through a ``VenueSink``
(book changes, book state transitions, public trades, order updates, fills) and takes
order actions through ``submit``, which never blocks: results come back as
``OrderUpdate`` and ``Fill`` events, as they do from a real venue.
"""

from __future__ import annotations

import typing
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from quoteforge.model import Fill, Instrument, Offer, Order, OrderUpdate, Side

if TYPE_CHECKING:
    from quoteforge.book import L2Book
    from quoteforge.clock import Clock
    from quoteforge.model import Funding, VenuePosition

__all__ = [
    "CancelAll",
    "CancelOrder",
    "DerivativesSink",
    "ExchangeAdapter",
    "OrderAction",
    "PlaceOrder",
    "ReplaceOrder",
    "VenueContext",
    "VenueSink",
    "makes_simulated_venue",
]


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    order: Order


@dataclass(frozen=True, slots=True)
class CancelOrder:
    client_id: str
    venue: str
    symbol: str


@dataclass(frozen=True, slots=True)
class ReplaceOrder:
    """Cancel ``old_client_id`` and place ``new`` in one venue call where supported."""

    old_client_id: str
    new: Order


@dataclass(frozen=True, slots=True)
class CancelAll:
    venue: str
    symbol: str | None = None


OrderAction = PlaceOrder | CancelOrder | ReplaceOrder | CancelAll


class VenueSink(Protocol):
    """What an adapter calls when something happens on its venue."""

    def on_book(self, book: L2Book) -> None:
        """The book changed (after the update was applied and checked)."""

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        """The book moved between SYNCING, LIVE, STALE and RESYNCING."""

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        """A public trade printed on the venue."""

    def on_order_update(self, update: OrderUpdate) -> None:
        """A report about one of our orders."""

    def on_fill(self, fill: Fill) -> None:
        """One of our orders traded."""

    def on_offer(self, offer: Offer) -> None:
        """A counterparty offer arrived (offer-stream venues only). To take it, the run
        places an IOC order at the offer's price with ``extra["offer_id"]`` set."""


class DerivativesSink(VenueSink, Protocol):
    """A sink that also hears what only derivatives venues report. The run's engine is
    one; an adapter calls these only on a sink that has them (``getattr``), so sinks
    of spot-only tools need not implement them."""

    def on_funding(self, funding: Funding) -> None:
        """A funding payment on a perpetual position (derivatives venues only): booked
        in the portfolio's PnL and journaled (kind ``funding``) once per id."""

    def on_position(self, position: VenuePosition) -> None:
        """The venue's view of a position changed (derivatives venues only): kept for
        risk checks (liquidation distance) and the report; our fills stay the truth
        of the position itself."""


@dataclass
class VenueContext:
    """What a run hands an adapter factory besides the adapter's own params."""

    name: str
    clock: Clock
    seed: int
    mode: str
    symbols: list[str]
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)


class ExchangeAdapter(ABC):
    """One venue. Subclasses: ``quoteforge.exchanges.sim.SimExchange`` and the live
    adapters. Required methods are abstract; the rest have working defaults."""

    #: True when the venue's matching engine runs inside the adapter (a simulation):
    #: its orders must reach the process that makes its market data, so a split run
    #: hosts it whole on the execution node, and can run it in virtual time.
    simulated: ClassVar[bool] = False

    name: str
    instruments: dict[str, Instrument]
    books: dict[str, L2Book]

    @abstractmethod
    async def connect(self, sink: VenueSink) -> None:
        """Load instruments and start market data for the context's symbols."""

    @abstractmethod
    def submit(self, actions: Sequence[OrderAction]) -> None:
        """Send order actions; never blocks. Outcomes arrive through the sink."""

    @abstractmethod
    async def close(self) -> None:
        """Stop streams and release connections. Does not cancel orders."""

    async def cancel_all(self, symbol: str | None = None) -> None:
        """Cancel every open order of ours (on ``symbol`` or everywhere)."""
        self.submit([CancelAll(self.name, symbol)])

    # Reconciliation. ``None`` means "this adapter cannot tell", never "nothing": a run
    # compares its working orders only with a venue that answers with a list, so an
    # adapter without these methods keeps its orders (an empty list would close them).

    async def fetch_open_orders(self) -> list[OrderUpdate] | None:
        """Open orders as the venue reports them (reconciliation truth), or None when
        the adapter cannot ask the venue (the default)."""
        return None

    async def fetch_balances(self) -> dict[str, Decimal] | None:
        """Total balance per asset, or None when the adapter cannot ask (the default)."""
        return None

    async def fetch_fills(self, since_ns: int) -> list[Fill] | None:
        """Our fills at or after ``since_ns`` as the venue reports them, or None when
        the adapter cannot ask (the default)."""
        return None


def makes_simulated_venue(factory: Any) -> bool:
    """Whether a registered exchange factory makes a simulated venue (see
    ``ExchangeAdapter.simulated``) without building one: the factory is the adapter
    class, or carries a ``simulated`` attribute, or is a function annotated to return
    the adapter class."""
    flag = getattr(factory, "simulated", None)
    if isinstance(flag, bool):
        return flag
    try:
        made = typing.get_type_hints(factory).get("return")
    except Exception:  # annotations that do not resolve: nothing to go by
        return False
    return isinstance(made, type) and bool(getattr(made, "simulated", False))
