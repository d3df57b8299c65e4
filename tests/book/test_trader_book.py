"""Trader book: our working orders and their queue-position estimates."""

from __future__ import annotations

import pytest

from quoteforge.book import L2Book
from quoteforge.model import Instrument, Side
from quoteforge.strategies.trader_book import TraderBook


@pytest.fixture
def book(btcusdt: Instrument) -> L2Book:
    book = L2Book(btcusdt)
    book.apply_snapshot([(100, 30), (99, 50)], [(101, 20)])
    return book


def test_queue_ahead_starts_at_the_visible_size(book: L2Book) -> None:
    trader = TraderBook()
    order = trader.add_from_book("o1", book, Side.BUY, 100, 5)
    assert (order.ahead_lots, order.seen_lots, order.behind_lots) == (30, 35, 0)
    book.set_level(Side.BUY, 100, 35)  # o1 is now part of the public size
    later = trader.add_from_book("o2", book, Side.BUY, 100, 1)
    assert later.ahead_lots == 35  # behind the 30 lots and behind o1
    assert trader.at("binance", "BTCUSDT", Side.BUY, 100) == [order, later]
    new_level = trader.add_from_book("o3", book, Side.SELL, 102, 4)
    assert new_level.at_front


def test_trades_at_our_price_eat_the_queue_ahead(book: L2Book) -> None:
    trader = TraderBook()
    order = trader.add_from_book("o1", book, Side.BUY, 100, 5)
    trader.on_trade("binance", "BTCUSDT", 100, 12, aggressor=Side.SELL)
    assert order.ahead_lots == 18 and order.seen_lots == 23
    trader.on_trade("binance", "BTCUSDT", 100, 3, aggressor=Side.BUY)  # other side: no effect
    assert order.ahead_lots == 18
    trader.on_trade("binance", "BTCUSDT", 99, 1, aggressor=Side.SELL)  # traded through us
    assert order.at_front


def test_cancellations_reduce_the_queue_in_proportion(book: L2Book) -> None:
    trader = TraderBook()
    order = trader.add_from_book("o1", book, Side.BUY, 100, 5)
    book.set_level(Side.BUY, 100, 35)  # our order shows up in the public size
    trader.observe(book)
    assert order.ahead_lots == 30
    book.set_level(Side.BUY, 100, 45)  # 10 lots join behind us
    trader.observe(book)
    assert order.ahead_lots == 30 and order.behind_lots == 10
    book.set_level(Side.BUY, 100, 25)  # 20 lots cancelled: 30 of the 40 others were ahead
    trader.observe(book)
    assert order.ahead_lots == 30 - 20 * 30 // 40
    assert order.seen_lots == 25


def test_fills_and_removal(book: L2Book) -> None:
    trader = TraderBook()
    first = trader.add_from_book("o1", book, Side.BUY, 100, 5)
    second = trader.add("o2", "binance", "BTCUSDT", Side.BUY, 100, 2, visible_ahead=35)
    trader.fill("o1", 2)
    assert first.lots == 3 and first.at_front
    trader.remove("o1")
    assert "o1" not in trader and len(trader) == 1
    assert second.ahead_lots == 32  # our cancelled 3 lots no longer stand in front
    trader.fill("o2", 2)
    assert len(trader) == 0
    with pytest.raises(KeyError, match="no working order 'o2'"):
        trader.get("o2")
    with pytest.raises(ValueError, match="lots must be > 0"):
        trader.add("o3", "binance", "BTCUSDT", Side.BUY, 100, 0, visible_ahead=0)
