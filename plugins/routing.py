"""Smart order routing over a consumer book: split an aggressive order across venues by
fee-adjusted price, within a slippage cap, as exact per-venue child orders."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal

from quoteforge.book.l2 import BookState, L2Book
from quoteforge.model import Instrument, Side
from quoteforge.plugins.consumer_book import ConsumerBook, VenueFill

__all__ = ["ChildOrder", "Route", "SmartOrderRouter"]

_BPS = Decimal(10_000)


@dataclass(frozen=True, slots=True)
class ChildOrder:
    """One immediate-or-cancel order for one venue, on that venue's own grid: limit at
    the worst level the route uses there, size the sum of its levels."""

    venue: str
    instrument: Instrument
    side: Side
    price_ticks: int
    qty_lots: int

    @property
    def price(self) -> Decimal:
        return self.instrument.ticks_to_price(self.price_ticks)

    @property
    def qty(self) -> Decimal:
        return self.instrument.lots_to_qty(self.qty_lots)


@dataclass(frozen=True, slots=True)
class Route:
    """The router's answer: child orders and what the walk of the books expects them
    to achieve. Prices and sizes are exact; ``fees`` uses each venue's taker rate."""

    side: Side
    requested: Decimal
    filled: Decimal
    children: tuple[ChildOrder, ...]
    fills: tuple[VenueFill, ...]
    notional: Decimal
    fees: Decimal
    best_price: Decimal | None
    cap_price: Decimal | None
    max_slippage_bps: Decimal

    @property
    def complete(self) -> bool:
        return self.filled == self.requested

    @property
    def unfilled(self) -> Decimal:
        """What the cap or the depth left unallocated."""
        return self.requested - self.filled

    @property
    def avg_price(self) -> Decimal | None:
        return self.notional / self.filled if self.filled else None

    @property
    def all_in_price(self) -> Decimal | None:
        """Average price with fees: paid more on a buy, received less on a sell."""
        if not self.filled:
            return None
        cost = self.notional + self.fees if self.side is Side.BUY else self.notional - self.fees
        return cost / self.filled

    @property
    def slippage_bps(self) -> Decimal | None:
        """Average price against the consumer book's best, in bps (>= 0)."""
        avg = self.avg_price
        if avg is None or not self.best_price:
            return None
        gap = avg - self.best_price if self.side is Side.BUY else self.best_price - avg
        return gap / self.best_price * _BPS

    def by_venue(self) -> dict[str, ChildOrder]:
        return {c.venue: c for c in self.children}


class _Stream:
    __slots__ = (
        "fee",
        "inst",
        "levels",
        "name",
        "order",
        "pending",
        "pending_lots",
        "q_mult",
        "step",
    )

    def __init__(self, name: str, order: int, book: L2Book, fee: Decimal, q_mult: int) -> None:
        self.name = name
        self.order = order
        self.inst = book.instrument
        self.fee = fee
        self.q_mult = q_mult
        # Lots in one order step of this venue, and the level takes walked that do not
        # make a whole step yet (venues show sizes finer than they accept orders).
        self.step = self.inst.step_lots
        self.pending: list[tuple[int, int]] = []
        self.pending_lots = 0
        self.levels: Iterator[tuple[int, int]] = iter(())


class SmartOrderRouter:
    """Routes aggressive orders over a ``ConsumerBook``.

    Levels of every venue (LIVE books only when the consumer book is ``live_only``)
    are taken best fee-adjusted price first: ``price * (1 + fee)`` for a buy,
    ``price * (1 - fee)`` for a sell, so a cheaper venue with a higher fee can lose
    to a dearer one without. The slippage cap is a price limit ``best * (1 ± cap)``
    against the consumer book's best price; no level beyond it is used (on the fee-
    adjusted price when ``cap_includes_fees``). Each venue gets a whole number of its
    own order steps (``Instrument.qty_step``) at its own ticks, so venues with different
    grids mix freely. Book sizes are read at the venue's reporting precision: level
    takes are exact, and a venue's takes count only once they add up to whole steps
    (a part step left at the end is not allocated).
    """

    def __init__(
        self,
        book: ConsumerBook,
        fees: Mapping[str, Decimal | str | float] | None = None,
        *,
        cap_includes_fees: bool = False,
    ) -> None:
        self.book = book
        self.cap_includes_fees = cap_includes_fees
        self._fees: dict[str, Decimal] = {}
        for venue, rate in (fees or {}).items():
            value = Decimal(str(rate))
            if not value.is_finite() or not 0 <= value < 1:
                raise ValueError(
                    f"fee for venue {venue!r} must be a rate in [0, 1) such as 0.001 "
                    f"(10 bps), got {rate!r}"
                )
            self._fees[venue] = value
        unknown = set(self._fees) - set(book.venues)
        if unknown:
            raise ValueError(
                f"fees given for venues {sorted(unknown)} that consumer book "
                f"{book.name!r} does not have; it has {book.venues}"
            )

    def fee(self, venue: str) -> Decimal:
        """Taker fee rate of ``venue``: as given, else its instrument's ``taker_fee``."""
        rate = self._fees.get(venue)
        return rate if rate is not None else self.book.book(venue).instrument.taker_fee

    def route(
        self, side: Side, size: Decimal | str | int, max_slippage_bps: Decimal | str | int
    ) -> Route:
        """Split an aggressive order of ``size`` base units on ``side`` across venues.

        A route may fill less than ``size`` when the depth within the cap is short;
        ``unfilled`` says how much, and nothing beyond the cap is ever allocated.
        """
        want = _decimal(size, "size")
        cap = _decimal(max_slippage_bps, "max_slippage_bps")
        if want <= 0:
            raise ValueError(f"route() needs a positive size, got {size!r}")
        if cap < 0:
            raise ValueError(f"max_slippage_bps must be >= 0, got {max_slippage_bps!r}")
        step = self.book.qty_step
        if not step:
            raise ValueError(f"consumer book {self.book.name!r} has no venues to route to")
        units, rest = divmod(want, step)
        if rest:
            raise ValueError(
                f"size {want} is not a multiple of the common lot size {step.normalize()} of "
                f"venues {self.book.venues}; round it to that step"
            )
        top = self.book.best_ask() if side is Side.BUY else self.book.best_bid()
        best = top.price if top is not None else None
        cap_price = None
        if best is not None:
            cap_price = best * (1 + cap / _BPS) if side is Side.BUY else best * (1 - cap / _BPS)
        fills = self._walk(side, int(units), cap_price)
        return self._route(side, want, cap, best, cap_price, fills)

    def _walk(self, side: Side, left: int, cap_price: Decimal | None) -> list[VenueFill]:
        buy = side is Side.BUY
        heap: list[tuple[Decimal, int, int, int, _Stream]] = []
        for order, name in enumerate(self.book.venues):
            venue_book = self.book.book(name)
            if self.book.live_only and venue_book.state is not BookState.LIVE:
                continue
            q_mult = int(venue_book.instrument.lot_size / self.book.qty_step)
            stream = _Stream(name, order, venue_book, self.fee(name), q_mult)
            stream.levels = venue_book.levels(side.opposite)
            self._push(heap, stream, buy)
        fills: list[VenueFill] = []
        while heap and left > 0 and cap_price is not None:
            _, _, ticks, lots, stream = heapq.heappop(heap)
            inst = stream.inst
            price = inst.ticks_to_price(ticks)
            limit_on = self._effective(price, stream.fee, buy) if self.cap_includes_fees else price
            if (limit_on > cap_price) if buy else (limit_on < cap_price):
                continue  # this venue's next levels are further still: drop it
            take = min(lots, left // stream.q_mult - stream.pending_lots)
            if take > 0:
                left -= self._commit(stream, ticks, take, fills) * stream.q_mult
            self._push(heap, stream, buy)
        return fills

    @staticmethod
    def _commit(stream: _Stream, ticks: int, take: int, fills: list[VenueFill]) -> int:
        """Add one level take to ``stream``; allocate the whole order steps its pending
        takes now make, oldest first. Returns the lots allocated."""
        stream.pending.append((ticks, take))
        stream.pending_lots += take
        whole = stream.pending_lots - stream.pending_lots % stream.step
        if not whole:
            return 0
        inst = stream.inst
        due = whole
        while due:
            level_ticks, lots = stream.pending[0]
            part = lots if lots <= due else due
            fills.append(
                VenueFill(
                    stream.name,
                    level_ticks,
                    part,
                    inst.ticks_to_price(level_ticks),
                    inst.lots_to_qty(part),
                )
            )
            due -= part
            if part == lots:
                stream.pending.pop(0)
            else:
                stream.pending[0] = (level_ticks, lots - part)
        stream.pending_lots -= whole
        return whole

    @staticmethod
    def _effective(price: Decimal, fee: Decimal, buy: bool) -> Decimal:
        return price * (1 + fee) if buy else price * (1 - fee)

    def _push(
        self, heap: list[tuple[Decimal, int, int, int, _Stream]], stream: _Stream, buy: bool
    ) -> None:
        level = next(stream.levels, None)
        if level is None:
            return
        ticks, lots = level
        eff = self._effective(stream.inst.ticks_to_price(ticks), stream.fee, buy)
        # Best first: cheapest for a buy, dearest for a sell; ties in venue order.
        heapq.heappush(heap, (eff if buy else -eff, stream.order, ticks, lots, stream))

    def _route(
        self,
        side: Side,
        want: Decimal,
        cap: Decimal,
        best: Decimal | None,
        cap_price: Decimal | None,
        fills: list[VenueFill],
    ) -> Route:
        children: dict[str, ChildOrder] = {}
        notional = Decimal(0)
        fees = Decimal(0)
        filled = Decimal(0)
        worse = max if side is Side.BUY else min
        for f in fills:
            inst = self.book.book(f.venue).instrument
            value = f.price * f.qty
            notional += value
            fees += value * self.fee(f.venue)
            filled += f.qty
            child = children.get(f.venue)
            if child is None:
                children[f.venue] = ChildOrder(f.venue, inst, side, f.price_ticks, f.lots)
            else:
                children[f.venue] = ChildOrder(
                    f.venue,
                    inst,
                    side,
                    worse(child.price_ticks, f.price_ticks),
                    child.qty_lots + f.lots,
                )
        return Route(
            side,
            want,
            filled,
            tuple(children.values()),
            tuple(fills),
            notional,
            fees,
            best,
            cap_price,
            cap,
        )


def _decimal(value: Decimal | str | int, what: str) -> Decimal:
    out = value if isinstance(value, Decimal) else Decimal(str(value))
    if not out.is_finite():
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return out
