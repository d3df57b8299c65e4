"""Price sources: the book source, the http source against the offer_sim price service
and against a local counting server (priority by recent offers, backoff on errors)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from quoteforge.book import BookState, L2Book
from quoteforge.clock import LiveClock, SimClock
from quoteforge.exchange import VenueContext
from quoteforge.exchanges.sim.offer_sim import OfferSimExchange, OfferSimParams
from quoteforge.model import Instrument, Offer, Side
from quoteforge.strategies.offer_taker import OfferTaker, OfferTakerParams
from quoteforge.strategies.pricesource import BookPriceSource, HttpPriceSource, HttpSourceParams
from quoteforge.strategy import Market, StrategyContext

NS = 1_000_000_000


class _Sink:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _market(symbol: str, bid: int, ask: int, ts: int) -> Market:
    inst = Instrument("v", symbol, symbol, "USD", Decimal("0.01"), Decimal("1"))
    book = L2Book(inst)
    book.apply_snapshot([(bid, 5)], [(ask, 5)], ts)
    book.state = BookState.LIVE
    return Market(inst, book, lambda: 0)


def test_book_source_reads_mid_and_book_time() -> None:
    m = _market("AAA", 9_999, 10_001, 123)
    source = BookPriceSource({m.key: m})
    assert source.price("AAA") == (pytest.approx(100.0), 123)
    assert source.price("ZZZ") is None
    m.book.state = BookState.STALE
    assert source.price("AAA") is None


async def test_book_source_over_offer_sim_refreshes_lazily() -> None:
    clock = SimClock(1_000 * NS)
    params = OfferSimParams(tickers=50, offers={"rate": 0})
    venue = OfferSimExchange(params, VenueContext("offers", clock, 3, "sim", []))
    await venue.connect(_Sink())
    markets = {b.key: Market(venue.instruments[t], b, lambda: 0) for t, b in venue.books.items()}
    source = BookPriceSource(markets)
    first = source.price("AAB")
    assert first is not None
    assert first[0] == pytest.approx(venue.mid("AAB"), abs=0.006)
    assert first[1] == 1_000 * NS
    clock.run_until(1_000 * NS + 3 * NS)  # three mid steps
    second = source.price("AAB")
    assert second is not None
    assert second[1] == 1_003 * NS
    assert second[0] == pytest.approx(venue.mid("AAB"), abs=0.006)
    book = venue.books["AAB"]
    best_ask, best_bid = book.best_ask_ticks(), book.best_bid_ticks()
    assert best_ask is not None and best_bid is not None
    assert best_ask - best_bid == 2  # mid +- one tick
    await venue.close()


async def test_offer_sim_books_refresh_the_mid_on_read_and_the_levels_on_demand() -> None:
    clock = SimClock(1_000 * NS)
    venue = OfferSimExchange(
        OfferSimParams(tickers=5, offers={"rate": 0}),
        VenueContext("offers", clock, 3, "sim", []),
    )
    await venue.connect(_Sink())
    markets = {b.key: Market(venue.instruments[t], b, lambda: 0) for t, b in venue.books.items()}
    read = BookPriceSource(markets).reader("AAB")
    book = venue.books["AAB"]
    first = read()
    assert first is not None and read() is first  # unchanged: the same tuple
    assert (
        first
        == (book.mid(), book.ts_ns)
        == (pytest.approx(venue.mid("AAB"), abs=0.006), 1_000 * NS)
    )
    version = book.version
    clock.run_until(1_002 * NS)  # two mid steps
    second = read()
    assert second is not None and second is not first
    assert second == (pytest.approx(venue.mid("AAB"), abs=0.006), 1_002 * NS)
    assert book.version > version
    mid_ticks = book.mid_ticks()
    assert mid_ticks is not None
    assert book.best_bid_ticks() == mid_ticks - 1 and book.best_ask_ticks() == mid_ticks + 1
    assert book.top(Side.BUY, 5) == [
        (int(mid_ticks) - 1, book.lots_at(Side.BUY, int(mid_ticks) - 1))
    ]
    book.state = BookState.STALE
    assert read() is None
    await venue.close()


async def test_http_source_against_the_offer_sim_price_service() -> None:
    params = OfferSimParams(tickers=40, offers={"rate": 0}, http={"enabled": True, "port": 0})
    venue = OfferSimExchange(params, VenueContext("offers", LiveClock(), 3, "paper", []))
    await venue.connect(_Sink())
    assert venue.http_url is not None and venue.http_url.startswith("http://127.0.0.1:")
    source = HttpPriceSource(
        HttpSourceParams(type="http", url=venue.http_url, concurrency=4, min_refresh_s=0.05)
    )
    source.start()
    try:
        await source.wait_ready(timeout=10)
        for ticker in ("AAA", "AAZ", "ABN"):
            got = source.price(ticker)
            assert got is not None
            price, ts = got
            assert price == pytest.approx(venue.mid(ticker), abs=0.006)
            assert abs(ts - venue.feed.ts_ns) < NS  # the service's own timestamp
        assert source.price("NOPE") is None
        assert source.requests >= 40 and source.errors == 0
    finally:
        source.stop()
        await venue.close()
    await asyncio.sleep(0.05)


class CountingServer:
    """A local price service that counts requests per ticker; some tickers fail."""

    def __init__(self, tickers: list[str], failing: set[str]) -> None:
        self.tickers = tickers
        self.failing = failing
        self.hits: Counter[str] = Counter()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def all_tickers(request: web.Request) -> web.Response:
            return web.json_response(self.tickers)

        async def one(request: web.Request) -> web.Response:
            ticker = request.match_info["ticker"]
            self.hits[ticker] += 1
            if ticker in self.failing:
                return web.json_response({"error": "overloaded"}, status=503)
            return web.json_response({"ticker": ticker, "price": 10.0, "time": time.time()})

        app = web.Application()
        app.router.add_get("/all", all_tickers)
        app.router.add_get("/{ticker}", one)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_busy_tickers_are_refreshed_more_often_and_errors_back_off() -> None:
    tickers = [f"T{i:02d}" for i in range(20)]
    server = CountingServer(tickers, failing={"T19"})
    await server.start()
    source = HttpPriceSource(
        HttpSourceParams(
            type="http",
            url=server.url,
            concurrency=4,
            min_refresh_s=0.05,
            max_refresh_s=2.0,
            activity_half_life_s=5.0,
            backoff_s=0.1,
            max_backoff_s=5.0,
        ),
        tickers=[*tickers[:19], "T19"],
    )
    source.start()
    try:
        await asyncio.sleep(0.3)  # /all and the first round
        start = dict(server.hits)
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            source.note_offer("T00")  # a busy ticker: an offer every 10 ms
            await asyncio.sleep(0.01)
        busy = server.hits["T00"] - start.get("T00", 0)
        idle = [server.hits[t] - start.get(t, 0) for t in tickers[1:19]]
        assert busy >= 10
        assert max(idle) <= 2
        assert source.activity("T00") > 10 > source.activity("T01")
        assert source.refresh_interval("T00") < 0.2 < 1.0 < source.refresh_interval("T01")
        # The failing ticker is retried with growing delays, not every few ms.
        assert 2 <= server.hits["T19"] <= 6
        assert source.price("T19") is None
        assert source.price("T00") == (10.0, pytest.approx(time.time_ns(), abs=NS))
    finally:
        source.stop()
        await asyncio.sleep(0.05)
        await server.stop()


async def test_offer_taker_on_an_http_source_notes_its_offers_and_takes_at_its_prices() -> None:
    server = CountingServer(["T00", "T01"], failing=set())
    await server.start()
    markets = {}
    for ticker in ("T00", "T01"):
        m = _market(ticker, 999, 1_001, 1)
        markets[m.key] = m
    takes: list[tuple[str, Side, int, int]] = []

    def take(market: Market, side: Side, price: int, lots: int, offer_id: str | None) -> Any:
        takes.append((market.symbol, side, price, lots))
        return SimpleNamespace(client_id=f"c{len(takes)}")

    ctx = StrategyContext(
        "taker", markets, time.time_ns, lambda k, q: None, lambda d, f: None, 1, None, take
    )
    params = OfferTakerParams(
        order_size=1,
        max_position=5,
        price_source={"type": "http", "url": server.url, "min_refresh_s": 0.05},
    )
    taker = OfferTaker(ctx, params)
    taker.on_start()
    try:
        assert isinstance(taker.source, HttpPriceSource)
        await taker.source.wait_ready(timeout=10)
        m0 = markets["v:T00"]
        for i in range(20):
            now = time.time_ns()
            taker.on_offer(m0, Offer("v", "T00", f"o{i}", Side.SELL, 900, 1, now, now + NS))
        # Every offer told the source the ticker is busy; the service's 10.00 was the
        # reference, so 9.00 was taken until the position limit.
        assert taker.source.activity("T00") > 10 > taker.source.activity("T01")
        assert takes == [("T00", Side.BUY, 900, 1)] * 5
        assert taker.stats.limit_skips == 15
    finally:
        taker.on_stop()
        await asyncio.sleep(0.05)
        await server.stop()


async def test_http_source_waits_out_a_service_that_is_down() -> None:
    source = HttpPriceSource(
        HttpSourceParams(type="http", url="http://127.0.0.1:9", backoff_s=0.05, timeout_s=0.5)
    )
    source.start()
    try:
        with pytest.raises(TimeoutError):
            await source.wait_ready(timeout=0.4)
        assert source.price("AAA") is None
    finally:
        source.stop()
        await asyncio.sleep(0.05)


def test_http_params_are_checked() -> None:
    with pytest.raises(ValueError, match=r"min_refresh_s \(5.0\) must not exceed max_refresh_s"):
        HttpPriceSource(
            HttpSourceParams(type="http", url="http://x", min_refresh_s=5, max_refresh_s=1)
        )
