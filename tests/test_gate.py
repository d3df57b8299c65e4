"""The one order gate: every way a strategy can cause an order (``on_book``'s return
value, ``ctx.set_quotes``, ``ctx.take``, ``ctx.execute`` with TWAP and the router) passes
kill/stop and halt, breakers, risk and the instrument's rules before a venue sees it.

The venues are the real simulated exchange; the test watches what reaches their
``submit`` and judges each new order against the run's state at that moment.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from own_strategies import register_strategy

from quoteforge.engine import Run
from quoteforge.exchange import CancelAll, CancelOrder, PlaceOrder, ReplaceOrder
from quoteforge.manifest import load_manifest
from quoteforge.model import Fill, Liquidity, Order, Quote, Side
from quoteforge.registry import PluginRegistry
from quoteforge.strategy import Market, Strategy

NS = 1_000_000_000
MAX_NOTIONAL = Decimal(9000)
MAX_POSITION = Decimal("0.6")

MANIFEST = """\
run: {{name: gate, duration: {duration}, seed: {seed}, sample_interval: 1s}}
exchanges:
  sim:
    type: sim
    params:
      markets:
        BTC/USDT: &btc
          tick_size: "0.01"
          lot_size: "0.0001"
          initial_price: 30000
          process: {{model: brownian, sigma: 0.0001}}
          flow: {{arrival_rate: 3.0, reach: 15.0, size: 0.05}}
          liquidity: {{levels: 5, distance: 20.0, spacing: 5.0, size: 0.2}}
  sim_b:
    type: sim
    params:
      markets:
        BTC/USDT: *btc
strategies:
  probe:
    type: gate_probe
    exchange: sim
    symbols: [BTC/USDT, "sim_b:BTC/USDT"]
risk:
  fat_finger: {{type: max_order_notional, params: {{max_notional: {notional}}}}}
  position: {{type: max_position, params: {{max_position: {position}}}}}
breakers:
  pnl_floor: -1000000000
  market_pnl_floor: -1000000000
  modes: {{pnl_floor: reduce, market_pnl_floor: halt}}
report: {{html: false, png: false}}
"""


class GateProbe(Strategy):
    """Does what the test tells it: quotes it is handed are returned from ``on_book``;
    ``boom`` makes the next ``on_book`` raise (the engine halts the strategy)."""

    def __init__(self, ctx: Any, params: Any) -> None:
        super().__init__(ctx, params)
        self.next_quotes: list[Any] | None = None
        self.boom = False

    def on_book(self, market: Market, **kwargs: Any) -> list[Any] | None:
        if self.boom:
            self.boom = False
            raise RuntimeError("probe told to fail")
        if market.venue != "sim":
            return None
        quotes, self.next_quotes = self.next_quotes, None
        return quotes


@pytest.fixture(scope="module")
def probe_registry(registry: PluginRegistry) -> PluginRegistry:
    register_strategy(registry, "gate_probe", GateProbe)
    return registry


class Watch:
    """Stands between the engine and each real venue's ``submit``: judges every new
    order against the run's gate state at the moment it is handed over."""

    def __init__(self) -> None:
        self.run: Run | None = None
        self.sent: list[tuple[str, Order]] = []
        self.cancels = 0
        self.violations: list[str] = []

    def factory(self, registry: PluginRegistry) -> Any:
        def make(name: str, spec: Any, params: Any, ctx: Any) -> Any:
            venue = registry.get("exchange", spec.type).factory(params, ctx)
            inner = venue.submit

            def submit(actions: Any) -> None:
                for action in actions:
                    if isinstance(action, PlaceOrder):
                        self.judge(action.order)
                    elif isinstance(action, ReplaceOrder):
                        self.judge(action.new)
                    elif isinstance(action, CancelOrder | CancelAll):
                        self.cancels += 1
                inner(actions)

            venue.submit = submit
            return venue

        return make

    def judge(self, order: Order) -> None:
        run = self.run
        assert run is not None
        key = order.market
        self.sent.append((key, order))
        why = []
        if run.killed or run.gate.closed:
            why.append(f"sent after the gate closed ({run.gate.closed})")
        srt = run.strategies[order.strategy]
        if srt.halted:
            why.append("sent while its strategy is halted")
        assert run.breakers is not None
        state = run.breakers.state(key)
        position = run.portfolio.position_lots(key)
        if state == "halt":
            why.append("sent under a HALT breaker")
        elif state == "reduce" and not (
            position * int(order.side) < 0 and order.qty_lots <= abs(position)
        ):
            why.append(f"{order.side.name} {order.qty_lots} does not reduce position {position}")
        inst = run.markets[key].instrument
        price = order.price_ticks
        assert price is not None
        if inst.notional(price, order.qty_lots) > MAX_NOTIONAL:
            why.append("beyond max_order_notional")
        exposure = abs(position + int(order.side) * order.qty_lots)
        if inst.lots_to_qty(exposure) > MAX_POSITION and exposure > abs(position):
            why.append("beyond max_position")
        invalid = inst.check_order(price, order.qty_lots)
        if invalid:
            why.append(invalid)
        if why:
            self.violations.append(f"{order.client_id} {order.side.name} {key}: {'; '.join(why)}")


def build(
    registry: PluginRegistry,
    tmp_path: Path,
    *,
    seed: int = 1,
    duration: str = "30s",
    notional: Decimal = MAX_NOTIONAL,
    manifest: str = MANIFEST,
) -> tuple[Run, Watch]:
    path = tmp_path / "gate.yaml"
    path.write_text(
        manifest.format(duration=duration, seed=seed, notional=notional, position=MAX_POSITION)
    )
    watch = Watch()
    run = Run(
        load_manifest(path, registry),
        registry,
        run_dir=tmp_path / "run",
        venue_factory=watch.factory(registry),
    )
    watch.run = run
    return run, watch


def probe(run: Run) -> GateProbe:
    strategy = run.strategies["probe"].strategy
    assert isinstance(strategy, GateProbe)
    return strategy


def market(run: Run, venue: str = "sim") -> Market:
    return run.strategies["probe"].markets[f"{venue}:BTC/USDT"].market


def take_price(m: Market, side: Side) -> int:
    """A price that crosses the book by 50 ticks (a marketable IOC)."""
    best = m.book.best_ask_ticks() if side is Side.BUY else m.book.best_bid_ticks()
    assert best is not None
    return best + 50 * int(side)


# -- each finding, alone ---------------------------------------------------------------
def test_halt_breaker_stops_takes_twap_and_router(
    probe_registry: PluginRegistry, tmp_path: Path
) -> None:
    """With a HALT breaker tripped, ``ctx.take`` used to send its IOC orders anyway (and
    TWAP and the router take through it). Now none reaches the venue; after the reset
    the same calls trade."""
    run, watch = build(probe_registry, tmp_path)
    start = run.clock.now_ns()
    results: dict[str, Any] = {}

    def trip() -> None:
        assert run.breakers is not None
        low = Decimal("-1e12")
        keys = [market(run).key, market(run, "sim_b").key]
        run.breakers.on_sample(run.clock.now_ns(), dict.fromkeys(keys, low), Decimal(0))

    def try_all(tag: str) -> None:
        m = market(run)
        ctx = probe(run).ctx
        lots = m.instrument.round_qty(0.05)
        results[f"{tag}_take"] = ctx.take(m, Side.BUY, take_price(m, Side.BUY), lots)
        results[f"{tag}_twap"] = ctx.execute(
            "twap", m, Side.BUY, lots, duration_s=4, slices=2, band_bps=50
        )
        results[f"{tag}_sor"] = ctx.execute("sor", m, Side.SELL, lots, max_slippage_bps=50)
        results[f"{tag}_sent"] = len(watch.sent)
        results[f"{tag}_refused"] = dict(run.gate.refusals)

    run.clock.call_at(start + 5 * NS, trip)
    run.clock.call_at(start + 6 * NS, try_all, "halted")
    run.clock.call_at(start + 14 * NS, run.reset_breakers, "all")
    run.clock.call_at(start + 15 * NS, try_all, "after")
    asyncio.run(run.run())

    assert watch.violations == []
    assert results["halted_take"] is None
    assert results["halted_refused"].get("breaker", 0) >= 3  # take, first slice, the legs
    halted_orders = [o for _, o in watch.sent if start + 6 * NS <= o.created_ns < start + 14 * NS]
    assert halted_orders == []
    assert results["after_take"] is not None
    assert results["after_sent"] > results["halted_sent"]
    assert results["halted_sor"].orders == [] and results["halted_sor"].refused
    assert results["after_sor"].orders and not results["after_sor"].refused
    assert results["halted_twap"].orders == [] and results["after_twap"].orders


@pytest.mark.parametrize("side", [Side.BUY, Side.SELL], ids=["bids", "asks"])
def test_self_trade_checks_against_our_best_working_order_on_the_other_side(
    probe_registry: PluginRegistry, tmp_path: Path, side: Side
) -> None:
    """The engine tells the self_trade check our best working price per side: with two
    orders working on one side, a quote on the other side between them crosses the
    better one and never reaches the venue; once they are gone the same quote goes out."""
    with_stp = MANIFEST.replace("risk:\n", "risk:\n  stp: {{type: self_trade}}\n")
    run, watch = build(probe_registry, tmp_path, manifest=with_stp)
    start = run.clock.now_ns()
    seen: dict[str, Any] = {}
    sign = int(side)  # +1: bids work and an ask comes; -1: asks work and a bid comes

    def working_pair() -> None:
        m = market(run)
        best = m.book.best_bid_ticks() if side is Side.BUY else m.book.best_ask_ticks()
        assert best is not None
        lots = m.instrument.round_qty(0.001)
        seen["better"], seen["worse"], seen["lots"] = best - 100 * sign, best - 300 * sign, lots
        # And one order far out on the other side, which must not count as this side's.
        seen["far"] = Quote(side.opposite, best + 100_000 * sign, lots, 5)
        probe(run).ctx.set_quotes(
            m,
            [
                Quote(side, seen["worse"], lots, 0),
                Quote(side, seen["better"], lots, 1),
                seen["far"],
            ],
        )

    def quote_between() -> None:
        m = market(run)
        seen["working"] = sorted(o.price_ticks or 0 for o in run.orders.working("sim", "BTC/USDT"))
        seen["before"] = len(watch.sent)
        seen["between"] = seen["worse"] + 100 * sign
        # The wanted set is the quote and the far one: our two orders are pulled, the
        # quote refused while they work.
        between = Quote(side.opposite, seen["between"], seen["lots"], 0)
        probe(run).ctx.set_quotes(m, [between, seen["far"]])
        seen["at_once"] = watch.sent[seen["before"] :]

    run.clock.call_at(start + 2 * NS, working_pair)
    run.clock.call_at(start + 4 * NS, quote_between)
    asyncio.run(run.run())

    assert watch.violations == []
    assert seen["working"] == sorted([seen["worse"], seen["better"], seen["far"].price_ticks])
    assert seen["at_once"] == []  # would have crossed our order at "better"
    assert run.refusals >= 1  # the self_trade check's, journaled
    pair = [
        o
        for o in run.orders.all_orders()
        if o.side is side and o.price_ticks in (seen["better"], seen["worse"])
    ]
    assert len(pair) >= 2 and all(o.status.is_terminal for o in pair)  # (refilled after fills)
    gone = max(o.updated_ns for o in pair)
    later = [
        o
        for _, o in watch.sent[seen["before"] :]
        if o.side is side.opposite and o.price_ticks == seen["between"]
    ]
    assert later and later[0].created_ns >= gone  # out once both were cancelled


def test_kill_closes_the_gate_for_every_path(
    probe_registry: PluginRegistry, tmp_path: Path
) -> None:
    run, watch = build(probe_registry, tmp_path)
    start = run.clock.now_ns()
    seen: list[Any] = []

    def after_kill() -> None:
        m = market(run)
        ctx = probe(run).ctx
        lots = m.instrument.round_qty(0.05)
        seen.append(ctx.take(m, Side.BUY, take_price(m, Side.BUY), lots))
        bid = m.bid(m.ticks(29000.0, Side.BUY), m.lots(0.01))
        ask = m.ask(m.ticks(31000.0, Side.SELL), m.lots(0.01))
        assert bid is not None and ask is not None
        ctx.set_quotes(m, [bid, ask])
        seen.append(len(watch.sent))

    run.clock.call_at(start + 3 * NS, run.kill, "test")
    run.clock.call_at(start + 3 * NS + 1, after_kill)
    asyncio.run(run.run())
    assert watch.violations == []
    assert seen[0] is None
    assert all(o.created_ns < start + 3 * NS for _, o in watch.sent)
    assert run.gate.closed.startswith("kill switch")


def test_no_path_trades_another_strategys_market(
    probe_registry: PluginRegistry, tmp_path: Path
) -> None:
    """A strategy handed another strategy's market (a module-level cache, a shared
    helper) cannot quote, take or run an algorithm on it: halts, breakers and
    cancel-alls go by the owner, so such an order would slip past them."""
    two = MANIFEST.replace(
        'symbols: [BTC/USDT, "sim_b:BTC/USDT"]',
        "symbols: [BTC/USDT]\n  other:\n    type: gate_probe\n    exchange: sim_b\n"
        "    symbols: [BTC/USDT]",
    )
    run, watch = build(probe_registry, tmp_path, duration="5s", manifest=two)
    start = run.clock.now_ns()
    errors: dict[str, str] = {}

    def trespass() -> None:
        theirs = run.strategies["other"].markets["sim_b:BTC/USDT"].market
        ctx = probe(run).ctx
        lots = theirs.instrument.round_qty(0.05)
        calls = {
            "take": lambda: ctx.take(theirs, Side.BUY, take_price(theirs, Side.BUY), lots),
            "set_quotes": lambda: ctx.set_quotes(
                theirs, [Quote(Side.BUY, take_price(theirs, Side.SELL) - 500, lots, 0)]
            ),
            "execute": lambda: ctx.execute("sor", theirs, Side.SELL, lots, max_slippage_bps=50),
        }
        for name, call in calls.items():
            with pytest.raises(KeyError) as caught:
                call()
            errors[name] = str(caught.value)
        errors["sent"] = str(sum(1 for key, _ in watch.sent if key == theirs.key))

    run.clock.call_at(start + 2 * NS, trespass)
    asyncio.run(run.run())
    assert errors["sent"] == "0"
    for name in ("take", "set_quotes", "execute"):
        assert "strategy 'probe' has no market 'sim_b:BTC/USDT'" in errors[name], errors
    assert watch.violations == []
    assert not run.strategies["probe"].halted  # refused calls, not a failed handler


def test_off_step_take_is_refused_with_the_rule(
    probe_registry: PluginRegistry, tmp_path: Path
) -> None:
    run, watch = build(probe_registry, tmp_path, duration="5s")
    start = run.clock.now_ns()
    out: list[Any] = []

    def odd() -> None:
        m = market(run)
        out.append(probe(run).ctx.take(m, Side.BUY, take_price(m, Side.BUY), 0))
        out.append(run.gate.last_refusal)

    run.clock.call_at(start + 2 * NS, odd)
    asyncio.run(run.run())
    assert out[0] is None
    assert "quantity must be positive" in out[1]
    assert watch.violations == []


def test_breaker_refusals_are_counted_per_order_and_name_the_mode(
    probe_registry: PluginRegistry, tmp_path: Path
) -> None:
    """Under REDUCE, of a long position's quotes only the sells pass, each refused bid is
    counted once and the reason names the mode; a single order (a take, a remote intent)
    is told REDUCE's rule or HALT's."""
    run, _ = build(probe_registry, tmp_path, duration="5s")
    start = run.clock.now_ns()
    out: dict[str, Any] = {}

    def under_breakers() -> None:
        assert run.breakers is not None
        m = market(run)
        # Long 0.1 BTC, booked as any fill is.
        run.portfolio.apply_fill(
            Fill(
                "sim",
                "BTC/USDT",
                "f1",
                "c1",
                Side.BUY,
                m.ticks(30_000.0),
                m.lots(0.1),
                Decimal(0),
                "USDT",
                Liquidity.TAKER,
                run.clock.now_ns(),
            )
        )
        run.breakers.on_sample(run.clock.now_ns(), {}, Decimal("-1e12"))  # pnl_floor: REDUCE
        bids = [m.bid(m.ticks(29_000.0 - i, Side.BUY), m.lots(0.01), i) for i in range(3)]
        asks = [m.ask(m.ticks(31_000.0 + i, Side.SELL), m.lots(0.01), i) for i in range(2)]
        quiet = run.gate.last_refusal
        out["asks_only"] = run.gate.admit(m, "probe", asks)  # type: ignore[arg-type]
        out["asks_only_quiet"] = run.gate.last_refusal == quiet
        before = run.gate.refusals["breaker"]
        out["admitted"] = run.gate.admit(m, "probe", [*bids, *asks])  # type: ignore[list-item]
        out["counted"] = run.gate.refusals["breaker"] - before
        # What the breaker lets through still goes through risk: 0.1 BTC at 100,000 is
        # over max_order_notional.
        out["risk_after_breaker"] = run.gate.admit(
            m,
            "probe",
            [m.ask(m.ticks(100_000.0, Side.SELL), m.lots(0.1))],  # type: ignore[list-item]
        )
        out["quotes_why"] = run.gate.last_refusal
        out["reduce_why"] = run.gate.check(m, "probe", Side.BUY, m.ticks(29_000.0), m.lots(0.01))
        out["selling_passes"] = run.gate.check(
            m, "probe", Side.SELL, m.ticks(31_000.0), m.lots(0.01)
        )
        # Together, the orders must not flip the position either: of three asks of 0.04
        # against a long 0.1, two pass; a take beside working asks counts them.
        big = [m.ask(m.ticks(31_000.0 + i, Side.SELL), m.lots(0.04), i) for i in range(3)]
        out["big_admitted"] = run.gate.admit(m, "probe", big)  # type: ignore[arg-type]
        for q in out["big_admitted"]:
            run.orders.new_order(
                "sim", "BTC/USDT", q.side, q.qty_lots, q.price_ticks, level=q.level
            )
        out["take_over"] = run.gate.check(m, "probe", Side.SELL, m.ticks(31_000.0), m.lots(0.03))
        out["take_within"] = run.gate.check(m, "probe", Side.SELL, m.ticks(31_000.0), m.lots(0.02))
        # market_pnl_floor trips HALT on the market: nothing new passes.
        run.breakers.on_sample(run.clock.now_ns(), {m.key: Decimal("-1e12")}, Decimal("-1e12"))
        out["halt_why"] = run.gate.check(m, "probe", Side.SELL, m.ticks(31_000.0), m.lots(0.01))

    run.clock.call_at(start + 2 * NS, under_breakers)
    asyncio.run(run.run())
    key = "sim:BTC/USDT"
    assert [q.side for q in out["admitted"]] == [Side.SELL, Side.SELL]
    assert out["counted"] == 3
    assert out["risk_after_breaker"] == []
    assert len(out["asks_only"]) == 2 and out["asks_only_quiet"]  # nothing refused, nothing said
    assert out["quotes_why"] == f"breaker REDUCE on {key}"
    assert out["reduce_why"] == (
        f"breaker REDUCE on {key}: BUY 100 lots (with 0 working) would not reduce the position"
    )
    assert [q.qty_lots for q in out["big_admitted"]] == [400, 400]
    assert out["take_over"] == (
        f"breaker REDUCE on {key}: SELL 300 lots (with 800 working) would not reduce the position"
    )
    assert out["take_within"] == ""
    assert out["selling_passes"] == ""
    assert out["halt_why"] == f"breaker HALT on {key}"


# -- everything, interleaved -------------------------------------------------------------
ACTIONS = st.one_of(
    st.tuples(
        st.just("quote"),
        st.sampled_from(["return", "set_quotes"]),
        st.integers(1, 400),  # ticks from the mid
        st.floats(0.001, 0.4),  # size per quote
        st.integers(1, 3),  # levels
    ),
    st.tuples(st.just("take"), st.sampled_from([Side.BUY, Side.SELL]), st.floats(0.001, 0.6)),
    st.tuples(st.just("twap"), st.sampled_from([Side.BUY, Side.SELL]), st.floats(0.001, 0.6)),
    st.tuples(st.just("sor"), st.sampled_from([Side.BUY, Side.SELL]), st.floats(0.001, 0.6)),
    st.tuples(st.just("halt_breaker")),
    st.tuples(st.just("reduce_breaker")),
    st.tuples(st.just("reset")),
    st.tuples(st.just("raise")),
    st.tuples(st.just("kill")),
)
PROGRAMS = st.lists(st.tuples(st.integers(100, 11_900), ACTIONS), min_size=1, max_size=30)


def perform(run: Run, action: tuple[Any, ...]) -> None:
    kind = action[0]
    strategy = probe(run)
    ctx = strategy.ctx
    m = market(run)
    book = m.book
    bid, ask = book.best_bid_ticks(), book.best_ask_ticks()
    if kind == "quote":
        _, via, away, size, levels = action
        if bid is None or ask is None:
            return
        mid = (bid + ask) / 2 * float(m.instrument.tick_size)
        step = away * float(m.instrument.tick_size)
        quotes = []
        for level in range(levels):
            for q in (
                m.bid(m.ticks(mid - step * (level + 1), Side.BUY), m.lots(size), level),
                m.ask(m.ticks(mid + step * (level + 1), Side.SELL), m.lots(size), level),
            ):
                if q is not None:
                    quotes.append(q)
        if via == "return":
            strategy.next_quotes = quotes
        else:
            ctx.set_quotes(m, quotes)
    elif kind in ("take", "twap", "sor"):
        _, side, size = action
        lots = m.instrument.round_qty(size)
        if lots <= 0 or bid is None or ask is None:
            return
        if kind == "take":
            ctx.take(m, side, take_price(m, side), lots)
        elif kind == "twap":
            ctx.execute("twap", m, side, lots, duration_s=3, slices=3, band_bps=30)
        else:
            ctx.execute("sor", m, side, lots, max_slippage_bps=30)
    elif kind == "halt_breaker":
        assert run.breakers is not None
        run.breakers.on_sample(run.clock.now_ns(), {m.key: Decimal("-1e12")}, Decimal(0))
    elif kind == "reduce_breaker":
        assert run.breakers is not None
        run.breakers.on_sample(run.clock.now_ns(), {}, Decimal("-1e12"))
    elif kind == "reset":
        run.reset_breakers("all")
    elif kind == "raise":
        strategy.boom = True
    elif kind == "kill":
        run.kill("property test")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=PROGRAMS, seed=st.integers(1, 1000))
def test_nothing_reaches_a_venue_that_the_gate_forbids(
    probe_registry: PluginRegistry,
    tmp_path_factory: pytest.TempPathFactory,
    program: Any,
    seed: int,
) -> None:
    run, watch = build(probe_registry, tmp_path_factory.mktemp("gate"), seed=seed, duration="12s")
    start = run.clock.now_ns()
    for at_ms, action in program:
        run.clock.call_at(start + at_ms * 1_000_000, perform, run, action)
    asyncio.run(run.run())
    assert watch.violations == [], watch.violations
    assert not run.orders.all_working(), "orders left working after the run"
