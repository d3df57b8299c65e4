"""Cancels whose outcome stays unknown for seconds (HTTP 500 answers, the venue
unreachable) are not abandoned: the adapter keeps sending them until the venue confirms
the order closed, and reports it CANCELLED then; closing the adapter ends the retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from adapter_helpers import BINANCE_KIT, KRAKEN_KIT, running
from ccxt_kits import CCXT_BINANCE_KIT
from loguru import logger
from test_binance_usdm_conformance import USDM_KIT
from test_polymarket_conformance import POLYMARKET_KIT

from quoteforge.exchange import CancelAll, CancelOrder, ReplaceOrder
from quoteforge.exchanges.ccxt_orders import CANCEL_RETRY_MAX_S
from quoteforge.exchanges.testing.conformance import Harness, VenueKit
from quoteforge.model import Order, OrderStatus, Side

# With the kits' fast timings a first round of tries ends within a second: every
# outage here outlasts it.
OUTAGE_S = 2.0
# Retries are at most reconnect_max_s (0.3 s here) apart: after the venue is back, a
# cancel goes through within one pause and a request or two.
AFTER_RECOVERY_S = 3.0


@contextmanager
def captured_logs() -> Iterator[list[tuple[str, str]]]:
    lines: list[tuple[str, str]] = []
    sink_id = logger.add(
        lambda m: lines.append((m.record["level"].name, m.record["message"])), level="INFO"
    )
    try:
        yield lines
    finally:
        logger.remove(sink_id)


async def _resting(h: Harness) -> Order:
    order = h.order(Side.BUY)
    await h.place(order, until=lambda u: u.status is OrderStatus.OPEN)
    return order


def _open_at_venue(h: Harness, client_id: str) -> bool:
    return any(o.client_id == client_id for o in h.replica.orders(h.symbol))


async def _cancelled_after_recovery(h: Harness, order: Order, recovered_at: float) -> None:
    """The order ends cancelled at the venue and reported CANCELLED, soon after the venue
    is healthy again."""
    await h.wait_for(
        lambda: (
            not _open_at_venue(h, order.client_id)
            and h.status_is(order.client_id, OrderStatus.CANCELLED)()
        ),
        "the cancel to go through once the venue is back",
        timeout=AFTER_RECOVERY_S + max(0.0, recovered_at - time.monotonic()),
    )
    assert [o.status for o in h.replica.orders(h.symbol, open_only=False)
            if o.client_id == order.client_id] == ["canceled"]  # fmt: skip


@pytest.mark.parametrize(
    "conformance_kit",
    [BINANCE_KIT, USDM_KIT, CCXT_BINANCE_KIT, KRAKEN_KIT, POLYMARKET_KIT],
    ids=["binance", "binance_usdm", "ccxt-binance", "kraken", "polymarket"],
)
async def test_a_cancel_answered_with_500s_for_seconds_goes_through_after(
    venue_harness: Harness, conformance_kit: VenueKit
) -> None:
    """Every cancel (and on most venues every lookup) answered 500 for two seconds: the
    order is still open then; once the venue answers again it is cancelled there and
    reported CANCELLED, with one WARNING while it was unconfirmed and one INFO at the end.
    (Kraken cancels over its websocket: the replica's ``cancel_path`` answers
    ``EService:Unavailable``.)"""
    h = venue_harness
    order = await _resting(h)
    with captured_logs() as logs:
        path = getattr(h.replica, "cancel_path", h.replica.order_path)
        await h.replica.fail_http(500, count=100_000, path=path)
        h.adapter.submit([CancelOrder(order.client_id, h.adapter.name, h.symbol)])
        await asyncio.sleep(OUTAGE_S)
        assert _open_at_venue(h, order.client_id)  # the fault held
        assert not h.status_is(order.client_id, OrderStatus.CANCELLED)()
        h.replica.faults.http.clear()
        await _cancelled_after_recovery(h, order, time.monotonic())
        # A report that closed the order while the retry slept is noticed when it wakes.
        deadline = time.monotonic() + CANCEL_RETRY_MAX_S + 2
        while not any(lvl == "INFO" and "confirmed" in m for lvl, m in logs):
            assert time.monotonic() < deadline, logs
            await asyncio.sleep(0.05)
    warnings = [m for lvl, m in logs if lvl == "WARNING" and "keeps retrying" in m]
    assert len(warnings) == 1, logs
    assert order.client_id in warnings[0] and h.symbol in warnings[0]
    confirmed = [m for lvl, m in logs if lvl == "INFO" and "confirmed" in m]
    assert len(confirmed) == 1 and order.client_id in confirmed[0], logs


async def test_a_cancel_sent_while_the_venue_is_unreachable_goes_through_after() -> None:
    """Connections refused for two seconds (sockets cut too): the cancel is sent again
    after the outage, and the order ends cancelled at the venue."""
    async with running(BINANCE_KIT) as h:
        order = await _resting(h)
        await h.replica.down_for(OUTAGE_S)
        back_at = time.monotonic() + OUTAGE_S
        h.adapter.submit([CancelOrder(order.client_id, h.adapter.name, h.symbol)])
        await asyncio.sleep(OUTAGE_S + 0.2)
        await _cancelled_after_recovery(h, order, back_at)


async def test_a_replace_whose_outcome_is_unknown_still_cancels_the_old_order() -> None:
    """The one-call cancel-replace gets 500s, and so do the lookups: the old order may
    still rest, so once the venue is back it is cancelled (not left beside whatever
    replaces it)."""
    async with running(BINANCE_KIT) as h:
        old = await _resting(h)
        new = h.order(Side.BUY, price=(old.price_ticks or 0) - 1)
        await h.replica.fail_http(500, count=100_000, path=h.replica.order_path)
        h.adapter.submit([ReplaceOrder(old.client_id, new)])
        await asyncio.sleep(OUTAGE_S)
        assert _open_at_venue(h, old.client_id)
        h.replica.faults.http.clear()
        await _cancelled_after_recovery(h, old, time.monotonic())


async def test_closing_the_adapter_ends_the_retries() -> None:
    """A cancel still unconfirmed when the adapter closes: close returns, and nothing is
    sent to the venue afterwards."""
    async with running(BINANCE_KIT) as h:
        order = await _resting(h)
        await h.replica.fail_http(500, count=100_000, path=h.replica.order_path)
        h.adapter.submit([CancelOrder(order.client_id, h.adapter.name, h.symbol)])
        await asyncio.sleep(OUTAGE_S)
        await asyncio.wait_for(h.adapter.close(), 5)
        sent = len(h.replica.request_log)
        await asyncio.sleep(1.0)
        assert h.replica.request_log[sent:] == []
        assert _open_at_venue(h, order.client_id)


async def test_a_cancel_all_is_not_held_up_by_a_cancel_being_retried() -> None:
    """Single cancels keep failing but the venue's cancel-all works (another endpoint):
    a ``CancelAll`` (the run's last resort at shutdown) goes out at once, not after the
    retried cancel, and closes the order, which ends the retries."""
    async with running(BINANCE_KIT) as h:
        order = await _resting(h)
        await h.replica.fail_http(500, count=100_000, path=h.replica.order_path)
        h.adapter.submit([CancelOrder(order.client_id, h.adapter.name, h.symbol)])
        await asyncio.sleep(OUTAGE_S)
        h.adapter.submit([CancelAll(h.adapter.name, h.symbol)])
        await _cancelled_after_recovery(h, order, time.monotonic())
        sent = len(h.replica.request_log)
        await asyncio.sleep(1.0)
        assert ("DELETE", h.replica.order_path) not in h.replica.request_log[sent:]
