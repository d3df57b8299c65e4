"""Venue profiles: the order-rate and request limits and the minimums a real venue
enforces, as data with their sources, and the enforcement the simulated venues share.

A simulated or replayed venue that names a profile (``profile: binance_spot``) refuses
what the real venue would refuse, with the venue's own reason text, so a strategy that
quotes faster than the venue allows meets the engine's rejection back-off in a
simulation too, and its results transfer. ``profile: none`` is an idealised venue.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from quoteforge.clock import NS
from quoteforge.exchange import CancelAll, CancelOrder, OrderAction, PlaceOrder, ReplaceOrder
from quoteforge.exchanges.kraken.ratelimit import KRAKEN_TIERS, kraken_cancel_cost

__all__ = [
    "NO_PROFILE",
    "PROFILES",
    "CountWindow",
    "PairCounter",
    "ProfileParams",
    "Refusal",
    "VenueLimits",
    "VenueProfile",
    "describe_limits",
    "limits_for",
    "screen",
]

NO_PROFILE: Final = "none"
_PRUNE_AT: Final = 50_000
_PENALTY_HORIZON_NS: Final = 300 * NS  # Kraken charges nothing to cancel an older order

_MINUTE = 60
_DAY = 86_400


@dataclass(frozen=True, slots=True)
class CountWindow:
    """A fixed interval in which the venue counts new orders: a 10 s interval starts
    every 10 s (on the clock, not at our first order) and its count restarts then."""

    seconds: int
    limit: int
    label: str  # as the venue names the interval in its error text, e.g. "10 SECOND"


@dataclass(frozen=True, slots=True)
class PairCounter:
    """Kraken's per-pair rate counter: adding costs 1 (charged on receipt, even when
    refused), cancelling costs more the younger the order, the counter decays
    ``decay_per_s`` a second, and a transaction that would take it above ``maximum`` is
    refused."""

    maximum: float
    decay_per_s: float
    add_cost: float = 1.0


@dataclass(frozen=True, slots=True)
class VenueProfile:
    """What one venue enforces on one account. Limits that are ``None`` or empty are not
    enforced; ``sources`` are the documents the numbers come from."""

    name: str
    title: str
    sources: tuple[str, ...]
    #: New orders per account in fixed intervals (Binance ``rateLimitType: ORDERS``).
    order_windows: tuple[CountWindow, ...] = ()
    #: Binance spot counts *unfilled* orders: an order's first fill gives it back.
    unfilled_only: bool = False
    #: Request weight per minute (Binance ``REQUEST_WEIGHT``; per IP).
    weight_per_minute: int | None = None
    order_weight: int = 1
    cancel_weight: int = 1
    #: Cancel-and-replace is one request (Binance spot ``order/cancelReplace``): one
    #: weight, one new order, refused as a whole. Otherwise a cancel then an add.
    atomic_replace: bool = False
    #: Most open orders of ours per symbol (Binance ``MAX_NUM_ORDERS``; Kraken per pair).
    max_open_per_symbol: int | None = None
    #: Kraken's per-pair transaction counter.
    pair_counter: PairCounter | None = None
    #: Smallest price x quantity the venue accepts, used where the manifest sets none.
    min_notional: Decimal | None = None
    #: First IP ban (HTTP 418) for requests sent during a 429's Retry-After; each
    #: further ban doubles, up to ``ban_max_s``.
    ban_first_s: float = 120.0
    ban_max_s: float = 3 * _DAY


_BINANCE_SPOT = VenueProfile(
    name="binance_spot",
    title="Binance spot",
    sources=(
        "https://developers.binance.com/docs/binance-spot-api-docs/rest-api/limits",
        "https://developers.binance.com/docs/binance-spot-api-docs/faqs/order_count_decrement",
        "GET /api/v3/exchangeInfo rateLimits and symbol filters "
        "(tests/fixtures/binance_rest/exchangeInfo.json)",
    ),
    order_windows=(CountWindow(10, 100, "10 SECOND"), CountWindow(_DAY, 200_000, "1 DAY")),
    unfilled_only=True,
    weight_per_minute=6000,
    order_weight=1,
    cancel_weight=1,
    atomic_replace=True,
    max_open_per_symbol=200,
    min_notional=Decimal(5),
)

_BINANCE_USDM = VenueProfile(
    name="binance_usdm",
    title="Binance USD-M futures",
    sources=(
        "https://developers.binance.com/docs/derivatives/usds-margined-futures/general-info",
        "https://www.binance.com/en/support/faq/rate-limits-on-binance-futures-"
        "281596e222414cdd9051664ea621cdc3 (default: 2,400 weight/min per IP, 1,200 "
        "orders/min and 300 orders/10 s per account)",
    ),
    order_windows=(CountWindow(10, 300, "10 SECOND"), CountWindow(_MINUTE, 1200, "1 MINUTE")),
    weight_per_minute=2400,
    # POST /fapi/v1/order weighs 0 on the IP limit (it counts on the order limits).
    order_weight=0,
    cancel_weight=1,
    max_open_per_symbol=200,
    min_notional=Decimal(5),
)

# Open orders per pair by Kraken tier.
_KRAKEN_OPEN = {"starter": 60, "intermediate": 80, "pro": 225}
_KRAKEN_SOURCES = (
    "https://docs.kraken.com/api/docs/guides/spot-ratelimits/",
    "https://support.kraken.com/articles/360045239571-trading-rate-limits",
    "AssetPairs costmin (tests/fixtures/kraken_rest/AssetPairs.json)",
)


def _kraken(tier: str) -> VenueProfile:
    maximum, decay = KRAKEN_TIERS[tier]
    return VenueProfile(
        name="kraken_spot",
        title=f"Kraken spot ({tier} tier)",
        sources=_KRAKEN_SOURCES,
        max_open_per_symbol=_KRAKEN_OPEN[tier],
        pair_counter=PairCounter(maximum, decay),
        min_notional=Decimal("0.5"),
    )


PROFILES: Final[dict[str, VenueProfile]] = {
    "binance_spot": _BINANCE_SPOT,
    "binance_usdm": _BINANCE_USDM,
    "kraken_spot": _kraken("starter"),
}
KrakenTier = Literal["starter", "intermediate", "pro"]


def _choices() -> str:
    return ", ".join(sorted(PROFILES)) + f", or {NO_PROFILE} (an idealised venue without limits)"


class ProfileParams(BaseModel):
    """The profile fields every simulated venue takes (mixed into its params)."""

    profile: str = Field(
        NO_PROFILE,
        description="Venue whose limits and minimums the simulation enforces: binance_spot, "
        "binance_usdm, kraken_spot, or none (an idealised venue without limits).",
    )
    tier: KrakenTier | None = Field(
        None,
        description="kraken_spot only: the account tier that sets the rate counter "
        "(starter: 60 max, 1/s decay; intermediate: 125, 2.34/s; pro: 180, 3.75/s).",
    )
    enforce_limits: bool = Field(
        True,
        description="false: keep the profile's minimums but do not enforce its rate "
        "limits (a study of an idealised venue).",
    )

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value != NO_PROFILE and value not in PROFILES:
            raise ValueError(f"unknown venue profile {value!r}; choose one of: {_choices()}")
        return value

    @model_validator(mode="after")
    def _tier_for_kraken(self) -> ProfileParams:
        if self.tier is not None and self.profile != "kraken_spot":
            raise ValueError(
                f"tier {self.tier!r} applies to profile kraken_spot only "
                f"(profile is {self.profile!r}); remove tier"
            )
        return self

    def venue_profile(self) -> VenueProfile | None:
        """The profile these params name (None for ``none``)."""
        if self.profile == NO_PROFILE:
            return None
        if self.profile == "kraken_spot":
            return _kraken(self.tier or "starter")
        return PROFILES[self.profile]

    def min_notional_for(self, manifest_value: Decimal | None) -> Decimal:
        """The manifest's minimum notional; where it sets none, the profile's (0 without
        a profile)."""
        if manifest_value is not None:
            return manifest_value
        profile = self.venue_profile()
        if profile is None or profile.min_notional is None:
            return Decimal(0)
        return profile.min_notional


def limits_for(
    params: ProfileParams, open_orders: Callable[[str], int] | None = None
) -> VenueLimits | None:
    """The enforcement for a venue's params; None when nothing is enforced.
    ``open_orders(symbol)``: our open orders there as the venue counts them."""
    profile = params.venue_profile()
    if profile is None or not params.enforce_limits:
        return None
    return VenueLimits(profile, open_orders)


def describe_limits(venue: str, params: ProfileParams) -> str:
    """One line for the run output: which venue a simulation models, and how."""
    profile = params.venue_profile()
    if profile is None:
        return f"{venue}: profile none: an idealised venue, no order-rate or request limits"
    if not params.enforce_limits:
        return (
            f"{venue}: profile {profile.name} ({profile.title}): minimums only, rate limits "
            "NOT enforced (enforce_limits: false)"
        )
    kind = "unfilled new orders" if profile.unfilled_only else "new orders"
    parts = [f"{w.limit} {kind} per {_span(w.seconds)}" for w in profile.order_windows]
    if profile.weight_per_minute is not None:
        parts.append(f"request weight {profile.weight_per_minute}/min")
    if profile.pair_counter is not None:
        pc = profile.pair_counter
        parts.append(f"rate counter {pc.maximum:g} max, -{pc.decay_per_s:g}/s per pair")
    if profile.max_open_per_symbol is not None:
        parts.append(f"{profile.max_open_per_symbol} open orders per symbol")
    return f"{venue}: profile {profile.name} ({profile.title}) enforced: " + ", ".join(parts)


def _span(seconds: int) -> str:
    if seconds == _DAY:
        return "day"
    if seconds == _MINUTE:
        return "minute"
    return f"{seconds} s"


class _Window:
    __slots__ = ("label", "length_ns", "limit", "start_ns", "used")

    def __init__(self, spec: CountWindow) -> None:
        self.length_ns = spec.seconds * NS
        self.limit = spec.limit
        self.label = spec.label
        self.start_ns = -1
        self.used = 0

    def roll(self, now_ns: int) -> None:
        start = now_ns - now_ns % self.length_ns
        if start != self.start_ns:
            self.start_ns = start
            self.used = 0


class VenueLimits:
    """One account's limits at a simulated venue, checked as requests arrive.

    Each ``place``/``cancel``/``replace``/``cancel_all`` call is one request reaching the
    venue at ``now_ns``: it is charged as the venue charges it and returns the venue's
    refusal text, or ``""`` when the request goes through. The venue reports what
    happens to accepted orders with ``opened`` (the order rests), ``filled`` (a fill)
    and ``closed`` (it left the book), which the open-order count, Binance's unfilled
    order count and Kraken's cancel penalties depend on.
    """

    def __init__(
        self, profile: VenueProfile, open_orders: Callable[[str], int] | None = None
    ) -> None:
        self.profile = profile
        # Our open orders on a symbol as the venue itself counts them; without it the
        # ``opened``/``closed`` reports are counted.
        self._open_orders = open_orders
        self._windows = [_Window(w) for w in profile.order_windows]
        self._weight = (
            _Window(CountWindow(_MINUTE, profile.weight_per_minute, "1 MINUTE"))
            if profile.weight_per_minute is not None
            else None
        )
        self._blocked_until = 0  # a 429's Retry-After
        self._banned_until = 0  # a 418
        self._next_ban_s = profile.ban_first_s
        counter = profile.pair_counter
        self._counter = counter
        self._pairs: dict[str, tuple[float, int]] = {}  # symbol -> (value, at ns)
        self._placed_ns: dict[str, int] = {}  # accepted orders not yet closed
        self._open: dict[str, str] = {}  # resting order -> symbol
        self._open_count: Counter[str] = Counter()
        self._unfilled: set[str] = set()  # counted orders without a fill yet
        #: Requests refused, by the limit that refused them.
        self.refused: Counter[str] = Counter()
        self.orders_accepted = 0

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def summary(self, venue: str) -> str:
        """One line for the run output: what the limits let through and refused."""
        by_limit = ", ".join(f"{n} by {kind}" for kind, n in sorted(self.refused.items()))
        return (
            f"{venue}: {self.orders_accepted} orders accepted, {self.refused_total} requests "
            f"refused by the {self.profile.name} limits" + (f" ({by_limit})" if by_limit else "")
        )

    # -- requests -------------------------------------------------------------------------
    def place(self, symbol: str, client_id: str, now_ns: int, *, replacing: bool = False) -> str:
        """A new order arrives (``replacing``: in place of one of ours that is cancelled
        first, so it does not add to the open orders)."""
        profile = self.profile
        reason = self._charge_weight(profile.order_weight, now_ns)
        if reason:
            return reason
        if self._counter is not None:
            reason = self._kraken_add(symbol, now_ns)
            if reason:
                return reason
        # The order count is a rate limit, checked before the order's filters.
        for window in self._windows:
            window.roll(now_ns)
            if window.used + 1 > window.limit:
                return self._refuse(
                    "orders",
                    f"HTTP 429 -1015 Too many new orders; current limit is {window.limit} "
                    f"orders per {window.label}.",
                )
        limit = profile.max_open_per_symbol
        if limit is not None and self._open_now(symbol) - replacing >= limit:
            return self._refuse("open_orders", self._open_orders_text(limit))
        for window in self._windows:
            window.used += 1
        self._accepted(client_id, now_ns)
        return ""

    def cancel(self, symbol: str, client_id: str, now_ns: int) -> str:
        """A cancel arrives."""
        reason = self._charge_weight(self.profile.cancel_weight, now_ns)
        if reason:
            return reason
        if self._counter is not None:
            return self._kraken_cancel(symbol, client_id, now_ns)
        return ""

    def replace(self, symbol: str, old_id: str, new_id: str, now_ns: int) -> tuple[str, str]:
        """A cancel/replace arrives: (why the cancel was refused, why the new order was
        refused); a venue with an atomic replace refuses both or neither."""
        if self.profile.atomic_replace:
            reason = self.place(symbol, new_id, now_ns, replacing=True)
            return reason, reason
        reason = self.cancel(symbol, old_id, now_ns)
        if reason:
            return reason, reason
        return "", self.place(symbol, new_id, now_ns, replacing=True)

    def cancel_all(self, symbols: int, now_ns: int) -> str:
        """A cancel-all arrives for ``symbols`` symbols (Binance: one request each; Kraken
        lists no counter cost for it)."""
        weight = self.profile.cancel_weight * symbols
        return self._charge_weight(weight, now_ns) if weight else ""

    # -- what happened to accepted orders --------------------------------------------------
    def opened(self, client_id: str, symbol: str) -> None:
        if client_id not in self._open:
            self._open[client_id] = symbol
            self._open_count[symbol] += 1

    def filled(self, client_id: str, now_ns: int) -> None:
        """A fill of ``client_id``: its first fill gives a Binance spot order back to the
        unfilled order count of every interval."""
        if not self.profile.unfilled_only or client_id not in self._unfilled:
            return
        self._unfilled.discard(client_id)
        for window in self._windows:
            window.roll(now_ns)
            if window.used:
                window.used -= 1

    def rejected(self, client_id: str, now_ns: int) -> None:
        """The venue turned an order the limits had let through down for another reason
        (a post-only order that would cross, a filter): only a *successful* placement
        counts as a new order on Binance, while Kraken's fixed count stays charged."""
        if client_id in self._placed_ns:
            self.orders_accepted -= 1
            self._unfilled.discard(client_id)
            for window in self._windows:
                window.roll(now_ns)
                if window.used:
                    window.used -= 1
        self.closed(client_id)

    def closed(self, client_id: str) -> None:
        self._placed_ns.pop(client_id, None)
        self._unfilled.discard(client_id)
        symbol = self._open.pop(client_id, None)
        if symbol is not None:
            self._open_count[symbol] -= 1

    def pair_counter(self, symbol: str, now_ns: int) -> float:
        """Kraken's counter of ``symbol`` now (0 on venues without one)."""
        if self._counter is None:
            return 0.0
        value, at = self._pairs.get(symbol, (0.0, now_ns))
        return max(0.0, value - (now_ns - at) / NS * self._counter.decay_per_s)

    def used(self, now_ns: int) -> dict[str, int]:
        """The order count of each interval now (what X-MBX-ORDER-COUNT-* would say)."""
        out = {}
        for window in self._windows:
            window.roll(now_ns)
            out[window.label] = window.used
        return out

    # -- internals ------------------------------------------------------------------------
    def _open_now(self, symbol: str) -> int:
        if self._open_orders is not None:
            return self._open_orders(symbol)
        return self._open_count[symbol]

    def _accepted(self, client_id: str, now_ns: int) -> None:
        self.orders_accepted += 1
        placed = self._placed_ns
        placed[client_id] = now_ns
        if self.profile.unfilled_only:
            self._unfilled.add(client_id)
        if len(placed) > _PRUNE_AT:
            # A venue that never reports an order closed (a taker order that expired)
            # must not grow this without bound: past the oldest cancel penalty an
            # order's age no longer matters, nor (outside the day count) its first fill.
            horizon = now_ns - _PENALTY_HORIZON_NS
            for old in [cid for cid, t in placed.items() if t < horizon]:
                del placed[old]
                self._unfilled.discard(old)

    def _refuse(self, kind: str, text: str) -> str:
        self.refused[kind] += 1
        return text

    def _charge_weight(self, weight: int, now_ns: int) -> str:
        window = self._weight
        if window is None:
            return ""
        if now_ns < self._banned_until:
            left = (self._banned_until - now_ns) / NS
            return self._refuse(
                "ban", f"HTTP 418 -1003 Way too many requests; IP banned (Retry-After: {left:.0f})"
            )
        if now_ns < self._blocked_until:
            # Sending on during a 429's Retry-After is what gets an IP banned.
            ban_s = self._next_ban_s
            self._next_ban_s = min(self.profile.ban_max_s, ban_s * 2)
            self._banned_until = now_ns + int(ban_s * NS)
            return self._refuse(
                "ban",
                "HTTP 418 -1003 Way too many requests; IP banned for requests sent during a "
                f"429 Retry-After (Retry-After: {ban_s:.0f})",
            )
        if not weight:
            return ""
        window.roll(now_ns)
        if window.used + weight > window.limit:
            self._blocked_until = window.start_ns + window.length_ns
            left = (self._blocked_until - now_ns) / NS
            return self._refuse(
                "weight",
                f"HTTP 429 -1003 Too many requests; current limit of request weight per "
                f"1 MINUTE is {window.limit} (Retry-After: {max(1, round(left))})",
            )
        window.used += weight
        return ""

    def _kraken_add(self, symbol: str, now_ns: int) -> str:
        counter = self._counter
        assert counter is not None
        # The fixed count is charged on receipt, whether or not the order is accepted.
        value = self.pair_counter(symbol, now_ns) + counter.add_cost
        self._pairs[symbol] = (value, now_ns)
        if value > counter.maximum:
            return self._refuse("rate_counter", "EOrder:Rate limit exceeded")
        return ""

    def _kraken_cancel(self, symbol: str, client_id: str, now_ns: int) -> str:
        counter = self._counter
        assert counter is not None
        placed = self._placed_ns.get(client_id)
        cost = 0.0 if placed is None else kraken_cancel_cost((now_ns - placed) / NS)
        value = self.pair_counter(symbol, now_ns)
        if value + cost > counter.maximum:
            return self._refuse("rate_counter", "EOrder:Rate limit exceeded")
        self._pairs[symbol] = (value + cost, now_ns)
        return ""

    def _open_orders_text(self, limit: int) -> str:
        if self._counter is not None:
            return f"EOrder:Orders limit exceeded (at most {limit} open orders per pair)"
        return f"-2010 Filter failure: MAX_NUM_ORDERS (at most {limit} open orders per symbol)"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the venue's limits refused: a new order (``live`` False, reported
    REJECTED) or a cancel (``live`` True: the order stays as it was, reported live with
    the reason, which is how a venue answers a cancel it refuses)."""

    client_id: str
    symbol: str
    reason: str
    live: bool


def screen(
    limits: VenueLimits,
    action: OrderAction,
    now_ns: int,
    symbols: Iterable[str],
    resting: Callable[[str], Iterable[str]],
) -> tuple[OrderAction | None, list[Refusal]]:
    """Charge one arriving ``action`` to ``limits``: the action left to carry out (None:
    nothing) and the refusals to report. ``symbols`` are the venue's markets and
    ``resting(symbol)`` our resting orders there (what a refused cancel-all leaves).

    A replace whose new order is refused but whose cancel went through becomes a plain
    cancel. Accepted cancels close their order in ``limits``."""
    if isinstance(action, PlaceOrder):
        order = action.order
        reason = limits.place(order.symbol, order.client_id, now_ns)
        if reason:
            return None, [Refusal(order.client_id, order.symbol, reason, False)]
        return action, []
    if isinstance(action, CancelOrder):
        reason = limits.cancel(action.symbol, action.client_id, now_ns)
        if reason:
            return None, [Refusal(action.client_id, action.symbol, reason, True)]
        limits.closed(action.client_id)
        return action, []
    if isinstance(action, ReplaceOrder):
        new = action.new
        old_id = action.old_client_id
        cancel_no, place_no = limits.replace(new.symbol, old_id, new.client_id, now_ns)
        if not cancel_no:
            limits.closed(old_id)
        if not place_no:
            return action, []
        # The new order first, so the run's back-off sees its rejection.
        refusals = [Refusal(new.client_id, new.symbol, place_no, False)]
        if cancel_no:
            refusals.append(Refusal(old_id, new.symbol, cancel_no, True))
            return None, refusals
        return CancelOrder(old_id, new.venue, new.symbol), refusals
    assert isinstance(action, CancelAll)
    targets = [s for s in symbols if action.symbol in (None, s)]
    reason = limits.cancel_all(len(targets), now_ns)
    if reason:
        return None, [Refusal(cid, s, reason, True) for s in targets for cid in resting(s)]
    return action, []
