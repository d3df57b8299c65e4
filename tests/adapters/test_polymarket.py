"""The Polymarket adapter against its replica: signing and authentication, YES and NO as
one book seen from two sides, batches, tick size changes, resolution booked in PnL, and
the book source's own checks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from loguru import logger
from polymarket_orders import (
    NO,
    YES,
    clob_for,
    connected,
    order,
    placed,
    rest_summary,
    wait_for,
)

from quoteforge.book import BookState
from quoteforge.clock import LiveClock
from quoteforge.exchange import PlaceOrder, VenueContext
from quoteforge.exchanges.polymarket import (
    PolymarketBookSource,
    PolymarketClob,
    PolymarketParams,
)
from quoteforge.exchanges.polymarket.ratelimit import PolymarketRateGovernor
from quoteforge.exchanges.testing.conformance import RecordingSink
from quoteforge.exchanges.testing.polymarket_replica import PolymarketReplica
from quoteforge.model import (
    Instrument,
    InstrumentKind,
    Order,
    OrderStatus,
    Side,
    TimeInForce,
)
from quoteforge.portfolio import Portfolio


def reported(sink: RecordingSink, client_id: str, status: OrderStatus) -> Callable[[], bool]:
    """Whether the last report of the order has ``status``."""
    return lambda: (u := sink.last(client_id)) is not None and u.status is status


def filled(sink: RecordingSink, client_id: str) -> Callable[[], bool]:
    """Whether the order has a fill of more than nothing."""
    return lambda: sum(f.qty_lots for f in sink.fills_of(client_id)) > 0


async def test_tokens_load_from_the_market_endpoint_on_the_venue_grid() -> None:
    async with connected() as (replica, adapter, _):
        yes, no = adapter.instruments[YES], adapter.instruments[NO]
        assert yes.kind is InstrumentKind.BINARY and yes.tick_size == Decimal("0.01")
        assert (yes.complement, no.complement) == (NO, YES)
        assert yes.min_qty == Decimal(5) and yes.qty_step == Decimal("0.01")
        cond = replica.conditions["rain-nyc"]
        assert adapter.tokens[YES].token_id == cond.yes and adapter.tokens[NO].token_id == cond.no
        # The NO book is the YES book seen from the other side.
        yes_ask = adapter.books[YES].best_ask_ticks()
        assert yes_ask is not None
        assert adapter.books[NO].best_bid_ticks() == 100 - yes_ask


async def test_a_wrong_key_is_refused_by_the_venue() -> None:
    replica = PolymarketReplica(ping_interval=0.1)
    wrong = {**replica.secrets, "private_key": "0x" + "11" * 32}
    async with connected(replica, secrets=wrong) as (_, adapter, sink):
        o = order(adapter, YES, Side.BUY, "0.40")
        assert await placed(adapter, sink, o) is OrderStatus.REJECTED
        # The headers carry the wrong key's address, which does not own the API key.
        last = sink.last(o.client_id)
        assert last is not None and "address does not own the key" in last.reason
        assert replica.orders(YES) == []
    replica = PolymarketReplica(ping_interval=0.1)
    bad_secret = {**replica.secrets, "api_secret": replica.secrets["passphrase"] + "AAAA"}
    async with connected(replica, secrets=bad_secret) as (_, adapter, sink):
        o = order(adapter, YES, Side.BUY, "0.40")
        assert await placed(adapter, sink, o) is OrderStatus.REJECTED
        last = sink.last(o.client_id)
        assert last is not None and "HMAC" in last.reason


def heartbeating(replica: PolymarketReplica, interval_s: float) -> PolymarketClob:
    return clob_for(replica, "rain-nyc", [YES, NO], heartbeat_interval_s=interval_s)


async def test_heartbeats_chain_ids_and_a_refused_first_one_stops_the_start() -> None:
    replica = PolymarketReplica(ping_interval=0.1)
    await replica.start()
    try:
        first = heartbeating(replica, 0.1)
        await first.connect(RecordingSink())
        started = replica.heartbeat_id
        assert started is not None  # started at connect
        # Each heartbeat carries the id of the last answer; a server error is only logged.
        await replica.fail_http(503, path="/v1/heartbeats")
        await wait_for(lambda: replica.heartbeat_id != started)
        # So is an answer that is not JSON (a proxy's page): the heartbeats go on.
        call = first.call
        garbled = [0]

        async def garbling(method: str, path: str, **kw: Any) -> Any:
            if path == "/v1/heartbeats" and not garbled[0]:
                garbled[0] += 1
                return json.loads("<html>502 Bad Gateway</html>")
            return await call(method, path, **kw)

        first.call = garbling  # type: ignore[method-assign]
        await wait_for(lambda: garbled[0] == 1)
        beats = sum(1 for _, path in replica.request_log if path == "/v1/heartbeats")
        await asyncio.sleep(0.35)
        assert sum(1 for _, path in replica.request_log if path == "/v1/heartbeats") >= beats + 2
        await first.close()
        # A run started while the last one's chain is live: the venue refuses its null,
        # naming the id it expects, and the new run carries that chain on.
        second = heartbeating(replica, 0.1)
        await second.connect(RecordingSink())
        try:
            live = replica.heartbeat_id
            await wait_for(lambda: replica.heartbeat_id != live)
            assert replica.heartbeats_lapsed == 0
        finally:
            await second.close()
    finally:
        await replica.stop()
    # A venue that refuses the first heartbeat: the run must not trade believing the
    # switch is on.
    replica = PolymarketReplica(ping_interval=0.1)
    await replica.start()
    try:
        await replica.fail_http(404, path="/v1/heartbeats", body='{"error":"not found"}')
        adapter = heartbeating(replica, 1)
        with pytest.raises(ValueError, match=r"first heartbeat .*heartbeat_interval_s: null"):
            await adapter.connect(RecordingSink())
        await adapter.close()
    finally:
        await replica.stop()
    with pytest.raises(ValueError, match="heartbeat_interval_s"):
        PolymarketParams(heartbeat_interval_s=10)  # the venue's whole window


async def test_heartbeats_find_the_api_references_path_when_the_clients_answers_404() -> None:
    """The official client posts to /v1/heartbeats, the API reference names /heartbeats:
    a venue serving only the latter gets every heartbeat there, the switch working."""
    replica = PolymarketReplica(ping_interval=0.1)
    replica.heartbeat_paths = ("/heartbeats",)
    await replica.start()
    said: list[str] = []
    sink = logger.add(said.append, level="WARNING", format="{message}")
    try:
        adapter = heartbeating(replica, 0.1)
        await adapter.connect(RecordingSink())
        try:
            started = replica.heartbeat_id
            assert started is not None
            await wait_for(lambda: replica.heartbeat_id != started)
            paths = [path for _, path in replica.request_log if "heartbeats" in path]
            assert paths[0] == "/v1/heartbeats" and set(paths[1:]) == {"/heartbeats"}
            assert len(paths) >= 3 and paths.count("/v1/heartbeats") == 1
            assert any("heartbeats go to POST /heartbeats" in m for m in said)
        finally:
            await adapter.close()
    finally:
        logger.remove(sink)
        await replica.stop()
    # Neither path served: the start is refused, naming both.
    replica = PolymarketReplica(ping_interval=0.1)
    replica.heartbeat_paths = ()
    await replica.start()
    try:
        adapter = heartbeating(replica, 1)
        with pytest.raises(ValueError, match=r"POST /v1/heartbeats or /heartbeats\) failed"):
            await adapter.connect(RecordingSink())
        await adapter.close()
    finally:
        await replica.stop()


async def test_buying_no_trades_against_a_yes_bid() -> None:
    async with connected() as (replica, adapter, sink):
        best_yes_bid = replica.book(YES)["bids"][0]
        # Buying NO at 1 - (best YES bid) takes it: the same book from the other side.
        price = format(1 - best_yes_bid[0], "f")
        o = order(adapter, NO, Side.BUY, price, tif=TimeInForce.IOC)
        adapter.submit([PlaceOrder(o)])
        await wait_for(lambda: bool(sink.fills_of(o.client_id)))
        fill = sink.fills_of(o.client_id)[0]
        assert fill.symbol == NO and fill.side is Side.BUY
        assert adapter.instruments[NO].ticks_to_price(fill.price_ticks) == Decimal(price)
        await wait_for(lambda: replica.book(YES)["bids"][0] != best_yes_bid)


async def test_new_orders_go_out_in_one_batch() -> None:
    async with connected() as (replica, adapter, sink):
        orders = [order(adapter, YES, Side.BUY, p) for p in ("0.40", "0.41", "0.42")]
        orders.append(order(adapter, NO, Side.BUY, "0.40"))
        adapter.submit([PlaceOrder(o) for o in orders])
        for o in orders:
            await wait_for(reported(sink, o.client_id, OrderStatus.OPEN))
        assert [p for m, p in replica.request_log if m == "POST"] == ["/orders"]
        assert len(replica.orders(YES)) == 3 and len(replica.orders(NO)) == 1


async def test_a_coarser_tick_refuses_orders_off_it_and_a_finer_one_pulls_the_book() -> None:
    async with connected() as (replica, adapter, sink):
        await replica.change_tick("rain-nyc", "0.1")
        await wait_for(lambda: adapter.venue_tick[YES] == Decimal("0.1"))
        off = order(adapter, YES, Side.BUY, "0.41")
        assert await placed(adapter, sink, off) is OrderStatus.REJECTED
        assert "tick" in (sink.last(off.client_id) or off).reason
        assert await placed(adapter, sink, order(adapter, YES, Side.BUY, "0.40")) is (
            OrderStatus.OPEN
        )
        await replica.change_tick("rain-nyc", "0.001")
        await wait_for(lambda: adapter.books[YES].state is BookState.RESYNCING)
        assert any("finer" in reason for *_, reason in sink.states)


async def test_a_resolved_market_pays_out_and_closes_the_position_in_pnl() -> None:
    async with connected() as (replica, adapter, sink):
        portfolio = Portfolio(adapter.instruments)
        buys = [
            order(adapter, YES, Side.BUY, "0.51", tif=TimeInForce.IOC),  # takes the best ask
            order(adapter, NO, Side.BUY, "0.51", tif=TimeInForce.IOC),  # takes the best YES bid
        ]
        for o in buys:
            adapter.submit([PlaceOrder(o)])
            await wait_for(filled(sink, o.client_id))
        for fill in sink.fills:
            portfolio.apply_fill(fill)
        yes_key, no_key = f"polymarket:{YES}", f"polymarket:{NO}"
        held_yes, held_no = portfolio.position(yes_key), portfolio.position(no_key)
        assert held_yes == Decimal(10) and held_no == Decimal(10)
        assert portfolio.combined_position(yes_key) == 0  # a YES and a NO make 1 USDC
        cost = -(
            portfolio.pnl(yes_key, Decimal(0)) + portfolio.pnl(no_key, Decimal(0))
        )  # what the tokens cost
        await replica.resolve("rain-nyc", "YES")
        await adapter.check_resolution()
        settled = [f for f in sink.fills if f.fill_id.startswith("resolution:")]
        assert {(f.symbol, f.side, f.qty_lots) for f in settled} == {
            (YES, Side.SELL, adapter.instruments[YES].qty_to_lots(10)),
            (NO, Side.SELL, adapter.instruments[NO].qty_to_lots(10)),
        }
        for fill in settled:
            portfolio.apply_fill(fill)
        # Flat on both tokens; YES paid 1 a share, NO paid 0: PnL is 10 USDC minus the cost.
        assert portfolio.position(yes_key) == 0 and portfolio.position(no_key) == 0
        assert portfolio.realized(yes_key) + portfolio.realized(no_key) == Decimal(10) - cost
        assert portfolio.realized(no_key) < 0 < portfolio.realized(yes_key)
        assert adapter.resolved == {YES: "won", NO: "lost"}
        assert adapter.books[YES].state is not BookState.LIVE  # quotes pulled
        again = len(sink.fills)
        await adapter.check_resolution()
        assert len(sink.fills) == again  # booked once


async def test_a_resolution_event_is_confirmed_again_when_the_market_cannot_be_read() -> None:
    """``market_resolved`` makes the adapter ask the market endpoint who won. That
    answer failing (here twice: a 503, then a time-out) does not leave the settlement to
    the next poll (off here, as it may be in a run): it is asked again, 0.5 then 1 s
    later, and the tokens are settled once."""
    async with connected() as (replica, adapter, sink):
        buy = order(adapter, YES, Side.BUY, "0.51", tif=TimeInForce.IOC)
        adapter.submit([PlaceOrder(buy)])
        await wait_for(filled(sink, buy.client_id))
        cid = replica.condition_id("rain-nyc")
        await replica.fail_http(503, path=f"/markets/{cid}")
        await replica.time_out(path=f"/markets/{cid}", delay=1.0)
        asked = time.monotonic()
        await replica.resolve("rain-nyc", "YES")

        def settled() -> list[Any]:
            return [f for f in sink.fills if f.fill_id.startswith("resolution:")]

        await wait_for(lambda: bool(settled()), 10)
        assert time.monotonic() - asked >= 1.5  # after the two failed answers
        assert [(f.symbol, f.side) for f in settled()] == [(YES, Side.SELL)]
        assert adapter.resolved == {YES: "won", NO: "lost"}
        await asyncio.sleep(1.0)
        assert len(settled()) == 1


async def test_secrets_never_show_in_reprs() -> None:
    replica = PolymarketReplica()
    ctx = VenueContext("polymarket", LiveClock(), 1, "live", [YES], secrets=replica.secrets)
    adapter = PolymarketClob(PolymarketParams(), ctx)
    text = repr(adapter) + repr(adapter.params) + repr(ctx)
    for value in replica.secrets.values():
        assert value not in text


# -- the book source on its own -----------------------------------------------------------


def instrument() -> Instrument:
    return Instrument(
        "polymarket",
        YES,
        YES,
        "USDC",
        Decimal("0.01"),
        Decimal("0.000001"),
        kind=InstrumentKind.BINARY,
        qty_step=Decimal("0.01"),
    )


def book_event(bids: list[tuple[str, str]], asks: list[tuple[str, str]], ts: str = "1") -> str:
    return json.dumps(
        {
            "event_type": "book",
            "asset_id": "t1",
            "market": "0xm",
            "bids": [{"price": p, "size": s} for p, s in bids],
            "asks": [{"price": p, "size": s} for p, s in asks],
            "timestamp": ts,
            "hash": "0x0",
        }
    )


def change(price: str, size: str, side: str, best_bid: str, best_ask: str, ts: str = "2") -> str:
    return json.dumps(
        {
            "event_type": "price_change",
            "market": "0xm",
            "timestamp": ts,
            "price_changes": [
                {"asset_id": "other", "price": "0.5", "size": "1", "side": "BUY"},
                {
                    "asset_id": "t1",
                    "price": price,
                    "size": size,
                    "side": side,
                    "best_bid": best_bid,
                    "best_ask": best_ask,
                },
            ],
        }
    )


def test_book_source_applies_snapshots_and_changes_and_checks_the_best_prices() -> None:
    resyncs: list[str] = []
    source = PolymarketBookSource(
        instrument(), asset_id="t1", on_resync=lambda s, why: resyncs.append(why)
    )
    # The docs write prices without the leading zero.
    source.on_message(book_event([(".48", "30"), (".49", "20.5")], [(".52", "25")]))
    assert source.state is BookState.LIVE
    assert source.book.best_bid() == (49, 20_500_000)
    source.on_message(change("0.50", "15", "BUY", "0.5", "0.52"))
    assert source.book.best_bid() == (50, 15_000_000) and not resyncs[1:]
    # A change the venue made and we missed shows in the best prices it reports.
    outcome = source.on_message(change("0.51", "5", "SELL", "0.5", "0.50", ts="3"))
    assert outcome.value == "resync" and "best_ask mismatch" in resyncs[-1]
    assert source.state is BookState.RESYNCING


def test_rest_snapshots_are_checked_by_the_venues_hash_and_compared() -> None:
    source = PolymarketBookSource(instrument(), asset_id="t1")
    summary = rest_summary()
    assert source.on_snapshot(json.dumps(summary)).value == "applied"
    assert source.compare_snapshot(summary) is True
    assert source.compare_snapshot({**summary, "timestamp": "8"}) is None  # another moment
    damaged = {**summary, "bids": [{"price": "0.41", "size": "10"}]}
    assert source.on_snapshot(json.dumps(damaged)).value == "resync"  # hash no longer fits
    assert source.stats.checksum_failures == 1


def test_the_governor_keeps_to_the_documented_windows() -> None:
    from quoteforge.clock import SimClock

    clock = SimClock(start_ns=0)
    governor = PolymarketRateGovernor(clock, headroom=1.0)
    burst = governor.windows["POST /order"][0]
    for _ in range(3_500):
        assert governor.delay_for("POST /order") == 0
        burst.take(clock.now_ns())
    assert governor.delay_for("POST /order") == pytest.approx(10.0)


async def test_some_but_not_all_secrets_refuse_to_start_naming_the_missing() -> None:
    replica = PolymarketReplica()
    secrets = {k: v for k, v in replica.secrets.items() if k != "passphrase"}
    ctx = VenueContext("polymarket", LiveClock(), 1, "live", [YES], secrets=secrets)
    adapter = PolymarketClob(PolymarketParams(rest_url="http://127.0.0.1:9"), ctx)
    with pytest.raises(ValueError, match=r"missing \['passphrase'\]"):
        await adapter.connect(RecordingSink())
    await adapter.close()


async def test_gtd_fok_and_cancel_all() -> None:
    async with connected(gtd_seconds=3600) as (replica, adapter, sink):
        rest = order(adapter, YES, Side.BUY, "0.30")
        assert await placed(adapter, sink, rest) is OrderStatus.OPEN
        row = replica.order_row(replica.orders(YES)[0])
        assert row["order_type"] == "GTD" and int(row["expiration"]) > time.time() + 3000
        # Fill or kill: more than the best ask holds is refused whole, nothing trades.
        ask_qty = replica.book(YES)["asks"][0][1]
        fok = order(
            adapter, YES, Side.BUY, "0.51", format(ask_qty + 1, "f"),
            tif=TimeInForce.IOC, extra={"time_in_force": "FOK"},
        )  # fmt: skip
        assert await placed(adapter, sink, fok) is OrderStatus.REJECTED
        assert "FOK" in (sink.last(fok.client_id) or fok).reason
        assert not sink.fills and replica.book(YES)["asks"][0][1] == ask_qty
        other = order(adapter, NO, Side.BUY, "0.30")
        assert await placed(adapter, sink, other) is OrderStatus.OPEN
        await adapter.cancel_all()
        assert ("DELETE", "/cancel-all") in replica.request_log
        for o in (rest, other):
            await wait_for(reported(sink, o.client_id, OrderStatus.CANCELLED))
        assert replica.orders("rain-nyc") == []


def test_signing_libraries_leave_the_recursion_limit_alone() -> None:
    """eth-account's py_ecc raises the recursion limit to 100,000 on import; with that, a
    deeply nested venue message would overflow the C stack and kill a live process. After
    signing and hashing an order the limit is what it was, and such a message is an
    ordinary RecursionError."""
    import sys

    from quoteforge.exchanges.polymarket.wire import ApiCredentials, OrderSigner
    from quoteforge.exchanges.testing.polymarket_replica_rest import new_credentials

    limit = sys.getrecursionlimit()
    account = new_credentials()
    signer = OrderSigner(account["private_key"], ApiCredentials("k", "c2VjcmV0", "p"))
    _, order_id = signer.sign(
        token_id="1",
        side=Side.BUY,
        price=Decimal("0.42"),
        size=Decimal("10"),
        tick_size=Decimal("0.01"),
        neg_risk=False,
    )
    assert order_id.startswith("0x")
    assert sys.getrecursionlimit() == limit
    with pytest.raises(RecursionError):
        json.loads("[" * 200_000 + "]" * 200_000)


async def test_a_market_resolved_while_the_socket_was_down_is_settled_on_reconnect() -> None:
    """Its ``market_resolved`` went to no socket, and polls are off: the reconnect asks."""
    async with connected() as (replica, adapter, sink):
        bought = order(adapter, YES, Side.BUY, "0.51", tif=TimeInForce.IOC)
        adapter.submit([PlaceOrder(bought)])
        await wait_for(filled(sink, bought.client_id))
        await replica.down_for(1.0)
        await replica.resolve("rain-nyc", "YES")
        await wait_for(lambda: any(f.fill_id.startswith("resolution:") for f in sink.fills), 10)
        assert adapter.resolved == {YES: "won", NO: "lost"}


async def test_a_resumed_adapter_knows_the_earlier_lifes_orders_trades() -> None:
    """The venue names an order by its hash only: a new process (a resume) recognises
    the trades of the first life's orders once the run hands it those orders."""
    async with connected() as (replica, first, sink):
        best_yes_bid = replica.book(YES)["bids"][0]
        o = order(first, NO, Side.BUY, format(1 - best_yes_bid[0], "f"), tif=TimeInForce.IOC)
        first.submit([PlaceOrder(o)])
        await wait_for(lambda: bool(sink.fills_of(o.client_id)))
        [fill] = sink.fills_of(o.client_id)
        exchange_id = next(
            u.exchange_id for u in sink.updates if u.client_id == o.client_id and u.exchange_id
        )
        secrets = replica.secrets
        ctx = VenueContext("polymarket", LiveClock(), 1, "live", [YES, NO], secrets=secrets)
        second = PolymarketClob(first.params, ctx)
        await second.connect(RecordingSink())
        try:
            assert [f for f in await second.fetch_fills(0) if f.fill_id == fill.fill_id] == []
            known = Order(o.client_id, "polymarket", NO, Side.BUY, o.qty_lots, o.price_ticks)
            known.exchange_id = exchange_id
            second.know_orders([known])
            [again] = [f for f in await second.fetch_fills(0) if f.fill_id == fill.fill_id]
            assert again.client_id == o.client_id and again.qty_lots == fill.qty_lots
        finally:
            await second.close()
