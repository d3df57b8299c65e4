"""Pure market making: symmetric levels around a reference price, skewed by inventory.

Each level i quotes at ``spread_bps + i * level_spacing_bps`` from the reference price
on both sides with ``order_size + i * level_size_increment``. Inventory away from
``inventory_target`` shifts both sides against the position (up to
``inventory_skew_bps`` at ``inventory_limit``) and shrinks the side that would grow it;
at the limit that side is not quoted. Quotes are refreshed only when a wanted price
moved by more than ``refresh_tolerance_bps``, so the venue is not spammed with
replacements that change nothing. Optional timers requote and replace aged orders,
a moving band and a minimum spread bound the prices, hanging orders keep the unfilled
side of a pair working, and the reference can be another market's book.

Read top to bottom: parameters, the levels of a params object (``_Ladder``, worked out
once per params), market resolution, the timers, pricing (``wanted_quotes``: the quotes
wanted now, computed in floats and handed to ``market.bid``/``market.ask`` as integer
ticks and lots), then the events. What only
makes it fast (remembering quotes, skipping updates that cannot change them) lives in
``_pmm_cache.py`` and changes no decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from loguru import logger
from pydantic import Field, field_validator, model_validator

import quoteforge
from quoteforge.book import BookState
from quoteforge.manifest import split_market
from quoteforge.model import Fill, Quote, Side, market_key
from quoteforge.registry import Register
from quoteforge.strategies._pmm_cache import QuoteCache
from quoteforge.strategy import Market, Quotes, Speed, Strategy, StrategyParams

__all__ = ["PureMarketMaking", "PureMarketMakingParams"]

_BUY, _SELL = Side.BUY, Side.SELL


class PureMarketMakingParams(StrategyParams):
    spread_bps: float = Field(
        10.0,
        gt=0,
        le=1_000_000,
        description="Distance of the first level from the "
        "reference price on each side, in basis points.",
    )
    levels: int = Field(1, ge=1, le=50, description="Number of order levels per side.")
    level_spacing_bps: float = Field(
        5.0,
        ge=0,
        le=1_000_000,
        description="Extra distance of each further level, in basis points.",
    )
    order_size: float = Field(gt=0, le=1e9, description="Size of the first level, in base units.")
    level_size_increment: float = Field(
        0.0, ge=0, le=1e9, description="Size added per further level, in base units."
    )
    refresh_tolerance_bps: float = Field(
        2.0,
        ge=0,
        le=1_000_000,
        description="Keep the working quotes unless a wanted price moved more than this.",
    )
    inventory_target: float = Field(
        0.0, ge=-1e9, le=1e9, description="Position the skew pulls toward, base units."
    )
    inventory_limit: float | None = Field(
        None,
        gt=0,
        le=1e9,
        description="Distance from target at which the growing side stops quoting.",
    )
    inventory_skew_bps: float = Field(
        0.0,
        ge=0,
        le=1_000_000,
        description="Shift of both sides against the inventory at the limit, bps.",
    )
    price_ceiling: float | None = Field(
        None, gt=0, description="No bids above this price (and no quoting of bids above it)."
    )
    price_floor: float | None = Field(None, gt=0, description="No asks below this price.")
    post_only: bool = Field(True, description="Send quotes as post-only (never take).")
    reference: str = Field(
        "mid",
        description="Fair value: mid or microprice of the quoted book, or venue (the mid of "
        "reference_market, another market of this strategy that is read, never quoted).",
    )
    reference_market: str | None = Field(
        None,
        description="With reference: venue, the market whose mid is the fair value, as "
        "'exchange:symbol' or a symbol of this strategy's exchange; list it in symbols.",
    )
    quote_symbols: list[str] | None = Field(
        None,
        description="Markets to quote (symbols or keys); default: every market of the "
        "strategy except reference_market.",
    )
    order_refresh_time: float | None = Field(
        None,
        gt=0,
        description="Seconds: requote at least this often, even when every price is within "
        "refresh_tolerance_bps. None: only book changes and fills requote.",
    )
    max_order_age: float | None = Field(
        None,
        gt=0,
        description="Seconds: cancel and re-place a quote that has stood unchanged this long "
        "(fresh order, same price). None: orders live until the price moves.",
    )
    inventory_target_base_pct: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Target share of portfolio value held in base; replaces inventory_target "
        "with pct * (base + quote value) / price - base_balance, from the balances below.",
    )
    base_balance: float = Field(
        0.0,
        ge=0,
        le=1e9,
        description="Starting base holdings, base units (inventory_target_base_pct).",
    )
    quote_balance: float = Field(
        0.0,
        ge=0,
        le=1e9,
        description="Starting quote holdings, quote units (inventory_target_base_pct).",
    )
    minimum_spread_bps: float = Field(
        0.0,
        ge=0,
        le=1_000_000,
        description="Never quote closer than this to the reference; a side that would is "
        "pulled, not moved.",
    )
    price_band_bps: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="Moving band around a slow EWMA of the mid: no bids above ewma * (1 + "
        "band), no asks below ewma * (1 - band). None: no moving band.",
    )
    price_band_ewma_s: float = Field(
        300.0,
        gt=0,
        le=315_360_000,
        description="Time constant of the band's EWMA of the mid, seconds.",
    )
    hanging_orders: bool = Field(
        False,
        description="After one side fills, keep the other side's order of that level at its "
        "price instead of re-centring it, until it fills or reaches the cancel age.",
    )
    hanging_orders_cancel_age: float = Field(
        600.0, gt=0, description="Seconds after which a hanging order is re-centred."
    )

    @field_validator("reference")
    @classmethod
    def _known_reference(cls, value: str) -> str:
        if value == "external":
            raise ValueError(
                "reference 'external' (a price from the bus) is not available: strategies "
                "cannot subscribe to bus topics yet; use mid, microprice or venue"
            )
        if value not in ("mid", "microprice", "venue"):
            raise ValueError(f"reference must be mid, microprice or venue, got {value!r}")
        return value

    def manifest_problems(self, manifest: Any, spec: Any) -> list[tuple[tuple[str, ...], str]]:
        """A reference_market or quote_symbols entry that names none of the strategy's
        markets, or quotes the reference market (the rules of ``_resolve_markets``), found
        before the run starts or a changed manifest reaches a running strategy."""
        if "*" in spec.symbols:
            return []  # the venue lists the markets once connected
        markets = [split_market(spec.exchange, entry) for entry in spec.symbols]
        keys = [market_key(venue, symbol) for venue, symbol in markets]
        # A market is named by its key or by its symbol (the first market with it).
        named = {symbol: market_key(venue, symbol) for venue, symbol in reversed(markets)}
        named.update({key: key for key in keys})
        fix = f"is not one of its markets ({', '.join(keys)}); add it to the strategy's symbols"
        problems: list[tuple[tuple[str, ...], str]] = []
        reference = named.get(self.reference_market or "")
        if self.reference_market and reference is None:
            problems.append((("params", "reference_market"), f"{self.reference_market!r} {fix}"))
        for i, name in enumerate(self.quote_symbols or []):
            loc = ("params", "quote_symbols", str(i))
            if named.get(name) is None:
                problems.append((loc, f"{name!r} {fix}"))
            elif named[name] == reference:
                problems.append((loc, f"{name!r} is the reference_market: read, never quoted"))
        return problems

    @model_validator(mode="after")
    def _band(self) -> PureMarketMakingParams:
        if self.price_ceiling and self.price_floor and self.price_floor >= self.price_ceiling:
            raise ValueError("price_floor must be below price_ceiling")
        if self.inventory_skew_bps and self.inventory_limit is None:
            raise ValueError("inventory_skew_bps needs inventory_limit (the position of full skew)")
        if self.reference == "venue" and not self.reference_market:
            raise ValueError(
                "reference: venue needs reference_market, e.g. reference_market: 'BTC/USDT' "
                "(a symbol listed in this strategy's symbols)"
            )
        if self.reference_market and self.reference != "venue":
            raise ValueError("reference_market is only read with reference: venue")
        if self.inventory_target_base_pct is not None and self.inventory_limit is None:
            raise ValueError(
                "inventory_target_base_pct needs inventory_limit (the skew toward the target "
                "is scaled by it)"
            )
        if self.inventory_target_base_pct is not None and not (
            self.base_balance or self.quote_balance
        ):
            raise ValueError(
                "inventory_target_base_pct needs the starting portfolio: set base_balance "
                "and/or quote_balance"
            )
        return self


@dataclass(slots=True)
class _Hang:
    """An order left working at its price after the other side of its level filled."""

    quote: Quote
    since: float
    filled_lots: int = 0


class _Ladder:
    """The levels one params object quotes, worked out once (``_quotes_at`` finds them
    again while ``params`` is the same object, so new params give a new ladder).

    Level i quotes ``spread_bps + i * level_spacing_bps`` away from the centre with
    ``order_size + i * level_size_increment``; ``1 - distance`` and ``1 + distance``
    are kept as the very floats that multiply the centre, so the prices are unchanged.
    """

    __slots__ = ("_lots", "ask_bottom", "bid_top", "fixed_limits", "params", "steps")

    def __init__(self, params: PureMarketMakingParams) -> None:
        #: The params these were worked out from (compared by identity).
        self.params = params
        #: Per level: (level, 1 - distance, 1 + distance, size in base units).
        self.steps: tuple[tuple[int, float, float, float], ...] = tuple(
            (
                level,
                1 - (distance := (params.spread_bps + level * params.level_spacing_bps) / 1e4),
                1 + distance,
                params.order_size + level * params.level_size_increment,
            )
            for level in range(params.levels)
        )
        #: Without a band or a minimum spread the price limits are the params' own.
        self.fixed_limits = params.price_band_bps is None and not params.minimum_spread_bps
        self.bid_top = params.price_ceiling
        self.ask_bottom = params.price_floor
        # Per market key: (market, ratio, lots) of the last ``lots`` answer.
        self._lots: dict[str, tuple[Market, float, tuple[tuple[int, int], ...]]] = {}

    def lots(self, market: Market, ratio: float) -> tuple[tuple[int, int], ...]:
        """Per level, the lots of the bid and of the ask at inventory ``ratio``: the side
        that grows the position shrinks linearly and stops at the limit. The last answer
        per market is kept: the ratio moves only with the position."""
        known = self._lots.get(market.key)
        if known is not None and known[0] is market and known[1] == ratio:
            return known[2]
        lots = market.lots  # rounds down to whole order steps
        sizes = tuple(
            (
                lots(size * (1 - ratio) if ratio > 0 else size),
                lots(size * (1 + ratio) if ratio < 0 else size),
            )
            for _, _, _, size in self.steps
        )
        self._lots[market.key] = (market, ratio, sizes)
        return sizes


class PureMarketMaking(Strategy):
    """Symmetric multi-level quoting with inventory skew, refresh tolerance and a price band."""

    Params = PureMarketMakingParams
    params: PureMarketMakingParams
    interface_version = 2

    @property
    def speed(self) -> Speed:
        """Quotes from the mid depend on the best prices only. The microprice reads
        the sizes; the band's EWMA and the expiry of hanging orders move on every call,
        so with those every change of the best levels is seen."""
        p = self.params
        sizes = p.reference == "microprice" or p.price_band_bps is not None or p.hanging_orders
        return Speed(on_book="best_levels" if sizes else "best_prices")

    def __init__(self, ctx: quoteforge.StrategyContext, params: PureMarketMakingParams) -> None:
        super().__init__(ctx, params)
        self._last: dict[str, list[Quote]] = {}
        self._sent_at: dict[str, float] = {}
        # When the quote of each (side, level) slot last changed: the age of its order.
        self._slot_since: dict[str, dict[tuple[Side, int], float]] = {}
        self._hangs: dict[str, dict[tuple[Side, int], _Hang]] = {}
        self._cash: dict[str, float] = {}
        self._ewma: dict[str, tuple[float, float]] = {}
        self._cache = QuoteCache()  # speed only: see _pmm_cache.py
        self._ladder = _Ladder(params)
        self._timer: Any = None
        self._reference_key, self._quoted = self._resolve_markets(params)
        self._warned: set[tuple[str, Side]] = set()  # full-size quotes the venue would refuse

    # -- markets ------------------------------------------------------------------------
    def _find(self, name: str, what: str) -> str:
        markets = self.ctx.markets
        if name in markets:
            return name
        for key, market in markets.items():
            if market.symbol == name:
                return key
        known = ", ".join(sorted(markets)) or "none"
        raise ValueError(
            f"strategy {self.ctx.name!r}: {what} {name!r} is not one of its markets ({known}); "
            "add its symbol to the strategy's symbols (a strategy reads the markets of its own "
            "exchange only)"
        )

    def _resolve_markets(self, params: PureMarketMakingParams) -> tuple[str | None, list[str]]:
        ref = (
            self._find(params.reference_market, "reference_market")
            if (params.reference_market)
            else None
        )
        if params.quote_symbols is not None:
            quoted = [self._find(name, "quote_symbols entry") for name in params.quote_symbols]
        else:
            quoted = [key for key in self.ctx.markets if key != ref]
        if ref is not None and ref in quoted:
            raise ValueError(
                f"strategy {self.ctx.name!r}: reference_market {ref!r} is also in quote_symbols;"
                " the reference market is read, never quoted"
            )
        return ref, quoted

    @property
    def quoted_markets(self) -> list[str]:
        """Keys of the markets this strategy quotes."""
        return list(self._quoted)

    # -- lifecycle ----------------------------------------------------------------------
    def on_start(self, **kwargs: Any) -> None:
        self._arm()

    def on_params(self, params: Any, **kwargs: Any) -> None:
        self._reference_key, self._quoted = self._resolve_markets(params)
        self.params = params
        self._last.clear()  # new params: requote now, whatever the tolerance says
        self._warned.clear()
        if not params.hanging_orders:
            self._hangs.clear()
        if params.price_band_bps is None:
            self._ewma.clear()
        self._arm()

    def _interval(self) -> float | None:
        p = self.params
        ages = [p.order_refresh_time, p.max_order_age]
        if p.hanging_orders:
            ages.append(p.hanging_orders_cancel_age)
        given = [a for a in ages if a is not None]
        # Checking four times per shortest age keeps each deadline within a quarter of it.
        return min(given) / 4 if given else None

    def _arm(self) -> None:
        interval = self._interval()
        if self._timer is None and interval is not None:
            self._timer = self.ctx.call_later(interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        for key in self._quoted:
            market = self.ctx.markets[key]
            if market.book.state is BookState.LIVE:
                self._requote_on_timer(market)
        self._arm()

    def _requote_on_timer(self, market: Market) -> None:
        p = self.params
        key = market.key
        now = self.ctx.now()
        quotes = self.wanted_quotes(market)
        last = self._last.get(key)
        old = self._old_slots(key, now)
        due = p.order_refresh_time is not None and (
            now - self._sent_at.get(key, -math.inf) >= p.order_refresh_time
        )
        if due or last is None or not self._within_tolerance(market, last, quotes):
            target = quotes
        else:
            # Within tolerance the working quotes stay, except the aged ones: those are
            # renewed at the current price anyway.
            target = [
                q if (q.side, q.level) in old else w for q, w in zip(quotes, last, strict=True)
            ]
        working = {(q.side, q.level): q for q in last or []}
        # A quote whose price or size changed becomes a new order through the diff; an
        # unchanged aged one would be left alone by it, so it is pulled first.
        renew = {(q.side, q.level) for q in target if (q.side, q.level) in old} & {
            slot for slot, q in working.items() if q in target
        }
        if renew:
            self.ctx.set_quotes(market, [q for q in target if (q.side, q.level) not in renew])
        if renew or target != last:
            self._record(key, target, now, renewed=frozenset(old))
            self.ctx.set_quotes(market, target)

    def _old_slots(self, key: str, now: float) -> set[tuple[Side, int]]:
        """Working (side, level) slots older than max_order_age; hanging ones excepted."""
        age = self.params.max_order_age
        if age is None:
            return set()
        hanging = self._hangs.get(key, {})
        since = self._slot_since.get(key, {})
        return {s for s, t in since.items() if now - t >= age and s not in hanging}

    def _record(
        self,
        key: str,
        quotes: list[Quote],
        now: float,
        renewed: frozenset[tuple[Side, int]] = frozenset(),
    ) -> None:
        old = {(q.side, q.level): q for q in self._last.get(key, ())}
        since = self._slot_since.get(key, {})
        fresh: dict[tuple[Side, int], float] = {}
        for q in quotes:
            slot = (q.side, q.level)
            # ``is`` first: a market hands out the same Quote object for the same quote.
            was = old.get(slot)
            unchanged = (was is q or was == q) and slot not in renewed
            fresh[slot] = since.get(slot, now) if unchanged else now
        self._slot_since[key] = fresh
        self._last[key] = quotes
        self._sent_at[key] = now

    # -- pricing ------------------------------------------------------------------------
    def target_position(self, market: Market, price: float | None = None) -> float:
        """Position (base units, relative to the start) the inventory skew pulls toward."""
        p = self.params
        pct = p.inventory_target_base_pct
        if pct is None:
            return p.inventory_target
        if price is None:
            price = self.reference_price(market)
        if not price:
            return p.inventory_target
        base = p.base_balance + market.instrument.lots_to_float(market.position_lots)
        value = base * price + p.quote_balance + self._cash.get(market.key, 0.0)
        return pct * value / price - p.base_balance

    def inventory_ratio(self, market: Market, price: float | None = None) -> float:
        """Signed distance from the target as a share of the limit, clamped to [-1, 1]."""
        p = self.params
        limit = p.inventory_limit
        if limit is None:
            return 0.0
        target = (
            p.inventory_target
            if p.inventory_target_base_pct is None
            else self.target_position(market, price)
        )
        position = market.instrument.lots_to_float(market.position_lots)  # base units
        ratio = (position - target) / limit
        return -1.0 if ratio < -1.0 else 1.0 if ratio > 1.0 else ratio

    def reference_price(self, market: Market) -> float | None:
        if self.params.reference == "microprice":
            return market.book.microprice()
        if self._reference_key is not None:
            return self.ctx.markets[self._reference_key].book.mid()
        return market.book.mid()

    def band_center(self, market: Market, ref: float) -> float:
        """Update and return the slow, time-weighted EWMA of the reference price."""
        now = self.ctx.now()
        seen = self._ewma.get(market.key)
        if seen is None:
            value = ref
        else:
            # Time-weighted so a burst of book updates moves the band no faster than calm.
            weight = 1 - math.exp(-max(0.0, now - seen[1]) / self.params.price_band_ewma_s)
            value = seen[0] + weight * (ref - seen[0])
        self._ewma[market.key] = (value, now)
        return value

    def hanging(self, market: Market) -> list[Quote]:
        """Quotes kept working at their price after the other side of their level filled."""
        return [h.quote for h in self._hangs.get(market.key, {}).values()]

    def _expire_hangs(self, key: str, now: float) -> dict[tuple[Side, int], _Hang]:
        hangs = self._hangs.get(key)
        if not hangs:
            return {}
        age = self.params.hanging_orders_cancel_age
        for slot in [s for s, h in hangs.items() if now - h.since >= age]:
            del hangs[slot]
        return hangs

    def wanted_quotes(self, market: Market) -> list[Quote]:
        """The quotes wanted now (also moves the band's EWMA and ages out hanging orders)."""
        ref = self.reference_price(market)
        if ref is None:
            return []
        return self._quotes_at(market, ref, self.inventory_ratio(market, ref))

    def _quotes_at(self, market: Market, ref: float, ratio: float) -> list[Quote]:
        """``wanted_quotes`` from its reference price and inventory ratio."""
        p = self.params
        ladder = self._ladder
        if ladder.params is not p:
            ladder = self._ladder = _Ladder(p)
        key = market.key
        if ladder.fixed_limits:
            bid_top, ask_bottom = ladder.bid_top, ladder.ask_bottom
        else:
            bid_top, ask_bottom = self._limits(market, ref)
        hangs = self._hangs.get(key)
        if hangs:
            hangs = self._expire_hangs(key, self.ctx.now())
        # Both sides quote around the reference shifted against the inventory.
        center = ref * (1 - ratio * p.inventory_skew_bps / 1e4)
        # Without a band or hanging orders the quotes depend on the reference price and
        # the inventory ratio only (memoised); without price limits as well, on the
        # centre only (anchored).
        memo_ok = p.price_band_bps is None and not hangs
        cache = self._cache
        cache.begin(center, ratio, memo_ok and bid_top is None and ask_bottom is None)
        if memo_ok and (known := cache.recall(key, p, ref, ratio)) is not None:
            return known
        quotes: list[Quote] = []
        ticks, bid, ask, post_only = market.ticks, market.bid, market.ask, p.post_only
        sizes = ladder.lots(market, ratio)
        for (level, below, above, size), (bid_lots, ask_lots) in zip(
            ladder.steps, sizes, strict=True
        ):
            bid_price = center * below  # below = 1 - the level's distance
            ask_price = center * above
            hang = hangs.get((_BUY, level)) if hangs else None
            if hang is not None:
                quotes.append(hang.quote)
            elif ratio < 1 and (bid_top is None or bid_price <= bid_top):
                # Passive rounding onto the grids: bids down, sizes down to order steps.
                bid_ticks = ticks(bid_price, _BUY)
                quote = bid(bid_ticks, bid_lots, level, post_only)
                if quote is not None:
                    quotes.append(quote)
                elif ratio <= 0:  # at full size: not the inventory skew shrinking it
                    self._unquotable(market, _BUY, bid_ticks, size)
            hang = hangs.get((_SELL, level)) if hangs else None
            if hang is not None:
                quotes.append(hang.quote)
            elif ratio > -1 and (ask_bottom is None or ask_price >= ask_bottom):
                ask_ticks = ticks(ask_price, _SELL)
                quote = ask(ask_ticks, ask_lots, level, post_only)
                if quote is not None:
                    quotes.append(quote)
                elif ratio >= 0:
                    self._unquotable(market, _SELL, ask_ticks, size)
        if memo_ok:
            cache.remember(key, p, ref, ratio, quotes)
        return quotes

    def _limits(self, market: Market, ref: float) -> tuple[float | None, float | None]:
        """The highest bid and the lowest ask allowed now (the band moves its EWMA)."""
        p = self.params
        upper = lower = None
        if p.price_band_bps is not None:
            center_band = self.band_center(market, ref)
            upper = center_band * (1 + p.price_band_bps / 1e4)
            lower = center_band * (1 - p.price_band_bps / 1e4)
        if p.minimum_spread_bps:
            # The epsilon keeps a spread exactly at the minimum from being pulled.
            gap = p.minimum_spread_bps / 1e4
            upper = min(upper, ref * (1 - gap)) if upper is not None else ref * (1 - gap)
            upper *= 1 + 1e-12
            lower_gap = ref * (1 + gap) * (1 - 1e-12)
            lower = max(lower, lower_gap) if lower is not None else lower_gap
        bid_top = (
            min(upper, p.price_ceiling) if p.price_ceiling and upper else (upper or p.price_ceiling)
        )
        ask_bottom = (
            max(lower, p.price_floor) if p.price_floor and lower else (lower or p.price_floor)
        )
        return bid_top, ask_bottom

    def _unquotable(self, market: Market, side: Side, ticks: int, size: float) -> None:
        """Say once per market and side that a quote of the configured size is below the
        venue's minimums (``market.bid``/``ask`` leave it out): such a bot never quotes."""
        if (market.key, side) in self._warned:
            return
        self._warned.add((market.key, side))
        inst = market.instrument
        lots = market.lots(size)
        why = (
            f"it rounds down to 0 at the order step {inst.qty_step}"
            if lots <= 0
            else inst.check_order(max(1, ticks), lots) or "below the venue's minimums"
        )
        logger.warning(
            "{} on {}: no {} is quoted: {} of {} at {} is refused ({}); raise order_size",
            self.ctx.name, market.key, side.name.lower(),
            f"{size:.12f}".rstrip("0").rstrip("."), inst.base,
            market.price(max(1, ticks)), why,
        )  # fmt: skip

    # -- events -------------------------------------------------------------------------
    def on_book(self, market: Market, **kwargs: Any) -> Quotes | None:
        key = market.key
        if key == self._reference_key:
            # The fair value moved: requote every quoted market; never quote this one.
            for quoted in self._quoted:
                target = self.ctx.markets[quoted]
                if target.book.state is BookState.LIVE:
                    quotes = self._refresh(target)
                    if quotes is not None:
                        self.ctx.set_quotes(target, quotes)
            return []
        if key not in self._quoted:
            return []
        return self._refresh(market)

    def _refresh(self, market: Market) -> list[Quote] | None:
        """The quotes to send after a book change, or None to keep the working ones."""
        key = market.key
        last = self._last.get(key)
        cache = self._cache
        ref = self.reference_price(market)
        if ref is None:
            quotes: list[Quote] = []
            cache.source = None  # nothing priced now: no earlier pricing stands for it
        else:
            # The reference and the ratio are read once, for the shortcut and the pricing.
            ratio = self.inventory_ratio(market, ref)
            if last is not None:
                p = self.params
                center = ref * (1 - ratio * p.inventory_skew_bps / 1e4)  # as in _quotes_at
                if cache.holds(key, last, p, ratio, center):
                    return None  # provably within tolerance: keep the quotes
            quotes = self._quotes_at(market, ref, ratio)
        if last is not None:
            if cache.already_kept(key, last):
                return None
            if self._within_tolerance(market, last, quotes):
                cache.keep(key, last)
                return None
        self._record(key, quotes, self.ctx.now())
        cache.set_anchor(market, quotes, self.params)
        return quotes

    def on_fill(self, market: Market, fill: Fill, **kwargs: Any) -> None:
        if self.params.inventory_target_base_pct is not None:
            self._track_cash(market, fill)
        if self.params.hanging_orders:
            self._hang_after_fill(market, fill)
        # The position changed: skew and sizes must be recomputed even if prices did not move.
        self._last.pop(market.key, None)

    def _track_cash(self, market: Market, fill: Fill) -> None:
        price = float(market.price(fill.price_ticks))
        qty = float(market.qty(fill.qty_lots))
        cash = self._cash.get(market.key, 0.0) - int(fill.side) * price * qty
        if fill.fee_asset == market.instrument.quote:
            cash -= float(fill.fee)
        self._cash[market.key] = cash

    def _hang_after_fill(self, market: Market, fill: Fill) -> None:
        hangs = self._hangs.setdefault(market.key, {})
        for slot, hang in list(hangs.items()):
            if slot[0] is fill.side and hang.quote.price_ticks == fill.price_ticks:
                hang.filled_lots += fill.qty_lots
                if hang.filled_lots >= hang.quote.qty_lots:
                    del hangs[slot]  # the pair is complete: this level re-centres
                return
        last = self._last.get(market.key, [])
        level = next(
            (q.level for q in last if q.side is fill.side and q.price_ticks == fill.price_ticks),
            0,
        )
        other = (fill.side.opposite, level)
        if other in hangs:
            return
        quote = next((q for q in last if (q.side, q.level) == other), None)
        if quote is not None:
            hangs[other] = _Hang(quote, self.ctx.now())

    def _within_tolerance(self, market: Market, old: list[Quote], new: list[Quote]) -> bool:
        if len(old) != len(new):
            return False
        tolerance = self.params.refresh_tolerance_bps / 1e4
        tick = self._cache.grid(market)[1]  # float(tick_size), converted once
        for a, b in zip(old, new, strict=True):
            if a.side is not b.side or a.level != b.level or a.qty_lots != b.qty_lots:
                return False
            price = a.price_ticks * tick
            if abs(a.price_ticks - b.price_ticks) * tick > tolerance * price:
                return False
        return True


@quoteforge.hookimpl
def quoteforge_register_strategies(register: Register) -> None:
    register("pure_market_making", PureMarketMaking)
