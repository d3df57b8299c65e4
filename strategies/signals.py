"""Online market signals for strategies: O(1) estimators fed tick by tick.

Every estimator takes plain floats and nanosecond timestamps, so it can be used from a
strategy, a risk check or an offline study script alike; none allocates per update
beyond a bounded deque.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Literal

from quoteforge.model import Side

if TYPE_CHECKING:
    from quoteforge.book import L2Book

__all__ = [
    "EwmaFairValue",
    "FillIntensityEstimator",
    "OUFairValue",
    "RealizedVolatility",
    "TradeFlowImbalance",
    "Vpin",
    "book_imbalance",
    "microprice",
]

NS = 1_000_000_000


def _require_positive(value: float, what: str) -> None:
    if not value > 0:
        raise ValueError(f"{what} must be > 0, got {value!r}")


# ---------------------------------------------------------------------------------------
# Book shape
# ---------------------------------------------------------------------------------------


def microprice(book: L2Book, levels: int = 1) -> float | None:
    """Size-weighted mid in price units, or None when a side is empty.

    The best bid and ask are weighted by the opposite side's size summed over the first
    ``levels`` levels: a heavy bid side pulls the estimate toward the ask, where the
    next trade is more likely to happen.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    bids = book.top(Side.BUY, levels)
    asks = book.top(Side.SELL, levels)
    if not bids or not asks:
        return None
    bid_qty = sum(q for _, q in bids)
    ask_qty = sum(q for _, q in asks)
    bid, ask = bids[0][0], asks[0][0]
    total = bid_qty + ask_qty
    ticks = (bid * ask_qty + ask * bid_qty) / total if total else (bid + ask) / 2
    return ticks * float(book.instrument.tick_size)


def book_imbalance(book: L2Book, levels: int = 1) -> float | None:
    """(bid size - ask size) / (bid size + ask size) over the first ``levels`` levels,
    in [-1, 1]; positive means more resting buyers. None when both sides are empty."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    bid_qty = sum(q for _, q in book.top(Side.BUY, levels))
    ask_qty = sum(q for _, q in book.top(Side.SELL, levels))
    total = bid_qty + ask_qty
    if total == 0:
        return None
    return (bid_qty - ask_qty) / total


# ---------------------------------------------------------------------------------------
# Trade flow
# ---------------------------------------------------------------------------------------


class TradeFlowImbalance:
    """Signed aggressor volume over a rolling window, normalised to [-1, 1].

    The window is either the last ``window_s`` seconds or the last ``window_count``
    trades (exactly one of them). +1 means every trade in the window was a buy.
    """

    __slots__ = ("_buy", "_count", "_sell", "_trades", "_window_ns")

    def __init__(self, window_s: float | None = None, window_count: int | None = None) -> None:
        if (window_s is None) == (window_count is None):
            raise ValueError("give exactly one of window_s (seconds) or window_count (trades)")
        if window_s is not None:
            _require_positive(window_s, "window_s")
        if window_count is not None and window_count < 1:
            raise ValueError(f"window_count must be >= 1, got {window_count}")
        self._window_ns = None if window_s is None else int(window_s * NS)
        self._count = window_count
        self._trades: deque[tuple[int, float, int]] = deque()
        self._buy = 0.0
        self._sell = 0.0

    def update(self, ts_ns: int, qty: float, aggressor: Side) -> None:
        sign = int(aggressor)
        self._trades.append((ts_ns, qty, sign))
        if sign > 0:
            self._buy += qty
        else:
            self._sell += qty
        if self._count is not None:
            while len(self._trades) > self._count:
                self._drop()
        else:
            self.expire(ts_ns)

    def expire(self, now_ns: int) -> None:
        """Forget trades older than the time window (no-op for a count window)."""
        if self._window_ns is None:
            return
        cutoff = now_ns - self._window_ns
        while self._trades and self._trades[0][0] <= cutoff:
            self._drop()

    def _drop(self) -> None:
        _, qty, sign = self._trades.popleft()
        if sign > 0:
            self._buy -= qty
        else:
            self._sell -= qty
        if not self._trades:
            # Reset so subtraction round-off cannot accumulate across quiet periods.
            self._buy = self._sell = 0.0

    @property
    def buy_volume(self) -> float:
        return max(self._buy, 0.0)

    @property
    def sell_volume(self) -> float:
        return max(self._sell, 0.0)

    @property
    def trades(self) -> int:
        return len(self._trades)

    @property
    def value(self) -> float:
        """Imbalance in [-1, 1]; 0 with no trades in the window."""
        buy, sell = self.buy_volume, self.sell_volume
        total = buy + sell
        if total <= 0:
            return 0.0
        return max(-1.0, min(1.0, (buy - sell) / total))


class Vpin:
    """Volume-synchronised probability of informed trading (Easley, López de Prado,
    O'Hara 2012) with the aggressor side known from the venue.

    Trades fill buckets of ``bucket_volume``; a trade that overflows a bucket is split
    across buckets. VPIN is the mean of |buy - sell| / bucket_volume over the last
    ``n_buckets`` full buckets: 0 is balanced flow, 1 is entirely one-sided (toxic).
    """

    __slots__ = ("_bucket_volume", "_buckets", "_buy", "_imbalance_sum", "_n", "_sell")

    def __init__(self, bucket_volume: float, n_buckets: int = 50) -> None:
        _require_positive(bucket_volume, "bucket_volume")
        if n_buckets < 1:
            raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
        self._bucket_volume = bucket_volume
        self._n = n_buckets
        self._buckets: deque[float] = deque()
        self._imbalance_sum = 0.0
        self._buy = 0.0
        self._sell = 0.0

    def update(self, qty: float, aggressor: Side) -> None:
        if qty < 0:
            raise ValueError(f"trade quantity must be >= 0, got {qty}")
        remaining = qty
        while remaining > 0:
            room = self._bucket_volume - self._buy - self._sell
            take = min(room, remaining)
            if aggressor is Side.BUY:
                self._buy += take
            else:
                self._sell += take
            remaining -= take
            # Relative tolerance: repeated float additions rarely hit the size exactly.
            if self._buy + self._sell >= self._bucket_volume * (1 - 1e-12):
                self._close_bucket()

    def _close_bucket(self) -> None:
        imbalance = abs(self._buy - self._sell) / self._bucket_volume
        self._buckets.append(imbalance)
        self._imbalance_sum += imbalance
        if len(self._buckets) > self._n:
            self._imbalance_sum -= self._buckets.popleft()
        self._buy = self._sell = 0.0

    @property
    def buckets(self) -> int:
        """Full buckets currently in the estimate (at most ``n_buckets``)."""
        return len(self._buckets)

    @property
    def value(self) -> float | None:
        """VPIN in [0, 1], or None before the first bucket is full."""
        if not self._buckets:
            return None
        return max(0.0, min(1.0, self._imbalance_sum / len(self._buckets)))


# ---------------------------------------------------------------------------------------
# Fair value
# ---------------------------------------------------------------------------------------


class EwmaFairValue:
    """Exponentially weighted price with a half-life in seconds of time, not of ticks,
    so a burst of updates does not drag the estimate more than a quiet minute does."""

    __slots__ = ("_decay_per_ns", "_last_ns", "value")

    def __init__(self, half_life_s: float) -> None:
        _require_positive(half_life_s, "half_life_s")
        self._decay_per_ns = math.log(2) / (half_life_s * NS)
        self._last_ns: int | None = None
        self.value: float | None = None

    def update(self, ts_ns: int, price: float) -> float:
        if self.value is None or self._last_ns is None:
            self.value = price
        else:
            dt = max(0, ts_ns - self._last_ns)
            alpha = 1.0 - math.exp(-self._decay_per_ns * dt)
            self.value += alpha * (price - self.value)
        self._last_ns = ts_ns if self._last_ns is None else max(self._last_ns, ts_ns)
        return self.value


class OUFairValue:
    """Fair value under an Ornstein-Uhlenbeck (mean-reverting) price model.

    Prices are sampled every ``sample_s`` seconds (the last price seen before each
    boundary) and an AR(1) regression ``x[n+1] = a + b*x[n]`` is fitted online with
    exponential forgetting over about ``memory`` samples. Then ``theta = -ln(b)/sample_s``
    (reversion speed per second), ``mean = a/(1-b)``, and the fair value is the expected
    price ``horizon_s`` ahead: ``mean + (x - mean)*exp(-theta*horizon_s)``. Until the fit
    shows mean reversion (0 < b < 1) the fair value is the last price.
    """

    __slots__ = (
        "_forget",
        "_last_price",
        "_min_samples",
        "_next_sample_ns",
        "_origin",
        "_prev_sample",
        "_sample_ns",
        "_samples",
        "_sw",
        "_sx",
        "_sxx",
        "_sxy",
        "_sy",
        "horizon_s",
    )

    def __init__(
        self, sample_s: float, memory: float = 500.0, horizon_s: float = 0.0, min_samples: int = 20
    ) -> None:
        _require_positive(sample_s, "sample_s")
        if memory < 2:
            raise ValueError(f"memory must be >= 2 samples, got {memory}")
        if horizon_s < 0:
            raise ValueError(f"horizon_s must be >= 0, got {horizon_s}")
        self._sample_ns = int(sample_s * NS)
        self._forget = 1.0 - 1.0 / memory
        self.horizon_s = horizon_s
        self._min_samples = max(3, min_samples)
        self._next_sample_ns: int | None = None
        self._last_price: float | None = None
        self._prev_sample: float | None = None
        self._origin: float | None = None
        self._samples = 0
        self._sw = self._sx = self._sy = self._sxx = self._sxy = 0.0

    def update(self, ts_ns: int, price: float) -> None:
        if self._next_sample_ns is None:
            self._next_sample_ns = ts_ns + self._sample_ns
        elif ts_ns >= self._next_sample_ns and self._last_price is not None:
            crossed = (ts_ns - self._next_sample_ns) // self._sample_ns + 1
            # The price was flat across every boundary of a gap; a long gap adds at most
            # ``memory``-worth of samples because older ones are forgotten anyway.
            for _ in range(min(crossed, int(1.0 / (1.0 - self._forget)) + 1)):
                self._add_sample(self._last_price)
            self._next_sample_ns += crossed * self._sample_ns
        self._last_price = price

    def _add_sample(self, price: float) -> None:
        # Regress on prices relative to the first sample: at price levels like 30000 the
        # raw sums of squares would cancel away the variance of tick-sized moves.
        if self._origin is None:
            self._origin = price
        x = price - self._origin
        prev = self._prev_sample
        self._prev_sample = x
        self._samples += 1
        if prev is None:
            return
        f = self._forget
        self._sw = f * self._sw + 1.0
        self._sx = f * self._sx + prev
        self._sy = f * self._sy + x
        self._sxx = f * self._sxx + prev * prev
        self._sxy = f * self._sxy + prev * x

    def coefficients(self) -> tuple[float, float] | None:
        """The fitted ``(a, b)`` of ``x[n+1] = a + b*x[n]``, or None before enough samples.

        ``x`` is the price minus the first sampled price (see ``origin``).
        """
        if self._samples < self._min_samples:
            return None
        w = self._sw
        var = self._sxx - self._sx * self._sx / w
        if var <= 1e-12 * max(self._sxx, 1e-300):
            return None  # (nearly) constant prices: no slope to fit
        b = (self._sxy - self._sx * self._sy / w) / var
        a = (self._sy - b * self._sx) / w
        return a, b

    @property
    def theta(self) -> float | None:
        """Mean-reversion speed per second, or None when the fit shows no reversion."""
        fit = self.coefficients()
        if fit is None or not 0.0 < fit[1] < 1.0:
            return None
        return -math.log(fit[1]) / (self._sample_ns / NS)

    @property
    def mean(self) -> float | None:
        """Long-run mean the price reverts to, or None when the fit shows no reversion."""
        fit = self.coefficients()
        if fit is None or not 0.0 < fit[1] < 1.0:
            return None
        return (self._origin or 0.0) + fit[0] / (1.0 - fit[1])

    @property
    def value(self) -> float | None:
        """Expected price ``horizon_s`` ahead (the last price when not mean-reverting)."""
        last = self._last_price
        if last is None:
            return None
        theta, mean = self.theta, self.mean
        if theta is None or mean is None:
            return last
        return mean + (last - mean) * math.exp(-theta * self.horizon_s)


# ---------------------------------------------------------------------------------------
# Volatility
# ---------------------------------------------------------------------------------------


class RealizedVolatility:
    """Rolling realised volatility of the mid over the last ``window_s`` seconds.

    Each mid update contributes its squared return and the time since the previous
    update; the variance rate is ``sum(r^2) / sum(dt)``, so the estimate is time-weighted
    and does not depend on how often the book ticks. ``returns="log"`` measures relative
    moves (volatility is unit-free), ``returns="abs"`` measures price moves (volatility
    is in price units, as the Avellaneda-Stoikov model wants).
    """

    __slots__ = (
        "_abs",
        "_last_mid",
        "_last_ns",
        "_min_samples",
        "_samples",
        "_sum_dt",
        "_sum_r2",
        "_window_ns",
        "window_s",
    )

    def __init__(
        self, window_s: float, returns: Literal["log", "abs"] = "log", min_samples: int = 10
    ) -> None:
        _require_positive(window_s, "window_s")
        if returns not in ("log", "abs"):
            raise ValueError(f"returns must be 'log' or 'abs', got {returns!r}")
        if min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        self.window_s = window_s
        self._window_ns = int(window_s * NS)
        self._abs = returns == "abs"
        self._min_samples = min_samples
        self._samples: deque[tuple[int, int, float]] = deque()  # (ts_ns, dt_ns, r^2)
        self._sum_dt = 0
        self._sum_r2 = 0.0
        self._last_mid: float | None = None
        self._last_ns: int | None = None

    def update(self, ts_ns: int, mid: float) -> None:
        last, last_ns = self._last_mid, self._last_ns
        if last is None or last_ns is None:
            if not self._abs and mid <= 0:
                raise ValueError(f"log returns need a positive mid, got {mid}")
            self._last_mid, self._last_ns = mid, ts_ns
            return
        if self._abs:
            r = mid - last
        else:
            if mid <= 0:
                raise ValueError(f"log returns need a positive mid, got {mid}")
            r = math.log(mid / last)
        # max() written out: this runs for every new price of every market watched.
        dt = ts_ns - last_ns if ts_ns > last_ns else 0
        r2 = r * r
        samples = self._samples
        samples.append((ts_ns, dt, r2))
        sum_dt = self._sum_dt + dt
        sum_r2 = self._sum_r2 + r2
        self._last_mid = mid
        now_ns = ts_ns if ts_ns > last_ns else last_ns
        self._last_ns = now_ns
        # Expire what left the window.
        cutoff = now_ns - self._window_ns
        while samples and samples[0][0] <= cutoff:
            _, old_dt, old_r2 = samples.popleft()
            sum_dt -= old_dt
            sum_r2 -= old_r2
        if not samples:
            sum_dt, sum_r2 = 0, 0.0
        self._sum_dt = sum_dt
        self._sum_r2 = sum_r2

    @property
    def samples(self) -> int:
        return len(self._samples)

    @property
    def ready(self) -> bool:
        return len(self._samples) >= self._min_samples and self._sum_dt > 0

    @property
    def variance_rate(self) -> float | None:
        """Variance per second, or None before ``min_samples`` returns."""
        if not self.ready:
            return None
        return max(self._sum_r2, 0.0) / (self._sum_dt / NS)

    def sigma(self, horizon_s: float = 1.0) -> float | None:
        """Volatility over ``horizon_s`` seconds (default: per square-root second)."""
        rate = self.variance_rate
        return None if rate is None else math.sqrt(rate * horizon_s)

    @property
    def window_sigma(self) -> float | None:
        """Volatility over the whole window (e.g. 0.01 = 1 % over 5 minutes)."""
        # sigma(window_s) written out, with the same arithmetic (a guard reads this for
        # every new price); ``not r2 < 0.0`` keeps max(r2, 0.0)'s -0.0 and NaN.
        if len(self._samples) < self._min_samples or self._sum_dt <= 0:
            return None
        r2 = self._sum_r2
        rate = (r2 if not r2 < 0.0 else 0.0) / (self._sum_dt / NS)
        return math.sqrt(rate * self.window_s)


# ---------------------------------------------------------------------------------------
# Fill intensity
# ---------------------------------------------------------------------------------------


class FillIntensityEstimator:
    """Online maximum-likelihood estimate of A and k in ``lambda(d) = A*exp(-k*d)``,
    the rate at which a quote resting ``d`` away from the mid is filled.

    Feed it how long quotes rested at each depth (``observe_exposure``) and the depth
    of each fill (``observe_fill``). Depths are binned by ``bin_width``; each update is
    O(1). The Poisson likelihood gives ``A = N / sum_j T_j*exp(-k*d_j)`` and k solves
    ``mean fill depth = sum_j T_j*d_j*exp(-k*d_j) / sum_j T_j*exp(-k*d_j)``, found by
    bisection when ``estimate()`` is asked. With ``half_life_s`` older observations are
    forgotten so the estimate follows a changing market.
    """

    __slots__ = (
        "_bin_width",
        "_decay_per_ns",
        "_exposure",
        "_fill_depth_sum",
        "_fills",
        "_ref_ns",
        "_scale",
        "_total_fills",
        "min_fills",
    )

    def __init__(
        self, bin_width: float, half_life_s: float | None = None, min_fills: int = 20
    ) -> None:
        _require_positive(bin_width, "bin_width")
        if half_life_s is not None:
            _require_positive(half_life_s, "half_life_s")
        self._bin_width = bin_width
        self._decay_per_ns = 0.0 if half_life_s is None else math.log(2) / (half_life_s * NS)
        self.min_fills = min_fills
        self._exposure: dict[int, float] = {}  # depth bin -> weighted seconds quoted
        self._fills = 0.0  # weighted fill count
        self._fill_depth_sum = 0.0
        self._total_fills = 0
        self._ref_ns: int | None = None
        self._scale = 1.0

    def _weight(self, ts_ns: int) -> float:
        # Newer observations get exponentially larger weights instead of decaying all
        # stored ones: O(1) per update, rescaled before the weights can overflow.
        if self._decay_per_ns == 0.0:
            return 1.0
        if self._ref_ns is None:
            self._ref_ns = ts_ns
        exponent = self._decay_per_ns * (ts_ns - self._ref_ns)
        if exponent > 200.0:
            shrink = math.exp(-exponent)  # may underflow to 0: the past is then forgotten
            for key in self._exposure:
                self._exposure[key] *= shrink
            self._fills *= shrink
            self._fill_depth_sum *= shrink
            self._ref_ns = ts_ns
            return 1.0
        return math.exp(exponent)

    def _bin(self, depth: float) -> int:
        return max(0, round(depth / self._bin_width))

    def observe_exposure(self, depth: float, seconds: float, ts_ns: int = 0) -> None:
        """A quote rested ``seconds`` at ``depth`` from the mid (price units)."""
        if seconds <= 0:
            return
        b = self._bin(depth)
        self._exposure[b] = self._exposure.get(b, 0.0) + seconds * self._weight(ts_ns)

    def observe_fill(self, depth: float, ts_ns: int = 0) -> None:
        """A quote resting ``depth`` from the mid was filled."""
        w = self._weight(ts_ns)
        self._fills += w
        self._fill_depth_sum += w * self._bin(depth) * self._bin_width
        self._total_fills += 1

    @property
    def fills(self) -> int:
        return self._total_fills

    def estimate(self) -> tuple[float, float] | None:
        """``(A, k)`` with A in fills per second and k per price unit, or None when
        there are fewer than ``min_fills`` fills or the data cannot identify them
        (all exposure at one depth)."""
        if self._total_fills < self.min_fills or self._fills <= 0:
            return None
        depths = [(b * self._bin_width, t) for b, t in self._exposure.items() if t > 0]
        if len(depths) < 2:
            return None
        target = self._fill_depth_sum / self._fills
        shift = min(d for d, _ in depths)

        def mean_depth(k: float) -> float:
            num = den = 0.0
            for d, t in depths:
                e = t * math.exp(-k * (d - shift))  # shifted so exp never overflows at k>0
                num += d * e
                den += e
            return num / den

        lo, hi = 0.0, 1.0
        if target >= mean_depth(0.0):
            return None  # fills deeper than exposure on average: no decay to fit
        while mean_depth(hi) > target:
            hi *= 2.0
            if hi > 1e12:
                return None
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if mean_depth(mid) > target:
                lo = mid
            else:
                hi = mid
        k = 0.5 * (lo + hi)
        weighted_exposure = sum(t * math.exp(-k * d) for d, t in depths)
        if weighted_exposure <= 0:
            return None
        return self._fills / weighted_exposure, k
