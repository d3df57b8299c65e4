"""Seeded synthetic markets: the mid-price process and the order flow around it.

The mid follows a Brownian, mean-reverting (Ornstein-Uhlenbeck) or jump process, in
log space for spot markets and in logit space for binary contracts, so prices stay
positive and contracts stay inside (0, 1). Takers arrive as a Poisson process; each
reaches a distance delta from the mid drawn from an exponential law, so the intensity
of takers reaching a quote at delta is A*exp(-k*delta) with k = 1/reach.
"""

from __future__ import annotations

import math
import zlib
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from quoteforge.manifest import Duration

__all__ = ["FlowParams", "LiquidityParams", "MidPath", "ProcessParams", "market_rng"]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ProcessParams(_Closed):
    model: Literal["brownian", "mean_reverting", "jump"] = Field(
        "brownian", description="Mid process: brownian, mean_reverting (OU) or jump."
    )
    sigma: float = Field(
        1e-4,
        ge=0,
        le=1,
        description="Volatility per square-root second: of log-price for spot markets, of "
        "the log-odds for binary contracts.",
    )
    reversion: float = Field(
        0.01, ge=0, le=1000, description="Mean-reversion speed per second (mean_reverting model)."
    )
    mean: float | None = Field(
        None, gt=0, description="Level the mean-reverting mid returns to (default: initial)."
    )
    jump_intensity: float = Field(
        0.005, ge=0, le=1000, description="Jumps per second (jump model), at most 1000."
    )
    jump_size: float = Field(
        0.003, ge=0, le=10, description="Standard deviation of a jump (same units as sigma)."
    )
    step: Duration = Field(
        Duration(0.1), ge=0.001, description="Time step of the mid path (at least 1ms)."
    )


class FlowParams(_Closed):
    arrival_rate: float = Field(
        1.0,
        ge=0,
        le=10_000,
        description="A: taker arrivals per second on each side (at most 10000).",
    )
    reach: float | None = Field(
        None,
        gt=0,
        description="Mean distance from the mid (price units) a taker trades up to; the "
        "intensity at distance delta is A*exp(-delta/reach). Default: 4 ticks + 5 bps.",
    )
    size: float = Field(1.0, gt=0, description="Mean taker size in base units.")
    size_noise: float = Field(
        0.5, ge=0, le=10, description="Log-normal dispersion of taker sizes (0: all the same)."
    )
    informed_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of takers who know the mid's direction over informed_horizon.",
    )
    informed_horizon: Duration = Field(
        Duration(5), description="How far ahead informed takers see the mid."
    )

    @field_validator("arrival_rate")
    @classmethod
    def _rate_or_none(cls, value: float) -> float:
        if 0 < value < 1e-6:
            raise ValueError(
                f"arrival_rate {value} would wait more than 11 days for a taker; use 0 for "
                "no takers or at least 1e-6 per second"
            )
        return value


class LiquidityParams(_Closed):
    levels: int = Field(
        8, ge=0, le=1000, description="Background levels per side (other makers), 0 to 1000."
    )
    distance: float | None = Field(
        None,
        ge=0,
        description="Distance of the first background level from the mid, price units. "
        "Default: 3 ticks + 8 bps.",
    )
    spacing: float | None = Field(
        None, gt=0, description="Gap between background levels, price units (default 2 ticks)."
    )
    size: float = Field(2.0, gt=0, description="Mean size of a background level, base units.")


def market_rng(seed: int, venue: str, symbol: str, stream: str) -> np.random.Generator:
    """An independent, reproducible random stream per (seed, market, purpose)."""
    key = zlib.crc32(f"{venue}|{symbol}|{stream}".encode())
    return np.random.default_rng([seed & 0xFFFFFFFF, key])


class MidPath:
    """The latent mid price sampled on a fixed step, generated lazily in chunks.

    ``at(t)`` is the mid at run time ``t`` seconds; looking ahead (informed flow) just
    generates further. The path depends only on the seed and the params.
    """

    CHUNK = 4096

    def __init__(
        self,
        initial: float,
        params: ProcessParams,
        binary: bool,
        rng: np.random.Generator,
        floor: float,
        ceiling: float | None,
    ) -> None:
        self.params = params
        self.binary = binary
        self.rng = rng
        self.dt = float(params.step)
        self._floor = floor
        self._ceiling = ceiling
        self._x = self._to_x(initial)
        mean = params.mean if params.mean is not None else initial
        self._mean_x = self._to_x(mean)
        self._values: list[float] = [initial]

    def _to_x(self, price: float) -> float:
        if self.binary:
            p = min(max(price, 1e-6), 1 - 1e-6)
            return math.log(p / (1 - p))
        return math.log(price)

    def _from_x(self, x: float) -> float:
        if self.binary:
            return 1.0 / (1.0 + math.exp(-x))
        return math.exp(x)

    def _extend(self) -> None:
        p = self.params
        n = self.CHUNK
        sd = p.sigma * math.sqrt(self.dt)
        shocks = self.rng.standard_normal(n) * sd
        jumps: np.ndarray = np.zeros(n)
        if p.model == "jump" and p.jump_intensity > 0:
            count = self.rng.poisson(p.jump_intensity * self.dt, n)
            jumps = count * self.rng.standard_normal(n) * p.jump_size
        x = self._x
        out = self._values
        theta = p.reversion * self.dt if p.model == "mean_reverting" else 0.0
        drift = 0.0 if self.binary else -0.5 * p.sigma * p.sigma * self.dt
        for i in range(n):
            x += theta * (self._mean_x - x) + drift + float(shocks[i]) + float(jumps[i])
            value = self._from_x(x)
            if value < self._floor:
                value, x = self._floor, self._to_x(self._floor)
            elif self._ceiling is not None and value > self._ceiling:
                value, x = self._ceiling, self._to_x(self._ceiling)
            out.append(value)
        self._x = x

    def at(self, t: float) -> float:
        i = int(t / self.dt) if t > 0 else 0
        while i >= len(self._values):
            self._extend()
        return self._values[i]
