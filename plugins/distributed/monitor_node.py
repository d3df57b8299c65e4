"""The monitor node of a split run: watches every topic of the run and prints a live
table (also written to monitor.json); trades nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from quoteforge.book import BookState
from quoteforge.model import (
    OrderStatus,
    Side,
)
from quoteforge.plugins.distributed.freshness import heartbeat_age_over
from quoteforge.plugins.distributed.node_base import Node
from quoteforge.plugins.distributed.remote import (
    instrument_from_dict,
)
from quoteforge.plugins.distributed.topics import (
    ParsedTopic,
    TopicError,
    TopicKind,
    decode_symbol,
    parse_topic,
)


@dataclass
class MarketView:
    tick: Decimal | None = None
    lot: Decimal | None = None
    bid: int | None = None
    ask: int | None = None
    state: str = "-"
    book_seen: float = 0.0
    position_lots: int = 0
    fills: int = 0
    working: dict[str, tuple[Side, int | None]] = field(default_factory=dict)


class MonitorNode(Node):
    """Watches a whole run and prints a live table; trades nothing."""

    role = "monitor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.markets: dict[str, MarketView] = {}
        self.nodes: dict[str, tuple[str, float]] = {}
        # Bus frames each node refused (forged, unsigned, replayed), from its heartbeats.
        self.refused: dict[str, int] = {}
        self.alerts: list[str] = []
        self.fill_ids: set[str] = set()

    async def start(self) -> None:
        self.bus.subscribe(self.scheme.everything(), self._on_message)
        self._tasks.append(asyncio.get_running_loop().create_task(self._print_loop()))

    async def stop(self) -> None:
        self._print()

    def _view(self, venue: str, symbol: str) -> MarketView:
        key = f"{venue}:{symbol}"
        view = self.markets.get(key)
        if view is None:
            view = self.markets[key] = MarketView()
        return view

    def _on_message(self, topic: str, payload: dict[str, Any]) -> None:
        try:
            parsed = parse_topic(topic)
        except TopicError:
            return
        handler = _MONITOR_HANDLERS.get(parsed.kind)
        if handler is not None:
            handler(self, parsed, payload)

    def _on_book(self, parsed: ParsedTopic, payload: dict[str, Any]) -> None:
        assert parsed.venue is not None and parsed.symbol is not None
        view = self._view(parsed.venue, parsed.symbol)
        self._apply_book(view, payload)

    def _apply_book(self, view: MarketView, payload: dict[str, Any]) -> None:
        bids, asks = payload.get("bids") or [], payload.get("asks") or []
        view.bid = int(bids[0][0]) if bids else None
        view.ask = int(asks[0][0]) if asks else None
        view.state = str(payload.get("state", "-"))
        view.book_seen = time.monotonic()

    def _on_state(self, parsed: ParsedTopic, payload: dict[str, Any]) -> None:
        name = parsed.name or ""
        if name.startswith("instruments-"):
            for data in payload.get("instruments", []):
                inst = instrument_from_dict(data)
                view = self._view(inst.venue, inst.symbol)
                view.tick, view.lot = inst.tick_size, inst.lot_size
        elif name.startswith("book-") and "bids" in payload:
            parts = name.split("-", 2)
            if len(parts) == 3:
                view = self._view(parts[1], decode_symbol(parts[2]))
                self._apply_book(view, payload)

    def _on_order(self, parsed: ParsedTopic, payload: dict[str, Any]) -> None:
        order = payload.get("order") or {}
        symbol = payload.get("symbol") or ""
        if not symbol or parsed.venue is None:
            return
        view = self._view(parsed.venue, symbol)
        client_id = str(payload.get("client_id"))
        if (
            OrderStatus(payload["status"]).is_terminal
            or OrderStatus(order.get("status", payload["status"])).is_terminal
        ):
            view.working.pop(client_id, None)
        elif order:
            view.working[client_id] = (Side.parse(order["side"]), order.get("price_ticks"))

    def _on_fill(self, parsed: ParsedTopic, payload: dict[str, Any]) -> None:
        fill_id = f"{payload.get('venue')}:{payload.get('fill_id')}"
        if fill_id in self.fill_ids:
            return
        self.fill_ids.add(fill_id)
        view = self._view(str(payload["venue"]), str(payload["symbol"]))
        view.fills += 1
        view.position_lots += int(Side.parse(payload["side"])) * int(payload["qty_lots"])

    def _on_heartbeat(self, parsed: ParsedTopic, payload: dict[str, Any]) -> None:
        # A heartbeat's age is its sender's: a retained one of a node that died is old.
        age_s = heartbeat_age_over(payload, 0.0) or 0.0
        self.nodes[parsed.name or "?"] = (str(payload.get("status", "?")), time.monotonic() - age_s)
        refused = payload.get("refused")
        if type(refused) is int:
            self.refused[parsed.name or "?"] = refused

    def _on_control(self, parsed: ParsedTopic, payload: dict[str, Any]) -> None:
        text = payload.get("message") or payload.get("reason") or ""
        self.alerts.append(f"{parsed.name} from {payload.get('node', '?')}: {text}")
        del self.alerts[:-10]

    async def _print_loop(self) -> None:
        while True:
            await asyncio.sleep(float(self.settings.monitor_interval))
            self._print()

    def table(self) -> dict[str, Any]:
        """The monitor's current view as plain data (also written to monitor.json)."""
        now = time.monotonic()
        stale_after = float(self.settings.stale_after)
        markets = {}
        for key, v in sorted(self.markets.items()):
            tick = v.tick or Decimal(0)
            mid = (
                float((Decimal(v.bid + v.ask) / 2) * tick)
                if v.bid is not None and v.ask is not None and v.tick
                else None
            )
            bids = [p for s, p in v.working.values() if s is Side.BUY and p is not None]
            asks = [p for s, p in v.working.values() if s is Side.SELL and p is not None]
            markets[key] = {
                "mid": mid,
                "our_bid": float(max(bids) * tick) if bids and v.tick else None,
                "our_ask": float(min(asks) * tick) if asks and v.tick else None,
                "open_orders": len(v.working),
                "position": float(v.position_lots * v.lot) if v.lot else v.position_lots,
                "fills": v.fills,
                "book": v.state,
                "stale": v.state != BookState.LIVE.value
                or (v.book_seen > 0 and now - v.book_seen > stale_after),
            }
        nodes = {
            role: {
                "status": status,
                "age_s": round(now - seen, 1),
                "refused": self.refused.get(role, 0),
            }
            for role, (status, seen) in sorted(self.nodes.items())
        }
        return {"markets": markets, "nodes": nodes, "alerts": list(self.alerts)}

    def _print(self) -> None:
        data = self.table()
        (self.run_dir / "monitor.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
        print(format_monitor(data), flush=True)


def format_monitor(data: dict[str, Any]) -> str:
    """The monitor table as text."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.6g}"
        return str(value)

    cols = ["market", "mid", "our_bid", "our_ask", "open_orders", "position", "fills", "book"]
    rows = [cols] + [
        [key] + [cell(m[c]) + ("!" if c == "book" and m["stale"] else "") for c in cols[1:]]
        for key, m in data["markets"].items()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    beats = ", ".join(
        f"{role} {n['status']} ({n['age_s']:g}s ago"
        + (f", {n['refused']} bus frames refused)" if n.get("refused") else ")")
        for role, n in data["nodes"].items()
    )
    lines.append(f"nodes: {beats or 'none heard yet'}")
    lines.extend(f"alert: {a}" for a in data["alerts"][-3:])
    return "\n".join(lines)


_MONITOR_HANDLERS: dict[TopicKind, Callable[[MonitorNode, ParsedTopic, dict[str, Any]], None]] = {
    TopicKind.BOOK: MonitorNode._on_book,
    TopicKind.STATE: MonitorNode._on_state,
    TopicKind.ORDER: MonitorNode._on_order,
    TopicKind.FILL: MonitorNode._on_fill,
    TopicKind.HEARTBEAT: MonitorNode._on_heartbeat,
    TopicKind.CONTROL: MonitorNode._on_control,
}
