"""The trader book: our own working orders per venue with a queue-position estimate,
kept apart from the public depth they are part of."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from quoteforge.book.l2 import L2Book
from quoteforge.model import Side

__all__ = ["OwnOrder", "TraderBook"]


@dataclass(slots=True)
class OwnOrder:
    """One of our resting orders and what we believe is queued ahead of it.

    ``ahead_lots`` starts as the visible size at our price when the order joined
    the queue; trades at our price take it first, and shrinking of the visible size
    that trades do not explain is treated as cancellations spread evenly over the
    orders ahead of and behind us. ``seen_lots`` is the visible size at our price
    (ours included) the last time the public book was observed.
    """

    client_id: str
    venue: str
    symbol: str
    side: Side
    price_ticks: int
    lots: int
    ahead_lots: int
    seen_lots: int

    @property
    def behind_lots(self) -> int:
        """Visible size queued after us, as last observed."""
        return max(0, self.seen_lots - self.ahead_lots - self.lots)

    @property
    def at_front(self) -> bool:
        return self.ahead_lots == 0


class TraderBook:
    """Our working orders, by client id and by (venue, symbol, side, price)."""

    def __init__(self) -> None:
        self._orders: dict[str, OwnOrder] = {}
        self._by_level: dict[tuple[str, str, Side, int], list[OwnOrder]] = {}

    def __len__(self) -> int:
        return len(self._orders)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._orders

    def __iter__(self) -> Iterator[OwnOrder]:
        return iter(self._orders.values())

    def get(self, client_id: str) -> OwnOrder:
        try:
            return self._orders[client_id]
        except KeyError:
            raise KeyError(f"trader book has no working order {client_id!r}") from None

    def orders(self, venue: str | None = None, symbol: str | None = None) -> list[OwnOrder]:
        return [
            o
            for o in self._orders.values()
            if (venue is None or o.venue == venue) and (symbol is None or o.symbol == symbol)
        ]

    def at(self, venue: str, symbol: str, side: Side, price_ticks: int) -> list[OwnOrder]:
        """Our orders at one price, in the order they joined the queue."""
        return list(self._by_level.get((venue, symbol, side, price_ticks), ()))

    # -- our own events ------------------------------------------------------------------
    def add(
        self,
        client_id: str,
        venue: str,
        symbol: str,
        side: Side,
        price_ticks: int,
        lots: int,
        *,
        visible_ahead: int,
    ) -> OwnOrder:
        """An order of ours is resting; ``visible_ahead`` is the public size at its
        price just before it joined (see ``add_from_book``)."""
        if client_id in self._orders:
            raise ValueError(f"trader book already has an order {client_id!r}")
        if lots <= 0:
            raise ValueError(f"order {client_id!r}: lots must be > 0, got {lots}")
        if visible_ahead < 0:
            raise ValueError(f"order {client_id!r}: visible_ahead must be >= 0")
        level = self._by_level.setdefault((venue, symbol, side, price_ticks), [])
        # The visible size already includes our earlier orders at this price.
        order = OwnOrder(
            client_id, venue, symbol, side, price_ticks, lots, visible_ahead, visible_ahead + lots
        )
        self._orders[client_id] = order
        level.append(order)
        for other in level:
            other.seen_lots = order.seen_lots
        return order

    def add_from_book(
        self, client_id: str, book: L2Book, side: Side, price_ticks: int, lots: int
    ) -> OwnOrder:
        """``add`` with the queue ahead read from the public ``book`` at our price."""
        return self.add(
            client_id,
            book.venue,
            book.symbol,
            side,
            price_ticks,
            lots,
            visible_ahead=book.lots_at(side, price_ticks),
        )

    def remove(self, client_id: str) -> OwnOrder:
        """Our order was cancelled or completely filled."""
        order = self.get(client_id)
        del self._orders[client_id]
        key = (order.venue, order.symbol, order.side, order.price_ticks)
        level = self._by_level[key]
        index = level.index(order)
        del level[index]
        for position, other in enumerate(level):
            if position >= index:  # joined after us: our size no longer stands in front
                other.ahead_lots = max(0, other.ahead_lots - order.lots)
            other.seen_lots = max(other.lots, other.seen_lots - order.lots)
        if not level:
            del self._by_level[key]
        return order

    def fill(self, client_id: str, lots: int) -> OwnOrder:
        """Part of our order traded: everything ahead of it has gone."""
        order = self.get(client_id)
        if not 0 < lots <= order.lots:
            raise ValueError(f"order {client_id!r}: fill of {lots} lots, but {order.lots} remain")
        order.lots -= lots
        order.ahead_lots = 0
        order.seen_lots = max(order.lots, order.seen_lots - lots)
        if order.lots == 0:
            self.remove(client_id)
        return order

    # -- the public market ---------------------------------------------------------------
    def on_trade(
        self, venue: str, symbol: str, price_ticks: int, lots: int, aggressor: Side
    ) -> None:
        """A public trade: it consumed resting orders on the side opposite the aggressor
        at ``price_ticks``, front of the queue first."""
        resting = aggressor.opposite
        for order in self._by_level.get((venue, symbol, resting, price_ticks), ()):
            order.ahead_lots = max(0, order.ahead_lots - lots)
            order.seen_lots = max(order.lots, order.seen_lots - lots)
        # A trade through our price means the whole level in front of us has gone.
        if lots > 0:
            for (v, s, side, p), level in self._by_level.items():
                if v != venue or s != symbol or side is not resting:
                    continue
                through = p > price_ticks if side is Side.BUY else p < price_ticks
                if through:
                    for order in level:
                        order.ahead_lots = 0

    def on_depth(self, venue: str, symbol: str, side: Side, price_ticks: int, visible: int) -> None:
        """The public size at one of our prices is now ``visible`` lots (ours included).

        A decrease not explained by trades (already applied by ``on_trade``) is read
        as cancellations, taken from ahead of us in proportion to the share of the
        other orders that was ahead; an increase is new orders behind us.
        """
        for order in self._by_level.get((venue, symbol, side, price_ticks), ()):
            drop = order.seen_lots - visible
            if drop > 0:
                others = order.seen_lots - order.lots
                if others > 0:
                    order.ahead_lots -= min(order.ahead_lots, drop * order.ahead_lots // others)
            order.seen_lots = visible

    def observe(self, book: L2Book) -> None:
        """Run ``on_depth`` for every one of our prices on ``book``'s market."""
        venue, symbol = book.venue, book.symbol
        for (v, s, side, p), _ in list(self._by_level.items()):
            if v == venue and s == symbol:
                self.on_depth(v, s, side, p, book.lots_at(side, p))
