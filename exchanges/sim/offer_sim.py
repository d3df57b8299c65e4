"""The ``offer_sim`` venue: thousands of tickers whose counterparties stream firm offers,
with competing takers, lazily refreshed reference books and an optional HTTP price service.
"""

from __future__ import annotations

import itertools
import math
import string
from collections import deque
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import quoteforge
from quoteforge.book import BookState
from quoteforge.clock import NS
from quoteforge.exchange import (
    OrderAction,
    PlaceOrder,
    VenueContext,
    VenueSink,
)
from quoteforge.exchanges.profiles import ProfileParams, limits_for, screen
from quoteforge.exchanges.sim.base import BPS, ActionDispatch, SimulatedVenue
from quoteforge.exchanges.sim.flow import market_rng
from quoteforge.exchanges.sim.midbook import LazyMidBook, MidFeed
from quoteforge.manifest import Duration
from quoteforge.model import (
    Instrument,
    Liquidity,
    Offer,
    Order,
    OrderStatus,
    Side,
)
from quoteforge.registry import Register

__all__ = [
    "LazyMidBook",
    "OfferSimExchange",
    "OfferSimParams",
    "ticker_names",
]

# Outcome reasons a strategy can match on: the race is lost, or the offer ran out.
TAKEN = "offer already taken"
EXPIRED = "offer expired"


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class OfferLatencyParams(_Closed):
    market_data_ms: float = Field(
        2.0, ge=0, le=60_000, description="Venue -> us delay of each offer."
    )
    order_ms: float = Field(
        5.0, ge=0, le=60_000, description="One-way delay of our take orders and of their reports."
    )
    jitter_ms: float = Field(
        1.0, ge=0, le=60_000, description="Uniform random extra delay, 0..jitter."
    )


class OfferFlowParams(_Closed):
    rate: float = Field(
        2000.0,
        ge=0,
        le=100_000,
        description="Offers per second over the whole venue (Poisson), at most 100000.",
    )
    noise: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Standard deviation of an offer's relative distance from the mid; an "
        "offer priced on the wrong side of the mid is a deal for the taker.",
    )
    bias: float = Field(
        0.002,
        gt=-1,
        lt=1,
        description="Mean relative margin counterparties ask for: a sell offer is priced "
        "mid*(1 + bias + noise*z), a buy offer mid*(1 - bias - noise*z).",
    )
    notional: float = Field(
        5000.0, gt=0, description="Mean offer size in quote currency (log-normal sizes)."
    )
    size_noise: float = Field(0.5, ge=0, le=10, description="Log-normal dispersion of offer sizes.")
    expiry: Duration = Field(
        Duration(0.5),
        ge=0.001,
        description="Mean lifetime of an offer (uniform in 0.5x..1.5x), at least 1ms.",
    )
    activity_skew: float = Field(
        1.0,
        ge=0,
        le=10,
        description="Zipf exponent of ticker activity: the r-th busiest ticker gets a share "
        "of offers proportional to 1/r^skew (0: all equally busy).",
    )
    batch: Duration = Field(
        Duration(0.01),
        ge=0.001,
        description="Offers are drawn in batches of this much run time (at least 1ms).",
    )


class CompetitorParams(_Closed):
    edge: float = Field(
        0.006,
        ge=0,
        description="Competing takers go for offers at least this much better than the mid "
        "(relative).",
    )
    share: float = Field(
        0.9, ge=0, le=1, description="Probability that such an offer attracts a competitor."
    )
    reaction_ms: float = Field(
        25.0, ge=0, le=60_000, description="Mean extra reaction time of a competitor (exponential)."
    )
    min_reaction_ms: float = Field(
        3.0,
        ge=0,
        le=60_000,
        description="Fastest possible competitor reaction after the offer appears.",
    )


class MidParams(_Closed):
    price_range: tuple[float, float] = Field(
        (5.0, 500.0), description="Initial mids are log-uniform in [low, high]."
    )
    sigma_range: tuple[float, float] = Field(
        (2e-4, 1e-3),
        description="Per-ticker volatility of log-mid per sqrt(second), log-uniform in "
        "[low, high]; busier tickers are drawn from the upper end.",
    )
    volatile_share: float = Field(
        0.02, ge=0, le=1, description="Share of tickers that are far more volatile."
    )
    volatile_sigma: float = Field(
        0.01, ge=0, le=1, description="Volatility of those tickers per sqrt(second), at most 1."
    )
    step: Duration = Field(
        Duration(1.0), ge=0.001, description="Interval of the vectorised mid step (>= 1ms)."
    )

    @field_validator("price_range", "sigma_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"expected 0 < low <= high, got [{low}, {high}]")
        if high > 1e12:
            raise ValueError(f"expected high <= 1e12, got {high}")
        return value

    @field_validator("sigma_range")
    @classmethod
    def _sane_sigma(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] > 1:
            raise ValueError(f"a volatility above 1 per sqrt(second) overflows, got {value[1]}")
        return value


class HttpServiceParams(_Closed):
    enabled: bool = Field(
        False,
        description="Serve reference prices over HTTP (GET /all, GET /{ticker}); for "
        "wall-clock runs (mode: live), virtual-time runs should use the book price source.",
    )
    host: str = Field("127.0.0.1", description="Interface the price service listens on.")
    port: int = Field(
        0, ge=0, le=65535, description="Port of the price service (0: any free port)."
    )


class OfferSimParams(ProfileParams, _Closed):
    tickers: int | list[str] = Field(
        100,
        description="How many tickers (generated names AAA, AAB, ...; at most 100000) or an "
        "explicit list.",
    )
    currency: str = Field("USD", description="Quote currency of every ticker.")
    tick_size: Decimal = Field(Decimal("0.01"), gt=0, description="Price increment.")
    lot_size: Decimal = Field(Decimal("1"), gt=0, description="Quantity increment.")
    taker_fee_bps: Decimal = Field(
        Decimal(1),
        gt=-10_000,
        lt=10_000,
        description="Fee on taken offers, bps of notional (less than 100% either way).",
    )
    mids: MidParams = Field(default_factory=lambda: MidParams.model_validate({}))
    offers: OfferFlowParams = Field(default_factory=lambda: OfferFlowParams.model_validate({}))
    competitors: CompetitorParams = Field(
        default_factory=lambda: CompetitorParams.model_validate({})
    )
    latency: OfferLatencyParams = Field(
        default_factory=lambda: OfferLatencyParams.model_validate({})
    )
    book_depth: float = Field(
        1000.0, gt=0, description="Quantity shown on each side of a reference book."
    )
    http: HttpServiceParams = Field(default_factory=lambda: HttpServiceParams.model_validate({}))

    @field_validator("tickers")
    @classmethod
    def _tickers(cls, value: int | list[str]) -> int | list[str]:
        if isinstance(value, int):
            # Generated names allow 26**5, but 2 s of a million tickers took over 30 s.
            if not 1 <= value <= 100_000:
                raise ValueError(f"ticker count must be in 1..100000, got {value}")
            return value
        if not value:
            raise ValueError("the ticker list is empty")
        seen: set[str] = set()
        for name in value:
            if not name or "/" in name or ":" in name or not name.isprintable():
                raise ValueError(f"ticker {name!r}: use plain names such as AAPL (no '/' or ':')")
            if name in seen:
                raise ValueError(f"ticker {name!r} is listed twice")
            seen.add(name)
        return value

    @model_validator(mode="after")
    def _currency(self) -> OfferSimParams:
        if not self.currency.isalnum():
            raise ValueError(f"currency {self.currency!r} must be alphanumeric, e.g. USD")
        return self

    def ticker_list(self) -> list[str]:
        if isinstance(self.tickers, int):
            return ticker_names(self.tickers)
        return list(self.tickers)


def ticker_names(count: int) -> list[str]:
    """``count`` distinct ticker-like names: AAA..ZZZ, then AAAA.., deterministic."""
    letters = string.ascii_uppercase
    out: list[str] = []
    width = 3
    while len(out) < count:
        for combo in itertools.product(letters, repeat=width):
            out.append("".join(combo))
            if len(out) == count:
                break
        width += 1
    return out


_NEVER = 2**62  # the competitor time of an offer no competing taker goes for
_UNIFORM_BLOCK = 1024
_BUY = Side.BUY
_SELL = Side.SELL


class OfferSimExchange(SimulatedVenue[OfferSimParams], ActionDispatch):
    """The ``offer_sim`` venue: an offer stream over many tickers, filled by taking."""

    Params = OfferSimParams
    simulated = True  # its matching engine runs inside the adapter

    def __init__(self, params: OfferSimParams, ctx: VenueContext) -> None:
        super().__init__(params, ctx)
        self.taker_rate = params.taker_fee_bps * BPS
        self.tickers = params.ticker_list()
        self._index = {t: i for i, t in enumerate(self.tickers)}
        self.instruments = {
            t: Instrument(
                venue=self.name,
                symbol=t,
                base=t,
                quote=params.currency,
                tick_size=params.tick_size,
                lot_size=params.lot_size,
                taker_fee=self.taker_rate,
            )
            for t in self.tickers
        }
        seed, name = ctx.seed, self.name
        # The process is vectorised over tickers, so streams are per purpose, not per ticker.
        self._rng_setup = market_rng(seed, name, "*", "setup")
        self._rng_mid = market_rng(seed, name, "*", "mid")
        self._rng_offers = market_rng(seed, name, "*", "offers")
        self._rng_latency = market_rng(seed, name, "*", "latency")
        # Latency uniforms are drawn from the stream in blocks and used in order: the
        # same numbers as one draw each, at a fraction of the cost.
        self._uniforms: list[float] = []
        self._uniform_at = 0
        n = len(self.tickers)
        rng = self._rng_setup
        mp = params.mids
        lo, hi = mp.price_range
        mids = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
        # Activity by Zipf rank over a random permutation, so busyness is not alphabetical.
        ranks = rng.permutation(n) + 1.0
        weights = 1.0 / ranks**params.offers.activity_skew
        self.activity = weights / weights.sum()
        self._cdf = np.cumsum(self.activity)
        self._cdf[-1] = 1.0
        slo, shi = mp.sigma_range
        # Busier tickers sit at the upper end of the volatility range.
        busy = 1.0 - (ranks - 1.0) / max(1.0, n - 1.0)
        sigmas = np.exp(math.log(slo) + busy * (math.log(shi) - math.log(slo)))
        volatile = rng.random(n) < mp.volatile_share
        sigmas[volatile] = mp.volatile_sigma
        self.sigmas = sigmas
        self.volatile = [self.tickers[i] for i in np.flatnonzero(volatile)]
        self._step_s = float(mp.step)
        self.feed = MidFeed(mids, float(params.tick_size), 0)
        depth = max(1, int(Decimal(str(params.book_depth)) / params.lot_size))
        self.books = {}
        for t, i in self._index.items():
            book = LazyMidBook(self.instruments[t], self.feed, i, depth)
            self.books[t] = book
        # Live offers by id: (offer, when a competing taker takes it).
        self._offers: dict[str, tuple[Offer, int]] = {}
        self._expiry_queue: deque[tuple[int, str]] = deque()
        self._offer_seq = itertools.count(1)
        self._last_private = 0
        self._last_md = 0
        self._running = False
        self._http_runner: Any = None
        self.http_url: str | None = None
        self.offers_sent = 0
        self.taken_by_us = 0
        self.lost_races = 0
        # Take orders never rest: nothing counts as open.
        self.limits = limits_for(params, lambda symbol: 0)

    @classmethod
    def declared_symbols(cls, params: OfferSimParams) -> list[str]:
        return params.ticker_list()

    # -- adapter contract ----------------------------------------------------------------
    async def connect(self, sink: VenueSink) -> None:
        self._start(sink)
        self.feed.ts_ns = self.start_ns
        self._running = True
        for book in self.books.values():
            self._set_state(book, BookState.LIVE, "reference prices")
        self.clock.call_later(int(self._step_s * NS), self._step)
        self.clock.call_later(int(float(self.params.offers.batch) * NS), self._offer_batch)
        if self.params.http.enabled:
            await self._start_http()

    async def close(self) -> None:
        self._running = False
        await super().close()
        if self._http_runner is not None:
            runner, self._http_runner = self._http_runner, None
            await runner.cleanup()

    def submit(self, actions: Sequence[OrderAction]) -> None:
        for action in actions:
            when = self._stream_time("private_out")
            self.clock.call_at(when, self._arrive, action)

    # -- reference prices ----------------------------------------------------------------
    def mid(self, ticker: str) -> float:
        """The latent mid of ``ticker`` (what the reference book and the service show)."""
        i = self._index.get(ticker)
        if i is None:
            raise KeyError(f"{self.name}: no ticker {ticker!r}")
        return float(self.feed.mids[i])

    def _step(self) -> None:
        if not self._running:
            return
        feed = self.feed
        dt = self._step_s
        z = self._rng_mid.standard_normal(len(feed.mids))
        s = self.sigmas
        feed.mids *= np.exp(s * math.sqrt(dt) * z - 0.5 * s * s * dt)
        np.maximum(feed.mids, 2 * feed.tick, out=feed.mids)
        feed.step += 1
        feed.ts_ns = self.clock.now_ns()
        self.clock.call_later(int(dt * NS), self._step)

    # -- the offer stream ----------------------------------------------------------------
    def _offer_batch(self) -> None:
        if not self._running:
            return
        p = self.params
        flow = p.offers
        span_ns = int(float(flow.batch) * NS)
        now = self.clock.now_ns()
        self._purge(now)
        rng = self._rng_offers
        count = int(rng.poisson(flow.rate * float(flow.batch))) if flow.rate > 0 else 0
        if count:
            self._draw_offers(count, now, span_ns)
        self.clock.call_at(now + span_ns, self._offer_batch)

    def _draw_offers(self, count: int, now: int, span_ns: int) -> None:
        p = self.params
        flow = p.offers
        comp = p.competitors
        rng = self._rng_offers
        idx = np.searchsorted(self._cdf, rng.random(count), side="right")
        np.minimum(idx, len(self.tickers) - 1, out=idx)
        offsets = np.sort(rng.integers(0, max(1, span_ns), count))
        sells = rng.random(count) < 0.5
        z = rng.standard_normal(count)
        rel = flow.bias + flow.noise * z
        mids = self.feed.mids[idx]
        sign = np.where(sells, 1.0, -1.0)
        prices = mids * (1.0 + sign * rel)
        tick = self.feed.tick
        # Counterparties round in their own favour: sellers up, buyers down.
        ticks = np.where(sells, np.ceil(prices / tick - 1e-9), np.floor(prices / tick + 1e-9))
        ticks = np.maximum(ticks, 1)
        noise = flow.size_noise
        sizes = flow.notional / mids
        if noise:
            sizes = sizes * rng.lognormal(-0.5 * noise * noise, noise, count)
        lot = float(p.lot_size)
        lots = np.maximum(1, np.floor(sizes / lot + 1e-9)).astype(np.int64)
        life = float(flow.expiry) * rng.uniform(0.5, 1.5, count)
        # A deal for us is a deal for everyone: competitors race for the good ones.
        edge = -sign * (ticks * tick - mids) / mids
        contested = (edge >= comp.edge) & (rng.random(count) < comp.share)
        reaction = comp.min_reaction_ms + rng.exponential(max(comp.reaction_ms, 1e-9), count)
        tickers = self.tickers
        name = self.name
        latency = self.params.latency
        md_ms = latency.market_data_ms
        jitter = latency.jitter_ms
        # One latency draw per offer, in offer order, as _delay would make them.
        extras = [u * jitter for u in self._draw_uniforms(count)] if jitter else [0.0] * count
        offers = self._offers
        queue = self._expiry_queue
        call_at = self.clock.call_at
        deliver = self._deliver_offer
        seq = self._offer_seq
        last_md = self._last_md
        # Plain lists: indexing numpy arrays one element at a time is slow.
        for i, offset, sell, tk, lt, lf, cont, react, extra in zip(
            idx.tolist(),
            offsets.tolist(),
            sells.tolist(),
            ticks.tolist(),
            lots.tolist(),
            life.tolist(),
            contested.tolist(),
            reaction.tolist(),
            extras,
            strict=True,
        ):
            ts = now + offset
            offer_id = f"of{next(seq)}"
            expires = ts + int(lf * NS)
            offer = Offer(
                name, tickers[i], offer_id, _SELL if sell else _BUY, int(tk), lt, ts, expires
            )
            offers[offer_id] = (offer, ts + int(react * 1e6) if cont else _NEVER)
            queue.append((expires, offer_id))
            when = ts + int((md_ms + extra) * 1e6)
            if when < last_md:
                when = last_md
            last_md = when
            call_at(when, deliver, offer)
        self._last_md = last_md

    def _deliver_offer(self, offer: Offer) -> None:
        sink = self.sink
        if sink is None:
            return
        self.offers_sent += 1
        sink.on_offer(offer)

    def _purge(self, now: int) -> None:
        queue = self._expiry_queue
        offers = self._offers
        # Keep offers a little past expiry so a late take is told "expired", not "unknown".
        horizon = now - int(float(self.params.offers.expiry) * NS)
        while queue and queue[0][0] < horizon:
            offers.pop(queue.popleft()[1], None)

    # -- orders ----------------------------------------------------------------------------
    def _delay(self, base_ms: float) -> int:
        jitter = self.params.latency.jitter_ms
        extra = self._draw_uniforms(1)[0] * jitter if jitter else 0.0
        return int((base_ms + extra) * 1e6)

    def _draw_uniforms(self, n: int) -> list[float]:
        """The next ``n`` uniforms of the latency stream."""
        at = self._uniform_at
        block = self._uniforms
        if at + n > len(block):
            block = self._uniforms = (
                block[at:] + self._rng_latency.random(max(n, _UNIFORM_BLOCK)).tolist()
            )
            at = 0
        self._uniform_at = at + n
        return block[at : at + n]

    def _stream_time(self, stream: str) -> int:
        when = self.clock.now_ns() + self._delay(self.params.latency.order_ms)
        # Reports keep their order, as on one TCP connection.
        if stream == "private":
            when = max(when, self._last_private)
            self._last_private = when
        return when

    def report_at(self, market: object) -> int:
        return self._stream_time("private")

    def _arrive(self, action: OrderAction) -> None:
        limits = self.limits
        if limits is not None:
            left, refusals = screen(limits, action, self.clock.now_ns(), (), lambda _: ())
            for refusal in refusals:
                self._refused(refusal, 0)  # nothing rests: a refused cancel leaves no fill
            if left is None:
                return
            action = left
        if isinstance(action, PlaceOrder):
            fills = self.reports.fills
            before = len(fills)
            self._take(action.order)
            if limits is not None:
                # A take is done on arrival, filled (a first fill gives a Binance order
                # back to the unfilled count) or not.
                if len(fills) > before:
                    limits.filled(action.order.client_id, self.clock.now_ns())
                limits.closed(action.order.client_id)
        else:
            self._carry_out(action)

    def execute_place(self, order: Order) -> None:
        # The new order of a replace: every order here is a take.
        self._take(order)

    def execute_cancel(self, client_id: str, symbol: str) -> None:
        # Take orders are immediate-or-cancel: nothing ever rests to be cancelled.
        self._report(client_id, OrderStatus.CANCELLED, 0, "not working")

    def execute_cancel_all(self, symbol: str | None) -> None:
        """Nothing rests, so there is nothing to cancel and nothing to report."""

    def _take(self, order: Order) -> None:
        instrument = self.instruments.get(order.symbol)
        if instrument is None:
            self._report(order.client_id, OrderStatus.REJECTED, 0, f"unknown ticker {order.symbol}")
            return
        offer_id = order.extra.get("offer_id")
        if offer_id is None:
            self._report(
                order.client_id,
                OrderStatus.REJECTED,
                0,
                "offer_sim fills only offers: take one with ctx.take(..., offer_id=offer.offer_id)",
            )
            return
        live = self._offers.get(str(offer_id))
        if live is None or live[0].symbol != order.symbol:
            self._report(order.client_id, OrderStatus.REJECTED, 0, f"unknown offer {offer_id}")
            return
        offer, competitor_ns = live
        if order.side is offer.side:
            self._report(
                order.client_id,
                OrderStatus.REJECTED,
                0,
                f"offer {offer_id} is a {offer.side.name} offer: take it with the opposite side",
            )
            return
        price = order.price_ticks
        if price is None or (
            price < offer.price_ticks if order.side is Side.BUY else price > offer.price_ticks
        ):
            self._report(
                order.client_id,
                OrderStatus.REJECTED,
                0,
                f"limit {price} ticks is worse than offer {offer_id} at {offer.price_ticks}",
            )
            return
        now = self.clock.now_ns()
        if now >= competitor_ns:
            del self._offers[offer.offer_id]
            self.lost_races += 1
            self._report(order.client_id, OrderStatus.EXPIRED, 0, TAKEN)
            return
        if offer.expires_ns and now >= offer.expires_ns:
            self._report(order.client_id, OrderStatus.EXPIRED, 0, EXPIRED)
            return
        # A firm offer has one taker: we win it and it is gone.
        del self._offers[offer.offer_id]
        self.taken_by_us += 1
        lots = min(order.qty_lots, offer.qty_lots)
        price = offer.price_ticks
        fee = instrument.notional(price, lots) * self.taker_rate
        when = self._stream_time("private")
        self.reports.fill(instrument, order, price, lots, fee, Liquidity.TAKER, now, when)
        if lots < order.qty_lots:
            self._report(order.client_id, OrderStatus.EXPIRED, lots, "offer smaller than order")
        else:
            self._report(order.client_id, OrderStatus.FILLED, lots)

    # -- HTTP price service ------------------------------------------------------------------
    async def _start_http(self) -> None:
        try:
            from aiohttp import web
        except ImportError:
            raise RuntimeError(
                'offer_sim http price service needs aiohttp: pip install "quoteforge[dashboard]"'
            ) from None

        async def all_tickers(request: web.Request) -> web.Response:
            return web.json_response(self.tickers)

        async def one_ticker(request: web.Request) -> web.Response:
            ticker = request.match_info["ticker"]
            i = self._index.get(ticker)
            if i is None:
                return web.json_response(
                    {"error": f"unknown ticker {ticker!r}; GET /all lists them"}, status=404
                )
            tick = self.feed.tick
            price = round(float(self.feed.mids[i]) / tick) * tick
            return web.json_response(
                {"ticker": ticker, "price": round(price, 10), "time": self.feed.ts_ns / NS}
            )

        app = web.Application()
        app.router.add_get("/all", all_tickers)
        app.router.add_get("/{ticker}", one_ticker)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.params.http.host, self.params.http.port)
        await site.start()
        self._http_runner = runner
        host, port = runner.addresses[0][:2]
        self.http_url = f"http://{host}:{port}"
        logger.info("{}: price service on {}", self.name, self.http_url)


def _build(params: OfferSimParams, ctx: VenueContext) -> OfferSimExchange:
    return OfferSimExchange(params, ctx)


_build.declared_symbols = OfferSimExchange.declared_symbols  # type: ignore[attr-defined]


@quoteforge.hookimpl
def quoteforge_register_exchanges(register: Register) -> None:
    register(
        "offer_sim",
        _build,
        params=OfferSimParams,
        description="Simulated offer stream over many tickers: take offers, race competitors.",
    )
