"""Paper trading over the simulated exchange as the live source: market data passes
through unchanged, our orders never reach the venue's matching engine, fills come from
the fill simulator."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from paper_sim import MARKET, SYMBOL, paper_sim_registry

from quoteforge.book import L2Book
from quoteforge.clock import SimClock
from quoteforge.engine import run_manifest
from quoteforge.exchange import CancelAll, PlaceOrder, VenueContext
from quoteforge.exchanges.paper import PaperExchange, PaperParams, wrap_for_paper
from quoteforge.exchanges.sim.venue import SimExchange, SimParams
from quoteforge.manifest import load_manifest
from quoteforge.model import Fill, Liquidity, Order, OrderStatus, OrderUpdate, Side, TimeInForce


class Sink:
    def __init__(self) -> None:
        self.books: list[tuple[int, int | None, int | None]] = []
        self.book_objects: set[int] = set()
        self.trades: list[tuple[Any, ...]] = []
        self.updates: list[OrderUpdate] = []
        self.fills: list[Fill] = []

    def on_book(self, book: L2Book) -> None:
        self.books.append((book.ts_ns, book.best_bid_ticks(), book.best_ask_ticks()))
        self.book_objects.add(id(book))

    def on_book_state(self, book: L2Book, old: str, new: str, reason: str) -> None: ...

    def on_trade(self, *args: Any) -> None:
        self.trades.append(args)

    def on_order_update(self, update: OrderUpdate) -> None:
        self.updates.append(update)

    def on_fill(self, fill: Fill) -> None:
        self.fills.append(fill)

    def on_offer(self, offer: Any) -> None: ...


def make_sim(clock: SimClock, seed: int = 5) -> SimExchange:
    params = SimParams.model_validate(
        {"markets": {SYMBOL: MARKET}, "maker_fee_bps": 0, "taker_fee_bps": 5}
    )
    ctx = VenueContext("sim", clock, seed=seed, mode="paper", symbols=[SYMBOL])
    return SimExchange(params, ctx)


def test_orders_never_reach_the_sim_engine_and_market_data_passes_unchanged() -> None:
    seconds = 30
    # The sim on its own, for the market data it produces.
    clock_ref = SimClock(0)
    ref = make_sim(clock_ref)
    ref_sink = Sink()
    asyncio.run(ref.connect(ref_sink))
    clock_ref.run_until(seconds * 10**9)

    clock = SimClock(0)
    inner = make_sim(clock)
    paper = wrap_for_paper(
        inner,
        {"maker_fee_bps": "-1", "latency": {"market_data_ms": 2, "order_ms": 5, "jitter_ms": 0}},
        VenueContext("sim", clock, seed=1, mode="paper", symbols=[SYMBOL]),
    )
    sink = Sink()
    asyncio.run(paper.connect(sink))
    assert paper.instruments is inner.instruments
    assert paper.books[SYMBOL] is inner.books[SYMBOL]
    engine = inner.markets[SYMBOL].engine
    seen_us: list[int] = []

    def probe() -> None:
        seen_us.append(len(engine.orders_of("us")))
        clock.call_later(5_000_000, probe)

    clock.call_later(0, probe)
    book = paper.books[SYMBOL]
    n = 0

    def quote() -> None:
        # Join both sides at the best prices every second, and take once in a while.
        nonlocal n
        bid, ask = book.best_bid_ticks(), book.best_ask_ticks()
        assert bid is not None
        assert ask is not None
        orders = []
        for side, price in ((Side.BUY, bid), (Side.SELL, ask)):
            n += 1
            orders.append(
                PlaceOrder(Order(f"q{n}", "sim", SYMBOL, side, 500, price, tif=TimeInForce.GTC))
            )
        n += 1
        take = Order(f"t{n}", "sim", SYMBOL, Side.BUY, 300, ask + 50, tif=TimeInForce.IOC)
        paper.submit([CancelAll("sim", SYMBOL), *orders, PlaceOrder(take)])
        clock.call_later(10**9, quote)

    clock.call_later(10**9, quote)
    clock.run_until(seconds * 10**9)

    assert seen_us
    assert max(seen_us) == 0  # the venue's engine never held an order of ours
    assert not inner._our_orders
    # Books and trades reached the run exactly as the sim alone produced them.
    assert sink.trades == ref_sink.trades
    assert sink.books == ref_sink.books
    assert sink.book_objects == {id(inner.books[SYMBOL])}
    # Fills come from the fill simulator: its own ids, maker and taker, exact fees.
    assert sink.fills == paper.fills.fills
    assert {f.liquidity for f in sink.fills} == {Liquidity.MAKER, Liquidity.TAKER}
    assert len({f.fill_id for f in sink.fills}) == len(sink.fills)
    for fill in sink.fills:
        if fill.liquidity is Liquidity.MAKER:
            assert fill.fee <= 0  # -1 bps maker rebate
        else:
            assert fill.fee > 0  # the instrument's 5 bps taker fee
    statuses = {u.status for u in sink.updates}
    assert {OrderStatus.OPEN, OrderStatus.CANCELLED} <= statuses


def test_reports_of_the_real_account_are_not_passed_on() -> None:
    clock = SimClock(0)
    paper = wrap_for_paper(make_sim(clock), None, VenueContext("sim", clock, 1, "paper", []))
    sink = Sink()
    asyncio.run(paper.connect(sink))
    inner = paper.inner
    assert isinstance(inner, SimExchange)
    proxy: Any = inner.sink  # the sink the real adapter was given
    proxy.on_order_update(OrderUpdate("sim", "someone-else", OrderStatus.OPEN, 0))
    assert sink.updates == []
    assert paper.foreign_reports == 1


def test_paper_params_are_closed() -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        wrap_for_paper(
            make_sim(SimClock(0)), {"maker_fee": 1}, VenueContext("sim", SimClock(0), 1, "x", [])
        )
    assert isinstance(PaperParams.model_validate({}), PaperParams)


# -- through the engine: a strategy trading on paper over the sim's market data ----------------
MANIFEST = """\
run: {{name: paper, duration: 60s, seed: 4, watch_manifest: false}}
exchanges:
  venue:
    type: paper_sim
    params:
      maker_fee_bps: -1
      markets:
        {symbol}: {market}
strategies:
  mm:
    type: pure_market_making
    exchange: venue
    symbols: {symbol}
    params: {{spread_bps: 2, order_size: 0.5, inventory_limit: 5, inventory_skew_bps: 1}}
report: {{html: false, png: false}}
"""


def test_strategy_trades_on_paper_through_the_engine(tmp_path: Path) -> None:
    registry = paper_sim_registry()
    path = tmp_path / "paper.yaml"
    path.write_text(MANIFEST.format(symbol=SYMBOL, market=json.dumps(MARKET)))
    loaded = load_manifest(path, registry)
    run = asyncio.run(
        run_manifest(loaded, registry, run_dir=tmp_path / "run", install_signals=False)
    )
    venue = run.venues["venue"]
    assert isinstance(venue, PaperExchange)
    inner = venue.inner
    assert isinstance(inner, SimExchange)
    assert inner.markets[SYMBOL].engine.orders_of("us") == []
    assert not inner._our_orders
    fills = venue.fills.fills
    assert len(fills) > 5
    assert run.summary_rows()[0]["fill_count"] == len(fills)
    assert {f.client_id for f in fills} <= {o.client_id for o in run.orders.all_orders()}


def test_paper_over_real_binance_traffic_fills_our_orders_in_whole_steps(
    tmp_path: Path,
) -> None:
    """Real BTCUSDT depth and trades (8 decimals) drive the fill simulator of a paper
    venue whose orders go in 0.00001 steps: queues are counted at the venue's precision,
    our fills in whole steps."""
    from quoteforge.exchanges.replay import ReplayExchange, ReplayParams
    from quoteforge.plugins.data_import import import_recording

    real = Path(__file__).parent / "fixtures" / "real" / "binance" / "spot_btcusdt_20240808.gz"
    recording = tmp_path / "btcusdt.jsonl"
    import_recording("hftbacktest", [real], recording, keep=["depth", "trade"], progress=False)
    clock = SimClock(10**18)
    ctx = VenueContext("binance", clock, seed=2, mode="paper", symbols=["BTC/USDT"])
    market = {"BTC/USDT": {"tick_size": "0.01", "qty_step": "0.00001"}}
    inner = ReplayExchange(
        ReplayParams.model_validate(
            {"protocol": "binance_spot", "data": str(recording), "markets": market}
        ),
        ctx,
    )
    paper = wrap_for_paper(inner, {"latency": {"market_data_ms": 0, "order_ms": 0}}, ctx)
    sink = Sink()
    asyncio.run(paper.connect(sink))
    start = clock.now_ns()
    clock.run_until(start + 2 * 10**9)
    book = paper.books["BTC/USDT"]
    inst = paper.instruments["BTC/USDT"]
    assert (inst.lot_size, inst.qty_step) == (Decimal("1E-8"), Decimal("0.00001"))
    bid = book.best_bid_ticks()
    ask = book.best_ask_ticks()
    assert bid is not None and ask is not None
    rest = Order("p1", "binance", "BTC/USDT", Side.BUY, inst.qty_to_lots("0.05"), bid)
    take = Order(
        "p2", "binance", "BTC/USDT", Side.BUY, inst.qty_to_lots("2"), ask + 500, tif=TimeInForce.IOC
    )
    paper.submit([PlaceOrder(rest), PlaceOrder(take)])
    clock.run_until(clock.now_ns() + 10**6)
    assert paper.fills.queue_ahead("p1") == book.lots_at(Side.BUY, bid)
    clock.run_until(start + 60 * 10**9)
    ours = [f for f in sink.fills if f.client_id in ("p1", "p2")]
    assert {f.client_id for f in ours} == {"p1", "p2"}
    assert all(f.qty_lots % inst.step_lots == 0 for f in ours)
    assert sum(f.qty_lots for f in ours if f.client_id == "p2") <= take.qty_lots


@pytest.mark.parametrize(
    ("params", "said"),
    [
        (None, "pay no maker fee: the venue names no fee for it and the manifest sets none"),
        ({"maker_fee_bps": "-1"}, None),
    ],
)
def test_a_fee_neither_the_venue_nor_the_manifest_names_is_warned_of(
    params: dict[str, str] | None, said: str | None
) -> None:
    """A venue whose market list gives no fee (Binance's) would make paper PnL leave the
    fees out without a word: the paper venue says which fee is missing and how to set it.
    The sim here names a 5 bps taker fee and no maker fee."""
    clock = SimClock(0)
    paper = wrap_for_paper(make_sim(clock), params, VenueContext("sim", clock, 1, "paper", []))
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        asyncio.run(paper.connect(Sink()))
    finally:
        logger.remove(handler)
    fee_lines = [line for line in lines if "paper fills on" in line]
    if said is None:
        assert fee_lines == []
    else:
        assert len(fee_lines) == 1 and said in fee_lines[0], lines
        assert "taker fee" not in fee_lines[0] and "paper: {maker_fee_bps" in fee_lines[0]
