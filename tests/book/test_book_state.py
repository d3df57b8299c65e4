"""Book state machine: legal transitions, observers, staleness in virtual time."""

from __future__ import annotations

import pytest
from book_helpers import fixture_lines, fixture_text

from quoteforge.book import BookState, BookStateMachine, L2Book, Outcome
from quoteforge.clock import SimClock
from quoteforge.exchanges.binance.book import BinanceSpotBookSource
from quoteforge.model import Instrument

MS = 1_000_000


def test_transitions_are_checked_and_observed(btcusdt: Instrument) -> None:
    book = L2Book(btcusdt)
    machine = BookStateMachine(book)
    seen: list[tuple[str, str, str, str]] = []
    machine.add_observer(lambda b, old, new, why: seen.append((b.key, old.value, new.value, why)))
    assert machine.transition(BookState.LIVE, "snapshot")
    assert not machine.transition(BookState.LIVE, "again")  # no-op, nobody told
    machine.transition(BookState.RESYNCING, "gap")
    fresh = BookStateMachine(L2Book(btcusdt))
    with pytest.raises(ValueError, match=r"cannot go from SYNCING to STALE .* can go to: LIVE"):
        fresh.transition(BookState.STALE, "never synced")
    assert fresh.book.state is BookState.SYNCING
    assert seen == [
        ("binance:BTCUSDT", "SYNCING", "LIVE", "snapshot"),
        ("binance:BTCUSDT", "LIVE", "RESYNCING", "gap"),
    ]


def test_a_failing_observer_does_not_stop_the_others(btcusdt: Instrument) -> None:
    machine = BookStateMachine(L2Book(btcusdt))
    seen: list[BookState] = []

    def broken(*args: object) -> None:
        raise RuntimeError("observer bug")

    machine.add_observer(broken)
    machine.add_observer(lambda b, old, new, why: seen.append(new))
    machine.transition(BookState.LIVE, "snapshot")
    assert seen == [BookState.LIVE]
    assert machine.book.state is BookState.LIVE


def test_silence_makes_a_live_book_stale_in_virtual_time(btcusdt: Instrument) -> None:
    clock = SimClock(start_ns=1_000 * MS)
    source = BinanceSpotBookSource(btcusdt, clock=clock, stale_after_ms=500)
    seen: list[tuple[BookState, BookState, str]] = []
    source.add_observer(lambda b, old, new, why: seen.append((old, new, why)))
    source.states.start_watchdog()
    raws = fixture_lines("binance", "depth_updates.jsonl")
    source.on_snapshot(fixture_text("binance", "depth_snapshot.json"))
    for raw in raws[5:8]:
        clock.run_until(clock.now_ns() + 100 * MS)
        source.on_message(raw)
    assert source.state is BookState.LIVE
    clock.run_until(clock.now_ns() + 400 * MS)
    assert source.state is BookState.LIVE  # 400 ms of silence is within the limit
    clock.run_until(clock.now_ns() + 400 * MS)
    assert source.state is BookState.STALE
    assert "no message for" in seen[-1][2]
    # The next event still chains onto the last one: nothing was missed, back to LIVE.
    assert source.on_message(raws[8]) is Outcome.APPLIED
    assert source.state is BookState.LIVE
    assert [(old, new) for old, new, _ in seen] == [
        (BookState.SYNCING, BookState.LIVE),
        (BookState.LIVE, BookState.STALE),
        (BookState.STALE, BookState.LIVE),
    ]
    source.states.stop_watchdog()


def test_feed_down_then_reconnect_goes_through_resync(btcusdt: Instrument) -> None:
    asked: list[str] = []
    source = BinanceSpotBookSource(
        btcusdt, stale_after_ms=None, on_resync=lambda s, why: asked.append(why)
    )
    raws = fixture_lines("binance", "depth_updates.jsonl")
    source.on_snapshot(fixture_text("binance", "depth_snapshot.json"))
    source.on_message(raws[5], 0)
    source.feed_down("websocket closed (1006)")
    assert source.state is BookState.STALE
    source.reconnected()
    assert source.state is BookState.RESYNCING and asked == ["reconnected"]
    assert source.on_message(raws[20], 0) is Outcome.BUFFERED
    source.on_snapshot(fixture_text("binance", "depth_snapshot_late.json"))
    assert source.state is BookState.LIVE


def test_check_needs_a_clock_or_an_explicit_time(btcusdt: Instrument) -> None:
    machine = BookStateMachine(L2Book(btcusdt), stale_after_ns=10)
    machine.transition(BookState.LIVE, "snapshot")
    assert machine.check(now_ns=5) is False
    assert machine.check(now_ns=50) is True
    with pytest.raises(ValueError, match="no clock"):
        machine.now_ns()
    with pytest.raises(ValueError, match="watchdog needs"):
        machine.start_watchdog()
