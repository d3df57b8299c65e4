"""Speed caches of ``pure_market_making``, kept apart from its quoting logic.

Why they exist: most book updates of a quoted market move no wanted price past
``refresh_tolerance_bps``. Without caches each one reprices every level and compares the
result with the working quotes; with them most are answered by a comparison or two
(the tick-to-quote bench, ``bench/tick_to_quote_bench.py``, measures the difference).
Why they live here: none of them changes a decision. Each shortcut returns exactly what
the full path in ``pure_market_making.py`` would, so an author reading the strategy can
skip this module entirely.

Four caches, per market key:

- the memo: the quotes priced from a (params, reference price, inventory ratio); the
  same three give the same quotes, so they are not priced again;
- the kept mark: the working quotes already found within tolerance of a memo entry, so
  that comparison is not repeated;
- the grid: the market's tick, lot and minimum notional as floats, so no Decimal is
  converted per decision (worked out again if the market's instrument changes);
- the anchor: after quotes were sent, how far the quoting centre may move before any
  wanted price could leave the tolerance (see ``QuoteCache.set_anchor``); within that
  distance a book update is answered without pricing at all.
"""

from __future__ import annotations

import math
from typing import Any

from quoteforge.model import Instrument, Quote
from quoteforge.strategy import Market

__all__ = ["Anchor", "Grid", "Memo", "QuoteCache"]

# Plain tuples, not NamedTuples: one of each is made per repricing, and a NamedTuple's
# constructor costs ten times a tuple's.
#: (params, reference price, inventory ratio, the quotes priced from them)
Memo = tuple[Any, float, float, tuple[Quote, ...]]
#: (working quotes, params, inventory ratio, centre, slack): the quotes stay within
#: tolerance while the ratio is the same and the centre within slack of that one.
Anchor = tuple[list[Quote], Any, float, float, float]
#: (instrument, tick, lot, min_notional, highest tick or None): a market's grid as floats.
Grid = tuple[Instrument, float, float, float, int | None]


class QuoteCache:
    """The memo, kept marks and anchors of one ``PureMarketMaking`` instance."""

    __slots__ = ("_anchors", "_basis", "_grids", "_kept", "_memo", "source")

    def __init__(self) -> None:
        self._grids: dict[str, Grid] = {}
        self._memo: dict[str, Memo] = {}
        self._kept: dict[str, tuple[list[Quote], Memo]] = {}
        self._anchors: dict[str, Anchor] = {}
        #: The memo entry the quotes of the last pricing came from (None: not memoised).
        self.source: Memo | None = None
        # (centre, ratio, anchoring allowed) of the last pricing.
        self._basis: tuple[float, float, bool] = (0.0, 0.0, False)

    def grid(self, market: Market) -> Grid:
        """``market``'s grid as floats (worked out again if its instrument changes)."""
        inst = market.instrument
        grid = self._grids.get(market.key)
        if grid is None or grid[0] is not inst:
            grid = self._grids[market.key] = (
                inst,
                float(inst.tick_size),
                float(inst.lot_size),
                float(inst.min_notional),
                inst.max_price_ticks,
            )
        return grid

    def begin(self, center: float, ratio: float, anchorable: bool) -> None:
        """A pricing starts from ``center`` and ``ratio``; ``anchorable`` when nothing
        but the centre moves the quotes (no band, hanging orders or price limits)."""
        self.source = None
        self._basis = (center, ratio, anchorable)

    def recall(self, key: str, params: Any, ref: float, ratio: float) -> list[Quote] | None:
        """The quotes last priced from these inputs, or None."""
        memo = self._memo.get(key)
        if memo is not None and memo[0] is params and memo[1] == ref and memo[2] == ratio:
            self.source = memo
            return list(memo[3])
        return None

    def remember(
        self, key: str, params: Any, ref: float, ratio: float, quotes: list[Quote]
    ) -> None:
        self.source = self._memo[key] = (params, ref, ratio, tuple(quotes))

    def already_kept(self, key: str, working: list[Quote]) -> bool:
        """The quotes just priced are the memo entry ``working`` was already found
        within tolerance of."""
        kept = self._kept.get(key)
        source = self.source
        return source is not None and kept is not None and kept[0] is working and kept[1] is source

    def keep(self, key: str, working: list[Quote]) -> None:
        """``working`` was found within tolerance of the quotes just priced."""
        if self.source is not None:
            self._kept[key] = (working, self.source)

    def holds(
        self, key: str, working: list[Quote], params: Any, ratio: float, center: float
    ) -> bool:
        """Every price wanted at ``ratio`` and ``center`` is provably within tolerance of
        ``working``: the anchor set for them still holds."""
        anchor = self._anchors.get(key)
        if anchor is None:
            return False
        quotes, anchored_params, anchored_ratio, anchored_center, slack = anchor
        return (
            quotes is working
            and anchored_params is params
            and ratio == anchored_ratio
            and abs(center - anchored_center) < slack
        )

    def set_anchor(self, market: Market, quotes: list[Quote], params: Any) -> None:
        """Work out how far the centre may move before some wanted price could leave
        refresh_tolerance_bps of ``quotes`` (just priced from the last ``begin``).

        A quote at distance d prices at floor or ceil(centre * (1 -/+ d) / tick); a
        centre move of D moves that quotient by |D| * (1 +/- d) / tick, so by less than
        K when |D| < K * tick / (1 + d_max), and the rounded price by at most K ticks.
        K is the largest tick move every quote tolerates: below
        ``refresh_tolerance_bps`` of its price by a relative 1e-9, far more than the
        float error of ``_within_tolerance``'s comparison (about 1e-16). The float
        error of the quotients themselves (a few 1e-16 of the price in ticks, on both
        sides of the move) is taken off K as 1e-12 of the largest price in ticks, a
        thousand times that error. The same inventory ratio gives the same sizes and
        sides; quotes near the venue's minimum notional or the price grid's ends, and a
        missing slot, disable the shortcut.
        """
        key = market.key
        self._anchors.pop(key, None)
        center, ratio, allowed = self._basis
        slots = params.levels * ((ratio < 1) + (ratio > -1))
        if not allowed or not quotes or len(quotes) != slots:
            return
        _, tick, lot, min_notional, top = self.grid(market)
        tolerance = params.refresh_tolerance_bps / 1e4
        room: float = math.inf
        largest = 0
        for q in quotes:
            a = q.price_ticks
            k = math.ceil(tolerance * a * (1 - 1e-9)) - 1  # strictly inside the tolerance
            if min_notional:
                k = min(k, math.floor(a - min_notional / (q.qty_lots * lot * tick)) - 2)
            if a - 2 < k:
                k = a - 2
            if top is not None and top - a - 1 < k:
                k = top - a - 1
            if k < room:
                room = k
            if a > largest:
                largest = a
        if room < 1:
            return
        room -= (largest + room) * 1e-12  # the quotients' float error, a thousandfold
        widest = (params.spread_bps + (params.levels - 1) * params.level_spacing_bps) / 1e4
        slack = room * tick / (1 + widest) * (1 - 1e-9)
        self._anchors[key] = (quotes, params, ratio, center, slack)
