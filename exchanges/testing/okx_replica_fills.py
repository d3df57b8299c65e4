"""Our trade history as OKX v5 pages it (``GET /api/v5/trade/fills`` and
``/trade/fills-history``), for the OKX replica (okx_replica.py).

From OKX's v5 documentation of both endpoints (as its clients quote it: python-okx,
the okx crates, ccxt's okx.py): ``after`` returns the records earlier than the
requested ``billId``, ``before`` the records newer than it; ``begin``/``end`` filter
by the ``ts`` in ms; ``limit`` is at most 100, 100 by default; the records come the
most recent first. Not documented, so the replica's choice: ``begin``/``end`` include
their ms, a ``limit`` above 100 serves 100, and a page asked with ``before`` alone
holds the records next to that ``billId`` (as cursor paging needs), still newest first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["FILLS_PAGE", "fills_page"]

FILLS_PAGE = 100


def fills_page(rows: list[dict[str, Any]], query: Mapping[str, str]) -> list[dict[str, Any]]:
    """The page of fill ``rows`` (the venue's JSON) that ``query`` asks for; a
    ``ValueError`` naming the parameter that is not a number."""
    numbers = {}
    for name in ("begin", "end", "after", "before", "limit"):
        text = query.get(name) or ""
        if text and not text.isdigit():
            raise ValueError(name)
        numbers[name] = int(text) if text else None
    limit = min(numbers["limit"] or FILLS_PAGE, FILLS_PAGE)
    begin, end, after, before = (numbers[k] for k in ("begin", "end", "after", "before"))
    wanted = query.get("instId")
    kept = [
        r
        for r in rows
        if (wanted is None or r["instId"] == wanted)
        and (begin is None or int(r["ts"]) >= begin)
        and (end is None or int(r["ts"]) <= end)
        and (after is None or int(r["billId"]) < after)
        and (before is None or int(r["billId"]) > before)
    ]
    kept.sort(key=lambda r: -int(r["billId"]))
    return kept[-limit:] if before is not None and after is None else kept[:limit]
