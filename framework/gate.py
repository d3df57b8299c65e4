"""The order gate: the one path from a wish to trade to a venue.

Every way an order can come about passes the same checks in the same order: a
strategy's quotes (``on_book``'s return value and ``ctx.set_quotes``), a take
(``ctx.take``), an execution algorithm (TWAP and the router take through the same
call), and an order intent from a remote strategy node (the execution node's check).

1. kill and halt: after the kill switch, while the run stops, or while the strategy is
   halted, nothing new goes out;
2. breakers: HALT stops new orders on the market, REDUCE lets through only orders that
   shrink the position without flipping it, counted together (a set of quotes; one
   order with our working orders on its side);
3. the risk chain, in manifest order (the first refusal wins, and is journaled);
4. the instrument's own rules (order step, minimums) for sizes a caller chose itself;
5. the execution policy: for quotes, the fewest changes against the order manager's
   working orders within its rate limits; for takes, its rate budget;
6. the order manager registers and journals each new order before
7. the venue adapter is handed the actions.

Cancels always pass: pulling a quote never needs permission.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from quoteforge.model import REDUCE_ONLY, InstrumentKind, Order, Quote, Side, TimeInForce

if TYPE_CHECKING:
    from quoteforge.breakers import Breakers
    from quoteforge.execution import ExecutionPolicy, Plan
    from quoteforge.orders import OrderManager
    from quoteforge.risk import RiskChain, RiskView
    from quoteforge.strategy import Market

__all__ = ["OrderGate"]

_IOC = TimeInForce.IOC


class OrderGate:
    """Kill/halt state, breakers, risk, policy and order manager of one run, applied in
    one place. A gate without a policy and order manager only checks orders that are
    already made (``check``): a remote node's intents, the latency probe's orders.

    ``is_halted(strategy)`` tells whether a strategy is halted (the engine's own state);
    ``position_lots(market)`` our position for REDUCE breakers. ``refusals`` counts the
    orders refused per stage (``kill``, ``halt``, ``breaker``, ``risk``, ``instrument``,
    ``policy``); ``last_refusal`` says why the last one was refused.
    """

    def __init__(
        self,
        *,
        risk: RiskChain,
        risk_view: RiskView,
        breakers: Breakers | None,
        orders: OrderManager | None,
        policy: ExecutionPolicy | None,
        position_lots: Callable[[str], int],
        now_ns: Callable[[], int],
        is_halted: Callable[[str], bool] = lambda strategy: False,
    ) -> None:
        self.risk = risk
        self.risk_view = risk_view
        self.breakers = breakers
        self.orders = orders
        self.policy = policy
        self.position_lots = position_lots
        self.now_ns = now_ns
        self.is_halted = is_halted
        #: Why nothing new may go out at all (kill switch, stopping), or "".
        self.closed = ""
        self.refusals: Counter[str] = Counter()
        self.last_refusal = ""
        self._admit_take = policy.admit_take if policy is not None else None

    # -- state ----------------------------------------------------------------------------
    def close(self, reason: str) -> None:
        """From now on only cancels pass (kill switch, run stopping). The first reason
        given stays: a stop after a kill is still a kill."""
        if not self.closed:
            self.closed = reason

    def blocked(self, strategy: str) -> str:
        """Why ``strategy`` may not send anything new right now, or ""."""
        if self.closed:
            return self.closed
        if self.is_halted(strategy):
            return f"strategy {strategy!r} is halted"
        return ""

    # -- quotes ---------------------------------------------------------------------------
    def admit(self, market: Market, strategy: str, quotes: list[Quote]) -> list[Quote]:
        """The quotes of ``strategy`` that may stand on ``market``: stages 1 to 3."""
        if not quotes:
            return quotes
        why = self.blocked(strategy)
        if why:
            self._refuse("kill" if self.closed else "halt", why, len(quotes))
            return []
        breakers = self.breakers
        if breakers is not None and breakers.state(market.key) != "normal":
            position, allowed, reducing = self.position_lots(market.key), [], 0
            for q in quotes:  # the set replaces our working quotes: its sum must not flip
                if breakers.allows(market.key, int(q.side), position, reducing + q.qty_lots):
                    allowed.append(q)
                    reducing += q.qty_lots
            if len(allowed) < len(quotes):
                self._refuse(
                    "breaker",
                    f"breaker {breakers.state(market.key).upper()} on {market.key}",
                    len(quotes) - len(allowed),
                )
            quotes = allowed
            if not quotes:
                return quotes
        return self.risk.filter(market, quotes, self.risk_view)

    def plan(self, market: Market, strategy: str, quotes: list[Quote], now_ns: int) -> Plan:
        """Stages 1 to 5 for a whole set of wanted quotes: the changes the policy makes
        against our working orders. An empty ``quotes`` pulls every quote."""
        if self.policy is None or self.orders is None:
            raise RuntimeError("this order gate has no execution policy or orders to plan with")
        approved = self.admit(market, strategy, quotes)
        inst = market.instrument
        working = self.orders.working(inst.venue, inst.symbol)
        return self.policy.plan(market, approved, working, now_ns)

    # -- takes ----------------------------------------------------------------------------
    def take(
        self,
        market: Market,
        strategy: str,
        side: Side,
        price_ticks: int,
        qty_lots: int,
        offer_id: str | None = None,
        *,
        reduce_only: bool = False,
    ) -> Order | None:
        """An immediate-or-cancel order through every stage; the registered order, or
        None when a stage refused it (``last_refusal`` says which and why). A
        ``reduce_only`` take must shrink a perpetual's position without flipping it."""
        if reduce_only:
            position = self.position_lots(market.key)
            if market.instrument.kind is not InstrumentKind.PERPETUAL:
                why = f"{market.key} is not a perpetual: reduce-only orders need a position"
            elif position * int(side) >= 0 or qty_lots > abs(position):
                why = f"{side.name} {qty_lots} lots would not reduce {position} lots"
            else:
                why = ""
            if why:
                self._refuse("instrument", f"reduce-only refused: {why}")
                return None
        why = self.check(market, strategy, side, price_ticks, qty_lots, level=-1, post_only=False)
        if why:
            return None
        if self._admit_take is not None:
            held = self._admit_take(market, self.now_ns())
            if held:
                self._refuse("policy", held)
                return None
        if self.orders is None:
            raise RuntimeError("this order gate checks orders only; it has no order manager")
        inst = market.instrument
        order = self.orders.new_order(
            inst.venue,
            inst.symbol,
            side,
            qty_lots,
            price_ticks,
            tif=_IOC,
            strategy=strategy,
            level=-1,
            extra={REDUCE_ONLY: True} if reduce_only else None,
        )
        if offer_id is not None:
            order.extra["offer_id"] = offer_id
        return order

    # -- one order ------------------------------------------------------------------------
    def check(
        self,
        market: Market,
        strategy: str,
        side: Side,
        price_ticks: int,
        qty_lots: int,
        *,
        level: int = 0,
        post_only: bool = False,
    ) -> str:
        """Stages 1 to 4 for one order whose size the caller chose (a take, a remote
        node's intent): why it must not go out, or ""."""
        why = self.blocked(strategy)
        if why:
            self._refuse("kill" if self.closed else "halt", why)
            return why
        breakers, key, working = self.breakers, market.key, 0
        if breakers is not None and breakers.state(key) == "reduce" and self.orders is not None:
            inst = market.instrument  # working orders on its side fill before or with it
            orders = self.orders.working(inst.venue, inst.symbol)
            working = sum(o.remaining_lots for o in orders if o.side is side)
        if breakers is not None and not breakers.allows(
            key, int(side), self.position_lots(key), qty_lots + working
        ):
            why = (
                f"breaker {breakers.state(key).upper()} on {key}: {side.name} {qty_lots} lots "
                f"(with {working} working) would not reduce the position"
                if breakers.state(key) == "reduce"
                else f"breaker HALT on {key}"
            )
            self._refuse("breaker", why)
            return why
        quote = Quote(side, price_ticks, qty_lots, level, post_only)
        if not self.risk.filter(market, [quote], self.risk_view):
            # The chain has reported (and journaled) which check refused and why.
            why = f"refused by risk on {key}"
            self._refuse("risk", why)
            return why
        invalid = market.instrument.check_order(price_ticks, qty_lots)
        if invalid:
            why = f"{key}: {invalid}"
            self._refuse("instrument", why)
            return why
        return ""

    def _refuse(self, stage: str, why: str, count: int = 1) -> None:
        self.refusals[stage] += count
        self.last_refusal = why
