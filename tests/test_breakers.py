"""Circuit breakers: each trip and its message, latching, reset and REDUCE filtering."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from quoteforge.breakers import BreakerParams, Breakers, Trip

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
BTC = "sim:BTCUSDT"
ETH = "sim:ETHUSDT"


def make(**params: object) -> tuple[Breakers, list[Trip]]:
    tripped: list[Trip] = []
    return Breakers(BreakerParams.model_validate(params), tripped.append), tripped


def d(value: str | int) -> Decimal:
    return Decimal(value)


@pytest.mark.parametrize("name", ["pnl_floor", "market_pnl_floor"])
def test_a_floor_above_zero_is_refused_as_it_would_trip_at_the_start(name: str) -> None:
    with pytest.raises(ValidationError, match=r"a floor is a loss limit: 0 or less, e\.g\. -500"):
        BreakerParams.model_validate({name: "500"})
    breakers, tripped = make(**{name: "0"})  # any loss trips: allowed, and not at the start
    breakers.on_sample(T0, {BTC: d(0)}, d(0))
    assert tripped == []
    breakers.on_sample(T0 + NS, {BTC: d("-0.01")}, d("-0.01"))
    assert [t.kind for t in tripped] == [name]


def test_pnl_floor_trips_the_run_and_latches_until_reset() -> None:
    breakers, tripped = make(pnl_floor="-100")
    breakers.on_sample(T0, {BTC: d(-60), ETH: d(-30)}, d(-90))
    assert tripped == [] and breakers.state() == "normal"
    breakers.on_sample(T0 + NS, {BTC: d(-80), ETH: d(-30)}, d(-110))
    assert tripped == [Trip("pnl_floor", "halt", None, "total PnL -110 < pnl_floor -100", T0 + NS)]
    assert str(tripped[0]) == (
        "pnl_floor breaker tripped (HALT, run): total PnL -110 < pnl_floor -100"
    )
    assert breakers.state() == breakers.state(BTC) == breakers.state(ETH) == "halt"
    # Latched: PnL recovering does not clear it, and it fires only once.
    breakers.on_sample(T0 + 2 * NS, {BTC: d(0), ETH: d(0)}, d(0))
    breakers.on_sample(T0 + 3 * NS, {BTC: d(-200), ETH: d(0)}, d(-200))
    assert breakers.state() == "halt" and len(tripped) == 1
    # A reset while the floor is still broken trips it again at once: no quote goes out
    # in between (it waited for the next sample, which let quotes out meanwhile).
    assert [t.kind for t in breakers.reset("pnl_floor")] == ["pnl_floor"]
    assert breakers.state() == "halt" and len(tripped) == 2
    assert tripped[1].reason == "total PnL -200 < pnl_floor -100"
    # Once PnL is back above it, a reset holds.
    breakers.on_sample(T0 + 4 * NS, {BTC: d(0), ETH: d(0)}, d(0))
    assert [t.kind for t in breakers.reset("all")] == ["pnl_floor"]
    assert breakers.state() == "normal" and breakers.trips == []
    breakers.on_sample(T0 + 5 * NS, {BTC: d(-200), ETH: d(0)}, d(-200))
    assert breakers.state() == "halt" and len(tripped) == 3


def test_a_market_floor_still_broken_trips_again_at_its_reset() -> None:
    breakers, tripped = make(market_pnl_floor="-50")
    breakers.on_sample(T0, {BTC: d(-60), ETH: d(10)}, d(-50))
    assert [t.kind for t in tripped] == ["market_pnl_floor"] and breakers.state(BTC) == "halt"
    breakers.reset(BTC)
    assert breakers.state(BTC) == "halt" and breakers.state(ETH) == "normal"
    assert tripped[-1].reason == f"{BTC} PnL -60 < market_pnl_floor -50"


def test_drawdown_from_peak_trips_and_reset_rebases_the_peak() -> None:
    breakers, tripped = make(max_drawdown="50", mode="reduce")
    for i, pnl in enumerate([0, 40, 120, 80, 71]):
        breakers.on_sample(T0 + i * NS, {}, d(pnl))
    assert tripped == []
    breakers.on_sample(T0 + 5 * NS, {}, d(69))
    assert tripped[0].reason == "drawdown 51 from peak 120 (PnL 69) > max_drawdown 50"
    assert tripped[0].mode == "reduce" and breakers.state(BTC) == "reduce"
    breakers.reset("run")
    breakers.on_sample(T0 + 6 * NS, {}, d(40))  # 29 below the new peak of 69
    assert breakers.state() == "normal"
    breakers.on_sample(T0 + 7 * NS, {}, d(18))
    assert breakers.state() == "reduce" and "from peak 69" in tripped[1].reason


def test_market_breakers_trip_only_their_market() -> None:
    breakers, tripped = make(market_pnl_floor="-20", market_max_drawdown="30")
    breakers.on_sample(T0, {BTC: d(25), ETH: d(0)}, d(25))
    breakers.on_sample(T0 + NS, {BTC: d(-10), ETH: d(-21)}, d(-31))
    assert {(t.kind, t.market) for t in tripped} == {
        ("market_drawdown", BTC),
        ("market_pnl_floor", ETH),
    }
    reasons = {t.kind: t.reason for t in tripped}
    assert reasons["market_drawdown"] == (
        f"{BTC} drawdown 35 from peak 25 (PnL -10) > market_max_drawdown 30"
    )
    assert reasons["market_pnl_floor"] == f"{ETH} PnL -21 < market_pnl_floor -20"
    assert breakers.state(BTC) == breakers.state(ETH) == "halt"
    assert breakers.state("sim:SOLUSDT") == "normal"
    assert len(breakers.reset(BTC)) == 1
    assert breakers.state(BTC) == "normal" and breakers.state(ETH) == "halt"


def test_floors_and_drawdowns_trip_strictly_beyond_their_limit() -> None:
    """As docs/risk.md says: PnL < floor and drawdown > limit. Exactly at a limit
    nothing trips; a cent beyond it does, for the run and for a market."""
    breakers, tripped = make(
        pnl_floor="-100", max_drawdown="50", market_pnl_floor="-20", market_max_drawdown="30"
    )
    breakers.on_sample(T0, {BTC: d(0), ETH: d(30)}, d(50))  # the peaks: run 50, ETH 30
    breakers.on_sample(T0 + NS, {BTC: d(-20), ETH: d(0)}, d(0))  # every one exactly at its limit
    assert tripped == [] and breakers.state() == "normal"
    breakers.on_sample(
        T0 + 2 * NS, {BTC: d("-20.01"), ETH: d("-0.01")}, d("-0.01")
    )  # a cent beyond
    assert sorted((t.kind, t.market or "run") for t in tripped) == [
        ("drawdown", "run"),
        ("market_drawdown", ETH),
        ("market_pnl_floor", BTC),
    ]
    breakers, tripped = make(pnl_floor="-100")
    breakers.on_sample(T0, {}, d(-100))
    assert tripped == []
    breakers.on_sample(T0 + NS, {}, d("-100.01"))
    assert [t.kind for t in tripped] == ["pnl_floor"]


def test_resetting_a_trip_rebases_only_its_own_peak() -> None:
    """Resetting a market's drawdown measures that market from its PnL now; the run's
    drawdown still counts from the run's peak (and the other way round)."""
    breakers, tripped = make(max_drawdown="50", market_max_drawdown="30")
    breakers.on_sample(T0, {BTC: d(40)}, d(40))
    breakers.on_sample(T0 + NS, {BTC: d(5)}, d(5))  # BTC 35 down; the run 35 down
    assert [t.kind for t in tripped] == ["market_drawdown"]
    breakers.reset(BTC)
    breakers.on_sample(T0 + 2 * NS, {BTC: d(-20)}, d(-20))  # BTC 25 below 5; run 60 below 40
    assert [t.kind for t in tripped] == ["market_drawdown", "drawdown"]
    assert breakers.state(BTC) == "halt"
    breakers.reset("drawdown")
    breakers.on_sample(T0 + 3 * NS, {BTC: d(-26)}, d(-26))  # BTC 31 below 5: trips again
    assert [t.kind for t in tripped][-1] == "market_drawdown"
    assert [t.kind for t in breakers.trips] == ["market_drawdown"]


def test_consecutive_errors_trip_and_an_accepted_order_resets_the_count() -> None:
    breakers, tripped = make(max_consecutive_errors=3)
    breakers.on_order_error(BTC, "insufficient balance", T0)
    breakers.on_order_error(BTC, "insufficient balance", T0)
    breakers.on_order_ok(BTC)
    breakers.on_order_error(BTC, "timeout", T0)
    breakers.on_order_error(BTC, "timeout", T0)
    assert tripped == []
    breakers.on_order_error(BTC, "HTTP 503", T0 + NS)
    assert tripped == [
        Trip(
            "consecutive_errors",
            "halt",
            BTC,
            f"3 consecutive order errors on {BTC} reached max_consecutive_errors 3; last: HTTP 503",
            T0 + NS,
        )
    ]
    breakers.on_order_error(BTC, "timeout")  # a fourth: the count goes on
    assert breakers.state(BTC) == "halt" and breakers.state(ETH) == "normal"
    breakers.reset("consecutive_errors")
    breakers.on_order_error(BTC, "timeout")
    assert breakers.state(BTC) == "normal"  # the count restarted at the reset
    breakers.on_order_error(BTC, "timeout")
    breakers.on_order_error(BTC, "timeout")
    breakers.on_order_ok(BTC)  # latched: an accepted order does not clear it
    assert breakers.state(BTC) == "halt"


def test_unlatched_consecutive_errors_clear_with_the_next_accepted_order() -> None:
    breakers, tripped = make(max_consecutive_errors=2, latch=False)
    breakers.on_order_error(BTC, "timeout", T0)
    breakers.on_order_error(BTC, "timeout", T0)
    assert breakers.state(BTC) == "halt" and len(tripped) == 1
    breakers.on_order_ok(BTC)
    assert breakers.state(BTC) == "normal" and breakers.trips == []


def test_stale_data_trips_after_the_delay_and_unlatched_clears_itself() -> None:
    breakers, tripped = make(stale_after_s=5, latch=False, modes={"stale_data": "reduce"})
    breakers.on_book_state(BTC, False, T0)
    breakers.on_sample(T0 + 4 * NS, {}, d(0))
    assert tripped == []
    breakers.on_sample(T0 + 5 * NS, {}, d(0))
    assert tripped == [
        Trip(
            "stale_data",
            "reduce",
            BTC,
            f"{BTC} book not LIVE for 5s >= stale_after_s 5",
            T0 + 5 * NS,
        )
    ]
    assert breakers.state(BTC) == "reduce"
    breakers.on_book_state(BTC, True, T0 + 6 * NS)
    assert breakers.state(BTC) == "normal" and breakers.trips == []
    assert breakers.history == tripped


def test_reduce_lets_only_position_reducing_quotes_through() -> None:
    breakers, _ = make(max_consecutive_errors=1, mode="reduce")
    assert breakers.allows(BTC, +1, 10) and breakers.allows(BTC, -1, 0)
    breakers.on_order_error(BTC, "reject", T0)
    assert breakers.state(BTC) == "reduce"
    assert breakers.allows(BTC, -1, 10)  # selling out of a long
    assert breakers.allows(BTC, +1, -10)  # buying back a short
    assert not breakers.allows(BTC, +1, 10)  # adding to a long
    assert not breakers.allows(BTC, -1, 0)  # opening a short
    assert breakers.allows(BTC, -1, 10, qty_lots=10)
    assert not breakers.allows(BTC, -1, 10, qty_lots=11)  # would flip the position
    assert breakers.allows(ETH, +1, 10)  # other markets are untouched


def test_halt_allows_nothing_and_kill_wins_over_reduce() -> None:
    breakers, tripped = make(max_drawdown="1", mode="reduce", latch=False)
    breakers.on_sample(T0, {}, d(10))
    breakers.on_sample(T0 + NS, {}, d(5))
    assert breakers.state() == "reduce"
    trip = breakers.kill("operator pressed the kill switch", T0 + 2 * NS)
    assert (
        trip
        == tripped[-1]
        == Trip("kill", "halt", None, "operator pressed the kill switch", T0 + 2 * NS)
    )
    assert not breakers.allows(BTC, -1, 10)
    breakers.on_sample(T0 + 3 * NS, {}, d(10))  # drawdown clears, the kill stays
    assert [t.kind for t in breakers.trips] == ["kill"]
    breakers.reset("kill")
    assert breakers.state() == "normal"


def test_reset_of_nothing_names_what_is_in_force() -> None:
    breakers, _ = make(max_consecutive_errors=1)
    breakers.on_order_error(BTC, "reject", T0)
    with pytest.raises(
        ValueError, match=r"no trip in force matches 'drawdwn'.*consecutive_errors@sim:BTCUSDT"
    ):
        breakers.reset("drawdwn")
    assert breakers.reset("all")[0].kind == "consecutive_errors"
    assert breakers.reset("all") == []


def test_params_are_closed_and_checked() -> None:
    with pytest.raises(ValidationError, match="max_drawdown"):
        BreakerParams(max_drawdown=Decimal(-1))
    with pytest.raises(ValidationError, match="extra"):
        BreakerParams.model_validate({"pnl_flor": -5})
    with pytest.raises(ValidationError, match="modes"):
        BreakerParams.model_validate({"modes": {"drawdown": "pause"}})


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-1_000, 1_000), min_size=1, max_size=60))
def test_drawdown_trips_exactly_when_pnl_falls_max_below_running_peak(pnls: list[int]) -> None:
    breakers, tripped = make(max_drawdown="100")
    peak = None
    first = None
    for i, pnl in enumerate(pnls):
        breakers.on_sample(T0 + i, {}, d(pnl))
        peak = pnl if peak is None else max(peak, pnl)
        if first is None and peak - pnl > 100:
            first = i
    if first is None:
        assert tripped == []
    else:
        assert len(tripped) == 1 and tripped[0].ts_ns == T0 + first
