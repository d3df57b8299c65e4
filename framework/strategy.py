"""The strategy API: subclass ``Strategy``, override the ``on_*`` handlers you need.

A strategy says which quotes it wants; the kernel's risk chain and execution policy
decide what is sent. Handlers have safe defaults, accept ``**kwargs`` so new keyword
arguments never break an existing strategy, and an exception inside one is caught at
the boundary: the strategy's quotes are pulled and it is halted, the run goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from quoteforge.model import Fill, Instrument, Offer, OrderUpdate, Quote, Side

if TYPE_CHECKING:
    from quoteforge.book import L2Book

__all__ = ["Market", "Quotes", "Strategy", "StrategyContext", "StrategyParams"]

Quotes = list[Quote]
_BUY = Side.BUY
_SELL = Side.SELL
_QUOTE_CACHE = 4096  # quotes kept per side and market


class StrategyParams(BaseModel):
    """Base for strategy parameter schemas: closed (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Market:
    """One market as a strategy sees it: instrument, live book and our position."""

    __slots__ = (
        "_asks",
        "_bids",
        "_lot",
        "_max_ticks",
        "_min_lots",
        "_min_notional",
        "_position",
        "_step",
        "_step_lots",
        "_tick",
        "book",
        "instrument",
        "key",
        "symbol",
        "venue",
    )

    def __init__(self, instrument: Instrument, book: L2Book, position: Callable[[], int]) -> None:
        self.instrument = instrument
        self.book = book
        self.venue = instrument.venue
        self.symbol = instrument.symbol
        self.key = instrument.key
        self._position = position
        # Floats for rounding on the hot path; the results are integer ticks and lots.
        self._tick = float(instrument.tick_size)
        self._lot = float(instrument.lot_size)
        # Order quantities are whole order steps (the venue's LOT_SIZE step), which may
        # be coarser than the lot the venue reports quantities in.
        self._step = float(instrument.qty_step)
        self._step_lots = instrument.step_lots
        self._max_ticks = instrument.max_price_ticks
        self._min_lots = (
            -(-instrument.min_qty // instrument.qty_step) * instrument.step_lots
            if instrument.min_qty
            else 0
        )
        self._min_notional = float(instrument.min_notional)
        # Quotes already made, by (ticks, lots, level, post_only): quotes are immutable
        # and a quoting strategy asks for the same few again and again.
        self._bids: dict[tuple[int, int, int, bool], Quote] = {}
        self._asks: dict[tuple[int, int, int, bool], Quote] = {}

    @property
    def position_lots(self) -> int:
        """Our signed position in lots (positive long)."""
        return self._position()

    @property
    def position(self) -> float:
        """Our signed position in base units, as a float for analytics."""
        return self._position() * self._lot

    def _lots(self, qty: float) -> int:
        # The small epsilon keeps 0.3 / 0.1 (= 2.9999999999999996) from losing a step.
        lots = int(qty / self._step + 1e-9) * self._step_lots if qty > 0 else 0
        return lots if lots >= self._min_lots else 0

    def _too_small(self, ticks: int, lots: int) -> bool:
        """Below the venue's minimum notional: the venue would reject it."""
        return bool(self._min_notional) and ticks * self._tick * lots * self._lot < (
            self._min_notional * (1 - 1e-9)
        )

    def _clamp(self, ticks: int) -> int:
        if ticks < 1:
            return 1
        top = self._max_ticks
        return top if top is not None and ticks > top else ticks

    def bid(self, price: float, qty: float, level: int = 0, post_only: bool = True) -> Quote | None:
        """A bid at ``price`` rounded down to the tick grid, ``qty`` rounded down to
        lots; None when the size rounds to zero or below the venue's minimums."""
        return self._quote(
            self._bids, _BUY, math.floor(price / self._tick + 1e-9), qty, level, post_only
        )

    def ask(self, price: float, qty: float, level: int = 0, post_only: bool = True) -> Quote | None:
        """An ask at ``price`` rounded up to the tick grid; None when the size is zero or
        below the venue's minimums."""
        return self._quote(
            self._asks, _SELL, math.ceil(price / self._tick - 1e-9), qty, level, post_only
        )

    def _quote(
        self,
        made: dict[tuple[int, int, int, bool], Quote],
        side: Side,
        ticks: int,
        qty: float,
        level: int,
        post_only: bool,
    ) -> Quote | None:
        # _lots, _clamp and _too_small written out: this runs for every quote wanted.
        lot = self._lot
        lots = int(qty / self._step + 1e-9) * self._step_lots if qty > 0 else 0
        if lots <= 0 or lots < self._min_lots:
            return None
        if ticks < 1:
            ticks = 1
        elif self._max_ticks is not None and ticks > self._max_ticks:
            ticks = self._max_ticks
        if self._min_notional and ticks * self._tick * lots * lot < self._min_notional * (1 - 1e-9):
            return None
        key = (ticks, lots, level, post_only)
        quote = made.get(key)
        if quote is None:
            if len(made) >= _QUOTE_CACHE:
                made.clear()
            quote = made[key] = Quote(side, ticks, lots, level, post_only)
        return quote

    def __repr__(self) -> str:
        return f"Market({self.key})"


class StrategyContext:
    """Services the kernel offers a strategy instance."""

    def __init__(
        self,
        name: str,
        markets: dict[str, Market],
        now_ns: Callable[[], int],
        set_quotes: Callable[[str, list[Quote]], None],
        schedule: Callable[[int, Callable[[], None]], Any],
        seed: int,
        publish: Callable[[str, Any], None] | None = None,
        take: Callable[[Market, Side, int, int, str | None], Any] | None = None,
    ) -> None:
        self.name = name
        self.markets = markets
        self._now_ns = now_ns
        #: Nanoseconds since the epoch (virtual in simulations): the clock's own
        #: function, so reading the time is one call.
        self.now_ns: Callable[[], int] = now_ns
        self._set_quotes = set_quotes
        self._schedule = schedule
        self._publish = publish
        self._take = take
        self.seed = seed
        #: Execution algorithms started with ``execute`` that have not finished yet.
        self.algos: list[Any] = []

    def now(self) -> float:
        """Seconds since the epoch (virtual in simulations)."""
        return self._now_ns() / 1e9

    def set_quotes(self, market: str | Market, quotes: list[Quote]) -> None:
        """Replace the wanted quotes of any of this strategy's markets."""
        key = market.key if isinstance(market, Market) else market
        if key not in self.markets:
            raise KeyError(f"strategy {self.name!r} has no market {key!r}")
        self._set_quotes(key, quotes)

    def call_later(self, seconds: float, fn: Callable[[], None]) -> Any:
        """Run ``fn`` after ``seconds`` of run time (virtual in simulations)."""
        return self._schedule(int(seconds * 1e9), fn)

    def take(
        self,
        market: Market,
        side: Side,
        price_ticks: int,
        qty_lots: int,
        offer_id: str | None = None,
    ) -> Any:
        """Send an immediate-or-cancel order (through risk and the order manager): take
        liquidity at ``price_ticks`` or better, or take a specific offer by id. Returns
        the order, or None when risk refused it."""
        if self._take is None:
            raise RuntimeError("this context cannot send orders")
        return self._take(market, side, price_ticks, qty_lots, offer_id)

    def execute(
        self, algo: str, market: str | Market, side: Side, qty_lots: int, **params: Any
    ) -> Any:
        """Start execution algorithm ``algo`` (``twap``, ``sor``, ...) for ``qty_lots`` of
        ``market`` on ``side``, with ``params`` checked against the algorithm's schema.

        Returns the running algorithm: ``cancel()`` stops it, ``done`` says it finished.
        It stays in ``self.algos`` until then; the engine offers it every fill and order
        update of this strategy before the strategy's own handlers."""
        from pydantic import ValidationError

        from quoteforge.registry import load_registry

        reg = load_registry().get("execution_algo", algo)
        key = market.key if isinstance(market, Market) else market
        if key not in self.markets:
            known = ", ".join(sorted(self.markets)) or "none"
            raise KeyError(
                f"execution algo {algo!r}: strategy {self.name!r} has no market {key!r}; "
                f"its markets are {known}"
            )
        if not isinstance(side, Side):
            raise TypeError(f"execution algo {algo!r}: side must be Side.BUY or Side.SELL")
        if isinstance(qty_lots, bool) or not isinstance(qty_lots, int) or qty_lots <= 0:
            raise ValueError(
                f"execution algo {algo!r}: qty_lots must be a positive whole number of lots, "
                f"got {qty_lots!r}"
            )
        try:
            checked = reg.params.model_validate(params)
        except ValidationError as exc:
            accepted = ", ".join(reg.params.model_fields) or "none"
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(params)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ValueError(
                f"execution algo {algo!r}: bad parameters ({problems}); "
                f"accepted parameters: {accepted}"
            ) from None

        def finished(instance: Any) -> None:
            if instance in self.algos:
                self.algos.remove(instance)

        instance = reg.factory(self, self.markets[key], side, qty_lots, checked, finished)
        self.algos.append(instance)
        instance.start()
        return instance

    def publish(self, topic: str, payload: Any) -> None:
        """Publish on the run's bus (e.g. a denylist); a no-op without a bus."""
        if self._publish is not None:
            self._publish(topic, payload)


class Strategy:
    """Base class of every strategy plugin.

    Override what you need; every handler has a safe default. ``on_book`` returns the
    complete set of quotes wanted on that market (an empty list pulls them all) or None
    to keep the current wanted quotes.
    """

    Params: ClassVar[type[BaseModel]] = StrategyParams
    #: Call ``on_book`` only when one of the top 5 levels changed (most quoting logic
    #: reads only the top of the book). Set False to see every update.
    top_of_book_only: ClassVar[bool] = True
    #: With ``top_of_book_only``: 1 means only a change of the best bid or ask (price
    #: or size) matters, as for mid/microprice quoting; 5 (default) watches five levels.
    book_levels: ClassVar[int] = 5

    def __init__(self, ctx: StrategyContext, params: BaseModel) -> None:
        self.ctx = ctx
        self.params = params

    @property
    def reads_best_sizes(self) -> bool:
        """With ``book_levels`` 1: False when only the best bid and ask *prices* matter,
        so a change of their sizes alone does not call ``on_book`` (quoting around the
        mid). Override it (it may depend on the parameters); the engine reads it at
        start and after new parameters were applied."""
        return True

    @property
    def name(self) -> str:
        return self.ctx.name

    def on_start(self, **kwargs: Any) -> None:
        """Called once before the first market data event."""

    def on_book(self, market: Market, **kwargs: Any) -> Quotes | None:
        """The book of ``market`` changed and is LIVE. Return the wanted quotes."""
        return None

    def on_trade(
        self, market: Market, price_ticks: int, qty_lots: int, aggressor: Side, **kwargs: Any
    ) -> None:
        """A public trade printed on ``market``."""

    def on_fill(self, market: Market, fill: Fill, **kwargs: Any) -> None:
        """One of our orders on ``market`` traded (already journaled and in the position)."""

    def on_offer(self, market: Market, offer: Offer, **kwargs: Any) -> None:
        """A counterparty offer on ``market``; take it with ``self.ctx.take(...)``."""

    def on_order_update(self, market: Market, update: OrderUpdate, **kwargs: Any) -> None:
        """One of our orders changed state."""

    def on_params(self, params: BaseModel, **kwargs: Any) -> None:
        """New parameters arrived from the watched manifest (already validated)."""
        self.params = params

    def on_stop(self, **kwargs: Any) -> None:
        """Called once when the run stops, after quotes are pulled."""


@dataclass(frozen=True, slots=True)
class BookInterest:
    """Which book changes reach a strategy's ``on_book`` and whether public trades reach
    its ``on_trade``; the engine reads it at start and after new parameters."""

    top_only: bool = True
    best_only: bool = False
    prices_only: bool = False  # with best_only: best prices, not their sizes
    hears_trades: bool = True


def book_interest(strategy: Strategy) -> BookInterest:
    """What ``strategy`` reads of the book, as it declares it."""
    best_only = getattr(strategy, "book_levels", 5) <= 1
    return BookInterest(
        top_only=bool(getattr(strategy, "top_of_book_only", True)),
        best_only=best_only,
        prices_only=best_only and not getattr(strategy, "reads_best_sizes", True),
        # not when on_trade is the base class's no-op
        hears_trades="on_trade" in vars(strategy)
        or type(strategy).on_trade is not Strategy.on_trade,
    )
