"""Kraken's REST side: every call paced by the API key's REST call counter
(``_paced_rest``), and the reads for reconciliation, each made with as few calls as the
venue allows: one order (by txid, else by client id), the working orders after a stream
drop, the open orders (one read for every pair), the balances and the account's fills,
each fill with the client id of its order.

Kraken's ``TradesHistory`` rows name their order (``ordertxid``) but carry no
``cl_ord_id``. Orders this process placed or saw on the executions stream are known by
txid; for the others (an earlier process of the run, another program on the account)
``QueryOrders`` gives the ``cl_ord_id``, so the kernel's reconciliation can tell this
run's fills from other trades on the account.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from decimal import Decimal
from typing import Any

from loguru import logger

from quoteforge.exchange import VenueContext
from quoteforge.exchanges.ccxt_base import CcxtSpotAdapter, CcxtSpotParams
from quoteforge.exchanges.ccxt_orders import TrackedOrder, VenueCallError
from quoteforge.exchanges.kraken.ratelimit import KrakenRestGovernor, kraken_rest_cost
from quoteforge.exchanges.kraken.wire import alt_pair, rest_asset, rest_update
from quoteforge.model import Fill, Liquidity, OrderUpdate, Side
from quoteforge.ratelimit import RateLimitError

__all__ = ["QUERY_ORDERS_BATCH", "KrakenReconciliation"]

QUERY_ORDERS_BATCH = 50
"""The most txids one ``QueryOrders`` call takes."""


class KrakenReconciliation(CcxtSpotAdapter):
    """The REST side of ``KrakenSpot`` (see the module docstring). The adapter fills
    ``_wire`` and ``_rest_pair`` when it loads the instruments, and ``_by_order_id``
    from order acknowledgements and execution events. ``tier`` and ``headroom`` set the
    API key's REST call counter (``rest_governor``)."""

    _wire: dict[str, str]  # our symbol -> "BTC/USD"
    _rest_pair: dict[str, str]  # our symbol -> "XXBTZUSD"

    def __init__(
        self,
        params: CcxtSpotParams,
        ctx: VenueContext,
        *,
        tier: str = "starter",
        headroom: float = 0.9,
    ) -> None:
        super().__init__(params, ctx)
        self.rest_governor = KrakenRestGovernor(ctx.clock, tier=tier, headroom=headroom)
        """The API key's REST call counter, one per adapter."""
        self._by_order_id: dict[str, str] = {}
        """Kraken txid -> client order id, of every order whose client id we learnt."""
        self._asked_txids: set[str] = set()
        """Txids sent to ``QueryOrders``: each is asked once a process, answered or not."""

    async def _paced_rest(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One REST call of the Kraken adapter: all of them come here, none calls ``_rest``
        itself. A private call is first charged to the API key's call counter
        (``rest_governor``), waiting until it fits; one the venue refused for its rate
        (``EAPI:Rate limit exceeded``: the counter is fuller than we know, or ``EService:
        Throttled``) did not happen and is asked again once the wait is over. A call that
        would wait more than ``max_rate_wait_s`` in all is not sent."""
        cost = kraken_rest_cost(method)
        if not cost:
            return await self._rest(method, params)
        budget = self.params.max_rate_wait_s
        waited = 0.0
        while True:
            try:
                waited += await self.rest_governor.acquire(cost, max_wait=budget - waited)
            except RateLimitError as exc:
                tier = self.rest_governor.tier
                raise VenueCallError(
                    "rate_limited",
                    f"{method} not sent: {exc}; check that tier ({tier!r}) is the account's "
                    "verification tier and that no other program uses this API key, or "
                    "raise max_rate_wait_s",
                    retry_after_s=exc.retry_after_s,
                ) from None
            try:
                return await self._rest(method, params)
            except VenueCallError as exc:
                if exc.kind != "rate_limited":
                    raise
                refused = exc
            self.counters["rate_limited"] += 1
            if "EAPI:Rate limit exceeded" in refused.message:
                self.rest_governor.on_limit_exceeded(cost)
            else:
                self.rest_governor.on_retry_after(refused.retry_after_s)
            logger.warning(
                "{}: {} refused ({}); asking again in {:.1f}s",
                self.name,
                method,
                refused.message,
                self.rest_governor.delay_for(cost),
            )

    async def lookup_order(self, order: TrackedOrder) -> OrderUpdate | None:
        """The venue's view of one order. Known by txid, one ``QueryOrders`` call answers
        it, open or closed. Otherwise (its acknowledgement was lost) ``OpenOrders``, then
        ``ClosedOrders``, each filtered by ``cl_ord_id``: ``QueryOrders`` takes txids only.
        """
        if order.exchange_id:
            try:
                found = await self._query_orders([order.exchange_id])
            except VenueCallError as exc:
                if exc.kind != "not_found":
                    raise
                found = {}  # not known by that txid: asked by client id below
            info = found.get(order.exchange_id)
            if info is not None:
                return self._order_report(order, order.exchange_id, info)
        for method, key in (
            ("private_post_openorders", "open"),
            ("private_post_closedorders", "closed"),
        ):
            data = await self._paced_rest(method, {"cl_ord_id": order.client_id})
            rows = data.get("result", {}).get(key, {})
            for txid, info in rows.items():
                if info.get("cl_ord_id") == order.client_id:
                    return self._order_report(order, txid, info)
        return None

    async def _query_orders(self, txids: list[str]) -> dict[str, Any]:
        """``QueryOrders`` for up to ``QUERY_ORDERS_BATCH`` txids: {txid: order info}."""
        data = await self._paced_rest("private_post_queryorders", {"txid": ",".join(txids)})
        result = data.get("result") if type(data) is dict else None
        return {
            str(t): info
            for t, info in (result if type(result) is dict else {}).items()
            if type(info) is dict
        }

    def _order_report(self, order: TrackedOrder, txid: str, info: dict[str, Any]) -> OrderUpdate:
        """The report of ``order`` from its REST order info, and its txid learnt."""
        order.exchange_id = txid
        self._by_order_id[txid] = order.client_id
        update = rest_update(
            self.name, order.client_id, info, self.instruments[order.symbol], self.clock.now_ns()
        )
        return replace(update, exchange_id=txid)

    async def _open_rows(self) -> list[dict[str, Any]]:
        """Every open order of the account (``OpenOrders`` answers for all pairs at once)."""
        data = await self._paced_rest("private_post_openorders")
        rows = data.get("result", {}).get("open", {}) if type(data) is dict else {}
        return [info for info in rows.values() if type(info) is dict]

    def _open_of(self, symbol: str, rows: list[dict[str, Any]]) -> list[OrderUpdate]:
        """The reports of the open orders of ``symbol`` among ``rows`` that have a client id."""
        pair_alt = self._rest_pair[symbol]
        names = (
            pair_alt,
            symbol.replace("/", ""),
            self._wire[symbol].replace("/", ""),
            alt_pair(pair_alt),
        )
        out = []
        for info in rows:
            descr_pair = info.get("descr", {}).get("pair", "")
            if descr_pair and descr_pair not in names:
                continue
            if info.get("cl_ord_id"):
                out.append(
                    rest_update(
                        self.name,
                        info["cl_ord_id"],
                        info,
                        self.instruments[symbol],
                        self.clock.now_ns(),
                    )
                )
        return out

    async def _open_on(self, symbol: str) -> list[OrderUpdate]:
        return self._open_of(symbol, await self._open_rows())

    async def reconcile_orders(self) -> None:
        """After the private stream was down: the venue's view of every working order.
        The executions snapshot already replayed what was missed; these lookups settle
        orders that closed while we were away. Orders known by txid are asked of
        ``QueryOrders``, up to ``QUERY_ORDERS_BATCH`` a call (each call counts on the API
        key's REST counter, however many orders it names); the others one by one."""
        self.counters["reconciliations"] += 1
        working = [t for t in self._orders.values() if not t.status.is_terminal]
        by_txid = {t.exchange_id: t for t in working if t.exchange_id}
        one_by_one = [t for t in working if not t.exchange_id]
        txids = list(by_txid)
        for start in range(0, len(txids), QUERY_ORDERS_BATCH):
            batch = txids[start : start + QUERY_ORDERS_BATCH]
            try:
                found = await self._query_orders(batch)
            except VenueCallError as exc:
                if exc.kind != "not_found":
                    logger.warning(
                        "{}: reconcile lookup of {} order(s) failed: {}", self.name, len(batch), exc
                    )
                    continue
                found = {}  # a txid the venue does not know refuses the call: ask each
            for txid in batch:
                tracked = by_txid[txid]
                if txid in found:
                    self._emit_update(self._order_report(tracked, txid, found[txid]))
                else:
                    one_by_one.append(tracked)
        await self.look_up_each(one_by_one)

    async def fetch_open_orders(self) -> list[OrderUpdate]:
        self.require_credentials("open orders")
        rows = await self._open_rows()
        return [update for symbol in self.instruments for update in self._open_of(symbol, rows)]

    async def fetch_balances(self) -> dict[str, Decimal]:
        self.require_credentials("balances")
        data = await self._paced_rest("private_post_balance")
        out = {}
        for asset, amount in data.get("result", {}).items():
            value = Decimal(str(amount))
            if value:
                out[rest_asset(asset)] = value
        return out

    async def fetch_fills(self, since_ns: int) -> list[Fill]:
        self.require_credentials("fills")
        rows = await self._trades_since(since_ns)
        await self._learn_client_ids(str(row.get("ordertxid") or "") for row in rows)
        fills = []
        for row in rows:
            symbol = next(
                (
                    s
                    for s, alt in self._rest_pair.items()
                    if row.get("pair") in (alt, alt_pair(alt))
                ),
                None,
            )
            if symbol is None:
                continue
            inst = self.instruments[symbol]
            fills.append(
                Fill(
                    venue=self.name,
                    symbol=symbol,
                    fill_id=f"{self._wire[symbol]}:{row.get('trade_id')}",
                    # A trade of an order that names no client id of ours (another
                    # client's, a manual one, a lookup that failed) is marked as such:
                    # "" would be a settlement of the run's own holdings.
                    client_id=self._by_order_id.get(txid := str(row.get("ordertxid") or ""))
                    or f"order:{txid}",
                    side=Side.parse(row["type"]),
                    price_ticks=inst.price_to_ticks(row["price"]),
                    qty_lots=inst.qty_to_lots(row["vol"]),
                    fee=Decimal(str(row["fee"])),
                    fee_asset=inst.quote,
                    liquidity=Liquidity.MAKER if row.get("maker") else Liquidity.TAKER,
                    ts_ns=int(Decimal(str(row["time"])) * 1_000_000_000),
                )
            )
        return fills

    async def _trades_since(self, since_ns: int) -> list[dict[str, Any]]:
        """Every ``TradesHistory`` row of the account from ``since_ns`` on, each once.

        The venue answers 50 rows a call, the most recent first, with ``count`` (how many
        match in all); ``ofs`` pages on. Pages are read until ``count`` rows are in hand or
        a page comes back empty. A trade made while paging shifts the later pages by one:
        a row comes twice (kept once, by its trade txid), none is skipped; the new trade
        itself is read by the next call. ``start`` is exclusive and sent in whole seconds,
        a second early, so a trade at ``since_ns`` is not left out.
        """
        start = max(0, since_ns // 1_000_000_000 - 1)
        rows: dict[str, dict[str, Any]] = {}
        ofs = 0
        while True:
            data = await self._paced_rest(
                "private_post_tradeshistory", {"start": start, "ofs": ofs}
            )
            result = data.get("result") if type(data) is dict else None
            page = result.get("trades") if type(result) is dict else None
            if type(page) is not dict or not page:
                break
            for txid, row in page.items():
                if type(row) is dict:
                    rows.setdefault(str(txid), row)
            ofs += len(page)
            count = result.get("count") if type(result) is dict else None
            if type(count) is int and len(rows) >= count:
                break
        return list(rows.values())

    async def _learn_client_ids(self, txids: Iterable[str]) -> None:
        """Ask ``QueryOrders`` for the client ids of orders not known by txid, at most
        ``QUERY_ORDERS_BATCH`` a call and each txid once a process. A failed call is
        logged and its orders stay unnamed (``order:<txid>``: not the run's, to the
        reconciliation) until the next read asks again."""
        unknown = [
            txid
            for txid in dict.fromkeys(txids)
            if txid and txid not in self._by_order_id and txid not in self._asked_txids
        ]
        for start in range(0, len(unknown), QUERY_ORDERS_BATCH):
            batch = unknown[start : start + QUERY_ORDERS_BATCH]
            self._asked_txids.update(batch)
            try:
                found = await self._query_orders(batch)
            except VenueCallError as exc:
                self._asked_txids.difference_update(batch)  # asked again at the next read
                logger.warning(
                    "{}: QueryOrders for {} order(s) failed ({}); their fills count as "
                    "other trades on the account until a later read names them",
                    self.name,
                    len(batch),
                    exc,
                )
                return
            for txid, info in found.items():
                client_id = info.get("cl_ord_id")
                if client_id and type(client_id) is str:
                    self._by_order_id[txid] = client_id
