"""Execution algorithms through ``StrategyContext.execute``: registration, parameter
checks, TWAP slicing on a virtual clock and smart-order-routed sweeps under a cap."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest

from quoteforge.book import BookState, L2Book
from quoteforge.clock import SimClock
from quoteforge.model import (
    Fill,
    Instrument,
    Liquidity,
    Order,
    OrderStatus,
    OrderUpdate,
    Quote,
    Side,
    TimeInForce,
)
from quoteforge.plugins import execution_algos
from quoteforge.plugins.plugins_cli import plugin_rows
from quoteforge.registry import PluginError, PluginRegistry, load_registry
from quoteforge.strategy import Market, StrategyContext

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
# Two venues of one asset with different lot sizes, and one market of another asset.
INST_A = Instrument("sim", "BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.01"))
INST_B = Instrument("alt", "BTCUSDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.001"))
INST_E = Instrument("sim", "ETHUSDT", "ETH", "USDT", Decimal("0.01"), Decimal("0.01"))


@pytest.fixture(scope="module")
def algos_registry() -> PluginRegistry:
    registry = load_registry()
    if "twap" not in registry.types("execution_algo"):
        # Until the entry point is installed, register the module the same way it would.
        record = registry.register_module(execution_algos, "execution_algos")
        assert record.loaded, record.error
    return registry


class Desk:
    """A strategy's context over live books, with a venue that fills IOC orders against
    those books after 1 ms and reports back the way a strategy forwards to its algos."""

    def __init__(
        self,
        books: dict[Instrument, tuple[list[Any], list[Any]]],
        refuse: frozenset[str] = frozenset(),
    ) -> None:
        self.clock = SimClock(T0)
        self.markets: dict[str, Market] = {}
        for inst, (bids, asks) in books.items():
            book = L2Book(inst)
            book.apply_snapshot(bids, asks, T0)
            book.state = BookState.LIVE
            self.markets[inst.key] = Market(inst, book, lambda: 0)
        self.refuse = refuse
        self.orders: list[Order] = []
        self.ids = itertools.count()
        self.unclaimed: list[str] = []

        def set_quotes(key: str, quotes: list[Quote]) -> None:
            raise AssertionError("execution algorithms only take")

        def schedule(delay_ns: int, fn: Any) -> Any:
            return self.clock.call_later(delay_ns, fn)

        self.ctx = StrategyContext(
            "desk", self.markets, self.clock.now_ns, set_quotes, schedule, 1, take=self.take
        )

    def take(
        self, market: Market, side: Side, price_ticks: int, qty_lots: int, offer_id: str | None
    ) -> Order | None:
        if market.key in self.refuse:
            return None  # what the engine's take returns when risk refuses
        order = Order(
            f"o{next(self.ids)}", market.venue, market.symbol, side, qty_lots, price_ticks,
            tif=TimeInForce.IOC,
        )  # fmt: skip
        order.created_ns = self.clock.now_ns()
        self.orders.append(order)
        self.clock.call_later(1_000_000, self._match, market, order)
        return order

    def _match(self, market: Market, order: Order) -> None:
        limit = order.price_ticks
        assert limit is not None  # take() prices every order
        left = order.qty_lots
        for ticks, lots in list(market.book.levels(order.side.opposite)):
            through = ticks > limit if order.side is Side.BUY else ticks < limit
            if through or left == 0:
                break
            qty = min(lots, left)
            left -= qty
            order.filled_lots += qty
            self._forward(
                Fill(
                    market.venue,
                    market.symbol,
                    f"f{next(self.ids)}",
                    order.client_id,
                    order.side,
                    ticks,
                    qty,
                    Decimal(0),
                    "USDT",
                    Liquidity.TAKER,
                    self.clock.now_ns(),
                )
            )
        status = OrderStatus.FILLED if order.filled_lots == order.qty_lots else OrderStatus.EXPIRED
        self._forward(
            OrderUpdate(
                market.venue,
                order.client_id,
                status,
                self.clock.now_ns(),
                filled_lots=order.filled_lots,
            )
        )

    def _forward(self, event: Fill | OrderUpdate) -> None:
        # What a strategy's on_fill / on_order_update do: offer it to each running algo.
        for algo in list(self.ctx.algos):
            claimed = (
                algo.on_fill(event) if isinstance(event, Fill) else algo.on_order_update(event)
            )
            if claimed:
                return
        self.unclaimed.append(event.client_id)


def one_market_desk() -> Desk:
    return Desk({INST_A: ([(9_999, 1_000), (9_990, 1_000)], [(10_001, 1_000)])})


def two_venue_desk(refuse: frozenset[str] = frozenset()) -> Desk:
    return Desk(
        {
            # sim asks: 100.00 x 0.02, 100.50 x 0.10
            INST_A: ([(9_990, 100)], [(10_000, 2), (10_050, 10)]),
            # alt asks: 100.01 x 0.010, 100.20 x 0.050
            INST_B: ([(9_990, 100)], [(10_001, 10), (10_020, 50)]),
            # another asset: never routed to
            INST_E: ([(9_990, 100)], [(9_000, 1_000)]),
        },
        refuse,
    )


# -- registration -------------------------------------------------------------------------


def test_algorithms_are_listed_as_their_own_kind(algos_registry: PluginRegistry) -> None:
    rows = {(r["kind"], r["name"]): r for r in plugin_rows(algos_registry)}
    assert rows[("execution_algo", "twap")]["status"] == "ok"
    assert rows[("execution_algo", "sor")]["status"] == "ok"
    assert "slippage cap" in rows[("execution_algo", "sor")]["description"]
    assert algos_registry.get("execution_algo", "sor").factory is execution_algos.SorAlgo


# -- parameter and argument checks --------------------------------------------------------


def test_unknown_parameter_names_the_algo_and_the_key(algos_registry: PluginRegistry) -> None:
    ctx = one_market_desk().ctx
    with pytest.raises(ValueError, match=r"execution algo 'twap'.*slcies.*accepted parameters"):
        ctx.execute("twap", "sim:BTCUSDT", Side.SELL, 10, duration_s=60, slcies=4, band_bps=5)
    with pytest.raises(ValueError, match=r"execution algo 'twap'.*slices: Field required"):
        ctx.execute("twap", "sim:BTCUSDT", Side.SELL, 10, duration_s=60, band_bps=5)
    with pytest.raises(ValueError, match=r"execution algo 'sor'.*max_slippage_bps.*greater than"):
        ctx.execute("sor", "sim:BTCUSDT", Side.BUY, 5, max_slippage_bps=-1)
    assert ctx.algos == []


def test_bad_algo_market_and_size_are_refused(algos_registry: PluginRegistry) -> None:
    ctx = two_venue_desk().ctx
    with pytest.raises(PluginError, match=r"unknown execution_algo type 'vwap'.*sor.*twap"):
        ctx.execute("vwap", "sim:BTCUSDT", Side.BUY, 5)
    with pytest.raises(KeyError, match=r"no market 'sim:XRPUSDT'.*alt:BTCUSDT"):
        ctx.execute("sor", "sim:XRPUSDT", Side.BUY, 5, max_slippage_bps=5)
    with pytest.raises(ValueError, match="qty_lots must be a positive whole number"):
        ctx.execute("sor", "sim:BTCUSDT", Side.BUY, 0, max_slippage_bps=5)
    with pytest.raises(ValueError, match=r"venue 'BTCEUR' is not a market of strategy 'desk'"):
        ctx.execute("sor", "sim:BTCUSDT", Side.BUY, 5, max_slippage_bps=5, venues=["BTCEUR"])


# -- TWAP ---------------------------------------------------------------------------------


def test_twap_slices_over_time_and_leaves_the_context_when_done(
    algos_registry: PluginRegistry,
) -> None:
    desk = one_market_desk()
    market = desk.markets["sim:BTCUSDT"]
    twap = desk.ctx.execute("twap", market, Side.SELL, 10, duration_s=60, slices=4, band_bps="5")
    assert desk.ctx.algos == [twap] and not twap.done
    assert len(desk.orders) == 1  # the first slice goes out at once
    desk.clock.run_until(T0 + 120 * NS)
    assert [(o.created_ns - T0) // NS for o in desk.orders] == [0, 15, 30, 45]
    assert [o.qty_lots for o in desk.orders] == [3, 3, 2, 2]
    assert {o.price_ticks for o in desk.orders} == {9_995}  # mid 100.00 less 5 bps
    assert twap.done and twap.filled_lots == 10 and desk.ctx.algos == []
    # The TWAP finished on its last fill, so the strategy sees that child's final report.
    assert desk.unclaimed == [desk.orders[-1].client_id]


def test_twap_cancel_stops_later_slices(algos_registry: PluginRegistry) -> None:
    desk = one_market_desk()
    twap = desk.ctx.execute(
        "twap", "sim:BTCUSDT", Side.BUY, 8, duration_s=40, slices=4, band_bps=10
    )
    desk.clock.run_until(T0 + 12 * NS)  # slices at 0 s and 10 s went out and filled
    twap.cancel()
    desk.clock.run_until(T0 + 60 * NS)
    assert [o.qty_lots for o in desk.orders] == [2, 2]
    assert twap.done and twap.filled_lots == 4 and desk.ctx.algos == []


# -- smart order routing ------------------------------------------------------------------


def test_sor_sends_one_child_per_venue_within_the_cap(algos_registry: PluginRegistry) -> None:
    desk = two_venue_desk()
    sor = desk.ctx.execute("sor", "sim:BTCUSDT", Side.BUY, 5, max_slippage_bps=25)
    # 0.05 BTC: 0.02 at 100.00 on sim, 0.01 at 100.01 and 0.02 at 100.20 on alt; sim's
    # 100.50 is beyond the cap of 100.25 and the ETH market is another asset.
    sent = {(o.venue, o.symbol): (o.side, o.price_ticks, o.qty_lots) for o in desk.orders}
    assert sent == {
        ("sim", "BTCUSDT"): (Side.BUY, 10_000, 2),
        ("alt", "BTCUSDT"): (Side.BUY, 10_020, 30),
    }
    assert all(o.tif is TimeInForce.IOC for o in desk.orders)
    assert sor.route.complete and not sor.done
    desk.clock.run_until(T0 + NS)
    assert sor.done and sor.filled_qty == Decimal("0.05") and desk.ctx.algos == []
    assert desk.unclaimed == []


def test_sor_cap_leaves_the_rest_unsent(algos_registry: PluginRegistry) -> None:
    desk = two_venue_desk()
    sor = desk.ctx.execute("sor", "sim:BTCUSDT", Side.BUY, 5, max_slippage_bps="5")
    assert sor.route.cap_price == Decimal("100.05")
    assert [(o.venue, o.price_ticks, o.qty_lots) for o in desk.orders] == [
        ("sim", 10_000, 2),
        ("alt", 10_001, 10),
    ]
    assert sor.route.unfilled == Decimal("0.02")
    desk.clock.run_until(T0 + NS)
    assert sor.done and sor.filled_qty == Decimal("0.03")


def test_sor_venue_list_and_refused_children(algos_registry: PluginRegistry) -> None:
    desk = two_venue_desk(refuse=frozenset({"alt:BTCUSDT"}))
    sor = desk.ctx.execute(
        "sor", "alt:BTCUSDT", Side.BUY, 30, max_slippage_bps=100, venues=["alt:BTCUSDT"]
    )
    # Only alt is routed to, and risk refused its child: nothing is working, so done.
    assert sor.refused == ["alt:BTCUSDT"] and desk.orders == []
    assert sor.done and desk.ctx.algos == []
    with pytest.raises(ValueError, match="must include the market the size is given in"):
        desk.ctx.execute(
            "sor", "sim:BTCUSDT", Side.BUY, 2, max_slippage_bps=5, venues=["alt:BTCUSDT"]
        )
