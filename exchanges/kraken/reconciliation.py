"""Kraken's REST reads for reconciliation: one order by client id, the open orders, the
balances and the account's fills, each fill with the client id of its order.

Kraken's ``TradesHistory`` rows name their order (``ordertxid``) but carry no
``cl_ord_id``. Orders this process placed or saw on the executions stream are known by
txid; for the others (an earlier process of the run, another program on the account)
``QueryOrders`` gives the ``cl_ord_id``, so the kernel's reconciliation can tell this
run's fills from other trades on the account.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from loguru import logger

from quoteforge.exchange import VenueContext
from quoteforge.exchanges.ccxt_base import CcxtSpotAdapter, CcxtSpotParams
from quoteforge.exchanges.ccxt_orders import TrackedOrder, VenueCallError
from quoteforge.exchanges.kraken.wire import alt_pair, rest_asset, rest_update
from quoteforge.model import Fill, Liquidity, OrderUpdate, Side

__all__ = ["QUERY_ORDERS_BATCH", "KrakenReconciliation"]

QUERY_ORDERS_BATCH = 50
"""The most txids one ``QueryOrders`` call takes."""


class KrakenReconciliation(CcxtSpotAdapter):
    """The REST reads of ``KrakenSpot`` (see the module docstring). The adapter fills
    ``_wire`` and ``_rest_pair`` when it loads the instruments, and ``_by_order_id``
    from order acknowledgements and execution events."""

    _wire: dict[str, str]  # our symbol -> "BTC/USD"
    _rest_pair: dict[str, str]  # our symbol -> "XXBTZUSD"

    def __init__(self, params: CcxtSpotParams, ctx: VenueContext) -> None:
        super().__init__(params, ctx)
        self._by_order_id: dict[str, str] = {}
        """Kraken txid -> client order id, of every order whose client id we learnt."""
        self._asked_txids: set[str] = set()
        """Txids sent to ``QueryOrders``: each is asked once a process, answered or not."""

    async def lookup_order(self, order: TrackedOrder) -> OrderUpdate | None:
        for method, key in (
            ("private_post_openorders", "open"),
            ("private_post_closedorders", "closed"),
        ):
            data = await self._rest(method, {"cl_ord_id": order.client_id})
            rows = data.get("result", {}).get(key, {})
            for txid, info in rows.items():
                if info.get("cl_ord_id") == order.client_id:
                    order.exchange_id = txid
                    self._by_order_id[txid] = order.client_id
                    update = rest_update(
                        self.name,
                        order.client_id,
                        info,
                        self.instruments[order.symbol],
                        self.clock.now_ns(),
                    )
                    return OrderUpdate(
                        update.venue,
                        update.client_id,
                        update.status,
                        update.ts_ns,
                        txid,
                        update.filled_lots,
                        update.price_ticks,
                        update.qty_lots,
                    )
        return None

    async def _open_on(self, symbol: str) -> list[OrderUpdate]:
        data = await self._rest("private_post_openorders")
        pair_alt = self._rest_pair[symbol]
        out = []
        for info in data.get("result", {}).get("open", {}).values():
            descr_pair = info.get("descr", {}).get("pair", "")
            if descr_pair and descr_pair not in (
                pair_alt,
                symbol.replace("/", ""),
                self._wire[symbol].replace("/", ""),
                alt_pair(pair_alt),
            ):
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

    async def reconcile_orders(self) -> None:
        # The executions snapshot (open orders and recent fills) already replayed what
        # was missed; lookups settle orders that closed while we were away.
        await super().reconcile_orders()

    async def fetch_open_orders(self) -> list[OrderUpdate]:
        self.require_credentials("open orders")
        out: list[OrderUpdate] = []
        for symbol in self.instruments:
            out.extend(await self._open_on(symbol))
        return out

    async def fetch_balances(self) -> dict[str, Decimal]:
        self.require_credentials("balances")
        data = await self._rest("private_post_balance")
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
            data = await self._rest("private_post_tradeshistory", {"start": start, "ofs": ofs})
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
                data = await self._rest("private_post_queryorders", {"txid": ",".join(batch)})
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
            result = data.get("result") if type(data) is dict else None
            for txid, info in (result if type(result) is dict else {}).items():
                client_id = info.get("cl_ord_id") if type(info) is dict else None
                if client_id and type(client_id) is str:
                    self._by_order_id[str(txid)] = client_id
