"""Throughput of the simulated exchange's matching engine on a seeded order-flow mix.

Two flows (short queues spread over many ticks; deep queues on the first ticks) run
through the engine and through a plain sorted-dict-of-lists book in the same process;
prints operations/s and the ratio, writes bench/results/matching_bench.json.
Usage: python bench/matching_bench.py [--ops N] [--seed S] [--repeat R]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from sortedcontainers import SortedDict

from quoteforge.exchanges.sim.matching import MatchingEngine, SimOrder
from quoteforge.model import Instrument, OrderType, Side, TimeInForce

RESULTS = Path(__file__).resolve().parent / "results" / "matching_bench.json"
INSTRUMENT = Instrument("sim", "BTC-USD", "BTC", "USD", Decimal("0.1"), Decimal("0.001"))
MIX = {"add": 0.55, "cancel": 0.30, "replace": 0.05, "marketable": 0.10}


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    depth_rate: float  # rate of the exponential distance from the touch, in ticks
    max_depth: int
    cancel_pool: int  # cancels and replaces pick among this many recent orders
    marketable_share: float


SCENARIOS = (
    Scenario("touch", "adds spread over ~30 ticks, short queues", 0.4, 30, 400, 0.10),
    Scenario("deep", "adds on the first 3 ticks, queues of ~100 orders", 2.0, 2, 20_000, 0.03),
)


@dataclass(frozen=True, slots=True)
class Op:
    kind: str
    order: SimOrder | None = None
    order_id: str = ""
    price_ticks: int = 0
    qty_lots: int = 0


def make_flow(n_ops: int, seed: int, scenario: Scenario) -> list[Op]:
    """Adds near the touch around a random-walk mid, cancels and replaces of recent
    orders, and marketable IOC/market orders that take one or a few levels."""
    rng = random.Random(seed)
    mid = 100_000
    recent: list[str] = []
    ops: list[Op] = []
    kinds = list(MIX)
    weights = [*list(MIX.values())[:3], scenario.marketable_share]
    for i in range(n_ops):
        if rng.random() < 0.02:
            mid += rng.choice((-1, 1))
        kind = rng.choices(kinds, weights)[0]
        if kind in ("cancel", "replace") and not recent:
            kind = "add"
        if kind == "add":
            side = rng.choice((Side.BUY, Side.SELL))
            offset = min(int(rng.expovariate(scenario.depth_rate)), scenario.max_depth)
            price = mid - 1 - offset if side is Side.BUY else mid + 1 + offset
            tif = TimeInForce.POST_ONLY if rng.random() < 0.2 else TimeInForce.GTC
            order_id = f"o{i}"
            owner = f"mm{rng.randrange(8)}"
            order = SimOrder.limit(order_id, owner, side, price, rng.randint(1, 20), tif, i)
            ops.append(Op("add", order))
            recent.append(order_id)
            if len(recent) > scenario.cancel_pool:
                recent.pop(rng.randrange(scenario.cancel_pool // 2))
        elif kind == "cancel":
            ops.append(Op("cancel", order_id=recent.pop(rng.randrange(len(recent)))))
        elif kind == "replace":
            order_id = recent[rng.randrange(len(recent))]
            price = mid + rng.randint(-8, 8)
            ops.append(Op("replace", order_id=order_id, price_ticks=price, qty_lots=20))
        else:
            side = rng.choice((Side.BUY, Side.SELL))
            qty = rng.randint(1, 60)
            owner = f"taker{rng.randrange(4)}"
            if rng.random() < 0.5:
                order = SimOrder.market(f"o{i}", owner, side, qty, ts_ns=i)
            else:
                reach = rng.randint(0, 3)
                price = mid + reach if side is Side.BUY else mid - reach
                order = SimOrder.limit(f"o{i}", owner, side, price, qty, TimeInForce.IOC, i)
            ops.append(Op("marketable", order))
    return ops


class SortedListsBook:
    """The straightforward design: a SortedDict of price -> list of orders, list.remove
    for cancels. No self-trade prevention; used as the reference for the ratio."""

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()  # -price -> [order, ...]
        self.asks: SortedDict = SortedDict()  # price -> [order, ...]
        self.orders: dict[str, SimOrder] = {}
        self.traded_lots = 0

    def submit(self, order: SimOrder) -> None:
        buy = order.side is Side.BUY
        book = self.asks if buy else self.bids
        limit = order.price_ticks
        if order.tif is TimeInForce.POST_ONLY and book and limit is not None:
            best = book.keys()[0] if buy else -book.keys()[0]
            if best <= limit if buy else best >= limit:
                return
        left = order.qty_lots - order.filled_lots
        while left and book:
            key, queue = book.peekitem(0)
            price = key if buy else -key
            if limit is not None and (price > limit if buy else price < limit):
                break
            while left and queue:
                maker = queue[0]
                fill = min(left, maker.qty_lots - maker.filled_lots)
                maker.filled_lots += fill
                left -= fill
                self.traded_lots += fill
                if maker.filled_lots == maker.qty_lots:
                    queue.pop(0)
                    del self.orders[maker.order_id]
            if not queue:
                del book[key]
        order.filled_lots = order.qty_lots - left
        rests = order.order_type is OrderType.LIMIT and order.tif is not TimeInForce.IOC
        if left and rests and limit is not None:
            own = self.bids if buy else self.asks
            own.setdefault(-limit if buy else limit, []).append(order)
            self.orders[order.order_id] = order

    def cancel(self, order_id: str) -> SimOrder | None:
        order = self.orders.pop(order_id, None)
        if order is None:
            return None
        price = order.price_ticks
        assert price is not None  # only limit orders rest
        own, key = (self.bids, -price) if order.side is Side.BUY else (self.asks, price)
        queue = own[key]
        queue.remove(order)
        if not queue:
            del own[key]
        return order

    def replace(self, order_id: str, price: int, qty: int) -> None:
        order = self.orders.get(order_id)
        if order is None:
            return
        if qty <= order.filled_lots:
            self.cancel(order_id)
            return
        if price == order.price_ticks and qty <= order.qty_lots:
            order.qty_lots = qty
            return
        self.cancel(order_id)
        post_only = order.tif is TimeInForce.POST_ONLY
        book = self.bids if order.side is Side.SELL else self.asks
        if post_only and book:
            best = book.keys()[0] if order.side is Side.BUY else -book.keys()[0]
            if best <= price if order.side is Side.BUY else best >= price:
                return
        order.price_ticks, order.qty_lots = price, qty
        self.submit(order)


def fresh(ops: list[Op]) -> list[Op]:
    """A copy of the flow with new order objects: each run owns and mutates its own."""
    copied = []
    for op in ops:
        if op.order is None:
            copied.append(op)
        else:
            o = op.order
            order = SimOrder(
                o.order_id, o.owner, o.side, o.order_type, o.tif, o.price_ticks, o.qty_lots, o.ts_ns
            )
            copied.append(Op(op.kind, order))
    return copied


def settle_gc() -> None:
    """Move the pre-built flow out of the collector's sight: a full collection would
    otherwise walk every input order and bury the book's own cost."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def run_engine(ops: list[Op], stp: str) -> tuple[float, int, MatchingEngine]:
    engine = MatchingEngine(INSTRUMENT, self_trade_prevention=stp)
    submit, cancel, replace = engine.submit, engine.cancel, engine.replace
    drain = engine.drain_level_changes
    traded = 0
    settle_gc()
    start = time.perf_counter()
    for i, op in enumerate(ops):
        if op.order is not None:
            result = submit(op.order)
        elif op.kind == "cancel":
            cancel(op.order_id)
            continue
        else:
            result = replace(op.order_id, op.price_ticks, op.qty_lots, i)
        for trade in result.trades:
            traded += trade.qty_lots
        if not i & 63:
            drain()  # the venue publishes deltas in batches
    elapsed = time.perf_counter() - start
    drain()
    return elapsed, traded, engine


def run_reference(ops: list[Op]) -> tuple[float, int, SortedListsBook]:
    book = SortedListsBook()
    settle_gc()
    start = time.perf_counter()
    for op in ops:
        if op.order is not None:
            book.submit(op.order)
        elif op.kind == "cancel":
            book.cancel(op.order_id)
        else:
            book.replace(op.order_id, op.price_ticks, op.qty_lots)
    return time.perf_counter() - start, book.traded_lots, book


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=300_000, help="operations per run")
    parser.add_argument("--seed", type=int, default=20240611, help="seed of the order flow")
    parser.add_argument("--repeat", type=int, default=3, help="runs per design; best is kept")
    args = parser.parse_args()

    results = [run_scenario(scenario, args.ops, args.seed, args.repeat) for scenario in SCENARIOS]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "matching_engine",
        "ops": args.ops,
        "seed": args.seed,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "scenarios": results,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def run_scenario(scenario: Scenario, n_ops: int, seed: int, repeat: int) -> dict[str, object]:
    flow = make_flow(n_ops, seed, scenario)
    counts = {kind: sum(op.kind == kind for op in flow) for kind in MIX}
    best: dict[str, float] = {}
    traded: dict[str, int] = {}
    depth = (0, 0)
    resting = 0
    for _ in range(repeat):
        for stp in ("none", "cancel_resting"):
            elapsed, lots, engine = run_engine(fresh(flow), stp)
            name = f"engine[stp={stp}]"
            best[name] = min(best.get(name, float("inf")), elapsed)
            traded[name] = lots
            bids, asks = engine.levels(Side.BUY, 10**6), engine.levels(Side.SELL, 10**6)
            depth = (len(bids), len(asks))
            resting = len(engine)
        elapsed, lots, _ = run_reference(fresh(flow))
        best["sorted_lists"] = min(best.get("sorted_lists", float("inf")), elapsed)
        traded["sorted_lists"] = lots

    # Without self-trade prevention both books follow the same rules: same volume.
    if traded["engine[stp=none]"] != traded["sorted_lists"]:
        raise SystemExit(
            f"{scenario.name}: engine traded {traded['engine[stp=none]']} lots but the "
            f"reference book {traded['sorted_lists']}: the two disagree on the same flow"
        )
    rates = {name: n_ops / seconds for name, seconds in best.items()}
    reference_rate = rates["sorted_lists"]
    print(f"[{scenario.name}] {scenario.description}: {n_ops} ops, seed {seed}, mix {counts}")
    for name, rate in rates.items():
        print(
            f"  {name:<24} {rate:>12,.0f} ops/s  {1e6 / rate:6.2f} us/op  "
            f"x{rate / reference_rate:.2f} vs sorted_lists  traded {traded[name]} lots"
        )
    print(f"  final book: {resting} orders on {depth[0]} bid and {depth[1]} ask levels")
    return {
        "name": scenario.name,
        "description": scenario.description,
        "mix": counts,
        "ops_per_s": {name: round(rate) for name, rate in rates.items()},
        "ratio_vs_sorted_lists": {
            name: round(rate / reference_rate, 3) for name, rate in rates.items()
        },
        "traded_lots": traded,
        "final_levels": {"bids": depth[0], "asks": depth[1]},
        "final_resting_orders": resting,
    }


if __name__ == "__main__":
    main()
