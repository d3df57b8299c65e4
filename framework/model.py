"""Domain model: instruments, orders, fills and quotes.

Prices and quantities that can reach an exchange are integers: ``ticks`` (multiples of
the instrument's tick size) and ``lots`` (multiples of its lot size). ``Instrument``
converts between them and ``Decimal`` exactly; floats appear only in analytics.

Two quantity grids: ``lot_size`` is the resolution the venue reports quantities at
(book levels, trades, fills, balances: Binance sends 8 decimals whatever the order
step), and ``qty_step`` is the step of the quantities we may send (Binance's LOT_SIZE
``stepSize``), a whole number of lots. On simulated venues they are usually the same.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction

__all__ = [
    "REDUCE_ONLY",
    "Fill",
    "Funding",
    "Instrument",
    "InstrumentKind",
    "Liquidity",
    "Offer",
    "Order",
    "OrderStatus",
    "OrderType",
    "OrderUpdate",
    "Quote",
    "Side",
    "TimeInForce",
    "VenuePosition",
    "market_key",
]


def market_key(venue: str, symbol: str) -> str:
    """The one spelling of a market used in logs, reports, the journal and bus topics."""
    return f"{venue}:{symbol}"


class Side(enum.IntEnum):
    """Order side; the integer value is the sign of the position change."""

    BUY = 1
    SELL = -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY

    @classmethod
    def parse(cls, value: str | int | Side) -> Side:
        if isinstance(value, Side):
            return value
        if isinstance(value, int):
            return cls(value)
        text = value.strip().lower()
        if text in ("buy", "bid", "b"):
            return cls.BUY
        if text in ("sell", "ask", "s", "offer"):
            return cls.SELL
        raise ValueError(f"unknown side {value!r}: expected 'buy' or 'sell'")


class OrderType(enum.Enum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(enum.Enum):
    GTC = "gtc"
    IOC = "ioc"
    POST_ONLY = "post_only"


class Liquidity(enum.Enum):
    MAKER = "maker"
    TAKER = "taker"


class OrderStatus(enum.Enum):
    PENDING_NEW = "pending_new"
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_working(self) -> bool:
        """The order can still trade (or may, while a request about it is in flight)."""
        return self not in _TERMINAL


# A tuple: ``in`` compares members by identity, a set would hash them in Python (is_terminal
# runs several times per order).
_TERMINAL = (OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED)


#: ``Order.extra`` key of the reduce-only flag (``Order.reduce_only``).
REDUCE_ONLY = "reduce_only"


class InstrumentKind(enum.Enum):
    SPOT = "spot"
    BINARY = "binary"  # event contract priced in [0, 1]
    PERPETUAL = "perpetual"  # a perpetual future: a signed position, funding, reduce-only


def _as_decimal(value: Decimal | str | int | float, what: str) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        # repr() is the shortest string that round-trips: 0.1 -> "0.1", not the binary value.
        value = repr(value)
    try:
        return Decimal(value)
    except (InvalidOperation, TypeError):
        raise ValueError(f"{what} {value!r} is not a number") from None


def _plain(value: Decimal) -> Decimal:
    """Without trailing zeros and never in exponent form: 100, not 1E+2; 0.5, not 0.50."""
    if not value:
        return Decimal(0)
    value = value.normalize()
    return value.quantize(Decimal(1)) if value.as_tuple().exponent > 0 else value  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class Instrument:
    """A tradable market on one venue with its price and quantity grids.

    ``lot_size`` is the unit every quantity is counted in (the precision the venue
    sends); ``qty_step`` (default: ``lot_size``) is the step of order quantities we
    send, and must be a whole number of lots.
    """

    #: The exchange's name in the manifest.
    venue: str
    #: The venue's symbol (``BTC/USDT``).
    symbol: str
    #: The base asset (``BTC``): quantities are in it.
    base: str
    #: The quote asset (``USDT``): prices, PnL and fees are in it.
    quote: str
    #: The price grid: a price is a whole number of ticks of this size.
    tick_size: Decimal
    #: The quantity grid the venue reports in: a quantity is a whole number of lots.
    lot_size: Decimal
    #: The smallest order quantity the venue takes, base units (0: none).
    min_qty: Decimal = Decimal(0)
    #: The smallest order value (price times quantity) the venue takes (0: none).
    min_notional: Decimal = Decimal(0)
    #: ``SPOT``, or ``BINARY`` for event contracts priced in (0, 1).
    kind: InstrumentKind = InstrumentKind.SPOT
    #: Fee rate of a resting (maker) fill; negative is a rebate.
    maker_fee: Decimal = Decimal(0)
    #: Fee rate of a taking (taker) fill.
    taker_fee: Decimal = Decimal(0)
    #: The step of order quantities (a whole number of lots; 0 given: ``lot_size``).
    qty_step: Decimal = Decimal(0)
    #: Binary contracts sold as two tokens of one event (Polymarket's YES and NO): the
    #: symbol of the other outcome on the same venue, which pays 1 exactly when this one
    #: pays 0, so buying it at p is selling this one at 1 - p. Empty: none.
    complement: str = ""
    # Derived once, for the hot paths (Decimal maths per call cost more than the use): the
    # grids as floats, min_qty in lots and min_notional in tick x lot units, rounded up.
    _tick_float: float = field(default=0.0, init=False, repr=False, compare=False)
    _lot_float: float = field(default=0.0, init=False, repr=False, compare=False)
    _step_float: float = field(default=0.0, init=False, repr=False, compare=False)
    _step_lots: int = field(default=1, init=False, repr=False, compare=False)
    _max_ticks: int | None = field(default=None, init=False, repr=False, compare=False)
    _min_lots: int = field(default=0, init=False, repr=False, compare=False)
    _min_units: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.tick_size.is_finite() or self.tick_size <= 0:
            raise ValueError(f"{self.key}: tick_size must be > 0, got {self.tick_size}")
        if not self.lot_size.is_finite() or self.lot_size <= 0:
            raise ValueError(f"{self.key}: lot_size must be > 0, got {self.lot_size}")
        if not self.qty_step:
            object.__setattr__(self, "qty_step", self.lot_size)
        elif not self.qty_step.is_finite() or self.qty_step < 0:
            raise ValueError(f"{self.key}: qty_step must be > 0, got {self.qty_step}")
        elif self.qty_step % self.lot_size != 0:
            raise ValueError(
                f"{self.key}: qty_step {self.qty_step} must be a whole number of lots of "
                f"{self.lot_size} (the precision quantities are reported at)"
            )
        if self.kind is InstrumentKind.BINARY and (1 / self.tick_size) % 1 != 0:
            raise ValueError(f"{self.key}: a binary contract's tick_size must divide 1")
        tick, lot, kind = Fraction(self.tick_size), Fraction(self.lot_size), self.kind
        for name, value in (
            ("_tick_float", float(self.tick_size)), ("_lot_float", float(self.lot_size)),
            ("_step_float", float(self.qty_step)),
            ("_step_lots", int(self.qty_step / self.lot_size)),
            ("_max_ticks", int(1 / self.tick_size) - 1 if kind is InstrumentKind.BINARY else None),
            ("_min_lots", -(-Fraction(self.min_qty) // lot)),
            ("_min_units", -(-Fraction(self.min_notional) // (tick * lot))),
        ):  # fmt: skip
            object.__setattr__(self, name, value)

    @property
    def key(self) -> str:
        """``venue:symbol``, the market's one spelling everywhere."""
        return market_key(self.venue, self.symbol)

    # -- price grid -------------------------------------------------------------------
    @property
    def min_price_ticks(self) -> int:
        """Lowest valid price in ticks (one tick)."""
        return 1

    @property
    def max_price_ticks(self) -> int | None:
        """Highest valid price in ticks; binary contracts stop one tick below 1."""
        return self._max_ticks

    def price_to_ticks(self, price: Decimal | str | int | float) -> int:
        """Exact conversion; a price off the tick grid is an error, never rounded."""
        value = _as_decimal(price, "price")
        ticks, rest = divmod(value, self.tick_size)
        if rest != 0:
            raise ValueError(
                f"{self.key}: price {value} is not a multiple of tick size {self.tick_size}"
            )
        return int(ticks)

    def ticks_to_price(self, ticks: int) -> Decimal:
        """The exact price of ``ticks``."""
        return _plain(self.tick_size * ticks)

    def round_price(self, price: float, side: Side) -> int:
        """Ticks for a quote at ``price``, rounded passively (bids down, asks up) and
        clamped to the instrument's valid range."""
        # Round to 9 digits first: a float error far below a tick is not an extra tick.
        raw = round(price / self._tick_float, 9)
        return self.clamp_ticks(math.floor(raw) if side is Side.BUY else math.ceil(raw))

    def clamp_ticks(self, ticks: int) -> int:
        """``ticks`` kept inside the valid range (``min_price_ticks``..``max_price_ticks``)."""
        top = self._max_ticks
        return max(ticks, 1) if top is None else min(max(ticks, 1), top)

    def ticks_to_float(self, ticks: int) -> float:
        """``ticks`` as a float price, for analytics and signal maths (not exact)."""
        return ticks * self._tick_float

    # -- quantity grid ----------------------------------------------------------------
    def qty_to_lots(self, qty: Decimal | str | int | float) -> int:
        """Exact conversion; a quantity off the lot grid is an error, never rounded."""
        value = _as_decimal(qty, "quantity")
        lots, rest = divmod(value, self.lot_size)
        if rest != 0:
            raise ValueError(
                f"{self.key}: quantity {value} is not a multiple of lot size {self.lot_size}"
            )
        return int(lots)

    def lots_to_qty(self, lots: int) -> Decimal:
        """The exact quantity of ``lots``, in base units."""
        return _plain(self.lot_size * lots)

    @property
    def step_lots(self) -> int:
        """Lots in one order step: an order's quantity is a multiple of this."""
        return self._step_lots

    def round_qty(self, qty: float) -> int:
        """Lots for an order of ``qty``, rounded down to the order step (never quote
        more than asked)."""
        return max(0, math.floor(round(qty / self._step_float, 9))) * self._step_lots

    def floor_to_step(self, lots: int) -> int:
        """``lots`` rounded down to the order step (a remainder we may send)."""
        step = self._step_lots
        return lots if step == 1 else lots - lots % step

    def lots_to_float(self, lots: int) -> float:
        """``lots`` as a float quantity, for analytics and signal maths (not exact)."""
        return lots * self._lot_float

    def notional(self, price_ticks: int, lots: int) -> Decimal:
        """The exact value of ``lots`` at ``price_ticks``, in the quote asset."""
        return self.ticks_to_price(price_ticks) * self.lots_to_qty(lots)

    def check_order(self, price_ticks: int | None, lots: int) -> str | None:
        """Why the venue would refuse this order size/price, or None when it is valid."""
        if lots <= 0:
            return "quantity must be positive"
        step = self._step_lots
        if step != 1 and lots % step:
            return (
                f"quantity {self.lots_to_qty(lots)} is not a multiple of the order step "
                f"{_plain(self.qty_step)}"
            )
        if lots < self._min_lots:
            return f"quantity {self.lots_to_qty(lots)} below minimum {self.min_qty}"
        if price_ticks is not None:
            if price_ticks < 1:
                return f"price {self.ticks_to_price(price_ticks)} below minimum"
            top = self._max_ticks
            if top is not None and price_ticks > top:
                return f"price {self.ticks_to_price(price_ticks)} above maximum"
            if price_ticks * lots < self._min_units:
                return (
                    f"notional {self.notional(price_ticks, lots)} below minimum {self.min_notional}"
                )
        return None


@dataclass(frozen=True, slots=True)
class Quote:
    """One price level a strategy wants to have working."""

    side: Side
    price_ticks: int
    qty_lots: int
    level: int = 0
    post_only: bool = True


@dataclass(slots=True)
class Order:
    """Our order as the order manager knows it. Mutated only by the order manager."""

    client_id: str
    venue: str
    symbol: str
    side: Side
    qty_lots: int
    price_ticks: int | None
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.GTC
    strategy: str = ""
    level: int = 0
    status: OrderStatus = OrderStatus.PENDING_NEW
    filled_lots: int = 0
    exchange_id: str | None = None
    created_ns: int = 0
    updated_ns: int = 0
    reason: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def remaining_lots(self) -> int:
        return self.qty_lots - self.filled_lots

    @property
    def reduce_only(self) -> bool:
        """Whether the order may only shrink the position (``extra[REDUCE_ONLY]``, so
        the journal keeps it); venues without positions refuse such orders."""
        return bool(self.extra.get(REDUCE_ONLY))

    @property
    def market(self) -> str:
        return market_key(self.venue, self.symbol)


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """A venue's report about one of our orders (acknowledged, cancelled, rejected...).

    ``filled_lots`` is cumulative, as venues report it; fills themselves arrive as
    ``Fill`` events so that each trade is applied exactly once by its ``fill_id``.
    """

    venue: str
    client_id: str
    status: OrderStatus
    ts_ns: int
    exchange_id: str | None = None
    filled_lots: int | None = None
    price_ticks: int | None = None
    qty_lots: int | None = None
    reason: str = ""
    symbol: str = ""  # set by reconciliation snapshots (open orders); optional on streams


@dataclass(frozen=True, slots=True)
class Fill:
    """One trade against one of our orders. ``fill_id`` is unique per venue."""

    venue: str
    symbol: str
    fill_id: str
    client_id: str
    side: Side
    price_ticks: int
    qty_lots: int
    fee: Decimal
    fee_asset: str
    liquidity: Liquidity
    ts_ns: int
    strategy: str = ""

    @property
    def market(self) -> str:
        return market_key(self.venue, self.symbol)


@dataclass(frozen=True, slots=True)
class Funding:
    """A funding payment on a perpetual position: ``amount`` in ``asset``, positive
    received, negative paid. ``funding_id`` is unique per venue."""

    venue: str
    symbol: str
    funding_id: str
    amount: Decimal
    asset: str
    ts_ns: int

    @property
    def market(self) -> str:
        return market_key(self.venue, self.symbol)


@dataclass(frozen=True, slots=True)
class VenuePosition:
    """A position as the venue reports it (derivatives): signed ``qty_lots``, entry and
    mark price, unrealized PnL and the liquidation price (None: no position or none
    reported). The run keeps the latest per market for risk checks and the report."""

    venue: str
    symbol: str
    qty_lots: int
    entry_price: Decimal
    mark_price: Decimal | None
    unrealized_pnl: Decimal
    liquidation_price: Decimal | None
    ts_ns: int
    funding_rate: Decimal | None = None

    @property
    def market(self) -> str:
        return market_key(self.venue, self.symbol)


@dataclass(frozen=True, slots=True)
class Offer:
    """A firm offer from a counterparty (request-for-quote and offer-stream venues).

    ``side`` is the counterparty's side: a SELL offer is one we can buy from.
    ``expires_ns`` is when the venue stops honouring it (0: until taken).
    """

    venue: str
    symbol: str
    offer_id: str
    side: Side
    price_ticks: int
    qty_lots: int
    ts_ns: int
    expires_ns: int = 0

    @property
    def market(self) -> str:
        return market_key(self.venue, self.symbol)
