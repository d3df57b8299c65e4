"""The L2 book: price levels keyed by integer ticks, quantities in integer lots."""

from __future__ import annotations

import enum
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from quoteforge.book.fast import apply_diff as _apply_diff
from quoteforge.book.fast import top_levels as _top_levels
from quoteforge.model import Instrument, Side

__all__ = ["TOP_LEVELS", "BookState", "L2Book", "TakeCost"]

TOP_LEVELS = 5
"""How many levels per side ``L2Book.top_version`` watches."""

# Lower than any key, so "k >= threshold" holds for every level of a thin side.
_ALL = -(1 << 80)
# Enum member lookups cost a class-attribute access each; the hot path uses these.
_BUY = Side.BUY


class BookState(enum.Enum):
    SYNCING = "SYNCING"
    LIVE = "LIVE"
    STALE = "STALE"
    RESYNCING = "RESYNCING"


@dataclass(frozen=True, slots=True)
class TakeCost:
    """What taking ``requested_lots`` against one side of a book would cost.

    ``notional_units`` is the exact sum of ``ticks * lots`` over the levels walked;
    multiply by ``tick_size * lot_size`` (``notional``) for the quote amount.
    """

    side: Side
    requested_lots: int
    filled_lots: int
    notional_units: int
    levels: int
    best_ticks: int | None
    worst_ticks: int | None
    tick_size: Decimal
    lot_size: Decimal

    @property
    def complete(self) -> bool:
        """The book was deep enough for the whole size."""
        return self.filled_lots == self.requested_lots

    @property
    def notional(self) -> Decimal:
        return self.tick_size * self.lot_size * self.notional_units

    @property
    def avg_price_ticks(self) -> Fraction | None:
        """Exact average price in ticks (a fraction in general)."""
        if not self.filled_lots:
            return None
        return Fraction(self.notional_units, self.filled_lots)

    @property
    def avg_price(self) -> Decimal | None:
        """Average price in price units, rounded to the Decimal context (28 digits)."""
        avg = self.avg_price_ticks
        if avg is None:
            return None
        return Decimal(avg.numerator) * self.tick_size / Decimal(avg.denominator)

    @property
    def slippage_ticks(self) -> Fraction | None:
        """How far the average is from the best level, in ticks, always >= 0."""
        avg = self.avg_price_ticks
        if avg is None or self.best_ticks is None:
            return None
        return avg - self.best_ticks if self.side is _BUY else self.best_ticks - avg


class L2Book:
    """One venue's book for one symbol.

    Each side is a dict (key -> lots) plus a plain list of its keys in ascending order
    with the best level at the end: bids are keyed by price ticks, asks by negated
    price ticks. Activity concentrates near the top, and inserting or deleting near
    the end of a list moves almost nothing, so an update costs one dict operation and,
    for a new or removed level, one C-level ``bisect`` plus a short ``memmove``.
    ``docs/books.md`` has the measurements behind this choice.

    ``version`` counts every change; ``top_version`` counts only changes that touch
    the best ``TOP_LEVELS`` levels of either side, so a strategy can skip work when
    the part of the book it reads has not moved.
    """

    __slots__ = (
        "_ask_keys",
        "_ask_qty",
        "_ask_top",
        "_ask_topv",
        "_bid_keys",
        "_bid_qty",
        "_bid_top",
        "_bid_topv",
        "_tick",
        "instrument",
        "key",
        "state",
        "symbol",
        "top_version",
        "ts_ns",
        "update_count",
        "venue",
        "version",
    )

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.venue = instrument.venue
        self.symbol = instrument.symbol
        self.key = instrument.key
        self._tick = float(instrument.tick_size)  # for the float analytics (mid, microprice)
        self._bid_keys: list[int] = []  # ticks, ascending: best bid last
        self._bid_qty: dict[int, int] = {}
        self._ask_keys: list[int] = []  # -ticks, ascending: best ask last
        self._ask_qty: dict[int, int] = {}
        # Best TOP_LEVELS levels per side as returned by top(); None = rebuild on read.
        self._bid_top: list[tuple[int, int]] | None = None
        self._ask_top: list[tuple[int, int]] | None = None
        self._bid_topv = 0
        self._ask_topv = 0
        self.state = BookState.SYNCING
        self.ts_ns = 0
        self.update_count = 0
        self.version = 0
        self.top_version = 0

    def __repr__(self) -> str:
        return (
            f"L2Book({self.key}, {self.state.value}, bids={len(self._bid_keys)}, "
            f"asks={len(self._ask_keys)}, best={self.best_bid()}/{self.best_ask()})"
        )

    # -- mutation ------------------------------------------------------------------------
    def clear(self) -> None:
        self._bid_keys.clear()
        self._bid_qty.clear()
        self._ask_keys.clear()
        self._ask_qty.clear()
        self._bid_top = self._ask_top = None
        self._bid_topv += 1
        self._ask_topv += 1
        self.version += 1
        self.top_version += 1

    def apply_snapshot(
        self, bids: Iterable[tuple[int, int]], asks: Iterable[tuple[int, int]], ts_ns: int = 0
    ) -> None:
        """Replace the whole book. Levels with zero lots are skipped; a repeated price
        keeps its last quantity."""
        bid_qty = {p: q for p, q in bids if q > 0}
        ask_qty = {-p: q for p, q in asks if q > 0}
        self._bid_qty = bid_qty
        self._bid_keys = sorted(bid_qty)
        self._ask_qty = ask_qty
        self._ask_keys = sorted(ask_qty)
        self._bid_top = self._ask_top = None
        self._bid_topv += 1
        self._ask_topv += 1
        self.ts_ns = ts_ns
        self.update_count += 1
        self.version += 1
        self.top_version += 1

    def set_level(self, side: Side, price_ticks: int, lots: int) -> None:
        """Absolute quantity at a level; 0 removes it (removing an absent level is fine)."""
        if side is _BUY:
            changed = _apply_side(self._bid_keys, self._bid_qty, ((price_ticks, lots),))
            if changed > 1:
                self._bid_top = None
                self._bid_topv += 1
        else:
            changed = _apply_side(self._ask_keys, self._ask_qty, ((-price_ticks, lots),))
            if changed > 1:
                self._ask_top = None
                self._ask_topv += 1
        if changed:
            self.version += 1
            if changed > 1:
                self.top_version += 1

    def apply_deltas(
        self,
        bids: Iterable[tuple[int, int]],
        asks: Iterable[tuple[int, int]],
        ts_ns: int | None = None,
    ) -> bool:
        """Apply one message's levels (absolute lots, 0 removes) as one update.

        Returns True when the best ``TOP_LEVELS`` levels of either side changed.
        """
        return self._apply_keyed(bids, [(-p, q) for p, q in asks], ts_ns)

    def _apply_keyed(
        self,
        bids: Iterable[tuple[int, int]],
        ask_keys: Iterable[tuple[int, int]],
        ts_ns: int | None,
    ) -> bool:
        # Venue sources build ask pairs with negated ticks directly, saving a copy.
        code = _apply_side(self._bid_keys, self._bid_qty, bids)
        code |= _apply_side(self._ask_keys, self._ask_qty, ask_keys) << 2
        return self._applied(code, ts_ns)

    def _apply_text(
        self, bids: object, asks: object, price_table: bytes, qty_table: bytes, ts_ns: int | None
    ) -> bool | None:
        """Apply one message's [price, qty] text levels through the compiled path.

        Returns what ``apply_deltas`` returns, or None, with the book untouched, when
        the extension is not installed or a level needs the interpreted path.
        """
        if _apply_diff is None:
            return None
        code = _apply_diff(
            bids,
            asks,
            self._bid_keys,
            self._bid_qty,
            self._ask_keys,
            self._ask_qty,
            price_table,
            qty_table,
        )
        return None if code is None else self._applied(code, ts_ns)

    def _applied(self, code: int, ts_ns: int | None) -> bool:
        """Bookkeeping after one message changed the sides: ``code`` is the bid side's
        ``_apply_side`` result | the ask side's << 2."""
        top = False
        if code & 3 > 1:
            self._bid_top = None
            self._bid_topv += 1
            top = True
        if code >> 2 > 1:
            self._ask_top = None
            self._ask_topv += 1
            top = True
        # One message is one version, whatever it touched.
        self.version += 1
        if top:
            self.top_version += 1
        if ts_ns is not None:
            self.ts_ns = ts_ns
        self.update_count += 1
        return top

    def truncate(self, depth: int) -> tuple[list[int], list[int]]:
        """Keep the best ``depth`` levels per side; returns the removed (bid, ask) ticks,
        worst first.

        Venues that publish a fixed depth (Kraken) do not send deletions for levels
        that fall out of range, so the local book must drop them itself.
        """
        removed_bids = _truncate_side(self._bid_keys, self._bid_qty, depth)
        removed_asks = [-k for k in _truncate_side(self._ask_keys, self._ask_qty, depth)]
        if removed_bids or removed_asks:
            self.version += 1
            if depth < TOP_LEVELS:
                self._bid_top = self._ask_top = None
                self._bid_topv += 1
                self._ask_topv += 1
                self.top_version += 1
        return removed_bids, removed_asks

    # -- reading -------------------------------------------------------------------------
    def best_bid(self) -> tuple[int, int] | None:
        keys = self._bid_keys
        if not keys:
            return None
        p = keys[-1]
        return p, self._bid_qty[p]

    def best_ask(self) -> tuple[int, int] | None:
        keys = self._ask_keys
        if not keys:
            return None
        k = keys[-1]
        return -k, self._ask_qty[k]

    def best_bid_ticks(self) -> int | None:
        keys = self._bid_keys
        return keys[-1] if keys else None

    def best_ask_ticks(self) -> int | None:
        keys = self._ask_keys
        return -keys[-1] if keys else None

    def top(self, side: Side, n: int) -> list[tuple[int, int]]:
        """The best ``n`` levels of a side, best first, as (ticks, lots).

        Up to ``TOP_LEVELS`` levels are served from a cache that only a change of
        those levels invalidates, so reading the top on every update is cheap.
        """
        if n <= 0:
            return []
        if side is _BUY:
            if n <= TOP_LEVELS:
                cached = self._bid_top
                if cached is None:
                    cached = self._bid_top = self._side_top(False, TOP_LEVELS)
                return cached[:n]
            return self._side_top(False, n)
        if n <= TOP_LEVELS:
            cached = self._ask_top
            if cached is None:
                cached = self._ask_top = self._side_top(True, TOP_LEVELS)
            return cached[:n]
        return self._side_top(True, n)

    def _side_top(self, ask: bool, n: int) -> list[tuple[int, int]]:
        if ask:
            keys, qty = self._ask_keys, self._ask_qty
            if _top_levels is not None:
                return _top_levels(keys, qty, n, True)
            return [(-k, qty[k]) for k in reversed(keys[-n:])]
        keys, qty = self._bid_keys, self._bid_qty
        if _top_levels is not None:
            return _top_levels(keys, qty, n, False)
        return [(p, qty[p]) for p in reversed(keys[-n:])]

    def side_top_version(self, side: Side) -> int:
        """Like ``top_version`` for one side only."""
        return self._bid_topv if side is _BUY else self._ask_topv

    def levels(self, side: Side) -> Iterator[tuple[int, int]]:
        """Every level of a side, best first. Do not mutate the book while iterating."""
        if side is _BUY:
            qty = self._bid_qty
            return ((p, qty[p]) for p in reversed(self._bid_keys))
        qty = self._ask_qty
        return ((-k, qty[k]) for k in reversed(self._ask_keys))

    def side_sizes(self) -> tuple[dict[int, int], dict[int, int]]:
        """The live maps of visible lots by price of the bid and the ask side, for hot
        loops that read many levels: bids by ticks, asks by *negated* ticks. Read only;
        a snapshot replaces them, so fetch them again after each change."""
        return self._bid_qty, self._ask_qty

    def lots_at(self, side: Side, price_ticks: int) -> int:
        """Visible lots at one price (0 when the level is absent)."""
        if side is _BUY:
            return self._bid_qty.get(price_ticks, 0)
        return self._ask_qty.get(-price_ticks, 0)

    def depth(self, side: Side) -> int:
        return len(self._bid_keys) if side is _BUY else len(self._ask_keys)

    def mid_ticks(self) -> float | None:
        bid, ask = self.best_bid_ticks(), self.best_ask_ticks()
        if bid is None or ask is None:
            return None
        return (bid + ask) / 2

    def mid(self) -> float | None:
        """Mid price in price units (float, for analytics)."""
        bids, asks = self._bid_keys, self._ask_keys
        if not bids or not asks:
            return None
        # mid_ticks() written out (ask keys are negated ticks): strategies call this a lot.
        return (bids[-1] - asks[-1]) / 2 * self._tick

    def spread_ticks(self) -> int | None:
        bid, ask = self.best_bid_ticks(), self.best_ask_ticks()
        if bid is None or ask is None:
            return None
        return ask - bid

    def microprice(self) -> float | None:
        """Size-weighted mid of the top level, in price units."""
        bid, ask = self.best_bid(), self.best_ask()
        if bid is None or ask is None:
            return None
        (bp, bq), (ap, aq) = bid, ask
        total = bq + aq
        ticks = (bp * aq + ap * bq) / total if total else (bp + ap) / 2
        return ticks * self._tick

    def is_crossed(self) -> bool:
        bid, ask = self.best_bid_ticks(), self.best_ask_ticks()
        return bid is not None and ask is not None and bid >= ask

    # -- analytics -----------------------------------------------------------------------
    def imbalance(self, n: int = TOP_LEVELS) -> float | None:
        """(bid lots - ask lots) / (bid lots + ask lots) over the best ``n`` levels of
        each side, in [-1, 1]; None when both sides are empty."""
        if n <= 0:
            raise ValueError(f"imbalance needs n >= 1 levels, got {n}")
        bq, aq = self._bid_qty, self._ask_qty
        bids = sum([bq[k] for k in self._bid_keys[-n:]])
        asks = sum([aq[k] for k in self._ask_keys[-n:]])
        total = bids + asks
        return None if total == 0 else (bids - asks) / total

    def depth_within_bps(self, side: Side, bps: int | float | Decimal | str) -> int:
        """Lots on ``side`` priced within ``bps`` basis points of the mid.

        With one side empty the reference is the best price of ``side`` itself. The
        band test is exact: it runs on integers, never on float prices.
        """
        band = Fraction(Decimal(str(bps)))
        if band < 0:
            raise ValueError(f"depth_within_bps needs bps >= 0, got {bps}")
        bid, ask = self.best_bid_ticks(), self.best_ask_ticks()
        if bid is not None and ask is not None:
            ref = Fraction(bid + ask, 2)
        else:
            own = bid if side is _BUY else ask
            if own is None:
                return 0
            ref = Fraction(own)
        total = 0
        if side is _BUY:
            limit = ref * (1 - band / 10_000)
            for p, q in self.levels(Side.BUY):
                if p < limit:
                    break
                total += q
        else:
            limit = ref * (1 + band / 10_000)
            for p, q in self.levels(Side.SELL):
                if p > limit:
                    break
                total += q
        return total

    def cost_to_take(self, side: Side, lots: int) -> TakeCost:
        """Walk the book as an aggressive order of ``lots`` on ``side`` would (a buy
        takes asks). The result is exact and says whether the book was deep enough."""
        if lots <= 0:
            raise ValueError(f"cost_to_take needs lots > 0, got {lots}")
        remaining = lots
        notional = 0
        used = 0
        best: int | None = None
        worst: int | None = None
        for p, q in self.levels(side.opposite):
            if best is None:
                best = p
            take = q if q < remaining else remaining
            notional += p * take
            remaining -= take
            used += 1
            worst = p
            if not remaining:
                break
        inst = self.instrument
        return TakeCost(
            side, lots, lots - remaining, notional, used, best, worst, inst.tick_size, inst.lot_size
        )


def _apply_side(keys: list[int], qty: dict[int, int], pairs: Iterable[tuple[int, int]]) -> int:
    """Apply (key, lots) pairs to one side; 0 = nothing changed, 1 = changed below the
    top levels only, 2 = the top levels changed."""
    n = len(keys)
    # Until the first top-level change the top levels are exactly what they were at
    # the start, so one threshold taken here stays valid for the whole batch.
    threshold = keys[-TOP_LEVELS] if n >= TOP_LEVELS else _ALL
    changed = 0
    get = qty.get
    for k, q in pairs:
        if q > 0:
            old = get(k)
            if old is None:
                insort(keys, k)
            elif old == q:
                continue
            qty[k] = q
        elif qty.pop(k, None) is None:
            continue
        else:
            del keys[bisect_left(keys, k)]
        if k >= threshold:
            changed = 2
            threshold = -_ALL  # already known: no further compare can flip it back
        elif not changed:
            changed = 1
    return changed


def _truncate_side(keys: list[int], qty: dict[int, int], depth: int) -> list[int]:
    excess = len(keys) - depth
    if excess <= 0:
        return []
    removed = keys[:excess]
    del keys[:excess]
    for k in removed:
        del qty[k]
    return removed
