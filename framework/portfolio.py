"""Positions, fees and PnL per market and in total, computed exactly from our fills.

Positions, cash flows, fees and PnL are exact; realized PnL uses the average-cost method,
all on integers of ticks x lots so a long run accumulates no rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Context, Decimal

from quoteforge.model import Fill, Funding, Instrument, VenuePosition

__all__ = ["AVERAGE_COST_DIGITS", "Portfolio"]

#: Cost basis is kept in units of 1e-12 (tick size x lot size): the share of an average
#: cost removed by a partial close is the only rounded quantity (half-even, at that unit).
AVERAGE_COST_DIGITS = 12
_SCALE = 10**AVERAGE_COST_DIGITS
# Wide enough that products of realistic prices, sizes and rates never round.
_EXACT = Context(prec=80)


def _tidy(value: Decimal) -> Decimal:
    """Drop trailing zeros left by the internal scale (``1.50000`` -> ``1.5``) without
    switching to exponent notation for whole numbers (``100``, not ``1E+2``)."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1), context=_EXACT)
    return value.normalize(_EXACT)


def _div_round(num: int, den: int) -> int:
    """num / den rounded half-even, for den > 0."""
    quotient, rest = divmod(num, den)
    twice = 2 * rest
    if twice > den or (twice == den and quotient % 2):
        quotient += 1
    return quotient


class _Position:
    """One market's running totals, as integers of (tick size x lot size)."""

    __slots__ = (
        "cash",
        "cost",
        "fees",
        "fills",
        "funding",
        "instrument",
        "lots",
        "notional",
        "realized",
    )

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.lots = 0  # signed position
        self.cost = 0  # basis of |lots|, scaled by _SCALE, >= 0
        self.realized = 0  # scaled by _SCALE
        self.cash = 0  # sells minus buys, tick-lots
        self.fees = Decimal(0)  # quote asset
        self.funding = Decimal(0)  # quote asset, received minus paid (perpetuals)
        self.notional = 0  # tick-lots traded
        self.fills = 0

    def trade(self, sign: int, lots: int, ticks: int) -> None:
        pos = self.lots
        self.cash -= sign * ticks * lots
        if pos == 0 or (pos > 0) == (sign > 0):
            self.lots = pos + sign * lots
            self.cost += ticks * lots * _SCALE
            return
        held = abs(pos)
        closing = min(lots, held)
        # Closing everything removes the whole basis, so a flat position is exact.
        removed = self.cost if closing == held else _div_round(self.cost * closing, held)
        # Long: sell proceeds minus cost; short: the opening proceeds minus buy-back cost.
        gain = ticks * closing * _SCALE - removed
        self.realized += gain if pos > 0 else -gain
        self.cost -= removed
        self.lots = pos + sign * closing
        flipped = lots - closing
        if flipped:
            self.lots = sign * flipped
            self.cost = ticks * flipped * _SCALE

    def unit(self) -> Decimal:
        return self.instrument.tick_size * self.instrument.lot_size

    def scaled(self, value: int) -> Decimal:
        """A _SCALE-scaled tick-lot integer in the quote asset, exactly."""
        return _EXACT.multiply(Decimal(value).scaleb(-AVERAGE_COST_DIGITS), self.unit())

    def unrealized(self, mark: Decimal) -> Decimal:
        if self.lots == 0:
            return Decimal(0)
        value = _EXACT.multiply(_EXACT.multiply(Decimal(self.lots), self.instrument.lot_size), mark)
        basis = self.scaled(self.cost)
        return _EXACT.subtract(value, basis) if self.lots > 0 else _EXACT.add(value, basis)


class Portfolio:
    """Exact positions, fees and PnL per instrument (keyed by ``venue:symbol``).

    *Realized PnL, average cost.* Buying into a flat or long position adds to the cost
    basis; selling from a long position realizes ``(sell price - average cost) x qty``
    and keeps the average cost of what remains (shorts mirror this). A fill that goes
    through zero closes the whole position at its price and opens the rest at the same
    price. Every figure is in the market's quote asset; fees are positive when paid and
    negative for rebates; funding (perpetuals) is positive when received;
    ``pnl = realized + unrealized - fees + funding``.

    *Exactness.* Positions, traded notional, fees and ``pnl``/``total_pnl`` are exact:
    ``pnl`` always equals cash received minus cash paid plus the position at the mark,
    minus fees. An average cost need not be a finite decimal (buy 1 at 1 and 2 at 2), so
    the basis a partial close removes is rounded half-even to 1e-12 of (tick size x lot
    size); realized and unrealized split ``pnl`` at that precision, their sum stays exact,
    and realized is exact again whenever the position is flat.

    *Fees in other assets.* A fee in the quote asset is used as is, one in the base
    asset is converted at the fill's price, and any other asset at
    ``quote_rates(asset)``: the value of one unit of ``asset`` in ``currency``. When
    every instrument quotes in the same asset that is the default ``currency`` and the
    rate is simply "units of quote per 1 asset". With mixed quote assets, pass
    ``currency``; then a fee or PnL in quote asset ``Q`` converts through
    ``quote_rates(Q)`` as well.
    """

    def __init__(
        self,
        instruments: dict[str, Instrument] | Iterable[Instrument],
        quote_rates: Callable[[str], Decimal | None] | None = None,
        *,
        currency: str | None = None,
    ) -> None:
        items = instruments.values() if isinstance(instruments, dict) else instruments
        self._positions: dict[str, _Position] = {}
        self._venue_positions: dict[str, VenuePosition] = {}
        self._funding_ids: set[str] = set()
        self.quote_rates = quote_rates
        for instrument in items:
            self.add_instrument(instrument)
        if currency is None:
            quotes = {p.instrument.quote.upper() for p in self._positions.values()}
            currency = quotes.pop() if len(quotes) == 1 else None
        self.currency = currency.upper() if currency else None

    def add_instrument(self, instrument: Instrument) -> None:
        """Track another market (a no-op when it is already tracked)."""
        if instrument.key not in self._positions:
            self._positions[instrument.key] = _Position(instrument)

    @property
    def markets(self) -> list[str]:
        return list(self._positions)

    def _get(self, market_key: str) -> _Position:
        position = self._positions.get(market_key)
        if position is None:
            known = ", ".join(sorted(self._positions)) or "none"
            raise ValueError(
                f"market {market_key!r} is not in the portfolio (markets: {known}); "
                "add its Instrument with add_instrument()"
            )
        return position

    # -- updates ---------------------------------------------------------------------------
    def apply_fill(self, fill: Fill) -> None:
        """Book one fill. Duplicates must be filtered before (the order manager does)."""
        position = self._get(fill.market)
        if fill.qty_lots <= 0:
            raise ValueError(
                f"fill {fill.fill_id!r} on {fill.market} has qty_lots={fill.qty_lots}; "
                "a fill must trade a positive number of lots"
            )
        fee = self._fee_in_quote(position, fill) if fill.fee else Decimal(0)
        position.trade(int(fill.side), fill.qty_lots, fill.price_ticks)
        position.fees = _EXACT.add(position.fees, fee)
        position.notional += fill.price_ticks * fill.qty_lots
        position.fills += 1

    def open_position(self, market_key: str, qty_lots: int, entry_price: Decimal | str) -> None:
        """A position held before the run, booked at the venue's entry price: position, average
        price and unrealized PnL agree with the venue; realized PnL starts at zero."""
        position = self._get(market_key)
        if position.lots or position.fills:
            raise ValueError(f"{market_key}: an opening position comes before any fill")
        cost = _EXACT.multiply(Decimal(entry_price), _SCALE * abs(qty_lots))
        position.lots = qty_lots
        position.cost = int(_EXACT.divide(cost, position.instrument.tick_size).to_integral_value())

    def apply_funding(self, funding: Funding) -> bool:
        """Book one funding payment into the market's PnL; False for an id already
        booked. The amount must be in the market's quote asset (USDⓈ-M: USDT)."""
        key = f"{funding.venue}:{funding.funding_id}"
        if key in self._funding_ids:
            return False
        position = self._get(funding.market)
        if funding.asset.upper() != position.instrument.quote.upper():
            raise ValueError(
                f"{funding.market}: funding {funding.funding_id!r} is in {funding.asset}; "
                f"the portfolio books funding in the quote asset {position.instrument.quote}"
            )
        self._funding_ids.add(key)
        position.funding = _EXACT.add(position.funding, funding.amount)
        return True

    def set_venue_position(self, position: VenuePosition) -> None:
        """Keep the venue's latest report of a position (liquidation price for risk)."""
        self._venue_positions[position.market] = position

    def venue_position(self, market_key: str) -> VenuePosition | None:
        """The venue's latest report of the position on ``market_key``, if any."""
        return self._venue_positions.get(market_key)

    def _fee_in_quote(self, position: _Position, fill: Fill) -> Decimal:
        instrument = position.instrument
        asset = fill.fee_asset.upper()
        if asset == instrument.quote.upper():
            return fill.fee
        if asset == instrument.base.upper():
            return _EXACT.multiply(fill.fee, instrument.ticks_to_price(fill.price_ticks))
        if self.currency is None:
            raise ValueError(
                f"{fill.market}: fill {fill.fill_id!r} pays its fee in {asset}, and the "
                "portfolio's markets quote in different assets: pass currency= and "
                f"quote_rates= (the value of 1 {asset} in that currency)"
            )
        rate = self._rate(asset, fill.market)
        quote = instrument.quote.upper()
        if quote == self.currency:
            return _EXACT.multiply(fill.fee, rate)
        return fill.fee * rate / self._rate(quote, fill.market)

    def _rate(self, asset: str, market: str) -> Decimal:
        rate = self.quote_rates(asset) if self.quote_rates is not None else None
        if rate is None:
            target = self.currency or "the market's quote asset"
            raise ValueError(
                f"{market}: no conversion rate for {asset!r} into {target}; pass "
                f"quote_rates= that returns the value of 1 {asset} in {target}"
            )
        if not isinstance(rate, Decimal):
            raise ValueError(
                f"{market}: quote_rates({asset!r}) returned {rate!r}; it must return a "
                "Decimal (exact) or None"
            )
        if rate <= 0:
            raise ValueError(f"{market}: quote_rates({asset!r}) returned {rate}; must be > 0")
        return rate

    # -- per market ------------------------------------------------------------------------
    def position_lots(self, market_key: str) -> int:
        return self._get(market_key).lots

    def position(self, market_key: str) -> Decimal:
        """Signed position in base units (positive long)."""
        position = self._get(market_key)
        return position.instrument.lots_to_qty(position.lots)

    def combined_position(self, market_key: str) -> Decimal:
        """A binary contract's position net of its complement (``Instrument.complement``,
        the other token of the same event): holding the complement is the opposite
        exposure, so YES 30 and NO 10 is 20. The plain position without one."""
        inst = self._get(market_key).instrument
        twin = self._positions.get(f"{inst.venue}:{inst.complement}") if inst.complement else None
        own = self.position(market_key)
        return own if twin is None else own - twin.instrument.lots_to_qty(twin.lots)

    def average_price(self, market_key: str) -> Decimal | None:
        """Average cost of the open position, or None when flat."""
        position = self._get(market_key)
        if position.lots == 0:
            return None
        # Rounded to 28 significant digits: an average need not be a finite decimal.
        per_lot = Decimal(position.cost) / (abs(position.lots) * _SCALE)
        return per_lot * position.instrument.tick_size

    def realized(self, market_key: str) -> Decimal:
        position = self._get(market_key)
        return _tidy(position.scaled(position.realized))

    def unrealized(self, market_key: str, mark_price: Decimal) -> Decimal:
        return _tidy(self._get(market_key).unrealized(_mark(market_key, mark_price)))

    def fees(self, market_key: str) -> Decimal:
        """Fees in the quote asset: positive paid, negative rebates received."""
        return self._get(market_key).fees

    def funding(self, market_key: str) -> Decimal:
        """Funding in the quote asset: positive received, negative paid."""
        return self._get(market_key).funding

    def pnl(self, market_key: str, mark_price: Decimal | None) -> Decimal:
        """``realized + unrealized - fees + funding``; the mark may be None while flat."""
        return _tidy(self._pnl(market_key, mark_price))

    def _pnl(self, market_key: str, mark_price: Decimal | None) -> Decimal:
        position = self._get(market_key)
        total = _EXACT.subtract(position.scaled(position.realized), position.fees)
        total = _EXACT.add(total, position.funding)
        if position.lots:
            if mark_price is None:
                raise ValueError(
                    f"{market_key}: position is {position.lots} lots, so its PnL needs a mark price"
                )
            total = _EXACT.add(total, position.unrealized(_mark(market_key, mark_price)))
        return total

    def notional(self, market_key: str) -> Decimal:
        """Traded notional (sum of price x quantity over fills, both sides)."""
        position = self._get(market_key)
        return _tidy(_EXACT.multiply(Decimal(position.notional), position.unit()))

    def fill_count(self, market_key: str) -> int:
        return self._get(market_key).fills

    # -- totals ------------------------------------------------------------------------------
    def total_pnl(self, marks: dict[str, Decimal]) -> Decimal:
        """PnL over every market, in ``currency``. Flat markets need no mark; markets
        quoting in another asset convert through ``quote_rates``."""
        total = Decimal(0)
        for key, position in self._positions.items():
            if position.fills == 0 and not position.funding and not position.lots:
                continue
            value = self._pnl(key, marks.get(key))
            quote = position.instrument.quote.upper()
            if self.currency is None:
                raise ValueError(
                    "markets quote in different assets "
                    f"({', '.join(sorted(self._quotes()))}); pass currency= and quote_rates= "
                    "to total them, or use pnl() per market"
                )
            if quote != self.currency:
                value = _EXACT.multiply(value, self._rate(quote, key))
            total = _EXACT.add(total, value)
        return _tidy(total)

    def total_fees(self) -> Decimal:
        """Fees over every market (same quote asset required, or converted to currency)."""
        total = Decimal(0)
        for key, position in self._positions.items():
            if not position.fees:
                continue
            quote = position.instrument.quote.upper()
            value = position.fees
            if quote != self.currency:
                if self.currency is None:
                    raise ValueError(
                        "markets quote in different assets; pass currency= and quote_rates="
                    )
                value = _EXACT.multiply(value, self._rate(quote, key))
            total = _EXACT.add(total, value)
        return _tidy(total)

    def _quotes(self) -> set[str]:
        return {p.instrument.quote.upper() for p in self._positions.values()}


def _mark(market_key: str, mark_price: Decimal) -> Decimal:
    if not isinstance(mark_price, Decimal):
        raise ValueError(
            f"{market_key}: mark price {mark_price!r} must be a Decimal (use Decimal(str(x)))"
        )
    if not mark_price.is_finite():
        raise ValueError(f"{market_key}: mark price {mark_price} is not a finite number")
    return mark_price
