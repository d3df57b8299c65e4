"""What the Polymarket account holds when a run starts, on the replica: tokens held from
before are refused by default and adopted as the opening position under
``start_position: adopt`` (balance from the CLOB, average price from the data API's
``/positions``); after a resume they and the first life's fills are settled at
resolution; and orders of an earlier process, known to the journal by their hash, are
recognised as ours (open orders and fills), not as ``venue:<hash>``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from polymarket_orders import NO, YES, example_params, order, placed, wait_for

from quoteforge.book import BookState
from quoteforge.clock import LiveClock
from quoteforge.engine import Run
from quoteforge.exchange import PlaceOrder, VenueContext
from quoteforge.exchanges.polymarket import PolymarketClob, PolymarketParams
from quoteforge.exchanges.testing.conformance import FAST_PARAMS, RecordingSink
from quoteforge.exchanges.testing.polymarket_replica import PolymarketReplica
from quoteforge.manifest import load_manifest
from quoteforge.model import Order, OrderStatus, Side
from quoteforge.registry import PluginRegistry

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "polymarket.yaml"
EYES, ENO = "polymarket:event/YES", "polymarket:event/NO"


def overrides(replica: PolymarketReplica, *more: str) -> list[str]:
    sets = [f"exchanges.polymarket.params.{k}={v}" for k, v in example_params(replica).items()]
    return [*sets, *more, "run.duration=60s", "run.cancel_timeout=10s", "report.png=false"]


def env(replica: PolymarketReplica, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in replica.secrets.items():
        monkeypatch.setenv(f"POLYMARKET_{name.upper()}", value)


def fillable(replica: PolymarketReplica, yes: str) -> list[tuple[Any, dict[str, Any]]]:
    """Our resting orders that can fill without selling tokens we do not hold."""
    rows = [(o, replica.order_row(o)) for o in replica.orders("event")]
    return [(o, r) for o, r in rows if r["side"] == "BUY" or r["asset_id"] == yes]


def test_tokens_held_at_start_are_refused_by_default(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        replica = PolymarketReplica(ping_interval=0.1, markets={"event": "0.50"})
        replica.hold("event/NO", "12.5", "0.47")
        await replica.start()
        try:
            env(replica, monkeypatch)
            loaded = load_manifest(EXAMPLE, registry, overrides=overrides(replica))
            run = Run(loaded, registry, run_dir=tmp_path / "refused")
            with pytest.raises(ValueError, match=r"holds 12\.5 event/NO .*require_flat.*adopt"):
                await asyncio.wait_for(run.run(), 30)
            assert replica.orders("event") == [], "nothing was quoted"
        finally:
            await replica.stop()

    asyncio.run(scenario())


def test_adopted_tokens_are_settled_at_resolution_after_a_resume(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "adopted"

    async def scenario() -> dict[str, Any]:
        replica = PolymarketReplica(ping_interval=0.1, markets={"event": "0.50"})
        replica.hold("event/YES", "20", "0.40")
        await replica.start()
        out: dict[str, Any] = {}
        try:
            env(replica, monkeypatch)
            sets = overrides(replica, "exchanges.polymarket.params.start_position=adopt")
            first = Run(load_manifest(EXAMPLE, registry, overrides=sets), registry, run_dir=run_dir)
            task = asyncio.create_task(first.run())
            await wait_for(lambda: hasattr(first, "portfolio"), 20)
            pf = first.portfolio
            await wait_for(lambda: pf.position(EYES) == 20, 20)
            out["opening"] = (pf.average_price(EYES), pf.realized(EYES), pf.fill_count(EYES))
            # The first life trades 5 tokens at one of its quotes (a bid, or a YES ask:
            # it holds YES to sell).
            yes = replica.conditions["event"].yes
            await wait_for(lambda: bool(fillable(replica, yes)), 20)
            resting, row = fillable(replica, yes)[0]
            await replica.fill_order(resting.client_id, Decimal(5))
            key = EYES if row["asset_id"] == yes else ENO
            moved = 5 if row["side"] == "BUY" else -5
            await wait_for(lambda: pf.fill_count(key) == 1, 20)
            out["held"] = {EYES: pf.position(EYES), ENO: pf.position(ENO)}
            assert out["held"][key] == (20 if key == EYES else 0) + moved
            first.kill("restart")
            await asyncio.wait_for(task, 30)
            again = Run(
                load_manifest(EXAMPLE, registry, overrides=sets),
                registry,
                run_dir=run_dir,
                resume=True,
            )
            task = asyncio.create_task(again.run())
            await wait_for(lambda: hasattr(again, "portfolio"), 20)
            pf = again.portfolio
            held = out["held"]
            await wait_for(lambda: {k: pf.position(k) for k in held} == held, 20)
            out["before"] = {
                key: (pf.position(key), pf.average_price(key), pf.realized(key))
                for key in (EYES, ENO)
            }
            await replica.resolve("event", "YES")
            await wait_for(lambda: pf.position(EYES) == 0 and pf.position(ENO) == 0, 20)
            out["after"] = {key: pf.realized(key) for key in (EYES, ENO)}
            again.kill("done")
            await asyncio.wait_for(task, 30)
        finally:
            await replica.stop()
        return out

    out = asyncio.run(scenario())
    assert out["opening"] == (Decimal("0.40"), 0, 0)
    before = out["before"]
    assert {k: v[0] for k, v in before.items()} == out["held"]  # the journal's, after a resume
    assert before[EYES][1] is not None and before[EYES][0] >= 15
    # Resolution pays 1 per YES and 0 per NO on everything held, adopted or traded by
    # either process: each token's realized PnL gains (payout - average price) x held.
    for key, payout in ((EYES, 1), (ENO, 0)):
        qty, avg, realized = before[key]
        gain = (payout - avg) * qty if qty else 0
        assert out["after"][key] == realized + gain, key
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        rows = conn.execute("SELECT market, payload FROM journal WHERE kind='opening'")
        openings = [(m, json.loads(p)) for m, p in rows.fetchall()]
    finally:
        conn.close()
    assert openings == [(EYES, {"qty_lots": 20_000_000, "entry_price": "0.4"})]


async def adapter_on(replica: PolymarketReplica) -> tuple[PolymarketClob, RecordingSink]:
    sink = RecordingSink()
    ctx = VenueContext("polymarket", LiveClock(), 1, "live", [YES, NO], secrets=replica.secrets)
    params = {**FAST_PARAMS, "resolution_poll_s": None}
    adapter = PolymarketClob(
        PolymarketParams(
            rest_url=replica.url,
            ws_url=replica.market_ws_url,
            private_ws_url=replica.user_ws_url,
            markets={"rain-nyc": replica.condition_id("rain-nyc")},
            **params,
        ),
        ctx,
    )
    await adapter.connect(sink)
    await wait_for(lambda: all(b.state is BookState.LIVE for b in adapter.books.values()))
    return adapter, sink


async def test_orders_of_an_earlier_process_are_ours_by_their_hash() -> None:
    """The first process places an order and goes away without cancelling it; the
    next one, told the journal's orders, sees it open under our client id and its fill
    as ours."""
    replica = PolymarketReplica(ping_interval=0.1)
    await replica.start()
    try:
        first, first_sink = await adapter_on(replica)
        resting = order(first, YES, Side.BUY, "0.40")
        await placed(first, first_sink, resting)
        tracked = first.tracked(resting.client_id)
        assert tracked is not None and tracked.exchange_id
        await first.close()  # the process dies: its order stays at the venue
        journaled = Order(
            resting.client_id, "polymarket", YES, Side.BUY, resting.qty_lots,
            resting.price_ticks, exchange_id=tracked.exchange_id,
        )  # fmt: skip
        second, sink = await adapter_on(replica)
        try:
            assert [o.client_id for o in await second.fetch_open_orders()] == [
                f"venue:{tracked.exchange_id}"
            ], "a process that does not know the journal sees a stranger's order"
            assert await second.start_positions(lambda s: 0, [journaled], resumed=True) == []
            opened = await second.fetch_open_orders()
            assert [(o.client_id, o.exchange_id) for o in opened] == [
                (resting.client_id, tracked.exchange_id)
            ]
            (at_venue,) = replica.orders(YES)
            await replica.fill_order(at_venue.client_id, Decimal(5))
            await wait_for(lambda: bool(sink.fills_of(resting.client_id)))
            fills = sink.fills_of(resting.client_id)
            assert [(f.symbol, f.side, f.qty_lots) for f in fills] == [
                (YES, Side.BUY, second.instruments[YES].qty_to_lots(5))
            ]
            recovered = await second.fetch_fills(0)
            assert {f.client_id for f in recovered} == {resting.client_id}
        finally:
            await second.close()
    finally:
        await replica.stop()


async def test_an_orders_hash_reaches_the_run_before_the_venue_says_anything() -> None:
    """The process may die after sending an order and before any answer. The adapter
    reports the signed order's hash when it signs it, so the run journals it first; here
    the venue takes the order but holds its answer and its sockets stay silent, and a
    next process told that hash knows the order as ours."""
    replica = PolymarketReplica(ping_interval=0.1)
    await replica.start()
    try:
        first, first_sink = await adapter_on(replica)
        await replica.go_silent(30)
        await replica.time_out(after_processing=True, delay=30, path="/order")
        resting = order(first, YES, Side.BUY, "0.40")
        first.submit([PlaceOrder(resting)])
        await wait_for(lambda: bool(replica.orders(YES)))
        (at_venue,) = replica.orders(YES)
        venue_id = replica.order_row(at_venue)["id"]
        reports = [u for u in first_sink.updates if u.client_id == resting.client_id]
        assert [(u.status, u.exchange_id) for u in reports] == [
            (OrderStatus.PENDING_NEW, venue_id)
        ], "the hash is the only thing reported: the venue has said nothing"
        await first.close()  # the process dies before the answer
        await replica.resume()
        journaled = Order(
            resting.client_id, "polymarket", YES, Side.BUY, resting.qty_lots,
            resting.price_ticks, exchange_id=reports[0].exchange_id,
        )  # fmt: skip
        second, _ = await adapter_on(replica)
        try:
            assert await second.start_positions(lambda s: 0, [journaled], resumed=True) == []
            opened = await second.fetch_open_orders()
            assert [(o.client_id, o.exchange_id) for o in opened] == [(resting.client_id, venue_id)]
        finally:
            await second.close()
    finally:
        await replica.stop()
