"""Queue-aware fills for our orders against an external book we do not control (a
recording or a live feed): the matching behind the ``replay`` and paper venues."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from quoteforge.book import BookState, L2Book
from quoteforge.clock import Clock
from quoteforge.exchange import (
    OrderAction,
    VenueSink,
)
from quoteforge.exchanges.sim.base import BPS, ActionDispatch, OrderReports
from quoteforge.exchanges.sim.flow import market_rng
from quoteforge.model import (
    Fill,
    Instrument,
    Liquidity,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
)

__all__ = [
    "CANCEL_POSITIONS",
    "CancelPosition",
    "FillLatencyParams",
    "FillSimParams",
    "FillSimulator",
]

CancelPosition = Literal["front", "back", "proportional", "probabilistic"]
CANCEL_POSITIONS: tuple[str, ...] = ("front", "back", "proportional", "probabilistic")

_BUY = Side.BUY
_SELL = Side.SELL
_LIVE = BookState.LIVE
_MAKER = Liquidity.MAKER
_TAKER = Liquidity.TAKER
# numpy's hypergeometric sampler needs ngood + nbad below 10**9.
_HYPERGEOMETRIC_LIMIT = 10**9


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FillLatencyParams(_Closed):
    market_data_ms: float = Field(
        5.0,
        ge=0,
        le=60_000,
        description="Venue -> us delay of market data: how far the book we see lags the "
        "venue's own book.",
    )
    order_ms: float = Field(
        10.0,
        ge=0,
        le=60_000,
        description="One-way delay of our order requests and of their reports.",
    )
    jitter_ms: float = Field(
        1.0, ge=0, le=60_000, description="Uniform random extra delay, 0..jitter."
    )


class FillSimParams(_Closed):
    """How our orders are filled against a book we only observe."""

    maker_fee_bps: Decimal | None = Field(
        None,
        gt=-10_000,
        lt=10_000,
        description="Maker fee in bps of notional; negative is a rebate. Unset: the "
        "instrument's own maker fee. Under 100% either way.",
    )
    taker_fee_bps: Decimal | None = Field(
        None,
        gt=-10_000,
        lt=10_000,
        description="Taker fee in bps of notional. Unset: the instrument's own taker fee. "
        "Under 100% either way.",
    )
    cancel_position: CancelPosition = Field(
        "probabilistic",
        description="Where cancellations at our price level happen relative to our order: "
        "front (all ahead of us), back (all behind us), proportional (ahead in proportion "
        "to the queue ahead), probabilistic (each cancelled lot ahead of us at random).",
    )
    latency: FillLatencyParams = Field(
        default_factory=lambda: FillLatencyParams.model_validate({}),
        description="Market-data and order latency.",
    )


class _Working:
    """One resting order of ours and the external quantity queued ahead of it."""

    __slots__ = ("ahead", "filled", "level", "order", "remaining")

    def __init__(self, order: Order, level: _Level, ahead: int, filled: int) -> None:
        self.order = order
        self.level = level
        self.ahead = ahead
        self.filled = filled
        self.remaining = order.qty_lots - filled


class _Level:
    """A price level where we rest: what we last saw of it and our orders, in arrival
    order."""

    __slots__ = ("hidden", "orders", "price", "seen", "side", "traded")

    def __init__(self, side: Side, price: int, seen: int) -> None:
        self.side = side
        self.price = price
        self.seen = seen  # external visible lots at the last look (0 while hidden)
        self.traded = 0  # lots printed at this price that the depth does not show yet
        # Beyond the worst level the book shows on our side: a book cut to a fixed
        # depth says nothing about it, so its size is not read (``_out_of_view``).
        self.hidden = False
        self.orders: list[_Working] = []


class _Market:
    __slots__ = (
        "ask_floor",
        "bid_top",
        "book",
        "gap",
        "hidden",
        "instrument",
        "levels",
        "maker_rate",
        "orders",
        "rng",
        "step",
        "taken",
        "taker_rate",
    )

    def __init__(
        self,
        instrument: Instrument,
        book: L2Book,
        maker_rate: Decimal,
        taker_rate: Decimal,
        rng: np.random.Generator,
    ) -> None:
        self.instrument = instrument
        # Lots in one order step: our fills are whole steps, the book is read in lots.
        self.step = instrument.step_lots
        self.book = book
        self.maker_rate = maker_rate
        self.taker_rate = taker_rate
        self.rng = rng
        self.levels: dict[tuple[Side, int], _Level] = {}
        # Our highest bid level and lowest ask level (None: no level on that side).
        self.bid_top: int | None = None
        self.ask_floor: int | None = None
        self.orders: dict[str, _Working] = {}
        # (side, ticks) -> (visible lots when we took, lots we took): liquidity our
        # taking orders used, so a second taker does not take it again before the
        # feed shows the level change.
        self.taken: dict[tuple[Side, int], tuple[int, int]] = {}
        # The book was not LIVE since our levels last read it (a resync, a stale
        # feed): its next LIVE look re-estimates our queues (``_after_gap``).
        self.gap = False
        # Our levels that are out of view (``_Level.hidden``).
        self.hidden: list[_Level] = []


# L2Book keeps each side's keys in ascending order, the worst level first (asks keyed
# by negated ticks), and has no public reader of the worst level; these are asked on
# every book event while a level of ours is out of view, so they stay O(1).
def _beyond_view(book: L2Book, side: Side, price: int) -> bool:
    """``price`` is strictly worse than the worst level ``book`` shows on ``side``: a
    book cut to a fixed depth (Kraken's subscribed depth) does not say what rests
    there. A side that shows nothing is not cut: only deletions empty it."""
    if side is _BUY:
        keys = book._bid_keys
        return bool(keys) and price < keys[0]
    keys = book._ask_keys
    return bool(keys) and -price < keys[0]


def _in_view(book: L2Book, side: Side, price: int) -> bool:
    """``price`` is at or better than the worst level ``book`` shows on ``side``, so
    an absent level there is empty."""
    if side is _BUY:
        keys = book._bid_keys
        return bool(keys) and price >= keys[0]
    keys = book._ask_keys
    return bool(keys) and -price >= keys[0]


class FillSimulator(ActionDispatch):
    """Our orders on one venue, filled against external books we only observe.

    Rules (``docs/backtest.md`` explains them):

    - A passive order joins the back of its price level: ``ahead`` starts at the
      visible lots there (0 at a new price).
    - A public trade at our price first consumes ``ahead``, then fills us; a trade
      through our price (a sell below our bid, a buy above our ask) fills us completely.
    - A drop of the visible size at our level that trades do not explain is a
      cancellation; ``cancel_position`` decides how much of it was ahead of us.
    - When the opposite best price reaches our price on a LIVE book, we are filled
      completely at our price as maker.
    - A marketable order (market, IOC or crossing GTC) walks the visible opposite
      levels up to its limit and pays the taker fee; it does not change the external
      book, but the liquidity it used is not offered again until the feed updates that
      level. A crossing post-only order is rejected, and so is any crossing order
      while the book is not LIVE: nothing is taken from a book known to be wrong.
    - The sizes of a book that is not LIVE (stale, resyncing) move no queue; trades
      still do. When it is LIVE again, nothing says who left our level meanwhile, so
      no cancellation moves us up: the queue ahead keeps what the trades we saw left
      of it, cut to the level's visible size (orders that arrived meanwhile queue
      behind us).
    - A level of ours that goes strictly worse than the worst level the book shows on
      its side is out of view, not empty: a book cut to a fixed depth does not show
      it. Its size is not read meanwhile (nor while that side shows nothing); trades
      at it still consume the queue, and when it is in view again it is re-estimated
      as after a resync.
    - Queues and visible sizes are counted in the venue's lots (its reporting
      precision); our fills are whole order steps (``Instrument.qty_step``), so an order
      never keeps a remainder it could not have been sent with.

    Time: the book we see lags the venue by ``view_lag_ms`` (the latency's
    ``market_data_ms`` unless given), so an order sent now reaches the venue's matching
    ``order_ms`` later, which on our view's clock is ``order_ms + view_lag_ms`` later;
    reports travel back ``order_ms``, i.e. ``max(0, order_ms - view_lag_ms)`` after the
    view shows what caused them.
    """

    def __init__(
        self,
        venue: str,
        clock: Clock,
        params: FillSimParams | None = None,
        seed: int = 0,
        *,
        view_lag_ms: float | None = None,
    ) -> None:
        self.venue = venue
        self.clock = clock
        self.params = params = params or FillSimParams.model_validate({})
        lat = params.latency
        lag = lat.market_data_ms if view_lag_ms is None else view_lag_ms
        if lag < 0:
            raise ValueError(f"{venue}: view_lag_ms must be >= 0, got {lag}")
        self._arrive_ns = int((lat.order_ms + lag) * 1_000_000)
        self._report_ns = max(0, int((lat.order_ms - lag) * 1_000_000))
        self._jitter_ns = lat.jitter_ms * 1_000_000
        self._latency_rng = market_rng(seed, venue, "*", "latency")
        self._out_last = 0
        self._back_last = 0
        self._seed = seed
        self._model = params.cancel_position
        self.markets: dict[str, _Market] = {}
        #: Our reports and fills on their way to the sink; ``fills`` is their record.
        self.reports = OrderReports(venue, clock)
        self.fills: list[Fill] = self.reports.fills

    # -- set-up ----------------------------------------------------------------------------
    def attach(self, sink: VenueSink | None) -> None:
        """Where order reports and fills go (None: nowhere, e.g. after close)."""
        self.reports.sink = sink

    def add_market(self, instrument: Instrument, book: L2Book) -> None:
        """Fill orders on ``instrument`` against ``book`` (which the caller keeps fresh
        and reports through ``on_book``)."""
        p = self.params
        maker = instrument.maker_fee if p.maker_fee_bps is None else p.maker_fee_bps * BPS
        taker = instrument.taker_fee if p.taker_fee_bps is None else p.taker_fee_bps * BPS
        rng = market_rng(self._seed, self.venue, instrument.symbol, "queue")
        self.markets[instrument.symbol] = _Market(instrument, book, maker, taker, rng)

    def has_market(self, symbol: str) -> bool:
        return symbol in self.markets

    # -- our orders --------------------------------------------------------------------------
    def submit(self, actions: Sequence[OrderAction]) -> None:
        """Send actions to the simulated matching; outcomes arrive through the sink."""
        clock = self.clock
        for action in actions:
            clock.call_at(self._stream_time(True), self._carry_out, action)

    def queue_ahead(self, client_id: str) -> int | None:
        """External lots still ahead of a resting order of ours (None: not resting)."""
        for market in self.markets.values():
            working = market.orders.get(client_id)
            if working is not None:
                return working.ahead
        return None

    def open_orders(self) -> list[OrderUpdate]:
        """Our resting orders as the venue would list them (the reconcile answer)."""
        now = self.clock.now_ns()
        working = self.reports.working
        return [
            working(w.order.client_id, w.filled, w.order.price_ticks, w.order.qty_lots, now)
            for market in self.markets.values()
            for w in market.orders.values()
        ]

    # -- market data ---------------------------------------------------------------------------
    def on_book(self, symbol: str) -> None:
        """The external book of ``symbol`` changed: account cancellations at our levels
        and fill orders the opposite side has reached."""
        market = self.markets.get(symbol)
        if market is None:
            return
        if market.taken:
            self._forget_taken(market)
        if market.levels or market.gap:
            self._book_at_levels(market)

    def on_book_state(self, symbol: str, state: BookState) -> None:
        """The book of ``symbol`` went to ``state``: a book leaving LIVE will not show
        every change at our levels (a resync replaces it with a snapshot), so its next
        LIVE look re-estimates our queues instead of reading cancellations."""
        market = self.markets.get(symbol)
        if market is not None and state is not _LIVE:
            market.gap = True

    def book_watcher(self, symbol: str) -> Callable[[], None]:
        """``on_book(symbol)`` as a function of no arguments, for a caller that reports
        every change of that book (it skips the lookups)."""
        market = self.markets[symbol]
        forget = self._forget_taken
        at_levels = self._book_at_levels

        def changed() -> None:
            if market.taken:
                forget(market)
            if market.levels or market.gap:
                at_levels(market)

        return changed

    def _book_at_levels(self, market: _Market) -> None:
        book = market.book
        if book.state is not _LIVE:
            market.gap = True  # a book known to be wrong: nothing is read from it
            return
        if market.gap:
            self._after_gap(market)
        top = market.bid_top
        floor = market.ask_floor
        if top is not None:
            best_ask = book.best_ask_ticks()
            if best_ask is not None and best_ask <= top:
                self._book_reached(market, book)
                return
        if floor is not None:
            best_bid = book.best_bid_ticks()
            if best_bid is not None and best_bid >= floor:
                self._book_reached(market, book)
                return
        # No level of ours was reached: only the visible sizes at our levels matter.
        bid_sizes, ask_sizes = book.side_sizes()
        for level in market.levels.values():
            if level.side is _BUY:
                visible = bid_sizes.get(level.price, 0)
            else:
                visible = ask_sizes.get(-level.price, 0)
            if visible != level.seen:
                self._level_changed(market, level, visible)
        if market.hidden:
            self._look_beyond(market, book)

    def _book_reached(self, market: _Market, book: L2Book) -> None:
        """The opposite side reached some of our levels: those fill, in level order; the
        others account their size changes."""
        best_bid = book.best_bid_ticks()
        best_ask = book.best_ask_ticks()
        for level in list(market.levels.values()):
            if level.side is _BUY:
                through = best_ask is not None and best_ask <= level.price
            else:
                through = best_bid is not None and best_bid >= level.price
            if through:
                self._fill_level(market, level)
                continue
            visible = book.lots_at(level.side, level.price)
            if visible != level.seen:
                self._level_changed(market, level, visible)
        if market.hidden:
            self._look_beyond(market, book)

    def _look_beyond(self, market: _Market, book: L2Book) -> None:
        """Levels out of view that the window reaches again while they show nothing:
        now the book does say nobody rests there."""
        hidden = market.hidden
        i = len(hidden)
        while i:  # backwards: ``_reestimate`` removes the level from ``hidden``
            i -= 1
            level = hidden[i]
            if _in_view(book, level.side, level.price):
                self._reestimate(market, level, book.lots_at(level.side, level.price))

    def _after_gap(self, market: _Market) -> None:
        """The book is LIVE again after a time it was not: take our levels' sizes as
        they are now without reading cancellations from the difference. Trades printed
        meanwhile have already consumed the queue; more than the visible size cannot
        be ahead of us. A level the rebuilt book does not reach is out of view."""
        market.gap = False
        book = market.book
        for level in market.levels.values():
            side = level.side
            price = level.price
            visible = book.lots_at(side, price)
            if visible or _in_view(book, side, price):
                self._reestimate(market, level, visible)
            elif level.hidden:
                continue  # still beyond the window, or the side shows nothing
            elif _beyond_view(book, side, price):
                self._out_of_view(market, level)
            else:  # the side shows nothing: deleted, not cut away
                self._reestimate(market, level, 0)

    @staticmethod
    def _out_of_view(market: _Market, level: _Level) -> None:
        """``level`` went beyond the worst visible level: the book no longer shows its
        size, which says nothing about who left it. The queue ahead stays as it is
        (trades at the level still consume it) until the level is in view again."""
        level.hidden = True
        market.hidden.append(level)
        level.seen = 0
        level.traded = 0

    @staticmethod
    def _reestimate(market: _Market, level: _Level, visible: int) -> None:
        """Take ``level``'s visible size as it is without reading cancellations from the
        difference (after a gap, or back in view): more than the visible size cannot be
        ahead of us."""
        if level.hidden:
            level.hidden = False
            market.hidden.remove(level)
        level.seen = visible
        level.traded = 0
        for w in level.orders:
            if w.ahead > visible:
                w.ahead = visible

    def _level_changed(self, market: _Market, level: _Level, visible: int) -> None:
        if level.hidden:  # shows a size again (``seen`` is 0 while hidden): in view
            self._reestimate(market, level, visible)
            return
        if not visible and _beyond_view(market.book, level.side, level.price):
            self._out_of_view(market, level)
            return
        seen = level.seen
        if visible < seen:
            drop = seen - visible
            explained = drop if drop < level.traded else level.traded
            cancelled = drop - explained
            if cancelled:
                self._cancelled_ahead(market, level, cancelled)
        level.traded = 0
        level.seen = visible
        for w in level.orders:
            if w.ahead > visible:
                w.ahead = visible

    def on_trade(self, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side) -> None:
        """A public trade printed: it consumes the queue at its price and fills our
        orders behind it, or fills us outright when it went through our price."""
        market = self.markets.get(symbol)
        if market is None or not market.levels:
            return
        hit = aggressor.opposite
        for level in list(market.levels.values()):
            if level.side is not hit:
                continue
            if price_ticks == level.price:
                level.traded += qty_lots
                self._consume_queue(market, level, qty_lots)
            elif (price_ticks < level.price) if hit is _BUY else (price_ticks > level.price):
                self._fill_level(market, level)

    # -- arrival at the venue ------------------------------------------------------------------
    def execute_cancel_all(self, symbol: str | None) -> None:
        for name, market in self.markets.items():
            if symbol in (None, name):
                for client_id in list(market.orders):
                    self.execute_cancel(client_id, name)

    def execute_place(self, order: Order) -> None:
        market = self.markets.get(order.symbol)
        if market is None:
            known = ", ".join(sorted(self.markets)) or "none"
            self._report(
                order.client_id,
                OrderStatus.REJECTED,
                0,
                f"unknown market {order.symbol!r} on {self.venue}; it lists: {known}",
            )
            return
        problem = self._check(market, order)
        if problem is not None:
            self._report(order.client_id, OrderStatus.REJECTED, 0, problem)
            return
        is_buy = order.side is _BUY
        book = market.book
        best = book.best_ask_ticks() if is_buy else book.best_bid_ticks()
        limit = order.price_ticks
        is_market = order.order_type is OrderType.MARKET
        if best is None:
            crosses = False
        elif is_market or limit is None:
            crosses = True
        else:
            crosses = best <= limit if is_buy else best >= limit
        if crosses and order.tif is TimeInForce.POST_ONLY:
            assert best is not None
            price = market.instrument.ticks_to_price(best)
            self._report(
                order.client_id,
                OrderStatus.REJECTED,
                0,
                f"post-only order would cross at {price}",
            )
            return
        if crosses and book.state is not _LIVE:
            self._report(
                order.client_id,
                OrderStatus.REJECTED,
                0,
                f"would take liquidity while the {order.symbol} book is {book.state.value}: "
                "nothing is taken from a book known to be wrong; send it again when the "
                "book is LIVE",
            )
            return
        self._report(
            order.client_id,
            OrderStatus.OPEN,
            0,
            price_ticks=limit,
            qty_lots=order.qty_lots,
        )
        filled = self._take(market, order) if crosses else 0
        if filled == order.qty_lots:
            self._report(order.client_id, OrderStatus.FILLED, filled)
            return
        if is_market or order.tif is TimeInForce.IOC:
            self._report(
                order.client_id,
                OrderStatus.EXPIRED,
                filled,
                "market remainder: visible book too thin" if is_market else "IOC remainder",
            )
            return
        assert limit is not None
        key = (order.side, limit)
        level = market.levels.get(key)
        visible = book.lots_at(order.side, limit)
        if book.state is not _LIVE:
            market.gap = True  # ``visible`` is read from a book known to be wrong
        ahead = visible
        if level is None:
            level = market.levels[key] = _Level(order.side, limit, visible)
            self._bounds(market)
        elif level.hidden:
            # The book does not show the level, but our earlier orders there, and the
            # queue ahead of them, are ahead of this one.
            ahead = level.orders[-1].ahead
        working = _Working(order, level, ahead, filled)
        level.orders.append(working)
        market.orders[order.client_id] = working

    def _check(self, market: _Market, order: Order) -> str | None:
        if order.client_id in market.orders:
            return f"duplicate client id {order.client_id!r}: an order with this id is working"
        if order.order_type is OrderType.LIMIT and order.price_ticks is None:
            return "a limit order needs price_ticks; send OrderType.MARKET to trade without one"
        if order.order_type is OrderType.MARKET and order.tif is TimeInForce.POST_ONLY:
            return "a market order cannot be post-only: send a limit order with POST_ONLY"
        price = order.price_ticks if order.order_type is OrderType.LIMIT else None
        return market.instrument.check_order(price, order.qty_lots)

    def _take(self, market: _Market, order: Order) -> int:
        """Walk the visible opposite levels up to the limit; returns lots filled."""
        is_buy = order.side is _BUY
        opposite = order.side.opposite
        limit = order.price_ticks if order.order_type is OrderType.LIMIT else None
        remaining = order.qty_lots
        step = market.step
        walked = 0  # lots the walk used so far, at the venue's precision
        filled = 0  # of which ours: whole order steps
        taken = market.taken
        fills: list[tuple[int, int]] = []
        for price, visible in market.book.levels(opposite):
            if limit is not None and (price > limit if is_buy else price < limit):
                break
            key = (opposite, price)
            used = 0
            before = taken.get(key)
            if before is not None and before[0] == visible:
                used = before[1]
            available = visible - used
            if available <= 0:
                continue
            lots = available if available < remaining else remaining
            taken[key] = (visible, used + lots)
            remaining -= lots
            walked += lots
            # Levels finer than the step add up: each fill is the whole steps reached
            # so far, priced at the level that completed them (never better for us).
            mine = walked - walked % step - filled
            if mine:
                fills.append((price, mine))
                filled += mine
            if not remaining:
                break
        for price, lots in fills:
            self._emit_fill(market, order, price, lots, _TAKER)
        return filled

    def execute_cancel(self, client_id: str, symbol: str) -> None:
        market = self.markets.get(symbol)
        if market is None:
            return
        working = market.orders.get(client_id)
        if working is None:
            # Already filled (its FILLED report is on the way) or never accepted.
            return
        self._remove(market, working)
        self._report(client_id, OrderStatus.CANCELLED, working.filled)

    # -- queue and fills -----------------------------------------------------------------------
    def _cancelled_ahead(self, market: _Market, level: _Level, cancelled: int) -> None:
        """``cancelled`` external lots left the level; move our orders up by the part
        of them that was ahead."""
        visible = level.seen
        model = self._model
        for w in level.orders:
            ahead = w.ahead
            if ahead <= 0:
                continue
            behind = visible - ahead
            if model == "front":
                gone = cancelled if cancelled < ahead else ahead
            elif model == "back":
                gone = cancelled - behind if cancelled > behind else 0
            elif model == "proportional":
                gone = cancelled * ahead // visible
            elif visible < _HYPERGEOMETRIC_LIMIT:
                gone = int(market.rng.hypergeometric(ahead, behind, cancelled))
            else:
                gone = min(ahead, int(market.rng.binomial(cancelled, ahead / visible)))
            w.ahead = ahead - gone

    def _consume_queue(self, market: _Market, level: _Level, qty: int) -> None:
        """A trade of ``qty`` lots at our price: external lots ahead go first, then our
        orders in arrival order, with the external lots between them."""
        left = qty
        external = 0  # external lots this trade consumed so far
        order_step = market.step
        done: list[_Working] = []
        for w in level.orders:
            need = w.ahead - external
            if need > 0:
                used = need if need < left else left
                external += used
                left -= used
            if not left:
                break
            lots = w.remaining if w.remaining < left else left
            # Our order trades in whole steps; a part-step rest of the print went to
            # an external order (the queue is read at the venue's finer precision).
            lots -= lots % order_step
            if not lots:
                break
            left -= lots
            self._fill_working(market, w, lots)
            if not w.remaining:
                done.append(w)
            if not left:
                break
        for w in level.orders:
            w.ahead = w.ahead - external if w.ahead > external else 0
        for w in done:
            self._remove(market, w)

    def _fill_level(self, market: _Market, level: _Level) -> None:
        for w in list(level.orders):
            self._fill_working(market, w, w.remaining)
            self._remove(market, w)

    def _fill_working(self, market: _Market, w: _Working, lots: int) -> None:
        w.remaining -= lots
        w.filled += lots
        self._emit_fill(market, w.order, w.level.price, lots, _MAKER)
        if not w.remaining:
            self._report(w.order.client_id, OrderStatus.FILLED, w.filled)

    def _remove(self, market: _Market, w: _Working) -> None:
        market.orders.pop(w.order.client_id, None)
        level = w.level
        if w in level.orders:
            level.orders.remove(w)
        if not level.orders:
            removed = market.levels.pop((level.side, level.price), None)
            if removed is not None:
                if removed.hidden:
                    market.hidden.remove(removed)
                self._bounds(market)

    @staticmethod
    def _bounds(market: _Market) -> None:
        bids = [lv.price for lv in market.levels.values() if lv.side is _BUY]
        asks = [lv.price for lv in market.levels.values() if lv.side is not _BUY]
        market.bid_top = max(bids) if bids else None
        market.ask_floor = min(asks) if asks else None

    def _forget_taken(self, market: _Market) -> None:
        book = market.book
        taken = market.taken
        for key in [k for k, (v, _) in taken.items() if book.lots_at(k[0], k[1]) != v]:
            del taken[key]

    # -- reports --------------------------------------------------------------------------------
    def _emit_fill(
        self, market: _Market, order: Order, price: int, lots: int, liquidity: Liquidity
    ) -> None:
        inst = market.instrument
        rate = market.maker_rate if liquidity is _MAKER else market.taker_rate
        fee = inst.notional(price, lots) * rate
        now = self.clock.now_ns()
        self.reports.fill(inst, order, price, lots, fee, liquidity, now, self._stream_time(False))

    def _report(
        self,
        client_id: str,
        status: OrderStatus,
        filled: int,
        reason: str = "",
        *,
        price_ticks: int | None = None,
        qty_lots: int | None = None,
    ) -> None:
        when = self._stream_time(False)
        self.reports.update(client_id, status, filled, reason, when, price_ticks, qty_lots)

    def _stream_time(self, outbound: bool) -> int:
        """Delivery time on the order path (out) or the report path (back): jittered
        but never before the previous message on the same path, as on one connection."""
        base = self._arrive_ns if outbound else self._report_ns
        jitter = self._jitter_ns
        if jitter:
            base += int(float(self._latency_rng.random()) * jitter)
        when = self.clock.now_ns() + base
        if outbound:
            if when < self._out_last:
                when = self._out_last
            self._out_last = when
        else:
            if when < self._back_last:
                when = self._back_last
            self._back_last = when
        return when
