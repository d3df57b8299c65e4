"""What ``quoteforge optimize`` maximises, measured inside a run so that a trial can be
judged (and pruned) before it ends.

A :class:`Probe` attached to a run samples, every ``run.sample_interval`` of run time,
the run's total PnL over its markets (as ``summary.csv`` computes it), its fill count
and the orders it sent. From those samples:

- ``pnl``: the total PnL at the end (quote currency, fees included).
- ``sharpe``: mean(ΔPnL) / sd(ΔPnL) over the sample intervals, where ΔPnL is the change of
  total PnL over one interval (per interval, not annualised; 0 with fewer than two
  intervals or when the PnL never moved).
- ``pnl_dd``: pnl − λ · max_drawdown, where max_drawdown is the largest fall of the
  sampled total PnL from its running peak (the peak starts at 0) and λ is
  ``--drawdown-penalty`` (default 1).
- ``fill_ratio``: orders with at least one fill / orders sent (0 when none were sent).

Every objective is maximised. During the run the same formula over the samples so far
is the trial's intermediate value, which the pruner compares across trials.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quoteforge.clock import NS

__all__ = ["OBJECTIVES", "Measures", "Probe", "objective_value"]

#: name -> one-line formula (shown by ``--help`` and in the results).
OBJECTIVES = {
    "pnl": "total PnL at the end, fees included",
    "sharpe": "mean/sd of the PnL change per sample interval (not annualised)",
    "pnl_dd": "PnL - drawdown_penalty x max drawdown of the sampled total PnL",
    "fill_ratio": "orders with a fill / orders sent",
}


@dataclass
class Measures:
    """A run's samples so far."""

    pnl: list[float] = field(default_factory=list)
    fills: int = 0
    orders: int = 0
    filled_orders: int = 0

    @property
    def final_pnl(self) -> float:
        return self.pnl[-1] if self.pnl else 0.0

    @property
    def max_drawdown(self) -> float:
        peak, worst = 0.0, 0.0
        for value in self.pnl:
            peak = max(peak, value)
            worst = max(worst, peak - value)
        return worst

    @property
    def sharpe(self) -> float:
        steps = [b - a for a, b in zip([0.0, *self.pnl], self.pnl, strict=False)]
        if len(steps) < 2:
            return 0.0
        sd = statistics.stdev(steps)
        return statistics.fmean(steps) / sd if sd > 0 else 0.0

    @property
    def fill_ratio(self) -> float:
        return self.filled_orders / self.orders if self.orders else 0.0

    def as_dict(self, penalty: float) -> dict[str, float | int]:
        """Every objective and its inputs, for the results table."""
        return {
            "pnl": self.final_pnl,
            "sharpe": self.sharpe,
            "pnl_dd": self.final_pnl - penalty * self.max_drawdown,
            "fill_ratio": self.fill_ratio,
            "max_drawdown": self.max_drawdown,
            "fill_count": self.fills,
            "orders": self.orders,
            "samples": len(self.pnl),
        }


def objective_value(name: str, measures: Measures, penalty: float = 1.0) -> float:
    """The objective ``name`` over ``measures``; a finite float."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    value = float(measures.as_dict(penalty)[name])
    return value if math.isfinite(value) else 0.0


class Probe:
    """Samples a run every ``run.sample_interval`` of run time; after each sample calls
    ``on_step(step, measures)``, and stops the run when that returns a reason."""

    def __init__(self, on_step: Callable[[int, Measures], str | None] | None = None) -> None:
        self.measures = Measures()
        self.on_step = on_step
        self.stopped_by: str | None = None
        self._run: Any = None

    def attach(self, run: Any) -> None:
        """The run's ``on_started`` callback."""
        self._run = run
        interval = max(1, int(float(run.manifest.run.sample_interval) * NS))
        run.clock.call_later(interval, self._tick, interval)

    def _sample(self) -> None:
        run, m = self._run, self.measures
        rows = run.summary_rows()
        m.pnl.append(float(sum(r["pnl"] for r in rows)))
        m.fills = int(sum(r["fill_count"] for r in rows))
        orders = run.orders.all_orders()
        m.orders = len(orders)
        m.filled_orders = sum(1 for o in orders if o.filled_lots > 0)

    def _tick(self, interval: int) -> None:
        run = self._run
        if run.stop_requested:
            return
        self._sample()
        if self.on_step is not None:
            reason = self.on_step(len(self.measures.pnl), self.measures)
            if reason:
                self.stopped_by = reason
                run.request_stop(reason)
                return
        run.clock.call_later(interval, self._tick, interval)

    def finish(self, run: Any) -> Measures:
        """The last sample, taken from the finished run."""
        self._run = run
        self._sample()
        return self.measures
