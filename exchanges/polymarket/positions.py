"""What the Polymarket account holds when a run starts: outcome tokens from before the
process (another program, an earlier run, the first life of a resumed run) and orders of
an earlier process of the same run.

A fresh run reads each token's balance (``GET /balance-allowance``, the CLOB's own
figure) and its average price from the data API (``GET /positions?user=``), and refuses
to start (``start_position: require_flat``) or returns them for the run to book as
opening positions (``adopt``). A resumed run has its opening positions in its journal;
the adapter then learns the order hashes of the run's journaled orders, so their open
orders and trades are recognised as ours, not as ``venue:<hash>``. A resolution settles
the run's position as the portfolio holds it (opening position and every fill booked,
whichever process saw it).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from quoteforge.exchanges.polymarket.reports import PolymarketReports
from quoteforge.model import Order, VenuePosition

__all__ = ["PolymarketPositions"]


class PolymarketPositions(PolymarketReports):
    """The start-of-run part of ``PolymarketClob`` (see the module docstring); its
    balances, order ids and REST calls are the reporting part's."""

    params: Any  # the adapter's PolymarketParams

    #: The run's position per market key (the portfolio's), once the run has said.
    _position_of: Callable[[str], int] | None = None

    def held_lots(self, symbol: str) -> int:
        """The tokens of ``symbol`` a resolution settles: the run's position when the run
        has told us how to read it, otherwise what this adapter's own fills add up to."""
        if self._position_of is not None:
            return self._position_of(f"{self.name}:{symbol}")
        return self.held.get(symbol, 0)

    async def start_positions(
        self, position_lots: Callable[[str], int], orders: list[Order], *, resumed: bool
    ) -> list[VenuePosition]:
        """Called by the run once its portfolio holds what the journal says, with the
        portfolio's ``position_lots(market_key)`` and this venue's journaled orders: learn
        them, and on a fresh start return the tokens held for the run to book as opening
        positions (or refuse, under ``require_flat``)."""
        for order in orders:
            if order.exchange_id:
                self.remember(order.exchange_id, order.client_id)
        self._position_of = position_lots
        if resumed or self.signer is None:  # no credentials: no account to read
            return []
        balances = await self.fetch_balances()
        held: dict[str, int] = {}
        for symbol in self.tokens:
            lots = self.instruments[symbol].qty_to_lots(balances.get(symbol, Decimal(0)))
            if lots:
                held[symbol] = lots
        if not held:
            return []
        what = ", ".join(
            f"{self.instruments[s].lots_to_qty(lots)} {s}" for s, lots in sorted(held.items())
        )
        if self.params.start_position == "require_flat":
            await self.close()  # a refused start leaves nothing running
            raise ValueError(
                f"{self.name}: the account holds {what} as the run starts, and "
                "params.start_position is require_flat: sell or redeem the tokens first, or "
                "set start_position: adopt to book them as the opening position (settled at "
                "resolution like the run's own)"
            )
        prices = await self.average_prices()
        now = self.clock.now_ns()
        out = []
        for symbol, lots in sorted(held.items()):
            token_id = self.tokens[symbol].token_id
            price = prices.get(token_id)
            if price is None:
                await self.close()
                raise ValueError(
                    f"{self.name}: the account holds {what}, and the data API "
                    f"({self.params.data_url}/positions) gives no average price for {symbol} "
                    f"(token {token_id}), so it cannot be adopted: check params.funder (the "
                    "address holding the tokens), or sell the tokens first"
                )
            out.append(VenuePosition(self.name, symbol, lots, price, None, Decimal(0), None, now))
        return out

    async def average_prices(self) -> dict[str, Decimal]:
        """Token id -> average price of the account's positions in our markets, from the
        data API's ``GET /positions?user=<address>&market=<condition ids>``."""
        assert self.signer is not None
        user = self.params.funder or self.signer.address
        markets = sorted({t.condition_id for t in self.tokens.values()})
        rows = await self.call(
            "GET",
            "/positions",
            query={"user": user, "market": ",".join(markets), "sizeThreshold": "0"},
            base=self.params.data_url,
        )
        return {
            str(row["asset"]): Decimal(str(row["avgPrice"]))
            for row in rows or []
            if isinstance(row, dict) and row.get("avgPrice") is not None
        }
