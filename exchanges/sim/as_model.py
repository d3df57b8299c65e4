"""The ``as_model`` venue: the market of Avellaneda and Stoikov (2008) — an arithmetic
Brownian mid and one-unit fills with probability A·exp(−kδ)·dt per step — for studies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

import quoteforge
from quoteforge.book import BookState, L2Book
from quoteforge.clock import NS
from quoteforge.exchange import OrderAction, VenueContext, VenueSink
from quoteforge.exchanges.profiles import ProfileParams, limits_for, screen
from quoteforge.exchanges.sim.base import ActionDispatch, SimulatedVenue
from quoteforge.exchanges.sim.flow import market_rng
from quoteforge.manifest import Duration
from quoteforge.model import (
    Instrument,
    Liquidity,
    Order,
    OrderStatus,
    Side,
    TimeInForce,
)
from quoteforge.registry import Register

__all__ = ["AsModelExchange", "AsModelParams"]

_NO_FEE = Decimal(0)  # the model charges no fees


class AsModelParams(ProfileParams):
    """Parameters of ``as_model`` (defaults: the paper's simulation)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    symbol: str = Field("STOCK/USD", description="Market symbol (BASE/QUOTE).")
    paths: int = Field(
        1,
        ge=1,
        le=100_000,
        description="Independent paths simulated in one run, each its own market "
        "(BASE-0001/QUOTE, ...); a strategy with symbols ['*'] quotes each of them.",
    )
    initial_price: float = Field(100.0, gt=0, description="s: mid at time 0.")
    sigma: float = Field(
        2.0, ge=0, le=1e9, description="σ: mid volatility, price units per √second."
    )
    dt: Duration = Field(Duration(0.005), ge=0.0001, description="Time step (at least 0.1ms).")
    horizon: Duration = Field(
        Duration(1.0), gt=0, description="T: the venue stops stepping after this much run time."
    )
    a: float = Field(140.0, ge=0, description="A: fill intensity at zero distance, per second.")
    k: float = Field(1.5, gt=0, description="k: decay of the fill intensity per price unit.")
    increments: Literal["binomial", "gaussian"] = Field(
        "binomial",
        description="Mid steps of ±σ√dt with equal probability (the paper) or N(0, σ²dt).",
    )
    tick_size: Decimal = Field(
        Decimal("0.0001"), gt=0, description="Price grid; fine so rounding stays negligible."
    )
    lot_size: Decimal = Field(Decimal(1), gt=0, description="Quantity grid (one unit per fill).")

    @model_validator(mode="after")
    def _check(self) -> AsModelParams:
        if self.symbol.count("/") != 1 or not all(self.symbol.split("/")):
            raise ValueError(f"symbol {self.symbol!r}: write BASE/QUOTE, e.g. STOCK/USD")
        if float(self.dt) <= 0:
            raise ValueError("dt must be > 0, e.g. 0.005")
        if float(self.horizon) < float(self.dt):
            raise ValueError(f"horizon ({self.horizon}s) must be at least one step dt ({self.dt}s)")
        return self

    def symbols(self) -> list[str]:
        if self.paths == 1:
            return [self.symbol]
        base, quote = self.symbol.split("/")
        width = len(str(self.paths))
        return [f"{base}-{i:0{width}d}/{quote}" for i in range(1, self.paths + 1)]


class AsModelExchange(SimulatedVenue[AsModelParams], ActionDispatch):
    """Each step: resting quotes fill with probability A·exp(−kδ)·dt (δ measured from
    the mid they were quoted against), then the mid moves. No latency, no fees."""

    Params = AsModelParams
    simulated = True  # its matching engine runs inside the adapter

    def __init__(self, params: AsModelParams, ctx: VenueContext) -> None:
        super().__init__(params, ctx)
        symbols = params.symbols()
        base_quote = [s.split("/") for s in symbols]
        self.instruments = {
            s: Instrument(
                venue=self.name,
                symbol=s,
                base=b,
                quote=q,
                tick_size=params.tick_size,
                lot_size=params.lot_size,
            )
            for s, (b, q) in zip(symbols, base_quote, strict=True)
        }
        self.symbols = symbols
        self.books = {s: L2Book(inst) for s, inst in self.instruments.items()}
        self.mids = np.full(len(symbols), params.initial_price)
        self._rng_mid = market_rng(ctx.seed, self.name, params.symbol, "mid")
        self._rng_fill = market_rng(ctx.seed, self.name, params.symbol, "fills")
        # Our resting orders per path: client id -> order.
        self._working: list[dict[str, Order]] = [{} for _ in symbols]
        self._path = {s: i for i, s in enumerate(symbols)}
        self._tick = float(params.tick_size)
        self._steps_left = round(float(params.horizon) / float(params.dt))
        self.steps = 0
        self.limits = limits_for(params, lambda symbol: len(self._resting(symbol)))

    @classmethod
    def declared_symbols(cls, params: AsModelParams) -> list[str]:
        return params.symbols()

    # -- adapter contract ----------------------------------------------------------------
    async def connect(self, sink: VenueSink) -> None:
        self._start(sink)
        now = self.start_ns
        for i, book in enumerate(self.books.values()):
            self._show(i, book, now)
            self._set_state(book, BookState.LIVE, "model start")
        self.clock.call_later(int(float(self.params.dt) * NS), self._step)

    def submit(self, actions: Sequence[OrderAction]) -> None:
        # The model has no latency: actions apply at once, reports follow in order.
        limits = self.limits
        for action in actions:
            if limits is not None:
                left, refusals = screen(
                    limits, action, self.clock.now_ns(), self.symbols, self._resting
                )
                for refusal in refusals:
                    i = self._path.get(refusal.symbol)
                    order = None if i is None else self._working[i].get(refusal.client_id)
                    self._refused(refusal, None if order is None else order.filled_lots)
                if left is None:
                    continue
                action = left
            self._carry_out(action)

    def _resting(self, symbol: str) -> list[str]:
        i = self._path.get(symbol)
        return [] if i is None else list(self._working[i])

    def report_at(self, market: object) -> int:
        return self.clock.now_ns()

    # -- the model -------------------------------------------------------------------------
    def _show(self, i: int, book: L2Book, ts_ns: int) -> None:
        centre = round(float(self.mids[i]) / self._tick)
        book.apply_snapshot(((centre - 1, 1_000_000),), ((centre + 1, 1_000_000),), ts_ns)

    def _step(self) -> None:
        if self._steps_left <= 0 or self.sink is None:
            return
        self._steps_left -= 1
        self.steps += 1
        p = self.params
        dt = float(p.dt)
        now = self.clock.now_ns()
        # 1. Fills: each resting quote is hit with probability A*exp(-k*delta)*dt, delta
        #    taken from the mid it was quoted against (the mid before this step's move).
        candidates: list[tuple[int, Order, float]] = []
        for i, working in enumerate(self._working):
            if not working:
                continue
            mid = float(self.mids[i])
            for order in working.values():
                if order.price_ticks is None:
                    continue  # the model quotes limit orders only
                price = order.price_ticks * self._tick
                delta = mid - price if order.side is Side.BUY else price - mid
                candidates.append((i, order, delta))
        if candidates:
            draws = self._rng_fill.random(len(candidates))
            for (i, order, delta), u in zip(candidates, draws, strict=True):
                if u < min(1.0, p.a * math.exp(-p.k * delta) * dt):
                    self._fill(i, order, now)
        # 2. The mid moves.
        n = len(self.mids)
        step = p.sigma * math.sqrt(dt)
        if p.increments == "binomial":
            self.mids += np.where(self._rng_mid.random(n) < 0.5, step, -step)
        else:
            self.mids += step * self._rng_mid.standard_normal(n)
        np.maximum(self.mids, 2 * self._tick, out=self.mids)
        # 3. New books; fills were scheduled first, so the strategy sees them first.
        for i, book in enumerate(self.books.values()):
            self._show(i, book, now)
            self.clock.call_at(now, self._notify, book)
        self.clock.call_later(int(dt * NS), self._step)

    def _notify(self, book: L2Book) -> None:
        if self.sink is not None:
            book.update_count += 1
            self.sink.on_book(book)

    def _fill(self, i: int, order: Order, now: int) -> None:
        assert order.price_ticks is not None, "only limit orders rest in the model"
        lots = min(order.qty_lots, max(1, int(1 / float(self.params.lot_size))))
        inst = self.instruments[order.symbol]
        order.filled_lots += lots
        done = order.filled_lots >= order.qty_lots
        if self.limits is not None:
            self.limits.filled(order.client_id, now)
            if done:
                self.limits.closed(order.client_id)
        if done:
            del self._working[i][order.client_id]
        self.reports.fill(inst, order, order.price_ticks, lots, _NO_FEE, Liquidity.MAKER, now, now)
        if done:
            self._report(order.client_id, OrderStatus.FILLED, order.filled_lots)

    # -- orders ------------------------------------------------------------------------------
    def execute_cancel_all(self, symbol: str | None) -> None:
        for i, working in enumerate(self._working):
            if symbol not in (None, self.symbols[i]):
                continue
            for client_id in list(working):
                self.execute_cancel(client_id, self.symbols[i])

    def execute_place(self, order: Order) -> None:
        i = self._path.get(order.symbol)
        if i is None:
            self._report(order.client_id, OrderStatus.REJECTED, 0, f"no market {order.symbol}")
            return
        problem = self.instruments[order.symbol].check_order(order.price_ticks, order.qty_lots)
        if order.price_ticks is None:
            problem = "as_model takes limit orders only"
        if order.tif is TimeInForce.IOC:
            problem = "as_model has no liquidity to take: quote limit orders"
        if problem is not None:
            self._rejected(order.client_id)
            self._report(order.client_id, OrderStatus.REJECTED, 0, problem)
            return
        # The venue keeps its own copy: the order manager owns the run's Order objects.
        resting = Order(
            client_id=order.client_id,
            venue=order.venue,
            symbol=order.symbol,
            side=order.side,
            qty_lots=order.qty_lots,
            price_ticks=order.price_ticks,
            strategy=order.strategy,
        )
        self._working[i][order.client_id] = resting
        self._report(order.client_id, OrderStatus.OPEN, 0)

    def execute_cancel(self, client_id: str, symbol: str) -> None:
        i = self._path.get(symbol)
        if i is None:
            return
        order = self._working[i].pop(client_id, None)
        if order is None:
            return  # already filled: its FILLED report settles the pending cancel
        self._report(client_id, OrderStatus.CANCELLED, order.filled_lots)


def _build(params: AsModelParams, ctx: VenueContext) -> AsModelExchange:
    return AsModelExchange(params, ctx)


_build.declared_symbols = AsModelExchange.declared_symbols  # type: ignore[attr-defined]


@quoteforge.hookimpl
def quoteforge_register_exchanges(register: Register) -> None:
    register(
        "as_model",
        _build,
        params=AsModelParams,
        description="The Avellaneda-Stoikov (2008) market model: Brownian mid, "
        "exponential fill intensity.",
    )
