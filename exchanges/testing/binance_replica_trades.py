"""The account trade list of the Binance replicas (spot ``GET /api/v3/myTrades`` and
USDⓈ-M ``GET /fapi/v1/userTrades``): which trades a request selects, and the requests
the venue refuses, as Binance documents them."""

from __future__ import annotations

from quoteforge.exchanges.testing.faults import ReplicaTrade

__all__ = ["TRADE_LIST_MAX", "TradeQueryError", "account_trades"]

TRADE_LIST_MAX = 1000
"""The most trades one account trade list call (``myTrades``, ``userTrades``) returns."""


class TradeQueryError(Exception):
    """An account trade list request the venue refuses: its error code and message."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


def account_trades(
    trades: list[ReplicaTrade],
    p: dict[str, str],
    *,
    max_span_ms: int,
    span_error: str,
    implicit_span: bool,
    now_ms: int,
) -> list[ReplicaTrade]:
    """The trades an account trade list request (``symbol`` already resolved to
    ``trades``) selects, as Binance documents it for spot ``GET /api/v3/myTrades`` and
    USDⓈ-M ``GET /fapi/v1/userTrades``: ``limit`` 500 by default, 1000 at most; ``fromId``
    gives trades with id >= it and cannot be sent with ``startTime`` or ``endTime`` (nor,
    on spot, can ``orderId``); ``startTime`` and ``endTime`` may be at most ``max_span_ms``
    apart (spot 24 hours, USDⓈ-M 7 days). Trades come in chronological order: with
    ``fromId`` or ``startTime`` the oldest that match, up to ``limit``; otherwise the most
    recent. ``implicit_span`` (USDⓈ-M): without either time, only the last ``max_span_ms``
    is searched ("the last 7 days' data"), and one time alone spans ``max_span_ms`` from it;
    the futures documentation does not say which end a truncated answer keeps, and the
    replica keeps the oldest, as spot documents. Raises ``TradeQueryError``."""
    values: dict[str, int] = {}
    for key in ("startTime", "endTime", "fromId", "orderId", "limit"):
        if p.get(key, "") != "":
            try:
                values[key] = int(p[key])
            except ValueError:
                raise TradeQueryError(
                    -1100, f"Illegal characters found in parameter '{key}'."
                ) from None
    limit = values.get("limit", 500)
    if not 1 <= limit <= TRADE_LIST_MAX:
        raise TradeQueryError(-1130, "Data sent for parameter 'limit' is not valid.")
    start, end = values.get("startTime"), values.get("endTime")
    timed = start is not None or end is not None
    if timed and ("fromId" in values or (not implicit_span and "orderId" in values)):
        raise TradeQueryError(-1128, "Combination of optional parameters invalid.")
    if start is not None and end is not None and end - start > max_span_ms:
        raise TradeQueryError(-1127, span_error)
    if implicit_span:
        if not timed:
            start = now_ms - max_span_ms
        elif end is None:
            end = (start or 0) + max_span_ms
        elif start is None:
            start = end - max_span_ms
    rows = sorted(
        (
            t
            for t in trades
            if ("orderId" not in values or t.order.order_id == values["orderId"])
            and t.trade_id >= values.get("fromId", 0)
            and (start is None or t.ts_ms >= start)
            and (end is None or t.ts_ms <= end)
        ),
        key=lambda t: t.trade_id,
    )
    oldest = "fromId" in values or values.get("startTime") is not None
    return rows[:limit] if oldest else rows[-limit:]
