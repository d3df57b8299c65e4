"""Circuit breakers: PnL floor, drawdown, consecutive order errors and stale data trip a
market or the whole run into REDUCE or HALT, latched until an operator resets them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["BreakerKind", "BreakerParams", "Breakers", "Mode", "State", "Trip"]

Mode = Literal["halt", "reduce"]
State = Literal["normal", "reduce", "halt"]
BreakerKind = Literal[
    "pnl_floor",
    "market_pnl_floor",
    "drawdown",
    "market_drawdown",
    "consecutive_errors",
    "stale_data",
    "kill",
]
KINDS: tuple[str, ...] = get_args(BreakerKind)
NS = 1_000_000_000
_SEVERITY = {"normal": 0, "reduce": 1, "halt": 2}


class BreakerParams(BaseModel):
    """Which breakers are armed (a limit left at None is off) and what a trip does."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    pnl_floor: Decimal | None = Field(
        None,
        description="Run-wide floor on total PnL (realised + unrealised - fees, quote units): "
        "below it the whole run trips. A loss limit, so 0 or less (above 0 it trips at once).",
    )
    market_pnl_floor: Decimal | None = Field(
        None, description="Floor on one market's PnL, 0 or less: below it that market trips."
    )
    max_drawdown: Decimal | None = Field(
        None, gt=0, description="Largest fall of total PnL from its peak before the run trips."
    )
    market_max_drawdown: Decimal | None = Field(
        None, gt=0, description="Largest fall of one market's PnL from its peak."
    )
    max_consecutive_errors: int | None = Field(
        None,
        ge=1,
        description="Order errors (rejects, failed requests) in a row on one market that trip "
        "it; any accepted order resets the count.",
    )
    stale_after_s: float | None = Field(
        None,
        gt=0,
        description="Seconds a market's book may stay not LIVE before the market trips.",
    )
    mode: Mode = Field(
        "halt",
        description="What a trip does by default: halt (no new orders, quotes pulled) or "
        "reduce (only quotes that shrink the position).",
    )
    modes: dict[BreakerKind, Mode] = Field(
        default_factory=dict,
        description="Per-breaker mode overriding `mode`, e.g. {stale_data: halt, drawdown: "
        "reduce}. A kill is always halt.",
    )
    latch: bool = Field(
        True,
        description="Keep a trip until reset() even when its condition clears; with false a "
        "trip clears by itself once the condition no longer holds.",
    )

    @field_validator("pnl_floor", "market_pnl_floor")
    @classmethod
    def _loss_limit(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value > 0:
            raise ValueError(
                "a floor is a loss limit: 0 or less, e.g. -500 (above 0 it trips at the start)"
            )
        return value


@dataclass(frozen=True, slots=True)
class Trip:
    """One breaker that fired: ``market`` is None for a run-wide trip."""

    kind: str
    mode: Mode
    market: str | None
    reason: str
    ts_ns: int

    def __str__(self) -> str:
        scope = self.market or "run"
        return f"{self.kind} breaker tripped ({self.mode.upper()}, {scope}): {self.reason}"


class Breakers:
    """Breaker state for one run, fed by the engine and read on the hot path.

    ``on_sample`` feeds PnL (the engine's periodic sample), ``on_order_error`` and
    ``on_order_ok`` the outcome of each order request, ``on_book_state`` each book state
    change; ``allows`` answers in O(1) whether a quote may go out. ``on_trip`` is called
    once per new trip.
    """

    def __init__(self, params: BreakerParams, on_trip: Callable[[Trip], None]) -> None:
        self.params = params
        self._modes: dict[str, Mode] = {str(k): v for k, v in params.modes.items()}
        self._on_trip = on_trip
        self._active: dict[tuple[str, str | None], Trip] = {}
        self.history: list[Trip] = []
        self._now = 0
        self._total: Decimal | None = None
        self._peak: Decimal | None = None
        self._market_pnl: dict[str, Decimal] = {}
        self._market_peak: dict[str, Decimal] = {}
        self._errors: dict[str, int] = {}
        self._stale_since: dict[str, int] = {}
        # state() per market is read for every quote: cache it, rebuild on any change.
        self._state_cache: dict[str | None, State] = {}

    # -- inputs ------------------------------------------------------------------------
    def on_sample(self, now_ns: int, pnl_by_market: dict[str, Decimal], total_pnl: Decimal) -> None:
        """A PnL sample: per-market and total PnL, realised + unrealised net of fees."""
        self._now = now_ns
        p = self.params
        self._total = total_pnl
        self._peak = total_pnl if self._peak is None else max(self._peak, total_pnl)
        self._market_pnl.update(pnl_by_market)
        self._judge_floors()
        if p.max_drawdown is not None:
            peak = self._peak
            deep = peak - total_pnl > p.max_drawdown
            why = f"drawdown {peak - total_pnl} from peak {peak} (PnL {total_pnl}) > max_drawdown"
            self._judge("drawdown", None, deep, deep and f"{why} {p.max_drawdown}")
        for market, pnl in pnl_by_market.items():
            old = self._market_peak.get(market)
            top = self._market_peak[market] = pnl if old is None else max(old, pnl)
            if p.market_max_drawdown is not None:
                deep = top - pnl > p.market_max_drawdown
                self._judge(
                    "market_drawdown",
                    market,
                    deep,
                    deep
                    and f"{market} drawdown {top - pnl} from peak {top} (PnL {pnl}) "
                    f"> market_max_drawdown {p.market_max_drawdown}",
                )
        self._judge_stale(now_ns)

    def on_order_error(self, market: str, reason: str, now_ns: int | None = None) -> None:
        """An order request on ``market`` failed (venue reject, error reply, timeout)."""
        if now_ns is not None:
            self._now = now_ns
        count = self._errors[market] = self._errors.get(market, 0) + 1
        limit = self.params.max_consecutive_errors
        if limit is not None:
            many = count >= limit
            self._judge(
                "consecutive_errors",
                market,
                many,
                many
                and f"{count} consecutive order errors on {market} reached "
                f"max_consecutive_errors {limit}; last: {reason}",
            )

    def on_order_ok(self, market: str) -> None:
        """An order request on ``market`` was accepted: the error run is over."""
        self._errors[market] = 0
        if self.params.max_consecutive_errors is not None:
            self._judge("consecutive_errors", market, False, "")

    def on_book_state(self, market: str, live: bool, now_ns: int) -> None:
        """``market``'s book became LIVE (``live``) or stopped being LIVE."""
        self._now = now_ns
        if live:
            self._stale_since.pop(market, None)
            if self.params.stale_after_s is not None:
                self._judge("stale_data", market, False, "")
        else:
            self._stale_since.setdefault(market, now_ns)
        self._judge_stale(now_ns)

    def kill(self, reason: str, now_ns: int | None = None, market: str | None = None) -> Trip:
        """The kill switch: HALT the run (or one market) now, latched whatever ``latch``."""
        if now_ns is not None:
            self._now = now_ns
        return self._active.get(("kill", market)) or self._fire("kill", market, reason, "halt")

    # -- reading -----------------------------------------------------------------------
    def state(self, market: str | None = None) -> State:
        """The state of ``market`` (its own trips and run-wide ones); without a market,
        the most severe state anywhere in the run."""
        cached = self._state_cache.get(market)
        if cached is not None:
            return cached
        worst: State = "normal"
        for (_, where), trip in self._active.items():
            applies = market is None or where is None or where == market
            if applies and _SEVERITY[trip.mode] > _SEVERITY[worst]:
                worst = trip.mode
        self._state_cache[market] = worst
        return worst

    def allows(
        self, market: str, side_sign: int, position_lots: int, qty_lots: int | None = None
    ) -> bool:
        """Whether a quote on ``side_sign`` may go out: always in NORMAL, never in HALT,
        in REDUCE only when it shrinks |position| (with ``qty_lots``, without flipping
        the position through zero)."""
        state = self.state(market)
        if state == "normal":
            return True
        if state == "halt":
            return False
        if position_lots * side_sign >= 0:
            return False
        return qty_lots is None or qty_lots <= abs(position_lots)

    @property
    def trips(self) -> list[Trip]:
        """Trips in force, oldest first."""
        return list(self._active.values())

    def reset(self, who: str) -> list[Trip]:
        """Clear trips by hand: ``who`` is ``"all"``, ``"run"`` (run-wide trips), a
        breaker kind (``"drawdown"``) or a market key. Returns the trips cleared.

        A PnL floor still broken trips again at once, other conditions at their next
        input, except drawdown (the peak restarts from the current PnL) and consecutive
        errors (the count restarts): a reset is an operator's acknowledgement of those.
        """
        if who == "all":
            chosen = list(self._active)
        elif who == "run":
            chosen = [k for k in self._active if k[1] is None]
        elif who in KINDS:
            chosen = [k for k in self._active if k[0] == who]
        else:
            chosen = [k for k in self._active if k[1] == who]
        if not chosen and who != "all":
            active = ", ".join(f"{k}@{m or 'run'}" for k, m in self._active) or "none"
            raise ValueError(
                f"no trip in force matches {who!r}: give 'all', 'run', a breaker kind "
                f"({', '.join(KINDS)}) or a market key; in force: {active}"
            )
        cleared = [self._active.pop(k) for k in chosen]
        self._judge_floors()  # a floor still broken trips again now, not at the next sample
        for trip in cleared:
            if trip.kind == "drawdown" and self._total is not None:
                self._peak = self._total
            elif trip.kind == "market_drawdown" and trip.market in self._market_pnl:
                assert trip.market is not None
                self._market_peak[trip.market] = self._market_pnl[trip.market]
            elif trip.kind == "consecutive_errors" and trip.market is not None:
                self._errors[trip.market] = 0
        self._state_cache.clear()
        return cleared

    # -- internals ---------------------------------------------------------------------
    def _mode(self, kind: str) -> Mode:
        return self._modes.get(kind, self.params.mode)

    def _judge(self, kind: str, market: str | None, tripped: bool, reason: str | bool) -> None:
        # ``reason`` is built only when the condition holds (``cond and f"..."``).
        key = (kind, market)
        if tripped:
            if key not in self._active:
                self._fire(kind, market, str(reason), self._mode(kind))
        elif not self.params.latch and key in self._active:
            del self._active[key]
            self._state_cache.clear()

    def _judge_floors(self) -> None:
        p, total, floor = self.params, self._total, self.params.market_pnl_floor
        if p.pnl_floor is not None and total is not None:
            low = total < p.pnl_floor
            why = f"total PnL {total} < pnl_floor {p.pnl_floor}"
            self._judge("pnl_floor", None, low, low and why)
        for market, pnl in self._market_pnl.items():
            if floor is not None:
                low = pnl < floor
                why = f"{market} PnL {pnl} < market_pnl_floor {floor}"
                self._judge("market_pnl_floor", market, low, low and why)

    def _judge_stale(self, now_ns: int) -> None:
        after = self.params.stale_after_s
        if after is None:
            return
        limit = int(after * NS)
        for market, since in self._stale_since.items():
            old = now_ns - since >= limit
            self._judge(
                "stale_data",
                market,
                old,
                old
                and f"{market} book not LIVE for {(now_ns - since) / NS:g}s "
                f">= stale_after_s {after:g}",
            )

    def _fire(self, kind: str, market: str | None, reason: str, mode: Mode) -> Trip:
        trip = Trip(kind, mode, market, reason, self._now)
        self._active[(kind, market)] = trip
        self.history.append(trip)
        self._state_cache.clear()
        self._on_trip(trip)
        return trip
