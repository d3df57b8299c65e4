"""Market-making analytics of a run: markouts, spread capture, fill ratio, quote uptime,
fees and drawdown per market, computed from the :class:`RunData` of a run folder.

The definitions are documented in docs/report.md; the report's tables show these figures
and nothing else, so a number in the HTML can always be traced to this module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quoteforge.plugins.report.rundata import (
    EMPTY_F,
    EMPTY_I,
    NS,
    FloatArray,
    IntArray,
    RunData,
    TickSeries,
    TraceFill,
)

__all__ = [
    "ADVERSE_HORIZON_S",
    "DEFAULT_HORIZONS_S",
    "MarketAnalytics",
    "Markout",
    "analytics",
]

DEFAULT_HORIZONS_S: tuple[float, ...] = (1.0, 5.0, 60.0)
ADVERSE_HORIZON_S = 5.0


@dataclass(frozen=True)
class Markout:
    """Average markout of fills at one horizon.

    Per fill: ``side * (mid(t + h) - price)``, with ``mid(t + h)`` the first tick sample at
    or after ``t + h``; positive means the market moved our way. ``count`` fills had a
    sample that late (fills closer than ``h`` to the end are left out).
    """

    horizon_s: float
    count: int
    mean: float | None
    mean_bps: float | None


@dataclass(frozen=True)
class MarketAnalytics:
    """Market-making figures for one market, computed from the trace.

    - ``spread_capture``: mean of ``side * (mid_at_fill - price)`` where ``mid_at_fill`` is
      the last tick sample at or before the fill; ``spread_capture_bps`` relative to that
      mid; ``spread_capture_total`` the quantity-weighted sum in quote currency.
    - ``fills_per_quoted_minute``: fill ratio = fills / minutes with at least one of our
      quotes out, where a sampling interval counts as quoted if its opening tick shows a
      quote of ours.
    - ``quote_uptime``: share of ticks with both our bid and ask out among ticks whose
      book state was LIVE (``None`` if the book was never LIVE).
    - ``adverse_selection_share``: share of fills with a negative 5 s markout among fills
      that have one.
    - ``fees_paid`` sums positive fees, ``rebates_earned`` the negated negative ones.
    - ``max_drawdown`` and ``final_pnl`` come from the sampled PnL series (the summary holds
      the engine's exact end-of-run values).
    """

    market: str
    fill_count: int
    buy_count: int
    sell_count: int
    maker_count: int
    volume: float
    notional: float
    markouts: tuple[Markout, ...]
    spread_capture: float | None
    spread_capture_bps: float | None
    spread_capture_total: float
    quoted_seconds: float
    fills_per_quoted_minute: float | None
    tick_count: int
    live_ticks: int
    quote_uptime: float | None
    adverse_selection_share: float | None
    fees_paid: float
    rebates_earned: float
    max_drawdown: float | None
    final_pnl: float | None
    final_inventory: float | None
    event_counts: dict[str, int]
    #: Funding received minus paid at the end (perpetuals; 0 on spot).
    funding: float = 0.0

    @property
    def net_fees(self) -> float:
        return self.fees_paid - self.rebates_earned

    def markout(self, horizon_s: float) -> Markout:
        for m in self.markouts:
            if m.horizon_s == horizon_s:
                return m
        have = ", ".join(f"{m.horizon_s:g}" for m in self.markouts)
        raise KeyError(f"no markout at {horizon_s:g} s; computed horizons: {have}")


def analytics(
    run: RunData,
    *,
    horizons_s: Sequence[float] = DEFAULT_HORIZONS_S,
    adverse_horizon_s: float = ADVERSE_HORIZON_S,
) -> dict[str, MarketAnalytics]:
    """Compute :class:`MarketAnalytics` for every market of the run."""
    for h in (*horizons_s, adverse_horizon_s):
        if not h > 0:
            raise ValueError(f"markout horizons must be > 0 seconds, got {h!r}")
    events = Counter((e.market, e.event) for e in run.events)
    result: dict[str, MarketAnalytics] = {}
    for market in run.markets:
        counts = dict(sorted((kind, n) for (m, kind), n in events.items() if m == market))
        result[market] = _market_analytics(
            market,
            run.ticks.get(market),
            run.fills.get(market, []),
            horizons_s,
            adverse_horizon_s,
            counts,
        )
    return result


def _market_analytics(
    market: str,
    ticks: TickSeries | None,
    fills: list[TraceFill],
    horizons_s: Sequence[float],
    adverse_horizon_s: float,
    event_counts: dict[str, int],
) -> MarketAnalytics:
    if ticks is not None and len(ticks):
        valid = ~np.isnan(ticks.mid)
        mid_t, mid_v = ticks.t[valid], ticks.mid[valid]
    else:
        mid_t, mid_v = EMPTY_I, EMPTY_F

    f_t = np.fromiter((f.t for f in fills), dtype=np.int64, count=len(fills))
    f_side = np.fromiter((int(f.side) for f in fills), dtype=np.float64, count=len(fills))
    f_px = np.fromiter((f.price for f in fills), dtype=np.float64, count=len(fills))
    f_qty = np.fromiter((f.qty for f in fills), dtype=np.float64, count=len(fills))
    f_fee = np.fromiter((f.fee for f in fills), dtype=np.float64, count=len(fills))

    markouts = tuple(_markout(h, f_t, f_side, f_px, mid_t, mid_v) for h in horizons_s)
    adverse_values, _ = _markout_values(adverse_horizon_s, f_t, f_side, f_px, mid_t, mid_v)
    adverse = float(np.mean(adverse_values < 0.0)) if len(adverse_values) else None

    # Mid at the fill: the latest sample at or before it (what the quoter could see).
    at = np.searchsorted(mid_t, f_t, side="right") - 1
    has_mid = at >= 0
    if has_mid.any():
        mid_at_fill = mid_v[at[has_mid]]
        capture = f_side[has_mid] * (mid_at_fill - f_px[has_mid])
        spread_capture: float | None = float(capture.mean())
        spread_capture_bps: float | None = float((capture / mid_at_fill).mean() * 1e4)
        capture_total = float((capture * f_qty[has_mid]).sum())
    else:
        spread_capture = spread_capture_bps = None
        capture_total = 0.0

    quoted_s = 0.0
    tick_count = live_count = 0
    uptime: float | None = None
    max_dd: float | None = None
    final_pnl: float | None = None
    final_inv: float | None = None
    funding = 0.0
    if ticks is not None and len(ticks):
        tick_count = len(ticks)
        any_quote = ~np.isnan(ticks.our_bid) | ~np.isnan(ticks.our_ask)
        both_quotes = ~np.isnan(ticks.our_bid) & ~np.isnan(ticks.our_ask)
        quoted_s = float(np.diff(ticks.t)[any_quote[:-1]].sum()) / NS
        live = ticks.live
        live_count = int(live.sum())
        if live_count:
            uptime = float((live & both_quotes).sum() / live_count)
        drawdown = ticks.drawdown
        if not np.all(np.isnan(drawdown)):
            max_dd = float(np.nanmax(drawdown))
        final_pnl = float(ticks.pnl[-1])
        final_inv = float(ticks.inventory[-1])
        funding = float(ticks.funding[-1])

    return MarketAnalytics(
        market=market,
        fill_count=len(fills),
        buy_count=int((f_side > 0).sum()),
        sell_count=int((f_side < 0).sum()),
        maker_count=sum(1 for f in fills if f.liquidity == "maker"),
        volume=float(f_qty.sum()),
        notional=float((f_qty * f_px).sum()),
        markouts=markouts,
        spread_capture=spread_capture,
        spread_capture_bps=spread_capture_bps,
        spread_capture_total=capture_total,
        quoted_seconds=quoted_s,
        fills_per_quoted_minute=len(fills) / (quoted_s / 60.0) if quoted_s > 0 else None,
        tick_count=tick_count,
        live_ticks=live_count,
        quote_uptime=uptime,
        adverse_selection_share=adverse,
        fees_paid=float(f_fee[f_fee > 0].sum()),
        rebates_earned=float(-f_fee[f_fee < 0].sum()),
        max_drawdown=max_dd,
        final_pnl=final_pnl,
        final_inventory=final_inv,
        event_counts=event_counts,
        funding=funding,
    )


def _markout_values(
    horizon_s: float,
    f_t: IntArray,
    f_side: FloatArray,
    f_px: FloatArray,
    mid_t: IntArray,
    mid_v: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Per-fill markouts at one horizon and the prices of the fills that have one."""
    target = f_t + round(horizon_s * NS)
    at = np.searchsorted(mid_t, target, side="left")
    ok = at < len(mid_t)
    return f_side[ok] * (mid_v[at[ok]] - f_px[ok]), f_px[ok]


def _markout(
    horizon_s: float,
    f_t: IntArray,
    f_side: FloatArray,
    f_px: FloatArray,
    mid_t: IntArray,
    mid_v: FloatArray,
) -> Markout:
    values, prices = _markout_values(horizon_s, f_t, f_side, f_px, mid_t, mid_v)
    if not len(values):
        return Markout(horizon_s, 0, None, None)
    return Markout(
        horizon_s,
        len(values),
        float(values.mean()),
        float((values / prices).mean() * 1e4),
    )
