"""The strategy API: subclass ``Strategy``, override the ``on_*`` handlers you need.

A strategy says which quotes it wants; the kernel's risk chain and execution policy
decide what is sent. Handlers have safe defaults, accept ``**kwargs`` so new keyword
arguments never break an existing strategy, and an exception inside one is caught at
the boundary: the strategy's quotes are pulled and it is halted, the run goes on.

Units (interface 2): everything the engine hands a strategy and takes back is in integer
**ticks** (multiples of the tick size) and **lots** (multiples of the lot size): quotes,
``ctx.take``, ``ctx.execute``, fills, offers, public trades and ``Market.position_lots``.
They are exact and what the venues use. ``Market`` converts explicitly: ``ticks(price,
side)`` and ``lots(qty)`` round onto the grids, ``price(ticks)`` and ``qty(lots)`` give
exact ``Decimal`` values; floats for signal maths stay inside a strategy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from math import ceil as _ceil
from math import floor as _floor
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from quoteforge.model import Fill, Instrument, Offer, OrderUpdate, Quote, Side

if TYPE_CHECKING:
    from quoteforge.book import L2Book

__all__ = [
    "INTERFACE_VERSION",
    "BookInterest",
    "Market",
    "Quotes",
    "Speed",
    "Strategy",
    "StrategyContext",
    "StrategyParams",
    "book_interest",
    "check_interface",
]

#: The strategy API's major version. A strategy class may declare the version it was
#: written for (``interface_version = 2``); one built for another version is refused
#: at registration (``check_interface``) instead of misreading its units at run time.
#: 1: ``Market.bid/ask`` took float prices and quantities, ``Market.position`` was a
#: float and ``top_of_book_only``/``book_levels``/``reads_best_sizes`` sat on Strategy.
#: 2: integer ticks and lots throughout, explicit conversions, ``Strategy.speed``.
INTERFACE_VERSION = 2

Quotes = list[Quote]
_BUY = Side.BUY
_SELL = Side.SELL
_QUOTE_CACHE = 4096  # quotes kept per side and market
_ROUNDING = {_BUY: ROUND_FLOOR, _SELL: ROUND_CEILING, None: ROUND_HALF_EVEN}
_warned: set[str] = set()
_NOT_BOOL = "expected a number, got the boolean {}; YAML reads yes/no, on/off as booleans"


def _deprecated(old: str, new: str) -> None:
    """Warn once per process that ``old`` (interface 1) is deprecated for ``new``."""
    if old not in _warned:
        _warned.add(old)
        warnings.warn(
            f"{old} is deprecated (strategy interface 1); use {new}",
            DeprecationWarning,
            stacklevel=3,
        )


def _is_number(field: FieldInfo | None) -> bool:
    ann = field.annotation if field is not None else None
    kinds = [k for k in get_args(ann) or (ann,) if k is not type(None)]
    numbers = (isinstance(k, type) and issubclass(k, int | float | Decimal) for k in kinds)
    return bool(kinds) and bool not in kinds and all(numbers)


class NumbersNotBooleans(BaseModel):
    """A model whose number fields refuse booleans, which pydantic takes as 1 and 0: YAML
    reads ``on``, ``yes`` and ``true`` as True (``order_size: on``)."""

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        if value.__class__ is bool and _is_number(cls.model_fields.get(info.field_name or "")):
            raise PydanticCustomError("number_from_boolean", _NOT_BOOL.format(value))
        return value


class StrategyParams(NumbersNotBooleans):
    """Base for strategy parameter schemas: closed (unknown keys are errors), numbers
    never booleans."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Market:
    """One market as a strategy sees it: instrument, live book and our position; it
    builds quotes (``bid``/``ask``) and converts to and from ticks and lots."""

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
        #: The market's grids, limits and fees (tick and lot sizes, minimums).
        self.instrument = instrument
        #: The live order book in ticks and lots (``best_bid()`` is ``(ticks, lots)`` or
        #: None); ``mid()``/``microprice()`` are floats for signal maths.
        self.book = book
        #: The exchange's name in the manifest (``sim``, ``binance``...).
        self.venue = instrument.venue
        #: The venue's symbol (``BTC/USDT``).
        self.symbol = instrument.symbol
        #: ``venue:symbol``, the market's one spelling in logs, the trace and the journal.
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
        """Our signed position in lots (positive long); ``qty()`` gives base units."""
        return self._position()

    @property
    def position(self) -> float:
        """Deprecated (interface 1): the position in base units as a float.

        Use ``position_lots`` (``qty(position_lots)`` for exact base units); warns once.
        """
        _deprecated("Market.position", "Market.position_lots (and Market.qty for base units)")
        return self._position() * self._lot

    # -- conversions --------------------------------------------------------------------
    def price(self, ticks: int) -> Decimal:
        """The exact price of ``ticks``."""
        return self.instrument.ticks_to_price(ticks)

    def qty(self, lots: int) -> Decimal:
        """The exact quantity of ``lots``, in base units."""
        return self.instrument.lots_to_qty(lots)

    def ticks(self, price: float | Decimal, side: Side | None = None) -> int:
        """``price`` in ticks, rounded passively for a quote on ``side``: a BUY rounds
        down, a SELL rounds up (never a better price for the other side than asked);
        without a side, to the nearest tick (halves to even).

        A float is divided by the tick as a float, with one billionth of a tick of
        tolerance so float noise (100.00000000001) does not move it a tick; a Decimal
        is divided exactly. Not clamped: ``bid``/``ask`` keep prices in range.
        """
        if price.__class__ is float:
            raw = price / self._tick
            if side is _BUY:
                return _floor(raw + 1e-9)
            if side is _SELL:
                return _ceil(raw - 1e-9)
            return round(raw)
        exact = Decimal(price) / self.instrument.tick_size
        return int(exact.to_integral_value(rounding=_ROUNDING[side]))

    def lots(self, qty: float | Decimal) -> int:
        """``qty`` base units in lots, rounded down to whole order steps (never more
        than asked; 0 for ``qty`` <= 0). A float gets the same billionth-of-a-step
        tolerance as ``ticks`` (0.3 / 0.1 = 2.9999999999999996 is 3 steps). The venue's
        minimums are not applied here: ``bid``/``ask`` return None below them."""
        if qty.__class__ is float:
            return int(qty / self._step + 1e-9) * self._step_lots if qty > 0 else 0
        if qty <= 0:
            return 0
        steps = (Decimal(qty) / self.instrument.qty_step).to_integral_value(rounding=ROUND_FLOOR)
        return int(steps) * self._step_lots

    # -- quotes -------------------------------------------------------------------------
    def bid(
        self, price_ticks: int, qty_lots: int, level: int = 0, post_only: bool = True
    ) -> Quote | None:
        """A bid for ``qty_lots`` at ``price_ticks``: the price kept in the valid range,
        the quantity rounded down to whole order steps; None when that is zero or below
        the venue's minimum quantity or notional (the venue would refuse it)."""
        return self._quote(self._bids, _BUY, price_ticks, qty_lots, level, post_only)

    def ask(
        self, price_ticks: int, qty_lots: int, level: int = 0, post_only: bool = True
    ) -> Quote | None:
        """An ask for ``qty_lots`` at ``price_ticks``; as ``bid``."""
        return self._quote(self._asks, _SELL, price_ticks, qty_lots, level, post_only)

    def _quote(
        self,
        made: dict[tuple[int, int, int, bool], Quote],
        side: Side,
        ticks: int,
        lots: int,
        level: int,
        post_only: bool,
    ) -> Quote | None:
        # Runs for every quote wanted: class checks instead of isinstance, no helpers.
        if ticks.__class__ is not int or lots.__class__ is not int:
            raise TypeError(
                f"{self.key}: Market.{'bid' if side is _BUY else 'ask'} takes integer ticks and "
                f"lots (strategy interface {INTERFACE_VERSION}), got {ticks!r}, {lots!r}; "
                "convert with market.ticks(price, side) and market.lots(qty)"
            )
        step = self._step_lots
        if step != 1:
            lots -= lots % step
        if lots <= 0 or lots < self._min_lots:
            return None
        if ticks < 1:
            ticks = 1
        elif self._max_ticks is not None and ticks > self._max_ticks:
            ticks = self._max_ticks
        if self._min_notional and ticks * self._tick * lots * self._lot < self._min_notional * (
            1 - 1e-9
        ):
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
    """Services the kernel offers a strategy instance (``self.ctx``): clock, timers,
    quotes outside ``on_book``, immediate orders, execution algorithms and the bus."""

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
        #: The strategy's name in the manifest (the key under ``strategies:``).
        self.name = name
        #: The strategy's markets by key (``venue:symbol``).
        self.markets = markets
        self._now_ns = now_ns
        #: Nanoseconds since the epoch (virtual in simulations): the clock's own
        #: function, so reading the time is one call.
        self.now_ns: Callable[[], int] = now_ns
        self._set_quotes = set_quotes
        self._schedule = schedule
        self._publish = publish
        self._take = take
        #: The run's seed (``run.seed``): seed a strategy's own random numbers with it so
        #: the same seed gives the same run.
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

    #: The parameter schema (a ``StrategyParams`` subclass): a manifest's ``params:``
    #: are validated against it before the strategy is built.
    Params: ClassVar[type[BaseModel]] = StrategyParams
    #: The strategy interface this class was written for (see ``INTERFACE_VERSION``).
    interface_version: ClassVar[int] = INTERFACE_VERSION

    def __init__(self, ctx: StrategyContext, params: BaseModel) -> None:
        #: The services of the run (clock, timers, orders, markets).
        self.ctx = ctx
        #: The validated parameters, an instance of ``Params``; replaced by ``on_params``.
        self.params = params

    @property
    def speed(self) -> Speed:
        """Advanced: which book changes the engine may skip for this strategy (see
        ``Speed``). Override with ``speed = Speed(...)`` or a property when it depends
        on the parameters; the engine reads it at start and after new parameters."""
        return _DEFAULT_SPEED

    @property
    def name(self) -> str:
        """The strategy's name in the manifest (``self.ctx.name``)."""
        return self.ctx.name

    def on_start(self, **kwargs: Any) -> None:
        """Called once after every strategy is built and before the first ``on_book``."""

    def on_book(self, market: Market, **kwargs: Any) -> Quotes | None:
        """The book of ``market`` changed and is LIVE (see ``speed``), or a fill or a
        finished order asks for a requote. Return the complete list of quotes wanted on
        ``market`` (``[]`` pulls them all), or None to keep the wanted quotes unchanged
        (after a fill they are placed again)."""
        return None

    def on_trade(
        self, market: Market, price_ticks: int, qty_lots: int, aggressor: Side, **kwargs: Any
    ) -> None:
        """A public trade printed on ``market`` (``aggressor``: the taker's side); called
        only when a strategy overrides it."""

    def on_fill(self, market: Market, fill: Fill, **kwargs: Any) -> None:
        """One of our orders on ``market`` traded (already journaled and in the position);
        ``on_book`` follows."""

    def on_offer(self, market: Market, offer: Offer, **kwargs: Any) -> None:
        """A counterparty offer on ``market``; take it with ``self.ctx.take(...)``."""

    def on_order_update(self, market: Market, update: OrderUpdate, **kwargs: Any) -> None:
        """One of our orders changed state (acknowledged, cancelled, rejected...)."""

    def on_params(self, params: BaseModel, **kwargs: Any) -> None:
        """New parameters arrived from the watched manifest (already validated). Raising
        refuses them: the error is logged, ``on_params`` is called again with the running
        params, and the strategy goes on quoting."""
        self.params = params

    def on_stop(self, **kwargs: Any) -> None:
        """Called once when the run stops, after quotes are pulled."""


BookChanges = Literal["every_change", "top_levels", "best_levels", "best_prices"]
_BOOK_CHANGES: tuple[str, ...] = get_args(BookChanges)


@dataclass(frozen=True, slots=True)
class Speed:
    """Advanced: what the engine may skip for a strategy. Leaving it alone is always
    correct; it only saves calls whose answer the strategy would not change.

    ``on_book`` says which book changes call ``on_book``:

    - ``"top_levels"`` (default): a change in the top 5 levels of either side (most
      quoting logic reads only the top of the book);
    - ``"every_change"``: every update, at any depth (e.g. depth-weighted signals);
    - ``"best_levels"``: only a change of the best bid or ask, price or size (quoting
      from the microprice or the touch sizes);
    - ``"best_prices"``: only a change of the best bid or ask price (quoting from the
      mid); a change of their sizes alone is skipped.
    """

    on_book: BookChanges = "top_levels"

    def __post_init__(self) -> None:
        if self.on_book not in _BOOK_CHANGES:
            raise ValueError(
                f"Speed(on_book={self.on_book!r}): expected one of {', '.join(_BOOK_CHANGES)}"
            )


_DEFAULT_SPEED = Speed()


@dataclass(frozen=True, slots=True)
class BookInterest:
    """Which book changes reach a strategy's ``on_book`` and whether public trades reach
    its ``on_trade``; the engine reads it at start and after new parameters."""

    top_only: bool = True
    best_only: bool = False
    prices_only: bool = False  # with best_only: best prices, not their sizes
    hears_trades: bool = True


def _legacy_speed(strategy: Strategy) -> Speed | None:
    """The interface-1 switches (``top_of_book_only``, ``book_levels``,
    ``reads_best_sizes`` on the strategy) as a ``Speed``, with a one-time warning; None
    when the strategy sets none of them."""
    cls = type(strategy)
    names = [n for n in ("top_of_book_only", "book_levels", "reads_best_sizes") if hasattr(cls, n)]
    if not names:
        return None
    _deprecated(f"Strategy.{'/'.join(names)}", "speed = Speed(on_book=...) (docs/strategies.md)")
    if not getattr(strategy, "top_of_book_only", True):
        return Speed("every_change")
    if getattr(strategy, "book_levels", 5) > 1:
        return Speed("top_levels")
    return Speed("best_levels" if getattr(strategy, "reads_best_sizes", True) else "best_prices")


def book_interest(strategy: Strategy) -> BookInterest:
    """What ``strategy`` reads of the book, from its ``speed`` hint."""
    watch = (_legacy_speed(strategy) or strategy.speed).on_book
    return BookInterest(
        top_only=watch != "every_change",
        best_only=watch in ("best_levels", "best_prices"),
        prices_only=watch == "best_prices",
        # not when on_trade is the base class's no-op
        hears_trades="on_trade" in vars(strategy)
        or type(strategy).on_trade is not Strategy.on_trade,
    )


def check_interface(strategy_cls: type) -> str | None:
    """Why ``strategy_cls`` cannot run on this strategy interface, or None when it can.

    A factory that declares no ``interface_version`` is taken to be written for this one.

    A class built for another major version would misread the units the engine hands
    over (interface 1 passed float prices to ``Market.bid``), so the registry refuses it
    up front with this message instead of letting it quote wrong prices.
    """
    declared = getattr(strategy_cls, "interface_version", INTERFACE_VERSION)
    name = getattr(strategy_cls, "__qualname__", None) or repr(strategy_cls)
    name = f"{getattr(strategy_cls, '__module__', None) or '?'}.{name}"
    if isinstance(declared, bool) or not isinstance(declared, int):
        return f"strategy {name}: interface_version must be an int, got {declared!r}"
    if declared != INTERFACE_VERSION:
        return (
            f"strategy {name} was written for strategy interface {declared}, this quoteforge "
            f"provides interface {INTERFACE_VERSION}; update the strategy (docs/strategies.md, "
            f"'Strategy interface versions') or install a quoteforge that provides "
            f"interface {declared}"
        )
    return None
