"""Rate-limit governors in virtual time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quoteforge.clock import NS, SimClock
from quoteforge.exchanges.binance.ratelimit import BinanceRateGovernor
from quoteforge.exchanges.kraken.ratelimit import (
    KrakenRateGovernor,
    kraken_amend_cost,
    kraken_cancel_cost,
)
from quoteforge.ratelimit import RateLimitError


def test_binance_window_fills_then_waits_for_the_next_minute() -> None:
    clock = SimClock(start_ns=10 * NS)
    gov = BinanceRateGovernor(clock, weight_per_minute=100, headroom=1.0)
    gov.reserve(90)
    assert gov.delay_for(10) == 0
    assert gov.delay_for(11) == pytest.approx(50.0)  # window started at t=0, ends at 60 s
    clock.run_until(60 * NS)
    assert gov.delay_for(100) == 0


def test_binance_headers_override_the_local_estimate() -> None:
    clock = SimClock(start_ns=0)
    gov = BinanceRateGovernor(clock, weight_per_minute=1000, orders_per_10s=10, headroom=1.0)
    gov.observe(200, {"X-MBX-USED-WEIGHT-1M": "990", "x-mbx-order-count-10s": "10"})
    assert gov.weight.used == 990
    assert gov.delay_for(5) == 0 and gov.delay_for(11) > 0
    assert gov.delay_for(1, orders=1) == pytest.approx(10.0)


def test_binance_exchange_info_limits_with_headroom() -> None:
    gov = BinanceRateGovernor(SimClock(), headroom=0.5)
    gov.configure(
        [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": 1200,
            },
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 160000},
        ]
    )
    assert (gov.weight.limit, gov.orders_10s.limit, gov.orders_day.limit) == (600, 25, 80000)


@pytest.mark.parametrize(("status", "banned"), [(429, False), (418, True)])
def test_retry_after_blocks_everything(status: int, banned: bool) -> None:
    clock = SimClock(start_ns=0)
    gov = BinanceRateGovernor(clock)
    gov.observe(status, {"Retry-After": "7"})
    assert gov.delay_for(1) == pytest.approx(7.0)
    assert (gov.bans, gov.limit_hits) == ((1, 0) if banned else (0, 1))
    clock.run_until(7 * NS)
    assert gov.delay_for(1) == 0


async def test_acquire_refuses_a_wait_longer_than_allowed() -> None:
    gov = BinanceRateGovernor(SimClock())
    gov.on_retry_after(120)
    with pytest.raises(RateLimitError, match="would wait"):
        await gov.acquire(1, max_wait=1.0)


def test_bad_headroom_is_refused() -> None:
    with pytest.raises(ValueError, match="headroom"):
        BinanceRateGovernor(SimClock(), headroom=0)


def test_kraken_cancel_penalty_follows_the_resting_time() -> None:
    assert [kraken_cancel_cost(a) for a in (0, 4.9, 5, 12, 30, 60, 200, 400)] == [
        8,
        8,
        6,
        5,
        4,
        2,
        1,
        0,
    ]
    assert kraken_amend_cost(1) == 4 and kraken_amend_cost(100) == 1


def test_kraken_counter_decays_per_pair() -> None:
    clock = SimClock(start_ns=0)
    gov = KrakenRateGovernor(clock, tier="starter", headroom=1.0)
    gov.charge("BTC/USD", 60)
    assert gov.delay_for("BTC/USD", 1) == pytest.approx(1.0)
    assert gov.delay_for("ETH/USD", 1) == 0
    clock.run_until(30 * NS)
    assert gov.counter("BTC/USD") == pytest.approx(30.0)


def test_kraken_unknown_tier_is_refused() -> None:
    with pytest.raises(ValueError, match="starter"):
        KrakenRateGovernor(SimClock(), tier="gold")


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(st.floats(0, 20), st.floats(0, 9)), min_size=1, max_size=40))
def test_kraken_waiting_the_delay_always_fits(events: list[tuple[float, float]]) -> None:
    clock = SimClock(start_ns=0)
    gov = KrakenRateGovernor(clock, tier="intermediate")
    for gap, cost in events:
        clock.run_until(clock.now_ns() + int(gap * NS))
        delay = gov.delay_for("P", cost)
        clock.run_until(clock.now_ns() + int(delay * NS) + 1)
        assert gov.counter("P") + cost <= gov.maximum + 1e-6
        gov.charge("P", cost)
        assert gov.counter("P") >= 0
