"""Paper trading: live market data from a real adapter, our orders filled by the fill
simulator against that live book and never sent to the venue."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from loguru import logger

from quoteforge import hookimpl
from quoteforge.book import BookState, L2Book
from quoteforge.exchange import ExchangeAdapter, OrderAction, VenueContext, VenueSink
from quoteforge.exchanges.fillsim import FillSimParams, FillSimulator
from quoteforge.model import Fill, Offer, OrderUpdate, Side
from quoteforge.registry import Register

__all__ = ["PaperExchange", "PaperParams", "wrap_for_paper"]


class PaperParams(FillSimParams):
    """Fill simulation settings of a paper venue. ``latency.market_data_ms`` is how far
    the live feed is assumed to lag the venue; fees default to the instrument's own."""


class _PaperSink:
    """Sits between the real adapter and the run: market data goes to the fill
    simulator first and then on unchanged; the real account's order reports stop here."""

    __slots__ = ("paper", "sink")

    def __init__(self, paper: PaperExchange, sink: VenueSink) -> None:
        self.paper = paper
        self.sink = sink

    def on_book(self, book: L2Book) -> None:
        fills = self.paper.fills
        if not fills.has_market(book.symbol):
            self.paper._track(book)
        fills.on_book(book.symbol)
        self.sink.on_book(book)

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None:
        self.paper.fills.on_book_state(book.symbol, BookState(new))
        self.sink.on_book_state(book, old, new, reason)

    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, qty_lots: int, aggressor: Side, ts_ns: int
    ) -> None:
        self.paper.fills.on_trade(symbol, price_ticks, qty_lots, aggressor)
        self.sink.on_trade(venue, symbol, price_ticks, qty_lots, aggressor, ts_ns)

    def on_order_update(self, update: OrderUpdate) -> None:
        self.paper._foreign(update.client_id)

    def on_fill(self, fill: Fill) -> None:
        self.paper._foreign(fill.client_id)

    def on_offer(self, offer: Offer) -> None:
        self.sink.on_offer(offer)


class PaperExchange(ExchangeAdapter):
    """Wraps a live adapter: its books and trades reach the run unchanged, our order
    actions go to a ``FillSimulator`` instead of the venue."""

    Params = PaperParams

    def __init__(self, inner: ExchangeAdapter, params: PaperParams, ctx: VenueContext) -> None:
        self.inner = inner
        self.params = params
        self.ctx = ctx
        self.name = inner.name
        self.instruments = inner.instruments
        self.books = inner.books
        self.sink: VenueSink | None = None
        self.fills = FillSimulator(self.name, ctx.clock, params, ctx.seed)
        self.foreign_reports = 0

    async def connect(self, sink: VenueSink) -> None:
        self.sink = sink
        self.fills.attach(sink)
        await self.inner.connect(_PaperSink(self, sink))
        # Live adapters may build these while connecting.
        self.instruments = self.inner.instruments
        self.books = self.inner.books
        for book in self.books.values():
            if not self.fills.has_market(book.symbol):
                self._track(book)

    def submit(self, actions: Sequence[OrderAction]) -> None:
        self.fills.submit(actions)

    async def close(self) -> None:
        self.fills.attach(None)
        self.sink = None
        await self.inner.close()

    async def fetch_open_orders(self) -> list[OrderUpdate]:
        return self.fills.open_orders()

    async def fetch_balances(self) -> dict[str, Decimal]:
        # Paper fills move no money on the venue; positions live in the run's portfolio.
        return {}

    async def fetch_fills(self, since_ns: int) -> list[Fill]:
        return self.fills.reports.since(since_ns)

    def _track(self, book: L2Book) -> None:
        instrument = self.inner.instruments.get(book.symbol, book.instrument)
        self.fills.add_market(instrument, book)
        p = self.fills.params
        unset = [
            f"{side}_fee_bps"
            for side in ("maker", "taker")
            if getattr(p, f"{side}_fee_bps") is None
        ]
        free = [n for n in unset if not getattr(instrument, n.replace("_bps", ""))]
        if free:  # the venue's market list gives no fee: the PnL would leave it out
            logger.warning(
                "{}: paper fills on {} pay no {}: the venue names no fee for it and the "
                "manifest sets none; give the account's rates in bps in the run's paper: "
                "block, e.g. paper: {{maker_fee_bps: 10, taker_fee_bps: 10}}",
                self.name,
                book.symbol,
                " and no ".join(n.split("_")[0] + " fee" for n in free),
            )

    def _foreign(self, client_id: str) -> None:
        self.foreign_reports += 1
        if self.foreign_reports <= 5:
            logger.warning(
                "{}: ignored a report about order {!r} of the real account: a paper run "
                "sends no orders to the venue",
                self.name,
                client_id,
            )


def wrap_for_paper(
    adapter: ExchangeAdapter,
    params: PaperParams | Mapping[str, Any] | None,
    ctx: VenueContext,
) -> PaperExchange:
    """The paper version of ``adapter``: same market data, simulated fills.

    ``params`` may be a ``PaperParams``, a mapping validated as one (unknown keys are
    errors), or None for the defaults.
    """
    checked: PaperParams
    if isinstance(params, PaperParams):
        checked = params
    else:
        checked = PaperParams.model_validate(dict(params or {}))
    return PaperExchange(adapter, checked, ctx)


@hookimpl
def quoteforge_register_venue_wrappers(register: Register) -> None:
    register(
        "paper",
        wrap_for_paper,
        params=PaperParams,
        description="live market data of the wrapped venue, fills simulated locally",
    )
