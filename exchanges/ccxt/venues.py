"""What the generic ccxt adapter knows about venues: the ccxt ids it has been checked
against (and how), how an order is looked up by client id there, how ccxt's market
structure becomes an exact ``Instrument``, and the "did you mean" for unknown ids."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from quoteforge.model import Instrument

__all__ = [
    "CHECKED_VENUES",
    "CheckedVenue",
    "MarketGridError",
    "ccxt_venues_main",
    "grid_units",
    "instrument_from_market",
    "known_exchange_ids",
    "replica_urls",
    "resolve_exchange_id",
]

# ccxt's precision modes (ccxt.base.decimal_to_precision), kept here so mapping a market
# never needs ccxt imported.
DECIMAL_PLACES = 2
SIGNIFICANT_DIGITS = 3
TICK_SIZE = 4


@dataclass(frozen=True)
class CheckedVenue:
    """A ccxt id the adapter has been run against, end to end, and what it needs.

    ``lookup``: how an order whose status is unknown is found by client id —
    ``fetch_order`` (the venue's order query takes the client id:
    ``fetch_order("", symbol, {"clientOrderId": id})``) or ``open_closed`` (its open
    orders, then its closed orders, matched on ``clientOrderId``).
    ``edit_replaces``: ``edit_order`` is an atomic cancel-replace that takes the new
    order's client id (used for ``ReplaceOrder``); otherwise replace is cancel then place.
    ``edit_old_client_id_param``: the ``edit_order`` param that names the order to
    replace by its client id (else ccxt names it by the venue's order id).
    ``stream_fee_sign``: -1 where ccxt's websocket trades give a charged fee as a
    negative cost (OKX ``fillFee``; its REST parser negates it, the stream's does not).
    ``client_id_pattern``: (what the venue accepts, what to drop, longest length) for a
    venue whose client ids are narrower than the run's (OKX: letters and digits, 32).
    ``options``: ccxt options the adapter sets for this venue (the user's win);
    ``has``: capabilities to switch off (a call the adapter does not need).
    ``secrets``: what a live run needs besides ``api_key`` and ``api_secret`` (OKX's
    passphrase, given as ``password``).
    ``my_trades_paging``: how our trade history (``fetch_my_trades``) pages on, so a read
    gets every trade since a time, not the venue's first answer: ``from_id`` (the oldest
    ``my_trades_page`` trades from ``since``, then the venue's ``fromId`` param from the
    last id + 1 until a short page: Binance ``myTrades``), ``offset`` (the most recent
    first, ``ofs`` param counting rows already read until an empty page: Kraken
    ``TradesHistory``) or ``after`` (the most recent first, ``after`` param naming the
    oldest ``billId`` read until a page brings nothing new: OKX ``fills-history``);
    ``""``: one answer only.
    """

    ccxt_id: str
    checked: str
    integrity: str
    lookup: str = "open_closed"
    edit_replaces: bool = False
    edit_old_client_id_param: str = ""
    stream_fee_sign: int = 1
    client_id_pattern: tuple[str, str, int] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    has: dict[str, Any] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    my_trades_paging: str = ""
    my_trades_page: int = 0


CHECKED_VENUES: dict[str, CheckedVenue] = {
    "binance": CheckedVenue(
        "binance",
        checked="spot, against the Binance replica (REST /api/v3, diff-depth and trade "
        "streams, websocket-API user data): the conformance scenarios ccxt can see, and the "
        "same fills as the dedicated binance adapter from one replica script",
        integrity="diff-depth update ids (U/u continuity): a gap raises ChecksumError "
        "(an InvalidNonce), the book is rebuilt from a new REST snapshot",
        lookup="fetch_order",
        edit_replaces=True,
        edit_old_client_id_param="cancelOrigClientOrderId",
        # Spot only: the futures exchangeInfo endpoints and the margin pair lists are
        # not needed to trade spot and cost requests at every start.
        options={
            "fetchMarkets": {"types": ["spot"]},
            "fetchMargins": False,
            "fetchCurrencies": False,
        },
        # GET /api/v3/myTrades: limit at most 1000; fromId gives trades with id >= it.
        my_trades_paging="from_id",
        my_trades_page=1000,
    ),
    "kraken": CheckedVenue(
        "kraken",
        checked="spot, against the Kraken replica (REST, websocket v2 book/trade and "
        "executions): the conformance scenarios ccxt can see",
        integrity="none in ccxt by default: its CRC32 book checksum is off "
        "(options.watchOrderBook.checksum) because it keeps levels as floats, so a missed "
        "update is not detected; quoteforge still checks for a crossed book",
        lookup="open_closed",
        # TradesHistory: 50 trades a call, the most recent first; ofs pages on.
        my_trades_paging="offset",
    ),
    "okx": CheckedVenue(
        "okx",
        checked="spot, against the OKX v5 replica (exchanges/testing/okx_replica.py: REST "
        "trade/account endpoints, books/trades and login/orders websockets, written from "
        "OKX's v5 documentation): the conformance scenarios ccxt can see",
        integrity="books seqId/prevSeqId continuity: a break raises InvalidNonce and the "
        "next watch_order_book subscribes afresh (snapshot); the CRC32 checksum is not "
        "checked",
        lookup="fetch_order",
        stream_fee_sign=-1,
        client_id_pattern=(r"[A-Za-z0-9]{1,32}", r"[^A-Za-z0-9]", 32),
        options={
            "fetchMarkets": {"types": ["spot"]},
            # One order per request (not batch-orders): its answer is the order's own.
            "createOrder": "privatePostTradeOrder",
        },
        # fetchCurrencies needs the funding account's permission and is not needed.
        has={"fetchCurrencies": False},
        secrets=("password",),
        # GET /api/v5/trade/fills-history: the most recent first, 100 at most; after=billId
        # gives the records before it.
        my_trades_paging="after",
    ),
}
"""The ccxt ids checked against a replica; any other id runs with a warning."""


class MarketGridError(ValueError):
    """A ccxt market whose price or amount grid cannot be made exact."""


def known_exchange_ids() -> list[str]:
    """Every ccxt exchange id (empty when ccxt is not installed)."""
    try:
        import ccxt
    except ModuleNotFoundError:
        return []
    return list(ccxt.exchanges)


def resolve_exchange_id(name: str, known: list[str] | None = None) -> str:
    """``name`` when ccxt has that exchange; ``ValueError`` with the closest ids
    otherwise. With ccxt missing, nothing can be checked and ``name`` passes."""
    known = known_exchange_ids() if known is None else known
    if not known or name in known:
        return name
    lowered = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    if lowered in known:
        return lowered
    close = difflib.get_close_matches(lowered, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"ccxt has no exchange {name!r}{hint} (ccxt ids are lower case, e.g. 'binance', "
        "'kraken', 'bybit', 'okx'; python -c \"import ccxt; print(ccxt.exchanges)\" lists them)"
    )


def _grid(value: Any, mode: int, what: str, where: str) -> Decimal:
    """One precision value of a ccxt market as the exact grid step it stands for."""
    if value is None:
        raise MarketGridError(f"{where}: ccxt gives no {what} precision")
    if mode == SIGNIFICANT_DIGITS:
        raise MarketGridError(
            f"{where}: ccxt describes this venue's {what} precision in significant digits, "
            "which is no fixed grid; quoteforge needs a tick and a step: write a dedicated "
            "adapter for this venue (docs/adapters.md)"
        )
    if mode == DECIMAL_PLACES:
        places = Decimal(str(value))
        if places != places.to_integral_value():
            raise MarketGridError(f"{where}: {what} precision {value!r} is not a count of places")
        return Decimal(1).scaleb(-int(places))
    # TICK_SIZE: the step itself. ccxt holds it as a float; repr() is the shortest text
    # that round-trips, which is the venue's own text for any step a venue publishes.
    step = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    if not step.is_finite() or step <= 0:
        raise MarketGridError(f"{where}: {what} step {value!r} is not a positive number")
    return step.normalize()


def _limit(value: Any) -> Decimal:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return Decimal(0)
    return (Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))).normalize()


def instrument_from_market(
    venue: str, symbol: str, market: dict[str, Any], precision_mode: int
) -> Instrument:
    """The exact ``Instrument`` for one ccxt market.

    Prices on ``precision.price``; quantities ordered on ``precision.amount`` and
    counted at ``precision.base`` where ccxt gives a finer one (Binance reports fills
    and levels at the base asset's precision, finer than the order step); minimums from
    ``limits.amount.min`` and ``limits.cost.min``. ``TICK_SIZE`` and ``DECIMAL_PLACES``
    modes are exact; ``SIGNIFICANT_DIGITS`` is refused (no fixed grid).
    """
    where = f"{venue}: market {market.get('symbol', symbol)!r}"
    precision = market.get("precision") or {}
    tick = _grid(precision.get("price"), precision_mode, "price", where)
    step = _grid(precision.get("amount"), precision_mode, "amount", where)
    lot = step
    base_precision = precision.get("base")
    if base_precision is not None:
        try:
            finer = _grid(base_precision, precision_mode, "base", where)
        except MarketGridError:
            finer = step
        if finer < step and step % finer == 0:
            lot = finer
    limits = market.get("limits") or {}
    return Instrument(
        venue=venue,
        symbol=symbol,
        base=str(market.get("base", "")),
        quote=str(market.get("quote", "")),
        tick_size=tick,
        lot_size=lot,
        qty_step=step,
        min_qty=_limit((limits.get("amount") or {}).get("min")),
        min_notional=_limit((limits.get("cost") or {}).get("min")),
    )


def grid_units(value: Any, unit: float, what: str) -> int:
    """A number ccxt parsed into a float, as a whole count of ``unit`` (ticks or lots).

    ccxt turns the venue's decimal text into binary floats (and computes some, such as
    ``filled``, by float arithmetic), so the count is rounded to the nearest unit; a
    value further than a millionth of a unit off the grid is an error, never rounded.
    """
    x = float(value) / unit
    n = round(x)
    if abs(x - n) > 1e-6:
        raise MarketGridError(f"{what} {value!r} is not on the grid of {unit!r}")
    return n


def replica_urls(exchange: str, replica: Any) -> dict[str, Any]:
    """The ``urls`` param that points ccxt's ``exchange`` at a quoteforge replica
    (``quoteforge.exchanges.testing``) of that venue; ``ValueError`` for a venue without
    one. The REST and websocket routes are those the venue documents, so the same
    overrides reach any local stand-in that serves them."""
    base = replica.url.rstrip("/")
    ws = replica.ws_url.rstrip("/")
    if exchange == "binance":
        return {
            "api": {
                "public": f"{base}/api/v3",
                "private": f"{base}/api/v3",
                "ws": {"spot": f"{ws}/ws", "ws-api": {"spot": f"{ws}/ws-api/v3"}},
            }
        }
    if exchange == "kraken":
        return {
            "api": {
                "public": base,
                "private": base,
                "ws": {"publicV2": replica.public_ws_url, "privateV2": replica.private_ws_url},
            }
        }
    if exchange == "okx":
        return {"api": {"rest": base, "ws": f"{ws}/ws/v5"}}
    raise ValueError(
        f"no replica URLs for ccxt exchange {exchange!r}; replicas: binance, kraken, okx"
    )


def ccxt_venues_main(argv: list[str]) -> int:
    """``quoteforge ccxt-venues [--json]``: the ccxt ids ``type: ccxt`` has been checked
    against, how, and what ccxt checks of their books; any other id runs with a warning."""
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="quoteforge ccxt-venues",
        description="The ccxt exchanges type: ccxt has been checked against, and how.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    known = known_exchange_ids()
    rows = [
        {"exchange": v.ccxt_id, "checked": v.checked, "book_integrity": v.integrity}
        for v in CHECKED_VENUES.values()
    ]
    if args.json:
        print(json.dumps({"checked": rows, "other_ccxt_ids": len(known) - len(rows)}, indent=2))
        return 0
    for row in rows:
        print(f"{row['exchange']}\n  checked: {row['checked']}\n  book: {row['book_integrity']}")
    others = f"{len(known) - len(rows)} other ccxt ids" if known else "other ccxt ids"
    print(f"{others} run with a warning (not checked); docs/venues/ccxt.md says how to try one")
    return 0
