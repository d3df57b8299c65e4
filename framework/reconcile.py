"""Reconciliation: a run's orders, fills and balances checked against the venues.

The venues (their REST answers) are the truth. The engine reconciles when it resumes, at
a fresh live start, periodically while trading live and once more before it closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from quoteforge.clock import NS, Clock
from quoteforge.exchange import CancelOrder, ExchangeAdapter
from quoteforge.journal import Journal, JournalRecord
from quoteforge.model import Fill, Instrument, OrderStatus, OrderUpdate
from quoteforge.orders import OrderManager
from quoteforge.portfolio import Portfolio

RECONCILE_GRACE_NS = 5 * NS  # younger orders may not show in a venue snapshot yet
UNANSWERED_NS = 60 * NS  # an order no report answered this long: its request was lost


class Reconciler:
    """Compares one run's state with its venues; keeps what it learnt across checks
    (the balances the run started from, what a venue cannot report)."""

    def __init__(
        self,
        *,
        run_id: str,
        mode: str,
        venues: dict[str, ExchangeAdapter],
        orders: OrderManager,
        portfolio: Portfolio,
        instruments: Mapping[str, Instrument],
        journal: Journal,
        clock: Clock,
        log: Any,
        trace_event: Callable[[str | None, str, str], None],
    ) -> None:
        self.run_id = run_id
        self.mode = mode
        self.venues = venues
        self.orders = orders
        self.portfolio = portfolio
        self.instruments = instruments  # market key -> its instrument
        self.journal = journal
        self.clock = clock
        self.log = log
        self.trace_event = trace_event
        # (venue, asset) -> balance the run started from, net of the position then held
        self._balance_start: dict[tuple[str, str], Decimal] = {}
        # (venue, what) a venue cannot report, already logged once
        self._unreconcilable: set[tuple[str, str]] = set()
        self._sessions: set[str] | None = None  # client-id sessions of the run's lives
        self.foreign_fills = 0

    def owns(self, fill: Fill) -> bool:
        """Whether ``fill`` is this run's: of an order the order manager knows, or of one
        whose client id carries the run's prefix and the session of one of its lives (an
        order whose journal record a crash lost), or of no order at all (``client_id``
        "": a settlement the venue books on the run's own holdings). Fills of other
        clients on the account, and of earlier runs, are not: they never enter the run's
        position. An adapter names a trade whose order it cannot tell ``order:<id>``."""
        om = self.orders
        if not fill.client_id or om.get(fill.client_id) is not None:
            return True
        if self._sessions is None:  # the restored lives' orders are known by now
            ids = [o.client_id.split("-") for o in om.all_orders()]
            self._sessions = {parts[1] for parts in ids if len(parts) == 3}
        parts = fill.client_id.split("-")
        mine = {om.session, *self._sessions}
        if len(parts) == 3 and parts[0] == om.id_prefix and parts[1] in mine:
            return True
        self.foreign_fills += 1
        log = self.log.warning if self.foreign_fills == 1 else self.log.debug
        log(
            "{}: fill {} of order {} is not this run's (another client on the account, or "
            "an earlier run): left out of its position and journal",
            fill.venue, fill.fill_id, fill.client_id or "?",
        )  # fmt: skip
        return False

    async def reconcile(self, since_ns: int = 0, *, periodic: bool = False) -> dict[str, int]:
        """Make local state match the venues (REST is the truth): book fills the journal
        missed, adopt orders both sides know, close orders the venue no longer has, and
        cancel orders of ours (our client-id prefix) the venue has that the journal does
        not know; other orders on the account are left alone. The diff is journaled.

        ``periodic``: a check while trading, so orders in flight (not yet acknowledged,
        or younger than a few seconds) are not judged by a snapshot that predates them;
        one still unacknowledged after ``UNANSWERED_NS`` is (its request or report was
        lost: left pending, it would hold its quote's place forever).
        Orders made after the check began (the engine quotes while it awaits the venues'
        answers, at a live start too) are never judged by it.

        A venue whose adapter cannot report open orders (or fills) is not compared: its
        working orders are left alone, and that is logged once per run.
        """
        counts = {"missed_fills": 0, "closed": 0, "orphans_cancelled": 0, "adopted": 0}
        foreign = self.foreign_fills
        om = self.orders
        ours = f"{om.id_prefix}-"
        now = self.clock.now_ns()
        young, unanswered = now - RECONCILE_GRACE_NS, now - UNANSWERED_NS
        for name, venue in self.venues.items():
            fills = await venue.fetch_fills(max(0, since_ns - 60 * NS))
            if fills is None:
                self._cannot(name, "fills", "missed fills are not looked for")
            for fill in fills or ():
                if om.has_fill(fill.venue, fill.fill_id) or not self.owns(fill):
                    continue
                orphans = len(om.orphan_fills)
                order = om.apply_fill(fill)
                if order is not None or len(om.orphan_fills) > orphans:
                    self.portfolio.apply_fill(fill)
                    counts["missed_fills"] += 1
            reported = await venue.fetch_open_orders()
            if reported is None:
                self._cannot(
                    name, "open orders", "its working orders are not compared (left alone)"
                )
                continue
            open_now = {u.client_id: u for u in reported}
            for order in [o for o in om.all_working() if o.venue == name]:
                update = open_now.pop(order.client_id, None)
                if update is not None:
                    om.apply_update(update)
                    counts["adopted"] += 1
                    continue
                if order.created_ns >= now:
                    continue  # made while the venues were being asked (quoting goes on)
                if periodic and (
                    (order.status is OrderStatus.PENDING_NEW and order.created_ns > unanswered)
                    or order.created_ns > young
                ):
                    continue
                status = OrderStatus.FILLED if order.remaining_lots <= 0 else OrderStatus.CANCELLED
                om.apply_update(
                    OrderUpdate(
                        name,
                        order.client_id,
                        status,
                        self.clock.now_ns(),
                        reason="not open at the venue on reconciliation",
                    )
                )
                counts["closed"] += 1
            for client_id, update in open_now.items():
                if not client_id.startswith(ours):
                    self.log.info("{}: order {} is not ours: left alone", name, client_id)
                    continue
                self.log.warning(
                    "{}: order {} is open at the venue but unknown here: cancelling it",
                    name,
                    client_id,
                )
                venue.submit([CancelOrder(client_id, name, update.symbol)])
                counts["orphans_cancelled"] += 1
        if self.foreign_fills > foreign:
            counts["foreign_fills"] = self.foreign_fills - foreign
        if self.mode == "live":
            await self._check_balances()
        self.journal.append(
            JournalRecord(
                f"reconcile-{self.run_id}-{self.clock.now_ns()}",
                "reconcile",
                self.clock.now_ns(),
                "",
                dict(counts),
            )
        )
        if not periodic:
            self.log.info("reconciled with the venues: {}", counts)
        return counts

    def _cannot(self, venue: str, what: str, consequence: str) -> None:
        if (venue, what) not in self._unreconcilable:
            self._unreconcilable.add((venue, what))
            self.log.warning(
                "{}: the venue adapter cannot report its {}: {}", venue, what, consequence
            )

    async def _check_balances(self) -> None:
        """Compare each venue's base-asset balances with what our fills explain: the
        balance change since the first check should equal our position change. A drift
        (fills we never saw, transfers, another bot on the account) is logged; the venue
        stays the truth."""
        for name, venue in self.venues.items():
            try:
                balances = await venue.fetch_balances()
            except Exception as exc:
                self.log.warning("{}: balances unavailable: {}", name, exc)
                continue
            if balances is None:
                self._cannot(name, "balances", "balance drift is not checked")
                continue
            if not balances:
                continue
            by_base: dict[str, list[str]] = {}
            for key, inst in self.instruments.items():
                if inst.venue == name:
                    by_base.setdefault(inst.base, []).append(key)
            for asset, keys in by_base.items():
                held = balances.get(asset)
                if held is None or len(keys) != 1:
                    continue  # an asset traded on several markets cannot be attributed
                position = self.portfolio.position(keys[0])
                start = self._balance_start.setdefault((name, asset), held - position)
                drift = held - position - start
                lot = self.instruments[keys[0]].lot_size
                if abs(drift) >= lot:
                    self.log.warning(
                        "{}: {} balance {} differs from start {} + our position {} by {}",
                        name,
                        asset,
                        held,
                        start,
                        position,
                        drift,
                    )
                    self.trace_event(keys[0], "balance_drift", f"{asset} {drift}")

    async def every(self, interval_s: float) -> None:
        """Live runs check their copy against the venues' REST truth periodically."""
        while True:
            await asyncio.sleep(interval_s)
            since = self.clock.now_ns() - int(2 * interval_s * NS)
            try:
                counts = await self.reconcile(since_ns=since, periodic=True)
            except Exception as exc:
                self.log.warning("periodic reconciliation failed: {}; retrying later", exc)
                continue
            repaired = {k: v for k, v in counts.items() if k != "adopted" and v}
            if repaired:
                self.log.warning("periodic reconciliation repaired: {}", repaired)
