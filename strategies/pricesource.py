"""Reference-price sources: one ``price(ticker) -> (price, ts_ns) | None`` interface over
the venues' books (``book``) or a polled HTTP price service (``http``)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Protocol

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from quoteforge.book import BookState, L2Book
from quoteforge.strategy import Market

__all__ = [
    "BookPriceSource",
    "BookSourceParams",
    "HttpPriceSource",
    "HttpSourceParams",
    "PriceSource",
    "PriceSourceParams",
    "build_price_source",
]

NS = 1_000_000_000
_LIVE = BookState.LIVE


class PriceSource(Protocol):
    """Where a strategy gets the reference price of a ticker.

    ``price`` and the functions ``reader`` returns are called on the hot path and must
    only read local state. ``note_offer`` tells the source a ticker is busy, so sources
    that refresh (http) refresh it first.
    """

    def price(self, ticker: str) -> tuple[float, int] | None:
        """``(price, ts_ns)`` of the latest known price, ``ts_ns`` being when it was
        observed at its origin; None when nothing is known (yet)."""

    def reader(self, ticker: str) -> Callable[[], tuple[float, int] | None]:
        """A function of no arguments for a caller that keeps one per ticker and calls
        it once per offer: it does what ``note_offer(ticker)`` does, then returns what
        ``price(ticker)`` returns, as the same tuple object for as long as the price and
        its time stay the same (so "unchanged" is an identity check)."""

    def note_offer(self, ticker: str) -> None:
        """An offer on ``ticker`` arrived: it deserves fresher prices."""

    def start(self) -> None:
        """Begin background work (called from a running event loop)."""

    def stop(self) -> None:
        """End background work; never raises."""


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BookSourceParams(_Closed):
    type: Literal["book"] = Field("book", description="Mid of the venue's live book.")


class HttpSourceParams(_Closed):
    type: Literal["http"] = Field(description="Poll an HTTP price service.")
    url: str = Field(description="Base URL, e.g. http://127.0.0.1:8765 (GET /all, GET /{ticker}).")
    concurrency: int = Field(8, ge=1, le=256, description="Requests in flight at most.")
    min_refresh_s: float = Field(
        0.2, gt=0, description="Refresh interval of the busiest tickers, seconds."
    )
    max_refresh_s: float = Field(
        10.0, gt=0, description="Refresh interval of tickers without recent offers, seconds."
    )
    activity_half_life_s: float = Field(
        30.0, gt=0, description="Half-life of the recent-offer count that sets priority."
    )
    timeout_s: float = Field(2.0, gt=0, description="Timeout of one request, seconds.")
    backoff_s: float = Field(0.5, gt=0, description="First retry delay after an error.")
    max_backoff_s: float = Field(30.0, gt=0, description="Longest retry delay after errors.")


PriceSourceParams = Annotated[BookSourceParams | HttpSourceParams, Field(discriminator="type")]


class BookPriceSource:
    """Mid prices of live venue books, timed by the book's own last update.

    A book that keeps its ``(mid, ts_ns)`` as one tuple offers ``mid_and_time()`` (the
    offer_sim reference books do); its readers are that method itself, so reading a
    price is one call.
    """

    def __init__(self, markets: Mapping[str, Market]) -> None:
        # Tickers are the markets' symbols; a strategy on one venue has unique symbols.
        self._books = {m.symbol: m.book for m in markets.values()}

    def price(self, ticker: str) -> tuple[float, int] | None:
        book = self._books.get(ticker)
        if book is None or book.state is not _LIVE:
            return None
        mid = book.mid()
        if mid is None:
            return None
        return mid, book.ts_ns

    def reader(self, ticker: str) -> Callable[[], tuple[float, int] | None]:
        book = self._books.get(ticker)
        if book is None:
            return _no_price
        fast: Callable[[], tuple[float, int] | None] | None = getattr(book, "mid_and_time", None)
        return fast if fast is not None else _BookReader(book).read

    def note_offer(self, ticker: str) -> None:
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


def _no_price() -> None:
    return None


class _BookReader:
    """Reads one book's mid and time, keeping the last answer so an unchanged price
    comes back as the same tuple."""

    __slots__ = ("book", "ref")

    def __init__(self, book: L2Book) -> None:
        self.book = book
        self.ref: tuple[float, int] | None = None

    def read(self) -> tuple[float, int] | None:
        book = self.book
        if book.state is not _LIVE:
            return None
        mid = book.mid()
        if mid is None:
            return None
        ref = self.ref
        if ref is None or ref[0] != mid or ref[1] != book.ts_ns:
            ref = self.ref = (mid, book.ts_ns)
        return ref


class _Entry:
    __slots__ = (
        "activity",
        "activity_ns",
        "due_ns",
        "failures",
        "in_flight",
        "price",
        "ref",
        "ts_ns",
    )

    def __init__(self) -> None:
        self.price = 0.0
        self.ts_ns = 0
        self.ref: tuple[float, int] | None = None  # (price, ts_ns) once polled
        self.activity = 0.0
        self.activity_ns = 0
        self.due_ns = 0
        self.failures = 0
        self.in_flight = False


class HttpPriceSource:
    """Polls ``GET {url}/{ticker}`` with bounded concurrency.

    Each ticker is due again after an interval between ``min_refresh_s`` (busiest) and
    ``max_refresh_s`` (idle), set by its exponentially decayed offer count; an offer on
    a ticker whose price is older than ``min_refresh_s`` makes it due at once. Errors
    back off per ticker (exponential with jitter); when every request fails, the
    pollers also pause. ``GET {url}/all`` at start lists the tickers.
    """

    def __init__(
        self,
        params: HttpSourceParams,
        tickers: list[str] | None = None,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if params.min_refresh_s > params.max_refresh_s:
            raise ValueError(
                f"http price source: min_refresh_s ({params.min_refresh_s}) must not exceed "
                f"max_refresh_s ({params.max_refresh_s})"
            )
        self.params = params
        self.url = params.url.rstrip("/")
        self._now_ns = now_ns
        self._wanted = list(tickers) if tickers is not None else None
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[int, int, str]] = []
        self._seq = 0
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._session: Any = None
        self._decay = math.log(2) / (params.activity_half_life_s * NS)
        self._consecutive_errors = 0
        self._pending_first = 0
        self.requests = 0
        self.errors = 0
        self.ready: asyncio.Event | None = None

    # -- hot path ------------------------------------------------------------------------
    def price(self, ticker: str) -> tuple[float, int] | None:
        entry = self._entries.get(ticker)
        return None if entry is None else entry.ref

    def reader(self, ticker: str) -> Callable[[], tuple[float, int] | None]:
        note, price = self.note_offer, self.price

        def read() -> tuple[float, int] | None:
            # Entries appear once GET /all has listed the tickers, so look them up.
            note(ticker)
            return price(ticker)

        return read

    def note_offer(self, ticker: str) -> None:
        entry = self._entries.get(ticker)
        if entry is None:
            return
        now = self._now_ns()
        entry.activity = self._activity(entry, now) + 1.0
        entry.activity_ns = now
        fresh_for = int(self.params.min_refresh_s * NS)
        if (
            not entry.in_flight
            and entry.failures == 0
            and now - entry.ts_ns > fresh_for
            and entry.due_ns > now
        ):
            self._schedule(ticker, entry, now)

    def activity(self, ticker: str) -> float:
        """The decayed recent-offer count that sets ``ticker``'s refresh priority."""
        entry = self._entries.get(ticker)
        return 0.0 if entry is None else self._activity(entry, self._now_ns())

    def refresh_interval(self, ticker: str) -> float:
        """Seconds until ``ticker`` is refreshed again after a successful poll."""
        entry = self._entries.get(ticker)
        activity = 0.0 if entry is None else self._activity(entry, self._now_ns())
        return self._interval(activity)

    # -- scheduling ------------------------------------------------------------------------
    def _activity(self, entry: _Entry, now: int) -> float:
        if entry.activity == 0.0:
            return 0.0
        return entry.activity * math.exp(-self._decay * max(0, now - entry.activity_ns))

    def _interval(self, activity: float) -> float:
        p = self.params
        # One offer per half-life earns the middle of the range (geometrically).
        span = math.log(p.max_refresh_s / p.min_refresh_s)
        share = activity / (activity + 1.0)
        return p.max_refresh_s * math.exp(-span * share)

    def _schedule(self, ticker: str, entry: _Entry, due_ns: int) -> None:
        entry.due_ns = due_ns
        self._seq += 1
        heapq.heappush(self._heap, (due_ns, self._seq, ticker))
        if self._wake is not None:
            self._wake.set()

    def _next_due(self) -> tuple[str, _Entry] | float:
        """The ticker to fetch now, or how many seconds until one is due."""
        heap = self._heap
        while heap:
            due, _, ticker = heap[0]
            entry = self._entries[ticker]
            if entry.due_ns != due or entry.in_flight:
                heapq.heappop(heap)  # superseded by a later (re)schedule
                continue
            now = self._now_ns()
            if due > now:
                return (due - now) / NS
            heapq.heappop(heap)
            return ticker, entry
        return self.params.max_refresh_s

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.ready = asyncio.Event()
        self._tasks.append(loop.create_task(self._main()))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Wait until the ticker list is loaded and every ticker has been polled once."""
        assert self.ready is not None, "start() the source first"
        await asyncio.wait_for(self.ready.wait(), timeout)

    async def _main(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.params.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.params.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self._session = session
            await self._load_tickers(session)
            workers = [
                asyncio.create_task(self._worker(session)) for _ in range(self.params.concurrency)
            ]
            try:
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*workers, return_exceptions=True)

    async def _load_tickers(self, session: Any) -> None:
        delay = self.params.backoff_s
        while True:
            try:
                async with session.get(f"{self.url}/all") as resp:
                    resp.raise_for_status()
                    listed = await resp.json()
                if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
                    raise ValueError(
                        f"GET {self.url}/all returned {type(listed).__name__}, "
                        "expected a JSON list of tickers"
                    )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "price source {}: GET /all failed ({}); retrying in {:.1f}s",
                    self.url,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.params.max_backoff_s)
        wanted = set(listed) if self._wanted is None else set(self._wanted) & set(listed)
        missing = [] if self._wanted is None else sorted(set(self._wanted) - set(listed))
        if missing:
            logger.warning(
                "price source {}: {} tickers are not served (e.g. {})",
                self.url,
                len(missing),
                ", ".join(missing[:5]),
            )
        now = self._now_ns()
        for ticker in sorted(wanted):
            entry = self._entries.setdefault(ticker, _Entry())
            self._schedule(ticker, entry, now)
        self._pending_first = len(self._entries)

    async def _worker(self, session: Any) -> None:
        assert self._wake is not None
        while True:
            nxt = self._next_due()
            if isinstance(nxt, float):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=nxt)
                continue
            ticker, entry = nxt
            entry.in_flight = True
            try:
                await self._fetch(session, ticker, entry)
            finally:
                entry.in_flight = False
            if self._consecutive_errors >= self.params.concurrency:
                # Everything fails: the service is down, do not hammer it.
                pause = min(
                    self.params.max_backoff_s,
                    self.params.backoff_s * 2 ** min(self._consecutive_errors // 8, 16),
                )
                await asyncio.sleep(pause * (0.5 + random.random()))

    async def _fetch(self, session: Any, ticker: str, entry: _Entry) -> None:
        p = self.params
        self.requests += 1
        try:
            async with session.get(f"{self.url}/{ticker}") as resp:
                if resp.status == 429 or resp.status >= 500:
                    raise _RetryableError(f"HTTP {resp.status}")
                resp.raise_for_status()
                body = await resp.json()
            price = float(body["price"])
            if not math.isfinite(price) or price <= 0:
                raise ValueError(f"price {body['price']!r} is not a positive number")
            received = self._now_ns()
            stamp = body.get("time")
            ts = int(float(stamp) * NS) if stamp is not None else received
            # A source clock ahead of ours must not make a price look fresher than it is.
            entry.price, entry.ts_ns = price, min(ts, received)
            entry.ref = (entry.price, entry.ts_ns) if entry.ts_ns else None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors += 1
            self._consecutive_errors += 1
            entry.failures += 1
            delay = min(p.max_backoff_s, p.backoff_s * 2 ** (entry.failures - 1))
            if entry.failures <= 3 or entry.failures % 100 == 0:
                logger.debug("price source: {} failed ({}), retry in {:.2f}s", ticker, exc, delay)
            self._schedule(
                ticker, entry, self._now_ns() + int(delay * (0.5 + random.random()) * NS)
            )
            return
        self._consecutive_errors = 0
        entry.failures = 0
        interval = self._interval(self._activity(entry, received))
        self._schedule(ticker, entry, received + int(interval * NS))
        if self._pending_first > 0:
            self._pending_first -= 1
            if self._pending_first == 0 and self.ready is not None:
                self.ready.set()


class _RetryableError(Exception):
    pass


def build_price_source(
    params: BookSourceParams | HttpSourceParams,
    markets: Mapping[str, Market],
    now_ns: Callable[[], int],
) -> BookPriceSource | HttpPriceSource:
    """The source a strategy's ``price_source`` params describe, over its markets."""
    if isinstance(params, BookSourceParams):
        return BookPriceSource(markets)
    return HttpPriceSource(params, [m.symbol for m in markets.values()], now_ns)
