"""Kraken's REST call counter, paced by the adapter and modelled by the replica.

Every API key has a counter (https://docs.kraken.com/api/docs/guides/spot-rest-ratelimits):
a ledger or trade history call adds 2, any other private call 1 (``AddOrder`` and
``CancelOrder`` are on the trading engine's limiter); it decays at the tier's rate
(starter: at most 15, -0.33/s; intermediate: 20, -0.5/s; pro: 20, -1/s), and a call over
the maximum is refused with ``EAPI:Rate limit exceeded``. The replica counts the same way
(continuously, where the venue lowers its counter every couple of seconds); each test
gives the replica and the adapter the same tier. The pro tier's fast decay keeps the
waits a few seconds long.
"""

from __future__ import annotations

import ast
import contextlib
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import KRAKEN_KIT, kraken_of, running

import quoteforge.exchanges.kraken
from quoteforge.clock import NS, SimClock
from quoteforge.exchanges.ccxt_base import VenueCallError
from quoteforge.exchanges.kraken.ratelimit import KrakenRestGovernor, kraken_rest_cost
from quoteforge.exchanges.kraken.wire import classify_error
from quoteforge.exchanges.testing.conformance import Harness
from quoteforge.exchanges.testing.kraken_replica import KrakenReplica
from quoteforge.model import Order, OrderStatus, Side
from quoteforge.ratelimit import RateLimitError

QUERY_ORDERS = ("POST", "/0/private/QueryOrders")
OPEN_ORDERS = ("POST", "/0/private/OpenOrders")
CLOSED_ORDERS = ("POST", "/0/private/ClosedOrders")


def connected(
    replica: KrakenReplica, symbols: tuple[str, ...] = ("BTC/USD",), **params: Any
) -> contextlib.AbstractAsyncContextManager[Harness]:
    """A started replica and an adapter connected to it with ``params`` (the tier
    among them), both stopped afterwards."""
    return running(KRAKEN_KIT, replica=replica, symbols=symbols, **params)


async def filled_elsewhere(replica: KrakenReplica, client_id: str, price: str, fills: int) -> None:
    """An order of an earlier process of the bot, filled ``fills`` times while no
    adapter ran."""
    await replica.add_order(
        {
            "symbol": "BTC/USD",
            "side": "sell",
            "order_type": "limit",
            "order_qty": str(Decimal("0.0001") * fills),
            "limit_price": price,
            "cl_ord_id": client_id,
        }
    )
    for _ in range(fills):
        await replica.fill_order(client_id, "0.0001")


async def test_a_resume_reads_every_page_of_fills_without_being_refused() -> None:
    """550 trades made while the bot was down are 11 ``TradesHistory`` pages (22 on the
    counter) and one ``QueryOrders`` call: more than a pro key's counter holds (20), and
    on the starter tier the 8th page would be refused. The adapter paces the pages and
    gets all of them; the venue refuses none."""
    replica = KrakenReplica(ping_interval=0.1, rest_tier="pro")
    for i in range(11):
        await filled_elsewhere(replica, f"old-{i}", f"{50100 + i}.0", 50)
    async with connected(replica, tier="pro") as h:
        started = time.monotonic()
        fills = await kraken_of(h).fetch_fills(0)
        took = time.monotonic() - started
    counter = replica.rest_counter
    assert counter.refused == []
    assert len(fills) == len({f.fill_id for f in fills}) == 550
    assert {f.client_id for f in fills} == {f"old-{i}" for i in range(11)}
    assert replica.trades_history_calls == list(range(0, 550, 50))
    # Never refused, the counter stayed at or under its maximum, so the calls beyond
    # the maximum had to wait for the documented decay: at least (23 - 20) / 1 s.
    cost = 2 * len(replica.trades_history_calls) + len(replica.queried_txids)
    assert cost == 23
    assert took >= (cost - counter.maximum) / counter.decay_per_s - 0.05


async def test_reconciling_many_working_orders_stays_under_the_counter() -> None:
    """After the private stream drops, 20 working orders are looked up; 5 of them were
    cancelled while the stream was down. Known by txid, all 20 are one ``QueryOrders``
    call (an ``OpenOrders`` and a ``ClosedOrders`` call for each would be 30 or more, over
    the starter tier's 15), and the cancelled ones are reported."""
    replica = KrakenReplica(ping_interval=0.1)
    async with connected(replica) as h:
        orders = [h.order(Side.BUY, price=h.passive_price(Side.BUY, 40 + i)) for i in range(20)]
        for order in orders:
            await h.place(order)
        assert all(h.status_is(o.client_id, OrderStatus.OPEN)() for o in orders)
        await replica.down_for(0.3)
        for order in orders[:5]:
            resting = replica._order_by_client(order.client_id)
            assert resting is not None
            await replica.cancel_order(resting)
        before = list(replica.request_log)
        adapter = kraken_of(h)
        reconciled = adapter.counters["reconciliations"]
        await h.wait_for(lambda: adapter.counters["reconciliations"] > reconciled, "reconcile")
        for order in orders[:5]:
            await h.wait_for(h.status_is(order.client_id, OrderStatus.CANCELLED), "cancelled")
        asked = replica.request_log[len(before) :]
    assert replica.rest_counter.refused == []
    assert asked.count(QUERY_ORDERS) == 1
    assert asked.count(OPEN_ORDERS) == asked.count(CLOSED_ORDERS) == 0
    assert all(h.status_is(o.client_id, OrderStatus.OPEN)() for o in orders[5:])


async def test_open_orders_of_every_pair_are_one_call() -> None:
    """``OpenOrders`` answers for every pair of the account: read once, split by pair."""
    replica = KrakenReplica(ping_interval=0.1)
    async with connected(replica, ("BTC/USD", "ETH/USD")) as h:
        btc = h.order(Side.BUY)
        await h.place(btc)
        inst = h.adapter.instruments["ETH/USD"]
        eth = Order(
            h.new_id(),
            "kraken",
            "ETH/USD",
            Side.BUY,
            inst.qty_to_lots("0.01"),
            inst.price_to_ticks("2000.00"),
        )
        await h.place(eth)
        before = replica.request_log.count(OPEN_ORDERS)
        open_orders = await kraken_of(h).fetch_open_orders()
        asked = replica.request_log.count(OPEN_ORDERS) - before
    assert asked == 1
    assert {(u.client_id, u.symbol) for u in open_orders} == {
        (btc.client_id, "BTC/USD"),
        (eth.client_id, "ETH/USD"),
    }


async def test_a_read_refused_for_the_rate_waits_and_succeeds() -> None:
    """Another program on the same API key filled the counter: the venue refuses the
    next read (and counts it). The adapter fills its own estimate, waits for the decay
    and asks again, once: the read succeeds."""
    replica = KrakenReplica(ping_interval=0.1, rest_tier="pro")
    await filled_elsewhere(replica, "old-1", "50100.0", 3)
    async with connected(replica, tier="pro", max_rate_wait_s=10.0) as h:
        await replica.use_rest_counter(replica.rest_counter.maximum)
        fills = await kraken_of(h).fetch_fills(0)
        limited = kraken_of(h).counters["rate_limited"]
    assert replica.rest_counter.refused == ["TradesHistory"]
    assert limited == 1
    assert sorted(f.client_id for f in fills) == ["old-1"] * 3


async def test_a_call_that_would_wait_too_long_is_not_sent() -> None:
    """With the counter full for longer than ``max_rate_wait_s``, the read fails with a
    ``rate_limited`` error that says what to check; nothing more reaches the venue."""
    replica = KrakenReplica(ping_interval=0.1, rest_tier="pro")
    async with connected(replica, tier="pro", max_rate_wait_s=1.0) as h:
        adapter = kraken_of(h)
        adapter.rest_governor.on_limit_exceeded(0)  # full, as after a refusal
        sent = len(replica.request_log)
        with pytest.raises(VenueCallError, match=r"rate_limited.*REST call counter.*'pro'"):
            await adapter.fetch_balances()
        assert len(replica.request_log) == sent


def test_every_rest_call_of_the_adapter_is_paced() -> None:
    """The Kraken modules call ``_rest`` only from ``_paced_rest``: no call site can
    skip the counter."""
    unpaced = []
    for path in sorted(Path(quoteforge.exchanges.kraken.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.AsyncFunctionDef | ast.FunctionDef):
                continue
            for node in ast.walk(func):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr == "_rest"
                    and func.name != "_paced_rest"
                ):
                    unpaced.append(f"{path.name}:{node.lineno} in {func.name}")
    assert unpaced == []


# -- the governor and the costs, in virtual time -------------------------------------------
def test_history_calls_cost_two_trading_calls_nothing_public_calls_nothing() -> None:
    assert kraken_rest_cost("private_post_tradeshistory") == 2
    assert kraken_rest_cost("QueryLedgers") == 2
    assert kraken_rest_cost("private_post_queryorders") == 1
    assert kraken_rest_cost("private_post_getwebsocketstoken") == 1
    assert kraken_rest_cost("private_post_addorder") == 0
    assert kraken_rest_cost("CancelOrder") == 0
    assert kraken_rest_cost("public_get_assetpairs") == 0


def test_the_starter_counter_waits_for_its_decay() -> None:
    clock = SimClock(start_ns=0)
    gov = KrakenRestGovernor(clock, tier="starter", headroom=1.0)
    for _ in range(7):
        assert gov.delay_for(2) == 0
        gov.charge(2)
    # 14 of 15 used: the 8th page (2 more) waits until 1 has decayed at 0.33/s.
    assert gov.delay_for(2) == pytest.approx(1 / 0.33)
    clock.run_until(4 * NS)
    assert gov.delay_for(2) == 0


async def test_a_refusal_fills_the_estimate_and_a_long_wait_is_refused() -> None:
    clock = SimClock(start_ns=0)
    gov = KrakenRestGovernor(clock, tier="pro", headroom=0.9)
    gov.on_limit_exceeded(2)  # the venue's counter is over 20, the refused call on top
    assert gov.counter() == pytest.approx(22)
    assert gov.delay_for(1) == pytest.approx(22 + 1 - 18)
    with pytest.raises(RateLimitError, match="max_rate_wait_s"):
        await gov.acquire(1, max_wait=1.0)


def test_a_throttled_answer_is_a_rate_limit_until_its_timestamp() -> None:
    error = classify_error(f"EService: Throttled: {int(time.time()) + 3}")
    assert error.kind == "rate_limited"
    assert 1.5 < error.retry_after_s <= 3.0
