"""The consumer book: several venues' books of one asset merged per price level, with
each level's per-venue breakdown, cross-venue BBO, crossed/locked flags and routing."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import partial
from typing import Any, NamedTuple

from quoteforge.book.fast import consumer_top as _consumer_top
from quoteforge.book.l2 import TOP_LEVELS, BookState, L2Book
from quoteforge.model import Side

__all__ = [
    "Allocation",
    "ConsumerBook",
    "ConsumerLevel",
    "Grid",
    "MarketCross",
    "VenueFill",
    "common_step",
]

_BUY = Side.BUY
_LIVE = BookState.LIVE


def common_step(steps: list[Decimal]) -> Decimal:
    """The largest step every one of ``steps`` is a whole multiple of (exact gcd)."""
    if not steps:
        raise ValueError("common_step needs at least one step")
    places = max(max(0, -int(s.normalize().as_tuple().exponent)) for s in steps)
    scale = 10**places
    ints = [int(s * scale) for s in steps]
    return Decimal(math.gcd(*ints)) / scale


class Grid(NamedTuple):
    """The common price and quantity steps of a consumer book."""

    price_step: Decimal
    qty_step: Decimal


class ConsumerLevel(NamedTuple):
    """One merged price level on the common grid: ``price_key`` steps of price,
    ``units`` steps of quantity, and ``parts`` (venue, units) for every venue quoting
    there, largest first. ``price``, ``qty`` and ``origins`` are the exact Decimals.

    Built as a plain tuple so a merge costs little; Decimals are made on access.
    """

    price_key: int
    units: int
    parts: tuple[tuple[str, int], ...]
    grid: Grid

    @property
    def price(self) -> Decimal:
        return self.grid.price_step * self.price_key

    @property
    def qty(self) -> Decimal:
        return self.grid.qty_step * self.units

    @property
    def origins(self) -> tuple[tuple[str, Decimal], ...]:
        step = self.grid.qty_step
        return tuple((venue, step * units) for venue, units in self.parts)

    @property
    def venues(self) -> tuple[str, ...]:
        return tuple(v for v, _ in self.parts)


@dataclass(frozen=True, slots=True)
class MarketCross:
    """A bid on one venue at or above an ask on another."""

    locked: bool  # equal prices; False means strictly crossed
    bid_venue: str
    bid: Decimal
    ask_venue: str
    ask: Decimal


@dataclass(frozen=True, slots=True)
class VenueFill:
    """Part of an allocation: take ``lots`` at ``price_ticks`` on ``venue`` (venue units)."""

    venue: str
    price_ticks: int
    lots: int
    price: Decimal
    qty: Decimal


@dataclass(frozen=True, slots=True)
class Allocation:
    """How an aggressive order of ``requested`` would be split across venues."""

    side: Side
    requested: Decimal
    filled: Decimal
    fills: tuple[VenueFill, ...]
    notional: Decimal
    best_price: Decimal | None

    @property
    def complete(self) -> bool:
        return self.filled == self.requested

    @property
    def per_venue(self) -> dict[str, Decimal]:
        """Quantity per venue, in routing order."""
        out: dict[str, Decimal] = {}
        for f in self.fills:
            out[f.venue] = out.get(f.venue, Decimal(0)) + f.qty
        return out

    @property
    def limit_prices(self) -> dict[str, Decimal]:
        """Worst price reached on each venue: the limit of an IOC sent there."""
        out: dict[str, Decimal] = {}
        for f in self.fills:
            out[f.venue] = f.price
        return out

    @property
    def avg_price(self) -> Decimal | None:
        return self.notional / self.filled if self.filled else None

    @property
    def slippage(self) -> Decimal | None:
        """Average price minus the top of book (for sells: top minus average), >= 0."""
        avg = self.avg_price
        if avg is None or self.best_price is None:
            return None
        return avg - self.best_price if self.side is _BUY else self.best_price - avg

    @property
    def slippage_bps(self) -> Decimal | None:
        slip = self.slippage
        if slip is None or not self.best_price:
            return None
        return slip / self.best_price * 10_000


class _Venue:
    __slots__ = ("book", "lot", "name", "p_mult", "q_mult", "tick")

    def __init__(self, name: str, book: L2Book) -> None:
        self.name = name
        self.book = book
        self.tick = book.instrument.tick_size
        self.lot = book.instrument.lot_size
        self.p_mult = 1
        self.q_mult = 1


class ConsumerBook:
    """Merged view over venue books of one asset (e.g. BTC/USDT on two venues).

    The venue books stay the only state: the merge happens when it is read, on a
    common grid (the gcd of the venues' tick sizes, and of their lot sizes), so
    prices and sizes are exact integers even when venues use different steps. The
    top ``TOP_LEVELS`` levels are cached against each venue's ``top_version``, so
    feeding updates costs nothing extra and re-reading an unchanged top is free.
    Only LIVE books take part unless ``live_only=False``.
    """

    def __init__(self, name: str = "", *, live_only: bool = True) -> None:
        self.name = name
        self._live_only = live_only
        self._venues: list[_Venue] = []
        self._books: list[L2Book] = []
        self._meta: list[tuple[str, int, int]] = []
        self._fast_bids: Callable[[], Any] = _no_levels
        self._fast_asks: Callable[[], Any] = _no_levels
        self.price_step = Decimal(0)
        self.qty_step = Decimal(0)
        self._grid = Grid(Decimal(0), Decimal(0))
        self._cache: dict[tuple[Side, int], tuple[list[int | bool], list[ConsumerLevel]]] = {}
        self._cuts: dict[tuple[Side, int], tuple[list[ConsumerLevel], list[ConsumerLevel]]] = {}

    def add(self, book: L2Book, name: str | None = None) -> None:
        """Add a venue book; ``name`` (default ``book.venue``) is its origin tag."""
        tag = name or book.venue
        if any(v.name == tag for v in self._venues):
            raise ValueError(f"consumer book {self.name!r} already has a venue named {tag!r}")
        self._venues.append(_Venue(tag, book))
        self.price_step = common_step([v.tick for v in self._venues])
        self.qty_step = common_step([v.lot for v in self._venues])
        self._grid = Grid(self.price_step, self.qty_step)
        for v in self._venues:
            v.p_mult = int(v.tick / self.price_step)
            v.q_mult = int(v.lot / self.qty_step)
        self._books = [v.book for v in self._venues]
        self._meta = [(v.name, v.p_mult, v.q_mult) for v in self._venues]
        self._reset_caches()

    @property
    def live_only(self) -> bool:
        """Whether only LIVE venue books take part in the merge."""
        return self._live_only

    @live_only.setter
    def live_only(self, value: bool) -> None:
        self._live_only = value
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._cache.clear()
        self._cuts.clear()
        if _consumer_top is None:
            return
        # The compiled merge with its arguments bound: one C call per read. Each side's
        # list holds [sum of the books' top versions, LIVE mask, merged levels].
        self._fast_bids = partial(
            _consumer_top, self._books, self._meta, TOP_LEVELS, True, self._live_only,
            _LIVE, ConsumerLevel, self._grid, [0, 0, None],
        )  # fmt: skip
        self._fast_asks = partial(
            _consumer_top, self._books, self._meta, TOP_LEVELS, False, self._live_only,
            _LIVE, ConsumerLevel, self._grid, [0, 0, None],
        )  # fmt: skip

    @property
    def venues(self) -> list[str]:
        return [v.name for v in self._venues]

    def book(self, venue: str) -> L2Book:
        for v in self._venues:
            if v.name == venue:
                return v.book
        raise KeyError(f"consumer book {self.name!r} has no venue {venue!r}; has {self.venues}")

    def _active(self) -> list[_Venue]:
        if not self.live_only:
            return self._venues
        return [v for v in self._venues if v.book.state is _LIVE]

    # -- reading -------------------------------------------------------------------------
    def top(self, side: Side, n: int = TOP_LEVELS) -> list[ConsumerLevel]:
        """The best ``n`` merged levels of ``side``, best first.

        The result is cached until a venue's top levels on that side change (or, for
        ``n`` above ``TOP_LEVELS``, until anything in a venue book changes); treat it
        as read-only.
        """
        if n <= 0:
            return []
        if n <= TOP_LEVELS and _consumer_top is not None:
            levels: list[ConsumerLevel] | None = (
                self._fast_bids() if side is _BUY else self._fast_asks()
            )
            if levels is not None:
                if n == TOP_LEVELS:
                    return levels
                # Shorter reads are slices of the merge, kept while the merge is.
                cut = self._cuts.get((side, n))
                if cut is not None and cut[0] is levels:
                    return cut[1]
                part = levels[:n]
                self._cuts[(side, n)] = (levels, part)
                return part
        books = self._books
        if n <= TOP_LEVELS:
            stamp = [b.side_top_version(side) for b in books]
        else:
            stamp = [b.version for b in books]
        if self.live_only:
            # A book leaving or joining LIVE changes the merge as well.
            stamp += [b.state is _LIVE for b in books]
        key = (side, n)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        merged = self._merge_interpreted(side, n)
        self._cache[key] = (stamp, merged)
        return merged

    def _merge_interpreted(self, side: Side, n: int) -> list[ConsumerLevel]:
        # Sort keys are built so plain tuple order is "best first, then the larger
        # size, then venue name": no key function, the sort stays in C.
        sign = -1 if side is _BUY else 1
        entries: list[tuple[int, int, str]] = []
        for v in self._active():
            pm, qm, name = sign * v.p_mult, -v.q_mult, v.name
            entries += [(p * pm, q * qm, name) for p, q in v.book.top(side, n)]
        entries.sort()
        grid = self._grid
        levels: list[ConsumerLevel] = []
        if not entries:
            return levels
        key, units, name = entries[0]
        total = -units
        parts = [(name, -units)]
        for key2, units2, name2 in entries[1:]:
            if key2 == key:
                total -= units2
                parts.append((name2, -units2))
                continue
            levels.append(ConsumerLevel(sign * key, total, tuple(parts), grid))
            if len(levels) == n:
                return levels
            key, total, parts = key2, -units2, [(name2, -units2)]
        levels.append(ConsumerLevel(sign * key, total, tuple(parts), grid))
        return levels

    def best_bid(self) -> ConsumerLevel | None:
        levels = self.top(Side.BUY, 1)
        return levels[0] if levels else None

    def best_ask(self) -> ConsumerLevel | None:
        levels = self.top(Side.SELL, 1)
        return levels[0] if levels else None

    def crossing(self) -> MarketCross | None:
        """The worst bid/ask pair across two different venues with bid >= ask."""
        worst: tuple[int, _Venue, int, _Venue, int] | None = None
        venues = self._active()
        for bv in venues:
            bid = bv.book.best_bid_ticks()
            if bid is None:
                continue
            bkey = bid * bv.p_mult
            for av in venues:
                if av is bv:
                    continue
                ask = av.book.best_ask_ticks()
                if ask is None:
                    continue
                akey = ask * av.p_mult
                if bkey >= akey and (worst is None or bkey - akey > worst[0]):
                    worst = (bkey - akey, bv, bkey, av, akey)
        if worst is None:
            return None
        gap, bv, bkey, av, akey = worst
        step = self.price_step
        return MarketCross(gap == 0, bv.name, step * bkey, av.name, step * akey)

    @property
    def is_crossed(self) -> bool:
        cross = self.crossing()
        return cross is not None and not cross.locked

    @property
    def is_locked(self) -> bool:
        cross = self.crossing()
        return cross is not None and cross.locked

    # -- routing -------------------------------------------------------------------------
    def _walk(self, side: Side) -> Iterator[tuple[int, int, _Venue, int, int]]:
        """Levels of ``side`` over all venues, best first: (grid price, routing order,
        venue, venue ticks, venue lots)."""
        sign = -1 if side is _BUY else 1
        streams = [_keyed(v, order, side, sign) for order, v in enumerate(self._active())]
        for key, order, v, p, q in heapq.merge(*streams, key=lambda t: (t[0], t[1])):
            yield sign * key, order, v, p, q

    def take(self, side: Side, size: Decimal | str | int) -> Allocation:
        """Split an aggressive order of ``size`` (base units) on ``side`` across venues,
        best price first; at equal prices venues are used in the order they were
        added. Each venue's share is a whole number of its own lots."""
        want = Decimal(str(size)) if not isinstance(size, Decimal) else size
        if not want.is_finite() or want <= 0:
            raise ValueError(f"take() needs a positive size, got {size!r}")
        remaining = Fraction(want) / Fraction(self.qty_step) if self.qty_step else Fraction(0)
        if remaining.denominator != 1:
            raise ValueError(
                f"size {want} is not a multiple of the common lot size {self.qty_step}"
            )
        left = int(remaining)
        fills: list[VenueFill] = []
        notional = Decimal(0)
        best: Decimal | None = None
        step = self.price_step
        for key, _, v, p, q in self._walk(side.opposite):
            if best is None:
                best = step * key
            if not left:
                break
            lots = min(q, left // v.q_mult)
            if lots <= 0:
                continue
            price = v.tick * p
            qty = v.lot * lots
            fills.append(VenueFill(v.name, p, lots, price, qty))
            notional += price * qty
            left -= lots * v.q_mult
        filled = want - self.qty_step * left
        return Allocation(side, want, filled, tuple(fills), notional, best)


def _no_levels() -> None:
    return None


def _keyed(
    v: _Venue, order: int, side: Side, sign: int
) -> Iterator[tuple[int, int, _Venue, int, int]]:
    pm = v.p_mult
    for p, q in v.book.levels(side):
        yield sign * p * pm, order, v, p, q
