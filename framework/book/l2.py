"""The L2 book: price levels keyed by integer ticks, quantities in integer lots."""

from __future__ import annotations

import enum

from sortedcontainers import SortedDict

from quoteforge.model import Instrument, Side

__all__ = ["BookState", "L2Book"]


class BookState(enum.Enum):
    SYNCING = "SYNCING"
    LIVE = "LIVE"
    STALE = "STALE"
    RESYNCING = "RESYNCING"


class L2Book:
    """One venue's book for one symbol.

    Bids and asks are ``SortedDict[int, int]`` (price ticks -> lots). Bids are stored
    under negated keys so index 0 is the best level on both sides.
    """

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.venue = instrument.venue
        self.symbol = instrument.symbol
        self.key = instrument.key
        self._bids: SortedDict = SortedDict()  # -ticks -> lots
        self._asks: SortedDict = SortedDict()  # ticks -> lots
        self.state = BookState.SYNCING
        self.ts_ns = 0
        self.update_count = 0

    # -- mutation ------------------------------------------------------------------------
    def clear(self) -> None:
        self._bids.clear()
        self._asks.clear()

    def apply_snapshot(
        self, bids: list[tuple[int, int]], asks: list[tuple[int, int]], ts_ns: int = 0
    ) -> None:
        self._bids = SortedDict({-p: q for p, q in bids if q > 0})
        self._asks = SortedDict({p: q for p, q in asks if q > 0})
        self.ts_ns = ts_ns
        self.update_count += 1

    def set_level(self, side: Side, price_ticks: int, lots: int) -> None:
        """Absolute quantity at a level; 0 removes it (removing an absent level is fine)."""
        levels, key = (self._bids, -price_ticks) if side is Side.BUY else (self._asks, price_ticks)
        if lots > 0:
            levels[key] = lots
        else:
            levels.pop(key, None)

    # -- reading -------------------------------------------------------------------------
    def best_bid(self) -> tuple[int, int] | None:
        if not self._bids:
            return None
        p, q = self._bids.peekitem(0)
        return -p, q

    def best_ask(self) -> tuple[int, int] | None:
        if not self._asks:
            return None
        return self._asks.peekitem(0)  # type: ignore[no-any-return]

    def best_bid_ticks(self) -> int | None:
        return -self._bids.keys()[0] if self._bids else None

    def best_ask_ticks(self) -> int | None:
        return self._asks.keys()[0] if self._asks else None

    def top(self, side: Side, n: int) -> list[tuple[int, int]]:
        if side is Side.BUY:
            return [(-p, q) for p, q in self._bids.items()[:n]]
        return list(self._asks.items()[:n])

    def depth(self, side: Side) -> int:
        return len(self._bids) if side is Side.BUY else len(self._asks)

    def mid_ticks(self) -> float | None:
        bid, ask = self.best_bid_ticks(), self.best_ask_ticks()
        if bid is None or ask is None:
            return None
        return (bid + ask) / 2

    def mid(self) -> float | None:
        """Mid price in price units (float, for analytics)."""
        m = self.mid_ticks()
        return None if m is None else m * float(self.instrument.tick_size)

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
        return ticks * float(self.instrument.tick_size)

    def is_crossed(self) -> bool:
        bid, ask = self.best_bid_ticks(), self.best_ask_ticks()
        return bid is not None and ask is not None and bid >= ask
