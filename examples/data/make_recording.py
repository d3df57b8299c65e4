"""Writes the sample Binance spot recording used by examples/backtest.yaml (deterministic).

A small synthetic ETH/USDT market in the exact shape ``quoteforge record`` writes for
Binance: ``ethusdt@depth@100ms`` diff events, ``ethusdt@trade`` public trades and
``rest:/api/v3/depth?symbol=ETHUSDT`` snapshots, one JSON line per received message
with its local receive time. Takers walk the book, makers add and cancel near the top,
and one diff event is missing after 30 s so the replay exercises a resync.

    python examples/data/make_recording.py [--seconds 60] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from quoteforge.exchanges.recording import Record, RecordingWriter

OUT = Path(__file__).resolve().parent / "ethusdt_binance.jsonl"
START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
STEP_MS = 100
GAP_AT_S = 30.0


def price_text(ticks: int) -> str:
    return f"{ticks // 100}.{ticks % 100:02d}000000"


def qty_text(lots: int) -> str:
    return f"{lots // 10_000}.{lots % 10_000:04d}0000"


def _dump(payload: object) -> str:
    return json.dumps(payload, separators=(",", ":"))


class Market:
    """Bids and asks in ticks (0.01 USDT) -> lots (0.0001 ETH)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        mid = 200_000
        self.bids = {mid - 1 - i: rng.randint(500, 15_000) for i in range(40)}
        self.asks = {mid + 1 + i: rng.randint(500, 15_000) for i in range(40)}
        self.changed: dict[str, dict[int, int]] = {"b": {}, "a": {}}

    def _set(self, side: str, ticks: int, lots: int) -> None:
        book = self.bids if side == "b" else self.asks
        if lots > 0:
            book[ticks] = lots
        else:
            book.pop(ticks, None)
        self.changed[side][ticks] = max(lots, 0)

    def take(self, buy: bool, lots: int) -> list[tuple[int, int]]:
        """A taker walks the opposite side; returns (ticks, lots) traded per level."""
        side, book = ("a", self.asks) if buy else ("b", self.bids)
        trades = []
        while lots > 0 and book:
            best = min(book) if buy else max(book)
            size = min(book[best], lots)
            trades.append((best, size))
            self._set(side, best, book[best] - size)
            lots -= size
        return trades

    def makers(self) -> None:
        rng = self.rng
        for _ in range(rng.randint(1, 6)):
            side = rng.choice("ba")
            book = self.bids if side == "b" else self.asks
            other = self.asks if side == "b" else self.bids
            best = (max(book) if side == "b" else min(book)) if book else None
            if best is None:
                best = (min(other) - 1) if side == "b" else (max(other) + 1)
            distance = min(int(rng.expovariate(1 / 3)), 30)
            ticks = best - distance if side == "b" else best + distance
            if rng.random() < 0.15:
                ticks = best + 1 if side == "b" else best - 1  # improve the best price
            if other and (ticks >= min(other) if side == "b" else ticks <= max(other)):
                continue  # never cross the book
            if rng.random() < 0.35 and ticks in book:
                self._set(side, ticks, book[ticks] - rng.randint(1, book[ticks]))
            else:
                self._set(side, ticks, book.get(ticks, 0) + rng.randint(200, 8_000))
        for side, book in (("b", self.bids), ("a", self.asks)):
            # Keep the book deep enough: far levels come back as the price moves.
            while len(book) < 25:
                edge = min(book) - 1 if side == "b" else max(book) + 1
                self._set(side, edge, rng.randint(500, 15_000))

    def diff(self) -> tuple[list[list[str]], list[list[str]]]:
        bids = [[price_text(p), qty_text(q)] for p, q in sorted(self.changed["b"].items())]
        asks = [[price_text(p), qty_text(q)] for p, q in sorted(self.changed["a"].items())]
        self.changed = {"b": {}, "a": {}}
        return bids, asks

    def snapshot(self, last_id: int) -> str:
        return _dump(
            {
                "lastUpdateId": last_id,
                "bids": [[price_text(p), qty_text(q)] for p, q in sorted(self.bids.items())[::-1]],
                "asks": [[price_text(p), qty_text(q)] for p, q in sorted(self.asks.items())],
            }
        )


def generate(seconds: float, seed: int = 11) -> list[Record]:
    rng = random.Random(seed)
    market = Market(rng)
    records: list[Record] = []
    update_id = 5_000
    trade_id = 900_000
    steps = int(seconds * 1000 / STEP_MS)
    snapshot_due: int | None = 3  # the first snapshot arrives after a few buffered diffs
    gap_step = int(GAP_AT_S * 1000 / STEP_MS)
    buy_share = 0.5  # drifts, so the price trends for a while in either direction
    for step in range(steps):
        start_ns = START_NS + step * STEP_MS * 1_000_000
        buy_share = min(0.8, max(0.2, buy_share + rng.uniform(-0.03, 0.03)))
        for _ in range(sum(1 for _ in range(4) if rng.random() < 0.15)):
            buy = rng.random() < buy_share
            lots = int(rng.expovariate(1 / 6_000)) + 100
            when_ns = start_ns + rng.randint(0, STEP_MS * 1_000_000 - 1)
            for ticks, size in market.take(buy, lots):
                trade_id += 1
                event_ms = when_ns // 1_000_000
                payload = {
                    "e": "trade",
                    "E": event_ms,
                    "s": "ETHUSDT",
                    "t": trade_id,
                    "p": price_text(ticks),
                    "q": qty_text(size),
                    "T": event_ms,
                    "m": not buy,
                    "M": True,
                }
                recv = when_ns + rng.randint(1_000_000, 4_000_000)
                records.append(Record(recv, "binance", "ethusdt@trade", _dump(payload)))
        market.makers()
        bids, asks = market.diff()
        first = update_id + 1
        update_id += rng.randint(1, 5)
        end_ns = start_ns + STEP_MS * 1_000_000
        event = {
            "e": "depthUpdate",
            "E": end_ns // 1_000_000,
            "s": "ETHUSDT",
            "U": first,
            "u": update_id,
            "b": bids,
            "a": asks,
        }
        recv_ns = end_ns + rng.randint(2_000_000, 6_000_000)
        if step == gap_step:
            # A diff lost on the wire: the next one does not chain, the book resyncs
            # and the recorder fetched a new snapshot a little later.
            snapshot_due = step + 3
        else:
            records.append(Record(recv_ns, "binance", "ethusdt@depth@100ms", _dump(event)))
        if snapshot_due == step:
            snap = market.snapshot(update_id)
            records.append(
                Record(recv_ns + 40_000_000, "binance", "rest:/api/v3/depth?symbol=ETHUSDT", snap)
            )
            snapshot_due = None
    records.sort(key=lambda r: r.t_ns)  # stable: equal times keep their order
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.unlink(missing_ok=True)
    records = generate(args.seconds, args.seed)
    with RecordingWriter(args.out) as writer:
        for r in records:
            writer.write(r.venue, r.stream, r.raw, t_ns=r.t_ns)
    print(f"wrote {writer.count} records ({args.seconds:g} s) to {args.out}")


if __name__ == "__main__":
    main()
