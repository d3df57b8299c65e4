"""TWAP execution for unwinding inventory: a parent quantity sliced into limit-priced
immediate-or-cancel children over a duration on the run clock, re-slicing what is left."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from quoteforge.model import Fill, Instrument, Order, OrderUpdate, Side
from quoteforge.strategy import Market, StrategyContext

__all__ = ["TwapChild", "TwapExecutor", "TwapParams", "TwapSchedule"]

NS = 1_000_000_000


class TwapParams(BaseModel):
    """How a parent order is worked."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    duration_s: float = Field(gt=0, description="Time over which the parent is worked.")
    slices: int = Field(ge=1, description="Number of child orders, evenly spaced in time.")
    band_bps: Decimal = Field(
        ge=0,
        description="Each child is limited to mid*(1+band) for a buy and mid*(1-band) for a "
        "sell: the worst price it may trade at, in basis points from the mid.",
    )


@dataclass(frozen=True, slots=True)
class TwapChild:
    """One slice to send: an immediate-or-cancel order on the venue's grid."""

    index: int
    due_ns: int
    side: Side
    price_ticks: int
    qty_lots: int


@dataclass(slots=True)
class _Sent:
    qty: int
    filled: int = 0
    venue_filled: int = 0
    closed: bool = False

    @property
    def committed(self) -> int:
        """Lots this child has taken out of the parent: all of it while it may still
        trade, what traded once it is closed."""
        return max(self.filled, self.venue_filled) if self.closed else self.qty


@dataclass
class TwapSchedule:
    """The pure scheduling logic, with no clock or venue: ask ``child`` at slice times,
    report fills and closed children, and the remainder is re-sliced evenly over the
    slices left (rounded up, so the parent is offered in full by the last slice)."""

    instrument: Instrument
    side: Side
    total_lots: int
    start_ns: int
    duration_ns: int
    slices: int
    band_bps: Decimal
    index: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    _sent: dict[str, _Sent] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.total_lots <= 0:
            raise ValueError(f"TWAP needs a positive quantity, got {self.total_lots} lots")
        if self.slices < 1 or self.duration_ns <= 0:
            raise ValueError(
                f"TWAP needs slices >= 1 and a positive duration, got {self.slices} slices "
                f"over {self.duration_ns} ns"
            )
        if self.band_bps < 0:
            raise ValueError(f"band_bps must be >= 0, got {self.band_bps}")
        band = Fraction(self.band_bps) / 10_000
        self._band = 1 + band if self.side is Side.BUY else 1 - band

    @classmethod
    def from_params(
        cls, instrument: Instrument, side: Side, total_lots: int, start_ns: int, p: TwapParams
    ) -> TwapSchedule:
        return cls(
            instrument, side, total_lots, start_ns, int(p.duration_s * NS), p.slices, p.band_bps
        )

    # -- time ------------------------------------------------------------------------
    def due_ns(self, index: int) -> int:
        return self.start_ns + self.duration_ns * index // self.slices

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns

    def next_due_ns(self) -> int | None:
        """When the next slice is due (None once every slice was offered)."""
        return self.due_ns(self.index) if self.index < self.slices else None

    # -- quantities ----------------------------------------------------------------------
    @property
    def filled_lots(self) -> int:
        return sum(s.filled for s in self._sent.values())

    @property
    def in_flight_lots(self) -> int:
        return sum(s.qty - s.filled for s in self._sent.values() if not s.closed)

    @property
    def unassigned_lots(self) -> int:
        """Lots neither traded nor working in a child: what later slices must offer."""
        return max(0, self.total_lots - sum(s.committed for s in self._sent.values()))

    @property
    def remaining_lots(self) -> int:
        return self.total_lots - self.filled_lots

    @property
    def working(self) -> bool:
        """A child is out and may still trade."""
        return any(not s.closed for s in self._sent.values())

    @property
    def done(self) -> bool:
        """Every slice was offered and no child is working, or the parent is filled."""
        if self.filled_lots >= self.total_lots:
            return True
        return self.index >= self.slices and not self.working

    def limit_ticks(self, bid_ticks: int, ask_ticks: int) -> int:
        """The worst acceptable price, inside the band: rounded towards the mid."""
        limit = Fraction(bid_ticks + ask_ticks, 2) * self._band
        ticks = math.floor(limit) if self.side is Side.BUY else math.ceil(limit)
        return self.instrument.clamp_ticks(ticks)

    # -- events --------------------------------------------------------------------------
    def child(self, now_ns: int, bid_ticks: int | None, ask_ticks: int | None) -> TwapChild | None:
        """The child to send now, or None (not due yet, nothing to offer, no mid, or a
        size the venue would refuse; the lots then move to the next slices)."""
        if self.index >= self.slices or now_ns < self.due_ns(self.index):
            return None
        # Overdue slices (a late timer) merge into this one rather than firing in a burst.
        while self.index + 1 < self.slices and self.due_ns(self.index + 1) <= now_ns:
            self.index += 1
        index = self.index
        self.index += 1
        left = self.unassigned_lots
        if left <= 0:
            return None
        slices_left = self.slices - index
        # Children are whole order steps (the venue refuses anything else): each slice
        # is rounded up to a step, never beyond the whole steps still unassigned; a part
        # step left over can never be sent.
        step = self.instrument.step_lots
        whole = left - left % step
        if whole <= 0:
            self.skipped.append((index, f"{left} lots left, less than one order step"))
            return None
        share = -(-left // slices_left)  # this slice's even share, rounded up
        qty = min(whole, -(-share // step) * step)
        if bid_ticks is None or ask_ticks is None:
            self.skipped.append((index, "no mid: a book side is empty"))
            return None
        price = self.limit_ticks(bid_ticks, ask_ticks)
        problem = self.instrument.check_order(price, qty)
        if problem is not None:
            # Too small for the venue now: the lots are carried into the next slices.
            self.skipped.append((index, problem))
            return None
        return TwapChild(index, self.due_ns(index), self.side, price, qty)

    def sent(self, client_id: str, child: TwapChild) -> None:
        """``child`` went out as order ``client_id``."""
        self._sent[client_id] = _Sent(child.qty_lots)

    def refused(self, child: TwapChild, reason: str = "refused") -> None:
        """``child`` never went out (risk refused it); its lots go to later slices."""
        self.skipped.append((child.index, reason))

    def on_fill(self, client_id: str, lots: int) -> bool:
        """A fill of one of our children; False when the order is not ours."""
        sent = self._sent.get(client_id)
        if sent is None:
            return False
        sent.filled += lots
        return True

    def on_closed(self, client_id: str, venue_filled: int | None = None) -> bool:
        """Child ``client_id`` can trade no more (filled, expired, cancelled, rejected);
        ``venue_filled`` is the venue's cumulative fill count when it reports one."""
        sent = self._sent.get(client_id)
        if sent is None:
            return False
        sent.closed = True
        if venue_filled is not None:
            sent.venue_filled = venue_filled
        return True


class TwapExecutor:
    """Drives a ``TwapSchedule`` from a strategy: timers from ``ctx.call_later`` (virtual
    or live time alike), children through ``ctx.take`` (so risk checks apply), fills and
    order updates forwarded by the strategy's ``on_fill`` / ``on_order_update``.

    ::

        def on_start(self, **kw):
            self.unwind = TwapExecutor(self.ctx, market, Side.SELL, lots, params)
            self.unwind.start()

        def on_fill(self, market, fill, **kw):
            if self.unwind.on_fill(fill):
                return
            ...
    """

    def __init__(
        self,
        ctx: StrategyContext,
        market: Market,
        side: Side,
        qty_lots: int,
        params: TwapParams,
        on_done: Callable[[TwapExecutor], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.market = market
        self.side = side
        self.qty_lots = qty_lots
        self.params = params
        self._on_done = on_done
        self.schedule: TwapSchedule | None = None
        self.orders: list[Order] = []
        self._timer: Any = None
        self._finished = False
        self.cancelled = False

    def start(self) -> None:
        """Begin now: the first slice goes out at once."""
        if self.schedule is not None:
            raise RuntimeError("this TWAP has already started; make a new TwapExecutor")
        self.schedule = TwapSchedule.from_params(
            self.market.instrument, self.side, self.qty_lots, self.ctx.now_ns(), self.params
        )
        self._fire()

    def cancel(self) -> None:
        """Stop sending slices (children already sent still run to their end)."""
        self.cancelled = True
        if self._timer is not None:
            self._timer.cancel()
        self._check_done()

    @property
    def done(self) -> bool:
        return self._finished

    def on_fill(self, fill: Fill) -> bool:
        """Forward every fill; returns True when it belonged to this TWAP."""
        if self.schedule is None or not self.schedule.on_fill(fill.client_id, fill.qty_lots):
            return False
        self._check_done()
        return True

    def on_order_update(self, update: OrderUpdate) -> bool:
        """Forward every order update; returns True when it belonged to this TWAP."""
        if self.schedule is None or not update.status.is_terminal:
            return False
        if not self.schedule.on_closed(update.client_id, update.filled_lots):
            return False
        self._check_done()
        return True

    def _fire(self) -> None:
        schedule = self.schedule
        if schedule is None or self.cancelled:
            return
        now = self.ctx.now_ns()
        book = self.market.book
        child = schedule.child(now, book.best_bid_ticks(), book.best_ask_ticks())
        if child is not None:
            order = self.ctx.take(self.market, child.side, child.price_ticks, child.qty_lots)
            if order is None:
                schedule.refused(child, "refused by risk")
            else:
                self.orders.append(order)
                schedule.sent(order.client_id, child)
        due = schedule.next_due_ns()
        if due is not None:
            # Half a nanosecond of slack so float seconds never land before the due time.
            self._timer = self.ctx.call_later((max(due - now, 0) + 0.5) / NS, self._fire)
        self._check_done()

    def _check_done(self) -> None:
        schedule = self.schedule
        if self._finished or schedule is None:
            return
        if schedule.done or (self.cancelled and not schedule.working):
            self._finished = True
            if self._timer is not None:
                self._timer.cancel()
            if self._on_done is not None:
                self._on_done(self)
