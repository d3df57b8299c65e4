"""The reference books of the ``offer_sim`` venue: thousands of tickers whose book shows
the latent mid ± one tick, refreshed when read rather than when the mid moves."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np

from quoteforge.book import BookState, L2Book
from quoteforge.book.l2 import TakeCost
from quoteforge.model import Instrument, Side

__all__ = ["LazyMidBook", "MidFeed"]

_LIVE = BookState.LIVE


class MidFeed:
    """The latent mids of every ticker, stepped together on a timer."""

    __slots__ = ("mids", "step", "tick", "ts_ns")

    def __init__(self, mids: np.ndarray, tick: float, ts_ns: int) -> None:
        self.mids = mids
        self.tick = tick
        self.step = 0
        self.ts_ns = ts_ns


class LazyMidBook(L2Book):
    """A reference book that shows the ticker's current mid ± one tick.

    It is refreshed when read, not when the mid moves: with thousands of tickers and a
    handful read per second, eager updates would be almost all wasted work. Reading the
    mid (``mid``, ``mid_ticks``, ``mid_and_time``) refreshes only the mid and the book's
    time; the two levels are rebuilt when something reads the levels.
    """

    __slots__ = (
        "_centre",
        "_depth",
        "_feed",
        "_index",
        "_levels_seen",
        "_mid",
        "_mid_ticks",
        "_ref",
        "_seen",
    )

    def __init__(self, instrument: Instrument, feed: MidFeed, index: int, depth: int) -> None:
        super().__init__(instrument)
        self._feed = feed
        self._index = index
        self._depth = depth
        self._seen = -1  # the feed step the mid was read at
        self._levels_seen = -1  # the feed step the levels were built at
        self._centre = 0
        self._mid: float | None = None
        self._mid_ticks: float | None = None
        self._ref: tuple[float, int] | None = None

    def _sync_mid(self) -> None:
        feed = self._feed
        self._seen = feed.step
        centre = max(2, round(float(feed.mids[self._index]) / feed.tick))
        self._centre = centre
        self._mid_ticks = float(centre)
        mid = self._mid = centre * feed.tick
        ts = self.ts_ns = feed.ts_ns
        self._ref = (mid, ts)
        # What the book shows has changed, even before its levels are rebuilt.
        self.version += 1
        self.top_version += 1

    def _sync(self) -> None:
        if self._seen != self._feed.step:
            self._sync_mid()
        self._levels_seen = self._seen
        centre = self._centre
        self.apply_snapshot(((centre - 1, self._depth),), ((centre + 1, self._depth),), self.ts_ns)

    def mid(self) -> float | None:
        if self._seen != self._feed.step:
            self._sync_mid()
        return self._mid

    def mid_ticks(self) -> float | None:
        if self._seen != self._feed.step:
            self._sync_mid()
        return self._mid_ticks

    def mid_and_time(self) -> tuple[float, int] | None:
        """``(mid, ts_ns)`` while the book is LIVE, else None: what the book price
        source reads. The same tuple object until the mid is refreshed, so a reader can
        tell "unchanged" by identity."""
        if self.state is not _LIVE:
            return None
        if self._seen != self._feed.step:
            self._sync_mid()
        return self._ref

    def side_top_version(self, side: Side) -> int:
        if self._levels_seen != self._feed.step:
            self._sync()
        return super().side_top_version(side)

    def best_bid(self) -> tuple[int, int] | None:
        if self._levels_seen != self._feed.step:
            self._sync()
        return super().best_bid()

    def best_ask(self) -> tuple[int, int] | None:
        if self._levels_seen != self._feed.step:
            self._sync()
        return super().best_ask()

    def best_bid_ticks(self) -> int | None:
        if self._levels_seen != self._feed.step:
            self._sync()
        return super().best_bid_ticks()

    def best_ask_ticks(self) -> int | None:
        if self._levels_seen != self._feed.step:
            self._sync()
        return super().best_ask_ticks()

    def top(self, side: Side, n: int) -> list[tuple[int, int]]:
        if self._levels_seen != self._feed.step:
            self._sync()
        return super().top(side, n)

    def levels(self, side: Side) -> Any:
        if self._levels_seen != self._feed.step:
            self._sync()
        return super().levels(side)

    def lots_at(self, side: Side, price_ticks: int) -> int:
        if self._levels_seen != self._feed.step:
            self._sync()
        return super().lots_at(side, price_ticks)

    def depth(self, side: Side) -> int:
        if self._levels_seen != self._feed.step:
            self._sync()
        return super().depth(side)

    def depth_within_bps(self, side: Side, bps: int | float | Decimal | str) -> int:
        if self._levels_seen != self._feed.step:
            self._sync()
        return super().depth_within_bps(side, bps)

    def cost_to_take(self, side: Side, lots: int) -> TakeCost:
        if self._levels_seen != self._feed.step:
            self._sync()
        return super().cost_to_take(side, lots)

    def imbalance(self, n: int = 5) -> float | None:
        if self._levels_seen != self._feed.step:
            self._sync()
        return super().imbalance(n)

    def refresh(self) -> None:
        """Bring the book up to the latest mid now (e.g. before a report is written)."""
        if self._levels_seen != self._feed.step:
            self._sync()
