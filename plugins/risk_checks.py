"""Risk checks beyond the basic limits: price band, open orders, total notional,
self-trade, portfolio value at risk and a volatility-scaled position limit."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from statistics import NormalDist
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import quoteforge
from quoteforge.model import Instrument, Quote, Side
from quoteforge.registry import Register
from quoteforge.risk import RiskCheck, RiskView
from quoteforge.strategy import Market

__all__ = [
    "BatchTracker",
    "EwmaGridCovariance",
    "EwmaGridVariance",
    "MaxOpenOrders",
    "MaxTotalNotional",
    "OwnOrderPrices",
    "PortfolioVar",
    "PriceBand",
    "SelfTrade",
    "VolScaledPosition",
]

NS = 1_000_000_000
_TAKE_LEVEL = -1  # the level the engine gives an immediate-or-cancel take


def _closed() -> ConfigDict:
    return ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _side_name(side: Side) -> str:
    return "bid" if side is Side.BUY else "ask"


def _is_take(quote: Quote) -> bool:
    # A take adds to the working orders; a quote replaces the working set of its market.
    return quote.level == _TAKE_LEVEL and not quote.post_only


def _price(inst: Instrument, ticks: int) -> str:
    return f"{inst.ticks_to_price(ticks):f}"


def _qty(inst: Instrument, lots: int) -> str:
    return f"{inst.lots_to_qty(lots):f}"


def _fraction_parts(value: Decimal) -> tuple[int, int]:
    frac = Fraction(value)
    return frac.numerator, frac.denominator


# ---------------------------------------------------------------------------------------
# Following the quote set being approved
# ---------------------------------------------------------------------------------------


class BatchTracker:
    """Which quotes of the set being checked on a market were approved so far.

    The chain approves a quote only after every check passed it, so a check placed in
    the chain sees each approved quote before it is approved. The view's per-side batch
    totals then tell whether the quote this check passed last was approved by the checks
    after it (the total grew by its lots) or refused (the total did not move). Totals of
    zero mean nothing is approved yet in the current set, whichever set that is.
    """

    __slots__ = ("_asks", "_bids", "_count", "_market", "_pending", "_totals")

    def __init__(self) -> None:
        self._market = ""
        self._totals = (0, 0)
        self._pending: Quote | None = None
        self._count = 0
        self._bids: list[int] = []
        self._asks: list[int] = []

    def sync(self, market: str, view: RiskView) -> None:
        """Bring the tracker up to date before judging a quote on ``market``."""
        totals = (view.batch_lots(1), view.batch_lots(-1))
        pending = self._pending
        self._pending = None
        if totals == (0, 0) or market != self._market:
            self._market = market
            self._count = 0
            self._bids.clear()
            self._asks.clear()
        elif pending is not None:
            bid0, ask0 = self._totals
            grown = (
                (bid0 + pending.qty_lots, ask0)
                if pending.side is Side.BUY
                else (bid0, ask0 + pending.qty_lots)
            )
            if totals == grown:
                self._count += 1
                (self._bids if pending.side is Side.BUY else self._asks).append(pending.price_ticks)
        self._totals = totals

    def passed(self, quote: Quote) -> None:
        """This check let ``quote`` through; the next ``sync`` learns its fate."""
        if quote.qty_lots > 0:
            self._pending = quote

    @property
    def count(self) -> int:
        """Quotes approved so far in the current set."""
        return self._count

    def best(self, side: Side) -> int | None:
        """Best approved price of the current set on ``side``, in ticks."""
        if side is Side.BUY:
            return max(self._bids) if self._bids else None
        return min(self._asks) if self._asks else None


# ---------------------------------------------------------------------------------------
# price_band
# ---------------------------------------------------------------------------------------


class PriceBandParams(BaseModel):
    model_config = _closed()
    fat_finger_bps: Decimal = Field(
        gt=0,
        description="Refuse a bid above mid*(1+x) or an ask below mid*(1-x), x in basis "
        "points: a price on the wrong side of the mid by this much is a typo, not a quote.",
    )
    max_distance_bps: Decimal | None = Field(
        None,
        gt=0,
        description="Also refuse any quote further than this many basis points from the mid "
        "on either side (a quote left far away after a bad fair value); none by default.",
    )
    without_mid: Literal["refuse", "allow"] = Field(
        "refuse",
        description="What to do when the book has no mid (a side is empty): refuse, since "
        "no price can be verified, or allow.",
    )


class PriceBand(RiskCheck):
    """Refuses quotes too far from the book mid: fat-finger prices through the mid, and
    optionally anything further than ``max_distance_bps`` away. Exact integer tests."""

    Params = PriceBandParams
    params: PriceBandParams

    def __init__(self, name: str, params: PriceBandParams) -> None:
        super().__init__(name, params)
        # price > mid*(1+x/1e4) with mid = (bid+ask)/2  <=>  price*2e4*d > (bid+ask)*(1e4*d+n)
        self._fat = _fraction_parts(params.fat_finger_bps)
        self._far = _fraction_parts(params.max_distance_bps) if params.max_distance_bps else None

    def check(self, market: Market, quote: Quote, view: RiskView) -> str | None:
        book = market.book
        bid, ask = book.best_bid_ticks(), book.best_ask_ticks()
        if bid is None or ask is None:
            if self.params.without_mid == "allow":
                return None
            return (
                f"no mid on {market.key} (a book side is empty) to verify the "
                f"{_side_name(quote.side)} at {_price(market.instrument, quote.price_ticks)}"
                "; set without_mid: allow to let quotes through without a reference"
            )
        mid2 = bid + ask
        price = quote.price_ticks
        n, d = self._fat
        if quote.side is Side.BUY:
            through = price * 20_000 * d > mid2 * (10_000 * d + n)
        else:
            through = price * 20_000 * d < mid2 * (10_000 * d - n)
        if through:
            return self._reason(market, quote, mid2, "fat_finger_bps", self.params.fat_finger_bps)
        if self._far is not None:
            n, d = self._far
            scaled = price * 20_000 * d
            too_far = not mid2 * (10_000 * d - n) <= scaled <= mid2 * (10_000 * d + n)
            if too_far:
                limit = self.params.max_distance_bps
                assert limit is not None
                return self._reason(market, quote, mid2, "max_distance_bps", limit)
        return None

    def _reason(self, market: Market, quote: Quote, mid2: int, limit: str, bps: Decimal) -> str:
        inst = market.instrument
        mid = inst.tick_size * Decimal(mid2) / 2
        price = inst.ticks_to_price(quote.price_ticks)
        away = (price - mid) / mid * 10_000
        where = "above" if away > 0 else "below"
        return (
            f"{_side_name(quote.side)} {price:f} is {abs(away):.1f} bps {where} "
            f"mid {mid.normalize():f}"
            f" > {limit} {bps}"
        )


# ---------------------------------------------------------------------------------------
# max_open_orders
# ---------------------------------------------------------------------------------------


class MaxOpenOrdersParams(BaseModel):
    model_config = _closed()
    max_open_orders: int = Field(
        ge=1,
        description="Most orders working on one market: the quotes of a wanted set (which "
        "replace the working ones), or the working orders plus an immediate-or-cancel take.",
    )


class MaxOpenOrders(RiskCheck):
    """Refuses the quote that would make a market's wanted set larger than the limit,
    and a take when the market already has that many orders working."""

    Params = MaxOpenOrdersParams
    params: MaxOpenOrdersParams

    def __init__(self, name: str, params: MaxOpenOrdersParams) -> None:
        super().__init__(name, params)
        self._batch = BatchTracker()

    def check(self, market: Market, quote: Quote, view: RiskView) -> str | None:
        limit = self.params.max_open_orders
        if _is_take(quote):
            working = view.open_order_count(market.key)
            if working + 1 > limit:
                return (
                    f"take would be order {working + 1} working on {market.key} "
                    f"> max_open_orders {limit}"
                )
            return None
        batch = self._batch
        batch.sync(market.key, view)
        if batch.count + 1 > limit:
            return (
                f"{_side_name(quote.side)} level {quote.level} would be quote "
                f"{batch.count + 1} on {market.key} > max_open_orders {limit}"
            )
        batch.passed(quote)
        return None


# ---------------------------------------------------------------------------------------
# max_total_notional
# ---------------------------------------------------------------------------------------


class MaxTotalNotionalParams(BaseModel):
    model_config = _closed()
    max_notional: Decimal = Field(
        gt=0,
        description="Cap on the sum over all markets of |position| x mid plus the notional of "
        "working orders (valued at the mid), in quote units; markets must share one quote "
        "currency.",
    )
    refresh_s: float = Field(
        1.0,
        ge=0,
        le=315_360_000,
        description="Markets other than the one being checked are re-read in full at most "
        "this often (run time, seconds); in between each market's share is refreshed whenever "
        "one of its quotes is checked. 0 re-reads every market on every check.",
    )


class MaxTotalNotional(RiskCheck):
    """Refuses a quote whose order, with the portfolio's positions and working orders,
    would take gross notional above ``max_notional``.

    Per quote the cost is O(1): the market being checked is valued exactly and the
    running total of the others is corrected by its fresh share; a full pass over all
    markets happens at most every ``refresh_s``. Quotes that only reduce a position pass.
    """

    Params = MaxTotalNotionalParams
    params: MaxTotalNotionalParams

    def __init__(self, name: str, params: MaxTotalNotionalParams) -> None:
        super().__init__(name, params)
        self._cap = float(params.max_notional)
        self._refresh_ns = int(params.refresh_s * NS)
        self._shares: dict[str, float] = {}
        self._total = 0.0
        self._full_at: int | None = None

    @staticmethod
    def _mid(market: Market) -> float | None:
        return market.book.mid()

    def _share(self, market: Market, view: RiskView) -> float:
        """|position| x mid + working lots x mid: what the market holds now."""
        mid = self._mid(market)
        if mid is None:
            return self._shares.get(market.key, 0.0)
        key = market.key
        lots = abs(view.position_lots(key)) + view.open_lots(key, 1) + view.open_lots(key, -1)
        return market.instrument.lots_to_float(lots) * mid

    def _refresh(self, view: RiskView, now: int) -> None:
        shares = self._shares
        shares.clear()
        for key, other in view.markets.items():
            shares[key] = self._share(other, view)
        self._total = math.fsum(shares.values())
        self._full_at = now

    def check(self, market: Market, quote: Quote, view: RiskView) -> str | None:
        key = market.key
        position = view.position_lots(key)
        sign = int(quote.side)
        batch_same = view.batch_lots(sign)
        if position * sign < 0 and batch_same + quote.qty_lots <= abs(position):
            return None  # only unwinds: refusing it would keep the exposure, not cut it
        now = view.now_ns()
        if self._full_at is None or now - self._full_at >= self._refresh_ns or now < self._full_at:
            self._refresh(view, now)
        fresh = self._share(market, view)
        self._total += fresh - self._shares.get(key, 0.0)
        self._shares[key] = fresh
        others = self._total - fresh
        inst = market.instrument
        mid = self._mid(market)
        price = inst.ticks_to_float(quote.price_ticks)
        value = mid if mid is not None else price
        if _is_take(quote):
            working = view.open_lots(key, 1) + view.open_lots(key, -1)
            lots = abs(position) + working
            order = quote.qty_lots
        else:
            # The wanted set replaces this market's working orders.
            lots = abs(position) + view.batch_lots(1) + view.batch_lots(-1)
            order = quote.qty_lots
        here = inst.lots_to_float(lots) * value + inst.lots_to_float(order) * price
        total = others + here
        if total > self._cap:
            return (
                f"total notional would reach {total:,.2f} > max_notional "
                f"{self.params.max_notional} ({key} {here:,.2f} incl. this "
                f"{_side_name(quote.side)} {_qty(inst, order)} @ "
                f"{_price(inst, quote.price_ticks)}, other markets {others:,.2f})"
            )
        return None


# ---------------------------------------------------------------------------------------
# self_trade
# ---------------------------------------------------------------------------------------


class OwnOrderPrices(Protocol):
    """What ``self_trade`` needs from the risk view besides the batch totals."""

    def own_best_ticks(self, market: str, side_sign: int) -> int | None:
        """Best price in ticks of our working orders on one side of a market."""


class SelfTradeParams(BaseModel):
    model_config = _closed()
    allow_lock: bool = Field(
        False,
        description="Let a bid sit at exactly our own ask price (locked, no trade on venues "
        "that reject post-only crossing); by default equal prices are refused too.",
    )


class SelfTrade(RiskCheck):
    """Refuses a quote that would cross our own order on the other side: a working order
    (read through the view's ``own_best_ticks``) or a quote approved earlier in the same
    wanted set."""

    Params = SelfTradeParams
    params: SelfTradeParams

    def __init__(self, name: str, params: SelfTradeParams) -> None:
        super().__init__(name, params)
        self._batch = BatchTracker()

    def _crosses(self, side: Side, price: int, other: int) -> bool:
        if self.params.allow_lock:
            return price > other if side is Side.BUY else price < other
        return price >= other if side is Side.BUY else price <= other

    def check(self, market: Market, quote: Quote, view: RiskView) -> str | None:
        own_best = view.own_best_ticks
        key = market.key
        side = quote.side
        inst = market.instrument
        batch = self._batch
        batch.sync(key, view)
        working = own_best(key, -int(side))
        if working is not None and self._crosses(side, quote.price_ticks, working):
            return (
                f"{_side_name(side)} {_price(inst, quote.price_ticks)} would cross our "
                f"working {_side_name(side.opposite)} at {_price(inst, working)}"
            )
        if not _is_take(quote):
            planned = batch.best(side.opposite)
            if planned is not None and self._crosses(side, quote.price_ticks, planned):
                return (
                    f"{_side_name(side)} {_price(inst, quote.price_ticks)} would cross "
                    f"our own {_side_name(side.opposite)} at {_price(inst, planned)} "
                    "in the same quote set"
                )
            batch.passed(quote)
        return None


# ---------------------------------------------------------------------------------------
# Volatility estimators on a time grid
# ---------------------------------------------------------------------------------------


def _decay(half_life_s: float, interval_s: float) -> float:
    return 0.5 ** (interval_s / half_life_s)


class EwmaGridVariance:
    """EWMA variance of one market's log mid returns sampled on a time grid.

    ``update`` is called whenever the market is looked at; once a grid point has passed
    the current mid closes the interval. A return over k grid intervals (the market was
    not looked at in between) enters as one observation of r²/k, so the estimate stays
    a per-interval variance however irregular the sampling is. The sum of weights is
    divided out (``1 - lambda**n``), so the first samples are not biased towards zero.
    """

    __slots__ = ("_acc", "_interval", "_lam", "_last_mid", "_next", "samples", "variance")

    def __init__(self, interval_s: float, half_life_s: float) -> None:
        if interval_s <= 0 or half_life_s <= 0:
            raise ValueError(
                f"interval_s and half_life_s must be > 0, got {interval_s} and {half_life_s}"
            )
        self._interval = int(interval_s * NS)
        self._lam = _decay(half_life_s, interval_s)
        self._last_mid: float | None = None
        self._next = 0
        self.samples = 0
        self._acc = 0.0
        self.variance = 0.0

    def update(self, now_ns: int, mid: float | None) -> None:
        if mid is None or mid <= 0:
            return
        if self._last_mid is None:
            self._last_mid = mid
            self._next = now_ns + self._interval
            return
        if now_ns < self._next:
            return
        steps = 1 + (now_ns - self._next) // self._interval
        r = math.log(mid / self._last_mid)
        lam = self._lam
        self._acc = lam * self._acc + (1 - lam) * r * r / steps
        self.samples += 1
        self.variance = self._acc / (1 - lam**self.samples)
        self._last_mid = mid
        self._next += steps * self._interval

    def sigma(self, horizon_s: float) -> float:
        """Standard deviation of the log return over ``horizon_s`` seconds."""
        return math.sqrt(self.variance * horizon_s * NS / self._interval)


class EwmaGridCovariance:
    """EWMA covariance of several markets' log mid returns on one time grid
    (RiskMetrics style, zero-mean returns).

    All markets are sampled together at each grid point from their latest mids, so
    every covariance entry is built from the same intervals and the matrix stays
    positive semi-definite. A market without a mid contributes a zero return. As for
    ``EwmaGridVariance`` the sum of weights is divided out.
    """

    def __init__(self, keys: list[str], interval_s: float, half_life_s: float) -> None:
        if interval_s <= 0 or half_life_s <= 0:
            raise ValueError(
                f"interval_s and half_life_s must be > 0, got {interval_s} and {half_life_s}"
            )
        self.keys = list(keys)
        self.index = {k: i for i, k in enumerate(self.keys)}
        n = len(self.keys)
        self.interval_ns = int(interval_s * NS)
        self._lam = _decay(half_life_s, interval_s)
        self._last: np.ndarray = np.full(n, np.nan)
        self._acc: np.ndarray = np.zeros((n, n))
        self.cov: np.ndarray = np.zeros((n, n))
        self.updates = 0
        self.samples = np.zeros(n, dtype=np.int64)
        self._next: int | None = None

    def update(self, now_ns: int, mids: list[float | None]) -> bool:
        """Feed the latest mids (in ``keys`` order); returns True when a grid point closed."""
        current = np.array([m if m is not None and m > 0 else np.nan for m in mids])
        if self._next is None:
            self._last = current
            self._next = now_ns + self.interval_ns
            return False
        if now_ns < self._next:
            return False
        steps = 1 + (now_ns - self._next) // self.interval_ns
        both = ~np.isnan(current) & ~np.isnan(self._last)
        r = np.zeros(len(self.keys))
        r[both] = np.log(current[both] / self._last[both]) / math.sqrt(steps)
        lam = self._lam
        self._acc = lam * self._acc + (1 - lam) * np.outer(r, r)
        self.updates += 1
        self.cov = self._acc / (1 - lam**self.updates)
        self.samples[both] += 1
        self._last = np.where(np.isnan(current), self._last, current)
        self._next += steps * self.interval_ns
        return True


# ---------------------------------------------------------------------------------------
# portfolio_var
# ---------------------------------------------------------------------------------------


class PortfolioVarParams(BaseModel):
    model_config = _closed()
    max_var: Decimal = Field(
        gt=0,
        description="Largest parametric value at risk of all positions, in quote units, at "
        "`confidence` over `horizon_s`.",
    )
    confidence: float = Field(0.99, gt=0.5, lt=1, description="One-sided VaR confidence level.")
    horizon_s: float = Field(
        60.0, gt=0, le=315_360_000, description="VaR horizon in seconds of run time."
    )
    sample_interval_s: float = Field(
        1.0,
        gt=0,
        le=315_360_000,
        description="Grid on which mid returns are sampled, seconds of run time.",
    )
    half_life_s: float = Field(
        300.0,
        gt=0,
        le=315_360_000,
        description="Half-life of the EWMA variance and covariance, seconds.",
    )
    min_samples: int = Field(
        30, ge=2, description="Returns a market needs before its variance is trusted."
    )
    before_ready: Literal["refuse", "allow"] = Field(
        "refuse",
        description="Quotes on a market with fewer than min_samples returns: refuse (no "
        "estimate, no risk taken) or allow (other limits must cover the warm-up).",
    )


@dataclass(slots=True)
class _VarCache:
    ts_ns: int
    mids: list[float | None]
    positions: list[int]
    exposure: np.ndarray  # quote-currency value per market: position x mid
    cov_x: np.ndarray  # cov @ exposure
    base: float  # exposure' cov exposure


class PortfolioVar(RiskCheck):
    """Refuses a quote whose fill would push the portfolio's parametric VaR above
    ``max_var`` (quotes that lower the VaR always pass).

    VaR = z(confidence) x sqrt(x' S x) x sqrt(horizon / interval), x the value of each
    market's position (position x mid) with the candidate quote and the quotes already
    approved on its side counted as filled, S the EWMA covariance of grid-sampled log
    mid returns. Mids are sampled once per timestamp and the O(markets²) product is
    redone only when the timestamp or a position changed; a quote then costs O(markets)
    to read the positions plus O(1) through x' S x + 2 d (S x)_m + d² S_mm.
    """

    Params = PortfolioVarParams
    params: PortfolioVarParams

    def __init__(self, name: str, params: PortfolioVarParams) -> None:
        super().__init__(name, params)
        self._z = NormalDist().inv_cdf(params.confidence)
        self._scale = math.sqrt(params.horizon_s / params.sample_interval_s)
        self._cap = float(params.max_var)
        self._est: EwmaGridCovariance | None = None
        self._cache: _VarCache | None = None

    def estimator(self, view: RiskView) -> EwmaGridCovariance:
        """The covariance estimator over the view's markets (built on first use, rebuilt
        when the set of markets changes)."""
        est = self._est
        if est is None or len(est.keys) != len(view.markets) or est.keys != list(view.markets):
            est = self._est = EwmaGridCovariance(
                list(view.markets), self.params.sample_interval_s, self.params.half_life_s
            )
            self._cache = None
        return est

    def _snapshot(self, view: RiskView, now: int) -> _VarCache:
        est = self.estimator(view)
        cache = self._cache
        positions = [view.position_lots(key) for key in view.markets]
        if cache is not None and cache.ts_ns == now and cache.positions == positions:
            return cache
        if cache is not None and cache.ts_ns == now:
            mids = cache.mids  # sampled once per timestamp; only positions moved
        else:
            mids = [m.book.mid() for m in view.markets.values()]
            est.update(now, mids)
        values = np.array(
            [
                market.instrument.lots_to_float(lots) * (mid or 0.0)
                for market, lots, mid in zip(view.markets.values(), positions, mids, strict=True)
            ]
        )
        cov_x = est.cov @ values
        cache = self._cache = _VarCache(now, mids, positions, values, cov_x, float(values @ cov_x))
        return cache

    def var_of(self, quadratic: float) -> float:
        return self._z * math.sqrt(max(quadratic, 0.0)) * self._scale

    def current_var(self, view: RiskView) -> float:
        """VaR of the positions as they stand, in quote units."""
        return self.var_of(self._snapshot(view, view.now_ns()).base)

    def check(self, market: Market, quote: Quote, view: RiskView) -> str | None:
        key = market.key
        snap = self._snapshot(view, view.now_ns())
        est = self._est
        assert est is not None
        i = est.index.get(key)
        inst = market.instrument
        mid = snap.mids[i] if i is not None else market.book.mid()
        value_mid = mid if mid is not None else inst.ticks_to_float(quote.price_ticks)
        sign = int(quote.side)
        position = view.position_lots(key)
        before_lots = position + sign * view.batch_lots(sign)
        after_lots = before_lots + sign * quote.qty_lots
        if abs(after_lots) <= abs(before_lots):
            return None
        if i is None:
            return (
                f"{key} is not among the run's markets, so its risk cannot be estimated; "
                "portfolio_var covers only markets the engine registered"
            )
        ready = int(est.samples[i])
        if ready < self.params.min_samples:
            if self.params.before_ready == "allow":
                return None
            return (
                f"VaR of {key} not estimated yet ({ready}/{self.params.min_samples} returns on "
                f"a {self.params.sample_interval_s:g}s grid); set before_ready: allow to quote "
                "during the warm-up"
            )
        x_m = float(snap.exposure[i])
        cov = est.cov
        s_mm = float(cov[i, i])
        cov_x_m = float(snap.cov_x[i])

        def quadratic(lots: int) -> float:
            d = inst.lots_to_float(lots) * value_mid - x_m
            return snap.base + 2 * d * cov_x_m + d * d * s_mm

        var_before = self.var_of(quadratic(before_lots))
        var_after = self.var_of(quadratic(after_lots))
        if var_after > self._cap and var_after > var_before:
            p = self.params
            return (
                f"portfolio VaR would rise from {var_before:,.2f} to {var_after:,.2f} > "
                f"max_var {p.max_var} ({p.confidence:g} over {p.horizon_s:g}s; {key} "
                f"position {_qty(inst, position)} -> {_qty(inst, after_lots)} "
                "if filled)"
            )
        return None


# ---------------------------------------------------------------------------------------
# vol_scaled_position
# ---------------------------------------------------------------------------------------


class VolScaledPositionParams(BaseModel):
    model_config = _closed()
    base_position: Decimal = Field(
        gt=0,
        description="Largest absolute position per market in base units while volatility is "
        "at or below ref_vol.",
    )
    ref_vol: float = Field(
        gt=0,
        description="Reference volatility: standard deviation of log mid returns over "
        "horizon_s (0.002 = 0.2 %). Above it the limit shrinks as base * ref_vol / vol.",
    )
    horizon_s: float = Field(60.0, gt=0, le=315_360_000, description="Horizon of ref_vol, seconds.")
    sample_interval_s: float = Field(
        1.0,
        gt=0,
        le=315_360_000,
        description="Grid on which mid returns are sampled, seconds of run time.",
    )
    half_life_s: float = Field(
        300.0, gt=0, le=315_360_000, description="Half-life of the EWMA variance, seconds."
    )
    min_samples: int = Field(
        20,
        ge=2,
        description="Returns needed before volatility scales the limit (until "
        "then the limit is base_position).",
    )


class VolScaledPosition(RiskCheck):
    """A max-position limit that shrinks as realised volatility rises:
    limit = base_position * min(1, ref_vol / vol). Quotes that reduce |position| pass."""

    Params = VolScaledPositionParams
    params: VolScaledPositionParams

    def __init__(self, name: str, params: VolScaledPositionParams) -> None:
        super().__init__(name, params)
        self._vols: dict[str, EwmaGridVariance] = {}

    def volatility(self, market: Market, now_ns: int) -> float | None:
        """Current volatility over ``horizon_s``, or None while warming up."""
        est = self._vols.get(market.key)
        if est is None:
            p = self.params
            est = self._vols[market.key] = EwmaGridVariance(p.sample_interval_s, p.half_life_s)
        est.update(now_ns, market.book.mid())
        if est.samples < self.params.min_samples:
            return None
        return est.sigma(self.params.horizon_s)

    def limit_lots(self, market: Market, vol: float | None) -> int:
        base = self.params.base_position / market.instrument.lot_size
        if vol is None or vol <= self.params.ref_vol:
            return int(base)
        return math.floor(float(base) * self.params.ref_vol / vol)

    def check(self, market: Market, quote: Quote, view: RiskView) -> str | None:
        vol = self.volatility(market, view.now_ns())
        position = view.position_lots(market.key)
        sign = int(quote.side)
        exposure = position + sign * (view.batch_lots(sign) + quote.qty_lots)
        if abs(exposure) <= abs(position):
            return None
        limit = self.limit_lots(market, vol)
        if abs(exposure) <= limit:
            return None
        inst = market.instrument
        p = self.params
        reached = _qty(inst, abs(exposure))
        if vol is None or vol <= p.ref_vol:
            return f"position would reach {reached} > base_position {p.base_position}"
        return (
            f"position would reach {reached} > vol-scaled limit {_qty(inst, limit)} "
            f"(base_position {p.base_position} x ref_vol {p.ref_vol:g} / vol {vol:.4g} "
            f"over {p.horizon_s:g}s)"
        )


@quoteforge.hookimpl
def quoteforge_register_risk_checks(register: Register) -> None:
    register("price_band", PriceBand, description="Fat-finger and distance band around the mid.")
    register("max_open_orders", MaxOpenOrders, description="Most orders working per market.")
    register(
        "max_total_notional",
        MaxTotalNotional,
        description="Cap on gross notional (positions and working orders) over all markets.",
    )
    register("self_trade", SelfTrade, description="No quote crossing our own orders.")
    register(
        "portfolio_var",
        PortfolioVar,
        description="Parametric EWMA value-at-risk limit over all markets.",
    )
    register(
        "vol_scaled_position",
        VolScaledPosition,
        description="Max position shrinking as realised volatility rises.",
    )
