"""The default execution policy: send only what changed between wanted and working.

Wanted quotes and working orders are paired by (side, level). A pair with the same
price and remaining size is left alone; a changed price or size becomes one
cancel/replace; unpaired working orders are cancelled and unpaired quotes placed.
A working order whose remainder is off the order step (a fill left a part step: venues
report fills finer than they accept orders) matches no quote: it is replaced or
cancelled, so what rests is always something we could have sent.
Orders already being cancelled are ignored; orders not yet acknowledged count as
working, so nothing is placed twice while the venue is thinking. Optional per-market
order and cancel rates defer what exceeds them to a later plan, stale quotes first.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

import quoteforge
from quoteforge.execution import ExecutionPolicy, Plan
from quoteforge.model import Order, OrderStatus, Quote, Side, TimeInForce
from quoteforge.registry import Register
from quoteforge.strategy import Market

__all__ = ["MinimalDiff", "MinimalDiffParams", "TokenBucket"]

NS = 1_000_000_000

_GOING = (OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE)


class MinimalDiffParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    use_replace: bool = Field(
        True, description="Use the venue's cancel/replace for a changed level (else cancel + new)."
    )
    keep_partial: bool = Field(
        True,
        description="Leave a partially filled order at the right price alone instead of "
        "topping it up (keeps queue priority).",
    )
    max_orders_per_second: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="Most new orders per second per market (a replace counts as one); the "
        "excess waits for a later plan. None: unlimited.",
    )
    max_cancels_per_second: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="Most cancels per second per market (a replace counts as one too); "
        "the excess waits for a later plan. None: unlimited.",
    )
    burst_s: float = Field(
        1.0,
        gt=0,
        le=315_360_000,
        description="Bucket size in seconds of rate: how many actions may go out at once "
        "after a quiet spell (at least one).",
    )
    limit_pull_all: bool = Field(
        False,
        description="Rate-limit cancels also when every quote is pulled (stale book, "
        "halted strategy, stop); by default pulling everything is never held back.",
    )


class TokenBucket:
    """A token bucket on the run clock: ``rate`` tokens per second, at most ``capacity``."""

    __slots__ = ("capacity", "last_ns", "rate", "tokens")

    def __init__(self, rate: float, capacity: float, now_ns: int = 0) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError(
                f"token bucket needs rate > 0 and capacity > 0, got {rate}, {capacity}"
            )
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.last_ns = now_ns

    def refill(self, now_ns: int) -> None:
        if now_ns > self.last_ns:
            self.tokens = min(self.capacity, self.tokens + (now_ns - self.last_ns) * self.rate / NS)
        # A clock that went back (a new simulation) must not mint tokens later on.
        self.last_ns = now_ns

    def available(self, now_ns: int) -> bool:
        self.refill(now_ns)
        return self.tokens >= 1

    def take(self, now_ns: int) -> bool:
        self.refill(now_ns)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def spend(self, now_ns: int) -> None:
        """Use a token whether or not one is there (actions that are never held back)."""
        self.refill(now_ns)
        self.tokens = max(0.0, self.tokens - 1)

    def ready_at(self, now_ns: int) -> int:
        """When the next whole token is there."""
        self.refill(now_ns)
        if self.tokens >= 1:
            return now_ns
        return now_ns + math.ceil((1 - self.tokens) * NS / self.rate)


class MinimalDiff(ExecutionPolicy):
    """Cancel/replace only the levels that changed, within optional per-market order and
    cancel rates.

    Under the rates a plan keeps, in this order: cancels (nearest the mid first), then
    replaces and places (level 0 first). A replace needs a token of each kind; without
    an order token a replace to a new price becomes a plain cancel, so a stale quote is
    pulled now and the new one placed by a later plan. Whatever is held back is not
    remembered: the next plan recomputes the difference from wanted and working orders.
    """

    Params = MinimalDiffParams
    params: MinimalDiffParams

    def __init__(self, params: MinimalDiffParams) -> None:
        super().__init__(params)
        self._limited = (
            params.max_orders_per_second is not None or params.max_cancels_per_second is not None
        )
        self._bucket_pairs: dict[str, tuple[TokenBucket | None, TokenBucket | None]] = {}
        self._deferred: dict[str, int] = {}

    def plan(self, market: Market, wanted: list[Quote], working: list[Order], now_ns: int) -> Plan:
        plan = Plan()
        step = market.instrument.step_lots
        by_slot: dict[tuple[int, int], Order] = {}
        for order in working:
            if order.status in _GOING or order.tif is TimeInForce.IOC:
                continue  # being cancelled, or a taking order rather than a quote
            slot = (int(order.side), order.level)
            if slot in by_slot:
                plan.cancels.append(order)  # a stray duplicate on a slot
                continue
            by_slot[slot] = order
        for quote in wanted:
            paired = by_slot.pop((int(quote.side), quote.level), None)
            if paired is None:
                plan.places.append(quote)
                continue
            remaining = paired.remaining_lots
            if (
                paired.price_ticks == quote.price_ticks
                and (step == 1 or remaining % step == 0)
                and (
                    remaining == quote.qty_lots
                    or (
                        self.params.keep_partial
                        and 0 < remaining < quote.qty_lots
                        and paired.filled_lots > 0
                    )
                )
            ):
                continue
            if paired.status is OrderStatus.PENDING_NEW:
                # Not acknowledged yet: changing it now would race its own acknowledgement.
                continue
            if self.params.use_replace:
                plan.replaces.append((paired, quote))
            else:
                plan.cancels.append(paired)
                plan.places.append(quote)
        plan.cancels.extend(by_slot.values())
        if self._limited and plan:
            return self._throttle(market, plan, pull_all=not wanted, now_ns=now_ns)
        self._deferred.pop(market.key, None)
        return plan

    # -- rate limits ---------------------------------------------------------------------
    def _buckets(self, key: str, now_ns: int) -> tuple[TokenBucket | None, TokenBucket | None]:
        pair = self._bucket_pairs.get(key)
        if pair is None:
            p = self.params
            pair = self._bucket_pairs[key] = (
                self._bucket(p.max_orders_per_second, now_ns),
                self._bucket(p.max_cancels_per_second, now_ns),
            )
        return pair

    def _bucket(self, rate: float | None, now_ns: int) -> TokenBucket | None:
        if rate is None:
            return None
        return TokenBucket(rate, max(1.0, rate * self.params.burst_s), now_ns)

    def _throttle(self, market: Market, plan: Plan, *, pull_all: bool, now_ns: int) -> Plan:
        orders, cancels = self._buckets(market.key, now_ns)
        mid2 = _mid2(market)
        out = Plan()
        deferred = 0
        # Stale quotes nearest the touch are the ones that get picked off: they go first.
        # (Most plans change one or two orders: a list of one is not sorted.)
        cancels_first = plan.cancels
        if len(cancels_first) > 1:
            cancels_first = sorted(
                cancels_first, key=lambda o: _distance(o.side, o.price_ticks, mid2)
            )
        for order in cancels_first:
            if cancels is None or (pull_all and not self.params.limit_pull_all):
                if cancels is not None:
                    cancels.spend(now_ns)
                out.cancels.append(order)
            elif cancels.take(now_ns):
                out.cancels.append(order)
            else:
                deferred += 1
        replaces = plan.replaces
        if len(replaces) > 1:
            replaces = sorted(replaces, key=lambda pair: _priority(pair[1], mid2))
        for old, quote in replaces:
            order_ok = orders is None or orders.available(now_ns)
            cancel_ok = cancels is None or cancels.available(now_ns)
            if order_ok and cancel_ok:
                if orders is not None:
                    orders.take(now_ns)
                if cancels is not None:
                    cancels.take(now_ns)
                out.replaces.append((old, quote))
            elif cancel_ok and old.price_ticks != quote.price_ticks:
                # No order budget: at least pull the quote from its stale price.
                if cancels is not None:
                    cancels.take(now_ns)
                out.cancels.append(old)
                deferred += 1
            else:
                deferred += 1
        places = plan.places
        if len(places) > 1:
            places = sorted(places, key=lambda q: _priority(q, mid2))
        for quote in places:
            if orders is None or orders.take(now_ns):
                out.places.append(quote)
            else:
                deferred += 1
        if deferred:
            self._deferred[market.key] = deferred
        else:
            self._deferred.pop(market.key, None)
        return out

    def admit_take(self, market: Market, now_ns: int) -> str | None:
        """A take spends an order token like a placed quote; without one it is refused
        (an immediate order cannot wait for a later plan)."""
        orders, _ = self._buckets(market.key, now_ns)
        if orders is None or orders.take(now_ns):
            return None
        return (
            f"order rate of {market.key} spent (max_orders_per_second "
            f"{self.params.max_orders_per_second}); try again later"
        )

    def deferred(self, market: str) -> int:
        """Changes the last plan for ``market`` held back for the rate limits."""
        return self._deferred.get(market, 0)

    def retry_at_ns(self, market: str, now_ns: int) -> int | None:
        """When a new plan for ``market`` can send more of what was held back (None when
        nothing is waiting): the engine or a timer can requote then."""
        if not self._deferred.get(market):
            return None
        orders, cancels = self._bucket_pairs[market]
        times = [b.ready_at(now_ns) for b in (orders, cancels) if b is not None]
        return max(times) if times else now_ns


def _mid2(market: Market) -> int | None:
    book = market.book
    bid, ask = book.best_bid_ticks(), book.best_ask_ticks()
    if bid is None or ask is None:
        return None
    return bid + ask


def _distance(side: Side, price_ticks: int | None, mid2: int | None) -> int:
    """How far a price sits behind the mid, in half ticks (negative: through it)."""
    if price_ticks is None or mid2 is None:
        return 0
    return mid2 - 2 * price_ticks if side is Side.BUY else 2 * price_ticks - mid2


def _priority(quote: Quote, mid2: int | None) -> tuple[int, int]:
    return quote.level, _distance(quote.side, quote.price_ticks, mid2)


@quoteforge.hookimpl
def quoteforge_register_execution_policies(register: Register) -> None:
    register("minimal_diff", MinimalDiff)
