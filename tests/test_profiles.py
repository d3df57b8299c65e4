"""Venue profiles: a simulated venue refuses what the real venue would refuse, with the
venue's own reason text, and the manifest names a profile or says there is none."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from quoteforge.clock import NS, SimClock
from quoteforge.engine import run_manifest
from quoteforge.exchange import CancelOrder, PlaceOrder, ReplaceOrder, VenueContext
from quoteforge.exchanges.profiles import PROFILES, VenueLimits, describe_limits
from quoteforge.exchanges.sim.venue import SimExchange, SimParams
from quoteforge.manifest import ManifestError, load_manifest
from quoteforge.model import Order, OrderStatus, OrderType, OrderUpdate, Side, TimeInForce
from quoteforge.registry import PluginRegistry

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_699_999_980 * NS  # on a minute (so also 10 s) boundary, as the venue's intervals are
SYMBOL = "BTC/USDT"


class Sink:
    def __init__(self) -> None:
        self.updates: list[OrderUpdate] = []

    def on_order_update(self, update: OrderUpdate) -> None:
        self.updates.append(update)

    def statuses(self, status: OrderStatus) -> list[OrderUpdate]:
        return [u for u in self.updates if u.status is status]

    def on_fill(self, fill: Any) -> None: ...
    def on_book(self, book: Any) -> None: ...
    def on_book_state(self, book: Any, old: str, new: str, reason: str) -> None: ...
    def on_trade(self, *args: Any) -> None: ...
    def on_offer(self, offer: Any) -> None: ...


class Venue:
    """A sim venue on a virtual clock with one quiet BTC/USDT market (no takers)."""

    def __init__(self, **profile: Any) -> None:
        self.clock = SimClock(T0)
        params = SimParams.model_validate(
            {
                **profile,
                "latency": {"market_data_ms": 1, "order_ms": 1, "jitter_ms": 0},
                "markets": {
                    SYMBOL: {
                        "tick_size": "0.01",
                        "lot_size": "0.0001",
                        "initial_price": 30000,
                        "flow": {"arrival_rate": 0},
                    }
                },
            }
        )
        ctx = VenueContext("sim", self.clock, seed=1, mode="sim", symbols=[SYMBOL])
        self.venue = SimExchange(params, ctx)
        self.sink = Sink()
        asyncio.run(self.venue.connect(self.sink))
        self.ids = 0

    def order(self, price: float = 20000, tif: TimeInForce = TimeInForce.GTC) -> Order:
        self.ids += 1
        inst = self.venue.instruments[SYMBOL]
        return Order(
            client_id=f"o{self.ids}",
            venue="sim",
            symbol=SYMBOL,
            side=Side.BUY,
            qty_lots=inst.qty_to_lots("0.01"),
            price_ticks=inst.price_to_ticks(price),
            order_type=OrderType.LIMIT,
            tif=tif,
        )

    def place(self, n: int, **kwargs: Any) -> list[Order]:
        orders = [self.order(**kwargs) for _ in range(n)]
        self.venue.submit([PlaceOrder(o) for o in orders])
        return orders

    def run(self, seconds: float) -> None:
        self.clock.run_until(self.clock.now_ns() + int(seconds * NS))

    def status_of(self, orders: list[Order], status: OrderStatus) -> list[OrderUpdate]:
        ids = {o.client_id for o in orders}
        return [u for u in self.sink.statuses(status) if u.client_id in ids]


# -- Binance spot -------------------------------------------------------------------------------
def test_binance_spot_accepts_100_new_orders_per_10s_interval_and_refuses_the_rest() -> None:
    v = Venue(profile="binance_spot")
    burst = v.place(150)
    v.run(1)
    assert len(v.status_of(burst, OrderStatus.OPEN)) == 100
    refused = v.status_of(burst, OrderStatus.REJECTED)
    assert len(refused) == 50
    assert refused[0].reason == (
        "HTTP 429 -1015 Too many new orders; current limit is 100 orders per 10 SECOND."
    )
    # Later in the same interval: still full.
    later = v.place(5)
    v.run(5)
    assert len(v.status_of(later, OrderStatus.REJECTED)) == 5
    # The next interval counts afresh: exactly 100 more are accepted ...
    v.run(10 - 6 + 0.5)
    second = v.place(120)
    v.run(1)
    assert len(v.status_of(second, OrderStatus.OPEN)) == 100
    # ... the 101st of this interval hits the order count, and the open-order filter is
    # reached too (200 open on the symbol).
    v.run(10)
    extra = v.place(1)
    v.run(1)
    [rejected] = v.status_of(extra, OrderStatus.REJECTED)
    assert rejected.reason.startswith("-2010 Filter failure: MAX_NUM_ORDERS")
    assert v.venue.limits is not None
    assert v.venue.limits.refused == {"orders": 55 + 20, "open_orders": 1}


def test_binance_spot_counts_unfilled_orders_a_fill_gives_the_order_back() -> None:
    v = Venue(profile="binance_spot")
    resting = v.place(95)
    # Orders that trade at once (buys through the asks) are given back on their first fill.
    takers = v.place(20, price=31000, tif=TimeInForce.IOC)
    v.run(1)
    assert len(v.status_of(resting, OrderStatus.OPEN)) == 95
    assert not v.status_of(takers, OrderStatus.REJECTED)
    assert v.venue.limits is not None
    assert v.venue.limits.used(v.clock.now_ns())["10 SECOND"] == 95
    more = v.place(6)
    v.run(1)
    assert len(v.status_of(more, OrderStatus.OPEN)) == 5
    assert len(v.status_of(more, OrderStatus.REJECTED)) == 1


def test_a_post_only_order_the_book_refuses_is_not_a_new_order() -> None:
    v = Venue(profile="binance_spot")
    crossing = v.place(30, price=31000, tif=TimeInForce.POST_ONLY)
    v.run(1)
    assert all("post-only" in u.reason for u in v.status_of(crossing, OrderStatus.REJECTED))
    assert v.venue.limits is not None
    assert v.venue.limits.used(v.clock.now_ns())["10 SECOND"] == 0
    ok = v.place(100)
    v.run(1)
    assert len(v.status_of(ok, OrderStatus.OPEN)) == 100


def test_binance_request_weight_answers_429_then_418_for_requests_sent_during_retry_after() -> None:
    limits = VenueLimits(PROFILES["binance_spot"])
    now = T0
    for i in range(6000):
        assert limits.cancel(SYMBOL, f"x{i}", now) == ""
    over = limits.cancel(SYMBOL, "x", now + 20 * NS)
    assert over.startswith("HTTP 429 -1003 Too many requests")
    assert "(Retry-After: 40)" in over
    # Going on during the Retry-After gets the IP banned (2 minutes the first time) ...
    ban = limits.place(SYMBOL, "y", now + 30 * NS)
    assert ban.startswith("HTTP 418") and "Retry-After: 120" in ban
    assert limits.place(SYMBOL, "z", now + 100 * NS).startswith("HTTP 418")
    # ... after which requests are served again.
    assert limits.place(SYMBOL, "z", now + 151 * NS) == ""
    assert limits.refused == {"weight": 1, "ban": 2}


def test_binance_usdm_counts_orders_per_10s_and_per_minute() -> None:
    limits = VenueLimits(PROFILES["binance_usdm"])
    accepted = 0
    texts = set()
    for second in range(0, 60, 2):
        for i in range(100):
            reason = limits.place(SYMBOL, f"{second}-{i}", T0 + second * NS)
            accepted += not reason
            texts.add(reason)
    # 300 per 10 s interval, 1200 in the minute: the 5th and 6th intervals get nothing.
    assert accepted == 1200
    assert texts == {
        "",
        "HTTP 429 -1015 Too many new orders; current limit is 300 orders per 10 SECOND.",
        "HTTP 429 -1015 Too many new orders; current limit is 1200 orders per 1 MINUTE.",
    }
    assert limits.place(SYMBOL, "next-minute", T0 + 60 * NS) == ""
    # Placing weighs nothing on the IP limit; a cancel weighs 1.
    assert limits.cancel(SYMBOL, "0-0", T0 + 61 * NS) == ""


# -- Kraken spot ---------------------------------------------------------------------------------
def test_kraken_counter_adds_decays_and_charges_young_cancels() -> None:
    limits = VenueLimits(PROFILES["kraken_spot"])  # starter: 60 max, 1 a second
    for i in range(60):
        assert limits.place(SYMBOL, f"o{i}", T0) == ""
    assert limits.place(SYMBOL, "o60", T0) == "EOrder:Rate limit exceeded"
    # The fixed count is charged on receipt even for a refused order.
    assert limits.pair_counter(SYMBOL, T0) == 61
    # Another pair has its own counter.
    assert limits.place("ETH/USD", "e0", T0) == ""
    # 2 s later the counter decayed to 59; cancelling a 2 s old order costs 8: refused,
    # and a refused cancel is not charged.
    assert limits.cancel(SYMBOL, "o0", T0 + 2 * NS) == "EOrder:Rate limit exceeded"
    assert limits.pair_counter(SYMBOL, T0 + 2 * NS) == 59
    # At 10 s the counter is 51 and the order 10 s old: +5.
    assert limits.cancel(SYMBOL, "o0", T0 + 10 * NS) == ""
    assert limits.pair_counter(SYMBOL, T0 + 10 * NS) == 56
    # An order that rested 300 s or more costs nothing to cancel.
    assert limits.cancel(SYMBOL, "o1", T0 + 300 * NS) == ""
    assert limits.pair_counter(SYMBOL, T0 + 300 * NS) == 0
    for i in range(60):
        assert limits.place(SYMBOL, f"p{i}", T0 + 300 * NS) == ""
    assert limits.place(SYMBOL, "p60", T0 + 300 * NS) == "EOrder:Rate limit exceeded"


@pytest.mark.parametrize(
    ("tier", "maximum", "decay"),
    [("starter", 60, 1.0), ("intermediate", 125, 2.34), ("pro", 180, 3.75)],
)
def test_kraken_tiers_set_the_counter(tier: str, maximum: int, decay: float) -> None:
    params = SimParams.model_validate(
        {"profile": "kraken_spot", "tier": tier, "markets": {SYMBOL: {"initial_price": 1}}}
    )
    profile = params.venue_profile()
    assert profile is not None and profile.pair_counter is not None
    assert (profile.pair_counter.maximum, profile.pair_counter.decay_per_s) == (maximum, decay)
    assert f"rate counter {maximum:g} max, -{decay:g}/s per pair" in describe_limits("k", params)


def test_kraken_sim_venue_refuses_orders_and_young_cancels_as_kraken_does() -> None:
    v = Venue(profile="kraken_spot", tier="pro")  # 180 max, 225 open orders per pair
    burst = v.place(185)
    v.run(0.5)
    assert len(v.status_of(burst, OrderStatus.OPEN)) == 180
    refused = v.status_of(burst, OrderStatus.REJECTED)
    assert [u.reason for u in refused] == ["EOrder:Rate limit exceeded"] * 5
    # Cancelling an order that rested under 5 s costs 8 the counter does not have: the
    # venue answers that the order is still there.
    young = burst[0]
    v.venue.submit([CancelOrder(young.client_id, "sim", SYMBOL)])
    v.run(0.5)
    answers = [u for u in v.sink.updates if u.client_id == young.client_id]
    assert [(u.status, u.reason) for u in answers][-1] == (
        OrderStatus.OPEN,
        "EOrder:Rate limit exceeded",
    )
    assert v.venue.markets[SYMBOL].engine.get(young.client_id) is not None
    # Once the counter has decayed the cancel goes through.
    v.run(10)
    v.venue.submit([CancelOrder(young.client_id, "sim", SYMBOL)])
    v.run(0.5)
    assert v.sink.updates[-1].status is OrderStatus.CANCELLED


# -- replaces --------------------------------------------------------------------------------
def test_binance_spot_refuses_a_cancel_replace_whole_and_kraken_may_cancel_then_refuse() -> None:
    v = Venue(profile="binance_spot")
    first = v.place(100)
    v.run(1)
    old, new = first[0], v.order(price=20001)
    v.venue.submit([ReplaceOrder(old.client_id, new)])
    v.run(1)
    [refused] = v.status_of([new], OrderStatus.REJECTED)
    assert "-1015 Too many new orders" in refused.reason
    assert v.sink.updates[-1].client_id == old.client_id
    assert v.sink.updates[-1].status is OrderStatus.OPEN  # the old order stays
    assert v.venue.markets[SYMBOL].engine.get(old.client_id) is not None

    k = Venue(profile="kraken_spot")  # starter: 60 max
    placed = k.place(52)
    k.run(0.5)
    old, new = placed[0], k.order(price=20001)
    # The cancel (+8 for a young order) fits under 60, the add after it (+1) does not.
    k.venue.submit([ReplaceOrder(old.client_id, new)])
    k.run(0.5)
    assert [u.status for u in k.sink.updates if u.client_id == old.client_id][-1] is (
        OrderStatus.CANCELLED
    )
    [refused] = k.status_of([new], OrderStatus.REJECTED)
    assert refused.reason == "EOrder:Rate limit exceeded"


def test_a_replace_at_the_open_order_limit_does_not_count_the_order_it_replaces() -> None:
    limits = VenueLimits(PROFILES["binance_spot"], open_orders=lambda symbol: 200)
    assert limits.place(SYMBOL, "a", T0).startswith("-2010 Filter failure: MAX_NUM_ORDERS")
    assert limits.replace(SYMBOL, "old", "b", T0) == ("", "")


# -- opting out and the run output ---------------------------------------------------------
def test_profile_none_and_enforce_limits_false_are_idealised_and_say_so() -> None:
    for kwargs, words in (
        ({}, "profile none: an idealised venue"),
        ({"profile": "none"}, "profile none: an idealised venue"),
        (
            {"profile": "binance_spot", "enforce_limits": False},
            "rate limits NOT enforced (enforce_limits: false)",
        ),
    ):
        v = Venue(**kwargs)
        assert v.venue.limits is None
        assert words in describe_limits("sim", v.venue.params)
        burst = v.place(150)
        v.run(1)
        assert len(v.status_of(burst, OrderStatus.OPEN)) == 150


def test_a_profile_fills_in_a_minimum_notional_the_manifest_leaves_unset() -> None:
    spot = Venue(profile="binance_spot").venue.instruments[SYMBOL]
    assert spot.min_notional == 5
    assert Venue().venue.instruments[SYMBOL].min_notional == 0


# -- manifests -----------------------------------------------------------------------------
def _manifest(tmp_path: Path, params: dict[str, Any]) -> Path:
    text = yaml.safe_dump(
        {
            "run": {"mode": "sim", "duration": "1s"},
            "exchanges": {
                "sim": {
                    "type": "sim",
                    "params": {**params, "markets": {SYMBOL: {"initial_price": 30000}}},
                }
            },
            "strategies": {
                "mm": {
                    "type": "pure_market_making",
                    "exchange": "sim",
                    "symbols": SYMBOL,
                    "params": {"spread_bps": 10, "order_size": 0.01},
                }
            },
        }
    )
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_an_unknown_profile_is_a_manifest_error_listing_the_choices(
    tmp_path: Path, registry: PluginRegistry
) -> None:
    with pytest.raises(ManifestError) as err:
        load_manifest(_manifest(tmp_path, {"profile": "binance"}), registry)
    text = str(err.value)
    assert "profile" in text
    assert "unknown venue profile 'binance'" in text
    assert "binance_spot, binance_usdm, kraken_spot, or none" in text


def test_a_tier_belongs_to_kraken_only(tmp_path: Path, registry: PluginRegistry) -> None:
    with pytest.raises(ManifestError, match="tier 'pro' applies to profile kraken_spot only"):
        load_manifest(_manifest(tmp_path, {"profile": "binance_spot", "tier": "pro"}), registry)


SIMULATED = ("sim", "replay", "as_model", "offer_sim")


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: Path(p).name
)
def test_every_example_says_which_profile_it_models(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    for name, spec in data["exchanges"].items():
        if spec["type"] in SIMULATED:
            profile = (spec.get("params") or {}).get("profile")
            assert profile in (*PROFILES, "none"), f"{path.name}: exchange {name} names no profile"
        else:
            # A live venue enforces its own limits; the manifest says which ones.
            assert "profile" in text, f"{path.name}: say which profile the live venue is"


# -- through the engine ---------------------------------------------------------------------
def test_a_backtest_quoting_too_fast_meets_the_replayed_venues_refusals(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    loaded = load_manifest(
        ROOT / "examples" / "backtest.yaml",
        registry,
        overrides=[
            "execution.params.max_orders_per_second=1000",
            "execution.params.max_cancels_per_second=1000",
            "run.watch_manifest=false",
        ],
    )
    run = asyncio.run(run_manifest(loaded, registry, run_dir=tmp_path / "r", install_signals=False))
    limits = run.venues["binance"].limits  # type: ignore[attr-defined]
    assert limits.refused["orders"] > 0
    rejected = [o for o in run.orders.all_orders() if o.status is OrderStatus.REJECTED]
    assert any("-1015 Too many new orders" in o.reason for o in rejected)


def test_a_sim_strategy_quoting_too_fast_is_refused_with_the_venues_text(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    loaded = load_manifest(
        ROOT / "examples" / "pure_market_making.yaml",
        registry,
        overrides=[
            "run.duration=20s",
            "execution.params.max_orders_per_second=1000",
            "execution.params.max_cancels_per_second=1000",
            "run.watch_manifest=false",
        ],
    )
    run = asyncio.run(run_manifest(loaded, registry, run_dir=tmp_path / "r", install_signals=False))
    limits = run.venues["sim"].limits  # type: ignore[attr-defined]
    assert limits.refused["orders"] > 0
    reasons = {o.reason for o in run.orders.all_orders() if o.status is OrderStatus.REJECTED}
    assert (
        "HTTP 429 -1015 Too many new orders; current limit is 100 orders per 10 SECOND." in reasons
    )
