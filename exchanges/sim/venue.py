"""The simulated exchange: matching engines, synthetic flow, latency and fees as a venue.

It implements the same adapter contract as the live venues: market data reaches the run
after the market-data latency, our order actions reach the matching engine after the
order latency, and acknowledgements and fills come back after it again. All randomness
comes from seeded per-market streams, so a manifest and a seed give one outcome.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quoteforge.book import BookState, L2Book
from quoteforge.exchange import (
    CancelOrder,
    OrderAction,
    PlaceOrder,
    ReplaceOrder,
    VenueContext,
    VenueSink,
)
from quoteforge.exchanges.profiles import ProfileParams, limits_for, screen
from quoteforge.exchanges.sim.base import BPS, ActionDispatch, SimulatedVenue
from quoteforge.exchanges.sim.flow import (
    FlowParams,
    LiquidityParams,
    MidPath,
    ProcessParams,
    market_rng,
)
from quoteforge.exchanges.sim.matching import MatchingEngine, SimOrder, SubmitResult, Trade
from quoteforge.manifest import Duration
from quoteforge.model import (
    Instrument,
    InstrumentKind,
    Liquidity,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
)

__all__ = ["SimExchange", "SimMarketParams", "SimParams"]

US = "us"
BACKGROUND = "bg"
TAKER = "taker"
_BUY, _SELL = Side.BUY, Side.SELL


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LatencyParams(_Closed):
    market_data_ms: float = Field(
        5.0, ge=0, le=60_000, description="Venue -> us delay of market data."
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


class OutageParams(_Closed):
    at: Duration = Field(description="Run time at which the market-data feed goes down.")
    duration: Duration = Field(gt=0, description="How long it stays down before a resync.")


class SimMarketParams(_Closed):
    kind: Literal["spot", "binary"] = Field("spot", description="spot, or binary in [0, 1].")
    tick_size: Decimal = Field(Decimal("0.01"), gt=0, description="Price increment.")
    lot_size: Decimal = Field(Decimal("0.001"), gt=0, description="Quantity increment.")
    min_qty: Decimal = Field(Decimal(0), ge=0, description="Smallest order quantity.")
    min_notional: Decimal | None = Field(
        None,
        ge=0,
        description="Smallest price x quantity; unset: the venue profile's minimum (0 "
        "without a profile).",
    )
    initial_price: float = Field(gt=0, description="Mid price at the start of the run.")
    process: ProcessParams = Field(default_factory=ProcessParams)
    flow: FlowParams = Field(default_factory=FlowParams)
    liquidity: LiquidityParams = Field(default_factory=LiquidityParams)
    outages: list[OutageParams] = Field(
        default_factory=list, description="Market-data outages to rehearse STALE handling."
    )

    @model_validator(mode="after")
    def _binary_bounds(self) -> SimMarketParams:
        if self.kind == "binary" and not 0 < self.initial_price < 1:
            raise ValueError("a binary contract's initial_price must be inside (0, 1)")
        return self

    @model_validator(mode="after")
    def _on_the_grid(self) -> SimMarketParams:
        # Prices and sizes become integer ticks and lots: keep them whole and exact.
        ticks = self.initial_price / float(self.tick_size)
        if not 1 <= ticks <= 1e15:
            raise ValueError(
                f"initial_price {self.initial_price} is {ticks:.3g} ticks of {self.tick_size}; "
                "it must be 1 to 1e15 ticks"
            )
        tick = float(self.tick_size)
        distances = {
            "flow.reach": self.flow.reach,
            "liquidity.distance": self.liquidity.distance,
            "liquidity.spacing": self.liquidity.spacing,
            "process.mean": self.process.mean,
        }
        for name, distance in distances.items():
            if distance is not None and distance / tick > 1e15:
                raise ValueError(f"{name} {distance} is more than 1e15 ticks of {self.tick_size}")
        lot = float(self.lot_size)
        for name, size in (("flow.size", self.flow.size), ("liquidity.size", self.liquidity.size)):
            if size / lot > 1e15:
                raise ValueError(f"{name} {size} is more than 1e15 lots of {self.lot_size}")
        return self


class SimParams(ProfileParams, _Closed):
    markets: dict[str, SimMarketParams] = Field(
        min_length=1, description="Markets of this venue by symbol, e.g. BTC/USDT."
    )
    latency: LatencyParams = Field(default_factory=LatencyParams)
    maker_fee_bps: Decimal = Field(
        Decimal(0),
        gt=-10_000,
        lt=10_000,
        description="Maker fee in bps of notional; negative is a rebate (under 100% either way).",
    )
    taker_fee_bps: Decimal = Field(
        Decimal(5),
        gt=-10_000,
        lt=10_000,
        description="Taker fee in bps of notional (under 100% either way).",
    )
    self_trade_prevention: Literal["cancel_resting", "cancel_taker", "none"] = Field(
        "cancel_resting", description="What happens when our orders would trade together."
    )

    @model_validator(mode="after")
    def _symbols(self) -> SimParams:
        for symbol in self.markets:
            if symbol.count("/") != 1 or not all(symbol.split("/")):
                raise ValueError(f"market {symbol!r}: symbols are BASE/QUOTE, e.g. BTC/USDT")
        return self


class _SimMarket:
    """One market of the venue: engine, mid path, flow generators and our book copy."""

    def __init__(self, venue: SimExchange, instrument: Instrument, params: SimMarketParams) -> None:
        self.venue = venue
        self.instrument = instrument
        self.params = params
        self.engine = MatchingEngine(
            instrument, self_trade_prevention=venue.params.self_trade_prevention
        )
        self.book = L2Book(instrument)
        seed, name, symbol = venue.ctx.seed, venue.name, instrument.symbol
        self.rng_flow = market_rng(seed, name, symbol, "flow")
        self.rng_latency = market_rng(seed, name, symbol, "latency")
        tick = float(instrument.tick_size)
        binary = instrument.kind is InstrumentKind.BINARY
        self.path = MidPath(
            params.initial_price,
            params.process,
            binary,
            market_rng(seed, name, symbol, "mid"),
            floor=tick,
            ceiling=1 - tick if binary else None,
        )
        price = params.initial_price
        self.reach = params.flow.reach or (4 * tick + 5e-4 * price)
        liq = params.liquidity
        self.bg_distance = liq.distance if liq.distance is not None else 3 * tick + 8e-4 * price
        self.bg_spacing = liq.spacing or 2 * tick
        self.bg_orders: dict[tuple[Side, int], str] = {}
        self.ids = itertools.count(1)
        self.down = False
        self.stream_last: dict[str, int] = {}

    # -- helpers ---------------------------------------------------------------------
    def t(self) -> float:
        return (self.venue.clock.now_ns() - self.venue.start_ns) / 1e9

    def mid(self) -> float:
        return self.path.at(self.t())

    def size_lots(self, mean: float) -> int:
        return self.sizes_lots(mean, 1)[0]

    def sizes_lots(self, mean: float, count: int) -> list[int]:
        """``count`` order sizes around ``mean`` (lognormal noise, one draw each, in one
        call: the same numbers, in the same order, as ``count`` single draws)."""
        noise = self.params.flow.size_noise
        round_qty = self.instrument.round_qty
        if not noise:
            return [max(1, round_qty(mean))] * count
        draws = self.rng_flow.lognormal(-0.5 * noise * noise, noise, size=count).tolist()
        return [max(1, round_qty(mean * draw)) for draw in draws]

    # -- background liquidity ----------------------------------------------------------
    def refresh_background(self) -> None:
        """Other makers keep levels around the mid; only changed levels are touched."""
        round_price = self.instrument.round_price
        mid = self.mid()
        liq = self.params.liquidity
        wanted: dict[tuple[Side, int], int] = {}
        distance, spacing = self.bg_distance, self.bg_spacing
        for i in range(liq.levels):
            offset = distance + i * spacing
            wanted.setdefault((_BUY, round_price(mid - offset, _BUY)), 0)
            wanted.setdefault((_SELL, round_price(mid + offset, _SELL)), 0)
        engine = self.engine
        placed = self.bg_orders
        for key in [k for k in placed if k not in wanted]:
            engine.cancel(placed.pop(key))
        # Background levels never cross each other (bids below the mid, asks above), so
        # which levels need an order is known before any is placed: their sizes are
        # drawn in one call.
        get = engine.get
        todo = [k for k in wanted if (known := placed.get(k)) is None or get(known) is None]
        if not todo:
            return
        now = self.venue.clock.now_ns()
        report = self.venue._report_trades
        for (side, ticks), lots in zip(todo, self.sizes_lots(liq.size, len(todo)), strict=True):
            order_id = f"bg{next(self.ids)}"
            order = SimOrder(
                order_id=order_id,
                owner=BACKGROUND,
                side=side,
                order_type=OrderType.LIMIT,
                tif=TimeInForce.GTC,
                price_ticks=ticks,
                qty_lots=lots,
                ts_ns=now,
            )
            result = engine.submit(order)
            if result.resting:
                placed[(side, ticks)] = order_id
            report(self, result.trades)

    def step(self) -> None:
        self.refresh_background()
        self.venue._publish(self)
        self.venue.clock.call_later(int(self.path.dt * 1e9), self.step)

    # -- takers ----------------------------------------------------------------------------
    def schedule_taker(self) -> None:
        rate = 2 * self.params.flow.arrival_rate
        if rate <= 0:
            return
        wait = float(self.rng_flow.exponential(1.0 / rate))
        self.venue.clock.call_later(int(wait * 1e9), self.taker_arrives)

    def taker_arrives(self) -> None:
        flow = self.params.flow
        rng = self.rng_flow
        t = self.t()
        mid = self.path.at(t)
        if rng.random() < flow.informed_share:
            ahead = self.path.at(t + float(flow.informed_horizon))
            side = Side.BUY if ahead >= mid else Side.SELL
        else:
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
        reach = float(rng.exponential(self.reach))
        limit = mid + reach if side is Side.BUY else mid - reach
        inst = self.instrument
        # A taker's limit is rounded aggressively: it pays up to, not beyond, its reach.
        ticks = inst.clamp_ticks(inst.round_price(limit, side.opposite))
        order = SimOrder(
            order_id=f"tk{next(self.ids)}",
            owner=TAKER,
            side=side,
            order_type=OrderType.LIMIT,
            tif=TimeInForce.IOC,
            price_ticks=ticks,
            qty_lots=self.size_lots(flow.size),
            ts_ns=self.venue.clock.now_ns(),
        )
        result = self.engine.submit(order)
        self.venue._report_trades(self, result.trades)
        self.venue._publish(self)
        self.schedule_taker()


class SimExchange(SimulatedVenue[SimParams], ActionDispatch):
    """The ``sim`` venue: a matching engine per market fed by synthetic order flow."""

    Params = SimParams
    simulated = True  # its matching engine runs inside the adapter

    def __init__(self, params: SimParams, ctx: VenueContext) -> None:
        super().__init__(params, ctx)
        self.maker_rate = params.maker_fee_bps * BPS
        self.taker_rate = params.taker_fee_bps * BPS
        self.instruments = {}
        self.markets: dict[str, _SimMarket] = {}
        for symbol, mp in params.markets.items():
            base, quote = symbol.split("/")
            inst = Instrument(
                venue=self.name,
                symbol=symbol,
                base=base,
                quote=quote,
                tick_size=mp.tick_size,
                lot_size=mp.lot_size,
                min_qty=mp.min_qty,
                min_notional=params.min_notional_for(mp.min_notional),
                kind=InstrumentKind.BINARY if mp.kind == "binary" else InstrumentKind.SPOT,
                maker_fee=self.maker_rate,
                taker_fee=self.taker_rate,
            )
            self.instruments[symbol] = inst
        self.books = {}
        # Our working orders by client id, with their market.
        self._our_orders: dict[str, tuple[_SimMarket, Order]] = {}
        self.limits = limits_for(params)

    @classmethod
    def declared_symbols(cls, params: SimParams) -> list[str]:
        return list(params.markets)

    # -- adapter contract --------------------------------------------------------------
    async def connect(self, sink: VenueSink) -> None:
        self._start(sink)
        wanted = self.ctx.symbols or list(self.params.markets)
        for symbol in wanted:
            market = _SimMarket(self, self.instruments[symbol], self.params.markets[symbol])
            self.markets[symbol] = market
            self.books[symbol] = market.book
            market.refresh_background()
            market.engine.drain_level_changes()
            bids = market.engine.levels(Side.BUY, 10_000)
            asks = market.engine.levels(Side.SELL, 10_000)
            market.book.apply_snapshot(bids, asks, self.start_ns)
            self._set_state(market.book, BookState.LIVE, "snapshot")
            self.clock.call_later(int(market.path.dt * 1e9), market.step)
            market.schedule_taker()
            for outage in market.params.outages:
                start = self.start_ns + int(float(outage.at) * 1e9)
                self.clock.call_at(start, self._outage_begin, market)
                self.clock.call_at(start + int(float(outage.duration) * 1e9), self._resync, market)

    def submit(self, actions: Sequence[OrderAction]) -> None:
        for action in actions:
            market = self._market_of(action)
            when = self._stream_time(market, "out") if market else self.clock.now_ns()
            self.clock.call_at(when, self._arrive, action)

    async def fetch_open_orders(self) -> list[OrderUpdate]:
        now = self.clock.now_ns()
        working = self.reports.working
        out = []
        for market, order in self._our_orders.values():
            sim = market.engine.get(order.client_id)
            if sim is not None:
                out.append(
                    working(
                        order.client_id,
                        sim.filled_lots,
                        sim.price_ticks,
                        sim.qty_lots,
                        now,
                        order.symbol,
                    )
                )
        return out

    # -- internals ---------------------------------------------------------------------
    def _market_of(self, action: OrderAction) -> _SimMarket | None:
        if isinstance(action, PlaceOrder):
            symbol = action.order.symbol
        elif isinstance(action, ReplaceOrder):
            symbol = action.new.symbol
        elif isinstance(action, CancelOrder):
            symbol = action.symbol
        else:
            symbol = action.symbol or ""
        return self.markets.get(symbol)

    def _delay(self, market: _SimMarket, base_ms: float) -> int:
        jitter = self.params.latency.jitter_ms
        extra = float(market.rng_latency.random()) * jitter if jitter else 0.0
        return int((base_ms + extra) * 1e6)

    def _stream_time(self, market: _SimMarket, stream: str) -> int:
        """Delivery time on one of the market's streams: jittered but never earlier than
        the previous message of that stream, as on a real (TCP) connection."""
        base = (
            self.params.latency.market_data_ms if stream == "md" else self.params.latency.order_ms
        )
        when = self.clock.now_ns() + self._delay(market, base)
        last = market.stream_last.get(stream, 0)
        if when < last:
            when = last
        market.stream_last[stream] = when
        return when

    def report_at(self, market: _SimMarket) -> int:
        return self._stream_time(market, "private")

    def _publish(self, market: _SimMarket) -> None:
        changes = market.engine.drain_level_changes()
        if not changes or market.down:
            return
        self.clock.call_at(self._stream_time(market, "md"), self._deliver_book, market, changes)

    def _deliver_book(self, market: _SimMarket, changes: list[tuple[Side, int, int]]) -> None:
        if market.down or self.sink is None:
            return
        book = market.book
        for side, ticks, lots in changes:
            book.set_level(side, ticks, lots)
        book.ts_ns = self.clock.now_ns()
        book.update_count += 1
        if book.state is BookState.LIVE:
            self.sink.on_book(book)

    def _outage_begin(self, market: _SimMarket) -> None:
        market.down = True
        self._set_state(market.book, BookState.STALE, "market-data feed down")

    def _resync(self, market: _SimMarket) -> None:
        market.down = False
        self._set_state(market.book, BookState.RESYNCING, "feed back, fetching snapshot")
        market.engine.drain_level_changes()
        bids = market.engine.levels(Side.BUY, 10_000)
        asks = market.engine.levels(Side.SELL, 10_000)
        market.book.apply_snapshot(bids, asks, self.clock.now_ns())
        self._set_state(market.book, BookState.LIVE, "resynced from snapshot")
        if self.sink is not None:
            self.sink.on_book(market.book)

    def _arrive(self, action: OrderAction) -> None:
        """An action reaches the venue."""
        if self.limits is not None:
            left = self._within_limits(action)
            if left is None:
                return
            action = left
        self._carry_out(action)

    def execute_cancel_all(self, symbol: str | None) -> None:
        for name, market in self.markets.items():
            if symbol in (None, name):
                for sim in market.engine.cancel_all(US):
                    self._closed(sim.order_id)
                    self._report(sim.order_id, OrderStatus.CANCELLED, sim.filled_lots, "", market)
                self._publish(market)

    def _within_limits(self, action: OrderAction) -> OrderAction | None:
        """Charge ``action`` to the venue profile's limits and report what they refuse as
        the venue would. Returns what is left to carry out."""
        assert self.limits is not None
        left, refusals = screen(
            self.limits,
            action,
            self.clock.now_ns(),
            self.markets,
            lambda symbol: [o.order_id for o in self.markets[symbol].engine.orders_of(US)],
        )
        for refusal in refusals:
            market = self.markets.get(refusal.symbol)
            if market is not None:
                sim = market.engine.get(refusal.client_id)
                self._refused(refusal, None if sim is None else sim.filled_lots, market)
        return left

    def execute_place(self, order: Order) -> None:
        market = self.markets.get(order.symbol)
        if market is None:
            return
        client_id = order.client_id
        problem = market.instrument.check_order(order.price_ticks, order.qty_lots)
        if problem is not None:
            self._rejected(client_id)
            self._report(client_id, OrderStatus.REJECTED, 0, problem, market)
            return
        sim = SimOrder(
            order_id=client_id,
            owner=US,
            side=order.side,
            order_type=order.order_type,
            tif=order.tif,
            price_ticks=order.price_ticks,
            qty_lots=order.qty_lots,
            ts_ns=self.clock.now_ns(),
        )
        result: SubmitResult = market.engine.submit(sim)
        if not result.accepted:
            self._rejected(client_id)
            self._report(client_id, OrderStatus.REJECTED, 0, result.reason, market)
            return
        self._our_orders[client_id] = (market, order)
        if self.limits is not None and result.resting:
            self.limits.opened(client_id, order.symbol)
        self._report(client_id, OrderStatus.OPEN, 0, "", market)
        self._report_trades(market, result.trades)
        for cancelled in result.stp_cancelled:
            if cancelled.owner == US:
                self._closed(cancelled.order_id)
                self._report(
                    cancelled.order_id,
                    OrderStatus.CANCELLED,
                    cancelled.filled_lots,
                    "self-trade prevention",
                    market,
                )
        if not result.resting:
            left = result.cancelled_remainder_lots
            if left:
                filled = order.qty_lots - left
                self._report(client_id, OrderStatus.EXPIRED, filled, "IOC remainder", market)
            self._our_orders.pop(client_id, None)
            self._closed(client_id)
        self._publish(market)

    def execute_cancel(self, client_id: str, symbol: str) -> None:
        market = self.markets.get(symbol)
        if market is None:
            return
        sim = market.engine.cancel(client_id)
        if sim is None:
            # Already filled: its FILLED report is on the way and settles the pending cancel.
            return
        self._our_orders.pop(client_id, None)
        self._closed(client_id)
        self._report(client_id, OrderStatus.CANCELLED, sim.filled_lots, "", market)
        self._publish(market)

    def _report_trades(self, market: _SimMarket, trades: list[Trade]) -> None:
        if not trades:
            return
        now = self.clock.now_ns()
        inst = market.instrument
        fill = self.reports.fill
        for trade in trades:
            if self.sink is not None:
                self.clock.call_at(
                    self._stream_time(market, "md"),
                    self.sink.on_trade,
                    self.name,
                    inst.symbol,
                    trade.price_ticks,
                    trade.qty_lots,
                    trade.aggressor,
                    now,
                )
            for owner, order_id, liquidity, remaining in (
                (
                    trade.maker_owner,
                    trade.maker_order_id,
                    Liquidity.MAKER,
                    trade.maker_remaining_lots,
                ),
                (
                    trade.taker_owner,
                    trade.taker_order_id,
                    Liquidity.TAKER,
                    trade.taker_remaining_lots,
                ),
            ):
                if owner != US:
                    continue
                entry = self._our_orders.get(order_id)
                if entry is None:
                    continue
                order = entry[1]
                rate = self.maker_rate if liquidity is Liquidity.MAKER else self.taker_rate
                price, lots = trade.price_ticks, trade.qty_lots
                fee = inst.notional(price, lots) * rate
                when = self._stream_time(market, "private")
                fill(inst, order, price, lots, fee, liquidity, now, when)
                if self.limits is not None:
                    self.limits.filled(order_id, now)
                if remaining == 0:
                    self._our_orders.pop(order_id, None)
                    self._closed(order_id)
                    self._report(order_id, OrderStatus.FILLED, order.qty_lots, "", market)
