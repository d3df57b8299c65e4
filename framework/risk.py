"""Risk checks: the chain every wanted quote passes before any order leaves.

A check is a plain object called directly on the hot path. It returns None to let a
quote through or a short reason to refuse it; the chain names the refusing check in
the reason so an operator can see exactly which limit stopped an order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel

from quoteforge.model import Quote, VenuePosition
from quoteforge.registry import NoParams
from quoteforge.strategy import Market

__all__ = ["RiskChain", "RiskCheck", "RiskRefusal", "RiskView"]


@dataclass(frozen=True, slots=True)
class RiskRefusal:
    check: str
    market: str
    quote: Quote
    reason: str

    def __str__(self) -> str:
        return f"{self.check} refused {self.quote.side.name} on {self.market}: {self.reason}"


class RiskView:
    """What risk checks may read: positions and working exposure, per market."""

    def __init__(
        self,
        position_lots: Callable[[str], int],
        open_lots: Callable[[str, int], int],
        open_order_count: Callable[[str], int],
        now_ns: Callable[[], int] = lambda: 0,
        markets: dict[str, Market] | None = None,
        own_best_ticks: Callable[[str, int], int | None] = lambda key, sign: None,
        venue_position: Callable[[str], VenuePosition | None] = lambda key: None,
    ) -> None:
        self._own_best_ticks = own_best_ticks
        #: venue_position(market): the venue's latest report of the position (derivatives
        #: venues: entry, mark and liquidation price), or None.
        self.venue_position = venue_position
        self.position_lots = position_lots
        self.now_ns = now_ns
        # Every market of the run, for portfolio-wide checks (value at risk, correlation).
        self.markets: dict[str, Market] = markets if markets is not None else {}
        # open_lots(market, side_sign): lots working on that side of the market
        self.open_lots = open_lots
        self.open_order_count = open_order_count
        self._batch = {1: 0, -1: 0}

    def own_best_ticks(self, market: str, side_sign: int) -> int | None:
        """Best price (ticks) of our working orders on one side of ``market``."""
        return self._own_best_ticks(market, side_sign)

    def batch_lots(self, side: int) -> int:
        """Lots already approved on ``side`` in the quote set being checked: wanted
        quotes replace working orders, so exposure is position plus this batch."""
        return self._batch[int(side)]


class RiskCheck(ABC):
    """Base class of risk check plugins."""

    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, name: str, params: BaseModel) -> None:
        self.name = name
        self.params = params

    @abstractmethod
    def check(self, market: Market, quote: Quote, view: RiskView) -> str | None:
        """Why ``quote`` on ``market`` must not be sent, or None to let it through."""


class RiskChain:
    """Runs checks in manifest order; the first refusal wins."""

    def __init__(self, checks: list[RiskCheck], on_refusal: Callable[[RiskRefusal], None]) -> None:
        self.checks = checks
        self._on_refusal = on_refusal

    def filter(self, market: Market, quotes: list[Quote], view: RiskView) -> list[Quote]:
        if not self.checks:
            return quotes
        approved = []
        batch = view._batch
        batch[1] = batch[-1] = 0
        for quote in quotes:
            for check in self.checks:
                reason = check.check(market, quote, view)
                if reason is not None:
                    self._on_refusal(RiskRefusal(check.name, market.key, quote, reason))
                    break
            else:
                approved.append(quote)
                batch[int(quote.side)] += quote.qty_lots
        return approved
