"""Order-path faults seen live against Binance, reproduced on the replica: a -1007 whose
order executes late, a cancel refused by a rate limit, a cancel-replace refused by the
order-rate governor; and an order filled beyond its size."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

from adapter_helpers import BINANCE_KIT, binance_of, running
from loguru import logger

from quoteforge.clock import LiveClock, SimClock
from quoteforge.exchange import CancelOrder, PlaceOrder, ReplaceOrder
from quoteforge.exchanges.testing.binance_replica import BinanceReplica
from quoteforge.exchanges.testing.conformance import Harness
from quoteforge.model import Fill, Liquidity, Order, OrderStatus, Side, TimeInForce
from quoteforge.orders import OrderManager

# A short request window keeps the -1007 scenarios to about two seconds.
WINDOW_MS = 1000


async def _taking_order(h: Harness) -> Order:
    """An IOC buy at the best ask, which holds far more than the order (so a second
    execution of it would fill too)."""
    ask = h.replica_levels("sell")[0][0]
    await h.replica.set_level(h.symbol, "sell", h.instrument.ticks_to_price(ask), "1.0")
    return h.order(Side.BUY, price=ask, tif=TimeInForce.IOC)


def _filled(h: Harness, order: Order) -> int:
    return sum(f.qty_lots for f in h.sink.fills_of(order.client_id))


async def test_a_minus_1007_order_that_executes_late_is_not_sent_twice() -> None:
    """-1007, and the backend executes the order 0.6 s later, inside its recvWindow:
    lookups find nothing meanwhile, yet no resend goes out before timestamp +
    recvWindow; the order is filled once."""
    async with running(BINANCE_KIT, recv_window_ms=WINDOW_MS) as h:
        order = await _taking_order(h)
        await h.replica.answer_unknown_then_execute(0.6)
        h.adapter.submit([PlaceOrder(order)])
        await h.wait_for(lambda: h.replica.late_outcomes != [], "the late execution")
        await h.wait_for(lambda: _filled(h, order) >= order.qty_lots, "the fill")
        await h.wait_for(
            lambda: getattr(h.sink.last(order.client_id), "status", OrderStatus.OPEN).is_terminal,
            "the order's end",
        )
        await _settle(h, 0.8)  # a resend would have gone out by now
        assert h.replica.late_outcomes == [(order.client_id, "executed")]
        assert h.accepted(order.client_id) == 1
        assert _filled(h, order) == order.qty_lots
        assert binance_of(h).counters["resends"] == 0


async def test_a_minus_1007_order_that_never_executes_is_resent_once_after_its_window() -> None:
    """-1007 and the backend only gets to the order after its recvWindow (it drops it):
    the adapter resends once, not before timestamp + recvWindow, and the order fills."""
    async with running(BINANCE_KIT, recv_window_ms=WINDOW_MS) as h:
        order = await _taking_order(h)
        await h.replica.answer_unknown_then_execute(WINDOW_MS / 1000 + 0.5)
        started = time.monotonic()
        h.adapter.submit([PlaceOrder(order)])
        await h.wait_for(lambda: _filled(h, order) == order.qty_lots, "the resent order's fill")
        assert time.monotonic() - started >= WINDOW_MS / 1000
        await h.wait_for(lambda: h.replica.late_outcomes != [], "the late original")
        assert h.replica.late_outcomes == [(order.client_id, "expired")]
        assert h.accepted(order.client_id) == 1
        assert binance_of(h).counters["resends"] == 1
        assert binance_of(h).counters["resend_waits"] >= 1


async def _settle(h: Harness, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    await h.wait_for(lambda: time.monotonic() >= deadline, "time to pass", seconds + 1)


def _manager() -> OrderManager:
    return OrderManager(None, LiveClock(), "qf")


def _apply(om: OrderManager, h: Harness, mark: int) -> int:
    """Give the run's order manager the reports the adapter sent since ``mark``."""
    for update in h.sink.updates[mark:]:
        om.apply_update(update)
    return len(h.sink.updates)


async def _resting(h: Harness, om: OrderManager) -> Order:
    template = h.order(Side.BUY)
    order = om.new_order(
        h.adapter.name, h.symbol, Side.BUY, template.qty_lots, template.price_ticks
    )
    await h.place(order, until=lambda u: u.status is OrderStatus.OPEN)
    _apply(om, h, 0)
    assert order.status is OrderStatus.OPEN
    return order


async def test_a_cancel_refused_by_a_ban_is_sent_again_when_the_ban_ends() -> None:
    """418 with Retry-After longer than the adapter may wait: the cancel is not lost;
    it goes out once the ban is over and the order ends cancelled, at the venue too."""
    async with running(BINANCE_KIT, max_rate_wait_s=0.3) as h:
        om = _manager()
        order = await _resting(h, om)
        await h.replica.fail_http(418, retry_after=1, path=h.replica.order_path)
        assert om.request_cancel(order.client_id) is order
        h.adapter.submit([CancelOrder(order.client_id, h.adapter.name, h.symbol)])
        await h.wait_for(
            h.status_is(order.client_id, OrderStatus.CANCELLED), "the cancel", timeout=4
        )
        _apply(om, h, 0)
        assert order.status is OrderStatus.CANCELLED
        assert binance_of(h).governor.bans == 1
        assert [o.client_id for o in h.replica.orders(h.symbol)] == []


async def test_a_cancel_the_venue_refuses_returns_the_order_to_open() -> None:
    """A cancel the venue refuses (not a rate limit): the run hears it, although the
    order's status did not change, and manages the order again."""
    async with running(BINANCE_KIT) as h:
        om = _manager()
        order = await _resting(h, om)
        mark = len(h.sink.updates)
        body = '{"code":-2015,"msg":"Invalid API-key, IP, or permissions for action."}'
        await h.replica.fail_http(401, path=h.replica.order_path, body=body)
        om.request_cancel(order.client_id)
        h.adapter.submit([CancelOrder(order.client_id, h.adapter.name, h.symbol)])
        await h.wait_for(
            lambda: any("cancel refused" in u.reason for u in h.sink.updates[mark:]),
            "the refusal",
        )
        _apply(om, h, mark)
        assert order.status is OrderStatus.OPEN
        assert "cancel refused" in order.reason
        assert [o.client_id for o in h.replica.orders(h.symbol)] == [order.client_id]


async def test_a_replace_the_order_governor_refuses_leaves_the_old_order_open() -> None:
    """The governor's 10-second order window is full: the replacement is rejected
    locally, and the order it was to replace, still resting, is OPEN again for the
    run (not PENDING_REPLACE for ever)."""
    # Our share of 2 orders per 10 s is 1: the first order fills it.
    replica = BinanceReplica(ping_interval=0.1, order_limit_10s=2)
    async with running(BINANCE_KIT, replica=replica, max_rate_wait_s=0.2) as h:
        om = _manager()
        # The 10 s windows start on the clock's tens of seconds: begin early in one, so
        # the first order and the replacement count in the same window.
        if (into := time.time() % 10) > 4:
            await asyncio.sleep(10 - into + 0.05)
        old = await _resting(h, om)
        mark = len(h.sink.updates)
        new = om.build_order(
            h.adapter.name, h.symbol, Side.BUY, old.qty_lots, (old.price_ticks or 0) + 1
        )
        om.request_replace(old.client_id, new)
        assert old.status is OrderStatus.PENDING_REPLACE
        h.adapter.submit([ReplaceOrder(old.client_id, new)])
        await h.wait_for(h.status_is(new.client_id, OrderStatus.REJECTED), "the refusal")
        _apply(om, h, mark)
        assert new.status is OrderStatus.REJECTED
        assert "rate limit" in new.reason
        assert old.status is OrderStatus.OPEN
        assert [o.client_id for o in om.working(h.adapter.name, h.symbol)] == [old.client_id]
        assert [o.client_id for o in h.replica.orders(h.symbol)] == [old.client_id]
        # Managed again: the run can cancel it.
        assert om.request_cancel(old.client_id) is old


def test_a_fill_beyond_the_order_size_counts_and_is_logged_as_an_error() -> None:
    """The venue says both trades happened, so both count (position and the order's
    filled_lots, the sum of its fills); the excess is an error naming the order."""
    om = OrderManager(None, SimClock(1_700_000_000_000_000_000), "qf")
    order = om.new_order("binance", "BTCUSDT", Side.BUY, 10, 100)
    errors: list[str] = []
    sink_id = logger.add(lambda m: errors.append(str(m)), level="ERROR", format="{message}")
    try:
        for fill_id in ("t1", "t2"):
            fill = Fill(
                "binance", "BTCUSDT", fill_id, order.client_id, Side.BUY, 100, 10,
                Decimal("0"), "USDT", Liquidity.TAKER, 1,
            )  # fmt: skip
            assert om.apply_fill(fill) is order  # booked by the caller
    finally:
        logger.remove(sink_id)
    assert (order.status, order.filled_lots) == (OrderStatus.FILLED, 20)
    assert len(errors) == 1
    assert order.client_id in errors[0] and "t2" in errors[0] and "10 lots" in errors[0]
