"""The observation of ``MarketMakingEnv``: book features, inventory and time left.

Every feature is a float32 computed from what the agent's strategy sees (its market's
book and position), so a policy learned on the environment needs nothing a running
strategy lacks.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from quoteforge.strategy import Market

__all__ = ["OBSERVATION_HIGH", "OBSERVATION_LOW", "OBSERVATION_NAMES", "BookFeatures"]

#: The observation vector's entries, in order (docs/gym.md defines each).
OBSERVATION_NAMES: tuple[str, ...] = (
    "mid_change_bps",
    "spread_bps",
    "imbalance",
    "volatility_bps",
    "inventory",
    "time_left",
)
#: The observation space's bounds; a value beyond them (a move of more than 100% in
#: one step, a position ten times the limit) is clipped to them.
OBSERVATION_LOW = np.array([-1e4, 0.0, -1.0, 0.0, -10.0, 0.0], dtype=np.float32)
OBSERVATION_HIGH = np.array([1e4, 2e4, 1.0, 1e4, 10.0, 1.0], dtype=np.float32)


class BookFeatures:
    """Tracks one market from step to step and makes the observation vector.

    ``mid_change_bps``: the mid's change since the last step, in basis points of the
    last step's mid; ``spread_bps``: the best ask minus the best bid, in basis points of
    the mid; ``imbalance``: ``(bid lots - ask lots) / (bid lots + ask lots)`` over the
    best ``levels`` levels of each side; ``volatility_bps``: the standard deviation of
    the last ``window`` mid changes (population, 0 before two are known);
    ``inventory``: the position divided by the agent's ``inventory_limit`` (both in
    lots); ``time_left``: the share of the episode's steps still to come.

    While the book is not two-sided (a resync), the last known mid and spread stand.
    """

    def __init__(self, market: Market, limit_lots: int, *, levels: int, window: int) -> None:
        self.market = market
        self.limit_lots = limit_lots
        self.levels = levels
        self.changes: deque[float] = deque(maxlen=window)
        self.mid = self._mid_ticks() or 0.0
        self.spread_bps = self._spread_bps(self.mid)

    def _mid_ticks(self) -> float | None:
        return self.market.book.mid_ticks()

    def _spread_bps(self, mid: float) -> float:
        spread = self.market.book.spread_ticks()
        if spread is None or mid <= 0:
            return getattr(self, "spread_bps", 0.0)
        return spread / mid * 1e4

    def observe(self, time_left: float, *, first: bool = False) -> np.ndarray:
        """The observation now; ``first`` at the start of an episode (no change yet)."""
        mid = self._mid_ticks()
        change = 0.0
        if mid is not None:
            if not first and self.mid > 0:
                change = (mid - self.mid) / self.mid * 1e4
                self.changes.append(change)
            self.mid = mid
            self.spread_bps = self._spread_bps(mid)
        imbalance = self.market.book.imbalance(self.levels)
        volatility = 0.0
        if len(self.changes) >= 2:
            mean = sum(self.changes) / len(self.changes)
            volatility = math.sqrt(sum((c - mean) ** 2 for c in self.changes) / len(self.changes))
        obs = np.array(
            [
                change,
                self.spread_bps,
                0.0 if imbalance is None else imbalance,
                volatility,
                self.market.position_lots / self.limit_lots,
                time_left,
            ],
            dtype=np.float32,
        )
        return np.clip(obs, OBSERVATION_LOW, OBSERVATION_HIGH)
